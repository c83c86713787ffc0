# cython: language_level=3
"""2-D max and average pooling over NCHW arrays, forward and backward (PyTorch semantics,
ceil_mode=False). 1-D pooling is the caller's (N, C, 1, L) view with kernel (1, k).

    OH = (H + 2*ph - dh*(kh-1) - 1) // sh + 1                  (likewise OW; avg: d = 1)

Every kernel pranges over the N*C planes: a plane's outputs depend only on that input
plane and a backward kernel adds only into that plane of grad_x, so each thread owns
whole planes, there are no races and the result does not depend on the thread count.
"""

import numpy as np

from cython.parallel cimport prange
from libc.math cimport INFINITY
from libc.string cimport memset

from tb_types cimport real, idx_t
from threadcheck cimport check_threads
from window cimport _end_inside, _first_inside

from tinygrad_bn._C._checks import _check_array, _int, _pair


cdef extern from *:
    """
    #include <string.h>

    /* The common 2x2 window, stride 2, no padding or dilation: one output row of n
       outputs from input rows x and x + W (flat plane index idx0 at x[0]). Candidates
       in window order; one replaces the running best when v > best or v is NaN
       (PyTorch's rule: the first maximum wins ties, a NaN wins), as in the general
       loop of _max_fwd_plane. Reads stay inside the two rows: 2 * n <= W.
       Scalar: integer selects, compiled without branches (a data-dependent branch
       mispredicts half the time on random data). */
    #define TB_MAX_2X2_SCALAR(T)                                                   \
        for (Py_ssize_t o = 0; o < n; o++) {                                       \
            long long i = idx0 + 2 * o, bi = i, m, off[3] = {1, W, W + 1};         \
            for (int k = 0; k < 3; k++) {                                          \
                T v = x[i - idx0 + off[k]], best = x[bi - idx0];                   \
                m = -(long long)((v > best) | (v != v));                           \
                bi = ((i + off[k]) & m) | (bi & ~m);                               \
            }                                                                      \
            y[o] = x[bi - idx0]; a[o] = bi;                                        \
        }
    static inline void tb_max_2x2_f64(const double *x, double *y, long long *a,
                                      long long idx0, Py_ssize_t n, Py_ssize_t W) {
        TB_MAX_2X2_SCALAR(double)
    }
    /* float32: eight outputs at a time with GCC vector types (even / odd columns split
       by shuffles); when n is not a multiple of 8 the last eight overlap the previous
       ones (recomputing an output writes the same values). 0.9 against 4.2 ms for the
       scalar loop on (64, 32, 28, 28). Rows shorter than 8 run the scalar loop. */
    typedef float tb_v8f __attribute__((vector_size(32)));
    typedef int tb_v8i __attribute__((vector_size(32)));
    typedef long long tb_v8q __attribute__((vector_size(64)));
    #if defined(__clang__)
    #define TB_EVEN(a, b) __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14)
    #define TB_ODD(a, b) __builtin_shufflevector(a, b, 1, 3, 5, 7, 9, 11, 13, 15)
    #else
    #define TB_EVEN(a, b) __builtin_shuffle(a, b, (tb_v8i){0, 2, 4, 6, 8, 10, 12, 14})
    #define TB_ODD(a, b) __builtin_shuffle(a, b, (tb_v8i){1, 3, 5, 7, 9, 11, 13, 15})
    #endif
    static inline void tb_max_2x2_f32(const float *x, float *y, long long *a,
                                      long long idx0, Py_ssize_t n, Py_ssize_t W) {
        const tb_v8q lane2 = {0, 2, 4, 6, 8, 10, 12, 14};
        if (n < 8) {
            TB_MAX_2X2_SCALAR(float)
            return;
        }
        for (Py_ssize_t o = 0;; o += 8) {
            if (o + 8 > n)
                o = n - 8;
            const float *p = x + 2 * o;
            tb_v8f r0a, r0b, r1a, r1b, best, v;
            memcpy(&r0a, p, 32); memcpy(&r0b, p + 8, 32);
            memcpy(&r1a, p + W, 32); memcpy(&r1b, p + W + 8, 32);
            tb_v8q i = (tb_v8q){0} + (idx0 + 2 * o) + lane2, bi = i, tq;
            tb_v8i t;
            best = TB_EVEN(r0a, r0b);
            #define TB_TAKE(V, OFF)                                                \
                v = (V);                                                           \
                t = (v > best) | (v != v);                                         \
                best = (tb_v8f)(((tb_v8i)v & t) | ((tb_v8i)best & ~t));           \
                tq = __builtin_convertvector(t, tb_v8q);                           \
                bi = ((i + (OFF)) & tq) | (bi & ~tq);
            TB_TAKE(TB_ODD(r0a, r0b), 1)
            TB_TAKE(TB_EVEN(r1a, r1b), W)
            TB_TAKE(TB_ODD(r1a, r1b), W + 1)
            #undef TB_TAKE
            memcpy(y + o, &best, 32); memcpy(a + o, &bi, 64);
            if (o + 8 >= n)
                break;
        }
    }
    """
    void tb_max_2x2_f32(const float* x, float* y, long long* a, long long idx0, idx_t n,
                        idx_t W) noexcept nogil
    void tb_max_2x2_f64(const double* x, double* y, long long* a, long long idx0, idx_t n,
                        idx_t W) noexcept nogil


cdef void _max_fwd_plane(const real* x, real* y, long long* argmax, idx_t H, idx_t W,
                         idx_t kh, idx_t kw, idx_t sh, idx_t sw, idx_t ph, idx_t pw,
                         idx_t dh, idx_t dw, idx_t OH, idx_t OW) noexcept nogil:
    cdef idx_t oh, ow, i, j, h0, w0, i_lo, i_hi, j_lo, j_hi, idx, best_idx
    cdef real v, best
    cdef idx_t mask
    if kh == 2 and kw == 2 and sh == 2 and sw == 2 and ph == 0 and pw == 0 and dh == 1 and dw == 1:
        # the common window: one vectorised row kernel (same rule, same results)
        for oh in range(OH):
            if real is float:
                tb_max_2x2_f32(x + 2 * oh * W, y + oh * OW, argmax + oh * OW, 2 * oh * W, OW, W)
            else:
                tb_max_2x2_f64(x + 2 * oh * W, y + oh * OW, argmax + oh * OW, 2 * oh * W, OW, W)
        return
    for oh in range(OH):
        h0 = oh * sh - ph
        i_lo = _first_inside(h0, dh)
        i_hi = _end_inside(h0, dh, H, kh)
        for ow in range(OW):
            w0 = ow * sw - pw
            j_lo = _first_inside(w0, dw)
            j_hi = _end_inside(w0, dw, W, kw)
            # y = max over the window of x[h0 + i*dh, w0 + j*dw] (padding = -inf);
            # argmax = its flat index in the plane, the first one on ties, a NaN wins
            # (PyTorch's rule: replace when v > best or v is NaN); -1 if the window
            # holds no input at all (possible only with dilation)
            best = -INFINITY
            best_idx = -1
            if i_lo < i_hi and j_lo < j_hi:
                best_idx = (h0 + i_lo * dh) * W + w0 + j_lo * dw
                best = x[best_idx]
            for i in range(i_lo, i_hi):
                for j in range(j_lo, j_hi):
                    idx = (h0 + i * dh) * W + w0 + j * dw
                    v = x[idx]
                    # NOTE: integer mask select instead of `if`: on random data the
                    # branch is mispredicted half the time (measured 3.6x slower)
                    mask = -<idx_t>((v > best) | (v != v))
                    best_idx = (idx & mask) | (best_idx & ~mask)
                    best = x[best_idx]
            y[oh * OW + ow] = best
            argmax[oh * OW + ow] = best_idx


cdef void _max_bwd_plane(const real* grad_y, const long long* argmax, real* grad_x,
                         idx_t L, idx_t HW) noexcept nogil:
    cdef idx_t o, idx
    # zeroed here, plane by plane, so it is still in cache for the scatter below
    memset(grad_x, 0, HW * sizeof(real))
    # grad_x[argmax[o]] += grad_y[o]   (windows may overlap; fixed order o = 0..L-1)
    for o in range(L):
        idx = argmax[o]
        if idx >= 0:
            grad_x[idx] += grad_y[o]


cdef inline idx_t _avg_count(idx_t h0, idx_t w0, idx_t H, idx_t W, idx_t kh, idx_t kw,
                             idx_t ph, idx_t pw, bint count_include_pad) noexcept nogil:
    """PyTorch's divisor: the window clipped to the padded input, or to the input alone."""
    cdef idx_t h1 = h0 + kh, w1 = w0 + kw
    if h1 > H + ph:
        h1 = H + ph
    if w1 > W + pw:
        w1 = W + pw
    if count_include_pad:
        return (h1 - h0) * (w1 - w0)
    if h0 < 0:
        h0 = 0
    if w0 < 0:
        w0 = 0
    if h1 > H:
        h1 = H
    if w1 > W:
        w1 = W
    return (h1 - h0) * (w1 - w0)


cdef void _avg_plane(const real* src, real* dst, idx_t H, idx_t W,
                     idx_t kh, idx_t kw, idx_t sh, idx_t sw, idx_t ph, idx_t pw,
                     idx_t OH, idx_t OW, bint count_include_pad, bint backward) noexcept nogil:
    """One (n, c) plane of average pooling, walking every window once.
    forward  (src = x, dst = y):           y = (sum over the window's inputs of x) / count
    backward (src = grad_y, dst = grad_x): grad_x[window] += grad_y / count
    The backward adds in a fixed (oh, ow, ih, iw) order, so it is bit-reproducible."""
    cdef idx_t oh, ow, ih, iw, h0, w0, ih_lo, ih_hi, iw_lo, iw_hi, count
    cdef double acc
    cdef real g
    for oh in range(OH):
        h0 = oh * sh - ph
        ih_lo = h0 if h0 > 0 else 0
        ih_hi = h0 + kh if h0 + kh < H else H
        for ow in range(OW):
            w0 = ow * sw - pw
            iw_lo = w0 if w0 > 0 else 0
            iw_hi = w0 + kw if w0 + kw < W else W
            count = _avg_count(h0, w0, H, W, kh, kw, ph, pw, count_include_pad)
            if backward:
                if count <= 0:
                    continue
                g = src[oh * OW + ow] / <real>count
                for ih in range(ih_lo, ih_hi):
                    for iw in range(iw_lo, iw_hi):
                        dst[ih * W + iw] += g
            else:
                acc = 0.0  # summed in double
                for ih in range(ih_lo, ih_hi):
                    for iw in range(iw_lo, iw_hi):
                        acc += src[ih * W + iw]
                dst[oh * OW + ow] = <real>(acc / count) if count > 0 else 0


cdef void _max_fwd_run(const real[:, :, :, ::1] x, real[:, :, :, ::1] y,
                       long long[:, :, :, ::1] argmax,
                       idx_t kh, idx_t kw, idx_t sh, idx_t sw, idx_t ph, idx_t pw,
                       idx_t dh, idx_t dw, int num_threads):
    cdef idx_t H = x.shape[2], W = x.shape[3], OH = y.shape[2], OW = y.shape[3]
    cdef idx_t p, NC = x.shape[0] * x.shape[1]
    cdef const real* xp = &x[0, 0, 0, 0]
    cdef real* yp = &y[0, 0, 0, 0]
    cdef long long* ap = &argmax[0, 0, 0, 0]
    # plane p = n*C + c: x[p] -> y[p], argmax[p]
    for p in prange(NC, nogil=True, num_threads=num_threads, schedule='static'):
        _max_fwd_plane(xp + p * H * W, yp + p * OH * OW, ap + p * OH * OW, H, W,
                       kh, kw, sh, sw, ph, pw, dh, dw, OH, OW)


cdef void _max_bwd_run(const real[:, :, :, ::1] grad_y, const long long[:, :, :, ::1] argmax,
                       real[:, :, :, ::1] grad_x, int num_threads):
    cdef idx_t L = grad_y.shape[2] * grad_y.shape[3], HW = grad_x.shape[2] * grad_x.shape[3]
    cdef idx_t p, NC = grad_y.shape[0] * grad_y.shape[1]
    cdef const real* gyp = &grad_y[0, 0, 0, 0]
    cdef const long long* ap = &argmax[0, 0, 0, 0]
    cdef real* gxp = &grad_x[0, 0, 0, 0]
    # plane p: grad_x[p] += scatter(grad_y[p] at argmax[p]); each thread owns grad_x[p]
    for p in prange(NC, nogil=True, num_threads=num_threads, schedule='static'):
        _max_bwd_plane(gyp + p * L, ap + p * L, gxp + p * HW, L, HW)


cdef void _avg_fwd_run(const real[:, :, :, ::1] x, real[:, :, :, ::1] y,
                       idx_t kh, idx_t kw, idx_t sh, idx_t sw, idx_t ph, idx_t pw,
                       bint count_include_pad, int num_threads):
    cdef idx_t H = x.shape[2], W = x.shape[3], OH = y.shape[2], OW = y.shape[3]
    cdef idx_t p, NC = x.shape[0] * x.shape[1]
    cdef const real* xp = &x[0, 0, 0, 0]
    cdef real* yp = &y[0, 0, 0, 0]
    # plane p = n*C + c: x[p] -> y[p]
    for p in prange(NC, nogil=True, num_threads=num_threads, schedule='static'):
        _avg_plane(xp + p * H * W, yp + p * OH * OW, H, W,
                   kh, kw, sh, sw, ph, pw, OH, OW, count_include_pad, False)


cdef void _avg_bwd_run(const real[:, :, :, ::1] grad_y, real[:, :, :, ::1] grad_x,
                       idx_t kh, idx_t kw, idx_t sh, idx_t sw, idx_t ph, idx_t pw,
                       bint count_include_pad, int num_threads):
    cdef idx_t H = grad_x.shape[2], W = grad_x.shape[3]
    cdef idx_t OH = grad_y.shape[2], OW = grad_y.shape[3]
    cdef idx_t p, NC = grad_y.shape[0] * grad_y.shape[1]
    cdef const real* gyp = &grad_y[0, 0, 0, 0]
    cdef real* gxp = &grad_x[0, 0, 0, 0]
    # plane p: grad_x[p] += spread(grad_y[p]); each thread owns grad_x[p]
    for p in prange(NC, nogil=True, num_threads=num_threads, schedule='static'):
        _avg_plane(gyp + p * OH * OW, gxp + p * H * W, H, W,
                   kh, kw, sh, sw, ph, pw, OH, OW, count_include_pad, True)


# ---------------------------------------------------------------------------------------
# Python-side checks (everything is validated here, before any nogil code runs)

# Parameters above this are rejected so that no index arithmetic can overflow int64.
_MAX_PARAM = 2**31 - 1





def _check_x_shape(x_shape):
    if not isinstance(x_shape, (tuple, list)) or len(x_shape) != 4:
        raise ValueError(f"x_shape must be a 4-tuple (N, C, H, W), got {x_shape!r}")
    shape = tuple(_int("x_shape", v) for v in x_shape)
    if min(shape) < 0:
        raise ValueError(f"x_shape must be non-negative, got {shape}")
    return shape



def pool_output_shape(x_shape, kernel, stride, padding, dilation=(1, 1)):
    """Validated ((kh, kw), (sh, sw), (ph, pw), (dh, dw), (N, C, OH, OW)).

    OH = (H + 2*ph - dh*(kh-1) - 1) // sh + 1, likewise OW. Raises ValueError (naming
    expected and got) unless kernel, stride, dilation >= 1, 0 <= padding <= kernel // 2
    (PyTorch's rule), H, W >= 1 and OH, OW >= 1.
    """
    kernel = _pair("kernel", kernel)
    stride = _pair("stride", stride)
    padding = _pair("padding", padding)
    dilation = _pair("dilation", dilation)
    for name, v, lo in (("kernel", kernel, 1), ("stride", stride, 1),
                        ("padding", padding, 0), ("dilation", dilation, 1)):
        if min(v) < lo or max(v) > _MAX_PARAM:
            raise ValueError(f"{name} must be in [{lo}, {_MAX_PARAM}], got {v}")
    for k, p in zip(kernel, padding):
        if p > k // 2:
            raise ValueError(f"padding must be at most half the kernel size: "
                             f"expected padding <= {k // 2} for kernel {k}, got {p}")
    N, C, H, W = x_shape
    if H < 1 or W < 1:
        raise ValueError(f"pooling needs H, W >= 1, got input shape {tuple(x_shape)}")
    out = []
    for size, k, s, p, d in zip((H, W), kernel, stride, padding, dilation):
        span = d * (k - 1) + 1
        if size + 2 * p < span:
            raise ValueError(
                f"pooling window does not fit: dilated kernel size {span} (kernel {k}, "
                f"dilation {d}) > padded input size {size + 2 * p} (input {size}, padding {p})")
        out.append((size + 2 * p - span) // s + 1)
    return kernel, stride, padding, dilation, (N, C, out[0], out[1])


def max_pool2d_forward(x, kernel, stride, padding, dilation=(1, 1), num_threads=1):
    """y[n, c, oh, ow] = max of x over the window, and where it was.

    Parameters
    ----------
    x : ndarray (N, C, H, W), float32 or float64, C-contiguous
    kernel, stride, padding, dilation : (h, w) pairs of ints (or one int for both);
        padding counts as -inf and must be <= kernel // 2
    num_threads : int >= 1 (the result does not depend on it)

    Returns
    -------
    y : ndarray (N, C, OH, OW), x's dtype
    argmax : int64 ndarray (N, C, OH, OW), flat index ih*W + iw of the maximum within its
        (n, c) plane; the first maximum on ties, a NaN propagates (as PyTorch); -1 when
        the window holds only padding (possible only with dilation; then y = -inf).
    """
    _check_array("x", x, 4)
    kernel, stride, padding, dilation, y_shape = pool_output_shape(
        x.shape, kernel, stride, padding, dilation)
    num_threads = check_threads(num_threads, "num_threads")
    y = np.empty(y_shape, dtype=x.dtype)
    argmax = np.empty(y_shape, dtype=np.int64)
    if y.size == 0:
        return y, argmax
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    if x.dtype == np.float32:
        _max_fwd_run[float](x, y, argmax, kh, kw, sh, sw, ph, pw, dh, dw, num_threads)
    else:
        _max_fwd_run[double](x, y, argmax, kh, kw, sh, sw, ph, pw, dh, dw, num_threads)
    return y, argmax


cdef void _span_min_max(const long long* p, idx_t n, long long* lo, long long* hi) noexcept nogil:
    cdef idx_t i
    cdef long long l = p[0], h = p[0], v
    for i in range(n):
        v = p[i]
        l = v if v < l else l
        h = v if v > h else h
    lo[0] = l
    hi[0] = h


cdef void _min_max(const long long[:, :, :, ::1] a, long long* lo, long long* hi,
                   int num_threads) noexcept:
    """lo, hi = a.min(), a.max() of a non-empty array: one pass, split over the threads
    (the caller picks num_threads for the array's size, as for the kernels)."""
    cdef const long long* p = &a[0, 0, 0, 0]
    cdef idx_t n = a.shape[0] * a.shape[1] * a.shape[2] * a.shape[3], b0, b1
    cdef int t, nt = <int>min(<idx_t>num_threads, n)
    cdef long long[::1] los = np.empty(nt, dtype=np.int64), his = np.empty(nt, dtype=np.int64)
    for t in prange(nt, nogil=True, num_threads=nt, schedule='static'):
        b0 = n * t // nt
        b1 = n * (t + 1) // nt
        _span_min_max(p + b0, b1 - b0, &los[t], &his[t])
    lo[0] = los[0]
    hi[0] = his[0]
    for t in range(1, nt):
        lo[0] = los[t] if los[t] < lo[0] else lo[0]
        hi[0] = his[t] if his[t] > hi[0] else hi[0]


def max_pool2d_backward(grad_y, argmax, x_shape, num_threads=1):
    """grad_x[n, c].flat[argmax[n, c, oh, ow]] += grad_y[n, c, oh, ow].

    Parameters
    ----------
    grad_y : ndarray (N, C, OH, OW), float32 or float64, C-contiguous
    argmax : int64 ndarray of grad_y's shape, C-contiguous, from max_pool2d_forward;
        entries in [-1, H*W) (-1: no input, nothing is added)
    x_shape : (N, C, H, W) of the forward input
    num_threads : int >= 1 (the result does not depend on it)

    Returns
    -------
    grad_x : ndarray x_shape, grad_y's dtype
    """
    _check_array("grad_y", grad_y, 4)
    _check_array("argmax", argmax, 4, dtypes=(np.int64,))
    N, C, H, W = _check_x_shape(x_shape)
    num_threads = check_threads(num_threads, "num_threads")
    if argmax.shape != grad_y.shape:
        raise ValueError(f"argmax must have grad_y's shape {grad_y.shape}, got {argmax.shape}")
    if grad_y.shape[:2] != (N, C):
        raise ValueError(f"grad_y must have (N, C) = {(N, C)} of x_shape, "
                         f"got {grad_y.shape[:2]}")
    if grad_y.size == 0 or N * C * H * W == 0:
        return np.zeros((N, C, H, W), dtype=grad_y.dtype)
    cdef long long lo = 0, hi = 0
    _min_max(argmax, &lo, &hi, num_threads)
    if lo < -1 or hi >= H * W:
        raise ValueError(f"argmax entries must be in [-1, {H * W}) for planes of {H}x{W}, "
                         f"got values in [{lo}, {hi}]")
    # every plane is zeroed by the kernel before its scatter
    grad_x = np.empty((N, C, H, W), dtype=grad_y.dtype)
    if grad_y.dtype == np.float32:
        _max_bwd_run[float](grad_y, argmax, grad_x, num_threads)
    else:
        _max_bwd_run[double](grad_y, argmax, grad_x, num_threads)
    return grad_x


def avg_pool2d_forward(x, kernel, stride, padding, count_include_pad=True, num_threads=1):
    """y[n, c, oh, ow] = mean of x over the window (PyTorch's avg_pool2d, ceil_mode=False).

    Parameters
    ----------
    x : ndarray (N, C, H, W), float32 or float64, C-contiguous
    kernel, stride, padding : (h, w) pairs of ints (or one int for both); padding counts
        as zeros and must be <= kernel // 2
    count_include_pad : divide by the window size including padding (True, PyTorch's
        default) or by the number of inputs in the window (False)
    num_threads : int >= 1 (the result does not depend on it)

    Returns
    -------
    y : ndarray (N, C, OH, OW), x's dtype (sums are accumulated in float64)
    """
    _check_array("x", x, 4)
    kernel, stride, padding, _, y_shape = pool_output_shape(x.shape, kernel, stride, padding)
    num_threads = check_threads(num_threads, "num_threads")
    include_pad = bool(count_include_pad)
    y = np.empty(y_shape, dtype=x.dtype)
    if y.size == 0:
        return y
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    if x.dtype == np.float32:
        _avg_fwd_run[float](x, y, kh, kw, sh, sw, ph, pw, include_pad, num_threads)
    else:
        _avg_fwd_run[double](x, y, kh, kw, sh, sw, ph, pw, include_pad, num_threads)
    return y


def avg_pool2d_backward(grad_y, x_shape, kernel, stride, padding, count_include_pad=True,
                        num_threads=1):
    """grad_x[window(oh, ow)] += grad_y[oh, ow] / count(oh, ow): the adjoint of avg_pool2d_forward.

    Parameters
    ----------
    grad_y : ndarray (N, C, OH, OW), float32 or float64, C-contiguous
    x_shape : (N, C, H, W) of the forward input
    kernel, stride, padding, count_include_pad, num_threads : as for avg_pool2d_forward

    Returns
    -------
    grad_x : ndarray x_shape, grad_y's dtype
    """
    _check_array("grad_y", grad_y, 4)
    x_shape = _check_x_shape(x_shape)
    kernel, stride, padding, _, y_shape = pool_output_shape(x_shape, kernel, stride, padding)
    num_threads = check_threads(num_threads, "num_threads")
    if grad_y.shape != y_shape:
        raise ValueError(f"grad_y must have shape {y_shape} for x_shape {x_shape}, "
                         f"got {grad_y.shape}")
    include_pad = bool(count_include_pad)
    grad_x = np.zeros(x_shape, dtype=grad_y.dtype)
    if grad_y.size == 0:
        return grad_x
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    if grad_y.dtype == np.float32:
        _avg_bwd_run[float](grad_y, grad_x, kh, kw, sh, sw, ph, pw, include_pad, num_threads)
    else:
        _avg_bwd_run[double](grad_y, grad_x, kh, kw, sh, sw, ph, pw, include_pad, num_threads)
    return grad_x
