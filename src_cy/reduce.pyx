# cython: language_level=3
"""Reductions over axes: sum, max, min, and argmax along one axis.

Every reduction is planned the same way. Adjacent axes with the same role merge, so
one reduced group becomes the 3-D problem (outer, R, inner): R is the merged reduced
extent, inner the merged trailing kept extent. Reduced groups that are not adjacent
are reduced one at a time, last group first (sum keeps float64 intermediates and
casts once at the end; max/min are exact in any dtype).

Determinism (DESIGN.md, property 9): the work is cut into blocks whose size depends
only on the shape, never on the thread count. Each prange task owns one block and
writes one partial slot; partials are combined afterwards in block order. So the
result is bit-identical for 1 and for N threads. No prange `+=` reduction is used:
OpenMP combines those in an unspecified order.
"""
cimport numpy as cnp

import numpy as np

cnp.import_array()

from libc.stdint cimport int64_t
from cython.parallel cimport prange

from tb_types cimport real, idx_t
from threadcheck cimport check_threads

# Elements per block when reducing contiguous rows (inner == 1). 64 KiB of float32:
# large enough that the partial slots are negligible, small enough for L2.
cdef enum:
    ROW_BLOCK = 16384
# Independent accumulator lanes in the contiguous-row loops (four AVX-512 vectors of
# float32, eight of float64).
cdef enum:
    LANES = 64
# Below this many elements a row is reduced by one plain loop: setting up and folding
# the lanes would cost more.
cdef enum:
    SHORT_RUN = 32
# Kept columns handled by one task when inner > 1 (its double accumulators, 8 KiB,
# stay in L1) and the fewest rows a task reduces, so that writing and re-reading the
# double partials costs at most about 1/16 of reading the input.
cdef enum:
    COL_CHUNK = 1024
    MIN_ROWS = 64
# Columns per task when the partials of the blocks are combined.
cdef enum:
    COMBINE_CHUNK = 256


cdef inline idx_t _cdiv(idx_t a, idx_t b) noexcept nogil:
    return (a + b - 1) // b


cdef inline idx_t _rows_per_block(idx_t width) noexcept nogil:
    """Rows of width `width` per task for inner > 1 (a function of the shape only)."""
    cdef idx_t rows = ROW_BLOCK // width
    return rows if rows > MIN_ROWS else MIN_ROWS


# ---------------------------------------------------------------------------------
# Validation and planning (Python level, before any nogil code)
# ---------------------------------------------------------------------------------

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_PLANS = {}


def _check_array(a, str name):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(a).__name__}")
    if a.dtype not in _FLOATS:
        raise TypeError(f"{name}: expected dtype float32 or float64, got {a.dtype}")
    if not (a.flags.c_contiguous and a.flags.aligned):
        raise ValueError(f"{name}: expected an aligned C-contiguous array, got strides {a.strides} "
                         f"for shape {a.shape} (aligned: {a.flags.aligned})")


def _plan(tuple shape, axes, bint keepdims, str name):
    """(stages, out_shape): the (outer, R, inner) problems to run in order.

    Cached by (shape, axes, keepdims): the per-call cost matters for small arrays.
    """
    if type(axes) is not tuple or len(axes) == 0:
        raise ValueError(f"{name}: expected axes a non-empty tuple of ints, got {axes!r}")
    key = (shape, axes, keepdims)
    plan = _PLANS.get(key)
    if plan is not None:
        return plan
    ndim = len(shape)
    prev = -1
    for ax in axes:
        if isinstance(ax, bool) or not isinstance(ax, (int, np.integer)) or ax <= prev or ax >= ndim:
            raise ValueError(f"{name}: expected axes sorted, distinct and in [0, {ndim}) "
                             f"for shape {shape}, got {axes!r}")
        prev = ax
    if keepdims:
        out_shape = tuple(1 if d in axes else n for d, n in enumerate(shape))
    else:
        out_shape = tuple(n for d, n in enumerate(shape) if d not in axes)
    # groups: [extent, reduced] with extent-1 dims dropped and neighbours of the same
    # role merged.
    groups = []
    for d, n in enumerate(shape):
        if n == 1:
            continue
        red = d in axes
        if groups and groups[len(groups) - 1][1] == red:
            groups[len(groups) - 1][0] *= n
        else:
            groups.append([n, red])
    stages = []
    while True:
        g = len(groups) - 1
        while g >= 0 and not groups[g][1]:
            g -= 1
        if g < 0:
            break
        outer = 1
        for n, _ in groups[:g]:
            outer *= n
        inner = 1
        for n, _ in groups[g + 1:]:
            inner *= n
        stages.append((outer, groups[g][0], inner))
        del groups[g]
        if 0 < g < len(groups) and not groups[g - 1][1] and not groups[g][1]:
            groups[g - 1][0] *= groups[g][0]
            del groups[g]
    plan = (tuple(stages), out_shape)
    if len(_PLANS) > 4096:
        _PLANS.clear()
    _PLANS[key] = plan
    return plan


# ---------------------------------------------------------------------------------
# sum
# ---------------------------------------------------------------------------------

cdef extern from "vec8d.h":
    double tb_sum_run_f32(const float* x, idx_t n) noexcept nogil
    double tb_sum_run_f64(const double* x, idx_t n) noexcept nogil
    void tb_sum_run4_f32(const float* x, idx_t n, idx_t stride, double* out) noexcept nogil
    void tb_sum_run4_f64(const double* x, idx_t n, idx_t stride, double* out) noexcept nogil


cdef inline double _sum_run(const real* p, idx_t n) noexcept nogil:
    """sum(p[0:n]) in double with a fixed summation pattern (depends on n only)."""
    # NOTE: 32 lanes in four vector registers (vec8d.h). The earlier Cython lane array
    # lived in L1 and ran at 2.5x torch's time on an L2-resident row; registers reach
    # memory bandwidth on DRAM-sized rows.
    cdef double s = 0.0
    cdef idx_t i
    if n < SHORT_RUN:
        # short rows (e.g. 10 classes): one running sum beats setting up the lanes
        for i in range(n):
            s += p[i]
        return s
    if real is float:
        return tb_sum_run_f32(p, n)
    else:
        return tb_sum_run_f64(p, n)


cdef inline void _sum_rows(const real* p, idx_t nrows, idx_t width, idx_t stride,
                           double* acc) noexcept nogil:
    """acc[j] = sum over r < nrows of p[r * stride + j], for j < width."""
    cdef idx_t r = 0, j
    cdef const real* q0
    cdef const real* q1
    cdef const real* q2
    cdef const real* q3
    for j in range(width):
        acc[j] = 0.0
    # acc[j] += (q0[j] + q1[j]) + (q2[j] + q3[j]): four rows per pass over acc, so acc
    # is loaded and stored once per four input rows; vectorised across j.
    while r + 4 <= nrows:
        q0 = p + r * stride
        q1 = q0 + stride
        q2 = q1 + stride
        q3 = q2 + stride
        for j in range(width):
            acc[j] += (<double>q0[j] + <double>q1[j]) + (<double>q2[j] + <double>q3[j])
        r += 4
    while r < nrows:
        q0 = p + r * stride
        for j in range(width):
            acc[j] += q0[j]
        r += 1


cdef inline void _sum_row_group(const real* x, idx_t nrows, idx_t R, double* out) noexcept nogil:
    """out[k] = _sum_run(x + k * R, R) for k < nrows, bit for bit; four rows side by
    side where there are four (more memory streams in flight, see vec8d.h)."""
    cdef idx_t k = 0
    if R >= SHORT_RUN:
        while k + 4 <= nrows:
            if real is float:
                tb_sum_run4_f32(x + k * R, R, R, out + k)
            else:
                tb_sum_run4_f64(x + k * R, R, R, out + k)
            k = k + 4
    while k < nrows:
        out[k] = _sum_run(x + k * R, R)
        k = k + 1


cdef void _sum_short_rows(const real* x, real* out, idx_t outer, idx_t R) noexcept nogil:
    """out[o] = sum of row o of x (outer, R), R <= ROW_BLOCK: _sum_stage's one-block case,
    the same sums per row, so the same bits, without the memoryview set-up."""
    cdef idx_t o, k, n
    cdef double s[4]
    for o in range(0, outer, 4):
        n = min(<idx_t>4, outer - o)
        _sum_row_group(x + o * R, n, R, s)
        for k in range(n):
            out[o + k] = <real>s[k]


cdef void _sum_stage(const real[:, :, ::1] x, double[:, ::1] out, double[::1] part,
                     int nthreads) noexcept nogil:
    """out[o, j] = sum over r of x[o, r, j]; `part` holds the per-block partials."""
    cdef idx_t outer = x.shape[0], R = x.shape[1], inner = x.shape[2]
    cdef idx_t nblk, rows, width, nchunk, t, o, b, c, r0, j0, n, j
    cdef double s
    cdef double* dst
    if inner == 1:
        # Rows are contiguous: block b of row o is x[o, b*ROW_BLOCK : (b+1)*ROW_BLOCK].
        nblk = _cdiv(R, ROW_BLOCK)
        if nblk == 1:
            # tasks of four rows (out is (outer, 1): its rows are consecutive doubles)
            for t in prange(_cdiv(outer, 4), nogil=True, num_threads=nthreads, schedule='static'):
                _sum_row_group(&x[t * 4, 0, 0], min(<idx_t>4, outer - t * 4), R, &out[t * 4, 0])
            return
        # part[o * nblk + b] = sum of block b of row o
        for t in prange(outer * nblk, nogil=True, num_threads=nthreads, schedule='static'):
            o = t // nblk
            b = t % nblk
            r0 = b * ROW_BLOCK
            n = R - r0 if R - r0 < ROW_BLOCK else ROW_BLOCK
            part[t] = _sum_run(&x[o, r0, 0], n)
        # out[o] = sum over b of part[o * nblk + b], in block order
        for o in prange(outer, nogil=True, num_threads=nthreads, schedule='static'):
            s = part[o * nblk]
            for b in range(1, nblk):
                s = s + part[o * nblk + b]
            out[o, 0] = s
        return
    # inner > 1: task (o, b, c) sums rows [b*rows, (b+1)*rows) of columns
    # [c*COL_CHUNK, (c+1)*COL_CHUNK) into its own slot part[o, b, columns].
    width = inner if inner < COL_CHUNK else COL_CHUNK
    nchunk = _cdiv(inner, width)
    rows = _rows_per_block(width)
    nblk = _cdiv(R, rows)
    for t in prange(outer * nblk * nchunk, nogil=True, num_threads=nthreads, schedule='static'):
        o = t // (nblk * nchunk)
        b = (t // nchunk) % nblk
        c = t % nchunk
        r0 = b * rows
        j0 = c * width
        if nblk == 1:
            dst = &out[o, j0]
        else:
            dst = &part[(o * nblk + b) * inner + j0]
        _sum_rows(&x[o, r0, j0], R - r0 if R - r0 < rows else rows,
                  inner - j0 if inner - j0 < width else width, inner, dst)
    if nblk == 1:
        return
    # out[o, j] = sum over b of part[o, b, j], in block order; vectorised across j.
    # Each column's sum does not depend on how columns are split, so narrower chunks
    # here only spread the work.
    nchunk = _cdiv(inner, COMBINE_CHUNK)
    for t in prange(outer * nchunk, nogil=True, num_threads=nthreads, schedule='static'):
        o = t // nchunk
        j0 = (t % nchunk) * COMBINE_CHUNK
        n = inner - j0 if inner - j0 < COMBINE_CHUNK else COMBINE_CHUNK
        _sum_rows(&part[o * nblk * inner + j0], nblk, n, inner, &out[o, j0])


cdef idx_t _part_size(idx_t outer, idx_t R, idx_t inner):
    """Length of the partials buffer one (outer, R, inner) stage needs (0: none)."""
    cdef idx_t width, nblk
    if inner == 1:
        nblk = _cdiv(R, ROW_BLOCK)
    else:
        width = inner if inner < COL_CHUNK else COL_CHUNK
        nblk = _cdiv(R, _rows_per_block(width))
    return 0 if nblk == 1 else outer * nblk * inner


# Stands in for the partials buffer when a stage has a single block (never written).
_NO_PART64 = np.empty(0, dtype=np.float64)
_NO_PART32 = np.empty(0, dtype=np.float32)


def _partials(idx_t outer, idx_t R, idx_t inner, dtype):
    cdef idx_t n = _part_size(outer, R, inner)
    if n == 0:
        return _NO_PART32 if dtype == np.float32 else _NO_PART64
    return np.empty(n, dtype=dtype)


def sum_axes(a, axes, keepdims, nthreads=1):
    """Sum of `a` over `axes`, accumulated in float64 and cast to a's dtype once.

    Parameters
    ----------
    a : ndarray, float32 or float64, C-contiguous
    axes : tuple of int
        Sorted, distinct, non-negative, non-empty.
    keepdims : bool
        Keep the reduced axes with extent 1.
    nthreads : int
        OpenMP threads; the result is bit-identical for every value.

    Returns
    -------
    ndarray of a's dtype, new and C-contiguous. The sum over an empty set is 0.

    Raises
    ------
    TypeError for a non-array or a dtype other than float32/float64; ValueError for a
    non-contiguous array, invalid axes or nthreads.
    """
    _check_array(a, "sum")
    check_threads(nthreads, "nthreads")
    stages, out_shape = _plan(a.shape, axes, keepdims, "sum")
    if a.size == 0:
        return np.zeros(out_shape, dtype=a.dtype)
    cdef cnp.ndarray res_arr
    cdef void* src
    cdef idx_t n_rows, row_len
    if nthreads == 1 and len(stages) == 1 and stages[0][2] == 1 and stages[0][1] <= ROW_BLOCK:
        # one stage of short contiguous rows (any small tensor's full sum, a loss's row
        # sums): the fixed cost of the general path below is most of the time there
        res_arr = np.empty(out_shape, dtype=a.dtype)
        src = cnp.PyArray_DATA(<cnp.ndarray>a)
        n_rows, row_len = stages[0][0], stages[0][1]
        with nogil:
            if cnp.PyArray_TYPE(res_arr) == cnp.NPY_FLOAT32:
                _sum_short_rows[float](<const float*>src, <float*>cnp.PyArray_DATA(res_arr),
                                       n_rows, row_len)
            else:
                _sum_short_rows[double](<const double*>src, <double*>cnp.PyArray_DATA(res_arr),
                                        n_rows, row_len)
        return res_arr
    cdef const float[:, :, ::1] xf
    cdef const double[:, :, ::1] xd
    cdef double[:, ::1] out
    x = a
    for outer, R, inner in stages:
        part = _partials(outer, R, inner, np.float64)
        res = np.empty((outer, inner), dtype=np.float64)
        out = res
        if x.dtype == np.float32:
            xf = x.reshape(outer, R, inner)
            _sum_stage[float](xf, out, part, nthreads)
        else:
            xd = x.reshape(outer, R, inner)
            _sum_stage[double](xd, out, part, nthreads)
        x = res
    # No stage (every reduced axis has extent 1): the sum is a copy.
    # NOTE: a float64 total beyond float32's range becomes inf, as an elementwise kernel's
    # overflow does: silently (numpy's cast would warn, or raise under errstate).
    with np.errstate(over="ignore"):
        return x.astype(a.dtype, copy=x is a).reshape(out_shape)


# ---------------------------------------------------------------------------------
# max and min
# ---------------------------------------------------------------------------------

cdef inline bint _takes(real x, real m, bint is_max) noexcept nogil:
    """Whether x replaces the running extreme m.

    Strictly better, or NaN: once m is NaN every comparison with it is false, so NaN
    sticks, which is numpy's propagation.
    """
    # NOTE: bitwise, branch-free in is_max: a branch here stopped gcc vectorising the
    # loops that call this (8x slower).
    return ((x > m) & is_max) | ((x < m) & (not is_max)) | (x != x)


cdef inline real _extreme_run(const real* p, idx_t n, bint is_max) noexcept nogil:
    """max (or min) of p[0:n], n >= 1, NaN if any element is NaN."""
    # NOTE: LANES independent lanes (vectorised compare + blend), folded by halving.
    cdef real acc[LANES]
    cdef idx_t i = 0, k, h
    cdef real v, m = p[0]
    if n < SHORT_RUN:
        for i in range(1, n):
            v = p[i]
            m = v if _takes(v, m, is_max) else m
        return m
    for k in range(LANES):
        acc[k] = p[0]
    while i + LANES <= n:
        for k in range(LANES):
            v = p[i + k]
            acc[k] = v if _takes(v, acc[k], is_max) else acc[k]
        i += LANES
    for k in range(n - i):
        v = p[i + k]
        acc[k] = v if _takes(v, acc[k], is_max) else acc[k]
    h = LANES // 2
    while h >= 1:
        for k in range(h):
            v = acc[k + h]
            acc[k] = v if _takes(v, acc[k], is_max) else acc[k]
        h //= 2
    return acc[0]


cdef inline void _extreme_rows(const real* p, idx_t nrows, idx_t width, idx_t stride,
                               real* acc, bint is_max) noexcept nogil:
    """acc[j] = max (or min) over r < nrows of p[r * stride + j], nrows >= 1."""
    cdef idx_t r, j
    cdef const real* q
    cdef real v
    for j in range(width):
        acc[j] = p[j]
    for r in range(1, nrows):
        q = p + r * stride
        for j in range(width):
            v = q[j]
            acc[j] = v if _takes(v, acc[j], is_max) else acc[j]


cdef void _extreme_stage(const real[:, :, ::1] x, real[:, ::1] out, real[::1] part,
                         bint is_max, int nthreads) noexcept nogil:
    """out[o, j] = max (or min) over r of x[o, r, j]; same blocks as _sum_stage."""
    cdef idx_t outer = x.shape[0], R = x.shape[1], inner = x.shape[2]
    cdef idx_t nblk, rows, width, nchunk, t, o, b, c, r0, j0, n
    cdef real m, v
    cdef real* dst
    if inner == 1:
        nblk = _cdiv(R, ROW_BLOCK)
        if nblk == 1:
            for o in prange(outer, nogil=True, num_threads=nthreads, schedule='static'):
                out[o, 0] = _extreme_run(&x[o, 0, 0], R, is_max)
            return
        for t in prange(outer * nblk, nogil=True, num_threads=nthreads, schedule='static'):
            o = t // nblk
            r0 = (t % nblk) * ROW_BLOCK
            part[t] = _extreme_run(&x[o, r0, 0], R - r0 if R - r0 < ROW_BLOCK else ROW_BLOCK, is_max)
        for o in prange(outer, nogil=True, num_threads=nthreads, schedule='static'):
            m = part[o * nblk]
            for b in range(1, nblk):
                v = part[o * nblk + b]
                if _takes(v, m, is_max):
                    m = v
            out[o, 0] = m
        return
    width = inner if inner < COL_CHUNK else COL_CHUNK
    nchunk = _cdiv(inner, width)
    rows = _rows_per_block(width)
    nblk = _cdiv(R, rows)
    for t in prange(outer * nblk * nchunk, nogil=True, num_threads=nthreads, schedule='static'):
        o = t // (nblk * nchunk)
        b = (t // nchunk) % nblk
        c = t % nchunk
        r0 = b * rows
        j0 = c * width
        if nblk == 1:
            dst = &out[o, j0]
        else:
            dst = &part[(o * nblk + b) * inner + j0]
        _extreme_rows(&x[o, r0, j0], R - r0 if R - r0 < rows else rows,
                      inner - j0 if inner - j0 < width else width, inner, dst, is_max)
    if nblk == 1:
        return
    nchunk = _cdiv(inner, COMBINE_CHUNK)
    for t in prange(outer * nchunk, nogil=True, num_threads=nthreads, schedule='static'):
        o = t // nchunk
        j0 = (t % nchunk) * COMBINE_CHUNK
        n = inner - j0 if inner - j0 < COMBINE_CHUNK else COMBINE_CHUNK
        _extreme_rows(&part[o * nblk * inner + j0], nblk, n, inner, &out[o, j0], is_max)


def _extreme(a, axes, keepdims, nthreads, bint is_max, str name):
    _check_array(a, name)
    check_threads(nthreads, "nthreads")
    stages, out_shape = _plan(a.shape, axes, keepdims, name)
    if a.size == 0:
        if np.prod(out_shape) == 0:
            return np.empty(out_shape, dtype=a.dtype)
        raise ValueError(f"{name}: zero-size reduction (shape {a.shape}, axes {axes}) has no identity")
    cdef const float[:, :, ::1] xf
    cdef const double[:, :, ::1] xd
    x = a
    for outer, R, inner in stages:
        part = _partials(outer, R, inner, a.dtype)
        res = np.empty((outer, inner), dtype=a.dtype)
        if a.dtype == np.float32:
            xf = x.reshape(outer, R, inner)
            _extreme_stage[float](xf, res, part, is_max, nthreads)
        else:
            xd = x.reshape(outer, R, inner)
            _extreme_stage[double](xd, res, part, is_max, nthreads)
        x = res
    return (x.copy() if x is a else x).reshape(out_shape)


def max_axes(a, axes, keepdims, nthreads=1):
    """Maximum of `a` over `axes`; NaN if any reduced value is NaN (numpy's rule).

    Parameters and errors as `sum_axes`; a zero-size reduced set with a non-empty
    result raises ValueError (max has no identity).
    """
    return _extreme(a, axes, keepdims, nthreads, True, "max")


def min_axes(a, axes, keepdims, nthreads=1):
    """Minimum of `a` over `axes`; NaN if any reduced value is NaN (numpy's rule).

    Parameters and errors as `max_axes`.
    """
    return _extreme(a, axes, keepdims, nthreads, False, "min")


# ---------------------------------------------------------------------------------
# argmax
# ---------------------------------------------------------------------------------

cdef inline bint _beats(real v, real best) noexcept nogil:
    """Whether v, seen later, replaces best: strictly greater, or the first NaN."""
    return (v > best) | ((v != v) & (best == best))


cdef inline bint _first_of(real v, int64_t i, real best, int64_t bi) noexcept nogil:
    """Whether (v, i) beats (best, bi) when the indices come in any order: the larger
    value, the smaller index among equals, the smaller index among NaNs."""
    return _beats(v, best) | (((v == best) | ((v != v) & (best != best))) & (i < bi))


cdef inline int64_t _argmax_run(const real* p, idx_t n, real* best_out) noexcept nogil:
    """Index of the first maximum of p[0:n] (n >= 1; the first NaN if any); its value."""
    # NOTE: LANES lanes, lane k sees p[i + k] in order and keeps its first maximum
    # (vectorised compare + two blends); the lanes are then merged by value, ties going
    # to the smaller index, which is the first occurrence overall.
    cdef real best[LANES]
    cdef int64_t bidx[LANES]
    cdef idx_t i = 0, k
    cdef real v, m
    cdef int64_t mi
    cdef bint t
    if n < SHORT_RUN:
        m = p[0]
        mi = 0
        for i in range(1, n):
            if _beats(p[i], m):
                m = p[i]
                mi = i
        best_out[0] = m
        return mi
    for k in range(LANES):
        best[k] = p[0]
        bidx[k] = 0
    while i + LANES <= n:
        for k in range(LANES):
            v = p[i + k]
            t = _beats(v, best[k])
            best[k] = v if t else best[k]
            bidx[k] = i + k if t else bidx[k]
        i += LANES
    for k in range(n - i):
        v = p[i + k]
        if _beats(v, best[k]):
            best[k] = v
            bidx[k] = i + k
    m = best[0]
    mi = bidx[0]
    for k in range(1, LANES):
        if _first_of(best[k], bidx[k], m, mi):
            m = best[k]
            mi = bidx[k]
    best_out[0] = m
    return mi


cdef inline void _argmax_rows(const real* p, idx_t nrows, idx_t width, idx_t stride,
                              idx_t r_base, real* best, int64_t* idx) noexcept nogil:
    """Per column j < width: first row r of the maximum of p[r * stride + j], + r_base."""
    cdef idx_t r, j
    cdef const real* q
    cdef real v
    for j in range(width):
        best[j] = p[j]
        idx[j] = r_base
    for r in range(1, nrows):
        q = p + r * stride
        for j in range(width):
            v = q[j]
            if _beats(v, best[j]):
                best[j] = v
                idx[j] = r_base + r


cdef void _argmax_stage(const real[:, :, ::1] x, int64_t[:, ::1] out, real[::1] pval,
                        int64_t[::1] pidx, int nthreads) noexcept nogil:
    """out[o, j] = first r maximising x[o, r, j]; same blocks as _sum_stage."""
    cdef idx_t outer = x.shape[0], R = x.shape[1], inner = x.shape[2]
    cdef idx_t nblk, rows, width, nchunk, t, o, b, c, r0, j0, n, j, k
    cdef real best, v
    cdef int64_t bi
    if inner == 1:
        nblk = _cdiv(R, ROW_BLOCK)
        # pidx[o * nblk + b], pval[...]: argmax of block b of row o (index within the row)
        for t in prange(outer * nblk, nogil=True, num_threads=nthreads, schedule='static'):
            o = t // nblk
            r0 = (t % nblk) * ROW_BLOCK
            pidx[t] = r0 + _argmax_run(&x[o, r0, 0], R - r0 if R - r0 < ROW_BLOCK else ROW_BLOCK,
                                       &pval[t])
        # blocks in order: an equal later block never wins, so the first maximum stays
        for o in prange(outer, nogil=True, num_threads=nthreads, schedule='static'):
            best = pval[o * nblk]
            bi = pidx[o * nblk]
            for b in range(1, nblk):
                v = pval[o * nblk + b]
                if _beats(v, best):
                    best = v
                    bi = pidx[o * nblk + b]
            out[o, 0] = bi
        return
    width = inner if inner < COL_CHUNK else COL_CHUNK
    nchunk = _cdiv(inner, width)
    rows = _rows_per_block(width)
    nblk = _cdiv(R, rows)
    # task (o, b, c): rows [b*rows, (b+1)*rows) x columns chunk c -> slots pval/pidx[o, b, cols]
    for t in prange(outer * nblk * nchunk, nogil=True, num_threads=nthreads, schedule='static'):
        o = t // (nblk * nchunk)
        b = (t // nchunk) % nblk
        c = t % nchunk
        r0 = b * rows
        j0 = c * width
        k = (o * nblk + b) * inner + j0
        _argmax_rows(&x[o, r0, j0], R - r0 if R - r0 < rows else rows,
                     inner - j0 if inner - j0 < width else width, inner, r0,
                     &pval[k], &pidx[k])
    # out[o, j]: the blocks' winners combined in block order
    for t in prange(outer * inner, nogil=True, num_threads=nthreads, schedule='static'):
        o = t // inner
        j = t % inner
        k = o * nblk * inner + j
        best = pval[k]
        bi = pidx[k]
        for b in range(1, nblk):
            v = pval[k + b * inner]
            if _beats(v, best):
                best = v
                bi = pidx[k + b * inner]
        out[o, j] = bi


def argmax_axis(a, axis, nthreads=1):
    """int64 index of the first maximum of `a` along `axis` (None: of the flattened array).

    NaN counts as the maximum (the first NaN wins), as in numpy.

    Parameters
    ----------
    a : ndarray, float32 or float64, C-contiguous
    axis : int or None
        Negative values count from the end.
    nthreads : int

    Returns
    -------
    ndarray of int64: shape a.shape without `axis`, or 0-d for axis=None.

    Raises
    ------
    TypeError / ValueError as `sum_axes`; ValueError for an empty reduced extent.
    """
    _check_array(a, "argmax")
    check_threads(nthreads, "nthreads")
    shape = a.shape
    if axis is None:
        outer, R, inner = 1, a.size, 1
        out_shape = ()
    else:
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) \
                or not -a.ndim <= axis < a.ndim:
            raise ValueError(f"argmax: expected axis None or an int in [{-a.ndim}, {a.ndim}) "
                             f"for shape {shape}, got {axis!r}")
        axis = int(axis) % a.ndim
        outer = 1
        for n in shape[:axis]:
            outer *= n
        R = shape[axis]
        inner = 1
        for n in shape[axis + 1:]:
            inner *= n
        out_shape = shape[:axis] + shape[axis + 1:]
    res = np.empty((outer, inner), dtype=np.int64)
    if outer * inner == 0:
        return res.reshape(out_shape)
    if R == 0:
        raise ValueError(f"argmax: empty reduced extent (shape {shape}, axis {axis})")
    # argmax always combines its partials (even one block), so it sizes them itself
    cdef idx_t nblk = _cdiv(R, ROW_BLOCK) if inner == 1 else \
        _cdiv(R, _rows_per_block(inner if inner < COL_CHUNK else COL_CHUNK))
    pval = np.empty(outer * nblk * inner, dtype=a.dtype)
    pidx = np.empty(outer * nblk * inner, dtype=np.int64)
    cdef const float[:, :, ::1] xf
    cdef const double[:, :, ::1] xd
    if a.dtype == np.float32:
        xf = a.reshape(outer, R, inner)
        _argmax_stage[float](xf, res, pval, pidx, nthreads)
    else:
        xd = a.reshape(outer, R, inner)
        _argmax_stage[double](xd, res, pval, pidx, nthreads)
    return res.reshape(out_shape)
