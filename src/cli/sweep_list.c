/* ctrain sweep, expanding the job list: the checkpoints of [sweep] checkpoints (paths,
 * globs, @FILE lists) and the variants of [sweep] datasets x [sweep] overrides. */
#include <errno.h>
#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sweep.h"

void ct_strlist_push(ct_strlist *l, const char *s) {
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 16;
        l->s = ct_realloc(l->s, (size_t)l->cap * sizeof *l->s);
    }
    l->s[l->n] = ct_strdup(s);
    l->n++;
}

void ct_strlist_free(ct_strlist *l) {
    for (int i = 0; i < l->n; i++) free(l->s[i]);
    free(l->s);
    memset(l, 0, sizeof *l);
}

static bool is_blank(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

/* Appends the sep-separated items of spec, without surrounding blanks, skipping empty ones. */
static void split_list(const char *spec, char sep, ct_strlist *out) {
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
            ct_strlist_push(out, item);
            free(item);
        }
        p = *end ? end + 1 : end;
    }
}


/* Appends the files a path or glob names, sorted; a pattern that matches nothing is kept
 * as it is, so its job fails with a reason naming it instead of vanishing. */
static ct_status expand_entry(const char *entry, ct_strlist *out) {
    glob_t g;
    int rc = glob(entry, GLOB_NOCHECK, NULL, &g);
    if (rc != 0) {
        globfree(&g);
        return ct_error(CT_ERR_IO, "sweep.checkpoints: glob('%s') failed (%s)", entry,
                        rc == GLOB_NOSPACE ? "out of memory" : "read error");
    }
    for (size_t i = 0; i < g.gl_pathc; i++) ct_strlist_push(out, g.gl_pathv[i]);
    globfree(&g);
    return CT_OK;
}

/* Appends the entries of one @FILE list: its lines are paths or globs; blank lines and
 * # comments are skipped. Only a regular file is read: a FIFO would block in open() and a
 * directory would read as an empty list. */
static ct_status expand_list_file(const char *lp, ct_strlist *raw) {
    if (!*lp) return ct_error(CT_ERR_CONFIG, "sweep.checkpoints: '@' without a list file name");
    FILE *f;
    if (ct_fopen_regular(lp, &f) != CT_OK)
        return ct_error(CT_ERR_IO, "sweep.checkpoints: list %s", ct_last_error());
    ct_status st = CT_OK;
    char *line = NULL;
    size_t cap = 0;
    while (st == CT_OK && getline(&line, &cap, f) >= 0) {
        char *a = line, *b = line + strlen(line);
        while (a < b && is_blank(*a)) a++;
        while (b > a && is_blank(b[-1])) *--b = '\0';
        if (*a && *a != '#') st = expand_entry(a, raw);
    }
    if (st == CT_OK && ferror(f))
        st = ct_error(CT_ERR_IO, "sweep.checkpoints: list %s: read error: %s", lp, strerror(errno));
    free(line);
    fclose(f);
    return st;
}

ct_status ct_sweep_expand_checkpoints(const char *spec, ct_strlist *out) {
    ct_strlist items = {0}, raw = {0};
    split_list(spec, ',', &items);
    ct_status st = CT_OK;
    for (int i = 0; st == CT_OK && i < items.n; i++)
        st = items.s[i][0] == '@' ? expand_list_file(items.s[i] + 1, &raw)
                                  : expand_entry(items.s[i], &raw);
    for (int i = 0; st == CT_OK && i < raw.n; i++) {
        bool dup = false;
        for (int j = 0; j < out->n && !dup; j++) dup = strcmp(out->s[j], raw.s[i]) == 0;
        if (!dup) ct_strlist_push(out, raw.s[i]);
    }
    if (st == CT_OK && out->n == 0)
        st = ct_error(CT_ERR_CONFIG, "sweep.checkpoints is empty: nothing to evaluate");
    ct_strlist_free(&items);
    ct_strlist_free(&raw);
    return st;
}

/* World rank 0 expands the list (globs see its file system) and sends it to every rank. */
ct_status ct_sweep_checkpoints(const ct_dist *d, const char *spec, ct_strlist *out) {
    ct_status st = d->rank == 0 ? ct_sweep_expand_checkpoints(spec, out) : CT_OK;
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
            ct_strlist_push(out, buf + off);
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
ct_sweep_variant *ct_sweep_variants(const ct_config *base, int *nout) {
    ct_strlist ds = {0};
    split_list(base->sweep.datasets, ',', &ds);
    int nds = ds.n ? ds.n : 1, nov = 0;
    char group[CT_CFG_STR];
    while (ct_config_override_group(base->sweep.overrides, nov, group, sizeof group)) nov++;
    if (nov == 0) nov = 1;
    ct_sweep_variant *vs = ct_calloc((size_t)nds * (size_t)nov, sizeof *vs);
    for (int i = 0; i < nds; i++) {
        for (int j = 0; j < nov; j++) {
            ct_sweep_variant *v = &vs[i * nov + j];
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
    ct_strlist_free(&ds);
    *nout = nds * nov;
    return vs;
}
