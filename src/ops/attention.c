/* Multi-head scaled dot-product attention, batch_first, on a packed q|k|v projection (the
 * layout torch.nn.MultiheadAttention's in_proj produces), and the MultiheadAttention
 * function built from it. Per sample n and head h (dh = E / heads, columns h*dh.. of q, k,
 * v):  P = softmax(Q K^T / sqrt(dh)),  A = dropout(P),  O = A V.
 * Backward keeps only qkv, P and the dropout bits: the pre-softmax scores are never saved
 * (softmax's backward needs its output only) and A is rebuilt from P and the bits. Every
 * product is a strided ct_gemm on the packed rows, so no head is ever copied out. */
#include "internal.h"

#include <math.h>
#include <string.h>

/* The dropout bit of element j of the [N, H, L, L] attention weights. */
static inline float keep_bit(const uint64_t *mask, int64_t j) { return (float)(mask[j >> 6] >> (j & 63) & 1); }

/* a = p * bit * scale over one head's L*L weights starting at element j0. */
static void apply_mask(float *a, const float *p, const uint64_t *mask, int64_t j0, int64_t n, float scale) {
    for (int64_t t = 0; t < n; t++) a[t] = p[t] * (scale * keep_bit(mask, j0 + t));
}

/* Node layout: i[0..3] N, L, E, heads; f[0] 1/sqrt(dh), f[1] dropout's 1/(1-p);
 * saved[0] qkv, saved[1] P [N, H, L, L]; aux the dropout bits (NULL without dropout). */
static void attention_backward(ct_node *nd, const ct_tensor *gout) {
    int64_t N = nd->i[0], L = nd->i[1], E = nd->i[2], H = nd->i[3], dh = E / H, LL = L * L;
    float scale = nd->f[0], keep_scale = nd->f[1];
    const float *qkv = nd->saved[0]->data, *P = nd->saved[1]->data;
    const uint64_t *mask = nd->aux;
    /* Each of dQ, dK, dV is written by one GEMM per head, so a fresh dqkv is set (beta 0)
     * instead of zero-filled and accumulated into. */
    bool fresh;
    float *gqkv = ct_node_grad_in_fresh(nd, 0, &fresh)->data, beta = fresh ? 0.0f : 1.0f;
    size_t bytes = (size_t)(mask ? 3 : 2) * (size_t)LL * sizeof(float);
    float *dA = ct_alloc(bytes), *dS = dA + LL, *abuf = mask ? dS + LL : NULL;
    for (int64_t n = 0; n < N; n++)
        for (int64_t h = 0; h < H; h++) {
            int64_t j0 = (n * H + h) * LL;
            const float *q = qkv + n * L * 3 * E + h * dh, *k = q + E, *v = q + 2 * E;
            const float *p = P + j0, *go = gout->data + n * L * E + h * dh;
            float *gq = gqkv + n * L * 3 * E + h * dh, *gk = gq + E, *gv = gq + 2 * E;
            const float *a = p;
            if (mask) {
                apply_mask(abuf, p, mask, j0, LL, keep_scale);
                a = abuf;
            }
            ct_gemm(true, false, L, dh, L, 1, a, L, go, E, beta, gv, 3 * E); /* dV += A^T dO */
            ct_gemm(false, true, L, L, dh, 1, go, E, v, 3 * E, 0, dA, L);    /* dA = dO V^T */
            if (mask) apply_mask(dA, dA, mask, j0, LL, keep_scale);         /* dP */
            ct__softmax_rows_backward_set(dS, p, dA, L, L);                  /* dS */
            ct_gemm(false, false, L, dh, L, scale, dS, L, k, 3 * E, beta, gq, 3 * E); /* dQ */
            ct_gemm(true, false, L, dh, L, scale, dS, L, q, 3 * E, beta, gk, 3 * E);  /* dK */
        }
    ct_free(dA, bytes);
}

ct_tensor *ct_attention(ct_tensor *qkv, int heads, float p, bool training, ct_rng *rng) {
    CT_ASSERT(qkv->ndim == 3 && qkv->shape[2] % 3 == 0,
              "attention: expected packed q|k|v [N, L, 3E], got %s", CT_SHAPE_STR(qkv));
    int64_t N = qkv->shape[0], L = qkv->shape[1], E = qkv->shape[2] / 3, H = heads;
    CT_ASSERT(H >= 1 && E % H == 0, "attention: %d heads do not divide the embedding %lld (input %s)",
              heads, (long long)E, CT_SHAPE_STR(qkv));
    CT_ASSERT(p >= 0 && p < 1, "attention: dropout %g outside [0, 1) (input %s)", (double)p,
              CT_SHAPE_STR(qkv));
    bool drop = training && p > 0;
    CT_ASSERT(!drop || rng, "attention: dropout %g in training needs an rng (input %s)", (double)p,
              CT_SHAPE_STR(qkv));
    int64_t dh = E / H, LL = L * L;
    float scale = 1.0f / sqrtf((float)dh), keep_scale = drop ? 1.0f / (1.0f - p) : 1.0f;
    ct_tensor *out = ct_tensor_new(CT_SHAPE(N, L, E));
    ct_node *nd = CT_RECORD("attention", attention_backward, out, qkv);
    /* With a node the weights P of every head go to the saved tensor; without, one head's
     * scratch is reused. */
    ct_tensor *P = nd ? ct_tensor_new(CT_SHAPE(N, H, L, L)) : NULL;
    int64_t words = drop ? (N * H * LL + 63) / 64 : 0;
    size_t mbytes = (size_t)words * sizeof(uint64_t);
    uint64_t *mask = !words ? NULL : nd ? ct_node_aux(nd, mbytes) : ct_alloc(mbytes);
    if (words) ct__dropout_mask(rng, p, N * H * LL, mask);
    size_t sbytes = (size_t)((P ? 0 : 1) + (drop ? 1 : 0)) * (size_t)LL * sizeof(float);
    float *scratch = sbytes ? ct_alloc(sbytes) : NULL;
    float *abuf = drop ? scratch + (P ? 0 : LL) : NULL;
    for (int64_t n = 0; n < N; n++)
        for (int64_t h = 0; h < H; h++) {
            int64_t j0 = (n * H + h) * LL;
            const float *q = qkv->data + n * L * 3 * E + h * dh, *k = q + E, *v = q + 2 * E;
            float *s = P ? P->data + j0 : scratch;
            ct_gemm(false, true, L, L, dh, scale, q, 3 * E, k, 3 * E, 0, s, L); /* Q K^T / sqrt(dh) */
            ct__softmax_rows(s, s, L, L);
            const float *a = s;
            if (drop) {
                apply_mask(abuf, s, mask, j0, LL, keep_scale);
                a = abuf;
            }
            ct_gemm(false, false, L, dh, L, 1, a, L, v, 3 * E, 0, out->data + n * L * E + h * dh, E);
        }
    if (scratch) ct_free(scratch, sbytes);
    if (words && !nd) ct_free(mask, mbytes);
    if (nd) {
        nd->i[0] = N, nd->i[1] = L, nd->i[2] = E, nd->i[3] = H;
        nd->f[0] = scale, nd->f[1] = keep_scale;
        ct_save(nd, qkv);
        ct_save(nd, P);
    }
    return out;
}

ct_tensor *ct_multi_head_attention(ct_tensor *x, ct_tensor *in_w, ct_tensor *in_b, ct_tensor *out_w,
                                   ct_tensor *out_b, int heads, float p, bool training, ct_rng *rng) {
    CT_ASSERT(x->ndim == 3 && in_w->ndim == 2 && in_w->shape[0] == 3 * x->shape[2] &&
                  in_w->shape[1] == x->shape[2],
              "multi_head_attention: input %s needs in_proj_weight [3E, E], got %s", CT_SHAPE_STR(x),
              CT_SHAPE_STR(in_w));
    return ct_linear(ct_attention(ct_linear(x, in_w, in_b), heads, p, training, rng), out_w, out_b);
}
