"""Convolution and pooling kernels (array level): im2col/col2im, conv2d/conv1d forward and
backward, max/avg pooling; against direct float64 references, finite differences, adjoint
identities, thread-count independence and (when installed) PyTorch."""
import numpy as np
import pytest
from hypothesis import example, given, strategies as st

from tinygrad_bn import conv_kernels as ck
from tinygrad_bn import threads
from tinygrad_bn._C import conv as cconv
from tinygrad_bn._C import pool as cpool

DTYPES = (np.float32, np.float64)


# ---------------------------------------------------------------------------------------
# references: direct float64 loops over the padded input, no im2col

def out_size(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def window(xp, i, j, stride, dilation, OH, OW):
    """xp[..., oh*sh + i*dh, ow*sw + j*dw] for all (oh, ow): one kernel tap of every window."""
    (sh, sw), (dh, dw) = stride, dilation
    return xp[..., i * dh: i * dh + sh * (OH - 1) + 1: sh, j * dw: j * dw + sw * (OW - 1) + 1: sw]


def conv2d_reference(x, w, b, stride, padding, dilation):
    """y[n, o, oh, ow] = b[o] + sum_{c, i, j} w[o, c, i, j] * x_pad[n, c, oh*sh + i*dh, ow*sw + j*dw]"""
    x, w = x.astype(np.float64), w.astype(np.float64)
    (ph, pw) = padding
    N, C, H, W = x.shape
    O, _, kh, kw = w.shape
    OH = out_size(H, kh, stride[0], ph, dilation[0])
    OW = out_size(W, kw, stride[1], pw, dilation[1])
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    y = np.zeros((N, O, OH, OW))
    for i in range(kh):
        for j in range(kw):
            y += np.einsum("nchw,oc->nohw", window(xp, i, j, stride, dilation, OH, OW), w[:, :, i, j])
    if b is not None:
        y += b.astype(np.float64)[None, :, None, None]
    return y


def max_pool_reference(x, kernel, stride, padding, dilation):
    """y = max over the window of x padded with -inf; argmax = flat plane index of the first max."""
    N, C, H, W = x.shape
    (kh, kw), (ph, pw) = kernel, padding
    OH = out_size(H, kh, stride[0], ph, dilation[0])
    OW = out_size(W, kw, stride[1], pw, dilation[1])
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf)
    ih = np.arange(H + 2 * ph)[:, None] - ph
    iw = np.arange(W + 2 * pw)[None, :] - pw
    flat = np.broadcast_to(ih * W + iw, (N, C) + xp.shape[2:])
    taps = np.stack([window(xp, i, j, stride, dilation, OH, OW)
                     for i in range(kh) for j in range(kw)])
    where = np.stack([window(flat, i, j, stride, dilation, OH, OW)
                      for i in range(kh) for j in range(kw)])
    first = np.argmax(taps, axis=0)   # first maximum in row-major window order
    y = np.take_along_axis(taps, first[None], 0)[0]
    argmax = np.take_along_axis(where, first[None], 0)[0]
    return y, argmax


def avg_pool_reference(x, kernel, stride, padding, count_include_pad):
    """y = sum of the window's inputs / (window size within the padded input, or its inputs)."""
    N, C, H, W = x.shape
    (kh, kw), (ph, pw) = kernel, padding
    OH = out_size(H, kh, stride[0], ph, 1)
    OW = out_size(W, kw, stride[1], pw, 1)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    inside = np.pad(np.ones((H, W)), ((ph, ph), (pw, pw)))
    y = np.zeros((N, C, OH, OW))
    count = np.zeros((OH, OW))
    for i in range(kh):
        for j in range(kw):
            y += window(xp, i, j, stride, (1, 1), OH, OW)
            count += 1 if count_include_pad else window(inside, i, j, stride, (1, 1), OH, OW)
    return y / count


def inner(a, b):
    return float(np.dot(a.astype(np.float64).ravel(), b.astype(np.float64).ravel()))


def rel_close(a, b, tol):
    return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


# ---------------------------------------------------------------------------------------
# strategies

pairs = st.tuples


@st.composite
def conv_geometries(draw, max_size=7):
    """(x_shape, w_shape, stride, padding, dilation) where the dilated kernel fits."""
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = draw(pairs(st.integers(1, 3), st.integers(1, 3)))
    padding = draw(pairs(st.integers(0, 2), st.integers(0, 2)))
    dilation = draw(pairs(st.integers(1, 2), st.integers(1, 2)))
    span = (dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1)
    H = draw(st.integers(max(1, span[0] - 2 * padding[0]), max(1, span[0] - 2 * padding[0]) + max_size))
    W = draw(st.integers(max(1, span[1] - 2 * padding[1]), max(1, span[1] - 2 * padding[1]) + max_size))
    N, C, O = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    return (N, C, H, W), (O, C, kh, kw), stride, padding, dilation


@st.composite
def conv2d_cases(draw):
    """x, w, b (maybe None), stride, padding, dilation of one float dtype."""
    x_shape, w_shape, stride, padding, dilation = draw(conv_geometries())
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype) if draw(st.booleans()) else None
    return x, w, b, stride, padding, dilation


@st.composite
def conv1d_cases(draw):
    """x (N, C, L), w (O, C, k), b, and int stride, padding, dilation."""
    k, s, p, d = draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(0, 2)), draw(st.integers(1, 2))
    lo = max(1, d * (k - 1) + 1 - 2 * p)
    L = draw(st.integers(lo, lo + 9))
    N, C, O = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal((N, C, L)).astype(dtype)
    w = rng.standard_normal((O, C, k)).astype(dtype)
    b = rng.standard_normal(O).astype(dtype) if draw(st.booleans()) else None
    return x, w, b, s, p, d


@st.composite
def pool_geometries(draw, dilated=True):
    """(x_shape, kernel, stride, padding, dilation) with padding <= kernel // 2 and a fitting window."""
    kernel = draw(pairs(st.integers(1, 3), st.integers(1, 3)))
    stride = draw(pairs(st.integers(1, 3), st.integers(1, 3)))
    padding = (draw(st.integers(0, kernel[0] // 2)), draw(st.integers(0, kernel[1] // 2)))
    dilation = draw(pairs(st.integers(1, 2), st.integers(1, 2))) if dilated else (1, 1)
    span = [d * (k - 1) + 1 - 2 * p for k, p, d in zip(kernel, padding, dilation)]
    H = draw(st.integers(max(1, span[0]), max(1, span[0]) + 7))
    W = draw(st.integers(max(1, span[1]), max(1, span[1]) + 7))
    N, C = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    return (N, C, H, W), kernel, stride, padding, dilation


def distinct_values(rng, shape, dtype):
    """A random permutation of 0..size-1 (exact in float32): no ties, gaps of 1."""
    return rng.permutation(int(np.prod(shape))).reshape(shape).astype(dtype)


# ---------------------------------------------------------------------------------------
# im2col / col2im

@given(conv_geometries(), st.sampled_from(DTYPES), st.integers(0, 2**32 - 1))
def test_im2col_matches_strided_windows(geometry, dtype, seed):
    x_shape, (_, _, kh, kw), stride, padding, dilation = geometry
    x = np.random.default_rng(seed).standard_normal(x_shape).astype(dtype)
    cols = cconv.im2col(x, kh, kw, stride, padding, dilation, 2)
    N, C, H, W = x_shape
    OH, OW = (out_size(H, kh, stride[0], padding[0], dilation[0]),
              out_size(W, kw, stride[1], padding[1], dilation[1]))
    xp = np.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2))
    expected = np.stack([window(xp, i, j, stride, dilation, OH, OW)
                         for i in range(kh) for j in range(kw)], axis=2)
    np.testing.assert_array_equal(cols, expected.reshape(N, C * kh * kw, OH * OW))


# stride 1 with OW == W ("same" width) takes a shifted-copy path in im2col and col2im:
# kernels, paddings (more rows of padding than the kernel spans included), dilations
# and plane sizes for it, where the kernel fits
SAME_WIDTH = [
    (kh, kw, ph, pw, dh, dw, H, W)
    for kh, kw, ph, pw, dh, dw in [
        (3, 3, 1, 1, 1, 1), (5, 5, 2, 2, 1, 1), (3, 3, 2, 2, 2, 2), (1, 1, 0, 0, 1, 1),
        (3, 1, 0, 0, 1, 1), (3, 3, 0, 1, 1, 1), (2, 3, 1, 1, 1, 1), (3, 5, 3, 2, 1, 1), (1, 3, 0, 2, 1, 2)]
    for H, W in [(1, 1), (2, 5), (6, 3), (7, 8)]
    if H + 2 * ph >= dh * (kh - 1) + 1]


@pytest.mark.parametrize("kh, kw, ph, pw, dh, dw, H, W", SAME_WIDTH)
@pytest.mark.parametrize("dtype", DTYPES)
def test_im2col_same_width_stride_one(kh, kw, ph, pw, dh, dw, H, W, dtype):
    OH = out_size(H, kh, 1, ph, dh)
    assert out_size(W, kw, 1, pw, dw) == W
    x = np.random.default_rng(H * W).standard_normal((2, 3, H, W)).astype(dtype)
    cols = cconv.im2col(x, kh, kw, (1, 1), (ph, pw), (dh, dw), 2)
    xp = np.pad(x, ((0, 0), (0, 0), (ph,) * 2, (pw,) * 2))
    expected = np.stack([window(xp, i, j, (1, 1), (dh, dw), OH, W)
                         for i in range(kh) for j in range(kw)], axis=2)
    np.testing.assert_array_equal(cols, expected.reshape(2, 3 * kh * kw, OH * W))


@pytest.mark.parametrize("kh, kw, ph, pw, dh, dw, H, W", SAME_WIDTH)
def test_col2im_same_width_stride_one(kh, kw, ph, pw, dh, dw, H, W):
    """col2im on the shifted path equals a scatter-add of cols through im2col's own
    index map (1 + flat input index, 0 for padding), in float64."""
    OH = out_size(H, kh, 1, ph, dh)
    rng = np.random.default_rng(H * W + kh)
    cols = rng.standard_normal((2, 3 * kh * kw, OH * W))
    index = (np.arange(H * W, dtype=np.float64) + 1).reshape(1, 1, H, W)
    where = cconv.im2col(index, kh, kw, (1, 1), (ph, pw), (dh, dw), 1)[0].astype(np.int64)  # (kh*kw, L)
    x = cconv.col2im(cols, (2, 3, H, W), kh, kw, (1, 1), (ph, pw), (dh, dw), 2)
    for n in range(2):
        for c in range(3):
            block = cols[n, c * kh * kw:(c + 1) * kh * kw]
            ref = np.bincount(where[where > 0] - 1, weights=block[where > 0], minlength=H * W)
            np.testing.assert_allclose(x[n, c].ravel(), ref, rtol=1e-12, atol=1e-12)


@given(conv_geometries(), st.sampled_from(DTYPES), st.integers(0, 2**32 - 1))
def test_col2im_is_adjoint_of_im2col(geometry, dtype, seed):
    # <im2col(x), c> == <x, col2im(c)>
    x_shape, (_, _, kh, kw), stride, padding, dilation = geometry
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(dtype)
    cols = cconv.im2col(x, kh, kw, stride, padding, dilation, 1)
    c = rng.standard_normal(cols.shape).astype(dtype)
    grad_x = cconv.col2im(c, x_shape, kh, kw, stride, padding, dilation, 1)
    assert grad_x.shape == x_shape and grad_x.dtype == dtype
    tol = 1e-12 if dtype == np.float64 else 1e-4
    assert rel_close(inner(cols, c), inner(x, grad_x), tol * cols.size ** 0.5)


def test_im2col_and_col2im_write_into_out():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 6, 5))
    out = np.full((2, 3 * 4, 5 * 4), np.nan)
    cols = cconv.im2col(x, 2, 2, (1, 1), (0, 0), (1, 1), 1, out=out)
    assert cols is out
    np.testing.assert_array_equal(out, cconv.im2col(x, 2, 2, (1, 1), (0, 0), (1, 1), 1))
    gx = np.full(x.shape, np.nan)
    assert cconv.col2im(out, x.shape, 2, 2, (1, 1), (0, 0), (1, 1), 1, out=gx) is gx
    np.testing.assert_array_equal(gx, cconv.col2im(out, x.shape, 2, 2, (1, 1), (0, 0), (1, 1), 1))


# ---------------------------------------------------------------------------------------
# conv2d / conv1d

def assert_conv_close(y, ref, dtype, K):
    if dtype == np.float64:
        np.testing.assert_allclose(y, ref, rtol=1e-10, atol=1e-10 * K)
    else:
        np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5 * K)


@given(conv2d_cases())
@example((np.ones((1, 1, 1, 1)), np.ones((1, 1, 3, 3)), None, (1, 1), (1, 1), (1, 1)))  # all padding but the centre
def test_conv2d_forward_matches_direct_reference(case):
    x, w, b, stride, padding, dilation = case
    y = ck.conv2d_forward(x, w, b, stride, padding, dilation)
    assert y.dtype == x.dtype and y.flags.c_contiguous
    assert_conv_close(y, conv2d_reference(x, w, b, stride, padding, dilation), x.dtype, w[0].size)


@given(conv1d_cases())
def test_conv1d_forward_matches_direct_reference(case):
    x, w, b, s, p, d = case
    y = ck.conv1d_forward(x, w, b, s, p, d)
    ref = conv2d_reference(x[:, :, None], w[:, :, None], b, (1, s), (0, p), (1, d))[:, :, 0]
    assert y.shape == ref.shape and y.dtype == x.dtype
    assert_conv_close(y, ref, x.dtype, w[0].size)


def directional_fd(f, a, u, eps=1e-3):
    """(f(a + eps*u) - f(a - eps*u)) / (2 eps): exact up to rounding for f linear in a."""
    return (f(a + eps * u) - f(a - eps * u)) / (2 * eps)


@given(conv2d_cases())
def test_conv2d_backward_matches_finite_differences(case):
    # L = <conv2d(x, w, b), R>: dL/dx . u, dL/dw . v, dL/db . t against central differences (float64)
    x, w, b, stride, padding, dilation = case
    x, w = x.astype(np.float64), w.astype(np.float64)
    b = np.zeros(w.shape[0]) if b is None else b.astype(np.float64)
    rng = np.random.default_rng(1)
    y = ck.conv2d_forward(x, w, b, stride, padding, dilation)
    R = rng.standard_normal(y.shape)
    grad_x, grad_w, grad_b = ck.conv2d_backward(x, w, R, stride, padding, dilation, True, True, True)
    assert grad_x.shape == x.shape and grad_w.shape == w.shape and grad_b.shape == b.shape

    def loss(xx, ww, bb):
        return inner(ck.conv2d_forward(xx, ww, bb, stride, padding, dilation), R)

    u, v, t = rng.standard_normal(x.shape), rng.standard_normal(w.shape), rng.standard_normal(b.shape)
    tol = 1e-8 * y.size ** 0.5
    assert rel_close(directional_fd(lambda a: loss(a, w, b), x, u), inner(grad_x, u), tol)
    assert rel_close(directional_fd(lambda a: loss(x, a, b), w, v), inner(grad_w, v), tol)
    assert rel_close(directional_fd(lambda a: loss(x, w, a), b, t), inner(grad_b, t), tol)


@given(conv2d_cases())
def test_conv2d_backward_is_adjoint_of_forward(case):
    # conv is bilinear: <conv(x, w), g> == <x, grad_x(g)> == <w, grad_w(g)>; grad_b = sum of g
    x, w, _, stride, padding, dilation = case
    g = np.random.default_rng(2).standard_normal(
        ck.conv2d_forward(x, w, None, stride, padding, dilation).shape).astype(x.dtype)
    grad_x, grad_w, grad_b = ck.conv2d_backward(x, w, g, stride, padding, dilation)
    assert grad_x.dtype == grad_w.dtype == grad_b.dtype == x.dtype
    lhs = inner(ck.conv2d_forward(x, w, None, stride, padding, dilation), g)
    tol = (1e-11 if x.dtype == np.float64 else 1e-4) * g.size ** 0.5
    assert rel_close(lhs, inner(x, grad_x), tol)
    assert rel_close(lhs, inner(w, grad_w), tol)
    np.testing.assert_allclose(grad_b, g.astype(np.float64).sum(axis=(0, 2, 3)),
                               rtol=1e-5 if x.dtype == np.float32 else 1e-12, atol=1e-5)


@given(conv2d_cases(), st.booleans(), st.booleans(), st.booleans())
def test_conv2d_backward_computes_only_what_is_needed(case, need_x, need_w, need_b):
    x, w, _, stride, padding, dilation = case
    g = np.ones(ck.conv2d_forward(x, w, None, stride, padding, dilation).shape, x.dtype)
    full = ck.conv2d_backward(x, w, g, stride, padding, dilation)
    part = ck.conv2d_backward(x, w, g, stride, padding, dilation, need_x, need_w, need_b)
    for want, f, p in zip((need_x, need_w, need_b), full, part):
        if want:
            np.testing.assert_array_equal(f, p)
        else:
            assert p is None


@given(conv2d_cases())
def test_conv2d_grad_input_and_grad_weight_match_backward(case):
    x, w, _, stride, padding, dilation = case
    g = np.random.default_rng(8).standard_normal(
        ck.conv2d_forward(x, w, None, stride, padding, dilation).shape).astype(x.dtype)
    grad_x, grad_w, _ = ck.conv2d_backward(x, w, g, stride, padding, dilation)
    assert same_bits(ck.conv2d_grad_input(g, w, x.shape, stride, padding, dilation), grad_x)
    assert same_bits(ck.conv2d_grad_weight(x, g, w.shape, stride, padding, dilation), grad_w)


@given(conv1d_cases())
def test_conv1d_backward_matches_conv2d_with_unit_height(case):
    x, w, _, s, p, d = case
    y = ck.conv1d_forward(x, w, None, s, p, d)
    g = np.random.default_rng(3).standard_normal(y.shape).astype(x.dtype)
    g1 = ck.conv1d_backward(x, w, g, s, p, d)
    g2 = ck.conv2d_backward(x[:, :, None], w[:, :, None], g[:, :, None], (1, s), (0, p), (1, d))
    assert g1[0].shape == x.shape and g1[1].shape == w.shape
    for a, b2 in zip(g1, g2):
        np.testing.assert_array_equal(a, b2.reshape(a.shape))
    rhs = inner(x, g1[0])
    tol = (1e-11 if x.dtype == np.float64 else 1e-4) * g.size ** 0.5
    assert rel_close(inner(y, g), rhs, tol) and rel_close(inner(y, g), inner(w, g1[1]), tol)


def test_conv2d_empty_batch():
    x, w = np.zeros((0, 2, 5, 5), np.float32), np.ones((3, 2, 3, 3), np.float32)
    assert ck.conv2d_forward(x, w, None, 1, 1, 1).shape == (0, 3, 5, 5)
    gx, gw, gb = ck.conv2d_backward(x, w, np.zeros((0, 3, 5, 5), np.float32), 1, 1, 1)
    assert gx.shape == x.shape and not gw.any() and not gb.any()


def test_conv2d_chunks_agree_with_whole_batch(monkeypatch):
    # the batch loop (several chunks, the last one short) gives the same result as one chunk
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal((5, 3, 9, 8)), rng.standard_normal((4, 3, 3, 2))
    g = rng.standard_normal((5, 4, 5, 4))
    args = ((2, 2), (1, 1), (1, 2))
    whole = ck.conv2d_forward(x, w, None, *args), ck.conv2d_backward(x, w, g, *args)
    monkeypatch.setattr(ck, "COLS_CHUNK_BYTES", 2 * 3 * 6 * 20 * 8)   # two images per chunk
    chunked = ck.conv2d_forward(x, w, None, *args), ck.conv2d_backward(x, w, g, *args)
    np.testing.assert_allclose(chunked[0], whole[0], rtol=1e-13, atol=1e-13)
    for a, b in zip(chunked[1], whole[1]):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13)


# ---------------------------------------------------------------------------------------
# pooling

@given(pool_geometries(), st.sampled_from(DTYPES), st.integers(0, 2**32 - 1), st.booleans())
def test_max_pool2d_forward_matches_reference(geometry, dtype, seed, with_ties):
    x_shape, kernel, stride, padding, dilation = geometry
    rng = np.random.default_rng(seed)
    # with_ties: few distinct values, so the first-maximum rule is exercised
    x = (rng.integers(0, 3, x_shape) if with_ties else rng.standard_normal(x_shape)).astype(dtype)
    y, argmax = cpool.max_pool2d_forward(x, kernel, stride, padding, dilation, num_threads=2)
    ref_y, ref_argmax = max_pool_reference(x, kernel, stride, padding, dilation)
    assert y.dtype == dtype and argmax.dtype == np.int64
    np.testing.assert_array_equal(y, ref_y.astype(dtype))
    has_input = np.isfinite(ref_y)   # x is finite: -inf only for a window of padding alone
    np.testing.assert_array_equal(argmax[has_input], ref_argmax[has_input])
    assert (argmax[~has_input] == -1).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2d_2x2_stride_2_rows_of_every_length(dtype):
    """The 2x2 / stride 2 window has its own row kernel (float32: eight outputs at a
    time, the last eight overlapping): every row length from 1 to 20 outputs, odd
    widths and heights, ties, NaN and -inf, against PyTorch's rule applied in window
    order (replace when v > best or v is NaN)."""
    rng = np.random.default_rng(7)
    for H in (2, 3, 5):
        for W in range(2, 42):
            x = rng.integers(-2, 2, (2, 3, H, W)).astype(dtype)
            x[rng.random(x.shape) < 0.1] = np.nan
            x[rng.random(x.shape) < 0.1] = -np.inf
            x[1, 2] = -np.inf  # a whole plane of -inf: the first input of each window
            y, argmax = cpool.max_pool2d_forward(x, (2, 2), (2, 2), (0, 0), (1, 1), num_threads=2)
            OH, OW = H // 2, W // 2
            rows, cols = np.meshgrid(2 * np.arange(OH), 2 * np.arange(OW), indexing="ij")
            best, best_idx = x[:, :, rows, cols], np.broadcast_to(rows * W + cols, (2, 3, OH, OW))
            for dh, dw in ((0, 1), (1, 0), (1, 1)):
                v = x[:, :, rows + dh, cols + dw]
                take = (v > best) | np.isnan(v)
                best = np.where(take, v, best)
                best_idx = np.where(take, (rows + dh) * W + cols + dw, best_idx)
            np.testing.assert_array_equal(y, best)
            np.testing.assert_array_equal(argmax, best_idx)


def test_max_pool2d_window_of_only_padding():
    # dilation 4, kernel 2, padding 1 on a 3-wide input: the first window is {-1, 3}, all padding
    x = np.arange(3, dtype=np.float64).reshape(1, 1, 1, 3)
    y, argmax = cpool.max_pool2d_forward(x, (1, 2), (1, 1), (0, 1), (1, 4))
    assert y[0, 0, 0, 0] == -np.inf and argmax[0, 0, 0, 0] == -1
    grad_x = cpool.max_pool2d_backward(np.ones_like(y), argmax, x.shape)
    assert grad_x.sum() == np.isfinite(y).sum()


def test_max_pool2d_propagates_nan_and_minus_inf():
    # PyTorch's rule: a NaN wins; a window of -inf inputs points at its first input
    x = np.array([[[[1.0, np.nan, -np.inf, -np.inf, 3.0, np.nan]]]])
    y, argmax = cpool.max_pool2d_forward(x, (1, 2), (1, 2), (0, 0))
    assert np.isnan(y[0, 0, 0, 0]) and argmax[0, 0, 0, 0] == 1
    assert y[0, 0, 0, 1] == -np.inf and argmax[0, 0, 0, 1] == 2
    assert np.isnan(y[0, 0, 0, 2]) and argmax[0, 0, 0, 2] == 5


@given(pool_geometries(), st.sampled_from(DTYPES), st.integers(0, 2**32 - 1))
def test_max_pool2d_backward_matches_finite_differences(geometry, dtype, seed):
    # distinct values 1 apart: a step of 1e-2 never changes an argmax, so L = <max_pool(x), R>
    # is linear along u and the central difference is exact up to rounding
    x_shape, kernel, stride, padding, dilation = geometry
    rng = np.random.default_rng(seed)
    x = distinct_values(rng, x_shape, np.float64)
    y, argmax = cpool.max_pool2d_forward(x, kernel, stride, padding, dilation)
    R = np.where(np.isfinite(y), rng.standard_normal(y.shape), 0.0)
    grad_x = cpool.max_pool2d_backward(R, argmax, x_shape)

    def loss(a):
        out = cpool.max_pool2d_forward(a, kernel, stride, padding, dilation)[0]
        return inner(np.where(np.isfinite(out), out, 0.0), R)

    u = rng.standard_normal(x_shape)
    assert rel_close(directional_fd(loss, x, u, eps=1e-2), inner(grad_x, u), 1e-9 * y.size)
    # and the direct scatter: grad_x[plane].flat[argmax] += R
    ref = np.zeros(x_shape).reshape(x_shape[0] * x_shape[1], -1)
    planes = np.repeat(np.arange(ref.shape[0]), y[0, 0].size)
    keep = argmax.ravel() >= 0
    np.add.at(ref, (planes[keep], argmax.ravel()[keep]), R.ravel()[keep])
    np.testing.assert_allclose(grad_x, ref.reshape(x_shape), rtol=1e-12, atol=1e-12)
    g32 = cpool.max_pool2d_backward(R.astype(dtype), argmax, x_shape)
    assert g32.dtype == dtype


@given(pool_geometries(dilated=False), st.sampled_from(DTYPES), st.integers(0, 2**32 - 1), st.booleans())
def test_avg_pool2d_forward_matches_reference(geometry, dtype, seed, count_include_pad):
    x_shape, kernel, stride, padding, _ = geometry
    x = np.random.default_rng(seed).standard_normal(x_shape).astype(dtype)
    y = cpool.avg_pool2d_forward(x, kernel, stride, padding, count_include_pad, num_threads=2)
    ref = avg_pool_reference(x, kernel, stride, padding, count_include_pad)
    assert y.dtype == dtype
    np.testing.assert_allclose(y, ref, rtol=1e-6 if dtype == np.float32 else 1e-13, atol=1e-6)


@given(pool_geometries(dilated=False), st.sampled_from(DTYPES), st.integers(0, 2**32 - 1), st.booleans())
def test_avg_pool2d_backward_is_adjoint_of_forward(geometry, dtype, seed, count_include_pad):
    # <avg_pool(x), g> == <x, avg_pool_backward(g)>
    x_shape, kernel, stride, padding, _ = geometry
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(dtype)
    y = cpool.avg_pool2d_forward(x, kernel, stride, padding, count_include_pad)
    g = rng.standard_normal(y.shape).astype(dtype)
    grad_x = cpool.avg_pool2d_backward(g, x_shape, kernel, stride, padding, count_include_pad)
    assert grad_x.shape == x_shape and grad_x.dtype == dtype
    tol = (1e-12 if dtype == np.float64 else 1e-5) * y.size ** 0.5
    assert rel_close(inner(y, g), inner(x, grad_x), tol)


def test_conv_kernels_pool_wrappers_pick_threads():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    y, argmax = ck.max_pool2d_forward(x, 2, 2, 0)
    np.testing.assert_array_equal(y, cpool.max_pool2d_forward(x, 2, 2, 0)[0])
    assert ck.max_pool2d_backward(y, argmax, x.shape).shape == x.shape
    a = ck.avg_pool2d_forward(x, 3, 2, 1, False)
    np.testing.assert_array_equal(a, cpool.avg_pool2d_forward(x, 3, 2, 1, False))
    assert ck.avg_pool2d_backward(a, x.shape, 3, 2, 1, False).shape == x.shape


# ---------------------------------------------------------------------------------------
# determinism

def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@given(conv_geometries(max_size=5), pool_geometries(), st.sampled_from(DTYPES), st.integers(0, 2**32 - 1))
def test_kernel_independent_of_thread_count(conv_geometry, pool_geometry, dtype, seed):
    rng = np.random.default_rng(seed)
    x_shape, (_, _, kh, kw), stride, padding, dilation = conv_geometry
    x = rng.standard_normal(x_shape).astype(dtype)
    cols = [cconv.im2col(x, kh, kw, stride, padding, dilation, t) for t in (1, 2)]
    assert same_bits(*cols)
    c = rng.standard_normal(cols[0].shape).astype(dtype)
    gx = [cconv.col2im(c, x_shape, kh, kw, stride, padding, dilation, t) for t in (1, 2)]
    assert same_bits(*gx)

    x_shape, kernel, stride, padding, dilation = pool_geometry
    x = rng.standard_normal(x_shape).astype(dtype)
    (y1, a1), (y2, a2) = [cpool.max_pool2d_forward(x, kernel, stride, padding, dilation, t) for t in (1, 2)]
    assert same_bits(y1, y2) and same_bits(a1, a2)
    g = rng.standard_normal(y1.shape).astype(dtype)
    assert same_bits(*[cpool.max_pool2d_backward(g, a1, x_shape, t) for t in (1, 2)])
    avg = [cpool.avg_pool2d_forward(x, kernel, stride, padding, True, t) for t in (1, 2)]
    assert same_bits(*avg)
    assert same_bits(*[cpool.avg_pool2d_backward(avg[0], x_shape, kernel, stride, padding, False, t)
                       for t in (1, 2)])


@pytest.mark.parametrize("n", [1, 5, 8, 40])
def test_conv2d_independent_of_thread_count(n):
    """Images split across threads (n >= threads), or one image's kernels and GEMMs
    threaded (n = 1), or uneven splits with several grad_w groups (n = 5, 40): the same
    bits as one thread."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((n, 8, 20, 20)).astype(np.float32)
    w = rng.standard_normal((6, 8, 3, 3)).astype(np.float32)
    g = rng.standard_normal((n, 6, 20, 20)).astype(np.float32)
    before = threads.get_num_threads()
    results = []
    try:
        for t in (1, 2, 3):
            threads.set_num_threads(t)
            results.append((ck.conv2d_forward(x, w, None, 1, 1, 1),) + ck.conv2d_backward(x, w, g, 1, 1, 1))
    finally:
        threads.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert same_bits(a, b)


# ---------------------------------------------------------------------------------------
# validation: every bad call raises before any work, naming what was expected and what came

f32 = np.zeros((2, 3, 5, 5), np.float32)
w32 = np.zeros((4, 3, 3, 3), np.float32)
g32 = np.zeros((2, 4, 3, 3), np.float32)
y_pool = np.zeros((2, 3, 2, 2), np.float32)
a_pool = np.zeros((2, 3, 2, 2), np.int64)
x1d, w1d = np.zeros((2, 3, 5), np.float32), np.zeros((4, 3, 3), np.float32)

# fmt: off
BAD_CALLS = [
    # (call, exception, message fragment)
    (lambda: ck.conv2d_forward(f32, w32.astype(np.float64)), TypeError, "same dtype"),
    (lambda: ck.conv2d_forward(f32.astype(np.int32), w32), TypeError, "float32 or float64, got int32"),
    (lambda: ck.conv2d_forward(f32.tolist(), w32), TypeError, "numpy array"),
    (lambda: ck.conv2d_forward(f32[0], w32), ValueError, "4-D"),
    (lambda: ck.conv2d_forward(f32, np.zeros((4, 2, 3, 3), np.float32)), ValueError, "expected input with 2 channels"),
    (lambda: ck.conv2d_forward(f32, w32, np.zeros(3, np.float32)), ValueError, r"bias must have shape \(4,\)"),
    (lambda: ck.conv2d_forward(f32, w32, np.zeros(4, np.float64)), TypeError, "bias"),
    (lambda: ck.conv2d_forward(f32[:, :, ::2], w32), ValueError, "C-contiguous"),
    (lambda: ck.conv2d_forward(f32, np.zeros((4, 3, 7, 3), np.float32)), ValueError, "does not fit along H"),
    (lambda: ck.conv2d_forward(f32, w32, None, 1, 0, (1, 3)), ValueError, "dilated kernel size 7"),
    (lambda: ck.conv2d_forward(f32, w32, None, 0), ValueError, r"stride must be >= 1, got \(0, 0\)"),
    (lambda: ck.conv2d_forward(f32, w32, None, 1, -1), ValueError, "padding must be >= 0"),
    (lambda: ck.conv2d_forward(f32, w32, None, 1, 0, (1, 0)), ValueError, "dilation must be >= 1"),
    (lambda: ck.conv2d_forward(f32, w32, None, 1, 2**40), ValueError, "padding must be <="),
    (lambda: ck.conv2d_forward(f32, w32, None, (1, 1, 1)), ValueError, "sequence of 2"),
    (lambda: ck.conv2d_forward(f32, w32, None, 1.5), TypeError, "stride must be an int"),
    (lambda: ck.conv2d_backward(f32, w32, g32[:, :3]), ValueError, r"grad_y must have the output's shape \(2, 4, 3, 3\)"),
    (lambda: ck.conv2d_backward(f32, w32, g32.astype(np.float64)), TypeError, "grad_y"),
    (lambda: ck.conv2d_grad_input(g32, w32, (2, 3, 5)), ValueError, "x_shape must be a 4-tuple"),
    (lambda: ck.conv2d_grad_input(g32, w32, (2, 3, 6, 5)), ValueError, "grad_y must have the output's shape"),
    (lambda: ck.conv2d_grad_weight(f32, g32, (4, 2, 3, 3)), ValueError, "expected input with 2 channels"),
    (lambda: ck.conv2d_grad_weight(f32, g32, (4, 3, -3, 3)), ValueError, "w_shape must be non-negative"),
    (lambda: ck.conv1d_forward(f32, w32), ValueError, "3-D"),
    (lambda: ck.conv1d_forward(x1d, w1d, None, 1, 0, 3), ValueError, "does not fit along L"),
    (lambda: ck.conv1d_forward(x1d, w1d, None, (1, 1)), ValueError, "sequence of 1"),
    (lambda: cconv.im2col(f32, 0, 3), ValueError, "kernel size"),
    (lambda: cconv.im2col(f32, 3, 3, num_threads=0), ValueError, "num_threads"),
    (lambda: cconv.im2col(f32.astype(np.float16), 3, 3), TypeError, "float16"),
    (lambda: cconv.im2col(f32, 6, 3), ValueError, "does not fit"),
    (lambda: cconv.im2col(f32, 3, 3, out=np.zeros((2, 27, 9), np.float64)), ValueError, "out must be"),
    (lambda: cconv.col2im(np.zeros((2, 27, 8), np.float32), f32.shape, 3, 3), ValueError, r"cols must have shape \(2, 27, 9\)"),
    (lambda: cconv.col2im(np.zeros((2, 27, 9), np.float32), (2, 3, 5), 3, 3), ValueError, "x_shape"),
    (lambda: cpool.max_pool2d_forward(f32, 2, 2, 2), ValueError, "expected padding <= 1 for kernel 2, got 2"),
    (lambda: cpool.max_pool2d_forward(f32, 6, 1, 0), ValueError, "does not fit"),
    (lambda: cpool.max_pool2d_forward(f32, 2, 0, 0), ValueError, "stride"),
    (lambda: cpool.max_pool2d_forward(f32, 0, 1, 0), ValueError, "kernel"),
    (lambda: cpool.max_pool2d_forward(f32, 2, 1, -1), ValueError, "padding"),
    (lambda: cpool.max_pool2d_forward(f32[0], 2, 2, 0), ValueError, "4-D"),
    (lambda: cpool.max_pool2d_forward(np.asfortranarray(f32), 2, 2, 0), ValueError, "C-contiguous"),
    (lambda: cpool.max_pool2d_backward(y_pool, a_pool + 25, f32.shape), ValueError, r"argmax entries must be in \[-1, 25\)"),
    (lambda: cpool.max_pool2d_backward(y_pool, a_pool - 2, f32.shape), ValueError, "argmax entries"),
    (lambda: cpool.max_pool2d_backward(y_pool, a_pool.astype(np.int32), f32.shape), TypeError, "int64"),
    (lambda: cpool.max_pool2d_backward(y_pool, a_pool[:1], f32.shape), ValueError, "argmax must have grad_y's shape"),
    (lambda: cpool.max_pool2d_backward(y_pool, a_pool, (2, 4, 5, 5)), ValueError, r"\(N, C\)"),
    (lambda: cpool.avg_pool2d_forward(f32, 3, 1, 2), ValueError, "padding <= 1"),
    (lambda: cpool.avg_pool2d_backward(y_pool, f32.shape, 2, 1, 0), ValueError, r"grad_y must have shape \(2, 3, 4, 4\)"),
    (lambda: cpool.avg_pool2d_backward(y_pool, (2, 3, 5), 2, 2, 0), ValueError, "x_shape"),
]
# fmt: on


@pytest.mark.parametrize("call, exc, fragment", BAD_CALLS)
def test_bad_calls_raise_clear_errors(call, exc, fragment):
    with pytest.raises(exc, match=fragment):
        call()


def test_read_only_inputs_are_accepted():
    x, w = np.ones((1, 2, 4, 4)), np.ones((1, 2, 3, 3))
    x.flags.writeable = w.flags.writeable = False
    assert ck.conv2d_forward(x, w, None, 1, 1, 1)[0, 0, 1, 1] == 18
    assert cpool.max_pool2d_forward(x, 2, 2, 0)[0].shape == (1, 2, 2, 2)


# ---------------------------------------------------------------------------------------
# PyTorch, when installed

@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch")
    # NOTE: one torch thread: these shapes are tiny and an idle thread pool only costs time
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(before)


@given(case=conv2d_cases())
def test_conv2d_matches_torch(torch, case):
    x, w, b, stride, padding, dilation = case
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    tb = None if b is None else torch.tensor(b, requires_grad=True)
    ty = torch.nn.functional.conv2d(tx, tw, tb, stride, padding, dilation)
    y = ck.conv2d_forward(x, w, b, stride, padding, dilation)
    g = np.random.default_rng(7).standard_normal(y.shape).astype(x.dtype)
    ty.backward(torch.tensor(g))
    grads = ck.conv2d_backward(x, w, g, stride, padding, dilation, True, True, b is not None)
    rtol, atol = (1e-4, 1e-4 * w[0].size) if x.dtype == np.float32 else (1e-10, 1e-10 * w[0].size)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=rtol, atol=atol)
    np.testing.assert_allclose(grads[0], tx.grad.numpy(), rtol=rtol, atol=atol)
    np.testing.assert_allclose(grads[1], tw.grad.numpy(), rtol=rtol, atol=atol * g.size)
    if b is not None:
        np.testing.assert_allclose(grads[2], tb.grad.numpy(), rtol=rtol, atol=atol * g.size)


@given(geometry=pool_geometries(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**32 - 1),
       count_include_pad=st.booleans())
def test_pooling_matches_torch(torch, geometry, dtype, seed, count_include_pad):
    F = torch.nn.functional
    x_shape, kernel, stride, padding, dilation = geometry
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 4, x_shape).astype(dtype)   # ties: first maximum, as torch
    y, argmax = cpool.max_pool2d_forward(x, kernel, stride, padding, dilation)
    has_input = argmax >= 0   # torch returns an arbitrary index for an all-padding window
    ty, tidx = F.max_pool2d(torch.tensor(x), kernel, stride, padding, dilation, return_indices=True)
    np.testing.assert_array_equal(y[has_input], ty.numpy()[has_input])
    np.testing.assert_array_equal(argmax[has_input], tidx.numpy()[has_input])

    tx = torch.tensor(x, requires_grad=True)
    ta = F.avg_pool2d(tx, kernel, stride, padding, count_include_pad=count_include_pad)
    a = cpool.avg_pool2d_forward(x, kernel, stride, padding, count_include_pad)
    g = rng.standard_normal(a.shape).astype(dtype)
    ta.backward(torch.tensor(g))
    ga = cpool.avg_pool2d_backward(g, x_shape, kernel, stride, padding, count_include_pad)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(a, ta.detach().numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(ga, tx.grad.numpy(), rtol=tol, atol=tol)
