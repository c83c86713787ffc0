/* Vectorisable float exp and tanh for the elementwise and softmax kernels.
 *
 * glibc's expf is a function call that gcc will not vectorise unless -ffast-math
 * is on (which this project refuses: it breaks NaN handling and reorders sums).
 * These are branch-free `static inline` functions, so a plain loop that calls
 * them compiles to SIMD code (AVX2 / AVX-512). Float64 kernels keep using libm.
 */
#ifndef TB_FASTMATH_H
#define TB_FASTMATH_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* 2^n as a float for -126 <= n <= 127, built from the exponent bits. */
static inline float tb_exp2i(int32_t n)
{
    int32_t bits = (n + 127) << 23;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* The reduction and polynomial shared by exp and tanh (Cephes expf; Moshier,
 * "Methods and Programs for Mathematical Functions", 1989):
 *   exp(x) = 2^n * (1 + u),  n = round(x / ln2),  r = x - n*ln2 in [-ln2/2, ln2/2],
 *   u = expm1(r) = r + r^2 * P(r), P a degree-5 minimax polynomial.
 * ln2 = C1 + C2 with C1 exact in 9 bits, so n*C1 is exact (Cody-Waite).
 * Returns u and stores n (meaningful for |x| < 2^22; a NaN x gives a NaN u).
 */
/* Cephes' constants, shared by the scalar and the 16-lane code below. */
#define TB_EXP_LOG2E 1.44269504088896341f
#define TB_EXP_SHIFTER 12582912.0f /* 1.5 * 2^23 */
#define TB_EXP_C1 0.693359375f
#define TB_EXP_C2 -2.12194440e-4f
#define TB_EXP_P5 1.9875691500e-4f
#define TB_EXP_P4 1.3981999507e-3f
#define TB_EXP_P3 8.3334519073e-3f
#define TB_EXP_P2 4.1665795894e-2f
#define TB_EXP_P1 1.6666665459e-1f
#define TB_EXP_P0 5.0000001201e-1f

static inline float tb_exp_reduce(float x, int32_t *n)
{
    /* n = round-to-nearest(x * log2(e)) by the 1.5 * 2^23 trick: t's low mantissa
     * bits hold n, read as an integer (no float-to-int conversion of NaN). */
    const float shifter = TB_EXP_SHIFTER;
    float t = x * TB_EXP_LOG2E + shifter;
    float nf = t - shifter;
    int32_t tbits, sbits;
    memcpy(&tbits, &t, sizeof tbits);
    memcpy(&sbits, &shifter, sizeof sbits);
    *n = tbits - sbits;

    float r = x - nf * TB_EXP_C1;
    r = r - nf * TB_EXP_C2;
    float p = TB_EXP_P5;
    p = p * r + TB_EXP_P4;
    p = p * r + TB_EXP_P3;
    p = p * r + TB_EXP_P2;
    p = p * r + TB_EXP_P1;
    p = p * r + TB_EXP_P0;
    return p * (r * r) + r;
}

/* exp(x) for float, max error about 1 ulp. Like expf: +inf above ~88.72, 0 below
 * ~-103.97, subnormals in between, NaN -> NaN. */
static inline float tb_expf(float x)
{
    int32_t n;
    float y = tb_exp_reduce(x, &n) + 1.0f;
    /* 2^n in two factors so n = 128 and subnormal results (n < -126) stay exact:
     * y * 2^n1 is exact, the final multiply rounds once. */
    int32_t n1 = n >> 1;
    y = y * tb_exp2i(n1) * tb_exp2i(n - n1);
    /* NOTE: for -104 <= x <= 88.8 (n in [-150, 128]) the scaling above over- and
     * underflows exactly where expf does; outside, n is meaningless and the limits
     * are selected instead of clamping x first (cheaper once vectorised). NaN fails
     * both tests and has propagated through y. */
    y = x > 88.8f ? INFINITY : y;
    return x < -104.0f ? 0.0f : y;
}

/* tanh(x) for float, max error about 2 ulp.
 *   tanh(|x|) = -m / (m + 2),  m = expm1(-2|x|) = 2^n (1 + u) - 1 in (-1, 0]
 *   -m = (1 - 2^n) - 2^n u,  m + 2 = (1 + 2^n) + 2^n u
 * 1 - 2^n and 1 + 2^n are exact and nothing cancels: for small |x|, n = 0 and
 * -m = -u keeps full relative precision, so no separate small-|x| branch.
 * |x| is capped at 9.1, where tanh already rounds to 1 (keeps 2^n normal); NaN
 * fails the cap test and propagates.
 */
static inline float tb_tanhf(float x)
{
    float ax = fabsf(x);
    int32_t n;
    float u = tb_exp_reduce(-2.0f * (ax > 9.1f ? 9.1f : ax), &n);
    float s = tb_exp2i(n);
    float num = (1.0f - s) - s * u;
    float den = (1.0f + s) + s * u;
    return copysignf(num / den, x);
}

/* sigmoid(x) = 1 / (1 + exp(-x)) for float, max error about 2 ulp.
 * NOTE: written as num / (1 + e) with e = exp(-|x|) <= 1 and num = 1 (x >= 0) or e
 * (x < 0): e never overflows, and for very negative x the result keeps its
 * subnormal digits instead of flushing to 0 once exp(-x) = inf. */
static inline float tb_sigmoidf(float x)
{
    float e = tb_expf(-fabsf(x));
    float num = x >= 0.0f ? 1.0f : e;
    return num / (1.0f + e);
}

/* ------------------------------------------------------------------ arrays
 * o[i] = exp(x[i] - shift), sigmoid(x[i]) and tanh(x[i]) for i < n (o may be x).
 * Where AVX-512 is available they run 16 lanes at a time with the same reduction
 * and polynomial, but two steps cheaper than what gcc makes of the scalar code
 * (about 17 instructions per 16 values instead of 30; 1.4x faster in cache, and
 * at memory speed on arrays bigger than the caches):
 *   - 2^n by vscalefps, which rounds y * 2^n once, as the two-factor scaling
 *     does (y * 2^n1 is exact), so subnormal and overflowing results are the same;
 *   - the limits by clamping x to [-104, 89] first instead of two selects after:
 *     exp(89) overflows to +inf and exp(-104) rounds to 0, like every x beyond.
 *     min/max return their second operand when one is NaN, and x is the second,
 *     so NaN still propagates.
 * The results are bit-identical to tb_expf / tb_sigmoidf / tb_tanhf compiled with fused
 * multiply-adds, as -march=native gives them here (checked over all 2^32 float32 inputs
 * when written; the tests compare every float class, a dense sweep of [-110, 110] and
 * every position in a block). Elsewhere the scalar loop runs; without FMA
 * (TB_NO_NATIVE=1) its polynomial rounds differently in the last bit for about 0.05 %
 * of inputs, within the same ulp bounds (TB_EXHAUSTIVE=1 checks them all).
 */
#if defined(__AVX512F__)
#include <immintrin.h>

/* tb_exp_reduce on 16 lanes: returns u and stores n as a float (for vscalefps). */
static inline __m512 tb_exp_reduce16(__m512 x, __m512 *nf)
{
    const __m512 shifter = _mm512_set1_ps(TB_EXP_SHIFTER);
    __m512 n = _mm512_sub_ps(_mm512_fmadd_ps(x, _mm512_set1_ps(TB_EXP_LOG2E), shifter), shifter);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(TB_EXP_C1), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(TB_EXP_C2), r);
    __m512 p = _mm512_set1_ps(TB_EXP_P5);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(TB_EXP_P4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(TB_EXP_P3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(TB_EXP_P2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(TB_EXP_P1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(TB_EXP_P0));
    *nf = n;
    return _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r);
}

static inline __m512 tb_expf16(__m512 x)
{
    __m512 nf;
    x = _mm512_min_ps(_mm512_set1_ps(89.0f), x);
    x = _mm512_max_ps(_mm512_set1_ps(-104.0f), x);
    __m512 u = tb_exp_reduce16(x, &nf);
    return _mm512_scalef_ps(_mm512_add_ps(u, _mm512_set1_ps(1.0f)), nf);
}

/* sigmoid as tb_sigmoidf: e = exp(-|x|), (x >= 0 ? 1 : e) / (1 + e) */
static inline __m512 tb_sigmoidf16(__m512 x)
{
    __m512 e = tb_expf16(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(x)));
    __mmask16 nonneg = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GE_OQ);
    __m512 num = _mm512_mask_blend_ps(nonneg, e, _mm512_set1_ps(1.0f));
    return _mm512_div_ps(num, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

/* tanh as tb_tanhf: |x| capped at 9.1 (min keeps a NaN |x|: its second operand),
 * m = expm1(-2|x|) = 2^n (1 + u) - 1, tanh(|x|) = ((1 - 2^n) - 2^n u) / ((1 + 2^n) + 2^n u),
 * sign from x. 2^n (n in [-27, 0]) is exact from vscalefps. */
static inline __m512 tb_tanhf16(__m512 x)
{
    __m512 nf;
    __m512 ax = _mm512_min_ps(_mm512_set1_ps(9.1f), _mm512_abs_ps(x));
    __m512 u = tb_exp_reduce16(_mm512_mul_ps(_mm512_set1_ps(-2.0f), ax), &nf);
    const __m512 one = _mm512_set1_ps(1.0f);
    __m512 s = _mm512_scalef_ps(one, nf);
    __m512 num = _mm512_fnmadd_ps(s, u, _mm512_sub_ps(one, s));
    __m512 den = _mm512_fmadd_ps(s, u, _mm512_add_ps(one, s));
    __m512 q = _mm512_div_ps(num, den);
    /* copysign(q, x): magnitude bits of q, sign bit of x */
    return _mm512_castsi512_ps(_mm512_ternarylogic_epi32(
        _mm512_castps_si512(q), _mm512_castps_si512(x), _mm512_set1_epi32(0x7fffffff), 0xe4));
}

/* o[i] = F(x[i] - shift) for i < n: VEC on 16 lanes with a masked last block, or the
 * scalar SCALAR where AVX-512 is missing. */
#define TB_ARRAY(VEC, SCALAR, X, SHIFT, O, N)                                       \
    do {                                                                            \
        const __m512 s_ = _mm512_set1_ps(SHIFT);                                    \
        ptrdiff_t i_ = 0;                                                           \
        for (; i_ + 16 <= (N); i_ += 16)                                            \
            _mm512_storeu_ps((O) + i_, VEC(_mm512_sub_ps(_mm512_loadu_ps((X) + i_), s_))); \
        if (i_ < (N)) {                                                             \
            __mmask16 m_ = (__mmask16)((1u << ((N) - i_)) - 1u);                    \
            _mm512_mask_storeu_ps((O) + i_, m_,                                     \
                VEC(_mm512_sub_ps(_mm512_maskz_loadu_ps(m_, (X) + i_), s_)));       \
        }                                                                           \
    } while (0)
#else
#define TB_ARRAY(VEC, SCALAR, X, SHIFT, O, N)                                       \
    for (ptrdiff_t i_ = 0; i_ < (N); i_++)                                          \
        (O)[i_] = SCALAR((X)[i_] - (SHIFT))
#endif

/* o[i] = exp(x[i] - shift); shift 0 gives exp(x) exactly (x - 0 = x, -0 included) */
static inline void tb_expf_shifted(const float *x, float shift, float *o, ptrdiff_t n)
{
    TB_ARRAY(tb_expf16, tb_expf, x, shift, o, n);
}

static inline void tb_sigmoidf_array(const float *x, float *o, ptrdiff_t n)
{
    TB_ARRAY(tb_sigmoidf16, tb_sigmoidf, x, 0.0f, o, n);
}

static inline void tb_tanhf_array(const float *x, float *o, ptrdiff_t n)
{
    TB_ARRAY(tb_tanhf16, tb_tanhf, x, 0.0f, o, n);
}

#endif /* TB_FASTMATH_H */
