/* 8-wide AVX2 exp and erf for the transcendental-bound passes (GELU's erf and exp, softmax's
 * exp): libm's scalar erff and expf were about a third of a small ViT's step. Each result is
 * within 2 ulp of the exact value (vector_exp_and_erf_accuracy in
 * tests/unit/test_ops_activation.c). A lane's value never depends on its neighbours, and
 * callers run ragged tails through the same 8-wide code (ct__v8_load_tail), so an element's
 * result does not depend on where a thread's chunk starts. */
#ifndef CT_OPS_VMATH_H
#define CT_OPS_VMATH_H

#include <immintrin.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>

/* exp(x); 0 below -87.3 (no subnormals), +inf above 88.7, NaN stays NaN. Cody-Waite
 * reduction x = n ln2 + r, |r| <= ln2/2, then a degree-6 polynomial for exp(r). nonpos: the
 * caller knows x <= 0 (softmax's x - max), so the overflow side is skipped. */
static inline __m256 ct__v8_exp_impl(__m256 x, bool nonpos) {
    const __m256 hi = _mm256_set1_ps(88.7228394f), lo = _mm256_set1_ps(-87.3365479f);
    __m256 small = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    /* min/max return their second operand when either is NaN: a NaN x stays NaN */
    __m256 c = _mm256_max_ps(lo, nonpos ? x : _mm256_min_ps(hi, x));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(c, _mm256_set1_ps(1.44269504f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), c);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i ni = _mm256_cvtps_epi32(n), bias = _mm256_set1_epi32(127);
    if (nonpos) /* -126 <= n <= 0: 2^n in one step */
        return _mm256_andnot_ps(small, _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(ni, bias), 23))));
    /* 2^n built in two halves, so n = 128 (x near the top) does not overflow the exponent */
    __m256i h = _mm256_srai_epi32(ni, 1);
    __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(h, bias), 23));
    __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(ni, h), bias), 23));
    __m256 y = _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
    y = _mm256_blendv_ps(y, _mm256_set1_ps(INFINITY), _mm256_cmp_ps(x, hi, _CMP_GT_OQ));
    return _mm256_andnot_ps(small, y);
}

static inline __m256 ct__v8_exp(__m256 x) { return ct__v8_exp_impl(x, false); }
static inline __m256 ct__v8_exp_nonpos(__m256 x) { return ct__v8_exp_impl(x, true); }

/* erf(x), after N. Juffa's single-precision minimax erff: an odd polynomial below
 * |x| = 0.9277, 1 - exp(poly(|x|)) with the sign of x above; |x| is capped at 4, where erf
 * is 1 in float. */
static inline __m256 ct__v8_erf(__m256 x) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 t = _mm256_andnot_ps(sign, x), s = _mm256_mul_ps(x, x);
    /* |x| <= 0.9277: x + x * poly(x^2) */
    __m256 a = _mm256_set1_ps(-5.96761703e-4f);
    a = _mm256_fmadd_ps(a, s, _mm256_set1_ps(4.99119423e-3f));
    a = _mm256_fmadd_ps(a, s, _mm256_set1_ps(-2.67681349e-2f));
    a = _mm256_fmadd_ps(a, s, _mm256_set1_ps(1.12819925e-1f));
    a = _mm256_fmadd_ps(a, s, _mm256_set1_ps(-3.76125336e-1f));
    a = _mm256_fmadd_ps(a, s, _mm256_set1_ps(1.28379166e-1f));
    a = _mm256_fmadd_ps(a, x, x);
    /* above: 1 - exp(poly(t)), t capped at 4 (a NaN t stays NaN) */
    __m256 tc = _mm256_min_ps(_mm256_set1_ps(4.0f), t), sc = _mm256_mul_ps(tc, tc);
    __m256 r = _mm256_fmadd_ps(_mm256_set1_ps(-1.72853470e-5f), tc, _mm256_set1_ps(3.83197126e-4f));
    __m256 u = _mm256_fmadd_ps(_mm256_set1_ps(-3.88396438e-3f), tc, _mm256_set1_ps(2.42546219e-2f));
    r = _mm256_fmadd_ps(r, sc, u);
    r = _mm256_fmadd_ps(r, tc, _mm256_set1_ps(-1.06777877e-1f));
    r = _mm256_fmadd_ps(r, tc, _mm256_set1_ps(-6.34846687e-1f));
    r = _mm256_fmadd_ps(r, tc, _mm256_set1_ps(-1.28717512e-1f));
    r = _mm256_fmadd_ps(r, tc, _mm256_sub_ps(_mm256_setzero_ps(), tc));
    __m256 b = _mm256_sub_ps(_mm256_set1_ps(1.0f), ct__v8_exp(r));
    b = _mm256_or_ps(b, _mm256_and_ps(sign, x)); /* b >= 0: copysign */
    __m256 far = _mm256_cmp_ps(t, _mm256_set1_ps(0.927734375f), _CMP_GT_OQ);
    return _mm256_blendv_ps(a, b, far);
}

/* Lanes [0, n) set, for the masked loads and stores of a ragged tail (0 <= n <= 8). */
static inline __m256i ct__v8_mask(int64_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* The n < 8 trailing floats of p as a full vector, the missing lanes `fill` (a masked
 * load: nothing past p + n is read). */
static inline __m256 ct__v8_load_tail(const float *p, int64_t n, float fill) {
    __m256i m = ct__v8_mask(n);
    return _mm256_blendv_ps(_mm256_set1_ps(fill), _mm256_maskload_ps(p, m), _mm256_castsi256_ps(m));
}

/* Stores the first n < 8 lanes of v to p. Through the stack, not vmaskmovps: AMD's masked
 * store is microcoded, and was a third of softmax's time on rows of 50. */
static inline void ct__v8_store_tail(float *p, __m256 v, int64_t n) {
    float buf[8];
    _mm256_storeu_ps(buf, v);
    for (int64_t i = 0; i < n; i++) p[i] = buf[i];
}

#endif
