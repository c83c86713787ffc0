"""Every Tensor op of DESIGN.md against numpy, finite differences and its own backward.

One table, OPS, drives the checks (like tinygrad's helper_test_op). A row names
the op, the tb call, the numpy reference, the input shapes, the input domain and
whether the second derivative is nonzero; adding an op means adding one row.
For every row:
  test_forward_matches_numpy     float64 (tight) and float32 (loose) vs numpy in float64
  test_gradcheck                 float64 vs central differences, over drawn shapes
  test_gradgradcheck             second derivatives, rows whose second derivative is nonzero
  test_backward_is_differentiable  gradgradcheck of the other (piecewise linear) rows, a few examples
Conventions that are not one op's formula (ties, repeated indices, large logits,
dtypes, exception types) have their own tests at the end.
"""
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinygrad_bn as tb
from tinygrad_bn.testing import assert_allclose, gradcheck, gradgradcheck
from tinygrad_bn.testing import strategies as tbst

FORWARD_SIDE = 5  # largest side in forward tests
GRAD_SIDE = 3  # gradient tests cost two evaluations per input element


# ---------------------------------------------------------------- shapes and parameters
def unary(min_dims=0, max_dims=3, min_side=1):
    """One input of any shape."""
    return lambda side: st.tuples(tbst.shapes(min_dims, max_dims, min_side, max(side, min_side)))


def binary(max_dims=3):
    """Two inputs whose shapes broadcast."""
    return lambda side: tbst.broadcastable_shapes(2, 0, max_dims, 1, side)


def fixed(*choices):
    """Each choice is a tuple of input shapes."""
    return lambda side: st.sampled_from(choices)


@st.composite
def _cat_shapes(draw, side, n):
    nd = draw(st.integers(1, 3))
    base = list(draw(tbst.shapes(nd, nd, 1, side)))
    axis = draw(st.integers(0, nd - 1))
    out = []
    for _ in range(n):
        base[axis] = draw(st.integers(1, side))
        out.append(tuple(base))
    return tuple(out)


def cat_shapes(n):
    """n shapes equal except along one axis."""
    return lambda side: _cat_shapes(side, n)


def same_shapes(n):
    return lambda side: tbst.shapes(0, 3, 1, side).map(lambda s: (s,) * n)


def _signed(axis, nd):
    """axis, or the same axis counted from the end."""
    return st.sampled_from([axis, axis - nd])


def axis_kw(none=True, tuples=True):
    """Params for reductions: axis None, an int (negative too) or a tuple; keepdims."""

    def params(shapes):
        nd = len(shapes[0])
        options = [st.none()] if none or nd == 0 else []
        if nd:
            options.append(st.integers(-nd, nd - 1))
        if nd and tuples:
            options.append(
                st.lists(st.integers(0, nd - 1), min_size=1, max_size=nd, unique=True).flatmap(
                    lambda axes: st.tuples(*[_signed(a, nd) for a in axes])
                )
            )
        return st.fixed_dictionaries({"axis": st.one_of(options), "keepdims": st.booleans()})

    return params


def argmax_kw(shapes):
    # keepdims only with an axis: for axis=None numpy keeps every dim, torch ignores keepdim.
    nd = len(shapes[0])
    with_axis = st.fixed_dictionaries({"axis": st.integers(-nd, nd - 1), "keepdims": st.booleans()}) if nd else None
    return st.one_of([st.just({"axis": None})] + ([with_axis] if nd else []))


def softmax_kw(shapes):
    nd = len(shapes[0])
    return st.fixed_dictionaries({"axis": st.integers(-nd, nd - 1)})


def perm_kw(shapes):
    nd = len(shapes[0])
    return st.permutations(range(nd)).flatmap(lambda p: st.tuples(*[_signed(a, nd) for a in p])).map(
        lambda axes: {"axes": axes}
    )


def reshape_kw(shapes):
    (s,) = shapes
    options = [(-1,), s[::-1], (1,) + s, s + (1,)] + [s[:i] + (-1,) + s[i + 1:] for i in range(len(s))]
    return st.sampled_from(options).map(lambda shape: {"shape": shape})


def expand_kw(shapes):
    (s,) = shapes
    lead = st.lists(st.integers(1, 3), max_size=2)
    sizes = st.tuples(*[st.integers(1, 3) if d == 1 else st.just(d) for d in s])
    return st.builds(lambda a, b: {"shape": tuple(a) + tuple(b)}, lead, sizes)


def squeeze_kw(shapes):
    (s,) = shapes
    ones = [i for i, d in enumerate(s) if d == 1]
    axis = st.one_of([st.none()] + [_signed(i, len(s)) for i in ones])
    return st.fixed_dictionaries({"axis": axis})


def unsqueeze_kw(shapes):
    nd = len(shapes[0])
    return st.fixed_dictionaries({"axis": st.integers(-nd - 1, nd)})


def flatten_kw(shapes):
    nd = len(shapes[0])
    if nd == 0:
        return st.just({"dims": ()})
    return st.one_of(
        st.just({"dims": ()}),
        st.integers(0, nd - 1).flatmap(lambda s: st.integers(s, nd - 1).map(lambda e: {"dims": (s, e - nd)})),
    )


def _np_flatten(a, dims):
    if a.ndim == 0:
        return a.reshape(1)
    s, e = (0, a.ndim - 1) if not dims else (dims[0], dims[1] % a.ndim)
    return a.reshape(a.shape[:s] + (-1,) + a.shape[e + 1:])


def cat_kw(shapes):
    """The axis along which the shapes differ (any axis when they do not)."""
    nd = len(shapes[0])
    differ = [i for i in range(nd) if len({s[i] for s in shapes}) > 1]
    axes = [_signed(differ[0], nd)] if differ else [st.integers(-nd, nd - 1)]
    return st.fixed_dictionaries({"axis": st.one_of(axes)})


def stack_kw(shapes):
    nd = len(shapes[0])
    return st.fixed_dictionaries({"axis": st.integers(-nd - 1, nd)})


def no_kw(shapes):
    return st.just({})


# ---------------------------------------------------------------- the table
@dataclass(frozen=True)
class Op:
    """One row: tb_fn(*tensors, **params) must equal np_fn(*arrays, **params)."""

    name: str
    tb_fn: Callable
    np_fn: Callable
    shapes: Callable = field(default_factory=unary)  # side -> strategy of a tuple of input shapes
    domain: object = "real"  # "real" | "positive" | "nonzero" | "distinct", or one per input
    grad2: bool = False  # second derivative nonzero: gradgradcheck over drawn shapes
    params: Callable = no_kw  # shapes -> strategy of a dict of keyword arguments
    diff: bool = True  # differentiable (comparisons and argmax are not)
    out_dtype: object = None  # None: the input dtype


def _cmp(name, op, np_op):
    return Op(name, op, np_op, binary(), diff=False, out_dtype=np.bool_)


def _index(label, idx, shape=(4, 5)):
    return Op(f"getitem[{label}]", lambda x: x[idx], lambda a: a[idx], fixed((shape,)))


def _var(correction):
    # correction=1 needs two values in every reduction: min_dims=1 and min_side=2.
    return (
        Op(f"var_c{correction}", lambda x, **kw: x.var(**kw, correction=correction),
           lambda a, **kw: np.var(a, **kw, ddof=correction), unary(correction, 3, 1 + correction),
           grad2=True, params=axis_kw()),
        # std: d sqrt(v)/dv is infinite at v = 0, so no reduction over size-1 axes only.
        Op(f"std_c{correction}", lambda x, **kw: x.std(**kw, correction=correction),
           lambda a, **kw: np.std(a, **kw, ddof=correction), unary(1, 3, 2),
           grad2=True, params=axis_kw()),
    )


def _np_softmax(a, axis):
    e = np.exp(a - a.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _np_log_softmax(a, axis):
    s = a - a.max(axis=axis, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=axis, keepdims=True))


# fmt: off
MATMUL_SHAPES = fixed(
    ((3,), (3,)), ((2, 3), (3,)), ((3,), (3, 4)), ((2, 3), (3, 4)), ((1, 1), (1, 1)),
    ((2, 2, 3), (3, 4)), ((3,), (2, 3, 4)), ((2, 3), (2, 3, 1)), ((2, 1, 2, 3), (3, 3, 2)),
)

OPS = [
    # elementwise, one input
    Op("neg", lambda x: -x, np.negative),
    Op("exp", lambda x: x.exp(), np.exp, grad2=True),
    Op("log", lambda x: x.log(), np.log, domain="positive", grad2=True),
    Op("sqrt", lambda x: x.sqrt(), np.sqrt, domain="positive", grad2=True),
    Op("relu", lambda x: x.relu(), lambda a: np.maximum(a, 0), domain="distinct"),
    Op("sigmoid", lambda x: x.sigmoid(), lambda a: 1 / (1 + np.exp(-a)), grad2=True),
    Op("tanh", lambda x: x.tanh(), np.tanh, grad2=True),
    Op("abs", lambda x: x.abs(), np.abs, domain="distinct"),
    Op("pow_scalar_3", lambda x: x ** 3.0, lambda a: a ** 3.0, grad2=True),
    Op("pow_scalar_int_2", lambda x: x ** 2, lambda a: a ** 2, grad2=True),
    Op("pow_scalar_half", lambda x: x ** 0.5, np.sqrt, domain="positive", grad2=True),
    Op("pow_scalar_neg", lambda x: x ** -1.5, lambda a: a ** -1.5, domain="positive", grad2=True),
    Op("clip", lambda x: x.clip(-1.0, 1.0), lambda a: np.clip(a, -1.0, 1.0), domain="distinct"),
    Op("clip_lo", lambda x: x.clip(-0.5), lambda a: np.maximum(a, -0.5), domain="distinct"),
    Op("clip_hi", lambda x: x.clip(None, 0.5), lambda a: np.minimum(a, 0.5), domain="distinct"),
    # a Python scalar on either side
    Op("add_scalar", lambda x: x + 2.0, lambda a: a + 2.0),
    Op("radd_scalar", lambda x: 2.0 + x, lambda a: 2.0 + a),
    Op("sub_scalar", lambda x: x - 2.0, lambda a: a - 2.0),
    Op("rsub_scalar", lambda x: 2.0 - x, lambda a: 2.0 - a),
    Op("mul_scalar", lambda x: x * 2.0, lambda a: a * 2.0),
    Op("rmul_scalar", lambda x: 2.0 * x, lambda a: 2.0 * a),
    Op("div_scalar", lambda x: x / 2.0, lambda a: a / 2.0),
    Op("rdiv_scalar", lambda x: 2.0 / x, lambda a: 2.0 / a, domain="nonzero", grad2=True),
    Op("rpow_scalar", lambda x: 2.0 ** x, lambda a: 2.0 ** a, grad2=True),
    Op("lt_scalar", lambda x: x < 0.5, lambda a: a < 0.5, diff=False, out_dtype=np.bool_),
    Op("rlt_scalar", lambda x: 0.5 < x, lambda a: 0.5 < a, diff=False, out_dtype=np.bool_),
    Op("eq_scalar", lambda x: x == 0.5, lambda a: a == 0.5, diff=False, out_dtype=np.bool_),
    # elementwise, two broadcasting inputs
    Op("add", lambda x, y: x + y, np.add, binary()),
    Op("sub", lambda x, y: x - y, np.subtract, binary()),
    Op("mul", lambda x, y: x * y, np.multiply, binary(), grad2=True),
    Op("div", lambda x, y: x / y, np.divide, binary(), domain=("real", "nonzero"), grad2=True),
    Op("pow", lambda x, y: x ** y, np.power, binary(), domain=("positive", "real"), grad2=True),
    Op("maximum", tb.maximum, np.maximum, binary(), domain="distinct"),
    Op("minimum", tb.minimum, np.minimum, binary(), domain="distinct"),
    Op("where", lambda x, y: tb.where(x > 0, x, y), lambda a, b: np.where(a > 0, a, b), binary(),
       domain=("nonzero", "real")),
    _cmp("lt", lambda x, y: x < y, np.less),
    _cmp("le", lambda x, y: x <= y, np.less_equal),
    _cmp("gt", lambda x, y: x > y, np.greater),
    _cmp("ge", lambda x, y: x >= y, np.greater_equal),
    _cmp("eq", lambda x, y: x == y, np.equal),
    _cmp("ne", lambda x, y: x != y, np.not_equal),
    Op("matmul", lambda x, y: x @ y, np.matmul, MATMUL_SHAPES, grad2=True),
    # reductions
    Op("sum", lambda x, **kw: x.sum(**kw), np.sum, params=axis_kw()),
    Op("mean", lambda x, **kw: x.mean(**kw), np.mean, params=axis_kw()),
    *_var(0),
    *_var(1),
    Op("max", lambda x, **kw: x.max(**kw), np.max, domain="distinct", params=axis_kw()),
    Op("min", lambda x, **kw: x.min(**kw), np.min, domain="distinct", params=axis_kw()),
    Op("argmax", lambda x, **kw: x.argmax(**kw), np.argmax, params=argmax_kw, diff=False, out_dtype=np.int64),
    Op("softmax", lambda x, axis: x.softmax(axis), _np_softmax, unary(1), grad2=True, params=softmax_kw),
    Op("log_softmax", lambda x, axis: x.log_softmax(axis), _np_log_softmax, unary(1), grad2=True,
       params=softmax_kw),
    # movement
    Op("reshape", lambda x, shape: x.reshape(*shape), np.reshape, params=reshape_kw),
    Op("reshape_tuple", lambda x, shape: x.reshape(shape), np.reshape, params=reshape_kw),
    Op("reshape_fixed", lambda x, shape: x.reshape(shape), np.reshape, fixed(((2, 3, 4),)),
       params=lambda s: st.sampled_from([(4, -1), (-1,), (3, -1, 2), (24,), (2, 1, 3, 4, 1)]).map(
           lambda shape: {"shape": shape})),
    Op("transpose_reverse", lambda x: x.transpose(), np.transpose),
    Op("transpose", lambda x, axes: x.transpose(*axes), np.transpose, params=perm_kw),
    Op("permute", lambda x, axes: x.permute(*axes), np.transpose, params=perm_kw),
    Op("T", lambda x: x.T, lambda a: a.T),
    Op("expand", lambda x, shape: x.expand(*shape), np.broadcast_to, params=expand_kw),
    Op("squeeze", lambda x, axis: x.squeeze() if axis is None else x.squeeze(axis), np.squeeze,
       params=squeeze_kw),
    Op("unsqueeze", lambda x, axis: x.unsqueeze(axis), np.expand_dims, params=unsqueeze_kw),
    Op("flatten", lambda x, dims: x.flatten(*dims), _np_flatten, params=flatten_kw),
    Op("cat", lambda x, y, axis: tb.cat([x, y], axis=axis), lambda a, b, axis: np.concatenate([a, b], axis),
       cat_shapes(2), params=cat_kw),
    Op("cat3", lambda x, y, z, axis: tb.cat([x, y, z], axis=axis),
       lambda a, b, c, axis: np.concatenate([a, b, c], axis), cat_shapes(3), params=cat_kw),
    Op("stack", lambda x, y, axis: tb.stack([x, y], axis=axis), lambda a, b, axis: np.stack([a, b], axis),
       same_shapes(2), params=stack_kw),
    # indexing
    _index("int", 1),
    _index("neg_int", -1),
    _index("int_int", (1, -2)),
    _index("slice", slice(1, 3)),
    _index("reverse", slice(None, None, -1)),
    _index("neg_step", (slice(3, 0, -2), slice(None, None, -3))),
    _index("none", None),
    _index("none_int", (None, 1)),
    _index("slice_none_int", (slice(None), None, 1)),
    _index("ellipsis", Ellipsis),
    _index("ellipsis_int", (Ellipsis, 0)),
    _index("ellipsis_none", (Ellipsis, None)),
    _index("int_ellipsis_int", (1, Ellipsis, 2), shape=(3, 4, 5)),
    _index("array", np.array([0, 2, 0])),
    _index("list", [0, 1, 3]),
    _index("array_2d", np.array([[0, 1], [1, 1]])),
    _index("array_slice", (np.array([0, 0, 2]), slice(1, 4))),
    _index("slice_array", (slice(None), np.array([4, 0, 4]))),
    _index("labels", (np.arange(4), np.array([1, 1, 4, 0]))),
    _index("labels_repeated_rows", (np.array([0, 0, 3, 0]), np.array([2, 2, 1, 2]))),
    _index("mixed_3d", (slice(None), [0, 0, 2], slice(1, None)), shape=(3, 4, 5)),
    _index("ellipsis_array", (Ellipsis, [4, 0]), shape=(3, 4, 5)),
]
# fmt: on

DIFF_OPS = [op for op in OPS if op.diff]
GRAD2_OPS = [op for op in DIFF_OPS if op.grad2]
LINEAR_OPS = [op for op in DIFF_OPS if not op.grad2]
ids = lambda op: op.name  # noqa: E731


# ---------------------------------------------------------------- input values
_RANGES = {"real": (-2.0, 2.0), "positive": (0.5, 2.0), "nonzero": (0.5, 2.0), "distinct": (-2.0, 2.0)}


def _domains(op, n):
    return op.domain if isinstance(op.domain, tuple) else (op.domain,) * n


def _draw_arrays(data, op, shapes):
    """Hypothesis-drawn float64 arrays for forward tests (repeated values and edge values)."""
    out = []
    for shape, domain in zip(shapes, _domains(op, len(shapes))):
        lo, hi = _RANGES[domain]
        a = data.draw(tbst.arrays(np.float64, shape, lo, hi))
        if domain == "nonzero":
            a = np.where(data.draw(tbst.arrays(np.bool_, shape)), a, -a)
        out.append(a)
    return out


def _sample_arrays(rng, op, shapes):
    """Random float64 arrays for gradient tests, away from kinks by more than eps."""
    if op.domain == "distinct":
        # NOTE: distinct values on a 0.5 grid plus an offset in [0.05, 0.2]: no ties for
        # max/min/maximum, and never within eps of the kinks of relu, abs and clip (0, +-0.5, +-1).
        sizes = [math.prod(s) for s in shapes]
        n = sum(sizes)
        values = (rng.permutation(n) - n // 2) * 0.5 + rng.uniform(0.05, 0.2, n)
        parts = np.split(values, np.cumsum(sizes)[:-1])
        return [p.reshape(s) for p, s in zip(parts, shapes)]
    out = []
    for shape, domain in zip(shapes, _domains(op, len(shapes))):
        lo, hi = _RANGES[domain]
        a = np.asarray(rng.uniform(lo, hi, shape))
        if domain == "nonzero":
            a = np.where(rng.random(shape) < 0.5, a, -a)
        out.append(a)
    return out


# ---------------------------------------------------------------- the table-driven tests
@pytest.mark.parametrize("op", OPS, ids=ids)
@given(data=st.data())
def test_forward_matches_numpy(op, data):
    shapes = data.draw(op.shapes(FORWARD_SIDE), label="shapes")
    kwargs = data.draw(op.params(shapes), label="params")
    arrays = _draw_arrays(data, op, shapes)
    for dtype, tol in ((np.float64, 1e-10), (np.float32, 1e-4)):
        xs = [a.astype(dtype) for a in arrays]
        out = op.tb_fn(*[tb.Tensor(x) for x in xs], **kwargs)
        expected = np.asarray(op.np_fn(*[x.astype(np.float64) for x in xs], **kwargs))
        assert out.dtype == (op.out_dtype or dtype), f"{op.name}: dtype {out.dtype} for {dtype.__name__} inputs"
        assert tuple(out.shape) == expected.shape
        assert_allclose(out.numpy().astype(expected.dtype), expected, rtol=tol, atol=tol, err_msg=op.name)


def _inputs(data, op):
    shapes = data.draw(op.shapes(GRAD_SIDE), label="shapes")
    kwargs = data.draw(op.params(shapes), label="params")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    xs = [tb.Tensor(a, requires_grad=True) for a in _sample_arrays(rng, op, shapes)]
    return (lambda *ts: op.tb_fn(*ts, **kwargs)), xs


@pytest.mark.parametrize("op", DIFF_OPS, ids=ids)
@given(data=st.data())
def test_gradcheck(op, data):
    fn, xs = _inputs(data, op)
    assert gradcheck(fn, xs)


@pytest.mark.parametrize("op", GRAD2_OPS, ids=ids)
@given(data=st.data())
def test_gradgradcheck(op, data):
    fn, xs = _inputs(data, op)
    assert gradgradcheck(fn, xs)


@pytest.mark.parametrize("op", LINEAR_OPS, ids=ids)
@settings(max_examples=3)
@given(data=st.data())
def test_backward_is_differentiable(op, data):
    # Second derivative zero (almost everywhere), but backward must still be differentiable
    # in the incoming gradient, or double backward through a composite breaks.
    fn, xs = _inputs(data, op)
    assert gradgradcheck(fn, xs)


# ---------------------------------------------------------------- conventions
def _grads(fn, *arrays):
    xs = [tb.Tensor(np.asarray(a, dtype=np.float64), requires_grad=True) for a in arrays]
    fn(*xs).backward()
    return [x.grad.numpy() for x in xs]


def test_max_ties_share_gradient_evenly():
    x = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]])
    (g,) = _grads(lambda t: t.max(axis=1).sum(), x)
    assert_allclose(g, np.array([[0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]]))
    (g,) = _grads(lambda t: t.max(axis=-1, keepdims=True).sum(), x)
    assert_allclose(g, np.array([[0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]]))
    (g,) = _grads(lambda t: t.max(), np.array([[3.0, 1.0], [3.0, 3.0]]))
    assert_allclose(g, np.array([[1 / 3, 0], [1 / 3, 1 / 3]]))


def test_min_ties_share_gradient_evenly():
    x = np.array([[1.0, 1.0, 3.0], [-2.0, 5.0, -2.0]])
    (g,) = _grads(lambda t: t.min(axis=(1,)).sum(), x)
    assert_allclose(g, np.array([[0.5, 0.5, 0], [0.5, 0, 0.5]]))
    (g,) = _grads(lambda t: t.min(), x)
    assert_allclose(g, np.array([[0, 0, 0], [0.5, 0, 0.5]]))


def test_maximum_minimum_ties_share_gradient_evenly():
    a = np.array([1.0, 2.0, 3.0])
    b = np.array([1.0, 5.0, 0.0])
    ga, gb = _grads(lambda x, y: tb.maximum(x, y).sum(), a, b)
    assert_allclose(ga, np.array([0.5, 0, 1]))
    assert_allclose(gb, np.array([0.5, 1, 0]))
    ga, gb = _grads(lambda x, y: tb.minimum(x, y).sum(), a, b)
    assert_allclose(ga, np.array([0.5, 1, 0]))
    assert_allclose(gb, np.array([0.5, 0, 1]))
    # broadcast: the scalar's shares add up
    ga, gb = _grads(lambda x, y: tb.maximum(x, y).sum(), np.array([2.0, 2.0, 1.0]), np.array(2.0))
    assert_allclose(ga, np.array([0.5, 0.5, 0]))
    assert_allclose(gb, np.array(2.0))


def test_repeated_indices_accumulate_in_backward():
    n, c = 5, 3
    x = np.random.default_rng(0).standard_normal((n, c))
    rows = np.array([0, 0, 1, 4, 0])
    labels = np.array([2, 2, 0, 1, 2])
    upstream = np.arange(1.0, 6.0)
    (g,) = _grads(lambda t: (t[rows, labels] * tb.Tensor(upstream)).sum(), x)
    expected = np.zeros((n, c))
    np.add.at(expected, (rows, labels), upstream)
    assert_allclose(g, expected)
    assert expected[0, 2] == 1 + 2 + 5  # picked three times
    (g,) = _grads(lambda t: t[np.arange(n), labels].sum(), x)
    expected = np.zeros((n, c))
    expected[np.arange(n), labels] = 1
    assert_allclose(g, expected)


def test_int_tensor_index_matches_array_index():
    x = np.random.default_rng(1).standard_normal((4, 3))
    idx = np.array([3, 0, 3])
    t = tb.Tensor(x, requires_grad=True)
    out = t[tb.Tensor(idx)]
    assert_allclose(out, x[idx])
    out.sum().backward()
    assert_allclose(t.grad, np.bincount(idx, minlength=4)[:, None] * np.ones((4, 3)))


LARGE_LOGITS = np.array([[1e4, 0.0, -1e4], [1e4, 1e4 - 1, 1e4 - 2], [-1e4, -1e4, -1e4], [-1e4, 1e4, 5e3]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_and_log_softmax_stable_at_large_logits(dtype):
    x = LARGE_LOGITS.astype(dtype)
    tol = 1e-6 if dtype == np.float32 else 1e-12
    s = tb.Tensor(x).softmax(-1)
    ls = tb.Tensor(x).log_softmax(axis=1)
    assert np.isfinite(s.numpy()).all() and np.isfinite(ls.numpy()).all()
    assert_allclose(s, _np_softmax(x.astype(np.float64), -1).astype(dtype), rtol=tol, atol=tol)
    assert_allclose(ls, _np_log_softmax(x.astype(np.float64), 1).astype(dtype), rtol=tol, atol=tol)
    # gradients: softmax: s * (v - sum(v * s)); log_softmax: v - s * sum(v)
    v = np.random.default_rng(0).standard_normal(x.shape)
    p = _np_softmax(x.astype(np.float64), -1)
    for fn, expected in (
        (lambda t: t.softmax(-1), p * (v - (v * p).sum(-1, keepdims=True))),
        (lambda t: t.log_softmax(-1), v - p * v.sum(-1, keepdims=True)),
    ):
        t = tb.Tensor(x, requires_grad=True)
        (fn(t) * tb.Tensor(v.astype(dtype))).sum().backward()
        assert np.isfinite(t.grad.numpy()).all()
        assert_allclose(t.grad, expected.astype(dtype), rtol=1e-5, atol=1e-5)


def test_log_softmax_gradcheck_at_large_logits():
    x = tb.Tensor(LARGE_LOGITS, requires_grad=True)
    assert gradcheck(lambda t: t.log_softmax(-1), [x], eps=1e-4)
    assert gradcheck(lambda t: t.softmax(0), [x], eps=1e-4)


def test_comparisons_are_not_differentiable():
    x = tb.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    for out in (x < 1.5, x <= x, x > 0.0, x >= 2.0, x == 1.0, x != 1.0):
        assert out.dtype == np.bool_
        assert not out.requires_grad


# Pinned from shrunk counterexamples of the table tests: 0-d tensors (and 0-d results of
# indexing and reductions) must stay 0-d through forward and backward.
@pytest.mark.parametrize(
    "fn",
    [
        lambda x: -x, lambda x: x.exp(), lambda x: x.abs(), lambda x: x.clip(-1.0, 1.0), lambda x: x * x,
        lambda x: tb.maximum(x, x * 0.5), lambda x: tb.minimum(x, x * 0.5), lambda x: tb.where(x > 0, x, -x),
        lambda x: x.sum(), lambda x: x.reshape(1, 1)[0, -1],
    ],
    ids=["neg", "exp", "abs", "clip", "mul", "maximum", "minimum", "where", "sum", "getitem"],
)
def test_zero_dim_tensors_stay_zero_dim(fn):
    x = tb.Tensor(np.array(0.7), requires_grad=True)
    out = fn(x)
    assert out.shape == ()
    out.backward()
    assert x.grad.shape == ()


def test_zero_dim_results_of_indexing_and_argmax():
    x = tb.Tensor(np.arange(20.0).reshape(4, 5))
    assert x[1, -2].shape == ()
    assert x.argmax().shape == ()
    assert x.argmax().numpy() == 19


def test_transpose_and_T_reverse_axes():
    x = np.arange(24.0).reshape(2, 3, 4)
    assert tb.Tensor(x).transpose().shape == (4, 3, 2)
    assert_allclose(tb.Tensor(x[0]).T, x[0].T)


# ---------------------------------------------------------------- dtypes
def test_float64_stays_float64():
    x = tb.Tensor(np.ones((2, 3)), requires_grad=True)
    assert x.dtype == np.float64
    for out in (x * 2.0, 2.0 - x, x.exp(), x.sum(), x.mean(axis=0), x @ x.T, x.softmax(-1), x[0], x ** 2.0):
        assert out.dtype == np.float64
    (x * 3.0).sum().backward()
    assert x.grad.dtype == np.float64


def test_python_data_becomes_float32():
    assert tb.Tensor([1.0, 2.0]).dtype == np.float32
    assert tb.Tensor(1.5).dtype == np.float32
    assert tb.Tensor([[1.0], [2.5]]).dtype == np.float32
    x = tb.Tensor([1.0, 2.0])
    assert (x * 2.0).dtype == np.float32  # a Python scalar does not promote
    assert (2.0 / x).dtype == np.float32
    assert tb.Tensor(np.ones(2, dtype=np.float32)).dtype == np.float32


def test_mixed_float_dtypes_promote_to_float64():
    a = tb.Tensor(np.ones((2, 2), dtype=np.float32), requires_grad=True)
    b = tb.Tensor(np.ones((2, 2)), requires_grad=True)
    for out in (a + b, b + a, a * b, b - a, a / b, a @ b, b @ a, tb.maximum(a, b), tb.where(a > 0, a, b)):
        assert out.dtype == np.float64
    (a * b).sum().backward()
    assert a.grad.dtype == np.float32  # a gradient has its leaf's dtype
    assert b.grad.dtype == np.float64


def test_integer_data_stays_int64():
    assert tb.Tensor([1, 2, 3]).dtype == np.int64
    assert tb.Tensor(np.array([1, 2], dtype=np.int32)).dtype == np.int64
    assert tb.Tensor(3).dtype == np.int64
    assert tb.Tensor([1, 2], dtype=tb.float64).dtype == np.float64


def test_factories_default_to_float32():
    for t in (tb.zeros(2, 3), tb.zeros((2, 3)), tb.ones(2, 3), tb.randn(2, 3), tb.rand((2, 3))):
        assert t.dtype == np.float32 and t.shape == (2, 3)
    assert tb.zeros(2, dtype=tb.float64).dtype == np.float64
    assert tb.randn(2, 2, dtype=tb.float64).dtype == np.float64


# ---------------------------------------------------------------- exception types
def _t(*shape):
    return tb.Tensor(np.ones(shape))


@pytest.mark.parametrize(
    "call",
    [
        lambda: _t(2, 3) + _t(4),
        lambda: _t(2, 3) * _t(3, 2),
        lambda: _t(2, 3) @ _t(4, 2),
        lambda: _t(3) @ _t(4),
        lambda: _t(2, 2, 3) @ _t(3, 3, 2),
        lambda: _t(2, 3).reshape(4, 2),
        lambda: _t(2, 3).reshape(-1, -1),
        lambda: _t(2, 3).expand(4, 3),
        lambda: _t(2, 3).permute(0, 0),
        lambda: _t(2, 3).permute(0),
        lambda: tb.cat([_t(2, 3), _t(2, 4)], axis=0),
        lambda: tb.stack([_t(2, 3), _t(3, 2)]),
        lambda: tb.where(_t(2) > 0, _t(3), _t(2)),
    ],
    ids=["add", "mul", "matmul", "matmul_1d", "matmul_batch", "reshape", "reshape_two_minus_one",
         "expand", "permute_repeated", "permute_short", "cat", "stack", "where"],
)
def test_shape_mismatch_raises_value_error(call):
    with pytest.raises(ValueError):
        call()


@pytest.mark.parametrize(
    "call",
    [
        lambda: _t(2, 3).sum(axis=2),
        lambda: _t(2, 3).sum(axis=(0, -3)),
        lambda: _t(2, 3).mean(axis=-3),
        lambda: _t(2, 3).var(axis=5),
        lambda: _t(2, 3).max(axis=2),
        lambda: _t(2, 3).argmax(axis=2),
        lambda: _t(2, 3).softmax(2),
        lambda: _t(2, 3).log_softmax(-3),
        lambda: _t(2, 3).unsqueeze(4),
        lambda: tb.cat([_t(2, 3), _t(2, 3)], axis=2),
        lambda: tb.stack([_t(2, 3), _t(2, 3)], axis=4),
    ],
    ids=["sum", "sum_tuple", "mean", "var", "max", "argmax", "softmax", "log_softmax", "unsqueeze", "cat",
         "stack"],
)
def test_axis_out_of_range_raises_axis_error(call):
    with pytest.raises(np.exceptions.AxisError):
        call()


@pytest.mark.parametrize(
    "idx", [10, (0, 7), (0, 0, 0), np.array([0, 4]), [[0, 2]], (slice(None), np.array([-4]))], ids=str
)
def test_bad_index_raises_index_error(idx):
    x = tb.Tensor(np.ones((2, 3)), requires_grad=True)
    with pytest.raises(IndexError):
        x[idx]


def test_bad_data_raises_type_error():
    with pytest.raises(TypeError):
        tb.Tensor("abc")
    with pytest.raises(TypeError):
        tb.Tensor(np.array([1 + 2j]))
    with pytest.raises(TypeError):
        tb.Tensor(np.ones(2)).reshape(2.0)


def test_second_backward_through_freed_graph_raises_runtime_error():
    x = tb.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = (x * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="retain_graph"):
        y.backward()


def test_backward_of_non_scalar_needs_a_gradient():
    x = tb.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    with pytest.raises(RuntimeError):
        (x * 2.0).backward()
