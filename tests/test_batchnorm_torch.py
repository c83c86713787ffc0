"""Both BatchNorm implementations against PyTorch (the reference DESIGN.md defers to):
torch.nn.functional.batch_norm for forward, backward (x, weight, bias), running stats
and eval, torch.nn.BatchNorm1d/2d for the module semantics over several steps, and
torch's double backward of F.batch_norm for Hessian-vector products.

Gradients are taken w.r.t. z with x = mean + spread * z per channel (computed the same
way in both frameworks), so one tolerance fits channels whose spreads differ by 1e6;
the tolerance is K eps_dtype (1 + r) (max|torch| + M), r = max |mean| / sqrt(var + eps)
(see test_batchnorm_properties.py for the error model). The upstream gradients v and
u are random.
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinygrad_bn as tb
from tinygrad_bn.testing import strategies as tbst

torch = pytest.importorskip("torch")
torch_F = torch.nn.functional

IMPLS = ("fused", "composed")
TORCH_DTYPE = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}


@pytest.fixture(autouse=True, scope="module")
def torch_on_one_thread():
    # NOTE: torch's OpenMP pool and ours spin against each other on a small machine
    # (measured: 250 ms per tiny F.batch_norm call instead of 1.6 ms); these inputs are tiny.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ============================================================== inputs
@st.composite
def cases(draw, dtypes=(np.float32, np.float64), max_offset=1e4):
    """x (as mean + spread * z), gamma, beta, eps, momentum, running stats and random
    upstream vectors; everything as numpy, float64 statistics of the drawn x."""
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    x, gamma, beta = draw(tbst.batch_norm_inputs(dtype=dtype, max_offset=max_offset))
    eps = 10.0 ** draw(st.floats(-8.0, -1.0))
    momentum = draw(st.floats(0.0, 1.0))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    axes, view = (0,) + tuple(range(2, x.ndim)), (1, -1) + (1,) * (x.ndim - 2)
    x64 = x.astype(np.float64)
    mean = x64.mean(axes)
    var = ((x64 - mean.reshape(view)) ** 2).mean(axes)
    spread = np.where(var > 0, np.sqrt(var), 1.0)
    c = x.shape[1]
    return dict(
        z=((x64 - mean.reshape(view)) / spread.reshape(view)).astype(dtype), mean=mean.astype(dtype),
        spread=spread.astype(dtype), gamma=gamma, beta=beta, eps=eps, momentum=momentum, view=view,
        M=x.size // c, dtype=dtype, r=float(np.max(np.abs(mean) / np.sqrt(var + eps))),
        running_mean=(mean + spread * rng.standard_normal(c)).astype(dtype),
        running_var=(spread**2 * rng.uniform(0.5, 2.0, c)).astype(dtype),
        v=rng.standard_normal(x.shape).astype(dtype),
        u=[rng.standard_normal(s).astype(dtype) for s in (x.shape, (c,), (c,))],
    )


def _tolerance(case, k=32):
    return k * float(np.finfo(case["dtype"]).eps) * (1 + case["r"])


def assert_close(ours, theirs, case, what, k=32, running_stat_units=1.0):
    """|ours - torch| <= tol (max|torch| + M), tol = k eps_dtype (1 + r)."""
    ours = np.asarray(ours, np.float64) / running_stat_units
    theirs = np.asarray(theirs, np.float64) / running_stat_units
    tol = _tolerance(case, k)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=tol * (np.abs(theirs).max() + case["M"]),
                               err_msg=f"{what} (r = {case['r']:.3g}, eps = {case['eps']:.3g})")


# ============================================================== the two frameworks, side by side
def ours_train(case, impl, create_graph=False):
    z, gamma, beta = (tb.Tensor(case[k].copy(), requires_grad=True) for k in ("z", "gamma", "beta"))
    x = z * tb.Tensor(case["spread"]).reshape(case["view"]) + tb.Tensor(case["mean"]).reshape(case["view"])
    running_mean, running_var = tb.Tensor(case["running_mean"].copy()), tb.Tensor(case["running_var"].copy())
    y = tb.nn.functional.batch_norm(x, running_mean, running_var, gamma, beta, training=True,
                                    momentum=case["momentum"], eps=case["eps"], impl=impl)
    v = tb.Tensor(case["v"], requires_grad=create_graph)
    grads = tb.grad(y, [z, gamma, beta], grad_outputs=v, create_graph=create_graph)
    return dict(y=y, running_mean=running_mean.numpy(), running_var=running_var.numpy(), grads=grads,
                inputs=[z, gamma, beta, v])


def torch_train(case, create_graph=False):
    dt = TORCH_DTYPE[case["dtype"]]
    z, gamma, beta = (torch.tensor(case[k], dtype=dt, requires_grad=True) for k in ("z", "gamma", "beta"))
    x = z * torch.tensor(case["spread"]).reshape(case["view"]) + torch.tensor(case["mean"]).reshape(case["view"])
    running_mean, running_var = torch.tensor(case["running_mean"]), torch.tensor(case["running_var"])
    y = torch_F.batch_norm(x, running_mean, running_var, gamma, beta, training=True, momentum=case["momentum"],
                           eps=case["eps"])
    v = torch.tensor(case["v"], requires_grad=create_graph)
    grads = torch.autograd.grad(y, (z, gamma, beta), v, create_graph=create_graph)
    return dict(y=y, running_mean=running_mean.numpy(), running_var=running_var.numpy(), grads=grads,
                inputs=[z, gamma, beta, v])


def _np(t):
    return t.detach().numpy() if isinstance(t, torch.Tensor) else t.numpy()


# ============================================================== functional
@pytest.mark.parametrize("impl", IMPLS)
@given(case=cases())
def test_training_forward_backward_and_running_stats_match_torch(impl, case):
    ours, theirs = ours_train(case, impl), torch_train(case)
    assert ours["y"].dtype == case["dtype"]
    assert_close(_np(ours["y"]), _np(theirs["y"]), case, "y")
    for name, a, b in zip(("grad_x (in z units)", "grad_weight", "grad_bias"), ours["grads"], theirs["grads"]):
        assert_close(_np(a), _np(b), case, name)
    # running stats in units of the spread, as the gradients
    spread = case["spread"].astype(np.float64)
    assert_close(ours["running_mean"], theirs["running_mean"], case, "running_mean", running_stat_units=spread)
    assert_close(ours["running_var"], theirs["running_var"], case, "running_var", running_stat_units=spread**2)


@pytest.mark.parametrize("impl", IMPLS)
@given(case=cases())
def test_eval_forward_and_backward_match_torch(impl, case):
    """training=False: the fixed affine map from the running stats; gradients w.r.t.
    x (in z units), weight and bias."""
    z, gamma, beta = (tb.Tensor(case[k].copy(), requires_grad=True) for k in ("z", "gamma", "beta"))
    x = z * tb.Tensor(case["spread"]).reshape(case["view"]) + tb.Tensor(case["mean"]).reshape(case["view"])
    y = tb.nn.functional.batch_norm(x, tb.Tensor(case["running_mean"]), tb.Tensor(case["running_var"]), gamma, beta,
                                    training=False, eps=case["eps"], impl=impl)
    grads = tb.grad(y, [z, gamma, beta], grad_outputs=tb.Tensor(case["v"]))
    dt = TORCH_DTYPE[case["dtype"]]
    tz, tgamma, tbeta = (torch.tensor(case[k], dtype=dt, requires_grad=True) for k in ("z", "gamma", "beta"))
    tx = tz * torch.tensor(case["spread"]).reshape(case["view"]) + torch.tensor(case["mean"]).reshape(case["view"])
    ty = torch_F.batch_norm(tx, torch.tensor(case["running_mean"]), torch.tensor(case["running_var"]), tgamma, tbeta,
                            training=False, eps=case["eps"])
    tgrads = torch.autograd.grad(ty, (tz, tgamma, tbeta), torch.tensor(case["v"]))
    # NOTE: in eval x - running_mean is not centred by the batch: the error is relative to
    # |x - running_mean| / sqrt(running_var + eps), not to r; the running stats are drawn
    # within a few spreads of the batch's, so r still bounds it.
    assert_close(_np(y), _np(ty), case, "eval y")
    for name, a, b in zip(("grad_x (in z units)", "grad_weight", "grad_bias"), grads, tgrads):
        assert_close(_np(a), _np(b), case, f"eval {name}")


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=15)
@given(case=cases(dtypes=(np.float64,)))
def test_hessian_vector_products_match_torch_double_backward(impl, case):
    """d <u, d<v, y>/d(z, gamma, beta)> / d(z, gamma, beta, v) for our composed and fused
    batch norm against torch's double backward of F.batch_norm, float64."""
    ours, theirs = ours_train(case, impl, create_graph=True), torch_train(case, create_graph=True)
    u_ours = [tb.Tensor(u) for u in case["u"]]
    hvp_ours = tb.grad(list(ours["grads"]), ours["inputs"], grad_outputs=u_ours, allow_unused=True)
    hvp_torch = torch.autograd.grad(theirs["grads"], theirs["inputs"], [torch.tensor(u) for u in case["u"]],
                                    allow_unused=True)
    names = ("z", "weight", "bias", "upstream gradient v")
    for name, a, b, inp in zip(names, hvp_ours, hvp_torch, ours["inputs"]):
        a = np.zeros(inp.shape) if a is None else _np(a)
        b = np.zeros(inp.shape) if b is None else _np(b)
        assert_close(a, b, case, f"second derivative w.r.t. {name}")


# ============================================================== modules over several steps
# fmt: off
MODULE_CONFIGS = [  # (class, input shape, affine, track_running_stats, momentum, dtype)
    ("BatchNorm1d", (8, 3),       True,  True,  0.1,  np.float32),
    ("BatchNorm1d", (4, 3, 5),    True,  True,  None, np.float64),
    ("BatchNorm2d", (2, 3, 3, 4), True,  True,  0.1,  np.float64),
    ("BatchNorm2d", (2, 3, 3, 4), False, True,  None, np.float32),
    ("BatchNorm1d", (8, 3),       True,  False, 0.1,  np.float64),
    ("BatchNorm2d", (2, 3, 3, 4), True,  False, None, np.float32),
]
# fmt: on


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cls, shape, affine, track_running_stats, momentum, dtype", MODULE_CONFIGS)
def test_module_matches_torch_over_training_steps_then_eval(cls, shape, affine, track_running_stats, momentum,
                                                              dtype, impl):
    """Three training steps (outputs, grads of x / weight / bias, running stats,
    num_batches_tracked), then eval on a fresh batch."""
    rng = np.random.default_rng(0)
    c = shape[1]
    kwargs = dict(momentum=momentum, affine=affine, track_running_stats=track_running_stats)
    ours = getattr(tb.nn, cls)(c, impl=impl, dtype=dtype, **kwargs)
    theirs = getattr(torch.nn, cls)(c, dtype=TORCH_DTYPE[np.dtype(dtype)], **kwargs)
    if affine:
        gamma, beta = rng.uniform(-2, 2, c).astype(dtype), rng.uniform(-1, 1, c).astype(dtype)
        ours.weight.data[...], ours.bias.data[...] = gamma, beta
        with torch.no_grad():
            theirs.weight.copy_(torch.from_numpy(gamma))
            theirs.bias.copy_(torch.from_numpy(beta))
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-11)
    view = (1, -1) + (1,) * (len(shape) - 2)

    def batch():
        return (rng.uniform(-3, 3, c).reshape(view) + rng.uniform(0.5, 2, c).reshape(view)
                * rng.standard_normal(shape)).astype(dtype)

    for step in range(3):
        x, v = batch(), rng.standard_normal(shape).astype(dtype)
        xt, tx = tb.Tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
        y, ty = ours(xt), theirs(tx)
        np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), **tol, err_msg=f"step {step} y")
        (y * tb.Tensor(v)).sum().backward()
        (ty * torch.tensor(v)).sum().backward()
        np.testing.assert_allclose(xt.grad.numpy(), tx.grad.numpy(), **tol, err_msg=f"step {step} grad_x")
        if affine:
            np.testing.assert_allclose(ours.weight.grad.numpy(), theirs.weight.grad.numpy(), **tol)
            np.testing.assert_allclose(ours.bias.grad.numpy(), theirs.bias.grad.numpy(), **tol)
        if track_running_stats:
            np.testing.assert_allclose(ours.running_mean.numpy(), theirs.running_mean.numpy(), **tol)
            np.testing.assert_allclose(ours.running_var.numpy(), theirs.running_var.numpy(), **tol)
            assert int(ours.num_batches_tracked.item()) == int(theirs.num_batches_tracked.item()) == step + 1
    ours.eval()
    theirs.eval()
    x = batch()
    with torch.no_grad():
        expected = theirs(torch.tensor(x)).numpy()
    np.testing.assert_allclose(ours(tb.Tensor(x)).numpy(), expected, **tol, err_msg="eval y")
    assert set(ours.state_dict()) == set(theirs.state_dict())


@pytest.mark.parametrize("impl", IMPLS)
def test_single_value_per_channel_raises_like_torch(impl):
    x = np.ones((1, 3), np.float32)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        torch.nn.BatchNorm1d(3)(torch.tensor(x))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        tb.nn.BatchNorm1d(3, impl=impl)(tb.Tensor(x))
    assert math.isfinite(float(tb.nn.BatchNorm1d(3, impl=impl).eval()(tb.Tensor(x)).numpy().sum()))
