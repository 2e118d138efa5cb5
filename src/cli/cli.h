/* Internal header of the ctrain command line (not installed). */
#ifndef CT_CLI_H
#define CT_CLI_H

#include <jansson.h>

#include "ctrain.h"
#include "parallel/parallel.h"
#include "io/io.h"

#include "config.h"

/* Everything a command sets up from its config. */
typedef struct {
    const char *cfg_path;
    ct_config cfg;
    ct_dist d;
    ct_dataset train, test;
    bool have_train;
    ct_module *model;
    int64_t classes;
    ct_loader_opts eval_opts;
    /* Per split (ct_split), as loaded before class selection: the label file, its largest
     * label and the first sample holding it. The model's class count comes from these, so
     * a stray label is named by file and sample rather than as a shape mismatch later. */
    struct {
        char file[CT_CFG_STR + 64];
        int64_t max, sample;
    } labels[2];
} ct_run;

/* ct_dist_agree, and the lowest failing rank prints its message once: every rank returns
 * non-OK if any rank's st is not OK, so set-up errors end all ranks together. */
ct_status ct_run_check(const ct_dist *d, ct_status st);
/* A loader's log function (ctx: the ct_dist): one stderr line with the rank. */
void ct_run_log(void *ctx, const char *msg);
/* Loads the config (file + overrides), the data sets (the training set only when
 * with_train) and builds the model (init_from, freeze, frozen-BN policy, packing). */
ct_status ct_run_setup(ct_run *r, const char *cfg_path, int noverrides, char *const *overrides,
                       bool with_train);
/* The part of ct_run_setup after the config: r->cfg, r->cfg_path and r->d are filled. */
ct_status ct_run_build(ct_run *r, bool with_train);
void ct_run_free(ct_run *r);
/* ct_st_load of a checkpoint (or init_from file) that is then checked to hold only finite
 * values, unless model.allow_nonfinite: NaN/Inf weights or optimizer state would otherwise
 * load silently and train on as NaN. The message names the file, tensor and element. */
ct_status ct_run_open_checkpoint(const ct_run *r, const char *path, ct_st_file **f);
/* model.name = vit*: builds r->model from the ViT keys and the test set's samples (model_vit.c). */
ct_status ct_run_build_vit(ct_run *r, ct_rng *rng);
/* For a checkpoint that does not fit the model (st == CT_ERR_SHAPE): appends to the message
 * where the model's class count came from (the label file and sample of the largest test
 * label), since a stray label there shows up as a classifier of the wrong size. Returns st. */
ct_status ct_run_explain_classes(const ct_run *r, ct_status st);
/* mkdir -p; the message names the directory that could not be made. */
ct_status ct_mkdir_p(const char *dir);

/* A training run's checkpoint files (checkpoint.c). Rank 0: saves the model, optimizer and
 * progress as <output.dir>/ckpt-epochNNNN.safetensors (epoch_step 0, after epochs_done
 * epochs) or, mid-epoch, ckpt-epochNNNN-stepSSSSSS.safetensors named after the epoch it is
 * in, so names sort in training order; then points `latest` at it and keeps only the newest
 * output.keep files. rank_state: ct_midepoch_gather's string, or NULL. */
ct_status ct_run_save_checkpoint(const ct_run *r, const ct_optim *o, int epochs_done, int64_t step,
                                 int64_t epoch_step, const char *rank_state);
/* Opens the checkpoint to resume from into *f and *p, its path into path (n bytes): the one
 * <output.dir>/latest names or, when that one is unusable, the newest valid other one (with
 * a warning from rank 0). The error says why none can be used. */
ct_status ct_run_open_resume(const ct_run *r, char *path, size_t n, ct_st_file **f, ct_progress *p);

/* A training run's output directory (output.c). Rank 0's part of setting it up: output.dir
 * made, a killed run's temporary files removed, config.ini and classes.txt written. */
ct_status ct_run_prepare_output(ct_run *r);
/* A run that stopped after logging epochs its newest checkpoint does not hold would list
 * them twice once resumed: keeps only the metrics.jsonl lines (path) up to epoch upto. */
void ct_run_trim_metrics(const char *path, int upto);

/* What the training loop reads (features.c). */
typedef struct {
    ct_dataset train_feat, test_feat; /* the feature cache, when it is on */
    const ct_dataset *train, *test;   /* the run's data sets, or the cache */
    ct_loader_opts lo, eval_lo;       /* for train and test */
    int prefix, nlayers;              /* layers [0, prefix) are in the cache and do not run */
} ct_train_inputs;
/* Collective: the training loader's options (normalisation and augmentation) and, when the
 * model has a frozen prefix that is a fixed function of the input and its features fit
 * train.feature_cache_max_mb, the feature cache. The struct must not move afterwards
 * (train and test may point into it). */
ct_status ct_train_inputs_setup(ct_run *r, ct_train_inputs *in);
void ct_train_inputs_free(ct_train_inputs *in);

/* Preemption (preempt.c). The exit status of every rank of a preempted run: EX_TEMPFAIL
 * of sysexits.h ("try again later"), distinct from failures (1, or 134 from an abort). */
#define CT_EXIT_PREEMPTED 75
/* The exit status of `ctrain train` when the configuration is invalid (EX_CONFIG of
 * sysexits.h): a bad key or value fails again however often it is relaunched, so
 * `ctrun --restarts` does not relaunch it. Other failures exit 1 (or 134 from an abort). */
#define CT_EXIT_CONFIG 78
/* Installs the handlers for train.preempt_signals; they only set a flag and arm an alarm of
 * train.preempt_grace_s seconds that ends the process with CT_EXIT_PREEMPTED. */
ct_status ct_preempt_install(const ct_config *c);
void ct_preempt_uninstall(void);
/* Collective, at a step boundary: true on every rank if any rank was signalled. */
bool ct_preempt_agree(const ct_dist *d, ct_ddp *ddp, int64_t step);

/* Mid-epoch checkpoints (midepoch.c). */
typedef struct {
    int64_t at;          /* steps of the resumed epoch already taken; 0 = a boundary */
    bool exact;          /* this rank's state was in the checkpoint (same number of ranks) */
    int world;           /* the ranks that wrote it */
    double loss_sum;     /* this rank's epoch loss sum so far */
    int64_t skipped;     /* steps skipped for a non-finite loss so far */
    unsigned char *state;
} ct_midepoch;
/* Collective: every rank's own state (loss sum, skipped steps, dropout streams) as the hex
 * string ct_progress.rank_state holds, on rank 0 (malloc'd); NULL on the other ranks. */
char *ct_midepoch_gather(const ct_dist *d, ct_module *m, double loss_sum, int64_t skipped);
/* This rank's part of a mid-epoch checkpoint's p (read from path) into out; out->exact is
 * false when it was written by another number of ranks. CT_ERR_FORMAT naming path if the
 * state is malformed. */
ct_status ct_midepoch_take(const ct_dist *d, ct_module *m, const ct_progress *p, const char *path,
                           ct_midepoch *out);
/* After the epoch's re-seeding and ct_loader_start: restores the dropout streams and draws
 * the s->at batches already taken, so the loader stands where the checkpoint was written. */
void ct_midepoch_resume(ct_midepoch *s, ct_module *m, ct_loader *l);
void ct_midepoch_free(ct_midepoch *s);

/* Commands; each returns a process exit status. */
int ct_cmd_train(ct_run *r);
/* `ctrain latest`: only r->cfg is filled and no MPI runs. Prints the checkpoint that
 * train.resume = true would resume from (the one `latest` names, else the newest valid one)
 * and returns 0; prints nothing (and returns 0) if there is none to resume from. */
int ct_cmd_latest(ct_run *r);
int ct_cmd_eval(ct_run *r, const char *checkpoint);
/* r->cfg and r->d are filled (no data set or model): evaluates every job of [sweep]. */
int ct_cmd_sweep(ct_run *r);

/* JSON output (event.c): every {"event":...} line and metrics.jsonl record is built with
 * these and written by ct_json_emit, so keys keep the order they were added in. */
/* A new object: {"event": event}, or {} when event is NULL (a metrics record). */
json_t *ct_json_record(const char *event);
void ct_json_int(json_t *o, const char *key, int64_t v);
void ct_json_str(json_t *o, const char *key, const char *s);
/* v rounded as printf's fmt (e.g. "%.6f") rounds it; a non-finite v is null. */
void ct_json_real(json_t *o, const char *key, double v, const char *fmt);
/* Writes o as one compact line to f (skipped when f is NULL), flushes, and frees o. */
void ct_json_emit(json_t *o, FILE *f);
/* Reads integer `key` of the JSON object on line; false if the line is no such object. */
bool ct_json_int_field(const char *line, const char *key, int64_t *out);

/* Progress output on rank 0: a bar on a TTY, plain lines elsewhere. */
typedef struct {
    bool tty;
    double t_start, t_last;
    int64_t total_steps, log_every;
    int64_t samples;
} ct_progress_bar;
void ct_progress_start(ct_progress_bar *p, int64_t total_steps, int64_t log_every);
void ct_progress_update(ct_progress_bar *p, int epoch, int64_t step_in_epoch, int64_t steps,
                        double loss, int64_t global_samples);
void ct_progress_end(ct_progress_bar *p);
double ct_now(void);
/* v as a JSON number with that many decimals, or "null" when v is NaN or infinite (JSON has
 * no such numbers; printf's "nan" made the line unreadable). buf holds 32 bytes; returns buf. */
const char *ct_json_num(char buf[32], double v, int decimals);

#endif
