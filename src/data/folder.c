/* Folder (torchvision ImageFolder) and list (CSV of path,label) data sets. Building one
 * lists file names only; the loader decodes each rank's own samples batch by batch. */
#include "internal.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

/* A growable array of malloc'd strings. */
typedef struct {
    int64_t n, cap;
    char **s;
} strvec;

static void sv_push(strvec *v, char *s) {
    if (v->n == v->cap) {
        v->cap = v->cap ? 2 * v->cap : 64;
        char **ns = realloc(v->s, (size_t)v->cap * sizeof *ns);
        CT_ASSERT(ns, "data: out of memory listing files");
        v->s = ns;
    }
    v->s[v->n++] = s;
}

static void sv_free(strvec *v) {
    for (int64_t i = 0; i < v->n; i++) free(v->s[i]);
    free(v->s);
    memset(v, 0, sizeof *v);
}

static char *join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = ct_malloc(a + b + 2);
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
    return p;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Python's sorted() on str compares code points, which for UTF-8 is byte order: strcmp. */
static void sv_sort(strvec *v) {
    if (v->n > 1) qsort(v->s, (size_t)v->n, sizeof *v->s, cmp_str);
}

static bool is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode); /* follows links, as ImageFolder */
}

static bool is_image_name(const char *name) {
    static const char *const ext[] = {".jpg", ".jpeg", ".png"};
    size_t n = strlen(name);
    for (size_t i = 0; i < sizeof ext / sizeof *ext; i++) {
        size_t k = strlen(ext[i]);
        if (n > k && !strcasecmp(name + n - k, ext[i])) return true;
    }
    return false;
}

/* The non-hidden entries of dir: subfolders into dirs (full paths) and image files into
 * files (names), either may be NULL. */
static ct_status list_dir(const char *dir, strvec *dirs, strvec *files) {
    DIR *d = opendir(dir);
    if (!d) return ct_error(CT_ERR_IO, "%s: cannot open directory: %s", dir, strerror(errno));
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue; /* ".", "..", and hidden files and folders */
        char *p = join(dir, e->d_name);
        if (is_dir(p)) {
            if (dirs) {
                sv_push(dirs, p);
                continue;
            }
        } else if (files && is_image_name(e->d_name)) {
            sv_push(files, strcpy(p, e->d_name));
            continue;
        }
        free(p);
    }
    closedir(d);
    return CT_OK;
}

void ct_classes_free(ct_classes *c) {
    for (int i = 0; i < c->n; i++) free(c->names[i]);
    free(c->names);
    memset(c, 0, sizeof *c);
}

ct_status ct_classes_from_folder(const char *root, ct_classes *out) {
    strvec dirs = {0};
    ct_status st = list_dir(root, &dirs, NULL);
    if (st != CT_OK) return st;
    if (dirs.n == 0) {
        sv_free(&dirs);
        return ct_error(CT_ERR_FORMAT, "%s: no class folders (expected %s/<class>/<image>)", root, root);
    }
    sv_sort(&dirs);
    size_t skip = strlen(root) + 1;
    for (int64_t i = 0; i < dirs.n; i++) memmove(dirs.s[i], dirs.s[i] + skip, strlen(dirs.s[i] + skip) + 1);
    *out = (ct_classes){.n = (int)dirs.n, .names = dirs.s};
    return CT_OK;
}

/* The label of class name in c, or -1. */
static int64_t find_class(const ct_classes *c, const char *name) {
    if (c->numeric) {
        char *end;
        errno = 0;
        long long v = strtoll(name, &end, 10);
        bool ok = isdigit((unsigned char)*name) && !*end && !errno;
        return ok && v < c->n ? v : -1;
    }
    char **hit = bsearch(&name, c->names, (size_t)c->n, sizeof *c->names, cmp_str);
    return hit ? hit - c->names : -1;
}

static void copy_classes(ct_classes *dst, const ct_classes *src) {
    *dst = (ct_classes){.n = src->n, .numeric = src->numeric};
    dst->names = ct_malloc((size_t)src->n * sizeof *dst->names);
    for (int i = 0; i < src->n; i++) dst->names[i] = strdup(src->names[i]);
}

void ct__image_files_free(ct_image_files *f, int64_t n) {
    if (!f) return;
    for (int64_t i = 0; i < n; i++) free(f->paths[i]);
    free(f->paths);
    ct_classes_free(&f->classes);
    free(f);
}

/* Makes *ds from the n paths and labels (taken over) once the first image's size is read. */
static ct_status finish(ct_dataset *ds, strvec *paths, int64_t *y, const ct_classes *classes,
                        int channels) {
    int64_t h = 0, w = 0;
    ct_status st = channels == 1 || channels == 3
                       ? ct_image_info(paths->s[0], &h, &w)
                       : ct_error(CT_ERR_ARG, "image data set: channels must be 1 or 3, got %d", channels);
    /* An unreadable first file is the loader's to report (or skip) like any other bad file:
     * the size may come from one of the next few. */
    char first[512];
    snprintf(first, sizeof first, "%s", ct_last_error());
    for (int64_t i = 1; i < paths->n && i < 16 && (st == CT_ERR_FORMAT || st == CT_ERR_IO); i++)
        st = ct_image_info(paths->s[i], &h, &w);
    if (st == CT_ERR_FORMAT || st == CT_ERR_IO) st = ct_error(st, "%s", first);
    if (st != CT_OK) {
        sv_free(paths);
        free(y);
        return st;
    }
    ct_image_files *f = ct_malloc(sizeof *f);
    *f = (ct_image_files){.paths = paths->s, .channels = channels, .h0 = h, .w0 = w};
    copy_classes(&f->classes, classes);
    *ds = (ct_dataset){.n = paths->n, .sample_ndim = 3, .sample_shape = {channels, h, w},
                       .sample_numel = channels * h * w, .files = f, .y = y,
                       .num_classes = classes->n};
    return CT_OK;
}

static ct_status folder_with(ct_dataset *ds, const char *root, const ct_classes *classes,
                             const ct_classes *own, int channels) {
    strvec paths = {0};
    int64_t *y = NULL, cap = 0;
    ct_status st = CT_OK;
    for (int c = 0; c < own->n && st == CT_OK; c++) {
        int64_t label = find_class(classes, own->names[c]);
        if (label < 0) {
            st = ct_error(CT_ERR_FORMAT, "%s/%s: class folder '%s' is not one of the %d training "
                          "classes", root, own->names[c], own->names[c], classes->n);
            break;
        }
        /* os.walk's folders, sorted by path, each with its files sorted by name */
        strvec dirs = {0};
        sv_push(&dirs, join(root, own->names[c]));
        for (int64_t i = 0; i < dirs.n && st == CT_OK; i++) {
            st = list_dir(dirs.s[i], &dirs, NULL);
            if (st == CT_OK && dirs.n > 1000000) /* a symbolic link loop */
                st = ct_error(CT_ERR_FORMAT, "%s/%s: more than a million folders (a link loop?)", root,
                              own->names[c]);
        }
        sv_sort(&dirs);
        int64_t before = paths.n;
        for (int64_t i = 0; i < dirs.n && st == CT_OK; i++) {
            strvec files = {0};
            st = list_dir(dirs.s[i], NULL, &files);
            sv_sort(&files);
            for (int64_t k = 0; k < files.n; k++) sv_push(&paths, join(dirs.s[i], files.s[k]));
            sv_free(&files);
        }
        if (st == CT_OK && paths.n == before)
            st = ct_error(CT_ERR_FORMAT, "%s/%s: class folder '%s' has no .jpg, .jpeg or .png file",
                          root, own->names[c], own->names[c]);
        sv_free(&dirs);
        if (paths.n > cap) {
            cap = paths.cap;
            int64_t *ny = realloc(y, (size_t)cap * sizeof *y);
            CT_ASSERT(ny, "data: out of memory listing files");
            y = ny;
        }
        for (int64_t i = before; i < paths.n; i++) y[i] = label;
    }
    if (st != CT_OK) {
        sv_free(&paths);
        free(y);
        return st;
    }
    return finish(ds, &paths, y, classes, channels);
}

ct_status ct_dataset_from_folder(ct_dataset *ds, const char *root, const ct_classes *classes,
                                 int channels) {
    ct_classes own;
    ct_status st = ct_classes_from_folder(root, &own);
    if (st != CT_OK) return st;
    st = folder_with(ds, root, classes ? classes : &own, &own, channels);
    ct_classes_free(&own);
    return st;
}

/* ---- lists ---- */

/* Calls fn(path, label, line number, ctx) for every entry of csv, with both fields trimmed;
 * stops at the first non-OK status. */
typedef ct_status (*entry_fn)(const char *csv, char *path, char *label, int64_t line, void *ctx);

static char *trim(char *s) {
    while (isspace((unsigned char)*s)) s++;
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1])) s[--n] = 0;
    return s;
}

static ct_status each_entry(const char *csv, entry_fn fn, void *ctx) {
    FILE *f = fopen(csv, "r");
    if (!f) return ct_error(CT_ERR_IO, "%s: cannot open: %s", csv, strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    ct_status st = CT_OK;
    int64_t no = 0, entries = 0;
    while (st == CT_OK && getline(&line, &cap, f) > 0) {
        no++;
        char *s = trim(line);
        if (!*s) continue;
        char *comma = strrchr(s, ',');
        if (!comma) {
            st = ct_error(CT_ERR_FORMAT, "%s:%lld: expected 'path,label', got '%.80s'", csv, (long long)no, s);
            break;
        }
        *comma = 0;
        char *path = trim(s), *label = trim(comma + 1);
        if (entries == 0 && !strcasecmp(path, "path") && !strcasecmp(label, "label")) continue;
        if (!*path || !*label) {
            st = ct_error(CT_ERR_FORMAT, "%s:%lld: empty %s", csv, (long long)no, *path ? "label" : "path");
            break;
        }
        entries++;
        st = fn(csv, path, label, no, ctx);
    }
    free(line);
    fclose(f);
    if (st == CT_OK && entries == 0) st = ct_error(CT_ERR_FORMAT, "%s: no 'path,label' entries", csv);
    return st;
}

typedef struct {
    strvec labels;
    bool numeric;
    long long max;
} label_scan;

static ct_status scan_label(const char *csv, char *path, char *label, int64_t line, void *ctx) {
    (void)csv, (void)path, (void)line;
    label_scan *s = ctx;
    char *end;
    errno = 0;
    long long v = strtoll(label, &end, 10);
    if (isdigit((unsigned char)*label) && !*end && !errno && v < (1 << 24)) {
        if (v > s->max) s->max = v;
    } else {
        s->numeric = false;
    }
    sv_push(&s->labels, strdup(label));
    return CT_OK;
}

ct_status ct_classes_from_list(const char *csv, ct_classes *out) {
    label_scan s = {.numeric = true, .max = -1};
    ct_status st = each_entry(csv, scan_label, &s);
    if (st != CT_OK) {
        sv_free(&s.labels);
        return st;
    }
    ct_classes c = {.numeric = s.numeric};
    if (s.numeric) {
        c.n = (int)s.max + 1;
        c.names = ct_malloc((size_t)c.n * sizeof *c.names);
        for (int i = 0; i < c.n; i++) {
            char buf[16];
            snprintf(buf, sizeof buf, "%d", i);
            c.names[i] = strdup(buf);
        }
        sv_free(&s.labels);
    } else { /* the distinct labels, sorted */
        sv_sort(&s.labels);
        int64_t k = 0;
        for (int64_t i = 0; i < s.labels.n; i++) {
            if (k && !strcmp(s.labels.s[k - 1], s.labels.s[i]))
                free(s.labels.s[i]);
            else
                s.labels.s[k++] = s.labels.s[i];
        }
        c.n = (int)k;
        c.names = s.labels.s;
    }
    *out = c;
    return CT_OK;
}

typedef struct {
    const ct_classes *classes;
    char *dir; /* the CSV's folder */
    strvec paths;
    int64_t *y, cap;
} list_build;

static ct_status add_entry(const char *csv, char *path, char *label, int64_t line, void *ctx) {
    list_build *b = ctx;
    int64_t k = find_class(b->classes, label);
    if (k < 0)
        return ct_error(CT_ERR_FORMAT, "%s:%lld: unknown label '%s' (%s)", csv, (long long)line, label,
                        b->classes->numeric ? "labels are integers from 0" : "not one of the training classes");
    sv_push(&b->paths, path[0] == '/' ? strdup(path) : join(b->dir, path));
    if (b->paths.n > b->cap) {
        b->cap = b->paths.cap;
        int64_t *ny = realloc(b->y, (size_t)b->cap * sizeof *ny);
        CT_ASSERT(ny, "data: out of memory reading %s", csv);
        b->y = ny;
    }
    b->y[b->paths.n - 1] = k;
    return CT_OK;
}

ct_status ct_dataset_from_list(ct_dataset *ds, const char *csv, const ct_classes *classes,
                               int channels) {
    ct_classes own = {0};
    ct_status st = CT_OK;
    if (!classes) {
        if ((st = ct_classes_from_list(csv, &own)) != CT_OK) return st;
        classes = &own;
    }
    list_build b = {.classes = classes, .dir = strdup(csv)};
    char *slash = strrchr(b.dir, '/');
    if (slash)
        *slash = 0;
    else
        strcpy(b.dir, ".");
    st = each_entry(csv, add_entry, &b);
    if (st == CT_OK) {
        st = finish(ds, &b.paths, b.y, classes, channels);
    } else {
        sv_free(&b.paths);
        free(b.y);
    }
    free(b.dir);
    ct_classes_free(&own);
    return st;
}

/* ---- access ---- */

const ct_classes *ct_dataset_classes(const ct_dataset *ds) {
    return ds->files ? &ds->files->classes : NULL;
}

const char *ct_dataset_path(const ct_dataset *ds, int64_t i) {
    CT_ASSERT(i >= 0 && i < ds->n, "dataset: sample %lld outside 0..%lld", (long long)i, (long long)ds->n - 1);
    return ds->files ? ds->files->paths[i] : NULL;
}

void ct_dataset_set_transforms(ct_dataset *ds, const ct_transforms *t) {
    CT_ASSERT(ds->files, "dataset: transforms need an image data set");
    ds->files->tf = *t;
    ct_transforms_out_size(t, ds->files->h0, ds->files->w0, &ds->sample_shape[1], &ds->sample_shape[2]);
    ds->sample_numel = ds->sample_shape[0] * ds->sample_shape[1] * ds->sample_shape[2];
}

ct_status ct_dataset_load_image(const ct_dataset *ds, int64_t i, ct_rng *rng, uint8_t *out) {
    const char *path = ct_dataset_path(ds, i);
    CT_ASSERT(path, "dataset: load_image on a data set without files");
    ct_rng fixed;
    if (!rng) { /* only deterministic transforms are expected; a fixed stream keeps it defined */
        ct_rng_seed(&fixed, (uint64_t)i);
        rng = &fixed;
    }
    ct_image im;
    ct_status st = ct_transforms_read(&ds->files->tf, path, ds->files->channels, rng, &im);
    if (st != CT_OK) return st;
    int64_t C = ds->sample_shape[0], H = ds->sample_shape[1], W = ds->sample_shape[2];
    if (im.h != H || im.w != W) {
        st = ct_error(CT_ERR_SHAPE, "%s: image is %lldx%lld%s but the data set's are %lldx%lld (the "
                      "first file's size; a crop transform makes every size fit)", path, (long long)im.w,
                      (long long)im.h, ds->files->tf.n ? " after the transforms" : "", (long long)W, (long long)H);
        ct_image_free(&im);
        return st;
    }
    /* HWC -> CHW */
    for (int64_t c = 0; c < C; c++)
        for (int64_t p = 0; p < H * W; p++) out[c * H * W + p] = im.px[p * C + c];
    ct_image_free(&im);
    return CT_OK;
}
