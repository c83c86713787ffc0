"""Numerics at the edges, through the Tensor API and its gradients, against float64
numpy references: softmax / log_softmax / cross_entropy at logits of magnitude 1e4,
sigmoid and tanh saturated at +-1e4, BatchNorm on a constant (zero-variance)
channel, log and sqrt at 0 and below, and float32 overflow (inf / nan where numpy
puts them).

Already covered elsewhere, not repeated here: last-axis softmax / log_softmax at 1e4
and their first gradients (test_ops.py), cross_entropy at 1e4 with reduction "none" /
"sum" (test_losses.py), the kernels' own saturation, special values and thread
independence (test_kernels_*.py), the fused kernel on a constant channel for (N, C)
and (N, C, L) (test_kernels_batchnorm.py).
"""
import warnings

import numpy as np
import pytest

import tinygrad_bn as tb

F = tb.nn.functional
DTYPES = [np.float32, np.float64]
EPS = {np.float32: float(np.finfo(np.float32).eps), np.float64: float(np.finfo(np.float64).eps)}


@pytest.fixture(autouse=True)
def warnings_are_errors():
    """Nothing in this file may warn (numpy's RuntimeWarnings included): edges give
    inf / nan silently, as the kernels promise."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def leaf(a):
    return tb.Tensor(a, requires_grad=True)


def assert_same_specials(got, want, what=""):
    """Same NaN positions, same infinities (with sign) at the same positions."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, what
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{what}: NaN positions")
    inf = np.isinf(want)
    np.testing.assert_array_equal(np.isinf(got), inf, err_msg=f"{what}: inf positions")
    np.testing.assert_array_equal(got[inf], want[inf], err_msg=f"{what}: signs of inf")


# ---------------------------------------------------------------- references (float64)
def softmax_ref(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax_ref(x, axis):
    s = x - x.max(axis=axis, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=axis, keepdims=True))


def near_ties_at_1e4(shape, dtype, seed=0):
    """Logits of +-1e4 plus N(0, 9) offsets: every softmax group mixes values 2e4 apart
    (exp underflows) with near-ties at the top (non-trivial probabilities)."""
    rng = np.random.default_rng(seed)
    return (rng.choice([-1e4, 1e4], shape) + 3 * rng.standard_normal(shape)).astype(dtype)


# ---------------------------------------------------------------- softmax / log_softmax at 1e4
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, axis", [((7, 5), 0), ((4, 6, 5), 1), ((3, 4, 9), 0), ((600, 300), 0)])
def test_softmax_and_log_softmax_at_1e4_on_any_axis_match_float64(shape, axis, dtype):
    """Along a non-last axis (and on 180000 elements, above the parallel threshold),
    softmax and log_softmax of logits of magnitude 1e4 are finite and equal the float64
    references on the same input: softmax to a few eps, log_softmax to 2 ulps of its
    value (which reaches 2e4); their gradients for a random upstream v,
    p (v - sum v p) and v - p sum v, to a few eps of sum |v|."""
    x = near_ties_at_1e4(shape, dtype)
    v = np.random.default_rng(1).standard_normal(shape).astype(dtype)
    x64, v64 = x.astype(np.float64), v.astype(np.float64)
    p, lp = softmax_ref(x64, axis), log_softmax_ref(x64, axis)
    eps = EPS[dtype]

    s, ls = tb.Tensor(x).softmax(axis), tb.Tensor(x).log_softmax(axis)
    assert s.dtype == dtype and ls.dtype == dtype
    assert np.isfinite(s.numpy()).all() and np.isfinite(ls.numpy()).all()
    assert np.all(np.abs(s.numpy() - p) <= 4 * eps)
    assert np.all(np.abs(ls.numpy() - lp) <= 2 * np.spacing(np.abs(lp).astype(dtype)) + 4 * eps)

    scale = 8 * eps * (1 + np.abs(v64).sum(axis=axis, keepdims=True))
    for fn, want in ((lambda t: t.softmax(axis), p * (v64 - (v64 * p).sum(axis=axis, keepdims=True))),
                     (lambda t: t.log_softmax(axis), v64 - p * v64.sum(axis=axis, keepdims=True))):
        t = leaf(x)
        (fn(t) * tb.Tensor(v)).sum().backward()
        g = t.grad.numpy()
        assert g.dtype == dtype and np.isfinite(g).all()
        assert np.all(np.abs(g - want) <= scale), f"max |grad - ref| = {np.abs(g - want).max()}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_saturates_exactly_at_gaps_of_1e4(dtype):
    """Gaps of 1e4 underflow exp to exactly 0: softmax is exactly one-hot and
    log_softmax exactly the negated gaps, in both dtypes (no 0 * inf, no log(0))."""
    x = np.array([[1e4, 0.0, -1e4], [-1e4, -1e4, 1e4]], dtype)
    np.testing.assert_array_equal(tb.Tensor(x).softmax(1).numpy(), [[1, 0, 0], [0, 0, 1]])
    np.testing.assert_array_equal(tb.Tensor(x).log_softmax(1).numpy(), [[0, -1e4, -2e4], [-2e4, -2e4, 0]])
    np.testing.assert_array_equal(tb.Tensor(x.T.copy()).softmax(0).numpy(), [[1, 0], [0, 0], [0, 1]])


# ---------------------------------------------------------------- cross_entropy at 1e4
def cross_entropy_ref(z, labels, smoothing):
    """mean_i [-(1 - s) log p[i, y_i] - s mean_c log p[i, c]] in float64."""
    lp = log_softmax_ref(z, 1)
    n = len(labels)
    return np.mean(-(1 - smoothing) * lp[np.arange(n), labels] - smoothing * lp.mean(axis=1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_mean_with_smoothing_at_1e4_matches_float64(dtype, smoothing):
    """reduction="mean" with and without label smoothing at logits of magnitude 1e4: a
    finite loss equal to the float64 reference (to ulps of the 2e4-sized log-probs)
    and the gradient (softmax - target) / N, finite, to a few eps."""
    n, c = 6, 5
    z = near_ties_at_1e4((n, c), dtype, seed=2)
    labels = np.random.default_rng(3).integers(0, c, n)
    z64 = z.astype(np.float64)
    zt = leaf(z)
    loss = F.cross_entropy(zt, labels, label_smoothing=smoothing)
    assert loss.dtype == dtype and np.isfinite(loss.item())
    want = cross_entropy_ref(z64, labels, smoothing)
    assert abs(loss.item() - want) <= 4 * np.spacing(dtype(2e4)) + 4 * EPS[dtype] * abs(want)
    loss.backward()
    target = np.full((n, c), smoothing / c)
    target[np.arange(n), labels] += 1 - smoothing
    grad = zt.grad.numpy()
    assert grad.dtype == dtype and np.isfinite(grad).all()
    # NOTE: the kernel recomputes p = exp((z - max) - log_sum) from the forward's two parts,
    # never from max + log_sum rounded as one number (that was off by ulps of |z| ~ 1e4,
    # 2e-12 in float64): p is good to a few eps of its own dtype
    p = softmax_ref(z64, 1)
    tol = 8 * EPS[dtype] * (p + 1) / n
    assert np.all(np.abs(grad - (p - target) / n) <= tol), f"max |grad - ref| = {np.abs(grad - (p - target) / n).max()}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_second_derivatives_at_1e4_are_finite_and_match_float64(dtype):
    """Hessian-vector products through create_graph at logits of magnitude 1e4:
    cross_entropy (mean): H v = (p v - p (p . v)) / N per row;
    sum(u * log_softmax): H v = -(sum u) p (v - p . v) per row. Finite, equal to float64."""
    n, c = 4, 6
    z = near_ties_at_1e4((n, c), dtype, seed=4)
    rng = np.random.default_rng(5)
    labels, u, v = rng.integers(0, c, n), rng.standard_normal((n, c)), rng.standard_normal((n, c))
    z64 = z.astype(np.float64)
    p = softmax_ref(z64, 1)
    pv = (p * v).sum(axis=1, keepdims=True)
    cases = [
        (lambda t: F.cross_entropy(t, labels), (p * v - p * pv) / n, 1.0),
        (lambda t: (t.log_softmax(1) * tb.Tensor(u.astype(dtype))).sum(),
         -u.sum(axis=1, keepdims=True) * p * (v - pv), np.abs(u).sum(axis=1, keepdims=True)),
    ]
    for fn, want, size in cases:
        zt = leaf(z)
        (g,) = tb.grad(fn(zt), zt, create_graph=True)
        (hv,) = tb.grad((g * tb.Tensor(v.astype(dtype))).sum(), zt)
        got = hv.numpy()
        assert got.dtype == dtype and np.isfinite(got).all()
        assert np.all(np.abs(got - want) <= 16 * EPS[dtype] * size * (1 + np.abs(v).sum(axis=1, keepdims=True)))


# ---------------------------------------------------------------- sigmoid / tanh saturation
@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_and_tanh_saturate_exactly_with_zero_gradients_at_1e4(dtype):
    """sigmoid(-1e4, 0, 1e4) = (0, 1/2, 1) and tanh = (-1, 0, 1) exactly; first and
    second derivatives at +-1e4 are exactly 0 (finite: no inf * 0), and at 0 they are
    the float64 values 1/4, 1 and 0, 0."""
    x = np.array([-1e4, 0.0, 1e4], dtype)
    for name, values, first, second in (("sigmoid", [0, 0.5, 1], [0, 0.25, 0], [0, 0, 0]),
                                        ("tanh", [-1, 0, 1], [0, 1, 0], [0, 0, 0])):
        t = leaf(x)
        y = getattr(t, name)()
        np.testing.assert_array_equal(y.numpy(), np.array(values, dtype), err_msg=name)
        (g,) = tb.grad(y.sum(), t, create_graph=True)
        (h,) = tb.grad(g.sum(), t)
        for got, want, order in ((g, first, "first"), (h, second, "second")):
            got = got.numpy()
            assert got.dtype == dtype and np.isfinite(got).all(), f"{name} {order} derivative"
            np.testing.assert_array_equal(got, np.array(want, dtype), err_msg=f"{name} {order} derivative")


# ---------------------------------------------------------------- BatchNorm on a constant channel
def batch_norm_ref(x, gamma, beta, eps, grad_y):
    """Algorithm 1 and DESIGN.md's fused backward in float64 -> y, grad_x, grad_gamma,
    grad_beta, inv_std (kept dims)."""
    axes = (0,) + tuple(range(2, x.ndim))
    view = (1, -1) + (1,) * (x.ndim - 2)
    m = x.size // x.shape[1]
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    inv_std = 1 / np.sqrt(var + eps)
    x_hat = (x - mean) * inv_std
    y = gamma.reshape(view) * x_hat + beta.reshape(view)
    grad_beta = grad_y.sum(axis=axes)
    grad_gamma = (grad_y * x_hat).sum(axis=axes)
    grad_x = gamma.reshape(view) * inv_std / m * (
        m * grad_y - grad_beta.reshape(view) - x_hat * grad_gamma.reshape(view))
    return y, grad_x, grad_gamma, grad_beta, inv_std


BN_LAYOUTS = {"1d": ("BatchNorm1d", (16, 3)), "1d-NCL": ("BatchNorm1d", (4, 3, 6)),
              "2d": ("BatchNorm2d", (4, 3, 5, 6))}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", ["fused", "composed"])
@pytest.mark.parametrize("layout", list(BN_LAYOUTS))
def test_batchnorm_on_a_constant_channel_gives_beta_and_finite_gradients(layout, impl, dtype):
    """Channel 1 holds one value (var_B = 0, x_hat = 0). Through the module in training:
    y = beta on that channel (to eps |beta|); every gradient is finite; grad_gamma = 0
    and grad_beta = sum grad_y there; grad_x there is gamma / sqrt(eps) * (grad_y -
    mean grad_y), which is 0 only when grad_y is constant over the channel (checked
    with loss = y.sum()); the running variance decays as (1 - momentum) * running + 0.
    Everything, other channels included, matches float64 Algorithm 1."""
    module, shape = BN_LAYOUTS[layout]
    rng = np.random.default_rng(6)
    x = rng.standard_normal(shape).astype(dtype)
    x[:, 1] = dtype(1234.5)
    gamma, beta = np.array([1.5, -2.0, 0.5], dtype), np.array([0.25, 3.0, -1.0], dtype)
    bn = getattr(tb.nn, module)(3, eps=1e-5, momentum=0.1, impl=impl, dtype=dtype)
    bn.weight.data[...] = gamma
    bn.bias.data[...] = beta
    eps = EPS[dtype]
    for uniform in (False, True):
        grad_y = np.ones(shape, dtype) if uniform else rng.standard_normal(shape).astype(dtype)
        want_y, want_gx, want_gg, want_gb, inv_std = batch_norm_ref(
            x.astype(np.float64), gamma.astype(np.float64), beta.astype(np.float64), 1e-5, grad_y.astype(np.float64))
        bn.zero_grad()
        xt = leaf(x)
        y = bn(xt)
        (y * tb.Tensor(grad_y)).sum().backward()
        got_y, gx, gg, gb = y.numpy(), xt.grad.numpy(), bn.weight.grad.numpy(), bn.bias.grad.numpy()
        for name, a in (("y", got_y), ("grad_x", gx), ("grad_gamma", gg), ("grad_beta", gb)):
            assert a.dtype == dtype and np.isfinite(a).all(), name
        assert np.all(np.abs(got_y[:, 1] - beta[1]) <= 4 * eps * abs(beta[1])), "y on the constant channel"
        assert abs(gg[1]) <= 4 * eps * np.abs(grad_y[:, 1]).sum(), "grad_gamma of the constant channel"
        # |gamma| * inv_std = 2 / sqrt(eps) ~ 632 amplifies the rounding of grad_y - mean(grad_y)
        gx_tol = abs(gamma[1]) / np.sqrt(1e-5) * 8 * eps * (1 + np.abs(grad_y[:, 1]).max())
        assert np.all(np.abs(gx[:, 1] - want_gx[:, 1]) <= gx_tol), "grad_x of the constant channel"
        if uniform:
            assert np.all(want_gx[:, 1] == 0) and np.all(np.abs(gx[:, 1]) <= gx_tol)
        np.testing.assert_allclose(got_y, want_y, rtol=0, atol=64 * eps * (1 + np.abs(want_y).max()))
        np.testing.assert_allclose(gb, want_gb, rtol=0, atol=8 * eps * np.abs(grad_y).sum())
        np.testing.assert_allclose(gg, want_gg, rtol=0, atol=64 * eps * np.abs(grad_y).sum())
        # per channel, grad_x is gamma * inv_std times O(|grad_y|) terms
        view = (1, -1) + (1,) * (x.ndim - 2)
        gx_scale = np.abs(gamma.astype(np.float64)).reshape(view) * inv_std * (1 + np.abs(grad_y).max())
        assert np.all(np.abs(gx - want_gx) <= 64 * eps * gx_scale), "grad_x"
    # two training steps: running_var = 0.9 * (0.9 * 1 + 0.1 * 0) + 0.1 * 0, running_mean = 0.19 c
    assert bn.running_var.numpy()[1] == pytest.approx(0.81, rel=4 * eps)
    assert bn.running_mean.numpy()[1] == pytest.approx(0.19 * 1234.5, rel=4 * eps)


# ---------------------------------------------------------------- log / sqrt outside their domain
SPECIALS = [0.0, -0.0, -1.0, -1e-30, 1.0, 1e-30, np.inf, -np.inf, np.nan]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op, value, derivative", [
    ("log", np.log, lambda x: 1 / x),
    ("sqrt", np.sqrt, lambda x: 0.5 / np.sqrt(x)),
])
def test_log_and_sqrt_at_zero_and_below_give_numpys_inf_and_nan(op, value, derivative, dtype):
    """log(+-0) = -inf, log(x < 0) = nan, sqrt(x < 0) = nan, sqrt(-0) = -0, without an
    exception or warning; forward and gradient (upstream 1: 1/x, 0.5/sqrt(x), so
    +-inf at +-0) equal numpy's values, infinities and NaNs exactly."""
    x = np.array(SPECIALS, dtype)
    with np.errstate(all="ignore"):
        want, want_grad = value(x), derivative(x).astype(dtype)
    t = leaf(x)
    y = getattr(t, op)()
    y.backward(tb.ones(len(x), dtype=dtype))
    np.testing.assert_array_equal(y.numpy(), want)  # NaNs compare equal here
    numbers = ~np.isnan(want)  # the sign of a NaN carries no meaning
    assert np.array_equal(np.signbit(y.numpy()[numbers]), np.signbit(want[numbers]))
    np.testing.assert_array_equal(t.grad.numpy(), want_grad)
    assert_same_specials(t.grad.numpy(), want_grad, f"d {op}")


# ---------------------------------------------------------------- float32 overflow
def test_float32_exp_overflows_to_inf_like_numpy():
    """exp in float32 is inf above log(FLT_MAX) = 88.72 (exp(100) = inf), 0 far below,
    at the same positions as numpy's; d exp(x)/dx = exp(x) overflows there too."""
    x = np.array([100.0, 88.72, 88.73, 1e4, -100.0, -104.0, -1e4, 0.0, np.inf, -np.inf, np.nan], np.float32)
    with np.errstate(all="ignore"):
        want = np.exp(x)
    t = leaf(x)
    y = t.exp()
    y.sum().backward()
    assert_same_specials(y.numpy(), want, "exp")
    assert_same_specials(t.grad.numpy(), want, "d exp")
    assert y.numpy()[0] == np.inf
    finite = np.isfinite(want) & (want > 0)
    np.testing.assert_allclose(y.numpy()[finite], want[finite], rtol=4 * EPS[np.float32])


def test_float32_products_and_sums_overflow_like_numpy():
    """x * x, x + x, x * x - x * x (inf - inf = nan), x / 0, and the gradient of
    sum(x * x) (= x + x) give numpy's float32 values, infinities and NaNs exactly."""
    x = np.array([3e38, -3e38, 2e19, -2e19, 1e19, 3.0, 0.0, np.inf, np.nan], np.float32)
    t = leaf(x)
    zero = tb.Tensor(np.zeros_like(x))
    with np.errstate(all="ignore"):
        cases = {"x*x": (t * t, x * x), "x+x": (t + t, x + x), "x*x-x*x": (t * t - t * t, x * x - x * x),
                 "x/0": (t / zero, x / np.zeros_like(x))}
    for name, (got, want) in cases.items():
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got.numpy(), want, err_msg=name)
        assert_same_specials(got.numpy(), want, name)
    (t * t).sum().backward()
    with np.errstate(all="ignore"):
        want = x * np.float32(1) + x * np.float32(1)
    np.testing.assert_array_equal(t.grad.numpy(), want)
    assert t.grad.numpy()[0] == np.inf


def test_float32_sum_and_mean_overflow_like_numpy():
    """Row sums / means that overflow float32 (same-sign terms, infinities, NaNs) are
    inf / -inf / nan where numpy's are; finite rows agree to float32 rounding."""
    x = np.array([[3e38, 3e38, 1.0], [1e38, 1e38, 1e38], [-3e38, -3e38, -1.0], [np.inf, -np.inf, 0.0],
                  [np.nan, 1.0, 2.0], [np.inf, 1e38, 1e38], [1.5, 2.5, 3.0]], np.float32)
    # NOTE: the sum kernel rounds its float64 total with numpy's astype, which warns on
    # overflow ("overflow encountered in cast") as numpy's own float32 sum does; the
    # elementwise kernels are silent.
    with np.errstate(all="ignore"):
        results = (("sum", tb.Tensor(x).sum(axis=1), np.sum(x, axis=1)),
                   ("mean", tb.Tensor(x).mean(axis=1), np.mean(x, axis=1)))
    for name, got, want in results:
        assert got.dtype == np.float32
        assert_same_specials(got.numpy(), want, name)
        finite = np.isfinite(want)
        np.testing.assert_allclose(got.numpy()[finite], want[finite], rtol=2 * EPS[np.float32], err_msg=name)
    big = np.full(1000, 1e36, np.float32)
    with np.errstate(all="ignore"):
        assert tb.Tensor(big).sum().item() == np.sum(big) == np.inf


def test_float32_sum_accumulates_in_float64_where_numpy_overflows_midway():
    """NOTE: deliberate difference from numpy. 3e38 + 3e38 - 3e38: numpy's float32
    accumulator overflows at the first addition (inf); the sum kernel accumulates in
    float64 (tinygrad_bn.kernels.sum) and returns the exact 3e38."""
    x = np.array([3e38, 3e38, -3e38], np.float32)
    with np.errstate(all="ignore"):
        assert np.sum(x) == np.inf
    assert tb.Tensor(x).sum().item() == np.float32(np.sum(x, dtype=np.float64))
