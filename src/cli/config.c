/* The INI run config. Every key is one row of `keys` below: its section and name, its type,
 * where it lives in ct_config, its default (as text, parsed by the same code as the file) and
 * its allowed values. Reading, overriding, validating, getting and dumping all walk that
 * table, so adding a key is adding a row (and a struct field). Enum keys list their words
 * with the library enum value each one stands for. Files are parsed by inih. */
#include "config.h"

#include <errno.h>
#include <ini.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef enum { T_STR, T_INT, T_U64, T_DOUBLE, T_BOOL, T_ENUM } key_type;

enum {
    LO_OPEN = 1, /* range flags: exclusive bounds */
    HI_OPEN = 2,
    LIST = 4 /* T_STR: comma-separated list that may go on over indented lines; one longer
                than a line (capacity above CT_CFG_STR) is stored normalised (see below) */
};

/* One word of an enum key and the value it stores. */
typedef struct {
    const char *word;
    int value;
} enum_word;

/* A special grammar for a string key: false with the reason in why[] if value is bad. */
typedef bool (*check_fn)(const char *value, char *why, size_t n);

typedef struct {
    const char *section, *name;
    key_type type;
    size_t offset, size; /* size: T_STR capacity */
    const char *def;
    const enum_word *words; /* T_ENUM, ended by a NULL word */
    const char *zero;       /* T_INT: the word meaning 0, or NULL */
    double lo, hi;          /* T_INT, T_DOUBLE: allowed range */
    int flags;
    check_fn check; /* T_STR: NULL, or the key's grammar */
} key_def;

static bool check_classes(const char *value, char *why, size_t n);
static bool check_override_groups(const char *value, char *why, size_t n);
static bool check_signals(const char *value, char *why, size_t n) {
    int sigs[8], k;
    return ct_config_signals(value, sigs, &k, why, n);
}

#define FIELD(field) offsetof(ct_config, field), sizeof(((ct_config *)0)->field)
#define STR(sec, nm, field, def) {sec, nm, T_STR, FIELD(field), def, .flags = 0}
#define LIST_STR(sec, nm, field, def) {sec, nm, T_STR, FIELD(field), def, .flags = LIST}
#define CHECKED(sec, nm, field, def, fn) {sec, nm, T_STR, FIELD(field), def, .check = fn}
#define ENUM(sec, nm, field, def, ...)                                                      \
    {sec, nm, T_ENUM, FIELD(field), def, .words = (const enum_word[]){__VA_ARGS__, {NULL, 0}}}
#define BOOL(sec, nm, field, def) {sec, nm, T_BOOL, FIELD(field), def, .flags = 0}
#define U64(sec, nm, field, def) {sec, nm, T_U64, FIELD(field), def, .flags = 0}
#define INT(sec, nm, field, def, low, zero_word)                                             \
    {sec, nm, T_INT, FIELD(field), def, .zero = zero_word, .lo = low, .hi = INT_MAX}
#define REAL(sec, nm, field, def, low, high, fl)                                             \
    {sec, nm, T_DOUBLE, FIELD(field), def, .lo = low, .hi = high, .flags = fl}

static const key_def keys[] = {
    STR("data", "dir", data.dir, "/usr/share/datasets/fashion-mnist"),
    ENUM("data", "format", data.format, "idx", {"idx", CT_CFG_FORMAT_IDX}, {"npy", CT_CFG_FORMAT_NPY},
         {"folder", CT_CFG_FORMAT_FOLDER}, {"list", CT_CFG_FORMAT_LIST}),
    STR("data", "train_x", data.train_x, ""),
    STR("data", "train_y", data.train_y, ""),
    STR("data", "test_x", data.test_x, ""),
    STR("data", "test_y", data.test_y, ""),
    REAL("data", "mean", data.mean, "0.2860", -INFINITY, INFINITY, 0),
    REAL("data", "std", data.std, "0.3530", 0, INFINITY, LO_OPEN),
    ENUM("data", "augment", data.augment, "none", {"none", CT_CFG_AUGMENT_NONE},
         {"crop", CT_CFG_AUGMENT_CROP}, {"flip", CT_CFG_AUGMENT_FLIP},
         {"crop_flip", CT_CFG_AUGMENT_CROP_FLIP}),
    INT("data", "crop_pad", data.crop_pad, "2", 0, NULL),
    CHECKED("data", "classes", data.classes, "all", check_classes),
    INT("data", "per_class", data.per_class, "all", 0, "all"),
    /* ---- image data sets (issue 12: data.format = folder | list) ---- */
    STR("data", "train_dir", data.train_dir, ""),
    STR("data", "test_dir", data.test_dir, ""),
    STR("data", "train_list", data.train_list, ""),
    STR("data", "test_list", data.test_list, ""),
    INT("data", "channels", data.channels, "3", 1, NULL), /* only 1 and 3: checked at set-up */
    ENUM("data", "on_bad", data.on_bad, "error", {"error", CT_CFG_ON_BAD_ERROR}, {"skip", CT_CFG_ON_BAD_SKIP}),
    STR("data", "train_transforms", data.train_transforms, ""),
    STR("data", "test_transforms", data.test_transforms, ""),
    STR("data", "channel_mean", data.channel_mean, ""),
    STR("data", "channel_std", data.channel_std, ""),
    {"data", "workers", T_INT, FIELD(data.workers), "0", .lo = 0, .hi = 256}, /* the loader's limit */
    INT("data", "prefetch", data.prefetch, "2", 1, NULL),
    /* ---- end of the image data set keys ---- */

    ENUM("model", "name", model.name, "mlp", {"mlp", CT_CFG_MODEL_MLP}, {"cnn", CT_CFG_MODEL_CNN},
         {"custom", CT_CFG_MODEL_CUSTOM}, {"resnet18", CT_CFG_MODEL_RESNET18},
         {"resnet34", CT_CFG_MODEL_RESNET34}, {"resnet50", CT_CFG_MODEL_RESNET50},
         {"vit", CT_CFG_MODEL_VIT}, {"vit_b_16", CT_CFG_MODEL_VIT_B_16},
         {"vit_b_32", CT_CFG_MODEL_VIT_B_32}, {"vit_tiny", CT_CFG_MODEL_VIT_TINY}),
    STR("model", "layers", model.layers, ""),
    LIST_STR("model", "freeze", model.freeze, ""),
    STR("model", "init_from", model.init_from, ""),
    BOOL("model", "init_strict", model.init_strict, "false"),
    LIST_STR("model", "init_exclude", model.init_exclude, ""),
    BOOL("model", "bn_eval_when_frozen", model.bn_eval_when_frozen, "true"),
    BOOL("model", "allow_nonfinite", model.allow_nonfinite, "false"),
    REAL("model", "dropout", model.dropout, "0.25", 0, 1, HI_OPEN),
    /* the ResNets (issue 10) */
    INT("model", "in_channels", model.in_channels, "3", 1, NULL),
    INT("model", "num_classes", model.num_classes, "data", 0, "data"),
    ENUM("model", "stem", model.stem, "imagenet", {"imagenet", CT_CFG_STEM_IMAGENET}, {"small", CT_CFG_STEM_SMALL}),
    /* ---- ViT (issue 11: model.name = vit | vit_b_16 | vit_b_32 | vit_tiny) ---- */
    INT("model", "image_size", model.image_size, "data", 0, "data"),
    INT("model", "patch_size", model.patch_size, "preset", 0, "preset"),
    INT("model", "num_layers", model.num_layers, "preset", 0, "preset"),
    INT("model", "num_heads", model.num_heads, "preset", 0, "preset"),
    INT("model", "hidden_dim", model.hidden_dim, "preset", 0, "preset"),
    INT("model", "mlp_dim", model.mlp_dim, "preset", 0, "preset"),
    REAL("model", "attention_dropout", model.attention_dropout, "0", 0, 1, HI_OPEN),
    /* ---- end of the ViT keys ---- */

    INT("train", "epochs", train.epochs, "10", 1, NULL),
    INT("train", "batch_size", train.batch_size, "64", 1, NULL),
    U64("train", "seed", train.seed, "0"),
    BOOL("train", "resume", train.resume, "false"),
    INT("train", "log_every", train.log_every, "100", 0, "never"),
    BOOL("train", "drop_last", train.drop_last, "true"),
    INT("train", "eval_batch_size", train.eval_batch_size, "1000", 1, NULL),
    INT("train", "unfreeze_after", train.unfreeze_after, "never", 0, "never"),
    LIST_STR("train", "unfreeze", train.unfreeze, ""),
    REAL("train", "unfreeze_lr_scale", train.unfreeze_lr_scale, "0.1", 0, INFINITY, LO_OPEN),
    ENUM("train", "feature_cache", train.feature_cache, "auto", {"auto", CT_CFG_CACHE_AUTO},
         {"off", CT_CFG_CACHE_OFF}),
    INT("train", "feature_cache_max_mb", train.feature_cache_max_mb, "4096", 1, NULL),
    ENUM("train", "on_nonfinite", train.on_nonfinite, "error", {"error", CT_CFG_NONFINITE_ERROR},
         {"skip", CT_CFG_NONFINITE_SKIP}),
    REAL("train", "label_smoothing", train.label_smoothing, "0", 0, 1, 0),
    CHECKED("train", "preempt_signals", train.preempt_signals, "TERM,INT,USR1", check_signals),
    INT("train", "preempt_grace_s", train.preempt_grace_s, "30", 0, "never"),

    ENUM("optim", "name", optim.kind, "adam", {"sgd", CT_OPTIM_SGD}, {"adam", CT_OPTIM_ADAM},
         {"adamw", CT_OPTIM_ADAMW}),
    REAL("optim", "lr", optim.lr, "1e-3", 0, INFINITY, LO_OPEN),
    REAL("optim", "momentum", optim.momentum, "0.9", 0, 1, 0),
    BOOL("optim", "nesterov", optim.nesterov, "false"),
    REAL("optim", "weight_decay", optim.weight_decay, "0", 0, INFINITY, 0),
    REAL("optim", "beta1", optim.beta1, "0.9", 0, 1, HI_OPEN),
    REAL("optim", "beta2", optim.beta2, "0.999", 0, 1, HI_OPEN),
    REAL("optim", "eps", optim.eps, "1e-8", 0, INFINITY, LO_OPEN),

    ENUM("schedule", "name", schedule.name, "none", {"none", CT_SCHED_NONE},
         {"step", CT_SCHED_STEP}, {"cosine", CT_SCHED_COSINE}),
    INT("schedule", "step_size", schedule.step_size, "5", 1, NULL),
    REAL("schedule", "gamma", schedule.gamma, "0.1", 0, INFINITY, LO_OPEN),
    INT("schedule", "warmup_steps", schedule.warmup_steps, "0", 0, NULL),
    REAL("schedule", "min_lr", schedule.min_lr, "0", 0, INFINITY, 0),

    STR("output", "dir", output.dir, "runs/default"),
    INT("output", "checkpoint_every", output.checkpoint_every, "1", 1, NULL),
    INT("output", "keep", output.keep, "all", 0, "all"),
    INT("output", "checkpoint_every_steps", output.checkpoint_every_steps, "never", 0, "never"),

    ENUM("dist", "buffers", dist.buffers, "average", {"broadcast", CT_BUFFERS_BROADCAST},
         {"average", CT_BUFFERS_AVERAGE}, {"none", CT_BUFFERS_NONE}),
    REAL("dist", "bucket_mb", dist.bucket_mb, "25", 0, INFINITY, LO_OPEN),
    REAL("dist", "first_bucket_mb", dist.first_bucket_mb, "1", 0, INFINITY, LO_OPEN),
    ENUM("dist", "shard", dist.shard, "drop", {"drop", CT_SHARD_DROP}, {"pad", CT_SHARD_PAD}),
    BOOL("dist", "shm", dist.shm, "true"),
    INT("dist", "timeout_s", dist.timeout_s, "1800", 0, "never"),

    LIST_STR("sweep", "checkpoints", sweep.checkpoints, ""),
    LIST_STR("sweep", "datasets", sweep.datasets, ""),
    INT("sweep", "group_size", sweep.group_size, "1", 1, NULL),
    STR("sweep", "out", sweep.out, ""),
    CHECKED("sweep", "overrides", sweep.overrides, "", check_override_groups),
};
#define NKEYS ((int)(sizeof keys / sizeof keys[0]))

/* inih cannot read a line longer than its buffer, so a one-line string value plus "name = "
 * must fit one line, or a dumped config would not load back. Key names stay <= 16 chars;
 * a list key's continuation lines hold items of up to CT_CFG_STR - 1 characters. */
#define MAX_STR_NAME 16
#define CONT_INDENT "    "
_Static_assert(MAX_STR_NAME + 3 + (CT_CFG_STR - 1) + 2 <= INI_MAX_LINE,
               "CT_CFG_STR too long for one INI line");

/* Enum fields are written through an int pointer. */
_Static_assert(sizeof(ct_cfg_format) == sizeof(int) && sizeof(ct_cfg_augment) == sizeof(int) &&
                   sizeof(ct_cfg_model) == sizeof(int) && sizeof(ct_cfg_cache) == sizeof(int) &&
                   sizeof(ct_optim_kind) == sizeof(int) && sizeof(ct_sched_kind) == sizeof(int) &&
                   sizeof(ct_buffer_policy) == sizeof(int) && sizeof(ct_shard_mode) == sizeof(int) &&
                   sizeof(ct_cfg_nonfinite) == sizeof(int) && sizeof(ct_cfg_stem) == sizeof(int),
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

/* The words of an enum key as "a|b|c", for messages. */
static const char *word_list(const key_def *k, char *buf, size_t n) {
    size_t len = 0;
    buf[0] = '\0';
    for (const enum_word *w = k->words; w->word && len < n; w++)
        len += (size_t)snprintf(buf + len, n - len, "%s%s", len ? "|" : "", w->word);
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

/* Stores a string value of capacity cap, or explains in why[] why it cannot be stored. */
static void set_string(char *dst, size_t cap, const char *value, char *why, size_t n) {
    size_t len = strlen(value);
    if (len >= cap) {
        snprintf(why, n, "longer than %zu characters", cap - 1);
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
    memset(dst, 0, cap); /* whole buffer, so equal configs are equal bytes */
    memcpy(dst, value, len);
}

static bool is_blank(char ch) { return ch == ' ' || ch == '\t'; }

/* A list value with the blanks around its items and its empty items removed, so that a dump
 * can break it after any comma; false (with why[]) if an item is longer than one line holds. */
static bool normalize_list(const char *value, char *out, size_t cap, char *why, size_t n) {
    size_t len = 0;
    for (const char *p = value; *p;) {
        const char *end = p + strcspn(p, ","), *a = p, *b = end;
        while (a < b && is_blank(*a)) a++;
        while (b > a && is_blank(b[-1])) b--;
        if (b - a >= CT_CFG_STR) {
            snprintf(why, n, "item '%.40s...' is longer than %d characters", a, CT_CFG_STR - 1);
            return false;
        }
        if (b > a && (*a == '#' || *a == ';')) {
            /* the config's own dump puts long lists one item a line, where inih would read
             * such an item as a comment */
            snprintf(why, n, "item '%.40s' starts with '%c', which an INI line reads as a comment",
                     a, *a);
            return false;
        }
        if (b > a) {
            if (len + (size_t)(b - a) + 2 > cap) {
                snprintf(why, n, "longer than %zu characters", cap - 1);
                return false;
            }
            if (len) out[len++] = ',';
            memcpy(out + len, a, (size_t)(b - a));
            len += (size_t)(b - a);
        }
        p = *end ? end + 1 : end;
    }
    out[len] = '\0';
    return true;
}

/* data.classes: the syntax only; the classes are checked against the data set later. */
static bool check_classes(const char *value, char *why, size_t n) {
    const char *w;
    if (parse_classes(value, 0, NULL, &w)) return true;
    snprintf(why, n, "%s", w);
    return false;
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
    char why[512] = "";
    char *end = NULL;
    errno = 0;
    switch (k->type) {
    case T_STR: {
        if (k->check && !k->check(value, why, sizeof why)) break;
        if (!(k->flags & LIST) || k->size <= CT_CFG_STR) {
            set_string(dst, k->size, value, why, sizeof why);
            break;
        }
        char *list = ct_malloc(k->size);
        if (normalize_list(value, list, k->size, why, sizeof why))
            set_string(dst, k->size, list, why, sizeof why);
        free(list);
        break;
    }
    case T_INT: {
        if (k->zero && strcmp(value, k->zero) == 0) {
            *(int *)dst = 0;
            break;
        }
        long long v = strtoll(value, &end, 10);
        if (!*value || *end || errno)
            snprintf(why, sizeof why, "not an integer%s%s", k->zero ? " or " : "",
                     k->zero ? k->zero : "");
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
        const enum_word *w = k->words;
        while (w->word && strcmp(w->word, value) != 0) w++;
        if (w->word) {
            *(int *)dst = w->value;
        } else {
            char words[256];
            snprintf(why, sizeof why, "must be one of %s", word_list(k, words, sizeof words));
        }
        break;
    }
    }
    if (why[0])
        return ct_error(CT_ERR_CONFIG, "%s: %s.%s = '%.200s': %s", where, k->section, k->name,
                        value, why);
    return CT_OK;
}

/* Shortest %g form that reads back as exactly v, so dumps are readable and round-trip. */
static void format_double(double v, char *buf, size_t n) {
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, n, "%.*g", prec, v);
        if (strtod(buf, NULL) == v) return;
    }
}

/* k's value as text; buf holds CT_CFG_LIST + 64 bytes. */
static void format_value(const ct_config *c, const key_def *k, char *buf, size_t n) {
    const void *src = cfield(c, k);
    switch (k->type) {
    case T_STR: snprintf(buf, n, "%s", (const char *)src); break;
    case T_INT:
        if (k->zero && *(const int *)src == 0) snprintf(buf, n, "%s", k->zero);
        else snprintf(buf, n, "%d", *(const int *)src);
        break;
    case T_U64: snprintf(buf, n, "%llu", (unsigned long long)*(const uint64_t *)src); break;
    case T_DOUBLE: format_double(*(const double *)src, buf, n); break;
    case T_BOOL: snprintf(buf, n, "%s", *(const bool *)src ? "true" : "false"); break;
    case T_ENUM: {
        const enum_word *w = k->words;
        while (w->word && w->value != *(const int *)src) w++;
        CT_ASSERT(w->word, "config: %s.%s holds %d, which has no word", k->section, k->name,
                  *(const int *)src);
        snprintf(buf, n, "%s", w->word);
        break;
    }
    }
}

/* ---- public: defaults, set, override ------------------------------------------------------ */

void ct_config_defaults(ct_config *c) {
    memset(c, 0, sizeof *c);
    for (int i = 0; i < NKEYS; i++) {
        CT_ASSERT(keys[i].type != T_STR || strlen(keys[i].name) <= MAX_STR_NAME,
                  "config table: string key %s too long for one INI line", keys[i].name);
        CT_ASSERT(keys[i].type != T_STR || keys[i].flags & LIST || keys[i].size <= CT_CFG_STR,
                  "config table: %s holds more than one INI line but is not a list", keys[i].name);
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
    char key[128], value[CT_CFG_LIST + 1];
    if (!eq)
        return ct_error(CT_ERR_CONFIG, "command line: '%s' is not section.key=value", assignment);
    if (!trim_copy(assignment, (size_t)(eq - assignment), key, sizeof key))
        return ct_error(CT_ERR_CONFIG, "command line: key of '%s' is too long", assignment);
    if (!trim_copy(eq + 1, strlen(eq + 1), value, sizeof value))
        return ct_error(CT_ERR_CONFIG, "command line: %s: value longer than %d characters", key,
                        CT_CFG_LIST - 1);
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
    bool indented;  /* the current line starts with a blank */
    const key_def *prev; /* the key inih continues an indented line of; NULL after [section] */
    ct_status st;   /* first error */
    int err_line;
} ini_state;

/* The next character of the source, or EOF. */
static int src_get(ini_state *p) {
    if (p->fp) return getc(p->fp);
    return *p->s ? (unsigned char)*p->s++ : EOF;
}

/* inih reads through this so that the handler knows the current line, so that a line
 * longer than inih's buffer is an error instead of being split in two, and so that every
 * line ending counts: inih splits only at '\n', which turned a file with old Mac ('\r')
 * endings into one line, silently ignored. '\n', "\r\n" and '\r' all end a line. */
static char *ini_read(char *buf, int num, void *stream) {
    ini_state *p = stream;
    if (p->st) return NULL;
    int ch = src_get(p);
    if (ch == EOF) return NULL;
    size_t len = 0;
    while (ch != EOF && ch != '\n' && ch != '\r') {
        if (len == (size_t)num - 2) {
            p->line++;
            p->st = ct_error(CT_ERR_CONFIG, "%s:%d: line longer than %d characters", p->origin, p->line, num - 2);
            p->err_line = p->line;
            return NULL;
        }
        buf[len++] = (char)ch;
        ch = src_get(p);
    }
    if (ch == '\r') {
        int next = src_get(p);
        if (next != '\n' && next != EOF) {
            if (p->fp) ungetc(next, p->fp);
            else p->s--;
        }
    }
    buf[len++] = '\n';
    buf[len] = '\0';
    p->line++;
    p->indented = is_blank(buf[0]);
    const char *first = buf + strspn(buf, " \t");
    /* as inih: a [section] line ends the previous key, but an indented line after a key
     * continues it even when it starts with '[' (a list item such as "[ab]*.ckpt") */
    if (*first == '[' && !p->indented) p->prev = NULL;
    return buf;
}

/* inih hands an indented line after a key to the handler again under that key's name, as
 * Python's configparser continues a value. A list key joins it with ','; for any other
 * key it is an error rather than a silently overwritten value. */
static ct_status continue_value(ini_state *p, const key_def *k, const char *value,
                                const char *where) {
    if (!(k->flags & LIST))
        return ct_error(CT_ERR_CONFIG, "%s: %s.%s takes one line (an indented line continues "
                        "the previous value, and only list keys go on over lines)", where,
                        k->section, k->name);
    size_t cap = CT_CFG_LIST + 64 + strlen(value) + 2;
    char *joined = ct_malloc(cap);
    format_value(p->c, k, joined, cap);
    size_t len = strlen(joined);
    if (len && joined[len - 1] != ',') strcat(joined, ",");
    strcat(joined, value);
    ct_status st = set_value(p->c, k, joined, where);
    free(joined);
    return st;
}

static int ini_handle(void *user, const char *section, const char *name, const char *value) {
    ini_state *p = user;
    if (p->st) return 1;
    char where[600];
    snprintf(where, sizeof where, "%s:%d", p->origin, p->line);
    const key_def *k = *section ? find_key(section, name) : NULL;
    if (!*section) {
        p->st = ct_error(CT_ERR_CONFIG, "%s: key '%s' is outside any [section]", where, name);
    } else if (!k) {
        p->st = unknown_key(where, section, name);
    } else if (p->indented && k == p->prev) {
        p->st = continue_value(p, k, value, where);
    } else if (p->seen[k - keys]) {
        p->st = ct_error(CT_ERR_CONFIG, "%s: %s.%s is set twice (first on line %d; an "
                         "indented line continues the previous value)", where, section,
                         name, p->seen[k - keys]);
    } else {
        p->seen[k - keys] = p->line;
        p->prev = k;
        p->st = set_value(p->c, k, value, where);
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
    char tmp[CT_CFG_LIST + 64];
    format_value(c, k, tmp, sizeof tmp);
    if (strlen(tmp) >= n)
        return ct_error(CT_ERR_ARG, "ct_config_get: %s needs %zu bytes, buffer has %zu", key,
                        strlen(tmp) + 1, n);
    memcpy(buf, tmp, strlen(tmp) + 1);
    return CT_OK;
}

/* A list too long for one line goes one item a line, on indented continuation lines. */
static bool write_key(FILE *f, const key_def *k, const char *value) {
    if (!(k->flags & LIST) || strlen(k->name) + 3 + strlen(value) <= INI_MAX_LINE - 2)
        return fprintf(f, "%s = %s\n", k->name, value) > 0;
    bool ok = fprintf(f, "%s =", k->name) > 0;
    for (const char *p = value; ok && *p;) {
        size_t len = strcspn(p, ",");
        ok = fprintf(f, "\n" CONT_INDENT "%.*s%s", (int)len, p, p[len] ? "," : "") > 0;
        p += len + (p[len] == ',');
    }
    return ok && fputc('\n', f) != EOF;
}

ct_status ct_config_write(const ct_config *c, FILE *f) {
    char value[CT_CFG_LIST + 64];
    bool ok = fputs("# ctrain effective config\n", f) >= 0;
    /* each section once, in the order of first appearance, even if its keys are not
     * adjacent in the table */
    for (int i = 0; ok && i < NKEYS; i++) {
        if (i == 0 || strcmp(keys[i].section, keys[i - 1].section) != 0)
            ok = fprintf(f, "%s[%s]\n", i ? "\n" : "", keys[i].section) > 0;
        format_value(c, &keys[i], value, sizeof value);
        ok = ok && write_key(f, &keys[i], value);
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

/* train.preempt_signals (src/cli/preempt.c installs them). */
static const struct {
    const char *name;
    int sig;
} signal_names[] = {{"TERM", SIGTERM}, {"INT", SIGINT},   {"USR1", SIGUSR1}, {"USR2", SIGUSR2},
                    {"HUP", SIGHUP},   {"QUIT", SIGQUIT}, {"XCPU", SIGXCPU}};
#define NNAMES ((int)(sizeof signal_names / sizeof signal_names[0]))

bool ct_config_signals(const char *spec, int *out, int *n, char *why, size_t wn) {
    *n = 0;
    char buf[CT_CFG_STR];
    snprintf(buf, sizeof buf, "%s", spec);
    if (!strcasecmp(buf, "none")) return true;
    char *save = NULL;
    for (char *t = strtok_r(buf, ", \t", &save); t; t = strtok_r(NULL, ", \t", &save)) {
        const char *w = strncasecmp(t, "SIG", 3) ? t : t + 3; /* SIGTERM or TERM */
        int k = 0;
        while (k < NNAMES && strcasecmp(w, signal_names[k].name)) k++;
        if (k == NNAMES) {
            snprintf(why, wn, "'%s' is not one of TERM, INT, USR1, USR2, HUP, QUIT, XCPU (or none)", t);
            return false;
        }
        bool dup = false;
        for (int i = 0; i < *n; i++) dup |= out[i] == signal_names[k].sig;
        if (!dup) out[(*n)++] = signal_names[k].sig;
    }
    if (!*n) snprintf(why, wn, "empty: list signals (e.g. TERM,INT,USR1) or say none");
    return *n > 0;
}
