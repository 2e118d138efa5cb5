/* Checkpoints: one safetensors file with the model's state_dict (PyTorch names and
 * layouts, num_batches_tracked as I64), the optimizer state ("optim.*"), the dropout RNG
 * streams ("rng.*") and the training progress in the metadata. Written atomically. */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io.h"

/* A growable list of entries whose names and scalar values it owns. */
typedef struct {
    ct_st_entry *e;
    char **names;
    void **owned;
    int n, cap;
} entries;

static ct_st_entry *push(entries *l, const char *name) {
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 64;
        l->e = ct_realloc(l->e, (size_t)l->cap * sizeof *l->e);
        l->names = ct_realloc(l->names, (size_t)l->cap * sizeof *l->names);
        l->owned = ct_realloc(l->owned, (size_t)l->cap * sizeof *l->owned);
    }
    l->names[l->n] = ct_strdup(name);
    l->owned[l->n] = NULL;
    ct_st_entry *e = &l->e[l->n++];
    memset(e, 0, sizeof *e);
    e->name = l->names[l->n - 1];
    return e;
}

static void *own_copy(entries *l, const void *src, size_t bytes) {
    void *p = ct_malloc(bytes);
    memcpy(p, src, bytes);
    l->owned[l->n - 1] = p;
    return p;
}

static void entries_free(entries *l) {
    for (int i = 0; i < l->n; i++) free(l->names[i]), free(l->owned[i]);
    free(l->e);
    free(l->names);
    free(l->owned);
}

static ct_status add_optim_tensor(void *ctx, const char *name, const float *data, int64_t numel) {
    ct_st_entry *e = push(ctx, name);
    e->dtype = CT_DTYPE_F32;
    e->ndim = 1;
    e->shape[0] = numel;
    e->data = data;
    return CT_OK;
}

static ct_status add_optim_scalar(void *ctx, const char *name, double v) {
    entries *l = ctx;
    ct_st_entry *e = push(l, name);
    e->dtype = CT_DTYPE_F64;
    e->ndim = 0;
    e->data = own_copy(l, &v, sizeof v);
    return CT_OK;
}

/* state_dict order, as PyTorch writes it: per module, parameters, then buffers, then
 * num_batches_tracked. Every entry points at the model's own memory. */
static void add_model(entries *l, ct_module *m) {
    ct_named mods = ct_module_modules(m);
    for (int i = 0; i < mods.n; i++) {
        ct_module *mm = mods.owners[i];
        const char *pre = mods.names[i];
        char name[512];
        for (int k = 0; k < mm->nparams + mm->nbuffers; k++) {
            bool is_p = k < mm->nparams;
            ct_tensor *t = is_p ? mm->params[k] : mm->buffers[k - mm->nparams];
            snprintf(name, sizeof name, "%s%s%s", pre, *pre ? "." : "",
                     is_p ? mm->param_names[k] : mm->buffer_names[k - mm->nparams]);
            ct_st_entry *e = push(l, name);
            *e = ct_st_from_tensor(e->name, t);
        }
        /* num_batches_tracked (state_dict) and the dropout streams (ctrain's own, "rng.*"):
         * the entries point at the module's memory, so loading writes through them. */
        ct_module_extra x[CT_MODULE_MAX_EXTRA];
        for (int k = 0, n = ct_module_extra_state(mm, x); k < n; k++) {
            if (x[k].in_state_dict)
                snprintf(name, sizeof name, "%s%s%s", pre, *pre ? "." : "", x[k].name);
            else
                snprintf(name, sizeof name, "%s.%s", x[k].name, pre);
            ct_st_entry *e = push(l, name);
            e->dtype = x[k].dtype;
            e->ndim = x[k].ndim;
            e->shape[0] = x[k].numel;
            e->data = x[k].data;
        }
    }
    ct_named_free(&mods);
}

ct_status ct_ckpt_save(const char *path, ct_module *m, const ct_optim *o, const ct_progress *p) {
    entries l = {0};
    add_model(&l, m);
    ct_status st = o ? ct_optim_state_foreach(o, add_optim_tensor, add_optim_scalar, &l) : CT_OK;
    char epoch[32], step[32], seed[32], world[32];
    snprintf(epoch, sizeof epoch, "%" PRId64, p->epoch);
    snprintf(step, sizeof step, "%" PRId64, p->step);
    snprintf(seed, sizeof seed, "%" PRIu64, p->seed);
    snprintf(world, sizeof world, "%d", p->world);
    char crc[16] = "";
    if (st == CT_OK) snprintf(crc, sizeof crc, "%08x", (unsigned)ct_st_entries_crc32(l.e, l.n));
    ct_st_meta meta[] = {{"format", "ctrain-checkpoint-1"}, {"epoch", epoch}, {"step", step},
                         {"seed", seed}, {"world", world}, {"data_crc32", crc}};
    if (st == CT_OK) st = ct_st_save(path, l.e, l.n, meta, (int)(sizeof meta / sizeof *meta));
    entries_free(&l);
    return st;
}

/* Appends "; <text>" to a growing report. */
static void report(char **r, size_t *len, const char *fmt, const char *a, const char *b,
                   const char *c) {
    char line[700];
    int k = snprintf(line, sizeof line, fmt, a, b, c);
    *r = ct_realloc(*r, *len + (size_t)k + 3);
    if (*len) memcpy(*r + *len, "; ", 2), *len += 2;
    memcpy(*r + *len, line, (size_t)k + 1);
    *len += (size_t)k;
}

static const char *st_shape(const ct_st_entry *e, char *buf, size_t n) {
    size_t off = (size_t)snprintf(buf, n, "%s [", ct_dtype_name(e->dtype));
    for (int i = 0; i < e->ndim && off < n; i++)
        off += (size_t)snprintf(buf + off, n - off, i ? ", %" PRId64 : "%" PRId64, e->shape[i]);
    if (off < n) snprintf(buf + off, n - off, "]");
    return buf;
}

/* e (from the file) can be copied into w (the model's): same dtype and shape. */
static bool fits(const ct_st_entry *e, const ct_st_entry *w) {
    return e->dtype == w->dtype && e->ndim == w->ndim &&
           memcmp(e->shape, w->shape, (size_t)w->ndim * sizeof *w->shape) == 0;
}

static bool is_model_entry(const char *name) {
    return strncmp(name, "optim.", 6) != 0 && strncmp(name, "rng.", 4) != 0;
}

ct_status ct_ckpt_load_model(const ct_st_file *f, ct_module *m, bool strict, char **not_loaded) {
    return ct_ckpt_load_model_except(f, m, strict, NULL, not_loaded);
}

ct_status ct_ckpt_load_model_except(const ct_st_file *f, ct_module *m, bool strict,
                                    const char *exclude, char **not_loaded) {
    entries want = {0};
    add_model(&want, m);
    char *rep = NULL;
    size_t len = 0;
    int errors = 0;
    bool *used = ct_calloc((size_t)ct_st_count(f) + 1, 1);
    /* First pass: check everything, so the report lists every mismatch at once. */
    for (int i = 0; i < want.n; i++) {
        const ct_st_entry *w = &want.e[i];
        const ct_st_entry *e = ct_st_find(f, w->name);
        char a[128], b[128];
        if (e && ct_glob_match(exclude, w->name)) {
            used[e - ct_st_at(f, 0)] = true;
            report(&rep, &len, "excluded: %s%s%s", w->name, "", "");
            continue;
        }
        if (!e) {
            /* The dropout streams are ctrain's own, not model state: a PyTorch state_dict
             * never has them, and strict means "the state_dicts match", as in PyTorch. A
             * model loaded without them keeps its seeded streams (training reseeds them every
             * epoch anyway). */
            if (!is_model_entry(w->name)) continue;
            report(&rep, &len, "missing from the checkpoint: %s%s%s", w->name, "", "");
            errors += strict;
            continue;
        }
        used[e - ct_st_at(f, 0)] = true;
        if (!fits(e, w)) {
            report(&rep, &len, "%s is %s in the checkpoint but %s in the model", w->name,
                   st_shape(e, a, sizeof a), st_shape(w, b, sizeof b));
            errors++;
        }
    }
    for (int i = 0; i < ct_st_count(f); i++) {
        const ct_st_entry *e = ct_st_at(f, i);
        if (!used[i] && is_model_entry(e->name)) {
            report(&rep, &len, "unexpected in the checkpoint: %s%s%s", e->name, "", "");
            errors += strict;
        }
    }
    /* Non-strict: shape mismatches are skipped (a new head over an old backbone), so they
     * are reported but not fatal; loading nothing at all is (another model's file, or an
     * exclude list that covers everything). */
    int loadable = 0;
    for (int i = 0; i < want.n; i++) {
        const ct_st_entry *w = &want.e[i], *e = ct_st_find(f, w->name);
        loadable += e && is_model_entry(w->name) && !ct_glob_match(exclude, w->name) && fits(e, w);
    }
    if (!strict) errors = 0;
    ct_status st = CT_OK;
    if (errors) {
        st = ct_error(CT_ERR_SHAPE, "%s: does not match the model: %s", ct_st_path(f), rep);
    } else if (!loadable && want.n) {
        st = ct_error(CT_ERR_SHAPE, "%s: not one tensor of the model could be loaded from it: %s", ct_st_path(f),
                      rep ? rep : "nothing to load");
    } else {
        for (int i = 0; i < want.n; i++) {
            const ct_st_entry *w = &want.e[i], *e = ct_st_find(f, w->name);
            if (!e || ct_glob_match(exclude, w->name) || !fits(e, w)) continue;
            /* The wanted entries point at the model's own memory, so write through them. */
            memcpy((void *)w->data, e->data, ct_st_nbytes(e));
        }
    }
    free(used);
    entries_free(&want);
    if (not_loaded)
        *not_loaded = rep;
    else
        free(rep);
    return st;
}

ct_status ct_ckpt_load_optim(const ct_st_file *f, ct_optim *o) {
    ct_optim_load_begin(o);
    ct_status st = CT_OK;
    for (int i = 0; i < ct_st_count(f) && st == CT_OK; i++) {
        const ct_st_entry *e = ct_st_at(f, i);
        if (strncmp(e->name, "optim.", 6) != 0) continue;
        if (e->dtype == CT_DTYPE_F32)
            st = ct_optim_load_tensor(o, e->name, e->data, ct_st_numel(e));
        else if (e->dtype == CT_DTYPE_F64 && ct_st_numel(e) == 1)
            st = ct_optim_load_scalar(o, e->name, *(const double *)e->data);
        else
            st = ct_error(CT_ERR_FORMAT, "%s: optimizer entry %s has dtype %s", ct_st_path(f),
                          e->name, ct_dtype_name(e->dtype));
    }
    if (st == CT_OK) st = ct_optim_load_end(o);
    if (st != CT_OK && !strstr(ct_last_error(), ct_st_path(f)))
        st = ct_error(st, "%s: %s", ct_st_path(f), ct_last_error());
    return st;
}

ct_status ct_ckpt_check_finite(const ct_st_file *f) {
    for (int i = 0; i < ct_st_count(f); i++) {
        const ct_st_entry *e = ct_st_at(f, i);
        if (e->dtype != CT_DTYPE_F32 && e->dtype != CT_DTYPE_F64) continue;
        int64_t n = ct_st_numel(e);
        for (int64_t k = 0; k < n; k++) {
            double v = e->dtype == CT_DTYPE_F32 ? ((const float *)e->data)[k] : ((const double *)e->data)[k];
            if (!isfinite(v))
                return ct_error(CT_ERR_FORMAT, "%s: tensor '%s' holds %s at element %lld", ct_st_path(f), e->name,
                                isnan(v) ? "NaN" : v > 0 ? "+Inf" : "-Inf", (long long)k);
        }
    }
    return CT_OK;
}

/* A metadata integer in [lo, hi]: anything else (missing, not a number, out of range) is
 * an error naming the file and the key, since the values size loops and arrays on resume. */
static ct_status meta_int(const ct_st_file *f, const char *key, int64_t lo, int64_t hi, int64_t *out) {
    const char *v = ct_st_meta_get(f, key);
    char *end = NULL;
    errno = 0;
    long long x = v ? strtoll(v, &end, 10) : 0;
    if (!v || !*v || *end || errno == ERANGE || x < lo || x > hi)
        return ct_error(CT_ERR_FORMAT, "%s: metadata '%s' is %s%s%s, expected an integer in %" PRId64 "..%" PRId64,
                        ct_st_path(f), key, v ? "'" : "missing", v ? v : "", v ? "'" : "", lo, hi);
    *out = x;
    return CT_OK;
}

ct_status ct_ckpt_progress(const ct_st_file *f, ct_progress *p) {
    const char *fmt = ct_st_meta_get(f, "format");
    if (!fmt || strcmp(fmt, "ctrain-checkpoint-1") != 0)
        return ct_error(CT_ERR_FORMAT, "%s: not a ctrain checkpoint (metadata format is %s)",
                        ct_st_path(f), fmt ? fmt : "missing");
    int64_t epoch = 0, step = 0, world = 0;
    /* epochs and ranks are ints wherever they are used; the seed is any uint64 */
    ct_status st = meta_int(f, "epoch", 0, INT_MAX, &epoch);
    if (st == CT_OK) st = meta_int(f, "step", 0, INT64_MAX, &step);
    if (st == CT_OK) st = meta_int(f, "world", 1, INT_MAX, &world);
    const char *seed = ct_st_meta_get(f, "seed");
    char *end = NULL;
    errno = 0;
    unsigned long long s = seed ? strtoull(seed, &end, 10) : 0;
    if (st == CT_OK && (!seed || !*seed || *end || errno == ERANGE || strchr(seed, '-')))
        st = ct_error(CT_ERR_FORMAT, "%s: metadata 'seed' is %s%s%s, expected an integer in 0..%" PRIu64,
                      ct_st_path(f), seed ? "'" : "missing", seed ? seed : "", seed ? "'" : "", UINT64_MAX);
    if (st != CT_OK) return st;
    *p = (ct_progress){.epoch = epoch, .step = step, .seed = s, .world = (int)world};
    return CT_OK;
}
