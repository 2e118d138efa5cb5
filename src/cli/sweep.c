/* ctrain sweep: evaluates every checkpoint of [sweep] checkpoints, crossed with every data
 * set of [sweep] datasets and every config variant of [sweep] overrides, on groups of
 * [sweep] group_size ranks that take jobs from a shared queue (ct_sweep, src/parallel/sweep.c).
 * This file hands out the jobs and gathers the results; expanding the lists
 * (sweep_list.c), running a job (sweep_job.c) and writing the results (sweep_report.c) are
 * in their own files. A failed job never stops the sweep. Jobs are numbered variant-major,
 * and a group keeps the data set and model of its last variant for the next job.
 *
 * Exit status: 0 when every job and every output succeeded, 3 when the tables were written
 * but some jobs failed, 1 on any other error. */
#include <stdio.h>
#include <stdlib.h>

#include "sweep.h"

int ct_cmd_sweep(ct_run *r) {
    const ct_config *c = &r->cfg;
    double t0 = ct_now();
    ct_strlist ckpts = {0};
    if (ct_sweep_checkpoints(&r->d, c->sweep.checkpoints, &ckpts) != CT_OK) {
        if (r->d.rank == 0) fprintf(stderr, "ctrain: error: %s: %s\n", r->cfg_path, ct_last_error());
        return 1;
    }
    int nvariants = 0;
    ct_sweep_variant *vs = ct_sweep_variants(c, &nvariants);
    int64_t njobs = (int64_t)ckpts.n * nvariants;

    ct_sweep sq;
    ct_status st = ct_sweep_open(&r->d, c->sweep.group_size, njobs, &sq);
    if (ct_run_check(&r->d, st) != CT_OK) {
        ct_strlist_free(&ckpts);
        free(vs);
        return 1;
    }
    if (r->d.rank == 0) {
        fprintf(stderr, "ctrain: sweep: %d checkpoint(s) x %d variant(s) = %lld jobs on %d group(s) "
                        "of up to %d rank(s)\n",
                ckpts.n, nvariants, (long long)njobs, sq.ngroups,
                (r->d.size + sq.ngroups - 1) / sq.ngroups);
        if (!sq.dynamic)
            fprintf(stderr, "ctrain: warning: MPI offers no one-sided window here; jobs are dealt "
                            "round-robin instead of on demand\n");
    }

    bool leader = sq.group.rank == 0;
    ct_sweep_result *mine = NULL;
    int nmine = 0, cap = 0;
    ct_sweep_worker w = {.variant = -1};
    for (int64_t j; (j = ct_sweep_next(&sq)) >= 0;) {
        int vi = (int)(j / ckpts.n);
        const char *path = ckpts.s[j % ckpts.n];
        ct_sweep_worker_use(&w, vs, vi, &sq.group, r->cfg_path);
        ct_sweep_result res = {.job = j};
        ct_sweep_run_job(&w, path, &sq.group, &res);
        if (!leader) continue;
        if (nmine == cap) {
            cap = cap ? 2 * cap : 16;
            mine = ct_realloc(mine, (size_t)cap * sizeof *mine);
        }
        mine[nmine++] = res;
        json_t *o = ct_json_record("sweep_job");
        ct_json_int(o, "job", j);
        ct_json_int(o, "jobs", njobs);
        ct_json_int(o, "group", sq.group_index);
        ct_json_str(o, "checkpoint", path);
        ct_json_str(o, "status", res.ok ? "ok" : "failed");
        if (res.ok) {
            ct_json_real(o, "accuracy", res.accuracy, "%.6f");
            ct_json_real(o, "loss", res.loss, "%.6f");
            ct_json_int(o, "samples", res.samples);
        } else {
            ct_json_str(o, "error", res.error);
        }
        ct_json_real(o, "seconds", res.seconds, "%.3f");
        ct_json_emit(o, stdout);
    }
    ct_run_free(&w.run);

    void *all = NULL;
    int nall = 0;
    ct_sweep_gather(&sq, mine, nmine, sizeof *mine, &all, &nall);
    free(mine);
    int rc = 1;
    if (r->d.rank == 0) {
        /* by job index; the queue hands out each job exactly once */
        ct_sweep_result *res = ct_calloc((size_t)njobs, sizeof *res);
        char *seen = ct_calloc((size_t)njobs, 1);
        const ct_sweep_result *got = all;
        CT_ASSERT(nall == njobs, "sweep: %d results for %lld jobs", nall, (long long)njobs);
        int64_t nfailed = 0;
        for (int i = 0; i < nall; i++) {
            int64_t j = got[i].job;
            CT_ASSERT(j >= 0 && j < njobs && !seen[j], "sweep: job %lld reported twice or out of range",
                      (long long)j);
            seen[j] = 1;
            res[j] = got[i];
            nfailed += !got[i].ok;
        }
        ct_sweep_report rep = {&ckpts, vs, nvariants, res, njobs, nfailed};
        rc = ct_sweep_write_outputs(c, &rep);
        json_t *o = ct_json_record("sweep");
        ct_json_int(o, "jobs", njobs);
        ct_json_int(o, "ok", njobs - nfailed);
        ct_json_int(o, "failed", nfailed);
        ct_json_int(o, "groups", sq.ngroups);
        ct_json_str(o, "queue", sq.dynamic ? "dynamic" : "round-robin");
        ct_json_real(o, "seconds", ct_now() - t0, "%.3f");
        ct_json_emit(o, stdout);
        free(res);
        free(seen);
    }
    free(all);
    ct_dist_bcast(&r->d, &rc, sizeof rc, 0);
    ct_sweep_close(&sq);
    ct_strlist_free(&ckpts);
    free(vs);
    return rc;
}
