/* Internal header of `ctrain sweep` (not installed): the pieces of one sweep, one file per
 * job. sweep_list.c expands the checkpoint list and the (data set, overrides) variants,
 * sweep_job.c runs one job on a group, sweep_report.c writes the tables and the plot, and
 * sweep.c (the command) hands out the jobs and gathers the results. */
#ifndef CT_CLI_SWEEP_H
#define CT_CLI_SWEEP_H

#include "cli.h"

typedef struct {
    char **s;
    int n, cap;
} ct_strlist;

void ct_strlist_push(ct_strlist *l, const char *s);
void ct_strlist_free(ct_strlist *l);

/* A job's outcome, sent by its group's leader to world rank 0. */
typedef struct {
    int64_t job, samples;
    double loss, accuracy, seconds; /* seconds: loading the checkpoint and evaluating it */
    int32_t ok;
    char error[CT_ERROR_MSG_SIZE];
} ct_sweep_result;

/* The base config with one data set and one override group applied. */
typedef struct {
    ct_config cfg;
    char dataset[CT_CFG_STR];   /* label: the test data it reads */
    char overrides[CT_CFG_STR]; /* label: the override group, "" for none */
    ct_status st;               /* not OK: applying the data set or overrides failed */
    char error[CT_ERROR_MSG_SIZE];
} ct_sweep_variant;

/* ---- sweep_list.c ---- */

/* sweep.checkpoints into out: comma-separated paths and globs (each glob's matches sorted,
 * a glob matching nothing kept as written), "@FILE" reads FILE's lines (paths or globs;
 * blank lines and # comments skipped), for lists longer than one config line. Duplicates
 * are dropped, the first occurrence keeping its place. An empty result is an error; every
 * error names sweep.checkpoints. No MPI: the fuzz harness calls it directly. */
ct_status ct_sweep_expand_checkpoints(const char *spec, ct_strlist *out);
/* Collective over d: world rank 0 expands sweep.checkpoints (comma-separated paths and
 * globs, "@FILE" lists; duplicates dropped) and every rank receives the list. */
ct_status ct_sweep_checkpoints(const ct_dist *d, const char *spec, ct_strlist *out);
/* Every (data set, override group) pair, data sets outer; the same on every rank. */
ct_sweep_variant *ct_sweep_variants(const ct_config *base, int *nout);

/* ---- sweep_job.c ---- */

/* The data set and model of the variant a group used last, kept for its next job (jobs are
 * numbered variant-major, so consecutive jobs usually share them). */
typedef struct {
    ct_run run;
    int variant; /* -1 before the first job */
    ct_status st;
    char error[CT_ERROR_MSG_SIZE];
} ct_sweep_worker;

/* Collective over group: builds the model and data of variant vi unless w holds them. */
void ct_sweep_worker_use(ct_sweep_worker *w, const ct_sweep_variant *vs, int vi,
                         const ct_dist *group, const char *cfg_path);
/* Collective over group: loads the checkpoint into the variant's model and evaluates it;
 * every rank of the group ends with the same verdict. */
void ct_sweep_run_job(ct_sweep_worker *w, const char *path, const ct_dist *group,
                      ct_sweep_result *res);

/* ---- sweep_report.c ---- */

typedef struct {
    const ct_strlist *ckpts;
    const ct_sweep_variant *vs;
    int nvariants;
    const ct_sweep_result *res; /* indexed by job: variant * ckpts->n + checkpoint */
    int64_t njobs, nfailed;
} ct_sweep_report;

/* World rank 0: results.csv, results.md and (when any job succeeded) results.png with its
 * plot.gp; returns the exit status (0, 3 when some jobs failed, 1 on an output error). */
int ct_sweep_write_outputs(const ct_config *c, const ct_sweep_report *r);

#endif
