/* The ctrain INI run config (command line only; the library takes the typed structs).
 * Keys parse straight into the library's own types (ct_optim_config, ct_sched_kind,
 * ct_buffer_policy, ct_shard_mode); only choices no library type holds (data format,
 * augmentation, model, feature cache) have enums here. Errors name the file or "command
 * line", the line and the key, and leave the message in ct_last_error(). */
#ifndef CT_CLI_CONFIG_H
#define CT_CLI_CONFIG_H

#include <stdio.h>

#include "ctrain.h"

/* Capacity of string values, including the terminator: with "name = " it fits one line of
 * inih's 200-byte line buffer, so every config ct_config_write produces loads back. It is
 * also the longest item of a list key. */
#define CT_CFG_STR 176
/* Capacity of the long list keys (sweep.checkpoints, sweep.datasets): they are written over
 * several indented continuation lines, each item at most CT_CFG_STR - 1 characters. */
#define CT_CFG_LIST 8192

typedef enum { CT_CFG_FORMAT_IDX, CT_CFG_FORMAT_NPY, CT_CFG_FORMAT_FOLDER, CT_CFG_FORMAT_LIST } ct_cfg_format;
typedef enum { CT_CFG_ON_BAD_ERROR, CT_CFG_ON_BAD_SKIP } ct_cfg_on_bad;
typedef enum { CT_CFG_NONFINITE_ERROR, CT_CFG_NONFINITE_SKIP } ct_cfg_nonfinite;
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
    CT_CFG_MODEL_RESNET50,
    /* torchvision's VisionTransformer: explicit architecture keys, or a preset's */
    CT_CFG_MODEL_VIT,
    CT_CFG_MODEL_VIT_B_16,
    CT_CFG_MODEL_VIT_B_32,
    CT_CFG_MODEL_VIT_TINY
} ct_cfg_model;
typedef enum { CT_CFG_STEM_IMAGENET, CT_CFG_STEM_SMALL } ct_cfg_stem;
typedef enum { CT_CFG_CACHE_AUTO, CT_CFG_CACHE_OFF } ct_cfg_cache;

/* Everything a training run reads from its INI file. Keys are "section.field"; the
 * defaults, types and allowed values live in one table in config.c. Counts documented
 * "0 = x" also accept the word x. Comma-separated lists (marked "list") may go on over
 * indented continuation lines, which are joined with ','. */
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
        /* image data sets (format folder or list) */
        char train_dir[CT_CFG_STR], test_dir[CT_CFG_STR];   /* folder: root/<class>/<image> */
        char train_list[CT_CFG_STR], test_list[CT_CFG_STR]; /* list: CSV of path,label */
        int channels;             /* 1 or 3: images become L or RGB */
        ct_cfg_on_bad on_bad;     /* an undecodable file: error, or skip (logged and counted) */
        char train_transforms[CT_CFG_STR], test_transforms[CT_CFG_STR]; /* parsed by data */
        char channel_mean[CT_CFG_STR], channel_std[CT_CFG_STR]; /* "a,b,c" or "" (data.mean/std) */
        int workers;  /* decoding threads per rank; 0 decodes inline */
        int prefetch; /* batches the workers may decode ahead */
    } data;
    struct {
        ct_cfg_model name;
        char layers[CT_CFG_STR]; /* e.g. "linear:256,relu,linear:10", parsed by nn */
        char freeze[CT_CFG_STR]; /* list of parameter-name globs */
        char init_from[CT_CFG_STR];
        bool init_strict;
        char init_exclude[CT_CFG_STR]; /* list: globs of init_from entries not to load */
        bool bn_eval_when_frozen;
        bool allow_nonfinite; /* load checkpoints holding NaN/Inf (refused by default) */
        double dropout;
        /* resnet18|34|50 */
        int in_channels;
        int num_classes; /* 0 = the data set's */
        ct_cfg_stem stem;
        /* ViT architecture; 0 = the preset's (image_size: the samples' H = W) */
        int image_size, patch_size, num_layers, num_heads, hidden_dim, mlp_dim;
        double attention_dropout;
    } model;
    struct {
        int epochs, batch_size;
        uint64_t seed;
        bool resume;
        int log_every; /* steps; 0 = never */
        bool drop_last;
        int eval_batch_size;
        int unfreeze_after; /* epochs; 0 = never */
        char unfreeze[CT_CFG_STR]; /* list of globs */
        double unfreeze_lr_scale;
        ct_cfg_cache feature_cache;
        int feature_cache_max_mb; /* auto caches only features that fit this, per rank */
        ct_cfg_nonfinite on_nonfinite; /* a NaN/Inf training loss ends the run, or skips the step */
        double label_smoothing; /* training loss only; validation reports plain cross-entropy */
        char preempt_signals[CT_CFG_STR]; /* signals that checkpoint and stop (preempt.c); "none" */
        int preempt_grace_s;               /* a preempted run ends within this; 0 = never forced */
    } train;
    /* [optim]: name is .kind; dampening is not a key and stays 0 */
    ct_optim_config optim;
    struct {
        ct_sched_kind name;
        int step_size; /* epochs */
        double gamma;
        int warmup_steps;
        double min_lr;
    } schedule;
    struct {
        char dir[CT_CFG_STR];
        int checkpoint_every; /* epochs */
        int keep;             /* checkpoints kept; 0 = all */
        int checkpoint_every_steps; /* also a mid-epoch checkpoint every this many steps; 0 = never */
    } output;
    struct {
        ct_buffer_policy buffers;
        double bucket_mb, first_bucket_mb;
        ct_shard_mode shard; /* drop or pad */
        bool shm;            /* all-reduce within a node through shared memory */
        int timeout_s;       /* a rank silent this long ends the job; 0 = never */
    } dist;
    struct {
        /* the long lists are stored with blanks around items and empty items removed, so
           that a dump can put one item a line */
        char checkpoints[CT_CFG_LIST]; /* list of paths and globs; @FILE reads more, one a line */
        char datasets[CT_CFG_LIST];    /* list of IDX dirs, folder:DIR, list:CSV; "" = data.* */
        int group_size;                /* ranks per sweep group */
        char out[CT_CFG_STR];          /* results dir; "" = <output.dir>/sweep */
        char overrides[CT_CFG_STR];    /* config variants: groups separated by '|', each a
                                          blank-separated list of section.key=value */
    } sweep;
} ct_config;

/* Fills c with every key's default. */
void ct_config_defaults(ct_config *c);
/* Applies an INI file on top of c. Unknown section/key, a key given twice, or a bad value is
 * CT_ERR_CONFIG naming path, line and key; a missing file is CT_ERR_IO. c is unchanged on
 * error. Lines are limited to inih's buffer (198 characters); a longer one is an error, and
 * a list key goes on over indented continuation lines instead. */
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
/* Parses train.preempt_signals ("TERM,INT,USR1", "SIGTERM", or "none") into out[] (room
 * for 8); false with why on a bad name or an empty list. */
bool ct_config_signals(const char *spec, int *out, int *n, char *why, size_t wn);
/* Copies group i (0-based) of a sweep.overrides spec ("k=v k=v | k=v"), without surrounding
 * blanks, into buf (CT_CFG_STR bytes always suffice); false when there is no group i. An
 * empty spec has no groups; an empty group (e.g. "| k=v") means "no change". */
bool ct_config_override_group(const char *spec, int i, char *buf, size_t n);
/* Applies a group's blank-separated section.key=value overrides to c, all or nothing
 * (c is unchanged on error); keys in [sweep] are refused. */
ct_status ct_config_apply_overrides(ct_config *c, const char *group);

#endif
