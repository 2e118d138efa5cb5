/* Embedding lookup: rows of weight gathered by index; backward scatter-adds the rows of
 * the output gradient back (repeated indices accumulate). */
#include "internal.h"

#include <string.h>

/* Node layout: i[0] number of indices, i[1] D; aux holds a copy of the indices (the
 * caller's array need not outlive the forward). */
static void embedding_backward(ct_node *n, const ct_tensor *gout) {
    ct_tensor *gw = ct_node_grad_in(n, 0);
    int64_t cnt = n->i[0], D = n->i[1];
    const int64_t *idx = n->aux;
    for (int64_t t = 0; t < cnt; t++) {
        float *row = gw->data + idx[t] * D;
        const float *g = gout->data + t * D;
        for (int64_t j = 0; j < D; j++) row[j] += g[j];
    }
}

ct_tensor *ct_embedding(ct_tensor *weight, const int64_t *idx, int ndim, const int64_t *shape) {
    CT_ASSERT(weight->ndim == 2, "embedding: weight must be [V, D], got %s", CT_SHAPE_STR(weight));
    CT_ASSERT(ndim >= 0 && ndim < CT_MAX_DIMS,
              "embedding: index tensor with %d dims (at most %d) for weight %s", ndim,
              CT_MAX_DIMS - 1, CT_SHAPE_STR(weight));
    int64_t V = weight->shape[0], D = weight->shape[1], cnt = 1;
    int64_t oshape[CT_MAX_DIMS];
    for (int k = 0; k < ndim; k++) {
        CT_ASSERT(shape[k] >= 0, "embedding: negative index dim %lld", (long long)shape[k]);
        cnt *= shape[k];
        oshape[k] = shape[k];
    }
    oshape[ndim] = D;
    for (int64_t t = 0; t < cnt; t++)
        CT_ASSERT(idx[t] >= 0 && idx[t] < V,
                  "embedding: index %lld (position %lld) out of range [0, %lld) for weight %s",
                  (long long)idx[t], (long long)t, (long long)V, CT_SHAPE_STR(weight));
    ct_tensor *out = ct_tensor_new(ndim + 1, oshape);
    for (int64_t t = 0; t < cnt; t++)
        memcpy(out->data + t * D, weight->data + idx[t] * D, (size_t)D * sizeof(float));
    ct_node *n = CT_RECORD("embedding", embedding_backward, out, weight);
    if (n) {
        n->i[0] = cnt, n->i[1] = D;
        if (cnt) memcpy(ct_node_aux(n, (size_t)cnt * sizeof(int64_t)), idx, (size_t)cnt * sizeof(int64_t));
    }
    return out;
}
