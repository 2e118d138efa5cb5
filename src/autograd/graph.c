/* Grad mode, leaf flags and graph nodes. The node is the one place where an op's
 * participation in autograd is decided (ct_record). */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static _Thread_local bool grad_enabled = true;
static _Thread_local uint64_t next_seq;

bool ct_set_grad_enabled(bool on) {
    bool prev = grad_enabled;
    grad_enabled = on;
    return prev;
}

bool ct_is_grad_enabled(void) { return grad_enabled; }

bool ct_is_leaf(const ct_tensor *t) { return t->grad_fn == NULL; }
bool ct_requires_grad(const ct_tensor *t) { return t->requires_grad; }

void ct_set_requires_grad(ct_tensor *t, bool on) {
    CT_ASSERT(ct_is_leaf(t),
              "set_requires_grad: tensor %s is the result of op '%s', not a leaf; "
              "requires_grad can only be changed on leaves (use ct_detach first)",
              CT_SHAPE_STR(t), t->grad_fn->op);
    t->requires_grad = on;
}

ct_tensor *ct_grad(const ct_tensor *t) { return t->grad; }

void ct_zero_grad(ct_tensor *t) {
    if (t->grad) memset(t->grad->data, 0, (size_t)t->grad->numel * sizeof(float));
}

void ct_clear_grad(ct_tensor *t) {
    if (!t->grad) return;
    ct_tensor *g = t->grad;
    if (ct_tensor_is_external(g)) {
        ct_zero_grad(t);
        return;
    }
    t->grad = NULL;
    ct_release(g);
}

ct_tensor *ct_detach(ct_tensor *t) { return ct_view_raw(t, t->ndim, t->shape); }

void ct_set_grad_hook(ct_tensor *leaf, ct_grad_hook fn, void *ctx) {
    CT_ASSERT(ct_is_leaf(leaf), "set_grad_hook: tensor %s is not a leaf", CT_SHAPE_STR(leaf));
    leaf->grad_hook = fn;
    leaf->grad_hook_ctx = ctx;
}

void ct_set_grad_storage(ct_tensor *leaf, float *buf) {
    CT_ASSERT(ct_is_leaf(leaf), "set_grad_storage: tensor %s is not a leaf",
              CT_SHAPE_STR(leaf));
    size_t bytes = (size_t)leaf->numel * sizeof(float);
    if (!buf) {
        ct_release(leaf->grad);
        leaf->grad = NULL;
        return;
    }
    if (leaf->grad) {
        if (leaf->grad->data != buf) memmove(buf, leaf->grad->data, bytes);
        ct_release(leaf->grad);
    } else {
        memset(buf, 0, bytes);
    }
    leaf->grad = ct_own(ct_tensor_wrap(leaf->ndim, leaf->shape, buf));
}

/* ---- node lifetime ----------------------------------------------------------------- */

void ct__node_free_saved(ct_node *n) {
    for (int k = 0; k < n->nsaved; k++) {
        ct_release(n->saved[k]);
        CT_STAT_ADD(saved_tensors, -1);
        n->saved[k] = NULL;
    }
    n->nsaved = 0;
    if (n->aux) ct_free(n->aux, n->aux_bytes);
    n->aux = NULL;
    n->aux_bytes = 0;
}

/* Dropping a node drops its edges; a long chain is freed with an explicit worklist so
 * deep graphs cannot overflow the C stack. */
static void node_destroy(ct_node *n) {
    ct_node *work[64];
    int top = 0;
    work[top++] = n;
    while (top > 0) {
        ct_node *m = work[--top];
        ct__node_free_saved(m);
        if (CT_ENGINE(m)->gbuf) ct_release(CT_ENGINE(m)->gbuf);
        for (int k = 0; k < m->ninputs; k++) {
            if (m->leaf[k]) ct_release(m->leaf[k]);
            ct_node *c = m->next[k];
            if (c && --c->ref.refs == 0) {
                if (top < 64)
                    work[top++] = c;
                else
                    node_destroy(c); /* only recurses once the worklist is full */
            }
        }
        CT_STAT_ADD(graph_nodes, -1);
        ct_free(CT_ENGINE(m), sizeof(ct_node_engine));
    }
}

ct_node *ct_record(const char *op, ct_backward_fn bw, ct_tensor *out, int ninputs,
                   ct_tensor *const *inputs) {
    if (!grad_enabled) return NULL;
    bool any = false;
    for (int k = 0; k < ninputs; k++) any |= inputs[k] && inputs[k]->requires_grad;
    if (!any) return NULL;
    CT_ASSERT(ninputs <= CT_NODE_MAX_IN, "%s: too many inputs (%d)", op, ninputs);
    CT_ASSERT(ct_is_leaf(out) && !out->requires_grad, "%s: output already has a graph", op);

    ct_node_engine *e = ct_alloc(sizeof *e);
    memset(e, 0, sizeof *e);
    ct_node *n = &e->node;
    n->ref.refs = 1; /* held by out->grad_fn */
    n->ref.destroy = node_destroy;
    n->op = op;
    n->backward = bw;
    n->ninputs = ninputs;
    n->seq = next_seq++;
    n->out_ndim = out->ndim;
    memcpy(n->out_shape, out->shape, sizeof n->out_shape);
    for (int k = 0; k < ninputs; k++) {
        ct_tensor *x = inputs[k];
        if (!x || !x->requires_grad) continue;
        if (x->grad_fn) {
            n->next[k] = x->grad_fn;
            x->grad_fn->ref.refs++;
        } else {
            n->leaf[k] = x;
            ct_retain(x);
        }
    }
    CT_STAT_ADD(graph_nodes, 1);
    out->grad_fn = n;
    out->requires_grad = true;
    return n;
}

ct_tensor *ct_save(ct_node *n, ct_tensor *t) {
    CT_ASSERT(n->nsaved < CT_NODE_MAX_SAVED, "%s: too many saved tensors", n->op);
    /* An alias without graph metadata: saving an op's own output would otherwise form a
     * reference cycle through grad_fn. */
    ct_tensor *alias = ct_own(ct_view_raw(t, t->ndim, t->shape));
    n->saved[n->nsaved++] = alias;
    CT_STAT_ADD(saved_tensors, 1);
    return alias;
}

void *ct_node_aux(ct_node *n, size_t bytes) {
    CT_ASSERT(!n->aux, "%s: aux scratch allocated twice", n->op);
    n->aux = ct_alloc(bytes);
    n->aux_bytes = bytes;
    memset(n->aux, 0, bytes);
    return n->aux;
}

bool ct_node_needs(const ct_node *n, int i) {
    return i < n->ninputs && (n->next[i] != NULL || n->leaf[i] != NULL);
}

ct_tensor *ct_node_grad_in_fresh(ct_node *n, int i, bool *fresh) {
    *fresh = false;
    if (!ct_node_needs(n, i)) return NULL;
    ct_tensor **slot;
    int ndim;
    const int64_t *shape;
    if (n->leaf[i]) {
        slot = &n->leaf[i]->grad;
        ndim = n->leaf[i]->ndim;
        shape = n->leaf[i]->shape;
    } else {
        slot = &CT_ENGINE(n->next[i])->gbuf;
        ndim = n->next[i]->out_ndim;
        shape = n->next[i]->out_shape;
    }
    if (!*slot) {
        *slot = ct_own(ct_tensor_new(ndim, shape));
        *fresh = true;
#ifdef __SANITIZE_ADDRESS__
        /* Sanitizer builds: NaN instead of stale data, so an op that leaves part of a
         * fresh buffer unwritten fails its gradient tests instead of passing by luck. */
        for (int64_t k = 0; k < (*slot)->numel; k++) (*slot)->data[k] = NAN;
#endif
    }
    return *slot;
}

ct_tensor *ct_node_grad_in(ct_node *n, int i) {
    bool fresh;
    ct_tensor *g = ct_node_grad_in_fresh(n, i, &fresh);
    if (fresh) memset(g->data, 0, (size_t)g->numel * sizeof(float));
    return g;
}
