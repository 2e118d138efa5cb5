/* ctrain autograd: thread-local grad mode, requires_grad on leaves, graph nodes recorded
 * by ops, and the reverse-mode engine with grad-ready hooks. Semantics follow PyTorch. */
#ifndef CT_AUTOGRAD_H
#define CT_AUTOGRAD_H

#include "../core/core.h"

/* ---- grad mode --------------------------------------------------------------------- */

/* Sets this thread's grad mode and returns the previous one. */
bool ct_set_grad_enabled(bool on);
bool ct_is_grad_enabled(void);

/* CT_NO_GRAD { ... } runs the block with grad mode off and restores the previous mode at
 * its end; CT_ENABLE_GRAD { ... } the opposite. Do not `return` or `break` out of them. */
#define CT_GRAD_MODE_(on)                                                                 \
    for (bool ct__prev = ct_set_grad_enabled(on), ct__go = true; ct__go;                  \
         ct_set_grad_enabled(ct__prev), ct__go = false)
#define CT_NO_GRAD CT_GRAD_MODE_(false)
#define CT_ENABLE_GRAD CT_GRAD_MODE_(true)

/* ---- requires_grad and .grad -------------------------------------------------------- */

/* Leaves only: setting it on an op result is a fatal error, as in PyTorch. */
void ct_set_requires_grad(ct_tensor *t, bool on);
bool ct_requires_grad(const ct_tensor *t);
bool ct_is_leaf(const ct_tensor *t);
/* The leaf's accumulated gradient, or NULL if backward has not reached it. Borrowed. */
ct_tensor *ct_grad(const ct_tensor *t);
/* Zeroes .grad in place if it exists (keeps external storage in place). */
void ct_zero_grad(ct_tensor *t);
/* Drops .grad (PyTorch's set_to_none) unless it lives in external storage. */
void ct_clear_grad(ct_tensor *t);
/* A new tensor sharing t's data, with no graph and requires_grad=false. */
ct_tensor *ct_detach(ct_tensor *t);

/* ---- hooks for the distributed layer ------------------------------------------------ */

/* fn(leaf, ctx) fires once per backward, when the leaf's gradient is final, in the order
 * gradients become ready. NULL removes the hook. */
void ct_set_grad_hook(ct_tensor *leaf, ct_grad_hook fn, void *ctx);
/* Makes leaf->grad a view of `buf` (numel floats owned by the caller, e.g. a DDP bucket).
 * The current gradient, if any, is copied in; otherwise buf is zeroed. buf = NULL drops
 * .grad altogether (a parameter that was frozen). */
void ct_set_grad_storage(ct_tensor *leaf, float *buf);

/* ---- backward ---------------------------------------------------------------------- */

/* root must be a scalar that requires grad; its gradient is 1. */
void ct_backward(ct_tensor *root);
/* grad: the gradient of root (NULL means ones for a scalar). retain_graph keeps saved
 * tensors so a second backward through the same graph is allowed. */
void ct_backward_ex(ct_tensor *root, const ct_tensor *grad, bool retain_graph);

/* ---- graph nodes (used by ops) ------------------------------------------------------ */

#define CT_NODE_MAX_IN 4
#define CT_NODE_MAX_SAVED 4

/* Accumulates (+=) into the gradients of the inputs it needs, from gout (the gradient
 * of the node's output), or writes (=) a buffer ct_node_grad_in_fresh reports fresh.
 * Runs with grad mode off, inside its own release scope. */
typedef void (*ct_backward_fn)(ct_node *n, const ct_tensor *gout);

struct ct_node {
    ct_node_ref ref;
    const char *op;
    ct_backward_fn backward;
    int ninputs;
    ct_node *next[CT_NODE_MAX_IN];   /* the input's grad_fn, when it has one */
    ct_tensor *leaf[CT_NODE_MAX_IN]; /* the input, when it is a leaf that requires grad */
    ct_tensor *saved[CT_NODE_MAX_SAVED]; /* data aliases; no graph references */
    int nsaved;
    float f[4];   /* op parameters */
    int64_t i[8];
    void *aux;    /* op-owned scratch (e.g. argmax indices), freed with ct_free */
    size_t aux_bytes;
    int out_ndim;
    int64_t out_shape[CT_MAX_DIMS];
    uint64_t seq; /* creation order; the engine runs later nodes first */
    /* the engine's own per-node state follows in memory (src/autograd/internal.h) */
};

/* Records a node for `out` if grad mode is on and some input requires grad; then `out`
 * requires grad and gets the node as grad_fn. Returns NULL when nothing is recorded, so
 * the op saves nothing. inputs may contain NULL (an absent optional input). */
ct_node *ct_record(const char *op, ct_backward_fn bw, ct_tensor *out, int ninputs,
                   ct_tensor *const *inputs);
#define CT_RECORD(op, bw, out, ...)                                                       \
    ct_record((op), (bw), (out), (int)(sizeof((ct_tensor *[]){__VA_ARGS__}) /             \
                                       sizeof(ct_tensor *)),                             \
              (ct_tensor *[]){__VA_ARGS__})
/* Saves t's data for backward and returns the alias (which holds no graph reference). */
ct_tensor *ct_save(ct_node *n, ct_tensor *t);
/* Allocates the node's aux scratch (zeroed) and returns it. */
void *ct_node_aux(ct_node *n, size_t bytes);
/* True when input i needs a gradient. */
bool ct_node_needs(const ct_node *n, int i);
/* The tensor to accumulate input i's gradient into, or NULL if it is not needed. */
ct_tensor *ct_node_grad_in(ct_node *n, int i);
/* ct_node_grad_in without the zero fill of a first contribution (zeroing every gradient
 * buffer was ~5% of a CNN step). *fresh = true: the buffer is new and UNINITIALISED, and
 * the op must write (=) every element; false: it holds earlier contributions (another
 * consumer's, or a leaf's .grad from an earlier backward) and the op accumulates (+=).
 * Only for ops that write the whole gradient in one pass; the rest use ct_node_grad_in. */
ct_tensor *ct_node_grad_in_fresh(ct_node *n, int i, bool *fresh);

#endif
