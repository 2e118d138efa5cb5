/* Internal to src/autograd (not installed): what the engine keeps per node beyond the
 * public ct_node that ops read and write. */
#ifndef CT_AUTOGRAD_INTERNAL_H
#define CT_AUTOGRAD_INTERNAL_H

#include "../core/internal.h"
#include "autograd.h"

/* Every node is allocated as one of these by ct_record, so a ct_node * is also one. */
typedef struct {
    ct_node node; /* first */
    ct_tensor *gbuf; /* the output's gradient, accumulated during backward */
    int deps;        /* consumers still to run before this node can */
    bool visited;
    bool released; /* saved tensors freed after backward (a second backward is an error) */
} ct_node_engine;
#define CT_ENGINE(n) ((ct_node_engine *)(n))

/* Drops the node's saved tensors and aux scratch (engine and node teardown). */
void ct__node_free_saved(ct_node *n);

#endif
