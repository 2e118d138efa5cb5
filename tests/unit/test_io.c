/* io layer: safetensors round trips, byte-for-byte agreement with the PyTorch conversion
 * script, validation of corrupt files, atomic writes, and the INI config. */
#include <dirent.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/io.h"
#include "util.h"

#define PY "/usr/bin/python3"

/* ---- helpers -------------------------------------------------------------------------------- */

/* Each TCase gets a base directory, made and removed by the parent process (an unchecked
 * fixture), so it is cleaned up even when a test fails; each test works in its own fresh
 * subdirectory `tmpdir` of it. */
static char basedir[64], tmpdir[128];

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

static int make_writable(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)ftw;
    if (flag == FTW_D || flag == FTW_DNR) chmod(p, sb->st_mode | 0700);
    return 0;
}

static void rm_tree(const char *dir) {
    nftw(dir, make_writable, 16, FTW_PHYS);
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void base_setup(void) {
    strcpy(basedir, "/tmp/ct_io_test.XXXXXX");
    if (!mkdtemp(basedir)) ct_fatal("test_io: mkdtemp failed");
}

static void base_teardown(void) { rm_tree(basedir); }

static void make_tmpdir(void) {
    snprintf(tmpdir, sizeof tmpdir, "%s/t.XXXXXX", basedir);
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void remove_tmpdir(void) { rm_tree(tmpdir); }

/* tmpdir/name in a static ring of buffers, so a test can hold several at once. */
static const char *tpath(const char *name) {
    static char bufs[8][512];
    static int next;
    char *b = bufs[next++ % 8];
    snprintf(b, 512, "%s/%s", tmpdir, name);
    return b;
}

static void write_raw(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(data, 1, n, f), n);
    fclose(f);
}

/* The whole file, NUL-terminated (free it); *n gets its size. */
static char *read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)len + 1);
    ck_assert_uint_eq(fread(buf, 1, (size_t)len, f), (size_t)len);
    buf[len] = '\0';
    fclose(f);
    if (n) *n = (size_t)len;
    return buf;
}

/* Number of directory entries in tmpdir other than . and .. */
static int count_files(void) {
    DIR *d = opendir(tmpdir);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    return n;
}

/* Asserts st == want and that ct_last_error() contains every string of the NULL-terminated
 * list (CT_TEST_SHOW_ERRORS=1 prints each message, to review them). */
static void expect_error(ct_status st, ct_status want, ...) {
    ck_assert_msg(st == want, "status %d, expected %d (message: %s)", st, want, ct_last_error());
    if (getenv("CT_TEST_SHOW_ERRORS")) fprintf(stderr, "expected error: %s\n", ct_last_error());
    va_list ap;
    va_start(ap, want);
    for (const char *s; (s = va_arg(ap, const char *));)
        ck_assert_msg(strstr(ct_last_error(), s), "message \"%s\" lacks \"%s\"", ct_last_error(),
                      s);
    va_end(ap);
}

/* A safetensors file from a JSON header (padded to 8) and n bytes of data. */
static void write_st(const char *path, const char *json, const void *data, size_t n) {
    size_t hl = strlen(json), padded = (hl + 7) / 8 * 8;
    unsigned char *buf = calloc(1, 8 + padded + n + 1);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    memcpy(buf + 8, json, hl);
    memset(buf + 8 + hl, ' ', padded - hl);
    if (n) memcpy(buf + 8 + padded, data, n);
    write_raw(path, buf, 8 + padded + n);
    free(buf);
}

/* ---- safetensors ---------------------------------------------------------------------------- */

START_TEST(st_round_trip) {
    make_tmpdir();
    float f3[2 * 3 * 4];
    for (int i = 0; i < 24; i++) f3[i] = 0.5f * (float)i - 3.25f;
    int64_t i64[5] = {0, -1, (int64_t)1 << 40, INT64_MIN, INT64_MAX};
    uint8_t u8[7] = {0, 1, 2, 127, 128, 254, 255};
    float scalar = 42.5f;
    ct_st_entry in[] = {
        {"layer.weight", CT_DTYPE_F32, 3, {2, 3, 4}, f3},
        {"u8", CT_DTYPE_U8, 1, {7}, u8},
        {"bn.num_batches_tracked", CT_DTYPE_I64, 1, {5}, i64},
        {"scalar", CT_DTYPE_F32, 0, {0}, &scalar},
        {"empty", CT_DTYPE_F32, 2, {0, 3}, NULL},
    };
    ct_st_meta meta[] = {{"format", "pt"}, {"note", "a b=c"}};
    const char *path = tpath("rt.safetensors");
    ck_assert_int_eq(ct_st_save(path, in, 5, meta, 2), CT_OK);
    ck_assert_int_eq(count_files(), 1); /* no temporary left behind */

    ct_st_file *f;
    ck_assert_msg(ct_st_load(path, &f) == CT_OK, "%s", ct_last_error());
    ck_assert_str_eq(ct_st_path(f), path);
    ck_assert_int_eq(ct_st_count(f), 5);
    for (int i = 0; i < 5; i++) {
        const ct_st_entry *e = ct_st_at(f, i);
        ck_assert_str_eq(e->name, in[i].name); /* header order is the caller's order */
        ck_assert_int_eq(e->dtype, in[i].dtype);
        ck_assert_int_eq(e->ndim, in[i].ndim);
        for (int d = 0; d < e->ndim; d++) ck_assert_int_eq(e->shape[d], in[i].shape[d]);
        ck_assert_uint_eq(ct_st_nbytes(e), ct_st_nbytes(&in[i]));
        if (ct_st_nbytes(e)) ck_assert_mem_eq(e->data, in[i].data, ct_st_nbytes(e));
        ck_assert_uint_eq((uintptr_t)e->data % ct_dtype_size(e->dtype), 0);
        ck_assert_ptr_eq(ct_st_find(f, in[i].name), e);
    }
    ck_assert_int_eq(ct_st_numel(ct_st_find(f, "scalar")), 1);
    ck_assert_int_eq(ct_st_numel(ct_st_find(f, "empty")), 0);
    ck_assert_ptr_null(ct_st_find(f, "missing"));
    ck_assert_int_eq(ct_st_meta_count(f), 2);
    ck_assert_str_eq(ct_st_meta_get(f, "format"), "pt");
    ck_assert_str_eq(ct_st_meta_get(f, "note"), "a b=c");
    ck_assert_str_eq(ct_st_meta_at(f, 1).key, "note");
    ck_assert_ptr_null(ct_st_meta_get(f, "absent"));
    ct_st_free(f);

    /* the bytes themselves: padded header, then I64 data first (largest element) */
    size_t n;
    unsigned char *raw = (unsigned char *)read_all(path, &n);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | raw[i];
    ck_assert_uint_eq(hl % 8, 0);
    ck_assert_uint_eq(n, 8 + hl + sizeof i64 + sizeof f3 + sizeof scalar + sizeof u8);
    ck_assert_int_eq(raw[8], '{');
    size_t end = 8 + hl;
    while (raw[end - 1] == ' ') end--;
    ck_assert_int_eq(raw[end - 1], '}');
    ck_assert_uint_lt(hl - (end - 8), 8);
    ck_assert_mem_eq(raw + 8 + hl, i64, sizeof i64);
    ck_assert_mem_eq(raw + 8 + hl + sizeof i64, f3, sizeof f3);
    ck_assert_ptr_nonnull(strstr((char *)raw + 8,
                                 "\"bn.num_batches_tracked\":{\"dtype\":\"I64\",\"shape\":[5],"
                                 "\"data_offsets\":[0,40]}"));
    ck_assert_ptr_nonnull(strstr((char *)raw + 8, "\"scalar\":{\"dtype\":\"F32\",\"shape\":[],"));
    free(raw);
    remove_tmpdir();
}
END_TEST

START_TEST(st_empty_metadata) {
    make_tmpdir();
    double d[2] = {1.5, -2.25};
    ct_st_entry e = {"d", CT_DTYPE_F64, 1, {2}, d};
    const char *path = tpath("m.safetensors");
    ck_assert_int_eq(ct_st_save(path, &e, 1, NULL, 0), CT_OK);
    char *raw = read_all(path, NULL);
    ck_assert_ptr_null(strstr(raw + 8, "__metadata__"));
    free(raw);
    ct_st_file *f;
    ck_assert_int_eq(ct_st_load(path, &f), CT_OK);
    ck_assert_int_eq(ct_st_meta_count(f), 0);
    ck_assert_ptr_null(ct_st_meta_get(f, "format"));
    ck_assert_mem_eq(ct_st_at(f, 0)->data, d, sizeof d);
    ct_st_free(f);

    /* an empty file: no tensors at all */
    ck_assert_int_eq(ct_st_save(path, NULL, 0, NULL, 0), CT_OK);
    ck_assert_int_eq(ct_st_load(path, &f), CT_OK);
    ck_assert_int_eq(ct_st_count(f), 0);
    ct_st_free(f);
    remove_tmpdir();
}
END_TEST

START_TEST(st_tensor_helpers) {
    make_tmpdir();
    const char *path = tpath("t.safetensors");
    CT_SCOPE {
        ct_tensor *w = ct_from_data(CT_SHAPE(2, 2), (float[]){1, 2, 3, 4});
        ct_tensor *s = ct_full(0, NULL, 7);
        int64_t steps = 3;
        ct_st_entry e[] = {ct_st_from_tensor("w", w), ct_st_from_tensor("s", s),
                           {"steps", CT_DTYPE_I64, 0, {0}, &steps}};
        ck_assert_int_eq(ct_st_save(path, e, 3, NULL, 0), CT_OK);
        ct_st_file *f;
        ck_assert_int_eq(ct_st_load(path, &f), CT_OK);
        ct_tensor *w2 = ct_zeros(CT_SHAPE(2, 2)), *s2 = ct_zeros(0, NULL);
        ck_assert_int_eq(ct_st_copy_f32(f, "w", w2), CT_OK);
        ck_assert_int_eq(ct_st_copy_f32(f, "s", s2), CT_OK);
        for (int i = 0; i < 4; i++) ck_assert_float_eq(w2->data[i], (float)(i + 1));
        ck_assert_float_eq(s2->data[0], 7);
        expect_error(ct_st_copy_f32(f, "w", ct_zeros(CT_SHAPE(4))), CT_ERR_SHAPE, path, "'w'",
                     "[2, 2]", "[4]", NULL);
        expect_error(ct_st_copy_f32(f, "steps", s2), CT_ERR_SHAPE, path, "I64", NULL);
        expect_error(ct_st_copy_f32(f, "nope", s2), CT_ERR_SHAPE, path, "'nope'", NULL);
        ct_st_free(f);
    }
    remove_tmpdir();
}
END_TEST

START_TEST(st_save_rejects_bad_entries) {
    make_tmpdir();
    const char *path = tpath("keep.safetensors");
    write_raw(path, "old", 3);
    float x = 1;
    ct_st_entry dup[] = {{"a", CT_DTYPE_F32, 0, {0}, &x}, {"a", CT_DTYPE_F32, 0, {0}, &x}};
    expect_error(ct_st_save(path, dup, 2, NULL, 0), CT_ERR_ARG, path, "'a'", NULL);
    ct_st_entry bad_dtype = {"b", (ct_dtype)99, 0, {0}, &x};
    expect_error(ct_st_save(path, &bad_dtype, 1, NULL, 0), CT_ERR_ARG, path, "dtype", NULL);
    ct_st_entry no_data = {"c", CT_DTYPE_F32, 1, {3}, NULL};
    expect_error(ct_st_save(path, &no_data, 1, NULL, 0), CT_ERR_ARG, path, "'c'", NULL);
    ct_st_entry neg = {"d", CT_DTYPE_F32, 1, {-1}, &x};
    expect_error(ct_st_save(path, &neg, 1, NULL, 0), CT_ERR_ARG, path, "'d'", NULL);
    ct_st_entry reserved = {"__metadata__", CT_DTYPE_F32, 0, {0}, &x};
    expect_error(ct_st_save(path, &reserved, 1, NULL, 0), CT_ERR_ARG, path, NULL);
    ct_st_entry bad_utf8[] = {{"ok", CT_DTYPE_F32, 0, {0}, &x}, {"\xff", CT_DTYPE_F32, 0, {0}, &x}};
    expect_error(ct_st_save(path, bad_utf8, 2, NULL, 0), CT_ERR_ARG, path, "UTF-8", NULL);
    ct_st_meta m[] = {{"k", "1"}, {"k", "2"}};
    expect_error(ct_st_save(path, &dup[0], 1, m, 2), CT_ERR_ARG, path, "'k'", NULL);
    char *raw = read_all(path, NULL);
    ck_assert_str_eq(raw, "old");
    free(raw);
    ck_assert_int_eq(count_files(), 1);
    remove_tmpdir();
}
END_TEST

/* Files that must be rejected: each message names the file and the problem. */
static const struct {
    const char *json; /* NULL: raw bytes below */
    size_t data_len;
    ct_status want;
    const char *what;
} corrupt[] = {
    {"{\"a\":", 0, CT_ERR_FORMAT, "invalid JSON"},
    {"[1,2]", 0, CT_ERR_FORMAT, "not an object"},
    {"{\"a\":{\"dtype\":\"F31\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, CT_ERR_FORMAT,
     "unknown dtype \"F31\""},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4, CT_ERR_FORMAT,
     "past the end"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, CT_ERR_FORMAT,
     "needs 12 bytes"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
     "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, CT_ERR_FORMAT,
     "overlap"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", 8, CT_ERR_FORMAT,
     "begin <= end"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,0]}}", 0, CT_ERR_FORMAT,
     "shape"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, CT_ERR_FORMAT, "data_offsets"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
     "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, CT_ERR_FORMAT,
     "invalid JSON"},
    {"{\"__metadata__\":{\"k\":1}}", 0, CT_ERR_FORMAT, "__metadata__"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4,
     CT_ERR_FORMAT, "7 dims"},
};

START_TEST(st_corrupt_files) {
    make_tmpdir();
    char name[32];
    snprintf(name, sizeof name, "corrupt%d.safetensors", _i);
    const char *path = tpath(name);
    unsigned char zeros[16] = {0};
    write_st(path, corrupt[_i].json, zeros, corrupt[_i].data_len);
    ct_st_file *f = (ct_st_file *)1;
    expect_error(ct_st_load(path, &f), corrupt[_i].want, path, corrupt[_i].what, NULL);
    ck_assert_ptr_null(f);
    remove_tmpdir();
}
END_TEST

START_TEST(st_bad_sizes) {
    make_tmpdir();
    ct_st_file *f;
    const char *path = tpath("short.safetensors");
    write_raw(path, "\x10\0\0\0\0", 5);
    expect_error(ct_st_load(path, &f), CT_ERR_FORMAT, path, "too short", NULL);

    unsigned char huge[16] = {0, 0, 0, 0, 0, 0, 0, 0x10, '{', '}'};
    path = tpath("huge.safetensors");
    write_raw(path, huge, sizeof huge);
    expect_error(ct_st_load(path, &f), CT_ERR_FORMAT, path, "exceeds the file size", NULL);

    /* a valid file cut short: the last tensor's offsets now point past the end */
    float x[4] = {1, 2, 3, 4};
    ct_st_entry e = {"x", CT_DTYPE_F32, 1, {4}, x};
    path = tpath("cut.safetensors");
    ck_assert_int_eq(ct_st_save(path, &e, 1, NULL, 0), CT_OK);
    size_t n;
    char *raw = read_all(path, &n);
    write_raw(path, raw, n - 3);
    free(raw);
    expect_error(ct_st_load(path, &f), CT_ERR_FORMAT, path, "'x'", "past the end", NULL);

    path = tpath("missing.safetensors");
    expect_error(ct_st_load(path, &f), CT_ERR_IO, path, NULL);
    expect_error(ct_st_load(tmpdir, &f), CT_ERR_IO, tmpdir, "not a regular file", NULL);
    remove_tmpdir();
}
END_TEST

START_TEST(st_gaps_and_misalignment) {
    /* other writers may leave gaps, list ranges out of order, or misalign: all readable */
    make_tmpdir();
    const char *path = tpath("odd.safetensors");
    unsigned char data[32] = {0};
    float a = 1.25f, b[2] = {-2, 3.5f};
    memcpy(data + 1, &a, 4);     /* misaligned F32 */
    memcpy(data + 16, b, 8);     /* after a gap */
    write_st(path,
             "{\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[16,24]},"
             "\"a\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[1,5]}}",
             data, sizeof data);
    ct_st_file *f;
    ck_assert_msg(ct_st_load(path, &f) == CT_OK, "%s", ct_last_error());
    ck_assert_str_eq(ct_st_at(f, 0)->name, "b");
    const float *pa = ct_st_find(f, "a")->data, *pb = ct_st_find(f, "b")->data;
    ck_assert_uint_eq((uintptr_t)pa % 4, 0);
    ck_assert_float_eq(pa[0], 1.25f);
    ck_assert_float_eq(pb[0], -2);
    ck_assert_float_eq(pb[1], 3.5f);
    ct_st_free(f);
    remove_tmpdir();
}
END_TEST

/* ---- agreement with scripts/torch_to_safetensors.py ---------------------------------------- */

static const char gen_py[] =
    "import sys, torch\n"
    "from collections import OrderedDict\n"
    "bn = torch.nn.BatchNorm1d(3)\n"
    "with torch.no_grad():\n"
    "    bn.weight.copy_(torch.tensor([1.0, 2.0, 3.0]))\n"
    "    bn.bias.copy_(torch.tensor([-0.5, 0.0, 0.5]))\n"
    "    bn.running_mean.copy_(torch.tensor([0.25, 0.5, 0.75]))\n"
    "    bn.num_batches_tracked.fill_(7)\n"
    "sd = OrderedDict()\n"
    "sd['fc.weight'] = torch.arange(6, dtype=torch.float32).reshape(2, 3) / 4\n"
    "for k, v in bn.state_dict().items(): sd['bn.' + k] = v\n"
    "sd['mask'] = torch.tensor([1, 0, 255], dtype=torch.uint8)\n"
    "sd['ids'] = torch.tensor([[-3, 1 << 40]], dtype=torch.int64)\n"
    "torch.save({'epoch': 3, 'state_dict': sd}, sys.argv[1])\n";

static const char check_py[] =
    "import sys, torch\n"
    "a = torch.load(sys.argv[1])['state_dict']\n"
    "b = torch.load(sys.argv[2])\n"
    "assert list(a) == list(b), (list(a), list(b))\n"
    "for k in a:\n"
    "    assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k\n";

static int run(const char *fmt, ...) {
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    return system(cmd);
}

START_TEST(st_matches_torch_script) {
    if (run(PY " -c 'import torch' >/dev/null 2>&1") != 0) {
        printf("test_io: skipping the PyTorch comparison: " PY " cannot import torch\n");
        return;
    }
    const char *script = "scripts/torch_to_safetensors.py", *back = "scripts/safetensors_to_torch.py";
    ck_assert_msg(access(script, R_OK) == 0, "%s not found: run from the repository root", script);
    make_tmpdir();
    const char *gen = tpath("gen.py"), *check = tpath("check.py"), *pt = tpath("ref.pt");
    const char *py_st = tpath("py.safetensors"), *c_st = tpath("c.safetensors");
    write_raw(gen, gen_py, strlen(gen_py));
    write_raw(check, check_py, strlen(check_py));
    ck_assert_int_eq(run(PY " %s %s", gen, pt), 0);
    ck_assert_int_eq(run(PY " %s %s %s", script, pt, py_st), 0);

    /* C reads what the script wrote: names in state_dict order, dtypes, shapes, values */
    ct_st_file *f;
    ck_assert_msg(ct_st_load(py_st, &f) == CT_OK, "%s", ct_last_error());
    static const char *names[] = {"fc.weight", "bn.weight", "bn.bias", "bn.running_mean",
                                  "bn.running_var", "bn.num_batches_tracked", "mask", "ids"};
    ck_assert_int_eq(ct_st_count(f), 8);
    for (int i = 0; i < 8; i++) ck_assert_str_eq(ct_st_at(f, i)->name, names[i]);
    ck_assert_str_eq(ct_st_meta_get(f, "format"), "pt");
    const ct_st_entry *w = ct_st_find(f, "fc.weight");
    ck_assert_int_eq(w->ndim, 2);
    ck_assert_int_eq(w->shape[1], 3);
    for (int i = 0; i < 6; i++) ck_assert_float_eq(((const float *)w->data)[i], i / 4.0f);
    const ct_st_entry *nbt = ct_st_find(f, "bn.num_batches_tracked");
    ck_assert_int_eq(nbt->dtype, CT_DTYPE_I64);
    ck_assert_int_eq(nbt->ndim, 0);
    ck_assert_int_eq(*(const int64_t *)nbt->data, 7);
    const ct_st_entry *ids = ct_st_find(f, "ids");
    ck_assert_int_eq(((const int64_t *)ids->data)[1], (int64_t)1 << 40);
    ck_assert_int_eq(((const int64_t *)ids->data)[0], -3);
    ck_assert_int_eq(ct_st_find(f, "mask")->dtype, CT_DTYPE_U8);
    ck_assert_int_eq(((const uint8_t *)ct_st_find(f, "mask")->data)[2], 255);
    ck_assert_float_eq(((const float *)ct_st_find(f, "bn.running_var")->data)[2], 1.0f);

    /* C writes the same tensors and metadata: the files are identical byte for byte */
    ct_st_entry e[8];
    for (int i = 0; i < 8; i++) e[i] = *ct_st_at(f, i);
    ct_st_meta meta = {"format", "pt"};
    ck_assert_int_eq(ct_st_save(c_st, e, 8, &meta, 1), CT_OK);
    ct_st_free(f);
    size_t n1, n2;
    char *a = read_all(py_st, &n1), *b = read_all(c_st, &n2);
    ck_assert_uint_eq(n1, n2);
    ck_assert_mem_eq(a, b, n1);
    free(a);
    free(b);

    /* and the reverse script turns the C file back into the original state_dict */
    const char *back_pt = tpath("back.pt");
    ck_assert_int_eq(run(PY " %s %s %s 2>/dev/null", back, c_st, back_pt), 0);
    ck_assert_int_eq(run(PY " %s %s %s", check, pt, back_pt), 0);

    /* both scripts fail loudly on bad input and leave no output */
    write_raw(tpath("junk.pt"), "junk", 4);
    ck_assert_int_ne(run(PY " %s %s %s 2>/dev/null", script, tpath("junk.pt"), tpath("o.st")), 0);
    ck_assert_int_ne(run(PY " %s %s %s 2>/dev/null", back, tpath("junk.pt"), tpath("o.pt")), 0);
    ck_assert_int_ne(access(tpath("o.st"), F_OK), 0);
    ck_assert_int_ne(access(tpath("o.pt"), F_OK), 0);
    remove_tmpdir();
}
END_TEST

/* ---- checkpoints ----------------------------------------------------------------------------- */

/* Linear, BatchNorm1d, Dropout, Linear: parameters, buffers, num_batches_tracked and a dropout
 * stream ("rng.2"), like the built-in CNN's head and backbone in small. */
static ct_module *small_model(uint64_t seed) {
    ct_rng r;
    ct_rng_seed(&r, seed);
    ct_module *m = ct_nn_sequential();
    ct_seq_add(m, NULL, ct_nn_linear(3, 4, true, &r));
    ct_seq_add(m, NULL, ct_nn_batchnorm1d(4));
    ct_seq_add(m, NULL, ct_nn_dropout(0.5f, ct_rng_next(&r)));
    ct_seq_add(m, NULL, ct_nn_linear(4, 2, true, &r));
    return m;
}

/* What scripts/torch_to_safetensors.py makes of the same model's state_dict: the entries of
 * a ctrain checkpoint of src minus its own extras (rng.*), minus `drop` if given, plus an
 * entry named `extra` if given. */
static void write_torch_export(const char *path, ct_module *src, const char *drop, const char *extra) {
    const char *tmp = tpath("ctrain.safetensors");
    ct_progress p = {.epoch = 1, .world = 1};
    ck_assert_int_eq(ct_ckpt_save(tmp, src, NULL, &p), CT_OK);
    ct_st_file *f;
    ck_assert_int_eq(ct_st_load(tmp, &f), CT_OK);
    ct_st_entry e[16];
    int n = 0;
    for (int i = 0; i < ct_st_count(f); i++) {
        const ct_st_entry *x = ct_st_at(f, i);
        if (strncmp(x->name, "rng.", 4) && !(drop && !strcmp(x->name, drop))) e[n++] = *x;
    }
    float one = 1;
    if (extra) e[n++] = (ct_st_entry){.name = extra, .dtype = CT_DTYPE_F32, .data = &one};
    ct_st_meta meta = {"format", "pt"};
    ck_assert_int_eq(ct_st_save(path, e, n, &meta, 1), CT_OK);
    ct_st_free(f);
}

static void assert_same_tensor(ct_module *a, ct_module *b, const char *name, bool same) {
    ct_tensor *x = ct_module_find(a, name), *y = ct_module_find(b, name);
    ck_assert_msg(x && y, "%s", name);
    bool eq = memcmp(x->data, y->data, (size_t)x->numel * sizeof(float)) == 0;
    ck_assert_msg(eq == same, "%s: expected the tensors to be %s", name, same ? "equal" : "different");
}

/* A PyTorch state_dict has no dropout streams: it must still load strict (`ctrain eval` of a
 * torch export, init_from with init_strict = true), keeping the model's own streams, while a
 * real state_dict mismatch still fails strict. */
START_TEST(ckpt_torch_export_loads_strict) {
    make_tmpdir();
    ct_module *src = small_model(1), *dst = small_model(2);
    ct_module_find(src, "1.running_mean")->data[2] = 0.5f;
    ct_nn_as_batchnorm(src->children[1])->num_batches_tracked = 42;
    ct_rng before = ct_nn_as_dropout(dst->children[2])->rng;
    ck_assert(memcmp(&before, &ct_nn_as_dropout(src->children[2])->rng, sizeof before) != 0);
    const char *path = tpath("export.safetensors");
    write_torch_export(path, src, NULL, NULL);
    ct_st_file *f;
    ck_assert_int_eq(ct_st_load(path, &f), CT_OK);
    char *rep = (char *)"unset";
    ck_assert_msg(ct_ckpt_load_model(f, dst, true, &rep) == CT_OK, "%s", ct_last_error());
    ck_assert_ptr_null(rep); /* nothing to report: rng.2 is not missing from a state_dict */
    static const char *names[] = {"0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                                  "1.running_var", "3.weight", "3.bias"};
    for (int i = 0; i < 8; i++) assert_same_tensor(src, dst, names[i], true);
    ck_assert_int_eq(ct_nn_as_batchnorm(dst->children[1])->num_batches_tracked, 42);
    ck_assert_mem_eq(&ct_nn_as_dropout(dst->children[2])->rng, &before, sizeof before); /* its own stream kept */
    ct_st_free(f);

    /* strict with a fresh head: every other entry must match, the head stays as it was */
    ct_module *fresh = small_model(3), *ref = small_model(3);
    ck_assert_int_eq(ct_st_load(path, &f), CT_OK);
    ck_assert_msg(ct_ckpt_load_model_except(f, fresh, true, "3.*", &rep) == CT_OK, "%s", ct_last_error());
    ck_assert_msg(rep && strstr(rep, "excluded: 3.weight") && !strstr(rep, "rng"), "%s", rep);
    free(rep);
    assert_same_tensor(src, fresh, "0.weight", true);
    assert_same_tensor(ref, fresh, "3.weight", true);
    assert_same_tensor(src, fresh, "3.weight", false);
    ct_st_free(f);

    /* a ctrain checkpoint's streams are still restored */
    ct_progress p = {.epoch = 1, .world = 1};
    ck_assert_int_eq(ct_ckpt_save(tpath("c.safetensors"), src, NULL, &p), CT_OK);
    ck_assert_int_eq(ct_st_load(tpath("c.safetensors"), &f), CT_OK);
    ck_assert_int_eq(ct_ckpt_load_model(f, dst, true, NULL), CT_OK);
    ck_assert_mem_eq(&ct_nn_as_dropout(dst->children[2])->rng, &ct_nn_as_dropout(src->children[2])->rng, sizeof before);
    ct_st_free(f);

    /* a missing or an unexpected state_dict entry is still a strict error, naming only it */
    write_torch_export(path, src, "3.bias", NULL);
    ck_assert_int_eq(ct_st_load(path, &f), CT_OK);
    expect_error(ct_ckpt_load_model(f, dst, true, NULL), CT_ERR_SHAPE, path,
                 "missing from the checkpoint: 3.bias", NULL);
    ck_assert_ptr_null(strstr(ct_last_error(), "rng"));
    ck_assert_int_eq(ct_ckpt_load_model(f, dst, false, NULL), CT_OK); /* non-strict: fine */
    ct_st_free(f);
    write_torch_export(path, src, NULL, "4.weight");
    ck_assert_int_eq(ct_st_load(path, &f), CT_OK);
    expect_error(ct_ckpt_load_model(f, dst, true, NULL), CT_ERR_SHAPE,
                 "unexpected in the checkpoint: 4.weight", NULL);
    ct_st_free(f);
    ct_module_free(src);
    ct_module_free(dst);
    ct_module_free(fresh);
    ct_module_free(ref);
    remove_tmpdir();
}
END_TEST

/* ---- atomic writes -------------------------------------------------------------------------- */

static ct_status write_then_fail(FILE *f, void *ctx) {
    (void)ctx;
    fputs("half of the new content", f);
    return ct_error(CT_ERR_IO, "simulated failure");
}

START_TEST(atomic_write) {
    make_tmpdir();
    const char *path = tpath("file.txt");
    ck_assert_int_eq(ct_write_file_atomic(path, "old", 3), CT_OK);
    ck_assert_int_eq(ct_write_file_atomic(path, "new!", 4), CT_OK);
    char *raw = read_all(path, NULL);
    ck_assert_str_eq(raw, "new!");
    free(raw);
    ck_assert_int_eq(count_files(), 1);

    /* a writer that fails halfway: the old file stays, the temporary goes */
    expect_error(ct_write_atomic(path, write_then_fail, NULL), CT_ERR_IO, path,
                 "simulated failure", NULL);
    raw = read_all(path, NULL);
    ck_assert_str_eq(raw, "new!");
    free(raw);
    ck_assert_int_eq(count_files(), 1);

    /* a directory that does not exist */
    const char *nodir = tpath("no/such/dir/file.txt");
    expect_error(ct_write_file_atomic(nodir, "x", 1), CT_ERR_IO, nodir, NULL);
    ck_assert_int_eq(count_files(), 1);

    /* the target is a directory: the rename fails, the directory survives, no temporary */
    const char *dir = tpath("adir");
    ck_assert_int_eq(mkdir(dir, 0700), 0);
    expect_error(ct_write_file_atomic(dir, "x", 1), CT_ERR_IO, dir, "rename", NULL);
    struct stat sb;
    ck_assert_int_eq(stat(dir, &sb), 0);
    ck_assert(S_ISDIR(sb.st_mode));
    ck_assert_int_eq(count_files(), 2);

    /* a directory we may not write to (root may write anywhere, so only as a user) */
    if (geteuid() != 0) {
        ck_assert_int_eq(chmod(tmpdir, 0500), 0);
        expect_error(ct_write_file_atomic(path, "y", 1), CT_ERR_IO, path, NULL);
        ck_assert_int_eq(chmod(tmpdir, 0700), 0);
        raw = read_all(path, NULL);
        ck_assert_str_eq(raw, "new!");
        free(raw);
    } else {
        printf("test_io: running as root, skipping the read-only directory case\n");
    }
    ck_assert_int_eq(count_files(), 2);
    remove_tmpdir();
}
END_TEST

/* ---- config --------------------------------------------------------------------------------- */

static const char *write_ini(const char *name, const char *text) {
    const char *path = tpath(name);
    write_raw(path, text, strlen(text));
    return path;
}

START_TEST(config_defaults) {
    ct_config c;
    ct_config_defaults(&c);
    ck_assert_str_eq(c.data.dir, "/usr/share/datasets/fashion-mnist");
    ck_assert_int_eq(c.data.format, CT_CFG_FORMAT_IDX);
    ck_assert_double_eq(c.data.mean, 0.2860);
    ck_assert_double_eq(c.data.std, 0.3530);
    ck_assert_int_eq(c.data.augment, CT_CFG_AUGMENT_NONE);
    ck_assert_int_eq(c.data.crop_pad, 2);
    ck_assert_str_eq(c.data.classes, "all");
    ck_assert_int_eq(c.data.per_class, 0);
    ck_assert_int_eq(c.model.name, CT_CFG_MODEL_MLP);
    ck_assert(!c.model.init_strict);
    ck_assert(c.model.bn_eval_when_frozen);
    ck_assert_double_eq(c.model.dropout, 0.25);
    /* the ResNets' keys */
    ck_assert_int_eq(c.model.in_channels, 3);
    ck_assert_int_eq(c.model.num_classes, 0);
    ck_assert_int_eq(c.model.stem, CT_CFG_STEM_IMAGENET);
    ck_assert_int_eq(ct_config_apply_overrides(&c, "model.name=resnet50 model.stem=small model.num_classes=data"),
                     CT_OK);
    ck_assert_int_eq(c.model.name, CT_CFG_MODEL_RESNET50);
    ck_assert_int_eq(c.model.stem, CT_CFG_STEM_SMALL);
    expect_error(ct_config_apply_overrides(&c, "model.stem=tiny"), CT_ERR_CONFIG, "model.stem", NULL);
    expect_error(ct_config_apply_overrides(&c, "model.in_channels=0"), CT_ERR_CONFIG, "model.in_channels", NULL);
    ct_config_defaults(&c);
    ck_assert_int_eq(c.train.epochs, 10);
    ck_assert_int_eq(c.train.batch_size, 64);
    ck_assert_uint_eq(c.train.seed, 0);
    ck_assert(!c.train.resume);
    ck_assert_int_eq(c.train.log_every, 100);
    ck_assert(c.train.drop_last);
    ck_assert_int_eq(c.train.eval_batch_size, 1000);
    ck_assert_int_eq(c.train.unfreeze_after, 0);
    ck_assert_double_eq(c.train.unfreeze_lr_scale, 0.1);
    ck_assert_int_eq(c.train.feature_cache, CT_CFG_CACHE_AUTO);
    ck_assert_int_eq(c.optim.name, CT_CFG_OPTIM_ADAM);
    ck_assert_double_eq(c.optim.lr, 1e-3);
    ck_assert_double_eq(c.optim.momentum, 0.9);
    ck_assert(!c.optim.nesterov);
    ck_assert_double_eq(c.optim.weight_decay, 0);
    ck_assert_double_eq(c.optim.beta2, 0.999);
    ck_assert_double_eq(c.optim.eps, 1e-8);
    ck_assert_int_eq(c.schedule.name, CT_CFG_SCHED_NONE);
    ck_assert_int_eq(c.schedule.step_size, 5);
    ck_assert_double_eq(c.schedule.gamma, 0.1);
    ck_assert_str_eq(c.output.dir, "runs/default");
    ck_assert_int_eq(c.output.checkpoint_every, 1);
    ck_assert_int_eq(c.output.keep, 0);
    ck_assert_int_eq(c.dist.buffers, CT_CFG_BUFFERS_AVERAGE);
    ck_assert_double_eq(c.dist.bucket_mb, 25);
    ck_assert_double_eq(c.dist.first_bucket_mb, 1);
    ck_assert_int_eq(c.dist.shard, CT_CFG_SHARD_DROP);
    ck_assert_int_eq(c.sweep.group_size, 1);
    char buf[64];
    ck_assert_int_eq(ct_config_get(&c, "output.keep", buf, sizeof buf), CT_OK);
    ck_assert_str_eq(buf, "all");
    ck_assert_int_eq(ct_config_get(&c, "optim.lr", buf, sizeof buf), CT_OK);
    ck_assert_str_eq(buf, "0.001");
    ck_assert_int_eq(ct_config_get(&c, "optim.name", buf, sizeof buf), CT_OK);
    ck_assert_str_eq(buf, "adam");
    expect_error(ct_config_get(&c, "optim.nope", buf, sizeof buf), CT_ERR_CONFIG, "optim.nope",
                 NULL);
    expect_error(ct_config_get(&c, "data.dir", buf, 4), CT_ERR_ARG, "data.dir", NULL);
}
END_TEST

START_TEST(config_file_and_overrides) {
    make_tmpdir();
    const char *path = write_ini("run.ini",
                                 "; a comment\n"
                                 "[data]\n"
                                 "augment = crop_flip\n"
                                 "classes = 0-4\n"
                                 "[model]\n"
                                 "name = cnn\n"
                                 "layers = conv:32:3,relu,linear:10\n"
                                 "freeze = backbone.*\n"
                                 "init_strict = yes\n"
                                 "[train]\n"
                                 "epochs = 3\n"
                                 "batch_size = 32   ; inline comment\n"
                                 "seed = 18446744073709551615\n"
                                 "[optim]\n"
                                 "name = sgd\n"
                                 "lr = 0.05\n"
                                 "nesterov = 1\n"
                                 "[dist]\n"
                                 "buffers = broadcast\n");
    ct_config c;
    char *over[] = {"train.epochs=7", "optim.lr = 0.2", "resume=true", "dist.shard=pad"};
    ck_assert_msg(ct_config_load(&c, path, 4, over) == CT_OK, "%s", ct_last_error());
    ck_assert_int_eq(c.data.augment, CT_CFG_AUGMENT_CROP_FLIP);
    ck_assert_str_eq(c.data.classes, "0-4");
    ck_assert_int_eq(c.model.name, CT_CFG_MODEL_CNN);
    ck_assert_str_eq(c.model.layers, "conv:32:3,relu,linear:10");
    ck_assert_str_eq(c.model.freeze, "backbone.*");
    ck_assert(c.model.init_strict);
    ck_assert_int_eq(c.train.batch_size, 32);
    ck_assert_uint_eq(c.train.seed, UINT64_MAX);
    ck_assert_int_eq(c.optim.name, CT_CFG_OPTIM_SGD);
    ck_assert(c.optim.nesterov);
    ck_assert_int_eq(c.dist.buffers, CT_CFG_BUFFERS_BROADCAST);
    /* overrides win over the file */
    ck_assert_int_eq(c.train.epochs, 7);
    ck_assert_double_eq(c.optim.lr, 0.2);
    ck_assert(c.train.resume);
    ck_assert_int_eq(c.dist.shard, CT_CFG_SHARD_PAD);
    /* untouched keys keep their defaults */
    ck_assert_int_eq(c.train.eval_batch_size, 1000);
    ck_assert_double_eq(c.optim.momentum, 0.9);
    remove_tmpdir();
}
END_TEST

/* One bad line in an otherwise valid file: the message names file, line, key and reason. */
static const struct {
    const char *text;
    const char *want[3];
} bad_ini[] = {
    {"[train]\nepochs = 3\nepoch = 4\n", {":3:", "train.epoch", "epochs"}},
    {"[trian]\nepochs = 3\n", {":2:", "[trian]", "sections:"}},
    {"[optim]\n\nlr = 1e-3x\n", {":3:", "optim.lr", "not a finite number"}},
    {"[optim]\nlr = -1\n", {":2:", "optim.lr", "> 0"}},
    {"[optim]\nlr = nan\n", {":2:", "optim.lr", "finite"}},
    {"[train]\nbatch_size = 0\n", {":2:", "train.batch_size", ">= 1"}},
    {"[train]\nbatch_size = 12.5\n", {":2:", "train.batch_size", "not an integer"}},
    {"[train]\nbatch_size = 99999999999\n", {":2:", "train.batch_size", "<= 2147483647"}},
    {"[model]\ndropout = 1\n", {":2:", "model.dropout", "[0, 1)"}},
    {"[optim]\nname = rmsprop\n", {":2:", "optim.name", "sgd|adam|adamw"}},
    {"[optim]\nnesterov = maybe\n", {":2:", "optim.nesterov", "true/false"}},
    {"[train]\nseed = -1\n", {":2:", "train.seed", "not an integer"}},
    {"[data]\nclasses = 3-1\n", {":2:", "data.classes", "low <= high"}},
    {"[data]\nclasses = 0,x\n", {":2:", "data.classes", "'all'"}},
    {"[train]\nepochs = 3\n\n[train]\nepochs = 4\n", {":5:", "train.epochs", "line 2"}},
    {"epochs = 3\n", {":1:", "epochs", "outside any [section]"}},
    {"[data]\nformat = idx\n[model\nname = cnn\n", {":3:", "syntax error", NULL}},
};

START_TEST(config_file_errors) {
    make_tmpdir();
    const char *path = write_ini("bad.ini", bad_ini[_i].text);
    ct_config c, before;
    ct_config_defaults(&c);
    ck_assert_int_eq(ct_config_set(&c, "train.epochs", "42"), CT_OK);
    before = c;
    ct_status st = ct_config_load_file(&c, path);
    expect_error(st, CT_ERR_CONFIG, path, bad_ini[_i].want[0], bad_ini[_i].want[1],
                 bad_ini[_i].want[2], NULL);
    ck_assert_mem_eq(&c, &before, sizeof c); /* nothing applied */
    remove_tmpdir();
}
END_TEST

START_TEST(config_load_errors) {
    make_tmpdir();
    ct_config c;
    const char *missing = tpath("missing.ini");
    expect_error(ct_config_load(&c, missing, 0, NULL), CT_ERR_IO, missing, NULL);

    /* a line longer than inih's buffer is an error, not two lines */
    char text[1024] = "[model]\nlayers = ";
    size_t len = strlen(text);
    memset(text + len, 'a', 600);
    strcpy(text + len + 600, "\n");
    const char *path = write_ini("long.ini", text);
    expect_error(ct_config_load(&c, path, 0, NULL), CT_ERR_CONFIG, path, ":2:", "longer", NULL);

    /* the same checks through load_string name the given origin */
    ct_config_defaults(&c);
    expect_error(ct_config_load_string(&c, "[dist]\nbuffers = sum\n", "inline"), CT_ERR_CONFIG,
                 "inline:2:", "dist.buffers", "broadcast|average|none", NULL);
    ck_assert_int_eq(ct_config_load_string(&c, "[dist]\nbucket_mb = 0.5\n", "inline"), CT_OK);
    ck_assert_double_eq(c.dist.bucket_mb, 0.5);
    remove_tmpdir();
}
END_TEST

START_TEST(config_override_errors) {
    ct_config c;
    ct_config_defaults(&c);
    expect_error(ct_config_override(&c, "optim.lr=abc"), CT_ERR_CONFIG, "command line",
                 "optim.lr", "'abc'", NULL);
    expect_error(ct_config_override(&c, "optim.beta=0.5"), CT_ERR_CONFIG, "command line",
                 "optim.beta", "beta1", NULL);
    expect_error(ct_config_override(&c, "nosuch.key=1"), CT_ERR_CONFIG, "command line",
                 "[nosuch]", NULL);
    expect_error(ct_config_override(&c, "epochs=3"), CT_ERR_CONFIG, "command line",
                 "train.epochs", NULL);
    expect_error(ct_config_override(&c, "train.epochs"), CT_ERR_CONFIG, "command line",
                 "section.key=value", NULL);
    expect_error(ct_config_override(&c, "resume=perhaps"), CT_ERR_CONFIG, "command line",
                 "train.resume", NULL);
    expect_error(ct_config_override(&c, "model.layers=a ;b"), CT_ERR_CONFIG, "model.layers",
                 "comment", NULL);
    ck_assert(!c.train.resume);
    ck_assert_int_eq(ct_config_override(&c, "resume=yes"), CT_OK);
    ck_assert(c.train.resume);
    ck_assert_int_eq(ct_config_override(&c, "train.resume=0"), CT_OK);
    ck_assert(!c.train.resume);
    ck_assert_int_eq(ct_config_override(&c, "output.keep=3"), CT_OK);
    ck_assert_int_eq(c.output.keep, 3);
    ck_assert_int_eq(ct_config_override(&c, "output.keep=all"), CT_OK);
    ck_assert_int_eq(c.output.keep, 0);
    ck_assert_int_eq(ct_config_override(&c, "model.init_from="), CT_OK);
    ck_assert_str_eq(c.model.init_from, "");
    /* ct_config_load stops at the first bad override and says which */
    char *over[] = {"train.epochs=2", "train.batch_size=-4"};
    expect_error(ct_config_load(&c, NULL, 2, over), CT_ERR_CONFIG, "train.batch_size", NULL);
    ck_assert_int_eq(c.train.epochs, 2);
}
END_TEST

START_TEST(config_dump_round_trip) {
    make_tmpdir();
    ct_config a, b;
    char *over[] = {"data.dir=/data/x y", "data.format=npy", "data.train_x=tx.npy",
                    "data.mean=0.1", "data.std=1e-7", "data.classes=1,3,5-7",
                    "data.per_class=5", "model.name=custom", "model.layers=linear:8,relu",
                    "model.init_from=runs/a/ckpt.safetensors", "model.dropout=0.3",
                    "train.seed=12345678901234", "train.unfreeze_after=2",
                    "train.unfreeze=head.*,fc*", "train.unfreeze_lr_scale=0.3333333333333333",
                    "train.feature_cache=off", "optim.name=adamw", "optim.eps=1e-10",
                    "optim.weight_decay=0.01", "schedule.name=cosine", "schedule.min_lr=1e-5",
                    "output.keep=2", "dist.buffers=none", "dist.bucket_mb=0.1",
                    "sweep.checkpoints=runs/*/last.safetensors", "sweep.group_size=2",
                    "sweep.overrides=data.mean=0.3 train.eval_batch_size=100 | model.dropout=0|",
                    "train.drop_last=false"};
    int n = (int)(sizeof over / sizeof over[0]);
    ck_assert_msg(ct_config_load(&a, NULL, n, over) == CT_OK, "%s", ct_last_error());
    /* the longest string value still dumps to a line inih can read back */
    char longest[CT_CFG_STR + 32] = "sweep.checkpoints=";
    size_t len = strlen(longest);
    memset(longest + len, 'c', CT_CFG_STR - 1);
    longest[len + CT_CFG_STR - 1] = '\0';
    ck_assert_msg(ct_config_override(&a, longest) == CT_OK, "%s", ct_last_error());
    strcat(longest, "c");
    expect_error(ct_config_override(&a, longest), CT_ERR_CONFIG, "sweep.checkpoints", "longer",
                 NULL);
    const char *path = tpath("effective.ini");
    ck_assert_int_eq(ct_config_save(&a, path), CT_OK);
    ck_assert_int_eq(count_files(), 1);
    ck_assert_msg(ct_config_load(&b, path, 0, NULL) == CT_OK, "%s", ct_last_error());
    ck_assert_mem_eq(&a, &b, sizeof a);
    ck_assert_double_eq(b.train.unfreeze_lr_scale, 0.3333333333333333);
    ck_assert_str_eq(b.data.dir, "/data/x y");
    char *text = read_all(path, NULL);
    ck_assert_ptr_nonnull(strstr(text, "[optim]\nname = adamw\nlr = 0.001\n"));
    ck_assert_ptr_nonnull(strstr(text, "keep = 2\n"));
    ck_assert_ptr_nonnull(strstr(text, "unfreeze_after = 2\n"));
    free(text);
    /* and the defaults round-trip too */
    ct_config_defaults(&a);
    ck_assert_int_eq(ct_config_save(&a, path), CT_OK);
    ck_assert_int_eq(ct_config_load(&b, path, 0, NULL), CT_OK);
    ck_assert_mem_eq(&a, &b, sizeof a);
    remove_tmpdir();
}
END_TEST

/* sweep.overrides: groups split on '|', each applied all or nothing, checked at load. */
START_TEST(config_sweep_overrides) {
    ct_config c;
    ct_config_defaults(&c);
    char g[CT_CFG_STR];
    ck_assert_str_eq(c.sweep.overrides, "");
    ck_assert(!ct_config_override_group(c.sweep.overrides, 0, g, sizeof g)); /* no groups */
    ck_assert(!ct_config_override_group("  ", 0, g, sizeof g));

    const char *spec = "train.eval_batch_size=500  data.mean=0.3| model.dropout=0.1 |";
    ck_assert_msg(ct_config_set(&c, "sweep.overrides", spec) == CT_OK, "%s", ct_last_error());
    ck_assert_str_eq(c.sweep.overrides, spec);
    ck_assert(ct_config_override_group(spec, 0, g, sizeof g));
    ck_assert_str_eq(g, "train.eval_batch_size=500  data.mean=0.3");
    ck_assert(ct_config_override_group(spec, 1, g, sizeof g));
    ck_assert_str_eq(g, "model.dropout=0.1");
    ck_assert(ct_config_override_group(spec, 2, g, sizeof g)); /* after the trailing '|' */
    ck_assert_str_eq(g, "");
    ck_assert(!ct_config_override_group(spec, 3, g, sizeof g));
    ck_assert(!ct_config_override_group(spec, -1, g, sizeof g));

    ct_config_override_group(spec, 0, g, sizeof g);
    ck_assert_int_eq(ct_config_apply_overrides(&c, g), CT_OK);
    ck_assert_int_eq(c.train.eval_batch_size, 500);
    ck_assert_double_eq(c.data.mean, 0.3);
    ck_assert_double_eq(c.model.dropout, 0.25);
    ct_config before = c;
    ck_assert_int_eq(ct_config_apply_overrides(&c, ""), CT_OK); /* the empty group: no change */
    ck_assert_mem_eq(&c, &before, sizeof c);
    /* all or nothing: the first override would apply, the second is bad */
    expect_error(ct_config_apply_overrides(&c, "train.epochs=3 optim.lr=-1"), CT_ERR_CONFIG,
                 "optim.lr", "> 0", NULL);
    ck_assert_mem_eq(&c, &before, sizeof c);
    expect_error(ct_config_apply_overrides(&c, "sweep.group_size=2"), CT_ERR_CONFIG,
                 "sweep.group_size", "[sweep]", NULL);
    expect_error(ct_config_apply_overrides(&c, "model.dropout"), CT_ERR_CONFIG, "model.dropout",
                 "section.key=value", NULL);

    /* a bad group is a config error when the config loads, naming the group and the key */
    expect_error(ct_config_override(&c, "sweep.overrides=data.mean=0.3 | model.dropout=2"),
                 CT_ERR_CONFIG, "sweep.overrides", "group 2", "model.dropout", "[0, 1)", NULL);
    expect_error(ct_config_override(&c, "sweep.overrides=nosuch.key=1"), CT_ERR_CONFIG,
                 "sweep.overrides", "group 1", "[nosuch]", NULL);
    expect_error(ct_config_override(&c, "sweep.overrides=sweep.out=x"), CT_ERR_CONFIG,
                 "sweep.overrides", "[sweep]", NULL);
    ck_assert_mem_eq(&c, &before, sizeof c);

    /* and from a file, where " ; ..." stays a comment */
    make_tmpdir();
    const char *path = write_ini("sweep.ini", "[sweep]\n"
                                              "overrides = data.classes=0-4 | data.classes=5-9 ; two\n");
    ck_assert_msg(ct_config_load(&c, path, 0, NULL) == CT_OK, "%s", ct_last_error());
    ck_assert_str_eq(c.sweep.overrides, "data.classes=0-4 | data.classes=5-9");
    ck_assert(ct_config_override_group(c.sweep.overrides, 1, g, sizeof g));
    ck_assert_str_eq(g, "data.classes=5-9");
    ck_assert_int_eq(ct_config_apply_overrides(&c, g), CT_OK);
    ck_assert_str_eq(c.data.classes, "5-9");
    path = write_ini("bad.ini", "[sweep]\noverrides = data.classes=0-4 | data.classes=3-1\n");
    expect_error(ct_config_load(&c, path, 0, NULL), CT_ERR_CONFIG, path, ":2:", "group 2",
                 "low <= high", NULL);
    remove_tmpdir();
}
END_TEST

START_TEST(config_classes) {
    bool keep[10];
    ck_assert_int_eq(ct_config_classes("all", 10, keep), CT_OK);
    for (int i = 0; i < 10; i++) ck_assert(keep[i]);
    ck_assert_int_eq(ct_config_classes("1,3, 5-7", 10, keep), CT_OK);
    for (int i = 0; i < 10; i++) ck_assert_int_eq(keep[i], i == 1 || i == 3 || (i >= 5 && i <= 7));
    ck_assert_int_eq(ct_config_classes("0-4", 10, keep), CT_OK);
    for (int i = 0; i < 10; i++) ck_assert_int_eq(keep[i], i <= 4);
    expect_error(ct_config_classes("8-10", 10, keep), CT_ERR_CONFIG, "data.classes", "0..9",
                 NULL);
    expect_error(ct_config_classes("", 10, keep), CT_ERR_CONFIG, "data.classes", NULL);
    expect_error(ct_config_classes("1,", 10, keep), CT_ERR_CONFIG, "data.classes", NULL);
    expect_error(ct_config_classes("-1", 10, keep), CT_ERR_CONFIG, "data.classes", NULL);
}
END_TEST

int main(void) {
    Suite *s = suite_create("io");
    TCase *st = tcase_create("safetensors");
    tcase_add_test(st, st_round_trip);
    tcase_add_test(st, st_empty_metadata);
    tcase_add_test(st, st_tensor_helpers);
    tcase_add_test(st, st_save_rejects_bad_entries);
    tcase_add_loop_test(st, st_corrupt_files, 0, (int)(sizeof corrupt / sizeof corrupt[0]));
    tcase_add_test(st, st_bad_sizes);
    tcase_add_test(st, st_gaps_and_misalignment);
    tcase_add_test(st, atomic_write);
    tcase_add_test(st, ckpt_torch_export_loads_strict);
    tcase_add_unchecked_fixture(st, base_setup, base_teardown);
    suite_add_tcase(s, st);
    TCase *py = tcase_create("torch");
    tcase_set_timeout(py, 120); /* three python processes importing torch */
    tcase_add_test(py, st_matches_torch_script);
    tcase_add_unchecked_fixture(py, base_setup, base_teardown);
    suite_add_tcase(s, py);
    TCase *cf = tcase_create("config");
    tcase_add_test(cf, config_defaults);
    tcase_add_test(cf, config_file_and_overrides);
    tcase_add_loop_test(cf, config_file_errors, 0, (int)(sizeof bad_ini / sizeof bad_ini[0]));
    tcase_add_test(cf, config_load_errors);
    tcase_add_test(cf, config_override_errors);
    tcase_add_test(cf, config_dump_round_trip);
    tcase_add_test(cf, config_classes);
    tcase_add_test(cf, config_sweep_overrides);
    tcase_add_unchecked_fixture(cf, base_setup, base_teardown);
    suite_add_tcase(s, cf);
    return ct_test_run(s);
}
