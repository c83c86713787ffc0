"""Bad input across the public API, and awkward input that must be accepted.

BAD_INPUTS is a table: each row is a call that must raise a given exception whose
message names what was expected and what came, and that leaves every parameter,
gradient, BatchNorm buffer, optimiser state, grad mode, thread count and file exactly
as it was (DESIGN.md, "Errors"). The bad calls run against a small world of two models
that have each made one real optimiser step.

The other tables hold input that must be accepted: arrays with odd memory layouts
(copied, never aliased or modified), NaN and inf (propagated as numpy propagates them,
including through the fused BatchNorm and cross-entropy), and empty batches (PyTorch's
results).
"""
import os
import re

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

import tinygrad_bn as tb
from tinygrad_bn import nn, optim
from tinygrad_bn.nn import functional as F

inf, nan = np.inf, np.nan
HUGE = 2**40  # HUGE * HUGE elements overflow numpy's index type (intp)
INTP_MAX = str(np.iinfo(np.intp).max)


# ---------------------------------------------------------------- the world a bad call runs in
class World:
    """An MLP (Linear -> BatchNorm1d) with SGD + momentum and a CNN (Conv2d ->
    BatchNorm2d) with Adam, each after one real step (so momentum buffers, Adam's
    moments and step, running stats and .grad all hold non-trivial values), plus a
    folder with a good checkpoint and some files that are not checkpoints."""

    def __init__(self, folder):
        rng = np.random.default_rng(0)
        tb.manual_seed(0)
        self.mlp = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        self.cnn = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3))
        self.sgd = optim.SGD(self.mlp.parameters(), lr=0.1, momentum=0.9)
        self.adam = optim.Adam(self.cnn.parameters(), lr=1e-2)
        x = tb.Tensor(rng.standard_normal((5, 3)), dtype=tb.float32)
        F.cross_entropy(self.mlp(x), np.array([0, 1, 2, 3, 0])).backward()
        self.sgd.step()
        images = tb.Tensor(rng.standard_normal((2, 2, 4, 4)), dtype=tb.float32)
        (self.cnn(images) ** 2.0).mean().backward()
        self.adam.step()

        self.folder = folder
        self.good = str(folder / "good.npz")
        tb.save(self.mlp.state_dict(), self.good)
        data = (folder / "good.npz").read_bytes()
        self.truncated = self._write("truncated.npz", data[: len(data) // 2])
        self.text = self._write("notes.txt", b"step: 3\nlr: 0.1\n")
        self.empty = self._write("empty.npz", b"")
        self.npy = str(folder / "array.npy")
        np.save(self.npy, np.ones(3))
        self.plain = str(folder / "plain.npz")
        np.savez(self.plain, w=np.ones(3))

    def _write(self, name, data):
        path = self.folder / name
        path.write_bytes(data)
        return str(path)

    def mlp_input(self, n=5):
        return tb.randn(n, 3)


def shifted_state(model):
    """The model's state dict as numpy arrays, every value changed (+1), so a load that
    copied some entries before failing would show."""
    return {k: v.numpy() + 1 for k, v in model.state_dict().items()}


def snapshot(w):
    """Copies of everything a failed call must leave alone."""
    state = {"grad_enabled": tb.is_grad_enabled(), "num_threads": tb.get_num_threads(),
             "files": sorted((p.name, p.stat().st_size) for p in w.folder.iterdir())}
    for name, model in (("mlp", w.mlp), ("cnn", w.cnn)):
        for key, value in model.state_dict().items():
            state[f"{name}.{key}"] = value.numpy().copy()
        for key, p in model.named_parameters():
            state[f"{name}.{key}.grad"] = None if p.grad is None else p.grad.numpy().copy()
        state[f"{name}.training"] = [m.training for m in model.modules()]
    for name, opt in (("sgd", w.sgd), ("adam", w.adam)):
        saved = opt.state_dict()  # copies of the arrays
        state[f"{name}.groups"] = repr(saved["param_groups"])
        for index, entries in saved["state"].items():
            for key, value in entries.items():
                state[f"{name}.state.{index}.{key}"] = np.array(value)
    return state


def assert_same(after, before):
    assert after.keys() == before.keys()
    for key, value in before.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(after[key], value, err_msg=key, strict=True)
        else:
            assert after[key] == value, key


# ---------------------------------------------------------------- the table of bad inputs
def bad(case_id, exc, pieces, prepare):
    """A row of BAD_INPUTS. prepare(world) does any legitimate set-up (a forward pass, a
    first backward) and returns the bad call; `pieces` are substrings the message must
    contain: what was expected and what came."""
    return pytest.param(exc, pieces, prepare, id=case_id)


def after_forward(call):
    """prepare() that first runs the MLP forward (legitimately updating its BatchNorm
    statistics); the bad call is call(world, output)."""
    def prepare(w):
        out = w.mlp(w.mlp_input())
        return lambda: call(w, out)
    return prepare


def after_backward(call):
    """prepare() that first runs a loss through the MLP and a backward, which frees the
    graph; the bad call is call(world, loss)."""
    def prepare(w):
        loss = F.cross_entropy(w.mlp(w.mlp_input()), np.array([0, 1, 2, 3, 0]))
        loss.backward()
        return lambda: call(w, loss)
    return prepare


def _adam_state_with_bad_shape(w):
    saved = w.adam.state_dict()
    saved["param_groups"][0]["lr"] = 0.5  # a partial load would show in the options too
    saved["state"][0]["step"] += 5
    saved["state"][1]["exp_avg"] = np.zeros((2, 2), np.float32)
    return saved


def _grad_of_wrong_shape(w):
    w.mlp[1].bias.grad = tb.zeros(5)  # after mlp[0]'s grads in the group: they must not move
    return w.sgd.step


def _state_with(model, changes):
    """shifted_state(model) with entries replaced, added, or (value None) removed."""
    state = shifted_state(model)
    for key, value in changes.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    return state


# fmt: off
BAD_INPUTS = [
    # ---- binary ops and matmul
    bad("add-shapes-do-not-broadcast", ValueError, ["could not be broadcast", "(2, 3)", "(4, 5)"],
        lambda w: lambda: tb.randn(2, 3) + tb.randn(4, 5)),
    bad("mul-shapes-do-not-broadcast", ValueError, ["could not be broadcast", "(2, 3)", "(3, 2)"],
        lambda w: lambda: tb.randn(2, 3) * tb.randn(3, 2)),
    bad("parameter-minus-transposed-numpy-array", ValueError, ["could not be broadcast", "(4, 3)", "(3, 4)"],
        lambda w: lambda: w.mlp[0].weight - np.ones((3, 4), np.float32)),
    bad("matmul-inner-dims-differ", ValueError, ["(2, 3) @ (4, 5)", "expected 3 rows", "got 4"],
        lambda w: lambda: tb.randn(2, 3) @ tb.randn(4, 5)),
    bad("matmul-0d-operand", ValueError, ["at least 1 dimension", "(2, 3) and ()"],
        lambda w: lambda: tb.randn(2, 3) @ tb.Tensor(2.0)),
    bad("matmul-batch-dims-do-not-broadcast", ValueError, ["batch dimensions (2,) and (3,)", "do not broadcast"],
        lambda w: lambda: tb.randn(2, 2, 3) @ tb.randn(3, 3, 4)),
    bad("where-shapes-do-not-broadcast", ValueError, ["(2, 2), (3,), (2,)", "do not broadcast"],
        lambda w: lambda: tb.where(np.ones((2, 2), bool), tb.randn(3), tb.randn(2))),
    bad("cat-other-dims-differ", ValueError, ["tensor 1 has shape (2, 4)", "expected (2, 3)"],
        lambda w: lambda: tb.cat([tb.randn(2, 3), tb.randn(2, 4)])),
    bad("mse-loss-shapes-differ", ValueError, ["pred has shape (3,)", "target has shape (4,)"],
        lambda w: lambda: F.mse_loss(tb.randn(3), tb.randn(4))),
    # ---- linear
    bad("linear-in-features-mismatch", ValueError, ["last dimension 3 (in_features)", "got shape (5, 4)"],
        lambda w: lambda: w.mlp(tb.randn(5, 4))),
    bad("linear-0d-input", ValueError, ["last dimension 3 (in_features)", "got shape ()"],
        lambda w: lambda: w.mlp[0](tb.Tensor(1.0))),
    bad("linear-int-input", TypeError, ["input must be float32 or float64", "got dtype int64"],
        lambda w: lambda: w.mlp(tb.Tensor(np.ones((2, 3), np.int64)))),
    bad("linear-numpy-input", TypeError, ["input must be a Tensor", "got ndarray"],
        lambda w: lambda: w.mlp(np.ones((2, 3), np.float32))),
    bad("linear-negative-features", ValueError, ["must be >= 0", "in_features=-1"],
        lambda w: lambda: nn.Linear(-1, 2)),
    # ---- convolution
    bad("conv-channel-mismatch", ValueError, ["expected input with 2 channels", "got 3 channels", "(2, 3, 5, 5)"],
        lambda w: lambda: w.cnn(tb.randn(2, 3, 5, 5))),
    bad("conv-3d-input", ValueError, ["expected 4-D input (N, C, H, W)", "got shape (2, 5, 5)"],
        lambda w: lambda: w.cnn(tb.randn(2, 5, 5))),
    bad("conv-5d-input", ValueError, ["expected 4-D input (N, C, H, W)", "got shape (1, 2, 5, 5, 1)"],
        lambda w: lambda: w.cnn(tb.randn(1, 2, 5, 5, 1))),
    bad("conv-0d-input", ValueError, ["expected 4-D input", "got shape ()"],
        lambda w: lambda: w.cnn(tb.Tensor(1.0))),
    bad("conv-3d-weight", ValueError, ["expected 4-D weight (O, C, kh, kw)", "got shape (3, 2, 3)"],
        lambda w: lambda: F.conv2d(tb.randn(1, 2, 5, 5), tb.randn(3, 2, 3))),
    bad("conv-kernel-larger-than-padded-input", ValueError, ["dilated kernel size 3", "padded input size 2"],
        lambda w: lambda: F.conv2d(tb.randn(1, 2, 2, 2), w.cnn[0].weight)),
    bad("conv-dilated-kernel-larger-than-input", ValueError, ["dilated kernel size 5", "padded input size 4"],
        lambda w: lambda: F.conv2d(tb.randn(1, 2, 4, 4), w.cnn[0].weight, dilation=2)),
    bad("conv-stride-0", ValueError, ["stride must be >= 1", "got (0, 0)"],
        lambda w: lambda: F.conv2d(tb.randn(1, 2, 5, 5), w.cnn[0].weight, stride=0)),
    bad("conv-stride-negative", ValueError, ["stride must be >= 1", "got (1, -2)"],
        lambda w: lambda: F.conv2d(tb.randn(1, 2, 5, 5), w.cnn[0].weight, stride=(1, -2))),
    bad("conv-padding-negative", ValueError, ["padding must be >= 0", "got (-1, -1)"],
        lambda w: lambda: F.conv2d(tb.randn(1, 2, 5, 5), w.cnn[0].weight, padding=-1)),
    bad("conv-dilation-0", ValueError, ["dilation must be >= 1", "got (0, 0)"],
        lambda w: lambda: F.conv2d(tb.randn(1, 2, 5, 5), w.cnn[0].weight, dilation=0)),
    bad("conv-stride-float", TypeError, ["stride must be an int", "got float 1.5"],
        lambda w: lambda: F.conv2d(tb.randn(1, 2, 5, 5), w.cnn[0].weight, stride=1.5)),
    bad("conv-stride-three-values", ValueError, ["stride must be an int or a pair", "got (1, 1, 1)"],
        lambda w: lambda: F.conv2d(tb.randn(1, 2, 5, 5), w.cnn[0].weight, stride=(1, 1, 1))),
    bad("conv-int-input", TypeError, ["input must be float32 or float64", "got dtype int64"],
        lambda w: lambda: w.cnn(tb.Tensor(np.ones((1, 2, 5, 5), np.int64)))),
    bad("conv-bias-wrong-shape", ValueError, ["bias must have shape (3,)", "got (5,)"],
        lambda w: lambda: F.conv2d(tb.randn(1, 2, 5, 5), w.cnn[0].weight, tb.randn(5))),
    bad("conv-empty-spatial-input", ValueError, ["non-zero spatial dimensions", "got (2, 2, 0, 4)"],
        lambda w: lambda: w.cnn(tb.randn(2, 2, 0, 4))),
    # ---- pooling
    bad("maxpool-3d-input", ValueError, ["expected 4-D input (N, C, H, W)", "got shape (2, 5, 5)"],
        lambda w: lambda: nn.MaxPool2d(2)(tb.randn(2, 5, 5))),
    bad("maxpool-kernel-larger-than-input", ValueError, ["dilated kernel size 3", "padded input size 2"],
        lambda w: lambda: nn.MaxPool2d(3)(tb.randn(1, 2, 2, 2))),
    bad("maxpool-stride-0", ValueError, ["stride must be in [1,", "got (0, 0)"],
        lambda w: lambda: F.max_pool2d(tb.randn(1, 2, 5, 5), 2, stride=0)),
    bad("maxpool-padding-over-half-kernel", ValueError, ["expected padding <= 1 for kernel 2", "got 2"],
        lambda w: lambda: F.max_pool2d(tb.randn(1, 2, 5, 5), 2, padding=2)),
    bad("maxpool-int-input", TypeError, ["float32 or float64", "got int64"],
        lambda w: lambda: F.max_pool2d(tb.Tensor(np.ones((1, 2, 4, 4), np.int64)), 2)),
    bad("avgpool-stride-0", ValueError, ["stride must be in [1,", "got (0, 0)"],
        lambda w: lambda: nn.AvgPool2d(2, stride=0)(tb.randn(1, 2, 5, 5))),
    bad("avgpool-kernel-larger-than-input", ValueError, ["dilated kernel size 3", "padded input size 2"],
        lambda w: lambda: F.avg_pool2d(tb.randn(1, 2, 2, 2), 3)),
    bad("avgpool-kernel-float", TypeError, ["kernel_size must be an int", "got float 2.0"],
        lambda w: lambda: F.avg_pool2d(tb.randn(1, 2, 4, 4), 2.0)),
    # ---- batch norm
    bad("bn1d-channel-mismatch", ValueError, ["expected 4 channels", "got input of shape (4, 5)"],
        lambda w: lambda: w.mlp[1](tb.randn(4, 5))),
    bad("bn2d-channel-mismatch", ValueError, ["expected 3 channels", "got input of shape (2, 2, 3, 3)"],
        lambda w: lambda: w.cnn[1](tb.randn(2, 2, 3, 3))),
    bad("bn1d-rank-1", ValueError, ["expected 2-D or 3-D input", "got shape (4,)"],
        lambda w: lambda: w.mlp[1](tb.randn(4))),
    bad("bn1d-0d", ValueError, ["expected 2-D or 3-D input", "got shape ()"],
        lambda w: lambda: w.mlp[1](tb.Tensor(1.0))),
    bad("bn2d-rank-5", ValueError, ["expected 4-D input", "got shape (2, 3, 2, 2, 2)"],
        lambda w: lambda: w.cnn[1](tb.randn(2, 3, 2, 2, 2))),
    bad("bn-functional-rank-5", ValueError, ["(N, C), (N, C, L) or (N, C, H, W)", "got (2, 3, 2, 2, 2)"],
        lambda w: lambda: F.batch_norm(tb.randn(2, 3, 2, 2, 2), None, None, training=True)),
    bad("bn1d-one-value-per-channel-in-training", ValueError,
        ["Expected more than 1 value per channel when training", "got 1 (input of shape (1, 4))",
         "drop_last=True", "eval()"],
        lambda w: lambda: w.mlp(w.mlp_input(1))),
    bad("bn2d-one-value-per-channel-in-training", ValueError,
        ["Expected more than 1 value per channel", "got 1 (input of shape (1, 3, 1, 1))", "drop_last=True"],
        lambda w: lambda: w.cnn(tb.randn(1, 2, 1, 1))),
    bad("bn-empty-batch-in-training", ValueError,
        ["Expected more than 1 value per channel", "got 0 (input of shape (0, 4))"],
        lambda w: lambda: w.mlp(w.mlp_input(0))),
    bad("bn-running-mean-wrong-shape", ValueError, ["expected running_mean of shape (5,)", "got (4,)"],
        lambda w: lambda: F.batch_norm(tb.randn(4, 5), w.mlp[1].running_mean, w.mlp[1].running_var,
                                       training=True)),
    bad("bn-eps-0", ValueError, ["eps must be a positive finite number", "got 0"],
        lambda w: lambda: F.batch_norm(tb.randn(4, 4), w.mlp[1].running_mean, w.mlp[1].running_var,
                                       training=True, eps=0)),
    bad("bn-momentum-above-1", ValueError, ["momentum must be in [0, 1] or None", "got 2"],
        lambda w: lambda: F.batch_norm(tb.randn(4, 4), w.mlp[1].running_mean, w.mlp[1].running_var,
                                       training=True, momentum=2)),
    bad("bn-int-input", TypeError, ["input must be float32 or float64", "got dtype int64"],
        lambda w: lambda: w.mlp[1](tb.Tensor(np.ones((4, 4), np.int64)))),
    # ---- cross-entropy (logits from a real forward pass: that update is legitimate)
    bad("ce-label-equal-to-class-count", IndexError, ["label 4 is out of range for 4 classes", "0 <= label < 4"],
        after_forward(lambda w, logits: F.cross_entropy(logits, np.array([0, 4, 1, 2, 3])))),
    bad("ce-negative-label", IndexError, ["label -1 is out of range for 4 classes", "0 <= label < 4"],
        lambda w: lambda: F.cross_entropy(tb.randn(3, 4), np.array([0, -1, 1]))),
    bad("ce-float-labels", TypeError, ["labels must be integers", "got dtype float64"],
        lambda w: lambda: F.cross_entropy(tb.randn(3, 4), np.array([0.0, 1.0, 1.0]))),
    bad("ce-float-tensor-labels", TypeError, ["labels must be integers", "got dtype float32"],
        lambda w: lambda: F.cross_entropy(tb.randn(3, 4), tb.Tensor([0.0, 1.0, 1.0]))),
    bad("ce-bool-labels", TypeError, ["labels must be integers", "got dtype bool"],
        lambda w: lambda: F.cross_entropy(tb.randn(3, 4), np.array([True, False, True]))),
    bad("ce-string-labels", TypeError, ["labels must be integers", "got dtype <U1"],
        lambda w: lambda: F.cross_entropy(tb.randn(3, 4), np.array(["a", "b", "c"]))),
    bad("ce-labels-too-few", ValueError, ["expected labels of shape (3,)", "got (2,)"],
        lambda w: lambda: F.cross_entropy(tb.randn(3, 4), np.array([0, 1]))),
    bad("ce-labels-2d", ValueError, ["expected labels of shape (3,)", "got (3, 1)"],
        lambda w: lambda: F.cross_entropy(tb.randn(3, 4), np.array([[0], [1], [2]]))),
    bad("ce-logits-rank-3", ValueError, ["expected logits of shape (N, C)", "got (3, 4, 2)"],
        lambda w: lambda: F.cross_entropy(tb.randn(3, 4, 2), np.array([0, 1, 1]))),
    bad("ce-logits-rank-1", ValueError, ["expected logits of shape (N, C)", "got (4,)"],
        lambda w: lambda: F.cross_entropy(tb.randn(4), np.array([0]))),
    bad("ce-logits-0d", ValueError, ["expected logits of shape (N, C)", "got ()"],
        lambda w: lambda: F.cross_entropy(tb.Tensor(1.0), np.array([0]))),
    bad("ce-int-logits", TypeError, ["logits must be float32 or float64", "got dtype int64"],
        lambda w: lambda: F.cross_entropy(tb.Tensor(np.ones((3, 4), np.int64)), np.array([0, 1, 1]))),
    bad("ce-zero-classes", IndexError, ["label 0 is out of range for 0 classes", "0 <= label < 0"],
        lambda w: lambda: F.cross_entropy(tb.randn(3, 0), np.array([0, 0, 0]))),
    bad("ce-no-rows-no-classes", ValueError, ["logits have no classes", "(shape (0, 0))"],
        lambda w: lambda: F.cross_entropy(tb.randn(0, 0), np.array([], np.int64))),
    bad("ce-unknown-reduction", ValueError, ["'mean', 'sum' or 'none'", "got 'avg'"],
        lambda w: lambda: F.cross_entropy(tb.randn(3, 4), np.array([0, 1, 1]), reduction="avg")),
    # ---- data of the wrong kind
    bad("tensor-of-strings", TypeError, ["float, int or bool", "got dtype <U1"],
        lambda w: lambda: tb.Tensor(np.array(["a"]))),
    bad("tensor-of-string-list", TypeError, ["float, int or bool", "got dtype <U1"],
        lambda w: lambda: tb.Tensor(["a", "b"])),
    bad("tensor-of-complex", TypeError, ["float, int or bool", "got dtype complex128"],
        lambda w: lambda: tb.Tensor(np.array([1 + 2j]))),
    bad("tensor-of-objects", TypeError, ["float, int or bool", "got dtype object"],
        lambda w: lambda: tb.Tensor(np.array([1.0, None], dtype=object))),
    bad("tensor-of-None", TypeError, ["float, int or bool", "got dtype object"],
        lambda w: lambda: tb.Tensor(None)),
    bad("tensor-of-ragged-list", TypeError, ["a (nested) list of numbers", "inhomogeneous"],
        lambda w: lambda: tb.Tensor([[1.0, 2.0], [3.0]])),
    bad("tensor-dtype-complex64", TypeError, ["float32, float64, int64 or bool", "got complex64"],
        lambda w: lambda: tb.Tensor([1.0], dtype=np.complex64)),
    bad("tensor-dtype-float16", TypeError, ["float32, float64, int64 or bool", "got float16"],
        lambda w: lambda: tb.Tensor([1.0], dtype=np.float16)),
    bad("tensor-uint64-beyond-int64", ValueError, ["must fit in int64", "got the value 18446744073709551615"],
        lambda w: lambda: tb.Tensor(np.array([1, 2**64 - 1], dtype=np.uint64))),
    bad("int-tensor-requires-grad", TypeError, ["only float32/float64 tensors can require grad", "got dtype int64"],
        lambda w: lambda: tb.Tensor([1, 2], requires_grad=True)),
    bad("parameter-of-ints", TypeError, ["Parameter data must be float32 or float64", "got dtype int64"],
        lambda w: lambda: nn.Parameter(np.arange(3))),
    bad("parameter-of-int-tensor", TypeError, ["Parameter data must be float32 or float64", "got dtype int64"],
        lambda w: lambda: nn.Parameter(tb.Tensor([1, 2]))),
    bad("parameter-of-bools", TypeError, ["Parameter data must be float32 or float64", "got dtype bool"],
        lambda w: lambda: nn.Parameter(np.array([True, False]))),
    bad("numpy-array-as-module-weight", TypeError, ["cannot assign ndarray as parameter 'weight'",
                                                    "expected a tb.nn.Parameter or None"],
        lambda w: lambda: setattr(w.mlp[0], "weight", np.ones((4, 3), np.float32))),
    bad("exp-of-int-tensor", TypeError, ["exp expects a float32/float64 tensor", "got dtype int64"],
        lambda w: lambda: tb.Tensor([1, 2]).exp()),
    # ---- sizes numpy cannot index, and reshapes that do not fit
    bad("zeros-too-large", ValueError, [f"shape ({HUGE}, {HUGE})", f"expected at most {INTP_MAX}"],
        lambda w: lambda: tb.zeros((HUGE, HUGE))),
    bad("randn-too-large", ValueError, [f"shape ({HUGE}, {HUGE})", f"expected at most {INTP_MAX}"],
        lambda w: lambda: tb.randn(HUGE, HUGE)),
    bad("full-too-large", ValueError, [f"shape ({HUGE}, {HUGE})", f"expected at most {INTP_MAX}"],
        lambda w: lambda: tb.full((HUGE, HUGE), 1.0)),
    bad("ones-negative-size", ValueError, ["sizes must be >= 0", "got shape (-1, 2)"],
        lambda w: lambda: tb.ones(-1, 2)),
    bad("add-broadcast-too-large", ValueError,
        [f"({HUGE}, 1, 0) ({1}, {HUGE}, 0)", f"shape ({HUGE}, {HUGE}, 0)", f"expected at most {int(INTP_MAX) // 8}"],
        lambda w: lambda: tb.zeros(HUGE, 1, 0) + tb.zeros(1, HUGE, 0)),
    bad("where-broadcast-too-large", ValueError, [f"({HUGE}, 1, 0), (1, {HUGE}, 0)", "expected at most"],
        lambda w: lambda: tb.where(np.ones((HUGE, 1, 0), bool), tb.zeros(1, HUGE, 0), 1.0)),
    bad("reshape-to-too-large", ValueError, ["(4,) (4 elements)", f"into ({HUGE}, {HUGE})"],
        lambda w: lambda: tb.randn(4).reshape(HUGE, HUGE)),
    bad("reshape-empty-to-too-large", ValueError, [f"shape ({HUGE}, {HUGE}, 0)", f"expected at most {INTP_MAX}"],
        lambda w: lambda: tb.zeros(0).reshape(HUGE, HUGE, 0)),
    bad("expand-to-too-large", ValueError, [f"shape ({HUGE}, {HUGE})", f"expected at most {INTP_MAX}"],
        lambda w: lambda: tb.randn(1).expand(HUGE, HUGE)),
    bad("reshape-element-count-differs", ValueError, ["(6,) (6 elements)", "into (4, 2) (8 elements)"],
        lambda w: lambda: tb.randn(6).reshape(4, 2)),
    bad("reshape-two-minus-ones", ValueError, ["only one dimension can be -1", "got (-1, -1)"],
        lambda w: lambda: tb.randn(6).reshape(-1, -1)),
    bad("expand-non-singleton", ValueError, ["dimension 0 has size 2", "expected 1 or 4"],
        lambda w: lambda: tb.randn(2, 3).expand(4, 3)),
    # ---- reductions of nothing, axes and indices
    bad("max-of-empty", ValueError, ["max of an empty tensor", "(shape (0, 3))"],
        lambda w: lambda: tb.zeros(0, 3).max()),
    bad("argmax-of-empty", ValueError, ["argmax of an empty tensor", "(shape (3, 0))"],
        lambda w: lambda: tb.zeros(3, 0).argmax(1)),
    bad("sum-axis-out-of-range", np.exceptions.AxisError, ["axis 5", "array of dimension 2"],
        lambda w: lambda: tb.randn(2, 3).sum(5)),
    bad("sum-axis-float", TypeError, ["axis must be an int or a tuple of ints", "got float"],
        lambda w: lambda: tb.randn(2, 3).sum(1.0)),
    bad("transpose-axes-of-0d", np.exceptions.AxisError, ["axis 0", "array of dimension 0"],
        lambda w: lambda: tb.Tensor(1.0).transpose(0, 1)),
    bad("permute-not-a-permutation", ValueError, ["axes (0, 0)", "not a permutation of range(2)"],
        lambda w: lambda: tb.randn(2, 3).permute(0, 0)),
    bad("index-out-of-range", IndexError, ["index 5 is out of bounds", "size 2"],
        lambda w: lambda: tb.randn(2, 3)[5]),
    bad("index-float", IndexError, ["only integers, slices", "got float 1.0"],
        lambda w: lambda: tb.randn(2, 3)[1.0]),
    bad("index-float-array", IndexError, ["must be integer or bool", "got dtype float64"],
        lambda w: lambda: tb.randn(2, 3)[np.array([0.5])]),
    bad("item-of-many", ValueError, ["exactly 1 element", "got shape (2, 3)"],
        lambda w: lambda: tb.randn(2, 3).item()),
    # ---- autograd misuse
    bad("backward-twice", RuntimeError, ["backward through the graph a second time", "retain_graph=True"],
        after_backward(lambda w, loss: loss.backward())),
    bad("grad-after-backward", RuntimeError, ["a second time", "retain_graph=True"],
        after_backward(lambda w, loss: tb.grad(loss, w.mlp[0].weight))),
    bad("backward-of-non-scalar", RuntimeError, ["only for scalar outputs", "got shape (5, 4)", "gradient="],
        after_forward(lambda w, y: y.backward())),
    bad("backward-gradient-wrong-shape", ValueError, ["expected (5, 4)", "got (4,)"],
        after_forward(lambda w, y: y.backward(tb.ones(4)))),
    bad("backward-of-tensor-without-grad", RuntimeError, ["does not require grad", "does not have a grad_fn"],
        after_forward(lambda w, y: y.detach().sum().backward())),
    bad("grad-of-output-without-grad", RuntimeError, ["does not require grad", "does not have a grad_fn"],
        lambda w: lambda: tb.grad(tb.randn(3).sum(), w.mlp[0].weight)),
    bad("grad-wrt-input-without-grad", RuntimeError, ["inputs[0] does not require grad (shape (3,))",
                                                      "requires_grad_()"],
        after_forward(lambda w, y: tb.grad(y.sum(), tb.randn(3)))),
    bad("grad-wrt-unused-input", RuntimeError, ["inputs[1] (shape (3, 2, 3, 3)) was not used",
                                                "allow_unused=True"],
        after_forward(lambda w, y: tb.grad(y.sum(), [w.mlp[0].weight, w.cnn[0].weight]))),
    bad("grad-outputs-count-mismatch", ValueError, ["expected 1 entries", "got 2"],
        after_forward(lambda w, y: tb.grad(y.sum(), w.mlp[0].weight, grad_outputs=[None, None]))),
    # ---- module state dicts (every good entry differs, so a partial load would show)
    bad("load-state-dict-missing-key", ValueError, ["for Sequential", "missing keys: 1.running_var"],
        lambda w: lambda: w.mlp.load_state_dict(_state_with(w.mlp, {"1.running_var": None}))),
    bad("load-state-dict-unexpected-key", ValueError, ["for Sequential", "unexpected keys: 2.weight"],
        lambda w: lambda: w.mlp.load_state_dict(_state_with(w.mlp, {"2.weight": np.ones(3)}))),
    bad("load-state-dict-wrong-shape", ValueError, ["size mismatch for 0.weight", "expected shape (4, 3)",
                                                    "got (3, 4)"],
        lambda w: lambda: w.mlp.load_state_dict(_state_with(w.mlp, {"0.weight": np.ones((3, 4))}))),
    bad("load-state-dict-wrong-shape-not-strict", ValueError, ["size mismatch for 1.running_mean",
                                                               "expected shape (3,)", "got (4,)"],
        lambda w: lambda: w.cnn.load_state_dict(_state_with(w.cnn, {"1.running_mean": np.zeros(4)}),
                                                strict=False)),
    bad("load-state-dict-every-problem-listed", ValueError,
        ["missing keys: 0.bias", "unexpected keys: extra", "size mismatch for 1.weight: expected shape (4,), got (5,)"],
        lambda w: lambda: w.mlp.load_state_dict(
            _state_with(w.mlp, {"0.bias": None, "extra": np.ones(1), "1.weight": np.ones(5)}))),
    bad("load-state-dict-string-array", ValueError, ["dtype mismatch for 0.bias", "expected a numeric array",
                                                     "got dtype <U1"],
        lambda w: lambda: w.mlp.load_state_dict(_state_with(w.mlp, {"0.bias": np.array(list("abcd"))}))),
    bad("load-state-dict-complex-array", ValueError, ["dtype mismatch for 0.bias", "got dtype complex128"],
        lambda w: lambda: w.mlp.load_state_dict(_state_with(w.mlp, {"0.bias": np.ones(4, complex)}))),
    bad("load-state-dict-list-value", TypeError, ["state_dict['0.bias']: expected a Tensor or numpy array",
                                                  "got list"],
        lambda w: lambda: w.mlp.load_state_dict(_state_with(w.mlp, {"0.bias": [1.0] * 4}))),
    bad("load-state-dict-not-a-mapping", TypeError, ["expects a dict", "got list"],
        lambda w: lambda: w.mlp.load_state_dict(list(shifted_state(w.mlp).values()))),
    # ---- files
    bad("load-truncated-file", ValueError, ["truncated.npz", "not a readable tinygrad_bn .npz file", "BadZipFile"],
        lambda w: lambda: tb.load(w.truncated)),
    bad("load-text-file", ValueError, ["notes.txt", "expected a zip archive", "got first bytes b'step: '"],
        lambda w: lambda: tb.load(w.text)),
    bad("load-empty-file", ValueError, ["empty.npz", "expected a zip archive", "got first bytes b''"],
        lambda w: lambda: tb.load(w.empty)),
    bad("load-npy-file", ValueError, ["array.npy", "is a .npy array, not a tinygrad_bn .npz file"],
        lambda w: lambda: tb.load(w.npy)),
    bad("load-plain-npz", ValueError, ["plain.npz", "no '__structure__' entry: not written by tb.save"],
        lambda w: lambda: tb.load(w.plain)),
    bad("load-nonexistent-path", FileNotFoundError, ["No such file", "missing.npz"],
        lambda w: lambda: tb.load(w.folder / "missing.npz")),
    bad("load-a-directory", IsADirectoryError, ["Is a directory", str(os.sep)],
        lambda w: lambda: tb.load(w.folder)),
    bad("save-unsupported-object-writes-no-file", TypeError, ["cannot save obj['opt']", "unsupported type set"],
        lambda w: lambda: tb.save({"model": w.mlp.state_dict(), "opt": {1, 2}}, w.folder / "new.npz")),
    # ---- optimisers
    bad("optimizer-numpy-parameter", TypeError, ["parameter 0 of the group is a ndarray", "expected a Tensor"],
        lambda w: lambda: optim.SGD([np.ones(3)], lr=0.1)),
    bad("optimizer-empty-parameter-list", ValueError, ["got an empty parameter list", "expected at least one"],
        lambda w: lambda: optim.SGD([], lr=0.1)),
    bad("optimizer-single-tensor", TypeError, ["got a single Parameter", "wrap it in a list"],
        lambda w: lambda: optim.SGD(w.mlp[0].weight, lr=0.1)),
    bad("optimizer-int-parameter", TypeError, ["has dtype int64", "only float tensors"],
        lambda w: lambda: optim.SGD([tb.Tensor([1, 2])], lr=0.1)),
    bad("optimizer-non-leaf", ValueError, ["is not a leaf tensor", "optimise leaves only"],
        lambda w: lambda: optim.SGD([w.mlp[0].weight * 2.0], lr=0.1)),
    bad("sgd-negative-lr", ValueError, ["invalid lr: -0.1", "expected >= 0.0"],
        lambda w: lambda: optim.SGD(w.mlp.parameters(), lr=-0.1)),
    bad("sgd-lr-string", TypeError, ["lr must be a real number", "got str '0.1'"],
        lambda w: lambda: optim.SGD(w.mlp.parameters(), lr="0.1")),
    bad("sgd-nesterov-without-momentum", ValueError, ["requires momentum > 0 and dampening = 0",
                                                      "got momentum=0"],
        lambda w: lambda: optim.SGD(w.mlp.parameters(), lr=0.1, nesterov=True)),
    bad("adam-negative-lr", ValueError, ["invalid lr: -0.001", "expected >= 0.0"],
        lambda w: lambda: optim.Adam(w.cnn.parameters(), lr=-1e-3)),
    bad("adam-beta1-equal-to-1", ValueError, ["beta1 (betas[0]): 1.0", "expected [0.0, 1.0)"],
        lambda w: lambda: optim.Adam(w.cnn.parameters(), betas=(1.0, 0.999))),
    bad("add-param-group-negative-lr", ValueError, ["invalid lr: -1", "expected >= 0.0"],
        lambda w: lambda: w.sgd.add_param_group({"params": [tb.randn(2, requires_grad=True)], "lr": -1})),
    bad("optimizer-load-state-wrong-shape", ValueError, ["state 'exp_avg' of parameter 1 has shape (2, 2)",
                                                         "expected (3,)"],
        lambda w: lambda: w.adam.load_state_dict(_adam_state_with_bad_shape(w))),
    bad("optimizer-load-state-wrong-group-count", ValueError, ["has 2 parameter groups", "expected 1"],
        lambda w: lambda: w.adam.load_state_dict(
            {"state": {}, "param_groups": w.adam.state_dict()["param_groups"] * 2})),
    bad("optimizer-step-with-grad-of-wrong-shape", ValueError, ["gradient of shape (5,)",
                                                                "parameter of shape (4,)"],
        _grad_of_wrong_shape),
    # ---- dropout, threads, containers
    bad("dropout-p-above-1", ValueError, ["between 0 and 1", "got 1.5"], lambda w: lambda: nn.Dropout(1.5)),
    bad("dropout-p-negative", ValueError, ["between 0 and 1", "got -0.1"], lambda w: lambda: nn.Dropout(-0.1)),
    bad("dropout-p-nan", ValueError, ["between 0 and 1", "got nan"], lambda w: lambda: nn.Dropout(nan)),
    bad("dropout-p-string", TypeError, ["must be a number", "got str '0.5'"], lambda w: lambda: nn.Dropout("0.5")),
    bad("functional-dropout-p-above-1", ValueError, ["between 0 and 1", "got 2.0"],
        lambda w: lambda: F.dropout(tb.randn(3), p=2.0)),
    bad("set-num-threads-0", ValueError, ["expects n >= 1", "got 0"], lambda w: lambda: tb.set_num_threads(0)),
    bad("set-num-threads-negative", ValueError, ["expects n >= 1", "got -3"],
        lambda w: lambda: tb.set_num_threads(-3)),
    bad("set-num-threads-float", TypeError, ["expects an int", "got float"],
        lambda w: lambda: tb.set_num_threads(2.0)),
    bad("sequential-of-a-string", TypeError, ["argument 1 is a str", "expected a Module"],
        lambda w: lambda: nn.Sequential(nn.ReLU(), "relu")),
    bad("train-mode-string", TypeError, ["expects a bool", "got str"], lambda w: lambda: w.mlp.train("no")),
]
# fmt: on


@pytest.mark.parametrize("exc, pieces, prepare", BAD_INPUTS)
def test_bad_input_raises_naming_expected_and_got_and_changes_nothing(tmp_path, exc, pieces, prepare):
    """The call raises exc, its message holds every piece, and no state moved."""
    assert len(pieces) >= 2, "a message must name what was expected and what came"
    world = World(tmp_path)
    call = prepare(world)
    before = snapshot(world)
    with pytest.raises(exc) as info:
        call()
    for piece in pieces:
        info.match(re.escape(piece))
    assert_same(snapshot(world), before)


def test_the_bad_input_table_is_large_and_ids_are_unique():
    """The hardening issue asks for at least 50 cases; duplicate ids would hide one."""
    ids = [p.id for p in BAD_INPUTS]
    assert len(ids) >= 50
    assert len(set(ids)) == len(ids)


# ---------------------------------------------------------------- odd layouts are accepted
def _strided(a):
    big = np.zeros((2 * a.shape[0],) + a.shape[1:], a.dtype)
    big[::2] = a
    return big[::2]


def _negative_strides(a):
    flip = (slice(None, None, -1),) * a.ndim
    return a[flip].copy()[flip]


def _read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def _unaligned(a):
    buf = np.zeros(a.nbytes + 1, np.uint8)
    out = np.frombuffer(buf.data, dtype=a.dtype, count=a.size, offset=1).reshape(a.shape)
    out[...] = a
    return out


# layout name -> (make the array, check it really has that layout)
LAYOUTS = {
    "strided": (_strided, lambda a: not a.flags.c_contiguous or a.ndim == 0),
    "fortran": (np.asfortranarray, lambda a: a.flags.f_contiguous),
    "negative-strides": (_negative_strides, lambda a: min(a.strides) < 0),
    "read-only": (_read_only, lambda a: not a.flags.writeable),
    "unaligned": (_unaligned, lambda a: not a.flags.aligned),
    "big-endian": (lambda a: a.astype(a.dtype.newbyteorder(">")), lambda a: a.dtype.byteorder == ">"),
}


def _bn_reference(x, momentum=0.1):
    """Algorithm 1 (and Algorithm 2's running-stat update) in float64, over axis 0."""
    x = x.astype(np.float64)
    mean, var = x.mean(0), x.var(0)
    y = (x - mean) / np.sqrt(var + 1e-5)
    m = x.shape[0]
    return y, momentum * mean, (1 - momentum) + momentum * var * m / (m - 1)


def _conv_reference(x, weight, bias, padding):
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    windows = sliding_window_view(xp, weight.shape[2:], axis=(2, 3))
    return np.einsum("nchwij,ocij->nohw", windows, weight.astype(np.float64)) + bias[None, :, None, None]


def _log_softmax_reference(z):
    z = z.astype(np.float64)
    m = z.max(1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(1, keepdims=True))


def use_in_tensor(odd):
    a = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    src = odd(a)
    t = tb.Tensor(src)
    assert t.dtype == np.float32 and t.numpy().flags.c_contiguous and t.numpy().flags.writeable
    np.testing.assert_array_equal(t.numpy(), a)
    t.numpy()[...] = -1  # the tensor owns a copy
    return src, a


def use_int_labels_in_tensor(odd):
    a = np.array([3, 0, 2, 1], np.int64)
    src = odd(a)
    t = tb.Tensor(src)
    assert t.dtype == np.int64 and t.numpy().flags.c_contiguous
    np.testing.assert_array_equal(t.numpy(), a)
    return src, a


def use_in_linear_forward(odd):
    x = np.random.default_rng(1).standard_normal((5, 3)).astype(np.float32)
    lin = nn.Linear(3, 4)
    src = odd(x)
    y = lin(tb.Tensor(src))
    expected = x.astype(np.float64) @ lin.weight.numpy().T.astype(np.float64) + lin.bias.numpy()
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-5, atol=1e-6)
    return src, x


def use_as_linear_weight(odd):
    weight = np.random.default_rng(2).standard_normal((4, 3)).astype(np.float32)
    lin = nn.Linear(3, 4)
    src = odd(weight)
    lin.weight = nn.Parameter(src)
    x = np.ones((2, 3), np.float32)
    y = lin(tb.Tensor(x))
    np.testing.assert_allclose(y.numpy(), x @ weight.astype(np.float64).T + lin.bias.numpy(), rtol=1e-5, atol=1e-6)
    y.sum().backward()
    optim.SGD(lin.parameters(), lr=0.5).step()  # updates the parameter's copy, not src
    return src, weight


def use_in_conv2d_forward(odd):
    x = np.random.default_rng(3).standard_normal((2, 2, 5, 5)).astype(np.float32)
    conv = nn.Conv2d(2, 3, 3, padding=1)
    src = odd(x)
    y = conv(tb.Tensor(src))
    expected = _conv_reference(x, conv.weight.numpy(), conv.bias.numpy(), 1)
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-5, atol=1e-5)
    return src, x


def use_in_batchnorm_forward(odd):
    x = (np.random.default_rng(4).standard_normal((6, 4)) * 3 + 2).astype(np.float32)
    bn = nn.BatchNorm1d(4)
    src = odd(x)
    y = bn(tb.Tensor(src))
    y_ref, mean_ref, var_ref = _bn_reference(x)
    np.testing.assert_allclose(y.numpy(), y_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.running_mean.numpy(), mean_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.running_var.numpy(), var_ref, rtol=1e-5, atol=1e-6)
    return src, x


def use_as_cross_entropy_labels(odd):
    logits = np.random.default_rng(5).standard_normal((4, 5)).astype(np.float32)
    labels = np.array([4, 0, 2, 2], np.int64)
    src = odd(labels)
    loss = F.cross_entropy(tb.Tensor(logits), src, reduction="none")
    expected = -_log_softmax_reference(logits)[np.arange(4), labels]
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5, atol=1e-6)
    return src, labels


def use_in_load_state_dict(odd):
    lin = nn.Linear(3, 4)
    weight = np.random.default_rng(6).standard_normal((4, 3)).astype(np.float32)
    src = odd(weight)
    lin.load_state_dict({"weight": src, "bias": np.zeros(4, np.float32)})
    np.testing.assert_array_equal(lin.weight.numpy(), weight)
    lin.weight.numpy()[...] += 1  # the module holds a copy
    return src, weight


def use_in_save_and_load(odd, folder):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    src = odd(a)
    tb.save({"a": src}, folder / "odd.npz")
    back = tb.load(folder / "odd.npz")["a"]
    np.testing.assert_array_equal(back, a)
    assert back.dtype.kind == "f" and back.dtype.itemsize == 4
    return src, a


CONSUMERS = {
    "Tensor": use_in_tensor,
    "Tensor-int-labels": use_int_labels_in_tensor,
    "Linear-forward": use_in_linear_forward,
    "Parameter-as-Linear-weight": use_as_linear_weight,
    "Conv2d-forward": use_in_conv2d_forward,
    "BatchNorm1d-forward": use_in_batchnorm_forward,
    "cross_entropy-labels": use_as_cross_entropy_labels,
    "load_state_dict": use_in_load_state_dict,
    "save-load": use_in_save_and_load,
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("consumer", CONSUMERS)
def test_odd_layout_arrays_are_copied_and_give_numpy_results(consumer, layout, tmp_path):
    """Any strides, order, alignment, byte order or writeability: same result, source untouched."""
    make, has_layout = LAYOUTS[layout]
    made = []

    def odd(a):
        arr = make(a)
        assert has_layout(arr), layout
        np.testing.assert_array_equal(arr, a)
        made.append((arr, arr.copy(), arr.flags.writeable))
        return arr

    use = CONSUMERS[consumer]
    src, original = use(odd, tmp_path) if consumer == "save-load" else use(odd)
    assert made and made[0][0] is src
    _, pristine, writeable = made[0]
    np.testing.assert_array_equal(src, pristine, strict=True)
    np.testing.assert_array_equal(src, original)
    assert src.flags.writeable == writeable


def test_int_array_loads_into_a_float_weight_as_torch_copy_does():
    """load_state_dict casts an int array into a float parameter (torch's copy_ does too)."""
    lin = nn.Linear(3, 2)
    weight = np.arange(6, dtype=np.int64).reshape(2, 3)
    lin.load_state_dict({"weight": weight, "bias": np.array([1, -1])})
    assert lin.weight.dtype == np.float32
    np.testing.assert_array_equal(lin.weight.numpy(), weight.astype(np.float32))
    np.testing.assert_array_equal(lin.bias.numpy(), [1.0, -1.0])


# ---------------------------------------------------------------- NaN and inf propagate
def _sigmoid_reference(x):
    return 1.0 / (1.0 + np.exp(-x))


# fmt: off
NONFINITE = [
    pytest.param(lambda t: t.exp(), np.exp, [[inf, -inf, nan, 0.0]], id="exp"),
    pytest.param(lambda t: t.log(), np.log, [[-1.0, 0.0, inf, nan, 1.0]], id="log"),
    pytest.param(lambda t: t.sqrt(), np.sqrt, [[-1.0, inf, nan, 4.0]], id="sqrt"),
    pytest.param(lambda t: t.relu(), lambda x: np.maximum(x, 0.0), [[nan, -inf, inf, -1.0]], id="relu"),
    pytest.param(lambda t: t.sigmoid(), _sigmoid_reference, [[nan, -inf, inf, 0.0]], id="sigmoid"),
    pytest.param(lambda t: t.tanh(), np.tanh, [[nan, -inf, inf, 0.5]], id="tanh"),
    pytest.param(lambda t: t.abs(), np.abs, [[nan, -inf, -2.0]], id="abs"),
    pytest.param(lambda t: t.clip(0.0, 1.0), lambda x: np.clip(x, 0.0, 1.0), [[nan, inf, -inf, 0.5]], id="clip"),
    pytest.param(lambda t: t ** 0.5, lambda x: x ** 0.5, [[-1.0, inf, nan]], id="pow-scalar"),
    pytest.param(lambda t: t.sum(1), lambda x: x.sum(1), [[1.0, nan, 2.0], [inf, -inf, 0.0], [inf, 1.0, 2.0]],
                 id="sum"),
    pytest.param(lambda t: t.mean(0), lambda x: x.mean(0), [[1.0, nan], [2.0, 3.0]], id="mean"),
    pytest.param(lambda t: t.max(1), lambda x: x.max(1), [[1.0, nan, 3.0], [nan, 1.0, 3.0], [-inf, 0.0, inf]],
                 id="max"),
    pytest.param(lambda t: t.min(1), lambda x: x.min(1), [[1.0, nan, 3.0], [-inf, 0.0, inf]], id="min"),
    pytest.param(lambda t: t.argmax(1), lambda x: x.argmax(1), [[1.0, nan, 3.0], [-inf, 0.0, inf]], id="argmax"),
    pytest.param(lambda t: t[0] + t[1], lambda x: x[0] + x[1], [[inf, nan, inf], [-inf, 1.0, 1.0]], id="add"),
    pytest.param(lambda t: t[0] * t[1], lambda x: x[0] * x[1], [[0.0, inf, nan], [inf, -2.0, 0.0]], id="mul"),
    pytest.param(lambda t: t[0] / t[1], lambda x: x[0] / x[1], [[1.0, -1.0, 0.0, inf], [0.0, 0.0, 0.0, inf]],
                 id="div"),
    pytest.param(lambda t: t[0].maximum(t[1]), lambda x: np.maximum(x[0], x[1]), [[nan, 1.0], [0.0, nan]],
                 id="maximum"),
    pytest.param(lambda t: t @ t.T, lambda x: x @ x.T, [[1.0, nan], [inf, 1.0], [0.0, 1.0]], id="matmul"),
]
# fmt: on


@pytest.mark.parametrize("op, reference, values", NONFINITE)
def test_nan_and_inf_propagate_like_numpy(op, reference, values):
    """NaN/inf in, the same NaN/inf positions and finite values out as numpy (float64)."""
    x = np.array(values, np.float32)
    with np.errstate(all="ignore"):
        expected = reference(x.astype(np.float64))
        got = op(tb.Tensor(x)).numpy()  # NOTE: inside errstate: the BLAS matmul is numpy's, which warns
    np.testing.assert_allclose(got, expected, rtol=1e-6)


@pytest.mark.parametrize("impl", ["fused", "composed"])
@pytest.mark.parametrize("bad_value", [nan, inf])
def test_non_finite_value_stays_in_its_channel_through_batch_norm(impl, bad_value):
    """A NaN/inf in channel 0 makes that channel (output, running stats, gradients) NaN,
    and the other channels match the float64 reference."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((6, 3)).astype(np.float32)
    x[2, 0] = bad_value
    grad_y = rng.standard_normal((6, 3)).astype(np.float32)
    bn = nn.BatchNorm1d(3, impl=impl)
    xt = tb.Tensor(x, requires_grad=True)
    y = bn(xt)
    (y * tb.Tensor(grad_y)).sum().backward()

    with np.errstate(invalid="ignore"):
        y_ref, mean_ref, var_ref = _bn_reference(x)
    m = x.shape[0]
    x_hat = y_ref
    with np.errstate(invalid="ignore"):
        inv_std = 1 / np.sqrt(x.astype(np.float64).var(0) + 1e-5)
        grad_x_ref = inv_std / m * (m * grad_y - grad_y.sum(0) - x_hat * (grad_y * x_hat).sum(0))
    for got, ref in ((y.numpy(), y_ref), (bn.running_mean.numpy(), mean_ref), (bn.running_var.numpy(), var_ref),
                     (xt.grad.numpy(), grad_x_ref), (bn.weight.grad.numpy(), (grad_y * x_hat).sum(0)),
                     (bn.bias.grad.numpy(), grad_y.sum(0))):
        assert np.isfinite(got[..., 1:]).all()
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)  # NaN/inf positions included
    assert np.isnan(y.numpy()[:, 0]).all()


def test_nan_in_eval_batch_norm_stays_in_its_element():
    """In eval mode BN is one affine map per channel: a NaN stays where it is."""
    bn = nn.BatchNorm1d(3).eval()
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    x[1, 2] = nan
    y = bn(tb.Tensor(x)).numpy()
    expected = x / np.sqrt(1 + 1e-5)
    np.testing.assert_allclose(y, expected, rtol=1e-6)


# a row of logits, its label, and what numpy's log-softmax makes of it
CE_ROWS = [
    pytest.param([1.0, nan, 0.0], 0, id="nan-logit"),
    pytest.param([1.0, inf, 0.0], 0, id="inf-logit-elsewhere"),
    pytest.param([1.0, inf, 0.0], 1, id="inf-logit-at-label"),
    pytest.param([1.0, -inf, 0.0], 0, id="minus-inf-logit-elsewhere-is-finite"),
    pytest.param([1.0, -inf, 0.0], 1, id="minus-inf-logit-at-label-is-inf"),
]


@pytest.mark.parametrize("row, label", CE_ROWS)
def test_non_finite_logit_stays_in_its_row_through_cross_entropy(row, label):
    """The fused cross-entropy gives numpy's log-softmax loss for the odd row; the
    finite rows, their loss and their gradient are untouched."""
    logits = np.array([row, [0.5, 2.0, -1.0], [3.0, 0.0, 1.0]], np.float32)
    labels = np.array([label, 1, 2])
    xt = tb.Tensor(logits, requires_grad=True)
    loss = F.cross_entropy(xt, labels, reduction="none")
    loss.sum().backward()
    with np.errstate(all="ignore"):
        log_p = _log_softmax_reference(logits)
    expected = -log_p[np.arange(3), labels]
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-6)
    onehot = np.eye(3)[labels]
    np.testing.assert_allclose(xt.grad.numpy()[1:], (np.exp(log_p) - onehot)[1:], rtol=1e-5, atol=1e-6)
    mean = F.cross_entropy(tb.Tensor(logits), labels).numpy()
    np.testing.assert_allclose(mean, expected.mean(), rtol=1e-6)


def test_nan_pixel_reaches_only_the_windows_that_cover_it():
    """conv2d, max_pool2d and avg_pool2d with one NaN and one inf pixel: numpy's answer."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((1, 2, 6, 6)).astype(np.float32)
    x[0, 0, 0, 0] = nan
    x[0, 1, 5, 5] = inf
    weight = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    bias = np.zeros(3, np.float32)
    with np.errstate(invalid="ignore"):
        conv_ref = _conv_reference(x, weight, bias, 0)
        windows = sliding_window_view(x.astype(np.float64), (2, 2), axis=(2, 3))[:, :, ::2, ::2]
    y = F.conv2d(tb.Tensor(x), tb.Tensor(weight)).numpy()
    assert np.isnan(y[0, :, 0, 0]).all() and np.isfinite(y[0, :, 1:, 1:3]).all()
    np.testing.assert_allclose(y, conv_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(F.max_pool2d(tb.Tensor(x), 2).numpy(), windows.max((-1, -2)))
    np.testing.assert_allclose(F.avg_pool2d(tb.Tensor(x), 2).numpy(), windows.mean((-1, -2)), rtol=1e-6)


# ---------------------------------------------------------------- empty batches are accepted
def test_linear_on_an_empty_batch_returns_an_empty_batch():
    """torch: Linear on (0, in) gives (0, out), and its weight gradient is zero."""
    lin = nn.Linear(3, 4)
    x = tb.zeros(0, 3, requires_grad=True)
    y = lin(x)
    assert y.shape == (0, 4)
    y.sum().backward()
    np.testing.assert_array_equal(lin.weight.grad.numpy(), np.zeros((4, 3)))
    np.testing.assert_array_equal(lin.bias.grad.numpy(), np.zeros(4))
    assert x.grad.shape == (0, 3)


@pytest.mark.parametrize("impl", ["fused", "composed"])
@pytest.mark.parametrize("module, shape", [(nn.BatchNorm1d, (0, 3)), (nn.BatchNorm1d, (0, 3, 5)),
                                           (nn.BatchNorm2d, (0, 3, 2, 2)), (nn.BatchNorm2d, (2, 3, 0, 4))])
def test_batch_norm_in_eval_on_an_empty_batch_returns_it_empty(module, shape, impl):
    """Eval mode uses the running statistics, so no values are needed (torch agrees)."""
    bn = module(3, impl=impl).eval()
    y = bn(tb.zeros(shape))
    assert y.shape == shape
    assert int(bn.num_batches_tracked.numpy()) == 0


def test_conv_and_pooling_on_an_empty_batch():
    """N = 0 passes through conv2d and pooling with the output's spatial size."""
    x = tb.zeros(0, 2, 5, 5)
    assert nn.Conv2d(2, 3, 3, padding=1)(x).shape == (0, 3, 5, 5)
    assert F.max_pool2d(x, 2).shape == (0, 2, 2, 2)
    assert F.avg_pool2d(x, 2).shape == (0, 2, 2, 2)


def test_cross_entropy_over_zero_rows_follows_torch():
    """sum is 0, none is empty, mean is nan (0/0, as torch), and backward works."""
    logits = tb.zeros(0, 4, requires_grad=True)
    labels = np.array([], np.int64)
    assert F.cross_entropy(logits, labels, reduction="none").shape == (0,)
    assert np.isnan(F.cross_entropy(logits, labels).item())
    total = F.cross_entropy(logits, labels, reduction="sum")
    assert total.item() == 0.0
    total.backward()
    assert logits.grad.shape == (0, 4)


def test_empty_reductions_and_huge_empty_shapes():
    """Sum of nothing is 0, mean is nan (numpy); a 0-element shape may have huge sizes."""
    assert tb.zeros(0, 3).sum().item() == 0.0
    np.testing.assert_array_equal(tb.zeros(0, 3).sum(0).numpy(), np.zeros(3))
    assert np.isnan(tb.zeros(0, 3).mean().item())
    wide = tb.zeros(0, HUGE)
    assert wide.shape == (0, HUGE) and wide.sum(1).shape == (0,)
    assert wide.reshape(HUGE, 0).shape == (HUGE, 0)
