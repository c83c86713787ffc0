"""Convolution and pooling: F.conv2d, F.conv1d, F.max_pool2d, F.max_pool1d, F.avg_pool2d
and their modules.

Forward against a direct float64 numpy reference (a loop over kernel taps, no
im2col), first and second derivatives against finite differences over drawn
shapes, strides, paddings and dilations, and everything against torch where it
is installed. Sizes stay tiny (N <= 2, C <= 3, H, W <= 7, kernels <= 3): a
gradcheck costs two forward passes per input element.
"""
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import tinygrad_bn as tb
from tinygrad_bn import nn
from tinygrad_bn.nn import functional as F
from tinygrad_bn.testing import assert_allclose, gradcheck, gradgradcheck


def import_torch():
    """torch, or skip. Single-threaded: on a busy 2-core machine its OpenMP pool costs
    ~60 ms a call on these tiny tensors, against ~0.1 ms on one thread."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    return torch


# ---------------------------------------------------------------- numpy references
def out_size(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def taps(xp, i, j, stride, dilation, oh, ow):
    """The (N, C, OH, OW) slice of padded input xp that kernel tap (i, j) multiplies."""
    (sh, sw), (dh, dw) = stride, dilation
    return xp[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw]


def conv2d_ref(x, w, b, stride, padding, dilation):
    """y[n, o, oh, ow] = b[o] + sum_{c,i,j} xpad[n, c, oh*sh + i*dh, ow*sw + j*dw] * w[o, c, i, j]."""
    (ph, pw) = padding
    _, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    oh = out_size(x.shape[2], kh, stride[0], ph, dilation[0])
    ow = out_size(x.shape[3], kw, stride[1], pw, dilation[1])
    y = np.zeros((x.shape[0], w.shape[0], oh, ow))
    for i in range(kh):
        for j in range(kw):
            y += np.einsum("nchw,oc->nohw", taps(xp, i, j, stride, dilation, oh, ow), w[:, :, i, j])
    return y if b is None else y + b[None, :, None, None]


def max_pool2d_ref(x, kernel, stride, padding, dilation):
    """Max over each window; padding is -inf."""
    (kh, kw), (ph, pw) = kernel, padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf)
    oh = out_size(x.shape[2], kh, stride[0], ph, dilation[0])
    ow = out_size(x.shape[3], kw, stride[1], pw, dilation[1])
    y = np.full(x.shape[:2] + (oh, ow), -np.inf)
    for i in range(kh):
        for j in range(kw):
            y = np.maximum(y, taps(xp, i, j, stride, dilation, oh, ow))
    return y


def avg_pool2d_ref(x, kernel, stride, padding, count_include_pad):
    """Mean over each window; the divisor counts padding only if count_include_pad."""
    (kh, kw), (ph, pw) = kernel, padding
    pad = ((0, 0), (0, 0), (ph, ph), (pw, pw))
    xp, inside = np.pad(x, pad), np.pad(np.ones_like(x), pad)
    oh = out_size(x.shape[2], kh, stride[0], ph, 1)
    ow = out_size(x.shape[3], kw, stride[1], pw, 1)
    total = np.zeros(x.shape[:2] + (oh, ow))
    count = np.zeros_like(total)
    for i in range(kh):
        for j in range(kw):
            total += taps(xp, i, j, stride, (1, 1), oh, ow)
            count += taps(inside, i, j, stride, (1, 1), oh, ow)
    return total / (kh * kw if count_include_pad else count)


def as_1d(ref):
    """A 1-D reference from a 2-D one: (N, C, L) is (N, C, 1, L) with a (1, k) kernel."""
    return lambda x, *args: ref(x[:, :, None, :], *args)[:, :, 0, :]


# ---------------------------------------------------------------- strategies
def param(draw, lo, hi, pair):
    """An int, or (when pair) an (h, w) tuple; returned as (value to pass, (h, w))."""
    if pair and draw(st.booleans()):
        v = (draw(st.integers(lo, hi)), draw(st.integers(lo, hi)))
        return v, v
    v = draw(st.integers(lo, hi))
    return v, (v, v)


@st.composite
def geometry(draw, nd=2, max_side=7, max_kernel=3, max_stride=3, max_dilation=2, pool=False):
    """Kernel, stride, padding, dilation and spatial size such that the (dilated) kernel fits
    the padded input. Pools keep padding <= kernel // 2 (torch's rule). Values are (h, w)
    pairs, with h = 1 for nd = 1."""
    if nd == 2:
        k = (draw(st.integers(1, max_kernel)), draw(st.integers(1, max_kernel)))
        s = (draw(st.integers(1, max_stride)), draw(st.integers(1, max_stride)))
        d = (draw(st.integers(1, max_dilation)), draw(st.integers(1, max_dilation)))
    else:
        k = (1, draw(st.integers(1, max_kernel)))
        s = (1, draw(st.integers(1, max_stride)))
        d = (1, draw(st.integers(1, max_dilation)))
    p = tuple(draw(st.integers(0, ki // 2 if pool else 2)) for ki in k)
    if nd == 1:
        p = (0, p[1])
    size = [draw(st.integers(max(1, di * (ki - 1) + 1 - 2 * pi), max_side)) for ki, pi, di in zip(k, p, d)]
    if nd == 1:
        size[0] = 1
    return dict(kernel=k, stride=s, padding=p, dilation=d, spatial=tuple(size))


def arg(draw, v, nd):
    """How to pass an (h, w) value: an int when both agree (sometimes), a pair, or for nd = 1 an int."""
    if nd == 1:
        return v[1]
    return v[0] if v[0] == v[1] and draw(st.booleans()) else v


@st.composite
def conv_cases(draw, nd=2, max_batch=2, max_channels=3, max_side=7, max_kernel=3):
    """(x, w, b, kwargs, ref_kwargs) in float64 with an nd-D layout."""
    g = draw(geometry(nd, max_side, max_kernel))
    n, c, o = draw(st.integers(1, max_batch)), draw(st.integers(1, max_channels)), draw(st.integers(1, max_channels))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    spatial = g["spatial"] if nd == 2 else (g["spatial"][1],)
    kernel = g["kernel"] if nd == 2 else (g["kernel"][1],)
    x = rng.standard_normal((n, c) + spatial)
    w = rng.standard_normal((o, c) + kernel)
    b = rng.standard_normal(o) if draw(st.booleans()) else None
    kwargs = {name: arg(draw, g[name], nd) for name in ("stride", "padding", "dilation")}
    ref_kwargs = {name: g[name] for name in ("stride", "padding", "dilation")}
    return x, w, b, kwargs, ref_kwargs


@st.composite
def pool_cases(draw, nd=2, max_pool=True, max_batch=2, max_channels=3, max_side=7):
    """(x, kwargs, ref_kwargs) in float64. x holds distinct values at least 0.1 apart, so the
    max of a window is unique and finite differences (eps 1e-6) never change it."""
    g = draw(geometry(nd, max_side, pool=True, max_dilation=2 if max_pool else 1))
    n, c = draw(st.integers(1, max_batch)), draw(st.integers(1, max_channels))
    spatial = g["spatial"] if nd == 2 else (g["spatial"][1],)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = (n, c) + spatial
    x = (rng.permutation(math.prod(shape)) * 0.1 - 1.0).reshape(shape)
    kwargs = {"kernel_size": arg(draw, g["kernel"], nd)}
    if draw(st.booleans()):
        kwargs["stride"] = arg(draw, g["stride"], nd)
    stride = g["stride"] if "stride" in kwargs else g["kernel"]
    ref_kwargs = dict(kernel=g["kernel"], stride=stride, padding=g["padding"])
    if draw(st.booleans()) or g["padding"] != (0, 0):
        kwargs["padding"] = arg(draw, g["padding"], nd)
    if max_pool:
        ref_kwargs["dilation"] = g["dilation"]
        # a dilated window can hold only padding (y = -inf; torch aborts on it): tested apart
        assume(np.isfinite(max_pool2d_ref(x if nd == 2 else x[:, :, None, :], **ref_kwargs)).all())
        if g["dilation"] != (1, 1) or draw(st.booleans()):
            kwargs["dilation"] = arg(draw, g["dilation"], nd)
    else:
        ref_kwargs["count_include_pad"] = kwargs["count_include_pad"] = draw(st.booleans())
    return x, kwargs, ref_kwargs


def T(a, requires_grad=True):
    return None if a is None else tb.Tensor(a, requires_grad=requires_grad)


def conv_inputs(x, w, b):
    return [t for t in (T(x), T(w), T(b)) if t is not None]


# ---------------------------------------------------------------- conv forward and gradients
@given(conv_cases(nd=2))
def test_conv2d_matches_numpy(case):
    x, w, b, kw, rkw = case
    y = F.conv2d(T(x, False), T(w, False), T(b, False), **kw)
    assert_allclose(y, conv2d_ref(x, w, b, **rkw), rtol=1e-10, atol=1e-12)


@given(conv_cases(nd=1))
def test_conv1d_matches_numpy(case):
    x, w, b, kw, rkw = case
    y = F.conv1d(T(x, False), T(w, False), T(b, False), **kw)
    assert_allclose(y, as_1d(conv2d_ref)(x, w[:, :, None, :], b, *rkw.values()), rtol=1e-10, atol=1e-12)


@given(conv_cases(nd=2))
def test_conv2d_float32_matches_float64_reference(case):
    x, w, b, kw, rkw = case
    x32, w32 = x.astype(np.float32), w.astype(np.float32)
    b32 = None if b is None else b.astype(np.float32)
    y = F.conv2d(T(x32, False), T(w32, False), T(b32, False), **kw)
    assert y.dtype == np.float32
    b64 = None if b is None else b32.astype(np.float64)
    ref = conv2d_ref(x32.astype(np.float64), w32.astype(np.float64), b64, **rkw)
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-4, atol=1e-5)


@given(conv_cases(nd=2, max_side=5))
def test_conv2d_gradcheck(case):
    x, w, b, kw, _ = case
    gradcheck(lambda *a: F.conv2d(*a, **kw), conv_inputs(x, w, b))


@given(conv_cases(nd=1))
def test_conv1d_gradcheck(case):
    x, w, b, kw, _ = case
    gradcheck(lambda *a: F.conv1d(*a, **kw), conv_inputs(x, w, b))


@settings(max_examples=8)
@given(conv_cases(nd=2, max_batch=1, max_channels=2, max_side=4, max_kernel=2))
def test_conv2d_gradgradcheck(case):
    x, w, b, kw, _ = case
    gradgradcheck(lambda *a: F.conv2d(*a, **kw), conv_inputs(x, w, b))


@settings(max_examples=8)
@given(conv_cases(nd=1, max_channels=2, max_side=5))
def test_conv1d_gradgradcheck(case):
    x, w, b, kw, _ = case
    gradgradcheck(lambda *a: F.conv1d(*a, **kw), conv_inputs(x, w, b))


def test_conv2d_third_derivative_through_backward_of_backward():
    # d/dx of d/dw <v, conv(x, w)> is linear in v: a third-order check via gradgradcheck of
    # the weight gradient as a function of x.
    rng = np.random.default_rng(0)
    w = T(rng.standard_normal((2, 1, 2, 2)))
    v = tb.Tensor(rng.standard_normal((1, 2, 3, 3)))

    def grad_w(x, w_):
        (gw,) = tb.grad(F.conv2d(x * x, w_, padding=1), [w_], grad_outputs=v, create_graph=True)
        return gw

    gradgradcheck(grad_w, [T(rng.standard_normal((1, 1, 2, 2))), w])


# ---------------------------------------------------------------- pooling forward and gradients
@given(pool_cases(nd=2))
def test_max_pool2d_matches_numpy(case):
    x, kw, rkw = case
    assert_allclose(F.max_pool2d(T(x, False), **kw), max_pool2d_ref(x, **rkw), rtol=0, atol=0)


@given(pool_cases(nd=1))
def test_max_pool1d_matches_numpy(case):
    x, kw, rkw = case
    assert_allclose(F.max_pool1d(T(x, False), **kw), as_1d(max_pool2d_ref)(x, *rkw.values()), rtol=0, atol=0)


@given(pool_cases(nd=2, max_pool=False))
def test_avg_pool2d_matches_numpy(case):
    x, kw, rkw = case
    assert_allclose(F.avg_pool2d(T(x, False), **kw), avg_pool2d_ref(x, **rkw), rtol=1e-12, atol=1e-14)


@given(pool_cases(nd=2))
def test_max_pool2d_gradcheck(case):
    x, kw, _ = case
    gradcheck(lambda a: F.max_pool2d(a, **kw), [T(x)])


@given(pool_cases(nd=1))
def test_max_pool1d_gradcheck(case):
    x, kw, _ = case
    gradcheck(lambda a: F.max_pool1d(a, **kw), [T(x)])


@given(pool_cases(nd=2, max_pool=False))
def test_avg_pool2d_gradcheck(case):
    x, kw, _ = case
    gradcheck(lambda a: F.avg_pool2d(a, **kw), [T(x)])


@settings(max_examples=8)
@given(pool_cases(nd=2, max_batch=1, max_channels=2, max_side=5))
def test_max_pool2d_gradgradcheck(case):
    x, kw, _ = case
    gradgradcheck(lambda a: F.max_pool2d(a, **kw), [T(x)])


@settings(max_examples=8)
@given(pool_cases(nd=2, max_pool=False, max_batch=1, max_channels=2, max_side=5))
def test_avg_pool2d_gradgradcheck(case):
    x, kw, _ = case
    gradgradcheck(lambda a: F.avg_pool2d(a, **kw), [T(x)])


def test_max_pool_gradient_goes_to_the_first_maximum_on_ties():
    x = T(np.array([[[[1.0, 1.0], [1.0, 0.0]]]]))
    F.max_pool2d(x, 2).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[[[1.0, 0.0], [0.0, 0.0]]]])


def test_max_pool_overlapping_windows_accumulate_gradient():
    # 2x2 windows at stride 1: the top two both pick the 5; the bottom two are all zeros
    # and pick their first element
    x = T(np.array([[[[0.0, 5.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]]]))
    F.max_pool2d(x, 2, stride=1).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy()[0, 0], [[0, 2, 0], [1, 1, 0], [0, 0, 0]])


def test_max_pool_window_of_only_padding_gives_minus_inf_and_no_gradient():
    # kernel 2, dilation 2, padding 1 over L = 1: the taps sit at -1 and 1, both padding
    x = T(np.array([[[3.0]]]))
    y = F.max_pool1d(x, 2, padding=1, dilation=2)
    assert y.shape == (1, 1, 1) and y.numpy()[0, 0, 0] == -np.inf
    y.backward(tb.Tensor(np.ones((1, 1, 1))))
    np.testing.assert_array_equal(x.grad.numpy(), [[[0.0]]])


@pytest.mark.parametrize("count_include_pad, expected", [(True, 4 / 9), (False, 1.0)])
def test_avg_pool_count_include_pad_at_the_corner(count_include_pad, expected):
    y = F.avg_pool2d(tb.Tensor(np.ones((1, 1, 3, 3))), 3, stride=1, padding=1, count_include_pad=count_include_pad)
    assert y.numpy()[0, 0, 0, 0] == pytest.approx(expected)


@pytest.mark.parametrize("x_dtype, w_dtype", [(np.float32, np.float64), (np.float64, np.float32)])
def test_conv2d_with_mixed_dtypes_promotes_to_float64(x_dtype, w_dtype):
    # DESIGN.md: mixed float32/float64 operands promote to float64
    x = tb.Tensor(np.ones((1, 1, 3, 3), dtype=x_dtype))
    w = tb.Tensor(np.full((1, 1, 2, 2), 0.1, dtype=w_dtype), requires_grad=True)
    y = F.conv2d(x, w)
    assert y.dtype == np.float64
    y.sum().backward()
    assert w.grad.dtype == w_dtype


# ---------------------------------------------------------------- against torch
def _conv_vs_torch(nd, case):
    """Forward values and all input gradients of our conv{nd}d against torch's, in float64."""
    torch = import_torch()
    x, w, b, kw, rkw = case
    ours = conv_inputs(x, w, b)
    theirs = [torch.tensor(t.numpy(), requires_grad=True) for t in ours]
    y = getattr(F, f"conv{nd}d")(*ours, **kw)
    yt = getattr(torch.nn.functional, f"conv{nd}d")(*theirs, **(rkw if nd == 2 else kw))
    g = np.random.default_rng(0).standard_normal(y.shape)
    y.backward(tb.Tensor(g))
    yt.backward(torch.tensor(g))
    np.testing.assert_allclose(y.numpy(), yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    for a, t in zip(ours, theirs):
        np.testing.assert_allclose(a.grad.numpy(), t.grad.numpy(), rtol=1e-10, atol=1e-12)


@given(conv_cases(nd=2))
def test_conv2d_matches_torch_forward_and_backward(case):
    _conv_vs_torch(2, case)


@given(conv_cases(nd=1))
def test_conv1d_matches_torch_forward_and_backward(case):
    _conv_vs_torch(1, case)


def _pool_vs_torch(ours_fn, torch_fn, x, kw):
    torch = import_torch()
    xs, xt = T(x), torch.tensor(x, requires_grad=True)
    y, yt = ours_fn(xs, **kw), torch_fn(xt, **kw)
    g = np.random.default_rng(0).standard_normal(y.shape)
    y.backward(tb.Tensor(g))
    yt.backward(torch.tensor(g))
    np.testing.assert_allclose(y.numpy(), yt.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(xs.grad.numpy(), xt.grad.numpy(), rtol=1e-12, atol=1e-14)


@given(pool_cases(nd=2))
def test_max_pool2d_matches_torch(case):
    torch = import_torch()
    x, kw, _ = case
    _pool_vs_torch(F.max_pool2d, torch.nn.functional.max_pool2d, x, kw)


@given(pool_cases(nd=1))
def test_max_pool1d_matches_torch(case):
    torch = import_torch()
    x, kw, _ = case
    _pool_vs_torch(F.max_pool1d, torch.nn.functional.max_pool1d, x, kw)


@given(pool_cases(nd=2, max_pool=False))
def test_avg_pool2d_matches_torch(case):
    torch = import_torch()
    x, kw, _ = case
    _pool_vs_torch(F.avg_pool2d, torch.nn.functional.avg_pool2d, x, kw)


@given(pool_cases(nd=2), st.integers(0, 2**32 - 1))
def test_max_pool2d_with_ties_matches_torch(case, seed):
    # a few distinct integer values: many windows hold tied maxima
    torch = import_torch()
    x, kw, _ = case
    x = np.random.default_rng(seed).integers(0, 3, x.shape).astype(np.float64)
    _pool_vs_torch(F.max_pool2d, torch.nn.functional.max_pool2d, x, kw)


# ---------------------------------------------------------------- modules
def test_conv2d_module_shapes_and_default_init():
    tb.manual_seed(0)
    conv = nn.Conv2d(3, 64, 3)
    assert conv.weight.shape == (64, 3, 3, 3) and conv.bias.shape == (64,)
    assert conv.weight.dtype == np.float32
    bound = 1 / math.sqrt(3 * 3 * 3)  # kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)), as torch
    for p in (conv.weight, conv.bias):
        assert np.abs(p.numpy()).max() <= bound * (1 + 1e-6)
    assert np.abs(conv.weight.numpy()).max() > 0.98 * bound
    assert np.abs(conv.bias.numpy()).max() > 0.8 * bound
    assert conv.weight.numpy().std() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    assert [n for n, _ in conv.named_parameters()] == ["weight", "bias"]


def test_conv2d_module_rectangular_kernel_stride_padding_and_no_bias():
    conv = nn.Conv2d(2, 4, (2, 3), stride=2, padding=1, bias=False)
    assert conv.weight.shape == (4, 2, 2, 3) and conv.bias is None
    assert [n for n, _ in conv.named_parameters()] == ["weight"]
    y = conv(tb.randn(3, 2, 7, 6))
    assert y.shape == (3, 4, out_size(7, 2, 2, 1, 1), out_size(6, 3, 2, 1, 1))


def test_conv1d_module_shapes_and_default_init():
    tb.manual_seed(0)
    conv = nn.Conv1d(4, 32, 5, stride=2, padding=2)
    assert conv.weight.shape == (32, 4, 5) and conv.bias.shape == (32,)
    bound = 1 / math.sqrt(4 * 5)
    assert np.abs(conv.weight.numpy()).max() <= bound * (1 + 1e-6)
    assert np.abs(conv.weight.numpy()).max() > 0.98 * bound
    assert conv(tb.randn(2, 4, 9)).shape == (2, 32, out_size(9, 5, 2, 2, 1))


def test_conv_modules_compute_the_functional():
    conv = nn.Conv2d(2, 3, 3, stride=(1, 2), padding=1, dilation=(2, 1), dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((2, 2, 6, 5))
    ref = conv2d_ref(x, conv.weight.numpy(), conv.bias.numpy(), (1, 2), (1, 1), (2, 1))
    assert_allclose(conv(tb.Tensor(x)), ref, rtol=1e-10, atol=1e-12)


def test_conv2d_module_matches_torch_with_loaded_weights():
    torch = import_torch()
    theirs = torch.nn.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2)).double()
    ours = nn.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), dtype=np.float64)
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    x = np.random.default_rng(1).standard_normal((2, 3, 7, 6))
    np.testing.assert_allclose(ours(tb.Tensor(x)).numpy(), theirs(torch.tensor(x)).detach().numpy(),
                               rtol=1e-10, atol=1e-12)


def test_pool_modules_default_stride_is_the_kernel():
    x = tb.Tensor(np.arange(32.0).reshape(1, 2, 4, 4))
    y = nn.MaxPool2d(2)(x)
    assert y.shape == (1, 2, 2, 2)
    np.testing.assert_array_equal(y.numpy()[0, 0], [[5, 7], [13, 15]])
    a = nn.AvgPool2d(2)(x)
    np.testing.assert_array_equal(a.numpy()[0, 0], [[2.5, 4.5], [10.5, 12.5]])
    assert nn.AvgPool2d(3, stride=1, padding=1)(x).shape == (1, 2, 4, 4)
    assert nn.MaxPool2d(3, stride=2, padding=1)(x).shape == (1, 2, 2, 2)
    assert nn.MaxPool1d(2)(tb.randn(2, 3, 7)).shape == (2, 3, 3)
    assert list(nn.MaxPool2d(2).parameters()) == []


def test_small_cnn_trains_end_to_end_shapes():
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(4, 8, 3), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(8, 3))
    out = net(tb.randn(2, 1, 8, 8))
    assert out.shape == (2, 3)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in net.parameters())


# ---------------------------------------------------------------- errors
def test_conv2d_channel_mismatch_names_expected_and_got():
    with pytest.raises(ValueError, match=r"4 channels.*3 channels|3 channels.*4 channels"):
        F.conv2d(tb.randn(1, 3, 5, 5), tb.randn(2, 4, 3, 3))
    with pytest.raises(ValueError, match=r"(?s)2.*\(1, 3, 5, 5\)"):
        nn.Conv2d(2, 8, 3)(tb.randn(1, 3, 5, 5))


def test_conv1d_channel_mismatch_names_expected_and_got():
    with pytest.raises(ValueError, match=r"(?s)2 channels.*3 channels"):
        nn.Conv1d(2, 8, 3)(tb.randn(1, 3, 5))


def test_conv_kernel_larger_than_padded_input_is_a_value_error():
    with pytest.raises(ValueError, match=r"(?s)3.*2"):
        F.conv2d(tb.randn(1, 1, 2, 2), tb.randn(1, 1, 3, 3))
    with pytest.raises(ValueError, match="dilat"):
        F.conv2d(tb.randn(1, 1, 4, 4), tb.randn(1, 1, 3, 3), dilation=2)
    F.conv2d(tb.randn(1, 1, 2, 2), tb.randn(1, 1, 3, 3), padding=1)  # fits once padded
    with pytest.raises(ValueError):
        F.conv1d(tb.randn(1, 1, 2), tb.randn(1, 1, 4))


@pytest.mark.parametrize("call, expected, got", [
    (lambda: F.conv2d(tb.randn(1, 3, 5), tb.randn(2, 3, 3, 3)), "4-D", r"\(1, 3, 5\)"),
    (lambda: nn.Conv2d(3, 2, 3)(tb.randn(3, 5, 5)), "4-D", r"\(3, 5, 5\)"),
    (lambda: F.conv2d(tb.randn(1, 3, 5, 5), tb.randn(2, 3, 3)), "4-D", r"\(2, 3, 3\)"),
    (lambda: F.conv1d(tb.randn(1, 3, 5, 5), tb.randn(2, 3, 3)), "3-D", r"\(1, 3, 5, 5\)"),
    (lambda: nn.Conv1d(3, 2, 3)(tb.randn(3, 5)), "3-D", r"\(3, 5\)"),
    (lambda: F.max_pool2d(tb.randn(3, 5, 5), 2), "4-D", r"\(3, 5, 5\)"),
    (lambda: nn.MaxPool2d(2)(tb.randn(1, 1, 1, 5, 5)), "4-D", r"\(1, 1, 1, 5, 5\)"),
    (lambda: F.avg_pool2d(tb.randn(5, 5), 2), "4-D", r"\(5, 5\)"),
    (lambda: F.max_pool1d(tb.randn(1, 2, 5, 5), 2), "3-D", r"\(1, 2, 5, 5\)"),
])
def test_wrong_rank_is_a_value_error_naming_expected_and_got(call, expected, got):
    with pytest.raises(ValueError, match=rf"(?s){expected}.*{got}"):
        call()


def test_pool_window_larger_than_input_is_a_value_error():
    with pytest.raises(ValueError, match=r"(?s)3.*2"):
        F.max_pool2d(tb.randn(1, 1, 2, 2), 3)
    with pytest.raises(ValueError):
        F.avg_pool2d(tb.randn(1, 1, 2, 5), 3)
    with pytest.raises(ValueError):
        F.max_pool1d(tb.randn(1, 1, 2), 3)


def test_pool_padding_over_half_the_kernel_is_a_value_error():
    with pytest.raises(ValueError, match="padding"):
        F.max_pool2d(tb.randn(1, 1, 5, 5), 2, padding=2)
    with pytest.raises(ValueError, match="padding"):
        F.avg_pool2d(tb.randn(1, 1, 5, 5), 3, padding=2)


@pytest.mark.parametrize("kwargs", [dict(stride=0), dict(padding=-1), dict(dilation=0)])
def test_bad_conv_parameters_are_value_errors(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        F.conv2d(tb.randn(1, 1, 5, 5), tb.randn(1, 1, 3, 3), **kwargs)


@pytest.mark.parametrize("args", [(0, 2, 3), (2, 0, 3), (2, 2, 0), (2, 2, (3, 3, 3))])
def test_bad_conv_module_arguments_are_value_errors(args):
    with pytest.raises(ValueError):
        nn.Conv2d(*args)


# ---------------------------------------------------------------- determinism
def test_conv_and_pool_independent_of_thread_count():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 4, 24, 24)).astype(np.float32)
    w = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    g = rng.standard_normal((8, 8, 12, 12)).astype(np.float32)

    def run():
        xs, ws = T(x), T(w)
        y = F.max_pool2d(F.conv2d(xs, ws, padding=1), 2) + F.avg_pool2d(xs, 2).sum(axis=1, keepdims=True)
        y.backward(tb.Tensor(g))
        return y.numpy().copy(), xs.grad.numpy().copy(), ws.grad.numpy().copy()

    saved = tb.get_num_threads()
    try:
        tb.set_num_threads(1)
        one = run()
        tb.set_num_threads(max(2, saved))
        many = run()
    finally:
        tb.set_num_threads(saved)
    for a, b in zip(one, many):
        np.testing.assert_array_equal(a, b)
