/* Data-parallel training. Only trainable parameters are bucketed; their gradients live in
 * one flat slab (registration order), the all-reduce's buffer, whose contiguous ranges are
 * the buckets, assigned from the end so the last layers' gradients, which backward
 * produces first, form the first bucket. Each leaf's grad-ready hook counts its bucket
 * down; buckets start strictly in bucket order (so every rank issues the same sequence) as
 * soon as they are complete, and every hook call lets the all-reduce progress what is in
 * flight while backward goes on. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "allreduce.h"

typedef struct {
    ct_ddp *ddp;
    int bucket;
} param_slot;

typedef struct {
    int64_t begin, end; /* float offsets into the slab */
    int nparams, ready;
    bool started;
} bucket;

struct ct_ddp {
    ct_module *m;
    const ct_dist *d;
    ct_ddp_config cfg;
    bool sync;
    /* the plan for the current trainable set */
    ct_named params;   /* all parameters, registration order */
    uint64_t plan_sig; /* signature of the trainable set the plan was built for */
    bool have_plan;
    ct_allreduce *ar;
    float *slab; /* ar's buffer */
    int64_t slab_numel;
    bucket *buckets;
    int nbuckets, next_start;
    param_slot *slots; /* one per parameter */
    ct_ddp_stats stats;
};

ct_ddp_config ct_ddp_defaults(void) {
    return (ct_ddp_config){.bucket_bytes = 25u << 20, .first_bucket_bytes = 1u << 20,
                           .buffers = CT_BUFFERS_AVERAGE, .shm = true, .timeout_s = 1800};
}

/* ---- start-up: same model everywhere, then rank 0's values -------------------------------- */

static void describe(ct_module *m, char **out, int *len) {
    size_t cap = 256, n = 0;
    char *s = ct_malloc(cap);
    s[0] = 0;
    for (int pass = 0; pass < 2; pass++) {
        ct_named l = pass ? ct_module_buffers(m) : ct_module_params(m, false);
        for (int i = 0; i < l.n; i++) {
            char line[512];
            int k = snprintf(line, sizeof line, "%s %s %s %s\n", pass ? "buffer" : "parameter",
                             l.names[i], CT_SHAPE_STR(l.tensors[i]),
                             pass ? "" : l.tensors[i]->requires_grad ? "requires_grad=true" : "requires_grad=false");
            while (n + (size_t)k + 1 > cap) {
                cap *= 2;
                s = ct_realloc(s, cap);
            }
            memcpy(s + n, line, (size_t)k + 1);
            n += (size_t)k;
        }
        ct_named_free(&l);
    }
    *out = s;
    *len = (int)n + 1;
}

/* The first line of `mine` that differs from `ref` (copied into buf), or -1. */
static int first_diff(const char *ref, const char *mine, char *ref_line, char *my_line, size_t n) {
    int line = 0;
    while (*ref || *mine) {
        const char *re = strchr(ref, '\n'), *me = strchr(mine, '\n');
        size_t rl = re ? (size_t)(re - ref) : strlen(ref), ml = me ? (size_t)(me - mine) : strlen(mine);
        if (rl != ml || memcmp(ref, mine, rl) != 0) {
            snprintf(ref_line, n, "%.*s", (int)rl, rl ? ref : "(nothing)");
            snprintf(my_line, n, "%.*s", (int)ml, ml ? mine : "(nothing)");
            if (!rl) snprintf(ref_line, n, "(no such entry)");
            if (!ml) snprintf(my_line, n, "(no such entry)");
            return line;
        }
        ref += rl + (re ? 1 : 0);
        mine += ml + (me ? 1 : 0);
        line++;
    }
    return -1;
}

static ct_status check_same_model(const ct_dist *d, ct_module *m) {
    char *mine;
    int len;
    describe(m, &mine, &len);
    int rlen = len;
    ct_dist_bcast(d, &rlen, sizeof rlen, 0);
    char *ref = ct_malloc((size_t)rlen);
    if (d->rank == 0) memcpy(ref, mine, (size_t)len);
    ct_dist_bcast(d, ref, (size_t)rlen, 0);
    char ref_line[512], my_line[512];
    int diff = first_diff(ref, mine, ref_line, my_line, sizeof ref_line);
    /* Everyone gets the lowest differing rank's view, so every rank fails the same way. */
    ct_status st = diff < 0 ? CT_OK
                   : ct_error(CT_ERR_MPI, "model differs across ranks: entry %d is '%s' on "
                              "rank 0 but '%s' on rank %d", diff + 1, ref_line, my_line, d->rank);
    st = ct_dist_agree(d, st, NULL);
    free(ref);
    free(mine);
    return st;
}

void ct_dist_broadcast_module(const ct_dist *d, ct_module *m, int root) {
    ct_named mods = ct_module_modules(m);
    for (int i = 0; i < mods.n; i++) {
        ct_module *mm = mods.owners[i];
        for (int k = 0; k < mm->nparams; k++)
            ct_dist_bcast(d, mm->params[k]->data, (size_t)mm->params[k]->numel * sizeof(float), root);
        for (int k = 0; k < mm->nbuffers; k++)
            ct_dist_bcast(d, mm->buffers[k]->data, (size_t)mm->buffers[k]->numel * sizeof(float), root);
        /* state_dict extras (num_batches_tracked); the dropout streams stay per rank */
        ct_module_extra x[CT_MODULE_MAX_EXTRA];
        for (int k = 0, n = ct_module_extra_state(mm, x); k < n; k++)
            if (x[k].in_state_dict)
                ct_dist_bcast(d, x[k].data, (size_t)x[k].numel * ct_dtype_size(x[k].dtype), root);
    }
    ct_named_free(&mods);
}

void ct_dist_average_buffers(const ct_dist *d, ct_module *m) {
    if (d->size == 1) return;
    ct_named b = ct_module_buffers(m);
    for (int i = 0; i < b.n; i++) {
        ct_tensor *t = b.tensors[i];
        MPI_Request req;
        CT_CHECK_MPI(MPI_Iallreduce(MPI_IN_PLACE, t->data, (int)t->numel, MPI_FLOAT, MPI_SUM, d->comm->mpi, &req));
        ct_dist_wait(d, &req, "averaging the buffers (BatchNorm statistics)");
        for (int64_t k = 0; k < t->numel; k++) t->data[k] /= (float)d->size;
    }
    ct_named_free(&b);
}

/* ---- bucket plan ------------------------------------------------------------------------- */

static uint64_t trainable_sig(const ct_named *p) {
    uint64_t h = 1469598103934665603ULL; /* FNV-1a over the trainable indices */
    for (int i = 0; i < p->n; i++)
        if (p->tensors[i]->requires_grad) h = (h ^ (uint64_t)(i + 1)) * 1099511628211ULL;
    return h;
}

static void grad_ready(ct_tensor *leaf, void *ctx);

static void drop_plan(ct_ddp *p) {
    for (int i = 0; i < p->params.n; i++) {
        ct_tensor *t = p->params.tensors[i];
        ct_set_grad_hook(t, NULL, NULL);
        if (t->grad && ct_tensor_is_external(t->grad)) ct_set_grad_storage(t, NULL);
    }
    free(p->buckets);
    p->slab = NULL;
    p->buckets = NULL;
    p->nbuckets = 0;
}

static void build_plan(ct_ddp *p, uint64_t sig) {
    drop_plan(p);
    const ct_named *ps = &p->params;
    int64_t total = 0;
    for (int i = 0; i < ps->n; i++)
        if (ps->tensors[i]->requires_grad) total += ps->tensors[i]->numel;
    p->slab = ct_allreduce_resize(p->ar, total);
    p->slab_numel = total;
    p->buckets = ct_calloc((size_t)ps->n + 1, sizeof *p->buckets);
    /* Offsets in registration order; buckets filled walking backwards from the end. */
    int64_t off = total;
    bucket *cur = NULL;
    bool close_next = false;
    for (int i = ps->n - 1; i >= 0; i--) {
        ct_tensor *t = ps->tensors[i];
        if (!t->requires_grad) continue;
        off -= t->numel;
        /* A bucket closes when the next parameter would overflow its cap; a parameter
         * larger than the cap gets a bucket of its own. */
        size_t cap = cur == p->buckets ? p->cfg.first_bucket_bytes : p->cfg.bucket_bytes;
        if (!cur || close_next || (size_t)(cur->end - off) * sizeof(float) > cap) {
            cur = &p->buckets[p->nbuckets++];
            cur->end = off + t->numel;
        }
        cur->begin = off;
        cur->nparams++;
        p->slots[i] = (param_slot){p, (int)(cur - p->buckets)};
        /* A gradient of at least first-bucket size also closes its bucket, so it goes out
         * as soon as it is ready instead of waiting behind the small gradients backward
         * produces after it (the CNN's 1.6 MB fc1 weight would otherwise wait for the whole
         * convolutional backward). */
        close_next = (size_t)t->numel * sizeof(float) >= p->cfg.first_bucket_bytes;
        ct_set_grad_storage(t, p->slab + off); /* keeps any gradient accumulated so far */
        ct_set_grad_hook(t, grad_ready, &p->slots[i]);
    }
    p->plan_sig = sig;
    p->have_plan = true;
    p->next_start = 0;
    p->stats.nbuckets = p->nbuckets;
    p->stats.trainable_numel = total;
    p->stats.rebuilds++;
}

ct_status ct_ddp_new(ct_module *m, const ct_dist *d, const ct_ddp_config *cfg, ct_ddp **out) {
    *out = NULL;
    ct_status st = check_same_model(d, m);
    if (st != CT_OK) return st;
    ct_ddp *p = ct_calloc(1, sizeof *p);
    p->m = m;
    p->d = d;
    p->cfg = cfg ? *cfg : ct_ddp_defaults();
    if (!p->cfg.bucket_bytes) p->cfg.bucket_bytes = 25u << 20;
    if (!p->cfg.first_bucket_bytes) p->cfg.first_bucket_bytes = p->cfg.bucket_bytes;
    p->sync = true;
    p->params = ct_module_params(m, false);
    p->slots = ct_calloc((size_t)p->params.n + 1, sizeof *p->slots);
    p->ar = ct_allreduce_new(d, p->cfg.shm);
    ct_allreduce_set_timeout(p->ar, p->cfg.timeout_s);
    ct_dist_broadcast_module(d, m, 0);
    *out = p;
    return ct_ddp_prepare(p);
}

void ct_ddp_free(ct_ddp *p) {
    if (!p) return;
    drop_plan(p);
    ct_allreduce_free(p->ar);
    ct_named_free(&p->params);
    free(p->slots);
    free(p);
}

static void broadcast_buffers(ct_ddp *p) {
    if (p->d->size == 1) return;
    ct_named b = ct_module_buffers(p->m);
    for (int i = 0; i < b.n; i++)
        ct_dist_bcast(p->d, b.tensors[i]->data, (size_t)b.tensors[i]->numel * sizeof(float), 0);
    ct_named_free(&b);
}

ct_status ct_ddp_prepare(ct_ddp *p) {
    uint64_t sig = trainable_sig(&p->params);
    /* One tiny collective per step: every rank must agree on the trainable set before
     * buckets can match, and all of them rebuild at the same step. */
    if (!ct_allreduce_agree(p->ar, sig))
        return ct_error(CT_ERR_MPI,
                        "rank %d: the set of trainable parameters differs across ranks "
                        "(freeze/unfreeze must happen on every rank at the same step)",
                        p->d->rank);
    if (!p->have_plan || sig != p->plan_sig) build_plan(p, sig);
    if (p->cfg.buffers == CT_BUFFERS_BROADCAST) broadcast_buffers(p);
    return CT_OK;
}

void ct_ddp_set_sync(ct_ddp *p, bool sync) { p->sync = sync; }

/* ---- overlap ------------------------------------------------------------------------------- */

/* Starts the complete buckets in order, or all of them. */
static void start_buckets(ct_ddp *p, bool all) {
    while (p->next_start < p->nbuckets) {
        bucket *b = &p->buckets[p->next_start];
        if (!all && b->ready < b->nparams) break;
        ct_allreduce_start(p->ar, b->begin, b->end);
        b->started = true;
        p->next_start++;
    }
}

static void grad_ready(ct_tensor *leaf, void *ctx) {
    (void)leaf;
    param_slot *s = ctx;
    ct_ddp *p = s->ddp;
    if (!p->sync) return;
    bucket *b = &p->buckets[s->bucket];
    CT_ASSERT(!b->started, "ddp: a gradient became ready twice in one step; accumulate "
                           "across backward calls inside no_sync");
    b->ready++;
    start_buckets(p, false);
    ct_allreduce_progress(p->ar);
}

void ct_ddp_finish(ct_ddp *p) {
    p->stats.comm_wait_s = 0;
    if (!p->sync) {
        for (int i = 0; i < p->nbuckets; i++) p->buckets[i].ready = 0;
        return;
    }
    double t0 = MPI_Wtime();
    start_buckets(p, true); /* parameters unused this step contribute zeros */
    ct_allreduce_wait(p->ar);
    for (int i = 0; i < p->nbuckets; i++) {
        p->buckets[i].ready = 0;
        p->buckets[i].started = false;
    }
    p->next_start = 0;
    p->stats.comm_wait_s = MPI_Wtime() - t0;
    p->stats.bytes_reduced = p->d->size > 1 ? p->slab_numel * (int64_t)sizeof(float) : 0;
}

void ct_ddp_sync_buffers(ct_ddp *p) {
    if (p->d->size == 1) return;
    if (p->cfg.buffers == CT_BUFFERS_AVERAGE) ct_dist_average_buffers(p->d, p->m);
    if (p->cfg.buffers == CT_BUFFERS_BROADCAST) broadcast_buffers(p);
}

void ct_ddp_zero_grad(ct_ddp *p) {
    if (p->slab) memset(p->slab, 0, (size_t)p->slab_numel * sizeof(float));
}

bool ct_ddp_all(ct_ddp *p, bool v) {
    /* agree() is true iff every rank passed the same value, which is then everyone's v */
    return ct_allreduce_agree(p->ar, v) && v;
}

ct_ddp_stats ct_ddp_get_stats(const ct_ddp *p) { return p->stats; }
