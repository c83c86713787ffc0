"""Losses: cross_entropy, nll_loss, mse_loss, binary_cross_entropy_with_logits.

Each against a float64 numpy reference (with every reduction), finite
differences, and torch where it is installed; stability at logits of magnitude
1e4; the exception type and message for bad labels and shapes.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinygrad_bn as tb
from tinygrad_bn.nn import functional as F
from tinygrad_bn.testing import assert_allclose, gradcheck, gradgradcheck


def import_torch():
    """torch, or skip. Single-threaded: on a busy 2-core machine its OpenMP pool costs
    ~60 ms a call on these tiny tensors, against ~0.1 ms on one thread."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    return torch


REDUCTIONS = ["mean", "sum", "none"]


# ---------------------------------------------------------------- numpy references
def log_softmax_ref(z):
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def reduce_ref(loss, reduction):
    return {"mean": np.mean, "sum": np.sum, "none": lambda a: a}[reduction](loss)


def cross_entropy_ref(z, labels, reduction="mean", label_smoothing=0.0):
    """loss_i = -(1 - s) log p[i, y_i] - s mean_c log p[i, c]  (torch's label smoothing)."""
    logp = log_softmax_ref(z.astype(np.float64))
    n = z.shape[0]
    loss = -(1 - label_smoothing) * logp[np.arange(n), labels] - label_smoothing * logp.mean(axis=1)
    return reduce_ref(loss, reduction)


def cross_entropy_grad_ref(z, labels, reduction="mean", label_smoothing=0.0):
    """d sum(loss) / dz = softmax(z) - ((1 - s) onehot + s / C), divided by N for mean."""
    n, c = z.shape
    target = np.full((n, c), label_smoothing / c)
    target[np.arange(n), labels] += 1 - label_smoothing
    g = np.exp(log_softmax_ref(z.astype(np.float64))) - target
    return g / n if reduction == "mean" else g


def bce_with_logits_ref(z, t, reduction="mean"):
    """max(z, 0) - z t + log1p(exp(-|z|)) in float64."""
    z, t = z.astype(np.float64), t.astype(np.float64)
    return reduce_ref(np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z))), reduction)


def sigmoid_ref(z):
    return np.where(z >= 0, 1 / (1 + np.exp(-np.abs(z))), np.exp(-np.abs(z)) / (1 + np.exp(-np.abs(z))))


# ---------------------------------------------------------------- strategies
@st.composite
def classification(draw, max_batch=5, max_classes=5, scale=None):
    """(logits (N, C) float64, labels (N,) int64). scale: logits ~ scale * N(0, 1), drawn
    from 1e-2..1e4 unless given."""
    n, c = draw(st.integers(1, max_batch)), draw(st.integers(1, max_classes))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    s = scale if scale is not None else draw(st.sampled_from([1e-2, 1.0, 10.0, 1e4]))
    return rng.standard_normal((n, c)) * s, rng.integers(0, c, n)


smoothing = st.sampled_from([0.0, 0.1, 0.5, 1.0])


# ---------------------------------------------------------------- cross_entropy
@pytest.mark.parametrize("reduction", REDUCTIONS)
@given(case=classification(), s=smoothing)
def test_cross_entropy_matches_numpy(reduction, case, s):
    z, y = case
    loss = F.cross_entropy(tb.Tensor(z), y, reduction=reduction, label_smoothing=s)
    ref = cross_entropy_ref(z, y, reduction, s)
    assert loss.shape == np.shape(ref)
    np.testing.assert_allclose(loss.numpy(), ref, rtol=1e-10, atol=1e-10 * max(1.0, np.abs(z).max()))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@given(case=classification(), s=smoothing)
def test_cross_entropy_gradient_is_softmax_minus_target(reduction, case, s):
    z, y = case
    zt = tb.Tensor(z, requires_grad=True)
    F.cross_entropy(zt, y, reduction=reduction, label_smoothing=s).backward()
    np.testing.assert_allclose(zt.grad.numpy(), cross_entropy_grad_ref(z, y, reduction, s), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@given(case=classification(max_batch=3, max_classes=4, scale=2.0), s=smoothing)
def test_cross_entropy_gradcheck(reduction, case, s):
    z, y = case
    labels = tb.Tensor(y)  # an int Tensor input: passed through, not differentiated
    assert labels.dtype == np.int64
    gradcheck(lambda a, lab: F.cross_entropy(a, lab, reduction=reduction, label_smoothing=s),
              [tb.Tensor(z, requires_grad=True), labels])


@given(case=classification(max_batch=2, max_classes=3, scale=2.0), s=smoothing)
def test_cross_entropy_gradgradcheck(case, s):
    z, y = case
    gradgradcheck(lambda a: F.cross_entropy(a, y, label_smoothing=s), [tb.Tensor(z, requires_grad=True)])


@pytest.mark.parametrize("dtype, atol", [(np.float64, 1e-8), (np.float32, 1e-2)])
def test_cross_entropy_is_stable_at_logits_of_1e4(dtype, atol):
    z = np.array([[1e4, 0.0, -1e4], [0.0, 1e4, -1e4], [-1e4, -1e4, 1e4], [1e4, 1e4 - 1, -1e4]], dtype=dtype)
    y = np.array([0, 0, 1, 1])
    zt = tb.Tensor(z, requires_grad=True)
    loss = F.cross_entropy(zt, y, reduction="none")
    assert loss.dtype == dtype
    assert np.all(np.isfinite(loss.numpy()))
    ref = cross_entropy_ref(z, y, "none")  # [0, 1e4, 2e4, 1 + log(1 + e^-1)]
    np.testing.assert_allclose(loss.numpy(), ref, rtol=1e-6, atol=atol)
    loss.sum().backward()
    assert np.all(np.isfinite(zt.grad.numpy()))
    np.testing.assert_allclose(zt.grad.numpy(), cross_entropy_grad_ref(z, y, "sum"), rtol=1e-5, atol=1e-6)


@given(case=classification(scale=1e4))
def test_cross_entropy_float32_at_large_logits_matches_float64(case):
    z, y = case
    z32 = z.astype(np.float32)
    loss = F.cross_entropy(tb.Tensor(z32), y, reduction="none")
    assert np.all(np.isfinite(loss.numpy()))
    # float32 rounds logits of 1e4 to ~1e-3: a few ulps of the largest logit
    np.testing.assert_allclose(loss.numpy(), cross_entropy_ref(z32, y, "none"), rtol=1e-5,
                               atol=8 * np.spacing(np.float32(np.abs(z32).max())))


def test_cross_entropy_of_uniform_logits_is_log_num_classes():
    loss = F.cross_entropy(tb.Tensor(np.zeros((4, 7))), np.array([0, 3, 6, 2]))
    assert loss.item() == pytest.approx(np.log(7), rel=1e-12)


def test_cross_entropy_accepts_int_tensor_and_list_labels():
    z = tb.Tensor(np.random.default_rng(0).standard_normal((3, 4)))
    a = F.cross_entropy(z, np.array([1, 0, 3]))
    b = F.cross_entropy(z, tb.Tensor(np.array([1, 0, 3])))
    c = F.cross_entropy(z, [1, 0, 3])
    assert a.item() == b.item() == c.item()
    d = F.cross_entropy(z, np.array([1, 0, 3], dtype=np.int32))
    assert d.item() == pytest.approx(a.item(), rel=1e-15)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@given(case=classification(), s=smoothing)
def test_cross_entropy_matches_torch(reduction, case, s):
    torch = import_torch()
    z, y = case
    zt = tb.Tensor(z, requires_grad=True)
    loss = F.cross_entropy(zt, y, reduction=reduction, label_smoothing=s)
    ztt = torch.tensor(z, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(ztt, torch.tensor(y), reduction=reduction, label_smoothing=s)
    g = np.random.default_rng(0).standard_normal(np.shape(ref.detach().numpy()))
    loss.backward(tb.Tensor(g))
    ref.backward(torch.tensor(g))
    scale = max(1.0, np.abs(z).max())
    np.testing.assert_allclose(loss.numpy(), ref.detach().numpy(), rtol=1e-10, atol=1e-10 * scale)
    np.testing.assert_allclose(zt.grad.numpy(), ztt.grad.numpy(), rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------- cross_entropy errors
@pytest.mark.parametrize("labels, bad", [([0, 3, 1], 3), ([0, 7, 1], 7), ([0, -1, 1], -1)])
def test_cross_entropy_label_out_of_range_is_an_index_error_naming_label_and_classes(labels, bad):
    with pytest.raises(IndexError, match=rf"(?s)label {bad}\b.*\b3 classes"):
        F.cross_entropy(tb.randn(3, 3), np.array(labels))


def test_cross_entropy_label_out_of_range_in_an_int_tensor():
    with pytest.raises(IndexError, match=r"(?s)5.*4 classes"):
        F.cross_entropy(tb.randn(2, 4), tb.Tensor(np.array([5, 0])))


@pytest.mark.parametrize("labels", [np.array([0.0, 1.0]), tb.Tensor([0.0, 1.0]), np.array([True, False])])
def test_cross_entropy_float_labels_are_a_type_error(labels):
    with pytest.raises(TypeError, match="label"):
        F.cross_entropy(tb.randn(2, 3), labels)


@pytest.mark.parametrize("labels", [np.array([0, 1, 2]), np.array([[0], [1]]), np.array(1), np.array([0])])
def test_cross_entropy_wrong_label_shape_is_a_value_error(labels):
    with pytest.raises(ValueError, match=r"\(2,\)"):
        F.cross_entropy(tb.randn(2, 3), labels)


@pytest.mark.parametrize("shape", [(3,), (2, 3, 4)])
def test_cross_entropy_wrong_logits_rank_is_a_value_error(shape):
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        F.cross_entropy(tb.randn(*shape), np.zeros(shape[0], dtype=np.int64))


def test_cross_entropy_bad_reduction_and_smoothing_are_value_errors():
    z, y = tb.randn(2, 3), np.array([0, 1])
    with pytest.raises(ValueError, match="avg"):
        F.cross_entropy(z, y, reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        F.cross_entropy(z, y, label_smoothing=1.5)


def test_cross_entropy_logits_must_be_a_tensor():
    with pytest.raises(TypeError, match="ndarray"):
        F.cross_entropy(np.zeros((2, 3)), np.array([0, 1]))


# ---------------------------------------------------------------- nll_loss
@pytest.mark.parametrize("reduction", REDUCTIONS)
@given(case=classification(scale=3.0))
def test_nll_loss_of_log_softmax_is_cross_entropy(reduction, case):
    z, y = case
    logp = log_softmax_ref(z)
    loss = F.nll_loss(tb.Tensor(logp), y, reduction=reduction)
    np.testing.assert_allclose(loss.numpy(), reduce_ref(-logp[np.arange(len(y)), y], reduction), rtol=1e-12)
    composed = F.nll_loss(F.log_softmax(tb.Tensor(z), axis=1), y, reduction=reduction)
    np.testing.assert_allclose(composed.numpy(), cross_entropy_ref(z, y, reduction), rtol=1e-10, atol=1e-12)


@given(case=classification(max_batch=3, max_classes=4, scale=2.0))
def test_nll_loss_gradcheck(case):
    z, y = case
    gradcheck(lambda a: F.nll_loss(a, y), [tb.Tensor(z, requires_grad=True)])


def test_nll_loss_gradient_picks_the_labels():
    x = tb.Tensor(np.zeros((3, 4)), requires_grad=True)
    F.nll_loss(x, np.array([1, 1, 3]), reduction="sum").backward()
    expected = np.zeros((3, 4))
    expected[[0, 1, 2], [1, 1, 3]] = -1
    np.testing.assert_array_equal(x.grad.numpy(), expected)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_nll_loss_matches_torch(reduction):
    torch = import_torch()
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((6, 5)), rng.integers(0, 5, 6)
    xs, xt = tb.Tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    ours = F.nll_loss(xs, y, reduction=reduction)
    theirs = torch.nn.functional.nll_loss(xt, torch.tensor(y), reduction=reduction)
    ours.sum().backward()
    theirs.sum().backward()
    np.testing.assert_allclose(ours.numpy(), theirs.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(xs.grad.numpy(), xt.grad.numpy(), rtol=1e-12)


def test_nll_loss_errors():
    with pytest.raises(IndexError, match=r"(?s)4.*4 classes"):
        F.nll_loss(tb.randn(2, 4), np.array([0, 4]))
    with pytest.raises(TypeError):
        F.nll_loss(tb.randn(2, 4), np.array([0.0, 1.0]))
    with pytest.raises(ValueError):
        F.nll_loss(tb.randn(2, 4), np.array([0, 1, 2]))
    with pytest.raises(ValueError):
        F.nll_loss(tb.randn(4), np.array([0]))


# ---------------------------------------------------------------- mse_loss
@st.composite
def pairs(draw, max_side=4):
    shape = draw(st.lists(st.integers(1, max_side), min_size=0, max_size=3).map(tuple))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    # NOTE: np.array: standard_normal(()) is a Python float, which Tensor makes float32
    return np.array(rng.standard_normal(shape) * 3), np.array(rng.standard_normal(shape) * 3)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@given(case=pairs())
def test_mse_loss_matches_numpy(reduction, case):
    p, t = case
    loss = F.mse_loss(tb.Tensor(p), tb.Tensor(t), reduction=reduction)
    assert_allclose(loss, np.asarray(reduce_ref((p - t) ** 2, reduction)), rtol=1e-12, atol=1e-14)
    # a numpy target works too
    np.testing.assert_allclose(F.mse_loss(tb.Tensor(p), t, reduction=reduction).numpy(), loss.numpy(), rtol=0)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@given(case=pairs(max_side=3))
def test_mse_loss_gradcheck(reduction, case):
    p, t = case
    gradcheck(lambda a, b: F.mse_loss(a, b, reduction=reduction),
              [tb.Tensor(p, requires_grad=True), tb.Tensor(t, requires_grad=True)])


def test_mse_loss_gradient_is_two_diff_over_n():
    p, t = np.arange(6.0).reshape(2, 3), np.ones((2, 3))
    ps = tb.Tensor(p, requires_grad=True)
    F.mse_loss(ps, t).backward()
    np.testing.assert_allclose(ps.grad.numpy(), 2 * (p - t) / 6, rtol=1e-15)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_mse_loss_matches_torch(reduction):
    torch = import_torch()
    rng = np.random.default_rng(5)
    p, t = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    ps, pt = tb.Tensor(p, requires_grad=True), torch.tensor(p, requires_grad=True)
    ours = F.mse_loss(ps, t, reduction=reduction)
    theirs = torch.nn.functional.mse_loss(pt, torch.tensor(t), reduction=reduction)
    ours.sum().backward()
    theirs.sum().backward()
    np.testing.assert_allclose(ours.numpy(), theirs.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(ps.grad.numpy(), pt.grad.numpy(), rtol=1e-12)


def test_mse_loss_shape_mismatch_is_a_value_error_not_a_broadcast():
    with pytest.raises(ValueError, match=r"(?s)\(3, 1\).*\(3,\)"):
        F.mse_loss(tb.randn(3, 1), tb.randn(3))
    with pytest.raises(ValueError, match="reduction"):
        F.mse_loss(tb.randn(3), tb.randn(3), reduction="max")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mse_loss_keeps_dtype(dtype):
    assert F.mse_loss(tb.Tensor(np.ones(3, dtype=dtype)), np.zeros(3)).dtype == dtype


# ---------------------------------------------------------------- binary_cross_entropy_with_logits
@st.composite
def binary(draw, max_side=4, soft=True):
    """(logits, targets) float64: logits scale * N(0, 1) (never exactly 0), targets in {0, 1}
    or (soft) in [0, 1]."""
    shape = draw(st.lists(st.integers(1, max_side), min_size=1, max_size=2).map(tuple))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([1e-2, 1.0, 10.0, 1e4]))
    t = rng.uniform(0, 1, shape) if soft and draw(st.booleans()) else rng.integers(0, 2, shape).astype(np.float64)
    return rng.standard_normal(shape) * scale, t


@pytest.mark.parametrize("reduction", REDUCTIONS)
@given(case=binary())
def test_bce_with_logits_matches_numpy(reduction, case):
    z, t = case
    loss = F.binary_cross_entropy_with_logits(tb.Tensor(z), tb.Tensor(t), reduction=reduction)
    np.testing.assert_allclose(loss.numpy(), bce_with_logits_ref(z, t, reduction), rtol=1e-10, atol=1e-12)


@given(case=binary())
def test_bce_with_logits_gradient_is_sigmoid_minus_target(case):
    z, t = case
    zs = tb.Tensor(z, requires_grad=True)
    F.binary_cross_entropy_with_logits(zs, t, reduction="sum").backward()
    np.testing.assert_allclose(zs.grad.numpy(), sigmoid_ref(z) - t, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@given(case=binary(max_side=3))
def test_bce_with_logits_gradcheck(reduction, case):
    z, t = case
    z = np.clip(z, -5, 5)
    gradcheck(lambda a, b: F.binary_cross_entropy_with_logits(a, b, reduction=reduction),
              [tb.Tensor(z, requires_grad=True), tb.Tensor(t, requires_grad=True)])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bce_with_logits_is_stable_at_1e4(dtype):
    z = np.array([1e4, -1e4, 1e4, -1e4, 1e4, -1e4], dtype=dtype)
    t = np.array([0.0, 1.0, 1.0, 0.0, 0.25, 0.75], dtype=dtype)
    zs = tb.Tensor(z, requires_grad=True)
    loss = F.binary_cross_entropy_with_logits(zs, tb.Tensor(t), reduction="none")
    assert loss.dtype == dtype
    np.testing.assert_allclose(loss.numpy(), [1e4, 1e4, 0, 0, 7.5e3, 7.5e3], rtol=1e-6, atol=1e-30)
    loss.sum().backward()
    np.testing.assert_allclose(zs.grad.numpy(), [1, -1, 0, 0, 0.75, -0.75], rtol=1e-6, atol=1e-30)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@given(case=binary())
def test_bce_with_logits_matches_torch(reduction, case):
    torch = import_torch()
    z, t = case
    zs, zt = tb.Tensor(z, requires_grad=True), torch.tensor(z, requires_grad=True)
    ours = F.binary_cross_entropy_with_logits(zs, tb.Tensor(t), reduction=reduction)
    theirs = torch.nn.functional.binary_cross_entropy_with_logits(zt, torch.tensor(t), reduction=reduction)
    ours.sum().backward()
    theirs.sum().backward()
    np.testing.assert_allclose(ours.numpy(), theirs.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(zs.grad.numpy(), zt.grad.numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("t", [0.0, 1.0, 0.3])
def test_bce_with_logits_gradient_at_zero_logit_is_one_half_minus_target(t):
    # z = 0 is common (a zero-initialised output layer); the loss is smooth there with
    # d/dz = sigmoid(0) - t = 0.5 - t. A subgradient of relu(z) and |z| at 0 must not leak in.
    z = tb.Tensor(np.zeros(2), requires_grad=True)
    target = np.full(2, t)
    F.binary_cross_entropy_with_logits(z, target, reduction="sum").backward()
    np.testing.assert_allclose(z.grad.numpy(), [0.5 - t, 0.5 - t], rtol=1e-12)
    gradcheck(lambda a: F.binary_cross_entropy_with_logits(a, target), [tb.Tensor(np.zeros(2), requires_grad=True)])


def test_bce_with_logits_shape_mismatch_is_a_value_error():
    with pytest.raises(ValueError, match=r"(?s)\(2, 3\).*\(3,\)"):
        F.binary_cross_entropy_with_logits(tb.randn(2, 3), tb.randn(3))
    with pytest.raises(ValueError, match="reduction"):
        F.binary_cross_entropy_with_logits(tb.randn(3), tb.randn(3), reduction="avg")
