/* Float64 sums over contiguous runs as explicit vectors of 8 doubles (GCC/Clang vector
 * extensions), shared by reduce.pyx and batchnorm.pyx.
 *
 * Without -ffast-math a compiler may not split one running sum into lanes, and GCC's
 * SLP vectoriser handles a Cython lane array only partly (the lanes live in memory,
 * or stay scalar). Written with vector types the lane layout is explicit, identical
 * for every thread count, and vectorised with AVX2 or AVX-512 alike.
 */
#ifndef TB_VEC8D_H
#define TB_VEC8D_H

#include <stddef.h>

typedef double tb_v8d __attribute__((vector_size(64)));
/* unaligned, aliasing views of 8 floats / 8 doubles in the caller's arrays */
typedef float tb_v8f_u __attribute__((vector_size(32), aligned(4), may_alias));
typedef double tb_v8d_u __attribute__((vector_size(64), aligned(8), may_alias));
/* (macros, not functions: a vector-typed argument or result warns -Wpsabi in builds
 * without AVX-512) */
#if defined(__AVX512F__)
#include <immintrin.h>
/* NOTE: one vcvtps2pd zmm. GCC (12, tuned for 256-bit vectors) lowers the generic
 * __builtin_convertvector below to two ymm converts, an extract and an insert: float32
 * sums in cache ran 1.7x slower that way. Same lanes, same values. */
#define tb_load_f32(p) ((tb_v8d)_mm512_cvtps_pd(_mm256_loadu_ps((const float *)(p))))
#else
#define tb_load_f32(p) __builtin_convertvector(*(const tb_v8f_u *)(p), tb_v8d)
#endif
#define tb_load_f64(p) ((tb_v8d)*(const tb_v8d_u *)(p))
#define tb_fold(v) ((((v)[0] + (v)[4]) + ((v)[2] + (v)[6])) + (((v)[1] + (v)[5]) + ((v)[3] + (v)[7])))

/* sum(x[0:n]) in float64: 32 lanes in four 8-double accumulators (enough independent
 * chains to hide the add latency), a scalar tail, then a fixed fold. The pattern
 * depends on n only. */
#define TB_SUM_RUN(NAME, T, LOAD)                                                   \
static inline double NAME(const T *x, ptrdiff_t n) {                                \
    tb_v8d sa = {0}, sb = {0}, sc = {0}, sd = {0};                                  \
    double t = 0.0;                                                                 \
    ptrdiff_t i = 0;                                                                \
    for (; i + 32 <= n; i += 32) {                                                  \
        sa += LOAD(x + i); sb += LOAD(x + i + 8);                                   \
        sc += LOAD(x + i + 16); sd += LOAD(x + i + 24);                             \
    }                                                                               \
    for (; i < n; i++)                                                              \
        t += (double)x[i];                                                          \
    sa = (sa + sb) + (sc + sd);                                                     \
    return tb_fold(sa) + t;                                                         \
}
TB_SUM_RUN(tb_sum_run_f32, float, tb_load_f32)
TB_SUM_RUN(tb_sum_run_f64, double, tb_load_f64)

/* The sums of four rows x, x + stride, x + 2*stride, x + 3*stride of n values each:
 * out[k] = NAME-of-TB_SUM_RUN(row k), bit for bit (same lanes, tail and fold per row).
 * NOTE: reading four rows side by side keeps four memory streams in flight; measured
 * 1.2x faster than one row at a time on DRAM-sized (4096, 1024) float32, and not
 * slower in cache. */
#define TB_SUM_RUN4(NAME, T, LOAD)                                                  \
static inline void NAME(const T *x, ptrdiff_t n, ptrdiff_t stride, double *out) {   \
    const T *x0 = x, *x1 = x + stride, *x2 = x + 2 * stride, *x3 = x + 3 * stride;  \
    tb_v8d a0 = {0}, b0 = {0}, c0 = {0}, d0 = {0};                                  \
    tb_v8d a1 = {0}, b1 = {0}, c1 = {0}, d1 = {0};                                  \
    tb_v8d a2 = {0}, b2 = {0}, c2 = {0}, d2 = {0};                                  \
    tb_v8d a3 = {0}, b3 = {0}, c3 = {0}, d3 = {0};                                  \
    double t0 = 0.0, t1 = 0.0, t2 = 0.0, t3 = 0.0;                                  \
    ptrdiff_t i = 0;                                                                \
    for (; i + 32 <= n; i += 32) {                                                  \
        a0 += LOAD(x0 + i); b0 += LOAD(x0 + i + 8);                                 \
        c0 += LOAD(x0 + i + 16); d0 += LOAD(x0 + i + 24);                           \
        a1 += LOAD(x1 + i); b1 += LOAD(x1 + i + 8);                                 \
        c1 += LOAD(x1 + i + 16); d1 += LOAD(x1 + i + 24);                           \
        a2 += LOAD(x2 + i); b2 += LOAD(x2 + i + 8);                                 \
        c2 += LOAD(x2 + i + 16); d2 += LOAD(x2 + i + 24);                           \
        a3 += LOAD(x3 + i); b3 += LOAD(x3 + i + 8);                                 \
        c3 += LOAD(x3 + i + 16); d3 += LOAD(x3 + i + 24);                           \
    }                                                                               \
    for (; i < n; i++) {                                                            \
        t0 += (double)x0[i]; t1 += (double)x1[i];                                   \
        t2 += (double)x2[i]; t3 += (double)x3[i];                                   \
    }                                                                               \
    a0 = (a0 + b0) + (c0 + d0); a1 = (a1 + b1) + (c1 + d1);                         \
    a2 = (a2 + b2) + (c2 + d2); a3 = (a3 + b3) + (c3 + d3);                         \
    out[0] = tb_fold(a0) + t0; out[1] = tb_fold(a1) + t1;                           \
    out[2] = tb_fold(a2) + t2; out[3] = tb_fold(a3) + t3;                           \
}
TB_SUM_RUN4(tb_sum_run4_f32, float, tb_load_f32)
TB_SUM_RUN4(tb_sum_run4_f64, double, tb_load_f64)

#endif
