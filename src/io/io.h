/* ctrain io: atomic file writes, safetensors read/write, and the INI run config.
 * Depends on core only. Every function that touches the outside world returns a ct_status
 * and leaves a message naming the file (and the key and line, for configs) in
 * ct_last_error(). */
#ifndef CT_IO_H
#define CT_IO_H

#include <stdio.h>

#include "../nn/nn.h"
#include "../optim/optim.h"

/* ---- atomic writes ----------------------------------------------------------------- */

/* Fills an open file; returns CT_OK or an error status (with ct_error's message). */
typedef ct_status (*ct_write_fn)(FILE *f, void *ctx);

/* Writes `path` so that it either keeps its old content or has the complete new one:
 * fn fills "<path>.tmp.<pid>" in the same directory, which is flushed, fsynced and renamed
 * onto path, then the directory is fsynced. On any failure (fn's included) the temporary
 * file is removed, path is untouched, and the error message names path. */
ct_status ct_write_atomic(const char *path, ct_write_fn fn, void *ctx);
/* ct_write_atomic of the n bytes at data. */
ct_status ct_write_file_atomic(const char *path, const void *data, size_t n);

/* ---- safetensors --------------------------------------------------------------------- */

/* One tensor of a safetensors file: row-major, little-endian, numel * dtype-size bytes. */
typedef struct {
    const char *name;
    ct_dtype dtype;
    int ndim; /* 0 for a scalar (one element) */
    int64_t shape[CT_MAX_DIMS];
    const void *data; /* not owned by the entry */
} ct_st_entry;

int64_t ct_st_numel(const ct_st_entry *e); /* product of the shape (1 when ndim == 0) */
size_t ct_st_nbytes(const ct_st_entry *e); /* numel * dtype size */
/* An F32 entry viewing t's data (not copied: t must outlive the save). */
ct_st_entry ct_st_from_tensor(const char *name, const ct_tensor *t);

typedef struct {
    const char *key, *value;
} ct_st_meta;

/* Atomically writes n entries and nmeta string pairs ("__metadata__") to path. The header
 * lists entries in the given order; the data is laid out largest element size first (stable)
 * so every tensor is aligned, and the header is padded with spaces to a multiple of 8.
 * Bad entries (empty/duplicate names, bad dtype/shape, NULL data) are CT_ERR_ARG. */
ct_status ct_st_save(const char *path, const ct_st_entry *entries, int n, const ct_st_meta *meta,
                     int nmeta);

/* A loaded safetensors file; every pointer it hands out lives until ct_st_free. */
typedef struct ct_st_file ct_st_file;

/* Reads and validates path (sizes, JSON, dtypes, shapes vs offsets, offsets inside the data
 * and not overlapping); on success *out owns the file's contents, else *out = NULL and the
 * message names path and what is wrong (CT_ERR_IO or CT_ERR_FORMAT). */
ct_status ct_st_load(const char *path, ct_st_file **out);
void ct_st_free(ct_st_file *f); /* NULL is fine */

const char *ct_st_path(const ct_st_file *f);
int ct_st_count(const ct_st_file *f);                 /* entries, in header order */
const ct_st_entry *ct_st_at(const ct_st_file *f, int i); /* 0 <= i < count */
const ct_st_entry *ct_st_find(const ct_st_file *f, const char *name); /* NULL if absent */
int ct_st_meta_count(const ct_st_file *f);
ct_st_meta ct_st_meta_at(const ct_st_file *f, int i);               /* 0 <= i < meta count */
const char *ct_st_meta_get(const ct_st_file *f, const char *key); /* NULL if absent */
/* Copies entry `name` into dst; CT_ERR_SHAPE (naming file, entry and both shapes) if it is
 * missing, not F32, or shaped differently from dst. */
ct_status ct_st_copy_f32(const ct_st_file *f, const char *name, ct_tensor *dst);

/* ---- INI run config ------------------------------------------------------------------ */

/* Capacity of string values, including the terminator: with "name = " it fits one line of
 * inih's 200-byte line buffer, so every config ct_config_write produces loads back. */
#define CT_CFG_STR 176

/* Enum-valued keys; each list is in the order of the words the config accepts. */
typedef enum { CT_CFG_FORMAT_IDX, CT_CFG_FORMAT_NPY } ct_cfg_format;
typedef enum {
    CT_CFG_AUGMENT_NONE,
    CT_CFG_AUGMENT_CROP,
    CT_CFG_AUGMENT_FLIP,
    CT_CFG_AUGMENT_CROP_FLIP
} ct_cfg_augment;
typedef enum {
    CT_CFG_MODEL_MLP,
    CT_CFG_MODEL_CNN,
    CT_CFG_MODEL_CUSTOM,
    CT_CFG_MODEL_RESNET18,
    CT_CFG_MODEL_RESNET34,
    CT_CFG_MODEL_RESNET50
} ct_cfg_model;
typedef enum { CT_CFG_STEM_IMAGENET, CT_CFG_STEM_SMALL } ct_cfg_stem;
typedef enum { CT_CFG_CACHE_AUTO, CT_CFG_CACHE_OFF } ct_cfg_cache;
typedef enum { CT_CFG_OPTIM_SGD, CT_CFG_OPTIM_ADAM, CT_CFG_OPTIM_ADAMW } ct_cfg_optim;
typedef enum { CT_CFG_SCHED_NONE, CT_CFG_SCHED_STEP, CT_CFG_SCHED_COSINE } ct_cfg_sched;
typedef enum {
    CT_CFG_BUFFERS_BROADCAST,
    CT_CFG_BUFFERS_AVERAGE,
    CT_CFG_BUFFERS_NONE
} ct_cfg_buffers;
typedef enum { CT_CFG_SHARD_DROP, CT_CFG_SHARD_PAD } ct_cfg_shard;

/* Everything a training run reads from its INI file. Keys are "section.field"; the
 * defaults, types and allowed values live in one table in config.c. Counts documented
 * "0 = x" also accept the word x. Lists and globs stay strings for their layer to parse. */
typedef struct {
    struct {
        char dir[CT_CFG_STR];
        ct_cfg_format format;
        char train_x[CT_CFG_STR], train_y[CT_CFG_STR]; /* npy paths */
        char test_x[CT_CFG_STR], test_y[CT_CFG_STR];
        double mean, std;
        ct_cfg_augment augment;
        int crop_pad;
        char classes[CT_CFG_STR]; /* "all", "0-4", "5,6,7" (see ct_config_classes) */
        int per_class;            /* samples kept per class; 0 = all */
    } data;
    struct {
        ct_cfg_model name;
        char layers[CT_CFG_STR]; /* e.g. "linear:256,relu,linear:10", parsed by nn */
        char freeze[CT_CFG_STR]; /* comma-separated parameter-name globs */
        char init_from[CT_CFG_STR];
        bool init_strict;
        char init_exclude[CT_CFG_STR]; /* globs of init_from entries not to load (a fresh head) */
        bool bn_eval_when_frozen;
        double dropout;
        /* resnet18|34|50 */
        int in_channels;
        int num_classes; /* 0 = the data set's */
        ct_cfg_stem stem;
    } model;
    struct {
        int epochs, batch_size;
        uint64_t seed;
        bool resume;
        int log_every; /* steps; 0 = never */
        bool drop_last;
        int eval_batch_size;
        int unfreeze_after; /* epochs; 0 = never */
        char unfreeze[CT_CFG_STR];
        double unfreeze_lr_scale;
        ct_cfg_cache feature_cache;
        int feature_cache_max_mb; /* auto caches only features that fit this, per rank */
    } train;
    struct {
        ct_cfg_optim name;
        double lr, momentum;
        bool nesterov;
        double weight_decay, beta1, beta2, eps;
    } optim;
    struct {
        ct_cfg_sched name;
        int step_size; /* epochs */
        double gamma;
        int warmup_steps;
        double min_lr;
    } schedule;
    struct {
        char dir[CT_CFG_STR];
        int checkpoint_every; /* epochs */
        int keep;             /* checkpoints kept; 0 = all */
    } output;
    struct {
        ct_cfg_buffers buffers;
        double bucket_mb, first_bucket_mb;
        ct_cfg_shard shard;
        bool shm; /* all-reduce within a node through shared memory */
    } dist;
    struct {
        char checkpoints[CT_CFG_STR]; /* comma-separated paths and globs; @FILE reads more,
                                         one a line */
        char datasets[CT_CFG_STR];    /* comma-separated IDX data dirs; "" = data.dir */
        int group_size;               /* ranks per sweep group */
        char out[CT_CFG_STR];         /* results dir; "" = <output.dir>/sweep */
        char overrides[CT_CFG_STR];   /* config variants: groups separated by '|', each a
                                         blank-separated list of section.key=value */
    } sweep;
} ct_config;

/* Fills c with every key's default. */
void ct_config_defaults(ct_config *c);
/* Applies an INI file on top of c. Unknown section/key, a key given twice, or a bad value is
 * CT_ERR_CONFIG naming path, line and key; a missing file is CT_ERR_IO. c is unchanged on
 * error. Lines are limited to inih's buffer (198 characters); a longer one is an error. */
ct_status ct_config_load_file(ct_config *c, const char *path);
/* As ct_config_load_file for INI text; `origin` names it in messages. */
ct_status ct_config_load_string(ct_config *c, const char *text, const char *origin);
/* Sets one key ("section.key") from its text form; errors name the key and "command line". */
ct_status ct_config_set(ct_config *c, const char *key, const char *value);
/* Applies one command-line override "section.key=value" ("resume=..." means train.resume). */
ct_status ct_config_override(ct_config *c, const char *assignment);
/* Defaults, then the file at path (skipped if NULL), then the n overrides in order; stops at
 * the first error, whose status and message it returns. */
ct_status ct_config_load(ct_config *c, const char *path, int n, char *const *overrides);
/* Writes key's value ("section.key") as text into buf (n bytes); CT_ERR_CONFIG if the key
 * is unknown, CT_ERR_ARG if buf is too small. */
ct_status ct_config_get(const ct_config *c, const char *key, char *buf, size_t n);
/* Writes the effective config as INI text that ct_config_load_file reads back to an equal
 * struct. */
ct_status ct_config_write(const ct_config *c, FILE *f);
/* ct_config_write into path, atomically. */
ct_status ct_config_save(const ct_config *c, const char *path);
/* Parses a class selection ("all", "3", "0-4", "1,3,5-7") into keep[0..nclasses); a class
 * outside [0, nclasses) or bad syntax is CT_ERR_CONFIG naming data.classes. */
ct_status ct_config_classes(const char *spec, int nclasses, bool *keep);
/* Copies group i (0-based) of a sweep.overrides spec ("k=v k=v | k=v"), without surrounding
 * blanks, into buf (CT_CFG_STR bytes always suffice); false when there is no group i. An
 * empty spec has no groups; an empty group (e.g. "| k=v") means "no change". */
bool ct_config_override_group(const char *spec, int i, char *buf, size_t n);
/* Applies a group's blank-separated section.key=value overrides to c, all or nothing
 * (c is unchanged on error); keys in [sweep] are refused. */
ct_status ct_config_apply_overrides(ct_config *c, const char *group);


/* ---- checkpoints ------------------------------------------------------------------------ */

/* Training progress stored in a checkpoint's metadata. */
typedef struct {
    int64_t epoch; /* epochs completed */
    int64_t step;  /* optimizer steps taken */
    uint64_t seed;
    int world;     /* ranks that wrote it (informational: any rank count can resume) */
} ct_progress;

/* Atomically writes the model's state_dict (PyTorch names and layouts; BatchNorm's
 * num_batches_tracked as I64), the optimizer state when o is not NULL ("optim.*"), the
 * dropout RNG streams ("rng.*") and p (metadata) to path. */
ct_status ct_ckpt_save(const char *path, ct_module *m, const ct_optim *o, const ct_progress *p);
/* Loads the model part of f into m, checking every name, shape and dtype. Strict: any
 * missing, unexpected or mismatched entry of the state_dict is CT_ERR_SHAPE listing all of
 * them. Non-strict: loads what matches and, in *not_loaded (malloc'd, may be NULL; free it),
 * lists what did not (e.g. a new head over a pretrained backbone). The dropout RNG streams
 * ("rng.*") are loaded when present and never required, so a PyTorch state_dict exported to
 * safetensors (scripts/torch_to_safetensors.py) loads strict. */
ct_status ct_ckpt_load_model(const ct_st_file *f, ct_module *m, bool strict, char **not_loaded);
/* As ct_ckpt_load_model, but entries whose names match one of the comma-separated globs in
 * exclude are left as they are in m (and reported as not loaded): attaching a fresh head. */
ct_status ct_ckpt_load_model_except(const ct_st_file *f, ct_module *m, bool strict,
                                    const char *exclude, char **not_loaded);
/* Restores the optimizer state saved in f into o (whose groups match the saving run). */
ct_status ct_ckpt_load_optim(const ct_st_file *f, ct_optim *o);
/* Reads the progress metadata; CT_ERR_FORMAT if f is not a ctrain checkpoint. */
ct_status ct_ckpt_progress(const ct_st_file *f, ct_progress *p);

#endif
