/* The data layer: IDX and NPY readers (real Fashion-MNIST and broken files), the data set
 * helpers on float and uint8 storage, the batch loader (coverage, normalisation,
 * augmentation, uint8 batches bit-identical to float ones, no steady-state mallocs) and the
 * distributed sampler. */
#include <dirent.h>
#include <malloc.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "data/data.h"
#include "util.h"

/* ---- helpers ------------------------------------------------------------------------------ */

static char tmpdir[64];

static void tmp_setup(void) {
    strcpy(tmpdir, "/tmp/ct_data_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void tmp_teardown(void) {
    DIR *d = opendir(tmpdir);
    if (!d) return;
    struct dirent *e;
    char p[512];
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        snprintf(p, sizeof p, "%s/%s", tmpdir, e->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(tmpdir);
}

static const char *tmp_path(const char *name) {
    static char p[8][512];
    static int k;
    k = (k + 1) % 8;
    snprintf(p[k], sizeof p[k], "%s/%s", tmpdir, name);
    return p[k];
}

/* Writes n bytes to tmpdir/name, gzip-compressed when gz. */
static void write_bytes(const char *name, const void *buf, size_t n, bool gz) {
    const char *path = tmp_path(name);
    if (gz) {
        gzFile f = gzopen(path, "wb");
        ck_assert_ptr_nonnull(f);
        if (n) ck_assert_int_eq(gzwrite(f, buf, (unsigned)n), (int)n);
        ck_assert_int_eq(gzclose(f), Z_OK);
    } else {
        FILE *f = fopen(path, "wb");
        ck_assert_ptr_nonnull(f);
        ck_assert_uint_eq(fwrite(buf, 1, n, f), n);
        ck_assert_int_eq(fclose(f), 0);
    }
}

static size_t put_be32(unsigned char *p, uint32_t v) {
    p[0] = v >> 24, p[1] = v >> 16, p[2] = v >> 8, p[3] = v;
    return 4;
}

/* An IDX file: magic, dims, then `ndata` data bytes (pixel k has value (k * 7) % 256). */
static void write_idx(const char *name, uint32_t magic, int ndim, const uint32_t *dims,
                      size_t ndata, bool gz) {
    unsigned char *buf = malloc(4 + 4 * ndim + ndata);
    size_t o = put_be32(buf, magic);
    for (int i = 0; i < ndim; i++) o += put_be32(buf + o, dims[i]);
    for (size_t k = 0; k < ndata; k++) buf[o + k] = (unsigned char)(k * 7 % 256);
    write_bytes(name, buf, o + ndata, gz);
    free(buf);
}

/* A well-formed split of n 4x5 images and m labels (label k = k % 3) in tmpdir. */
static void write_split(const char *split, uint32_t n, uint32_t m, bool gz) {
    char name[64];
    const char *ext = gz ? ".gz" : "";
    snprintf(name, sizeof name, "%s-images-idx3-ubyte%s", split, ext);
    write_idx(name, 0x803, 3, (uint32_t[]){n, 4, 5}, n * 20, gz);
    snprintf(name, sizeof name, "%s-labels-idx1-ubyte%s", split, ext);
    unsigned char buf[8 + 256];
    put_be32(buf, 0x801);
    put_be32(buf + 4, m);
    for (uint32_t k = 0; k < m; k++) buf[8 + k] = k % 3;
    write_bytes(name, buf, 8 + m, gz);
}

/* Asserts that the call returned `want` and that its message contains every given string. */
#define EXPECT_ERROR(call, want, ...)                                                     \
    ct_test_expect_error((call), (want), __VA_ARGS__, (const char *)NULL)

/* ---- IDX ---------------------------------------------------------------------------------- */

START_TEST(fashion_mnist_loads) {
    /* reference values from numpy over the same gzip files:
     * y[:10], np.bincount(y), x[0].sum() and x[0, 10, 13:16] */
    typedef struct {
        ct_split split;
        int64_t n, first_sum;
        int64_t y10[10];
        int row10[3];
    } fmnist_ref;
    static const fmnist_ref ref[] = {
        {CT_SPLIT_TRAIN, 60000, 76247, {9, 0, 0, 3, 0, 2, 7, 2, 5, 5}, {193, 228, 218}},
        {CT_SPLIT_TEST, 10000, 33456, {9, 2, 1, 1, 6, 1, 4, 6, 5, 7}, {4, 0, 53}}};
    const fmnist_ref *r = &ref[_i];
    ct_dataset ds;
    ct_status st = ct_dataset_from_idx(&ds, CT_FASHION_MNIST_DIR, r->split);
    ck_assert_msg(st == CT_OK, "%s", ct_last_error());
    ck_assert_int_eq(ds.n, r->n);
    ck_assert_int_eq(ds.sample_ndim, 3);
    ck_assert_int_eq(ds.sample_shape[0], 1);
    ck_assert_int_eq(ds.sample_shape[1], 28);
    ck_assert_int_eq(ds.sample_shape[2], 28);
    ck_assert_int_eq(ds.sample_numel, 784);
    ck_assert_int_eq(ds.num_classes, 10);
    int64_t count[10] = {0};
    for (int64_t i = 0; i < ds.n; i++) {
        ck_assert(ds.y[i] >= 0 && ds.y[i] <= 9);
        count[ds.y[i]]++;
    }
    for (int c = 0; c < 10; c++) ck_assert_int_eq(count[c], ds.n / 10);
    for (int i = 0; i < 10; i++) ck_assert_int_eq(ds.y[i], r->y10[i]);
    /* the pixels stay uint8: one byte per feature, not four */
    ck_assert_ptr_null(ds.x);
    ck_assert_ptr_nonnull(ds.x8);
    size_t bytes = (size_t)(ds.n * 784);
    ck_assert_uint_ge(malloc_usable_size(ds.x8), bytes);
    ck_assert_uint_lt(malloc_usable_size(ds.x8), bytes + 4096);
    int lo = 255, hi = 0;
    for (int64_t k = 0; k < ds.n * 784; k++) {
        if (ds.x8[k] < lo) lo = ds.x8[k];
        if (ds.x8[k] > hi) hi = ds.x8[k];
    }
    ck_assert_int_eq(lo, 0);
    ck_assert_int_eq(hi, 255);
    int64_t s = 0;
    for (int k = 0; k < 784; k++) s += ds.x8[k];
    ck_assert_int_eq(s, r->first_sum);
    for (int j = 0; j < 3; j++) ck_assert_int_eq(ds.x8[10 * 28 + 13 + j], r->row10[j]);
    /* read as floats: p / 255, so 0 and 1 at the extremes */
    float f[784];
    ct_dataset_sample(&ds, 0, f);
    for (int j = 0; j < 3; j++) ck_assert_float_eq(f[10 * 28 + 13 + j], r->row10[j] / 255.0f);
    double fs = 0;
    for (int k = 0; k < 784; k++) fs += f[k] * 255.0;
    ck_assert_close(fs, (double)r->first_sum, 1e-6);
    ct_dataset_free(&ds);
    ck_assert_ptr_null(ds.x);
    ck_assert_ptr_null(ds.x8);
}
END_TEST

/* _i: 0 plain files, 1 gzip files */
START_TEST(idx_small_split_values) {
    bool gz = _i;
    write_split("t10k", 6, 6, gz);
    ct_dataset ds;
    ct_status st = ct_dataset_from_idx(&ds, tmpdir, CT_SPLIT_TEST);
    ck_assert_msg(st == CT_OK, "%s", ct_last_error());
    ck_assert_int_eq(ds.n, 6);
    ck_assert_int_eq(ds.sample_shape[1], 4);
    ck_assert_int_eq(ds.sample_shape[2], 5);
    ck_assert_int_eq(ds.num_classes, 3);
    ck_assert_ptr_null(ds.x);
    for (int k = 0; k < 6 * 20; k++) ck_assert_int_eq(ds.x8[k], k * 7 % 256);
    float f[20];
    ct_dataset_sample(&ds, 5, f);
    for (int k = 0; k < 20; k++) ck_assert_float_eq(f[k], (float)((100 + k) * 7 % 256) / 255.0f);
    for (int k = 0; k < 6; k++) ck_assert_int_eq(ds.y[k], k % 3);
    ct_dataset_free(&ds);
    /* the train split is not there */
    EXPECT_ERROR(ct_dataset_from_idx(&ds, tmpdir, CT_SPLIT_TRAIN), CT_ERR_IO,
                 "train-images-idx3-ubyte", "missing");
}
END_TEST

START_TEST(idx_missing_files) {
    ct_dataset ds;
    EXPECT_ERROR(ct_dataset_from_idx(&ds, tmpdir, CT_SPLIT_TRAIN), CT_ERR_IO, tmpdir,
                 "train-images-idx3-ubyte", "missing");
    /* images present, labels missing */
    write_idx("train-images-idx3-ubyte", 0x803, 3, (uint32_t[]){2, 4, 5}, 40, false);
    EXPECT_ERROR(ct_dataset_from_idx(&ds, tmpdir, CT_SPLIT_TRAIN), CT_ERR_IO,
                 "train-labels-idx1-ubyte", "missing");
    ct_array a;
    const char *p = tmp_path("nope.idx");
    EXPECT_ERROR(ct_idx_read(p, 1, &a), CT_ERR_IO, p, "No such file");
}
END_TEST

START_TEST(idx_wrong_magic) {
    bool gz = _i;
    const char *name = gz ? "train-images-idx3-ubyte.gz" : "train-images-idx3-ubyte";
    write_split("train", 2, 2, gz);
    /* a labels magic in the images file */
    write_idx(name, 0x801, 3, (uint32_t[]){2, 4, 5}, 40, gz);
    ct_dataset ds;
    EXPECT_ERROR(ct_dataset_from_idx(&ds, tmpdir, CT_SPLIT_TRAIN), CT_ERR_FORMAT,
                 tmp_path(name), "wrong magic number 0x00000801, expected 0x00000803");
    /* a file that is not IDX at all (e.g. a PNG) */
    write_bytes(name, "\x89PNG\r\n\x1a\n........", 16, gz);
    EXPECT_ERROR(ct_dataset_from_idx(&ds, tmpdir, CT_SPLIT_TRAIN), CT_ERR_FORMAT,
                 tmp_path(name), "wrong magic number 0x89504e47, expected 0x00000803");
}
END_TEST

START_TEST(idx_truncated_images) {
    bool gz = _i;
    write_split("train", 5, 5, gz);
    const char *name = gz ? "train-images-idx3-ubyte.gz" : "train-images-idx3-ubyte";
    write_idx(name, 0x803, 3, (uint32_t[]){5, 4, 5}, 5 * 20 - 13, gz);
    ct_dataset ds;
    EXPECT_ERROR(ct_dataset_from_idx(&ds, tmpdir, CT_SPLIT_TRAIN), CT_ERR_FORMAT,
                 tmp_path(name), "truncated", "expected 100 bytes of data, got 87");
    /* a header cut short */
    write_bytes(name, "\0\0\x08\x03\0\0\0\x05\0\0", 10, gz);
    EXPECT_ERROR(ct_dataset_from_idx(&ds, tmpdir, CT_SPLIT_TRAIN), CT_ERR_FORMAT,
                 tmp_path(name), "truncated", "16-byte header, got 10");
    /* a header claiming far more data than the file holds fails as truncated */
    write_idx(name, 0x803, 3, (uint32_t[]){60000, 4000, 4000}, 20, gz);
    EXPECT_ERROR(ct_dataset_from_idx(&ds, tmpdir, CT_SPLIT_TRAIN), CT_ERR_FORMAT,
                 tmp_path(name), "expected 960000000000 bytes of data, got 20");
}
END_TEST

START_TEST(idx_truncated_labels) {
    bool gz = _i;
    write_split("train", 5, 5, gz);
    const char *name = gz ? "train-labels-idx1-ubyte.gz" : "train-labels-idx1-ubyte";
    write_idx(name, 0x801, 1, (uint32_t[]){5}, 3, gz);
    ct_dataset ds;
    EXPECT_ERROR(ct_dataset_from_idx(&ds, tmpdir, CT_SPLIT_TRAIN), CT_ERR_FORMAT,
                 tmp_path(name), "truncated", "expected 5 bytes of data, got 3");
}
END_TEST

START_TEST(idx_trailing_bytes) {
    bool gz = _i;
    write_split("train", 5, 5, gz);
    const char *name = gz ? "train-labels-idx1-ubyte.gz" : "train-labels-idx1-ubyte";
    write_idx(name, 0x801, 1, (uint32_t[]){5}, 6, gz);
    ct_dataset ds;
    EXPECT_ERROR(ct_dataset_from_idx(&ds, tmpdir, CT_SPLIT_TRAIN), CT_ERR_FORMAT,
                 tmp_path(name), "trailing bytes");
}
END_TEST

START_TEST(idx_count_mismatch) {
    bool gz = _i;
    write_split("train", 5, 4, gz);
    const char *img = gz ? "train-images-idx3-ubyte.gz" : "train-images-idx3-ubyte";
    const char *lbl = gz ? "train-labels-idx1-ubyte.gz" : "train-labels-idx1-ubyte";
    ct_dataset ds;
    EXPECT_ERROR(ct_dataset_from_idx(&ds, tmpdir, CT_SPLIT_TRAIN), CT_ERR_SHAPE, tmp_path(img),
                 tmp_path(lbl), "5 images", "4 labels");
}
END_TEST

START_TEST(idx_unsupported_dims) {
    bool gz = _i;
    write_split("train", 2, 2, gz);
    const char *name = gz ? "train-images-idx3-ubyte.gz" : "train-images-idx3-ubyte";
    write_idx(name, 0x803, 3, (uint32_t[]){2, 0, 5}, 0, gz);
    ct_dataset ds;
    EXPECT_ERROR(ct_dataset_from_idx(&ds, tmpdir, CT_SPLIT_TRAIN), CT_ERR_FORMAT,
                 tmp_path(name), "unsupported dims");
    /* dims whose product overflows */
    write_idx(name, 0x803, 3, (uint32_t[]){0xffffffffu, 0xffffffffu, 0xffffffffu}, 0, gz);
    EXPECT_ERROR(ct_dataset_from_idx(&ds, tmpdir, CT_SPLIT_TRAIN), CT_ERR_FORMAT,
                 tmp_path(name), "unsupported dims");
    ct_array a;
    EXPECT_ERROR(ct_idx_read(tmp_path(name), 7, &a), CT_ERR_ARG, "unsupported dims");
}
END_TEST

START_TEST(idx_corrupt_gzip) {
    /* a gzip stream whose deflate data is garbage */
    write_bytes("train-images-idx3-ubyte.gz", "\x1f\x8b\x08\x00\0\0\0\0\0\x03\xff\xff\xff\xff",
                14, false);
    ct_array a;
    const char *p = tmp_path("train-images-idx3-ubyte.gz");
    ct_status st = ct_idx_read(p, 3, &a);
    ck_assert_msg(st == CT_ERR_IO || st == CT_ERR_FORMAT, "status %d", st);
    ck_assert_msg(strstr(ct_last_error(), p), "%s", ct_last_error());
}
END_TEST

/* ---- NPY ---------------------------------------------------------------------------------- */

static void fill_array(ct_array *a, ct_dtype dt) {
    *a = (ct_array){.dtype = dt, .ndim = 3, .shape = {2, 3, 4}, .numel = 24};
    a->data = malloc(24 * ct_dtype_size(dt));
    for (int k = 0; k < 24; k++) {
        if (dt == CT_DTYPE_F32) ((float *)a->data)[k] = k * 0.5f - 3;
        if (dt == CT_DTYPE_U8) ((uint8_t *)a->data)[k] = (uint8_t)(k * 11);
        if (dt == CT_DTYPE_I64) ((int64_t *)a->data)[k] = (int64_t)k * 1000000007LL - 5;
    }
}

START_TEST(npy_round_trip) {
    static const ct_dtype dts[] = {CT_DTYPE_F32, CT_DTYPE_U8, CT_DTYPE_I64};
    static const char *descr[] = {"<f4", "|u1", "<i8"};
    ct_array a, b;
    fill_array(&a, dts[_i]);
    const char *p = tmp_path("a.npy");
    ck_assert_int_eq(ct_npy_write(p, &a), CT_OK);
    ck_assert_int_eq(ct_npy_read(p, &b), CT_OK);
    ck_assert_int_eq(b.dtype, a.dtype);
    ck_assert_int_eq(b.ndim, 3);
    ck_assert_int_eq(b.shape[0], 2);
    ck_assert_int_eq(b.shape[1], 3);
    ck_assert_int_eq(b.shape[2], 4);
    ck_assert_int_eq(b.numel, 24);
    ck_assert_mem_eq(a.data, b.data, 24 * ct_dtype_size(a.dtype));
    ct_array_free(&b);

    /* the header is byte for byte what numpy 1.24's np.save writes for this array: a
     * 118-byte format 1.0 header, so the data starts at offset 128 */
    FILE *f = fopen(p, "rb");
    unsigned char head[128];
    ck_assert_uint_eq(fread(head, 1, 128, f), 128);
    fseek(f, 0, SEEK_END);
    ck_assert_int_eq(ftell(f), 128 + 24 * (long)ct_dtype_size(a.dtype));
    fclose(f);
    ck_assert_mem_eq(head, "\x93NUMPY\x01\x00\x76\x00", 10);
    char dict[128];
    snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (2, 3, 4), }",
             descr[_i]);
    size_t len = strlen(dict);
    ck_assert_mem_eq(head + 10, dict, len);
    for (size_t k = 10 + len; k < 127; k++) ck_assert_int_eq(head[k], ' ');
    ck_assert_int_eq(head[127], '\n');

    /* 1-d and 0-d shapes, and a gzip-compressed .npy */
    a.ndim = 1;
    a.shape[0] = 24;
    ck_assert_int_eq(ct_npy_write(p, &a), CT_OK);
    ck_assert_int_eq(ct_npy_read(p, &b), CT_OK);
    ck_assert_int_eq(b.ndim, 1);
    ck_assert_int_eq(b.shape[0], 24);
    ct_array_free(&b);
    a.ndim = 0;
    a.numel = 1;
    ck_assert_int_eq(ct_npy_write(p, &a), CT_OK);
    ck_assert_int_eq(ct_npy_read(p, &b), CT_OK);
    ck_assert_int_eq(b.ndim, 0);
    ck_assert_int_eq(b.numel, 1);
    ck_assert_mem_eq(a.data, b.data, ct_dtype_size(a.dtype));
    ct_array_free(&b);
    ct_array_free(&a);
}
END_TEST

/* Writes an .npy with the given header dict (padded and terminated as numpy does, unless
 * raw) and `ndata` data bytes, format version major.0. */
static const char *write_npy(const char *name, int major, const char *dict, size_t ndata,
                             bool raw) {
    unsigned char buf[1024] = {0};
    memcpy(buf, "\x93NUMPY", 6);
    buf[6] = (unsigned char)major;
    int pre = major == 1 ? 10 : 12;
    size_t len = strlen(dict), hlen = raw ? len : (len + 1 + pre + 63) / 64 * 64 - pre;
    buf[8] = hlen & 0xff;
    buf[9] = (hlen >> 8) & 0xff;
    if (major != 1) buf[10] = (hlen >> 16) & 0xff, buf[11] = (unsigned char)(hlen >> 24);
    memcpy(buf + pre, dict, len);
    if (!raw) {
        memset(buf + pre + len, ' ', hlen - len - 1);
        buf[pre + hlen - 1] = '\n';
    }
    for (size_t k = 0; k < ndata; k++) buf[pre + hlen + k] = (unsigned char)k;
    write_bytes(name, buf, pre + hlen + ndata, false);
    return tmp_path(name);
}

START_TEST(npy_version2_header) {
    const char *p =
        write_npy("v2.npy", 2, "{'descr': '|u1', 'fortran_order': False, 'shape': (2, 3), }", 6,
                  false);
    ct_array a;
    ct_status st = ct_npy_read(p, &a);
    ck_assert_msg(st == CT_OK, "%s", ct_last_error());
    ck_assert_int_eq(a.dtype, CT_DTYPE_U8);
    ck_assert_int_eq(a.ndim, 2);
    ck_assert_int_eq(a.shape[0], 2);
    ck_assert_int_eq(a.shape[1], 3);
    for (int k = 0; k < 6; k++) ck_assert_int_eq(((uint8_t *)a.data)[k], k);
    ct_array_free(&a);
    /* double quotes, key order and spacing vary between writers */
    p = write_npy("v1.npy", 1, "{\"shape\":(6,),\"fortran_order\":False,\"descr\":\"|u1\"}", 6,
                  false);
    st = ct_npy_read(p, &a);
    ck_assert_msg(st == CT_OK, "%s", ct_last_error());
    ck_assert_int_eq(a.ndim, 1);
    ck_assert_int_eq(a.shape[0], 6);
    ct_array_free(&a);
}
END_TEST

START_TEST(npy_fortran_rejected) {
    const char *p =
        write_npy("f.npy", 1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", 24,
                  false);
    ct_array a;
    EXPECT_ERROR(ct_npy_read(p, &a), CT_ERR_FORMAT, p, "fortran_order");
}
END_TEST

START_TEST(npy_bad_headers) {
    static const struct {
        const char *dict, *msg;
        int major;
        size_t ndata;
        bool raw;
    } cases[] = {
        {"{'descr': '<f4', 'shape': (2,), }", "missing key 'fortran_order'", 1, 8, false},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}", "key 'x'", 1, 8,
         false},
        {"{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2,)}", "key 'descr'",
         1, 8, false},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2), }", "trailing comma", 1, 8, false},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, -3), }", "non-negative", 1, 8,
         false},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2 3), }", "expected ','", 1, 8,
         false},
        {"{'descr': '<f4', 'fortran_order': 0, 'shape': (2,), }", "True or False", 1, 8, false},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2,), ", "bad NPY header", 1, 8,
         false},
        {"{'descr: '<f4', 'fortran_order': False, 'shape': (2,), }", "bad NPY header", 1, 8,
         false},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", "newline", 1, 8, true},
        {"{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", "unsupported dtype '>f4'",
         1, 8, false},
        {"{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }", "unsupported dtype '<f8'",
         1, 16, false},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", "unsupported NPY version 3.0",
         3, 8, false},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",
         "expected 24 bytes of data, got 8", 1, 8, false},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1, 1, 1, 1, 1, 1), }", "dims", 1,
         4, false},
    };
    const char *p = write_npy("bad.npy", cases[_i].major, cases[_i].dict, cases[_i].ndata,
                              cases[_i].raw);
    ct_array a = {0};
    EXPECT_ERROR(ct_npy_read(p, &a), CT_ERR_FORMAT, p, cases[_i].msg);
    ck_assert_ptr_null(a.data);
}
END_TEST

START_TEST(npy_not_npy) {
    write_bytes("x.npy", "PK\x03\x04 this is a zip", 19, false);
    ct_array a;
    const char *p = tmp_path("x.npy");
    EXPECT_ERROR(ct_npy_read(p, &a), CT_ERR_FORMAT, p, "not an NPY file");
    p = tmp_path("missing.npy");
    EXPECT_ERROR(ct_npy_read(p, &a), CT_ERR_IO, p);
    EXPECT_ERROR(ct_npy_write("/nonexistent-dir/x.npy",
                              &(ct_array){.dtype = CT_DTYPE_F32, .ndim = 1, .shape = {0}}),
                 CT_ERR_IO, "/nonexistent-dir/x.npy");
}
END_TEST

/* ---- data set ---------------------------------------------------------------------------- */

/* n samples of shape [2, 3] with x = sample * 100 + feature, labels y[i] = i % 10. */
static void make_dataset(ct_dataset *ds, int64_t n) {
    float *x = malloc(n * 6 * sizeof *x);
    int64_t *y = malloc(n * sizeof *y);
    for (int64_t i = 0; i < n; i++) {
        for (int j = 0; j < 6; j++) x[i * 6 + j] = (float)(i * 100 + j);
        y[i] = i % 10;
    }
    ck_assert_int_eq(ct_dataset_from_data(ds, n, CT_SHAPE(2, 3), x, y), CT_OK);
    free(x);
    free(y);
}

START_TEST(dataset_from_npy) {
    /* uint8 images [4, 2, 3] and uint8 labels */
    ct_array xa = {.dtype = CT_DTYPE_U8, .ndim = 3, .shape = {4, 2, 3}, .numel = 24};
    uint8_t xb[24], yb[4] = {3, 0, 7, 3};
    for (int k = 0; k < 24; k++) xb[k] = (uint8_t)(k * 10);
    xa.data = xb;
    ct_array ya = {.dtype = CT_DTYPE_U8, .ndim = 1, .shape = {4}, .numel = 4, .data = yb};
    const char *xp = tmp_path("x.npy"), *yp = tmp_path("y.npy");
    ck_assert_int_eq(ct_npy_write(xp, &xa), CT_OK);
    ck_assert_int_eq(ct_npy_write(yp, &ya), CT_OK);
    ct_dataset ds;
    ct_status st = ct_dataset_from_npy(&ds, xp, yp);
    ck_assert_msg(st == CT_OK, "%s", ct_last_error());
    ck_assert_int_eq(ds.n, 4);
    ck_assert_int_eq(ds.sample_ndim, 2);
    ck_assert_int_eq(ds.sample_shape[0], 2);
    ck_assert_int_eq(ds.sample_shape[1], 3);
    ck_assert_int_eq(ds.num_classes, 8);
    ck_assert_ptr_null(ds.x); /* uint8 features stay uint8 */
    for (int k = 0; k < 24; k++) ck_assert_int_eq(ds.x8[k], k * 10);
    float f[6];
    ct_dataset_sample(&ds, 3, f);
    for (int k = 0; k < 6; k++) ck_assert_float_eq(f[k], (float)((18 + k) * 10) / 255.0f);
    for (int k = 0; k < 4; k++) ck_assert_int_eq(ds.y[k], yb[k]);
    /* [n, 2, 3] -> [n, 6] */
    ck_assert_int_eq(ct_dataset_reshape(&ds, CT_SHAPE(6)), CT_OK);
    ck_assert_int_eq(ds.sample_ndim, 1);
    EXPECT_ERROR(ct_dataset_reshape(&ds, CT_SHAPE(7)), CT_ERR_ARG, "6", "7");
    ct_dataset_free(&ds);

    /* float32 features and int64 labels are taken as they are */
    ct_array xf, yi = {.dtype = CT_DTYPE_I64, .ndim = 1, .shape = {2}, .numel = 2,
                       .data = (int64_t[]){1, 0}};
    fill_array(&xf, CT_DTYPE_F32);
    ck_assert_int_eq(ct_npy_write(xp, &xf), CT_OK);
    ck_assert_int_eq(ct_npy_write(yp, &yi), CT_OK);
    ck_assert_int_eq(ct_dataset_from_npy(&ds, xp, yp), CT_OK);
    ck_assert_int_eq(ds.n, 2);
    ck_assert_int_eq(ds.sample_numel, 12);
    ck_assert_ptr_null(ds.x8);
    ck_assert_mem_eq(ds.x, xf.data, 24 * sizeof(float));
    float f12[12];
    ct_dataset_sample(&ds, 1, f12);
    ck_assert_mem_eq(f12, (float *)xf.data + 12, 12 * sizeof(float));
    ck_assert_int_eq(ds.num_classes, 2);
    ct_dataset_free(&ds);

    /* 2 samples against 4 labels */
    ck_assert_int_eq(ct_npy_write(yp, &ya), CT_OK);
    EXPECT_ERROR(ct_dataset_from_npy(&ds, xp, yp), CT_ERR_SHAPE, xp, yp, "2 samples", "4 labels");
    /* float labels, int64 features, a negative label */
    ck_assert_int_eq(ct_npy_write(yp, &xf), CT_OK);
    EXPECT_ERROR(ct_dataset_from_npy(&ds, xp, yp), CT_ERR_SHAPE, yp, "labels");
    ck_assert_int_eq(ct_npy_write(xp, &yi), CT_OK);
    EXPECT_ERROR(ct_dataset_from_npy(&ds, xp, xp), CT_ERR_SHAPE, xp, "features");
    ct_array_free(&xf);
    fill_array(&xf, CT_DTYPE_F32);
    yi.data = (int64_t[]){1, -4};
    ck_assert_int_eq(ct_npy_write(xp, &xf), CT_OK);
    ck_assert_int_eq(ct_npy_write(yp, &yi), CT_OK);
    EXPECT_ERROR(ct_dataset_from_npy(&ds, xp, yp), CT_ERR_FORMAT, yp, "label -4");
    ct_array_free(&xf);
}
END_TEST

START_TEST(dataset_keep_classes) {
    ct_dataset ds;
    make_dataset(&ds, 40);
    ck_assert_int_eq(ds.num_classes, 10);
    ck_assert_int_eq(ct_dataset_keep_classes(&ds, (int64_t[]){5, 6, 7, 8, 9}, 5, true), CT_OK);
    ck_assert_int_eq(ds.n, 20);
    ck_assert_int_eq(ds.num_classes, 5);
    /* kept in order: original samples 5..9, 15..19, ... with labels 0..4 */
    for (int64_t k = 0; k < 20; k++) {
        int64_t orig = (k / 5) * 10 + 5 + k % 5;
        ck_assert_int_eq(ds.y[k], k % 5);
        for (int j = 0; j < 6; j++) ck_assert_float_eq(ds.x[k * 6 + j], (float)(orig * 100 + j));
    }
    ct_dataset_free(&ds);

    /* without remap the labels and num_classes stay; the order of `classes` is irrelevant */
    make_dataset(&ds, 40);
    ck_assert_int_eq(ct_dataset_keep_classes(&ds, (int64_t[]){7, 2}, 2, false), CT_OK);
    ck_assert_int_eq(ds.n, 8);
    ck_assert_int_eq(ds.num_classes, 10);
    for (int64_t k = 0; k < 8; k++) ck_assert_int_eq(ds.y[k], k % 2 ? 7 : 2);
    ck_assert_float_eq(ds.x[6], 700.0f);
    /* remap follows the order given */
    ck_assert_int_eq(ct_dataset_keep_classes(&ds, (int64_t[]){7, 2}, 2, true), CT_OK);
    for (int64_t k = 0; k < 8; k++) ck_assert_int_eq(ds.y[k], k % 2 ? 0 : 1);
    EXPECT_ERROR(ct_dataset_keep_classes(&ds, (int64_t[]){0, 2}, 2, true), CT_ERR_ARG,
                 "class 2 outside 0..1");
    EXPECT_ERROR(ct_dataset_keep_classes(&ds, (int64_t[]){1, 1}, 2, true), CT_ERR_ARG,
                 "listed twice");
    EXPECT_ERROR(ct_dataset_keep_classes(&ds, NULL, 0, true), CT_ERR_ARG, "at least one");
    ck_assert_int_eq(ds.n, 8); /* failed calls change nothing */
    ct_dataset_free(&ds);
}
END_TEST

START_TEST(dataset_few_shot) {
    ct_dataset ds;
    make_dataset(&ds, 35); /* classes 0..4 have 4 samples, 5..9 have 3 */
    ck_assert_int_eq(ct_dataset_few_shot(&ds, 2), CT_OK);
    ck_assert_int_eq(ds.n, 20);
    for (int64_t k = 0; k < 20; k++) {
        ck_assert_int_eq(ds.y[k], k % 10);
        ck_assert_float_eq(ds.x[k * 6], (float)(k * 100)); /* the first two of each class */
    }
    ct_dataset_free(&ds);
    make_dataset(&ds, 35);
    ck_assert_int_eq(ct_dataset_few_shot(&ds, 4), CT_OK);
    ck_assert_int_eq(ds.n, 35); /* a class with fewer than k keeps all it has */
    EXPECT_ERROR(ct_dataset_few_shot(&ds, 0), CT_ERR_ARG, "k");
    ct_dataset_free(&ds);

    /* few-shot on real data: classes 5..9 of Fashion-MNIST test, 3 per class */
    ck_assert_int_eq(ct_dataset_from_idx(&ds, CT_FASHION_MNIST_DIR, CT_SPLIT_TEST), CT_OK);
    ck_assert_int_eq(ct_dataset_keep_classes(&ds, (int64_t[]){5, 6, 7, 8, 9}, 5, true), CT_OK);
    ck_assert_int_eq(ds.n, 5000);
    ck_assert_int_eq(ct_dataset_few_shot(&ds, 3), CT_OK);
    ck_assert_int_eq(ds.n, 15);
    int64_t count[5] = {0};
    for (int64_t k = 0; k < 15; k++) count[ds.y[k]]++;
    for (int c = 0; c < 5; c++) ck_assert_int_eq(count[c], 3);
    /* test labels start 9 2 1 1 6 1 4 6 5 7: the first kept are 9, 6, 6, 5, 7 -> 4 1 1 0 2 */
    int64_t first[5] = {4, 1, 1, 0, 2};
    for (int k = 0; k < 5; k++) ck_assert_int_eq(ds.y[k], first[k]);
    ct_dataset_free(&ds);
}
END_TEST

/* ---- uint8 storage --------------------------------------------------------------------- */

/* Asserts that a data set's feature buffer holds `bytes` bytes: at least that many, and far
 * less than float storage (4 * bytes) would take. */
static void assert_buffer_bytes(const void *p, size_t bytes) {
    size_t got = malloc_usable_size((void *)p);
    ck_assert_msg(got >= bytes && got < bytes + bytes / 2 + 4096,
                  "buffer of %zu usable bytes for %zu bytes of pixels", got, bytes);
}

/* n samples of shape [2, 3] as uint8 pixels p = (37 * i + j) % 256 with labels i % 10 in
 * *d8, and the float data set of the same features p / 255.0f in *df. */
static void make_pixel_datasets(ct_dataset *d8, ct_dataset *df, int64_t n) {
    uint8_t *x8 = malloc(n * 6);
    float *xf = malloc(n * 6 * sizeof *xf);
    int64_t *y = malloc(n * sizeof *y);
    for (int64_t i = 0; i < n; i++) {
        for (int j = 0; j < 6; j++) {
            x8[i * 6 + j] = (uint8_t)((37 * i + j) % 256);
            xf[i * 6 + j] = (float)x8[i * 6 + j] / 255.0f;
        }
        y[i] = i % 10;
    }
    ck_assert_int_eq(ct_dataset_from_pixels(d8, n, CT_SHAPE(2, 3), x8, y), CT_OK);
    ck_assert_int_eq(ct_dataset_from_data(df, n, CT_SHAPE(2, 3), xf, y), CT_OK);
    free(x8);
    free(xf);
    free(y);
}

/* Runs `epochs` epochs over idx[0..n) with one loader per data set (same options) and
 * asserts that every batch is the same bit for bit: x, labels, indices and size. Returns
 * how many batches were compared. */
static int64_t assert_same_batches(const ct_dataset *a, const ct_dataset *b,
                                   const ct_loader_opts *o, const int64_t *idx, int64_t n,
                                   int epochs) {
    ct_loader *la, *lb;
    ck_assert_int_eq(ct_loader_new(&la, a, o), CT_OK);
    ck_assert_int_eq(ct_loader_new(&lb, b, o), CT_OK);
    int64_t batches = 0;
    for (int e = 0; e < epochs; e++) {
        ct_loader_start(la, idx, n);
        ct_loader_start(lb, idx, n);
        for (int64_t i = 0; i < ct_loader_num_batches(la); i++) CT_SCOPE {
            ct_batch ba, bb;
            ck_assert(ct_loader_next(la, &ba));
            ck_assert(ct_loader_next(lb, &bb));
            ck_assert_int_eq(ba.size, bb.size);
            ck_assert_int_eq(ba.x->ndim, bb.x->ndim);
            for (int d = 0; d < ba.x->ndim; d++) ck_assert_int_eq(ba.x->shape[d], bb.x->shape[d]);
            ck_assert_mem_eq(ba.x->data, bb.x->data, (size_t)ba.x->numel * sizeof(float));
            ck_assert_mem_eq(ba.y, bb.y, (size_t)ba.size * sizeof(int64_t));
            ck_assert_mem_eq(ba.idx, bb.idx, (size_t)ba.size * sizeof(int64_t));
            batches++;
        }
        ct_batch end;
        ck_assert(!ct_loader_next(la, &end));
        ck_assert(!ct_loader_next(lb, &end));
    }
    ct_loader_free(la);
    ct_loader_free(lb);
    return batches;
}

/* Filtering, few-shot and reshaping keep uint8 data uint8, move the right pixels and give
 * memory back, exactly as on the float data set of the same features. */
START_TEST(dataset_pixels_filters) {
    ct_dataset d8, df;
    make_pixel_datasets(&d8, &df, 40);
    ck_assert_ptr_null(d8.x);
    ck_assert_ptr_nonnull(d8.x8);
    ck_assert_ptr_nonnull(df.x);
    ck_assert_ptr_null(df.x8);
    ck_assert_int_eq(d8.num_classes, 10);
    assert_buffer_bytes(d8.x8, 40 * 6);
    float f[6];
    ct_dataset_sample(&d8, 7, f);
    ck_assert_mem_eq(f, df.x + 7 * 6, sizeof f);
    ck_assert_float_eq(f[2], (float)((37 * 7 + 2) % 256) / 255.0f);

    for (int pass = 0; pass < 2; pass++) {
        ct_dataset *d = pass ? &df : &d8;
        ck_assert_int_eq(ct_dataset_keep_classes(d, (int64_t[]){9, 5, 6, 7, 8}, 5, true), CT_OK);
        ck_assert_int_eq(d->n, 20);
        ck_assert_int_eq(d->num_classes, 5);
    }
    /* kept in order: original samples 5..9, 15..19, ... relabelled 9->0, 5->1, ..., 8->4 */
    int64_t map[10] = {-1, -1, -1, -1, -1, 1, 2, 3, 4, 0};
    for (int64_t k = 0; k < 20; k++) {
        int64_t orig = (k / 5) * 10 + 5 + k % 5;
        ck_assert_int_eq(d8.y[k], map[orig % 10]);
        for (int j = 0; j < 6; j++) ck_assert_int_eq(d8.x8[k * 6 + j], (37 * orig + j) % 256);
    }
    ck_assert_ptr_null(d8.x);
    assert_buffer_bytes(d8.x8, 20 * 6);

    for (int pass = 0; pass < 2; pass++) {
        ct_dataset *d = pass ? &df : &d8;
        ck_assert_int_eq(ct_dataset_few_shot(d, 2), CT_OK); /* 4 per class -> 2 */
        ck_assert_int_eq(d->n, 10);
        ck_assert_int_eq(ct_dataset_reshape(d, CT_SHAPE(6)), CT_OK);
    }
    /* the first two of each class: original samples 5..9 and 15..19 */
    for (int64_t k = 0; k < 10; k++) {
        int64_t orig = k < 5 ? 5 + k : 10 + k;
        ck_assert_int_eq(d8.x8[k * 6], (37 * orig) % 256);
        ct_dataset_sample(&d8, k, f);
        ck_assert_mem_eq(f, df.x + k * 6, sizeof f);
    }
    ck_assert_mem_eq(d8.y, df.y, 10 * sizeof(int64_t));
    ck_assert_ptr_null(d8.x);
    assert_buffer_bytes(d8.x8, 10 * 6);
    ct_loader_opts o = ct_loader_opts_default(4);
    o.mean = 0.2860f;
    o.std = 0.3530f;
    int64_t idx[10] = {9, 0, 3, 3, 7, 1, 8, 2, 6, 5};
    ck_assert_int_eq(assert_same_batches(&d8, &df, &o, idx, 10, 1), 3);

    /* filtering again: label 4 is original class 8, samples 8 and 18 */
    ck_assert_int_eq(ct_dataset_keep_classes(&d8, (int64_t[]){4}, 1, false), CT_OK);
    ck_assert_int_eq(d8.n, 2);
    ck_assert_ptr_null(d8.x);
    ck_assert_int_eq(d8.x8[0], (37 * 8) % 256);
    ck_assert_int_eq(d8.x8[6], (37 * 18) % 256);
    ct_dataset_free(&d8);
    ck_assert_ptr_null(d8.x8);
    ct_dataset_free(&df);

    /* from_pixels validates like from_data, and frees what it made when it fails */
    EXPECT_ERROR(ct_dataset_from_pixels(&d8, 2, CT_SHAPE(1), (uint8_t[]){1, 2}, (int64_t[]){0, -1}),
                 CT_ERR_ARG, "label -1");
    EXPECT_ERROR(ct_dataset_from_pixels(&d8, 1, CT_SHAPE(0), (uint8_t[]){1}, (int64_t[]){0}),
                 CT_ERR_ARG, "size 0");
}
END_TEST

/* In-memory images take resize and center_crop once, with the pixels ct_image_resize gives
 * an image of the same bytes (what a folder data set's loader decodes); random transforms,
 * float features and bad shapes are refused, leaving the data set as it was. */
START_TEST(dataset_transform_pixels) {
    int64_t n = 3, C = 3, H = 5, W = 7, y[3] = {0, 1, 2};
    uint8_t *px = malloc((size_t)(n * C * H * W));
    for (int64_t k = 0; k < n * C * H * W; k++) px[k] = (uint8_t)((k * 37 + 11) % 251);
    ct_dataset d;
    ck_assert_int_eq(ct_dataset_from_pixels(&d, n, 3, (int64_t[]){C, H, W}, px, y), CT_OK);
    ct_transforms tf;
    ck_assert_int_eq(ct_transforms_parse("random_horizontal_flip", &tf), CT_OK);
    ck_assert_int_eq(ct_dataset_transform_pixels(&d, &tf), CT_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(ct_last_error(), "data.augment"));
    ck_assert_int_eq(d.sample_shape[1], H);
    ck_assert_int_eq(ct_transforms_parse("resize:10,center_crop:9", &tf), CT_OK);
    ck_assert_int_eq(ct_dataset_transform_pixels(&d, &tf), CT_OK);
    /* the shorter side (5) becomes 10, the longer int(10 * 7 / 5) = 14; then the centre 9x9 */
    ck_assert_int_eq(d.sample_ndim, 3);
    ck_assert_int_eq(d.sample_shape[0], C);
    ck_assert_int_eq(d.sample_shape[1], 9);
    ck_assert_int_eq(d.sample_shape[2], 9);
    ck_assert_int_eq(d.sample_numel, C * 81);
    for (int64_t i = 0; i < n; i++) {
        ct_image im = {.h = H, .w = W, .c = (int)C, .px = malloc((size_t)(C * H * W))};
        for (int64_t c = 0; c < C; c++)
            for (int64_t p = 0; p < H * W; p++) im.px[p * C + c] = px[(i * C + c) * H * W + p];
        ct_transforms_apply(&tf, &im, NULL);
        ck_assert_int_eq(im.h, 9);
        ck_assert_int_eq(im.w, 9);
        for (int64_t c = 0; c < C; c++)
            for (int64_t p = 0; p < 81; p++)
                ck_assert_uint_eq(d.x8[(i * C + c) * 81 + p], im.px[p * C + c]);
        ct_image_free(&im);
    }
    ct_dataset_free(&d);

    float xf[2 * 4] = {0};
    ck_assert_int_eq(ct_dataset_from_data(&d, 2, 2, (int64_t[]){2, 2}, xf, y), CT_OK);
    ck_assert_int_eq(ct_dataset_transform_pixels(&d, &tf), CT_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(ct_last_error(), "float32"));
    ct_dataset_free(&d);
    ck_assert_int_eq(ct_dataset_from_pixels(&d, 1, 3, (int64_t[]){2, 4, 4}, px, y), CT_OK);
    ck_assert_int_eq(ct_dataset_transform_pixels(&d, &tf), CT_ERR_ARG); /* 2 channels */
    ck_assert_int_eq(d.sample_numel, 32);
    ct_dataset_free(&d);
    free(px);
}
END_TEST

/* The loader's uint8 path gives bit for bit the batches of the float data set holding the
 * same pixels / 255, with and without normalisation and augmentation (crop padding is the
 * feature 0, the same as pixel 0). Real Fashion-MNIST images, so every pixel value and
 * large zero borders occur. */
START_TEST(loader_pixels_match_float) {
    ct_dataset d8, df;
    ck_assert_int_eq(ct_dataset_from_idx(&d8, CT_FASHION_MNIST_DIR, CT_SPLIT_TEST), CT_OK);
    ck_assert_ptr_nonnull(d8.x8);
    int64_t total = d8.n * d8.sample_numel;
    float *xf = malloc((size_t)total * sizeof *xf);
    for (int64_t k = 0; k < total; k++) xf[k] = (float)d8.x8[k] / 255.0f;
    ck_assert_int_eq(ct_dataset_from_data(&df, d8.n, d8.sample_ndim, d8.sample_shape, xf, d8.y),
                     CT_OK);
    free(xf);
    int64_t n = 2000, *idx = malloc((size_t)d8.n * sizeof *idx);
    ct_permutation(d8.n, 3, 0, idx); /* a random 2000 of the 10000 */
    typedef struct {
        int ndim;
        int64_t shape[3];
        ct_loader_opts o;
        int epochs;
    } config;
    const config cfg[] = {
        {3, {1, 28, 28}, {.batch_size = 64, .mean = 0, .std = 1}, 1},
        {3, {1, 28, 28}, {.batch_size = 64, .mean = 0.2860f, .std = 0.3530f}, 1},
        {3, {1, 28, 28}, {.batch_size = 100, .mean = 0.2860f, .std = 0.3530f, .crop_pad = 4,
                          .hflip = true, .seed = 9}, 2},
        {3, {1, 28, 28}, {.batch_size = 128, .mean = 0.5f, .std = 0.25f, .crop_pad = 2, .seed = 1}, 1},
        {2, {28, 28}, {.batch_size = 33, .mean = -0.1f, .std = 3.0f, .hflip = true, .seed = 4}, 1},
        {1, {784}, {.batch_size = 256, .mean = 0.2860f, .std = 0.3530f}, 1},
    };
    for (size_t c = 0; c < sizeof cfg / sizeof *cfg; c++) {
        ck_assert_int_eq(ct_dataset_reshape(&d8, cfg[c].ndim, cfg[c].shape), CT_OK);
        ck_assert_int_eq(ct_dataset_reshape(&df, cfg[c].ndim, cfg[c].shape), CT_OK);
        int64_t bs = cfg[c].o.batch_size;
        ck_assert_int_eq(assert_same_batches(&d8, &df, &cfg[c].o, idx, n, cfg[c].epochs),
                         cfg[c].epochs * ((n + bs - 1) / bs));
    }
    /* the whole data set read back through ct_dataset_sample matches too */
    float f[784];
    for (int64_t i = 0; i < d8.n; i++) {
        ct_dataset_sample(&d8, i, f);
        ck_assert_mem_eq(f, df.x + i * 784, sizeof f);
    }
    free(idx);
    ct_dataset_free(&d8);
    ct_dataset_free(&df);
}
END_TEST

static void sample_out_of_range(void) {
    ct_dataset d8, df;
    make_pixel_datasets(&d8, &df, 3);
    float f[6];
    ct_dataset_sample(&d8, 3, f);
}

START_TEST(dataset_sample_out_of_range_aborts) { sample_out_of_range(); }
END_TEST

/* ---- loader -------------------------------------------------------------------------------- */

START_TEST(loader_covers_indices) {
    ct_dataset ds;
    make_dataset(&ds, 10);
    ct_loader *l;
    ct_loader_opts o = ct_loader_opts_default(4);
    ck_assert_int_eq(ct_loader_new(&l, &ds, &o), CT_OK);
    int64_t idx[10] = {3, 9, 0, 4, 7, 1, 8, 2, 6, 5};
    ct_loader_start(l, idx, 10);
    ck_assert_int_eq(ct_loader_num_batches(l), 3);
    int seen[10] = {0}, batches = 0;
    int64_t sizes[3] = {4, 4, 2}, pos = 0;
    ct_batch b;
    CT_SCOPE {
        while (ct_loader_next(l, &b)) {
            ck_assert_int_eq(b.size, sizes[batches]);
            ck_assert_int_eq(b.x->ndim, 3);
            ck_assert_int_eq(b.x->shape[0], b.size);
            ck_assert_int_eq(b.x->shape[1], 2);
            ck_assert_int_eq(b.x->shape[2], 3);
            for (int64_t k = 0; k < b.size; k++, pos++) {
                ck_assert_int_eq(b.idx[k], idx[pos]);
                seen[b.idx[k]]++;
                ck_assert_int_eq(b.y[k], b.idx[k] % 10);
                for (int j = 0; j < 6; j++)
                    ck_assert_float_eq(b.x->data[k * 6 + j], (float)(b.idx[k] * 100 + j));
            }
            batches++;
        }
    }
    ck_assert_int_eq(batches, 3);
    for (int i = 0; i < 10; i++) ck_assert_int_eq(seen[i], 1);
    ck_assert(!ct_loader_next(l, &b));
    /* an empty shard has no batches */
    ct_loader_start(l, idx, 0);
    ck_assert_int_eq(ct_loader_num_batches(l), 0);
    ck_assert(!ct_loader_next(l, &b));
    ct_loader_free(l);
    ct_dataset_free(&ds);
}
END_TEST

START_TEST(loader_normalises) {
    ct_dataset ds;
    make_dataset(&ds, 3);
    ct_loader *l;
    ct_loader_opts o = ct_loader_opts_default(3);
    o.mean = 0.2860f; /* Fashion-MNIST's usual constants */
    o.std = 0.3530f;
    ck_assert_int_eq(ct_loader_new(&l, &ds, &o), CT_OK);
    int64_t idx[3] = {2, 0, 1};
    ct_loader_start(l, idx, 3);
    ct_batch b;
    CT_SCOPE {
        ck_assert(ct_loader_next(l, &b));
        for (int k = 0; k < 3; k++)
            for (int j = 0; j < 6; j++) {
                float v = (float)(idx[k] * 100 + j);
                ck_assert_float_eq(b.x->data[k * 6 + j], (v - 0.2860f) / 0.3530f);
            }
        /* numpy: (np.float32(201) - np.float32(0.2860)) / np.float32(0.3530) */
        ck_assert_float_eq_tol(b.x->data[1], 568.5949f, 1e-4f);
    }
    ct_loader_free(l);
    EXPECT_ERROR(ct_loader_new(&l, &ds, &(ct_loader_opts){.batch_size = 2, .std = 0}),
                 CT_ERR_ARG, "std");
    EXPECT_ERROR(ct_loader_new(&l, &ds, &(ct_loader_opts){.batch_size = 0, .std = 1}),
                 CT_ERR_ARG, "batch_size");
    ck_assert_int_eq(ct_dataset_reshape(&ds, CT_SHAPE(6)), CT_OK);
    EXPECT_ERROR(ct_loader_new(&l, &ds, &(ct_loader_opts){.batch_size = 2, .std = 1, .hflip = 1}),
                 CT_ERR_ARG, "[C, H, W]");
    ct_dataset_free(&ds);
}
END_TEST

/* One 1x3x4 image with distinct non-zero pixels v = 1 + 4 * row + col, repeated n times. */
static void make_image_dataset(ct_dataset *ds, int64_t n) {
    float *x = malloc(n * 12 * sizeof *x);
    int64_t *y = calloc(n, sizeof *y);
    for (int64_t i = 0; i < n; i++)
        for (int j = 0; j < 12; j++) x[i * 12 + j] = (float)(1 + j);
    ck_assert_int_eq(ct_dataset_from_data(ds, n, CT_SHAPE(1, 3, 4), x, y), CT_OK);
    free(x);
    free(y);
}

START_TEST(loader_flip_mirrors) {
    ct_dataset ds;
    make_image_dataset(&ds, 64);
    ct_loader *l;
    ct_loader_opts o = ct_loader_opts_default(64);
    o.hflip = true;
    o.seed = 7;
    ck_assert_int_eq(ct_loader_new(&l, &ds, &o), CT_OK);
    int64_t idx[64];
    for (int i = 0; i < 64; i++) idx[i] = i;
    ct_loader_start(l, idx, 64);
    int flipped = 0;
    ct_batch b;
    CT_SCOPE {
        ck_assert(ct_loader_next(l, &b));
        ck_assert_int_eq(b.x->ndim, 4);
        ck_assert_int_eq(b.x->shape[1], 1);
        ck_assert_int_eq(b.x->shape[2], 3);
        ck_assert_int_eq(b.x->shape[3], 4);
        for (int k = 0; k < 64; k++) {
            const float *s = b.x->data + k * 12;
            bool same = true, mirror = true;
            for (int r = 0; r < 3; r++)
                for (int c = 0; c < 4; c++) {
                    same = same && s[r * 4 + c] == (float)(1 + 4 * r + c);
                    mirror = mirror && s[r * 4 + c] == (float)(1 + 4 * r + (3 - c));
                }
            ck_assert_msg(same != mirror, "sample %d is neither the image nor its mirror", k);
            flipped += mirror;
        }
    }
    /* p = 1/2: 64 draws land in 16..48 unless the RNG is broken (P < 1e-4) */
    ck_assert_msg(flipped >= 16 && flipped <= 48, "flipped %d of 64", flipped);
    ct_loader_free(l);
    ct_dataset_free(&ds);
}
END_TEST

START_TEST(loader_crop_shifts) {
    ct_dataset ds;
    make_image_dataset(&ds, 200);
    ct_loader *l;
    ct_loader_opts o = ct_loader_opts_default(50);
    o.crop_pad = 2;
    o.seed = 3;
    ck_assert_int_eq(ct_loader_new(&l, &ds, &o), CT_OK);
    int64_t idx[200];
    for (int i = 0; i < 200; i++) idx[i] = i;
    ct_loader_start(l, idx, 200);
    bool offsets[5][5] = {{0}};
    ct_batch b;
    for (int64_t i = 0; i < ct_loader_num_batches(l); i++) {
        CT_SCOPE {
            ck_assert(ct_loader_next(l, &b));
            ck_assert_int_eq(b.x->shape[2], 3);
            ck_assert_int_eq(b.x->shape[3], 4);
            for (int k = 0; k < b.size; k++) {
                /* the output must be the zero-padded image shifted by exactly one (dy, dx) */
                const float *s = b.x->data + k * 12;
                int matches = 0;
                for (int dy = -2; dy <= 2; dy++)
                    for (int dx = -2; dx <= 2; dx++) {
                        bool ok = true;
                        for (int r = 0; r < 3; r++)
                            for (int c = 0; c < 4; c++) {
                                int sr = r + dy, sc = c + dx;
                                float want = sr >= 0 && sr < 3 && sc >= 0 && sc < 4
                                                 ? (float)(1 + 4 * sr + sc) : 0.0f;
                                ok = ok && s[r * 4 + c] == want;
                            }
                        if (ok) {
                            matches++;
                            offsets[dy + 2][dx + 2] = true;
                        }
                    }
                ck_assert_int_eq(matches, 1);
            }
        }
    }
    /* 200 draws from 25 equally likely offsets: all appear unless the RNG is broken */
    for (int i = 0; i < 5; i++)
        for (int j = 0; j < 5; j++)
            ck_assert_msg(offsets[i][j], "offset (%d, %d) never drawn", i - 2, j - 2);
    ct_loader_free(l);
    ct_dataset_free(&ds);
}
END_TEST

/* Sum of |a - b| over two epochs of loaders with the given seeds (crop 2 + flip). */
static double two_loaders_diff(const ct_dataset *ds, uint64_t s1, uint64_t s2) {
    ct_loader *a, *b;
    ct_loader_opts o = {.batch_size = 7, .mean = 0.5f, .std = 2, .crop_pad = 2, .hflip = 1};
    o.seed = s1;
    ck_assert_int_eq(ct_loader_new(&a, ds, &o), CT_OK);
    o.seed = s2;
    ck_assert_int_eq(ct_loader_new(&b, ds, &o), CT_OK);
    int64_t idx[30];
    for (int i = 0; i < 30; i++) idx[i] = 29 - i;
    double diff = 0;
    for (int epoch = 0; epoch < 2; epoch++) {
        ct_loader_start(a, idx, 30);
        ct_loader_start(b, idx, 30);
        ct_batch ba, bb;
        for (int64_t i = 0; i < ct_loader_num_batches(a); i++) {
            CT_SCOPE {
                ck_assert(ct_loader_next(a, &ba));
                ck_assert(ct_loader_next(b, &bb));
                ck_assert_int_eq(ba.size, bb.size);
                for (int64_t k = 0; k < ba.x->numel; k++)
                    diff += fabs(ba.x->data[k] - bb.x->data[k]);
            }
        }
        ck_assert(!ct_loader_next(a, &ba));
        ck_assert(!ct_loader_next(b, &bb));
    }
    ct_loader_free(a);
    ct_loader_free(b);
    return diff;
}

START_TEST(loader_same_seed_same_batches) {
    ct_dataset ds;
    ck_assert_int_eq(ct_dataset_from_idx(&ds, CT_FASHION_MNIST_DIR, CT_SPLIT_TEST), CT_OK);
    ck_assert_int_eq(ct_dataset_few_shot(&ds, 3), CT_OK); /* 30 real images */
    ck_assert_float_eq(two_loaders_diff(&ds, 11, 11), 0);
    ck_assert(two_loaders_diff(&ds, 11, 12) > 1);
    ct_dataset_free(&ds);
}
END_TEST

START_TEST(loader_no_mallocs_second_epoch) {
    ct_dataset ds;
    make_image_dataset(&ds, 100);
    ct_sampler *s;
    ct_sampler_opts so = {.n = 100, .world = 1, .rank = 0, .mode = CT_SHARD_PAD, .shuffle = 1,
                          .seed = 1};
    ck_assert_int_eq(ct_sampler_new(&s, &so), CT_OK);
    ct_loader *l;
    ct_loader_opts o = {.batch_size = 32, .mean = 0.1f, .std = 0.3f, .crop_pad = 1, .hflip = 1};
    ck_assert_int_eq(ct_loader_new(&l, &ds, &o), CT_OK);
    int64_t m1 = 0;
    for (int epoch = 0; epoch < 3; epoch++) {
        if (epoch == 1) m1 = ct_stats_get().mallocs;
        ct_loader_start(l, ct_sampler_epoch(s, epoch), ct_sampler_size(s));
        int64_t total = 0;
        ct_batch b;
        /* one scope per step, opened before the batch is made, so it owns the batch */
        for (int64_t i = 0; i < ct_loader_num_batches(l); i++) {
            CT_SCOPE {
                ck_assert(ct_loader_next(l, &b));
                total += b.size;
                ck_assert_int_eq(b.x->shape[0], b.size); /* 32, 32, 32, then a partial 4 */
            }
        }
        ck_assert_int_eq(total, 100);
    }
    ck_assert_int_eq(ct_stats_get().mallocs, m1);
    ct_loader_free(l);
    ct_sampler_free(s);
    ct_dataset_free(&ds);
}
END_TEST

/* ---- sampler ------------------------------------------------------------------------------- */

/* All ranks' shards for one epoch, concatenated rank by rank into out; returns the total. */
static int64_t all_shards(int64_t n, int W, ct_shard_mode mode, bool shuffle, uint64_t seed,
                          uint64_t epoch, int64_t *out, int64_t *sizes) {
    int64_t total = 0;
    for (int r = 0; r < W; r++) {
        ct_sampler *s;
        ct_sampler_opts o = {.n = n, .world = W, .rank = r, .mode = mode, .shuffle = shuffle,
                             .seed = seed};
        ck_assert_int_eq(ct_sampler_new(&s, &o), CT_OK);
        sizes[r] = ct_sampler_size(s);
        ck_assert_int_eq(sizes[r], ct_shard_size(n, W, r, mode));
        memcpy(out + total, ct_sampler_epoch(s, epoch), sizes[r] * sizeof *out);
        total += sizes[r];
        ct_sampler_free(s);
    }
    return total;
}

START_TEST(sampler_permutation) {
    /* the documented contract: Fisher-Yates with ct_rng_below from seed * 1000003 + epoch */
    int64_t p[1000], q[1000];
    ct_permutation(1000, 42, 3, p);
    ct_rng r;
    ct_rng_seed(&r, 42 * 1000003ULL + 3);
    for (int i = 0; i < 1000; i++) q[i] = i;
    for (int i = 999; i > 0; i--) {
        int j = (int)ct_rng_below(&r, i + 1);
        int64_t t = q[i];
        q[i] = q[j];
        q[j] = t;
    }
    ck_assert_mem_eq(p, q, sizeof p);
    /* a permutation, different for another epoch, the same when recomputed */
    int seen[1000] = {0};
    for (int i = 0; i < 1000; i++) seen[p[i]]++;
    for (int i = 0; i < 1000; i++) ck_assert_int_eq(seen[i], 1);
    ct_permutation(1000, 42, 4, q);
    ck_assert(memcmp(p, q, sizeof p) != 0);
    ct_permutation(1000, 42, 3, q);
    ck_assert_mem_eq(p, q, sizeof p);
}
END_TEST

START_TEST(sampler_drop) {
    int64_t out[1003], sizes[3], perm[1003];
    for (uint64_t epoch = 0; epoch < 2; epoch++) {
        int64_t total = all_shards(1003, 3, CT_SHARD_DROP, true, 9, epoch, out, sizes);
        ck_assert_int_eq(total, 1002);
        for (int r = 0; r < 3; r++) ck_assert_int_eq(sizes[r], 334);
        /* every rank deals from the same permutation: rank r has positions r, r+3, ... */
        ct_permutation(1003, 9, epoch, perm);
        int seen[1003] = {0};
        for (int r = 0; r < 3; r++)
            for (int i = 0; i < 334; i++) {
                ck_assert_int_eq(out[r * 334 + i], perm[r + 3 * i]);
                seen[out[r * 334 + i]]++;
            }
        /* disjoint, and only the permutation's last element is dropped */
        for (int i = 0; i < 1003; i++) ck_assert_int_eq(seen[i], i == perm[1002] ? 0 : 1);
    }
    /* a different epoch gives rank 0 a different shard */
    int64_t e0[1003], s0[3];
    all_shards(1003, 3, CT_SHARD_DROP, true, 9, 0, e0, s0);
    all_shards(1003, 3, CT_SHARD_DROP, true, 9, 1, out, sizes);
    ck_assert(memcmp(e0, out, 334 * sizeof *out) != 0);
}
END_TEST

START_TEST(sampler_pad) {
    int64_t out[1005], sizes[3], perm[1003];
    int64_t total = all_shards(1003, 3, CT_SHARD_PAD, true, 9, 5, out, sizes);
    ck_assert_int_eq(total, 1005);
    for (int r = 0; r < 3; r++) ck_assert_int_eq(sizes[r], 335);
    ct_permutation(1003, 9, 5, perm);
    int seen[1003] = {0};
    for (int i = 0; i < 1005; i++) seen[out[i]]++;
    /* everything once, except the padding: the permutation's first two, seen twice */
    for (int i = 0; i < 1003; i++)
        ck_assert_int_eq(seen[i], i == perm[0] || i == perm[1] ? 2 : 1);
    /* without shuffle: torch.utils.data.DistributedSampler(range(10), num_replicas=3,
     * rank=r, shuffle=False) gives [0,3,6,9], [1,4,7,0], [2,5,8,1]; drop_last=True gives
     * [0,3,6], [1,4,7], [2,5,8] */
    int64_t want_pad[12] = {0, 3, 6, 9, 1, 4, 7, 0, 2, 5, 8, 1};
    ck_assert_int_eq(all_shards(10, 3, CT_SHARD_PAD, false, 0, 0, out, sizes), 12);
    ck_assert_mem_eq(out, want_pad, sizeof want_pad);
    int64_t want_drop[9] = {0, 3, 6, 1, 4, 7, 2, 5, 8};
    ck_assert_int_eq(all_shards(10, 3, CT_SHARD_DROP, false, 0, 0, out, sizes), 9);
    ck_assert_mem_eq(out, want_drop, sizeof want_drop);
    /* fewer samples than ranks: padding wraps more than once (torch gives rank 2 of 3
     * over 2 samples [0]) */
    ck_assert_int_eq(all_shards(2, 3, CT_SHARD_PAD, false, 0, 0, out, sizes), 3);
    ck_assert_int_eq(out[2], 0);
    ck_assert_int_eq(all_shards(2, 3, CT_SHARD_DROP, true, 0, 0, out, sizes), 0);
}
END_TEST

START_TEST(sampler_exact) {
    static int64_t out[10000];
    int64_t sizes[3];
    int W = _i + 1;
    for (uint64_t epoch = 0; epoch < 2; epoch++) {
        int64_t total = all_shards(10000, W, CT_SHARD_EXACT, false, 5, epoch, out, sizes);
        ck_assert_int_eq(total, 10000);
        /* rank by rank the shards are contiguous and together are 0..n-1 in order */
        for (int64_t i = 0; i < 10000; i++) ck_assert_int_eq(out[i], i);
        int64_t lo = sizes[0], hi = sizes[0];
        for (int r = 0; r < W; r++) {
            if (sizes[r] < lo) lo = sizes[r];
            if (sizes[r] > hi) hi = sizes[r];
        }
        ck_assert_int_le(hi - lo, 1);
    }
    /* max batches: the largest shard (10000, 5000, 3334) over batch 128, the same on
     * every rank, including those whose shard needs fewer */
    int64_t want[3] = {79, 40, 27};
    for (int r = 0; r < W; r++) {
        ct_sampler *s;
        ct_sampler_opts o = {.n = 10000, .world = W, .rank = r, .mode = CT_SHARD_EXACT};
        ck_assert_int_eq(ct_sampler_new(&s, &o), CT_OK);
        ck_assert_int_eq(ct_sampler_max_batches(s, 128), want[_i]);
        ck_assert_int_eq(ct_sampler_max_batches(s, 1), sizes[0]);
        ct_sampler_free(s);
    }
}
END_TEST

START_TEST(sampler_errors) {
    ct_sampler *s;
    EXPECT_ERROR(ct_sampler_new(&s, &(ct_sampler_opts){.n = 10, .world = 2, .rank = 2}),
                 CT_ERR_ARG, "rank 2");
    EXPECT_ERROR(ct_sampler_new(&s, &(ct_sampler_opts){.n = 10, .world = 0}), CT_ERR_ARG,
                 "world 0");
    EXPECT_ERROR(ct_sampler_new(&s, &(ct_sampler_opts){.n = 10, .world = 1,
                                                       .mode = CT_SHARD_EXACT, .shuffle = 1}),
                 CT_ERR_ARG, "exact");
}
END_TEST

static void loader_bad_index(void) {
    ct_dataset ds;
    make_dataset(&ds, 5);
    ct_loader *l;
    ct_loader_opts o = ct_loader_opts_default(2);
    ck_assert_int_eq(ct_loader_new(&l, &ds, &o), CT_OK);
    ct_loader_start(l, (int64_t[]){0, 5}, 2);
}

START_TEST(loader_index_out_of_range_aborts) { loader_bad_index(); }
END_TEST

int main(void) {
    Suite *s = suite_create("data");
    TCase *real = tcase_create("fashion_mnist");
    tcase_set_timeout(real, 120); /* decompressing 30 MB is slow under the sanitizers */
    tcase_add_loop_test(real, fashion_mnist_loads, 0, 2);
    tcase_add_test(real, loader_pixels_match_float);
    suite_add_tcase(s, real);

    TCase *files = tcase_create("files");
    tcase_add_checked_fixture(files, tmp_setup, tmp_teardown);
    tcase_set_timeout(files, 60);
    tcase_add_loop_test(files, idx_small_split_values, 0, 2);
    tcase_add_test(files, idx_missing_files);
    tcase_add_loop_test(files, idx_wrong_magic, 0, 2);
    tcase_add_loop_test(files, idx_truncated_images, 0, 2);
    tcase_add_loop_test(files, idx_truncated_labels, 0, 2);
    tcase_add_loop_test(files, idx_trailing_bytes, 0, 2);
    tcase_add_loop_test(files, idx_count_mismatch, 0, 2);
    tcase_add_loop_test(files, idx_unsupported_dims, 0, 2);
    tcase_add_test(files, idx_corrupt_gzip);
    tcase_add_loop_test(files, npy_round_trip, 0, 3);
    tcase_add_test(files, npy_version2_header);
    tcase_add_test(files, npy_fortran_rejected);
    tcase_add_loop_test(files, npy_bad_headers, 0, 15);
    tcase_add_test(files, npy_not_npy);
    tcase_add_test(files, dataset_from_npy);
    suite_add_tcase(s, files);

    TCase *mem = tcase_create("dataset_loader_sampler");
    tcase_set_timeout(mem, 60);
    tcase_add_test(mem, dataset_keep_classes);
    tcase_add_test(mem, dataset_few_shot);
    tcase_add_test(mem, dataset_pixels_filters);
    tcase_add_test(mem, dataset_transform_pixels);
    tcase_add_test_raise_signal(mem, dataset_sample_out_of_range_aborts, SIGABRT);
    tcase_add_test(mem, loader_covers_indices);
    tcase_add_test(mem, loader_normalises);
    tcase_add_test(mem, loader_flip_mirrors);
    tcase_add_test(mem, loader_crop_shifts);
    tcase_add_test(mem, loader_same_seed_same_batches);
    tcase_add_test(mem, loader_no_mallocs_second_epoch);
    tcase_add_test(mem, sampler_permutation);
    tcase_add_test(mem, sampler_drop);
    tcase_add_test(mem, sampler_pad);
    tcase_add_loop_test(mem, sampler_exact, 0, 3);
    tcase_add_test(mem, sampler_errors);
    tcase_add_test_raise_signal(mem, loader_index_out_of_range_aborts, SIGABRT);
    suite_add_tcase(s, mem);
    return ct_test_run(s);
}
