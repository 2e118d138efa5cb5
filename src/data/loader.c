/* The batch loader: gathers the samples named by an index list (a sampler's shard) into a
 * [B, sample shape] tensor, augmenting then normalising each sample (uint8 pixels are
 * converted to float here, through a table of their 256 normalised values). Image data sets
 * are decoded here, sample by sample, so a rank reads only its own files. Its buffers are
 * allocated once, and batch tensors come from the caching allocator, so after the first
 * epoch an in-memory data set makes no malloc calls. */
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct ct_loader {
    const ct_dataset *ds;
    ct_loader_opts o;
    ct_rng rng;
    const int64_t *idx; /* the epoch's indices (borrowed) */
    int64_t n, pos;     /* how many, and how many batch places were served */
    int64_t cur;        /* the next index to read; ahead of pos by the files skipped */
    int64_t *y, *bidx;  /* batch_size labels and data set indices */
    uint8_t *pix;       /* image data sets: one decoded sample */
    ct_status st;       /* the epoch's first decode error, its message in msg */
    char msg[512];
    int64_t skipped;
    int64_t C, H, W;    /* sample layout for augmentation ([H, W] is C = 1) */
    float mean[CT_MAX_NORM_CHANNELS], std[CT_MAX_NORM_CHANNELS]; /* per channel */
    float lut[CT_MAX_NORM_CHANNELS][256]; /* x8 data sets: pixel p's normalised feature, per channel */
    uint64_t key;       /* image data sets: the epoch's key for per-sample transform RNGs */
    struct job *jobs;   /* in-memory data sets: the batch's samples, converted together */
};

/* One sample to convert: its source and its crop offset and flip (drawn in sample order). */
struct job {
    const float *xf;
    const uint8_t *x8;
    int64_t dy, dx;
    bool flip;
};

ct_loader_opts ct_loader_opts_default(int64_t batch_size) {
    return (ct_loader_opts){.batch_size = batch_size, .mean = 0, .std = 1};
}

ct_status ct_loader_new(ct_loader **out, const ct_dataset *ds, const ct_loader_opts *opts) {
    const ct_loader_opts *o = opts;
    if (o->batch_size < 1)
        return ct_error(CT_ERR_ARG, "loader: batch_size must be at least 1, got %lld",
                        (long long)o->batch_size);
    if (!(o->std > 0) || !isfinite(o->std) || !isfinite(o->mean))
        return ct_error(CT_ERR_ARG, "loader: normalisation needs a finite mean and std > 0, got "
                        "mean %g std %g", o->mean, o->std);
    for (int c = 0; c < o->norm_channels; c++)
        if (!(o->channel_std[c] > 0) || !isfinite(o->channel_std[c]) || !isfinite(o->channel_mean[c]))
            return ct_error(CT_ERR_ARG, "loader: channel %d's normalisation needs a finite mean and std > 0, "
                            "got mean %g std %g", c, o->channel_mean[c], o->channel_std[c]);
    if (o->norm_channels && (ds->sample_ndim != 3 || ds->sample_shape[0] != o->norm_channels))
        return ct_error(CT_ERR_ARG, "loader: %d per-channel means and stds for samples that are not "
                        "[%d, H, W]", o->norm_channels, o->norm_channels);
    if (o->norm_channels < 0 || o->norm_channels > CT_MAX_NORM_CHANNELS)
        return ct_error(CT_ERR_ARG, "loader: norm_channels %d outside 0..%d", o->norm_channels,
                        CT_MAX_NORM_CHANNELS);
    if (o->crop_pad < 0)
        return ct_error(CT_ERR_ARG, "loader: crop_pad must be >= 0, got %d", o->crop_pad);
    bool aug = o->crop_pad > 0 || o->hflip;
    if (aug && ds->sample_ndim != 2 && ds->sample_ndim != 3)
        return ct_error(CT_ERR_ARG, "loader: crop/flip augmentation needs [C, H, W] or [H, W] "
                        "samples, the data set's have %d dims", ds->sample_ndim);
    ct_loader *l = ct_malloc(sizeof *l);
    *l = (ct_loader){.ds = ds, .o = *o};
    ct_rng_seed(&l->rng, o->seed);
    l->y = ct_malloc((size_t)o->batch_size * sizeof *l->y);
    l->bidx = ct_malloc((size_t)o->batch_size * sizeof *l->bidx);
    l->jobs = ct_malloc((size_t)o->batch_size * sizeof *l->jobs);
    if (ds->files) l->pix = ct_malloc((size_t)ds->sample_numel);
    int s = ds->sample_ndim;
    l->C = s == 3 ? ds->sample_shape[0] : 1;
    l->H = s >= 2 ? ds->sample_shape[s - 2] : 1;
    l->W = ds->sample_shape[s - 1];
    /* Exactly the float path's arithmetic: the feature p / 255.0f, then (x - mean) / std.
     * Float division is correctly rounded, so the table is bit-identical to it. */
    for (int c = 0; c < CT_MAX_NORM_CHANNELS; c++) {
        l->mean[c] = o->norm_channels ? o->channel_mean[c < o->norm_channels ? c : 0] : o->mean;
        l->std[c] = o->norm_channels ? o->channel_std[c < o->norm_channels ? c : 0] : o->std;
        for (int p = 0; p < 256; p++) l->lut[c][p] = ((float)p / 255.0f - l->mean[c]) / l->std[c];
    }
    *out = l;
    return CT_OK;
}

void ct_loader_start(ct_loader *l, const int64_t *indices, int64_t n) {
    CT_ASSERT(n >= 0, "loader: negative index count %lld", (long long)n);
    for (int64_t i = 0; i < n; i++)
        CT_ASSERT(indices[i] >= 0 && indices[i] < l->ds->n,
                  "loader: index %lld (position %lld) outside the data set's 0..%lld",
                  (long long)indices[i], (long long)i, (long long)l->ds->n - 1);
    l->idx = indices;
    l->n = n;
    l->pos = l->cur = l->skipped = 0;
    l->st = CT_OK;
    if (l->ds->files) l->key = ct_rng_next(&l->rng);
}

ct_status ct_loader_status(const ct_loader *l) {
    return l->st == CT_OK ? CT_OK : ct_error(l->st, "%s", l->msg);
}

int64_t ct_loader_skipped(const ct_loader *l) { return l->skipped; }

int64_t ct_loader_num_batches(const ct_loader *l) {
    return (l->n + l->o.batch_size - 1) / l->o.batch_size;
}

ct_rng *ct_loader_rng(ct_loader *l) { return &l->rng; }

/* Feature k of a sample (float xf or uint8 x8, whichever is non-NULL), normalised. */
static inline float feature(const ct_loader *l, const float *xf, const uint8_t *x8, int c, int64_t k) {
    /* subtract then divide, as torchvision's Normalize, so values match it bit for bit */
    return x8 ? l->lut[c][x8[k]] : (xf[k] - l->mean[c]) / l->std[c];
}

/* The random crop offset and flip of the next sample (none without augmentation). */
static void draw_aug(ct_loader *l, struct job *j) {
    int64_t P = l->o.crop_pad;
    j->dy = P ? (int64_t)ct_rng_below(&l->rng, (uint64_t)(2 * P + 1)) - P : 0;
    j->dx = P ? (int64_t)ct_rng_below(&l->rng, (uint64_t)(2 * P + 1)) - P : 0;
    j->flip = l->o.hflip && ct_rng_below(&l->rng, 2);
}

/* torchvision's RandomCrop(padding=P) then RandomHorizontalFlip() then Normalize: output
 * pixel (i, j) is input pixel (i + dy - P, j' + dx - P) with j' = W-1-j when flipped, or 0
 * (padding) when that falls outside the image; then every pixel is normalised. */
static void augment(const ct_loader *l, const struct job *jb, float *dst) {
    int64_t H = l->H, W = l->W, dy = jb->dy, dx = jb->dx;
    const float *xf = jb->xf;
    const uint8_t *x8 = jb->x8;
    for (int64_t c = 0, off = 0; c < l->C; c++, off += H * W) {
        int nc = c < CT_MAX_NORM_CHANNELS ? (int)c : 0;
        float pad = (0.0f - l->mean[nc]) / l->std[nc]; /* == lut[nc][0], since 0 / 255.0f is 0 */
        for (int64_t i = 0; i < H; i++, dst += W) {
            int64_t si = i + dy;
            if (si < 0 || si >= H) {
                for (int64_t j = 0; j < W; j++) dst[j] = pad;
                continue;
            }
            for (int64_t j = 0; j < W; j++) {
                int64_t sj = (jb->flip ? W - 1 - j : j) + dx;
                dst[j] = sj >= 0 && sj < W ? feature(l, xf, x8, nc, off + si * W + sj) : pad;
            }
        }
    }
}

/* One sample's float features into dst: augmented, or just normalised. */
static void convert(const ct_loader *l, const struct job *jb, bool aug, float *dst) {
    if (aug) {
        augment(l, jb, dst);
        return;
    }
    int64_t plane = l->ds->sample_numel / l->C;
    for (int64_t c = 0; c < l->C; c++) {
        int nc = c < CT_MAX_NORM_CHANNELS ? (int)c : 0;
        const float *lut = l->lut[nc];
        float mean = l->mean[nc], std = l->std[nc];
        float *d = dst + c * plane;
        if (jb->x8)
            for (int64_t j = 0; j < plane; j++) d[j] = lut[jb->x8[c * plane + j]];
        else /* subtract then divide, as torchvision's Normalize */
            for (int64_t j = 0; j < plane; j++) d[j] = (jb->xf[c * plane + j] - mean) / std;
    }
}

/* Sample i's pixels (x8) or features (xf); an image is decoded into l->pix. Returns false
 * for a file skipped under skip_bad; without skip_bad a bad file becomes zeros and the
 * loader's status records the error. */
static bool fetch(ct_loader *l, int64_t i, const float **xf, const uint8_t **x8) {
    const ct_dataset *ds = l->ds;
    int64_t F = ds->sample_numel;
    *xf = ds->x ? ds->x + i * F : NULL;
    *x8 = ds->x8 ? ds->x8 + i * F : l->pix;
    if (!ds->files) return true;
    /* a function of (seed, epoch, rank) through the key, and of the sample: not of the order
     * or the thread that decodes it */
    ct_rng rng;
    ct_rng_seed(&rng, l->key ^ ((uint64_t)i * 0x9e3779b97f4a7c15ULL));
    ct_status st = ct_dataset_load_image(ds, i, &rng, l->pix);
    if (st == CT_OK) return true;
    if (l->o.skip_bad) {
        char msg[600];
        snprintf(msg, sizeof msg, "skipped an undecodable file: %s", ct_last_error());
        if (l->o.log)
            l->o.log(l->o.log_ctx, msg);
        else
            fprintf(stderr, "ctrain: %s\n", msg);
        l->skipped++;
        return false;
    }
    if (l->st == CT_OK) {
        l->st = st;
        snprintf(l->msg, sizeof l->msg, "%s", ct_last_error());
    }
    memset(l->pix, 0, (size_t)F);
    return true;
}

bool ct_loader_next(ct_loader *l, ct_batch *b) {
    if (l->pos >= l->n || (l->cur >= l->n && !l->o.wrap)) return false;
    const ct_dataset *ds = l->ds;
    int64_t B = l->n - l->pos < l->o.batch_size ? l->n - l->pos : l->o.batch_size;
    int64_t shape[CT_MAX_DIMS] = {B}, F = ds->sample_numel;
    memcpy(shape + 1, ds->sample_shape, (size_t)ds->sample_ndim * sizeof *shape);
    ct_tensor *x = ct_tensor_new(ds->sample_ndim + 1, shape);
    bool aug = l->o.crop_pad > 0 || l->o.hflip;
    int64_t k = 0, fails = 0;
    while (k < B) {
        if (l->cur >= l->n && !l->o.wrap) break;
        if (fails >= l->n) { /* wrapping round: every index of the epoch failed */
            l->st = ct_error(CT_ERR_FORMAT, "loader: none of this rank's %lld files could be decoded "
                             "(the last: %s)", (long long)l->n, ct_last_error());
            snprintf(l->msg, sizeof l->msg, "%s", ct_last_error());
            break;
        }
        int64_t i = l->idx[l->cur++ % l->n];
        const float *xf;
        const uint8_t *x8;
        if (!fetch(l, i, &xf, &x8)) {
            fails++;
            continue;
        }
        fails = 0;
        struct job jb = {.xf = xf, .x8 = x8};
        if (aug) draw_aug(l, &jb);
        if (ds->files) /* l->pix holds this sample only until the next fetch */
            convert(l, &jb, aug, x->data + k * F);
        else
            l->jobs[k] = jb;
        l->bidx[k] = i;
        l->y[k++] = ds->y[i];
    }
    if (!ds->files) { /* in-memory samples: converted on the intra-op threads */
        CT_PAR_FOR(k * F)
        for (int64_t q = 0; q < k; q++) convert(l, &l->jobs[q], aug, x->data + q * F);
    }
    l->pos += B;
    if (k == 0 && l->st == CT_OK) return false; /* only skipped files were left */
    if (k < B) { /* the end of an epoch that skipped files: a shorter last batch */
        shape[0] = k;
        ct_tensor *t = ct_tensor_new(ds->sample_ndim + 1, shape);
        memcpy(t->data, x->data, (size_t)(k * F) * sizeof *t->data);
        x = t;
    }
    *b = (ct_batch){.x = x, .y = l->y, .idx = l->bidx, .size = k};
    return true;
}

void ct_loader_free(ct_loader *l) {
    if (!l) return;
    free(l->y);
    free(l->bidx);
    free(l->jobs);
    free(l->pix);
    free(l);
}
