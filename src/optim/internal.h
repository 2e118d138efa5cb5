/* The optimizer's representation, shared by optim.c (step) and state.c (checkpoints).
 * Not public. */
#ifndef CT_OPTIM_INTERNAL_H
#define CT_OPTIM_INTERNAL_H

#include "optim.h"

typedef struct {
    ct_tensor *p; /* retained */
    char *name;   /* owned */
    int group;
    bool has_state;
    int64_t off;      /* its moments sit at slab[k * cap + off], k < nmom; -1: not placed */
    int64_t step;     /* updates applied (PyTorch's state["step"]) */
    unsigned loaded;  /* components seen since ct_optim_load_begin (LOADED_* bits) */
} ct__optim_param;

typedef struct {
    double lr, base_lr, weight_decay;
} ct__optim_group;

/* A run of consecutive parameters updated by one kernel call. */
typedef struct {
    float *p, *g;
    int64_t off, n;
    int group;
    int64_t step;
} ct__optim_segment;

struct ct_optim {
    ct_optim_config cfg;
    int nmom; /* moment buffers per element: SGD 0 or 1, Adam 2 */
    ct__optim_param *params;
    int nparams, params_cap;
    ct__optim_group *groups;
    int ngroups, groups_cap;
    /* The slab holds nmom regions of cap floats each; region k holds moment k of every
     * parameter with state, at that parameter's offset. */
    float *slab;
    int64_t cap, used;
    ct__optim_segment *segs; /* nparams entries, so a step never allocates them */
    int last_segments;
};

#define CT__LOADED_STEP 1u
#define CT__LOADED_MOM(k) (2u << (k))

/* The moment names for the optimizer's kind ("momentum_buffer" or "exp_avg", ...). */
const char *ct__optim_moment_name(const ct_optim *o, int k);
/* Gives parameter i (without state) zeroed state at the end of the slab, growing the slab
 * geometrically (checkpoint loading, where parameters arrive in any order). */
void ct__optim_append_state(ct_optim *o, int i);
/* Rebuilds the slab at exactly the size needed, every parameter with state placed in
 * registration order, so neighbours in registration order are neighbours in the slab.
 * Parameters with has_state but no place yet get zeroed moments. */
void ct__optim_relayout(ct_optim *o);
/* Drops all state (steps, moments, slab). */
void ct__optim_drop_state(ct_optim *o);

#endif
