# cython: language_level=3
"""im2col / col2im: unfold NCHW images into GEMM columns and fold them back.

Layout of `cols` (chosen so both GEMMs of a convolution need no transposed copy):

    cols[n, (c*kh + i)*kw + j, oh*OW + ow] = x_pad[n, c, oh*sh + i*dh, ow*sw + j*dw]

shape (N, C*kh*kw, OH*OW), with x_pad the input zero-padded by (ph, pw). Then, per image,

    y[n]     = w.reshape(O, C*kh*kw) @ cols[n]                 (O, OH*OW): NCHW directly
    grad_w   = sum_n grad_y[n] @ cols[n].T
    grad_col = w.reshape(O, C*kh*kw).T @ grad_y[n]             then col2im -> grad_x

    OH = (H + 2*ph - dh*(kh-1) - 1) // sh + 1                  (likewise OW)

The rows of one (n, c) input plane form one contiguous block of cols, so both kernels
prange over the N*C planes: each thread owns whole planes (im2col writes only that
plane's rows; col2im adds only into that plane), so there are no races and the result
does not depend on the thread count.
"""

import functools

import numpy as np

from cython.parallel cimport prange
from libc.string cimport memcpy, memset

from tb_types cimport real, idx_t
from threadcheck cimport check_threads
from window cimport _end_inside, _first_inside

from tinygrad_bn._C._checks import _check_array, _int, _pair



cdef inline void _shifted_tap(idx_t i, idx_t j, idx_t H, idx_t W, idx_t ph, idx_t pw,
                              idx_t dh, idx_t dw, idx_t OH, idx_t* oh_lo, idx_t* oh_hi,
                              idx_t* shift, idx_t* k0, idx_t* k1) noexcept nogil:
    """Tap (i, j) of a stride-1, OW == W window: its cols row k = oh*W + ow reads input
    x[k + shift]; oh in [oh_lo, oh_hi) are the rows with ih = oh + i*dh - ph inside
    [0, H); [k0, k1) is that row range clipped so that k + shift stays in the plane
    (what the clip drops is a column that wrapped around from the neighbouring row)."""
    oh_lo[0] = min(max(ph - i * dh, 0), OH)
    oh_hi[0] = max(min(H + ph - i * dh, OH), oh_lo[0])
    shift[0] = (i * dh - ph) * W + j * dw - pw
    k0[0] = max(oh_lo[0] * W, -shift[0])
    k1[0] = min(oh_hi[0] * W, H * W - shift[0])


cdef void _im2col_plane_shifted(const real* x, real* cols, idx_t H, idx_t W,
                                idx_t kh, idx_t kw, idx_t ph, idx_t pw, idx_t dh, idx_t dw,
                                idx_t OH) noexcept nogil:
    """_im2col_plane for stride 1 and OW == W ("same" width): each tap's row of cols is
    the plane shifted by (i*dh - ph) rows and (j*dw - pw) columns, so it is one copy of
    the rows that exist, zeros for the rows that do not, and zeros over the columns
    that wrapped around from the neighbouring row. Same values as the general loop."""
    cdef idx_t i, j, oh_lo, oh_hi, ow_lo, ow_hi, shift, k0, k1, oh, ow, L = OH * W
    cdef real* out
    for i in range(kh):
        for j in range(kw):
            out = cols + (i * kw + j) * L
            # out[k] = x[k + shift]: rows that exist copied, missing rows zero
            _shifted_tap(i, j, H, W, ph, pw, dh, dw, OH, &oh_lo, &oh_hi, &shift, &k0, &k1)
            memset(out, 0, oh_lo * W * sizeof(real))
            memset(out + oh_hi * W, 0, (OH - oh_hi) * W * sizeof(real))
            if k1 > k0:
                memcpy(out + k0, x + k0 + shift, (k1 - k0) * sizeof(real))
            # columns whose input column iw lies outside [0, W): zeros
            ow_lo = min(max(pw - j * dw, 0), W)
            ow_hi = max(min(W + pw - j * dw, W), ow_lo)
            for oh in range(oh_lo, oh_hi):
                for ow in range(ow_lo):
                    out[oh * W + ow] = 0
                for ow in range(ow_hi, W):
                    out[oh * W + ow] = 0


cdef void _im2col_plane(const real* x, real* cols, idx_t H, idx_t W,
                        idx_t kh, idx_t kw, idx_t sh, idx_t sw, idx_t ph, idx_t pw,
                        idx_t dh, idx_t dw, idx_t OH, idx_t OW) noexcept nogil:
    """One (n, c) plane: x (H, W) -> cols (kh*kw, OH*OW)."""
    cdef idx_t i, j, oh, ow, ih, off, ow_lo, ow_hi
    cdef idx_t L = OH * OW
    cdef real* out
    cdef const real* xrow
    if sh == 1 and sw == 1 and OW == W:
        _im2col_plane_shifted(x, cols, H, W, kh, kw, ph, pw, dh, dw, OH)
        return
    for i in range(kh):
        for j in range(kw):
            # iw = ow*sw + off lies inside [0, W) exactly for ow in [ow_lo, ow_hi)
            off = j * dw - pw
            ow_lo = _first_inside(off, sw)
            if ow_lo > OW:
                ow_lo = OW
            ow_hi = _end_inside(off, sw, W, OW)
            if ow_hi < ow_lo:
                ow_hi = ow_lo
            for oh in range(OH):
                # cols[(i*kw + j), oh*OW + ow] = x[oh*sh - ph + i*dh, ow*sw + off], 0 in the padding
                out = cols + (i * kw + j) * L + oh * OW
                ih = oh * sh - ph + i * dh
                if ih < 0 or ih >= H:
                    memset(out, 0, OW * sizeof(real))
                    continue
                xrow = x + ih * W
                for ow in range(ow_lo):
                    out[ow] = 0
                if sw == 1:
                    # NOTE: a separate unit-stride loop so the compiler emits a vector copy
                    for ow in range(ow_lo, ow_hi):
                        out[ow] = xrow[ow + off]
                else:
                    for ow in range(ow_lo, ow_hi):
                        out[ow] = xrow[ow * sw + off]
                for ow in range(ow_hi, OW):
                    out[ow] = 0


cdef void _col2im_plane_shifted(const real* cols, real* x, idx_t H, idx_t W,
                                idx_t kh, idx_t kw, idx_t ph, idx_t pw, idx_t dh, idx_t dw,
                                idx_t OH, const unsigned char* valid) noexcept nogil:
    """_col2im_plane for stride 1 and OW == W: tap (i, j) adds its row of cols to the
    plane shifted by (i*dh - ph) rows and (j*dw - pw) columns, as one contiguous loop
    over the rows that exist; valid[j*L + k] is 0 where column k % W wrapped around
    from the neighbouring row, and there 0 is added instead. Same values and the same
    (i, j) order of additions per element as the general loop: adding +0.0 changes
    nothing, since a sum that starts at +0.0 never becomes -0.0."""
    cdef idx_t i, j, oh_lo, oh_hi, shift, k0, k1, k, L = OH * W
    cdef const real* src
    cdef const unsigned char* m
    memset(x, 0, H * W * sizeof(real))
    for i in range(kh):
        for j in range(kw):
            src = cols + (i * kw + j) * L
            m = valid + j * L
            # x[k + shift] += src[k] over the rows that exist
            _shifted_tap(i, j, H, W, ph, pw, dh, dw, OH, &oh_lo, &oh_hi, &shift, &k0, &k1)
            for k in range(k0, k1):
                x[k + shift] += src[k] if m[k] else 0


cdef void _col2im_plane(const real* cols, real* x, idx_t H, idx_t W,
                        idx_t kh, idx_t kw, idx_t sh, idx_t sw, idx_t ph, idx_t pw,
                        idx_t dh, idx_t dw, idx_t OH, idx_t OW) noexcept nogil:
    """One (n, c) plane: x (H, W) = fold(cols (kh*kw, OH*OW)); padding is dropped."""
    cdef idx_t i, j, oh, ow, ih, off, ow_lo, ow_hi
    cdef idx_t L = OH * OW
    cdef const real* src
    cdef real* xrow
    memset(x, 0, H * W * sizeof(real))
    for i in range(kh):
        for j in range(kw):
            off = j * dw - pw
            ow_lo = _first_inside(off, sw)
            ow_hi = _end_inside(off, sw, W, OW)
            for oh in range(OH):
                ih = oh * sh - ph + i * dh
                if ih < 0 or ih >= H:
                    continue
                # x[oh*sh - ph + i*dh, ow*sw + off] += cols[(i*kw + j), oh*OW + ow]
                # NOTE: fixed (i, j, oh, ow) order per plane: the sum is bit-reproducible
                src = cols + (i * kw + j) * L + oh * OW
                xrow = x + ih * W
                if sw == 1:
                    for ow in range(ow_lo, ow_hi):
                        xrow[ow + off] += src[ow]
                else:
                    for ow in range(ow_lo, ow_hi):
                        xrow[ow * sw + off] += src[ow]


cdef void _im2col_run(const real[:, :, :, ::1] x, real[:, :, ::1] cols,
                      idx_t kh, idx_t kw, idx_t sh, idx_t sw, idx_t ph, idx_t pw,
                      idx_t dh, idx_t dw, idx_t OH, idx_t OW, int num_threads):
    cdef idx_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef idx_t p, NC = N * C
    cdef idx_t plane_in = H * W, plane_out = kh * kw * OH * OW
    cdef const real* xp = &x[0, 0, 0, 0]
    cdef real* cp = &cols[0, 0, 0]
    # plane p = n*C + c: x[p] (H*W values) -> cols rows [p*kh*kw, (p+1)*kh*kw)
    for p in prange(NC, nogil=True, num_threads=num_threads, schedule='static'):
        _im2col_plane(xp + p * plane_in, cp + p * plane_out, H, W,
                      kh, kw, sh, sw, ph, pw, dh, dw, OH, OW)


cdef void _col2im_run(const real[:, :, ::1] cols, real[:, :, :, ::1] x,
                      idx_t kh, idx_t kw, idx_t sh, idx_t sw, idx_t ph, idx_t pw,
                      idx_t dh, idx_t dw, idx_t OH, idx_t OW,
                      const unsigned char[:, ::1] valid, int num_threads):
    """valid: None, or the column masks of _col2im_plane_shifted (stride 1, OW == W)."""
    cdef idx_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef idx_t p, NC = N * C
    cdef idx_t plane_in = H * W, plane_out = kh * kw * OH * OW
    cdef const real* cp = &cols[0, 0, 0]
    cdef real* xp = &x[0, 0, 0, 0]
    # plane p = n*C + c: x[p] += fold(cols rows [p*kh*kw, (p+1)*kh*kw)); each thread owns x[p]
    cdef const unsigned char* vp = NULL
    if valid is not None:
        vp = &valid[0, 0]
    for p in prange(NC, nogil=True, num_threads=num_threads, schedule='static'):
        if vp != NULL:
            _col2im_plane_shifted(cp + p * plane_out, xp + p * plane_in, H, W,
                                  kh, kw, ph, pw, dh, dw, OH, vp)
        else:
            _col2im_plane(cp + p * plane_out, xp + p * plane_in, H, W,
                          kh, kw, sh, sw, ph, pw, dh, dw, OH, OW)


# ---------------------------------------------------------------------------------------
# Python-side checks (everything is validated here, before any nogil code runs)

# Parameters above this are rejected so that no index arithmetic can overflow int64.
_MAX_PARAM = 2**31 - 1



def _check_params(stride, padding, dilation):
    stride = _pair("stride", stride)
    padding = _pair("padding", padding)
    dilation = _pair("dilation", dilation)
    for name, v, lo in (("stride", stride, 1), ("padding", padding, 0), ("dilation", dilation, 1)):
        if min(v) < lo or max(v) > _MAX_PARAM:
            raise ValueError(f"{name} must be in [{lo}, {_MAX_PARAM}], got {v}")
    return stride, padding, dilation


def conv_output_size(size, k, s, p, d):
    """OH = (H + 2p - d*(k-1) - 1) // s + 1; ValueError if the dilated kernel does not fit."""
    span = d * (k - 1) + 1
    if size + 2 * p < span:
        raise ValueError(
            f"kernel does not fit: dilated kernel size {span} (kernel {k}, dilation {d}) "
            f"> padded input size {size + 2 * p} (input {size}, padding {p})")
    return (size + 2 * p - span) // s + 1



def _check_kernel(kh, kw):
    kh = _int("kh", kh)
    kw = _int("kw", kw)
    if not (1 <= kh <= _MAX_PARAM and 1 <= kw <= _MAX_PARAM):
        raise ValueError(f"kernel size must be >= 1, got ({kh}, {kw})")
    return kh, kw



def _out_or_empty(out, shape, dtype):
    if out is None:
        return np.empty(shape, dtype=dtype)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy array, got {type(out).__name__}")
    if out.dtype != dtype or out.shape != shape or not out.flags.c_contiguous \
            or not out.flags.writeable:
        raise ValueError(f"out must be a writeable C-contiguous {np.dtype(dtype).name} array "
                         f"of shape {shape}, got {out.dtype} {out.shape}")
    return out


def im2col(x, kh, kw, stride=(1, 1), padding=(0, 0), dilation=(1, 1), num_threads=1, out=None):
    """Unfold image patches into GEMM columns.

    Parameters
    ----------
    x : ndarray (N, C, H, W), float32 or float64, C-contiguous
    kh, kw : int >= 1, kernel size
    stride, padding, dilation : (h, w) pairs of ints (or one int for both);
        stride >= 1, padding >= 0 (zeros), dilation >= 1
    num_threads : int >= 1, OpenMP threads (the result does not depend on it)
    out : optional C-contiguous ndarray of the result's shape and dtype to write into
        (lets a caller reuse one buffer across batch chunks); must not overlap x

    Returns
    -------
    cols : ndarray (N, C*kh*kw, OH*OW), x's dtype (`out` when given), with
        cols[n, (c*kh + i)*kw + j, oh*OW + ow] = x_pad[n, c, oh*sh + i*dh, ow*sw + j*dw].

    Raises
    ------
    TypeError for a non-array, a non-float dtype or non-int parameters; ValueError for a
    wrong rank, a non-contiguous x, bad parameters or a kernel that does not fit.
    """
    _check_array("x", x, 4)
    kh, kw = _check_kernel(kh, kw)
    (sh, sw), (ph, pw), (dh, dw) = _check_params(stride, padding, dilation)
    num_threads = check_threads(num_threads, "num_threads")
    N, C, H, W = x.shape
    OH = conv_output_size(H, kh, sh, ph, dh)
    OW = conv_output_size(W, kw, sw, pw, dw)
    cols = _out_or_empty(out, (N, C * kh * kw, OH * OW), x.dtype)
    if cols.size == 0:
        return cols
    if x.dtype == np.float32:
        _im2col_run[float](x, cols, kh, kw, sh, sw, ph, pw, dh, dw, OH, OW, num_threads)
    else:
        _im2col_run[double](x, cols, kh, kw, sh, sw, ph, pw, dh, dw, OH, OW, num_threads)
    return cols


@functools.lru_cache(maxsize=32)
def _column_masks(W, kw, pw, dw, OH):
    """valid[j, oh*W + ow] = 1 where input column ow + j*dw - pw lies inside [0, W) (for
    _col2im_plane_shifted). Cached: a conv backward calls col2im once per chunk of
    images with the same geometry, and building it costs about 10 us."""
    iw = np.arange(W)[None, :] + np.arange(kw)[:, None] * dw - pw
    valid = np.tile(((iw >= 0) & (iw < W)).astype(np.uint8), (1, OH))
    valid.flags.writeable = False
    return valid


def col2im(cols, x_shape, kh, kw, stride=(1, 1), padding=(0, 0), dilation=(1, 1), num_threads=1,
           out=None):
    """Fold GEMM columns back into images, adding overlapping patches (adjoint of im2col).

    <im2col(x), cols> == <x, col2im(cols)> for every x and cols.

    Parameters
    ----------
    cols : ndarray (N, C*kh*kw, OH*OW), float32 or float64, C-contiguous (im2col's layout)
    x_shape : (N, C, H, W) of the image
    kh, kw, stride, padding, dilation, num_threads : as for im2col
    out : optional C-contiguous ndarray (x_shape, cols' dtype), overwritten (not added
        to); must not overlap cols

    Returns
    -------
    grad_x : ndarray x_shape, cols' dtype (`out` when given); entries that fall in the
        padding are dropped.
    """
    _check_array("cols", cols, 3)
    if not isinstance(x_shape, (tuple, list)) or len(x_shape) != 4:
        raise ValueError(f"x_shape must be a 4-tuple (N, C, H, W), got {x_shape!r}")
    N, C, H, W = [_int("x_shape", v) for v in x_shape]
    if min(N, C, H, W) < 0:
        raise ValueError(f"x_shape must be non-negative, got {tuple(x_shape)}")
    kh, kw = _check_kernel(kh, kw)
    (sh, sw), (ph, pw), (dh, dw) = _check_params(stride, padding, dilation)
    num_threads = check_threads(num_threads, "num_threads")
    OH = conv_output_size(H, kh, sh, ph, dh)
    OW = conv_output_size(W, kw, sw, pw, dw)
    expected = (N, C * kh * kw, OH * OW)
    if cols.shape != expected:
        raise ValueError(f"cols must have shape {expected} for x_shape {(N, C, H, W)}, "
                         f"got {cols.shape}")
    x = _out_or_empty(out, (N, C, H, W), cols.dtype)
    if x.size == 0:
        return x
    if cols.size == 0:
        x.fill(0)
        return x
    valid = _column_masks(W, kw, pw, dw, OH) if sh == 1 and sw == 1 and OW == W else None
    if cols.dtype == np.float32:
        _col2im_run[float](cols, x, kh, kw, sh, sw, ph, pw, dh, dw, OH, OW, valid, num_threads)
    else:
        _col2im_run[double](cols, x, kh, kw, sh, sw, ph, pw, dh, dw, OH, OW, valid, num_threads)
    return x
