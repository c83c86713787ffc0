# cython: language_level=3
"""Fused Batch Normalization kernels: training forward, eval forward, backward.

Array level only: numpy arrays in, numpy arrays out; nothing here knows about
Tensor or autograd (the fused Function in tinygrad_bn calls these).

Names follow the paper's Algorithm 1 (DESIGN.md "Batch Normalization"); per
channel c over its M = N*L values:
    mean = sum(x) / M,   var = sum((x - mean)^2) / M   (biased, for normalising)
    inv_std = 1 / sqrt(var + eps),   x_hat = (x - mean) * inv_std
    y = gamma * x_hat + beta
    grad_beta = sum(grad_y),   grad_gamma = sum(grad_y * x_hat)
    grad_x = gamma * inv_std * (grad_y - (grad_beta + x_hat * grad_gamma) / M)

Design
------
Layouts. x is C-contiguous (N, C) or (N, C, L) (the caller reshapes (N, C, H, W)
to L = H*W). Two loop shapes, chosen from the shape alone:
  * planes (L >= PLANE_MIN_L): each (n, c) plane of L values is contiguous. The
    work unit is a run of at most CHUNK values of one plane; units are numbered
    in memory order, so threads stream through x front to back.
  * columns (L < PLANE_MIN_L, which includes (N, C)): x is an (N, C*L) matrix of
    rows; loops go rows outer, columns inner (contiguous, vectorised). Channels
    strided by C in memory are never walked one at a time (LESSONS: 20x slower).
Passes. Forward: one read of x for the statistics, then one read of x and one
write of y. Backward: pass 1 reads x and grad_y once and forms sum(grad_y) and
sum((x - mean) * grad_y) together; pass 2 writes grad_x. The second pass of each
pair runs each thread's share back to front, so it starts on the data the first
pass read last (still in cache).
Statistics in float64. Sums are float64 even for float32 data, and the mean is
never rounded to float32 before centring: LESSONS measured 1.2e-7 max error in y
at |mean|/std = 1e4 this way, against 3.4e-3 with float32 sums. The variance
comes from sums shifted by K = the channel's first value, sum(x - K) and
sum((x - K)^2), in one read of x; this is not E[x^2] - E[x]^2: since K is one of
the samples, (mean - K)^2 <= M * var, so cancellation costs at most a factor M
of float64 rounding (for float32 input x - K and its square are exact in double).
A channel of equal values gives var = 0 exactly, and y = beta exactly because y
is formed as (x - mean) * alpha + beta in double (alpha = gamma * inv_std).
Determinism. Every sum is split into partials over blocks whose boundaries depend
only on the shape (plane units; fixed row blocks x column chunks), each partial
is accumulated in a fixed order (LANES independent double accumulators, folded
pairwise) and partials are combined in a fixed order. Threads only decide who
computes which partial, so results are bit-identical for any thread count. No
prange reduction is used: OpenMP combines those in an unspecified order.
Vectorisation without -ffast-math: the compiler may not reassociate a single
double sum, so each unit sum keeps LANES independent accumulators and the
column path keeps one accumulator per column; both vectorise as written.
"""
cimport cython
cimport numpy as cnp
from cython.parallel cimport prange
from libc.math cimport sqrt
from libc.string cimport memset

import numpy as np

from tb_types cimport idx_t, real

cnp.import_array()

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #if defined(__AVX__)
    #include <immintrin.h>
    #endif
    /* dst[0:n] = src[0:n] with non-temporal (cache-bypassing) stores for the 32-byte
       aligned middle: an output far larger than the caches is then written without
       first being read into them (a plain store reads each line before writing it). */
    static void tb_stream_copy(void *dst, const void *src, size_t n) {
    #if defined(__AVX__)
        char *d = (char *)dst;
        const char *s = (const char *)src;
        size_t head = (32 - ((uintptr_t)d & 31)) & 31;
        if (head > n) head = n;
        memcpy(d, s, head);
        d += head; s += head; n -= head;
        for (; n >= 32; n -= 32, d += 32, s += 32)
            _mm256_stream_si256((__m256i *)d, _mm256_loadu_si256((const __m256i *)s));
        memcpy(d, s, n);
    #else
        memcpy(dst, src, n);
    #endif
    }
    /* Order this thread's non-temporal stores before whatever it does next. */
    static void tb_stream_fence(void) {
    #if defined(__AVX__)
        _mm_sfence();
    #endif
    }
    """
    void tb_stream_copy(void* dst, const void* src, size_t n) noexcept nogil
    void tb_stream_fence() noexcept nogil


cdef extern from *:
    """
    /* Unit sums over one contiguous run, in float64, as explicit vectors of doubles
       (GCC/Clang vector extensions): 32 lanes in four 8-double accumulators per sum
       (enough independent chains to hide the add latency), a scalar tail, then a
       fixed fold. Without -ffast-math a compiler may not split
       one running sum into lanes, and its SLP vectoriser handled the Cython form of
       this loop only partly; written with vector types the lane layout is explicit,
       identical for every thread count, and vectorised with AVX2 or AVX-512 alike. */
    typedef double tb_v8d __attribute__((vector_size(64)));
    typedef float tb_v8f __attribute__((vector_size(32)));

    static inline tb_v8d tb_load_f32(const float *p) {
        tb_v8f v;
        memcpy(&v, p, sizeof v);
        return __builtin_convertvector(v, tb_v8d);
    }
    static inline tb_v8d tb_load_f64(const double *p) {
        tb_v8d v;
        memcpy(&v, p, sizeof v);
        return v;
    }
    static inline double tb_fold(tb_v8d v) {
        return ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]));
    }

    /* out[0] = sum(x - K), out[1] = sum((x - K)^2) */
    #define TB_SUM_SHIFTED(NAME, T, LOAD)                                          \
    static void NAME(const T *x, Py_ssize_t n, double K, double *out) {             \
        tb_v8d s1a = {0}, s1b = {0}, s1c = {0}, s1d = {0};                          \
        tb_v8d s2a = {0}, s2b = {0}, s2c = {0}, s2d = {0};                          \
        double t1 = 0.0, t2 = 0.0;                                                  \
        Py_ssize_t i = 0;                                                           \
        for (; i + 32 <= n; i += 32) {                                              \
            tb_v8d da = LOAD(x + i) - K, db = LOAD(x + i + 8) - K;                  \
            tb_v8d dc = LOAD(x + i + 16) - K, dd = LOAD(x + i + 24) - K;            \
            s1a += da; s1b += db; s1c += dc; s1d += dd;                             \
            s2a += da * da; s2b += db * db; s2c += dc * dc; s2d += dd * dd;         \
        }                                                                           \
        for (; i < n; i++) {                                                        \
            double d = (double)x[i] - K;                                            \
            t1 += d; t2 += d * d;                                                   \
        }                                                                           \
        out[0] = tb_fold((s1a + s1b) + (s1c + s1d)) + t1;                           \
        out[1] = tb_fold((s2a + s2b) + (s2c + s2d)) + t2;                           \
    }
    /* out[0] = sum(grad_y), out[1] = sum((x - mean) * grad_y) */
    #define TB_SUM_GRAD(NAME, T, LOAD)                                              \
    static void NAME(const T *x, const T *g, Py_ssize_t n, double mean, double *out) { \
        tb_v8d s1a = {0}, s1b = {0}, s1c = {0}, s1d = {0};                          \
        tb_v8d s2a = {0}, s2b = {0}, s2c = {0}, s2d = {0};                          \
        double t1 = 0.0, t2 = 0.0;                                                  \
        Py_ssize_t i = 0;                                                           \
        for (; i + 32 <= n; i += 32) {                                              \
            tb_v8d ga = LOAD(g + i), gb = LOAD(g + i + 8);                          \
            tb_v8d gc = LOAD(g + i + 16), gd = LOAD(g + i + 24);                    \
            s1a += ga; s1b += gb; s1c += gc; s1d += gd;                             \
            s2a += (LOAD(x + i) - mean) * ga;                                       \
            s2b += (LOAD(x + i + 8) - mean) * gb;                                   \
            s2c += (LOAD(x + i + 16) - mean) * gc;                                  \
            s2d += (LOAD(x + i + 24) - mean) * gd;                                  \
        }                                                                           \
        for (; i < n; i++) {                                                        \
            t1 += (double)g[i]; t2 += ((double)x[i] - mean) * (double)g[i];         \
        }                                                                           \
        out[0] = tb_fold((s1a + s1b) + (s1c + s1d)) + t1;                           \
        out[1] = tb_fold((s2a + s2b) + (s2c + s2d)) + t2;                           \
    }
    TB_SUM_SHIFTED(tb_sum_shifted_f32, float, tb_load_f32)
    TB_SUM_SHIFTED(tb_sum_shifted_f64, double, tb_load_f64)
    TB_SUM_GRAD(tb_sum_grad_f32, float, tb_load_f32)
    TB_SUM_GRAD(tb_sum_grad_f64, double, tb_load_f64)
    """
    void tb_sum_shifted_f32(const float* x, idx_t n, double K, double* out) noexcept nogil
    void tb_sum_shifted_f64(const double* x, idx_t n, double K, double* out) noexcept nogil
    void tb_sum_grad_f32(const float* x, const float* g, idx_t n, double mean,
                         double* out) noexcept nogil
    void tb_sum_grad_f64(const double* x, const double* g, idx_t n, double mean,
                         double* out) noexcept nogil

# Outputs of at least this many bytes are written with non-temporal stores.
cdef Py_ssize_t _stream_min_bytes = 16 << 20


def _set_stream_min_bytes(Py_ssize_t n):
    """Benchmark knob: outputs of at least n bytes use non-temporal stores."""
    global _stream_min_bytes
    _stream_min_bytes = n

# fmt: off
cdef enum:
    STREAM_BUF = 2048       # values formed in L1 before a non-temporal copy out
    PLANE_MIN_L = 64        # L >= this: plane loops; below: column loops
    CHUNK = 16384           # most values in one plane unit (splits big planes for threads)
    COL_CHUNK = 1024        # columns per column-path task: its partials stay in L1
    ROWS_MIN = 16           # fewest rows in a column-path row block
    NB_MAX = 32             # most row blocks
    PART_BUDGET = 131072    # row blocks * columns at most (1 MiB per partial array)
# fmt: on


cdef struct Plan:
    idx_t N, C, L, M
    bint planes
    # planes: units of at most CHUNK values, nch per plane, U in all
    idx_t nch, U
    # columns: N rows of ncols = C*L values, blocks of RB rows (nb), column chunks (ncc)
    idx_t ncols, RB, nb, ncc


cdef inline idx_t _cdiv(idx_t a, idx_t b) noexcept nogil:
    return (a + b - 1) // b


cdef void _make_plan(Plan* p, idx_t N, idx_t C, idx_t L) noexcept nogil:
    """Block partition from the shape alone (never from the thread count)."""
    cdef idx_t nb
    p.N = N
    p.C = C
    p.L = L
    p.M = N * L
    p.planes = L >= PLANE_MIN_L
    p.nch = _cdiv(L, CHUNK) if L > 0 else 0
    p.U = N * C * p.nch
    p.ncols = C * L
    nb = min(<idx_t>NB_MAX, _cdiv(N, ROWS_MIN))
    nb = min(nb, PART_BUDGET // p.ncols if p.ncols > 0 else nb)
    if nb < 1:
        nb = 1
    p.RB = _cdiv(N, nb) if N > 0 else 1
    p.nb = _cdiv(N, p.RB)
    p.ncc = _cdiv(p.ncols, COL_CHUNK)


cdef inline idx_t _work_doubles(Plan* p) noexcept nogil:
    """float64 scratch a call needs beyond its per-channel vectors."""
    if p.planes:
        return 2 * p.U
    return 2 * p.nb * p.ncols + 4 * p.ncols


cdef inline int _threads(int num_threads, idx_t tasks) noexcept nogil:
    if tasks < 1:
        return 1
    if num_threads > tasks:
        return <int>tasks
    return num_threads


# --------------------------------------------------------------------------- unit sums
cdef inline void _sum_shifted(const real* x, idx_t n, double K, double* out) noexcept nogil:
    """out[0] = sum(x - K), out[1] = sum((x - K)^2) over n contiguous values."""
    if real is float:
        tb_sum_shifted_f32(x, n, K, out)
    else:
        tb_sum_shifted_f64(x, n, K, out)


cdef inline void _sum_grad(const real* x, const real* grad_y, idx_t n, double mean,
                           double* out) noexcept nogil:
    """out[0] = sum(grad_y), out[1] = sum((x - mean) * grad_y) over n contiguous values."""
    if real is float:
        tb_sum_grad_f32(x, grad_y, n, mean, out)
    else:
        tb_sum_grad_f64(x, grad_y, n, mean, out)


# --------------------------------------------------------------------------- plane path
# Unit u covers plane q = u // nch (q = n*C + c), values [k*CHUNK, min((k+1)*CHUNK, L))
# with k = u % nch. part[2u], part[2u+1] hold the unit's two partial sums.

cdef void _planes_partials(const real* x, const real* grad_y, Plan* p, const double* centre,
                           double* part, int num_threads) noexcept nogil:
    """Per-unit partials: forward (grad_y NULL) sum(x - K), sum((x - K)^2) with
    K = centre[c]; backward sum(grad_y), sum((x - mean) * grad_y) with mean = centre[c]."""
    cdef idx_t U = p.U, nch = p.nch, L = p.L, C = p.C
    cdef idx_t lo, hi, u, q, k, off, n
    cdef int t, nt = _threads(num_threads, U)
    for t in prange(nt, nogil=True, num_threads=nt, schedule='static'):
        lo = U * t // nt
        hi = U * (t + 1) // nt
        for u in range(lo, hi):
            q = u // nch
            k = u - q * nch
            off = q * L + k * CHUNK
            n = min(<idx_t>CHUNK, L - k * CHUNK)
            if grad_y == NULL:
                _sum_shifted(x + off, n, centre[q % C], part + 2 * u)
            else:
                _sum_grad(x + off, grad_y + off, n, centre[q % C], part + 2 * u)


cdef void _planes_combine(Plan* p, const double* part, double* s1, double* s2) noexcept nogil:
    """s1[c], s2[c] = sums of channel c's unit partials, n then k ascending."""
    cdef idx_t c, n, k, u, C = p.C, nch = p.nch
    cdef double a, b
    for c in range(C):
        a = 0.0
        b = 0.0
        for n in range(p.N):
            u = (n * C + c) * nch
            for k in range(nch):
                a += part[2 * (u + k)]
                b += part[2 * (u + k) + 1]
        s1[c] = a
        s2[c] = b


cdef void _unit_affine(const real* x, const real* grad_y, real* out, idx_t n, double m,
                       double a, double b, double d, bint stream) noexcept nogil:
    """out[0:n] from x (and grad_y) with one channel's coefficients; with `stream` the
    values are formed in an L1 buffer and copied out with non-temporal stores."""
    cdef real buf[STREAM_BUF]
    cdef real* dst
    cdef idx_t j, j0 = 0, cnt
    while j0 < n:
        if stream:
            cnt = min(<idx_t>STREAM_BUF, n - j0)
            dst = &buf[0]
        else:
            cnt = n - j0
            dst = out + j0
        if grad_y == NULL:
            # y = (x - mean) * alpha + beta,  alpha = gamma * inv_std
            for j in range(cnt):
                dst[j] = <real>((<double>x[j0 + j] - m) * a + b)
        else:
            # grad_x = gamma * inv_std * (grad_y - (grad_beta + x_hat * grad_gamma) / M)
            #        = alpha * grad_y + ((x - mean) * beta + delta)
            for j in range(cnt):
                dst[j] = <real>(a * <double>grad_y[j0 + j] + ((<double>x[j0 + j] - m) * b + d))
        if stream:
            tb_stream_copy(out + j0, buf, cnt * sizeof(real))
        j0 += cnt


cdef void _planes_affine(const real* x, const real* grad_y, real* out, Plan* p,
                         const double* mean, const double* alpha, const double* beta,
                         const double* delta, int num_threads) noexcept nogil:
    """Elementwise pass, each thread's units back to front.
    forward (grad_y NULL): out = (x - mean) * alpha + beta
    backward:              out = alpha * grad_y + ((x - mean) * beta + delta)"""
    cdef idx_t U = p.U, nch = p.nch, L = p.L, C = p.C
    cdef idx_t lo, hi, i, u, q, k, off, c
    cdef const real* g
    cdef bint stream = p.N * C * L * <idx_t>sizeof(real) >= _stream_min_bytes
    cdef int t, nt = _threads(num_threads, U)
    for t in prange(nt, nogil=True, num_threads=nt, schedule='static'):
        lo = U * t // nt
        hi = U * (t + 1) // nt
        for i in range(lo, hi):
            u = hi - 1 - (i - lo)
            q = u // nch
            k = u - q * nch
            c = q % C
            off = q * L + k * CHUNK
            g = NULL
            if grad_y != NULL:
                g = grad_y + off
            _unit_affine(x + off, g, out + off,
                         min(<idx_t>CHUNK, L - k * CHUNK), mean[c], alpha[c], beta[c],
                         0.0 if delta == NULL else delta[c], stream)
        if stream:
            tb_stream_fence()


# --------------------------------------------------------------------------- column path
# x is N rows of ncols = C*L values; column j belongs to channel j // L. Task
# (b, cc) covers rows [b*RB, (b+1)*RB) and columns [cc*COL_CHUNK, ...); its
# partials go to part1[b*ncols + j], part2[b*ncols + j].

cdef void _columns_partials(const real* x, const real* grad_y, Plan* p, const double* centre,
                            double* part1, double* part2, int num_threads) noexcept nogil:
    """Per-(row block, column) partials: forward (grad_y NULL) sum(x - K), sum((x - K)^2)
    with K = centre[j]; backward sum(grad_y), sum((x - mean) * grad_y), mean = centre[j].
    Rows are taken four at a time (one read-modify-write of the partials per four rows)."""
    cdef idx_t ncols = p.ncols, RB = p.RB, ncc = p.ncc, T = p.nb * p.ncc
    cdef idx_t lo, hi, task, b, j0, j1, r, r1, j
    cdef double d0, d1, d2, d3, g0, g1, g2, g3, k
    cdef double* s1
    cdef double* s2
    cdef const real* x0
    cdef const real* x1
    cdef const real* x2
    cdef const real* x3
    cdef const real* y0
    cdef const real* y1
    cdef const real* y2
    cdef const real* y3
    cdef int t, nt = _threads(num_threads, T)
    for t in prange(nt, nogil=True, num_threads=nt, schedule='static'):
        lo = T * t // nt
        hi = T * (t + 1) // nt
        for task in range(lo, hi):
            b = task // ncc
            j0 = (task - b * ncc) * COL_CHUNK
            j1 = min(j0 + COL_CHUNK, ncols)
            s1 = part1 + b * ncols
            s2 = part2 + b * ncols
            for j in range(j0, j1):
                s1[j] = 0.0
                s2[j] = 0.0
            r = b * RB
            r1 = min(r + RB, p.N)
            if grad_y == NULL:
                while r + 4 <= r1:
                    x0 = x + r * ncols
                    x1 = x0 + ncols
                    x2 = x1 + ncols
                    x3 = x2 + ncols
                    # sum(x - K), sum((x - K)^2)
                    for j in range(j0, j1):
                        k = centre[j]
                        d0 = <double>x0[j] - k
                        d1 = <double>x1[j] - k
                        d2 = <double>x2[j] - k
                        d3 = <double>x3[j] - k
                        s1[j] += (d0 + d1) + (d2 + d3)
                        s2[j] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
                    r = r + 4
                while r < r1:
                    x0 = x + r * ncols
                    for j in range(j0, j1):
                        d0 = <double>x0[j] - centre[j]
                        s1[j] += d0
                        s2[j] += d0 * d0
                    r = r + 1
            else:
                while r + 4 <= r1:
                    x0 = x + r * ncols
                    x1 = x0 + ncols
                    x2 = x1 + ncols
                    x3 = x2 + ncols
                    y0 = grad_y + r * ncols
                    y1 = y0 + ncols
                    y2 = y1 + ncols
                    y3 = y2 + ncols
                    # sum(grad_y), sum((x - mean) * grad_y)
                    for j in range(j0, j1):
                        k = centre[j]
                        g0 = <double>y0[j]
                        g1 = <double>y1[j]
                        g2 = <double>y2[j]
                        g3 = <double>y3[j]
                        s1[j] += (g0 + g1) + (g2 + g3)
                        s2[j] += (((<double>x0[j] - k) * g0 + (<double>x1[j] - k) * g1)
                                  + ((<double>x2[j] - k) * g2 + (<double>x3[j] - k) * g3))
                    r = r + 4
                while r < r1:
                    x0 = x + r * ncols
                    y0 = grad_y + r * ncols
                    for j in range(j0, j1):
                        g0 = <double>y0[j]
                        s1[j] += g0
                        s2[j] += (<double>x0[j] - centre[j]) * g0
                    r = r + 1


cdef void _columns_combine(Plan* p, const double* part1, const double* part2,
                           double* s1, double* s2) noexcept nogil:
    """s1[c], s2[c] = sums over channel c's columns (l ascending) of their row-block
    partials (b ascending)."""
    cdef idx_t c, l, b, j, L = p.L, ncols = p.ncols
    cdef double a, bb, ca, cb
    for c in range(p.C):
        a = 0.0
        bb = 0.0
        for l in range(L):
            j = c * L + l
            ca = 0.0
            cb = 0.0
            for b in range(p.nb):
                ca += part1[b * ncols + j]
                cb += part2[b * ncols + j]
            a += ca
            bb += cb
        s1[c] = a
        s2[c] = bb


cdef void _columns_affine(const real* x, const real* grad_y, real* out, Plan* p,
                          const double* mean, const double* alpha, const double* beta,
                          const double* delta, int num_threads) noexcept nogil:
    """Elementwise pass with per-column coefficients, each thread's rows back to front,
    in blocks of ROWS_MIN rows, each block column chunk by column chunk (the
    coefficients of a chunk stay in L1 while its rows stream past).
    forward (grad_y NULL): out = (x - mean) * alpha + beta
    backward:              out = alpha * grad_y + ((x - mean) * beta + delta)"""
    cdef idx_t N = p.N, ncols = p.ncols, NB = _cdiv(N, ROWS_MIN)
    cdef idx_t lo, hi, i, r, r0, r1, j, j0, j1, cc, ncc = p.ncc
    cdef const real* xr
    cdef const real* gr
    cdef real* orow
    cdef int t, nt = _threads(num_threads, NB)
    for t in prange(nt, nogil=True, num_threads=nt, schedule='static'):
        lo = NB * t // nt
        hi = NB * (t + 1) // nt
        for i in range(lo, hi):
            r0 = (hi - 1 - (i - lo)) * ROWS_MIN
            r1 = min(r0 + ROWS_MIN, N)
            for cc in range(ncc):
                j0 = cc * COL_CHUNK
                j1 = min(j0 + COL_CHUNK, ncols)
                for r in range(r0, r1):
                    xr = x + r * ncols
                    orow = out + r * ncols
                    if grad_y == NULL:
                        # y = (x - mean) * alpha + beta,  alpha = gamma * inv_std
                        for j in range(j0, j1):
                            orow[j] = <real>((<double>xr[j] - mean[j]) * alpha[j] + beta[j])
                    else:
                        gr = grad_y + r * ncols
                        # grad_x = gamma * inv_std * (grad_y - (grad_beta + x_hat * grad_gamma) / M)
                        #        = alpha * grad_y + ((x - mean) * beta + delta)
                        for j in range(j0, j1):
                            orow[j] = <real>(alpha[j] * <double>gr[j]
                                             + ((<double>xr[j] - mean[j]) * beta[j] + delta[j]))


cdef inline void _spread(Plan* p, const double* per_channel, double* per_column) noexcept nogil:
    """per_column[c*L + l] = per_channel[c]."""
    cdef idx_t c, l
    for c in range(p.C):
        for l in range(p.L):
            per_column[c * p.L + l] = per_channel[c]


# --------------------------------------------------------------------------- drivers
cdef void _channel_sums(const real* x, const real* grad_y, Plan* p, const double* centre,
                        double* work, double* s1, double* s2, int num_threads) noexcept nogil:
    """s1, s2 per channel: forward (grad_y NULL) sum(x - K), sum((x - K)^2), K = centre;
    backward sum(grad_y), sum((x - mean) * grad_y), mean = centre."""
    cdef double* col
    if p.planes:
        _planes_partials(x, grad_y, p, centre, work, num_threads)
        _planes_combine(p, work, s1, s2)
    else:
        col = work + 2 * p.nb * p.ncols
        _spread(p, centre, col)
        _columns_partials(x, grad_y, p, col, work, work + p.nb * p.ncols, num_threads)
        _columns_combine(p, work, work + p.nb * p.ncols, s1, s2)


cdef void _affine(const real* x, const real* grad_y, real* out, Plan* p,
                  const double* mean, const double* alpha, const double* beta,
                  const double* delta, double* work, int num_threads) noexcept nogil:
    """out = (x - mean) * alpha + beta, or alpha * grad_y + ((x - mean) * beta + delta)."""
    cdef double* col
    if p.planes:
        _planes_affine(x, grad_y, out, p, mean, alpha, beta, delta, num_threads)
    else:
        col = work + 2 * p.nb * p.ncols
        _spread(p, mean, col)
        _spread(p, alpha, col + p.ncols)
        _spread(p, beta, col + 2 * p.ncols)
        if grad_y != NULL:
            _spread(p, delta, col + 3 * p.ncols)
        _columns_affine(x, grad_y, out, p, col, col + p.ncols, col + 2 * p.ncols,
                        col + 3 * p.ncols, num_threads)


cdef void _forward_train(const real* x, real* y, const real* weight, const real* bias,
                         real* running_mean, real* running_var, double momentum, double eps,
                         Plan* p, double* mean, double* inv_std, double* chan, double* work,
                         int num_threads) noexcept nogil:
    """chan: 4*C scratch doubles (K, var, alpha, beta)."""
    cdef idx_t c, C = p.C
    cdef double* K = chan
    cdef double* var = chan + C
    cdef double* alpha = chan + 2 * C
    cdef double* beta = chan + 3 * C
    cdef double M = <double>p.M, d, v, g
    # NOTE: shifted by the channel's first value, not E[x^2] - E[x]^2 (see the header).
    for c in range(C):
        K[c] = <double>x[c * p.L]
    _channel_sums(x, NULL, p, K, work, mean, var, num_threads)
    for c in range(C):
        # mean = K + sum(x - K) / M,  var = sum((x - K)^2) / M - (mean - K)^2
        d = mean[c] / M
        v = var[c] / M - d * d
        if v < 0.0:  # rounding only; keeps NaN
            v = 0.0
        mean[c] = K[c] + d
        var[c] = v
        inv_std[c] = 1.0 / sqrt(v + eps)
        g = <double>weight[c] if weight != NULL else 1.0
        alpha[c] = g * inv_std[c]
        beta[c] = <double>bias[c] if bias != NULL else 0.0
    _affine(x, NULL, y, p, mean, alpha, beta, NULL, work, num_threads)
    if running_mean != NULL:
        # running = (1 - momentum) * running + momentum * batch, unbiased var * M / (M - 1)
        for c in range(C):
            running_mean[c] = <real>((1.0 - momentum) * <double>running_mean[c]
                                     + momentum * mean[c])
            running_var[c] = <real>((1.0 - momentum) * <double>running_var[c]
                                    + momentum * var[c] * (M / (M - 1.0)))


cdef void _forward_eval(const real* x, real* y, const real* weight, const real* bias,
                        const real* running_mean, const real* running_var, double eps,
                        Plan* p, double* chan, double* work, int num_threads) noexcept nogil:
    """chan: 3*C scratch doubles (mean, alpha, beta)."""
    cdef idx_t c, C = p.C
    cdef double* mean = chan
    cdef double* alpha = chan + C
    cdef double* beta = chan + 2 * C
    cdef double g
    for c in range(C):
        # y = (x - running_mean) * alpha + beta,  alpha = gamma / sqrt(running_var + eps)
        g = <double>weight[c] if weight != NULL else 1.0
        mean[c] = <double>running_mean[c]
        alpha[c] = g / sqrt(<double>running_var[c] + eps)
        beta[c] = <double>bias[c] if bias != NULL else 0.0
    _affine(x, NULL, y, p, mean, alpha, beta, NULL, work, num_threads)


cdef void _backward(const real* x, const real* grad_y, real* grad_x, const double* mean,
                    const double* inv_std, const real* weight, real* grad_gamma,
                    real* grad_beta, Plan* p, double* chan, double* work,
                    int num_threads) noexcept nogil:
    """chan: 5*C scratch doubles (sum grad_y, sum (x - mean) grad_y, 3 coefficients)."""
    cdef idx_t c, C = p.C
    cdef double* sum_dy = chan
    cdef double* sum_dy_xmu = chan + C
    cdef double* a = chan + 2 * C
    cdef double* b = chan + 3 * C
    cdef double* d = chan + 4 * C
    cdef double M = <double>p.M, g
    _channel_sums(x, grad_y, p, mean, work, sum_dy, sum_dy_xmu, num_threads)
    for c in range(C):
        # grad_beta = sum(grad_y),  grad_gamma = sum(grad_y * x_hat) = inv_std * sum(grad_y * (x - mean))
        grad_beta[c] = <real>sum_dy[c]
        grad_gamma[c] = <real>(inv_std[c] * sum_dy_xmu[c])
        g = <double>weight[c] if weight != NULL else 1.0
        # grad_x = a * grad_y + (x - mean) * b + d with
        #   a = gamma * inv_std,  b = -a * inv_std^2 * sum(grad_y * (x - mean)) / M,
        #   d = -a * grad_beta / M
        a[c] = g * inv_std[c]
        b[c] = -a[c] * inv_std[c] * inv_std[c] * sum_dy_xmu[c] / M
        d[c] = -a[c] * sum_dy[c] / M
    _affine(x, grad_y, grad_x, p, mean, a, b, d, work, num_threads)


# --------------------------------------------------------------------------- validation
# Checks use the numpy C API: a small call (the paper's 60 x 100 MLP layer) must not
# spend more time validating than computing.

cdef inline cnp.ndarray _as_array(object a, str name):
    if not cnp.PyArray_Check(a):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    return <cnp.ndarray>a


cdef int _check_x(cnp.ndarray x, str name) except -1:
    """float32/float64, 2-D or 3-D, C-contiguous; returns the numpy type number."""
    cdef int typ = cnp.PyArray_TYPE(x)
    if typ != cnp.NPY_FLOAT and typ != cnp.NPY_DOUBLE:
        raise TypeError(f"{name} must have dtype float32 or float64, got {(<object>x).dtype}")
    if cnp.PyArray_NDIM(x) != 2 and cnp.PyArray_NDIM(x) != 3:
        raise ValueError(f"{name} must be 2-D (N, C) or 3-D (N, C, L), got "
                         f"{cnp.PyArray_NDIM(x)}-D shape {(<object>x).shape}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(x):
        raise ValueError(f"{name} must be C-contiguous, got strides {(<object>x).strides} "
                         f"for shape {(<object>x).shape}")
    return typ


cdef cnp.ndarray _check_vector(object a, str name, int typ, idx_t C, bint writeable=False,
                               str why=" (matching x)"):
    """None, or a C-contiguous 1-D array of length C and numpy type `typ`."""
    if a is None:
        return None
    cdef cnp.ndarray v = _as_array(a, name)
    if cnp.PyArray_TYPE(v) != typ:
        raise TypeError(f"{name} must have dtype {cnp.PyArray_DescrFromType(typ)}{why}, "
                        f"got {(<object>v).dtype}")
    if cnp.PyArray_NDIM(v) != 1 or cnp.PyArray_DIM(v, 0) != C:
        raise ValueError(f"{name} must have shape ({C},) (one value per channel), "
                         f"got {(<object>v).shape}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(v):
        raise ValueError(f"{name} must be C-contiguous, got strides {(<object>v).strides}")
    if writeable and not cnp.PyArray_ISWRITEABLE(v):
        raise ValueError(f"{name} must be writeable (it is updated in place)")
    return v


cdef inline bint _is_real(object v):
    return (type(v) is float or type(v) is int
            or (isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))))


cdef double _check_eps(object eps) except? -1.0:
    if not _is_real(eps):
        raise TypeError(f"eps must be a real number, got {type(eps).__name__}")
    cdef double e = float(eps)
    if not (e > 0.0 and e < float("inf")):
        raise ValueError(f"eps must be finite and > 0, got {eps!r}")
    return e


cdef int _check_threads(object num_threads) except -1:
    if not (type(num_threads) is int or (isinstance(num_threads, np.integer)
                                         and not isinstance(num_threads, np.bool_))):
        raise TypeError(f"num_threads must be an int, got {type(num_threads).__name__}")
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    return <int>min(num_threads, 1 << 16)


cdef inline void _dims(cnp.ndarray x, idx_t* N, idx_t* C, idx_t* L) noexcept:
    N[0] = cnp.PyArray_DIM(x, 0)
    C[0] = cnp.PyArray_DIM(x, 1)
    L[0] = cnp.PyArray_DIM(x, 2) if cnp.PyArray_NDIM(x) == 3 else 1


cdef inline void* _ptr(cnp.ndarray a) noexcept:
    return NULL if a is None else cnp.PyArray_DATA(a)


cdef inline cnp.ndarray _empty(idx_t n, int typ):
    cdef cnp.npy_intp dim = n
    return cnp.PyArray_EMPTY(1, &dim, typ, 0)


cdef inline cnp.ndarray _empty_like(cnp.ndarray x):
    return cnp.PyArray_EMPTY(cnp.PyArray_NDIM(x), cnp.PyArray_DIMS(x), cnp.PyArray_TYPE(x), 0)


# --------------------------------------------------------------------------- public API
def forward_train(x, weight, bias, running_mean, running_var, momentum, eps, num_threads):
    """Training-mode batch norm forward, with the running-stat update in the same call.

    Parameters
    ----------
    x : ndarray, float32 or float64, C-contiguous, shape (N, C) or (N, C, L)
        Statistics are per channel c over its M = N*L values; M must be >= 2.
    weight, bias : ndarray of shape (C,) and x's dtype, C-contiguous, or None
        gamma and beta; None means gamma = 1 / beta = 0 (affine off).
    running_mean, running_var : ndarray of shape (C,) and x's dtype, or None
        Both or neither. When given and momentum is a float they are updated in
        place, after everything else succeeded:
        running = (1 - momentum) * running + momentum * batch, where the batch
        variance is the *unbiased* var * M / (M - 1) (as in PyTorch and the
        paper's Algorithm 2), while y is normalised with the biased var.
    momentum : float in [0, 1] or None
        None leaves the running stats untouched (the caller's cumulative average
        passes momentum = 1 / num_batches_tracked instead).
    eps : float, finite and > 0
    num_threads : int >= 1
        OpenMP threads; results are bit-identical for every value.

    Returns
    -------
    y : ndarray like x
        y = gamma * x_hat + beta, x_hat = (x - mean) * inv_std.
    mean, inv_std : float64 ndarray of shape (C,)
        mean = sum(x) / M, inv_std = 1 / sqrt(var + eps), var = sum((x - mean)^2) / M.

    Raises
    ------
    TypeError, ValueError
        Before any work and before the running stats are touched: wrong dtype,
        layout, ndim, lengths, eps, momentum, num_threads, or M < 2.
    """
    cdef cnp.ndarray xa = _as_array(x, "x")
    cdef int typ = _check_x(xa, "x")
    cdef idx_t N, C, L
    _dims(xa, &N, &C, &L)
    cdef cnp.ndarray w = _check_vector(weight, "weight", typ, C)
    cdef cnp.ndarray b = _check_vector(bias, "bias", typ, C)
    cdef cnp.ndarray rm = _check_vector(running_mean, "running_mean", typ, C, True)
    cdef cnp.ndarray rv = _check_vector(running_var, "running_var", typ, C, True)
    if (rm is None) != (rv is None):
        raise ValueError("running_mean and running_var must both be arrays or both be None, got "
                         f"{'None' if rm is None else 'an array'} and "
                         f"{'None' if rv is None else 'an array'}")
    cdef char* rm_data
    cdef char* rv_data
    cdef idx_t nbytes = C * cnp.PyArray_ITEMSIZE(xa)
    if rm is not None:
        rm_data = <char*>cnp.PyArray_DATA(rm)
        rv_data = <char*>cnp.PyArray_DATA(rv)
        if C > 0 and rm_data < rv_data + nbytes and rv_data < rm_data + nbytes:
            raise ValueError("running_mean and running_var must not share memory")
    cdef double mom = 0.0
    if momentum is not None:
        if not _is_real(momentum):
            raise TypeError(f"momentum must be a float or None, got {type(momentum).__name__}")
        mom = float(momentum)
        if not (0.0 <= mom <= 1.0):
            raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
    cdef double e = _check_eps(eps)
    cdef int nt = _check_threads(num_threads)
    if N * L < 2:
        raise ValueError("Expected more than 1 value per channel when training, got input of "
                         f"shape {(<object>xa).shape} (M = N*L = {N * L}); use batches of at "
                         "least 2 (e.g. drop_last=True) or eval mode")
    cdef bint update = rm is not None and momentum is not None

    cdef Plan p
    _make_plan(&p, N, C, L)
    cdef cnp.ndarray y = _empty_like(xa)
    cdef cnp.ndarray mean = _empty(C, cnp.NPY_DOUBLE)
    cdef cnp.ndarray inv_std = _empty(C, cnp.NPY_DOUBLE)
    cdef cnp.ndarray work = _empty(4 * C + _work_doubles(&p), cnp.NPY_DOUBLE)
    cdef double* mp = <double*>cnp.PyArray_DATA(mean)
    cdef double* sp = <double*>cnp.PyArray_DATA(inv_std)
    cdef double* cp = <double*>cnp.PyArray_DATA(work)
    cdef double* wk = cp + 4 * C
    cdef void* rmp = _ptr(rm) if update else NULL
    cdef void* rvp = _ptr(rv) if update else NULL
    cdef void* wp = _ptr(w)
    cdef void* bp = _ptr(b)
    cdef void* xp = cnp.PyArray_DATA(xa)
    cdef void* yp = cnp.PyArray_DATA(y)
    if typ == cnp.NPY_FLOAT:
        with nogil:
            _forward_train(<const float*>xp, <float*>yp, <const float*>wp, <const float*>bp,
                           <float*>rmp, <float*>rvp, mom, e, &p, mp, sp, cp, wk, nt)
    else:
        with nogil:
            _forward_train(<const double*>xp, <double*>yp, <const double*>wp, <const double*>bp,
                           <double*>rmp, <double*>rvp, mom, e, &p, mp, sp, cp, wk, nt)
    return y, mean, inv_std


def forward_eval(x, weight, bias, running_mean, running_var, eps, num_threads):
    """Eval-mode batch norm: one affine map per channel from the running stats.

    y = (x - running_mean) * alpha + beta with alpha = gamma / sqrt(running_var + eps),
    computed in float64 and rounded once. x as in `forward_train` (any N, M = 1
    included); weight, bias: (C,) arrays of x's dtype or None; running_mean,
    running_var: (C,) arrays of x's dtype (required); eps finite > 0;
    num_threads int >= 1. Returns y like x. Raises TypeError / ValueError before
    any work.
    """
    cdef cnp.ndarray xa = _as_array(x, "x")
    cdef int typ = _check_x(xa, "x")
    cdef idx_t N, C, L
    _dims(xa, &N, &C, &L)
    cdef cnp.ndarray w = _check_vector(weight, "weight", typ, C)
    cdef cnp.ndarray b = _check_vector(bias, "bias", typ, C)
    if running_mean is None or running_var is None:
        raise TypeError("forward_eval needs running_mean and running_var arrays, got None")
    cdef cnp.ndarray rm = _check_vector(running_mean, "running_mean", typ, C)
    cdef cnp.ndarray rv = _check_vector(running_var, "running_var", typ, C)
    cdef double e = _check_eps(eps)
    cdef int nt = _check_threads(num_threads)

    cdef Plan p
    _make_plan(&p, N, C, L)
    cdef cnp.ndarray y = _empty_like(xa)
    cdef cnp.ndarray work = _empty(3 * C + _work_doubles(&p), cnp.NPY_DOUBLE)
    cdef double* cp = <double*>cnp.PyArray_DATA(work)
    cdef double* wk = cp + 3 * C
    cdef void* wp = _ptr(w)
    cdef void* bp = _ptr(b)
    cdef void* rmp = _ptr(rm)
    cdef void* rvp = _ptr(rv)
    cdef void* xp = cnp.PyArray_DATA(xa)
    cdef void* yp = cnp.PyArray_DATA(y)
    if typ == cnp.NPY_FLOAT:
        with nogil:
            _forward_eval(<const float*>xp, <float*>yp, <const float*>wp, <const float*>bp,
                          <const float*>rmp, <const float*>rvp, e, &p, cp, wk, nt)
    else:
        with nogil:
            _forward_eval(<const double*>xp, <double*>yp, <const double*>wp, <const double*>bp,
                          <const double*>rmp, <const double*>rvp, e, &p, cp, wk, nt)
    return y


def backward(x, grad_y, mean, inv_std, weight, num_threads):
    """Training-mode batch norm backward from the saved x, mean and inv_std.

    Parameters
    ----------
    x, grad_y : ndarray, same shape and dtype (float32/float64), C-contiguous,
        (N, C) or (N, C, L).
    mean, inv_std : float64 ndarray of shape (C,), as returned by `forward_train`.
    weight : ndarray of shape (C,) and x's dtype, or None (gamma = 1).
    num_threads : int >= 1

    Returns
    -------
    grad_x : ndarray like x
        grad_x = gamma * inv_std * (grad_y - (grad_beta + x_hat * grad_gamma) / M)
    grad_gamma, grad_beta : ndarray of shape (C,) in x's dtype
        grad_gamma = sum(grad_y * x_hat), grad_beta = sum(grad_y); both summed in
        float64 (returned even when weight is None).
    """
    cdef cnp.ndarray xa = _as_array(x, "x")
    cdef int typ = _check_x(xa, "x")
    cdef cnp.ndarray ga = _as_array(grad_y, "grad_y")
    _check_x(ga, "grad_y")
    if cnp.PyArray_TYPE(ga) != typ:
        raise TypeError(f"grad_y must have x's dtype {(<object>xa).dtype}, got {(<object>ga).dtype}")
    if (<object>ga).shape != (<object>xa).shape:
        raise ValueError(f"grad_y must have x's shape {(<object>xa).shape}, "
                         f"got {(<object>ga).shape}")
    cdef idx_t N, C, L
    _dims(xa, &N, &C, &L)
    if mean is None or inv_std is None:
        raise TypeError("backward needs mean and inv_std arrays (from forward_train), got None")
    cdef cnp.ndarray ma = _check_vector(mean, "mean", cnp.NPY_DOUBLE, C, False, "")
    cdef cnp.ndarray sa = _check_vector(inv_std, "inv_std", cnp.NPY_DOUBLE, C, False, "")
    cdef cnp.ndarray w = _check_vector(weight, "weight", typ, C)
    cdef int nt = _check_threads(num_threads)

    cdef Plan p
    _make_plan(&p, N, C, L)
    cdef cnp.ndarray grad_x = _empty_like(xa)
    cdef cnp.ndarray grad_gamma = _empty(C, typ)
    cdef cnp.ndarray grad_beta = _empty(C, typ)
    cdef cnp.ndarray work = _empty(5 * C + _work_doubles(&p), cnp.NPY_DOUBLE)
    cdef double* cp = <double*>cnp.PyArray_DATA(work)
    cdef double* wk = cp + 5 * C
    cdef const double* mp = <const double*>cnp.PyArray_DATA(ma)
    cdef const double* sp = <const double*>cnp.PyArray_DATA(sa)
    cdef void* wp = _ptr(w)
    cdef void* xp = cnp.PyArray_DATA(xa)
    cdef void* gp = cnp.PyArray_DATA(ga)
    cdef void* gxp = cnp.PyArray_DATA(grad_x)
    cdef void* ggp = cnp.PyArray_DATA(grad_gamma)
    cdef void* gbp = cnp.PyArray_DATA(grad_beta)
    if typ == cnp.NPY_FLOAT:
        with nogil:
            _backward(<const float*>xp, <const float*>gp, <float*>gxp, mp, sp, <const float*>wp,
                      <float*>ggp, <float*>gbp, &p, cp, wk, nt)
    else:
        with nogil:
            _backward(<const double*>xp, <const double*>gp, <double*>gxp, mp, sp,
                      <const double*>wp, <double*>ggp, <double*>gbp, &p, cp, wk, nt)
    return grad_x, grad_gamma, grad_beta
