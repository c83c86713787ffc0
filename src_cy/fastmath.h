/* Vectorisable float exp and tanh for the elementwise and softmax kernels.
 *
 * glibc's expf is a function call that gcc will not vectorise unless -ffast-math
 * is on (which this project refuses: it breaks NaN handling and reorders sums).
 * These are branch-free `static inline` functions, so a plain loop that calls
 * them compiles to AVX2 code. Float64 kernels keep using libm.
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

/* exp(x) for float, max error about 1 ulp (Cephes expf; Moshier, "Methods and
 * Programs for Mathematical Functions", 1989).
 *   exp(x) = 2^n * exp(r),  n = round(x / ln2),  r = x - n*ln2 in [-ln2/2, ln2/2]
 * ln2 is split into C1 + C2 with C1 exact in 9 bits, so n*C1 is exact (Cody-Waite).
 * exp(r) = 1 + r + r^2 * P(r), P a degree-5 minimax polynomial.
 * Like expf: +inf above ~88.72, 0 below ~-103.97, subnormals in between, NaN -> NaN.
 */
static inline float tb_expf(float x)
{
    /* NOTE: clamping keeps n in [-150, 128]; the scaling below still overflows to
     * inf / underflows to 0 exactly where expf does. A NaN fails both comparisons
     * and is clamped to -104 (so no NaN reaches the int conversion), then restored. */
    float xc = x > -104.0f ? x : -104.0f;
    xc = xc < 88.8f ? xc : 88.8f;

    /* n = round-to-nearest(x * log2(e)) by the 1.5 * 2^23 trick (no libm call) */
    const float shifter = 12582912.0f;
    float n = (xc * 1.44269504088896341f + shifter) - shifter;

    float r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;

    float z = r * r;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float y = p * z + r + 1.0f;

    /* 2^n in two factors so n = 128 and subnormal results (n < -126) stay exact:
     * y * 2^n1 is exact, the final multiply rounds once. */
    int32_t ni = (int32_t)n;
    int32_t n1 = ni >> 1;
    int32_t n2 = ni - n1;
    y = y * tb_exp2i(n1) * tb_exp2i(n2);
    return x != x ? x : y;
}

/* tanh(x) for float, max error about 2 ulp (Cephes tanhf).
 *   |x| <  0.625: tanh(x) = x + x^3 * P(x^2)      (no cancellation near 0)
 *   |x| >= 0.625: tanh(x) = sign(x) * (1 - 2 / (exp(2|x|) + 1))
 * Both branches are computed and one is selected, so a loop stays vectorisable.
 * Large |x| gives exp = inf and exactly +-1; NaN -> NaN.
 */
static inline float tb_tanhf(float x)
{
    float ax = fabsf(x);
    float z = x * x;
    float p = -5.70498872745e-3f;
    p = p * z + 2.06390887954e-2f;
    p = p * z - 5.37397155531e-2f;
    p = p * z + 1.33314422036e-1f;
    p = p * z - 3.33332819422e-1f;
    float small = p * z * x + x;

    float e = tb_expf(2.0f * ax);
    float big = copysignf(1.0f - 2.0f / (e + 1.0f), x);
    return ax < 0.625f ? small : big;
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
