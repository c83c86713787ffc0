"""tb.testing checks itself: gradcheck and gradgradcheck catch wrong derivatives and
pass right ones; the strategies draw what they promise."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinygrad_bn as tb
import tinygrad_bn.testing as tbt
from tinygrad_bn.function import Function
from tinygrad_bn.testing import GradcheckError, assert_allclose, gradcheck, gradgradcheck
from tinygrad_bn.testing import strategies as tbst


def _x(*shape, seed=0, requires_grad=True):
    return tb.Tensor(np.random.default_rng(seed).uniform(0.5, 2.0, shape), requires_grad=requires_grad)


class WrongSquare(Function):
    """y = x * x, with a backward that forgets the factor 2."""

    def forward(self, x):
        return x * x

    def backward(self, grad_y):
        (x,) = self.inputs
        return grad_y * x


class SquareDetachedGrad(Function):
    """y = x * x, with a backward whose value is right but that cuts grad_y from the graph."""

    def forward(self, x):
        return x * x

    def backward(self, grad_y):
        (x,) = self.inputs
        return grad_y.detach() * 2.0 * x


def _biased_var_detached_mean(x):
    # tinygrad's old BN variance (LESSONS.md): first derivatives right, Hessian missing -2/m^2.
    return ((x - x.mean().detach()) ** 2.0).mean()


# ---------------------------------------------------------------- gradcheck
@pytest.mark.parametrize(
    "fn, n_inputs",
    [
        (lambda x: x * x, 1),
        (lambda x: x.exp().sum(axis=0), 1),
        (lambda x, y: x @ y.T, 2),
        (lambda x, y: (x / y).log_softmax(-1), 2),
        (_biased_var_detached_mean, 1),
    ],
)
def test_gradcheck_passes_on_correct_derivatives(fn, n_inputs):
    xs = [_x(3, 4, seed=i) for i in range(n_inputs)]
    assert gradcheck(fn, xs) is True


def test_gradcheck_catches_detach_that_drops_a_term():
    # x * x.detach() has the value x^2 but the gradient x, not 2x
    x = _x(2, 3)
    with pytest.raises(GradcheckError) as info:
        gradcheck(lambda t: t * t.detach(), [x])
    e = info.value
    assert isinstance(e, AssertionError)
    assert e.input_index == 0
    assert "input 0" in str(e)
    flat = np.ravel_multi_index(e.index, x.shape)
    assert flat == e.flat_index
    assert str(e.index) in str(e) and repr(e.analytic) in str(e) and repr(e.numeric) in str(e)
    assert e.numeric == pytest.approx(2 * e.analytic, rel=1e-4)


def test_gradcheck_catches_wrong_function_backward():
    with pytest.raises(GradcheckError, match="input 0"):
        gradcheck(lambda t: WrongSquare.apply(t), [_x(4)])


def test_gradcheck_names_the_input_with_the_wrong_gradient():
    a, b, c = _x(3, seed=1), _x(2, 3, seed=2), _x(3, seed=3)
    with pytest.raises(GradcheckError) as info:
        gradcheck(lambda p, q, r: p * 2.0 + q * q.detach() + r.exp(), [a, b, c])
    assert info.value.input_index == 1
    assert "input 1" in str(info.value)
    assert len(info.value.index) == 2


def test_gradcheck_skips_inputs_without_requires_grad():
    a, b = _x(3, seed=1), _x(3, seed=2, requires_grad=False)
    assert gradcheck(lambda p, q: p * q.detach() * q, [a, b])  # b is wrong but not checked


def test_gradcheck_passes_int_inputs_through():
    x = _x(4, 3)
    labels = tb.Tensor(np.array([2, 0, 0, 1]))
    assert gradcheck(lambda t, y: t.log_softmax(-1)[np.arange(4), y.numpy()], [x, labels])


def test_gradcheck_allows_unused_inputs_and_constant_outputs():
    a, b = _x(3, seed=1), _x(3, seed=2)
    assert gradcheck(lambda p, q: p * 2.0, [a, b])
    assert gradcheck(lambda p: tb.Tensor(np.ones(3)), [a])


def test_gradcheck_does_not_modify_inputs():
    x = _x(3, 2)
    before = x.numpy().copy()
    gradcheck(lambda t: t.sigmoid(), [x])
    np.testing.assert_array_equal(x.numpy(), before)
    assert x.grad is None


def test_gradcheck_multiple_outputs():
    x = _x(3)
    assert gradcheck(lambda t: (t * 2.0, t.exp()), [x])
    with pytest.raises(GradcheckError):
        gradcheck(lambda t: (t * 2.0, t * t.detach()), [x])


def test_gradcheck_rejects_float32():
    x32 = tb.Tensor(np.ones(3, dtype=np.float32), requires_grad=True)
    with pytest.raises(TypeError, match="float64"):
        gradcheck(lambda t: t * t, [x32])
    with pytest.raises(TypeError):  # a float32 constant pollutes the float64 computation too
        gradcheck(lambda t, c: t * c, [_x(3), tb.Tensor(np.ones(3, dtype=np.float32))])
    with pytest.raises(TypeError):  # a float32 output
        gradcheck(lambda t: tb.Tensor(np.ones(3, dtype=np.float32)), [_x(3)])


def test_gradcheck_rejects_bad_arguments():
    with pytest.raises(ValueError, match="requires grad"):
        gradcheck(lambda t: t * t, [_x(3, requires_grad=False)])
    with pytest.raises(TypeError):
        gradcheck(lambda t: t * t, [np.ones(3)])
    with pytest.raises(TypeError):
        gradcheck(lambda t: t.numpy(), [_x(3)])


def test_gradcheck_tolerance_is_atol_plus_rtol():
    def off_by(delta):
        # value 1e3 * x^2 at every x, but analytic gradient 2e3 * x * (1 + delta / 2)
        return lambda t: 1e3 * (t * t + delta * (t * t.detach() - t.detach() * t.detach()))

    x = _x(3)  # values in [0.5, 2]: |diff| = 1e3 * 1e-3 * x <= 2
    assert gradcheck(off_by(1e-3), [x])  # relative error 5e-4 < rtol=1e-3
    with pytest.raises(GradcheckError):
        gradcheck(off_by(1e-3), [x], rtol=1e-4)
    assert gradcheck(off_by(1e-3), [x], rtol=0.0, atol=2.5)
    with pytest.raises(GradcheckError):
        gradcheck(off_by(1e-3), [x], rtol=0.0, atol=0.1)


# ---------------------------------------------------------------- gradgradcheck
@pytest.mark.parametrize(
    "fn, n_inputs",
    [
        (lambda x: x ** 3.0, 1),
        (lambda x, y: x * y, 2),
        (lambda x: x.sigmoid().sum(axis=1), 1),
        (lambda x: x.var(), 1),
        (lambda x: x * 2.0, 1),  # linear: the second derivative is zero, and must be found so
    ],
)
def test_gradgradcheck_passes_on_correct_derivatives(fn, n_inputs):
    xs = [_x(2, 3, seed=i) for i in range(n_inputs)]
    assert gradgradcheck(fn, xs) is True


def test_gradgradcheck_catches_detached_mean_in_variance():
    x = _x(5)
    assert gradcheck(_biased_var_detached_mean, [x])  # first derivatives agree ...
    with pytest.raises(GradcheckError) as info:  # ... the Hessian does not
        gradgradcheck(_biased_var_detached_mean, [x])
    assert info.value.input_index == 0
    assert "gradgradcheck" in str(info.value)


def test_gradgradcheck_catches_backward_that_is_constant_in_x():
    # (x - x.detach())^2 is 0 with gradient 0, but its "second derivative" is 2
    x = _x(3)
    assert gradcheck(lambda t: (t - t.detach()) ** 2.0 + t, [x])
    with pytest.raises(GradcheckError):
        gradgradcheck(lambda t: (t - t.detach()) ** 2.0 + t, [x])


def test_gradgradcheck_checks_the_upstream_gradient_too():
    # backward right in value, but detached from grad_y: only differentiating it with
    # respect to v (reported as input len(inputs)) shows the error.
    x = _x(3)
    assert gradcheck(lambda t: SquareDetachedGrad.apply(t), [x])
    with pytest.raises(GradcheckError) as info:
        gradgradcheck(lambda t: SquareDetachedGrad.apply(t), [x])
    assert info.value.input_index == 1
    assert "upstream gradient" in str(info.value)


def test_gradgradcheck_does_not_replace_gradcheck():
    # a wrong but self-consistent backward (x instead of 2x) passes gradgradcheck: check both
    x = _x(3)
    assert gradgradcheck(lambda t: WrongSquare.apply(t), [x])
    with pytest.raises(GradcheckError):
        gradcheck(lambda t: WrongSquare.apply(t), [x])


def test_gradgradcheck_rejects_float32():
    with pytest.raises(TypeError):
        gradgradcheck(lambda t: t * t, [tb.Tensor(np.ones(3, dtype=np.float32), requires_grad=True)])


# ---------------------------------------------------------------- assert_allclose
def test_assert_allclose_checks_shape_dtype_and_values():
    t = tb.Tensor(np.array([1.0, 2.0]))
    assert_allclose(t, np.array([1.0, 2.0 + 1e-9]), rtol=1e-6)
    with pytest.raises(AssertionError, match="shape"):
        assert_allclose(t, np.array([[1.0, 2.0]]))
    with pytest.raises(AssertionError, match="dtype"):
        assert_allclose(t, np.array([1.0, 2.0], dtype=np.float32))
    with pytest.raises(AssertionError):
        assert_allclose(t, np.array([1.0, 2.1]), rtol=1e-3)


def test_testing_exports_its_api():
    for name in ("gradcheck", "gradgradcheck", "GradcheckError", "assert_allclose", "strategies"):
        assert name in tbt.__all__ and getattr(tbt, name) is not None
    assert tbt.strategies.shapes is tbst.shapes
    assert issubclass(GradcheckError, AssertionError)


# ---------------------------------------------------------------- strategies
@given(tbst.shapes(min_dims=1, max_dims=3, min_side=2, max_side=4))
def test_shapes_respect_their_bounds(shape):
    assert isinstance(shape, tuple) and 1 <= len(shape) <= 3
    assert all(isinstance(s, int) and 2 <= s <= 4 for s in shape)


@given(tbst.broadcastable_shapes(num_shapes=3, max_dims=3, max_side=4))
def test_broadcastable_shapes_broadcast(shapes):
    assert len(shapes) == 3
    np.broadcast_shapes(*shapes)
    assert all(len(s) <= 3 and all(1 <= d <= 4 for d in s) for s in shapes)


@given(st.data())
def test_arrays_are_finite_bounded_and_of_the_dtype(data):
    dtype = data.draw(st.sampled_from([np.float32, np.float64, np.int64, np.bool_]))
    shape = data.draw(tbst.shapes(max_dims=3, max_side=4))
    a = data.draw(tbst.arrays(dtype, shape, min_value=-3, max_value=0.1))
    assert isinstance(a, np.ndarray) and a.dtype == dtype and a.shape == shape and a.flags.c_contiguous
    if dtype in (np.float32, np.float64):
        assert np.isfinite(a).all() and (a >= -3).all() and (a <= 0.1).all()
    elif dtype == np.int64:
        assert ((a >= -3) & (a <= 0)).all()


@given(tbst.arrays(np.float64, tbst.shapes(max_dims=2)))
def test_arrays_accept_a_shape_strategy(a):
    assert a.ndim <= 2 and np.isfinite(a).all() and (np.abs(a) <= 10).all()


@given(tbst.tensors(np.float64, tbst.shapes(max_dims=3, max_side=3), requires_grad=True, min_value=-1, max_value=1))
def test_tensors_keep_dtype_and_requires_grad(t):
    assert isinstance(t, tb.Tensor) and t.dtype == np.float64 and t.requires_grad
    assert (np.abs(t.numpy()) <= 1).all()


@given(tbst.tensors(np.float32, (2, 3)))
def test_tensors_accept_a_fixed_shape(t):
    assert t.shape == (2, 3) and t.dtype == np.float32 and not t.requires_grad


@given(tbst.batch_norm_inputs())
def test_batch_norm_inputs_promise(inputs):
    x, gamma, beta = inputs
    assert x.ndim in (2, 3, 4) and x.dtype == gamma.dtype == beta.dtype == np.float64
    n, c = x.shape[:2]
    assert gamma.shape == beta.shape == (c,)
    assert n * math.prod(x.shape[2:]) >= 2
    assert np.isfinite(x).all() and np.isfinite(gamma).all() and np.isfinite(beta).all()
    axes = (0,) + tuple(range(2, x.ndim))
    std = x.std(axis=axes)
    assert (std > 0).all() and (std < 1e4).all()


@given(tbst.batch_norm_inputs(ndims=(4,), dtype=np.float32, max_offset=1e4))
def test_batch_norm_inputs_dtype_and_ndim(inputs):
    x, gamma, beta = inputs
    assert x.ndim == 4 and x.dtype == np.float32 and gamma.dtype == np.float32


def test_batch_norm_inputs_reach_zero_and_negative_gamma_and_all_scales():
    seen = {"zero": False, "negative": False, "small": False, "large": False}

    # NOTE: a statement about what the strategy reaches, so it gets a fixed example
    # sequence of its own: under the random dev profile (50 examples) "large" was
    # missed now and then, a flaky test rather than a broken strategy
    @settings(derandomize=True, max_examples=200, database=None)
    @given(tbst.batch_norm_inputs())
    def collect(inputs):
        x, gamma, _ = inputs
        seen["zero"] |= bool((gamma == 0).any())
        seen["negative"] |= bool((gamma < 0).any())
        std = x.std(axis=(0,) + tuple(range(2, x.ndim)))
        seen["small"] |= bool((std < 1e-2).any())
        seen["large"] |= bool((std > 1e2).any())

    collect()
    assert all(seen.values()), seen


def test_importing_the_package_does_not_import_hypothesis():
    import subprocess
    import sys

    code = "import sys, tinygrad_bn, tinygrad_bn.testing; assert 'hypothesis' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
