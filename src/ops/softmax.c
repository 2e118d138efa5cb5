/* softmax and log_softmax along any dim, stable by subtracting the max. x is viewed as
 * [outer, d, inner]: when dim is the last one (inner == 1) every row is contiguous;
 * otherwise the loops run over whole inner rows, so memory is still read in order and the
 * per-element work vectorises across inner. Both backwards use only the output. */
#include "internal.h"

#include <math.h>

#include "vmath.h"

/* ---- kernels (restrict parameters: vectorised without runtime alias checks) --------- */

static float dotf(const float *restrict a, const float *restrict b, int64_t n) {
    float acc[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) acc[j] += a[i + j] * b[i + j];
    for (; i < n; i++) acc[0] += a[i] * b[i];
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

static void vmax(float *restrict m, const float *restrict x, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        m[i] = v > m[i] ? v : m[i];
    }
}

static void vscale(float *restrict y, const float *restrict s, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] *= s[i];
}

static void vmuladd(float *restrict acc, const float *restrict a, const float *restrict b,
                    int64_t n) {
    for (int64_t i = 0; i < n; i++) acc[i] += a[i] * b[i];
}

/* y = (x - m) - ls, with m and ls per element (strided) */
static void vlogsm(float *restrict y, const float *restrict x, const float *restrict m,
                   const float *restrict ls, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = (x[i] - m[i]) - ls[i];
}

/* gx += y * (g - dot), or gx = that when set */
static void softmax_bwd_row(float *restrict gx, const float *restrict y, const float *restrict g,
                            float dot, int64_t n, bool set) {
    if (set)
        for (int64_t i = 0; i < n; i++) gx[i] = y[i] * (g[i] - dot);
    else
        for (int64_t i = 0; i < n; i++) gx[i] += y[i] * (g[i] - dot);
}

static void softmax_bwd_strided(float *restrict gx, const float *restrict y,
                                const float *restrict g, const float *restrict dot, int64_t n) {
    for (int64_t i = 0; i < n; i++) gx[i] += y[i] * (g[i] - dot[i]);
}

/* ---- forward ----------------------------------------------------------------------- */

/* Sum over k of exp(x[k] - m), with e[k] = exp(x[k] - m) stored when e is given (e may be
 * x: attention's softmax is in place): 8 lanes (vmath.h's exp of x <= 0), summed in a
 * fixed order. A ragged tail is the row's last 8 floats again (loaded before e overwrites
 * them), with the lanes already summed masked out of the sum: a masked or stack-bounced
 * tail stalled rows of 50 for as long as their 6 full vectors took. */
static float exp_sum_row(float *e, const float *x, float m, int64_t d) {
    __m256 vm = _mm256_set1_ps(m), acc = _mm256_setzero_ps();
    int64_t t = d % 8, k = 0;
    __m256 last = !t ? acc : d >= 8 ? _mm256_loadu_ps(x + d - 8) : ct__v8_load_tail(x, d, -INFINITY);
    for (; k + 8 <= d; k += 8) {
        __m256 v = ct__v8_exp_nonpos(_mm256_sub_ps(_mm256_loadu_ps(x + k), vm));
        if (e) _mm256_storeu_ps(e + k, v);
        acc = _mm256_add_ps(acc, v);
    }
    if (t) {
        __m256 v = ct__v8_exp_nonpos(_mm256_sub_ps(last, vm));
        if (d >= 8) {
            if (e) _mm256_storeu_ps(e + d - 8, v); /* the same values again in lanes < 8 - t */
            __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            v = _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_cmpgt_epi32(lane, _mm256_set1_epi32((int)(7 - t)))));
        } else if (e) {
            ct__v8_store_tail(e, v, d); /* -inf filled lanes d.. : exp gave 0 */
        }
        acc = _mm256_add_ps(acc, v);
    }
    float a[8];
    _mm256_storeu_ps(a, acc);
    return ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
}

static void forward_rows(float *y, const float *x, int64_t rows, int64_t d, bool log) {
    CT_PAR_FOR(rows * d) /* rows are independent */
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * d;
        float *yr = y + r * d;
        float m = ct__maxf(xr, d);
        if (log) {
            float ls = logf(exp_sum_row(NULL, xr, m, d));
            for (int64_t k = 0; k < d; k++) yr[k] = (xr[k] - m) - ls;
        } else {
            float inv = 1.0f / exp_sum_row(yr, xr, m, d);
            for (int64_t k = 0; k < d; k++) yr[k] *= inv;
        }
    }
}

static void forward_strided(float *y, const float *x, int64_t outer, int64_t d, int64_t inner,
                            bool log) {
    size_t bytes = 2 * (size_t)inner * sizeof(float);
    float *m = ct_alloc(bytes), *s = m + inner;
    for (int64_t o = 0; o < outer; o++) {
        const float *xo = x + o * d * inner;
        float *yo = y + o * d * inner;
        for (int64_t i = 0; i < inner; i++) m[i] = xo[i];
        for (int64_t k = 1; k < d; k++) vmax(m, xo + k * inner, inner);
        for (int64_t i = 0; i < inner; i++) s[i] = 0;
        for (int64_t k = 0; k < d; k++)
            for (int64_t i = 0; i < inner; i++) {
                float e = expf(xo[k * inner + i] - m[i]);
                if (!log) yo[k * inner + i] = e;
                s[i] += e;
            }
        if (log) {
            for (int64_t i = 0; i < inner; i++) s[i] = logf(s[i]);
            for (int64_t k = 0; k < d; k++) vlogsm(yo + k * inner, xo + k * inner, m, s, inner);
        } else {
            for (int64_t i = 0; i < inner; i++) s[i] = 1.0f / s[i];
            for (int64_t k = 0; k < d; k++) vscale(yo + k * inner, s, inner);
        }
    }
    ct_free(m, bytes);
}

/* ---- backward ---------------------------------------------------------------------- */

/* softmax: gx = y * (g - sum_dim(g * y)) */
static void softmax_backward(ct_node *n, const ct_tensor *gout) {
    int64_t outer = n->i[0], d = n->i[1], inner = n->i[2];
    float *gx = ct_node_grad_in(n, 0)->data;
    const float *y = n->saved[0]->data, *g = gout->data;
    if (inner == 1) {
        ct__softmax_rows_backward(gx, y, g, outer, d);
        return;
    }
    size_t bytes = (size_t)inner * sizeof(float);
    float *dot = ct_alloc(bytes);
    for (int64_t o = 0; o < outer; o++) {
        int64_t base = o * d * inner;
        for (int64_t i = 0; i < inner; i++) dot[i] = 0;
        for (int64_t k = 0; k < d; k++)
            vmuladd(dot, g + base + k * inner, y + base + k * inner, inner);
        for (int64_t k = 0; k < d; k++) {
            int64_t off = base + k * inner;
            softmax_bwd_strided(gx + off, y + off, g + off, dot, inner);
        }
    }
    ct_free(dot, bytes);
}

/* log_softmax: gx = g - exp(y) * sum_dim(g) */
static void log_softmax_backward(ct_node *n, const ct_tensor *gout) {
    int64_t outer = n->i[0], d = n->i[1], inner = n->i[2];
    float *gx = ct_node_grad_in(n, 0)->data;
    const float *y = n->saved[0]->data, *g = gout->data;
    size_t bytes = (size_t)inner * sizeof(float);
    float *sg = ct_alloc(bytes);
    for (int64_t o = 0; o < outer; o++) {
        int64_t base = o * d * inner;
        if (inner == 1) {
            sg[0] = (float)ct__sumf(g + base, d);
        } else {
            for (int64_t i = 0; i < inner; i++) sg[i] = 0;
            for (int64_t k = 0; k < d; k++) ct__axpy(sg, g + base + k * inner, 1.0f, inner);
        }
        for (int64_t k = 0; k < d; k++)
            for (int64_t i = 0; i < inner; i++) {
                int64_t j = base + k * inner + i;
                gx[j] += g[j] - expf(y[j]) * sg[i];
            }
    }
    ct_free(sg, bytes);
}

void ct__softmax_rows(float *y, const float *x, int64_t rows, int64_t d) {
    forward_rows(y, x, rows, d, false);
}

static void rows_backward(float *gx, const float *y, const float *g, int64_t rows, int64_t d, bool set) {
    CT_PAR_FOR(rows * d) /* rows are independent */
    for (int64_t r = 0; r < rows; r++)
        softmax_bwd_row(gx + r * d, y + r * d, g + r * d, dotf(g + r * d, y + r * d, d), d, set);
}

void ct__softmax_rows_backward(float *gx, const float *y, const float *g, int64_t rows, int64_t d) {
    rows_backward(gx, y, g, rows, d, false);
}

void ct__softmax_rows_backward_set(float *gx, const float *y, const float *g, int64_t rows, int64_t d) {
    rows_backward(gx, y, g, rows, d, true);
}

/* ---- ops --------------------------------------------------------------------------- */

static ct_tensor *softmax_op(const char *op, ct_tensor *x, int dim, bool log) {
    int dd = ct__dim(op, x, dim);
    int64_t outer, d, inner;
    ct__split_dim(x, dd, &outer, &d, &inner);
    ct_tensor *out = ct_empty_like(x);
    if (x->numel > 0) {
        if (inner == 1)
            forward_rows(out->data, x->data, outer, d, log);
        else
            forward_strided(out->data, x->data, outer, d, inner, log);
    }
    ct_node *n = CT_RECORD(op, log ? log_softmax_backward : softmax_backward, out, x);
    if (n) {
        n->i[0] = outer, n->i[1] = d, n->i[2] = inner;
        ct_save(n, out);
    }
    return out;
}

ct_tensor *ct_softmax(ct_tensor *x, int dim) { return softmax_op("softmax", x, dim, false); }

ct_tensor *ct_log_softmax(ct_tensor *x, int dim) {
    return softmax_op("log_softmax", x, dim, true);
}
