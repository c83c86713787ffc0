# cython: language_level=3
"""Softmax and log-softmax along one axis.

The input is seen as (outer, n, inner) with the softmax over n. inner == 1 (the
last axis, or trailing dims of size 1) runs row by row over contiguous memory;
otherwise blocks of up to BLOCK adjacent columns stream through the rows with
per-column running max and float64 sum, so every loop is contiguous along
`inner`. (Narrow column blocks were measured 3x slower: with a power-of-two row
stride each short row segment is a new page for the prefetcher.)

Each row, or column, is done start to finish by one thread in a fixed order:
row sums in float64 lanes combined in a fixed order, column sums over the rows in
order. Results therefore do not depend on the thread count or the blocking.
"""
cimport numpy as cnp
from cython.parallel cimport prange
from libc.math cimport exp, log

import numpy as np

from fastmath cimport tb_expf, tb_expf_shifted
from tb_types cimport idx_t, real
from floatcheck cimport check_float_array
from threadcheck cimport check_threads

cnp.import_array()

cdef enum:
    LANES = 16       # float64 partial sums along a row (vectorisable, fixed order)
    MAX_WIDTH = 256  # running maxima along a row
    BLOCK = 1024     # widest column block when the axis is not the last (16 KiB of stack)


cdef inline real _maximum(real x, real y) noexcept nogil:
    # numpy's maximum: NaN in either operand gives NaN (so a NaN row stays NaN)
    return x if (x >= y or x != x) else y


cdef inline real _exp(real x) noexcept nogil:
    if real is float:
        return tb_expf(x)
    else:
        return exp(x)


cdef inline void _exp_shifted(const real* x, real m, real* o, idx_t n) noexcept nogil:
    """o[j] = exp(x[j] - m) for j < n; float32 through fastmath's array loop (16 lanes
    at a time on AVX-512, the same bits as _exp)."""
    cdef idx_t j
    if real is float:
        tb_expf_shifted(x, m, o, n)
    else:
        for j in range(n):
            o[j] = exp(x[j] - m)


# ---------------------------------------------------------------- contiguous rows

cdef real _row_max(const real* x, idx_t n, real* scratch) noexcept nogil:
    """max(x[:n]) for n >= 1, using scratch[:min(n, MAX_WIDTH)].

    w running maxima are updated chunk by chunk, then halved pairwise. Every step
    is a plain elementwise loop of runtime length, which gcc vectorises.
    """
    # NOTE: a fixed-size lane array would be fully unrolled and then left scalar
    # (the NaN-propagating select defeats SLP); runtime-length loops are if-converted.
    cdef idx_t w = min(n, <idx_t>MAX_WIDTH), j, k, h
    for k in range(w):
        scratch[k] = x[k]
    j = w
    while j < n:
        h = min(w, n - j)
        for k in range(h):
            scratch[k] = _maximum(scratch[k], x[j + k])
        j += h
    while w > 1:
        h = w // 2
        w -= h
        for k in range(h):
            scratch[k] = _maximum(scratch[k], scratch[k + w])
    return scratch[0]


cdef double _row_sum(const real* e, idx_t n) noexcept nogil:
    """sum(e[:n]) in float64, LANES partial sums added in a fixed order."""
    cdef double lane[LANES]
    cdef double s = 0
    cdef idx_t j, jb, nv = n - n % LANES
    cdef int k
    for k in range(LANES):
        lane[k] = 0
    for jb in range(nv // LANES):
        j = jb * LANES
        for k in range(LANES):
            lane[k] += e[j + k]
    for k in range(LANES):
        s += lane[k]
    for j in range(nv, n):
        s += e[j]
    return s


cdef void _softmax_row(const real* x, real* o, idx_t n, bint log_out) noexcept nogil:
    # softmax:     o = exp(x - m) / s,           m = max(x), s = sum(exp(x - m))
    # log_softmax: o = (x - m) - log(s)
    # NOTE: x - m <= 0, so exp never overflows (logits of 1e4 are fine), and s >= 1.
    cdef idx_t j
    cdef real m = _row_max(x, n, o)  # o is scratch until the exp pass
    cdef double s
    cdef real inv, c
    _exp_shifted(x, m, o, n)
    s = _row_sum(o, n)
    if log_out:
        # NOTE: x - m <= 0 and -log(s) <= 0 never cancel, so two roundings stay
        # within about 1.5 ulp of the result
        c = <real>log(s)
        for j in range(n):
            o[j] = (x[j] - m) - c
    else:
        # NOTE: multiply by a rounded 1/s: at most 1 ulp more than dividing, and
        # one vector multiply instead of a division or float64 round trip
        inv = <real>(1.0 / s)
        for j in range(n):
            o[j] = o[j] * inv


# ---------------------------------------------------------------- strided columns

cdef void _softmax_cols(const real* x, real* o, idx_t n, idx_t inner, idx_t w,
                        bint log_out) noexcept nogil:
    """Softmax over n for w <= BLOCK adjacent columns: element (i, k) is x[i * inner + k].

    Three passes stream the rows (max, exp and sum, scale); each column's max and
    sum run over i in order, so a column's result does not depend on the blocking.
    """
    cdef real m[BLOCK]
    cdef double s[BLOCK]
    cdef real c[BLOCK]  # per column: 1/s (softmax) or log(s) (log_softmax)
    cdef idx_t i, k
    cdef const real* xi
    cdef real* oi
    for k in range(w):
        m[k] = x[k]
        s[k] = 0
    for i in range(1, n):
        xi = x + i * inner
        for k in range(w):
            m[k] = _maximum(m[k], xi[k])
    for i in range(n):
        xi = x + i * inner
        oi = o + i * inner
        for k in range(w):
            oi[k] = _exp(xi[k] - m[k])
        # NOTE: a loop of its own: summed inside the exp loop, gcc's if-conversion
        # gives up and the exp stays scalar (measured 5x slower)
        for k in range(w):
            s[k] += oi[k]
    if log_out:
        for k in range(w):
            c[k] = <real>log(s[k])
        for i in range(n):
            xi = x + i * inner
            oi = o + i * inner
            for k in range(w):
                oi[k] = (xi[k] - m[k]) - c[k]
    else:
        for k in range(w):
            c[k] = <real>(1.0 / s[k])
        for i in range(n):
            oi = o + i * inner
            for k in range(w):
                oi[k] = oi[k] * c[k]


cdef inline idx_t _block_width(idx_t outer, idx_t inner, int nthreads) noexcept nogil:
    """Width of the column blocks when the axis is not the last (inner > 1): task t =
    (outer index t // nblk, block t % nblk), nblk = ceil(inner / width). Blocks are as
    wide as BLOCK allows (long contiguous row segments) but at least nthreads tasks
    exist; columns are independent, so the split does not change any result."""
    cdef idx_t nblk = (inner + BLOCK - 1) // BLOCK
    if outer * nblk < nthreads:
        nblk = min(inner, (nthreads + outer - 1) // outer)
    return (inner + nblk - 1) // nblk


cdef void _softmax(const real* x, real* o, idx_t outer, idx_t n, idx_t inner, bint log_out,
                   int nthreads) noexcept nogil:
    cdef idx_t r, t, b, nblk, width, ntasks
    if inner == 1:
        if nthreads <= 1:
            for r in range(outer):
                _softmax_row(x + r * n, o + r * n, n, log_out)
        else:
            for r in prange(outer, num_threads=nthreads, schedule='static'):
                _softmax_row(x + r * n, o + r * n, n, log_out)
        return
    # task t = (outer index r, column block b); each task owns its output columns
    width = _block_width(outer, inner, nthreads)
    nblk = (inner + width - 1) // width
    ntasks = outer * nblk
    if nthreads <= 1:
        for t in range(ntasks):
            r = t // nblk
            b = t % nblk * width
            _softmax_cols(x + r * n * inner + b, o + r * n * inner + b, n, inner,
                          min(width, inner - b), log_out)
    else:
        for t in prange(ntasks, num_threads=nthreads, schedule='static'):
            r = t // nblk
            b = t % nblk * width
            _softmax_cols(x + r * n * inner + b, o + r * n * inner + b, n, inner,
                          min(width, inner - b), log_out)


# ---------------------------------------------------------------- backward
# softmax:      dx = z * (g - s),       s = sum(g * z) along the axis
# log_softmax:  dx = g - exp(z) * s,    s = sum(g)     along the axis
# (z is the forward output.) One read of z and g for s, one more for dx; s is a
# float64 sum in fixed order, so results do not depend on the thread count.

cdef double _row_dot(const real* a, const real* b, idx_t n) noexcept nogil:
    """sum(a[:n] * b[:n]) in float64, LANES partial sums added in a fixed order."""
    cdef double lane[LANES]
    cdef double s = 0
    cdef idx_t j, jb, nv = n - n % LANES
    cdef int k
    for k in range(LANES):
        lane[k] = 0
    for jb in range(nv // LANES):
        j = jb * LANES
        for k in range(LANES):
            lane[k] += <double>a[j + k] * b[j + k]
    for k in range(LANES):
        s += lane[k]
    for j in range(nv, n):
        s += <double>a[j] * b[j]
    return s


cdef void _softmax_backward_row(const real* z, const real* g, real* dx, idx_t n,
                                bint log_out) noexcept nogil:
    cdef idx_t j
    cdef real s
    if log_out:
        s = <real>_row_sum(g, n)
        for j in range(n):
            dx[j] = g[j] - _exp(z[j]) * s
    else:
        s = <real>_row_dot(g, z, n)
        for j in range(n):
            dx[j] = z[j] * (g[j] - s)


cdef void _softmax_backward_cols(const real* z, const real* g, real* dx, idx_t n, idx_t inner,
                                 idx_t w, bint log_out) noexcept nogil:
    """The same for w <= BLOCK adjacent columns: element (i, k) is at i * inner + k.
    Each column's sum runs over i in order (independent of the blocking)."""
    cdef double s[BLOCK]
    cdef real sr[BLOCK]
    cdef idx_t i, k
    cdef const real* zi
    cdef const real* gi
    cdef real* di
    for k in range(w):
        s[k] = 0
    for i in range(n):
        zi = z + i * inner
        gi = g + i * inner
        if log_out:
            for k in range(w):
                s[k] += gi[k]
        else:
            for k in range(w):
                s[k] += <double>gi[k] * zi[k]
    for k in range(w):
        sr[k] = <real>s[k]
    for i in range(n):
        zi = z + i * inner
        gi = g + i * inner
        di = dx + i * inner
        if log_out:
            for k in range(w):
                di[k] = gi[k] - _exp(zi[k]) * sr[k]
        else:
            for k in range(w):
                di[k] = zi[k] * (gi[k] - sr[k])


cdef void _softmax_backward(const real* z, const real* g, real* dx, idx_t outer, idx_t n,
                            idx_t inner, bint log_out, int nthreads) noexcept nogil:
    # Same task split as _softmax: rows, or (outer index, column block) tasks.
    cdef idx_t r, t, b, nblk, width, ntasks, off
    if inner == 1:
        if nthreads <= 1:
            for r in range(outer):
                _softmax_backward_row(z + r * n, g + r * n, dx + r * n, n, log_out)
        else:
            for r in prange(outer, num_threads=nthreads, schedule='static'):
                _softmax_backward_row(z + r * n, g + r * n, dx + r * n, n, log_out)
        return
    width = _block_width(outer, inner, nthreads)
    nblk = (inner + width - 1) // width
    ntasks = outer * nblk
    if nthreads <= 1:
        for t in range(ntasks):
            b = t % nblk * width
            off = t // nblk * n * inner + b
            _softmax_backward_cols(z + off, g + off, dx + off, n, inner, min(width, inner - b), log_out)
    else:
        for t in prange(ntasks, num_threads=nthreads, schedule='static'):
            b = t % nblk * width
            off = t // nblk * n * inner + b
            _softmax_backward_cols(z + off, g + off, dx + off, n, inner, min(width, inner - b), log_out)


# ---------------------------------------------------------------- Python wrappers

cdef int _split_axis(cnp.ndarray arr, int axis, idx_t* outer, idx_t* n, idx_t* inner) except -1:
    """arr seen as (outer, n, inner) around `axis`; ValueError unless 0 <= axis < ndim."""
    cdef int ndim = arr.ndim, d
    if not 0 <= axis < ndim:
        raise ValueError(f"axis: expected 0 <= axis < {ndim} for shape {(<object>arr).shape}, got {axis}")
    cdef cnp.npy_intp* dims = cnp.PyArray_DIMS(arr)
    outer[0] = 1
    inner[0] = 1
    n[0] = dims[axis]
    for d in range(axis):
        outer[0] *= dims[d]
    for d in range(axis + 1, ndim):
        inner[0] *= dims[d]
    return 0


cdef object _run(object a, object g, int axis, int nthreads, bint log_out):
    """Forward (g None): softmax or log_softmax of a. Backward: their gradient from the
    forward output a = z and the upstream gradient g. Every check before any work."""
    check_float_array(a, "z" if g is not None else "a")
    cdef cnp.ndarray arr = <cnp.ndarray>a
    cdef cnp.ndarray ga = None
    if g is not None:
        check_float_array(g, "g")
        ga = <cnp.ndarray>g
        if g.dtype != a.dtype or g.shape != a.shape:
            raise ValueError(f"g: expected the dtype and shape of z, {a.dtype} {a.shape}, "
                             f"got {g.dtype} {g.shape}")
    cdef idx_t outer, n, inner
    _split_axis(arr, axis, &outer, &n, &inner)
    check_threads(nthreads, "nthreads")
    cdef int typenum = cnp.PyArray_TYPE(arr)
    cdef cnp.ndarray out = cnp.PyArray_EMPTY(arr.ndim, cnp.PyArray_DIMS(arr), typenum, 0)
    cdef void* px = cnp.PyArray_DATA(arr)
    cdef void* pg = cnp.PyArray_DATA(ga) if ga is not None else NULL
    cdef void* po = cnp.PyArray_DATA(out)
    if outer * n * inner == 0:
        return out
    with nogil:
        if typenum == cnp.NPY_FLOAT32:
            if pg == NULL:
                _softmax(<const float*>px, <float*>po, outer, n, inner, log_out, nthreads)
            else:
                _softmax_backward(<const float*>px, <const float*>pg, <float*>po, outer, n, inner,
                                  log_out, nthreads)
        else:
            if pg == NULL:
                _softmax(<const double*>px, <double*>po, outer, n, inner, log_out, nthreads)
            else:
                _softmax_backward(<const double*>px, <const double*>pg, <double*>po, outer, n, inner,
                                  log_out, nthreads)
    return out


def softmax(a, int axis, int nthreads=1):
    """exp(a - max) / sum(exp(a - max)) along `axis`.

    Parameters
    ----------
    a : ndarray
        C-contiguous float32 or float64, ndim >= 1.
    axis : int
        0 <= axis < a.ndim.
    nthreads : int
        OpenMP threads (>= 1), decided by the caller.

    Returns
    -------
    ndarray, new, same shape and dtype as a. Stable for logits of any magnitude
    (the row max is subtracted; sums are float64). A row holding NaN or +inf is all NaN.
    """
    return _run(a, None, axis, nthreads, False)


def log_softmax(a, int axis, int nthreads=1):
    """(a - max) - log(sum(exp(a - max))) along `axis`.

    Parameters
    ----------
    a : ndarray
        C-contiguous float32 or float64, ndim >= 1.
    axis : int
        0 <= axis < a.ndim.
    nthreads : int
        OpenMP threads (>= 1).

    Returns
    -------
    ndarray, new, same shape and dtype as a, within about 1.5 ulp: (a - max) and
    -log(sum) are both <= 0, so their sum never cancels. Sums are float64.
    """
    return _run(a, None, axis, nthreads, True)


def softmax_backward(z, g, int axis, int nthreads=1):
    """Gradient of softmax: z * (g - sum(g * z, axis)), z = softmax(x) (the forward output).

    z, g: C-contiguous float32/float64 arrays of one shape and dtype; 0 <= axis < z.ndim;
    nthreads >= 1. Returns a new array like z. Raises TypeError / ValueError before any work.
    """
    return _run(z, g, axis, nthreads, False)


def log_softmax_backward(z, g, int axis, int nthreads=1):
    """Gradient of log_softmax: g - exp(z) * sum(g, axis), z = log_softmax(x) (the forward output).

    Arguments and errors as softmax_backward.
    """
    return _run(z, g, axis, nthreads, True)


# ---------------------------------------------------------------- cross-entropy (fused)

cdef enum:
    CE_CHUNK = 256  # exp values buffered on the stack per step along a row


cdef double _row_log_sum(const real* x, idx_t n, double* m_out) noexcept nogil:
    """log(sum(exp(x - m))) in float64, with m = max(x) written to m_out (the row's own
    slot): the row's log-partition is m + that, kept as two parts (see _ce_backward)."""
    cdef real buf[CE_CHUNK]
    cdef real m = _row_max(x, n, buf)
    cdef double s = 0
    cdef idx_t j0, h
    j0 = 0
    while j0 < n:
        h = min(<idx_t>CE_CHUNK, n - j0)
        # NOTE: the exp loop stays alone (a sum in the same loop stops gcc vectorising it)
        _exp_shifted(x + j0, m, buf, h)
        s += _row_sum(buf, h)
        j0 += h
    m_out[0] = m
    return log(s)


cdef void _ce_forward(const real* x, const long long* labels, real* loss, double* parts,
                      idx_t N, idx_t C, double smoothing, int nthreads) noexcept nogil:
    # loss_i = (1 - s) (lse_i - x[i, y_i]) + s (lse_i - mean_j x[i, j]),  lse_i = log sum_j exp x[i, j]
    # with lse_i = m_i + log_sum_i kept as parts[i] = (m_i, log_sum_i)
    cdef idx_t i
    cdef double ls, mean_x, m
    for i in prange(N, num_threads=nthreads, schedule='static'):
        # NOTE: the max goes straight into the row's slot: a pointer to a loop-local
        # variable would make it shared between the threads (prange privatises only
        # variables assigned in the loop body)
        ls = _row_log_sum(x + i * C, C, &parts[2 * i])
        m = parts[2 * i]
        parts[2 * i + 1] = ls
        mean_x = _row_sum(x + i * C, C) / C if smoothing != 0 else 0.0
        # NOTE: m - x is exact in double (both are values of the row); the log-partition
        # itself is never rounded as one number of magnitude |x|
        loss[i] = <real>((1.0 - smoothing) * ((m - <double>x[i * C + labels[i]]) + ls)
                         + smoothing * ((m - mean_x) + ls))


cdef void _ce_backward(const real* x, const long long* labels, const double* parts, const real* grad_loss,
                       real* grad_x, idx_t N, idx_t C, double smoothing, int nthreads) noexcept nogil:
    # grad_x[i, j] = grad_loss_i * (softmax(x)[i, j] - (1 - s) [j == y_i] - s / C)
    # softmax(x)[i, j] = exp((x[i, j] - m_i) - log_sum_i), from the forward's parts.
    # NOTE: the log-partition m + log_sum rounded as one number would be off by about
    # |m| ulps (1e-3 in float32 and 1e-12 in float64 at logits of 1e4), and so would
    # every probability. Kept in parts: m is a value of the row (exact in x's dtype),
    # x - m is exact where it matters (x close to m), log_sum lies in [0, log C].
    cdef idx_t i, j
    cdef real g, shift, m, ls
    for i in prange(N, num_threads=nthreads, schedule='static'):
        g = grad_loss[i]
        m = <real>parts[2 * i]
        ls = <real>parts[2 * i + 1]
        shift = <real>(smoothing / C)
        for j in range(C):
            grad_x[i * C + j] = g * (_exp((x[i * C + j] - m) - ls) - shift)
        grad_x[i * C + labels[i]] -= g * <real>(1.0 - smoothing)


cdef _check_ce_args(logits, labels, double smoothing):
    if not isinstance(logits, np.ndarray):
        raise TypeError(f"logits: expected a numpy.ndarray, got {type(logits).__name__}")
    if logits.dtype not in (np.float32, np.float64) or not logits.dtype.isnative:
        raise TypeError(f"logits: expected dtype float32 or float64, got {logits.dtype}")
    if logits.ndim != 2 or not logits.flags.c_contiguous or not logits.flags.aligned:
        raise ValueError(f"logits: expected a C-contiguous (N, C) array, got shape {logits.shape}")
    if not isinstance(labels, np.ndarray) or labels.dtype != np.int64 or labels.shape != (logits.shape[0],) \
            or not labels.flags.c_contiguous:
        raise ValueError(f"labels: expected a C-contiguous int64 array of shape ({logits.shape[0]},), got "
                         f"{getattr(labels, 'dtype', type(labels).__name__)} {getattr(labels, 'shape', '')}")
    if labels.size and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        bad = labels.min() if labels.min() < 0 else labels.max()
        raise IndexError(f"label {bad} is out of range for {logits.shape[1]} classes")
    if not 0.0 <= smoothing <= 1.0:
        raise ValueError(f"label_smoothing: expected 0 <= s <= 1, got {smoothing}")
    if logits.shape[1] == 0 and logits.shape[0] > 0:
        raise ValueError(f"logits: expected at least one class, got shape {logits.shape}")


def cross_entropy_forward(logits, labels, double label_smoothing=0.0, int nthreads=1):
    """Per-row softmax cross-entropy, fused (log-softmax and the pick in one pass).

    Parameters
    ----------
    logits : C-contiguous float32/float64 ndarray (N, C)
    labels : C-contiguous int64 ndarray (N,), each in [0, C)
    label_smoothing : float in [0, 1] (torch's definition)
    nthreads : int >= 1

    Returns
    -------
    loss : ndarray (N,) in logits' dtype
    lse_parts : float64 ndarray (N, 2): per row the max m and log(sum(exp(logits - m))),
        whose sum is the row's log-partition, kept apart for the backward
    Raises TypeError / ValueError / IndexError (a label out of range) before any work.
    """
    _check_ce_args(logits, labels, label_smoothing)
    check_threads(nthreads, "nthreads")
    cdef idx_t N = logits.shape[0], C = logits.shape[1]
    loss = np.empty(N, dtype=logits.dtype)
    lse_parts = np.empty((N, 2), dtype=np.float64)
    cdef cnp.ndarray x_arr = logits, lab_arr = labels, loss_arr = loss, lse_arr = lse_parts
    cdef const long long* lp = <const long long*>cnp.PyArray_DATA(lab_arr)
    cdef double* sp = <double*>cnp.PyArray_DATA(lse_arr)
    cdef void* xp = cnp.PyArray_DATA(x_arr)
    cdef void* op = cnp.PyArray_DATA(loss_arr)
    if N == 0:
        return loss, lse_parts
    with nogil:
        if cnp.PyArray_TYPE(x_arr) == cnp.NPY_FLOAT32:
            _ce_forward(<const float*>xp, lp, <float*>op, sp, N, C, label_smoothing, nthreads)
        else:
            _ce_forward(<const double*>xp, lp, <double*>op, sp, N, C, label_smoothing, nthreads)
    return loss, lse_parts


def cross_entropy_backward(logits, labels, lse_parts, grad_loss, double label_smoothing=0.0, int nthreads=1):
    """grad_logits[i, j] = grad_loss[i] * (softmax(logits)[i, j] - (1 - s)[j == labels[i]] - s / C).

    logits, labels, label_smoothing as in cross_entropy_forward; lse_parts: its float64
    (N, 2) output; grad_loss: C-contiguous (N,) array in logits' dtype. Returns (N, C).
    """
    _check_ce_args(logits, labels, label_smoothing)
    check_threads(nthreads, "nthreads")
    cdef idx_t N = logits.shape[0], C = logits.shape[1]
    if not isinstance(lse_parts, np.ndarray) or lse_parts.dtype != np.float64 or lse_parts.shape != (N, 2) \
            or not lse_parts.flags.c_contiguous:
        raise ValueError(f"lse_parts: expected a C-contiguous float64 array of shape ({N}, 2), got "
                         f"{getattr(lse_parts, 'dtype', type(lse_parts).__name__)} {getattr(lse_parts, 'shape', '')}")
    if not isinstance(grad_loss, np.ndarray) or grad_loss.dtype != logits.dtype or grad_loss.shape != (N,) \
            or not grad_loss.flags.c_contiguous:
        raise ValueError(f"grad_loss: expected a C-contiguous {logits.dtype} array of shape ({N},)")
    grad = np.empty_like(logits)
    cdef cnp.ndarray x_arr = logits, lab_arr = labels, lse_arr = lse_parts, g_arr = grad_loss, out_arr = grad
    cdef const long long* lp = <const long long*>cnp.PyArray_DATA(lab_arr)
    cdef const double* sp = <const double*>cnp.PyArray_DATA(lse_arr)
    cdef void* xp = cnp.PyArray_DATA(x_arr)
    cdef void* gp = cnp.PyArray_DATA(g_arr)
    cdef void* op = cnp.PyArray_DATA(out_arr)
    if N == 0:
        return grad
    with nogil:
        if cnp.PyArray_TYPE(x_arr) == cnp.NPY_FLOAT32:
            _ce_backward(<const float*>xp, lp, sp, <const float*>gp, <float*>op, N, C, label_smoothing, nthreads)
        else:
            _ce_backward(<const double*>xp, lp, sp, <const double*>gp, <double*>op, N, C, label_smoothing,
                         nthreads)
    return grad
