/* ctrain optimizers: SGD (momentum, dampening, nesterov), Adam and AdamW with PyTorch 1.13's
 * update rules, parameter groups, learning-rate schedules and checkpointable state.
 *
 * An optimizer works on leaf tensors and their .grad, not on modules. It keeps state only
 * for parameters that have received a gradient: a parameter whose grad is NULL (or that
 * does not require grad) is skipped by ct_optim_step and never gets state. The moments of
 * all parameters live in one flat slab, laid out in registration order, and a step runs
 * one fused loop per "segment": a run of consecutive parameters whose data, grads and
 * state are each adjacent in memory. Parameters packed into one slab with grads pointed
 * into a matching slab (ct_set_grad_storage) therefore update in a single loop. */
#ifndef CT_OPTIM_H
#define CT_OPTIM_H

#include "../autograd/autograd.h"

/* ---- configuration ----------------------------------------------------------------- */

typedef enum { CT_OPTIM_SGD, CT_OPTIM_ADAM, CT_OPTIM_ADAMW } ct_optim_kind;

/* Hyperparameters are doubles, as PyTorch keeps them; the kernels run in float32 with
 * scalars derived in double (bias corrections, 1 - lr * wd) and then rounded, as PyTorch
 * does. lr and weight_decay are the defaults that groups inherit. */
typedef struct {
    ct_optim_kind kind;
    double lr;
    /* SGD and Adam: L2, g += wd * p before the update. AdamW: decoupled, p *= 1 - lr * wd. */
    double weight_decay;
    double momentum;  /* SGD: 0 keeps no state besides the step count */
    double dampening; /* SGD: buf = momentum * buf + (1 - dampening) * g */
    bool nesterov;    /* SGD: needs momentum > 0 and dampening == 0, as in PyTorch */
    double beta1, beta2, eps; /* Adam, AdamW */
} ct_optim_config;

/* PyTorch's defaults for each optimizer with the given lr and weight decay (dampening 0;
 * betas (0.9, 0.999), eps 1e-8). Fields may be changed before ct_optim_new. */
ct_optim_config ct_sgd_config(double lr, double momentum, double weight_decay, bool nesterov);
ct_optim_config ct_adam_config(double lr, double weight_decay);  /* PyTorch: lr 1e-3, wd 0 */
ct_optim_config ct_adamw_config(double lr, double weight_decay); /* PyTorch: lr 1e-3, wd 1e-2 */

/* ---- lifetime, groups, step -------------------------------------------------------- */

typedef struct ct_optim ct_optim;

/* A new optimizer with no groups; invalid hyperparameters abort. Free with ct_optim_free. */
ct_optim *ct_optim_new(ct_optim_config cfg);
/* Releases the parameters it retained and frees the state. NULL is a no-op. */
void ct_optim_free(ct_optim *o);

/* Passing this as a group's lr or weight_decay takes the config's value. */
#define CT_OPTIM_DEFAULT (-1.0)

/* Adds a group of n leaf tensors params[i] named names[i] (e.g. "0.weight"; copied) with
 * its own lr and weight decay, and returns the group's index. May be called between steps
 * (staged unfreezing). The optimizer retains each parameter until ct_optim_free. A tensor
 * or a name already in the optimizer aborts, as does a non-leaf. */
int ct_optim_add_group(ct_optim *o, int n, const char *const *names, ct_tensor *const *params,
                       double lr, double weight_decay);

int ct_optim_ngroups(const ct_optim *o);
double ct_optim_lr(const ct_optim *o, int group);      /* the lr the next step uses */
double ct_optim_base_lr(const ct_optim *o, int group); /* the lr the group was added with */
void ct_optim_set_lr(ct_optim *o, int group, double lr);
double ct_optim_weight_decay(const ct_optim *o, int group);

/* One update of every parameter that requires grad and has a gradient. Parameters seen
 * with a gradient for the first time get zeroed state here (the only allocation a step
 * makes); each parameter counts its own steps, as PyTorch's state["step"] does. */
void ct_optim_step(ct_optim *o);
/* Zeroes every existing .grad in place, keeping external grad storage (DDP buckets). */
void ct_optim_zero_grad(ct_optim *o);

/* ---- introspection (tests, logs) --------------------------------------------------- */

int ct_optim_state_params(const ct_optim *o);  /* parameters that have state */
size_t ct_optim_state_bytes(const ct_optim *o); /* bytes of moment buffers in use */
int64_t ct_optim_param_steps(const ct_optim *o, const char *name); /* -1: unknown or no state */
int ct_optim_last_segments(const ct_optim *o); /* fused loops the last ct_optim_step ran */

/* ---- learning-rate schedules ------------------------------------------------------- */

typedef enum { CT_SCHED_NONE, CT_SCHED_STEP, CT_SCHED_COSINE } ct_sched_kind;

/* With t = epoch (or the step when per_step), step 0-based, the lr for the update that
 * is about to run is
 *   NONE:   base_lr
 *   STEP:   base_lr * gamma^floor(t / step_size)                         (PyTorch StepLR)
 *   COSINE: min_lr + (base_lr - min_lr) * (1 + cos(pi * min(t, total) / total)) / 2
 *           (CosineAnnealingLR's closed form, held at min_lr after `total`)
 * times the linear warmup factor (step + 1) / warmup_steps while step < warmup_steps
 * (PyTorch LinearLR(start_factor = 1 / warmup_steps, total_iters = warmup_steps - 1)). */
typedef struct {
    ct_sched_kind kind;
    bool per_step;        /* t counts steps instead of epochs */
    int64_t step_size;    /* STEP, > 0 */
    double gamma;         /* STEP */
    int64_t total;        /* COSINE: T_max, > 0 */
    double min_lr;        /* COSINE: eta_min */
    int64_t warmup_steps; /* 0: no warmup */
} ct_schedule;

/* The pure function above; a malformed schedule aborts. */
double ct_schedule_lr(const ct_schedule *s, double base_lr, int64_t step, int64_t epoch);
/* Sets every group's lr to ct_schedule_lr(s, its base lr, step, epoch). */
void ct_optim_apply_schedule(ct_optim *o, const ct_schedule *s, int64_t step, int64_t epoch);

/* ---- checkpoint state -------------------------------------------------------------- */

/* The state is a set of named float tensors, "optim.<param>.momentum_buffer" (SGD with
 * momentum) or "optim.<param>.exp_avg" and "optim.<param>.exp_avg_sq" (Adam, AdamW), and
 * named scalars, exact in double: "optim.<param>.step" for every parameter with state and
 * "optim.group.<g>.lr" for every group. Visitors return CT_OK to go on. */
typedef ct_status (*ct_optim_tensor_fn)(void *ctx, const char *name, const float *data,
                                        int64_t numel);
typedef ct_status (*ct_optim_scalar_fn)(void *ctx, const char *name, double value);

/* Visits each parameter with state in registration order (its tensors, then its step),
 * then the group lrs; either visitor may be NULL. data is borrowed and valid until the
 * next step or load. Returns the first non-OK status a visitor returned, or CT_OK. */
ct_status ct_optim_state_foreach(const ct_optim *o, ct_optim_tensor_fn tf,
                                 ct_optim_scalar_fn sf, void *ctx);

/* Restoring: ct_optim_load_begin drops all state; then each named tensor/scalar is given
 * (in any order; data is copied) to an optimizer whose groups were added as in the saved
 * run; ct_optim_load_end checks every parameter named got its step and all its tensors.
 * Unknown names, a wrong numel or a bad value return CT_ERR_SHAPE / CT_ERR_FORMAT with a
 * message naming the entry. A restored optimizer then steps bit-identically to the run
 * that saved it. */
void ct_optim_load_begin(ct_optim *o);
ct_status ct_optim_load_tensor(ct_optim *o, const char *name, const float *data, int64_t numel);
ct_status ct_optim_load_scalar(ct_optim *o, const char *name, double value);
ct_status ct_optim_load_end(ct_optim *o);

#endif
