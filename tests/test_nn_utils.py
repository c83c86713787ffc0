"""tb.nn.utils: update_bn (Algorithm 2's population statistics) and fold_batch_norm
(eval-mode BatchNorm as one affine map folded into the layer before it)."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinygrad_bn as tb
from tinygrad_bn.nn import utils

nn = tb.nn
IMPLS = ("fused", "composed")


def _state(model):
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def _modes(model):
    return [m.training for m in model.modules()]


def _mlp(impl="fused", dtype=np.float64):
    return nn.Sequential(nn.Linear(5, 4, dtype=dtype), nn.BatchNorm1d(4, impl=impl, dtype=dtype, momentum=0.3),
                         nn.Sigmoid(), nn.Linear(4, 3, dtype=dtype), nn.BatchNorm1d(3, impl=impl, dtype=dtype))


# ------------------------------------------------------------------ update_bn


@pytest.mark.parametrize("impl", IMPLS)
def test_update_bn_is_mean_of_batch_means_and_unbiased_variances(impl):
    rng = np.random.default_rng(0)
    model = _mlp(impl)
    # unequal batch sizes: each batch counts once, whatever its size (torch's update_bn too)
    batches = [3.0 + 2.0 * rng.standard_normal((m, 5)) for m in (7, 4, 9)]
    utils.update_bn(batches, model)
    lin = model[0]
    pre = [b @ lin.weight.numpy().T + lin.bias.numpy() for b in batches]
    np.testing.assert_allclose(model[1].running_mean.numpy(), np.mean([p.mean(0) for p in pre], axis=0),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(model[1].running_var.numpy(), np.mean([p.var(0, ddof=1) for p in pre], axis=0),
                               rtol=1e-12, atol=1e-12)
    assert int(model[1].num_batches_tracked.numpy()) == 3


def test_update_bn_covers_batchnorm2d_and_loader_pairs():
    rng = np.random.default_rng(1)
    model = nn.Sequential(nn.BatchNorm2d(2, dtype=np.float64))
    x = rng.standard_normal((12, 2, 3, 3)) * np.array([1.0, 5.0]).reshape(1, 2, 1, 1)
    utils.update_bn([(tb.Tensor(x[:6]), None), (tb.Tensor(x[6:]), None)], model)
    chunks = [x[:6], x[6:]]
    want_mean = np.mean([c.mean((0, 2, 3)) for c in chunks], axis=0)
    want_var = np.mean([c.transpose(1, 0, 2, 3).reshape(2, -1).var(1, ddof=1) for c in chunks], axis=0)
    np.testing.assert_allclose(model[0].running_mean.numpy(), want_mean, rtol=1e-12)
    np.testing.assert_allclose(model[0].running_var.numpy(), want_var, rtol=1e-12)


def test_update_bn_restores_momentum_and_every_mode():
    model = _mlp()
    model.eval()
    model[1].train()  # a mixed state must come back exactly
    model[4].momentum = None
    before = _modes(model)
    utils.update_bn([np.ones((3, 5)) + np.arange(3)[:, None]], model)
    assert _modes(model) == before
    assert model[1].momentum == 0.3 and model[4].momentum is None


def test_update_bn_runs_without_recording_a_graph():
    model = _mlp()
    seen = []
    model.append(_Spy(seen))
    utils.update_bn([tb.Tensor(np.ones((3, 5)) * np.arange(3)[:, None])], model)
    assert seen == [(True, False)]  # ran in train mode, no graph


class _Spy(nn.Module):
    def __init__(self, seen):
        super().__init__()
        self.seen = seen

    def forward(self, x):
        self.seen.append((self.training, x.requires_grad))
        return x


def test_update_bn_failure_changes_nothing():
    model = _mlp()
    model.eval()
    before, modes = _state(model), _modes(model)
    good = np.arange(15.0).reshape(3, 5)
    with pytest.raises(ValueError):
        utils.update_bn([good, np.ones((2, 7))], model)  # second batch has the wrong width
    after = _state(model)
    for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)
    assert _modes(model) == modes and model[1].momentum == 0.3


def test_update_bn_rejects_non_tensor_batches():
    with pytest.raises(TypeError, match="batch"):
        utils.update_bn(["not a batch"], _mlp())


def test_update_bn_without_batchnorm_is_a_no_op():
    model = nn.Sequential(nn.Linear(2, 2))
    utils.update_bn(iter(()), model)


# ------------------------------------------------------------------ fold_batch_norm


@st.composite
def bn_stats(draw, n, dtype):
    """Random running statistics and (possibly negative or zero) gamma for a BN of n channels."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    affine = draw(st.booleans())
    bn = dict(eps=draw(st.sampled_from([1e-5, 1e-3, 0.1])), affine=affine, dtype=dtype)
    stats = dict(running_mean=rng.normal(0, 3, n), running_var=rng.uniform(0.01, 10, n))
    if affine:
        gamma = rng.normal(0, 2, n)
        gamma[rng.random(n) < 0.2] = 0.0
        stats.update(weight=gamma, bias=rng.normal(0, 2, n))
    return bn, stats


def _load_bn(bn, stats):
    for k, v in stats.items():
        getattr(bn, k).data[...] = v


def _assert_folded_matches(model, x, rtol, atol):
    model.eval()
    before = _state(model)
    folded = utils.fold_batch_norm(model)
    assert not any(isinstance(m, nn.BatchNorm1d) or isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    with tb.no_grad():
        want = model(tb.Tensor(x)).numpy()
        got = folded(tb.Tensor(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
    after = _state(model)  # the original is untouched
    assert before.keys() == after.keys()
    for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)
    assert any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in model.modules())


@given(sizes=st.lists(st.integers(1, 6), min_size=2, max_size=4), bias=st.lists(st.booleans(), min_size=3, max_size=3),
       dtype=st.sampled_from([np.float32, np.float64]), data=st.data())
def test_folded_mlp_matches_eval_model(sizes, bias, dtype, data):
    tb.manual_seed(data.draw(st.integers(0, 1000)))
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(n_in, n_out, bias=bias[i], dtype=dtype))
        bn_kw, stats = data.draw(bn_stats(n_out, dtype))
        layers.append(nn.BatchNorm1d(n_out, **bn_kw))
        _load_bn(layers[-1], stats)
        layers.append(nn.Tanh())
    model = nn.Sequential(*layers)
    x = np.random.default_rng(0).normal(0, 2, (5, sizes[0])).astype(dtype)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    _assert_folded_matches(model, x, rtol=tol, atol=tol * 10)


@given(c_in=st.integers(1, 3), c_out=st.integers(1, 4), k=st.integers(1, 3), bias=st.booleans(),
       padding=st.integers(0, 1), data=st.data())
def test_folded_convnet_matches_eval_model(c_in, c_out, k, bias, padding, data):
    tb.manual_seed(data.draw(st.integers(0, 1000)))
    bn_kw, stats = data.draw(bn_stats(c_out, np.float64))
    conv = nn.Conv2d(c_in, c_out, k, padding=padding, bias=bias, dtype=np.float64)
    bn = nn.BatchNorm2d(c_out, **bn_kw)
    _load_bn(bn, stats)
    # nested Sequential: folding recurses
    model = nn.Sequential(nn.Sequential(conv, bn, nn.ReLU()), nn.Flatten())
    x = np.random.default_rng(1).normal(0, 1, (2, c_in, 4, 4))
    _assert_folded_matches(model, x, rtol=1e-12, atol=1e-12)
    folded_conv = utils.fold_batch_norm(model)[0][0]
    assert folded_conv.bias is not None and isinstance(utils.fold_batch_norm(model)[0][1], nn.Identity)


def test_fold_creates_bias_and_returns_eval_copy():
    model = nn.Sequential(nn.Linear(3, 2, bias=False), nn.BatchNorm1d(2))
    model[1].running_mean.data[...] = [1.0, -2.0]
    folded = utils.fold_batch_norm(model)
    assert model[0].bias is None and model.training  # original: no bias, mode kept
    assert folded[0].bias is not None and not folded.training
    np.testing.assert_allclose(folded[0].bias.numpy(), -np.array([1.0, -2.0]) / np.sqrt(1 + 1e-5), rtol=1e-6)
    assert "0.bias" in folded.state_dict()


def test_fold_leaves_batchnorm_without_a_preceding_layer():
    model = nn.Sequential(nn.BatchNorm1d(3), nn.Linear(3, 3), nn.ReLU(), nn.BatchNorm1d(3))
    folded = utils.fold_batch_norm(model)
    assert isinstance(folded[0], nn.BatchNorm1d) and isinstance(folded[3], nn.BatchNorm1d)


def test_fold_rejects_batchnorm_without_running_stats():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2, track_running_stats=False))
    with pytest.raises(ValueError, match="track_running_stats=False"):
        utils.fold_batch_norm(model)


def test_fold_rejects_channel_mismatch():
    model = nn.Sequential(nn.Conv1d(2, 3, 1), nn.BatchNorm1d(4))
    with pytest.raises(ValueError, match="4 features"):
        utils.fold_batch_norm(model)


def test_update_bn_then_fold_gives_population_statistics_model():
    """Algorithm 2 end to end: population statistics, then one affine map per feature."""
    rng = np.random.default_rng(2)
    model = _mlp("composed")
    batches = [rng.standard_normal((8, 5)) for _ in range(4)]
    utils.update_bn(batches, model)
    model.eval()
    folded = utils.fold_batch_norm(model)
    x = tb.Tensor(rng.standard_normal((6, 5)))
    np.testing.assert_allclose(folded(x).numpy(), model(x).numpy(), rtol=1e-12, atol=1e-12)
