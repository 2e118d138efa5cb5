/* ctrain sweep, running one job: a checkpoint evaluated exactly over its group
 * (ct_dist_evaluate: no_grad, eval mode, nothing padded). A checkpoint that cannot be loaded
 * becomes a failed result with the reason, and the group's ranks agree on the verdict
 * (ct_dist_agree), so none is left waiting. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "sweep.h"

static bool has_glob_chars(const char *s) { return strpbrk(s, "*?[") != NULL; }

void ct_sweep_worker_use(ct_sweep_worker *w, const ct_sweep_variant *vs, int vi,
                         const ct_dist *group, const char *cfg_path) {
    if (w->variant == vi) return;
    ct_run_free(&w->run);
    memset(&w->run, 0, sizeof w->run);
    w->variant = vi;
    ct_status st = vs[vi].st;
    if (st != CT_OK) {
        ct_error(st, "%s", vs[vi].error);
    } else {
        w->run.cfg = vs[vi].cfg;
        w->run.cfg_path = cfg_path;
        w->run.d = *group; /* borrowed: ct_run_free does not free it */
        st = ct_run_build(&w->run, false);
    }
    w->st = ct_dist_agree(group, st, NULL);
    snprintf(w->error, sizeof w->error, "%s", w->st != CT_OK ? ct_last_error() : "");
}

/* Collective over the group: loads the checkpoint into the variant's model and evaluates
 * it; every rank of the group ends with the same verdict. */
void ct_sweep_run_job(ct_sweep_worker *w, const char *path, const ct_dist *group,
                      ct_sweep_result *res) {
    double t0 = ct_now();
    ct_status st = w->st;
    if (st != CT_OK) {
        snprintf(res->error, sizeof res->error, "%s", w->error);
    } else {
        ct_st_file *f = NULL;
        st = ct_run_open_checkpoint(&w->run, path, &f);
        if (st == CT_ERR_IO && has_glob_chars(path) && access(path, F_OK) != 0)
            st = ct_error(st, "%s: no file matches this pattern", path);
        if (st == CT_OK) st = ct_ckpt_load_model(f, w->run.model, true, NULL);
        ct_st_free(f);
        st = ct_dist_agree(group, st, NULL);
        ct_eval_result ev = {0};
        if (st == CT_OK) {
            st = ct_dist_evaluate(group, w->run.model, &w->run.test, &w->run.eval_opts, &ev);
            st = ct_dist_agree(group, st, NULL);
        }
        if (st == CT_OK) {
            res->loss = ev.loss;
            res->accuracy = ev.accuracy;
            res->samples = ev.samples;
        } else {
            snprintf(res->error, sizeof res->error, "%s", ct_last_error());
        }
    }
    res->ok = st == CT_OK;
    res->seconds = ct_now() - t0;
}
