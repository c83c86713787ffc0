"""tb.nn layers without convolution: Linear, activations, Flatten, Dropout, Identity, init.

Forward against numpy in float64, gradients against finite differences, and
against torch where it is installed; initialisers against torch's formulas.
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinygrad_bn as tb
from tinygrad_bn import nn
from tinygrad_bn.nn import functional as F
from tinygrad_bn.nn import init
from tinygrad_bn.testing import assert_allclose, gradcheck, gradgradcheck
from tinygrad_bn.testing import strategies as tbst


def import_torch():
    """torch, or skip. Single-threaded: on a busy 2-core machine its OpenMP pool costs
    ~60 ms a call on these tiny tensors, against ~0.1 ms on one thread."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    return torch


# ---------------------------------------------------------------- strategies
@st.composite
def linear_cases(draw, max_side=4):
    """(x, weight, bias-or-None) float64 arrays: x (*batch, in), weight (out, in), bias (out,)."""
    batch = draw(tbst.shapes(0, 2, 1, max_side))
    fin, fout = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    x = draw(tbst.arrays(np.float64, batch + (fin,), -3, 3))
    w = draw(tbst.arrays(np.float64, (fout, fin), -3, 3))
    b = draw(st.none() | tbst.arrays(np.float64, (fout,), -3, 3))
    return x, w, b


def linear_ref(x, w, b):
    y = x @ w.T
    return y if b is None else y + b


def tensors_of(*arrays, requires_grad=True):
    return [None if a is None else tb.Tensor(a, requires_grad=requires_grad) for a in arrays]


# ---------------------------------------------------------------- Linear
@given(linear_cases(max_side=5))
def test_linear_matches_numpy(case):
    x, w, b = case
    y = F.linear(*tensors_of(x, w, b, requires_grad=False))
    assert_allclose(y, linear_ref(x, w, b), rtol=1e-12, atol=1e-12)


@given(linear_cases(max_side=5))
def test_linear_float32_matches_float64_reference(case):
    x, w, b = case
    x32, w32 = x.astype(np.float32), w.astype(np.float32)
    b32 = None if b is None else b.astype(np.float32)
    y = F.linear(*tensors_of(x32, w32, b32, requires_grad=False))
    ref = linear_ref(x32.astype(np.float64), w32.astype(np.float64), None if b is None else b32.astype(np.float64))
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-5, atol=1e-5)


@given(linear_cases(max_side=3))
def test_linear_gradcheck(case):
    x, w, b = case
    inputs = [t for t in tensors_of(x, w, b) if t is not None]
    gradcheck(lambda *a: F.linear(*a), inputs)


@settings(max_examples=5)
@given(linear_cases(max_side=2))
def test_linear_gradgradcheck(case):
    x, w, b = case
    inputs = [t for t in tensors_of(x, w, b) if t is not None]
    gradgradcheck(lambda *a: F.linear(*a), inputs)


def test_linear_module_computes_x_weight_t_plus_bias():
    lin = nn.Linear(4, 3)
    assert lin.weight.shape == (3, 4) and lin.bias.shape == (3,)
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    ref = x.astype(np.float64) @ lin.weight.numpy().T.astype(np.float64) + lin.bias.numpy()
    np.testing.assert_allclose(lin(tb.Tensor(x)).numpy(), ref, rtol=1e-5, atol=1e-6)


def test_linear_on_3d_input_applies_to_the_last_axis():
    lin = nn.Linear(4, 3, dtype=np.float64)
    x = np.random.default_rng(1).standard_normal((2, 5, 4))
    y = lin(tb.Tensor(x))
    assert y.shape == (2, 5, 3)
    for i in range(2):
        np.testing.assert_allclose(y.numpy()[i], lin(tb.Tensor(x[i])).numpy(), rtol=1e-12)
    assert_allclose(y, x @ lin.weight.numpy().T + lin.bias.numpy(), rtol=1e-12, atol=1e-12)


def test_linear_on_1d_input():
    lin = nn.Linear(3, 2, dtype=np.float64)
    x = np.array([1.0, -2.0, 0.5])
    assert_allclose(lin(tb.Tensor(x)), lin.weight.numpy() @ x + lin.bias.numpy(), rtol=1e-12)


def test_linear_without_bias():
    lin = nn.Linear(3, 2, bias=False)
    assert lin.bias is None
    assert [n for n, _ in lin.named_parameters()] == ["weight"]
    x = tb.randn(4, 3)
    np.testing.assert_allclose(lin(x).numpy(), x.numpy() @ lin.weight.numpy().T, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fan_in, fan_out", [(1, 500), (7, 300), (64, 128)])
def test_linear_default_init_is_uniform_within_one_over_sqrt_in(fan_in, fan_out):
    tb.manual_seed(0)
    lin = nn.Linear(fan_in, fan_out)
    bound = 1 / math.sqrt(fan_in)
    for p in (lin.weight, lin.bias):
        v = p.numpy()
        assert np.all(np.abs(v) <= bound * (1 + 1e-6))
    w = lin.weight.numpy()
    # U(-b, b): fills the interval, mean 0, std b / sqrt(3)
    assert w.max() > 0.95 * bound and w.min() < -0.95 * bound
    assert abs(w.mean()) < 4 * bound / math.sqrt(3 * w.size)  # 4 standard errors
    assert w.std() == pytest.approx(bound / math.sqrt(3), rel=0.06)
    assert np.abs(lin.bias.numpy()).max() > 0.9 * bound


def test_linear_init_is_reproducible_under_manual_seed():
    tb.manual_seed(3)
    a = nn.Linear(5, 4)
    tb.manual_seed(3)
    b = nn.Linear(5, 4)
    np.testing.assert_array_equal(a.weight.numpy(), b.weight.numpy())
    np.testing.assert_array_equal(a.bias.numpy(), b.bias.numpy())
    assert a.weight.dtype == np.float32


def test_linear_wrong_in_features_names_expected_and_got():
    with pytest.raises(ValueError, match=r"3.*\(2, 4\)"):
        nn.Linear(3, 2)(tb.randn(2, 4))


def test_linear_bad_bias_shape_is_a_value_error():
    with pytest.raises(ValueError, match="bias"):
        F.linear(tb.randn(2, 3), tb.randn(4, 3), tb.randn(3))


@pytest.mark.parametrize("x_dtype, w_dtype", [(np.float32, np.float64), (np.float64, np.float32)])
def test_linear_with_mixed_dtypes_promotes_to_float64(x_dtype, w_dtype):
    # DESIGN.md: mixed float32/float64 operands promote to float64 (as x @ w.T does)
    x = tb.Tensor(np.ones((2, 3), dtype=x_dtype))
    w = tb.Tensor(np.full((4, 3), 1 / 3, dtype=w_dtype), requires_grad=True)
    assert (x @ w.T).dtype == np.float64
    y = F.linear(x, w)
    assert y.dtype == np.float64
    y.sum().backward()
    assert w.grad.dtype == w_dtype


def test_linear_matches_torch_forward_and_backward():
    torch = import_torch()
    rng = np.random.default_rng(2)
    x, w, b = rng.standard_normal((6, 5)), rng.standard_normal((4, 5)), rng.standard_normal(4)
    g = rng.standard_normal((6, 4))
    xs, ws, bs = tensors_of(x, w, b)
    y = F.linear(xs, ws, bs)
    y.backward(tb.Tensor(g))
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    yt = torch.nn.functional.linear(xt, wt, bt)
    yt.backward(torch.tensor(g))
    for ours, theirs in ((y, yt), (xs.grad, xt.grad), (ws.grad, wt.grad), (bs.grad, bt.grad)):
        np.testing.assert_allclose(ours.numpy(), theirs.detach().numpy(), rtol=1e-12, atol=1e-12)


def test_linear_module_loads_torch_weights_and_agrees():
    torch = import_torch()
    theirs = torch.nn.Linear(5, 3).double()
    ours = nn.Linear(5, 3, dtype=np.float64)
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    x = np.random.default_rng(4).standard_normal((2, 7, 5))
    np.testing.assert_allclose(ours(tb.Tensor(x)).numpy(), theirs(torch.tensor(x)).detach().numpy(), rtol=1e-12)


# ---------------------------------------------------------------- activations
# fmt: off
ACTIVATIONS = {
    "relu":       (nn.ReLU(),         F.relu,                           lambda x: np.maximum(x, 0)),
    "sigmoid":    (nn.Sigmoid(),      F.sigmoid,                        lambda x: 1 / (1 + np.exp(-x))),
    "tanh":       (nn.Tanh(),         F.tanh,                           np.tanh),
    "leaky_relu": (nn.LeakyReLU(),    lambda x: F.leaky_relu(x),        lambda x: np.where(x > 0, x, 0.01 * x)),
    "leaky_0.2":  (nn.LeakyReLU(0.2), lambda x: F.leaky_relu(x, 0.2),   lambda x: np.where(x > 0, x, 0.2 * x)),
    "leaky_3":    (nn.LeakyReLU(3.0), lambda x: F.leaky_relu(x, 3.0),   lambda x: np.where(x > 0, x, 3.0 * x)),
    "leaky_-0.5": (nn.LeakyReLU(-0.5), lambda x: F.leaky_relu(x, -0.5), lambda x: np.where(x > 0, x, -0.5 * x)),
}
# fmt: on


@pytest.mark.parametrize("name", ACTIVATIONS)
@given(x=tbst.arrays(np.float64, tbst.shapes(0, 3, 1, 5), -20, 20))
def test_activation_matches_numpy(name, x):
    module, fn, ref = ACTIVATIONS[name]
    assert_allclose(module(tb.Tensor(x)), ref(x), rtol=1e-12, atol=1e-15)
    assert_allclose(fn(tb.Tensor(x)), ref(x), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", ACTIVATIONS)
@given(x=tbst.arrays(np.float64, tbst.shapes(1, 2, 1, 3), -3, 3))
def test_activation_gradcheck(name, x):
    module, _, _ = ACTIVATIONS[name]
    # keep away from the kinks of the piecewise-linear ones
    x = np.where(np.abs(x) < 1e-3, 0.5, x)
    gradcheck(module, [tb.Tensor(x, requires_grad=True)])


@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_smooth_activation_gradgradcheck(name):
    module, _, _ = ACTIVATIONS[name]
    x = np.random.default_rng(0).uniform(-3, 3, (2, 3))
    gradgradcheck(module, [tb.Tensor(x, requires_grad=True)])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_and_tanh_are_finite_and_saturate_at_large_inputs(dtype):
    x = tb.Tensor(np.array([-1e4, -100.0, 0.0, 100.0, 1e4], dtype=dtype), requires_grad=True)
    s = F.sigmoid(x)
    np.testing.assert_allclose(s.numpy(), [0, 0, 0.5, 1, 1], atol=1e-30)
    np.testing.assert_allclose(F.tanh(x).numpy(), [-1, -1, 0, 1, 1])
    s.sum().backward()
    assert np.all(np.isfinite(x.grad.numpy()))


@pytest.mark.parametrize("name, torch_name, kwargs", [
    ("relu", "relu", {}), ("sigmoid", "sigmoid", {}), ("tanh", "tanh", {}),
    ("leaky_relu", "leaky_relu", {}), ("leaky_0.2", "leaky_relu", {"negative_slope": 0.2}),
    ("leaky_3", "leaky_relu", {"negative_slope": 3.0}),
])
def test_activation_matches_torch(name, torch_name, kwargs):
    torch = import_torch()
    x = np.random.default_rng(0).uniform(-4, 4, (3, 5))
    g = np.random.default_rng(1).standard_normal((3, 5))
    xs = tb.Tensor(x, requires_grad=True)
    y = ACTIVATIONS[name][0](xs)
    y.backward(tb.Tensor(g))
    xt = torch.tensor(x, requires_grad=True)
    yt = getattr(torch.nn.functional, torch_name)(xt, **kwargs)
    yt.backward(torch.tensor(g))
    np.testing.assert_allclose(y.numpy(), yt.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(xs.grad.numpy(), xt.grad.numpy(), rtol=1e-12)


def test_relu_gradient_at_zero_is_zero():
    x = tb.Tensor(np.array([0.0, 0.0]), requires_grad=True)
    F.relu(x).backward(tb.Tensor(np.array([1.0, -2.0])))
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 0.0])


@pytest.mark.parametrize("slope", [0.01, 0.2, 3.0, -0.5])
def test_leaky_relu_gradient_at_zero_is_negative_slope(slope):
    # torch: grad = grad_y if x > 0 else negative_slope * grad_y, so at 0 it is the slope
    # (as relu's is 0 there), not the average of the two sides.
    x = tb.Tensor(np.array([0.0, 0.0]), requires_grad=True)
    nn.LeakyReLU(slope)(x).backward(tb.Tensor(np.array([1.0, -2.0])))
    np.testing.assert_allclose(x.grad.numpy(), [slope, -2.0 * slope], rtol=1e-12)


def test_leaky_relu_default_slope_and_repr():
    assert nn.LeakyReLU().negative_slope == 0.01
    assert repr(nn.LeakyReLU(0.2)) == "LeakyReLU(negative_slope=0.2)"


def test_activations_keep_dtype():
    for module, _, _ in ACTIVATIONS.values():
        assert module(tb.randn(3)).dtype == np.float32
        assert module(tb.Tensor(np.zeros(3))).dtype == np.float64


# ---------------------------------------------------------------- Flatten and Identity
@pytest.mark.parametrize("start, end, expected", [
    (1, -1, (2, 60)), (0, -1, (120,)), (1, 2, (2, 12, 5)), (-3, -2, (2, 12, 5)),
    (2, 3, (2, 3, 20)), (1, 1, (2, 3, 4, 5)),
])
def test_flatten_merges_the_given_dims(start, end, expected):
    x = np.arange(120.0).reshape(2, 3, 4, 5)
    y = nn.Flatten(start, end)(tb.Tensor(x))
    assert y.shape == expected
    np.testing.assert_array_equal(y.numpy(), x.reshape(expected))


def test_flatten_default_keeps_the_batch_dim_and_passes_gradient_back():
    x = tb.Tensor(np.arange(24.0).reshape(2, 3, 4), requires_grad=True)
    y = nn.Flatten()(x)
    assert y.shape == (2, 12)
    g = np.arange(24.0).reshape(2, 12)
    y.backward(tb.Tensor(g))
    np.testing.assert_array_equal(x.grad.numpy(), g.reshape(2, 3, 4))


def test_flatten_matches_torch():
    torch = import_torch()
    x = np.random.default_rng(0).standard_normal((2, 3, 1, 4))
    for args in [(), (0,), (1, 2), (-2, -1), (2,)]:
        ours = nn.Flatten(*args)(tb.Tensor(x))
        theirs = torch.nn.Flatten(*args)(torch.tensor(x))
        assert ours.shape == tuple(theirs.shape), args


def test_identity_returns_its_input():
    x = tb.randn(2, 3, requires_grad=True)
    assert nn.Identity()(x) is x
    assert list(nn.Identity().parameters()) == []


# ---------------------------------------------------------------- Dropout
@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_keeps_values_scaled_by_one_over_one_minus_p(p):
    tb.manual_seed(0)
    x = np.random.default_rng(0).uniform(1, 2, 200_000)  # nonzero, so a zero means dropped
    y = F.dropout(tb.Tensor(x), p, training=True).numpy()
    kept = y != 0
    np.testing.assert_allclose(y[kept], x[kept] / (1 - p), rtol=1e-12)
    # fraction dropped ~ p (binomial std <= 0.0012 here: 0.01 is > 8 sigma)
    assert abs((~kept).mean() - p) < 0.01


def test_dropout_preserves_the_mean_in_expectation():
    tb.manual_seed(1)
    y = nn.Dropout(0.3)(tb.ones(400_000, dtype=tb.float64)).numpy()
    assert y.mean() == pytest.approx(1.0, abs=0.01)


def test_dropout_gradient_is_the_scaled_mask():
    tb.manual_seed(2)
    p = 0.4
    x = tb.Tensor(np.ones((50, 40)), requires_grad=True)
    y = F.dropout(x, p)
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), y.numpy(), rtol=1e-12)  # y = mask/(1-p) for x = 1
    assert set(np.unique(np.round(x.grad.numpy(), 12))) <= {0.0, round(1 / (1 - p), 12)}


def test_dropout_is_identity_in_eval_mode_and_for_training_false():
    x = tb.randn(10, 10)
    d = nn.Dropout(0.5)
    d.eval()
    assert not d.training
    np.testing.assert_array_equal(d(x).numpy(), x.numpy())
    np.testing.assert_array_equal(F.dropout(x, 0.5, training=False).numpy(), x.numpy())


def test_dropout_p_zero_is_identity_and_p_one_zeros_everything():
    x = tb.randn(5, 5)
    np.testing.assert_array_equal(F.dropout(x, 0.0).numpy(), x.numpy())
    y = F.dropout(x, 1.0)
    np.testing.assert_array_equal(y.numpy(), np.zeros((5, 5)))
    assert np.all(np.isfinite(y.numpy()))


def test_dropout_is_reproducible_under_manual_seed():
    x = tb.ones(1000)
    tb.manual_seed(123)
    a = nn.Dropout(0.5)(x).numpy()
    tb.manual_seed(123)
    b = nn.Dropout(0.5)(x).numpy()
    c = nn.Dropout(0.5)(x).numpy()  # the stream moves on
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dropout_keeps_dtype_and_shape(dtype):
    y = F.dropout(tb.Tensor(np.ones((2, 3, 4), dtype=dtype)), 0.5)
    assert y.dtype == dtype and y.shape == (2, 3, 4)


@pytest.mark.parametrize("p", [-0.1, 1.5, 2])
def test_dropout_probability_outside_unit_interval_is_a_value_error(p):
    with pytest.raises(ValueError, match=str(p)):
        nn.Dropout(p)
    with pytest.raises(ValueError, match=str(p)):
        F.dropout(tb.ones(3), p)


def test_dropout_repr():
    assert repr(nn.Dropout(0.25)) == "Dropout(p=0.25)"


# ---------------------------------------------------------------- init
def big(*shape):
    """A float64 Parameter large enough for sample statistics to be tight."""
    return nn.Parameter(np.zeros(shape))


@pytest.mark.parametrize("nonlinearity, param", [
    ("linear", None), ("conv2d", None), ("sigmoid", None), ("tanh", None), ("relu", None),
    ("leaky_relu", None), ("leaky_relu", 0.2), ("leaky_relu", math.sqrt(5)),
])
def test_calculate_gain_matches_torch_table(nonlinearity, param):
    expected = {
        "linear": 1.0, "conv2d": 1.0, "sigmoid": 1.0, "tanh": 5 / 3, "relu": math.sqrt(2),
        "leaky_relu": math.sqrt(2 / (1 + (0.01 if param is None else param) ** 2)),
    }[nonlinearity]
    assert init.calculate_gain(nonlinearity, param) == pytest.approx(expected, rel=1e-12)
    torch = import_torch()
    assert init.calculate_gain(nonlinearity, param) == pytest.approx(
        torch.nn.init.calculate_gain(nonlinearity, param), rel=1e-12)


def test_calculate_gain_rejects_unknown_nonlinearity():
    with pytest.raises(ValueError, match="bogus"):
        init.calculate_gain("bogus")


def test_uniform_and_normal_fill_in_place():
    tb.manual_seed(0)
    t = big(200, 500)
    assert init.uniform_(t, -2.0, 3.0) is t
    v = t.numpy()
    assert v.min() >= -2.0 and v.max() <= 3.0
    assert v.mean() == pytest.approx(0.5, abs=0.02)
    init.normal_(t, 1.0, 2.0)
    assert t.numpy().mean() == pytest.approx(1.0, abs=0.02)
    assert t.numpy().std() == pytest.approx(2.0, rel=0.01)


def test_constant_initialisers():
    t = big(3, 4)
    np.testing.assert_array_equal(init.ones_(t).numpy(), 1.0)
    np.testing.assert_array_equal(init.zeros_(t).numpy(), 0.0)
    np.testing.assert_array_equal(init.constant_(t, 0.25).numpy(), 0.25)


@pytest.mark.parametrize("shape", [(300, 200), (64, 8, 3, 3)])
@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
def test_kaiming_uniform_bound(shape, mode):
    tb.manual_seed(0)
    t = big(*shape)
    fan_in, fan_out = shape[1] * math.prod(shape[2:]), shape[0] * math.prod(shape[2:])
    fan = fan_in if mode == "fan_in" else fan_out
    bound = math.sqrt(2.0) * math.sqrt(3.0 / fan)  # gain(relu) * sqrt(3 / fan)
    init.kaiming_uniform_(t, mode=mode, nonlinearity="relu")
    v = t.numpy()
    assert np.abs(v).max() <= bound and np.abs(v).max() > 0.98 * bound
    assert v.std() == pytest.approx(bound / math.sqrt(3), rel=0.03)


def test_kaiming_uniform_default_a_is_leaky_relu_zero():
    tb.manual_seed(0)
    t = init.kaiming_uniform_(big(300, 100))
    bound = math.sqrt(2.0 / (1 + 0.0**2)) * math.sqrt(3.0 / 100)
    assert np.abs(t.numpy()).max() <= bound and np.abs(t.numpy()).max() > 0.98 * bound


@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
def test_kaiming_normal_std(mode):
    tb.manual_seed(0)
    t = big(400, 250)
    fan = 250 if mode == "fan_in" else 400
    init.kaiming_normal_(t, mode=mode, nonlinearity="relu")
    assert t.numpy().std() == pytest.approx(math.sqrt(2.0) / math.sqrt(fan), rel=0.02)
    assert abs(t.numpy().mean()) < 0.01 * math.sqrt(2.0 / fan) * 10


def test_xavier_uniform_and_normal():
    tb.manual_seed(0)
    shape = (32, 16, 3, 3)  # fan_in 144, fan_out 288
    gain = 5 / 3
    t = big(*shape)
    bound = gain * math.sqrt(6.0 / (144 + 288))
    init.xavier_uniform_(t, gain=gain)
    assert np.abs(t.numpy()).max() <= bound and np.abs(t.numpy()).max() > 0.98 * bound
    init.xavier_normal_(t, gain=gain)
    assert t.numpy().std() == pytest.approx(gain * math.sqrt(2.0 / (144 + 288)), rel=0.03)


@pytest.mark.parametrize("fn", [init.kaiming_uniform_, init.kaiming_normal_, init.xavier_uniform_, init.xavier_normal_])
def test_fan_based_init_of_a_vector_is_a_value_error(fn):
    with pytest.raises(ValueError, match=r"\(5,\)"):
        fn(big(5))


def test_init_builds_no_graph_and_keeps_parameter_state():
    p = nn.Parameter(np.zeros((3, 4), dtype=np.float32))
    init.kaiming_uniform_(p, a=math.sqrt(5))
    assert p.requires_grad and p.is_leaf and p.grad is None and p.dtype == np.float32
    assert np.any(p.numpy() != 0)


def test_init_is_reproducible_under_manual_seed():
    tb.manual_seed(7)
    a = init.normal_(big(10)).numpy().copy()
    tb.manual_seed(7)
    b = init.normal_(big(10)).numpy().copy()
    np.testing.assert_array_equal(a, b)
