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
#define tb_load_f32(p) __builtin_convertvector(*(const tb_v8f_u *)(p), tb_v8d)
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

#endif
