/* Dropout. The keep mask is one bit per element in the node's aux scratch (1/32 of the
 * input's bytes); the scale 1/(1-p) is a node parameter. */
#include "internal.h"

/* gx += g * scale where the mask bit is set; one 64-element word at a time, branch-free. */
static void masked_axpy(float *restrict gx, const float *restrict g, const uint64_t *mask,
                        float scale, int64_t numel) {
    CT_PAR_FOR(numel)
    for (int64_t lo = 0; lo < numel; lo += 64) {
        uint64_t bits = mask[lo >> 6];
        int64_t cnt = numel - lo < 64 ? numel - lo : 64;
        for (int64_t j = 0; j < cnt; j++)
            gx[lo + j] += g[lo + j] * (scale * (float)(bits >> j & 1));
    }
}

static void dropout_backward(ct_node *n, const ct_tensor *gout) {
    masked_axpy(ct_node_grad_in(n, 0)->data, gout->data, n->aux, n->f[0], gout->numel);
}

void ct__dropout_mask(ct_rng *rng, float p, int64_t numel, uint64_t *mask) {
    /* An element is dropped when a 32-bit draw falls below p * 2^32; each 64-bit draw
     * serves two elements (a word holds 64 elements, so no draw straddles two words). */
    uint64_t thr = (uint64_t)((double)p * 4294967296.0);
    for (int64_t lo = 0; lo < numel; lo += 64) {
        int64_t cnt = numel - lo < 64 ? numel - lo : 64;
        uint64_t bits = 0, r = 0;
        for (int64_t j = 0; j < cnt; j++) {
            if ((j & 1) == 0) r = ct_rng_next(rng);
            uint64_t u = (j & 1) ? r >> 32 : r & 0xffffffffu;
            bits |= (uint64_t)(u >= thr) << j;
        }
        mask[lo >> 6] = bits;
    }
}

ct_tensor *ct_dropout(ct_tensor *x, float p, bool training, ct_rng *rng) {
    CT_ASSERT(p >= 0 && p < 1, "dropout: probability %g outside [0, 1) (input %s)", (double)p,
              CT_SHAPE_STR(x));
    if (!training || p == 0) {
        /* The identity returns x itself, so autograd sees x's own grad_fn and no node is
         * added. The caller still gets a result it may treat like any op result: a fresh
         * reference in the innermost scope. ct_scope_keep inside a throw-away scope does
         * exactly that (it retains x and hands the reference to the enclosing scope). */
        size_t m = ct_scope_begin();
        ct_scope_keep(x);
        ct_scope_end(m);
        return x;
    }
    CT_ASSERT(rng, "dropout: training with p = %g needs an rng (input %s)", (double)p,
              CT_SHAPE_STR(x));
    ct_tensor *out = ct_empty_like(x);
    ct_node *n = CT_RECORD("dropout", dropout_backward, out, x);
    int64_t numel = x->numel, words = (numel + 63) / 64;
    size_t bytes = (size_t)words * sizeof(uint64_t);
    /* The same draws happen with or without a node, so the rng advances identically in
     * train and no_grad runs; without a node the mask is scratch. */
    uint64_t *mask = !words ? NULL : n ? ct_node_aux(n, bytes) : ct_alloc(bytes);
    if (words) ct__dropout_mask(rng, p, numel, mask);
    float scale = 1.0f / (1.0f - p);
    const float *xd = x->data;
    float *o = out->data;
    CT_PAR_FOR(numel) /* the draws are made; applying the mask is elementwise */
    for (int64_t i = 0; i < numel; i++) o[i] = mask[i >> 6] >> (i & 63) & 1 ? xd[i] * scale : 0.0f;
    if (n) n->f[0] = scale;
    else if (words) ct_free(mask, bytes);
    return out;
}
