/* See dump_util.h. */
#include "dump_util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void dump_die(const char *what) {
    fprintf(stderr, "%s: %s: %s\n", program_invocation_short_name, what, ct_last_error());
    exit(1);
}

void dump_raw(dump *d, const char *name, ct_dtype dt, int ndim, const int64_t *shape, const void *data) {
    if (d->n == d->cap) {
        d->cap = d->cap ? 2 * d->cap : 256;
        d->e = ct_realloc(d->e, (size_t)d->cap * sizeof *d->e);
    }
    ct_st_entry *e = &d->e[d->n++];
    memset(e, 0, sizeof *e);
    e->name = ct_strdup(name);
    e->dtype = dt;
    e->ndim = ndim;
    memcpy(e->shape, shape, (size_t)ndim * sizeof *shape);
    size_t bytes = (size_t)ct_st_numel(e) * ct_dtype_size(dt);
    e->data = memcpy(ct_malloc(bytes), data, bytes);
}

void dump_tensor(dump *d, const char *name, const ct_tensor *t) {
    dump_raw(d, name, CT_DTYPE_F32, t->ndim, t->shape, t->data);
}

void dump_meta(dump *d, const char *key, const char *value) {
    if (d->nmeta == d->capmeta) {
        d->capmeta = d->capmeta ? 2 * d->capmeta : 16;
        d->meta = ct_realloc(d->meta, (size_t)d->capmeta * sizeof *d->meta);
    }
    d->meta[d->nmeta++] = (ct_st_meta){ct_strdup(key), ct_strdup(value)};
}

void dump_save(const dump *d, const char *path) {
    if (ct_st_save(path, d->e, d->n, d->meta, d->nmeta) != CT_OK) dump_die(path);
}

void dump_free(dump *d) {
    for (int i = 0; i < d->n; i++) free((void *)d->e[i].name), free((void *)d->e[i].data);
    for (int i = 0; i < d->nmeta; i++) free((void *)d->meta[i].key), free((void *)d->meta[i].value);
    free(d->e);
    free(d->meta);
    *d = (dump){0};
}

ct_st_file *dump_load(ct_module *m, const char *state, const char *batch, const ct_st_entry **x,
                      const ct_st_entry **y) {
    ct_st_file *s = NULL, *b = NULL;
    if (ct_st_load(state, &s) != CT_OK) dump_die(state);
    if (ct_ckpt_load_model(s, m, true, NULL) != CT_OK) dump_die("strict load");
    ct_st_free(s);
    if (ct_st_load(batch, &b) != CT_OK) dump_die(batch);
    const ct_st_entry *xe = ct_st_find(b, "x"), *ye = ct_st_find(b, "y");
    if (!xe || xe->dtype != CT_DTYPE_F32 || xe->ndim != 4 || !ye || ye->dtype != CT_DTYPE_I64 || ye->ndim != 1 ||
        ye->shape[0] != xe->shape[0]) {
        fprintf(stderr, "%s: %s: needs x F32 [N, C, H, W] and y I64 [N]\n", program_invocation_short_name, batch);
        exit(1);
    }
    *x = xe;
    *y = ye;
    return b;
}

void dump_pass(dump *d, ct_module *m, const ct_named *ps, ct_tensor *x, const int64_t *y, const char *prefix,
               bool backward) {
    char name[600];
    CT_SCOPE {
        ct_tensor *logits = ct_module_forward(m, x);
        ct_tensor *loss = ct_cross_entropy(logits, y, CT_REDUCE_MEAN);
        snprintf(name, sizeof name, "%slogits", prefix);
        dump_tensor(d, name, logits);
        snprintf(name, sizeof name, "%sloss", prefix);
        dump_tensor(d, name, loss);
        if (backward) {
            ct_backward(loss);
            for (int k = 0; k < ps->n; k++) {
                ct_tensor *g = ct_grad(ps->tensors[k]);
                CT_ASSERT(g, "%s: %sno gradient for %s", program_invocation_short_name, prefix, ps->names[k]);
                snprintf(name, sizeof name, "%sgrad.%s", prefix, ps->names[k]);
                dump_tensor(d, name, g);
            }
        }
    }
}
