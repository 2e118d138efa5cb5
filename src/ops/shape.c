/* Shape ops. reshape and flatten are views: a new handle on x's storage (no copy), with a
 * node whose backward passes the gradient straight through (same elements, same order).
 * transpose is a copy, since tensors are always contiguous. */
#include "internal.h"

#include <stdio.h>
#include <string.h>

static void view_backward(ct_node *n, const ct_tensor *gout) {
    ct__axpy(ct_node_grad_in(n, 0)->data, gout->data, 1.0f, gout->numel);
}

static ct_tensor *view_op(const char *op, ct_tensor *x, int ndim, const int64_t *shape) {
    ct_tensor *out = ct_view_raw(x, ndim, shape);
    CT_RECORD(op, view_backward, out, x); /* nothing to save */
    return out;
}

/* Formats the requested shape only on the failure path (reshape runs every step). */
static _Noreturn void reshape_fail(const ct_tensor *x, int ndim, const int64_t *shape,
                                   const char *why) {
    char buf[160];
    size_t off = (size_t)snprintf(buf, sizeof buf, "[");
    for (int i = 0; i < ndim && off < sizeof buf; i++)
        off += (size_t)snprintf(buf + off, sizeof buf - off, i ? ", %lld" : "%lld",
                                (long long)shape[i]);
    if (off < sizeof buf) snprintf(buf + off, sizeof buf - off, "]");
    ct_fatal("reshape: cannot reshape %s (%lld elements) into %s: %s", CT_SHAPE_STR(x),
             (long long)x->numel, buf, why);
}

ct_tensor *ct_reshape(ct_tensor *x, int ndim, const int64_t *shape) {
    CT_ASSERT(ndim >= 0 && ndim <= CT_MAX_DIMS, "reshape: %d dims requested for %s (max %d)",
              ndim, CT_SHAPE_STR(x), CT_MAX_DIMS);
    int64_t s[CT_MAX_DIMS], known = 1;
    int infer = -1;
    for (int d = 0; d < ndim; d++) {
        s[d] = shape[d];
        if (shape[d] == -1) {
            if (infer >= 0) reshape_fail(x, ndim, shape, "only one dim can be -1");
            infer = d;
        } else if (shape[d] < 0) {
            reshape_fail(x, ndim, shape, "sizes must be >= 0 (or -1 to infer)");
        } else {
            known *= shape[d];
        }
    }
    if (infer >= 0) {
        /* As in PyTorch, -1 next to a 0-sized dim is ambiguous. */
        if (known == 0 || x->numel % known != 0)
            reshape_fail(x, ndim, shape, "the -1 dim cannot be inferred");
        s[infer] = x->numel / known;
    } else if (known != x->numel) {
        reshape_fail(x, ndim, shape, "element counts differ");
    }
    return view_op("reshape", x, ndim, s);
}

ct_tensor *ct_flatten(ct_tensor *x, int start_dim) {
    if (x->ndim == 0) { /* PyTorch flattens a scalar to [1] */
        CT_ASSERT(start_dim == 0 || start_dim == -1,
                  "flatten: start_dim %d out of range for a 0-d tensor", start_dim);
        return view_op("flatten", x, 1, (const int64_t[]){1});
    }
    int d = ct__dim("flatten", x, start_dim);
    int64_t s[CT_MAX_DIMS];
    memcpy(s, x->shape, sizeof s);
    for (int k = d + 1; k < x->ndim; k++) s[d] *= x->shape[k];
    return view_op("flatten", x, d + 1, s);
}

/* dst[c, r] (+)= src[r, c]^T in 32x32 tiles so both the reads and the writes stay in
 * cache for large matrices. */
static void transpose_into(float *restrict dst, const float *restrict src, int64_t r, int64_t c,
                           bool accumulate) {
    enum { T = 32 };
    for (int64_t i0 = 0; i0 < r; i0 += T) {
        int64_t i1 = i0 + T < r ? i0 + T : r;
        for (int64_t j0 = 0; j0 < c; j0 += T) {
            int64_t j1 = j0 + T < c ? j0 + T : c;
            for (int64_t i = i0; i < i1; i++)
                for (int64_t j = j0; j < j1; j++) {
                    float v = src[i * c + j];
                    dst[j * r + i] = accumulate ? dst[j * r + i] + v : v;
                }
        }
    }
}

static void transpose_backward(ct_node *n, const ct_tensor *gout) {
    /* gout is [c, r]; its transpose accumulates into the [r, c] input gradient. */
    transpose_into(ct_node_grad_in(n, 0)->data, gout->data, gout->shape[0], gout->shape[1], true);
}

ct_tensor *ct_transpose(ct_tensor *x) {
    ct__check_ndim("transpose", x, 2, "[R, C]");
    int64_t r = x->shape[0], c = x->shape[1];
    ct_tensor *out = ct_tensor_new(CT_SHAPE(c, r));
    transpose_into(out->data, x->data, r, c, false);
    CT_RECORD("transpose", transpose_backward, out, x);
    return out;
}
