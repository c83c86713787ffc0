"""Array-level convolution and pooling: im2col/col2im (Cython) + numpy's BLAS for the GEMMs.

All arrays are C-contiguous numpy arrays of one float dtype (float32 or float64), NCHW,
weights (O, C, kh, kw) as in PyTorch. Nothing here knows about Tensor or autograd; the
autograd Functions call these. With cols = im2col(x) of shape (N, C*kh*kw, OH*OW) and
w2 = w.reshape(O, C*kh*kw):

    y[n]      = w2 @ cols[n] + b                   OH = (H + 2p - d*(kh-1) - 1) // s + 1
    grad_w    = sum_n grad_y[n] @ cols[n].T        (reshaped to w's shape)
    grad_b    = sum_{n, oh, ow} grad_y
    grad_x[n] = col2im(w2.T @ grad_y[n])

The batch is processed in chunks so the cols buffer stays near COLS_CHUNK_BYTES (it is
reused across chunks): memory stays bounded for large batches and the buffer stays in
cache between im2col and the GEMM.

Threads: im2col/col2im and pooling use threads.threads_for(size) OpenMP threads and give
the same bits for any count. The GEMMs run on numpy's BLAS with its own thread pool
(OPENBLAS_NUM_THREADS / threadpoolctl), which tb.set_num_threads does not change.
"""
import numpy as np

from ._C import conv as _conv
from ._C._checks import _int
from ._C import pool as _pool
from . import blas
from .threads import get_num_threads, threads_for

# NOTE: chunks that fit in L2 (2 MiB per core here) beat larger ones: cols is still in
# L2 when the GEMM reads it. 1 thread, x (64,16,28,28), w (32,16,3,3), thread CPU time:
# forward 10.4 ms / backward 27.7 ms with 8 MiB chunks, 8.1 / 19.7 ms with 512 KiB-1 MiB;
# the whole batch at once was slower still.
COLS_CHUNK_BYTES = 1 << 20

_FLOATS = (np.float32, np.float64)
# Larger parameters are rejected (as the kernels do) so index arithmetic cannot overflow.
_MAX_PARAM = 2**31 - 1


# ---------------------------------------------------------------------------------------
# validation (all of it before any work)

def _tuple(name, v, n):
    """An int, or a sequence of n ints -> tuple of n ints."""
    if isinstance(v, (tuple, list)):
        if len(v) != n:
            raise ValueError(f"{name} must be an int or a sequence of {n} ints, got {v!r}")
        return tuple(_int(name, e) for e in v)
    return (_int(name, v),) * n


def _check_params(stride, padding, dilation, n):
    stride = _tuple("stride", stride, n)
    padding = _tuple("padding", padding, n)
    dilation = _tuple("dilation", dilation, n)
    if min(stride) < 1:
        raise ValueError(f"stride must be >= 1, got {stride if n > 1 else stride[0]}")
    if min(padding) < 0:
        raise ValueError(f"padding must be >= 0, got {padding if n > 1 else padding[0]}")
    if min(dilation) < 1:
        raise ValueError(f"dilation must be >= 1, got {dilation if n > 1 else dilation[0]}")
    for name, v in (("stride", stride), ("padding", padding), ("dilation", dilation)):
        if max(v) > _MAX_PARAM:
            raise ValueError(f"{name} must be <= {_MAX_PARAM}, got {v if n > 1 else v[0]}")
    return stride, padding, dilation


def _check_float_array(name, a, ndim, what):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(a).__name__}")
    if a.dtype not in _FLOATS:
        raise TypeError(f"{name} must be float32 or float64, got {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D {what}, got {a.ndim}-D with shape {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")


def _conv_output_size(size, k, s, p, d, axis):
    span = d * (k - 1) + 1
    if size + 2 * p < span:
        raise ValueError(
            f"convolution kernel does not fit along {axis}: dilated kernel size {span} "
            f"(kernel {k}, dilation {d}) > padded input size {size + 2 * p} "
            f"(input {size}, padding {p})")
    return (size + 2 * p - span) // s + 1


def _check_conv(x, w, stride, padding, dilation, nd):
    """Validate a conv call with nd spatial dims; return (stride, padding, dilation, out_spatial)."""
    layout = "(N, C, H, W)" if nd == 2 else "(N, C, L)"
    wlayout = "(O, C, kh, kw)" if nd == 2 else "(O, C, k)"
    _check_float_array("input", x, nd + 2, layout)
    _check_float_array("weight", w, nd + 2, wlayout)
    if x.dtype != w.dtype:
        raise TypeError(f"input and weight must have the same dtype, got {x.dtype} and {w.dtype}")
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"expected input with {w.shape[1]} channels (weight {w.shape}), "
                         f"got {x.shape[1]} channels (input {x.shape})")
    if min(w.shape) < 1:
        raise ValueError(f"weight must have non-zero dimensions, got {w.shape}")
    if min(x.shape[2:]) < 1:
        raise ValueError(f"input must have non-zero spatial dimensions, got {x.shape}")
    stride, padding, dilation = _check_params(stride, padding, dilation, nd)
    axes = ("H", "W") if nd == 2 else ("L",)
    out = tuple(_conv_output_size(x.shape[2 + i], w.shape[2 + i], stride[i], padding[i],
                                  dilation[i], axes[i]) for i in range(nd))
    return stride, padding, dilation, out


def _check_bias(b, w):
    if b is None:
        return
    if not isinstance(b, np.ndarray):
        raise TypeError(f"bias must be a numpy array or None, got {type(b).__name__}")
    if b.dtype != w.dtype:
        raise TypeError(f"bias must have the weight's dtype {w.dtype}, got {b.dtype}")
    if b.shape != (w.shape[0],):
        raise ValueError(f"bias must have shape ({w.shape[0]},) (one per output channel), "
                         f"got {b.shape}")


def _check_grad_y(grad_y, x, w, out_spatial):
    expected = (x.shape[0], w.shape[0]) + out_spatial
    if not isinstance(grad_y, np.ndarray):
        raise TypeError(f"grad_y must be a numpy array, got {type(grad_y).__name__}")
    if grad_y.dtype != x.dtype:
        raise TypeError(f"grad_y must have the input's dtype {x.dtype}, got {grad_y.dtype}")
    if grad_y.shape != expected:
        raise ValueError(f"grad_y must have the output's shape {expected}, got {grad_y.shape}")
    if not grad_y.flags.c_contiguous:
        raise ValueError("grad_y must be C-contiguous")


def _chunk(N, col_bytes_per_image):
    return max(1, min(N, COLS_CHUNK_BYTES // max(1, col_bytes_per_image)))


# ---------------------------------------------------------------------------------------
# conv2d: the geometry is (kh, kw) = w.shape[2:], all arrays already validated

def _forward(x, w, b, stride, padding, dilation, OH, OW):
    N, C, H, W = x.shape
    O, _, kh, kw = w.shape
    K, L = C * kh * kw, OH * OW
    w2 = w.reshape(O, K)
    y = np.empty((N, O, OH, OW), dtype=x.dtype)
    y3 = y.reshape(N, O, L)
    if N == 0:
        return y
    step = _chunk(N, K * L * x.itemsize)
    nt, matmul = _inner(N)

    def images(lo, hi):
        # y[n] = w2 @ cols[n] for n in [lo, hi), an L2-sized chunk of cols at a time
        buf = np.empty((min(step, hi - lo), K, L), dtype=x.dtype)
        for n0 in range(lo, hi, step):
            n1 = min(hi, n0 + step)
            cols = buf[: n1 - n0]
            _conv.im2col(x[n0:n1], kh, kw, stride, padding, dilation, nt(cols.size), out=cols)
            matmul(w2, cols, out=y3[n0:n1])
            if b is not None:  # while the chunk's outputs are in cache, on this part's thread
                y3[n0:n1] += b[:, None]
    # NOTE: the images are split across the threads, each running im2col + GEMM on its
    # own chunks: one hand-off per call (per-chunk parallel regions cost 4 ms of a 37 ms
    # CNN step at 2 threads). Each y[n] is the same single-threaded computation whatever
    # the split, so the result does not depend on the thread count.
    blas.parallel_parts(N, images, 2 * N * O * K * L)
    return y


def _inner(N):
    """(thread count for a chunk's im2col/col2im, GEMM function) inside one part of
    parallel_parts: one thread each when the images are split across the threads;
    when there are fewer images than threads (one big image) the images are not split
    and each chunk's kernels and GEMMs use the threads instead."""
    if N >= get_num_threads():
        return (lambda size: 1), np.matmul
    return threads_for, blas.matmul


# grad_w sums per-image products over the batch. The images are cut into at most
# GRAD_W_GROUPS groups fixed by the shape alone; each group's products are summed in
# image order into its own slot, and the slots in group order: the same sums in the
# same order for any thread count, with bounded scratch memory.
GRAD_W_GROUPS = 8


def _backward(x, w, grad_y, stride, padding, dilation, need_x, need_w, need_b):
    N, C, H, W = x.shape
    O, _, kh, kw = w.shape
    OH, OW = grad_y.shape[2:]
    K, L = C * kh * kw, OH * OW
    w2 = w.reshape(O, K)
    gy3 = grad_y.reshape(N, O, L)
    grad_x = np.empty(x.shape, dtype=x.dtype) if need_x else None
    grad_w = None
    # grad_b = sum_{n, oh, ow} grad_y, accumulated in float64
    grad_b = gy3.sum(axis=(0, 2), dtype=np.float64).astype(x.dtype) if need_b else None
    if N > 0 and (need_x or need_w):
        step = _chunk(N, K * L * x.itemsize)
        group = max(step, -(-N // GRAD_W_GROUPS))  # images per grad_w group
        nt, matmul = _inner(N)
        ngroups = -(-N // group)
        # grad_w is accumulated transposed, (K, O): cols[n] @ grad_y[n].T is the faster
        # orientation for numpy's BLAS with these shapes (10.3 vs 12.6 ms, x (64,16,28,28))
        slots = np.zeros((ngroups, K, O), dtype=x.dtype) if need_w else None
        w2t = np.ascontiguousarray(w2.T) if need_x else None

        def groups(g_lo, g_hi):
            buf = np.empty((min(step, group), K, L), dtype=x.dtype)
            prods = np.empty((min(step, group), K, O), dtype=x.dtype) if need_w else None
            for g in range(g_lo, g_hi):
                for n0 in range(g * group, min(N, (g + 1) * group), step):
                    n1 = min(N, (g + 1) * group, n0 + step)
                    cols = buf[: n1 - n0]
                    if need_w:
                        _conv.im2col(x[n0:n1], kh, kw, stride, padding, dilation, nt(cols.size), out=cols)
                        part = prods[: n1 - n0]
                        matmul(cols, gy3[n0:n1].transpose(0, 2, 1), out=part)
                        for p in part:  # in image order
                            slots[g] += p
                    if need_x:
                        # grad_cols[n] = w2.T @ grad_y[n]; grad_x[n] = col2im(grad_cols[n])
                        matmul(w2t, gy3[n0:n1], out=cols)
                        _conv.col2im(cols, (n1 - n0, C, H, W), kh, kw, stride, padding, dilation,
                                     nt(cols.size), out=grad_x[n0:n1])
        blas.parallel_parts(ngroups, groups, 2 * N * O * K * L * (int(need_w) + int(need_x)))
        if need_w:
            grad_wt = slots[0]
            for g in range(1, ngroups):  # in group order
                grad_wt += slots[g]
            grad_w = np.ascontiguousarray(grad_wt.T).reshape(w.shape)
    elif need_x:
        grad_x.fill(0)
    if need_w and grad_w is None:
        grad_w = np.zeros(w.shape, dtype=x.dtype)
    return grad_x, grad_w, grad_b


def conv2d_forward(x, w, b=None, stride=1, padding=0, dilation=1):
    """y = conv2d(x, w) + b, PyTorch's cross-correlation (no kernel flip).

    Parameters
    ----------
    x : ndarray (N, C, H, W), float32 or float64, C-contiguous
    w : ndarray (O, C, kh, kw), x's dtype, C-contiguous
    b : ndarray (O,) of x's dtype, or None
    stride, padding, dilation : int or (h, w) pair; stride, dilation >= 1, padding >= 0 (zeros)

    Returns
    -------
    y : ndarray (N, O, OH, OW), OH = (H + 2*ph - dh*(kh-1) - 1) // sh + 1, likewise OW

    Raises
    ------
    TypeError for non-arrays, non-float or mixed dtypes; ValueError for wrong ranks,
    non-contiguous arrays, a channel mismatch, bad parameters or a kernel that does not fit.
    """
    stride, padding, dilation, (OH, OW) = _check_conv(x, w, stride, padding, dilation, 2)
    _check_bias(b, w)
    return _forward(x, w, b, stride, padding, dilation, OH, OW)


def conv2d_backward(x, w, grad_y, stride=1, padding=0, dilation=1,
                    need_x=True, need_w=True, need_b=True):
    """Gradients of y = conv2d(x, w) + b given grad_y = dL/dy.

    Returns (grad_x, grad_w, grad_b) shaped like x, w and (O,); an entry is None when its
    need_* flag is False. grad_b does not depend on b, so b is not an argument.
    grad_x is the adjoint of the convolution (col2im of w2.T @ grad_y); grad_w and grad_b
    sum over the batch in a fixed order, so the result is reproducible.
    """
    stride, padding, dilation, out = _check_conv(x, w, stride, padding, dilation, 2)
    _check_grad_y(grad_y, x, w, out)
    return _backward(x, w, grad_y, stride, padding, dilation,
                     bool(need_x), bool(need_w), bool(need_b))


def _stand_in(name, shape, dtype):
    """An uninitialised array of `shape` for an operand whose values are never read."""
    if not isinstance(shape, (tuple, list)) or len(shape) != 4:
        raise ValueError(f"{name} must be a 4-tuple, got {shape!r}")
    shape = tuple(_int(name, v) for v in shape)
    if min(shape) < 0:
        raise ValueError(f"{name} must be non-negative, got {shape}")
    return np.empty(shape, dtype=dtype)


def conv2d_grad_input(grad_y, w, x_shape, stride=1, padding=0, dilation=1):
    """grad_x = col2im(w2.T @ grad_y) of shape x_shape: conv2d_backward's grad_x without x.

    Linear in grad_y and in w (the adjoint of conv2d in x). Same checks as conv2d_backward.
    """
    _check_float_array("weight", w, 4, "(O, C, kh, kw)")
    x = _stand_in("x_shape", x_shape, w.dtype)
    return conv2d_backward(x, w, grad_y, stride, padding, dilation, True, False, False)[0]


def conv2d_grad_weight(x, grad_y, w_shape, stride=1, padding=0, dilation=1):
    """grad_w = sum_n grad_y[n] @ im2col(x)[n].T of shape w_shape: conv2d_backward's grad_w
    without w. Linear in x and in grad_y. Same checks as conv2d_backward."""
    _check_float_array("input", x, 4, "(N, C, H, W)")
    w = _stand_in("w_shape", w_shape, x.dtype)
    return conv2d_backward(x, w, grad_y, stride, padding, dilation, False, True, False)[1]


# ---------------------------------------------------------------------------------------
# conv1d = conv2d over (N, C, 1, L) with kernel (1, k)

def _as_2d(stride, padding, dilation):
    return (1, stride[0]), (0, padding[0]), (1, dilation[0])


def conv1d_forward(x, w, b=None, stride=1, padding=0, dilation=1):
    """y = conv1d(x, w) + b for x (N, C, L), w (O, C, k), b (O,) or None -> y (N, O, OL).

    stride, padding, dilation are ints (or 1-sequences); OL = (L + 2p - d*(k-1) - 1) // s + 1.
    Same errors as conv2d_forward.
    """
    stride, padding, dilation, (OL,) = _check_conv(x, w, stride, padding, dilation, 1)
    _check_bias(b, w)
    N, C, L = x.shape
    y = _forward(x.reshape(N, C, 1, L), w.reshape(w.shape[0], C, 1, w.shape[2]), b,
                 *_as_2d(stride, padding, dilation), 1, OL)
    return y.reshape(N, w.shape[0], OL)


def conv1d_backward(x, w, grad_y, stride=1, padding=0, dilation=1,
                    need_x=True, need_w=True, need_b=True):
    """(grad_x, grad_w, grad_b) of conv1d_forward, shaped like x (N, C, L), w (O, C, k), (O,)."""
    stride, padding, dilation, out = _check_conv(x, w, stride, padding, dilation, 1)
    _check_grad_y(grad_y, x, w, out)
    N, C, L = x.shape
    O, _, k = w.shape
    gx, gw, gb = _backward(x.reshape(N, C, 1, L), w.reshape(O, C, 1, k),
                           grad_y.reshape(N, O, 1, out[0]), *_as_2d(stride, padding, dilation),
                           bool(need_x), bool(need_w), bool(need_b))
    return (None if gx is None else gx.reshape(x.shape),
            None if gw is None else gw.reshape(w.shape), gb)


# ---------------------------------------------------------------------------------------
# pooling: thin wrappers over _C.pool that pick the thread count (kernels validate)

def max_pool2d_forward(x, kernel, stride, padding, dilation=1):
    """(y, argmax) of 2-D max pooling; see tinygrad_bn._C.pool.max_pool2d_forward."""
    return _pool.max_pool2d_forward(x, kernel, stride, padding, dilation,
                                    num_threads=threads_for(getattr(x, "size", 0)))


def max_pool2d_backward(grad_y, argmax, x_shape):
    """grad_x of 2-D max pooling; see tinygrad_bn._C.pool.max_pool2d_backward."""
    return _pool.max_pool2d_backward(grad_y, argmax, x_shape,
                                     num_threads=threads_for(getattr(grad_y, "size", 0)))


def avg_pool2d_forward(x, kernel, stride, padding, count_include_pad=True):
    """y of 2-D average pooling; see tinygrad_bn._C.pool.avg_pool2d_forward."""
    return _pool.avg_pool2d_forward(x, kernel, stride, padding, count_include_pad,
                                    num_threads=threads_for(getattr(x, "size", 0)))


def avg_pool2d_backward(grad_y, x_shape, kernel, stride, padding, count_include_pad=True):
    """grad_x of 2-D average pooling; see tinygrad_bn._C.pool.avg_pool2d_backward."""
    return _pool.avg_pool2d_backward(grad_y, x_shape, kernel, stride, padding,
                                     count_include_pad,
                                     num_threads=threads_for(getattr(grad_y, "size", 0)))
