/* Reference-counted float32 tensors over shared storage. Views (reshape, flatten,
 * detach) are new handles on the same storage. */
#include "internal.h"

#include <stdio.h>
#include <string.h>

struct ct_storage {
    float *data;
    size_t bytes;
    int refs;
    bool external; /* memory owned by someone else, e.g. a DDP bucket */
};


static ct_storage *storage_new(size_t bytes, float *external) {
    ct_storage *s = ct_alloc(sizeof *s);
    s->bytes = bytes;
    s->refs = 1;
    s->external = external != NULL;
    s->data = external ? external : ct_alloc(bytes);
    if (!s->external) CT_STAT_ADD(live_bytes, (int64_t)bytes);
    return s;
}

/* `last_use`: the block's size is not expected again (a parameter's own storage once it
 * moves into its module's slab), so it goes back to the system instead of the cache,
 * where its pages, all written, would stay resident for the rest of the run. */
static void storage_release(ct_storage *s, bool last_use) {
    if (--s->refs > 0) return;
    if (!s->external) {
        if (last_use)
            ct__alloc_release(s->data);
        else
            ct_free(s->data, s->bytes);
        CT_STAT_ADD(live_bytes, -(int64_t)s->bytes);
    }
    ct_free(s, sizeof *s);
}

static int64_t check_shape(int ndim, const int64_t *shape) {
    CT_ASSERT(ndim >= 0 && ndim <= CT_MAX_DIMS, "tensor: ndim %d outside 0..%d", ndim,
              CT_MAX_DIMS);
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        CT_ASSERT(shape[i] >= 0, "tensor: negative size %lld in dim %d", (long long)shape[i], i);
        n *= shape[i];
    }
    return n;
}

static ct_tensor *handle_new(int ndim, const int64_t *shape, ct_storage *s, float *data) {
    ct_tensor *t = ct_alloc(sizeof *t);
    memset(t, 0, sizeof *t);
    t->ndim = ndim;
    t->numel = check_shape(ndim, shape);
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    t->storage = s;
    t->data = data;
    t->refs = 1;
    CT_STAT_ADD(live_tensors, 1);
    ct_scope_adopt(t);
    return t;
}

ct_tensor *ct_tensor_new(int ndim, const int64_t *shape) {
    int64_t n = check_shape(ndim, shape);
    ct_storage *s = storage_new((size_t)n * sizeof(float), NULL);
    return handle_new(ndim, shape, s, s->data);
}

ct_tensor *ct_tensor_wrap(int ndim, const int64_t *shape, float *data) {
    int64_t n = check_shape(ndim, shape);
    ct_storage *s = storage_new((size_t)n * sizeof(float), data);
    return handle_new(ndim, shape, s, data);
}

ct_tensor *ct_view_raw(ct_tensor *t, int ndim, const int64_t *shape) {
    int64_t n = check_shape(ndim, shape);
    CT_ASSERT(n == t->numel, "view: cannot view %s (%lld elements) with %lld elements",
              CT_SHAPE_STR(t), (long long)t->numel, (long long)n);
    t->storage->refs++;
    return handle_new(ndim, shape, t->storage, t->data);
}

bool ct_tensor_is_external(const ct_tensor *t) { return t->storage->external; }

void ct_tensor_rebind(ct_tensor *t, float *dst) {
    CT_ASSERT(t->storage->refs == 1, "rebind: tensor %s shares its storage with %d views",
              CT_SHAPE_STR(t), t->storage->refs - 1);
    if (t->data == dst) return;
    memcpy(dst, t->data, (size_t)t->numel * sizeof(float));
    storage_release(t->storage, true);
    t->storage = storage_new((size_t)t->numel * sizeof(float), dst);
    t->data = dst;
}

ct_tensor *ct_full(int ndim, const int64_t *shape, float v) {
    ct_tensor *t = ct_tensor_new(ndim, shape);
    for (int64_t i = 0; i < t->numel; i++) t->data[i] = v;
    return t;
}

ct_tensor *ct_zeros(int ndim, const int64_t *shape) {
    ct_tensor *t = ct_tensor_new(ndim, shape);
    memset(t->data, 0, (size_t)t->numel * sizeof(float));
    return t;
}

ct_tensor *ct_ones(int ndim, const int64_t *shape) { return ct_full(ndim, shape, 1.0f); }

ct_tensor *ct_from_data(int ndim, const int64_t *shape, const float *data) {
    ct_tensor *t = ct_tensor_new(ndim, shape);
    memcpy(t->data, data, (size_t)t->numel * sizeof(float));
    return t;
}

ct_tensor *ct_zeros_like(const ct_tensor *t) { return ct_zeros(t->ndim, t->shape); }
ct_tensor *ct_empty_like(const ct_tensor *t) { return ct_tensor_new(t->ndim, t->shape); }
ct_tensor *ct_clone_data(const ct_tensor *t) { return ct_from_data(t->ndim, t->shape, t->data); }

int64_t ct_numel(const ct_tensor *t) { return t->numel; }
int ct_ndim(const ct_tensor *t) { return t->ndim; }

int64_t ct_size(const ct_tensor *t, int dim) {
    int d = dim < 0 ? dim + t->ndim : dim;
    CT_ASSERT(d >= 0 && d < t->ndim, "size: dim %d out of range for %s", dim, CT_SHAPE_STR(t));
    return t->shape[d];
}

bool ct_same_shape(const ct_tensor *a, const ct_tensor *b) {
    if (a->ndim != b->ndim) return false;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return false;
    return true;
}

const char *ct_shape_str(const ct_tensor *t, char *buf, size_t n) {
    size_t off = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < t->ndim && off < n; i++)
        off += (size_t)snprintf(buf + off, n - off, i ? ", %lld" : "%lld", (long long)t->shape[i]);
    if (off < n) snprintf(buf + off, n - off, "]");
    return buf;
}

void ct_retain(ct_tensor *t) { t->refs++; }

void ct_release(ct_tensor *t) {
    if (!t) return;
    CT_ASSERT(t->refs > 0, "release: tensor %s released more often than retained",
              CT_SHAPE_STR(t));
    if (--t->refs > 0) return;
    if (t->grad_fn) {
        ct_node_ref *r = (ct_node_ref *)t->grad_fn;
        if (--r->refs == 0) r->destroy(t->grad_fn);
    }
    if (t->grad) ct_release(t->grad);
    storage_release(t->storage, false);
    CT_STAT_ADD(live_tensors, -1);
    ct_free(t, sizeof *t);
}
