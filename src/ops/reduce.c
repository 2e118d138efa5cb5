/* Reductions: sum and mean over every element or along one dim, and row-wise argmax.
 * Sums of contiguous runs accumulate in double lanes (ct__sumf), so a million-element
 * loss sum does not drift, and still vectorise. */
#include "internal.h"

#include <math.h>
#include <string.h>

double ct__sumf(const float *x, int64_t n) {
    /* Eight independent lanes: vectorised without reassociating any one lane's sum. */
    double acc[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) acc[j] += x[i + j];
    for (; i < n; i++) acc[i & 7] += x[i];
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

float ct__maxf(const float *x, int64_t n) {
    float acc[8];
    for (int j = 0; j < 8; j++) acc[j] = -INFINITY;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) acc[j] = x[i + j] > acc[j] ? x[i + j] : acc[j];
    for (; i < n; i++) acc[0] = x[i] > acc[0] ? x[i] : acc[0];
    float m = acc[0];
    for (int j = 1; j < 8; j++) m = acc[j] > m ? acc[j] : m;
    return m;
}

void ct__axpy(float *restrict y, const float *restrict x, float a, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

void ct__split_dim(const ct_tensor *x, int dim, int64_t *outer, int64_t *d, int64_t *inner) {
    *outer = *inner = 1;
    for (int k = 0; k < dim; k++) *outer *= x->shape[k];
    for (int k = dim + 1; k < x->ndim; k++) *inner *= x->shape[k];
    *d = x->shape[dim];
}

/* ---- sum / mean of every element --------------------------------------------------- */

static void reduce_all_backward(ct_node *n, const ct_tensor *gout) {
    ct_tensor *gx = ct_node_grad_in(n, 0);
    if (gx->numel == 0) return;
    float g = gout->data[0] / (float)n->i[0]; /* i[0]: 1 for sum, numel for mean */
    float *d = gx->data;
    for (int64_t i = 0; i < gx->numel; i++) d[i] += g;
}

static ct_tensor *reduce_all(const char *op, ct_tensor *x, bool mean) {
    ct_tensor *out = ct_tensor_new(0, NULL);
    double s = ct__sumf(x->data, x->numel);
    /* The mean of nothing is NaN, as in PyTorch. */
    out->data[0] = (float)(mean ? (x->numel ? s / (double)x->numel : NAN) : s);
    ct_node *n = CT_RECORD(op, reduce_all_backward, out, x);
    if (n) n->i[0] = mean ? x->numel : 1;
    return out;
}

ct_tensor *ct_sum(ct_tensor *x) { return reduce_all("sum", x, false); }
ct_tensor *ct_mean(ct_tensor *x) { return reduce_all("mean", x, true); }

/* ---- sum / mean along one dim ------------------------------------------------------ */

static void reduce_dim_backward(ct_node *n, const ct_tensor *gout) {
    int64_t outer = n->i[0], d = n->i[1], inner = n->i[2];
    float *gx = ct_node_grad_in(n, 0)->data;
    const float *g = gout->data;
    float scale = n->f[0]; /* 1 for sum, 1/d for mean */
    for (int64_t o = 0; o < outer; o++) {
        if (inner == 1) { /* reducing the last dim: broadcast one value along the row */
            float go = g[o] * scale;
            float *row = gx + o * d;
            for (int64_t k = 0; k < d; k++) row[k] += go;
        } else {
            for (int64_t k = 0; k < d; k++)
                ct__axpy(gx + (o * d + k) * inner, g + o * inner, scale, inner);
        }
    }
}

static ct_tensor *reduce_dim(const char *op, ct_tensor *x, int dim, bool keepdim, bool mean) {
    int dd = ct__dim(op, x, dim);
    int64_t outer, d, inner;
    ct__split_dim(x, dd, &outer, &d, &inner);
    int64_t shape[CT_MAX_DIMS];
    int nd = 0;
    for (int k = 0; k < x->ndim; k++) {
        if (k != dd)
            shape[nd++] = x->shape[k];
        else if (keepdim)
            shape[nd++] = 1;
    }
    ct_tensor *out = ct_tensor_new(nd, shape);
    float *o = out->data;
    const float *p = x->data;
    for (int64_t a = 0; a < outer; a++) {
        if (inner == 1) {
            double s = ct__sumf(p + a * d, d);
            o[a] = (float)(mean ? (d ? s / (double)d : NAN) : s); /* empty mean: NaN */
            continue;
        }
        /* Accumulate whole rows of the inner block so the loop runs over contiguous i. */
        float *orow = o + a * inner;
        memset(orow, 0, (size_t)inner * sizeof(float));
        for (int64_t k = 0; k < d; k++) ct__axpy(orow, p + (a * d + k) * inner, 1.0f, inner);
        if (mean) {
            float fd = d ? (float)d : NAN;
            for (int64_t i = 0; i < inner; i++) orow[i] /= fd;
        }
    }
    ct_node *n = CT_RECORD(op, reduce_dim_backward, out, x);
    if (n) {
        n->i[0] = outer, n->i[1] = d, n->i[2] = inner;
        n->f[0] = mean && d ? 1.0f / (float)d : 1.0f;
    }
    return out;
}

ct_tensor *ct_sum_dim(ct_tensor *x, int dim, bool keepdim) {
    return reduce_dim("sum_dim", x, dim, keepdim, false);
}

ct_tensor *ct_mean_dim(ct_tensor *x, int dim, bool keepdim) {
    return reduce_dim("mean_dim", x, dim, keepdim, true);
}

/* ---- argmax ------------------------------------------------------------------------ */

void ct_argmax_rows(const ct_tensor *x, int64_t *out) {
    ct__check_ndim("argmax_rows", x, 2, "[N, C]");
    int64_t rows = x->shape[0], c = x->shape[1];
    CT_ASSERT(c > 0 || rows == 0, "argmax_rows: rows of %s are empty", CT_SHAPE_STR(x));
    for (int64_t r = 0; r < rows; r++) {
        const float *row = x->data + r * c;
        /* The first maximum wins, and a NaN counts as the maximum (PyTorch's rules). */
        int64_t best = 0;
        float bv = row[0];
        for (int64_t k = 1; k < c && !isnan(bv); k++) {
            if (row[k] > bv || isnan(row[k])) {
                bv = row[k];
                best = k;
            }
        }
        out[r] = best;
    }
}
