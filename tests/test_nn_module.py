"""tb.nn.Module, Parameter and Sequential: PyTorch's container semantics.

Registration order, traversal (parameters, buffers, children, modules), modes,
zero_grad, state_dict keys and values, load_state_dict's all-or-nothing
validation, repr, Sequential indexing. BatchNorm appears only as a child that
owns buffers; its maths is tested elsewhere.
"""
from collections import OrderedDict

import numpy as np
import pytest

import tinygrad_bn as tb
from tinygrad_bn import nn


def import_torch():
    """torch, or skip. Single-threaded: on a busy 2-core machine its OpenMP pool costs
    ~60 ms a call on these tiny tensors, against ~0.1 ms on one thread."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    return torch


class Net(nn.Module):
    """A user-defined module whose attributes are set in a deliberate order."""

    def __init__(self):
        super().__init__()
        self.b = nn.Parameter(np.zeros(2, dtype=np.float32))
        self.fc = nn.Linear(3, 2)
        self.register_buffer("count", tb.zeros(1))
        self.a = nn.Parameter(np.ones(2, dtype=np.float32))
        self.register_buffer("scratch", tb.zeros(3), persistent=False)
        self.plain = 5  # neither parameter, buffer nor module

    def forward(self, x):
        return self.fc(x) * self.a + self.b


def mlp():
    """Linear -> BatchNorm1d -> ReLU -> (Linear -> Dropout): a BatchNorm child has buffers."""
    return nn.Sequential(
        nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Sequential(nn.Linear(4, 2), nn.Dropout(0.1))
    )


def snapshot(module):
    """Copies of every parameter and buffer array, by dotted name."""
    return {k: v.numpy().copy() for k, v in module.state_dict().items()}


def assert_unchanged(module, before):
    after = snapshot(module)
    assert after.keys() == before.keys()
    for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)
        assert after[k].dtype == before[k].dtype, k


# ---------------------------------------------------------------- registration and traversal
def test_parameters_buffers_and_modules_are_registered_in_assignment_order():
    net = Net()
    assert [n for n, _ in net.named_parameters()] == ["b", "a", "fc.weight", "fc.bias"]
    assert [n for n, _ in net.named_parameters(recurse=False)] == ["b", "a"]
    assert [n for n, _ in net.named_buffers()] == ["count", "scratch"]
    assert [n for n, _ in net.named_children()] == ["fc"]
    assert net.plain == 5
    assert "plain" not in dict(net.named_parameters()) and "plain" not in dict(net.named_buffers())


def test_parameters_yields_the_registered_objects():
    net = Net()
    params = list(net.parameters())
    assert params[0] is net.b and params[1] is net.a
    assert params[2] is net.fc.weight and params[3] is net.fc.bias
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in params)
    assert list(net.buffers()) == [net.count, net.scratch]


def test_named_parameters_are_dotted_paths():
    names = [n for n, _ in mlp().named_parameters()]
    assert names == ["0.weight", "0.bias", "1.weight", "1.bias", "3.0.weight", "3.0.bias"]
    assert [n for n, _ in mlp().named_buffers()] == ["1.running_mean", "1.running_var", "1.num_batches_tracked"]


def test_shared_parameter_appears_once():
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    b.weight = a.weight  # tied weights
    seq = nn.Sequential(a, b)
    names = [n for n, _ in seq.named_parameters()]
    assert names == ["0.weight", "0.bias", "1.bias"]
    assert len(list(seq.parameters())) == 3


def test_shared_module_appears_once_in_modules_and_parameters():
    lin = nn.Linear(2, 2)
    seq = nn.Sequential(lin, nn.ReLU(), lin)
    assert [n for n, _ in seq.named_modules()] == ["", "0", "1"]
    assert len(list(seq.parameters())) == 2
    assert len(seq) == 3


def test_shared_module_appears_once_in_children():
    # torch's named_children keeps a memo: a module at two positions is yielded once.
    lin = nn.Linear(2, 2)
    seq = nn.Sequential(lin, nn.ReLU(), lin)
    assert [n for n, _ in seq.named_children()] == ["0", "1"]
    assert list(seq.children()) == [lin, seq[1]]


def test_children_are_direct_and_modules_are_recursive_preorder():
    seq = mlp()
    kids = list(seq.children())
    assert [type(m).__name__ for m in kids] == ["Linear", "BatchNorm1d", "ReLU", "Sequential"]
    assert [type(m).__name__ for m in seq.modules()] == [
        "Sequential", "Linear", "BatchNorm1d", "ReLU", "Sequential", "Linear", "Dropout"
    ]
    assert [n for n, _ in seq.named_modules()] == ["", "0", "1", "2", "3", "3.0", "3.1"]


def test_reassigning_a_name_moves_it_between_registries():
    net = Net()
    net.a = nn.Linear(1, 1)  # was a parameter, now a module
    assert "a" not in dict(net.named_parameters(recurse=False))
    assert dict(net.named_children())["a"] is net.a
    del net.a
    assert "a" not in dict(net.named_children())
    with pytest.raises(AttributeError):
        net.a


def test_assigning_a_plain_tensor_to_a_parameter_name_is_a_type_error():
    lin = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="weight"):
        lin.weight = tb.zeros(2, 2)
    assert isinstance(lin.weight, nn.Parameter)
    lin.bias = None  # None is allowed and removes it from parameters()
    assert [n for n, _ in lin.named_parameters()] == ["weight"]


def test_register_buffer_and_parameter_type_checks():
    m = nn.Module()
    with pytest.raises(TypeError):
        m.register_buffer("x", np.zeros(2))
    with pytest.raises(TypeError):
        m.register_parameter("w", tb.zeros(2))
    with pytest.raises(TypeError):
        m.add_module("c", "not a module")


def test_setattr_before_init_is_an_attribute_error():
    class Forgot(nn.Module):
        def __init__(self):
            self.w = nn.Parameter(np.zeros(1))

    with pytest.raises(AttributeError, match="__init__"):
        Forgot()


def test_missing_attribute_error_names_it():
    with pytest.raises(AttributeError, match="nonexistent"):
        nn.Linear(1, 1).nonexistent


# ---------------------------------------------------------------- modes and grads
def test_train_and_eval_set_training_recursively_and_return_self():
    seq = mlp()
    assert all(m.training for m in seq.modules())
    assert seq.eval() is seq
    assert not any(m.training for m in seq.modules())
    assert seq.train() is seq
    assert all(m.training for m in seq.modules())
    seq[3].eval()
    assert [m.training for m in seq.modules()] == [True, True, True, True, False, False, False]
    with pytest.raises(TypeError):
        seq.train("no")


def test_eval_turns_dropout_off_in_a_container():
    seq = nn.Sequential(nn.Dropout(0.9)).eval()
    x = tb.randn(4, 5)
    np.testing.assert_array_equal(seq(x).numpy(), x.numpy())


def test_zero_grad_sets_every_grad_to_none():
    seq = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    seq(tb.randn(5, 3)).sum().backward()
    assert all(p.grad is not None for p in seq.parameters())
    seq.zero_grad()
    assert all(p.grad is None for p in seq.parameters())


def test_grads_accumulate_until_zero_grad():
    lin = nn.Linear(2, 1)
    x = tb.randn(3, 2)
    lin(x).sum().backward()
    first = lin.weight.grad.numpy().copy()
    lin(x).sum().backward()
    np.testing.assert_allclose(lin.weight.grad.numpy(), 2 * first, rtol=1e-6)


# ---------------------------------------------------------------- state_dict
def test_state_dict_keys_match_torch_order():
    assert list(mlp().state_dict()) == [
        "0.weight", "0.bias",
        "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked",
        "3.0.weight", "3.0.bias",
    ]


def test_non_persistent_buffers_are_left_out_of_state_dict():
    assert list(Net().state_dict()) == ["b", "a", "count", "fc.weight", "fc.bias"]


def test_state_dict_values_are_tensors_sharing_memory():
    lin = nn.Linear(2, 3)
    sd = lin.state_dict()
    assert all(isinstance(v, tb.Tensor) for v in sd.values())
    assert not any(v.requires_grad for v in sd.values())
    np.testing.assert_array_equal(sd["weight"].numpy(), lin.weight.numpy())
    lin.weight.data[0, 0] = 42.0  # an in-place change shows through, as in torch
    assert sd["weight"].numpy()[0, 0] == 42.0


def test_state_dict_keys_match_torch_for_a_module_used_twice():
    # torch's state_dict recurses over _modules without deduplicating, so a module that
    # sits at two positions is saved under both names (and a torch checkpoint of such a
    # model has both keys).
    lin = nn.Linear(2, 2)
    assert list(nn.Sequential(lin, lin).state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias"]


def test_state_dict_round_trip_restores_values():
    src, dst = mlp(), mlp()
    src(tb.randn(8, 3))  # moves the running statistics
    dst.load_state_dict(src.state_dict())
    for (k, a), (_, b) in zip(src.state_dict().items(), dst.state_dict().items()):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=k)


def test_load_state_dict_accepts_numpy_arrays_and_tensors():
    lin = nn.Linear(2, 3)
    w = np.arange(6, dtype=np.float32).reshape(3, 2)
    result = lin.load_state_dict({"weight": w, "bias": tb.Tensor(np.array([1.0, 2.0, 3.0]))})
    np.testing.assert_array_equal(lin.weight.numpy(), w)
    np.testing.assert_array_equal(lin.bias.numpy(), [1, 2, 3])
    assert lin.bias.dtype == np.float32  # copied into the existing float32 array
    assert list(result.missing_keys) == [] and list(result.unexpected_keys) == []


def test_load_state_dict_copies_rather_than_aliases():
    lin = nn.Linear(2, 3)
    w = np.zeros((3, 2), dtype=np.float32)
    lin.load_state_dict({"weight": w, "bias": np.zeros(3, dtype=np.float32)})
    w[0, 0] = 7.0
    assert lin.weight.numpy()[0, 0] == 0.0


def test_load_state_dict_strict_error_lists_every_problem_and_changes_nothing():
    model = mlp()
    before = snapshot(model)
    good = snapshot(model)
    bad = {k: v + 1 for k, v in good.items()}  # every value differs from the model's
    del bad["1.running_var"], bad["3.0.bias"]
    bad["0.weight"] = np.zeros((5, 5), dtype=np.float32)
    bad["extra.weight"] = np.zeros(2)
    with pytest.raises((ValueError, KeyError)) as info:
        model.load_state_dict(bad)
    msg = str(info.value)
    for key in ("1.running_var", "3.0.bias", "extra.weight", "0.weight"):
        assert key in msg
    assert "missing" in msg.lower() and "unexpected" in msg.lower()
    assert "(4, 3)" in msg and "(5, 5)" in msg  # the shape expected and the one given
    assert_unchanged(model, before)


@pytest.mark.parametrize("problem", ["missing", "unexpected", "shape"])
def test_each_strict_problem_alone_raises_and_changes_nothing(problem):
    model = mlp()
    before = snapshot(model)
    sd = {k: v + 1 for k, v in snapshot(model).items()}
    if problem == "missing":
        del sd["3.0.weight"]
    elif problem == "unexpected":
        sd["3.1.weight"] = np.zeros(2)
    else:
        sd["1.running_mean"] = np.zeros(5)
    with pytest.raises((ValueError, KeyError)):
        model.load_state_dict(sd)
    assert_unchanged(model, before)


def test_shape_mismatch_raises_even_when_not_strict():
    model = mlp()
    before = snapshot(model)
    sd = snapshot(model)
    sd["3.0.weight"] = np.zeros((2, 5), dtype=np.float32)
    sd["0.bias"] = sd["0.bias"] + 1
    with pytest.raises(ValueError, match=r"3\.0\.weight"):
        model.load_state_dict(sd, strict=False)
    assert_unchanged(model, before)


def test_load_state_dict_non_strict_returns_missing_and_unexpected():
    model = mlp()
    sd = {k: v + 1 for k, v in snapshot(model).items()}
    del sd["0.bias"], sd["1.num_batches_tracked"]
    sd["head.weight"] = np.zeros(1)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert list(missing) == ["0.bias", "1.num_batches_tracked"]
    assert list(unexpected) == ["head.weight"]
    np.testing.assert_array_equal(model[0].weight.numpy(), sd["0.weight"])  # the rest is loaded


def test_load_state_dict_with_a_non_array_value_raises_and_changes_nothing():
    model = mlp()
    before = snapshot(model)
    sd = {k: v + 1 for k, v in snapshot(model).items()}
    sd["3.0.bias"] = [1.0, 2.0]  # a list, after valid values for every other key
    with pytest.raises(TypeError, match=r"3\.0\.bias"):
        model.load_state_dict(sd)
    assert_unchanged(model, before)


def test_load_state_dict_rejects_non_mapping():
    with pytest.raises(TypeError):
        nn.Linear(1, 1).load_state_dict([("weight", np.zeros((1, 1)))])


def test_load_state_dict_keeps_parameters_the_same_objects():
    lin = nn.Linear(2, 2)
    w = lin.weight
    lin.load_state_dict({"weight": np.ones((2, 2)), "bias": np.ones(2)})
    assert lin.weight is w and lin.weight.requires_grad


# ---------------------------------------------------------------- repr and Sequential
def test_repr_of_nested_sequential_matches_torch_layout():
    seq = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 2), nn.Tanh(), nn.Flatten()))
    assert repr(seq) == (
        "Sequential(\n"
        "  (0): Linear(in_features=3, out_features=4, bias=True)\n"
        "  (1): ReLU()\n"
        "  (2): Sequential(\n"
        "    (0): Linear(in_features=4, out_features=2, bias=True)\n"
        "    (1): Tanh()\n"
        "    (2): Flatten(start_dim=1, end_dim=-1)\n"
        "  )\n"
        ")"
    )


def test_repr_is_identical_to_torch():
    torch = import_torch()
    ours = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Sigmoid(), nn.Sequential(nn.LeakyReLU(0.2), nn.Identity()))
    theirs = torch.nn.Sequential(
        torch.nn.Linear(3, 4, bias=False), torch.nn.Sigmoid(),
        torch.nn.Sequential(torch.nn.LeakyReLU(0.2), torch.nn.Identity()),
    )
    assert repr(ours) == repr(theirs)


def test_sequential_indexing_slicing_and_len():
    layers = [nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2), nn.Tanh()]
    seq = nn.Sequential(*layers)
    assert len(seq) == 4
    assert seq[0] is layers[0] and seq[-1] is layers[3] and seq[-4] is layers[0]
    assert list(seq) == layers
    tail = seq[1:]
    assert isinstance(tail, nn.Sequential) and len(tail) == 3
    assert list(tail) == layers[1:]
    assert [n for n, _ in tail.named_children()] == ["1", "2", "3"]  # torch keeps the names
    assert list(seq[::2]) == [layers[0], layers[2]]
    with pytest.raises(IndexError):
        seq[4]
    with pytest.raises(IndexError):
        seq[-5]


def test_sequential_applies_modules_in_order():
    seq = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x = tb.randn(5, 3)
    expected = seq[2](seq[1](seq[0](x)))
    np.testing.assert_array_equal(seq(x).numpy(), expected.numpy())


def test_sequential_from_ordered_dict_uses_its_names():
    seq = nn.Sequential(OrderedDict([("fc", nn.Linear(2, 3)), ("act", nn.ReLU())]))
    assert list(seq.state_dict()) == ["fc.weight", "fc.bias"]
    assert seq.fc is seq[0]


def test_sequential_rejects_non_modules():
    with pytest.raises(TypeError, match="1"):
        nn.Sequential(nn.ReLU(), lambda x: x)


def test_base_module_forward_is_not_implemented():
    with pytest.raises(NotImplementedError):
        nn.Module()(tb.zeros(1))


# ---------------------------------------------------------------- Parameter
def test_parameter_requires_grad_and_is_a_leaf_tensor():
    p = nn.Parameter(np.zeros((2, 3), dtype=np.float32))
    assert isinstance(p, tb.Tensor)
    assert p.requires_grad and p.is_leaf and p.grad is None
    assert p.shape == (2, 3) and p.dtype == np.float32
    assert not nn.Parameter(np.zeros(2), requires_grad=False).requires_grad


def test_parameter_keeps_float64_and_makes_lists_float32():
    assert nn.Parameter(np.zeros(2)).dtype == np.float64
    assert nn.Parameter([1.0, 2.0]).dtype == np.float32


def test_parameter_shares_a_tensors_data():
    t = tb.Tensor(np.array([1.0, 2.0]))
    p = nn.Parameter(t)
    p.data[0] = 5.0
    assert t.numpy()[0] == 5.0


def test_parameter_of_integer_data_is_a_type_error():
    with pytest.raises(TypeError, match="int64"):
        nn.Parameter(np.array([1, 2]))


def test_parameter_repr_says_parameter():
    assert repr(nn.Parameter(np.zeros(2))).startswith("Parameter containing:")


def test_gradients_reach_parameters_through_a_module():
    net = Net()
    out = net(tb.randn(4, 3)).sum()
    out.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, name
    np.testing.assert_allclose(net.b.grad.numpy(), [4.0, 4.0])
