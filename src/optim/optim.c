/* SGD, Adam and AdamW over flat-slab state: groups, lazy state, segment building and the
 * fused update kernels. The formulas follow torch/optim/{sgd,adam,adamw}.py (1.13,
 * _single_tensor_*), operation for operation, so results agree with PyTorch to float
 * rounding. */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- configuration ----------------------------------------------------------------- */

ct_optim_config ct_sgd_config(double lr, double momentum, double weight_decay, bool nesterov) {
    return (ct_optim_config){.kind = CT_OPTIM_SGD, .lr = lr, .weight_decay = weight_decay,
                             .momentum = momentum, .nesterov = nesterov};
}

static ct_optim_config adam_like(ct_optim_kind kind, double lr, double weight_decay) {
    return (ct_optim_config){.kind = kind, .lr = lr, .weight_decay = weight_decay,
                             .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8};
}

ct_optim_config ct_adam_config(double lr, double weight_decay) {
    return adam_like(CT_OPTIM_ADAM, lr, weight_decay);
}

ct_optim_config ct_adamw_config(double lr, double weight_decay) {
    return adam_like(CT_OPTIM_ADAMW, lr, weight_decay);
}

static const char *kind_name(ct_optim_kind k) {
    return k == CT_OPTIM_SGD ? "sgd" : k == CT_OPTIM_ADAM ? "adam" : "adamw";
}

/* ---- lifetime ---------------------------------------------------------------------- */

ct_optim *ct_optim_new(ct_optim_config cfg) {
    const char *k = kind_name(cfg.kind);
    CT_ASSERT(cfg.kind == CT_OPTIM_SGD || cfg.kind == CT_OPTIM_ADAM || cfg.kind == CT_OPTIM_ADAMW,
              "optim: unknown kind %d", (int)cfg.kind);
    CT_ASSERT(cfg.lr >= 0, "%s: invalid learning rate %g", k, cfg.lr);
    CT_ASSERT(cfg.weight_decay >= 0, "%s: invalid weight_decay %g", k, cfg.weight_decay);
    int nmom;
    if (cfg.kind == CT_OPTIM_SGD) {
        CT_ASSERT(cfg.momentum >= 0, "sgd: invalid momentum %g", cfg.momentum);
        CT_ASSERT(!cfg.nesterov || (cfg.momentum > 0 && cfg.dampening == 0),
                  "sgd: nesterov needs momentum > 0 and dampening 0 (momentum %g, dampening %g)",
                  cfg.momentum, cfg.dampening);
        nmom = cfg.momentum != 0;
    } else {
        CT_ASSERT(cfg.beta1 >= 0 && cfg.beta1 < 1 && cfg.beta2 >= 0 && cfg.beta2 < 1,
                  "%s: invalid betas (%g, %g)", k, cfg.beta1, cfg.beta2);
        CT_ASSERT(cfg.eps >= 0, "%s: invalid eps %g", k, cfg.eps);
        nmom = 2;
    }
    ct_optim *o = ct_realloc(NULL, sizeof *o);
    memset(o, 0, sizeof *o);
    o->cfg = cfg;
    o->nmom = nmom;
    return o;
}

void ct__optim_drop_state(ct_optim *o) {
    if (o->slab) ct_free(o->slab, (size_t)(o->cap * o->nmom) * sizeof(float));
    o->slab = NULL;
    o->cap = o->used = 0;
    for (int i = 0; i < o->nparams; i++) {
        o->params[i].has_state = false;
        o->params[i].off = -1;
        o->params[i].step = 0;
        o->params[i].loaded = 0;
    }
}

void ct_optim_free(ct_optim *o) {
    if (!o) return;
    ct__optim_drop_state(o);
    for (int i = 0; i < o->nparams; i++) {
        ct_release(o->params[i].p);
        free(o->params[i].name);
    }
    free(o->params);
    free(o->groups);
    free(o->segs);
    free(o);
}

/* ---- groups ------------------------------------------------------------------------ */

int ct_optim_add_group(ct_optim *o, int n, const char *const *names, ct_tensor *const *params,
                       double lr, double weight_decay) {
    const char *k = kind_name(o->cfg.kind);
    CT_ASSERT(n >= 0, "%s: add_group with %d params", k, n);
    if (lr == CT_OPTIM_DEFAULT) lr = o->cfg.lr;
    if (weight_decay == CT_OPTIM_DEFAULT) weight_decay = o->cfg.weight_decay;
    CT_ASSERT(lr >= 0 && weight_decay >= 0, "%s: group with invalid lr %g or weight_decay %g", k,
              lr, weight_decay);
    for (int j = 0; j < n; j++) {
        CT_ASSERT(params[j] && names[j], "%s: add_group: param %d or its name is NULL", k, j);
        CT_ASSERT(ct_is_leaf(params[j]), "%s: param '%s' %s is not a leaf", k, names[j],
                  CT_SHAPE_STR(params[j]));
        for (int i = 0; i < o->nparams + j; i++) {
            const ct_tensor *q = i < o->nparams ? o->params[i].p : params[i - o->nparams];
            const char *qn = i < o->nparams ? o->params[i].name : names[i - o->nparams];
            CT_ASSERT(q != params[j], "%s: param '%s' appears in more than one group (or twice)",
                      k, names[j]);
            CT_ASSERT(strcmp(qn, names[j]) != 0, "%s: two params are named '%s'", k, names[j]);
        }
    }
    if (o->ngroups == o->groups_cap) {
        o->groups_cap = o->groups_cap ? 2 * o->groups_cap : 4;
        o->groups = ct_realloc(o->groups, (size_t)o->groups_cap * sizeof *o->groups);
    }
    int g = o->ngroups++;
    o->groups[g] = (ct__optim_group){.lr = lr, .base_lr = lr, .weight_decay = weight_decay};
    if (o->nparams + n > o->params_cap) {
        o->params_cap = o->nparams + n;
        o->params = ct_realloc(o->params, (size_t)o->params_cap * sizeof *o->params);
        o->segs = ct_realloc(o->segs, (size_t)o->params_cap * sizeof *o->segs);
    }
    for (int j = 0; j < n; j++) {
        size_t len = strlen(names[j]) + 1;
        char *name = ct_realloc(NULL, len);
        memcpy(name, names[j], len);
        ct_retain(params[j]);
        o->params[o->nparams++] =
            (ct__optim_param){.p = params[j], .name = name, .group = g, .off = -1};
    }
    return g;
}

static void check_group(const ct_optim *o, int g) {
    CT_ASSERT(g >= 0 && g < o->ngroups, "%s: group %d out of range (%d groups)",
              kind_name(o->cfg.kind), g, o->ngroups);
}

int ct_optim_ngroups(const ct_optim *o) { return o->ngroups; }

double ct_optim_lr(const ct_optim *o, int g) {
    check_group(o, g);
    return o->groups[g].lr;
}

double ct_optim_base_lr(const ct_optim *o, int g) {
    check_group(o, g);
    return o->groups[g].base_lr;
}

void ct_optim_set_lr(ct_optim *o, int g, double lr) {
    check_group(o, g);
    CT_ASSERT(lr >= 0, "%s: invalid learning rate %g", kind_name(o->cfg.kind), lr);
    o->groups[g].lr = lr;
}

double ct_optim_weight_decay(const ct_optim *o, int g) {
    check_group(o, g);
    return o->groups[g].weight_decay;
}

/* ---- state slab -------------------------------------------------------------------- */

const char *ct__optim_moment_name(const ct_optim *o, int k) {
    if (o->cfg.kind == CT_OPTIM_SGD) return "momentum_buffer";
    return k == 0 ? "exp_avg" : "exp_avg_sq";
}

static size_t slab_bytes(const ct_optim *o, int64_t cap) {
    return (size_t)(cap * o->nmom) * sizeof(float);
}

void ct__optim_append_state(ct_optim *o, int i) {
    ct__optim_param *e = &o->params[i];
    CT_ASSERT(!e->has_state, "optim: '%s' already has state", e->name);
    e->has_state = true;
    if (o->nmom == 0) return;
    int64_t n = e->p->numel;
    if (o->used + n > o->cap) {
        int64_t cap = o->cap * 2 > o->used + n ? o->cap * 2 : o->used + n;
        float *slab = ct_alloc(slab_bytes(o, cap));
        for (int k = 0; k < o->nmom; k++)
            if (o->used) memcpy(slab + k * cap, o->slab + k * o->cap, (size_t)o->used * sizeof(float));
        if (o->slab) ct_free(o->slab, slab_bytes(o, o->cap));
        o->slab = slab;
        o->cap = cap;
    }
    e->off = o->used;
    o->used += n;
    for (int k = 0; k < o->nmom; k++) memset(o->slab + k * o->cap + e->off, 0, (size_t)n * sizeof(float));
}

void ct__optim_relayout(ct_optim *o) {
    int64_t total = 0;
    for (int i = 0; i < o->nparams; i++)
        if (o->params[i].has_state) total += o->params[i].p->numel;
    if (o->nmom == 0) return;
    float *slab = total ? ct_alloc(slab_bytes(o, total)) : NULL;
    int64_t off = 0;
    for (int i = 0; i < o->nparams; i++) {
        ct__optim_param *e = &o->params[i];
        if (!e->has_state) continue;
        size_t bytes = (size_t)e->p->numel * sizeof(float);
        for (int k = 0; k < o->nmom; k++) {
            float *dst = slab + k * total + off;
            if (e->off >= 0)
                memcpy(dst, o->slab + k * o->cap + e->off, bytes);
            else
                memset(dst, 0, bytes);
        }
        e->off = off;
        off += e->p->numel;
    }
    if (o->slab) ct_free(o->slab, slab_bytes(o, o->cap));
    o->slab = slab;
    o->cap = o->used = total;
}

/* ---- kernels ----------------------------------------------------------------------- */

/* Each kernel is one pass over a segment. The bool parameters are compile-time constants
 * at every call site (see the dispatchers), so each variant compiles to its own
 * branch-free, vectorisable loop. The expressions keep PyTorch's operation order, e.g.
 * addcdiv's p + value * m / denom is (value * m) / denom. */

typedef struct {
    float lr, wd, momentum, one_minus_damp;
} sgd_k;

static inline __attribute__((always_inline)) void
sgd_loop(int64_t n, float *restrict p, const float *restrict g, float *restrict buf, sgd_k k,
         bool wd, bool mom, bool first, bool nesterov) {
    const float neg_lr = -k.lr;
    for (int64_t i = 0; i < n; i++) {
        float d = g[i];
        if (wd) d = d + k.wd * p[i];
        if (mom) {
            float b = first ? d : buf[i] * k.momentum + k.one_minus_damp * d;
            buf[i] = b;
            d = nesterov ? d + k.momentum * b : b;
        }
        p[i] = p[i] + neg_lr * d;
    }
}

/* Threads share out fixed chunks of a segment, and each chunk runs one variant's loop. The
 * parallel loop must be this outer one: as the body of an OpenMP region, a variant's loop
 * read its flags from the region's shared data instead of as constants, and GCC left it
 * scalar (Adam took 8 cycles an element, 27% of a ResNet-18 step). */
#define OPT_CHUNK 16384

#define SGD_CASE(c)                                                                       \
    case c:                                                                               \
        sgd_loop(len, p + a, g + a, buf ? buf + a : NULL, k, (c)&1, (c)&2, (c)&4, (c)&8); \
        break;

static void sgd_kernel(int64_t n, float *p, const float *g, float *buf, sgd_k k, bool wd,
                       bool mom, bool first, bool nesterov) {
    int variant = wd | mom << 1 | (mom && first) << 2 | (mom && nesterov) << 3;
    CT_PAR_FOR(n) /* chunks are independent */
    for (int64_t a = 0; a < n; a += OPT_CHUNK) {
        int64_t len = n - a < OPT_CHUNK ? n - a : OPT_CHUNK;
        switch (variant) {
            SGD_CASE(0) SGD_CASE(1) SGD_CASE(2) SGD_CASE(3) SGD_CASE(6) SGD_CASE(7)
            SGD_CASE(10) SGD_CASE(11) SGD_CASE(14) SGD_CASE(15)
        default: ct_fatal("sgd: bad kernel variant");
        }
    }
}

typedef struct {
    float wd, decay, b1, omb1, b2, omb2, neg_step, bc2_sqrt, eps;
} adam_k;

static inline __attribute__((always_inline)) void
adam_loop(int64_t n, float *restrict p, const float *restrict g, float *restrict m,
          float *restrict v, adam_k k, bool l2, bool decoupled) {
    for (int64_t i = 0; i < n; i++) {
        float pi = p[i], gi = g[i];
        if (l2) gi = gi + k.wd * pi;
        if (decoupled) pi = pi * k.decay;
        float mi = m[i] * k.b1 + k.omb1 * gi;
        float vi = v[i] * k.b2 + k.omb2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        float denom = sqrtf(vi) / k.bc2_sqrt + k.eps;
        p[i] = pi + k.neg_step * mi / denom;
    }
}

static void adam_kernel(int64_t n, float *p, const float *g, float *m, float *v, adam_k k,
                        bool l2, bool decoupled) {
    CT_PAR_FOR(n) /* chunks are independent */
    for (int64_t a = 0; a < n; a += OPT_CHUNK) {
        int64_t len = n - a < OPT_CHUNK ? n - a : OPT_CHUNK;
        if (l2)
            adam_loop(len, p + a, g + a, m + a, v + a, k, true, false);
        else if (decoupled)
            adam_loop(len, p + a, g + a, m + a, v + a, k, false, true);
        else
            adam_loop(len, p + a, g + a, m + a, v + a, k, false, false);
    }
}

static void run_segment(ct_optim *o, const ct__optim_segment *s) {
    const ct_optim_config *c = &o->cfg;
    const ct__optim_group *gr = &o->groups[s->group];
    float *m0 = o->nmom > 0 ? o->slab + s->off : NULL;
    if (c->kind == CT_OPTIM_SGD) {
        sgd_k k = {(float)gr->lr, (float)gr->weight_decay, (float)c->momentum,
                   (float)(1 - c->dampening)};
        sgd_kernel(s->n, s->p, s->g, m0, k, gr->weight_decay != 0, c->momentum != 0,
                   s->step == 1, c->nesterov);
        return;
    }
    /* As in _single_tensor_adam(w): bias corrections in double, then rounded once. */
    double step = (double)s->step;
    double bc1 = 1 - pow(c->beta1, step), bc2 = 1 - pow(c->beta2, step);
    adam_k k = {
        .wd = (float)gr->weight_decay,
        .decay = (float)(1 - gr->lr * gr->weight_decay),
        .b1 = (float)c->beta1,
        .omb1 = (float)(1 - c->beta1),
        .b2 = (float)c->beta2,
        .omb2 = (float)(1 - c->beta2),
        .neg_step = (float)-(gr->lr / bc1),
        .bc2_sqrt = (float)sqrt(bc2),
        .eps = (float)c->eps,
    };
    bool adamw = c->kind == CT_OPTIM_ADAMW;
    adam_kernel(s->n, s->p, s->g, m0, o->slab + o->cap + s->off, k,
                !adamw && gr->weight_decay != 0, adamw);
}

/* ---- step -------------------------------------------------------------------------- */

static bool active(const ct__optim_param *e) {
    /* Skipping requires_grad=false as well as grad == NULL makes "frozen" mean frozen:
     * PyTorch would still apply momentum and decay to a frozen param that kept a .grad. */
    return e->p->requires_grad && e->p->grad != NULL;
}

void ct_optim_step(ct_optim *o) {
    bool fresh = false;
    for (int i = 0; i < o->nparams; i++) {
        ct__optim_param *e = &o->params[i];
        if (!active(e)) continue;
        CT_ASSERT(e->p->grad->numel == e->p->numel, "%s: grad of '%s' has %lld elements, param %s",
                  kind_name(o->cfg.kind), e->name, (long long)e->p->grad->numel,
                  CT_SHAPE_STR(e->p));
        if (!e->has_state) {
            e->has_state = true;
            fresh = true;
        }
    }
    if (fresh) ct__optim_relayout(o); /* once per step that meets new parameters */

    int nseg = 0;
    ct__optim_segment *cur = NULL;
    for (int i = 0; i < o->nparams; i++) {
        ct__optim_param *e = &o->params[i];
        if (!active(e)) continue;
        e->step++;
        float *p = e->p->data, *g = e->p->grad->data;
        int64_t n = e->p->numel;
        if (cur && cur->group == e->group && cur->step == e->step && cur->p + cur->n == p &&
            cur->g + cur->n == g && (o->nmom == 0 || cur->off + cur->n == e->off)) {
            cur->n += n;
            continue;
        }
        cur = &o->segs[nseg++];
        *cur = (ct__optim_segment){.p = p, .g = g, .off = e->off, .n = n, .group = e->group,
                                   .step = e->step};
    }
    for (int s = 0; s < nseg; s++) run_segment(o, &o->segs[s]);
    o->last_segments = nseg;
}

void ct_optim_zero_grad(ct_optim *o) {
    for (int i = 0; i < o->nparams; i++) ct_zero_grad(o->params[i].p);
}

/* ---- introspection ----------------------------------------------------------------- */

int ct_optim_state_params(const ct_optim *o) {
    int n = 0;
    for (int i = 0; i < o->nparams; i++) n += o->params[i].has_state;
    return n;
}

size_t ct_optim_state_bytes(const ct_optim *o) {
    size_t n = 0;
    for (int i = 0; i < o->nparams; i++)
        if (o->params[i].has_state) n += (size_t)o->params[i].p->numel;
    return n * (size_t)o->nmom * sizeof(float);
}

int64_t ct_optim_param_steps(const ct_optim *o, const char *name) {
    for (int i = 0; i < o->nparams; i++)
        if (strcmp(o->params[i].name, name) == 0) return o->params[i].has_state ? o->params[i].step : -1;
    return -1;
}

int ct_optim_last_segments(const ct_optim *o) { return o->last_segments; }
