/* The module tree: naming, traversal, modes, freezing, packing and Sequential. */
#include "nn.h"

#include <fnmatch.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- Sequential ------------------------------------------------------------------------ */

static ct_tensor *sequential_forward(ct_module *m, ct_tensor *x);

static const ct_module_ops sequential_ops = {.type = "Sequential", .forward = sequential_forward};

static bool is_sequential(const ct_module *m) { return m->ops == &sequential_ops; }

int ct_seq_num_layers(ct_module *m) {
    if (!is_sequential(m)) return 1;
    int n = 0;
    for (int i = 0; i < m->nchildren; i++) n += ct_seq_num_layers(m->children[i]);
    return n;
}

/* Runs child i of m (not a Sequential) and, as one op, the siblings after it that fuse
 * with it, `room` layers at most (the rest of the range); *span: how many ran, each
 * counted as the layer it is. Fused: a Conv2d, BatchNorm2d [and ReLU] folded for inference
 * (ct_nn_conv_bn_fold), or a layer with a fused ReLU form (BatchNorm) and a ReLU. */
static ct_tensor *run_fused(ct_module *m, int i, int room, ct_tensor *x, int *span) {
    ct_module *c = m->children[i];
    ct_module *n1 = room >= 2 && i + 1 < m->nchildren ? m->children[i + 1] : NULL;
    bool relu2 = room >= 3 && i + 2 < m->nchildren && ct_module_is_relu(m->children[i + 2]);
    ct_tensor *y = n1 ? ct_nn_conv_bn_fold(c, n1, x, NULL, relu2) : NULL;
    if (y) {
        *span = relu2 ? 3 : 2;
        return y;
    }
    if (n1 && c->ops->forward_relu && ct_module_is_relu(n1)) {
        *span = 2;
        return ct_module_forward_relu(c, n1, x);
    }
    *span = 1;
    return ct_module_forward(c, x);
}

/* Runs the layers of m numbered [from, to), *pos being the number of the first one.
 * Each layer runs in its own scope; *h is the one reference we hold to the current
 * activation, so the previous one is dropped as soon as the next layer is done with it
 * (unless a graph node saved it for backward). */
static void run_layers(ct_module *m, int from, int to, int *pos, ct_tensor **h) {
    for (int i = 0; i < m->nchildren && *pos < to; i++) {
        ct_module *c = m->children[i];
        if (is_sequential(c)) {
            /* counted only when the range may start after it (never for a whole forward) */
            int n = *pos < from ? ct_seq_num_layers(c) : 0;
            if (*pos < from && *pos + n <= from) *pos += n;
            else run_layers(c, from, to, pos, h);
            continue;
        }
        int span = 1;
        if (*pos >= from) {
            size_t mark = ct_scope_begin();
            ct_tensor *y = run_fused(m, i, to - *pos, *h, &span);
            ct_retain(y);
            ct_scope_end(mark);
            ct_release(*h);
            *h = y;
        }
        *pos += span;
        i += span - 1;
    }
}

ct_tensor *ct_seq_forward_range(ct_module *m, int from, int to, ct_tensor *x) {
    CT_ASSERT(is_sequential(m), "seq_forward_range: %s is not a Sequential", ct_module_type(m));
    int n = ct_seq_num_layers(m);
    CT_ASSERT(from >= 0 && from <= to && to <= n, "seq_forward_range: [%d, %d) is not a range of %d layers",
              from, to, n);
    ct_tensor *h = x;
    ct_retain(h);
    int pos = 0;
    run_layers(m, from, to, &pos, &h);
    return ct_scope_adopt(h);
}

static ct_tensor *sequential_forward(ct_module *m, ct_tensor *x) {
    ct_tensor *h = x;
    ct_retain(h);
    int pos = 0;
    run_layers(m, 0, INT_MAX, &pos, &h);
    return ct_scope_adopt(h);
}

ct_module *ct_module_new(size_t size, const ct_module_ops *ops) {
    CT_ASSERT(size >= sizeof(ct_module) && ops && ops->type && ops->forward,
              "module_new: needs a size >= sizeof(ct_module) and ops with a type and a forward");
    ct_module *m = ct_calloc(1, size);
    m->ops = ops;
    m->training = true;
    return m;
}

const char *ct_module_type(const ct_module *m) { return m->ops->type; }

ct_tensor *ct_module_add_param(ct_module *m, const char *name, ct_tensor *t) {
    CT_ASSERT(m->nparams < CT_MODULE_MAX_TENSORS, "%s: too many parameters", ct_module_type(m));
    ct_set_requires_grad(t, true);
    m->param_names[m->nparams] = name;
    return m->params[m->nparams++] = t;
}

ct_tensor *ct_module_add_buffer(ct_module *m, const char *name, ct_tensor *t) {
    CT_ASSERT(m->nbuffers < CT_MODULE_MAX_TENSORS, "%s: too many buffers", ct_module_type(m));
    m->buffer_names[m->nbuffers] = name;
    return m->buffers[m->nbuffers++] = t;
}

ct_module *ct_module_add_child(ct_module *m, const char *name, ct_module *child) {
    for (int i = 0; i < m->nchildren; i++)
        CT_ASSERT(strcmp(m->child_names[i], name) != 0, "%s: duplicate child name '%s'",
                  ct_module_type(m), name);
    int n = m->nchildren + 1;
    m->children = ct_realloc(m->children, (size_t)n * sizeof *m->children);
    m->child_names = ct_realloc(m->child_names, (size_t)n * sizeof *m->child_names);
    m->children[n - 1] = child;
    m->child_names[n - 1] = ct_strdup(name);
    m->nchildren = n;
    ct_module_train(child, m->training);
    return child;
}

ct_module *ct_nn_sequential(void) { return ct_module_new(sizeof(ct_module), &sequential_ops); }

ct_module *ct_seq_add(ct_module *seq, const char *name, ct_module *child) {
    CT_ASSERT(is_sequential(seq), "seq_add: %s is not a Sequential", ct_module_type(seq));
    char idx[24];
    if (!name) {
        snprintf(idx, sizeof idx, "%d", seq->nchildren);
        name = idx;
    }
    ct_module_add_child(seq, name, child);
    return seq;
}

ct_tensor *ct_module_forward(ct_module *m, ct_tensor *x) { return m->ops->forward(m, x); }

bool ct_module_is_relu(const ct_module *m) { return !strcmp(m->ops->type, "ReLU"); }

ct_tensor *ct_module_forward_relu(ct_module *m, ct_module *relu, ct_tensor *x) {
    if (m->ops->forward_relu && ct_module_is_relu(relu)) return m->ops->forward_relu(m, x);
    return ct_module_forward(relu, ct_module_forward(m, x));
}

void ct_module_reseed(ct_module *m, uint64_t seed) {
    if (m->ops->reseed) m->ops->reseed(m, seed);
}

int ct_module_extra_state(ct_module *m, ct_module_extra out[CT_MODULE_MAX_EXTRA]) {
    return m->ops->extra_state ? m->ops->extra_state(m, out) : 0;
}

void ct_module_free(ct_module *m) {
    if (!m) return;
    for (int i = 0; i < m->nchildren; i++) {
        ct_module_free(m->children[i]);
        free(m->child_names[i]);
    }
    free(m->children);
    free(m->child_names);
    for (int i = 0; i < m->nparams; i++) ct_release(m->params[i]);
    for (int i = 0; i < m->nbuffers; i++) ct_release(m->buffers[i]);
    free(m->slab);
    free(m);
}

/* ---- traversal -------------------------------------------------------------------------- */

typedef enum { WALK_PARAMS, WALK_TRAINABLE, WALK_BUFFERS, WALK_MODULES } walk_kind;

static void named_push(ct_named *l, const char *prefix, const char *name, ct_tensor *t,
                       ct_module *owner) {
    size_t len = strlen(prefix) + strlen(name) + 2;
    char *full = ct_malloc(len);
    snprintf(full, len, "%s%s%s", prefix, *prefix && *name ? "." : "", name);
    l->names = ct_realloc(l->names, (size_t)(l->n + 1) * sizeof *l->names);
    l->tensors = ct_realloc(l->tensors, (size_t)(l->n + 1) * sizeof *l->tensors);
    l->owners = ct_realloc(l->owners, (size_t)(l->n + 1) * sizeof *l->owners);
    l->names[l->n] = full;
    l->tensors[l->n] = t;
    l->owners[l->n] = owner;
    l->n++;
}

static void walk(ct_module *m, const char *prefix, walk_kind kind, ct_named *out) {
    if (kind == WALK_MODULES) named_push(out, prefix, "", NULL, m);
    if (kind == WALK_PARAMS || kind == WALK_TRAINABLE)
        for (int i = 0; i < m->nparams; i++)
            if (kind == WALK_PARAMS || m->params[i]->requires_grad)
                named_push(out, prefix, m->param_names[i], m->params[i], m);
    if (kind == WALK_BUFFERS)
        for (int i = 0; i < m->nbuffers; i++)
            named_push(out, prefix, m->buffer_names[i], m->buffers[i], m);
    for (int i = 0; i < m->nchildren; i++) {
        size_t len = strlen(prefix) + strlen(m->child_names[i]) + 2;
        char *p = ct_malloc(len);
        snprintf(p, len, "%s%s%s", prefix, *prefix ? "." : "", m->child_names[i]);
        walk(m->children[i], p, kind, out);
        free(p);
    }
}

ct_named ct_module_params(ct_module *m, bool trainable_only) {
    ct_named l = {0};
    walk(m, "", trainable_only ? WALK_TRAINABLE : WALK_PARAMS, &l);
    return l;
}

ct_named ct_module_buffers(ct_module *m) {
    ct_named l = {0};
    walk(m, "", WALK_BUFFERS, &l);
    return l;
}

ct_named ct_module_modules(ct_module *m) {
    ct_named l = {0};
    walk(m, "", WALK_MODULES, &l);
    return l;
}

void ct_named_free(ct_named *l) {
    for (int i = 0; i < l->n; i++) free(l->names[i]);
    free(l->names);
    free(l->tensors);
    free(l->owners);
    *l = (ct_named){0};
}

int64_t ct_named_numel(const ct_named *l) {
    int64_t n = 0;
    for (int i = 0; i < l->n; i++) n += l->tensors[i]->numel;
    return n;
}

ct_tensor *ct_module_find(ct_module *m, const char *name) {
    ct_tensor *found = NULL;
    for (int pass = 0; pass < 2 && !found; pass++) {
        ct_named l = pass ? ct_module_buffers(m) : ct_module_params(m, false);
        for (int i = 0; i < l.n && !found; i++)
            if (strcmp(l.names[i], name) == 0) found = l.tensors[i];
        ct_named_free(&l);
    }
    return found;
}

/* ---- modes ------------------------------------------------------------------------------ */

void ct_module_train(ct_module *m, bool on) {
    m->training = on;
    for (int i = 0; i < m->nchildren; i++) ct_module_train(m->children[i], on);
}

ct_eval_state ct_eval_enter(ct_module *m) {
    ct_named mods = ct_module_modules(m);
    ct_eval_state s = {.grad = ct_set_grad_enabled(false), .n = mods.n};
    s.modes = ct_malloc((size_t)mods.n * sizeof *s.modes);
    for (int i = 0; i < mods.n; i++) s.modes[i] = mods.owners[i]->training;
    ct_named_free(&mods);
    ct_module_train(m, false);
    return s;
}

void ct_eval_exit(ct_module *m, ct_eval_state *s) {
    ct_named mods = ct_module_modules(m);
    CT_ASSERT(mods.n == s->n, "eval_exit: the module tree changed inside the evaluation scope");
    for (int i = 0; i < mods.n; i++) mods.owners[i]->training = s->modes[i];
    ct_named_free(&mods);
    free(s->modes);
    s->modes = NULL;
    ct_set_grad_enabled(s->grad);
}

/* ---- freezing ----------------------------------------------------------------------------- */

bool ct_glob_match(const char *globs, const char *name) {
    if (!globs) return false;
    char buf[512];
    snprintf(buf, sizeof buf, "%s", globs);
    for (char *save = NULL, *g = strtok_r(buf, ", ", &save); g; g = strtok_r(NULL, ", ", &save))
        if (fnmatch(g, name, 0) == 0) return true;
    return false;
}

int ct_module_set_requires_grad(ct_module *m, const char *globs, bool requires_grad) {
    ct_named l = ct_module_params(m, false);
    int hits = 0;
    for (int i = 0; i < l.n; i++) {
        if (!ct_glob_match(globs, l.names[i])) continue;
        ct_tensor *p = l.tensors[i];
        ct_set_requires_grad(p, requires_grad);
        /* A frozen parameter keeps no gradient (it is never touched again). */
        if (!requires_grad && p->grad && !ct_tensor_is_external(p->grad)) ct_clear_grad(p);
        hits++;
    }
    ct_named_free(&l);
    return hits;
}

void ct_module_set_frozen_bn_eval(ct_module *m, bool on) {
    ct_batchnorm_module *bn = ct_nn_as_batchnorm(m);
    if (bn) bn->frozen_bn_eval = on;
    for (int i = 0; i < m->nchildren; i++) ct_module_set_frozen_bn_eval(m->children[i], on);
}

/* ---- packing ------------------------------------------------------------------------------ */

void ct_module_pack(ct_module *m) {
    if (m->slab) return;
    ct_named l = ct_module_params(m, false);
    /* Back to back, no padding: the optimizer fuses adjacent parameters into one loop. */
    size_t total = (size_t)ct_named_numel(&l);
    m->slab = ct_aligned_malloc(64, ((total + 15) / 16 * 16 + 16) * sizeof(float));
    m->slab_floats = total;
    size_t off = 0;
    for (int i = 0; i < l.n; i++) {
        ct_tensor_rebind(l.tensors[i], m->slab + off);
        off += (size_t)l.tensors[i]->numel;
    }
    ct_named_free(&l);
}

/* ---- frozen prefixes ---------------------------------------------------------------------- */

/* True when m computes the same function in its current mode whatever the batch: no
 * parameter trains, and m and every module under it compute each sample on its own (no
 * active dropout, every BatchNorm on running statistics). */
static bool is_fixed_function(ct_module *m) {
    for (int i = 0; i < m->nparams; i++)
        if (m->params[i]->requires_grad) return false;
    if (m->ops->per_sample && !m->ops->per_sample(m)) return false;
    for (int i = 0; i < m->nchildren; i++)
        if (!is_fixed_function(m->children[i])) return false;
    return true;
}

/* How many of m's leading layers are fixed functions; *stopped once one is not. */
static int leading_fixed(ct_module *m, bool *stopped) {
    if (!is_sequential(m)) {
        if (is_fixed_function(m)) return 1;
        *stopped = true;
        return 0;
    }
    /* A Sequential's own parameters (a ViT's class token and positional embedding) are
     * used by its layers: while one of them trains, none of its layers is fixed. */
    for (int i = 0; i < m->nparams; i++)
        if (m->params[i]->requires_grad) {
            *stopped = true;
            return 0;
        }
    int k = 0;
    for (int i = 0; i < m->nchildren && !*stopped; i++) k += leading_fixed(m->children[i], stopped);
    return k;
}

int ct_module_frozen_prefix(ct_module *m) {
    if (!is_sequential(m)) return 0;
    bool stopped = false;
    int k = leading_fixed(m, &stopped);
    return k < ct_seq_num_layers(m) ? k : 0;
}
