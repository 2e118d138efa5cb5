/* Activations. Each backward reads the least it can: relu, sigmoid and tanh use their
 * output (so the input can be freed once the next op is done with it), leaky_relu its
 * output when the slope keeps signs, gelu its input. The hot loops (relu, leaky_relu and
 * every backward) are small kernels with restrict parameters, so the vectoriser needs no
 * runtime alias checks. */
#include "internal.h"

#include <math.h>

#include "vmath.h"

/* ---- relu and leaky_relu ----------------------------------------------------------- */

static void relu_fwd(float *restrict y, const float *restrict x, int64_t n) {
    /* x < 0 ? 0 : x keeps NaN as NaN, as PyTorch does. */
    CT_PAR_FOR(n)
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        y[i] = v < 0 ? 0.0f : v;
    }
}

static void relu_bwd(float *restrict gx, const float *restrict y, const float *restrict g,
                     int64_t n) {
    /* PyTorch's threshold_backward: zero where y <= 0 (so the gradient at 0 is 0). */
    CT_PAR_FOR(n)
    for (int64_t i = 0; i < n; i++) {
        float gi = g[i];
        gx[i] += y[i] <= 0 ? 0.0f : gi;
    }
}

/* relu_bwd into a fresh (uninitialised) gradient: one write pass instead of a zero fill
 * followed by a read-modify-write pass. */
static void relu_bwd_set(float *restrict gx, const float *restrict y, const float *restrict g,
                         int64_t n) {
    CT_PAR_FOR(n)
    for (int64_t i = 0; i < n; i++) {
        float gi = g[i];
        gx[i] = y[i] <= 0 ? 0.0f : gi;
    }
}

static void relu_backward(ct_node *n, const ct_tensor *gout) {
    bool fresh;
    float *gx = ct_node_grad_in_fresh(n, 0, &fresh)->data;
    if (fresh)
        relu_bwd_set(gx, n->saved[0]->data, gout->data, gout->numel);
    else
        relu_bwd(gx, n->saved[0]->data, gout->data, gout->numel);
}

ct_tensor *ct_relu(ct_tensor *x) {
    ct_tensor *out = ct_empty_like(x);
    relu_fwd(out->data, x->data, x->numel);
    ct_node *n = CT_RECORD("relu", relu_backward, out, x);
    if (n) ct_save(n, out); /* y > 0 exactly where x > 0 */
    return out;
}

static void leaky_fwd(float *restrict y, const float *restrict x, float s, int64_t n) {
    CT_PAR_FOR(n)
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        y[i] = v > 0 ? v : v * s;
    }
}

static void leaky_bwd(float *restrict gx, const float *restrict v, const float *restrict g,
                      float s, int64_t n) {
    CT_PAR_FOR(n)
    for (int64_t i = 0; i < n; i++) {
        float gi = g[i];
        gx[i] += v[i] > 0 ? gi : gi * s;
    }
}

static void leaky_relu_backward(ct_node *n, const ct_tensor *gout) {
    leaky_bwd(ct_node_grad_in(n, 0)->data, n->saved[0]->data, gout->data, n->f[0], gout->numel);
}

ct_tensor *ct_leaky_relu(ct_tensor *x, float negative_slope) {
    ct_tensor *out = ct_empty_like(x);
    leaky_fwd(out->data, x->data, negative_slope, x->numel);
    ct_node *n = CT_RECORD("leaky_relu", leaky_relu_backward, out, x);
    if (n) {
        n->f[0] = negative_slope;
        /* With slope >= 0, y > 0 exactly where x > 0, so the output will do; a negative
         * slope flips signs and needs the input. */
        ct_save(n, negative_slope >= 0 ? out : x);
    }
    return out;
}

/* ---- gelu (exact): x * Phi(x) ------------------------------------------------------ */

/* 8 lanes: Phi(x) = (1 + erf(x / sqrt 2)) / 2, and the pdf phi(x) when pdf is given. */
static inline __m256 gelu_cdf8(__m256 v, __m256 *pdf) {
    __m256 half = _mm256_set1_ps(0.5f);
    __m256 e = ct__v8_erf(_mm256_mul_ps(v, _mm256_set1_ps((float)M_SQRT1_2)));
    if (pdf)
        *pdf = _mm256_mul_ps(_mm256_set1_ps(0.3989422804014327f),
                             ct__v8_exp(_mm256_mul_ps(_mm256_mul_ps(v, v), _mm256_set1_ps(-0.5f))));
    return _mm256_fmadd_ps(half, e, half);
}

/* 8 lanes of y = x Phi(x) */
static inline __m256 gelu8(__m256 v) { return _mm256_mul_ps(v, gelu_cdf8(v, NULL)); }

/* 8 lanes of gx (+)= g * (Phi(x) + x phi(x)), the derivative of x Phi(x) */
static inline __m256 gelu_grad8(__m256 v, __m256 g, __m256 acc) {
    __m256 pdf, cdf = gelu_cdf8(v, &pdf);
    return _mm256_fmadd_ps(g, _mm256_fmadd_ps(v, pdf, cdf), acc);
}

static void gelu_fwd(float *restrict y, const float *restrict x, int64_t n) {
    int64_t nv = n / 8;
    CT_PAR_FOR(n)
    for (int64_t i = 0; i < nv; i++) _mm256_storeu_ps(y + 8 * i, gelu8(_mm256_loadu_ps(x + 8 * i)));
    if (n % 8) ct__v8_store_tail(y + 8 * nv, gelu8(ct__v8_load_tail(x + 8 * nv, n % 8, 0)), n % 8);
}

/* fresh: gx is uninitialised and is set, else accumulated into. */
static void gelu_bwd(float *restrict gx, const float *restrict x, const float *restrict g, int64_t n,
                     bool fresh) {
    int64_t nv = n / 8;
    __m256 zero = _mm256_setzero_ps();
    CT_PAR_FOR(n)
    for (int64_t i = 0; i < nv; i++) {
        float *o = gx + 8 * i;
        __m256 r = gelu_grad8(_mm256_loadu_ps(x + 8 * i), _mm256_loadu_ps(g + 8 * i),
                              fresh ? zero : _mm256_loadu_ps(o));
        _mm256_storeu_ps(o, r);
    }
    if (n % 8) {
        int64_t t = n % 8, o = 8 * nv;
        __m256 acc = fresh ? zero : ct__v8_load_tail(gx + o, t, 0);
        ct__v8_store_tail(gx + o, gelu_grad8(ct__v8_load_tail(x + o, t, 0), ct__v8_load_tail(g + o, t, 0), acc), t);
    }
}

static void gelu_backward(ct_node *n, const ct_tensor *gout) {
    bool fresh;
    float *gx = ct_node_grad_in_fresh(n, 0, &fresh)->data;
    gelu_bwd(gx, n->saved[0]->data, gout->data, gout->numel, fresh);
}

ct_tensor *ct_gelu(ct_tensor *x) {
    ct_tensor *out = ct_empty_like(x);
    gelu_fwd(out->data, x->data, x->numel);
    ct_node *n = CT_RECORD("gelu", gelu_backward, out, x);
    if (n) ct_save(n, x);
    return out;
}

/* ---- tanh and sigmoid (backward from the output) ------------------------------------ */

static void tanh_bwd(float *restrict gx, const float *restrict y, const float *restrict g,
                     int64_t n) {
    CT_PAR_FOR(n)
    for (int64_t i = 0; i < n; i++) gx[i] += g[i] * (1.0f - y[i] * y[i]);
}

static void tanh_backward(ct_node *n, const ct_tensor *gout) {
    tanh_bwd(ct_node_grad_in(n, 0)->data, n->saved[0]->data, gout->data, gout->numel);
}

ct_tensor *ct_tanh(ct_tensor *x) { return ct__map("tanh", x, tanhf, tanh_backward, true); }

static void sigmoid_bwd(float *restrict gx, const float *restrict y, const float *restrict g,
                        int64_t n) {
    CT_PAR_FOR(n)
    for (int64_t i = 0; i < n; i++) gx[i] += g[i] * y[i] * (1.0f - y[i]);
}

static void sigmoid_backward(ct_node *n, const ct_tensor *gout) {
    sigmoid_bwd(ct_node_grad_in(n, 0)->data, n->saved[0]->data, gout->data, gout->numel);
}

static float sigmoidf(float v) {
    /* exp of a non-positive argument only, so large |x| never overflows. */
    float e = expf(-fabsf(v));
    return v >= 0 ? 1.0f / (1.0f + e) : e / (1.0f + e);
}

ct_tensor *ct_sigmoid(ct_tensor *x) { return ct__map("sigmoid", x, sigmoidf, sigmoid_backward, true); }
