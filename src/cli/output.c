/* A training run's files in output.dir: its set-up (config.ini, classes.txt), the checkpoint
 * files' names, the `latest` pointer, output.keep's pruning, which file a resumed run reads
 * (with the fall-back to an older valid one when the newest is unusable), and metrics.jsonl
 * cut back to it, and `ctrain latest`. What a checkpoint holds is io/checkpoint's. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"

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

/* Rank 0: output.dir with the config and class names the run used (stale temporary files
 * of a killed run removed). */
ct_status ct_run_prepare_output(ct_run *r) {
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

ct_status ct_run_save_checkpoint(const ct_run *r, const ct_optim *o, int epochs_done, int64_t step,
                                 int64_t epoch_step, const char *rank_state) {
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

ct_status ct_run_open_resume(const ct_run *r, char *path, size_t n, ct_st_file **f, ct_progress *p) {
    ct_status st = latest_checkpoint(r->cfg.output.dir, path, n);
    if (st != CT_OK) return st; /* no latest, or one naming a file outside output.dir */
    if ((st = open_valid(r, path, f, p)) == CT_OK) return CT_OK;
    /* A crash or a bad disk can leave the newest checkpoint unreadable while older ones are
     * fine: resume from the newest valid one, and say so. */
    char bad[CT_CFG_STR + 300], why[1024];
    snprintf(bad, sizeof bad, "%s", path);
    snprintf(why, sizeof why, "%s", ct_last_error());
    st = fall_back(r, bad, path, n, f, p);
    if (st != CT_OK) return ct_error(st, "%s (and no other checkpoint in %s is valid)", why, r->cfg.output.dir);
    if (r->d.rank == 0)
        fprintf(stderr, "ctrain: warning: %s/latest names %s, which is unusable (%s); resuming from %s, "
                "the newest valid checkpoint\n", r->cfg.output.dir, bad, why, path);
    return CT_OK;
}

/* `ctrain latest`: prints the checkpoint a resume would use (ctrun --restarts asks before
 * relaunching); nothing, and status 0, when there is none yet. */
int ct_cmd_latest(ct_run *r) {
    char path[CT_CFG_STR + 300], lp[CT_CFG_STR + 16];
    snprintf(lp, sizeof lp, "%s/latest", r->cfg.output.dir);
    if (access(lp, F_OK) != 0) return 0; /* nothing written yet: a fresh start */
    ct_st_file *f = NULL;
    ct_progress p = {0};
    ct_status st = ct_run_open_resume(r, path, sizeof path, &f, &p);
    ct_st_free(f);
    if (st != CT_OK) {
        fprintf(stderr, "ctrain: warning: nothing to resume from: %s\n", ct_last_error());
        return 0;
    }
    printf("%s\n", path);
    return 0;
}

/* A run that stopped after logging epochs its newest checkpoint does not hold (the metrics
 * line is written before the checkpoint) would list them twice once resumed: keep only the
 * lines up to the resumed epoch. Best effort, like the metrics file itself. */
void ct_run_trim_metrics(const char *path, int upto) {
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

