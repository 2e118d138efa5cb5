/* The INI run config. Every key is one row of `keys` below: its section and name, its type,
 * where it lives in ct_config, its default (as text, parsed by the same code as the file) and
 * its allowed values. Reading, overriding, validating, getting and dumping all walk that
 * table, so adding a key is adding a row (and a struct field). Files are parsed by inih. */
#include "io.h"

#include <errno.h>
#include <ini.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef enum { T_STR, T_INT, T_U64, T_DOUBLE, T_BOOL, T_ENUM, T_CLASSES, T_OVERRIDES } key_type;

enum { LO_OPEN = 1, HI_OPEN = 2 }; /* range flags: exclusive bounds */

typedef struct {
    const char *section, *name;
    key_type type;
    size_t offset;
    const char *def;
    const char *words; /* T_ENUM: "a|b|c" in enum order; T_INT: the word meaning 0, or NULL */
    double lo, hi;     /* T_INT, T_DOUBLE: allowed range */
    int flags;
} key_def;

#define KEY(sec, nm, type, field, def, words, lo, hi, flags)                                 \
    {sec, nm, type, offsetof(ct_config, field), def, words, lo, hi, flags}
#define STR(sec, nm, field, def) KEY(sec, nm, T_STR, field, def, NULL, 0, 0, 0)
#define ENUM(sec, nm, field, def, words) KEY(sec, nm, T_ENUM, field, def, words, 0, 0, 0)
#define BOOL(sec, nm, field, def) KEY(sec, nm, T_BOOL, field, def, NULL, 0, 0, 0)
#define INT(sec, nm, field, def, lo, zero) KEY(sec, nm, T_INT, field, def, zero, lo, INT_MAX, 0)
#define REAL(sec, nm, field, def, lo, hi, fl) KEY(sec, nm, T_DOUBLE, field, def, NULL, lo, hi, fl)

static const key_def keys[] = {
    STR("data", "dir", data.dir, "/usr/share/datasets/fashion-mnist"),
    ENUM("data", "format", data.format, "idx", "idx|npy"),
    STR("data", "train_x", data.train_x, ""),
    STR("data", "train_y", data.train_y, ""),
    STR("data", "test_x", data.test_x, ""),
    STR("data", "test_y", data.test_y, ""),
    REAL("data", "mean", data.mean, "0.2860", -INFINITY, INFINITY, 0),
    REAL("data", "std", data.std, "0.3530", 0, INFINITY, LO_OPEN),
    ENUM("data", "augment", data.augment, "none", "none|crop|flip|crop_flip"),
    INT("data", "crop_pad", data.crop_pad, "2", 0, NULL),
    KEY("data", "classes", T_CLASSES, data.classes, "all", NULL, 0, 0, 0),
    INT("data", "per_class", data.per_class, "all", 0, "all"),

    ENUM("model", "name", model.name, "mlp", "mlp|cnn|custom|resnet18|resnet34|resnet50"),
    STR("model", "layers", model.layers, ""),
    STR("model", "freeze", model.freeze, ""),
    STR("model", "init_from", model.init_from, ""),
    BOOL("model", "init_strict", model.init_strict, "false"),
    STR("model", "init_exclude", model.init_exclude, ""),
    BOOL("model", "bn_eval_when_frozen", model.bn_eval_when_frozen, "true"),
    REAL("model", "dropout", model.dropout, "0.25", 0, 1, HI_OPEN),
    /* the ResNets (issue 10) */
    INT("model", "in_channels", model.in_channels, "3", 1, NULL),
    INT("model", "num_classes", model.num_classes, "data", 0, "data"),
    ENUM("model", "stem", model.stem, "imagenet", "imagenet|small"),

    INT("train", "epochs", train.epochs, "10", 1, NULL),
    INT("train", "batch_size", train.batch_size, "64", 1, NULL),
    KEY("train", "seed", T_U64, train.seed, "0", NULL, 0, 0, 0),
    BOOL("train", "resume", train.resume, "false"),
    INT("train", "log_every", train.log_every, "100", 0, "never"),
    BOOL("train", "drop_last", train.drop_last, "true"),
    INT("train", "eval_batch_size", train.eval_batch_size, "1000", 1, NULL),
    INT("train", "unfreeze_after", train.unfreeze_after, "never", 0, "never"),
    STR("train", "unfreeze", train.unfreeze, ""),
    REAL("train", "unfreeze_lr_scale", train.unfreeze_lr_scale, "0.1", 0, INFINITY, LO_OPEN),
    ENUM("train", "feature_cache", train.feature_cache, "auto", "auto|off"),
    INT("train", "feature_cache_max_mb", train.feature_cache_max_mb, "4096", 1, NULL),

    ENUM("optim", "name", optim.name, "adam", "sgd|adam|adamw"),
    REAL("optim", "lr", optim.lr, "1e-3", 0, INFINITY, LO_OPEN),
    REAL("optim", "momentum", optim.momentum, "0.9", 0, 1, 0),
    BOOL("optim", "nesterov", optim.nesterov, "false"),
    REAL("optim", "weight_decay", optim.weight_decay, "0", 0, INFINITY, 0),
    REAL("optim", "beta1", optim.beta1, "0.9", 0, 1, HI_OPEN),
    REAL("optim", "beta2", optim.beta2, "0.999", 0, 1, HI_OPEN),
    REAL("optim", "eps", optim.eps, "1e-8", 0, INFINITY, LO_OPEN),

    ENUM("schedule", "name", schedule.name, "none", "none|step|cosine"),
    INT("schedule", "step_size", schedule.step_size, "5", 1, NULL),
    REAL("schedule", "gamma", schedule.gamma, "0.1", 0, INFINITY, LO_OPEN),
    INT("schedule", "warmup_steps", schedule.warmup_steps, "0", 0, NULL),
    REAL("schedule", "min_lr", schedule.min_lr, "0", 0, INFINITY, 0),

    STR("output", "dir", output.dir, "runs/default"),
    INT("output", "checkpoint_every", output.checkpoint_every, "1", 1, NULL),
    INT("output", "keep", output.keep, "all", 0, "all"),

    ENUM("dist", "buffers", dist.buffers, "average", "broadcast|average|none"),
    REAL("dist", "bucket_mb", dist.bucket_mb, "25", 0, INFINITY, LO_OPEN),
    REAL("dist", "first_bucket_mb", dist.first_bucket_mb, "1", 0, INFINITY, LO_OPEN),
    ENUM("dist", "shard", dist.shard, "drop", "drop|pad"),
    BOOL("dist", "shm", dist.shm, "true"),

    STR("sweep", "checkpoints", sweep.checkpoints, ""),
    STR("sweep", "datasets", sweep.datasets, ""),
    INT("sweep", "group_size", sweep.group_size, "1", 1, NULL),
    STR("sweep", "out", sweep.out, ""),
    KEY("sweep", "overrides", T_OVERRIDES, sweep.overrides, "", NULL, 0, 0, 0),
};
#define NKEYS ((int)(sizeof keys / sizeof keys[0]))

/* inih cannot read a line longer than its buffer, so a string value plus "name = " must fit
 * one line, or a dumped config would not load back. String key names stay <= 16 chars. */
#define MAX_STR_NAME 16
_Static_assert(MAX_STR_NAME + 3 + (CT_CFG_STR - 1) + 2 <= INI_MAX_LINE,
               "CT_CFG_STR too long for one INI line");

/* Enum fields are written through an int pointer. */
_Static_assert(sizeof(ct_cfg_format) == sizeof(int) && sizeof(ct_cfg_augment) == sizeof(int) &&
                   sizeof(ct_cfg_model) == sizeof(int) && sizeof(ct_cfg_cache) == sizeof(int) &&
                   sizeof(ct_cfg_stem) == sizeof(int) &&
                   sizeof(ct_cfg_optim) == sizeof(int) && sizeof(ct_cfg_sched) == sizeof(int) &&
                   sizeof(ct_cfg_buffers) == sizeof(int) && sizeof(ct_cfg_shard) == sizeof(int),
               "config enums must be int-sized");

static void *field(ct_config *c, const key_def *k) { return (char *)c + k->offset; }
static const void *cfield(const ct_config *c, const key_def *k) {
    return (const char *)c + k->offset;
}

static const key_def *find_key(const char *section, const char *name) {
    for (int i = 0; i < NKEYS; i++)
        if (strcmp(keys[i].section, section) == 0 && strcmp(keys[i].name, name) == 0)
            return &keys[i];
    return NULL;
}

static bool section_exists(const char *section) {
    for (int i = 0; i < NKEYS; i++)
        if (strcmp(keys[i].section, section) == 0) return true;
    return false;
}

/* Appends to buf the names of every section, or every key of `section`, comma-separated. */
static const char *list_names(const char *section, char *buf, size_t n) {
    size_t len = 0;
    buf[0] = '\0';
    for (int i = 0; i < NKEYS && len < n; i++) {
        const char *s = section ? (strcmp(keys[i].section, section) ? NULL : keys[i].name)
                                : (i && strcmp(keys[i].section, keys[i - 1].section) == 0
                                       ? NULL
                                       : keys[i].section);
        if (s) len += (size_t)snprintf(buf + len, n - len, "%s%s", len ? ", " : "", s);
    }
    return buf;
}

/* The error for a section/key that is not in the table; `where` is "file:line" or
 * "command line". */
static ct_status unknown_key(const char *where, const char *section, const char *name) {
    char list[768];
    if (!section_exists(section))
        return ct_error(CT_ERR_CONFIG, "%s: unknown section [%s] for key %s.%s (sections: %s)",
                        where, section, section, name, list_names(NULL, list, sizeof list));
    return ct_error(CT_ERR_CONFIG, "%s: unknown key %s.%s (keys in [%s]: %s)", where, section,
                    name, section, list_names(section, list, sizeof list));
}

/* ---- value parsing ---------------------------------------------------------------------- */

/* Why v is outside k's range: the violated bound, or the interval when both are finite. */
static const char *range_str(const key_def *k, double v, char *buf, size_t n) {
    if (k->type == T_DOUBLE && isfinite(k->lo) && isfinite(k->hi))
        snprintf(buf, n, "must be in %c%.17g, %.17g%c", k->flags & LO_OPEN ? '(' : '[', k->lo,
                 k->hi, k->flags & HI_OPEN ? ')' : ']');
    else if (v <= k->lo)
        snprintf(buf, n, "must be %s %.17g", k->flags & LO_OPEN ? ">" : ">=", k->lo);
    else
        snprintf(buf, n, "must be %s %.17g", k->flags & HI_OPEN ? "<" : "<=", k->hi);
    return buf;
}

static bool in_range(const key_def *k, double v) {
    if (v < k->lo || (k->flags & LO_OPEN && v == k->lo)) return false;
    if (v > k->hi || (k->flags & HI_OPEN && v == k->hi)) return false;
    return true;
}

/* Index of value in "a|b|c", or -1. */
static int word_index(const char *words, const char *value) {
    size_t vlen = strlen(value);
    int i = 0;
    for (const char *w = words; *w; i++) {
        size_t len = strcspn(w, "|");
        if (len == vlen && strncmp(w, value, len) == 0) return i;
        w += len + (w[len] == '|');
    }
    return -1;
}

/* Writes word number i of "a|b|c" into buf. */
static const char *word_at(const char *words, int i, char *buf, size_t n) {
    const char *w = words;
    for (; i > 0 && *w; i--) w += strcspn(w, "|") + (w[strcspn(w, "|")] == '|');
    snprintf(buf, n, "%.*s", (int)strcspn(w, "|"), w);
    return buf;
}

/* Walks a class selection; with keep != NULL marks the classes (nclasses > 0 bounds them). */
static bool parse_classes(const char *spec, int nclasses, bool *keep, const char **why) {
    if (keep)
        for (int i = 0; i < nclasses; i++) keep[i] = false;
    if (strcmp(spec, "all") == 0) {
        if (keep)
            for (int i = 0; i < nclasses; i++) keep[i] = true;
        return true;
    }
    const char *p = spec;
    *why = "expected 'all' or a list of classes and ranges like 0-4,7";
    do {
        char *end;
        while (*p == ' ') p++;
        if (*p < '0' || *p > '9') return false;
        errno = 0;
        long a = strtol(p, &end, 10), b = a;
        p = end;
        while (*p == ' ') p++;
        if (*p == '-') {
            p++;
            while (*p == ' ') p++;
            if (*p < '0' || *p > '9') return false;
            b = strtol(p, &end, 10);
            p = end;
            while (*p == ' ') p++;
        }
        if (errno || a > b || b > 1000000) {
            *why = "a range must be low-high with low <= high";
            return false;
        }
        if (nclasses > 0 && b >= nclasses) {
            *why = "class outside the dataset's labels";
            return false;
        }
        for (long i = a; keep && i <= b; i++) keep[i] = true;
    } while (*p++ == ',');
    return p[-1] == '\0';
}

/* Stores a string value, or explains in why[] why it cannot be stored. */
static void set_string(char *dst, const char *value, char *why, size_t n) {
    size_t len = strlen(value);
    if (len >= CT_CFG_STR) {
        snprintf(why, n, "longer than %d characters", CT_CFG_STR - 1);
        return;
    }
    for (size_t i = 0; i < len; i++) {
        if ((unsigned char)value[i] < ' ') {
            snprintf(why, n, "contains a control character");
            return;
        }
        /* INI would read the rest back as a comment, so the dump could not round-trip */
        if (value[i] == ';' && (i == 0 || value[i - 1] == ' ' || value[i - 1] == '\t')) {
            snprintf(why, n, "';' at the start or after a space would start a comment");
            return;
        }
    }
    if (len && (value[0] == ' ' || value[len - 1] == ' ')) {
        snprintf(why, n, "leading or trailing spaces");
        return;
    }
    memset(dst, 0, CT_CFG_STR); /* whole buffer, so equal configs are equal bytes */
    memcpy(dst, value, len);
}

/* sweep.overrides: every group must apply cleanly to a default config, so a typo is caught
 * when the config loads rather than when the sweep reaches that group. */
static bool check_override_groups(const char *spec, char *why, size_t n) {
    char group[CT_CFG_STR];
    for (int i = 0; ct_config_override_group(spec, i, group, sizeof group); i++) {
        ct_config scratch;
        ct_config_defaults(&scratch);
        if (ct_config_apply_overrides(&scratch, group) != CT_OK) {
            snprintf(why, n, "group %d ('%s'): %s", i + 1, group, ct_last_error());
            return false;
        }
    }
    return true;
}

/* Parses `value` for key k into c; the message names where, the key and the value. */
static ct_status set_value(ct_config *c, const key_def *k, const char *value, const char *where) {
    void *dst = field(c, k);
    char why[256] = "";
    char *end = NULL;
    errno = 0;
    switch (k->type) {
    case T_CLASSES: {
        const char *w;
        if (!parse_classes(value, 0, NULL, &w)) snprintf(why, sizeof why, "%s", w);
        else set_string(dst, value, why, sizeof why);
        break;
    }
    case T_STR: set_string(dst, value, why, sizeof why); break;
    case T_OVERRIDES:
        if (check_override_groups(value, why, sizeof why)) set_string(dst, value, why, sizeof why);
        break;
    case T_INT: {
        if (k->words && strcmp(value, k->words) == 0) {
            *(int *)dst = 0;
            break;
        }
        long long v = strtoll(value, &end, 10);
        if (!*value || *end || errno)
            snprintf(why, sizeof why, "not an integer%s%s", k->words ? " or " : "",
                     k->words ? k->words : "");
        else if (v < k->lo || v > k->hi)
            range_str(k, (double)v, why, sizeof why);
        else
            *(int *)dst = (int)v;
        break;
    }
    case T_U64: {
        unsigned long long v = strtoull(value, &end, 10);
        if (!*value || *end || errno || strchr(value, '-'))
            snprintf(why, sizeof why, "not an integer in 0..%llu", (unsigned long long)UINT64_MAX);
        else
            *(uint64_t *)dst = v;
        break;
    }
    case T_DOUBLE: {
        double v = strtod(value, &end);
        if (!*value || *end || errno == ERANGE || !isfinite(v))
            snprintf(why, sizeof why, "not a finite number");
        else if (!in_range(k, v))
            range_str(k, v, why, sizeof why);
        else
            *(double *)dst = v;
        break;
    }
    case T_BOOL: {
        static const char *const t[] = {"true", "1", "yes"}, *const f[] = {"false", "0", "no"};
        int v = -1;
        for (int i = 0; i < 3; i++) {
            if (strcasecmp(value, t[i]) == 0) v = 1;
            if (strcasecmp(value, f[i]) == 0) v = 0;
        }
        if (v < 0) snprintf(why, sizeof why, "not a boolean (true/false/1/0/yes/no)");
        else *(bool *)dst = v;
        break;
    }
    case T_ENUM: {
        int i = word_index(k->words, value);
        if (i < 0) snprintf(why, sizeof why, "must be one of %s", k->words);
        else *(int *)dst = i;
        break;
    }
    }
    if (why[0])
        return ct_error(CT_ERR_CONFIG, "%s: %s.%s = '%s': %s", where, k->section, k->name, value,
                        why);
    return CT_OK;
}

/* Shortest %g form that reads back as exactly v, so dumps are readable and round-trip. */
static void format_double(double v, char *buf, size_t n) {
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, n, "%.*g", prec, v);
        if (strtod(buf, NULL) == v) return;
    }
}

static void format_value(const ct_config *c, const key_def *k, char *buf, size_t n) {
    const void *src = cfield(c, k);
    switch (k->type) {
    case T_STR:
    case T_CLASSES:
    case T_OVERRIDES: snprintf(buf, n, "%s", (const char *)src); break;
    case T_INT:
        if (k->words && *(const int *)src == 0) snprintf(buf, n, "%s", k->words);
        else snprintf(buf, n, "%d", *(const int *)src);
        break;
    case T_U64: snprintf(buf, n, "%llu", (unsigned long long)*(const uint64_t *)src); break;
    case T_DOUBLE: format_double(*(const double *)src, buf, n); break;
    case T_BOOL: snprintf(buf, n, "%s", *(const bool *)src ? "true" : "false"); break;
    case T_ENUM: word_at(k->words, *(const int *)src, buf, n); break;
    }
}

/* ---- public: defaults, set, override ------------------------------------------------------ */

void ct_config_defaults(ct_config *c) {
    memset(c, 0, sizeof *c);
    for (int i = 0; i < NKEYS; i++) {
        CT_ASSERT((keys[i].type != T_STR && keys[i].type != T_CLASSES && keys[i].type != T_OVERRIDES) ||
                      strlen(keys[i].name) <= MAX_STR_NAME,
                  "config table: string key %s too long for one INI line", keys[i].name);
        ct_status st = set_value(c, &keys[i], keys[i].def, "config defaults");
        CT_ASSERT(st == CT_OK, "%s", ct_last_error());
    }
}

/* Splits "section.key" and finds it; the error names `where`. */
static ct_status lookup(const char *key, const char *where, const key_def **out) {
    const char *dot = strchr(key, '.');
    if (!dot) {
        const key_def *only = NULL;
        int hits = 0;
        for (int i = 0; i < NKEYS; i++)
            if (strcmp(keys[i].name, key) == 0) hits++, only = &keys[i];
        if (hits == 1)
            return ct_error(CT_ERR_CONFIG, "%s: key '%s' needs its section: %s.%s", where, key,
                            only->section, key);
        return ct_error(CT_ERR_CONFIG, "%s: unknown key '%s' (expected section.key)", where, key);
    }
    char section[64];
    size_t slen = (size_t)(dot - key);
    if (slen >= sizeof section) slen = sizeof section - 1;
    memcpy(section, key, slen);
    section[slen] = '\0';
    if (!(*out = find_key(section, dot + 1))) return unknown_key(where, section, dot + 1);
    return CT_OK;
}

ct_status ct_config_set(ct_config *c, const char *key, const char *value) {
    const key_def *k;
    ct_status st = lookup(key, "command line", &k);
    return st ? st : set_value(c, k, value, "command line");
}

/* Copies s without leading/trailing whitespace into buf; false if it does not fit. */
static bool trim_copy(const char *s, size_t len, char *buf, size_t n) {
    while (len && (*s == ' ' || *s == '\t')) s++, len--;
    while (len && (s[len - 1] == ' ' || s[len - 1] == '\t')) len--;
    if (len >= n) return false;
    memcpy(buf, s, len);
    buf[len] = '\0';
    return true;
}

ct_status ct_config_override(ct_config *c, const char *assignment) {
    const char *eq = strchr(assignment, '=');
    char key[128], value[CT_CFG_STR + 1];
    if (!eq)
        return ct_error(CT_ERR_CONFIG, "command line: '%s' is not section.key=value", assignment);
    if (!trim_copy(assignment, (size_t)(eq - assignment), key, sizeof key))
        return ct_error(CT_ERR_CONFIG, "command line: key of '%s' is too long", assignment);
    if (!trim_copy(eq + 1, strlen(eq + 1), value, sizeof value))
        return ct_error(CT_ERR_CONFIG, "command line: %s: value longer than %d characters", key,
                        CT_CFG_STR - 1);
    /* "resume=true" is how one restarts a run, so it gets a short form */
    return ct_config_set(c, strcmp(key, "resume") == 0 ? "train.resume" : key, value);
}

/* ---- sweep override groups ------------------------------------------------------------------ */
/* Groups are separated by '|', not ';': in an INI file " ;" starts a comment, so
 * "a=1 ; b=2" would silently lose its second group. */

/* Skips spaces and tabs. */
static const char *skip_blank(const char *s) {
    while (*s == ' ' || *s == '\t') s++;
    return s;
}

bool ct_config_override_group(const char *spec, int i, char *buf, size_t n) {
    if (!*skip_blank(spec) || i < 0) return false; /* an empty spec has no groups */
    const char *g = spec;
    for (; i > 0; i--) {
        g = strchr(g, '|');
        if (!g) return false;
        g++;
    }
    if (n > 0 && !trim_copy(g, strcspn(g, "|"), buf, n)) buf[0] = '\0'; /* buf too small */
    return true;
}

ct_status ct_config_apply_overrides(ct_config *c, const char *group) {
    ct_config tmp = *c;
    char one[CT_CFG_STR + 160];
    for (const char *p = skip_blank(group); *p; p = skip_blank(p)) {
        size_t len = strcspn(p, " \t");
        if (len >= sizeof one)
            return ct_error(CT_ERR_CONFIG, "override '%.40s...' is too long", p);
        memcpy(one, p, len);
        one[len] = '\0';
        p += len;
        if (strncmp(one, "sweep.", 6) == 0)
            return ct_error(CT_ERR_CONFIG, "override '%s': a sweep job cannot change [sweep]", one);
        ct_status st = ct_config_override(&tmp, one);
        if (st != CT_OK) return st;
    }
    *c = tmp;
    return CT_OK;
}

/* ---- INI files ------------------------------------------------------------------------------ */

typedef struct {
    ct_config *c;
    const char *origin;
    FILE *fp;       /* the source: a file ... */
    const char *s;  /* ... or a string */
    int line;       /* line most recently handed to inih */
    int seen[NKEYS]; /* line where each key was set, 0 if not yet */
    ct_status st;   /* first error */
    int err_line;
} ini_state;

/* inih reads through this so that the handler knows the current line, and so that a line
 * longer than inih's buffer is an error instead of being split in two. */
static char *ini_read(char *buf, int num, void *stream) {
    ini_state *p = stream;
    if (p->st) return NULL;
    bool more;
    if (p->fp) {
        if (!fgets(buf, num, p->fp)) return NULL;
        int ch = getc(p->fp);
        more = ch != EOF;
        if (more) ungetc(ch, p->fp);
    } else {
        if (!*p->s) return NULL;
        size_t len = strcspn(p->s, "\n");
        len += p->s[len] == '\n';
        if (len > (size_t)num - 1) len = (size_t)num - 1;
        memcpy(buf, p->s, len);
        buf[len] = '\0';
        p->s += len;
        more = *p->s != '\0';
    }
    p->line++;
    size_t len = strlen(buf);
    if (len == (size_t)num - 1 && buf[len - 1] != '\n' && more) {
        p->st = ct_error(CT_ERR_CONFIG, "%s:%d: line longer than %d characters", p->origin,
                         p->line, num - 2);
        p->err_line = p->line;
        return NULL;
    }
    return buf;
}

static int ini_handle(void *user, const char *section, const char *name, const char *value) {
    ini_state *p = user;
    if (p->st) return 1;
    char where[600];
    snprintf(where, sizeof where, "%s:%d", p->origin, p->line);
    if (!*section) {
        p->st = ct_error(CT_ERR_CONFIG, "%s: key '%s' is outside any [section]", where, name);
    } else {
        const key_def *k = find_key(section, name);
        if (!k) {
            p->st = unknown_key(where, section, name);
        } else if (p->seen[k - keys]) {
            p->st = ct_error(CT_ERR_CONFIG, "%s: %s.%s is set twice (first on line %d; an "
                             "indented line continues the previous value)", where, section,
                             name, p->seen[k - keys]);
        } else {
            p->seen[k - keys] = p->line;
            p->st = set_value(p->c, k, value, where);
        }
    }
    if (p->st) p->err_line = p->line;
    return 1; /* errors are tracked here, so inih's return value only reports syntax */
}

/* Parses into a copy so that c is unchanged on error. */
static ct_status parse_ini(ct_config *c, ini_state *p) {
    ct_config tmp = *c;
    p->c = &tmp;
    int r = ini_parse_stream(ini_read, p, ini_handle, p);
    if (r > 0 && (!p->st || r < p->err_line))
        return ct_error(CT_ERR_CONFIG, "%s:%d: syntax error (expected [section] or key = value)",
                        p->origin, r);
    if (r == -2) return ct_error(CT_ERR_IO, "%s: out of memory while parsing", p->origin);
    if (p->st) return p->st;
    *c = tmp;
    return CT_OK;
}

ct_status ct_config_load_file(ct_config *c, const char *path) {
    ini_state p = {.origin = path};
    p.fp = fopen(path, "r");
    if (!p.fp) return ct_error(CT_ERR_IO, "%s: cannot open config: %s", path, strerror(errno));
    ct_status st = parse_ini(c, &p);
    if (!st && ferror(p.fp)) st = ct_error(CT_ERR_IO, "%s: read error", path);
    fclose(p.fp);
    return st;
}

ct_status ct_config_load_string(ct_config *c, const char *text, const char *origin) {
    ini_state p = {.origin = origin, .s = text};
    return parse_ini(c, &p);
}

ct_status ct_config_load(ct_config *c, const char *path, int n, char *const *overrides) {
    ct_config_defaults(c);
    ct_status st = path ? ct_config_load_file(c, path) : CT_OK;
    for (int i = 0; !st && i < n; i++) st = ct_config_override(c, overrides[i]);
    return st;
}

/* ---- get, dump -------------------------------------------------------------------------------- */

ct_status ct_config_get(const ct_config *c, const char *key, char *buf, size_t n) {
    const key_def *k;
    ct_status st = lookup(key, "ct_config_get", &k);
    if (st) return st;
    char tmp[CT_CFG_STR + 64];
    format_value(c, k, tmp, sizeof tmp);
    if (strlen(tmp) >= n)
        return ct_error(CT_ERR_ARG, "ct_config_get: %s needs %zu bytes, buffer has %zu", key,
                        strlen(tmp) + 1, n);
    memcpy(buf, tmp, strlen(tmp) + 1);
    return CT_OK;
}

ct_status ct_config_write(const ct_config *c, FILE *f) {
    char value[CT_CFG_STR + 64];
    bool ok = fputs("# ctrain effective config\n", f) >= 0;
    for (int i = 0; ok && i < NKEYS; i++) {
        if (i == 0 || strcmp(keys[i].section, keys[i - 1].section) != 0)
            ok = fprintf(f, "%s[%s]\n", i ? "\n" : "", keys[i].section) > 0;
        format_value(c, &keys[i], value, sizeof value);
        ok = ok && fprintf(f, "%s = %s\n", keys[i].name, value) > 0;
    }
    return ok ? CT_OK : ct_error(CT_ERR_IO, "writing the config failed: %s", strerror(errno));
}

static ct_status write_config(FILE *f, void *c) { return ct_config_write(c, f); }

ct_status ct_config_save(const ct_config *c, const char *path) {
    return ct_write_atomic(path, write_config, (void *)c);
}

ct_status ct_config_classes(const char *spec, int nclasses, bool *keep) {
    const char *why;
    if (nclasses <= 0) return ct_error(CT_ERR_ARG, "data.classes: nclasses %d <= 0", nclasses);
    if (!parse_classes(spec, nclasses, keep, &why))
        return ct_error(CT_ERR_CONFIG, "data.classes = '%s': %s (dataset has classes 0..%d)", spec,
                        why, nclasses - 1);
    return CT_OK;
}
