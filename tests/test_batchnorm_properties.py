"""Batch Normalization's nine properties (DESIGN.md, "what the paper fixes"), one test
each, for impl="fused" and impl="composed" wherever the property applies.

Inputs come from tbst.batch_norm_inputs: (N, C), (N, C, L), (N, C, H, W) with down to
M = 2 values per channel and C = 1, per-channel scales 1e-3..1e3 and offsets up to
1e4 x the spread, gamma including 0 and negative; eps is drawn from 1e-8..1e-1.
Gradients are taken under a random upstream gradient, never ones: sum(BN(x)) has
zero gradient w.r.t. x.

Error model behind every tolerance (LESSONS.md): a computation in a dtype with unit
roundoff eps_dtype that centres x in that dtype carries about
eps_dtype * |mean| / sqrt(var + eps) error in x_hat, so tolerances are
K * eps_dtype * (1 + r) with r = max over channels of |mean| / sqrt(var + eps).
"""
import dataclasses

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import tinygrad_bn as tb
from tinygrad_bn.function import Function
from tinygrad_bn.testing import gradcheck, gradgradcheck
from tinygrad_bn.testing import strategies as tbst
from tinygrad_bn.testing.agreement import (
    DisagreementError, assert_implementations_agree, check_implementations_agree,
)

F = tb.nn.functional
IMPLS = ("fused", "composed")
UNIT_ROUNDOFF = {np.dtype(np.float32): float(np.finfo(np.float32).eps),
                 np.dtype(np.float64): float(np.finfo(np.float64).eps)}


# ============================================================== strategies
@dataclasses.dataclass
class Case:
    """One batch to normalise, with its float64 statistics (computed from the very
    values the implementations see, so the reference is exact up to float64)."""

    x: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    eps: float
    momentum: float
    seed: int

    def __post_init__(self):
        self.dtype = self.x.dtype
        self.axes = (0,) + tuple(range(2, self.x.ndim))
        self.view = (1, -1) + (1,) * (self.x.ndim - 2)
        self.M = self.x.size // self.x.shape[1]
        x64 = self.x.astype(np.float64)
        self.mean = x64.mean(self.axes)
        self.var = ((x64 - self.mean.reshape(self.view)) ** 2).mean(self.axes)  # NOTE: two passes
        self.inv_std = 1.0 / np.sqrt(self.var + self.eps)
        self.x_hat = (x64 - self.mean.reshape(self.view)) * self.inv_std.reshape(self.view)
        # r: how far the channel offsets sit from zero in units of the normalising spread
        self.offset_ratio = float(np.max(np.abs(self.mean) * self.inv_std))
        rng = np.random.default_rng(self.seed)
        spread = np.sqrt(self.var)
        self.spread = np.where(spread > 0, spread, 1.0)
        # running stats of an earlier batch from the same distribution
        self.running_mean0 = (self.mean + self.spread * rng.standard_normal(self.mean.shape)).astype(self.dtype)
        self.running_var0 = (self.spread**2 * rng.uniform(0.5, 2.0, self.var.shape)).astype(self.dtype)
        self.grad_y = rng.standard_normal(self.x.shape).astype(self.dtype)

    @property
    def unit_roundoff(self):
        return UNIT_ROUNDOFF[self.dtype]

    def standardized(self):
        """z with x = mean + spread * z per channel (z has mean 0, variance 1)."""
        return ((self.x.astype(np.float64) - self.mean.reshape(self.view)) / self.spread.reshape(self.view)).astype(
            self.dtype)


eps_values = st.floats(-8.0, -1.0).map(lambda e: 10.0**e)


@st.composite
def batch_norm_cases(draw, dtypes=(np.float32, np.float64), ndims=(2, 3, 4), max_offset=1e4,
                     max_batch=4, max_channels=4, max_spatial=3):
    dtype = draw(st.sampled_from(dtypes))
    x, gamma, beta = draw(tbst.batch_norm_inputs(ndims=ndims, dtype=dtype, max_batch=max_batch,
                                                 max_channels=max_channels, max_spatial=max_spatial,
                                                 max_offset=max_offset))
    return Case(x, gamma, beta, draw(eps_values), draw(st.floats(0.0, 1.0)), draw(st.integers(0, 2**32 - 1)))


def _in_z(case):
    """Inputs for differentiating w.r.t. z, x = mean + spread * z: the helper's tuple."""
    return case.standardized(), case.gamma, case.beta, case


def _batch_norm_of_z(impl, shift=None):
    """(z, gamma, beta, case) -> (y, running_mean / spread, running_var / spread**2).

    NOTE: gradients are taken w.r.t. z, not x. grad_x scales like gamma / spread per
    channel and the drawn spreads differ by up to 1e6 between channels; w.r.t. z every
    channel's gradient is O(|gamma| |grad_y|), so one tolerance fits all channels. The
    chain-rule factor (spread, per channel) is the same exact-up-to-rounding multiply
    for both implementations. Running stats are returned in the same units.
    """
    def batch_norm(z, gamma, beta, case):
        spread = tb.Tensor(case.spread.astype(case.dtype)).reshape(case.view)
        x = z * spread + tb.Tensor(case.mean.astype(case.dtype)).reshape(case.view)
        if shift is not None:
            x = x + tb.Tensor(shift(case).astype(case.dtype)).reshape(case.view)
        running_mean, running_var = tb.Tensor(case.running_mean0.copy()), tb.Tensor(case.running_var0.copy())
        y = F.batch_norm(x, running_mean, running_var, gamma, beta, training=True, momentum=case.momentum,
                         eps=case.eps, impl=impl)
        return y, tb.Tensor(running_mean.numpy() / case.spread), tb.Tensor(running_var.numpy() / case.spread**2)
    return batch_norm


def _rtol(inputs):
    case = inputs[-1]
    return 16 * case.unit_roundoff * (1 + case.offset_ratio)


def _atol(inputs):
    # grad_gamma, grad_beta and the second derivatives are sums of M terms of size O(|grad_y|)
    return _rtol(inputs) * inputs[-1].M


def _batch_norm(x, case, impl, weight=None, bias=None):
    """Batch statistics, no running stats."""
    return F.batch_norm(x, None, None, weight, bias, training=True, eps=case.eps, impl=impl)


# ============================================================== 1. fused == composed
def test_fused_batchnorm_matches_composed():
    """Outputs, running stats, gradients w.r.t. x (via z), gamma and beta, and second
    gradients, fused vs composed, float32 and float64.

    Tolerance: |fused - composed| <= 16 eps_dtype (1 + r) (max|composed| + M), r the
    largest |mean| / sqrt(var + eps). In float64 that is ~4e-15 (1 + r): tight. In
    float32 it grows with r because the composed graph centres in float32 (error
    ~eps32 r in x_hat, inherent, LESSONS.md) while the kernel centres in double.
    Measured worst over 2000 random draws: 3 eps_dtype (1 + r) (max|composed| + M).
    """
    assert_implementations_agree(
        _batch_norm_of_z("fused"), _batch_norm_of_z("composed"), batch_norm_cases().map(_in_z),
        rtol=_rtol, atol=_atol, relative_to="max", dtype=None, check_gradgrad=True, names=("fused", "composed"),
    )


# ============================================================== 2. gradcheck / gradgradcheck
# Shrunk counterexamples, pinned (they failed on test tolerances, not on the library):
# M = 2 with two close values, |mean| / std ~ 2e5: a 1e-6 finite-difference step drowns in rounding.
_CLOSE_PAIR = Case(np.array([[2048.12573, -0.132104863, 0.64042265], [2048.10490, -0.535669373, 0.361595055]]),
                   np.zeros(3), np.zeros(3), 1e-6, 0.0, 0)
# float32 gamma drawn as 1e-45 (subnormal): y and grad_x round in absolute, not relative, steps.
_SUBNORMAL_GAMMA = Case(np.array([[0.12573022, -0.13210486, 0.64042264], [0.10490011, -0.5356694, 0.36159506]],
                                 np.float32), np.array([0, 0, 1e-45], np.float32), np.zeros(3, np.float32), 0.1, 0.0, 0)


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=8)
@given(case=batch_norm_cases(dtypes=(np.float64,), max_batch=3, max_channels=3, max_spatial=2))
@example(case=_CLOSE_PAIR)
def test_batchnorm_gradcheck_float64(impl, case):
    """First and second derivatives of both implementations vs central differences,
    under a random upstream gradient.

    NOTE: w.r.t. z with x = mean + spread * z, so one step size fits every drawn scale.
    The step is 1e-4: in z the third derivatives are O(1), so truncation error is
    ~1e-9, while rounding x = mean + spread * (z + h) costs ~eps64 r / h, r up to 1e5
    when M = 2 draws two close values (a 1e-6 step failed there on noise alone)."""
    z, gamma, beta, _ = _in_z(case)
    bn = _batch_norm_of_z(impl)

    def y_of(z, gamma, beta):
        return bn(z, gamma, beta, case)[0]

    inputs = [tb.Tensor(a, requires_grad=True) for a in (z, gamma, beta)]
    gradcheck(y_of, inputs, eps=1e-4, atol=1e-5, rtol=1e-3)
    gradgradcheck(y_of, inputs, eps=1e-4, atol=1e-5, rtol=1e-3)


# ============================================================== 3. normalised moments
@pytest.mark.parametrize("impl", IMPLS)
@given(case=batch_norm_cases())
def test_normalized_output_has_zero_mean_and_variance_var_over_var_plus_eps(impl, case):
    """gamma = 1, beta = 0 (affine off): per channel mean(y) = 0, var(y) = var / (var + eps),
    var the biased batch variance in float64. Tolerance 16 eps_dtype (1 + r)."""
    y = _batch_norm(tb.Tensor(case.x), case, impl).numpy().astype(np.float64)
    tol = 16 * case.unit_roundoff * (1 + case.offset_ratio)
    np.testing.assert_allclose(y.mean(case.axes), 0.0, rtol=0, atol=tol)
    np.testing.assert_allclose(y.var(case.axes), case.var / (case.var + case.eps), rtol=0, atol=tol)


# ============================================================== 4. identity
@pytest.mark.parametrize("impl", IMPLS)
@given(case=batch_norm_cases())
def test_identity_is_representable(impl, case):
    """gamma = sqrt(var_B + eps), beta = mu_B gives y = x, within
    16 eps_dtype (|mu_B| + sqrt(var_B + eps)) per channel (the rounding of x itself,
    of gamma and of beta in the dtype)."""
    gamma = np.sqrt(case.var + case.eps).astype(case.dtype)
    beta = case.mean.astype(case.dtype)
    y = _batch_norm(tb.Tensor(case.x), case, impl, tb.Tensor(gamma), tb.Tensor(beta)).numpy()
    tol = 16 * case.unit_roundoff * (np.abs(case.mean) + np.sqrt(case.var + case.eps))
    err = np.abs(y.astype(np.float64) - case.x)
    assert (err <= tol.reshape(case.view)).all(), f"max |y - x| / tol = {np.max(err / tol.reshape(case.view))}"


# ============================================================== 5. shift invariance
@pytest.mark.parametrize("impl", IMPLS)
@given(case=batch_norm_cases(), shift_in_spreads=st.lists(st.floats(-1e3, 1e3), min_size=4, max_size=4))
def test_shift_invariance_per_channel(impl, case, shift_in_spreads):
    """BN(x + c_k) = BN(x) for per-channel constants c_k up to 1e3 spreads, in value and
    in the gradients w.r.t. x (via z), gamma and beta. Tolerance as property 1 with r
    counting the shifted mean: x + c rounds at eps_dtype |mean + c|."""
    c = shift_in_spreads[: case.x.shape[1]]

    def shift(case):
        return np.asarray(c) * case.spread

    def y_only(bn):
        return lambda *inputs: bn(*inputs)[0]

    rtol = 16 * case.unit_roundoff * (1 + np.max((np.abs(case.mean) + np.abs(shift(case))) * case.inv_std))
    check_implementations_agree(
        y_only(_batch_norm_of_z(impl, shift=shift)), y_only(_batch_norm_of_z(impl)), _in_z(case),
        rtol=rtol, atol=rtol * case.M, relative_to="max", dtype=None, names=("BN(x + c)", "BN(x)"),
    )


# ============================================================== 6. scale invariance
@st.composite
def linear_then_batchnorm_inputs(draw):
    """u (N, in) or (N, L, in), W (C, in), gamma, beta: float64, standard normal."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n, c, d = draw(st.integers(2, 5)), draw(st.integers(1, 4)), draw(st.integers(1, 5))
    length = draw(st.sampled_from([None, 1, 3]))
    u = rng.standard_normal((n, d) if length is None else (n, length, d))
    w = rng.standard_normal((c, d))
    gamma = np.array(draw(st.lists(st.sampled_from([0.0, -1.0, 0.5, 2.0]), min_size=c, max_size=c)))
    return u, w, gamma, rng.standard_normal(c)


def _linear_then_batchnorm(impl, a, eps):
    """(u, W, gamma, beta) -> BN_eps((a W) u); (N, L, C) is moved to (N, C, L)."""
    def f(u, w, gamma, beta):
        pre = F.linear(u, w * a)
        if pre.ndim == 3:
            pre = pre.transpose(0, 2, 1)
        return F.batch_norm(pre, None, None, gamma, beta, training=True, eps=eps, impl=impl)
    return f


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=10)
@given(inputs=linear_then_batchnorm_inputs(), eps=eps_values)
def test_scale_invariance_of_linear_then_batchnorm(impl, inputs, eps):
    """For a in {0.01, 0.1, 10, 100}: BN((aW)u) = BN(Wu), d BN/du unchanged, and
    d BN/d(aW) = (1/a) d BN/dW.

    With W the leaf, the gradient of BN((aW)u) w.r.t. W is a * d BN/d(aW), so equal
    W-gradients of the two sides is exactly the (1/a) statement. eps is not scaled by
    a**2, so the statement is exact only as eps -> 0; checked twice:
      - the eps-corrected identity BN_eps((aW)u) = BN_{eps/a^2}(Wu), for every drawn eps
        (plus second gradients);
      - the literal one, with eps = 1e-14 min(1, a^2) min var(Wu) on both sides.
    Tolerance: 1e-9 relative, and 1e-9 of the size of the terms the gradients are made
    of, |gamma| |v| (|W| in + |u| M) / std (and that again times (|W| in + |u| M) / std
    for second gradients): with M = 2 the true gradients are O(eps / var) of those terms.
    """
    u, w, gamma, _ = inputs
    pre = u @ w.T
    var = pre.reshape(-1, w.shape[0]).var(axis=0)
    m = pre.size // w.shape[0]
    spread = max(float(np.sqrt(var.min())), 1e-300)
    reach = (np.abs(w).max() * w.shape[1] + np.abs(u).max() * m) / spread
    first_atol = 1e-9 * (1 + np.abs(gamma).max()) * 5 * reach  # |v| <= 5
    second_atol = first_atol * (1 + reach)
    for a in (0.01, 0.1, 10.0, 100.0):
        scaled, reference = _linear_then_batchnorm(impl, a, eps), _linear_then_batchnorm(impl, 1.0, eps / a**2)
        names = (f"BN(({a}W)u)", "BN(Wu)")
        check_implementations_agree(scaled, reference, inputs, rtol=1e-9, atol=first_atol, relative_to="max",
                                    names=names)
        check_implementations_agree(scaled, reference, inputs, rtol=1e-9, atol=second_atol, relative_to="max",
                                    check_gradgrad=True, names=names)
        tiny = 1e-14 * min(1.0, a**2) * max(float(var.min()), 1e-30)
        check_implementations_agree(
            _linear_then_batchnorm(impl, a, tiny), _linear_then_batchnorm(impl, 1.0, tiny), inputs,
            rtol=1e-9, atol=first_atol, relative_to="max", names=names,
        )


# ============================================================== 7. gradient identities
@pytest.mark.parametrize("impl", IMPLS)
@given(case=batch_norm_cases())
@example(case=_SUBNORMAL_GAMMA)
def test_grad_x_sums_to_zero_per_channel(impl, case):
    """Per channel: sum_i dx_i = 0 and sum_i dx_i x_hat_i = g s eps/(var + eps) sum_i dy_i x_hat_i
    (s = 1/sqrt(var + eps), x_hat and the right side in float64). Each dx_i is a
    combination of terms of size |g| s max|dy|, so the tolerance per channel is
    16 eps_dtype (1 + r) M |g| s max|dy| (times max|x_hat| for the second identity)."""
    x = tb.Tensor(case.x, requires_grad=True)
    gamma = tb.Tensor(case.gamma, requires_grad=True)
    y = _batch_norm(x, case, impl, gamma, tb.Tensor(case.beta, requires_grad=True))
    (grad_x,) = tb.grad(y, [x], grad_outputs=tb.Tensor(case.grad_y))
    grad_x = grad_x.numpy().astype(np.float64)
    grad_y = case.grad_y.astype(np.float64)
    g, s = case.gamma.astype(np.float64), case.inv_std
    term = np.abs(g) * s * np.abs(grad_y).max()
    tol = 16 * case.unit_roundoff * (1 + case.offset_ratio) * case.M * term
    # NOTE: + tiny: gamma may be subnormal in float32 (1e-45), where rounding is absolute
    tiny = case.M * float(np.finfo(case.dtype).tiny)
    np.testing.assert_array_less(np.abs(grad_x.sum(case.axes)), tol + tiny)
    lhs = (grad_x * case.x_hat).sum(case.axes)
    rhs = g * s * case.eps / (case.var + case.eps) * (grad_y * case.x_hat).sum(case.axes)
    np.testing.assert_array_less(np.abs(lhs - rhs), (tol + tiny) * max(1.0, np.abs(case.x_hat).max()))


# ============================================================== 8. float32 stability
def _lessons_case():
    """LESSONS.md's measurement: float32, |mean|/std = 1e4, M = 4096."""
    rng = np.random.default_rng(0)
    x = (1e4 + rng.standard_normal((4096, 2))).astype(np.float32)
    return Case(x, np.array([1.0, -0.5], np.float32), np.array([0.0, 2.0], np.float32), 1e-5, 0.1, 0)


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=15)
@given(case=batch_norm_cases(dtypes=(np.float32,), max_batch=256, max_spatial=6))
@example(case=_lessons_case())
@example(case=_SUBNORMAL_GAMMA)
def test_float32_stable_for_large_channel_offsets(impl, case):
    """float32 input with |mean|/std up to 1e4, against Algorithm 1 in float64 on the same
    float32 values. Errors are measured relative to |gamma| (x_hat's scale) + |beta|.

    fused: within float32 rounding, 8 eps32, whatever the offset (double sums, centring
    in double). composed: centres in float32, so 16 eps32 (1 + r); a one-pass
    E[x^2] - E[x]^2 would give NaN or O(1) errors here, not eps32 r."""
    y = _batch_norm(tb.Tensor(case.x), case, impl, tb.Tensor(case.gamma), tb.Tensor(case.beta)).numpy()
    y64 = case.gamma.astype(np.float64).reshape(case.view) * case.x_hat + case.beta.astype(np.float64).reshape(
        case.view)
    assert np.isfinite(y).all()
    scale = (np.abs(case.gamma.astype(np.float64)) * max(1.0, np.abs(case.x_hat).max()) + np.abs(case.beta)).reshape(
        case.view)
    growth = 1.0 if impl == "fused" else 2 * (1 + case.offset_ratio)
    # NOTE: + tiny: gamma may be subnormal (1e-45), where float32 rounding is absolute
    tol = 8 * UNIT_ROUNDOFF[np.dtype(np.float32)] * growth * scale + float(np.finfo(np.float32).tiny)
    err = np.abs(y.astype(np.float64) - y64)
    assert (err <= tol).all(), f"max |y - y64| / tol = {np.max(err / tol)} (r = {case.offset_ratio:.3g})"


# ============================================================== 9. determinism
@pytest.fixture
def restore_threads():
    n = tb.get_num_threads()
    yield
    tb.set_num_threads(n)


def _forward_backward(x, gamma, beta, grad_y, impl):
    xt, gt, bt = (tb.Tensor(a, requires_grad=True) for a in (x, gamma, beta))
    running_mean = tb.Tensor(np.full(x.shape[1], 0.5, x.dtype))
    running_var = tb.Tensor(np.full(x.shape[1], 2.0, x.dtype))
    y = F.batch_norm(xt, running_mean, running_var, gt, bt, training=True, momentum=0.1, eps=1e-5, impl=impl)
    grads = tb.grad(y, [xt, gt, bt], grad_outputs=tb.Tensor(grad_y))
    y_eval = F.batch_norm(xt, running_mean, running_var, gt, bt, training=False, eps=1e-5, impl=impl)
    return [y.numpy(), running_mean.numpy(), running_var.numpy(), y_eval.numpy()] + [g.numpy() for g in grads]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(7000, 10), (50, 7, 200), (10, 7, 25, 40)])
def test_kernel_independent_of_thread_count(impl, dtype, shape, restore_threads):
    """Forward (train and eval), running stats and backward are bit-identical for 1, 2
    and 3 OpenMP threads on 70000 elements (above the 32768-element parallel cutoff),
    with offsets large enough that any change in summation order shows."""
    rng = np.random.default_rng(0)
    view = (1, -1) + (1,) * (len(shape) - 2)
    x = (rng.uniform(-1e3, 1e3, shape[1]).reshape(view) + rng.standard_normal(shape)).astype(dtype)
    gamma, beta = rng.standard_normal(shape[1]).astype(dtype), rng.standard_normal(shape[1]).astype(dtype)
    grad_y = rng.standard_normal(shape).astype(dtype)
    results = {}
    for n in (1, 2, 3):
        tb.set_num_threads(n)
        results[n] = _forward_backward(x, gamma, beta, grad_y, impl)
    names = ["y", "running_mean", "running_var", "y_eval", "grad_x", "grad_gamma", "grad_beta"]
    for n in (2, 3):
        for name, a, b in zip(names, results[1], results[n]):
            assert a.tobytes() == b.tobytes(), (
                f"{name} differs between 1 and {n} threads: max |diff| = {np.abs(a - b).max()}")


# ============================================================== the agreement helper can fail
def _composed_with_detached_mean_in_variance(x, gamma, beta):
    # tinygrad's shortcut (LESSONS.md): first derivatives right, Hessian missing -2/m^2
    axes, view = (0,) + tuple(range(2, x.ndim)), (1, -1) + (1,) * (x.ndim - 2)
    mean = x.mean(axes, keepdims=True)
    var = ((x - mean.detach()) * (x - mean.detach())).mean(axes, keepdims=True)
    return (x - mean) / (var + 1e-5).sqrt() * gamma.reshape(view) + beta.reshape(view)


def test_agreement_helper_catches_detached_mean_in_variance():
    rng = np.random.default_rng(0)
    inputs = (rng.standard_normal((4, 3, 2)), rng.standard_normal(3), rng.standard_normal(3))

    def reference(x, gamma, beta):
        return F.batch_norm(x, None, None, gamma, beta, training=True, eps=1e-5, impl="fused")

    check_implementations_agree(reference, _composed_with_detached_mean_in_variance, inputs,
                                rtol=1e-10, atol=1e-10)  # first order: indistinguishable
    with pytest.raises(DisagreementError, match="second gradient w.r.t. input 0") as info:
        check_implementations_agree(reference, _composed_with_detached_mean_in_variance, inputs,
                                    rtol=1e-10, atol=1e-10, check_gradgrad=True)
    assert info.value.index is not None and info.value.f_value != info.value.g_value


class _IdentityWithMeanGradient(Function):
    """y = x, with a backward right only for an upstream gradient of ones."""

    def forward(self, x):
        return x.copy()

    def backward(self, grad_y):
        return grad_y.mean() * tb.ones(*grad_y.shape, dtype=grad_y.dtype)


def test_agreement_helper_uses_a_random_upstream_gradient():
    x = np.random.default_rng(1).standard_normal((5, 2))
    with pytest.raises(DisagreementError, match="gradient w.r.t. input 0"):
        check_implementations_agree(lambda x: x * 1.0, _IdentityWithMeanGradient.apply, (x,), rtol=1e-6, atol=1e-6)
