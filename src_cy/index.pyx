# cython: language_level=3
"""Indexing kernels: scatter_add (the adjoint of a gather) and a strided copy.

scatter_add is serial on purpose: repeated positions must accumulate in the order
of their index i, so the result is the same on every run and thread count.
"""
import numpy as np

from libc.stdint cimport int64_t
from cython.parallel cimport prange

from tb_types cimport real, idx_t
from threadcheck cimport check_threads

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


cdef idx_t _first_out_of_range(const int64_t[::1] pos, int64_t size) noexcept nogil:
    """Index i of the first pos[i] outside [0, size), or -1 when all are inside."""
    cdef idx_t i
    for i in range(pos.shape[0]):
        if pos[i] < 0 or pos[i] >= size:
            return i
    return -1


cdef void _scatter_add(const int64_t[::1] pos, const real[::1] values, real[::1] out) noexcept nogil:
    """out[pos[i]] += values[i] for i in order; every pos[i] already checked in range."""
    cdef idx_t i
    # out[pos[i]] += values[i]: serial, so repeated positions add in the order of i
    for i in range(pos.shape[0]):
        out[pos[i]] += values[i]


def scatter_add(shape, positions, values):
    """zeros(shape) with values.ravel()[i] added at flat index positions.ravel()[i].

    Parameters
    ----------
    shape : tuple of int
        Shape of the result (non-negative extents).
    positions : ndarray of int64, C-contiguous
        Flat indices into `shape`, each in [0, prod(shape)); repeats accumulate in order.
    values : ndarray, float32 or float64, C-contiguous, positions.size elements

    Returns
    -------
    ndarray of values' dtype and shape `shape`, new and C-contiguous.

    Raises
    ------
    TypeError for non-arrays or wrong dtypes; ValueError for non-contiguous inputs, a
    bad shape or a size mismatch; IndexError (before anything is written) naming the
    first position outside [0, prod(shape)).
    """
    if not isinstance(positions, np.ndarray) or not isinstance(values, np.ndarray):
        raise TypeError(f"scatter_add: expected numpy arrays, got positions "
                        f"{type(positions).__name__} and values {type(values).__name__}")
    if positions.dtype != np.int64:
        raise TypeError(f"scatter_add: expected positions of dtype int64, got {positions.dtype}")
    if values.dtype not in _FLOATS:
        raise TypeError(f"scatter_add: expected values of dtype float32 or float64, got {values.dtype}")
    if not (positions.flags.c_contiguous and values.flags.c_contiguous
            and positions.flags.aligned and values.flags.aligned):
        raise ValueError("scatter_add: expected aligned C-contiguous positions and values")
    if positions.size != values.size:
        raise ValueError(f"scatter_add: expected positions and values of the same size, "
                         f"got {positions.size} and {values.size}")
    try:
        shape = tuple(int(n) for n in shape)
    except TypeError:
        raise TypeError(f"scatter_add: expected shape a tuple of ints, got {shape!r}") from None
    if any(n < 0 for n in shape):
        raise ValueError(f"scatter_add: expected non-negative extents, got shape {shape}")
    cdef int64_t size = 1
    for n in shape:
        size *= n
    out = np.zeros(size, dtype=values.dtype)
    cdef const int64_t[::1] pos = positions.reshape(-1)
    cdef idx_t bad = _first_out_of_range(pos, size)
    if bad >= 0:
        raise IndexError(f"scatter_add: position {positions.reshape(-1)[bad]} (entry {bad}) is out "
                         f"of range for size {size} (shape {shape})")
    cdef const float[::1] vf
    cdef const double[::1] vd
    if values.dtype == np.float32:
        vf = values.reshape(-1)
        _scatter_add[float](pos, vf, out)
    else:
        vd = values.reshape(-1)
        _scatter_add[double](pos, vd, out)
    return out.reshape(shape)


# ---------------------------------------------------------------------------------
# contiguous copy of a transposed view
# ---------------------------------------------------------------------------------

# Square tiles: a tile's TILE input cache lines and TILE output rows stay in L1 while
# it is transposed (32 x 32 float64 is 8 KiB each way).
cdef enum:
    TILE = 32
    MAX_DIMS = 32


cdef void _transpose_copy(const real* src, real* dst, idx_t ndim, const idx_t* shape,
                          const idx_t* istride, idx_t ax, int nthreads) noexcept nogil:
    """dst (C-contiguous, `shape`) = the view src with element strides `istride`.

    `ax` (< ndim - 1) has input stride 1: the view is, for each index of the other
    axes, an (n_i = shape[ax], n_j = shape[last]) matrix read with strides (1, sj) and
    written with strides (oi, 1). Tiles of TILE x TILE keep both sides cache friendly.
    """
    cdef idx_t last = ndim - 1
    cdef idx_t n_i = shape[ax], n_j = shape[last], sj = istride[last]
    cdef idx_t ostride[MAX_DIMS]
    cdef idx_t d, n_other = 1, n_strips = (n_i + TILE - 1) // TILE
    cdef idx_t t, rem, k, so, do, i0, i1, j0, j1, i, j
    cdef idx_t oi
    cdef const real* s
    cdef real* o
    ostride[last] = 1
    for d in range(last - 1, -1, -1):
        ostride[d] = ostride[d + 1] * shape[d + 1]
    oi = ostride[ax]
    for d in range(last):
        if d != ax:
            n_other *= shape[d]
    # task t = (index of the other axes, strip of TILE rows i); each writes its own rows
    for t in prange(n_other * n_strips, nogil=True, num_threads=nthreads, schedule='static'):
        rem = t // n_strips
        so = 0
        do = 0
        for d in range(last - 1, -1, -1):
            if d != ax:
                k = rem % shape[d]
                rem = rem // shape[d]
                so = so + k * istride[d]
                do = do + k * ostride[d]
        i0 = (t % n_strips) * TILE
        i1 = i0 + TILE if i0 + TILE < n_i else n_i
        j0 = 0
        while j0 < n_j:
            j1 = j0 + TILE if j0 + TILE < n_j else n_j
            # dst[i, j] = src[i + j * sj] over the tile
            for i in range(i0, i1):
                s = src + so + i
                o = dst + do + i * oi
                for j in range(j0, j1):
                    o[j] = s[j * sj]
            j0 = j1


def contiguous(a, nthreads=1):
    """C-contiguous copy of any strided view of `a` (always a new array).

    Views whose last axis is strided while another axis has unit stride (transposes,
    permutations of float32/float64 arrays) are copied in cache tiles, in parallel;
    everything else (slices, broadcasts, other dtypes) goes to numpy's copy.

    Parameters
    ----------
    a : ndarray
    nthreads : int, 1 <= nthreads <= 4096 (TypeError / ValueError otherwise)

    Returns
    -------
    ndarray, same shape and dtype, C-contiguous, sharing no memory with `a`.
    """
    if not isinstance(a, np.ndarray):
        raise TypeError(f"contiguous: expected a numpy.ndarray, got {type(a).__name__}")
    cdef int nt = check_threads(nthreads, "nthreads")
    cdef idx_t ndim = a.ndim, item = a.itemsize, ax = -1, d
    if (ndim < 2 or ndim > MAX_DIMS or a.dtype not in _FLOATS or a.size < TILE * TILE
            or a.flags.c_contiguous or not a.flags.aligned or a.strides[ndim - 1] == item):
        return np.array(a, order="C", copy=True)
    for d in range(ndim - 1):
        if a.strides[d] == item and a.shape[d] > 1:
            ax = d
    if ax < 0 or any(s % item for s in a.strides):
        return np.array(a, order="C", copy=True)
    out = np.empty(a.shape, dtype=a.dtype)
    cdef idx_t shape[MAX_DIMS]
    cdef idx_t istride[MAX_DIMS]
    for d in range(ndim):
        shape[d] = a.shape[d]
        istride[d] = a.strides[d] // item
    # the view's first element; the view may start anywhere inside its base buffer
    cdef size_t src = a.__array_interface__["data"][0]
    cdef size_t dst = out.__array_interface__["data"][0]
    if a.dtype == np.float32:
        _transpose_copy[float](<const float*>src, <float*>dst, ndim, shape, istride, ax, nt)
    else:
        _transpose_copy[double](<const double*>src, <double*>dst, ndim, shape, istride, ax, nt)
    return out
