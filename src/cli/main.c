/* The ctrain command line: train, eval (and sweep). Every command runs on every MPI rank;
 * a plain `ctrain ...` is a one-rank job. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

static int usage(void) {
    fprintf(stderr, "usage: ctrain train CONFIG [section.key=value ...]\n"
                    "       ctrain eval CONFIG --checkpoint FILE [section.key=value ...]\n"
                    "       ctrain sweep CONFIG [section.key=value ...]   (jobs from [sweep])\n"
                    "       ctrain latest CONFIG [section.key=value ...]  (prints the checkpoint train.resume\n"
                    "                                                     would resume from, if any)\n");
    return 2;
}

int ct_cmd_eval(ct_run *r, const char *checkpoint) {
    ct_st_file *f = NULL;
    ct_status st = ct_run_open_checkpoint(r, checkpoint, &f);
    if (st == CT_OK) st = ct_run_explain_classes(r, ct_ckpt_load_model(f, r->model, true, NULL));
    ct_st_free(f);
    if (ct_run_check(&r->d, st) != CT_OK) return 1;
    ct_eval_result ev;
    st = ct_dist_evaluate(&r->d, r->model, &r->test, &r->eval_opts, &ev);
    if (ct_run_check(&r->d, st) != CT_OK) return 1;
    if (r->d.rank == 0) {
        json_t *o = ct_json_record("eval");
        ct_json_str(o, "checkpoint", checkpoint);
        ct_json_real(o, "loss", ev.loss, "%.6f");
        ct_json_real(o, "accuracy", ev.accuracy, "%.6f");
        ct_json_int(o, "samples", ev.samples);
        ct_json_emit(o, stdout);
    }
    return 0;
}

/* OpenBLAS 0.3.21 (Debian 12) does not recognise recent Xeons and falls back to its generic
 * "Prescott" kernels, about 5x slower than its AVX-512 ones on the same CPU. The kernel is
 * picked when the library loads, so the only fix from inside is to set OPENBLAS_CORETYPE
 * and exec ourselves again (same pid, so mpirun/srun do not notice). A user's own
 * OPENBLAS_CORETYPE always wins. */
static void use_avx512_blas(char **argv) {
    if (getenv("OPENBLAS_CORETYPE") || strcmp(ct_blas_core(), "Prescott") != 0) return;
    if (!ct_cpu_avx512()) return;
    setenv("OPENBLAS_CORETYPE", "SkylakeX", 1);
    execv("/proc/self/exe", argv);
    unsetenv("OPENBLAS_CORETYPE"); /* exec failed: carry on with the slow kernels */
}

int main(int argc, char **argv) {
    use_avx512_blas(argv);
    if (argc < 3 || (strcmp(argv[1], "train") && strcmp(argv[1], "eval") && strcmp(argv[1], "sweep") &&
                     strcmp(argv[1], "latest")))
        return usage();
    const char *cmd = argv[1], *cfg = argv[2], *ckpt = NULL;
    char *overrides[256];
    int n = 0;
    for (int i = 3; i < argc; i++) {
        if (!strcmp(argv[i], "--checkpoint") && i + 1 < argc) {
            ckpt = argv[++i];
        } else if (!strncmp(argv[i], "--checkpoint=", 13)) {
            ckpt = argv[i] + 13;
        } else if (n < 256 && strchr(argv[i], '=')) {
            overrides[n++] = argv[i];
        } else {
            fprintf(stderr, "ctrain: unexpected argument '%s'\n", argv[i]);
            return usage();
        }
    }
    if (!strcmp(cmd, "sweep") && ckpt) {
        fprintf(stderr, "ctrain: sweep takes its checkpoints from sweep.checkpoints, not --checkpoint\n");
        return usage();
    }
    if (!strcmp(cmd, "eval") && (!ckpt || !*ckpt)) {
        fprintf(stderr, "ctrain: eval needs --checkpoint FILE\n");
        return usage();
    }
    if (!strcmp(cmd, "train") && ckpt) {
        /* train resumes from <output.dir>/latest; silently ignoring a file would mislead */
        fprintf(stderr, "ctrain: train takes no --checkpoint (use resume=true, or model.init_from=FILE)\n");
        return usage();
    }
    ct_run r = {0};
    if (!strcmp(cmd, "latest")) {
        /* ctrun asks this before relaunching a job, on the launch node: no MPI, no data */
        if (ckpt) return usage();
        r.cfg_path = cfg;
        r.d.size = 1;
        ct_status st = ct_config_load(&r.cfg, cfg, n, overrides);
        if (st != CT_OK) {
            fprintf(stderr, "ctrain: error: %s\n", ct_last_error());
            return st == CT_ERR_CONFIG ? CT_EXIT_CONFIG : 1;
        }
        return ct_cmd_latest(&r);
    }
    if (ct_dist_init(&argc, &argv, &r.d) != CT_OK) {
        fprintf(stderr, "ctrain: error: %s\n", ct_last_error());
        return 1;
    }
    ct_binding b;
    ct_status st = ct_dist_bind(&r.d, &b);
    if (ct_run_check(&r.d, st) == CT_OK) ct_dist_print_bindings(&r.d, &b);
    int rc = 1;
    if (st == CT_OK && !strcmp(cmd, "sweep")) {
        /* each sweep job builds its own data set and model from its variant of the config */
        r.cfg_path = cfg;
        st = ct_config_load(&r.cfg, cfg, n, overrides);
        if (ct_run_check(&r.d, st) == CT_OK) rc = ct_cmd_sweep(&r);
    } else if (st == CT_OK) {
        st = ct_run_setup(&r, cfg, n, overrides, !strcmp(cmd, "train"));
        if ((st = ct_run_check(&r.d, st)) == CT_OK)
            rc = !strcmp(cmd, "train") ? ct_cmd_train(&r) : ct_cmd_eval(&r, ckpt);
        else if (st == CT_ERR_CONFIG && !strcmp(cmd, "train"))
            rc = CT_EXIT_CONFIG; /* not worth a relaunch (ctrun --restarts) */
    }
    ct_run_free(&r);
    ct_dist_finalize(&r.d);
    ct_scope_shutdown();
    return rc;
}
