/* Shape ops. reshape and flatten are views: a new handle on x's storage (no copy), with a
 * node whose backward passes the gradient straight through (same elements, same order).
 * transpose, cat and narrow copy, since tensors are always contiguous. */
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

/* Batches of [r, c] matrices, the last two dims of the (input) shape. */
static void transpose_dims(const ct_tensor *x, int64_t *batch, int64_t *r, int64_t *c) {
    *r = x->shape[x->ndim - 2], *c = x->shape[x->ndim - 1];
    *batch = (*r) * (*c) != 0 ? x->numel / ((*r) * (*c)) : 0;
}

static void transpose_backward(ct_node *n, const ct_tensor *gout) {
    /* gout is [..., c, r]; each transpose accumulates into the [..., r, c] input gradient. */
    int64_t batch, c, r;
    transpose_dims(gout, &batch, &c, &r);
    float *gx = ct_node_grad_in(n, 0)->data;
    for (int64_t b = 0; b < batch; b++)
        transpose_into(gx + b * r * c, gout->data + b * r * c, c, r, true);
}

ct_tensor *ct_transpose(ct_tensor *x) {
    CT_ASSERT(x->ndim >= 2, "transpose: expected at least 2 dims [..., R, C], got %s", CT_SHAPE_STR(x));
    int64_t batch, r, c, shape[CT_MAX_DIMS];
    transpose_dims(x, &batch, &r, &c);
    memcpy(shape, x->shape, sizeof shape);
    shape[x->ndim - 2] = c, shape[x->ndim - 1] = r;
    ct_tensor *out = ct_tensor_new(x->ndim, shape);
    for (int64_t b = 0; b < batch; b++)
        transpose_into(out->data + b * r * c, x->data + b * r * c, r, c, false);
    CT_RECORD("transpose", transpose_backward, out, x);
    return out;
}

/* ---- cat and narrow: blocks along one dim ---------------------------------------------- */

/* Copies `outer` blocks of `len` floats, from src every sstride floats to dst every dstride
 * (accumulating when acc). cat, narrow and their backwards are all this one loop. */
static void copy_blocks(float *dst, int64_t dstride, const float *src, int64_t sstride, int64_t outer,
                        int64_t len, bool acc) {
    for (int64_t o = 0; o < outer; o++) {
        if (acc) ct__axpy(dst + o * dstride, src + o * sstride, 1.0f, len);
        else memcpy(dst + o * dstride, src + o * sstride, (size_t)len * sizeof(float));
    }
}

/* Node layout: i[0] dim; the inputs' shapes come from the saved handles. */
static void cat_backward(ct_node *n, const ct_tensor *gout) {
    int64_t outer, d, inner, off = 0;
    ct__split_dim(gout, (int)n->i[0], &outer, &d, &inner);
    for (int k = 0; k < n->ninputs; k++) {
        int64_t len = n->saved[k]->shape[n->i[0]] * inner;
        ct_tensor *gx = ct_node_grad_in(n, k);
        if (gx) copy_blocks(gx->data, len, gout->data + off, d * inner, outer, len, true);
        off += len;
    }
}

ct_tensor *ct_cat(int n, ct_tensor *const *xs, int dim) {
    CT_ASSERT(n >= 1 && n <= CT_NODE_MAX_IN, "cat: %d inputs (1 to %d)", n, CT_NODE_MAX_IN);
    int d = ct__dim("cat", xs[0], dim);
    int64_t shape[CT_MAX_DIMS];
    memcpy(shape, xs[0]->shape, sizeof shape);
    for (int k = 1; k < n; k++) {
        bool ok = xs[k]->ndim == xs[0]->ndim;
        for (int j = 0; ok && j < xs[0]->ndim; j++) ok = j == d || xs[k]->shape[j] == xs[0]->shape[j];
        CT_ASSERT(ok, "cat: input %d %s does not match input 0 %s outside dim %d", k,
                  CT_SHAPE_STR(xs[k]), CT_SHAPE_STR(xs[0]), d);
        shape[d] += xs[k]->shape[d];
    }
    ct_tensor *out = ct_tensor_new(xs[0]->ndim, shape);
    int64_t outer, total, inner, off = 0;
    ct__split_dim(out, d, &outer, &total, &inner);
    for (int k = 0; k < n; k++) {
        int64_t len = xs[k]->shape[d] * inner;
        copy_blocks(out->data + off, total * inner, xs[k]->data, len, outer, len, false);
        off += len;
    }
    ct_node *nd = ct_record("cat", cat_backward, out, n, xs);
    if (nd) {
        nd->i[0] = d;
        for (int k = 0; k < n; k++) ct_save(nd, xs[k]); /* for the shapes: handles, not copies */
    }
    return out;
}

/* Node layout: i[0] dim, i[1] start. */
static void narrow_backward(ct_node *n, const ct_tensor *gout) {
    ct_tensor *gx = ct_node_grad_in(n, 0);
    int64_t outer, d, inner;
    ct__split_dim(gx, (int)n->i[0], &outer, &d, &inner);
    int64_t len = gout->shape[n->i[0]] * inner;
    copy_blocks(gx->data + n->i[1] * inner, d * inner, gout->data, len, outer, len, true);
}

ct_tensor *ct_narrow(ct_tensor *x, int dim, int64_t start, int64_t length) {
    int d = ct__dim("narrow", x, dim);
    CT_ASSERT(start >= 0 && length >= 0 && start + length <= x->shape[d],
              "narrow: [%lld, %lld) is outside dim %d of %s", (long long)start,
              (long long)(start + length), d, CT_SHAPE_STR(x));
    int64_t shape[CT_MAX_DIMS], outer, n, inner;
    memcpy(shape, x->shape, sizeof shape);
    shape[d] = length;
    ct_tensor *out = ct_tensor_new(x->ndim, shape);
    ct__split_dim(x, d, &outer, &n, &inner);
    copy_blocks(out->data, length * inner, x->data + start * inner, n * inner, outer, length * inner, false);
    ct_node *nd = CT_RECORD("narrow", narrow_backward, out, x);
    if (nd) nd->i[0] = d, nd->i[1] = start;
    return out;
}

ct_tensor *ct_select(ct_tensor *x, int dim, int64_t index) {
    int d = ct__dim("select", x, dim);
    int64_t shape[CT_MAX_DIMS];
    for (int k = 0, j = 0; k < x->ndim; k++)
        if (k != d) shape[j++] = x->shape[k];
    return ct_reshape(ct_narrow(x, d, index, 1), x->ndim - 1, shape);
}
