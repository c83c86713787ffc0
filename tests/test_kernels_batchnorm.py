"""The fused batch-norm kernels (src_cy/batchnorm.pyx) against a float64 numpy reference.

Array level only: forward_train / forward_eval / backward, their running-stat update,
thread-count independence, degenerate inputs and argument validation. The Tensor-level
fused-vs-composed properties live with the nn tests.
"""
import glob
import importlib.util
import os

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

try:
    from tinygrad_bn._C import batchnorm as bnk
except ImportError:  # the package may be mid-edit: load the compiled module directly
    _paths = glob.glob(os.path.join(os.path.dirname(__file__), "..", "tinygrad_bn", "_C", "batchnorm*.so"))
    if not _paths:
        raise
    _spec = importlib.util.spec_from_file_location("batchnorm", _paths[0])
    bnk = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(bnk)

EPS32 = float(np.finfo(np.float32).eps)
EPS64 = float(np.finfo(np.float64).eps)


# --------------------------------------------------------------------------- reference
def reference(x, weight, bias, eps, grad_y=None):
    """Algorithm 1 and its gradient in float64 on the same (upcast) input, two-pass variance."""
    axes = (0,) if x.ndim == 2 else (0, 2)
    C = x.shape[1]
    per_channel = (1, C) if x.ndim == 2 else (1, C, 1)
    M = x.size // C if C else 0
    x = x.astype(np.float64)
    gamma = np.ones(C) if weight is None else weight.astype(np.float64)
    beta = np.zeros(C) if bias is None else bias.astype(np.float64)
    mean = x.mean(axis=axes)
    centred = x - mean.reshape(per_channel)
    var = (centred * centred).mean(axis=axes)
    inv_std = 1.0 / np.sqrt(var + eps)
    x_hat = centred * inv_std.reshape(per_channel)
    y = gamma.reshape(per_channel) * x_hat + beta.reshape(per_channel)
    out = dict(mean=mean, var=var, inv_std=inv_std, x_hat=x_hat, y=y, gamma=gamma, beta=beta,
               M=M, per_channel=per_channel, axes=axes)
    if grad_y is not None:
        grad_y = grad_y.astype(np.float64)
        grad_beta = grad_y.sum(axis=axes)
        grad_gamma = (grad_y * x_hat).sum(axis=axes)
        grad_x = (gamma * inv_std).reshape(per_channel) * (
            grad_y - (grad_beta.reshape(per_channel) + x_hat * grad_gamma.reshape(per_channel)) / M)
        out.update(grad_beta=grad_beta, grad_gamma=grad_gamma, grad_x=grad_x)
    return out


def assert_within(got, want, tol, what):
    """|got - want| <= tol elementwise, with a readable report of the worst element."""
    got = np.asarray(got, np.float64)
    err = np.abs(got - want)
    bad = ~(err <= tol)
    if bad.any():
        i = np.unravel_index(np.argmax(np.where(bad, err / np.maximum(tol, 1e-300), 0)), err.shape)
        raise AssertionError(f"{what}: {bad.sum()} of {err.size} values off; worst at {i}: "
                             f"got {got[i]!r}, want {want[i]!r}, tol {np.broadcast_to(tol, err.shape)[i]!r}")


# --------------------------------------------------------------------------- strategies
@st.composite
def bn_inputs(draw):
    """Batch-norm inputs: both layouts (columns: L < 64, planes: L >= 64), float32/float64,
    eps 1e-8..1e-1, scales 1e-3..1e3, per-channel offsets up to 1e4 standard deviations,
    gamma including 0 and negative values, a random upstream gradient."""
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    ndim = draw(st.sampled_from([2, 3]))
    N = draw(st.integers(2, 40))
    C = draw(st.integers(1, 9))
    L = 1
    if ndim == 3:
        L = draw(st.one_of(st.integers(1, 8), st.integers(60, 300)))
        N = min(N, max(2, 4000 // (C * L)))
    eps = 10.0 ** draw(st.floats(-8, -1))
    scale = 10.0 ** draw(st.floats(-3, 3))
    offset = 10.0 ** draw(st.floats(-2, 4))
    seed = draw(st.integers(0, 2**32 - 1))
    affine = draw(st.booleans())
    rng = np.random.default_rng(seed)
    shape = (N, C) if ndim == 2 else (N, C, L)
    per_channel = (1, C) + (1,) * (ndim - 2)
    centre = rng.standard_normal(C) * offset * scale
    x = (rng.standard_normal(shape) * scale + centre.reshape(per_channel)).astype(dtype)
    weight = bias = None
    if affine:
        weight = rng.choice([0.0, -1.0, 1.0, 2.5, -0.3, 1e-3, 7.0], size=C) * rng.uniform(0.5, 1.5, C)
        weight = weight.astype(dtype)
        bias = (rng.standard_normal(C) * draw(st.sampled_from([0.0, 1.0, 100.0]))).astype(dtype)
    grad_y = (rng.standard_normal(shape) * 10.0 ** rng.uniform(-2, 2)).astype(dtype)
    return x, weight, bias, eps, grad_y


bn_cases = bn_inputs()


# --------------------------------------------------------------------------- forward / backward
@given(bn_cases)
@example((np.array([[1e4, 1e4 + 1.0], [1e4 + 1.0, 1e4]], np.float32), None, None, 1e-8,
          np.array([[1.0, -2.0], [3.0, 0.5]], np.float32)))  # |mean|/std = 2e4, M = 2
def test_forward_train_matches_float64_reference(case):
    x, weight, bias, eps, _ = case
    ref = reference(x, weight, bias, eps)
    pc = ref["per_channel"]
    y, mean, inv_std = bnk.forward_train(x, weight, bias, None, None, None, eps, 2)
    assert y.dtype == x.dtype and y.shape == x.shape and y.flags.c_contiguous
    assert mean.dtype == inv_std.dtype == np.float64
    # float64 statistics: only float64 rounding of the sums
    spread = np.sqrt(ref["var"]) + np.abs(ref["mean"]) * EPS64
    assert_within(mean, ref["mean"], 64 * EPS64 * (np.abs(ref["mean"]) + spread), "mean")
    assert_within(inv_std, ref["inv_std"], 1e-10 * ref["inv_std"], "inv_std")
    # y: float32 output is the float64 result rounded once (LESSONS: ~1e-7, about 1 ulp);
    # the second term covers float64 rounding of mean (eps64 * |mean| / std) and of x_hat.
    g, b = np.abs(ref["gamma"]).reshape(pc), np.abs(ref["beta"]).reshape(pc)
    off = (np.abs(ref["mean"]) * ref["inv_std"]).reshape(pc)
    double_err = 64 * EPS64 * (g * (np.abs(ref["x_hat"]) + off + 1) + b)
    rounding = EPS32 if x.dtype == np.float32 else EPS64
    assert_within(y, ref["y"], rounding * np.abs(ref["y"]) + double_err, "y")


@given(bn_cases)
def test_backward_matches_float64_reference(case):
    x, weight, bias, eps, grad_y = case
    ref = reference(x, weight, bias, eps, grad_y)
    pc, axes, M = ref["per_channel"], ref["axes"], ref["M"]
    _, mean, inv_std = bnk.forward_train(x, weight, bias, None, None, None, eps, 2)
    grad_x, grad_gamma, grad_beta = bnk.backward(x, grad_y, mean, inv_std, weight, 2)
    assert grad_x.dtype == grad_gamma.dtype == grad_beta.dtype == x.dtype
    assert grad_x.shape == x.shape and grad_gamma.shape == grad_beta.shape == (x.shape[1],)
    rounding = EPS32 if x.dtype == np.float32 else EPS64
    dy = np.abs(grad_y.astype(np.float64))
    x_hat = np.abs(ref["x_hat"])
    off = (np.abs(ref["mean"]) * ref["inv_std"]).reshape(pc) + 1
    # size of the terms grad_x cancels: gamma * inv_std * (|grad_y| + mean|grad_y| + |x_hat| mean|grad_y x_hat|)
    # (off: float64 rounding of mean, relative to std, enters through x - mean)
    terms = (np.abs(ref["gamma"]) * ref["inv_std"]).reshape(pc) * (
        dy + dy.mean(axis=axes).reshape(pc) + (x_hat + off) * (dy * (x_hat + 1)).mean(axis=axes).reshape(pc))
    assert_within(grad_x, ref["grad_x"], rounding * np.abs(ref["grad_x"]) + 256 * EPS64 * terms, "grad_x")
    sum_dy = dy.sum(axis=axes)
    assert_within(grad_beta, ref["grad_beta"], rounding * np.abs(ref["grad_beta"]) + 64 * EPS64 * sum_dy,
                  "grad_beta")
    sum_dy_xhat = (dy * (x_hat + off)).sum(axis=axes)
    assert_within(grad_gamma, ref["grad_gamma"],
                  rounding * np.abs(ref["grad_gamma"]) + 256 * EPS64 * sum_dy_xhat, "grad_gamma")


@given(bn_cases, st.floats(0.0, 1.0))
def test_running_stats_use_unbiased_variance(case, momentum):
    x, weight, bias, eps, _ = case
    ref = reference(x, weight, bias, eps)
    C, M = x.shape[1], ref["M"]
    rng = np.random.default_rng(C)
    running_mean = rng.standard_normal(C).astype(x.dtype)
    running_var = rng.uniform(0.5, 2, C).astype(x.dtype)
    before_mean, before_var = running_mean.astype(np.float64), running_var.astype(np.float64)
    bnk.forward_train(x, weight, bias, running_mean, running_var, momentum, eps, 2)
    # running = (1 - momentum) * running + momentum * batch, batch var unbiased: var * M / (M - 1)
    want_mean = (1 - momentum) * before_mean + momentum * ref["mean"]
    want_var = (1 - momentum) * before_var + momentum * ref["var"] * M / (M - 1)
    rounding = EPS32 if x.dtype == np.float32 else EPS64
    spread = np.sqrt(ref["var"]) + np.abs(ref["mean"])
    assert_within(running_mean, want_mean, rounding * np.abs(want_mean) + 64 * EPS64 * (spread + np.abs(before_mean)),
                  "running_mean")
    assert_within(running_var, want_var, rounding * np.abs(want_var) + 1e-9 * np.abs(want_var), "running_var")


@given(bn_cases)
def test_forward_eval_is_one_affine_map_per_channel(case):
    x, weight, bias, eps, _ = case
    C = x.shape[1]
    pc = (1, C) + (1,) * (x.ndim - 2)
    rng = np.random.default_rng(C)
    running_mean = (rng.standard_normal(C) * np.abs(x).max()).astype(x.dtype)
    running_var = (rng.uniform(0.1, 10, C) * np.var(x.astype(np.float64))).astype(x.dtype)
    y = bnk.forward_eval(x, weight, bias, running_mean, running_var, eps, 2)
    gamma = np.ones(C) if weight is None else weight.astype(np.float64)
    beta = np.zeros(C) if bias is None else bias.astype(np.float64)
    alpha = gamma / np.sqrt(running_var.astype(np.float64) + eps)
    centred = x.astype(np.float64) - running_mean.astype(np.float64).reshape(pc)
    want = centred * alpha.reshape(pc) + beta.reshape(pc)
    rounding = EPS32 if x.dtype == np.float32 else EPS64
    tol = rounding * np.abs(want) + 16 * EPS64 * (np.abs(centred * alpha.reshape(pc)) + np.abs(beta).reshape(pc)
                                                  + np.abs(x).astype(np.float64) * np.abs(alpha).reshape(pc))
    assert_within(y, want, tol, "eval y")


def test_affine_off_means_gamma_one_beta_zero():
    rng = np.random.default_rng(1)
    for shape in [(30, 7), (5, 3, 100)]:
        x = rng.standard_normal(shape).astype(np.float32)
        dy = rng.standard_normal(shape).astype(np.float32)
        C = shape[1]
        ones, zeros = np.ones(C, np.float32), np.zeros(C, np.float32)
        y0, m0, s0 = bnk.forward_train(x, None, None, None, None, None, 1e-5, 1)
        y1, m1, s1 = bnk.forward_train(x, ones, zeros, None, None, None, 1e-5, 1)
        assert np.array_equal(y0, y1) and np.array_equal(m0, m1) and np.array_equal(s0, s1)
        g0 = bnk.backward(x, dy, m0, s0, None, 1)
        g1 = bnk.backward(x, dy, m1, s1, ones, 1)
        for a, b in zip(g0, g1):
            assert np.array_equal(a, b)
        e0 = bnk.forward_eval(x, None, None, zeros, ones, 1e-5, 1)
        e1 = bnk.forward_eval(x, ones, zeros, zeros, ones, 1e-5, 1)
        assert np.array_equal(e0, e1)


# Shapes that exercise every partition: column path with several row blocks and column
# chunks, 3-D column path, plane path with planes split into several units.
# fmt: off
LAYOUT_SHAPES = [
    (300, 1100),      # columns: 5 row blocks x 2 column chunks
    (100, 1030),      # columns: 2 row blocks x 4 narrow chunks, the last one ragged
    (2, 3),           # one row block, fewer columns than a chunk
    (64, 5, 40),      # 3-D, L < 64: columns
    (16, 8, 500),     # planes, one unit per plane
    (3, 2, 40000),    # planes split into 3 units
]
# fmt: on


@pytest.mark.parametrize("shape", LAYOUT_SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_layout_matches_reference(shape, dtype):
    rng = np.random.default_rng(2)
    C = shape[1]
    pc = (1, C) + (1,) * (len(shape) - 2)
    x = (rng.standard_normal(shape) * 3 + rng.standard_normal(C).reshape(pc) * 1e3).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal(C).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    ref = reference(x, w, b, 1e-5, dy)
    y, mean, inv_std = bnk.forward_train(x, w, b, None, None, None, 1e-5, 2)
    grad_x, grad_gamma, grad_beta = bnk.backward(x, dy, mean, inv_std, w, 2)
    rtol = 4 * EPS32 if dtype == np.float32 else 1e-9
    scale = np.abs(ref["y"]).max()
    assert_within(y, ref["y"], rtol * scale, "y")
    assert_within(grad_x, ref["grad_x"], rtol * np.abs(ref["grad_x"]).max(), "grad_x")
    assert_within(grad_gamma, ref["grad_gamma"], rtol * np.abs(ref["grad_gamma"]).max(), "grad_gamma")
    assert_within(grad_beta, ref["grad_beta"], rtol * np.abs(ref["grad_beta"]).max(), "grad_beta")


# plane shapes cover both schedules: whole channels per thread, and memory order (C = 3, 5)
@pytest.mark.parametrize("shape", [(4096, 130), (300, 1100), (100, 1030), (64, 40, 7), (32, 16, 196), (3, 2, 40000),
                                   (6, 3, 300), (2, 5, 20000)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_independent_of_thread_count(shape, dtype):
    rng = np.random.default_rng(3)
    C = shape[1]
    x = (rng.standard_normal(shape) * 2 + 5).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal(C).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    results = []
    for nt in (1, 2, 3, 5):
        rm, rv = np.zeros(C, dtype), np.ones(C, dtype)
        y, mean, inv_std = bnk.forward_train(x, w, b, rm, rv, 0.1, 1e-5, nt)
        grads = bnk.backward(x, dy, mean, inv_std, w, nt)
        ev = bnk.forward_eval(x, w, b, rm, rv, 1e-5, nt)
        results.append([a.tobytes() for a in (y, mean, inv_std, rm, rv, *grads, ev)])
    for other in results[1:]:
        assert other == results[0]


@pytest.mark.parametrize("shape", [(6, 3, 300), (2, 5, 20000), (16, 8, 500), (3, 7, 64)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_schedules_give_identical_bits(shape, dtype):
    """Planes in memory order (one unit at a time) and whole channels per thread (samples
    in pairs, the last one alone for odd N) compute the same partials."""
    rng = np.random.default_rng(8)
    C = shape[1]
    x = (rng.standard_normal(shape) * 2 - 7).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal(C).astype(dtype)
    results = []
    for schedule in (1, 2):
        previous = bnk._set_schedule(schedule)
        try:
            for nt in (1, 2):
                y, mean, inv_std = bnk.forward_train(x, w, None, None, None, None, 1e-3, nt)
                grads = bnk.backward(x, dy, mean, inv_std, w, nt)
                results.append([a.tobytes() for a in (y, mean, inv_std, *grads)])
        finally:
            bnk._set_schedule(previous)
    for other in results[1:]:
        assert other == results[0]


# --------------------------------------------------------------------------- degenerate inputs
@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5), (3, 3, 70)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_constant_channel_gives_beta_and_finite_grads(shape, dtype):
    rng = np.random.default_rng(4)
    C = shape[1]
    x = rng.standard_normal(shape).astype(dtype)
    x[:, 1] = dtype(1234.5)  # channel 1: var = 0
    dy = rng.standard_normal(shape).astype(dtype)
    w = np.array([1.5, -2.0, 0.5], dtype)
    b = np.array([0.25, 3.0, -1.0], dtype)
    rm, rv = np.zeros(C, dtype), np.ones(C, dtype)
    y, mean, inv_std = bnk.forward_train(x, w, b, rm, rv, 0.5, 1e-8, 2)
    assert mean[1] == 1234.5 and inv_std[1] == 1.0 / np.sqrt(1e-8)
    assert np.all(y[:, 1] == b[1])
    assert rv[1] == 0.5  # (1 - momentum) * 1 + momentum * 0
    grad_x, grad_gamma, grad_beta = bnk.backward(x, dy, mean, inv_std, w, 2)
    assert np.isfinite(grad_x).all() and np.isfinite(grad_gamma).all() and np.isfinite(grad_beta).all()
    assert grad_gamma[1] == 0
    # x_hat = 0: grad_x = gamma * inv_std * (grad_y - mean(grad_y))
    dy1 = dy[:, 1].astype(np.float64)
    want = w[1] * inv_std[1] * (dy1 - dy1.mean())
    assert_within(grad_x[:, 1], want, 1e-5 * np.abs(want).max() + 1e-12, "grad_x of a constant channel")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_and_inf_propagate_without_crashing(dtype):
    rng = np.random.default_rng(5)
    for shape in [(8, 3), (4, 3, 100)]:
        x = rng.standard_normal(shape).astype(dtype)
        x[2, 0] = np.nan
        x[1, 2] = np.inf
        dy = rng.standard_normal(shape).astype(dtype)
        dy[0, 1] = np.nan
        rm, rv = np.zeros(3, dtype), np.ones(3, dtype)
        with np.errstate(all="ignore"):
            y, mean, inv_std = bnk.forward_train(x, None, None, rm, rv, 0.1, 1e-5, 2)
            grad_x, grad_gamma, grad_beta = bnk.backward(x, dy, mean, inv_std, None, 2)
        assert np.isnan(y[:, 0]).all() and np.isnan(mean[0]) and np.isnan(rm[0]) and np.isnan(rv[0])
        assert np.isfinite(y[:, 1]).all() and np.isfinite(mean[1])
        assert np.isnan(grad_x[:, 1]).all() and np.isnan(grad_beta[1])
        ev = bnk.forward_eval(x, None, None, rm, rv, 1e-5, 2)  # NaN running stats: NaN out, no crash
        assert np.isnan(ev[:, 0]).all()


def test_empty_channels_and_eval_with_one_value():
    x = np.zeros((4, 0), np.float32)
    y, mean, inv_std = bnk.forward_train(x, None, None, None, None, None, 1e-5, 2)
    assert y.shape == (4, 0) and mean.shape == inv_std.shape == (0,)
    grad_x, gg, gb = bnk.backward(x, x, mean, inv_std, None, 2)
    assert grad_x.shape == (4, 0) and gg.shape == gb.shape == (0,)
    x1 = np.array([[1.0, 2.0]], np.float32)  # M = 1 is fine in eval mode
    y = bnk.forward_eval(x1, None, None, np.zeros(2, np.float32), np.ones(2, np.float32), 1e-5, 1)
    assert_within(y, x1 / np.sqrt(1 + 1e-5), 2 * EPS32, "eval with M = 1")


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize("shape", [(1, 4), (1, 4, 1), (0, 4), (3, 4, 0)])
def test_one_value_per_channel_in_training_raises_and_changes_nothing(shape):
    x = np.ones(shape, np.float32)
    rm, rv = np.full(4, 0.5, np.float32), np.full(4, 2.0, np.float32)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        bnk.forward_train(x, None, None, rm, rv, 0.1, 1e-5, 1)
    assert np.all(rm == 0.5) and np.all(rv == 2.0)


def _good(dtype=np.float32, shape=(5, 4, 3)):
    rng = np.random.default_rng(6)
    C = shape[1]
    return dict(x=rng.standard_normal(shape).astype(dtype), weight=np.ones(C, dtype), bias=np.zeros(C, dtype),
                running_mean=np.full(C, 0.5, dtype), running_var=np.full(C, 2.0, dtype), momentum=0.1,
                eps=1e-5, num_threads=2)


def _readonly(a):
    a.flags.writeable = False
    return a


# fmt: off
TRAIN_ERRORS = [
    # (argument, bad value, exception, message fragment)
    ("x", [[1.0, 2.0], [3.0, 4.0]], TypeError, "numpy.ndarray"),
    ("x", np.ones((5, 4, 3), np.int64), TypeError, "float32 or float64.*got int64"),
    ("x", np.ones((5, 4, 3), np.float16), TypeError, "float32 or float64.*got float16"),
    ("x", np.ones(4, np.float32), ValueError, "got 1-D"),
    ("x", np.ones((5, 4, 3, 2), np.float32), ValueError, "got 4-D"),
    ("x", np.ones((5, 8, 3), np.float32)[:, ::2], ValueError, "C-contiguous"),
    ("x", np.ones((3, 4, 5), np.float32).transpose(2, 1, 0), ValueError, "C-contiguous"),
    ("x", np.ones((5, 4, 3), ">f4"), TypeError, "native byte order"),
    ("x", np.frombuffer(bytearray(4 * 60 + 1), np.float32, 60, 1).reshape(5, 4, 3), ValueError, "aligned"),
    ("weight", np.ones(4, ">f4"), TypeError, "weight must have dtype float32"),
    ("running_var", np.frombuffer(bytearray(17), np.float32, 4, 1), ValueError, "aligned"),
    ("weight", np.ones(4, np.float64), TypeError, r"dtype float32 \(matching x\), got float64"),
    ("weight", np.ones(5, np.float32), ValueError, r"shape \(4,\).*got \(5,\)"),
    ("weight", np.ones((4, 1), np.float32), ValueError, r"shape \(4,\)"),
    ("weight", np.ones(8, np.float32)[::2], ValueError, "C-contiguous"),
    ("weight", [1.0, 1.0, 1.0, 1.0], TypeError, "numpy.ndarray"),
    ("bias", np.ones(3, np.float32), ValueError, r"bias must have shape \(4,\)"),
    ("bias", np.ones(4, np.int32), TypeError, "bias must have dtype float32"),
    ("running_mean", np.ones(4, np.float64), TypeError, "running_mean must have dtype float32"),
    ("running_var", np.ones(2, np.float32), ValueError, r"running_var must have shape \(4,\)"),
    ("running_var", None, ValueError, "both be arrays or both be None"),
    ("running_mean", _readonly(np.ones(4, np.float32)), ValueError, "writeable"),
    ("momentum", "0.1", TypeError, "momentum must be a float or None"),
    ("momentum", 1.5, ValueError, r"momentum must be in \[0, 1\]"),
    ("momentum", float("nan"), ValueError, r"momentum must be in \[0, 1\]"),
    ("eps", 0.0, ValueError, "eps must be finite and > 0"),
    ("eps", -1e-5, ValueError, "eps must be finite and > 0"),
    ("eps", float("inf"), ValueError, "eps must be finite and > 0"),
    ("eps", float("nan"), ValueError, "eps must be finite and > 0"),
    ("eps", "1e-5", TypeError, "eps must be a real number"),
    ("num_threads", 0, ValueError, "num_threads must be >= 1"),
    ("num_threads", 1.5, TypeError, "num_threads must be an int"),
    ("num_threads", True, TypeError, "num_threads must be an int"),
]
# fmt: on


@pytest.mark.parametrize("name, value, exc, match", TRAIN_ERRORS)
def test_forward_train_validates_before_touching_running_stats(name, value, exc, match):
    args = _good()
    args[name] = value
    rm = args["running_mean"] if isinstance(args["running_mean"], np.ndarray) else None
    rv = args["running_var"] if isinstance(args["running_var"], np.ndarray) else None
    saved = [None if a is None else a.copy() for a in (rm, rv)]
    with pytest.raises(exc, match=match):
        bnk.forward_train(**args)
    for a, s in zip((rm, rv), saved):
        if a is not None:
            assert np.array_equal(a, s)


def test_running_stats_must_not_alias():
    args = _good()
    args["running_var"] = args["running_mean"]
    with pytest.raises(ValueError, match="must not share memory"):
        bnk.forward_train(**args)
    assert np.all(args["running_mean"] == 0.5)


def test_momentum_none_leaves_running_stats_alone():
    args = _good()
    args["momentum"] = None
    bnk.forward_train(**args)
    assert np.all(args["running_mean"] == 0.5) and np.all(args["running_var"] == 2.0)


@pytest.mark.parametrize("name, value, exc, match", [
    ("running_mean", None, TypeError, "needs running_mean and running_var"),
    ("running_var", np.ones(4, np.float64), TypeError, "running_var must have dtype float32"),
    ("running_mean", np.ones(3, np.float32), ValueError, r"running_mean must have shape \(4,\)"),
    ("x", np.ones((5, 4), np.int32), TypeError, "float32 or float64"),
    ("eps", 0, ValueError, "eps must be finite and > 0"),
    ("weight", np.ones(4, np.float64), TypeError, "weight must have dtype float32"),
])
def test_forward_eval_validates(name, value, exc, match):
    args = _good()
    del args["momentum"]
    args[name] = value
    with pytest.raises(exc, match=match):
        bnk.forward_eval(**args)


def test_backward_validates():
    g = _good()
    x = g["x"]
    _, mean, inv_std = bnk.forward_train(x, None, None, None, None, None, 1e-5, 1)
    dy = np.ones_like(x)
    cases = [
        (dict(grad_y=dy.astype(np.float64)), TypeError, "grad_y must have x's dtype"),
        (dict(grad_y=np.ones((5, 4, 2), np.float32)), ValueError, "grad_y must have x's shape"),
        (dict(grad_y=np.ones((5, 8, 3), np.float32)[:, ::2]), ValueError, "grad_y must be C-contiguous"),
        (dict(mean=mean.astype(np.float32)), TypeError, "mean must have dtype float64"),
        (dict(inv_std=inv_std[:3].copy()), ValueError, r"inv_std must have shape \(4,\)"),
        (dict(mean=None), TypeError, "needs mean and inv_std"),
        (dict(weight=np.ones(4, np.float64)), TypeError, "weight must have dtype float32"),
        (dict(num_threads=-2), ValueError, "num_threads must be >= 1"),
        (dict(x=x.astype(np.float64)), TypeError, "grad_y must have x's dtype"),
    ]
    for override, exc, match in cases:
        args = dict(x=x, grad_y=dy, mean=mean, inv_std=inv_std, weight=None, num_threads=1)
        args.update(override)
        with pytest.raises(exc, match=match):
            bnk.backward(**args)
