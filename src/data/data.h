/* ctrain data: IDX (MNIST family) and NPY readers, an in-memory data set, a batch loader
 * with normalisation and augmentation, and the distributed sampler. Only core is used.
 * Every function that reads a file returns a ct_status whose ct_last_error() message names
 * the file and says what is wrong; misuse of an in-memory object aborts via ct_fatal. */
#ifndef CT_DATA_H
#define CT_DATA_H

#include "../core/core.h"

/* ---- raw arrays (what the file readers return) --------------------------------------- */

/* A dense C-order array. Readers fill it with malloc'd data that ct_array_free releases;
 * the NPY writer only reads it, so it may also describe memory the caller owns. */
typedef struct {
    ct_dtype dtype;
    int ndim;
    int64_t shape[CT_MAX_DIMS];
    int64_t numel;
    void *data;
} ct_array;

/* Frees a reader's data and zeroes *a (safe on a zeroed or already freed array). */
void ct_array_free(ct_array *a);

/* ---- IDX (MNIST family) ----------------------------------------------------------------- */

/* Reads an unsigned-byte IDX file with `ndim` dims (1 = labels, 3 = images) into *out as a
 * CT_DTYPE_U8 array; plain or gzip, detected from the content. Errors: CT_ERR_IO (missing or
 * unreadable), CT_ERR_FORMAT (wrong magic with expected vs got, truncated header or data
 * with expected vs got bytes, trailing bytes, zero or oversized dims). *out is untouched on
 * error. */
ct_status ct_idx_read(const char *path, int ndim, ct_array *out);

/* ---- NPY -------------------------------------------------------------------------------- */

/* Reads a .npy file (format 1.0 or 2.0; plain or gzip) with dtype '<f4', '|u1' or '<i8'
 * and C order into *out. CT_ERR_IO if missing/unreadable; CT_ERR_FORMAT for a bad magic,
 * version, header dict, dtype, fortran_order True, or truncated/trailing data. */
ct_status ct_npy_read(const char *path, ct_array *out);
/* Writes a as .npy (format 1.0, header padded so the data is 64-byte aligned, as numpy
 * does); any ct_dtype. CT_ERR_IO naming the file if it cannot be written. */
ct_status ct_npy_write(const char *path, const ct_array *a);

/* ---- images ---------------------------------------------------------------------------------- */

/* An 8-bit image, h rows of w pixels of c interleaved channels (HWC, as PIL's tobytes()). */
typedef struct {
    int64_t h, w;
    int c;       /* 1 (L) or 3 (RGB) */
    uint8_t *px; /* malloc'd, h * w * c bytes */
} ct_image;

/* Decodes a JPEG (libjpeg-turbo) or PNG (libspng) file, recognised by its first bytes, into
 * channels = 1 or 3 channels with the values of PIL's Image.open(path).convert("L") or
 * .convert("RGB"): gray -> RGB replicates, RGB -> gray is PIL's ITU-R 601 luma, alpha is
 * dropped, palettes are expanded, 1/2/4-bit gray is scaled to 0..255. CT_ERR_IO if the file
 * cannot be read; CT_ERR_FORMAT naming the file for anything else (not JPEG/PNG, corrupt or
 * truncated data, 16-bit PNG, CMYK JPEG). *out is untouched on error. */
ct_status ct_image_read(const char *path, int channels, ct_image *out);
/* The same from n bytes in memory; name is used in messages. */
ct_status ct_image_decode(const void *buf, size_t n, const char *name, int channels, ct_image *out);
/* Chooses the part of an h x w image to decode: box = {top, left, h, w}, inside the image
 * (it comes in as the whole image). */
typedef void (*ct_image_box_fn)(void *ctx, int64_t h, int64_t w, int64_t box[4]);
/* ct_image_read's pixels of the box choose(ctx, h, w, box) picks once the header is read:
 * a JPEG decodes little more than the box (the rows above it and the rest of each row go
 * through the entropy decoder only), a PNG decodes whole then is cropped. The same
 * pixels as cropping ct_image_read's, and the same errors. */
ct_status ct_image_read_box(const char *path, int channels, ct_image_box_fn choose, void *ctx, ct_image *out);
/* An image file's height and width from its header, without decoding the pixels. */
ct_status ct_image_info(const char *path, int64_t *h, int64_t *w);
void ct_image_free(ct_image *im);

/* ---- image transforms (torchvision's, on uint8 images) ------------------------------------------- */

/* The pixels torchvision 0.14 gives on PIL images, exactly:
 *  - resize:N                  Resize(N): the shorter side becomes N, the longer int(N * long /
 *                              short); PIL's bilinear resampling, which antialiases when shrinking
 *  - center_crop:N             CenterCrop(N) (zero padding where N exceeds the image)
 *  - random_resized_crop:N     RandomResizedCrop(N): scale 0.08-1, ratio 3/4-4/3, torchvision's
 *                              10 tries then a central fallback; the crop resized as resize does
 *  - random_horizontal_flip    RandomHorizontalFlip(0.5)
 * Random choices come from the rng the caller passes (the loader seeds one per sample). */
typedef enum { CT_TF_RESIZE, CT_TF_CENTER_CROP, CT_TF_RANDOM_RESIZED_CROP, CT_TF_HFLIP } ct_transform_kind;
typedef struct {
    ct_transform_kind kind;
    int64_t size;                 /* pixels (resize: the shorter side) */
    double scale[2], ratio[2];    /* random_resized_crop: (0.08, 1), (3/4, 4/3) */
} ct_transform;
#define CT_MAX_TRANSFORMS 8
typedef struct {
    int n;
    ct_transform t[CT_MAX_TRANSFORMS];
} ct_transforms;

/* Parses "resize:256,center_crop:224" (empty: none). CT_ERR_ARG naming the spec and the
 * bad part otherwise. */
ct_status ct_transforms_parse(const char *spec, ct_transforms *out);
/* The output size for an h x w input. */
void ct_transforms_out_size(const ct_transforms *t, int64_t h, int64_t w, int64_t *oh, int64_t *ow);
/* True when the output size is the same for every input (the last sizing step is a crop). */
bool ct_transforms_fixed_size(const ct_transforms *t);
/* Applies t to *im in place (its pixels may be replaced). */
void ct_transforms_apply(const ct_transforms *t, ct_image *im, ct_rng *rng);
/* ct_image_read then ct_transforms_apply, with the same pixels and random draws, but when t
 * starts with random_resized_crop only the crop is decoded (ct_image_read_box). */
ct_status ct_transforms_read(const ct_transforms *t, const char *path, int channels, ct_rng *rng,
                             ct_image *out);
/* PIL's Image.resize((w, h), BILINEAR) into a new *out. */
void ct_image_resize(const ct_image *in, int64_t h, int64_t w, ct_image *out);
/* PIL's crop((left, top, left + w, top + h)) into a new *out: zeros outside the image. */
void ct_image_crop(const ct_image *in, int64_t top, int64_t left, int64_t h, int64_t w, ct_image *out);
void ct_image_hflip(ct_image *im);
/* RandomResizedCrop.get_params on an H x W image: out = {top, left, h, w}. */
void ct_rrc_params(int64_t H, int64_t W, const double scale[2], const double ratio[2], ct_rng *rng,
                   int64_t out[4]);

/* ---- data set ------------------------------------------------------------------------------ */

typedef enum { CT_SPLIT_TRAIN, CT_SPLIT_TEST } ct_split;

/* The files of a folder or list data set (see ct_dataset_from_folder); internal. */
typedef struct ct_image_files ct_image_files;

/* n samples with int64 labels in 0..num_classes-1. The features are stored one of two
 * ways, and exactly one of x and x8 is non-NULL (both are NULL only in a zeroed data set):
 *  - x: float32, sample i at x + i * sample_numel (NPY float32 files, ct_dataset_from_data,
 *    feature caches);
 *  - x8: uint8 pixels, sample i at x8 + i * sample_numel, where pixel p stands for the
 *    feature p / 255.0f, as torchvision's ToTensor (IDX images, NPY uint8 files,
 *    ct_dataset_from_pixels). A quarter of the memory of float32: the loader converts each
 *    batch, giving bit for bit the floats a data set storing p / 255.0f would give.
 *  - files: image files (folder and list data sets), decoded by the loader batch by batch,
 *    so a rank reads only the files of its shard; pixels stand for p / 255 as in x8.
 * x/x8/files and y are malloc'd and owned by the data set. Read features outside the data
 * layer with ct_dataset_sample, which handles all three. */
typedef struct {
    int64_t n;
    int sample_ndim; /* 1..CT_MAX_DIMS-1, so a batch [B, sample shape] fits in a tensor */
    int64_t sample_shape[CT_MAX_DIMS - 1];
    int64_t sample_numel;
    float *x;        /* float32 features, or NULL when x8 holds them */
    uint8_t *x8;     /* uint8 pixels (feature = p / 255.0f), or NULL when x holds them */
    ct_image_files *files; /* image files decoded on demand, or NULL (then x or x8 is set) */
    int64_t *y;
    int num_classes; /* max label + 1 when loaded; keep_classes(remap) sets k */
} ct_dataset;

/* The MNIST-format data set that ships with the system (Fashion-MNIST). */
#define CT_FASHION_MNIST_DIR "/usr/share/datasets/fashion-mnist"

/* Loads {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] from dir: images become
 * [1, rows, cols] samples kept as uint8 pixels (x8; features p / 255 in [0, 1]). CT_ERR_IO names the missing file; CT_ERR_SHAPE
 * names both files and counts when they differ; otherwise as ct_idx_read. */
ct_status ct_dataset_from_idx(ct_dataset *ds, const char *dir, ct_split split);
/* Loads features x (float32 into x, or uint8 pixels into x8, standing for p / 255 in
 * [0, 1]; shape [n, ...], 2..CT_MAX_DIMS dims) and labels y (int64 or uint8, shape [n], non-negative) from two .npy files.
 * CT_ERR_SHAPE names both files when the counts differ or a dtype/shape is not allowed. */
ct_status ct_dataset_from_npy(ct_dataset *ds, const char *x_path, const char *y_path);
/* A data set holding copies of x (n * numel(sample_shape) floats) and y (n labels >= 0). */
ct_status ct_dataset_from_data(ct_dataset *ds, int64_t n, int sample_ndim,
                               const int64_t *sample_shape, const float *x, const int64_t *y);
/* The same with uint8 pixels x8 (n * numel(sample_shape) bytes, feature p / 255) kept in x8. */
ct_status ct_dataset_from_pixels(ct_dataset *ds, int64_t n, int sample_ndim,
                                 const int64_t *sample_shape, const uint8_t *x8, const int64_t *y);
/* Writes sample i's sample_numel features as float32 to out (x8 pixels as p / 255.0f, the
 * values the loader starts from). Aborts if i is outside 0..n-1. */
void ct_dataset_sample(const ct_dataset *ds, int64_t i, float *out);
/* Changes the per-sample shape (e.g. [1,28,28] <-> [784]); CT_ERR_ARG if numel differs. */
ct_status ct_dataset_reshape(ct_dataset *ds, int sample_ndim, const int64_t *sample_shape);
/* Keeps, in order, only samples whose label is one of classes[0..k); with remap, label
 * classes[i] becomes i and num_classes becomes k. CT_ERR_ARG for a class outside
 * 0..num_classes-1 or listed twice. */
ct_status ct_dataset_keep_classes(ct_dataset *ds, const int64_t *classes, int k, bool remap);
/* Keeps the first k samples of each class (all of them if a class has fewer), in order.
 * CT_ERR_ARG if k < 1. */
ct_status ct_dataset_few_shot(ct_dataset *ds, int64_t k);
/* Applies the deterministic transforms t (resize, center_crop) to every sample of a uint8
 * data set in memory ([C, H, W] with C = 1 or 3, or [H, W]), once, in place: the samples
 * take the output shape, with the pixels a folder data set would give. So IDX and NPY
 * images take data.*_transforms too (Fashion-MNIST resized for a backbone's stem). CT_ERR_ARG
 * for a random transform (the loader's augmentation does crops and flips of in-memory
 * images), float32 features or image files. */
ct_status ct_dataset_transform_pixels(ct_dataset *ds, const ct_transforms *t);
/* Frees x, x8 or files and y and zeroes *ds. */
void ct_dataset_free(ct_dataset *ds);

/* ---- image data sets: folder and list ---------------------------------------------------------- */

/* Class names; label k is names[k]. */
typedef struct {
    int n;
    char **names;  /* malloc'd */
    bool numeric;  /* from a list whose labels are all integers: names are "0".."n-1" */
} ct_classes;

/* The classes of an ImageFolder tree: root's subfolders, hidden ones (".x") skipped, in
 * sorted (byte) order as torchvision numbers them. CT_ERR_IO naming root if it cannot be
 * read; CT_ERR_FORMAT if it has no class folder. */
ct_status ct_classes_from_folder(const char *root, ct_classes *out);
/* The classes of a list file (see ct_dataset_from_list): "0".."max" when every label is a
 * non-negative integer, else the distinct labels in sorted order. */
ct_status ct_classes_from_list(const char *csv, ct_classes *out);
void ct_classes_free(ct_classes *c);

/* An ImageFolder data set: every .jpg/.jpeg/.png file (any case; hidden files and folders
 * skipped) under root/<class>/, recursively, in torchvision's order (classes in order,
 * folders sorted by path, files by name), label = the class's index in classes. classes is
 * NULL to take root's own (ct_classes_from_folder), or another split's list, which must
 * hold every class folder of root. Samples are [channels, H, W] uint8 images, decoded by
 * the loader; H and W come from the first file's header and every image must have them.
 * Opens no image but the first. Errors name the folder: missing root (CT_ERR_IO), a class
 * folder with no image file, or one that is not in classes (CT_ERR_FORMAT). */
ct_status ct_dataset_from_folder(ct_dataset *ds, const char *root, const ct_classes *classes,
                                 int channels);
/* A list data set: a CSV file of "path,label" lines (an optional "path,label" header; the
 * path may hold commas, the label may not), paths relative to the CSV's folder unless
 * absolute. classes as for from_folder (NULL: ct_classes_from_list of this file). A label
 * not in classes, a line without a comma or an empty list is CT_ERR_FORMAT naming the file
 * and line. */
ct_status ct_dataset_from_list(ct_dataset *ds, const char *csv, const ct_classes *classes,
                               int channels);
/* An image data set's class names (kept in step with keep_classes), or NULL. */
const ct_classes *ct_dataset_classes(const ct_dataset *ds);
/* The file behind sample i of an image data set, or NULL for an in-memory one. */
const char *ct_dataset_path(const ct_dataset *ds, int64_t i);
/* Decodes sample i of an image data set, applies its transforms (random ones draw from
 * rng, which may be NULL when none is random) and writes it to out (sample_numel bytes,
 * [C, H, W]). Errors name the file: as ct_image_read, or CT_ERR_SHAPE when its size is not
 * the data set's. */
ct_status ct_dataset_load_image(const ct_dataset *ds, int64_t i, ct_rng *rng, uint8_t *out);
/* Gives an image data set the transforms t (copied), applied to every sample as it is
 * decoded, and the sample shape they produce (from the first file's size when the last
 * sizing step is a resize: every image must then produce that size). Call it before making
 * a loader over the data set: the loader sizes its buffers from the sample shape. */
void ct_dataset_set_transforms(ct_dataset *ds, const ct_transforms *t);

/* ---- loader -------------------------------------------------------------------------------- */

/* Augmentation (training only, in feature space (x, or x8 as p / 255) before normalising, as torchvision's
 * RandomCrop(size, padding=crop_pad) then RandomHorizontalFlip() then Normalize): samples
 * must be [C, H, W] or [H, W]. Per sample the RNG draws dy, dx in 0..2*crop_pad (when
 * crop_pad > 0) then a flip bit (when hflip), so a seed fixes every batch. */
#define CT_MAX_NORM_CHANNELS 4
typedef struct {
    int64_t batch_size; /* > 0 */
    float mean, std;    /* every feature becomes (x - mean) / std; std > 0 */
    int crop_pad;       /* > 0: random crop of the original size from the zero-padded sample */
    bool hflip;         /* mirror the last dim with probability 1/2 */
    uint64_t seed;      /* seeds the augmentation RNG */
    /* Image data sets: a file that cannot be decoded is, with skip_bad false (the default),
     * an error that ct_loader_status reports (the batch still comes out full, the bad
     * sample as zeros, so ranks can agree on the error before anyone stops). With skip_bad
     * it is logged through log (stderr when NULL), counted (ct_loader_skipped), and its
     * place goes to the next index of the epoch: batches stay full and the epoch's batch
     * count is unchanged; at the end of the indices, wrap goes on from the start of them
     * (training: every rank keeps its step count), otherwise the epoch's last batches
     * come out shorter (evaluation: each sample at most once). */
    bool skip_bad;
    bool wrap;
    void (*log)(void *ctx, const char *msg);
    void *log_ctx;
    /* Per-channel normalisation of [C, H, W] samples (torchvision's Normalize(mean, std)):
     * with norm_channels = C > 0, channel c becomes (x - channel_mean[c]) / channel_std[c]
     * and mean/std are unused. */
    int norm_channels;
    float channel_mean[CT_MAX_NORM_CHANNELS], channel_std[CT_MAX_NORM_CHANNELS];
    /* Image data sets: workers > 0 threads (at most 256) decode and transform samples ahead
     * of the caller into a ring of prefetch (0 means 2) batches of uint8 samples, so memory
     * is bounded by prefetch * batch_size samples whatever the data set's size; 0 decodes
     * inline in ct_loader_next. Batches are bit-identical for every value of both, and
     * everything but decoding (bad files, logging, augmentation, normalisation, tensors)
     * stays on the calling thread. Ignored for in-memory data sets. */
    int workers, prefetch;
} ct_loader_opts;

/* mean 0, std 1, no augmentation, seed 0, no workers, prefetch 2. */
ct_loader_opts ct_loader_opts_default(int64_t batch_size);

typedef struct ct_loader ct_loader;

/* One batch. x belongs to the release scope open when ct_loader_next is called, so open
 * the step's scope first: for (i < ct_loader_num_batches(l)) CT_SCOPE { ct_loader_next(l,
 * &b); ... }. y and idx point into loader buffers valid until the next next/start call. */
typedef struct {
    ct_tensor *x;       /* [size, sample shape], normalised (and augmented) */
    const int64_t *y;   /* size labels */
    const int64_t *idx; /* the data set indices of this batch, in order */
    int64_t size;       /* batch_size, or less for the last batch of an epoch */
} ct_batch;

/* A loader over ds (borrowed; it must outlive the loader). Buffers are allocated here so
 * that later epochs make no malloc calls. CT_ERR_ARG for bad options (batch_size < 1,
 * std <= 0, crop_pad < 0, augmentation on samples that are not [C,H,W] or [H,W]). */
ct_status ct_loader_new(ct_loader **out, const ct_dataset *ds, const ct_loader_opts *opts);
/* Starts an epoch over indices[0..n) (borrowed until the epoch ends, or copied when there
 * are workers; e.g. a sampler's shard). The previous epoch need not have been read to its
 * end. Aborts on an index outside 0..ds->n-1. */
void ct_loader_start(ct_loader *l, const int64_t *indices, int64_t n);
/* Fills *b with the next batch and returns true, or returns false at the end of the epoch.
 * The last batch may be partial; dropping it is the caller's choice. */
bool ct_loader_next(ct_loader *l, ct_batch *b);
/* CT_OK, or the first decode error of the epoch (then ct_last_error() names the file). */
ct_status ct_loader_status(const ct_loader *l);
/* Files skipped (skip_bad) since ct_loader_start. */
int64_t ct_loader_skipped(const ct_loader *l);
/* Batches in the current epoch: ceil(n / batch_size). */
int64_t ct_loader_num_batches(const ct_loader *l);
/* The augmentation RNG (to save or restore its state with a checkpoint). */
ct_rng *ct_loader_rng(ct_loader *l);
/* Stops the workers (waiting for the samples they are decoding; safe mid-epoch) and frees
 * everything. */
void ct_loader_free(ct_loader *l);

/* ---- distributed sampler ------------------------------------------------------------------- */

typedef enum {
    CT_SHARD_DROP,  /* training: floor(n/W) each; the permutation's tail is dropped */
    CT_SHARD_PAD,   /* training: ceil(n/W) each; padded by wrapping to the permutation's start */
    CT_SHARD_EXACT, /* evaluation: no shuffle; rank r gets a contiguous range, sizes differ by
                       at most 1, and the ranks together cover 0..n-1 exactly once */
} ct_shard_mode;

typedef struct {
    int64_t n;          /* data set size */
    int world, rank;    /* 0 <= rank < world */
    ct_shard_mode mode;
    bool shuffle;       /* DROP/PAD: permute each epoch (else identity); must be false for EXACT */
    uint64_t seed;
} ct_sampler_opts;

typedef struct ct_sampler ct_sampler;

/* The epoch permutation of 0..n-1 into out: Fisher-Yates with ct_rng_below from an RNG
 * seeded with seed * 1000003 + epoch, so every rank computes the same one. */
void ct_permutation(int64_t n, uint64_t seed, uint64_t epoch, int64_t *out);
/* How many indices rank gets per epoch under mode. */
int64_t ct_shard_size(int64_t n, int world, int rank, ct_shard_mode mode);

/* A sampler for one rank. Training modes deal the epoch's (padded or truncated)
 * permutation out like PyTorch's DistributedSampler: rank r takes positions r, r+W, ...
 * CT_ERR_ARG for n < 0, world < 1, rank outside 0..world-1, or shuffle with EXACT. */
ct_status ct_sampler_new(ct_sampler **out, const ct_sampler_opts *opts);
/* This rank's indices for epoch (ct_sampler_size of them), in a sampler buffer valid until
 * the next call or ct_sampler_free. Makes no allocation. */
const int64_t *ct_sampler_epoch(ct_sampler *s, uint64_t epoch);
/* Indices this rank gets per epoch. */
int64_t ct_sampler_size(const ct_sampler *s);
/* Batches of batch_size the LARGEST shard needs, so that every rank can make the same
 * number of collective calls (ranks with fewer batches join with empty contributions). */
int64_t ct_sampler_max_batches(const ct_sampler *s, int64_t batch_size);
void ct_sampler_free(ct_sampler *s);

#endif
