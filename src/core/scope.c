/* Automatic release scopes. Every new tensor is appended to a thread-local list; a scope
 * is a mark in that list, and closing it releases everything after the mark. The list
 * keeps its capacity, so steady-state steps make no allocations here either. */
#include "internal.h"

#include <stdlib.h>

#define MAX_DEPTH 256

typedef struct {
    ct_tensor *t;
    int depth;
} kept;

static _Thread_local ct_tensor **items;
static _Thread_local size_t n_items, cap_items;
static _Thread_local size_t marks[MAX_DEPTH];
static _Thread_local int depth;
static _Thread_local kept *keeps;
static _Thread_local size_t n_keeps, cap_keeps;

static void *grow(void *p, size_t *cap, size_t elem) {
    *cap = *cap ? *cap * 2 : 256;
    p = ct_realloc(p, *cap * elem);
    return p;
}

static void scope_add(ct_tensor *t) {
    if (n_items == cap_items) {
        ct__thread_register(); /* the list is this thread's: its exit frees it */
        items = grow(items, &cap_items, sizeof *items);
    }
    items[n_items++] = t;
}

size_t ct_scope_begin(void) {
    CT_ASSERT(depth < MAX_DEPTH, "scope: nesting deeper than %d", MAX_DEPTH);
    marks[depth++] = n_items;
    return n_items;
}

void ct_scope_end(size_t mark) {
    CT_ASSERT(depth > 0 && marks[depth - 1] == mark,
              "scope: scopes closed out of order (mark %zu)", mark);
    while (n_items > mark) ct_release(items[--n_items]);
    /* Tensors kept in this scope now belong to the enclosing one; the reference taken by
     * ct_scope_keep becomes that scope's reference. */
    while (n_keeps > 0 && keeps[n_keeps - 1].depth == depth) scope_add(keeps[--n_keeps].t);
    depth--;
}

ct_tensor *ct_own(ct_tensor *t) {
    size_t lo = depth > 0 ? marks[depth - 1] : 0;
    for (size_t i = n_items; i > lo; i--) {
        if (items[i - 1] == t) {
            items[i - 1] = items[--n_items];
            return t;
        }
    }
    ct_fatal("own: tensor %s is not in the innermost scope", CT_SHAPE_STR(t));
}

ct_tensor *ct_scope_adopt(ct_tensor *t) {
    scope_add(t);
    return t;
}

void ct_scope_shutdown(void) {
    CT_ASSERT(depth == 0, "scope_shutdown: %d scopes still open", depth);
    while (n_items > 0) ct_release(items[--n_items]);
    free(items);
    items = NULL;
    cap_items = 0;
    free(keeps);
    keeps = NULL;
    cap_keeps = n_keeps = 0;
}

void ct__scope_thread_exit(void) {
    while (n_keeps > 0) ct_release(keeps[--n_keeps].t); /* the references ct_scope_keep took */
    depth = 0;
    ct_scope_shutdown();
}

ct_tensor *ct_scope_keep(ct_tensor *t) {
    CT_ASSERT(depth > 0, "scope_keep: no scope is open");
    ct_retain(t);
    if (n_keeps == cap_keeps) keeps = grow(keeps, &cap_keeps, sizeof *keeps);
    keeps[n_keeps++] = (kept){t, depth};
    return t;
}

