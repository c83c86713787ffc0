"""BatchNorm1d / BatchNorm2d module semantics (DESIGN.md: Conventions, Batch
Normalization): buffers and state_dict, running statistics (unbiased variance,
momentum and the cumulative average), train vs eval, affine and
track_running_stats switches, and errors that change nothing. Every test runs for
impl="fused" and impl="composed"."""
import numpy as np
import pytest

import tinygrad_bn as tb
from tinygrad_bn.nn import BatchNorm1d, BatchNorm2d

IMPLS = ("fused", "composed")
# (module class, input shape): the three layouts the paper's BN covers
LAYOUTS = [(BatchNorm1d, (6, 3)), (BatchNorm1d, (4, 3, 5)), (BatchNorm2d, (2, 3, 4, 5))]
LAYOUT_IDS = ["1d-NC", "1d-NCL", "2d-NCHW"]
STATE_KEYS = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]


def _batch(shape, seed, dtype=np.float64, offset=3.0):
    """Per-channel offset and scale, so the statistics of every channel differ."""
    rng = np.random.default_rng(seed)
    view = (1, -1) + (1,) * (len(shape) - 2)
    channel_offset = offset * rng.standard_normal(shape[1]).reshape(view)
    channel_scale = rng.uniform(0.5, 2.0, shape[1]).reshape(view)
    return (channel_offset + channel_scale * rng.standard_normal(shape)).astype(dtype)


def _axes(x):
    return (0,) + tuple(range(2, x.ndim))


def _stats(x):
    """(mean, biased var, unbiased var) per channel, float64."""
    x = x.astype(np.float64)
    m = x.size // x.shape[1]
    var = x.var(axis=_axes(x))
    return x.mean(axis=_axes(x)), var, var * m / (m - 1)


def _state(bn):
    """A copy of everything a failed call must leave alone."""
    return {k: v.numpy().copy() for k, v in bn.state_dict().items()}


def _assert_state_equal(before, after):
    assert before.keys() == after.keys()
    for k in before:
        assert before[k].tobytes() == after[k].tobytes(), f"{k} changed: {before[k]} -> {after[k]}"


# ------------------------------------------------------------------ buffers and state_dict
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cls", [BatchNorm1d, BatchNorm2d])
def test_buffers_parameters_and_state_dict_keys(cls, impl):
    bn = cls(3, impl=impl)
    assert list(bn.state_dict()) == STATE_KEYS
    assert [name for name, _ in bn.named_parameters()] == ["weight", "bias"]
    assert [name for name, _ in bn.named_buffers()] == ["running_mean", "running_var", "num_batches_tracked"]
    np.testing.assert_array_equal(bn.weight.numpy(), np.ones(3, np.float32))
    np.testing.assert_array_equal(bn.bias.numpy(), np.zeros(3, np.float32))
    np.testing.assert_array_equal(bn.running_mean.numpy(), np.zeros(3, np.float32))
    np.testing.assert_array_equal(bn.running_var.numpy(), np.ones(3, np.float32))
    assert bn.num_batches_tracked.shape == () and bn.num_batches_tracked.dtype == np.int64
    assert int(bn.num_batches_tracked.item()) == 0
    assert bn.weight.requires_grad and bn.bias.requires_grad
    assert not bn.running_mean.requires_grad and not bn.running_var.requires_grad
    assert bn.training
    model = tb.nn.Sequential(tb.nn.Identity(), cls(3, impl=impl))
    assert list(model.state_dict()) == [f"1.{k}" for k in STATE_KEYS]


@pytest.mark.parametrize("impl", IMPLS)
def test_state_dict_round_trip_reproduces_eval_output(impl):
    x = _batch((8, 3), seed=0)
    bn = BatchNorm1d(3, impl=impl, dtype=np.float64)
    bn.weight.data[...] = [0.5, -1.0, 2.0]
    bn(tb.Tensor(x))
    bn.eval()
    other = BatchNorm1d(3, impl=impl, dtype=np.float64)
    other.load_state_dict(bn.state_dict())
    other.eval()
    assert int(other.num_batches_tracked.item()) == 1
    np.testing.assert_array_equal(other(tb.Tensor(x)).numpy(), bn(tb.Tensor(x)).numpy())


# ------------------------------------------------------------------ running statistics
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cls, shape", LAYOUTS, ids=LAYOUT_IDS)
def test_running_stats_track_the_unbiased_variance(cls, shape, impl):
    """running = (1 - momentum) running + momentum batch, with var * m / (m - 1)."""
    bn = cls(shape[1], momentum=0.25, impl=impl, dtype=np.float64)
    running_mean, running_var = np.zeros(shape[1]), np.ones(shape[1])
    for step in range(3):
        x = _batch(shape, seed=step)
        mean, var, unbiased = _stats(x)
        y = bn(tb.Tensor(x)).numpy()
        running_mean = 0.75 * running_mean + 0.25 * mean
        running_var = 0.75 * running_var + 0.25 * unbiased
        np.testing.assert_allclose(bn.running_mean.numpy(), running_mean, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(bn.running_var.numpy(), running_var, rtol=1e-12)
        assert int(bn.num_batches_tracked.item()) == step + 1
        # ... while the output is normalised with the biased one
        view = (1, -1) + (1,) * (len(shape) - 2)
        np.testing.assert_allclose(y, (x - mean.reshape(view)) / np.sqrt(var.reshape(view) + bn.eps),
                                   rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cls, shape", LAYOUTS, ids=LAYOUT_IDS)
def test_momentum_none_is_the_cumulative_average_of_batch_statistics(cls, shape, impl):
    """Algorithm 2's population statistics: after k batches, running_mean is the mean of
    the k batch means and running_var the mean of the k unbiased batch variances."""
    bn = cls(shape[1], momentum=None, impl=impl, dtype=np.float64)
    means, unbiased_vars = [], []
    for step in range(5):
        x = _batch(shape, seed=10 + step)
        mean, _, unbiased = _stats(x)
        means.append(mean)
        unbiased_vars.append(unbiased)
        bn(tb.Tensor(x))
        np.testing.assert_allclose(bn.running_mean.numpy(), np.mean(means, axis=0), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(bn.running_var.numpy(), np.mean(unbiased_vars, axis=0), rtol=1e-12)
        assert int(bn.num_batches_tracked.item()) == step + 1


@pytest.mark.parametrize("impl", IMPLS)
def test_reset_running_stats_and_reset_parameters(impl):
    bn = BatchNorm1d(3, impl=impl)
    bn.weight.data[...] = 2.0
    bn.bias.data[...] = -1.0
    for seed in range(2):
        bn(tb.Tensor(_batch((5, 3), seed, np.float32)))
    bn.reset_running_stats()
    np.testing.assert_array_equal(bn.running_mean.numpy(), np.zeros(3, np.float32))
    np.testing.assert_array_equal(bn.running_var.numpy(), np.ones(3, np.float32))
    assert int(bn.num_batches_tracked.item()) == 0
    np.testing.assert_array_equal(bn.weight.numpy(), np.full(3, 2.0, np.float32))  # parameters untouched
    bn.reset_parameters()
    np.testing.assert_array_equal(bn.weight.numpy(), np.ones(3, np.float32))
    np.testing.assert_array_equal(bn.bias.numpy(), np.zeros(3, np.float32))


# ------------------------------------------------------------------ eval
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cls, shape", LAYOUTS, ids=LAYOUT_IDS)
def test_eval_is_one_affine_map_per_channel(cls, shape, impl):
    """In eval, y = a_c x + b_c with a = weight / sqrt(running_var + eps) and
    b = bias - running_mean a: to float64 rounding, and element by element, so a row
    gets the same output whatever batch it sits in. Eval changes no state."""
    bn = cls(shape[1], impl=impl, dtype=np.float64)
    bn.weight.data[...] = np.linspace(-1.5, 2.0, shape[1])
    bn.bias.data[...] = np.linspace(0.5, -0.5, shape[1])
    for seed in range(3):
        bn(tb.Tensor(_batch(shape, seed)))
    bn.eval()
    before = _state(bn)
    x = _batch(shape, seed=99, offset=10.0)
    y = bn(tb.Tensor(x)).numpy()
    view = (1, -1) + (1,) * (len(shape) - 2)
    a = bn.weight.numpy() / np.sqrt(bn.running_var.numpy() + bn.eps)
    b = bn.bias.numpy() - bn.running_mean.numpy() * a
    np.testing.assert_allclose(y, a.reshape(view) * x + b.reshape(view), rtol=1e-13, atol=1e-13)
    for i in range(shape[0]):
        assert bn(tb.Tensor(x[i:i + 1])).numpy().tobytes() == y[i:i + 1].tobytes()
    _assert_state_equal(before, _state(bn))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cls, shape", [(BatchNorm1d, (1, 3)), (BatchNorm1d, (1, 3, 1)), (BatchNorm2d, (1, 3, 1, 1))])
def test_one_value_per_channel_is_allowed_in_eval(cls, shape, impl):
    bn = cls(3, impl=impl, dtype=np.float64).eval()
    x = _batch(shape, seed=0)
    np.testing.assert_allclose(bn(tb.Tensor(x)).numpy(), x / np.sqrt(1.0 + bn.eps), rtol=1e-14)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cls, shape", LAYOUTS, ids=LAYOUT_IDS)
def test_without_running_stats_batch_statistics_are_used_in_train_and_eval(cls, shape, impl):
    bn = cls(shape[1], track_running_stats=False, impl=impl, dtype=np.float64)
    assert bn.running_mean is None and bn.running_var is None and bn.num_batches_tracked is None
    assert list(bn.state_dict()) == ["weight", "bias"]
    x = _batch(shape, seed=1)
    mean, var, _ = _stats(x)
    view = (1, -1) + (1,) * (len(shape) - 2)
    expected = (x - mean.reshape(view)) / np.sqrt(var.reshape(view) + bn.eps)
    np.testing.assert_allclose(bn(tb.Tensor(x)).numpy(), expected, rtol=1e-10, atol=1e-12)
    bn.eval()
    np.testing.assert_allclose(bn(tb.Tensor(x)).numpy(), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cls, shape", LAYOUTS, ids=LAYOUT_IDS)
def test_affine_false_has_no_parameters_and_outputs_x_hat(cls, shape, impl):
    bn = cls(shape[1], affine=False, impl=impl, dtype=np.float64)
    assert bn.weight is None and bn.bias is None and list(bn.parameters()) == []
    assert list(bn.state_dict()) == ["running_mean", "running_var", "num_batches_tracked"]
    x = _batch(shape, seed=2)
    mean, var, _ = _stats(x)
    view = (1, -1) + (1,) * (len(shape) - 2)
    xt = tb.Tensor(x, requires_grad=True)
    y = bn(xt)
    np.testing.assert_allclose(y.numpy(), (x - mean.reshape(view)) / np.sqrt(var.reshape(view) + bn.eps),
                               rtol=1e-10, atol=1e-12)
    (y * tb.Tensor(_batch(shape, seed=3))).sum().backward()
    assert xt.grad is not None and xt.grad.shape == x.shape


@pytest.mark.parametrize("impl", IMPLS)
def test_parameters_receive_gradients(impl):
    bn = BatchNorm2d(3, impl=impl)
    x = tb.Tensor(_batch((2, 3, 4, 4), seed=4, dtype=np.float32))
    (bn(x) * tb.Tensor(_batch((2, 3, 4, 4), seed=5, dtype=np.float32))).sum().backward()
    assert bn.weight.grad.shape == (3,) and bn.bias.grad.shape == (3,)
    assert bn.weight.grad.dtype == np.float32
    assert np.abs(bn.bias.grad.numpy()).max() > 0


# ------------------------------------------------------------------ errors change nothing
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("cls, shape", [(BatchNorm1d, (1, 3)), (BatchNorm1d, (1, 3, 1)), (BatchNorm2d, (1, 3, 1, 1))])
def test_one_value_per_channel_in_training_raises_and_changes_nothing(cls, shape, momentum, impl):
    bn = cls(3, momentum=momentum, impl=impl)
    bn(tb.Tensor(_batch((4,) + shape[1:], seed=0, dtype=np.float32)))  # one good batch first
    before = _state(bn)
    with pytest.raises(ValueError) as info:
        bn(tb.Tensor(_batch(shape, seed=1, dtype=np.float32)))
    message = str(info.value)
    assert str(shape) in message
    assert "drop_last" in message and "eval()" in message
    _assert_state_equal(before, _state(bn))
    assert int(bn.num_batches_tracked.item()) == 1


@pytest.mark.parametrize("impl", IMPLS)
def test_batch_of_one_with_length_is_fine_in_training(impl):
    """(1, C, L) has L values per channel: only M = 1 is an error."""
    bn = BatchNorm1d(3, impl=impl, dtype=np.float64)
    x = _batch((1, 3, 4), seed=6)
    mean, var, _ = _stats(x)
    np.testing.assert_allclose(bn(tb.Tensor(x)).numpy(),
                               (x - mean.reshape(1, -1, 1)) / np.sqrt(var.reshape(1, -1, 1) + bn.eps),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("cls, bad_shape, expected", [
    (BatchNorm1d, (4, 2), "3"),            # channel mismatch
    (BatchNorm1d, (4, 2, 5), "3"),
    (BatchNorm2d, (2, 4, 3, 3), "3"),
    (BatchNorm1d, (4, 3, 2, 2), "2-D or 3-D"),  # rank mismatch
    (BatchNorm1d, (3,), "2-D or 3-D"),
    (BatchNorm2d, (4, 3, 5), "4-D"),
])
def test_channel_and_rank_mismatch_raise_before_anything(cls, bad_shape, expected, training, impl):
    bn = cls(3, impl=impl).train(training)
    before = _state(bn)
    with pytest.raises(ValueError) as info:
        bn(tb.Tensor(np.ones(bad_shape, np.float32)))
    assert str(bad_shape) in str(info.value) and expected in str(info.value)
    _assert_state_equal(before, _state(bn))


@pytest.mark.parametrize("impl", IMPLS)
def test_non_tensor_input_raises_type_error(impl):
    bn = BatchNorm1d(3, impl=impl)
    before = _state(bn)
    with pytest.raises(TypeError, match="Tensor"):
        bn(np.ones((4, 3), np.float32))
    _assert_state_equal(before, _state(bn))


# ------------------------------------------------------------------ dtype
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cls, shape", LAYOUTS, ids=LAYOUT_IDS)
def test_float64_module_keeps_float64_everywhere(cls, shape, impl):
    bn = cls(shape[1], impl=impl, dtype=np.float64)
    for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
        assert t.dtype == np.float64
    x = tb.Tensor(_batch(shape, seed=7), requires_grad=True)
    y = bn(x)
    assert y.dtype == np.float64
    (y * y).sum().backward()
    assert x.grad.dtype == np.float64 and bn.weight.grad.dtype == np.float64
    assert bn.running_mean.dtype == np.float64 and bn.running_var.dtype == np.float64
    bn.eval()
    assert bn(x).dtype == np.float64
