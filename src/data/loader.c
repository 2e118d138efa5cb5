/* The batch loader: gathers the samples named by an index list (a sampler's shard) into a
 * [B, sample shape] tensor, augmenting then normalising each sample (uint8 pixels are
 * converted to float here, through a table of their 256 normalised values). Image data sets
 * are decoded here, sample by sample, so a rank reads only its own files. Its buffers are
 * allocated once, and batch tensors come from the caching allocator, so after the first
 * epoch an in-memory data set makes no malloc calls.
 *
 * Threads (image data sets with opts.workers > 0): worker threads decode and transform the
 * epoch's samples, in position order, into a ring of prefetch * batch_size sample buffers
 * (prefetch batches), so memory is bounded whatever the data set's size; the calling thread
 * takes them out in position order and does everything else exactly as the inline path:
 * bad-file handling and logging, augmentation with the loader's RNG, normalisation, and the
 * batch tensor. A sample's pixels depend only on (epoch key, data set index), never on which
 * thread decoded it or when, so batches are bit-identical for any number of workers.
 *
 * THE RULE FOR WORKER THREADS: they run decode_sample() and nothing else of the library --
 * the image decoders, the transforms and plain malloc/free into loader-owned uint8 buffers.
 * They make no tensors (the allocator and counters would allow it, but a batch tensor is
 * the calling thread's to make and own) and never touch the loader's RNG, which is not
 * thread-safe; the calling thread wraps their pixels into tensors. Errors go through ct_error, whose message
 * buffer is per thread, and are copied into the sample's slot. */
#include "internal.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MSG_SIZE 512

/* One sample buffer of the ring; a worker owns it from claiming position pos until it sets
 * ready, the calling thread from then until it hands it back. */
typedef struct {
    int64_t pos; /* the epoch position it holds */
    bool ready;
    ct_status st;       /* the decode's */
    char msg[MSG_SIZE]; /* its error message */
} slot;

struct ct_loader {
    const ct_dataset *ds;
    ct_loader_opts o;
    ct_rng rng;
    const int64_t *idx; /* the epoch's indices (borrowed; with workers, the loader's copy) */
    int64_t n, pos;     /* how many, and how many batch places were served */
    int64_t cur;        /* the next position to read; ahead of pos by the files skipped */
    int64_t *y, *bidx;  /* batch_size labels and data set indices */
    uint8_t *pix;       /* image data sets without workers: one decoded sample */
    ct_status st;       /* the epoch's first decode error, its message in msg */
    char msg[MSG_SIZE];
    char last_bad[MSG_SIZE]; /* the last skipped file's error */
    int64_t skipped;
    int64_t C, H, W;    /* sample layout for augmentation ([H, W] is C = 1) */
    float mean[CT_MAX_NORM_CHANNELS], std[CT_MAX_NORM_CHANNELS]; /* per channel */
    float lut[CT_MAX_NORM_CHANNELS][256]; /* x8 data sets: pixel p's normalised feature, per channel */
    uint64_t key;       /* image data sets: the epoch's key for per-sample transform RNGs */
    /* Workers (see the top of the file); mu guards everything below and key, idx, n. */
    int nthreads;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t work, done; /* work: a position may be claimed; done: a slot became ready
                                  or a worker went idle */
    bool quit, active;
    int busy;            /* workers decoding right now */
    int64_t claim;       /* the next position a worker takes */
    int64_t freed;       /* positions below it are handed back: at most R are out at once */
    int64_t R;           /* ring slots: prefetch * batch_size */
    int64_t wait_p, wait_q; /* the calling thread sleeps until both positions are ready
                               (wait_q = -1: it is not waiting) */
    slot *slots;
    uint8_t *ring;       /* R * sample_numel bytes */
    int64_t *own_idx, own_cap; /* the callers' buffer may change under the workers (the
                                  sampler rewrites its own for the next epoch) */
};

static bool slot_ready(const ct_loader *l, int64_t p) {
    const slot *s = &l->slots[p % l->R];
    return s->ready && s->pos == p;
}

/* Decodes sample i with its transforms into px. Its random choices are a function of (seed,
 * epoch, rank) through key and of the sample, not of the order or the thread that decodes
 * it. Runs on worker threads: see the rule at the top of the file. */
static ct_status decode_sample(const ct_dataset *ds, uint64_t key, int64_t i, uint8_t *px) {
    ct_rng rng;
    ct_rng_seed(&rng, key ^ ((uint64_t)i * 0x9e3779b97f4a7c15ULL));
    return ct_dataset_load_image(ds, i, &rng, px);
}

static void *worker(void *arg) {
    ct_loader *l = arg;
    int64_t F = l->ds->sample_numel;
    pthread_mutex_lock(&l->mu);
    for (;;) {
        while (!l->quit && !(l->active && l->claim < l->freed + l->R && (l->o.wrap || l->claim < l->n)))
            pthread_cond_wait(&l->work, &l->mu);
        if (l->quit) break;
        int64_t p = l->claim++, i = l->idx[p % l->n];
        uint64_t key = l->key;
        slot *s = &l->slots[p % l->R];
        l->busy++;
        pthread_mutex_unlock(&l->mu);
        ct_status st = decode_sample(l->ds, key, i, l->ring + (p % l->R) * F);
        pthread_mutex_lock(&l->mu);
        l->busy--;
        *s = (slot){.pos = p, .ready = true, .st = st};
        if (st != CT_OK) snprintf(s->msg, sizeof s->msg, "%s", ct_last_error());
        /* Wake the calling thread only when what it waits for is there (or, when an epoch
         * is stopped, it waits for the workers to go idle): a wake-up per sample made one
         * worker slower than none (three context switches a sample). */
        if (!l->active || (l->wait_q >= 0 && slot_ready(l, l->wait_p) && slot_ready(l, l->wait_q)))
            pthread_cond_broadcast(&l->done);
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

/* Stops the workers (after the samples they are decoding) and frees their state. */
static void stop_workers(ct_loader *l) {
    if (!l->threads) return;
    pthread_mutex_lock(&l->mu);
    l->quit = true;
    pthread_cond_broadcast(&l->work);
    pthread_mutex_unlock(&l->mu);
    for (int t = 0; t < l->nthreads; t++) pthread_join(l->threads[t], NULL);
    pthread_cond_destroy(&l->work);
    pthread_cond_destroy(&l->done);
    pthread_mutex_destroy(&l->mu);
    free(l->threads);
    free(l->slots);
    free(l->ring);
    free(l->own_idx);
    l->threads = NULL;
    l->nthreads = 0;
}

static ct_status start_workers(ct_loader *l) {
    int64_t B = l->o.batch_size, F = l->ds->sample_numel;
    l->R = (int64_t)l->o.prefetch * B;
    l->slots = ct_calloc((size_t)l->R, sizeof *l->slots);
    l->ring = ct_malloc((size_t)(l->R * F));
    l->threads = ct_calloc((size_t)l->o.workers, sizeof *l->threads);
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->work, NULL);
    pthread_cond_init(&l->done, NULL);
    l->wait_q = -1;
    for (; l->nthreads < l->o.workers; l->nthreads++) {
        int e = pthread_create(&l->threads[l->nthreads], NULL, worker, l);
        if (e) {
            stop_workers(l);
            return ct_error(CT_ERR_ARG, "loader: cannot start decoding thread %d of %d (data.workers): %s",
                            l->nthreads + 1, l->o.workers, strerror(e));
        }
    }
    return CT_OK;
}

/* The ring slot of position p once a worker has filled it. When it is not there yet, the
 * calling thread sleeps until the rest of the batch (up to last) is there too, rather than
 * waking for each sample: the workers keep decoding into the ring meanwhile. */
static const slot *wait_for(ct_loader *l, int64_t p, int64_t last) {
    pthread_mutex_lock(&l->mu);
    if (!slot_ready(l, p)) {
        /* positions from freed (= p) to freed + R - 1 can be claimed, so q will come */
        int64_t q = last < l->freed + l->R - 1 ? last : l->freed + l->R - 1;
        if (!l->o.wrap && q > l->n - 1) q = l->n - 1;
        l->wait_p = p;
        l->wait_q = q > p ? q : p;
        while (!(slot_ready(l, l->wait_p) && slot_ready(l, l->wait_q))) pthread_cond_wait(&l->done, &l->mu);
        l->wait_q = -1;
    }
    pthread_mutex_unlock(&l->mu);
    return &l->slots[p % l->R];
}

/* Hands position p's slot back to the workers (positions are handed back in order). */
static void hand_back(ct_loader *l, int64_t p) {
    pthread_mutex_lock(&l->mu);
    l->slots[p % l->R].ready = false;
    l->freed = p + 1;
    pthread_cond_signal(&l->work);
    pthread_mutex_unlock(&l->mu);
}

ct_loader_opts ct_loader_opts_default(int64_t batch_size) {
    return (ct_loader_opts){.batch_size = batch_size, .mean = 0, .std = 1, .prefetch = 2};
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
    if (o->workers < 0 || o->workers > 256 || o->prefetch < 0)
        return ct_error(CT_ERR_ARG, "loader: workers must be 0..256 and prefetch >= 0, got workers %d "
                        "prefetch %d", o->workers, o->prefetch);
    if (o->crop_pad < 0)
        return ct_error(CT_ERR_ARG, "loader: crop_pad must be >= 0, got %d", o->crop_pad);
    bool aug = o->crop_pad > 0 || o->hflip;
    if (aug && ds->sample_ndim != 2 && ds->sample_ndim != 3)
        return ct_error(CT_ERR_ARG, "loader: crop/flip augmentation needs [C, H, W] or [H, W] "
                        "samples, the data set's have %d dims", ds->sample_ndim);
    ct_loader *l = ct_malloc(sizeof *l);
    *l = (ct_loader){.ds = ds, .o = *o};
    if (!l->o.prefetch) l->o.prefetch = 2;
    ct_rng_seed(&l->rng, o->seed);
    l->y = ct_malloc((size_t)o->batch_size * sizeof *l->y);
    l->bidx = ct_malloc((size_t)o->batch_size * sizeof *l->bidx);
    if (ds->files && o->workers == 0) l->pix = ct_malloc((size_t)ds->sample_numel);
    int s = ds->sample_ndim;
    l->C = s == 3 ? ds->sample_shape[0] : 1;
    l->H = s >= 2 ? ds->sample_shape[s - 2] : 1;
    l->W = ds->sample_shape[s - 1];
    /* Exactly the float path's arithmetic: the feature p / 255.0f, then (x - mean) / std.
     * Float division is correctly rounded, so the table is bit-identical to it. */
    for (int c = 0; c < CT_MAX_NORM_CHANNELS; c++) {
        l->mean[c] = o->norm_channels ? o->channel_mean[c < o->norm_channels ? c : 0] : o->mean;
        l->std[c] = o->norm_channels ? o->channel_std[c < o->norm_channels ? c : 0] : o->std;
        for (int p = 0; p < 256; p++) /* ct_loader_next's batch loop uses the same expression */
            l->lut[c][p] = ((float)p / 255.0f - l->mean[c]) / l->std[c];
    }
    ct_status st = ds->files && o->workers > 0 ? start_workers(l) : CT_OK;
    if (st != CT_OK) {
        ct_loader_free(l);
        return st;
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
    l->pos = l->cur = l->skipped = 0;
    l->st = CT_OK;
    if (!l->nthreads) {
        l->idx = indices;
        l->n = n;
        if (l->ds->files) l->key = ct_rng_next(&l->rng);
        return;
    }
    /* The last epoch's workers may be mid-sample (the caller need not drain an epoch): wait
     * for them to go idle before the ring and the indices change under them. */
    pthread_mutex_lock(&l->mu);
    l->active = false;
    while (l->busy) pthread_cond_wait(&l->done, &l->mu);
    if (n > l->own_cap) {
        free(l->own_idx);
        l->own_idx = ct_malloc((size_t)n * sizeof *l->own_idx);
        l->own_cap = n;
    }
    if (n) memcpy(l->own_idx, indices, (size_t)n * sizeof *indices);
    l->idx = l->own_idx;
    l->n = n;
    l->key = ct_rng_next(&l->rng);
    l->claim = l->freed = 0;
    l->wait_q = -1;
    for (int64_t k = 0; k < l->R; k++) l->slots[k].ready = false;
    l->active = n > 0;
    pthread_cond_broadcast(&l->work);
    pthread_mutex_unlock(&l->mu);
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

/* torchvision's RandomCrop(padding=P) then RandomHorizontalFlip() then Normalize: output
 * pixel (i, j) is input pixel (i + dy - P, j' + dx - P) with j' = W-1-j when flipped, or 0
 * (padding) when that falls outside the image; then every pixel is normalised. */
static void augment(ct_loader *l, const float *xf, const uint8_t *x8, float *dst) {
    int64_t P = l->o.crop_pad, H = l->H, W = l->W;
    int64_t dy = P ? (int64_t)ct_rng_below(&l->rng, (uint64_t)(2 * P + 1)) - P : 0;
    int64_t dx = P ? (int64_t)ct_rng_below(&l->rng, (uint64_t)(2 * P + 1)) - P : 0;
    bool flip = l->o.hflip && ct_rng_below(&l->rng, 2);
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
                int64_t sj = (flip ? W - 1 - j : j) + dx;
                dst[j] = sj >= 0 && sj < W ? feature(l, xf, x8, nc, off + si * W + sj) : pad;
            }
        }
    }
}

/* Sample i's pixels (x8) or features (xf), at epoch position p; an image is decoded into
 * l->pix, or comes from the workers' ring (then the caller hands position p back after
 * use). Returns false for a file skipped under skip_bad; without skip_bad a bad file
 * becomes zeros and the loader's status records the error. */
static bool fetch(ct_loader *l, int64_t p, int64_t last, int64_t i, const float **xf, const uint8_t **x8) {
    const ct_dataset *ds = l->ds;
    int64_t F = ds->sample_numel;
    *xf = ds->x ? ds->x + i * F : NULL;
    *x8 = ds->x8 ? ds->x8 + i * F : l->pix;
    if (!ds->files) return true;
    ct_status st;
    const char *err;
    if (l->nthreads) {
        const slot *s = wait_for(l, p, last);
        *x8 = l->ring + (p % l->R) * F;
        st = s->st;
        err = s->msg;
    } else {
        st = decode_sample(ds, l->key, i, l->pix);
        err = ct_last_error();
    }
    if (st == CT_OK) return true;
    if (l->o.skip_bad) {
        snprintf(l->last_bad, sizeof l->last_bad, "%s", err);
        char msg[MSG_SIZE + 40];
        snprintf(msg, sizeof msg, "skipped an undecodable file: %s", err);
        if (l->o.log)
            l->o.log(l->o.log_ctx, msg);
        else
            fprintf(stderr, "ctrain: %s\n", msg);
        l->skipped++;
        return false;
    }
    if (l->st == CT_OK) {
        l->st = st;
        snprintf(l->msg, sizeof l->msg, "%s", err);
    }
    memset((uint8_t *)*x8, 0, (size_t)F); /* l->pix or the sample's slot: ours until handed back */
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
                             "(the last: %s)", (long long)l->n, l->last_bad);
            snprintf(l->msg, sizeof l->msg, "%s", ct_last_error());
            break;
        }
        int64_t p = l->cur++, i = l->idx[p % l->n];
        const float *xf;
        const uint8_t *x8;
        bool got = fetch(l, p, p + B - 1 - k, i, &xf, &x8);
        if (!got) {
            if (l->nthreads) hand_back(l, p);
            fails++;
            continue;
        }
        fails = 0;
        float *dst = x->data + k * F;
        if (aug) {
            augment(l, xf, x8, dst);
        } else {
            int64_t plane = F / l->C;
            for (int64_t c = 0; c < l->C; c++) {
                int nc = c < CT_MAX_NORM_CHANNELS ? (int)c : 0;
                float mean = l->mean[nc], std = l->std[nc];
                float *restrict d = dst + c * plane;
                if (x8) { /* the lut's own expression, so the same bits, but a loop that
                           * vectorises: the lookup ran one byte at a time, 6.6% of the
                           * MLP's training step */
                    const uint8_t *restrict s8 = x8 + c * plane;
                    for (int64_t j = 0; j < plane; j++) d[j] = ((float)s8[j] / 255.0f - mean) / std;
                } else { /* subtract then divide, as torchvision's Normalize */
                    const float *restrict sf = xf + c * plane;
                    for (int64_t j = 0; j < plane; j++) d[j] = (sf[j] - mean) / std;
                }
            }
        }
        if (l->nthreads) hand_back(l, p);
        l->bidx[k] = i;
        l->y[k++] = ds->y[i];
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
    stop_workers(l);
    free(l->y);
    free(l->bidx);
    free(l->pix);
    free(l);
}
