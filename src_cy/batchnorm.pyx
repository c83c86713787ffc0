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
  * planes (L >= PLANE_MIN_L): each (n, c) plane of L values is contiguous; the
    work unit is a run of at most CHUNK values of one plane.
  * columns (L < PLANE_MIN_L, which includes (N, C)): x is an (N, C*L) matrix;
    loops go rows outer, columns inner (contiguous, vectorised), four rows per
    read-modify-write of the per-column partial sums. Channels strided by C in
    memory are never walked one value at a time (LESSONS: 20x slower).
Passes. Forward: pass 1 reads x once for both sums of the statistics, pass 2
reads x and writes y. Backward: pass 1 reads x and grad_y once and forms
sum(grad_y) and sum((x - mean) * grad_y) together, pass 2 writes grad_x. On
planes a thread takes whole channels and runs pass 1, the channel's statistics
and pass 2 back to back (pass 2 last unit first), so pass 2 re-reads the channel
from cache rather than memory; when the channels do not divide among the threads
it goes in memory order instead (pass 2 back to front). (Non-temporal stores for
big outputs were tried and measured slower for forward + backward.)
Statistics in float64. Sums are float64 even for float32 data, and the mean is
never rounded to float32 before centring: LESSONS measured 1.2e-7 max error in y
at |mean|/std = 1e4 this way, against 3.4e-3 with float32 sums. The variance
comes from sums shifted by K = the channel's first value, sum(x - K) and
sum((x - K)^2), in one read of x. This is not E[x^2] - E[x]^2: K is one of the
samples, so (mean - K)^2 <= M * var and cancellation costs at most a factor M of
float64 rounding (typically none: K lies a few std from the mean); for float32
input x - K is exact in double. A constant channel gives var = 0 exactly.
Output map. y = (x - mean) * alpha + beta with alpha = gamma * inv_std, in
double and rounded once to x's dtype. Not x * alpha + (beta - mean * alpha): that
form rounds the large product mean * alpha (up to |mean| / std times y's scale)
and misses y = beta exactly on a constant channel, to save one subtraction per
value. grad_x = alpha * grad_y + ((x - mean) * b + d) likewise (see Chan).
Determinism. Every sum is split into partials over blocks whose boundaries depend
only on the shape (plane units; row blocks of each column), each accumulated in
a fixed order (fixed lanes folded in a fixed order; four rows at a time), and the
partials of a channel are combined in a fixed order. Threads and schedules only decide who
computes which partial, so results are bit-identical for any thread count. No
prange reduction is used: OpenMP combines those in an unspecified order.
Vectorisation without -ffast-math. The compiler may not split one double sum
into lanes, so unit sums are written in C with GCC vector types (32 explicit
float64 lanes); the column loops keep one accumulator per column and vectorise
as written. On planes, pass 1 of a whole-channel task sums samples n and n + 1
side by side (two memory streams per array instead of one, 1.1-1.2x faster on
planes of 1 K - 50 K values); the memory-order schedule sums one unit at a time,
and the two give the same bits because this module is compiled with
-ffp-contract=off (no multiply-add fused in one copy of a loop but not another);
the output maps ask for their multiply-adds explicitly (tb_fma).
"""
cimport numpy as cnp
from cython.parallel cimport prange

import numpy as np

from tb_types cimport idx_t, real
from threadcheck cimport check_threads

cnp.import_array()

cdef extern from *:
    """
    /* Unit sums over R = 1 or 2 contiguous runs of n values, x and x + stride, in
       float64, with the vector types of vec8d.h: per run and sum four 8-double
       accumulators, a scalar tail and a fixed fold; run r's two sums go to
       out[r * ostride], out[r * ostride + 1]. A run's sums are the same bits for
       R = 1 and R = 2 (the module is built with -ffp-contract=off, so the compiler
       cannot fuse a multiply-add in one copy of the loop and not in the other).
       NOTE: two runs side by side keep twice the memory streams in flight: pass 1
       over planes of 1 K to 50 K values ran 1.1-1.2x faster than one run at a time. */
    #include "vec8d.h"
    #include <math.h>

    /* a * b + c for the output maps: one fused multiply-add where the target has it
       (the module is built with -ffp-contract=off, so only these are fused), two
       roundings where it has not (fma() would be a slow library call there). */
    #ifdef __FMA__
    #define tb_fma(a, b, c) fma((a), (b), (c))
    #else
    #define tb_fma(a, b, c) ((a) * (b) + (c))
    #endif

    /* Forward (g NULL): out[0] = sum(x - c), out[1] = sum((x - c)^2), c the shift K.
       Backward: out[0] = sum(g), out[1] = sum((x - c) * g), c the mean. */
    #define TB_UNIT_SUMS(NAME, T, LOAD)                                            \
    static inline __attribute__((always_inline)) void NAME(                        \
            const T *x, const T *g, Py_ssize_t n, Py_ssize_t stride, double c,     \
            double *out, Py_ssize_t ostride, const int R) {                        \
        tb_v8d s1[2][4], s2[2][4];                                                 \
        double t1[2] = {0.0, 0.0}, t2[2] = {0.0, 0.0};                             \
        Py_ssize_t i = 0;                                                          \
        _Pragma("GCC unroll 2") for (int r = 0; r < R; r++)                        \
            _Pragma("GCC unroll 4") for (int v = 0; v < 4; v++)                    \
                s1[r][v] = s2[r][v] = (tb_v8d){0};                                 \
        if (g == NULL) {                                                           \
            for (; i + 32 <= n; i += 32)                                           \
                _Pragma("GCC unroll 2") for (int r = 0; r < R; r++)                \
                    _Pragma("GCC unroll 4") for (int v = 0; v < 4; v++) {          \
                        tb_v8d d = LOAD(x + r * stride + i + 8 * v) - c;           \
                        s1[r][v] += d;                                             \
                        s2[r][v] += d * d;                                         \
                    }                                                              \
            _Pragma("GCC unroll 2") for (int r = 0; r < R; r++)                    \
                for (Py_ssize_t j = r * stride + i; j < r * stride + n; j++) {     \
                    double d = (double)x[j] - c;                                   \
                    t1[r] += d; t2[r] += d * d;                                    \
                }                                                                  \
        } else {                                                                   \
            for (; i + 32 <= n; i += 32)                                           \
                _Pragma("GCC unroll 2") for (int r = 0; r < R; r++)                \
                    _Pragma("GCC unroll 4") for (int v = 0; v < 4; v++) {          \
                        Py_ssize_t o = r * stride + i + 8 * v;                     \
                        tb_v8d gv = LOAD(g + o);                                   \
                        s1[r][v] += gv;                                            \
                        s2[r][v] += (LOAD(x + o) - c) * gv;                        \
                    }                                                              \
            _Pragma("GCC unroll 2") for (int r = 0; r < R; r++)                    \
                for (Py_ssize_t j = r * stride + i; j < r * stride + n; j++) {     \
                    t1[r] += (double)g[j]; t2[r] += ((double)x[j] - c) * (double)g[j]; \
                }                                                                  \
        }                                                                          \
        _Pragma("GCC unroll 2") for (int r = 0; r < R; r++) {                      \
            out[r * ostride] = tb_fold((s1[r][0] + s1[r][1]) + (s1[r][2] + s1[r][3])) + t1[r]; \
            out[r * ostride + 1] = tb_fold((s2[r][0] + s2[r][1]) + (s2[r][2] + s2[r][3])) + t2[r]; \
        }                                                                          \
    }
    TB_UNIT_SUMS(tb_unit_sums_f32, float, tb_load_f32)
    TB_UNIT_SUMS(tb_unit_sums_f64, double, tb_load_f64)

    /* Channel statistics and output-map coefficients of channels [0, n) from their
       two sums (see Chan below). Plain loops over restrict arrays, so the compiler
       runs the divisions and square roots of eight channels at once: written per
       channel in Cython they were a latency-bound scalar chain of about 12 ns per
       channel (12 us of a (4, 1024) call that streams 16 KB). Vector division and
       square root round like the scalar ones: same bits. */
    static void tb_finish_forward(Py_ssize_t n, double M, double eps,
            const double *restrict s1, const double *restrict s2,
            const double *restrict centre, const double *restrict gamma,
            double *restrict mean, double *restrict var, double *restrict inv_std,
            double *restrict alpha) {
        for (Py_ssize_t c = 0; c < n; c++) {
            /* mean = K + sum(x - K) / M,  var = sum((x - K)^2) / M - (mean - K)^2 */
            double d = s1[c] / M;
            double v = s2[c] / M - d * d;
            v = v < 0.0 ? 0.0 : v;  /* rounding only; keeps NaN */
            mean[c] = centre[c] + d;
            var[c] = v;
            /* inv_std = 1 / sqrt(var + eps),  alpha = gamma * inv_std */
            double is = 1.0 / sqrt(v + eps);
            inv_std[c] = is;
            alpha[c] = gamma[c] * is;
        }
    }

    static void tb_finish_backward(Py_ssize_t n, double M,
            const double *restrict s1, const double *restrict s2,
            const double *restrict gamma, const double *restrict inv_std,
            double *restrict alpha, double *restrict beta, double *restrict delta) {
        for (Py_ssize_t c = 0; c < n; c++) {
            /* s1 = sum(grad_y) = grad_beta,  s2 = sum(grad_y * (x - mean)) = grad_gamma / inv_std
               grad_x = alpha * grad_y + (x - mean) * beta + delta with
               alpha = gamma * inv_std,  beta = -alpha * inv_std^2 * s2 / M,  delta = -alpha * s1 / M */
            double a = gamma[c] * inv_std[c];
            alpha[c] = a;
            beta[c] = -a * inv_std[c] * inv_std[c] * s2[c] / M;
            delta[c] = -a * s1[c] / M;
        }
    }

    /* eval: alpha = gamma / sqrt(running_var + eps), running_var given in alpha */
    static void tb_eval_alpha(Py_ssize_t n, double eps, const double *restrict gamma,
                              double *restrict alpha) {
        for (Py_ssize_t c = 0; c < n; c++)
            alpha[c] = gamma[c] / sqrt(alpha[c] + eps);
    }
    """
    double tb_fma(double a, double b, double c) noexcept nogil
    void tb_unit_sums_f32(const float* x, const float* g, idx_t n, idx_t stride, double c,
                          double* out, idx_t ostride, int R) noexcept nogil
    void tb_unit_sums_f64(const double* x, const double* g, idx_t n, idx_t stride, double c,
                          double* out, idx_t ostride, int R) noexcept nogil
    void tb_finish_forward(idx_t n, double M, double eps, const double* s1, const double* s2,
                           const double* centre, const double* gamma, double* mean, double* var,
                           double* inv_std, double* alpha) noexcept nogil
    void tb_finish_backward(idx_t n, double M, const double* s1, const double* s2,
                            const double* gamma, const double* inv_std, double* alpha,
                            double* beta, double* delta) noexcept nogil
    void tb_eval_alpha(idx_t n, double eps, const double* gamma, double* alpha) noexcept nogil

# Plane-path schedule override for tests and benchmarks: 0 chooses from the channel and
# thread counts, 1 forces memory order, 2 forces whole channels per thread.
cdef int _schedule = 0


def _set_schedule(int schedule):
    """Test and benchmark knob (see _schedule). Returns the previous setting."""
    global _schedule
    if schedule not in (0, 1, 2):
        raise ValueError(f"schedule must be 0, 1 or 2, got {schedule}")
    previous, _schedule = _schedule, schedule
    return previous


# fmt: off
cdef enum:
    PLANE_MIN_L = 64        # L >= this: plane loops; below: column loops
    CHUNK = 16384           # most values in one plane unit (splits big planes for threads)
    COL_CHUNK = 1024        # most columns per column-path task: its partials stay in L1
    COL_MIN = 64            # fewest columns per pass-1 task (unless the row is shorter)
    TASKS_MIN = 8           # pass-1 tasks wanted, for the threads (column chunks supply them)
    ROWS_MIN = 64           # fewest rows in a column-path row block (pass-1 partials)
    OUT_ROWS = 16           # rows per pass-2 task
    NB_MAX = 32             # most row blocks
    PART_BUDGET = 131072    # row blocks * columns at most (1 MiB per partial array)
# fmt: on


cdef struct Plan:
    idx_t N, C, L, M
    bint planes
    # planes: units of at most CHUNK values, nch per plane, U in all
    idx_t nch, U
    # columns: N rows of ncols = C*L values, blocks of RB rows (nb), pass-1 column
    # chunks of cw columns (ncc)
    idx_t ncols, RB, nb, cw, ncc


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
    # Column chunks do not change any value (each column has its own partials), so
    # they can be cut as narrow as the threads need when there are few row blocks.
    p.cw = min(<idx_t>COL_CHUNK, max(<idx_t>COL_MIN, _cdiv(p.ncols, _cdiv(TASKS_MIN, max(p.nb, 1)))))
    p.cw = _cdiv(p.cw, 16) * 16
    p.ncc = _cdiv(p.ncols, p.cw)


cdef inline idx_t _work_doubles(Plan* p) noexcept nogil:
    """float64 scratch a call needs beyond its per-channel vectors."""
    if p.planes:
        return 2 * p.U
    # per-column copies of the per-channel vectors only where a channel has L > 1 columns
    return 2 * p.nb * p.ncols + (4 * p.ncols if p.L > 1 else 0)


cdef inline int _threads(int num_threads, idx_t tasks) noexcept nogil:
    if tasks < 1:
        return 1
    if num_threads > tasks:
        return <int>tasks
    return num_threads


# --------------------------------------------------------------------------- unit sums
cdef inline void _sums(const real* x, const real* grad_y, idx_t n, idx_t stride, double c,
                       double* out, idx_t ostride, int R) noexcept nogil:
    """For runs r < R (1 or 2) of n contiguous values at offset r * stride:
    forward (grad_y NULL) out[r * ostride] = sum(x - c), out[r * ostride + 1] = sum((x - c)^2);
    backward out[r * ostride] = sum(grad_y), out[r * ostride + 1] = sum((x - c) * grad_y)."""
    # a constant R lets the C function unroll its run loops
    if real is float:
        if R == 2:
            tb_unit_sums_f32(x, grad_y, n, stride, c, out, ostride, 2)
        else:
            tb_unit_sums_f32(x, grad_y, n, stride, c, out, ostride, 1)
    else:
        if R == 2:
            tb_unit_sums_f64(x, grad_y, n, stride, c, out, ostride, 2)
        else:
            tb_unit_sums_f64(x, grad_y, n, stride, c, out, ostride, 1)


# --------------------------------------------------------------------------- per-channel state
cdef struct Chan:
    # float64 vectors of length C. Forward: centre = K (the shift); backward: centre =
    # the saved mean. s1, s2: the channel's two sums. The output map is
    #   forward  y      = (x - mean) * alpha + beta
    #   backward grad_x = alpha * grad_y + ((x - mean) * beta + delta)
    double* centre
    double* s1
    double* s2
    double* mean
    double* var
    double* inv_std
    double* gamma
    double* alpha
    double* beta
    double* delta
    double M
    double eps
    bint backward


cdef inline void _finish_channels(Chan* ch, idx_t c0, idx_t c1) noexcept nogil:
    """Statistics and output-map coefficients of channels [c0, c1) from their two sums
    (the formulas are in tb_finish_forward / tb_finish_backward above)."""
    if not ch.backward:
        tb_finish_forward(c1 - c0, ch.M, ch.eps, ch.s1 + c0, ch.s2 + c0, ch.centre + c0,
                          ch.gamma + c0, ch.mean + c0, ch.var + c0, ch.inv_std + c0, ch.alpha + c0)
    else:
        tb_finish_backward(c1 - c0, ch.M, ch.s1 + c0, ch.s2 + c0, ch.gamma + c0, ch.inv_std + c0,
                           ch.alpha + c0, ch.beta + c0, ch.delta + c0)


# --------------------------------------------------------------------------- plane path
# Unit (n, c, k) is values [k*CHUNK, min((k+1)*CHUNK, L)) of plane (n, c); its partial
# sums are part[2u], part[2u+1] with u = (n*C + c)*nch + k (memory order).

cdef inline void _unit_sums(const real* x, const real* grad_y, Plan* p, idx_t u,
                            double centre, double* part, int R) noexcept nogil:
    """The partials of unit u and, for R = 2, of unit u + C*nch (same channel and chunk,
    next sample: the same length): forward (grad_y NULL) sum(x - K), sum((x - K)^2)
    with K = centre; backward sum(grad_y), sum((x - mean) * grad_y) with mean = centre."""
    cdef idx_t q = u // p.nch, k = u - (u // p.nch) * p.nch
    cdef idx_t off = q * p.L + k * CHUNK, n = min(<idx_t>CHUNK, p.L - k * CHUNK)
    cdef idx_t stride = p.C * p.L, ostride = 2 * p.C * p.nch
    _sums(x + off, grad_y + off if grad_y != NULL else NULL, n, stride, centre, part + 2 * u,
          ostride, R)


cdef inline void _channel_total(Plan* p, const double* part, idx_t c, Chan* ch) noexcept nogil:
    """ch.s1[c], ch.s2[c] = channel c's unit partials summed, n then k ascending."""
    cdef idx_t n, k, u
    cdef double a = 0.0, b = 0.0
    for n in range(p.N):
        u = (n * p.C + c) * p.nch
        for k in range(p.nch):
            a += part[2 * (u + k)]
            b += part[2 * (u + k) + 1]
    ch.s1[c] = a
    ch.s2[c] = b


cdef inline void _unit_affine(const real* x, const real* grad_y, real* out, idx_t n, double m,
                              double a, double b, double d) noexcept nogil:
    """out[0:n] from x (and grad_y) with one channel's coefficients (see Chan)."""
    cdef idx_t j
    if grad_y == NULL:
        # y = (x - mean) * alpha + beta,  alpha = gamma * inv_std
        for j in range(n):
            out[j] = <real>tb_fma(<double>x[j] - m, a, b)
    else:
        # grad_x = gamma * inv_std * (grad_y - (grad_beta + x_hat * grad_gamma) / M)
        #        = alpha * grad_y + ((x - mean) * beta + delta)
        for j in range(n):
            out[j] = <real>tb_fma(a, <double>grad_y[j], tb_fma(<double>x[j] - m, b, d))


cdef inline void _unit_out(const real* x, const real* grad_y, real* out, Plan* p, idx_t u,
                           Chan* ch) noexcept nogil:
    """Unit u of the output map (see Chan)."""
    cdef idx_t q = u // p.nch, k = u - (u // p.nch) * p.nch, c = (u // p.nch) % p.C
    cdef idx_t off = q * p.L + k * CHUNK, n = min(<idx_t>CHUNK, p.L - k * CHUNK)
    cdef const real* g = NULL
    if grad_y != NULL:
        g = grad_y + off
    _unit_affine(x + off, g, out + off, n, ch.mean[c], ch.alpha[c], ch.beta[c],
                 ch.delta[c] if ch.backward else 0.0)


cdef inline bint _balanced(idx_t groups, int num_threads) noexcept nogil:
    """Whole groups per thread balance: one thread, a multiple of the threads, or many."""
    cdef idx_t nt = min(<idx_t>num_threads, groups)
    if _schedule:
        return _schedule == 2
    return nt <= 1 or groups % nt == 0 or groups >= 4 * nt


cdef void _planes_run(const real* x, const real* grad_y, real* out, Plan* p, Chan* ch,
                      double* part, bint stats, int num_threads) noexcept nogil:
    """Both passes on the plane layout (stats False: the output map only, for eval).

    Two schedules give the same bits (same unit partials, same combine order):
      * by channel: a thread takes whole channels and runs pass 1, the channel's
        statistics and pass 2 back to back, pass 2 last unit first, so the channel's
        data is re-read from cache, not from memory;
      * memory order (few channels for the threads, and eval): pass 1 over all units
        split evenly, statistics, then pass 2 over each thread's units back to front
        (eval, with no pass 1: front to back).
    """
    cdef idx_t C = p.C, N = p.N, nch = p.nch, U = p.U
    cdef idx_t c, c0, c1, lo, hi, n, k, u, i
    cdef int t, nt
    if stats and _balanced(C, num_threads):
        nt = _threads(num_threads, C)
        for t in prange(nt, nogil=True, num_threads=nt, schedule='static'):
            c0 = C * t // nt
            c1 = C * (t + 1) // nt
            for c in range(c0, c1):
                if stats:
                    # samples n and n + 1 side by side (two memory streams per array)
                    for n in range(0, N - 1, 2):
                        for k in range(nch):
                            _unit_sums(x, grad_y, p, (n * C + c) * nch + k, ch.centre[c], part, 2)
                    if N % 2:
                        for k in range(nch):
                            _unit_sums(x, grad_y, p, ((N - 1) * C + c) * nch + k, ch.centre[c],
                                       part, 1)
                    _channel_total(p, part, c, ch)
                    _finish_channels(ch, c, c + 1)
                for n in range(N - 1, -1, -1):
                    for k in range(nch - 1, -1, -1):
                        _unit_out(x, grad_y, out, p, (n * C + c) * nch + k, ch)
        return
    nt = _threads(num_threads, U)
    if stats:
        for t in prange(nt, nogil=True, num_threads=nt, schedule='static'):
            lo = U * t // nt
            hi = U * (t + 1) // nt
            for u in range(lo, hi):
                _unit_sums(x, grad_y, p, u, ch.centre[(u // nch) % C], part, 1)
        for c in range(C):
            _channel_total(p, part, c, ch)
        _finish_channels(ch, 0, C)
    for t in prange(nt, nogil=True, num_threads=nt, schedule='static'):
        lo = U * t // nt
        hi = U * (t + 1) // nt
        for i in range(lo, hi):
            # after pass 1, back to front: the units it read last are still in cache;
            # eval has no pass 1, and front to back streams (0.8-0.95x the time)
            _unit_out(x, grad_y, out, p, hi - 1 - (i - lo) if stats else i, ch)


# --------------------------------------------------------------------------- column path
# x is N rows of ncols = C*L values; column j belongs to channel j // L. Row block b
# is rows [b*RB, min((b+1)*RB, N)); its partial sums of column j are
# part1[b*ncols + j], part2[b*ncols + j]. Which columns are processed together does
# not change any value.

cdef void _block_sums(const real* x, const real* grad_y, Plan* p, const double* centre,
                      double* part1, double* part2, idx_t b, idx_t j0, idx_t j1) noexcept nogil:
    """Row block b's partials of columns [j0, j1): forward (grad_y NULL) sum(x - K),
    sum((x - K)^2) with K = centre[j]; backward sum(grad_y), sum((x - mean) * grad_y)
    with mean = centre[j]. Four rows per read-modify-write of the partials."""
    cdef idx_t ncols = p.ncols, r = b * p.RB, r1 = min(b * p.RB + p.RB, p.N), j
    cdef double d0, d1, d2, d3, g0, g1, g2, g3, k
    cdef double* s1 = part1 + b * ncols
    cdef double* s2 = part2 + b * ncols
    cdef const real* x0
    cdef const real* x1
    cdef const real* x2
    cdef const real* x3
    cdef const real* y0
    cdef const real* y1
    cdef const real* y2
    cdef const real* y3
    for j in range(j0, j1):
        s1[j] = 0.0
        s2[j] = 0.0
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


cdef void _columns_total(Plan* p, double* part1, double* part2, Chan* ch) noexcept nogil:
    """ch.s1[c], ch.s2[c] for every channel: each column's row-block partials summed
    (b ascending, folded into row block 0, vectorised across columns), then channel c's
    columns summed (l ascending); then the channel's statistics."""
    cdef idx_t b, j, c, l, ncols = p.ncols, L = p.L
    cdef double a, bb
    for b in range(1, p.nb):
        for j in range(ncols):
            part1[j] += part1[b * ncols + j]
            part2[j] += part2[b * ncols + j]
    if L == 1:
        # the loop below for L = 1, in a form that vectorises (0.0 + a is not a: -0.0)
        for c in range(p.C):
            ch.s1[c] = 0.0 + part1[c]
            ch.s2[c] = 0.0 + part2[c]
    else:
        for c in range(p.C):
            a = 0.0
            bb = 0.0
            for l in range(L):
                a += part1[c * L + l]
                bb += part2[c * L + l]
            ch.s1[c] = a
            ch.s2[c] = bb
    _finish_channels(ch, 0, p.C)


cdef inline void _row_affine(const real* x, const real* grad_y, real* out, idx_t n,
                             const double* mean, const double* alpha, const double* beta,
                             const double* delta) noexcept nogil:
    """out[0:n] with per-column coefficients (see Chan)."""
    cdef idx_t j
    if grad_y == NULL:
        # y = (x - mean) * alpha + beta,  alpha = gamma * inv_std
        for j in range(n):
            out[j] = <real>tb_fma(<double>x[j] - mean[j], alpha[j], beta[j])
    else:
        # grad_x = gamma * inv_std * (grad_y - (grad_beta + x_hat * grad_gamma) / M)
        #        = alpha * grad_y + ((x - mean) * beta + delta)
        for j in range(n):
            out[j] = <real>tb_fma(alpha[j], <double>grad_y[j],
                                  tb_fma(<double>x[j] - mean[j], beta[j], delta[j]))


cdef struct ColMap:
    # per-column coefficients of the output map (see Chan), ncols each; delta NULL
    # outside the backward
    const double* mean
    const double* alpha
    const double* beta
    const double* delta


cdef inline void _rows_out(const real* x, const real* grad_y, real* out, Plan* p,
                           idx_t r0, idx_t r1, idx_t j0, idx_t j1, ColMap* cm) noexcept nogil:
    """Rows [r0, r1) (in order) of columns [j0, j1) of the output map, COL_CHUNK
    columns at a time."""
    cdef idx_t r, off, j = j0, n, ncols = p.ncols
    cdef const real* g = NULL
    cdef const double* d = NULL
    while j < j1:
        n = min(<idx_t>COL_CHUNK, j1 - j)
        if grad_y != NULL:
            d = cm.delta + j
        for r in range(r0, r1):
            off = r * ncols + j
            if grad_y != NULL:
                g = grad_y + off
            _row_affine(x + off, g, out + off, n, cm.mean + j, cm.alpha + j, cm.beta + j, d)
        j = j + COL_CHUNK


cdef inline const double* _spread(Plan* p, const double* per_channel,
                                  double* per_column) noexcept nogil:
    """Per-column values of a per-channel vector: per_column[c*L + l] = per_channel[c]
    (written to per_column), or per_channel itself when L = 1 (columns are channels)."""
    cdef idx_t c, l
    if p.L == 1:
        return per_channel
    for c in range(p.C):
        for l in range(p.L):
            per_column[c * p.L + l] = per_channel[c]
    return per_column


cdef inline void _spread_map(Plan* p, Chan* ch, double* col, ColMap* cm) noexcept nogil:
    """cm = the output map's per-channel coefficients per column, in col's four
    ncols-long slots where they need copying (see _spread)."""
    cm.mean = _spread(p, ch.mean, col)
    cm.alpha = _spread(p, ch.alpha, col + p.ncols)
    cm.beta = _spread(p, ch.beta, col + 2 * p.ncols)
    cm.delta = _spread(p, ch.delta, col + 3 * p.ncols) if ch.backward else NULL


cdef void _columns_run(const real* x, const real* grad_y, real* out, Plan* p, Chan* ch,
                       double* work, bint stats, int num_threads) noexcept nogil:
    """Both passes on the column layout (stats False: the output map only, for eval):
    pass 1 as (row block, column chunk) tasks split evenly over the threads, the
    statistics, then pass 2 over each thread's rows in memory order.
    NOTE: pass 2 back to front (so the rows pass 1 read last come from cache) was
    measured 1.06-1.23x slower on (4096, 512) and (16384, 256) than front to back: only
    the last L2-full of rows is reused, and descending rows defeat the prefetcher for
    the rest. Planes differ: a thread's channel fits in cache, so it is reused whole.
    NOTE: running pass 1 and pass 2 per group of whole channels, so that pass 2 re-reads
    the group from cache (as planes do), was measured 1.3-1.5x slower on (4096, 512) and
    (16384, 256): a group that fits L2 is 32-64 columns, i.e. short strided row segments."""
    cdef idx_t N = p.N, C = p.C, ncols = p.ncols, nbc = p.nb * p.ncols
    cdef idx_t T = p.nb * p.ncc, NB = _cdiv(N, OUT_ROWS)
    cdef double* part1 = work
    cdef double* part2 = work + nbc
    cdef double* col = work + 2 * nbc   # per column: centre, then mean; alpha; beta; delta
    cdef const double* centre
    cdef ColMap cm
    cdef idx_t b, j0, lo, hi, task
    cdef int t, nt
    if stats:
        centre = _spread(p, ch.centre, col)
        nt = _threads(num_threads, T)
        for t in prange(nt, nogil=True, num_threads=nt, schedule='static'):
            lo = T * t // nt
            hi = T * (t + 1) // nt
            for task in range(lo, hi):
                b = task // p.ncc
                j0 = (task - b * p.ncc) * p.cw
                _block_sums(x, grad_y, p, centre, part1, part2, b, j0, min(j0 + p.cw, ncols))
        _columns_total(p, part1, part2, ch)
    _spread_map(p, ch, col, &cm)
    nt = _threads(num_threads, NB)
    for t in prange(nt, nogil=True, num_threads=nt, schedule='static'):
        lo = NB * t // nt
        hi = NB * (t + 1) // nt
        for b in range(lo, hi):
            _rows_out(x, grad_y, out, p, b * OUT_ROWS, min(b * OUT_ROWS + OUT_ROWS, N), 0, ncols,
                      &cm)


# --------------------------------------------------------------------------- drivers
cdef inline void _run(const real* x, const real* grad_y, real* out, Plan* p, Chan* ch,
                      double* work, bint stats, int num_threads) noexcept nogil:
    if p.planes:
        _planes_run(x, grad_y, out, p, ch, work, stats, num_threads)
    else:
        _columns_run(x, grad_y, out, p, ch, work, stats, num_threads)


cdef void _forward_train(const real* x, real* y, const real* weight, const real* bias,
                         real* running_mean, real* running_var, double momentum, double eps,
                         Plan* p, double* mean, double* inv_std, double* chan, double* work,
                         int num_threads) noexcept nogil:
    """chan: 7*C scratch doubles."""
    cdef idx_t c, C = p.C
    cdef Chan ch
    cdef double M = <double>p.M
    ch.centre = chan
    ch.s1 = chan + C
    ch.s2 = chan + 2 * C
    ch.var = chan + 3 * C
    ch.gamma = chan + 4 * C
    ch.alpha = chan + 5 * C
    ch.beta = chan + 6 * C
    ch.delta = NULL
    ch.mean = mean
    ch.inv_std = inv_std
    ch.M = M
    ch.eps = eps
    ch.backward = False
    for c in range(C):
        # NOTE: sums shifted by the channel's first value K, not E[x^2] - E[x]^2 (header).
        ch.centre[c] = <double>x[c * p.L]
        ch.gamma[c] = <double>weight[c] if weight != NULL else 1.0
        ch.beta[c] = <double>bias[c] if bias != NULL else 0.0
    _run(x, NULL, y, p, &ch, work, True, num_threads)
    if running_mean != NULL:
        for c in range(C):
            # running = (1 - momentum) * running + momentum * batch, batch var unbiased: var * M / (M - 1)
            running_mean[c] = <real>((1.0 - momentum) * <double>running_mean[c]
                                     + momentum * mean[c])
            running_var[c] = <real>((1.0 - momentum) * <double>running_var[c]
                                    + momentum * ch.var[c] * (M / (M - 1.0)))


cdef void _forward_eval(const real* x, real* y, const real* weight, const real* bias,
                        const real* running_mean, const real* running_var, double eps,
                        Plan* p, double* chan, double* work, int num_threads) noexcept nogil:
    """chan: 4*C scratch doubles."""
    cdef idx_t c, C = p.C
    cdef Chan ch
    cdef double* gamma = chan + 3 * C
    ch.mean = chan
    ch.alpha = chan + C
    ch.beta = chan + 2 * C
    ch.backward = False
    for c in range(C):
        ch.mean[c] = <double>running_mean[c]
        ch.alpha[c] = <double>running_var[c]
        gamma[c] = <double>weight[c] if weight != NULL else 1.0
        ch.beta[c] = <double>bias[c] if bias != NULL else 0.0
    # y = (x - running_mean) * alpha + beta,  alpha = gamma / sqrt(running_var + eps)
    tb_eval_alpha(C, eps, gamma, ch.alpha)
    _run(x, NULL, y, p, &ch, work, False, num_threads)


cdef void _backward(const real* x, const real* grad_y, real* grad_x, const double* mean,
                    const double* inv_std, const real* weight, real* grad_gamma,
                    real* grad_beta, Plan* p, double* chan, double* work,
                    int num_threads) noexcept nogil:
    """chan: 6*C scratch doubles."""
    cdef idx_t c, C = p.C
    cdef Chan ch
    ch.centre = <double*>mean
    ch.mean = <double*>mean
    ch.inv_std = <double*>inv_std
    ch.s1 = chan
    ch.s2 = chan + C
    ch.gamma = chan + 2 * C
    ch.alpha = chan + 3 * C
    ch.beta = chan + 4 * C
    ch.delta = chan + 5 * C
    ch.M = <double>p.M
    ch.backward = True
    for c in range(C):
        ch.gamma[c] = <double>weight[c] if weight != NULL else 1.0
    _run(x, grad_y, grad_x, p, &ch, work, True, num_threads)
    for c in range(C):
        # grad_beta = sum(grad_y),  grad_gamma = sum(grad_y * x_hat) = inv_std * sum(grad_y * (x - mean))
        grad_beta[c] = <real>ch.s1[c]
        grad_gamma[c] = <real>(inv_std[c] * ch.s2[c])


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
    if (typ != cnp.NPY_FLOAT and typ != cnp.NPY_DOUBLE) or not cnp.PyArray_ISNOTSWAPPED(x):
        raise TypeError(f"{name} must have dtype float32 or float64 (native byte order), "
                        f"got {(<object>x).dtype.str if cnp.PyArray_ISBYTESWAPPED(x) else (<object>x).dtype}")
    if cnp.PyArray_NDIM(x) != 2 and cnp.PyArray_NDIM(x) != 3:
        raise ValueError(f"{name} must be 2-D (N, C) or 3-D (N, C, L), got "
                         f"{cnp.PyArray_NDIM(x)}-D shape {(<object>x).shape}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(x):
        raise ValueError(f"{name} must be C-contiguous, got strides {(<object>x).strides} "
                         f"for shape {(<object>x).shape}")
    if not cnp.PyArray_ISALIGNED(x):
        raise ValueError(f"{name} must be aligned to its itemsize, got an unaligned buffer")
    return typ


cdef cnp.ndarray _check_vector(object a, str name, int typ, idx_t C, bint writeable=False,
                               str why=" (matching x)"):
    """None, or a C-contiguous 1-D array of length C and numpy type `typ`."""
    if a is None:
        return None
    cdef cnp.ndarray v = _as_array(a, name)
    if cnp.PyArray_TYPE(v) != typ or not cnp.PyArray_ISNOTSWAPPED(v):
        raise TypeError(f"{name} must have dtype {cnp.PyArray_DescrFromType(typ)}{why}, "
                        f"got {(<object>v).dtype.str if cnp.PyArray_ISBYTESWAPPED(v) else (<object>v).dtype}")
    if cnp.PyArray_NDIM(v) != 1 or cnp.PyArray_DIM(v, 0) != C:
        raise ValueError(f"{name} must have shape ({C},) (one value per channel), "
                         f"got {(<object>v).shape}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(v):
        raise ValueError(f"{name} must be C-contiguous, got strides {(<object>v).strides}")
    if not cnp.PyArray_ISALIGNED(v):
        raise ValueError(f"{name} must be aligned to its itemsize, got an unaligned buffer")
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
        Before any work and before the running stats are touched: wrong dtype
        (float32/float64 in native byte order), layout (C-contiguous, aligned),
        ndim, lengths, eps, momentum, num_threads, or M < 2.

    Notes
    -----
    A channel holding NaN or inf gets NaN outputs and inv_std, a NaN or infinite
    mean, and so NaN or infinite running stats; a constant channel has var = 0 and
    gives y = beta exactly.
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
    cdef int nt = check_threads(num_threads, "num_threads")
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
    cdef cnp.ndarray work = _empty(7 * C + _work_doubles(&p), cnp.NPY_DOUBLE)
    cdef double* mp = <double*>cnp.PyArray_DATA(mean)
    cdef double* sp = <double*>cnp.PyArray_DATA(inv_std)
    cdef double* cp = <double*>cnp.PyArray_DATA(work)
    cdef double* wk = cp + 7 * C
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
    cdef int nt = check_threads(num_threads, "num_threads")

    cdef Plan p
    _make_plan(&p, N, C, L)
    cdef cnp.ndarray y = _empty_like(xa)
    cdef cnp.ndarray work = _empty(4 * C + _work_doubles(&p), cnp.NPY_DOUBLE)
    cdef double* cp = <double*>cnp.PyArray_DATA(work)
    cdef double* wk = cp + 4 * C
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
    cdef int nt = check_threads(num_threads, "num_threads")

    cdef Plan p
    _make_plan(&p, N, C, L)
    cdef cnp.ndarray grad_x = _empty_like(xa)
    cdef cnp.ndarray grad_gamma = _empty(C, typ)
    cdef cnp.ndarray grad_beta = _empty(C, typ)
    cdef cnp.ndarray work = _empty(6 * C + _work_doubles(&p), cnp.NPY_DOUBLE)
    cdef double* cp = <double*>cnp.PyArray_DATA(work)
    cdef double* wk = cp + 6 * C
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
