/* ctrain train: the data-parallel training loop, evaluation after every epoch, atomic
 * checkpoints from rank 0, and exact resume. */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"

/* Every stochastic stream (shuffle, augmentation, dropout) is re-seeded from (seed, epoch,
 * rank) at the start of each epoch, so a resumed run replays the same batches, crops and
 * masks as an uninterrupted one. */
static uint64_t mix(uint64_t a, uint64_t b) {
    uint64_t z = a * 0x9e3779b97f4a7c15ULL + b + 0x632be59bd9b4e019ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static void reseed_epoch(ct_run *r, ct_loader *l, int epoch) {
    uint64_t base = mix(mix(r->cfg.train.seed, (uint64_t)epoch), (uint64_t)r->d.rank);
    ct_rng_seed(ct_loader_rng(l), mix(base, 1));
    ct_named mods = ct_module_modules(r->model);
    for (int i = 0; i < mods.n; i++)
        ct_module_reseed(mods.owners[i], mix(base, 100 + (uint64_t)i));
    ct_named_free(&mods);
}

/* Adds a group with every trainable parameter that no group holds yet. */
static void add_group(ct_optim *o, ct_module *m, const bool *in_group, double lr) {
    ct_named t = ct_module_params(m, true);
    ct_named all = ct_module_params(m, false);
    const char **names = ct_malloc((size_t)t.n * sizeof *names + 1);
    ct_tensor **ps = ct_malloc((size_t)t.n * sizeof *ps + 1);
    int n = 0;
    for (int i = 0, j = 0; i < all.n; i++) {
        if (!all.tensors[i]->requires_grad) continue;
        if (!in_group || !in_group[i]) names[n] = t.names[j], ps[n++] = t.tensors[j];
        j++;
    }
    if (n) ct_optim_add_group(o, n, names, ps, lr, CT_OPTIM_DEFAULT);
    free(names);
    free(ps);
    ct_named_free(&t);
    ct_named_free(&all);
}

/* Staged unfreezing: after `unfreeze_after` epochs the named parameters join training in a
 * group of their own with a scaled-down lr. Every rank does this at the same epoch; DDP
 * rebuilds its buckets at the next step. */
static void maybe_unfreeze(ct_run *r, ct_optim *o, int epoch) {
    const ct_config *c = &r->cfg;
    if (c->train.unfreeze_after <= 0 || epoch != c->train.unfreeze_after || !*c->train.unfreeze) return;
    ct_named all = ct_module_params(r->model, false);
    bool *was = ct_malloc((size_t)all.n + 1);
    for (int i = 0; i < all.n; i++) was[i] = all.tensors[i]->requires_grad;
    int hits = ct_module_set_requires_grad(r->model, c->train.unfreeze, true);
    add_group(o, r->model, was, c->optim.lr * c->train.unfreeze_lr_scale);
    if (r->d.rank == 0)
        fprintf(stderr, "ctrain: after %d epochs: unfroze %d parameters (%s) with lr x %g\n", epoch, hits,
                c->train.unfreeze, c->train.unfreeze_lr_scale);
    free(was);
    ct_named_free(&all);
}

ct_status ct_mkdir_p(const char *dir) {
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", dir) >= (int)sizeof buf)
        return ct_error(CT_ERR_IO, "%.64s...: directory name too long", dir);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return ct_error(CT_ERR_IO, "%s: cannot create directory: %s", buf, strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, 0755) != 0 && errno != EEXIST)
        return ct_error(CT_ERR_IO, "%s: cannot create directory: %s", buf, strerror(errno));
    return CT_OK;
}

/* The newest checkpoint is named in <dir>/latest (itself written atomically). The file may
 * have been edited or copied from elsewhere: it must hold one plain file name, so resume
 * never loads a file outside the run's directory. */
static ct_status latest_checkpoint(const char *dir, char *path, size_t n) {
    char lp[CT_CFG_STR + 16];
    snprintf(lp, sizeof lp, "%s/latest", dir);
    FILE *f = NULL;
    if (access(lp, F_OK) != 0)
        return ct_error(CT_ERR_IO, "resume: no checkpoint to resume from (%s: %s)", lp, strerror(errno));
    ct_status st = ct_fopen_regular(lp, &f);
    if (st != CT_OK) return st;
    char name[256] = {0};
    size_t len = fread(name, 1, sizeof name - 1, f);
    bool more = fgetc(f) != EOF;
    fclose(f);
    if (len && name[len - 1] == '\n') name[--len] = 0;
    if (!len) return ct_error(CT_ERR_FORMAT, "%s: empty", lp);
    bool plain = !more && strlen(name) == len && strcmp(name, ".") && strcmp(name, "..");
    for (size_t i = 0; plain && i < len; i++) plain = name[i] != '/' && (unsigned char)name[i] >= 0x20;
    if (!plain)
        return ct_error(CT_ERR_FORMAT, "%s: must hold the name of a checkpoint file in %s (one line, no '/'), "
                        "not '%.64s%s'", lp, dir, name, len > 64 || more ? "..." : "");
    if (snprintf(path, n, "%s/%s", dir, name) >= (int)n) return ct_error(CT_ERR_IO, "%s/%s: path too long", dir, name);
    return CT_OK;
}

struct candidate {
    char name[256];
    struct timespec mtime;
};
static int list_checkpoints(const char *dir, const char *skip, struct candidate **out);

/* epoch_step > 0: a mid-epoch checkpoint, named after the epoch it is in (1-based) so that
 * names sort in training order: ckpt-epoch0004-step000010 comes before ckpt-epoch0004. */
static ct_status save_checkpoint(ct_run *r, ct_optim *o, int epochs_done, int64_t step, int64_t epoch_step,
                                 const char *rank_state) {
    char name[64], path[CT_CFG_STR + 300], lp[CT_CFG_STR + 16]; /* path: also a listed name (< 256) */
    if (epoch_step)
        snprintf(name, sizeof name, "ckpt-epoch%04d-step%06lld.safetensors", epochs_done + 1, (long long)epoch_step);
    else
        snprintf(name, sizeof name, "ckpt-epoch%04d.safetensors", epochs_done);
    snprintf(path, sizeof path, "%s/%s", r->cfg.output.dir, name);
    ct_progress p = {.epoch = epochs_done, .step = step, .seed = r->cfg.train.seed, .world = r->d.size,
                     .epoch_step = epoch_step, .rank_state = rank_state};
    ct_status st = ct_ckpt_save(path, r->model, o, &p);
    snprintf(lp, sizeof lp, "%s/latest", r->cfg.output.dir);
    char line[80];
    int k = snprintf(line, sizeof line, "%s\n", name);
    if (st == CT_OK) st = ct_write_file_atomic(lp, line, (size_t)k);
    if (st == CT_OK && r->cfg.output.keep > 0) { /* output.keep: only the newest N stay */
        struct candidate *c = NULL;
        int n = list_checkpoints(r->cfg.output.dir, NULL, &c);
        for (int i = r->cfg.output.keep; i < n; i++) {
            snprintf(path, sizeof path, "%s/%s", r->cfg.output.dir, c[i].name);
            if (strcmp(c[i].name, name)) remove(path); /* best effort: one already gone is fine */
        }
        free(c);
    }
    return st;
}

/* Opens a checkpoint to resume from: its structure and checksum (ct_st_load), finite
 * values, and its progress metadata. *f is NULL on error. */
static ct_status open_valid(const ct_run *r, const char *path, ct_st_file **f, ct_progress *p) {
    ct_status st = ct_run_open_checkpoint(r, path, f);
    if (st == CT_OK && (st = ct_ckpt_progress(*f, p)) != CT_OK) {
        ct_st_free(*f);
        *f = NULL;
    }
    return st;
}

static int newest_first(const void *a, const void *b) {
    const struct candidate *x = a, *y = b;
    if (x->mtime.tv_sec != y->mtime.tv_sec) return x->mtime.tv_sec < y->mtime.tv_sec ? 1 : -1;
    if (x->mtime.tv_nsec != y->mtime.tv_nsec) return x->mtime.tv_nsec < y->mtime.tv_nsec ? 1 : -1;
    return strcmp(y->name, x->name);
}

/* The regular files ckpt-*.safetensors in dir but skip (a path, may be NULL), newest first
 * by modification time, into *out (malloc'd); returns their count. */
static int list_checkpoints(const char *dir, const char *skip, struct candidate **out) {
    DIR *d = opendir(dir);
    struct candidate *c = NULL;
    int nc = 0, cap = 0;
    char path[CT_CFG_STR + 300];
    for (struct dirent *e; d && (e = readdir(d));) {
        size_t len = strlen(e->d_name);
        struct stat sb;
        if (strncmp(e->d_name, "ckpt-", 5) || len < 17 || len >= sizeof c->name ||
            strcmp(e->d_name + len - 12, ".safetensors") ||
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >= (int)sizeof path ||
            (skip && !strcmp(path, skip)) || stat(path, &sb) != 0 || !S_ISREG(sb.st_mode))
            continue;
        if (nc == cap) {
            cap = cap ? 2 * cap : 16;
            c = realloc(c, (size_t)cap * sizeof *c);
            CT_ASSERT(c, "listing checkpoints: out of memory");
        }
        snprintf(c[nc].name, sizeof c[nc].name, "%s", e->d_name);
        c[nc++].mtime = sb.st_mtim;
    }
    if (d) closedir(d);
    if (nc) qsort(c, (size_t)nc, sizeof *c, newest_first);
    *out = c;
    return nc;
}

/* The checkpoint `latest` names is unusable (missing, truncated, corrupt): opens the newest
 * other ckpt-*.safetensors in dir that is valid, newest by modification time, into path.
 * CT_ERR_IO if there is none. */
static ct_status fall_back(const ct_run *r, const char *bad, char *path, size_t n, ct_st_file **f,
                           ct_progress *p) {
    const char *dir = r->cfg.output.dir;
    struct candidate *c = NULL;
    int nc = list_checkpoints(dir, bad, &c);
    ct_status st = CT_ERR_IO;
    for (int i = 0; i < nc && st != CT_OK; i++) {
        snprintf(path, n, "%s/%s", dir, c[i].name);
        st = open_valid(r, path, f, p);
        if (st != CT_OK && r->d.rank == 0)
            fprintf(stderr, "ctrain: warning: not resuming from %s either: %s\n", path, ct_last_error());
    }
    free(c);
    return st;
}

/* The checkpoint to resume from, opened and valid: the one `latest` names, or, if that is
 * unusable, the newest valid one, with a warning naming both. */
static ct_status resume_point(const ct_run *r, char *path, size_t n, ct_st_file **f, ct_progress *p) {
    ct_status st = latest_checkpoint(r->cfg.output.dir, path, n);
    if (st != CT_OK) return st; /* no latest, or one naming a file outside output.dir */
    if ((st = open_valid(r, path, f, p)) != CT_OK) {
        /* A crash or a bad disk can leave the newest checkpoint unreadable while older ones
         * are fine: resume from the newest valid one, and say so. */
        char bad[CT_CFG_STR + 300], why[1024];
        snprintf(bad, sizeof bad, "%s", path);
        snprintf(why, sizeof why, "%s", ct_last_error());
        st = fall_back(r, bad, path, n, f, p);
        if (st != CT_OK)
            return ct_error(st, "%s (and no other checkpoint in %s is valid)", why, r->cfg.output.dir);
        if (r->d.rank == 0)
            fprintf(stderr, "ctrain: warning: %s/latest names %s, which is unusable (%s); resuming from %s, "
                    "the newest valid checkpoint\n", r->cfg.output.dir, bad, why, path);
    }
    return st;
}

int ct_cmd_latest(ct_run *r) {
    char path[CT_CFG_STR + 300], lp[CT_CFG_STR + 16];
    snprintf(lp, sizeof lp, "%s/latest", r->cfg.output.dir);
    if (access(lp, F_OK) != 0) return 0; /* nothing written yet: a fresh start */
    ct_st_file *f = NULL;
    ct_progress p = {0};
    ct_status st = resume_point(r, path, sizeof path, &f, &p);
    ct_st_free(f);
    if (st != CT_OK) {
        fprintf(stderr, "ctrain: warning: nothing to resume from: %s\n", ct_last_error());
        return 0;
    }
    printf("%s\n", path);
    return 0;
}

static ct_status resume(ct_run *r, ct_optim *o, int *start_epoch, int64_t *step, ct_midepoch *mid) {
    char path[CT_CFG_STR + 300];
    ct_st_file *f = NULL;
    ct_progress p = {0};
    ct_status st = resume_point(r, path, sizeof path, &f, &p);
    if (st != CT_OK) return st;
    /* Replay staged unfreezing so the optimizer has the groups the saved state names. */
    int at = r->cfg.train.unfreeze_after; /* unfreezing happens at most once, at this epoch */
    bool mid_epoch = p.epoch_step > 0; /* then epoch p.epoch has begun, and unfrozen if it is `at` */
    if (st == CT_OK && at > 0 && (at < p.epoch || (mid_epoch && at == p.epoch))) maybe_unfreeze(r, o, at);
    if (st == CT_OK) st = ct_run_explain_classes(r, ct_ckpt_load_model(f, r->model, true, NULL));
    if (st == CT_OK) st = ct_ckpt_load_optim(f, o);
    if (st == CT_OK) st = ct_midepoch_take(&r->d, r->model, &p, path, mid);
    if (st == CT_OK) {
        *start_epoch = (int)p.epoch;
        *step = p.step;
        if (r->d.rank == 0)
            fprintf(stderr, "ctrain: resumed from %s (epoch %lld, step %lld, written by %d ranks)\n",
                    path, (long long)p.epoch, (long long)p.step, p.world);
    }
    ct_st_free(f);
    return st;
}

/* A run that stopped after logging epochs its newest checkpoint does not hold (the metrics
 * line is written before the checkpoint) would list them twice once resumed: keep only the
 * lines up to the resumed epoch. Best effort, like the metrics file itself. */
static void trim_metrics(const char *path, int upto) {
    FILE *f = fopen(path, "r");
    if (!f) return; /* nothing logged yet */
    char *line = NULL, *buf = NULL;
    size_t lcap = 0, n = 0, cap = 0;
    ssize_t len;
    bool dropped = false;
    while ((len = getline(&line, &lcap, f)) > 0) {
        int64_t e;
        if (ct_json_int_field(line, "epoch", &e) && e > upto) {
            dropped = true;
            continue;
        }
        if (n + (size_t)len > cap) {
            cap = 2 * (n + (size_t)len);
            buf = ct_realloc(buf, cap);
        }
        memcpy(buf + n, line, (size_t)len);
        n += (size_t)len;
    }
    fclose(f);
    free(line);
    if (dropped && ct_write_file_atomic(path, buf ? buf : "", n) != CT_OK)
        fprintf(stderr, "ctrain: warning: %s\n", ct_last_error());
    free(buf);
}

/* A testing aid: CT_FAULT="RANK:WHERE[:KIND]" makes that rank fail at WHERE, a step (before
 * it) or eEPOCH (before that epoch's evaluation, 1-based): KIND fatal (the default, an
 * error that ends the job), kill (SIGKILL), stop (SIGSTOP: a hung rank) or term (SIGTERM).
 * With CT_FAULT_ONCE=FILE it fires only if FILE does not exist, and creates it, so a
 * relaunched job (ctrun --restarts) runs through. tests/faults uses it. */
static void maybe_inject_fault(const ct_dist *d, int64_t step, int eval_epoch) {
    const char *f = getenv("CT_FAULT"), *once = getenv("CT_FAULT_ONCE");
    int rank;
    char where[32], kind[16] = "fatal";
    if (!f || sscanf(f, "%d:%31[^:]:%15s", &rank, where, kind) < 2 || rank != d->rank) return;
    char *end;
    bool eval = where[0] == 'e';
    long long at = strtoll(where + eval, &end, 10);
    if (*end || (eval ? at != eval_epoch : eval_epoch || at != step)) return;
    if (once && *once) {
        if (access(once, F_OK) == 0) return;
        FILE *o = fopen(once, "w");
        if (o) fclose(o);
    }
    fprintf(stderr, "ctrain: rank %d: injecting fault %s (CT_FAULT=%s)\n", d->rank, kind, f);
    fflush(stderr);
    if (!strcmp(kind, "kill")) raise(SIGKILL);
    else if (!strcmp(kind, "stop")) raise(SIGSTOP); /* goes on if continued */
    else if (!strcmp(kind, "term")) raise(SIGTERM); /* preemption, if the signal is one of its */
    else ct_fatal("injected fault (CT_FAULT=%s) at %s %lld", f, eval ? "the evaluation of epoch" : "step", at);
}

/* Random transforms make every epoch's inputs differ: no feature cache then. */
static bool has_random_transform(const ct_config *c) {
    return strstr(c->data.train_transforms, "random") || strstr(c->data.test_transforms, "random");
}

/* An image data set's class names, one a line in label order, to <output.dir>/classes.txt:
 * what a label in the checkpoint's head means. */
static ct_status write_classes(const ct_run *r) {
    const ct_classes *cls = ct_dataset_classes(&r->test);
    if (!cls) return CT_OK;
    size_t n = 1;
    for (int i = 0; i < cls->n; i++) n += strlen(cls->names[i]) + 1;
    char *buf = ct_malloc(n), *p = buf;
    for (int i = 0; i < cls->n; i++) p += sprintf(p, "%s\n", cls->names[i]);
    char path[CT_CFG_STR + 16];
    snprintf(path, sizeof path, "%s/classes.txt", r->cfg.output.dir);
    ct_status st = ct_write_file_atomic(path, buf, (size_t)(p - buf));
    free(buf);
    return st;
}

/* 0, CT_EXIT_PREEMPTED, CT_EXIT_CONFIG for an invalid configuration (a relaunch would meet
 * it again), else 1. */
static int exit_status(ct_status st, bool preempted) {
    if (st == CT_ERR_CONFIG) return CT_EXIT_CONFIG;
    return st != CT_OK ? 1 : preempted ? CT_EXIT_PREEMPTED : 0;
}

int ct_cmd_train(ct_run *r) {
    const ct_config *c = &r->cfg;
    ct_ddp *ddp = NULL;
    ct_optim *opt = NULL;
    ct_dataset train_feat = {0}, test_feat = {0};
    ct_sampler *sampler = NULL;
    ct_loader *loader = NULL;
    FILE *mf = NULL;
    int start_epoch = 0;
    int64_t step = 0;
    ct_midepoch mid = {0};
    bool preempted = false;

    ct_status st = CT_OK;
    if (!*c->output.dir)
        st = ct_error(CT_ERR_CONFIG, "%s: output.dir is empty; it names the directory for checkpoints and metrics",
                      r->cfg_path);
    else if (r->d.rank == 0)
        st = ct_mkdir_p(c->output.dir);
    if (st == CT_OK && r->d.rank == 0) {
        int stale = ct_remove_stale_tmp(c->output.dir);
        if (stale)
            fprintf(stderr, "ctrain: removed %d temporary file(s) in %s left by a killed run\n", stale,
                    c->output.dir);
    }
    if (st == CT_OK && r->d.rank == 0) {
        char p[CT_CFG_STR + 16];
        snprintf(p, sizeof p, "%s/config.ini", c->output.dir);
        st = ct_config_save(c, p);
    }
    if (st == CT_OK && r->d.rank == 0) st = write_classes(r);
    if ((st = ct_run_check(&r->d, st)) != CT_OK) return exit_status(st, false);

    ct_ddp_config dc = ct_ddp_defaults();
    dc.bucket_bytes = (size_t)(c->dist.bucket_mb * 1048576);
    dc.first_bucket_bytes = (size_t)(c->dist.first_bucket_mb * 1048576);
    dc.shm = c->dist.shm;
    dc.timeout_s = c->dist.timeout_s;
    dc.buffers = c->dist.buffers;
    st = ct_ddp_new(r->model, &r->d, &dc, &ddp);
    if (st != CT_OK) {
        if (r->d.rank == 0) fprintf(stderr, "ctrain: error: %s\n", ct_last_error());
        ct_ddp_free(ddp); /* every rank got the same verdict from the collective check */
        return 1;
    }
    opt = ct_optim_new(c->optim);
    add_group(opt, r->model, NULL, c->optim.lr);
    if (c->train.resume) st = resume(r, opt, &start_epoch, &step, &mid);
    if (st == CT_OK) st = ct_preempt_install(c);
    if ((st = ct_run_check(&r->d, st)) != CT_OK) goto out;

    ct_sampler_opts so = {.n = r->train.n, .world = r->d.size, .rank = r->d.rank,
                          .mode = c->dist.shard,
                          .shuffle = true, .seed = c->train.seed};
    ct_loader_opts lo = ct_loader_opts_default(c->train.batch_size);
    lo.mean = (float)c->data.mean;
    lo.std = (float)c->data.std;
    lo.crop_pad = c->data.augment == CT_CFG_AUGMENT_CROP || c->data.augment == CT_CFG_AUGMENT_CROP_FLIP
                      ? c->data.crop_pad : 0;
    lo.hflip = c->data.augment == CT_CFG_AUGMENT_FLIP || c->data.augment == CT_CFG_AUGMENT_CROP_FLIP;
    lo.skip_bad = r->eval_opts.skip_bad;
    lo.workers = r->eval_opts.workers;
    lo.prefetch = r->eval_opts.prefetch;
    lo.norm_channels = r->eval_opts.norm_channels;
    memcpy(lo.channel_mean, r->eval_opts.channel_mean, sizeof lo.channel_mean);
    memcpy(lo.channel_std, r->eval_opts.channel_std, sizeof lo.channel_std);
    lo.wrap = true; /* a skipped file's place goes to another: every rank keeps its step count */
    lo.log = r->eval_opts.log;
    lo.log_ctx = r->eval_opts.log_ctx;
    /* Feature cache: a frozen prefix that is a fixed function (no augmentation in front of
     * it) is run once over the data instead of every step, when its features fit the
     * memory budget (a frozen first conv alone would make 32 times the input). Staged
     * unfreezing could change the prefix, so it turns the cache off. */
    ct_module_train(r->model, true);
    bool augment = lo.crop_pad > 0 || lo.hflip || has_random_transform(c);
    int fixed = c->train.feature_cache == CT_CFG_CACHE_AUTO ? ct_module_frozen_prefix(r->model) : 0;
    bool skipping = r->train.files && lo.skip_bad; /* the cache needs every sample's features */
    const char *why_off = augment ? "data augmentation is on"
                          : skipping ? "data.on_bad = skip"
                          : c->train.unfreeze_after ? "staged unfreezing is configured" : NULL;
    char why_buf[256];
    if (fixed > 0 && !why_off) {
        double n = (double)(r->train.n + r->test.n), f = (double)ct_dist_cache_numel(r->model, fixed, &r->train);
        double mib = n * f * 4 / 1048576;
        if (mib > c->train.feature_cache_max_mb || (double)r->train.n * f > INT_MAX) {
            snprintf(why_buf, sizeof why_buf,
                     "the features of the frozen prefix (the model's first %d layers) would take %.0f MiB "
                     "per rank (train.feature_cache_max_mb = %d; at most %d floats per data set)",
                     fixed, mib, c->train.feature_cache_max_mb, INT_MAX);
            why_off = why_buf;
        }
    }
    int prefix = why_off ? 0 : fixed, nlayers = ct_seq_num_layers(r->model);
    ct_loader_opts eval_lo = r->eval_opts;
    const ct_dataset *train_ds = &r->train, *test_ds = &r->test;
    if (prefix > 0) {
        double t0 = ct_now();
        st = ct_dist_cache_features(&r->d, r->model, prefix, &r->train, &lo, &train_feat);
        if (st == CT_OK) st = ct_dist_cache_features(&r->d, r->model, prefix, &r->test, &r->eval_opts, &test_feat);
        if ((st = ct_run_check(&r->d, st)) != CT_OK) goto out;
        train_ds = &train_feat;
        test_ds = &test_feat;
        /* the features are already normalised model activations */
        lo = ct_loader_opts_default(c->train.batch_size);
        eval_lo = ct_loader_opts_default(c->train.eval_batch_size);
        if (r->d.rank == 0) {
            fprintf(stderr, "ctrain: feature cache on: the frozen prefix (the model's first %d layers) "
                    "runs once; %lld features per sample for %lld + %lld samples, %.0f MiB per rank, %.1f s\n",
                    prefix, (long long)train_feat.sample_numel, (long long)train_feat.n,
                    (long long)test_feat.n,
                    (double)(train_feat.n + test_feat.n) * (double)train_feat.sample_numel * 4 / 1048576,
                    ct_now() - t0);
        }
    } else if (r->d.rank == 0 && fixed > 0) {
        fprintf(stderr, "ctrain: feature cache off: %s\n", why_off);
    }
    st = ct_sampler_new(&sampler, &so);
    if (st == CT_OK) st = ct_loader_new(&loader, train_ds, &lo);
    if ((st = ct_run_check(&r->d, st)) != CT_OK) goto out;
    int64_t shard = ct_sampler_size(sampler);
    /* Every rank has the same shard size, hence the same step count. */
    int64_t steps = c->train.drop_last ? shard / c->train.batch_size
                                       : (shard + c->train.batch_size - 1) / c->train.batch_size;
    if (steps < 1) {
        if (r->d.rank == 0)
            fprintf(stderr, "ctrain: error: %s: %lld training samples per rank is less than one batch of %d\n",
                    r->cfg_path, (long long)shard, c->train.batch_size);
        st = CT_ERR_CONFIG;
        goto out;
    }
    /* Checkpoints fall on epoch boundaries, so the schedule goes on from epoch * steps. The
     * saved step count differs from that when the checkpoint came from another number of
     * ranks (or batch size): keeping it would leave the cosine short of its end. */
    if (mid.at && (!mid.exact || mid.at > steps || step != (int64_t)start_epoch * steps + mid.at)) {
        /* Another number of ranks (or batch size) deals the epoch out differently: the
         * samples this epoch has left are not known, so the next epoch starts afresh. */
        if (r->d.rank == 0)
            fprintf(stderr, "ctrain: warning: the checkpoint was written %lld steps into epoch %d by %d ranks; "
                    "on %d ranks with %lld steps/epoch that position does not exist, so training goes on "
                    "from the start of epoch %d\n", (long long)mid.at, start_epoch + 1,
                    mid.world, r->d.size, (long long)steps, start_epoch + 2);
        start_epoch++;
        ct_midepoch_free(&mid);
    }
    if (mid.at) {
        if (r->d.rank == 0)
            fprintf(stderr, "ctrain: resuming %lld steps into epoch %d\n", (long long)mid.at, start_epoch + 1);
    } else if (start_epoch > 0 && step != (int64_t)start_epoch * steps) {
        if (r->d.rank == 0)
            fprintf(stderr, "ctrain: the checkpoint's step %lld is step %lld with %lld steps/epoch\n",
                    (long long)step, (long long)start_epoch * steps, (long long)steps);
        step = (int64_t)start_epoch * steps;
    }
    ct_schedule sched = {.kind = c->schedule.name, .per_step = c->schedule.name == CT_SCHED_COSINE,
                         .step_size = c->schedule.step_size, .gamma = c->schedule.gamma,
                         .total = (int64_t)c->train.epochs * steps, .min_lr = c->schedule.min_lr,
                         .warmup_steps = c->schedule.warmup_steps};
    if (r->d.rank == 0) {
        char mp[CT_CFG_STR + 16];
        snprintf(mp, sizeof mp, "%s/metrics.jsonl", c->output.dir);
        if (start_epoch > 0) trim_metrics(mp, start_epoch);
        mf = fopen(mp, start_epoch > 0 ? "a" : "w");
        if (!mf) fprintf(stderr, "ctrain: warning: cannot write %s\n", mp);
        ct_named t = ct_module_params(r->model, true), a = ct_module_params(r->model, false);
        fprintf(stderr, "ctrain: %lld parameters, %lld trainable; %lld training samples on %d rank(s), %lld steps/epoch\n",
                (long long)ct_named_numel(&a), (long long)ct_named_numel(&t), (long long)r->train.n,
                r->d.size, (long long)steps);
        ct_named_free(&t);
        ct_named_free(&a);
    }

    /* Image files are decoded during the epoch, and a rank that meets a bad one must not
     * leave the others waiting in the all-reduce: every step, the ranks agree first. */
    bool decoding = train_ds->files != NULL;
    bool failed = false;
    for (int epoch = start_epoch; epoch < c->train.epochs && !failed; epoch++) {
        if (epoch != start_epoch || !mid.at) maybe_unfreeze(r, opt, epoch); /* resume() did it */
        reseed_epoch(r, loader, epoch);
        ct_loader_start(loader, ct_sampler_epoch(sampler, (uint64_t)epoch), shard);
        ct_module_train(r->model, true);
        ct_progress_bar bar;
        ct_progress_start(&bar, steps, c->train.log_every);
        double loss_sum = 0, t0 = ct_now();
        int64_t skipped = 0; /* steps skipped for a non-finite loss (train.on_nonfinite) */
        int64_t s0 = epoch == start_epoch ? mid.at : 0;
        if (s0) {
            ct_midepoch_resume(&mid, r->model, loader);
            loss_sum = mid.loss_sum;
            skipped = mid.skipped;
        }
        for (int64_t s = s0; s < steps && !failed && !preempted; s++, step++) CT_SCOPE {
            maybe_inject_fault(&r->d, step, 0);
            ct_batch b;
            ct_loader_next(loader, &b);
            if (decoding && (st = ct_run_check(&r->d, ct_loader_status(loader))) != CT_OK) {
                failed = true;
                continue; /* not break: continue lets CT_SCOPE close its scope */
            }
            ct_status pst = ct_ddp_prepare(ddp);
            if (pst != CT_OK) ct_fatal("%s", ct_last_error());
            ct_optim_apply_schedule(opt, &sched, step, epoch);
            ct_tensor *logits = prefix ? ct_seq_forward_range(r->model, prefix, nlayers, b.x)
                                       : ct_module_forward(r->model, b.x);
            ct_tensor *loss = ct_cross_entropy(logits, b.y, CT_REDUCE_MEAN);
            bool finite = isfinite(loss->data[0]);
            if (!finite && c->train.on_nonfinite == CT_CFG_NONFINITE_ERROR)
                ct_fatal("epoch %d step %lld: the training loss is %f (train.on_nonfinite = error; 'skip' "
                         "skips such steps)", epoch + 1, (long long)s + 1, loss->data[0]);
            ct_backward(loss);
            ct_ddp_finish(ddp);
            /* A non-finite loss on any rank makes the averaged gradients non-finite on all
             * of them: every rank skips the update together. */
            if (c->train.on_nonfinite == CT_CFG_NONFINITE_SKIP && !ct_ddp_all(ddp, finite)) {
                skipped++;
            } else {
                ct_optim_step(opt);
                loss_sum += loss->data[0];
            }
            ct_ddp_zero_grad(ddp);
            if (r->d.rank == 0 && s >= skipped)
                ct_progress_update(&bar, epoch + 1, s, steps, loss_sum / (double)(s + 1 - skipped), b.size * r->d.size);
            /* Step boundary: a preemption signal on any rank, or output.checkpoint_every_steps. */
            preempted = ct_preempt_agree(&r->d, ddp, step);
            int every = c->output.checkpoint_every_steps;
            if (preempted || (every && (step + 1) % every == 0 && s + 1 < steps)) {
                char *rs = ct_midepoch_gather(&r->d, r->model, loss_sum, skipped);
                st = r->d.rank == 0 ? save_checkpoint(r, opt, epoch, step + 1, s + 1, rs) : CT_OK;
                free(rs);
                failed = (st = ct_run_check(&r->d, st)) != CT_OK;
            }
        }
        if (skipped && r->d.rank == 0)
            fprintf(stderr, "ctrain: warning: epoch %d: skipped %lld of %lld steps with a non-finite loss "
                    "(train.on_nonfinite = skip)\n", epoch + 1, (long long)skipped, (long long)steps);
        double secs = ct_now() - t0;
        if (r->d.rank == 0) ct_progress_end(&bar);
        if (failed || preempted) break;
        maybe_inject_fault(&r->d, step, epoch + 1);
        /* The epoch's training loss averaged over ranks (NaN if every step was skipped), the
         * image files skipped on all ranks, and the evaluation. */
        double tl[2] = {steps > skipped ? loss_sum / (double)(steps - skipped) : NAN,
                        (double)ct_loader_skipped(loader)};
        ct_dist_sum(&r->d, tl, 2);
        tl[0] /= r->d.size;
        ct_ddp_sync_buffers(ddp);
        ct_eval_result ev;
        st = ct_dist_evaluate_from(&r->d, r->model, prefix, test_ds, &eval_lo, &ev);
        if (decoding && st != CT_OK) { /* a test file: every rank has the verdict already */
            if (r->d.rank == 0) fprintf(stderr, "ctrain: error: evaluation: %s\n", ct_last_error());
            goto out;
        }
        if (st != CT_OK) ct_fatal("evaluation: %s", ct_last_error());
        if (r->d.rank == 0) {
            json_t *o = ct_json_record("eval");
            ct_json_int(o, "epoch", epoch + 1);
            ct_json_real(o, "loss", ev.loss, "%.6f");
            ct_json_real(o, "accuracy", ev.accuracy, "%.6f");
            ct_json_int(o, "samples", ev.samples);
            ct_json_emit(o, stdout);
            o = ct_json_record(NULL);
            ct_json_int(o, "epoch", epoch + 1);
            ct_json_int(o, "step", step);
            ct_json_real(o, "train_loss", tl[0], "%.6f");
            ct_json_real(o, "eval_loss", ev.loss, "%.6f");
            ct_json_real(o, "eval_accuracy", ev.accuracy, "%.6f");
            ct_json_int(o, "eval_samples", ev.samples);
            ct_json_real(o, "lr", ct_optim_lr(opt, 0), "%.6g");
            ct_json_real(o, "epoch_s", secs, "%.3f");
            ct_json_real(o, "samples_per_s",
                         (double)(steps * c->train.batch_size * r->d.size) / secs, "%.1f");
            ct_json_int(o, "ranks", r->d.size);
            if (decoding) ct_json_int(o, "skipped", (int64_t)tl[1]); /* image files skipped */
            ct_json_emit(o, mf);
        }
        bool ckpt = (epoch + 1) % c->output.checkpoint_every == 0 || epoch + 1 == c->train.epochs;
        if (ckpt) {
            st = r->d.rank == 0 ? save_checkpoint(r, opt, epoch + 1, step, 0, NULL) : CT_OK;
            /* The barrier is the agreement: nobody goes on while the file may be missing. */
            if ((st = ct_run_check(&r->d, st)) != CT_OK) goto out;
        }
    }
out:
    ct_preempt_uninstall();
    ct_midepoch_free(&mid);
    if (mf) fclose(mf);
    ct_loader_free(loader);
    ct_sampler_free(sampler);
    ct_optim_free(opt);
    ct_ddp_free(ddp);
    ct_dataset_free(&train_feat);
    ct_dataset_free(&test_feat);
    return exit_status(st, preempted);
}
