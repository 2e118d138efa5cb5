/* ctrain train: the data-parallel training loop, evaluation after every epoch, atomic
 * checkpoints from rank 0, and exact resume. */
#include <dirent.h>
#include <errno.h>
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

static ct_status save_checkpoint(ct_run *r, ct_optim *o, int epochs_done, int64_t step) {
    char name[64], path[CT_CFG_STR + 80], lp[CT_CFG_STR + 16];
    snprintf(name, sizeof name, "ckpt-epoch%04d.safetensors", epochs_done);
    snprintf(path, sizeof path, "%s/%s", r->cfg.output.dir, name);
    ct_progress p = {.epoch = epochs_done, .step = step, .seed = r->cfg.train.seed, .world = r->d.size};
    ct_status st = ct_ckpt_save(path, r->model, o, &p);
    snprintf(lp, sizeof lp, "%s/latest", r->cfg.output.dir);
    char line[80];
    int k = snprintf(line, sizeof line, "%s\n", name);
    if (st == CT_OK) st = ct_write_file_atomic(lp, line, (size_t)k);
    int keep = r->cfg.output.keep;
    if (st == CT_OK && keep > 0 && epochs_done - keep * r->cfg.output.checkpoint_every > 0) {
        snprintf(path, sizeof path, "%s/ckpt-epoch%04d.safetensors", r->cfg.output.dir,
                 epochs_done - keep * r->cfg.output.checkpoint_every);
        remove(path); /* best effort: an old checkpoint that is already gone is fine */
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

typedef struct {
    char name[256];
    struct timespec mtime;
} candidate;

static int newest_first(const void *a, const void *b) {
    const candidate *x = a, *y = b;
    if (x->mtime.tv_sec != y->mtime.tv_sec) return x->mtime.tv_sec < y->mtime.tv_sec ? 1 : -1;
    if (x->mtime.tv_nsec != y->mtime.tv_nsec) return x->mtime.tv_nsec < y->mtime.tv_nsec ? 1 : -1;
    return strcmp(y->name, x->name);
}

/* The checkpoint `latest` names is unusable (missing, truncated, corrupt): opens the newest
 * other ckpt-*.safetensors in dir that is valid, newest by modification time, into path.
 * CT_ERR_IO if there is none. */
static ct_status fall_back(const ct_run *r, const char *bad, char *path, size_t n, ct_st_file **f,
                           ct_progress *p) {
    const char *dir = r->cfg.output.dir;
    DIR *d = opendir(dir);
    candidate *c = NULL;
    int nc = 0, cap = 0;
    for (struct dirent *e; d && (e = readdir(d));) {
        size_t len = strlen(e->d_name);
        struct stat sb;
        if (strncmp(e->d_name, "ckpt-", 5) || len < 17 || len >= sizeof c->name ||
            strcmp(e->d_name + len - 12, ".safetensors") || snprintf(path, n, "%s/%s", dir, e->d_name) >= (int)n ||
            !strcmp(path, bad) || stat(path, &sb) != 0 || !S_ISREG(sb.st_mode))
            continue;
        if (nc == cap) {
            cap = cap ? 2 * cap : 16;
            c = realloc(c, (size_t)cap * sizeof *c);
            CT_ASSERT(c, "resume: out of memory");
        }
        snprintf(c[nc].name, sizeof c[nc].name, "%s", e->d_name);
        c[nc++].mtime = sb.st_mtim;
    }
    if (d) closedir(d);
    if (nc) qsort(c, (size_t)nc, sizeof *c, newest_first);
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

static ct_status resume(ct_run *r, ct_optim *o, int *start_epoch, int64_t *step) {
    char path[CT_CFG_STR + 300];
    ct_st_file *f = NULL;
    ct_progress p = {0};
    ct_status st = latest_checkpoint(r->cfg.output.dir, path, sizeof path);
    if (st != CT_OK) return st; /* no latest, or one naming a file outside output.dir */
    if ((st = open_valid(r, path, &f, &p)) != CT_OK) {
        /* A crash or a bad disk can leave the newest checkpoint unreadable while older ones
         * are fine: resume from the newest valid one, and say so. */
        char bad[sizeof path], why[1024];
        snprintf(bad, sizeof bad, "%s", path);
        snprintf(why, sizeof why, "%s", ct_last_error());
        st = fall_back(r, bad, path, sizeof path, &f, &p);
        if (st != CT_OK)
            return ct_error(st, "%s (and no other checkpoint in %s is valid)", why, r->cfg.output.dir);
        if (r->d.rank == 0)
            fprintf(stderr, "ctrain: warning: %s/latest names %s, which is unusable (%s); resuming from %s, "
                    "the newest valid checkpoint\n", r->cfg.output.dir, bad, why, path);
    }
    /* Replay staged unfreezing so the optimizer has the groups the saved state names. */
    int at = r->cfg.train.unfreeze_after; /* unfreezing happens at most once, at this epoch */
    if (st == CT_OK && at > 0 && at < p.epoch) maybe_unfreeze(r, o, at);
    if (st == CT_OK) st = ct_run_explain_classes(r, ct_ckpt_load_model(f, r->model, true, NULL));
    if (st == CT_OK) st = ct_ckpt_load_optim(f, o);
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

/* A testing aid: CT_FAULT="RANK:STEP" makes that rank fail at that step, to prove one
 * rank's fatal error ends the whole job. */
static void maybe_inject_fault(const ct_dist *d, int64_t step) {
    const char *f = getenv("CT_FAULT");
    int rank;
    long long at;
    if (f && sscanf(f, "%d:%lld", &rank, &at) == 2 && rank == d->rank && at == step)
        ct_fatal("injected fault (CT_FAULT=%s) at step %lld", f, at);
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

/* ---- ct_cmd_train, step by step ------------------------------------------------------ */

/* What a training run holds from its set-up to its last epoch. */
typedef struct {
    ct_run *r;
    const ct_config *c;
    ct_ddp *ddp;
    ct_optim *opt;
    int start_epoch;
    int64_t step;                     /* optimizer steps so far, over all epochs */
    ct_dataset train_feat, test_feat; /* the feature cache, when it is on */
    const ct_dataset *train_ds, *test_ds; /* what the loop reads: the data sets or the cache */
    ct_loader_opts lo, eval_lo;
    int prefix, nlayers; /* layers [0, prefix) are in the cache and do not run */
    ct_sampler *sampler;
    ct_loader *loader;
    int64_t shard, steps; /* samples and steps per epoch on each rank */
    ct_schedule sched;
    FILE *mf;      /* metrics.jsonl, rank 0 */
    bool decoding; /* image files are decoded during the epoch */
} trainer;

/* One epoch's training, for its log records. */
typedef struct {
    double loss_sum;
    int64_t skipped; /* steps skipped for a non-finite loss (train.on_nonfinite) */
    double secs;
} epoch_stats;

/* Rank 0: output.dir with the config and class names the run used (stale temporary files
 * of a killed run removed). */
static ct_status prepare_output(ct_run *r) {
    const ct_config *c = &r->cfg;
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
    return st;
}

/* DDP around the model, the optimizer, and the state of the checkpoint resumed from. */
static ct_status setup_training(trainer *t) {
    ct_run *r = t->r;
    const ct_config *c = t->c;
    ct_ddp_config dc = ct_ddp_defaults();
    dc.bucket_bytes = (size_t)(c->dist.bucket_mb * 1048576);
    dc.first_bucket_bytes = (size_t)(c->dist.first_bucket_mb * 1048576);
    dc.shm = c->dist.shm;
    dc.timeout_s = c->dist.timeout_s;
    dc.buffers = c->dist.buffers;
    ct_status st = ct_ddp_new(r->model, &r->d, &dc, &t->ddp);
    if (st != CT_OK) { /* every rank got the same verdict from the collective check */
        if (r->d.rank == 0) fprintf(stderr, "ctrain: error: %s\n", ct_last_error());
        return st;
    }
    t->opt = ct_optim_new(c->optim);
    add_group(t->opt, r->model, NULL, c->optim.lr);
    if (c->train.resume) st = resume(r, t->opt, &t->start_epoch, &t->step);
    return ct_run_check(&r->d, st);
}

/* The training loader's options: the evaluation's normalisation plus augmentation. */
static ct_loader_opts train_loader_opts(const ct_run *r) {
    const ct_config *c = &r->cfg;
    ct_loader_opts lo = ct_loader_opts_default(c->train.batch_size);
    lo.mean = (float)c->data.mean;
    lo.std = (float)c->data.std;
    lo.crop_pad = c->data.augment == CT_CFG_AUGMENT_CROP || c->data.augment == CT_CFG_AUGMENT_CROP_FLIP
                      ? c->data.crop_pad : 0;
    lo.hflip = c->data.augment == CT_CFG_AUGMENT_FLIP || c->data.augment == CT_CFG_AUGMENT_CROP_FLIP;
    lo.skip_bad = r->eval_opts.skip_bad;
    lo.norm_channels = r->eval_opts.norm_channels;
    memcpy(lo.channel_mean, r->eval_opts.channel_mean, sizeof lo.channel_mean);
    memcpy(lo.channel_std, r->eval_opts.channel_std, sizeof lo.channel_std);
    lo.wrap = true; /* a skipped file's place goes to another: every rank keeps its step count */
    lo.log = r->eval_opts.log;
    lo.log_ctx = r->eval_opts.log_ctx;
    return lo;
}

/* Feature cache: a frozen prefix that is a fixed function (no augmentation in front of it)
 * is run once over the data instead of every step, when its features fit the memory
 * budget (a frozen first conv alone would make 32 times the input). Staged unfreezing
 * could change the prefix, so it turns the cache off. Sets what the loop reads. */
static ct_status setup_feature_cache(trainer *t) {
    ct_run *r = t->r;
    const ct_config *c = t->c;
    t->lo = train_loader_opts(r);
    t->eval_lo = r->eval_opts;
    t->train_ds = &r->train;
    t->test_ds = &r->test;
    ct_module_train(r->model, true);
    bool augment = t->lo.crop_pad > 0 || t->lo.hflip || has_random_transform(c);
    int fixed = c->train.feature_cache == CT_CFG_CACHE_AUTO ? ct_module_frozen_prefix(r->model) : 0;
    bool skipping = r->train.files && t->lo.skip_bad; /* the cache needs every sample's features */
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
    t->prefix = why_off ? 0 : fixed;
    t->nlayers = ct_seq_num_layers(r->model);
    if (t->prefix == 0) {
        if (r->d.rank == 0 && fixed > 0) fprintf(stderr, "ctrain: feature cache off: %s\n", why_off);
        return CT_OK;
    }
    double t0 = ct_now();
    ct_status st = ct_dist_cache_features(&r->d, r->model, t->prefix, &r->train, &t->lo, &t->train_feat);
    if (st == CT_OK)
        st = ct_dist_cache_features(&r->d, r->model, t->prefix, &r->test, &r->eval_opts, &t->test_feat);
    if ((st = ct_run_check(&r->d, st)) != CT_OK) return st;
    t->train_ds = &t->train_feat;
    t->test_ds = &t->test_feat;
    /* the features are already normalised model activations */
    t->lo = ct_loader_opts_default(c->train.batch_size);
    t->eval_lo = ct_loader_opts_default(c->train.eval_batch_size);
    if (r->d.rank == 0) {
        fprintf(stderr, "ctrain: feature cache on: the frozen prefix (the model's first %d layers) "
                "runs once; %lld features per sample for %lld + %lld samples, %.0f MiB per rank, %.1f s\n",
                t->prefix, (long long)t->train_feat.sample_numel, (long long)t->train_feat.n,
                (long long)t->test_feat.n,
                (double)(t->train_feat.n + t->test_feat.n) * (double)t->train_feat.sample_numel * 4 / 1048576,
                ct_now() - t0);
    }
    return CT_OK;
}

/* The sampler and loader, the steps per epoch and the learning-rate schedule over them. */
static ct_status setup_steps(trainer *t) {
    ct_run *r = t->r;
    const ct_config *c = t->c;
    ct_sampler_opts so = {.n = r->train.n, .world = r->d.size, .rank = r->d.rank,
                          .mode = c->dist.shard,
                          .shuffle = true, .seed = c->train.seed};
    ct_status st = ct_sampler_new(&t->sampler, &so);
    if (st == CT_OK) st = ct_loader_new(&t->loader, t->train_ds, &t->lo);
    if ((st = ct_run_check(&r->d, st)) != CT_OK) return st;
    t->shard = ct_sampler_size(t->sampler);
    /* Every rank has the same shard size, hence the same step count. */
    t->steps = c->train.drop_last ? t->shard / c->train.batch_size
                                  : (t->shard + c->train.batch_size - 1) / c->train.batch_size;
    if (t->steps < 1) {
        if (r->d.rank == 0)
            fprintf(stderr, "ctrain: error: %s: %lld training samples per rank is less than one batch of %d\n",
                    r->cfg_path, (long long)t->shard, c->train.batch_size);
        return CT_ERR_CONFIG;
    }
    /* Checkpoints fall on epoch boundaries, so the schedule goes on from epoch * steps. The
     * saved step count differs from that when the checkpoint came from another number of
     * ranks (or batch size): keeping it would leave the cosine short of its end. */
    if (t->start_epoch > 0 && t->step != (int64_t)t->start_epoch * t->steps) {
        if (r->d.rank == 0)
            fprintf(stderr, "ctrain: the checkpoint's step %lld is step %lld with %lld steps/epoch\n",
                    (long long)t->step, (long long)t->start_epoch * t->steps, (long long)t->steps);
        t->step = (int64_t)t->start_epoch * t->steps;
    }
    t->sched = (ct_schedule){.kind = c->schedule.name, .per_step = c->schedule.name == CT_SCHED_COSINE,
                             .step_size = c->schedule.step_size, .gamma = c->schedule.gamma,
                             .total = (int64_t)c->train.epochs * t->steps, .min_lr = c->schedule.min_lr,
                             .warmup_steps = c->schedule.warmup_steps};
    /* Image files are decoded during the epoch, and a rank that meets a bad one must not
     * leave the others waiting in the all-reduce: every step, the ranks agree first. */
    t->decoding = t->train_ds->files != NULL;
    return CT_OK;
}

/* Rank 0: metrics.jsonl (a resumed run's is cut back to the checkpoint and appended to)
 * and a summary line. */
static void open_metrics(trainer *t) {
    ct_run *r = t->r;
    const ct_config *c = t->c;
    if (r->d.rank != 0) return;
    char mp[CT_CFG_STR + 16];
    snprintf(mp, sizeof mp, "%s/metrics.jsonl", c->output.dir);
    if (t->start_epoch > 0) trim_metrics(mp, t->start_epoch);
    t->mf = fopen(mp, t->start_epoch > 0 ? "a" : "w");
    if (!t->mf) fprintf(stderr, "ctrain: warning: cannot write %s\n", mp);
    ct_named tr = ct_module_params(r->model, true), a = ct_module_params(r->model, false);
    fprintf(stderr, "ctrain: %lld parameters, %lld trainable; %lld training samples on %d rank(s), %lld steps/epoch\n",
            (long long)ct_named_numel(&a), (long long)ct_named_numel(&tr), (long long)r->train.n,
            r->d.size, (long long)t->steps);
    ct_named_free(&tr);
    ct_named_free(&a);
}

/* One epoch of training steps. Not OK (on every rank) when an image file could not be
 * decoded on some rank. */
static ct_status train_epoch(trainer *t, int epoch, epoch_stats *es) {
    ct_run *r = t->r;
    const ct_config *c = t->c;
    ct_status st = CT_OK;
    maybe_unfreeze(r, t->opt, epoch);
    reseed_epoch(r, t->loader, epoch);
    ct_loader_start(t->loader, ct_sampler_epoch(t->sampler, (uint64_t)epoch), t->shard);
    ct_module_train(r->model, true);
    ct_progress_bar bar;
    ct_progress_start(&bar, t->steps, c->train.log_every);
    double loss_sum = 0, t0 = ct_now();
    int64_t skipped = 0;
    bool failed = false;
    for (int64_t s = 0; s < t->steps && !failed; s++, t->step++) CT_SCOPE {
        maybe_inject_fault(&r->d, t->step);
        ct_batch b;
        ct_loader_next(t->loader, &b);
        if (t->decoding && (st = ct_run_check(&r->d, ct_loader_status(t->loader))) != CT_OK) {
            failed = true;
            continue; /* not break: continue lets CT_SCOPE close its scope */
        }
        ct_status pst = ct_ddp_prepare(t->ddp);
        if (pst != CT_OK) ct_fatal("%s", ct_last_error());
        ct_optim_apply_schedule(t->opt, &t->sched, t->step, epoch);
        ct_tensor *logits = t->prefix ? ct_seq_forward_range(r->model, t->prefix, t->nlayers, b.x)
                                      : ct_module_forward(r->model, b.x);
        ct_tensor *loss = ct_cross_entropy(logits, b.y, CT_REDUCE_MEAN);
        bool finite = isfinite(loss->data[0]);
        if (!finite && c->train.on_nonfinite == CT_CFG_NONFINITE_ERROR)
            ct_fatal("epoch %d step %lld: the training loss is %f (train.on_nonfinite = error; 'skip' "
                     "skips such steps)", epoch + 1, (long long)s + 1, loss->data[0]);
        ct_backward(loss);
        ct_ddp_finish(t->ddp);
        /* A non-finite loss on any rank makes the averaged gradients non-finite on all
         * of them: every rank skips the update together. */
        if (c->train.on_nonfinite == CT_CFG_NONFINITE_SKIP && !ct_ddp_all(t->ddp, finite)) {
            skipped++;
        } else {
            ct_optim_step(t->opt);
            loss_sum += loss->data[0];
        }
        ct_ddp_zero_grad(t->ddp);
        if (r->d.rank == 0 && s >= skipped)
            ct_progress_update(&bar, epoch + 1, s, t->steps, loss_sum / (double)(s + 1 - skipped),
                               b.size * r->d.size);
    }
    if (skipped && r->d.rank == 0)
        fprintf(stderr, "ctrain: warning: epoch %d: skipped %lld of %lld steps with a non-finite loss "
                "(train.on_nonfinite = skip)\n", epoch + 1, (long long)skipped, (long long)t->steps);
    es->secs = ct_now() - t0;
    es->loss_sum = loss_sum;
    es->skipped = skipped;
    if (r->d.rank == 0) ct_progress_end(&bar);
    return st;
}

/* After an epoch: the evaluation, its event line and the epoch's metrics record. */
static ct_status evaluate_and_log(trainer *t, int epoch, const epoch_stats *es) {
    ct_run *r = t->r;
    const ct_config *c = t->c;
    /* The epoch's training loss averaged over ranks (NaN if every step was skipped), the
     * image files skipped on all ranks, and the evaluation. */
    double tl[2] = {t->steps > es->skipped ? es->loss_sum / (double)(t->steps - es->skipped) : NAN,
                    (double)ct_loader_skipped(t->loader)};
    ct_dist_sum(&r->d, tl, 2);
    tl[0] /= r->d.size;
    ct_ddp_sync_buffers(t->ddp);
    ct_eval_result ev;
    ct_status st = ct_dist_evaluate_from(&r->d, r->model, t->prefix, t->test_ds, &t->eval_lo, &ev);
    if (t->decoding && st != CT_OK) { /* a test file: every rank has the verdict already */
        if (r->d.rank == 0) fprintf(stderr, "ctrain: error: evaluation: %s\n", ct_last_error());
        return st;
    }
    if (st != CT_OK) ct_fatal("evaluation: %s", ct_last_error());
    if (r->d.rank != 0) return CT_OK;
    json_t *o = ct_json_record("eval");
    ct_json_int(o, "epoch", epoch + 1);
    ct_json_real(o, "loss", ev.loss, "%.6f");
    ct_json_real(o, "accuracy", ev.accuracy, "%.6f");
    ct_json_int(o, "samples", ev.samples);
    ct_json_emit(o, stdout);
    o = ct_json_record(NULL);
    ct_json_int(o, "epoch", epoch + 1);
    ct_json_int(o, "step", t->step);
    ct_json_real(o, "train_loss", tl[0], "%.6f");
    ct_json_real(o, "eval_loss", ev.loss, "%.6f");
    ct_json_real(o, "eval_accuracy", ev.accuracy, "%.6f");
    ct_json_int(o, "eval_samples", ev.samples);
    ct_json_real(o, "lr", ct_optim_lr(t->opt, 0), "%.6g");
    ct_json_real(o, "epoch_s", es->secs, "%.3f");
    ct_json_real(o, "samples_per_s",
                 (double)(t->steps * c->train.batch_size * r->d.size) / es->secs, "%.1f");
    ct_json_int(o, "ranks", r->d.size);
    if (t->decoding) ct_json_int(o, "skipped", (int64_t)tl[1]); /* image files skipped */
    ct_json_emit(o, t->mf);
    return CT_OK;
}

/* Every output.checkpoint_every epochs and after the last: rank 0 saves a checkpoint. */
static ct_status checkpoint_epoch(trainer *t, int epoch) {
    const ct_config *c = t->c;
    if ((epoch + 1) % c->output.checkpoint_every != 0 && epoch + 1 != c->train.epochs) return CT_OK;
    ct_status st = t->r->d.rank == 0 ? save_checkpoint(t->r, t->opt, epoch + 1, t->step) : CT_OK;
    /* The barrier is the agreement: nobody goes on while the file may be missing. */
    return ct_run_check(&t->r->d, st);
}

static void trainer_free(trainer *t) {
    if (t->mf) fclose(t->mf);
    ct_loader_free(t->loader);
    ct_sampler_free(t->sampler);
    ct_optim_free(t->opt);
    ct_ddp_free(t->ddp);
    ct_dataset_free(&t->train_feat);
    ct_dataset_free(&t->test_feat);
}

/* Set-up, then for each epoch: train, evaluate and log, checkpoint. */
int ct_cmd_train(ct_run *r) {
    if (ct_run_check(&r->d, prepare_output(r)) != CT_OK) return 1;
    trainer t = {.r = r, .c = &r->cfg};
    ct_status st = setup_training(&t);
    if (st == CT_OK) st = setup_feature_cache(&t);
    if (st == CT_OK) st = setup_steps(&t);
    if (st == CT_OK) open_metrics(&t);
    for (int epoch = t.start_epoch; st == CT_OK && epoch < t.c->train.epochs; epoch++) {
        epoch_stats es;
        st = train_epoch(&t, epoch, &es);
        if (st == CT_OK) st = evaluate_and_log(&t, epoch, &es);
        if (st == CT_OK) st = checkpoint_epoch(&t, epoch);
    }
    trainer_free(&t);
    return st == CT_OK ? 0 : 1;
}
