"""The fused cross-entropy kernels (src_cy/softmax.pyx) at array level."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinygrad_bn as tb
from tinygrad_bn._C import softmax as S


def reference(x, y, s):
    """float64 loss and gradient (of the sum of losses) of smoothed softmax cross-entropy."""
    x = x.astype(np.float64)
    m = x.max(1, keepdims=True)
    logp = x - m - np.log(np.exp(x - m).sum(1, keepdims=True))
    n, c = x.shape
    loss = -(1 - s) * logp[np.arange(n), y] - s * logp.mean(1)
    target = np.full((n, c), s / c)
    target[np.arange(n), y] += 1 - s
    return loss, np.exp(logp) - target


@given(n=st.integers(1, 9), c=st.integers(1, 300), s=st.sampled_from([0.0, 0.1, 1.0]),
       scale=st.sampled_from([1.0, 100.0]), dtype=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 2**16))
def test_forward_and_backward_match_float64_reference(n, c, s, scale, dtype, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, c)) * scale).astype(dtype)
    y = rng.integers(0, c, n).astype(np.int64)
    loss, lse = S.cross_entropy_forward(x, y, s, 1)
    grad = S.cross_entropy_backward(x, y, lse, np.ones(n, dtype), s, 1)
    ref_loss, ref_grad = reference(x, y, s)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(loss, ref_loss, rtol=tol, atol=tol * scale)
    np.testing.assert_allclose(grad, ref_grad, rtol=tol * 10, atol=tol * 10)


def test_kernel_independent_of_thread_count():
    """Same bits for 1, 2 and 3 threads, repeated: a variable shared by mistake between
    the threads shows up only when they interleave (it once did, in the forward)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 100)).astype(np.float32)
    y = rng.integers(0, 100, 512)
    g = rng.standard_normal(512).astype(np.float32)
    l1, s1 = S.cross_entropy_forward(x, y, 0.1, 1)
    g1 = S.cross_entropy_backward(x, y, s1, g, 0.1, 1)
    for _ in range(50):  # (a build with that bug differed in about 1 of 10 comparisons)
        for t in (2, 3):
            lt, st_ = S.cross_entropy_forward(x, y, 0.1, t)
            assert np.array_equal(l1, lt) and np.array_equal(s1, st_)
            assert np.array_equal(g1, S.cross_entropy_backward(x, y, s1, g, 0.1, t))


@pytest.mark.parametrize("logits, labels, exc, match", [
    (np.zeros((2, 3), np.float32), np.array([0, 3]), IndexError, "label 3 is out of range for 3 classes"),
    (np.zeros((2, 3), np.float32), np.array([0, -1]), IndexError, "label -1"),
    (np.zeros((2, 3), np.int64), np.array([0, 1]), TypeError, "float32 or float64"),
    (np.zeros((2, 3), np.float32)[:, ::2], np.array([0, 1]), ValueError, "C-contiguous"),
    (np.zeros((2, 3), np.float32), np.array([0, 1, 2]), ValueError, r"shape \(2,\)"),
    (np.zeros((2, 3), np.float32), np.array([0.0, 1.0]), ValueError, "int64"),
])
def test_wrapper_rejects_bad_input_before_running(logits, labels, exc, match):
    with pytest.raises(exc, match=match):
        S.cross_entropy_forward(logits, labels, 0.0, 1)


def test_functional_cross_entropy_double_backward_is_exact():
    x = tb.Tensor(np.random.default_rng(1).standard_normal((3, 4)), requires_grad=True)
    y = np.array([0, 3, 3])
    assert tb.testing.gradgradcheck(lambda t: tb.nn.functional.cross_entropy(t, y, label_smoothing=0.1), [x])
