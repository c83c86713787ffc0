"""Autograd semantics: accumulation, graph shapes, freeing, higher order, grad modes."""
import threading

import numpy as np
import pytest

import tinygrad_bn as tb


def leaf(values, dtype=np.float64):
    return tb.Tensor(np.asarray(values, dtype=dtype), requires_grad=True)


def test_gradient_accumulates_when_a_tensor_is_used_twice():
    x = leaf([1.0, -2.0, 3.0])
    (x * x + x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * x.numpy() + 1)


def test_leaf_grads_accumulate_across_backward_calls_until_cleared():
    x = leaf([1.0, 2.0])
    (3 * x).sum().backward()
    (5 * x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [8.0, 8.0])
    x.grad = None
    (2 * x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [2.0, 2.0])


def test_diamond_graph_sums_both_paths():
    # y = a*b + a*c with b = x^2, c = exp(x): dy/dx = a(2x + e^x) per element
    x = leaf([0.3, -0.7])
    a = leaf([2.0, 5.0])
    b, c = x * x, x.exp()
    (a * b + a * c).sum().backward()
    xv, av = x.numpy(), a.numpy()
    np.testing.assert_allclose(x.grad.numpy(), av * (2 * xv + np.exp(xv)))
    np.testing.assert_allclose(a.grad.numpy(), xv ** 2 + np.exp(xv))


def test_second_backward_through_freed_graph_says_retain_graph():
    x = leaf([1.0, 2.0])
    y = (x.exp() * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        y.backward()


def test_retain_graph_allows_a_second_backward():
    x = leaf([1.0, 2.0])
    y = (x.exp() * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    xv = x.numpy()
    np.testing.assert_allclose(x.grad.numpy(), 2 * (np.exp(xv) * (1 + xv)))


def test_backward_of_non_scalar_needs_gradient():
    x = leaf([1.0, 2.0])
    with pytest.raises(RuntimeError, match="scalar"):
        (x * 2).backward()
    y = x * x
    y.backward(tb.Tensor(np.array([1.0, 10.0])))
    np.testing.assert_allclose(x.grad.numpy(), [2.0, 40.0])


def test_gradient_of_wrong_shape_is_a_value_error():
    x = leaf([1.0, 2.0])
    with pytest.raises(ValueError, match=r"expected \(2,\)"):
        (x * 2).backward(tb.Tensor(np.ones(3)))


def test_backward_of_tensor_without_grad_raises():
    with pytest.raises(RuntimeError, match="does not require grad"):
        tb.Tensor([1.0, 2.0]).sum().backward()


def test_hessian_vector_product_matches_analytic_hessian():
    # f(x) = sum(x^3) + (x0 * x1)^2; H = diag(6x) + d2/dx2 of (x0 x1)^2
    rng = np.random.default_rng(0)
    xv = rng.normal(size=3)
    v = rng.normal(size=3)
    x = leaf(xv)
    f = (x ** 3.0).sum() + (x[0] * x[1]) ** 2.0
    (g,) = tb.grad(f, x, create_graph=True)
    (hv,) = tb.grad((g * tb.Tensor(v)).sum(), x)
    H = np.diag(6 * xv)
    H[0, 0] += 2 * xv[1] ** 2
    H[1, 1] += 2 * xv[0] ** 2
    H[0, 1] += 4 * xv[0] * xv[1]
    H[1, 0] += 4 * xv[0] * xv[1]
    np.testing.assert_allclose(hv.numpy(), H @ v, rtol=1e-12)


def test_triple_backward():
    x = leaf([0.5, 2.0])
    (g,) = tb.grad((x ** 4.0).sum(), x, create_graph=True)
    (h,) = tb.grad(g.sum(), x, create_graph=True)
    (k,) = tb.grad(h.sum(), x)
    np.testing.assert_allclose(k.numpy(), 24 * x.numpy())


def test_grad_returns_without_touching_dot_grad():
    x = leaf([1.0, 2.0])
    y = leaf([3.0, 4.0])
    gx, gy = tb.grad((x * y).sum(), [x, y])
    np.testing.assert_allclose(gx.numpy(), y.numpy())
    np.testing.assert_allclose(gy.numpy(), x.numpy())
    assert x.grad is None and y.grad is None


def test_grad_with_respect_to_a_non_leaf():
    x = leaf([1.0, 2.0])
    h = x * 3.0
    (gh,) = tb.grad((h * h).sum(), h)
    np.testing.assert_allclose(gh.numpy(), 2 * h.numpy())


def test_grad_allow_unused():
    x, unused = leaf([1.0]), leaf([2.0])
    with pytest.raises(RuntimeError, match="allow_unused"):
        tb.grad((x * 2).sum(), [x, unused], retain_graph=True)
    gx, gu = tb.grad((x * 2).sum(), [x, unused], allow_unused=True)
    assert gu is None and gx.item() == 2.0


def test_grad_of_input_without_requires_grad_raises():
    x = tb.Tensor([1.0])
    with pytest.raises(RuntimeError, match="does not require grad"):
        tb.grad(x * 2, x)


def test_chain_of_100000_ops_does_not_hit_recursion_limit():
    x = leaf(1.0)
    y = x
    for _ in range(100_000):
        y = y * 1.0
    y.backward()
    assert x.grad.item() == 1.0


def test_no_grad_context_and_decorator():
    x = leaf([1.0])
    with tb.no_grad():
        y = x * 2
    assert not y.requires_grad and y.is_leaf

    @tb.no_grad()
    def double(t):
        return t * 2

    assert not double(x).requires_grad
    assert (x * 2).requires_grad


def test_no_grad_is_thread_local():
    x = leaf([1.0])
    seen = {}
    inside, release = threading.Event(), threading.Event()

    def worker():
        with tb.no_grad():
            inside.set()
            release.wait(5)

    t = threading.Thread(target=worker)
    t.start()
    inside.wait(5)
    seen["main"] = (x * 2).requires_grad  # worker is inside no_grad right now
    release.set()
    t.join()
    assert seen["main"] is True


def test_detach_cuts_the_graph():
    x = leaf([2.0])
    (x * x.detach()).sum().backward()
    assert x.grad.item() == 2.0  # d/dx (x * c) = c, not 2x


def test_retain_grad_keeps_non_leaf_grad():
    x = leaf([1.0, 2.0])
    h = x * 3.0
    h.retain_grad()
    z = (x * 3.0) * 2.0
    (h.sum() * 4.0 + z.sum()).backward()
    np.testing.assert_allclose(h.grad.numpy(), [4.0, 4.0])
    assert z.grad is None


def test_create_graph_grad_is_differentiable_and_plain_grad_is_not():
    x = leaf([1.5])
    (x ** 3.0).sum().backward(create_graph=True)
    assert x.grad.requires_grad
    (h,) = tb.grad(x.grad.sum(), x)
    assert h.item() == pytest.approx(6 * 1.5)
    y = leaf([1.5])
    (y ** 3.0).sum().backward()
    assert not y.grad.requires_grad


def test_float32_gradient_of_float64_mix_comes_back_float32():
    a = tb.Tensor(np.ones(3, dtype=np.float32), requires_grad=True)
    b = tb.Tensor(np.full(3, 2.0), requires_grad=True)
    out = a * b
    assert out.dtype == np.float64
    out.sum().backward()
    assert a.grad.dtype == np.float32 and b.grad.dtype == np.float64
    np.testing.assert_allclose(a.grad.numpy(), 2.0)


def test_graph_is_freed_by_reference_counting():
    import gc
    import weakref

    gc.disable()
    try:
        x = leaf(np.ones(1000))
        h = x.exp()
        ref = weakref.ref(h)
        loss = (h * h).sum()
        del h
        assert ref() is not None  # held by the graph
        loss.backward()
        assert ref() is None  # backward freed the graph without the garbage collector
    finally:
        gc.enable()


def test_requires_grad_only_for_floats():
    with pytest.raises(TypeError, match="float"):
        tb.Tensor([1, 2], requires_grad=True)


def test_large_gemm_is_independent_of_thread_count():
    # Large GEMMs are split across threads by rows/batch: every output element must come
    # from the same single-threaded BLAS computation whatever the split.
    from tinygrad_bn import blas
    rng = np.random.default_rng(0)
    cases = [((600, 300), (300, 400)), ((8, 200, 300), (300, 100)), ((300, 200), (6, 200, 500)),
             ((4, 300, 200), (4, 200, 300))]
    before = tb.get_num_threads()
    try:
        for sa, sb in cases:
            a = rng.standard_normal(sa).astype(np.float32)
            b = rng.standard_normal(sb).astype(np.float32)
            tb.set_num_threads(1)
            one = blas.matmul(a, b)
            tb.set_num_threads(2)
            two = blas.matmul(a, b)
            assert np.array_equal(one, two)
            np.testing.assert_allclose(one, np.matmul(a, b), rtol=1e-5, atol=1e-4)
    finally:
        tb.set_num_threads(before)


def test_user_functions_with_value_equality_keep_their_own_gradients():
    """The engine keys graph nodes by identity: a user's Function may define __eq__
    (which leaves it unhashable) or a value-based __hash__ that makes distinct nodes
    compare equal; neither may merge nodes or break the walk."""
    from tinygrad_bn.function import Function

    class Scale(Function):  # y = k * x, dy/dx = k
        def forward(self, x):
            return x * self.k

        def backward(self, g):
            return g * self.k

    class ScaleEq(Scale):
        def __eq__(self, other):  # no __hash__: instances are unhashable
            return isinstance(other, Scale)

    class ScaleAllEqual(Scale):
        def __eq__(self, other):
            return True

        def __hash__(self):
            return 0

    for cls in (ScaleEq, ScaleAllEqual):
        x = tb.Tensor(np.array([1.0, 2.0]), requires_grad=True)
        # two distinct nodes on one path and a diamond: d/dx (2*(3x) + 5x) = 11
        a = cls.apply(x, k=3.0)
        y = cls.apply(a, k=2.0) + cls.apply(x, k=5.0)
        y.sum().backward()
        np.testing.assert_array_equal(x.grad.numpy(), [11.0, 11.0])
        x2 = tb.Tensor(np.array([1.0, 2.0]), requires_grad=True)
        a2 = cls.apply(x2, k=3.0)
        a2.retain_grad()
        out = cls.apply(a2, k=2.0).sum()
        (gx,) = tb.grad(out, [x2], retain_graph=True)
        np.testing.assert_array_equal(gx.numpy(), [6.0, 6.0])
        out.backward()
        np.testing.assert_array_equal(a2.grad.numpy(), [2.0, 2.0])
