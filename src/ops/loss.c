/* Losses. cross_entropy fuses log_softmax and NLL: the forward writes the softmax it
 * already computes (only when a gradient will be needed), so the backward is one
 * vectorised pass, (p - target distribution) * scale, with no exp and without the logits.
 * Label smoothing is PyTorch's CrossEntropyLoss(label_smoothing = e): the target is
 * (1 - e) * onehot + e / C, so a row's loss is (1 - e) * -log p_t + e / C * sum_c -log p_c. */
#include "internal.h"

#include <math.h>

/* ---- cross_entropy ----------------------------------------------------------------- */

/* gx += (p - u) * scale over all N*C (u: the smoothing's uniform share), then the one-hot
 * term row by row. */
static void ce_bwd(float *restrict gx, const float *restrict p, float u, float scale, int64_t n) {
    CT_PAR_FOR(n)
    for (int64_t i = 0; i < n; i++) gx[i] += (p[i] - u) * scale;
}

static void ce_backward(ct_node *n, const ct_tensor *gout) {
    int64_t rows = n->i[0], c = n->i[1];
    if (rows == 0) return;
    const int64_t *target = n->aux;
    float scale = gout->data[0];
    if (n->i[2] == CT_REDUCE_MEAN) scale /= (float)rows;
    float eps = n->f[0], hit = (1.0f - eps) * scale;
    float *gx = ct_node_grad_in(n, 0)->data;
    ce_bwd(gx, n->saved[0]->data, eps / (float)c, scale, rows * c);
    for (int64_t r = 0; r < rows; r++) gx[r * c + target[r]] -= hit;
}

ct_tensor *ct_cross_entropy(ct_tensor *logits, const int64_t *target, ct_reduction red) {
    return ct_cross_entropy_smooth(logits, target, 0.0f, red);
}

ct_tensor *ct_cross_entropy_smooth(ct_tensor *logits, const int64_t *target, float smoothing,
                                   ct_reduction red) {
    ct__check_ndim("cross_entropy", logits, 2, "[N, C] of logits");
    CT_ASSERT(smoothing >= 0.0f && smoothing <= 1.0f,
              "cross_entropy: label smoothing %g is outside [0, 1]", (double)smoothing);
    int64_t rows = logits->shape[0], c = logits->shape[1];
    for (int64_t r = 0; r < rows; r++)
        CT_ASSERT(target[r] >= 0 && target[r] < c,
                  "cross_entropy: target[%lld] = %lld is outside [0, %lld) for logits %s",
                  (long long)r, (long long)target[r], (long long)c, CT_SHAPE_STR(logits));
    ct_tensor *out = ct_tensor_new(0, NULL);
    /* Record first: whether a node exists decides if the softmax is kept for backward. */
    ct_node *n = CT_RECORD("cross_entropy", ce_backward, out, logits);
    float *p = NULL;
    if (n) {
        n->i[0] = rows, n->i[1] = c, n->i[2] = red;
        n->f[0] = smoothing;
        /* Copied: the caller's array need not outlive the graph. */
        int64_t *t = ct_node_aux(n, (size_t)rows * sizeof(int64_t));
        for (int64_t r = 0; r < rows; r++) t[r] = target[r];
        /* Only the node's alias keeps the storage; no extra handle lingers in the scope. */
        ct_tensor *probs = ct_own(ct_empty_like(logits));
        p = ct_save(n, probs)->data;
        ct_release(probs);
    }
    /* Rows on the intra-op threads, each loss kept, then summed in row order. */
    double *lr = ct_alloc((size_t)(rows ? rows : 1) * sizeof(double));
    CT_PAR_FOR(rows * c)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = logits->data + r * c;
        float m = ct__maxf(xr, c), s = 0;
        double shifted = 0; /* sum_c (x_c - m), only for smoothing */
        if (smoothing > 0.0f)
            for (int64_t k = 0; k < c; k++) shifted += (double)(xr[k] - m);
        if (p) {
            float *pr = p + r * c;
            for (int64_t k = 0; k < c; k++) s += pr[k] = expf(xr[k] - m);
            float inv = 1.0f / s;
            for (int64_t k = 0; k < c; k++) pr[k] *= inv;
        } else {
            for (int64_t k = 0; k < c; k++) s += expf(xr[k] - m);
        }
        /* -log_softmax[k] = log(s) - (x_k - m) */
        double ls = (double)logf(s), nll = ls - (double)(xr[target[r]] - m);
        lr[r] = smoothing > 0.0f
                    ? (1.0 - smoothing) * nll + smoothing * (ls - shifted / (double)c)
                    : nll;
    }
    double total = 0;
    for (int64_t r = 0; r < rows; r++) total += lr[r];
    ct_free(lr, (size_t)(rows ? rows : 1) * sizeof(double));
    if (red == CT_REDUCE_MEAN) total = rows ? total / (double)rows : NAN;
    out->data[0] = (float)total;
    return out;
}

/* ---- mse_loss ---------------------------------------------------------------------- */

static double sq_diff_sum(const float *restrict a, const float *restrict b, int64_t n) {
    double acc[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) {
            float d = a[i + j] - b[i + j];
            acc[j] += (double)(d * d);
        }
    for (; i < n; i++) {
        float d = a[i] - b[i];
        acc[0] += (double)(d * d);
    }
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

/* g += s * (a - b); for b's gradient the caller passes -s. */
static void mse_bwd(float *restrict g, const float *restrict a, const float *restrict b, float s,
                    int64_t n) {
    for (int64_t i = 0; i < n; i++) g[i] += s * (a[i] - b[i]);
}

static void mse_backward(ct_node *n, const ct_tensor *gout) {
    const ct_tensor *a = n->saved[0], *b = n->saved[1];
    float s = 2.0f * gout->data[0];
    if (n->i[0] == CT_REDUCE_MEAN) s /= (float)a->numel;
    ct_tensor *ga = ct_node_grad_in(n, 0), *gb = ct_node_grad_in(n, 1);
    /* Separate passes: ga and gb are the same buffer when a and b are the same tensor. */
    if (ga) mse_bwd(ga->data, a->data, b->data, s, a->numel);
    if (gb) mse_bwd(gb->data, a->data, b->data, -s, a->numel);
}

ct_tensor *ct_mse_loss(ct_tensor *a, ct_tensor *b, ct_reduction red) {
    ct__check_same_shape("mse_loss", a, b);
    ct_tensor *out = ct_tensor_new(0, NULL);
    double total = sq_diff_sum(a->data, b->data, a->numel);
    if (red == CT_REDUCE_MEAN) total = a->numel ? total / (double)a->numel : NAN;
    out->data[0] = (float)total;
    ct_node *n = CT_RECORD("mse_loss", mse_backward, out, a, b);
    if (n) {
        n->i[0] = red;
        ct_save(n, a);
        ct_save(n, b);
    }
    return out;
}
