/* The in-memory data set: float32 features or uint8 pixels, and int64 labels, loaded from
 * IDX or NPY files or copied from memory, with class filtering and few-shot subsetting done
 * in place. uint8 sources stay uint8 (a quarter of the memory); the loader converts. */
#include "internal.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PATH_BUF 4096

/* Sets num_classes from the labels; a negative label is error `st` naming `what`. */
static ct_status set_num_classes(ct_dataset *ds, const char *what, ct_status st) {
    int64_t max = -1;
    for (int64_t i = 0; i < ds->n; i++) {
        if (ds->y[i] < 0 || ds->y[i] >= INT_MAX)
            return ct_error(st, "%s: label %lld of sample %lld is outside 0..%d", what,
                            (long long)ds->y[i], (long long)i, INT_MAX - 1);
        if (ds->y[i] > max) max = ds->y[i];
    }
    ds->num_classes = (int)(max + 1);
    return CT_OK;
}

static const char *dtype_name(ct_dtype t) {
    return t == CT_DTYPE_F32 ? "float32" : t == CT_DTYPE_U8 ? "uint8" : "int64";
}

static int64_t *labels_to_i64(const ct_array *a) {
    if (a->dtype == CT_DTYPE_I64) return a->data;
    int64_t *y = ct_malloc((size_t)a->numel * sizeof *y);
    const uint8_t *u = a->data;
    for (int64_t i = 0; i < a->numel; i++) y[i] = u[i];
    return y;
}

/* Takes over a reader's feature buffer: float32 becomes x, uint8 pixels become x8 (not
 * converted here: the loader scales them by 1/255 per batch, as torchvision's ToTensor). */
static void take_features(ct_dataset *d, ct_array *a) {
    if (a->dtype == CT_DTYPE_U8)
        d->x8 = a->data;
    else
        d->x = a->data;
    a->data = NULL;
}

/* Bytes per stored feature: 4 for x, 1 for x8. */
static size_t feature_size(const ct_dataset *ds) { return ds->x8 ? 1 : sizeof(float); }

/* dir/name if it exists, else dir/name.gz; CT_ERR_IO naming both when neither does. */
static ct_status find_file(const char *dir, const char *name, char *out) {
    if (snprintf(out, PATH_BUF, "%s/%s.gz", dir, name) >= PATH_BUF)
        return ct_error(CT_ERR_ARG, "%s: path too long", dir);
    snprintf(out, PATH_BUF, "%s/%s", dir, name);
    if (access(out, F_OK) == 0) return CT_OK;
    strcat(out, ".gz");
    if (access(out, F_OK) == 0) return CT_OK;
    return ct_error(CT_ERR_IO, "%s/%s: missing file (also tried %s/%s.gz)", dir, name, dir, name);
}

ct_status ct_dataset_from_idx(ct_dataset *ds, const char *dir, ct_split split) {
    const char *pre = split == CT_SPLIT_TRAIN ? "train" : "t10k";
    char name[64], ipath[PATH_BUF], lpath[PATH_BUF];
    ct_status st;
    snprintf(name, sizeof name, "%s-images-idx3-ubyte", pre);
    if ((st = find_file(dir, name, ipath)) != CT_OK) return st;
    snprintf(name, sizeof name, "%s-labels-idx1-ubyte", pre);
    if ((st = find_file(dir, name, lpath)) != CT_OK) return st;

    ct_array img = {0}, lbl = {0};
    if ((st = ct_idx_read(ipath, 3, &img)) != CT_OK) return st;
    if ((st = ct_idx_read(lpath, 1, &lbl)) != CT_OK) {
        ct_array_free(&img);
        return st;
    }
    if (img.shape[0] != lbl.shape[0]) {
        st = ct_error(CT_ERR_SHAPE, "image and label counts differ: %s has %lld images but %s "
                      "has %lld labels", ipath, (long long)img.shape[0], lpath,
                      (long long)lbl.shape[0]);
        ct_array_free(&img);
        ct_array_free(&lbl);
        return st;
    }
    ct_dataset d = {.n = img.shape[0], .sample_ndim = 3,
                    .sample_shape = {1, img.shape[1], img.shape[2]},
                    .sample_numel = img.shape[1] * img.shape[2]};
    take_features(&d, &img);
    d.y = labels_to_i64(&lbl);
    ct_array_free(&lbl);
    /* cannot fail for uint8 labels, but keeps the three constructors alike */
    if ((st = set_num_classes(&d, lpath, CT_ERR_FORMAT)) != CT_OK) {
        ct_dataset_free(&d);
        return st;
    }
    *ds = d;
    return CT_OK;
}

ct_status ct_dataset_from_npy(ct_dataset *ds, const char *x_path, const char *y_path) {
    ct_array xa = {0}, ya = {0};
    ct_status st = ct_npy_read(x_path, &xa);
    if (st != CT_OK) return st;
    if ((st = ct_npy_read(y_path, &ya)) != CT_OK) {
        ct_array_free(&xa);
        return st;
    }
    bool zero_dim = false;
    for (int i = 1; i < xa.ndim; i++) zero_dim = zero_dim || xa.shape[i] == 0;
    if (xa.dtype == CT_DTYPE_I64 || xa.ndim < 2 || zero_dim)
        st = ct_error(CT_ERR_SHAPE, "%s: features must be float32 or uint8 with shape [n, ...] "
                      "(2..%d dims, none of size 0 after the first), got %s with %d dims",
                      x_path, CT_MAX_DIMS, dtype_name(xa.dtype), xa.ndim);
    else if (ya.dtype == CT_DTYPE_F32 || ya.ndim != 1)
        st = ct_error(CT_ERR_SHAPE, "%s: labels must be int64 or uint8 with shape [n], got %s "
                      "with %d dims", y_path, dtype_name(ya.dtype), ya.ndim);
    else if (xa.shape[0] != ya.shape[0])
        st = ct_error(CT_ERR_SHAPE, "sample counts differ: %s has %lld samples but %s has %lld "
                      "labels", x_path, (long long)xa.shape[0], y_path, (long long)ya.shape[0]);
    if (st != CT_OK) {
        ct_array_free(&xa);
        ct_array_free(&ya);
        return st;
    }
    ct_dataset d = {.n = xa.shape[0], .sample_ndim = xa.ndim - 1, .sample_numel = 1};
    for (int i = 1; i < xa.ndim; i++) {
        d.sample_shape[i - 1] = xa.shape[i];
        d.sample_numel *= xa.shape[i];
    }
    take_features(&d, &xa);
    d.y = labels_to_i64(&ya);
    /* an int64 label buffer was taken over; free only one that was converted from */
    if (d.y != ya.data) ct_array_free(&ya);
    if ((st = set_num_classes(&d, y_path, CT_ERR_FORMAT)) != CT_OK) {
        ct_dataset_free(&d);
        return st;
    }
    *ds = d;
    return CT_OK;
}

static ct_status check_sample_shape(int ndim, const int64_t *shape, int64_t *numel) {
    if (ndim < 1 || ndim > CT_MAX_DIMS - 1)
        return ct_error(CT_ERR_ARG, "dataset: sample ndim %d outside 1..%d", ndim, CT_MAX_DIMS - 1);
    *numel = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 1)
            return ct_error(CT_ERR_ARG, "dataset: sample dim %d has size %lld", i,
                            (long long)shape[i]);
        *numel *= shape[i];
    }
    return CT_OK;
}

/* The shared part of from_data and from_pixels: copies n samples of elem-byte features. */
static ct_status from_memory(ct_dataset *ds, int64_t n, int sample_ndim, const int64_t *sample_shape,
                             const void *x, size_t elem, const int64_t *y) {
    ct_dataset d = {.n = n, .sample_ndim = sample_ndim};
    ct_status st = check_sample_shape(sample_ndim, sample_shape, &d.sample_numel);
    if (st != CT_OK) return st;
    if (n < 0) return ct_error(CT_ERR_ARG, "dataset: negative sample count %lld", (long long)n);
    memcpy(d.sample_shape, sample_shape, (size_t)sample_ndim * sizeof *sample_shape);
    size_t xbytes = (size_t)(n * d.sample_numel) * elem;
    void *xd = ct_malloc(xbytes);
    if (elem == 1)
        d.x8 = xd;
    else
        d.x = xd;
    d.y = ct_malloc((size_t)n * sizeof *d.y);
    if (n) {
        memcpy(xd, x, xbytes);
        memcpy(d.y, y, (size_t)n * sizeof *d.y);
    }
    if ((st = set_num_classes(&d, "dataset", CT_ERR_ARG)) != CT_OK) {
        ct_dataset_free(&d);
        return st;
    }
    *ds = d;
    return CT_OK;
}

ct_status ct_dataset_from_data(ct_dataset *ds, int64_t n, int sample_ndim,
                               const int64_t *sample_shape, const float *x, const int64_t *y) {
    return from_memory(ds, n, sample_ndim, sample_shape, x, sizeof *x, y);
}

ct_status ct_dataset_from_pixels(ct_dataset *ds, int64_t n, int sample_ndim,
                                 const int64_t *sample_shape, const uint8_t *x8, const int64_t *y) {
    return from_memory(ds, n, sample_ndim, sample_shape, x8, sizeof *x8, y);
}

void ct_dataset_sample(const ct_dataset *ds, int64_t i, float *out) {
    CT_ASSERT(i >= 0 && i < ds->n, "dataset: sample %lld outside 0..%lld", (long long)i,
              (long long)ds->n - 1);
    int64_t f = ds->sample_numel;
    if (ds->files) {
        uint8_t *px = ct_malloc((size_t)f);
        CT_ASSERT(ct_dataset_load_image(ds, i, NULL, px) == CT_OK, "dataset: %s", ct_last_error());
        for (int64_t j = 0; j < f; j++) out[j] = (float)px[j] / 255.0f;
        free(px);
    } else if (ds->x8) {
        const uint8_t *p = ds->x8 + i * f;
        /* the same expression as the loader's, so the values agree bit for bit */
        for (int64_t j = 0; j < f; j++) out[j] = (float)p[j] / 255.0f;
    } else {
        memcpy(out, ds->x + i * f, (size_t)f * sizeof *out);
    }
}

ct_status ct_dataset_reshape(ct_dataset *ds, int sample_ndim, const int64_t *sample_shape) {
    int64_t numel;
    ct_status st = check_sample_shape(sample_ndim, sample_shape, &numel);
    if (st != CT_OK) return st;
    if (numel != ds->sample_numel)
        return ct_error(CT_ERR_ARG, "dataset: cannot reshape samples of %lld features to %lld",
                        (long long)ds->sample_numel, (long long)numel);
    ds->sample_ndim = sample_ndim;
    memcpy(ds->sample_shape, sample_shape, (size_t)sample_ndim * sizeof *sample_shape);
    return CT_OK;
}

/* An image data set keeps its kept samples' paths and frees the others'. */
static void compact_files(ct_dataset *ds, const unsigned char *keep) {
    char **p = ds->files->paths;
    int64_t m = 0;
    for (int64_t i = 0; i < ds->n; i++) {
        if (keep[i]) {
            p[m] = p[i];
            ds->y[m++] = ds->y[i];
        } else {
            free(p[i]);
        }
    }
    ds->n = m;
}

/* Keeps the samples with keep[i] != 0, in order, and gives unused memory back. Works on
 * the feature bytes, so x and x8 are handled alike. */
static void compact(ct_dataset *ds, const unsigned char *keep) {
    if (ds->files) {
        compact_files(ds, keep);
        return;
    }
    size_t rec = (size_t)ds->sample_numel * feature_size(ds); /* bytes per sample */
    unsigned char *x = ds->x8 ? (unsigned char *)ds->x8 : (unsigned char *)ds->x;
    int64_t m = 0;
    for (int64_t i = 0; i < ds->n; i++) {
        if (!keep[i]) continue;
        if (m != i) {
            memmove(x + (size_t)m * rec, x + (size_t)i * rec, rec);
            ds->y[m] = ds->y[i];
        }
        m++;
    }
    ds->n = m;
    if (m > 0) { /* shrinking realloc cannot fail in practice; keep the old block if it does */
        unsigned char *nx = ct_realloc(x, (size_t)m * rec);
        if (nx) x = nx;
        int64_t *y = ct_realloc(ds->y, (size_t)m * sizeof *y);
        if (y) ds->y = y;
    }
    if (ds->x8)
        ds->x8 = x;
    else
        ds->x = (float *)x;
}

ct_status ct_dataset_keep_classes(ct_dataset *ds, const int64_t *classes, int k, bool remap) {
    if (k < 1) return ct_error(CT_ERR_ARG, "keep_classes: need at least one class, got %d", k);
    int64_t *map = ct_malloc((size_t)ds->num_classes * sizeof *map + 1);
    for (int c = 0; c < ds->num_classes; c++) map[c] = -1;
    for (int i = 0; i < k; i++) {
        int64_t c = classes[i];
        ct_status st = CT_OK;
        if (c < 0 || c >= ds->num_classes)
            st = ct_error(CT_ERR_ARG, "keep_classes: class %lld outside 0..%d", (long long)c,
                          ds->num_classes - 1);
        else if (map[c] >= 0)
            st = ct_error(CT_ERR_ARG, "keep_classes: class %lld listed twice", (long long)c);
        if (st != CT_OK) {
            free(map);
            return st;
        }
        map[c] = remap ? i : c;
    }
    unsigned char *keep = ct_malloc((size_t)ds->n);
    for (int64_t i = 0; i < ds->n; i++) {
        keep[i] = map[ds->y[i]] >= 0;
        if (keep[i]) ds->y[i] = map[ds->y[i]];
    }
    compact(ds, keep);
    if (remap) ds->num_classes = k;
    if (remap && ds->files) { /* the names follow their classes to the new labels */
        ct_classes *c = &ds->files->classes;
        char **names = ct_malloc((size_t)k * sizeof *names);
        for (int i = 0; i < k; i++) names[i] = c->names[classes[i]], c->names[classes[i]] = NULL;
        for (int i = 0; i < c->n; i++) free(c->names[i]);
        free(c->names);
        *c = (ct_classes){.n = k, .names = names}; /* no longer "0".."k-1": not numeric */
    }
    free(keep);
    free(map);
    return CT_OK;
}

ct_status ct_dataset_few_shot(ct_dataset *ds, int64_t k) {
    if (k < 1)
        return ct_error(CT_ERR_ARG, "few_shot: k must be at least 1, got %lld", (long long)k);
    int64_t *seen = ct_calloc((size_t)ds->num_classes + 1, sizeof *seen);
    unsigned char *keep = ct_malloc((size_t)ds->n);
    for (int64_t i = 0; i < ds->n; i++) keep[i] = seen[ds->y[i]]++ < k;
    compact(ds, keep);
    free(keep);
    free(seen);
    return CT_OK;
}

ct_status ct_dataset_transform_pixels(ct_dataset *ds, const ct_transforms *t) {
    for (int k = 0; k < t->n; k++)
        if (t->t[k].kind != CT_TF_RESIZE && t->t[k].kind != CT_TF_CENTER_CROP)
            return ct_error(CT_ERR_ARG, "random transforms need image files (data.format = folder or "
                            "list); in-memory images take data.augment");
    int nd = ds->sample_ndim;
    int64_t C = nd == 3 ? ds->sample_shape[0] : 1;
    if (!ds->x8 || !(nd == 2 || (nd == 3 && (C == 1 || C == 3))))
        return ct_error(CT_ERR_ARG, "transforms need uint8 images of [C, H, W] (C = 1 or 3) or [H, W], "
                        "not %s samples of %d dims", ds->x8 ? "uint8" : ds->files ? "file" : "float32", nd);
    if (!t->n || !ds->n) return CT_OK;
    int64_t H = ds->sample_shape[nd - 2], W = ds->sample_shape[nd - 1], oh, ow;
    ct_transforms_out_size(t, H, W, &oh, &ow);
    int64_t in = ds->sample_numel, out = C * oh * ow;
    uint8_t *dst = ct_malloc((size_t)(ds->n * out));
    for (int64_t i = 0; i < ds->n; i++) {
        const uint8_t *src = ds->x8 + i * in;
        ct_image im = (ct_image){.h = H, .w = W, .c = (int)C, .px = ct_malloc((size_t)in)};
        for (int64_t c = 0; c < C; c++) /* CHW -> HWC */
            for (int64_t p = 0; p < H * W; p++) im.px[p * C + c] = src[c * H * W + p];
        ct_transforms_apply(t, &im, NULL); /* deterministic: draws nothing */
        uint8_t *d = dst + i * out;
        for (int64_t c = 0; c < C; c++)
            for (int64_t p = 0; p < oh * ow; p++) d[c * oh * ow + p] = im.px[p * C + c];
        ct_image_free(&im);
    }
    free(ds->x8);
    ds->x8 = dst;
    ds->sample_shape[nd - 2] = oh;
    ds->sample_shape[nd - 1] = ow;
    ds->sample_numel = out;
    return CT_OK;
}

void ct_dataset_free(ct_dataset *ds) {
    ct__image_files_free(ds->files, ds->n);
    free(ds->x);
    free(ds->x8);
    free(ds->y);
    memset(ds, 0, sizeof *ds);
}
