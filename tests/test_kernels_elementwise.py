"""Elementwise and softmax kernels (src_cy/elementwise.pyx, src_cy/softmax.pyx) against numpy.

Arithmetic that IEEE rounds exactly (add sub mul div maximum minimum, comparisons,
where, clip) must equal numpy bit for bit, NaN and inf included; transcendental
functions are held to a few ulps of a float64 reference.
"""
import os
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tinygrad_bn import kernels, threads
from tinygrad_bn._C import elementwise as _elementwise
from tinygrad_bn._C import softmax as _softmax

DTYPES = [np.float32, np.float64]

# ---------------------------------------------------------------- strategies

dtypes = st.sampled_from(DTYPES)


def _values(dtype, special=True, lo=-1e3, hi=1e3):
    """Finite floats in [lo, hi], plus NaN, +-inf and signed zeros when `special`."""
    width = 8 * np.dtype(dtype).itemsize
    finite = st.floats(lo, hi, width=width, allow_nan=False, allow_infinity=False)
    if not special:
        return finite
    return st.one_of(finite, st.sampled_from([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0]))


@st.composite
def broadcast_operands(draw, num_shapes=2, special=True):
    """(dtype, arrays...) whose shapes broadcast together; 0-d and size-0 included."""
    dtype = draw(dtypes)
    shapes = draw(hnp.mutually_broadcastable_shapes(num_shapes=num_shapes, min_dims=0, max_dims=4,
                                                    min_side=0, max_side=5)).input_shapes
    return (dtype,) + tuple(draw(hnp.arrays(dtype, s, elements=_values(dtype, special))) for s in shapes)


@st.composite
def float_arrays(draw, lo=-1e3, hi=1e3, special=True, min_dims=0, min_side=0):
    dtype = draw(dtypes)
    shape = draw(hnp.array_shapes(min_dims=min_dims, max_dims=4, min_side=min_side, max_side=6))
    return draw(hnp.arrays(dtype, shape, elements=_values(dtype, special, lo, hi)))


@st.composite
def logits(draw):
    """(array, axis) of softmax inputs, magnitudes up to 1e4."""
    dtype = draw(dtypes)
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=20))
    scale = draw(st.sampled_from([1.0, 30.0, 1e4]))
    seed = draw(st.integers(0, 2**32 - 1))
    a = (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)
    return a, draw(st.integers(0, len(shape) - 1))


# ---------------------------------------------------------------- helpers

def assert_ulp_close(got, want, dtype, ulps):
    """got (dtype) within `ulps` units in the last place of the float64 reference `want`.

    NaN and infinities must sit at the same positions; results below the smallest
    normal number get an absolute tolerance of `ulps` of that number.
    """
    got = np.asarray(got)
    want = np.array(want, dtype=np.float64)
    assert got.dtype == dtype and got.shape == want.shape
    with np.errstate(over="ignore"):
        overflow = np.isfinite(want) & np.isinf(want.astype(dtype))
    want[overflow] = np.copysign(np.inf, want[overflow])
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    finite = np.isfinite(want)
    np.testing.assert_array_equal(got[~finite & ~np.isnan(want)], want[~finite & ~np.isnan(want)])
    with np.errstate(over="ignore"):
        spacing = np.spacing(np.abs(want[finite]).astype(dtype)).astype(np.float64)
    spacing = np.maximum(spacing, np.finfo(dtype).tiny * np.finfo(dtype).eps)
    err = np.abs(got[finite].astype(np.float64) - want[finite]) / spacing
    assert err.size == 0 or err.max() <= ulps, f"max error {err.max():.2f} ulp > {ulps}"


@pytest.fixture
def num_threads():
    """Set the thread count inside a test; restored afterwards."""
    before = threads.get_num_threads()
    yield threads.set_num_threads
    threads.set_num_threads(before)


# ---------------------------------------------------------------- binary and compare

# fmt: off
EXACT_BINARY = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide,
                "maximum": np.maximum, "minimum": np.minimum}
COMPARE = {"lt": np.less, "le": np.less_equal, "gt": np.greater, "ge": np.greater_equal,
           "eq": np.equal, "ne": np.not_equal}
# fmt: on


@pytest.mark.parametrize("op", sorted(EXACT_BINARY))
@given(operands=broadcast_operands())
def test_binary_matches_numpy_exactly(op, operands):
    dtype, a, b = operands
    with np.errstate(all="ignore"):
        want = EXACT_BINARY[op](a, b)
    got = kernels.binary(op, a, b)
    assert got.dtype == dtype and got.shape == want.shape and got.flags.c_contiguous
    np.testing.assert_array_equal(got, want)


@given(operands=broadcast_operands())
def test_binary_pow_matches_numpy(operands):
    dtype, a, b = operands
    with np.errstate(all="ignore"):
        want = np.power(a.astype(np.float64), b.astype(np.float64))
    got = kernels.binary("pow", a, b)
    assert got.shape == want.shape
    assert_ulp_close(got, want, dtype, ulps=2)


@pytest.mark.parametrize("op", sorted(COMPARE))
@given(operands=broadcast_operands())
def test_compare_matches_numpy_exactly(op, operands):
    _, a, b = operands
    got = kernels.compare(op, a, b)
    want = COMPARE[op](a, b)
    assert got.dtype == np.bool_ and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


@given(operands=broadcast_operands(num_shapes=3), data=st.data())
def test_where_matches_numpy_exactly(operands, data):
    dtype, c, a, b = operands
    cond = data.draw(hnp.arrays(np.bool_, c.shape))
    got = kernels.where(cond, a, b)
    want = np.where(cond, a, b)
    assert got.dtype == dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_binary_broadcasts_outer_product_and_0d_operands():
    # (N, 1) x (1, M) outer product (both operands step 0 somewhere) and 0-d operands
    a = np.arange(3.0).reshape(3, 1)
    b = np.arange(4.0).reshape(1, 4)
    np.testing.assert_array_equal(kernels.binary("mul", a, b), a * b)
    np.testing.assert_array_equal(kernels.binary("sub", np.array(2.0), b), 2.0 - b)
    np.testing.assert_array_equal(kernels.binary("div", b, np.array(2.0)), b / 2.0)


def test_maximum_minimum_propagate_nan():
    a = np.array([np.nan, 1.0, np.nan, -np.inf], np.float32)
    b = np.array([1.0, np.nan, np.nan, np.inf], np.float32)
    for op in ("maximum", "minimum"):
        np.testing.assert_array_equal(kernels.binary(op, a, b), EXACT_BINARY[op](a, b))


# ---------------------------------------------------------------- unary

def _sigmoid64(x):
    with np.errstate(over="ignore"):
        return np.where(x >= 0, 1 / (1 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1 + np.exp(-np.abs(x))))


# op: (float64 reference, max ulps in float32, max ulps in float64)
# fmt: off
UNARY = {
    "neg":     (np.negative,                 0, 0),
    "abs":     (np.abs,                      0, 0),
    "relu":    (lambda x: np.maximum(x, 0),  0, 0),
    "sqrt":    (np.sqrt,                     0.5, 0.5),
    "exp":     (np.exp,                      2, 2),
    "log":     (np.log,                      1, 2),
    "sigmoid": (_sigmoid64,                  3, 3),
    "tanh":    (np.tanh,                     2, 2),
}
# fmt: on


@pytest.mark.parametrize("op", sorted(UNARY))
@given(a=float_arrays(lo=-120, hi=120))
def test_unary_matches_float64_reference(op, a):
    ref, ulps32, ulps64 = UNARY[op]
    with np.errstate(all="ignore"):
        want = ref(a.astype(np.float64))
    got = kernels.unary(op, a)
    assert got.flags.c_contiguous
    assert_ulp_close(got, want, a.dtype.type, ulps32 if a.dtype == np.float32 else ulps64)


def test_float32_exp_within_two_ulp_over_its_whole_range():
    # every 1009th float32 from -110 to 90 (beyond: exactly 0 and inf), plus the edges
    lo, hi = np.float32(-110).view(np.uint32), np.float32(90).view(np.uint32)
    neg = np.arange(0x80000001, lo, 1009, dtype=np.uint32).view(np.float32)
    pos = np.arange(0, hi, 1009, dtype=np.uint32).view(np.float32)
    edges = np.array([88.72283172607421875, 88.72283935546875, -87.33654, -103.97, -103.98,
                      -104.0, 1e4, -1e4, np.inf, -np.inf, np.nan, -0.0], np.float32)
    x = np.concatenate([neg, pos, edges])
    with np.errstate(over="ignore"):
        want = np.exp(x.astype(np.float64))
    assert_ulp_close(kernels.unary("exp", x), want, np.float32, ulps=2)


@pytest.mark.skipif(os.environ.get("TB_EXHAUSTIVE") != "1",
                    reason="every float32 input, about 10 minutes per op here: set TB_EXHAUSTIVE=1")
@pytest.mark.parametrize("op", ["exp", "sigmoid", "tanh"])
def test_float32_exp_sigmoid_tanh_within_their_ulp_bound_for_every_float32(op):
    # all 2^32 bit patterns (NaNs, infinities, subnormals included), 2^24 at a time
    ref, ulps32, _ = UNARY[op]
    chunk = 1 << 24
    for start in range(0, 1 << 32, chunk):
        x = np.arange(start, start + chunk, dtype=np.uint64).astype(np.uint32).view(np.float32)
        with np.errstate(all="ignore"):
            want = ref(x.astype(np.float64))
        assert_ulp_close(kernels.unary(op, x), want, np.float32, ulps32)


def test_float32_sigmoid_within_three_ulp_over_its_whole_range():
    # the negative side reaches subnormal results (sigmoid(x) ~ exp(x) below -87)
    x = np.concatenate([np.arange(0x80000001, np.float32(-110).view(np.uint32), 1009, dtype=np.uint32),
                        np.arange(0, np.float32(110).view(np.uint32), 1009, dtype=np.uint32)]).view(np.float32)
    x = np.concatenate([x, np.array([-103.97, -104.0, -1e4, 1e4, np.inf, -np.inf, -0.0], np.float32)])
    assert_ulp_close(kernels.unary("sigmoid", x), _sigmoid64(x.astype(np.float64)), np.float32, ulps=3)


@pytest.mark.parametrize("op", ["exp", "sigmoid", "tanh"])
def test_float32_exp_sigmoid_tanh_do_not_depend_on_the_position_in_the_array(op):
    # The array loops take 16 values at a time and end with a masked block: a value's
    # result must be the same bits whether it lands in a full block, in the last
    # partial one, or in a 1-value array, and softmax's exp must agree with exp.
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.uniform(-110, 110, 61), rng.uniform(-1, 1, 20) ** 9,
                        [88.72283935546875, -103.97, -104.0, 9.1, -9.2, np.inf, -np.inf, np.nan, -0.0]]).astype(np.float32)
    whole = kernels.unary(op, x).view(np.uint32)
    for k in range(1, 18):
        assert np.array_equal(kernels.unary(op, x[k:]).view(np.uint32), whole[k:]), k
        assert np.array_equal(kernels.unary(op, x[:k]).view(np.uint32), whole[:k]), k
    one = np.array([kernels.unary(op, x[i:i + 1])[0] for i in range(x.size)], np.float32)
    assert np.array_equal(one.view(np.uint32), whole)
    if op == "exp":
        # softmax of one row, rebuilt from the exp kernel: e = exp(x - max) in float32,
        # s = 16 float64 lanes (lane k sums e[16 i + k]) added in order, then the tail,
        # o = e * float32(1 / s): the same bits only if softmax's exp is exp's
        row = x[np.isfinite(x)]
        e = kernels.unary("exp", row - row.max())
        nv = e.size - e.size % 16
        lanes = np.zeros(16)
        for block in e[:nv].astype(np.float64).reshape(-1, 16):
            lanes += block
        total = 0.0
        for v in list(lanes) + list(e[nv:].astype(np.float64)):
            total += v
        want = e * np.float32(1.0 / total)
        assert np.array_equal(_softmax.softmax(row[None, :], 1)[0].view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_and_tanh_saturate_without_overflow(dtype):
    x = np.array([-1e4, -100.0, -20.0, 0.0, 20.0, 100.0, 1e4, np.nan], dtype)
    with np.errstate(all="raise"):
        s = kernels.unary("sigmoid", x)
        t = kernels.unary("tanh", x)
    assert s[0] == 0 and s[-2] == 1 and s[3] == 0.5 and np.isnan(s[-1])
    assert t[0] == -1 and t[-2] == 1 and t[3] == 0 and np.isnan(t[-1])
    assert np.all((s[:-1] >= 0) & (s[:-1] <= 1))


def test_float32_tanh_accurate_near_zero():
    # tanh(x) ~ x: the polynomial branch keeps full relative precision for tiny x
    x = np.float32(10.0) ** -np.arange(1, 30, dtype=np.float32)
    x = np.concatenate([x, -x, np.linspace(-1, 1, 20001, dtype=np.float32)])
    assert_ulp_close(kernels.unary("tanh", x), np.tanh(x.astype(np.float64)), np.float32, ulps=2)


# ---------------------------------------------------------------- pow_scalar, clip

POWERS = [2.0, 0.5, -1.0, 1.0, 0.0, 3.0, -2.5, 1 / 3]


@given(a=float_arrays(lo=-50, hi=50), p=st.sampled_from(POWERS))
def test_pow_scalar_matches_float64_reference(a, p):
    dtype = a.dtype.type
    with np.errstate(all="ignore"):
        want = np.power(a.astype(np.float64), np.float64(dtype(p)))
    assert_ulp_close(kernels.pow_scalar(a, p), want, dtype, ulps=2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_pow_scalar_half_is_sqrt_like_numpy(dtype):
    # numpy's power (and torch) use sqrt for p = 0.5: -0 -> -0 and -inf -> NaN
    x = np.array([-0.0, -np.inf, np.inf, -1.0, 4.0, 2.0], dtype)
    got = kernels.pow_scalar(x, 0.5)
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(got, np.sqrt(x))
    assert np.signbit(got[0])


bounds = st.one_of(st.none(), st.floats(-1e3, 1e3, width=32), st.sampled_from([np.nan, -np.inf, np.inf]))


@given(a=float_arrays(), lo=bounds, hi=bounds)
def test_clip_matches_numpy_exactly(a, lo, hi):
    got = kernels.clip(a, lo, hi)
    want = a.copy()
    if lo is not None:
        want = np.maximum(want, a.dtype.type(lo))
    if hi is not None:
        want = np.minimum(want, a.dtype.type(hi))
    assert got.dtype == a.dtype and got.shape == a.shape
    np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------- softmax

def _softmax64(a, axis):
    a = a.astype(np.float64)
    if a.size == 0:
        return a
    e = np.exp(a - a.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _log_softmax64(a, axis):
    a = a.astype(np.float64)
    if a.size == 0:
        return a
    s = a - a.max(axis=axis, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=axis, keepdims=True))


@given(case=logits())
def test_softmax_matches_float64_reference(case):
    a, axis = case
    got = kernels.softmax(a, axis)
    assert got.dtype == a.dtype and got.shape == a.shape and got.flags.c_contiguous
    tol = 1e-6 if a.dtype == np.float32 else 1e-14
    np.testing.assert_allclose(got, _softmax64(a, axis), rtol=10 * tol, atol=tol)


@given(case=logits())
def test_log_softmax_matches_float64_reference(case):
    a, axis = case
    got = kernels.log_softmax(a, axis)
    assert got.dtype == a.dtype and got.shape == a.shape
    want = _log_softmax64(a, axis)
    # (x - max) is exact in float64 and rounded once; log(sum) carries a few eps absolute
    eps = np.finfo(a.dtype).eps
    np.testing.assert_allclose(got, want, rtol=2 * eps, atol=8 * eps)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", [0, 1])
def test_softmax_rows_sum_to_one_at_logit_magnitude_1e4(dtype, axis):
    a = (np.random.default_rng(0).standard_normal((70, 300)) * 1e4).astype(dtype)
    with np.errstate(all="raise"):
        s = kernels.softmax(a, axis)
        ls = kernels.log_softmax(a, axis)
    assert np.all(np.isfinite(s)) and np.all(np.isfinite(ls))
    np.testing.assert_allclose(s.sum(axis=axis, dtype=np.float64), 1.0, rtol=1e-5)
    assert np.all(ls <= 0)


def test_softmax_nan_row_is_nan_and_others_untouched():
    a = np.zeros((3, 4), np.float32)
    a[1, 2] = np.nan
    s = kernels.softmax(a, 1)
    assert np.all(np.isnan(s[1]))
    np.testing.assert_array_equal(s[[0, 2]], 0.25)


@pytest.mark.parametrize("shape, axis", [((0, 5), 1), ((3, 0), 1), ((3, 0), 0), ((0,), 0), ((2, 0, 3), 2)])
def test_softmax_of_empty_array_is_empty(shape, axis):
    a = np.ones(shape, np.float32)
    for fn in (kernels.softmax, kernels.log_softmax):
        out = fn(a, axis)
        assert out.shape == shape and out.dtype == np.float32


@given(case=logits(), seed=st.integers(0, 2**16))
def test_softmax_backward_kernels_match_float64_reference(case, seed):
    """The fused backward kernels equal the formulas z (g - sum g z) and g - e^z sum g
    evaluated in float64 on the same z and g."""
    a, axis = case
    g = np.random.default_rng(seed).standard_normal(a.shape).astype(a.dtype)
    z, zl = kernels.softmax(a, axis), kernels.log_softmax(a, axis)
    z64, zl64, g64 = z.astype(np.float64), zl.astype(np.float64), g.astype(np.float64)
    want = z64 * (g64 - (g64 * z64).sum(axis=axis, keepdims=True))
    want_log = g64 - np.exp(zl64) * g64.sum(axis=axis, keepdims=True)
    # sums are float64; the rounding of s to the dtype scales with sum|g| along the axis
    eps = np.finfo(a.dtype).eps
    scale = 4 * eps * (1 + np.abs(g64).sum(axis=axis, keepdims=True))
    got = kernels.softmax_backward(z, g, axis)
    got_log = kernels.log_softmax_backward(zl, g, axis)
    assert got.dtype == a.dtype and got.shape == a.shape and got.flags.c_contiguous
    assert np.all(np.abs(got - want) <= scale * np.maximum(z64, eps) + 4 * eps * np.abs(want))
    assert np.all(np.abs(got_log - want_log) <= scale + 4 * eps * np.abs(want_log))


def test_softmax_backward_kernels_reject_mismatched_operands():
    z = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"float32 \(3, 4\).*float32 \(4, 3\)"):
        kernels.softmax_backward(z, np.ones((4, 3), np.float32), 1)
    with pytest.raises(ValueError, match="float32.*float64"):
        kernels.log_softmax_backward(z, np.ones((3, 4)), 1)
    with pytest.raises(ValueError, match="C-contiguous"):
        kernels.softmax_backward(z, np.ones((4, 3), np.float32).T, 1)
    with pytest.raises(ValueError, match="axis"):
        kernels.softmax_backward(z, z, 2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("src, shape", [((3, 1), (3, 4)), ((1, 4), (3, 4)), ((), (2, 3)), ((5,), (2, 3, 5)),
                                         ((2, 1, 3), (2, 4, 3)), ((1,), (0,)), ((1, 1), (1, 1))])
def test_expand_is_numpy_broadcast_to_made_contiguous(src, shape, dtype):
    a = np.random.default_rng(0).standard_normal(src).astype(dtype)
    got = kernels.expand(a, shape)
    assert got.shape == shape and got.dtype == dtype and got.flags.c_contiguous
    np.testing.assert_array_equal(got, np.broadcast_to(a, shape))


@pytest.mark.parametrize("src, shape", [((3,), (4,)), ((3, 4), (4,)), ((2, 3), (1, 3))])
def test_expand_rejects_a_shape_the_array_does_not_broadcast_to(src, shape):
    with pytest.raises(ValueError, match=re.escape(str(shape))):
        kernels.expand(np.ones(src, np.float32), shape)


# ---------------------------------------------------------------- threads

def _big(dtype, shape, seed=0):
    return (np.random.default_rng(seed).standard_normal(shape) * 3).astype(dtype)


# name: function of (a, b, v) with a, b of shape (301, 1001) and v of shape (1001,)
# fmt: off
THREADED = {
    "add_broadcast": lambda a, b, v: kernels.binary("add", a, v),
    "div":           lambda a, b, v: kernels.binary("div", a, b),
    "pow":           lambda a, b, v: kernels.binary("pow", np.abs(a), v),
    "maximum_col":   lambda a, b, v: kernels.binary("maximum", a, b[:, :1].copy()),
    "outer":         lambda a, b, v: kernels.binary("mul", a[:, :1].copy(), v[None, :]),
    "compare":       lambda a, b, v: kernels.compare("lt", a, v),
    "where":         lambda a, b, v: kernels.where(a > 0, b, v),
    "exp":           lambda a, b, v: kernels.unary("exp", a),
    "sigmoid":       lambda a, b, v: kernels.unary("sigmoid", a),
    "tanh":          lambda a, b, v: kernels.unary("tanh", a),
    "log":           lambda a, b, v: kernels.unary("log", np.abs(a)),
    "pow_scalar":    lambda a, b, v: kernels.pow_scalar(a, 3.0),
    "clip":          lambda a, b, v: kernels.clip(a, -1.0, 0.5),
    "softmax_last":  lambda a, b, v: kernels.softmax(a, 1),
    "softmax_first": lambda a, b, v: kernels.log_softmax(a, 0),
    "expand_rows":   lambda a, b, v: kernels.expand(v, a.shape),
    "expand_cols":   lambda a, b, v: kernels.expand(a[:, :1].copy(), a.shape),
    "softmax_bwd":   lambda a, b, v: kernels.softmax_backward(kernels.softmax(a, 1), b, 1),
    "log_softmax_bwd_first": lambda a, b, v: kernels.log_softmax_backward(kernels.log_softmax(a, 0), b, 0),
}
# fmt: on


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(THREADED))
def test_kernel_independent_of_thread_count(name, dtype, num_threads):
    a, b, v = _big(dtype, (301, 1001), 0), _big(dtype, (301, 1001), 1), _big(dtype, (1001,), 2)
    num_threads(1)
    one = THREADED[name](a, b, v)
    num_threads(2)
    two = THREADED[name](a, b, v)
    assert one.size >= threads.PARALLEL_MIN_ELEMENTS
    np.testing.assert_array_equal(one, two)


# ---------------------------------------------------------------- wrapper checks

def test_wrong_dtype_is_rejected_before_the_kernel():
    f16 = np.ones(3, np.float16)
    i64 = np.ones(3, np.int64)
    f32 = np.ones(3, np.float32)
    with pytest.raises(TypeError, match="float32 or float64.*int64"):
        kernels.unary("exp", i64)
    with pytest.raises(TypeError, match="float32 or float64.*float16"):
        kernels.binary("add", f16, f16)
    with pytest.raises(TypeError, match="same dtype.*float32.*float64"):
        kernels.binary("add", f32, f32.astype(np.float64))
    with pytest.raises(TypeError, match="float32 or float64"):
        kernels.softmax(i64, 0)
    with pytest.raises(TypeError, match="native byte order"):
        kernels.unary("neg", f32.astype(">f4"))
    with pytest.raises(TypeError, match="cond: expected dtype bool, got float32"):
        kernels.where(f32, f32, f32)
    with pytest.raises(TypeError, match="numpy.ndarray, got list"):
        _elementwise.unary("neg", [1.0, 2.0])


def test_non_contiguous_input_is_rejected():
    a = np.ones((4, 6), np.float32)
    with pytest.raises(ValueError, match="C-contiguous.*strides"):
        kernels.binary("add", a[:, ::2], a[:, :3].copy())
    with pytest.raises(ValueError, match="C-contiguous"):
        kernels.unary("exp", a.T)
    with pytest.raises(ValueError, match="C-contiguous"):
        kernels.softmax(a.T, 0)
    with pytest.raises(ValueError, match="C-contiguous"):
        kernels.where(np.ones((6, 4), bool).T, a, a)


def test_bad_op_shape_axis_and_threads_are_rejected():
    a = np.ones((2, 3))
    with pytest.raises(ValueError, match="unknown binary op 'mod'"):
        kernels.binary("mod", a, a)
    with pytest.raises(ValueError, match=r"could not be broadcast.*\(2, 3\) \(2,\)"):
        kernels.binary("add", a, np.ones(2))
    with pytest.raises(ValueError, match="axis: expected 0 <= axis < 2"):
        kernels.softmax(a, 2)
    with pytest.raises(ValueError, match="axis"):
        _softmax.softmax(np.ones(()), 0)
    with pytest.raises(ValueError, match="nthreads must be >= 1, got 0"):
        _elementwise.unary("exp", a, 0)


# ---------------------------------------------------------------- fused unary backward

@pytest.mark.parametrize("op", ["relu", "sigmoid", "tanh"])
@given(a=float_arrays(lo=-30, hi=30), seed=st.integers(0, 2**16))
def test_unary_backward_is_the_tensor_formula(op, a, seed):
    """One pass computing g * dz/dx from the saved x (relu) or z (sigmoid, tanh): the
    formulas functions.py writes in Tensor ops, in the same order, so relu and sigmoid
    are bit for bit numpy; tanh's 1 - z*z may be one fused multiply-add, so it is held
    to be no further from the exact value than the Tensor formula plus 2 ulp."""
    g = np.random.default_rng(seed).standard_normal(a.shape).astype(a.dtype)
    saved = a if op == "relu" else kernels.unary(op, a)
    got = _elementwise.unary_backward(op, saved, g, 1)
    with np.errstate(all="ignore"):
        want = {"relu": lambda: np.where(saved > 0, g, a.dtype.type(0)),
                "sigmoid": lambda: g * saved * (1 - saved),
                "tanh": lambda: g * (1 - saved * saved)}[op]()
    assert got.dtype == a.dtype and got.shape == a.shape
    if op == "tanh":
        # no worse than the Tensor formula's own rounding (1 - z*z cancels near |z| = 1)
        # reference: 1 - z*z = (1 - z)(1 + z), both factors exact in long double (64
        # significant bits on x86), so near |z| = 1 nothing cancels
        z = saved.astype(np.longdouble)
        exact = g.astype(np.longdouble) * ((1 - z) * (1 + z))
        slack = np.abs(want - exact) + 2 * np.spacing(np.abs(want)).astype(np.longdouble)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        ok = ~np.isnan(want)
        assert np.all(np.abs(got[ok] - exact[ok]) <= slack[ok])
    else:
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["relu", "sigmoid", "tanh"])
def test_unary_backward_independent_of_thread_count(op, dtype):
    a, g = _big(dtype, (301, 1001), 0), _big(dtype, (301, 1001), 1)
    saved = a if op == "relu" else kernels.unary(op, a)
    np.testing.assert_array_equal(_elementwise.unary_backward(op, saved, g, 1),
                                  _elementwise.unary_backward(op, saved, g, 2))


def test_unary_backward_rejects_mismatched_operands():
    s32, s64 = np.ones((2, 3), np.float32), np.ones((2, 3), np.float64)
    with pytest.raises(ValueError, match="unknown unary backward op 'exp'"):
        _elementwise.unary_backward("exp", s32, s32, 1)
    with pytest.raises(TypeError, match="expected the same dtype, got float32 and float64"):
        _elementwise.unary_backward("relu", s32, s64, 1)
    with pytest.raises(ValueError, match=r"expected the same shape, got \(2, 3\) and \(3, 2\)"):
        _elementwise.unary_backward("relu", s32, np.ones((3, 2), np.float32), 1)
    with pytest.raises(ValueError, match="C-contiguous"):
        _elementwise.unary_backward("tanh", s32.T, s32.T.copy(), 1)
    with pytest.raises(ValueError, match="nthreads"):
        _elementwise.unary_backward("sigmoid", s32, s32, 0)
