/* matmul, bmm and linear. Every product goes through ct_gemm; transposes are sgemm flags. A
 * gradient GEMM runs only when its input needs a gradient, so a frozen weight costs no
 * dW GEMM and a data input no dX GEMM. */
#include "internal.h"

#include <string.h>

static void matmul_backward(ct_node *n, const ct_tensor *gout) {
    int64_t m = n->i[0], k = n->i[1], nn = n->i[2];
    ct_tensor *ga = ct_node_grad_in(n, 0), *gb = ct_node_grad_in(n, 1);
    /* dA = g @ B^T needs B (saved[1]); dB = A^T @ g needs A (saved[0]). */
    if (ga) ct_gemm(false, true, m, k, nn, 1, gout->data, nn, n->saved[1]->data, nn, 1, ga->data, k);
    if (gb) ct_gemm(true, false, k, nn, m, 1, n->saved[0]->data, k, gout->data, nn, 1, gb->data, nn);
}

ct_tensor *ct_matmul(ct_tensor *a, ct_tensor *b) {
    CT_ASSERT(a->ndim == 2 && b->ndim == 2 && a->shape[1] == b->shape[0],
              "matmul: cannot multiply %s by %s", CT_SHAPE_STR(a), CT_SHAPE_STR(b));
    int64_t m = a->shape[0], k = a->shape[1], nn = b->shape[1];
    ct_tensor *out = ct_tensor_new(CT_SHAPE(m, nn));
    ct_gemm(false, false, m, nn, k, 1, a->data, k, b->data, nn, 0, out->data, nn);
    ct_node *n = CT_RECORD("matmul", matmul_backward, out, a, b);
    if (n) {
        n->i[0] = m, n->i[1] = k, n->i[2] = nn;
        /* Save only what a needed gradient uses: A for dB, B for dA. Unused slots hold a
         * cheap alias so the indices stay fixed. */
        ct_save(n, ct_node_needs(n, 1) ? a : b);
        ct_save(n, ct_node_needs(n, 0) ? b : a);
    }
    return out;
}

static void bmm_backward(ct_node *n, const ct_tensor *gout) {
    int64_t B = n->i[0], m = n->i[1], k = n->i[2], nn = n->i[3];
    ct_tensor *ga = ct_node_grad_in(n, 0), *gb = ct_node_grad_in(n, 1);
    for (int64_t t = 0; t < B; t++) {
        const float *g = gout->data + t * m * nn;
        if (ga) ct_gemm(false, true, m, k, nn, 1, g, nn, n->saved[1]->data + t * k * nn, nn, 1,
                        ga->data + t * m * k, k);
        if (gb) ct_gemm(true, false, k, nn, m, 1, n->saved[0]->data + t * m * k, k, g, nn, 1,
                        gb->data + t * k * nn, nn);
    }
}

ct_tensor *ct_bmm(ct_tensor *a, ct_tensor *b) {
    CT_ASSERT(a->ndim == 3 && b->ndim == 3 && a->shape[0] == b->shape[0] && a->shape[2] == b->shape[1],
              "bmm: cannot multiply %s by %s (expected [B, M, K] and [B, K, N])", CT_SHAPE_STR(a),
              CT_SHAPE_STR(b));
    int64_t B = a->shape[0], m = a->shape[1], k = a->shape[2], nn = b->shape[2];
    ct_tensor *out = ct_tensor_new(CT_SHAPE(B, m, nn));
    for (int64_t t = 0; t < B; t++)
        ct_gemm(false, false, m, nn, k, 1, a->data + t * m * k, k, b->data + t * k * nn, nn, 0,
                out->data + t * m * nn, nn);
    ct_node *n = CT_RECORD("bmm", bmm_backward, out, a, b);
    if (n) {
        n->i[0] = B, n->i[1] = m, n->i[2] = k, n->i[3] = nn;
        ct_save(n, ct_node_needs(n, 1) ? a : b); /* as in matmul: A for dB, B for dA */
        ct_save(n, ct_node_needs(n, 0) ? b : a);
    }
    return out;
}

static void linear_backward(ct_node *n, const ct_tensor *gout) {
    int64_t m = n->i[0], in = n->i[1], out = n->i[2];
    const float *g = gout->data;
    /* A fresh dX is written by the GEMM (beta 0): no zero fill, no read of zeros. */
    bool fresh;
    ct_tensor *gx = ct_node_grad_in_fresh(n, 0, &fresh), *gw = ct_node_grad_in(n, 1), *gb = ct_node_grad_in(n, 2);
    if (gx) ct_gemm(false, false, m, in, out, 1, g, out, n->saved[1]->data, in, fresh ? 0 : 1, gx->data, in);
    if (gw) ct_gemm(true, false, out, in, m, 1, g, out, n->saved[0]->data, in, 1, gw->data, in);
    if (gb) {
        for (int64_t r = 0; r < m; r++)
            for (int64_t j = 0; j < out; j++) gb->data[j] += g[r * out + j];
    }
}

ct_tensor *ct_linear(ct_tensor *x, ct_tensor *w, ct_tensor *b) {
    CT_ASSERT(w->ndim == 2 && x->ndim >= 1 && x->shape[x->ndim - 1] == w->shape[1],
              "linear: input %s does not match weight %s ([out, in])", CT_SHAPE_STR(x),
              CT_SHAPE_STR(w));
    int64_t in = w->shape[1], nout = w->shape[0], m = x->numel / (in ? in : 1);
    CT_ASSERT(!b || (b->ndim == 1 && b->shape[0] == nout),
              "linear: bias %s does not match weight %s", b ? CT_SHAPE_STR(b) : "", CT_SHAPE_STR(w));
    int64_t shape[CT_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    shape[x->ndim - 1] = nout;
    ct_tensor *y = ct_tensor_new(x->ndim, shape);
    /* Start from the broadcast bias and let sgemm accumulate onto it (beta = 1). */
    if (b)
        for (int64_t r = 0; r < m; r++) memcpy(y->data + r * nout, b->data, (size_t)nout * sizeof(float));
    ct_gemm(false, true, m, nout, in, 1, x->data, in, w->data, in, b ? 1 : 0, y->data, nout);
    ct_node *n = CT_RECORD("linear", linear_backward, y, x, w, b);
    if (n) {
        n->i[0] = m, n->i[1] = in, n->i[2] = nout;
        ct_save(n, ct_node_needs(n, 1) ? x : w); /* x is needed only for dW */
        ct_save(n, ct_node_needs(n, 0) ? w : x); /* w is needed only for dX */
    }
    return y;
}
