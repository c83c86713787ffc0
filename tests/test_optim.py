"""Optimisers and schedules: hand-computed steps, torch.optim's values, groups, state dicts."""
import io
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinygrad_bn as tb
from tinygrad_bn.optim import SGD, Adam, AdamW, Optimizer
from tinygrad_bn.optim.lr_scheduler import CosineAnnealingLR, StepLR
from tinygrad_bn.serialization import load, save


def param(values, dtype=np.float64):
    return tb.Tensor(np.asarray(values, dtype=dtype), requires_grad=True)


def run_steps(opt, p, grads):
    """Set p.grad to each gradient in turn and step; returns p's values after every step."""
    seen = []
    for g in grads:
        p.grad = tb.Tensor(np.asarray(g, dtype=p.dtype))
        opt.step()
        seen.append(p.data.copy())
    return seen


# ---------------------------------------------------------------- hand-computed steps
def test_sgd_momentum_dampening_weight_decay_by_hand():
    # d = g + 0.1 p;  b1 = d1 (no dampening on the first step), b = 0.9 b + 0.5 d;  p -= 0.1 b
    #   step 1: d = 1.1,       b = 1.1,        p = 0.89
    #   step 2: d = 2.089,     b = 2.0345,     p = 0.68655
    #   step 3: d = -0.931345, b = 1.3653775,  p = 0.55001225
    p = param([1.0])
    opt = SGD([p], lr=0.1, momentum=0.9, dampening=0.5, weight_decay=0.1)
    seen = run_steps(opt, p, [[1.0], [2.0], [-1.0]])
    np.testing.assert_allclose(np.concatenate(seen), [0.89, 0.68655, 0.55001225], rtol=1e-14)
    np.testing.assert_allclose(opt.state[p]["momentum_buffer"], [1.3653775], rtol=1e-14)


def test_sgd_nesterov_by_hand():
    # b1 = 1, d = 1 + 0.9*1 = 1.9, p = 0.81;  b2 = 0.9 + 2 = 2.9, d = 2 + 2.61 = 4.61, p = 0.349
    p = param([1.0])
    seen = run_steps(SGD([p], lr=0.1, momentum=0.9, nesterov=True), p, [[1.0], [2.0]])
    np.testing.assert_allclose(np.concatenate(seen), [0.81, 0.349], rtol=1e-14)


def test_plain_sgd_is_p_minus_lr_grad():
    p = param([1.0, -2.0])
    seen = run_steps(SGD([p], lr=0.5), p, [[4.0, 2.0]])
    np.testing.assert_allclose(seen[0], [-1.0, -3.0], rtol=0)


def test_adam_with_constant_gradient_moves_lr_per_step():
    # constant g: m_hat = g and v_hat = g^2 at every step, so each step is lr * g / (|g| + eps)
    p = param([1.0, 1.0])
    seen = run_steps(Adam([p], lr=0.1, eps=0.0), p, [[3.0, -0.5]] * 3)
    np.testing.assert_allclose(np.stack(seen), [[0.9, 1.1], [0.8, 1.2], [0.7, 1.3]], rtol=1e-12)


def test_adam_two_steps_by_hand():
    # g = 2 then -1, lr 0.1:  step 1 moves by lr exactly (m_hat = 2, v_hat = 4): p = 0.9
    #   step 2: m = 0.08, v = 0.004996; m_hat = 0.08/0.19, v_hat = 0.004996/0.001999
    p = param([1.0])
    seen = run_steps(Adam([p], lr=0.1, eps=0.0), p, [[2.0], [-1.0]])
    expected_2 = 0.9 - 0.1 * (0.08 / 0.19) / math.sqrt(0.004996 / 0.001999)
    np.testing.assert_allclose(np.concatenate(seen), [0.9, expected_2], rtol=1e-12)


def test_adam_weight_decay_is_l2_in_the_gradient():
    # weight_decay folds 0.5 * p = 0.5 into g = 1.5 before the moments: first step still moves by lr
    p = param([1.0])
    opt = Adam([p], lr=0.1, eps=0.0, weight_decay=0.5)
    run_steps(opt, p, [[1.0]])
    np.testing.assert_allclose(opt.state[p]["exp_avg"], [0.15], rtol=1e-14)
    np.testing.assert_allclose(p.data, [0.9], rtol=1e-14)


def test_adamw_decays_the_weights_then_steps_by_hand():
    # p = p * (1 - 0.1 * 0.5) - 0.1  (constant g, eps 0): 0.85, 0.7075, 0.572125
    p = param([1.0])
    seen = run_steps(AdamW([p], lr=0.1, eps=0.0, weight_decay=0.5), p, [[1.0]] * 3)
    np.testing.assert_allclose(np.concatenate(seen), [0.85, 0.7075, 0.572125], rtol=1e-14)


def test_amsgrad_uses_the_largest_second_moment():
    p = param([1.0])
    opt = Adam([p], lr=0.1, amsgrad=True)
    run_steps(opt, p, [[10.0], [0.1]])
    state = opt.state[p]
    assert state["max_exp_avg_sq"][0] == pytest.approx(0.001 * 100)
    assert state["exp_avg_sq"][0] < state["max_exp_avg_sq"][0]


@given(
    hnp.arrays(np.float64, hnp.array_shapes(max_dims=2, max_side=5),
               elements=st.floats(-1e3, 1e3).filter(lambda v: abs(v) > 1e-3)),
    st.floats(1e-4, 1.0),
)
def test_adam_first_step_moves_every_coordinate_by_lr(grad, lr):
    # m_hat = g and v_hat = g^2 after one step, so |delta| = lr * |g| / (|g| + eps) = lr when eps = 0
    p = param(np.zeros_like(grad))
    run_steps(Adam([p], lr=lr, eps=0.0), p, [grad])
    np.testing.assert_allclose(p.data, -lr * np.sign(grad), rtol=1e-12)


# ---------------------------------------------------------------- torch.optim agreement
OPTIMIZER_CASES = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    ("Adam", dict(lr=0.01, amsgrad=True)),
    ("AdamW", dict(lr=0.01)),
    ("AdamW", dict(lr=0.02, betas=(0.5, 0.9), weight_decay=0.3, amsgrad=True)),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name, options", OPTIMIZER_CASES)
def test_matches_torch_optim(name, options, dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    w0 = [rng.normal(size=(4, 3)).astype(dtype), rng.normal(size=3).astype(dtype)]
    grads = [[rng.normal(size=w.shape).astype(dtype) for w in w0] for _ in range(12)]
    ours = [tb.Tensor(w, requires_grad=True) for w in w0]
    theirs = [torch.tensor(w, requires_grad=True) for w in w0]
    opt = getattr(tb.optim, name)(ours, **options)
    topt = getattr(torch.optim, name)(theirs, **options)
    for step_grads in grads:
        for p, q, g in zip(ours, theirs, step_grads):
            p.grad, q.grad = tb.Tensor(g), torch.tensor(g)
        opt.step()
        topt.step()
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-6)
    for p, q in zip(ours, theirs):
        assert p.dtype == dtype
        np.testing.assert_allclose(p.data, q.detach().numpy(), **tol)
    for p, q in zip(ours, theirs):
        assert set(opt.state[p]) == set(topt.state[q])


# ---------------------------------------------------------------- groups, grads, validation
def test_param_groups_take_their_own_lr_and_the_defaults():
    a, b = param([1.0]), param([1.0])
    opt = SGD([{"params": [a]}, {"params": b, "lr": 0.01}], lr=0.1, momentum=0.5)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.01]
    assert all(g["momentum"] == 0.5 for g in opt.param_groups)
    a.grad, b.grad = tb.Tensor([1.0], dtype=np.float64), tb.Tensor([1.0], dtype=np.float64)
    opt.step()
    np.testing.assert_allclose([a.data[0], b.data[0]], [0.9, 0.99], rtol=1e-14)


def test_zero_grad_sets_none_and_step_skips_params_without_grad():
    a, b = param([1.0]), param([2.0])
    opt = Adam([a, b], lr=0.1)
    a.grad = tb.Tensor([1.0], dtype=np.float64)
    opt.step()
    assert b.data[0] == 2.0 and b not in opt.state and a in opt.state
    opt.zero_grad()
    assert a.grad is None and b.grad is None


def test_step_records_no_graph_and_keeps_the_array():
    p = param([1.0, 2.0])
    data = p.data
    (p * p).sum().backward()
    SGD([p], lr=0.1).step()
    assert p.data is data and p.is_leaf
    np.testing.assert_allclose(p.data, [0.8, 1.6])


def test_step_calls_the_closure_with_grad_enabled():
    p = param([3.0])
    opt = SGD([p], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (p * p).sum()
        loss.backward()
        return loss

    with tb.no_grad():
        loss = opt.step(closure)
    assert loss.item() == 9.0
    np.testing.assert_allclose(p.data, [2.4])


def test_gradient_of_wrong_shape_changes_nothing():
    a, b = param([1.0]), param([1.0, 2.0])
    opt = SGD([a, b], lr=0.1)
    a.grad = tb.Tensor([1.0], dtype=np.float64)
    b.grad = tb.Tensor([1.0, 2.0, 3.0], dtype=np.float64)
    with pytest.raises(ValueError, match=r"\(3,\).*\(2,\)"):
        opt.step()
    assert a.data[0] == 1.0


@pytest.mark.parametrize("make, bad", [
    (lambda p: SGD(p, lr=-0.1), "-0.1"),
    (lambda p: SGD(p, lr=0.1, momentum=-0.5), "-0.5"),
    (lambda p: SGD(p, lr=0.1, weight_decay=-1.0), "-1.0"),
    (lambda p: SGD(p, lr=float("nan")), "nan"),
    (lambda p: SGD(p, lr=0.1, nesterov=True), "momentum=0"),
    (lambda p: SGD(p, lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), "dampening=0.1"),
    (lambda p: Adam(p, lr=-1e-3), "-0.001"),
    (lambda p: Adam(p, betas=(1.0, 0.999)), "1.0"),
    (lambda p: Adam(p, betas=(0.9, -0.1)), "-0.1"),
    (lambda p: Adam(p, eps=-1e-8), "-1e-08"),
    (lambda p: AdamW(p, weight_decay=-0.01), "-0.01"),
    (lambda p: SGD([{"params": p, "lr": -2.0}], lr=0.1), "-2.0"),
])
def test_bad_options_raise_value_error_naming_the_value(make, bad):
    with pytest.raises(ValueError, match=bad.replace(".", r"\.")):
        make([param([1.0])])


def test_bad_params_raise():
    p = param([1.0])
    with pytest.raises(TypeError, match="single Tensor"):
        SGD(p, lr=0.1)
    with pytest.raises(ValueError, match="empty"):
        SGD([], lr=0.1)
    with pytest.raises(ValueError, match="more than once"):
        SGD([p, p], lr=0.1)
    with pytest.raises(ValueError, match="more than one parameter group"):
        SGD([{"params": [p]}, {"params": [p]}], lr=0.1)
    with pytest.raises(ValueError, match="leaf"):
        SGD([p * 2], lr=0.1)
    with pytest.raises(TypeError, match="int64"):
        SGD([tb.Tensor([1, 2])], lr=0.1)
    with pytest.raises(TypeError, match="ndarray"):
        SGD([np.ones(2)], lr=0.1)


def test_is_an_optimizer_with_a_readable_repr():
    opt = SGD([param([1.0])], lr=0.1)
    assert isinstance(opt, Optimizer)
    assert "lr: 0.1" in repr(opt)


# ---------------------------------------------------------------- state dicts
def make_pair(cls, options, seed=0):
    rng = np.random.default_rng(seed)
    params = [param(rng.normal(size=(3, 2)), np.float32), param(rng.normal(size=2), np.float32)]
    groups = [{"params": [params[0]]}, {"params": [params[1]], "lr": options["lr"] / 2}]
    return params, cls(groups, **options)


@pytest.mark.parametrize("cls, options", [(SGD, dict(lr=0.1, momentum=0.9)), (Adam, dict(lr=0.01)),
                                          (AdamW, dict(lr=0.01, amsgrad=True))])
def test_state_dict_round_trip_through_save_resumes_identically(cls, options):
    rng = np.random.default_rng(1)
    grads = [[rng.normal(size=s).astype(np.float32) for s in [(3, 2), (2,)]] for _ in range(6)]

    def steps(params, opt, gs):
        for step_grads in gs:
            for p, g in zip(params, step_grads):
                p.grad = tb.Tensor(g)
            opt.step()

    params, opt = make_pair(cls, options)
    steps(params, opt, grads[:3])
    buf = io.BytesIO()
    save({"params": [p.data for p in params], "optim": opt.state_dict()}, buf)
    steps(params, opt, grads[3:])

    buf.seek(0)
    ckpt = load(buf)
    params2, opt2 = make_pair(cls, options, seed=99)
    for p, saved in zip(params2, ckpt["params"]):
        p.data[...] = saved
    opt2.load_state_dict(ckpt["optim"])
    steps(params2, opt2, grads[3:])
    for p, q in zip(params, params2):
        np.testing.assert_array_equal(p.data, q.data)
    assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]


def test_state_dict_layout_matches_torch():
    a, b = param([1.0]), param([1.0, 2.0])
    opt = Adam([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1)
    b.grad = tb.Tensor([1.0, 1.0], dtype=np.float64)
    opt.step()
    sd = opt.state_dict()
    assert list(sd["state"]) == [1]
    assert sorted(sd["state"][1]) == ["exp_avg", "exp_avg_sq", "step"]
    assert sd["state"][1]["step"] == 1
    assert [g["params"] for g in sd["param_groups"]] == [[0], [1]]
    assert sd["param_groups"][1]["lr"] == 0.5 and sd["param_groups"][0]["betas"] == (0.9, 0.999)
    sd["state"][1]["exp_avg"][...] = 123.0  # a snapshot: editing it does not reach the optimizer
    assert opt.state[b]["exp_avg"][0] != 123.0


def test_load_state_dict_validates_and_changes_nothing_on_error():
    params, opt = make_pair(SGD, dict(lr=0.1, momentum=0.9))
    for p in params:
        p.grad = tb.Tensor(np.ones(p.shape, np.float32))
    opt.step()
    good = opt.state_dict()
    before_state, before_groups = opt.state, opt.param_groups

    one_group = {"state": {}, "param_groups": good["param_groups"][:1]}
    with pytest.raises(ValueError, match="1 parameter groups, expected 2"):
        opt.load_state_dict(one_group)
    too_big = {"state": {}, "param_groups": [good["param_groups"][0], {**good["param_groups"][1], "params": [1, 2]}]}
    with pytest.raises(ValueError, match="group 1.*2 parameters, expected 1"):
        opt.load_state_dict(too_big)
    bad_shape = {"state": {0: {"momentum_buffer": np.zeros((2, 3), np.float32)}},
                 "param_groups": good["param_groups"]}
    with pytest.raises(ValueError, match=r"\(2, 3\), expected \(3, 2\)"):
        opt.load_state_dict(bad_shape)
    bad_lr = {"state": {}, "param_groups": [{**good["param_groups"][0], "lr": -1.0}, good["param_groups"][1]]}
    with pytest.raises(ValueError, match="-1.0"):
        opt.load_state_dict(bad_lr)
    assert opt.state is before_state and opt.param_groups is before_groups


def test_load_state_dict_casts_float_state_to_the_param_dtype():
    params, opt = make_pair(Adam, dict(lr=0.01))
    params[0].grad = tb.Tensor(np.ones((3, 2), np.float32))
    opt.step()
    sd = opt.state_dict()
    sd["state"][0] = {k: (v.astype(np.float64) if isinstance(v, np.ndarray) else v) for k, v in sd["state"][0].items()}
    opt.load_state_dict(sd)
    assert opt.state[params[0]]["exp_avg"].dtype == np.float32


# ---------------------------------------------------------------- schedulers
def lrs_over(scheduler, epochs):
    out = [scheduler.get_last_lr()]
    for _ in range(epochs):
        scheduler.optimizer.step()
        scheduler.step()
        out.append(scheduler.get_last_lr())
    return np.array(out)


def two_group_sgd():
    return SGD([{"params": [param([1.0])]}, {"params": [param([1.0])], "lr": 0.5}], lr=0.1)


def test_step_lr_matches_closed_form():
    sched = StepLR(two_group_sgd(), step_size=3, gamma=0.5)
    epochs = np.arange(31)[:, None]
    np.testing.assert_allclose(lrs_over(sched, 30), np.array([0.1, 0.5]) * 0.5 ** (epochs // 3), rtol=1e-12)


@pytest.mark.parametrize("T_max, eta_min", [(10, 0.0), (7, 0.01), (1, 0.001)])
def test_cosine_matches_closed_form_past_t_max(T_max, eta_min):
    sched = CosineAnnealingLR(two_group_sgd(), T_max=T_max, eta_min=eta_min)
    t = np.arange(3 * T_max + 1)[:, None]
    closed = eta_min + (np.array([0.1, 0.5]) - eta_min) * (1 + np.cos(np.pi * t / T_max)) / 2
    np.testing.assert_allclose(lrs_over(sched, 3 * T_max), closed, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name, kwargs", [("StepLR", dict(step_size=4, gamma=0.3)),
                                          ("CosineAnnealingLR", dict(T_max=6, eta_min=0.02))])
def test_schedulers_match_torch(name, kwargs):
    torch = pytest.importorskip("torch")
    ours = getattr(tb.optim.lr_scheduler, name)(two_group_sgd(), **kwargs)
    topt = torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)]},
                            {"params": [torch.zeros(1, requires_grad=True)], "lr": 0.5}], lr=0.1)
    theirs = getattr(torch.optim.lr_scheduler, name)(topt, **kwargs)
    expected = [theirs.get_last_lr()]
    for _ in range(20):
        topt.step()
        theirs.step()
        expected.append(theirs.get_last_lr())
    np.testing.assert_allclose(lrs_over(ours, 20), np.array(expected), rtol=1e-15, atol=0)


def test_scheduler_state_dict_round_trip_resumes():
    sched = CosineAnnealingLR(two_group_sgd(), T_max=8)
    lrs_over(sched, 3)
    buf = io.BytesIO()
    save({"optim": sched.optimizer.state_dict(), "sched": sched.state_dict()}, buf)
    expected = lrs_over(sched, 5)
    buf.seek(0)
    ckpt = load(buf)
    opt2 = two_group_sgd()
    opt2.load_state_dict(ckpt["optim"])
    sched2 = CosineAnnealingLR(opt2, T_max=8)
    sched2.load_state_dict(ckpt["sched"])
    np.testing.assert_allclose(lrs_over(sched2, 5), expected, rtol=0, atol=1e-15)


def test_scheduler_validation():
    opt = two_group_sgd()
    with pytest.raises(ValueError, match="step_size"):
        StepLR(opt, step_size=0)
    with pytest.raises(ValueError, match="T_max"):
        CosineAnnealingLR(opt, T_max=0)
    with pytest.raises(KeyError, match="initial_lr"):
        StepLR(opt, step_size=2, last_epoch=5)
    with pytest.raises(TypeError, match="Optimizer"):
        StepLR([param([1.0])], step_size=2)
    sched = StepLR(opt, step_size=2)
    with pytest.raises(ValueError, match="unknown keys"):
        sched.load_state_dict({"bogus": 1})


def _sgd_numpy(param, grad, buf, lr, momentum, dampening, weight_decay, nesterov):
    """torch.optim.SGD's update as plain numpy expressions (the reference the fused
    kernel must equal bit for bit). Returns the new buffer."""
    if weight_decay != 0:
        grad = grad + weight_decay * param
    if momentum != 0:
        if buf is None:
            buf = grad.copy()
        else:
            buf *= momentum
            buf += (1 - dampening) * grad
        grad = grad + momentum * buf if nesterov else buf
    param += -lr * grad
    return buf


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("options", [dict(lr=0.1), dict(lr=0.05, momentum=0.9),
                                     dict(lr=0.3, momentum=0.7, dampening=0.2, weight_decay=1e-2),
                                     dict(lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)])
def test_fused_sgd_step_equals_the_numpy_formulas_bit_for_bit(options, dtype):
    """SGD runs one fused kernel per parameter (src_cy/optim.pyx, no FMA contraction);
    over five steps it must round exactly as the numpy expressions of the formulas."""
    rng = np.random.default_rng(0)
    shape = (300, 700)  # above the parallel threshold: the threaded loop runs too
    p = tb.nn.Parameter(rng.standard_normal(shape).astype(dtype))
    ref = p.data.copy()
    opt = SGD([p], **options)
    full = {**dict(momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False), **options}
    buf = None
    for _ in range(5):
        g = rng.standard_normal(shape).astype(dtype)
        p.grad = tb.Tensor(g)
        opt.step()
        buf = _sgd_numpy(ref, g, buf, **full)
        np.testing.assert_array_equal(p.data, ref)
    assert not np.array_equal(ref, rng.standard_normal(shape).astype(dtype))
