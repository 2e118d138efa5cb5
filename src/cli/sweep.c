/* ctrain sweep: evaluates every checkpoint of [sweep] checkpoints (paths, globs, @FILE
 * lists), crossed with every data set of [sweep] datasets and every config variant of
 * [sweep] overrides, on groups of [sweep] group_size ranks that take jobs from a shared queue
 * (ct_sweep, src/dist/sweep.c). Each job is an exact sharded evaluation over its group
 * (ct_dist_evaluate: no_grad, eval mode, nothing padded). A checkpoint that cannot be loaded
 * becomes a failed row with the reason; it never stops the sweep, and the group's ranks
 * agree on the verdict (ct_dist_agree), so none is left waiting. World rank 0 writes
 * results.csv, results.md and results.png (drawn by gnuplot from plot.gp, kept next to it)
 * into [sweep] out, default <output.dir>/sweep. Jobs are numbered variant-major, and a
 * group keeps the data set and model of its last variant for the next job.
 *
 * Exit status: 0 when every job and every output succeeded, 3 when the tables were written
 * but some jobs failed, 1 on any other error. */
#include <errno.h>
#include <glob.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli.h"

extern char **environ;

/* A job's outcome, sent by its group's leader to world rank 0. */
typedef struct {
    int64_t job, samples;
    double loss, accuracy, seconds; /* seconds: loading the checkpoint and evaluating it */
    int32_t ok;
    char error[CT_ERROR_MSG_SIZE];
} job_result;

/* The base config with one data set and one override group applied. */
typedef struct {
    ct_config cfg;
    char dataset[CT_CFG_STR];   /* label: the test data it reads */
    char overrides[CT_CFG_STR]; /* label: the override group, "" for none */
    ct_status st;               /* not OK: applying the data set or overrides failed */
    char error[CT_ERROR_MSG_SIZE];
} variant;

typedef struct {
    char **s;
    int n, cap;
} strlist;

static void strlist_push(strlist *l, const char *s) {
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 16;
        l->s = ct_realloc(l->s, (size_t)l->cap * sizeof *l->s);
    }
    l->s[l->n] = ct_strdup(s);
    l->n++;
}

static void strlist_free(strlist *l) {
    for (int i = 0; i < l->n; i++) free(l->s[i]);
    free(l->s);
    memset(l, 0, sizeof *l);
}

static bool is_blank(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

/* Appends the sep-separated items of spec, without surrounding blanks, skipping empty ones. */
static void split_list(const char *spec, char sep, strlist *out) {
    for (const char *p = spec; *p;) {
        const char *end = strchr(p, sep);
        if (!end) end = p + strlen(p);
        const char *a = p, *b = end;
        while (a < b && is_blank(*a)) a++;
        while (b > a && is_blank(b[-1])) b--;
        if (b > a) {
            char *item = ct_malloc((size_t)(b - a) + 1);
            memcpy(item, a, (size_t)(b - a));
            item[b - a] = '\0';
            strlist_push(out, item);
            free(item);
        }
        p = *end ? end + 1 : end;
    }
}

static bool has_glob_chars(const char *s) { return strpbrk(s, "*?[") != NULL; }

/* Appends the files a path or glob names, sorted; a pattern that matches nothing is kept
 * as it is, so its job fails with a reason naming it instead of vanishing. */
static ct_status expand_entry(const char *entry, strlist *out) {
    glob_t g;
    int rc = glob(entry, GLOB_NOCHECK, NULL, &g);
    if (rc != 0) {
        globfree(&g);
        return ct_error(CT_ERR_IO, "sweep.checkpoints: glob('%s') failed (%s)", entry,
                        rc == GLOB_NOSPACE ? "out of memory" : "read error");
    }
    for (size_t i = 0; i < g.gl_pathc; i++) strlist_push(out, g.gl_pathv[i]);
    globfree(&g);
    return CT_OK;
}

/* sweep.checkpoints: comma-separated paths and globs; "@FILE" reads FILE's lines (paths
 * or globs; blank lines and # comments skipped), for lists longer than one config line.
 * Duplicates are dropped (the first occurrence keeps its place). */
static ct_status expand_checkpoints(const char *spec, strlist *out) {
    strlist items = {0}, raw = {0};
    split_list(spec, ',', &items);
    ct_status st = CT_OK;
    for (int i = 0; st == CT_OK && i < items.n; i++) {
        if (items.s[i][0] != '@') {
            st = expand_entry(items.s[i], &raw);
            continue;
        }
        const char *lp = items.s[i] + 1;
        FILE *f = fopen(lp, "r");
        if (!f) {
            st = ct_error(CT_ERR_IO, "sweep.checkpoints: %s: cannot open list: %s", lp,
                          strerror(errno));
            break;
        }
        char *line = NULL;
        size_t cap = 0;
        while (st == CT_OK && getline(&line, &cap, f) >= 0) {
            char *a = line, *b = line + strlen(line);
            while (a < b && is_blank(*a)) a++;
            while (b > a && is_blank(b[-1])) *--b = '\0';
            if (*a && *a != '#') st = expand_entry(a, &raw);
        }
        free(line);
        fclose(f);
    }
    for (int i = 0; st == CT_OK && i < raw.n; i++) {
        bool dup = false;
        for (int j = 0; j < out->n && !dup; j++) dup = strcmp(out->s[j], raw.s[i]) == 0;
        if (!dup) strlist_push(out, raw.s[i]);
    }
    if (st == CT_OK && out->n == 0)
        st = ct_error(CT_ERR_CONFIG, "sweep.checkpoints is empty: nothing to evaluate");
    strlist_free(&items);
    strlist_free(&raw);
    return st;
}

/* World rank 0 expands the list (globs see its file system) and sends it to every rank. */
static ct_status share_checkpoints(const ct_dist *d, const char *spec, strlist *out) {
    ct_status st = d->rank == 0 ? expand_checkpoints(spec, out) : CT_OK;
    st = ct_dist_agree(d, st, NULL);
    if (st != CT_OK) return st;
    long long len = 0;
    for (int i = 0; d->rank == 0 && i < out->n; i++) len += (long long)strlen(out->s[i]) + 1;
    ct_dist_bcast(d, &len, sizeof len, 0);
    if (len > (1LL << 30)) ct_fatal("sweep: checkpoint list of %lld bytes", len);
    char *buf = ct_malloc((size_t)len + 1);
    for (long long i = 0, off = 0; d->rank == 0 && i < out->n; i++) {
        size_t n = strlen(out->s[i]) + 1;
        memcpy(buf + off, out->s[i], n);
        off += (long long)n;
    }
    ct_dist_bcast(d, buf, (size_t)len, 0);
    if (d->rank != 0)
        for (long long off = 0; off < len; off += (long long)strlen(buf + off) + 1)
            strlist_push(out, buf + off);
    free(buf);
    return CT_OK;
}

/* A sweep.datasets entry into c: "folder:DIR" (an ImageFolder tree) or "list:CSV" becomes
 * the test split of an image data set (the base config's data.train_dir / train_list, if
 * any, still numbers the classes, so labels mean what they meant in training); anything
 * else is an IDX directory. */
static ct_status set_dataset(ct_config *c, const char *entry) {
    if (!strncmp(entry, "folder:", 7)) {
        ct_status st = ct_config_set(c, "data.format", "folder");
        return st == CT_OK ? ct_config_set(c, "data.test_dir", entry + 7) : st;
    }
    if (!strncmp(entry, "list:", 5)) {
        ct_status st = ct_config_set(c, "data.format", "list");
        return st == CT_OK ? ct_config_set(c, "data.test_list", entry + 5) : st;
    }
    ct_status st = ct_config_set(c, "data.dir", entry);
    return st == CT_OK ? ct_config_set(c, "data.format", "idx") : st;
}

/* The data set a variant evaluates on, for the tables. */
static const char *dataset_name(const ct_config *c) {
    switch (c->data.format) {
    case CT_CFG_FORMAT_IDX: return c->data.dir;
    case CT_CFG_FORMAT_FOLDER: return c->data.test_dir;
    case CT_CFG_FORMAT_LIST: return c->data.test_list;
    default: return c->data.test_x;
    }
}

/* Every (data set, override group) pair, data sets outer; the same on every rank. */
static variant *make_variants(const ct_config *base, int *nout) {
    strlist ds = {0};
    split_list(base->sweep.datasets, ',', &ds);
    int nds = ds.n ? ds.n : 1, nov = 0;
    char group[CT_CFG_STR];
    while (ct_config_override_group(base->sweep.overrides, nov, group, sizeof group)) nov++;
    if (nov == 0) nov = 1;
    variant *vs = ct_calloc((size_t)nds * (size_t)nov, sizeof *vs);
    for (int i = 0; i < nds; i++) {
        for (int j = 0; j < nov; j++) {
            variant *v = &vs[i * nov + j];
            v->cfg = *base;
            ct_status st = CT_OK;
            if (ds.n) st = set_dataset(&v->cfg, ds.s[i]);
            if (!ct_config_override_group(base->sweep.overrides, j, group, sizeof group))
                group[0] = '\0';
            snprintf(v->overrides, sizeof v->overrides, "%s", group);
            if (st == CT_OK) st = ct_config_apply_overrides(&v->cfg, group);
            if (st != CT_OK) {
                v->st = st;
                snprintf(v->error, sizeof v->error, "%s", ct_last_error());
            }
            snprintf(v->dataset, sizeof v->dataset, "%s", dataset_name(&v->cfg));
        }
    }
    strlist_free(&ds);
    *nout = nds * nov;
    return vs;
}

/* ---- one group's work ------------------------------------------------------------------- */

/* The data set and model of the variant a group used last, kept for its next job (jobs are
 * numbered variant-major, so consecutive jobs usually share them). */
typedef struct {
    ct_run run;
    int variant;
    ct_status st;
    char error[CT_ERROR_MSG_SIZE];
} worker;

static void worker_use(worker *w, const variant *vs, int vi, const ct_dist *group,
                       const char *cfg_path) {
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
static void run_job(worker *w, const char *path, const ct_dist *group, job_result *res) {
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

/* ---- output ------------------------------------------------------------------------------ */

/* RFC 4180: quoted when it holds a comma, quote or line break; quotes doubled. */
static void csv_str(FILE *f, const char *s) {
    if (!strpbrk(s, ",\"\r\n")) {
        fputs(s, f);
        return;
    }
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"') fputc('"', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

/* A Markdown table cell: '|' escaped, line breaks as spaces. */
static void md_str(FILE *f, const char *s) {
    for (; *s; s++) {
        if (*s == '|') fputs("\\|", f);
        else if (*s == '\n' || *s == '\r') fputc(' ', f);
        else fputc(*s, f);
    }
}

typedef struct {
    const strlist *ckpts;
    const variant *vs;
    int nvariants;
    const job_result *res; /* indexed by job */
    int64_t njobs;
    const char **labels; /* short checkpoint names, for the plot */
    bool vary_ds, vary_ov; /* variants differ in data set / overrides */
} report;

static ct_status write_csv(FILE *f, void *ctx) {
    const report *r = ctx;
    fputs("job,checkpoint,dataset,overrides,status,accuracy,loss,samples,seconds,error\n", f);
    for (int64_t j = 0; j < r->njobs; j++) {
        const job_result *x = &r->res[j];
        const variant *v = &r->vs[j / r->ckpts->n];
        fprintf(f, "%lld,", (long long)j);
        csv_str(f, r->ckpts->s[j % r->ckpts->n]);
        fputc(',', f);
        csv_str(f, v->dataset);
        fputc(',', f);
        csv_str(f, v->overrides);
        if (x->ok)
            fprintf(f, ",ok,%.6f,%.6f,%lld,%.3f,\n", x->accuracy, x->loss, (long long)x->samples,
                    x->seconds);
        else {
            fprintf(f, ",failed,,,,%.3f,", x->seconds);
            csv_str(f, x->error);
            fputc('\n', f);
        }
    }
    return ferror(f) ? ct_error(CT_ERR_IO, "write failed: %s", strerror(errno)) : CT_OK;
}

static ct_status write_md(FILE *f, void *ctx) {
    const report *r = ctx;
    /* data set and overrides columns only when they vary */
    fprintf(f, "| job | checkpoint |%s%s status | accuracy | loss | samples | seconds | error |\n",
            r->vary_ds ? " dataset |" : "", r->vary_ov ? " overrides |" : "");
    fprintf(f, "|---:|---|%s%s---|---:|---:|---:|---:|---|\n", r->vary_ds ? "---|" : "",
            r->vary_ov ? "---|" : "");
    for (int64_t j = 0; j < r->njobs; j++) {
        const job_result *x = &r->res[j];
        const variant *v = &r->vs[j / r->ckpts->n];
        fprintf(f, "| %lld | ", (long long)j);
        md_str(f, r->ckpts->s[j % r->ckpts->n]);
        if (r->vary_ds) {
            fputs(" | ", f);
            md_str(f, v->dataset);
        }
        if (r->vary_ov) {
            fputs(" | ", f);
            md_str(f, *v->overrides ? v->overrides : "(none)");
        }
        if (x->ok)
            fprintf(f, " | ok | %.4f | %.4f | %lld | %.2f |  |\n", x->accuracy, x->loss,
                    (long long)x->samples, x->seconds);
        else {
            fprintf(f, " | **failed** |  |  |  | %.2f | ", x->seconds);
            md_str(f, x->error);
            fputs(" |\n", f);
        }
    }
    return ferror(f) ? ct_error(CT_ERR_IO, "write failed: %s", strerror(errno)) : CT_OK;
}

/* A string inside a gnuplot double-quoted string (which reads backslash escapes). */
static void gp_str(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) fputc(*s == '"' ? '\'' : *s == '\\' ? '/' : (unsigned char)*s < ' ' ? ' ' : *s, f);
    fputc('"', f);
}

/* plot.gp: accuracy (top) and loss (bottom) for each checkpoint, one line per variant;
 * failed jobs are left out. The data is inline so the script redraws the plot on its own. */
static ct_status write_plot(FILE *f, void *ctx) {
    const report *r = ctx;
    int nck = r->ckpts->n;
    fputs("# Written by ctrain sweep. Redraw with: gnuplot plot.gp (in this directory)\n"
          "set terminal pngcairo size 1100,900 noenhanced font \",10\"\n"
          "set output 'results.png.tmp'\n",
          f);
    for (int v = 0; v < r->nvariants; v++) {
        fprintf(f, "$v%d << EOD\n", v);
        for (int c = 0; c < nck; c++) {
            const job_result *x = &r->res[(int64_t)v * nck + c];
            if (x->ok) fprintf(f, "%d %.6f %.6f\n", c, x->accuracy, x->loss);
        }
        fputs("EOD\n", f);
    }
    int every = (nck + 39) / 40; /* at most ~40 tick labels */
    fputs("set xtics (", f);
    for (int c = 0, first = 1; c < nck; c += every, first = 0) {
        bool failed = true; /* in every variant */
        for (int v = 0; v < r->nvariants; v++) failed &= !r->res[(int64_t)v * nck + c].ok;
        char label[CT_CFG_STR + 16];
        snprintf(label, sizeof label, "%s%s", r->labels[c], failed ? " (failed)" : "");
        if (!first) fputs(", ", f);
        gp_str(f, label);
        fprintf(f, " %d", c);
    }
    int64_t nok = 0;
    for (int64_t j = 0; j < r->njobs; j++) nok += r->res[j].ok;
    fprintf(f, ") rotate by -35 left\nset xrange [-0.5:%g]\nset offsets 0, 0, graph 0.05, graph 0.05\n"
               "set grid\nset lmargin at screen 0.09\nset rmargin at screen %s\n%s",
            nck - 0.5, r->nvariants > 1 ? "0.72" : "0.97",
            r->nvariants > 1 ? "set key outside right top\n" : "unset key\n");
    fprintf(f, "set multiplot layout 2,1 title \"ctrain sweep: %lld of %lld jobs evaluated\"\n",
            (long long)nok, (long long)r->njobs);
    const char *what[2] = {"accuracy", "loss"};
    for (int k = 0; k < 2; k++) {
        fprintf(f, "set ylabel '%s'\nplot ", what[k]);
        for (int v = 0; v < r->nvariants; v++) {
            char title[2 * CT_CFG_STR + 8];
            const variant *vv = &r->vs[v];
            snprintf(title, sizeof title, "%s%s%s", r->vary_ds ? vv->dataset : "",
                     r->vary_ds && r->vary_ov ? " " : "",
                     r->vary_ov ? (*vv->overrides ? vv->overrides : "(no overrides)") : "");
            fprintf(f, "%s$v%d using 1:%d with linespoints pt 7 title ", v ? ", " : "", v, k + 2);
            gp_str(f, title);
        }
        fputc('\n', f);
    }
    fputs("unset multiplot\nset output\n", f);
    return ferror(f) ? ct_error(CT_ERR_IO, "write failed: %s", strerror(errno)) : CT_OK;
}

/* Runs `gnuplot plot.gp` in dir, then renames its output onto results.png. */
static ct_status run_gnuplot(const char *dir) {
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addchdir_np(&fa, dir);
    char *argv[] = {"gnuplot", "plot.gp", NULL};
    pid_t pid;
    int rc = posix_spawnp(&pid, "gnuplot", &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0)
        return ct_error(CT_ERR_IO, "cannot run gnuplot (scripts/deps.sh installs gnuplot-nox): %s",
                        strerror(rc));
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    char tmp[4200], png[4200];
    snprintf(tmp, sizeof tmp, "%s/results.png.tmp", dir);
    snprintf(png, sizeof png, "%s/results.png", dir);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        unlink(tmp);
        return ct_error(CT_ERR_IO, "%s/plot.gp: gnuplot failed (status %d)", dir,
                        WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    }
    if (rename(tmp, png) != 0)
        return ct_error(CT_ERR_IO, "%s: cannot rename to results.png: %s", tmp, strerror(errno));
    return CT_OK;
}

/* Checkpoint names without the directory they all share and without ".safetensors". */
static const char **short_labels(const strlist *ck) {
    size_t common = 0;
    const char *s0 = ck->s[0];
    const char *slash = strrchr(s0, '/');
    if (slash) {
        common = (size_t)(slash - s0) + 1;
        for (int i = 1; i < ck->n; i++)
            while (common && strncmp(ck->s[i], s0, common) != 0) {
                while (--common && s0[common - 1] != '/') {}
            }
    }
    const char **l = ct_malloc((size_t)ck->n * sizeof *l);
    for (int i = 0; i < ck->n; i++) {
        char *s = ct_strdup(ck->s[i] + common);
        size_t n = strlen(s);
        if (n > 12 && strcmp(s + n - 12, ".safetensors") == 0) s[n - 12] = '\0';
        l[i] = s;
    }
    return l;
}

/* World rank 0: the tables and the plot; returns the exit status. */
static int write_outputs(const ct_config *c, const report *r, int64_t nfailed) {
    char dir[4096];
    if (*c->sweep.out) snprintf(dir, sizeof dir, "%s", c->sweep.out);
    else snprintf(dir, sizeof dir, "%s/sweep", c->output.dir);
    char path[4200];
    ct_status st = ct_mkdir_p(dir);
    if (st == CT_OK) {
        snprintf(path, sizeof path, "%s/results.csv", dir);
        st = ct_write_atomic(path, write_csv, (void *)r);
    }
    if (st == CT_OK) {
        snprintf(path, sizeof path, "%s/results.md", dir);
        st = ct_write_atomic(path, write_md, (void *)r);
    }
    if (st != CT_OK) {
        fprintf(stderr, "ctrain: error: %s\n", ct_last_error());
        return 1;
    }
    bool any_ok = nfailed < r->njobs;
    if (any_ok) {
        snprintf(path, sizeof path, "%s/plot.gp", dir);
        st = ct_write_atomic(path, write_plot, (void *)r);
        if (st == CT_OK) st = run_gnuplot(dir);
        if (st != CT_OK) {
            fprintf(stderr, "ctrain: error: plot: %s\n", ct_last_error());
            return 1;
        }
    } else {
        fprintf(stderr, "ctrain: sweep: no job succeeded, so there is nothing to plot\n");
    }
    fprintf(stderr, "ctrain: sweep: wrote %s/results.csv, results.md%s\n", dir,
            any_ok ? ", results.png" : "");
    return nfailed ? 3 : 0;
}

/* ---- the command ------------------------------------------------------------------------- */

int ct_cmd_sweep(ct_run *r) {
    const ct_config *c = &r->cfg;
    double t0 = ct_now();
    strlist ckpts = {0};
    if (share_checkpoints(&r->d, c->sweep.checkpoints, &ckpts) != CT_OK) {
        if (r->d.rank == 0) fprintf(stderr, "ctrain: error: %s: %s\n", r->cfg_path, ct_last_error());
        return 1;
    }
    int nvariants = 0;
    variant *vs = make_variants(c, &nvariants);
    int64_t njobs = (int64_t)ckpts.n * nvariants;

    ct_sweep sq;
    ct_status st = ct_sweep_open(&r->d, c->sweep.group_size, njobs, &sq);
    if (ct_run_check(&r->d, st) != CT_OK) {
        strlist_free(&ckpts);
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
    job_result *mine = NULL;
    int nmine = 0, cap = 0;
    worker w = {.variant = -1};
    for (int64_t j; (j = ct_sweep_next(&sq)) >= 0;) {
        int vi = (int)(j / ckpts.n);
        const char *path = ckpts.s[j % ckpts.n];
        worker_use(&w, vs, vi, &sq.group, r->cfg_path);
        job_result res = {.job = j};
        run_job(&w, path, &sq.group, &res);
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
        job_result *res = ct_calloc((size_t)njobs, sizeof *res);
        char *seen = ct_calloc((size_t)njobs, 1);
        const job_result *got = all;
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
        const char **labels = short_labels(&ckpts);
        report rep = {&ckpts, vs, nvariants, res, njobs, labels, false, false};
        for (int v = 1; v < nvariants; v++) {
            rep.vary_ds |= strcmp(vs[v].dataset, vs[0].dataset) != 0;
            rep.vary_ov |= strcmp(vs[v].overrides, vs[0].overrides) != 0;
        }
        rc = write_outputs(c, &rep, nfailed);
        json_t *o = ct_json_record("sweep");
        ct_json_int(o, "jobs", njobs);
        ct_json_int(o, "ok", njobs - nfailed);
        ct_json_int(o, "failed", nfailed);
        ct_json_int(o, "groups", sq.ngroups);
        ct_json_str(o, "queue", sq.dynamic ? "dynamic" : "round-robin");
        ct_json_real(o, "seconds", ct_now() - t0, "%.3f");
        ct_json_emit(o, stdout);
        for (int i = 0; i < ckpts.n; i++) free((void *)labels[i]);
        free(labels);
        free(res);
        free(seen);
    }
    free(all);
    ct_dist_bcast(&r->d, &rc, sizeof rc, 0);
    ct_sweep_close(&sq);
    strlist_free(&ckpts);
    free(vs);
    return rc;
}
