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
static inline float tb_exp_reduce(float x, int32_t *n)
{
    /* n = round-to-nearest(x * log2(e)) by the 1.5 * 2^23 trick: t's low mantissa
     * bits hold n, read as an integer (no float-to-int conversion of NaN). */
    const float shifter = 12582912.0f;
    float t = x * 1.44269504088896341f + shifter;
    float nf = t - shifter;
    int32_t tbits, sbits;
    memcpy(&tbits, &t, sizeof tbits);
    memcpy(&sbits, &shifter, sizeof sbits);
    *n = tbits - sbits;

    float r = x - nf * 0.693359375f;
    r = r - nf * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
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

#endif /* TB_FASTMATH_H */
