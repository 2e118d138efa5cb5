/* The reverse-mode engine. It discovers the graph below the root, counts how many
 * consumers each node and leaf has, then runs nodes latest-first (by creation order) as
 * soon as all their consumers are done, so each gradient is complete when it is used and
 * a leaf's hook fires the moment its last contribution lands. */
#include "internal.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* Thread-local scratch that keeps its capacity between calls (no steady-state mallocs). */
typedef struct {
    void **v;
    size_t n, cap;
} vec;

static _Thread_local vec nodes, leaves, stack, heap;
static pthread_once_t exit_once = PTHREAD_ONCE_INIT;

/* At the exit of a thread that ran backward (thread.c calls it). */
static void free_scratch(void) {
    vec *all[] = {&nodes, &leaves, &stack, &heap};
    for (int i = 0; i < 4; i++) {
        free(all[i]->v);
        *all[i] = (vec){0};
    }
}

static void register_exit(void) { ct__thread_atexit(free_scratch); }

static void push(vec *a, void *p) {
    if (a->n == a->cap) {
        if (!a->cap) { /* this thread's first scratch: its exit frees it */
            pthread_once(&exit_once, register_exit);
            ct__thread_register();
        }
        a->cap = a->cap ? a->cap * 2 : 256;
        a->v = ct_realloc(a->v, a->cap * sizeof *a->v);
    }
    a->v[a->n++] = p;
}

/* Max-heap on seq: the most recently created ready node runs first, as in PyTorch. */
static void heap_push(ct_node *n) {
    push(&heap, n);
    size_t i = heap.n - 1;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (((ct_node *)heap.v[p])->seq >= n->seq) break;
        heap.v[i] = heap.v[p];
        i = p;
    }
    heap.v[i] = n;
}

static ct_node *heap_pop(void) {
    ct_node *top = heap.v[0];
    ct_node *last = heap.v[--heap.n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= heap.n) break;
        if (c + 1 < heap.n && ((ct_node *)heap.v[c + 1])->seq > ((ct_node *)heap.v[c])->seq) c++;
        if (((ct_node *)heap.v[c])->seq <= last->seq) break;
        heap.v[i] = heap.v[c];
        i = c;
    }
    if (heap.n > 0) heap.v[i] = last;
    return top;
}

static void leaf_done(ct_tensor *x) {
    if (--x->pending == 0 && x->grad_hook) x->grad_hook(x, x->grad_hook_ctx);
}

static void discover(ct_node *root) {
    nodes.n = leaves.n = stack.n = 0;
    CT_ENGINE(root)->visited = true;
    push(&stack, root);
    while (stack.n > 0) {
        ct_node *n = stack.v[--stack.n];
        CT_ASSERT(!CT_ENGINE(n)->released,
                  "backward: trying to backward through the graph a second time (op '%s'): "
                  "its saved tensors were freed by the first backward; pass retain_graph",
                  n->op);
        push(&nodes, n);
        for (int k = 0; k < n->ninputs; k++) {
            ct_tensor *x = n->leaf[k];
            if (x) {
                if (x->pending++ == 0) push(&leaves, x);
            }
            ct_node *c = n->next[k];
            if (!c) continue;
            CT_ENGINE(c)->deps++;
            if (!CT_ENGINE(c)->visited) {
                CT_ENGINE(c)->visited = true;
                push(&stack, c);
            }
        }
    }
}

void ct_backward_ex(ct_tensor *root, const ct_tensor *grad, bool retain_graph) {
    CT_ASSERT(root->requires_grad,
              "backward: tensor %s does not require grad and has no grad_fn (was it computed "
              "under no_grad, or from tensors with requires_grad=false?)",
              CT_SHAPE_STR(root));
    CT_ASSERT(grad || root->numel == 1,
              "backward: grad can be implicitly created only for scalar outputs, got %s",
              CT_SHAPE_STR(root));
    CT_ASSERT(!grad || ct_same_shape(grad, root), "backward: grad %s does not match root %s",
              CT_SHAPE_STR(grad), CT_SHAPE_STR(root));
    bool prev_mode = ct_set_grad_enabled(false);
    size_t mark = ct_scope_begin();

    if (!root->grad_fn) { /* a leaf root: its gradient is just `grad` */
        if (!root->grad) root->grad = ct_own(ct_zeros(root->ndim, root->shape));
        for (int64_t i = 0; i < root->numel; i++) root->grad->data[i] += grad ? grad->data[i] : 1;
        root->pending = 1;
        leaf_done(root);
    } else {
        ct_node *r = root->grad_fn;
        discover(r);
        ct_node_engine *e = CT_ENGINE(r);
        if (!e->gbuf) e->gbuf = ct_own(ct_zeros(r->out_ndim, r->out_shape));
        for (int64_t i = 0; i < root->numel; i++) e->gbuf->data[i] += grad ? grad->data[i] : 1;
        heap.n = 0;
        heap_push(r);
        while (heap.n > 0) {
            ct_node *n = heap_pop();
            size_t m = ct_scope_begin();
            n->backward(n, CT_ENGINE(n)->gbuf);
            ct_scope_end(m);
            ct_release(CT_ENGINE(n)->gbuf);
            CT_ENGINE(n)->gbuf = NULL;
            for (int k = 0; k < n->ninputs; k++) {
                if (n->leaf[k]) leaf_done(n->leaf[k]);
                ct_node *c = n->next[k];
                if (c && --CT_ENGINE(c)->deps == 0) heap_push(c);
            }
        }
        for (size_t i = 0; i < nodes.n; i++) {
            ct_node *n = nodes.v[i];
            CT_ENGINE(n)->visited = false;
            if (!retain_graph) {
                /* Free what backward needed; the structure stays so a second backward
                 * can report the misuse instead of silently doing nothing. */
                ct__node_free_saved(n);
                CT_ENGINE(n)->released = true;
            }
        }
    }
    ct_scope_end(mark);
    ct_set_grad_enabled(prev_mode);
}

void ct_backward(ct_tensor *root) { ct_backward_ex(root, NULL, false); }
