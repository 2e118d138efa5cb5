/* io layer: safetensors round trips, byte-for-byte agreement with the PyTorch conversion
 * script, validation of corrupt files, atomic writes and checkpoints. */
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

/* A safetensors file from a JSON header (padded to 8) and n bytes of data. */
static void write_st(const char *path, const char *json, const void *data, size_t n) {
    size_t hl = strlen(json), padded = (hl + 7) / 8 * 8;
    unsigned char *buf = calloc(1, 8 + padded + n + 1);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    memcpy(buf + 8, json, hl);
    memset(buf + 8 + hl, ' ', padded - hl);
    if (n) memcpy(buf + 8 + padded, data, n);
    ct_test_write_file(path, buf, 8 + padded + n);
    free(buf);
}

/* ---- safetensors ---------------------------------------------------------------------------- */

START_TEST(st_round_trip) {
    ct_test_make_tmpdir();
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
    const char *path = ct_test_path("rt.safetensors");
    ck_assert_int_eq(ct_st_save(path, in, 5, meta, 2), CT_OK);
    ck_assert_int_eq(ct_test_count_files(), 1); /* no temporary left behind */

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
    unsigned char *raw = (unsigned char *)ct_test_read_file(path, &n);
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
    ct_test_remove_tmpdir();
}
END_TEST

START_TEST(st_empty_metadata) {
    ct_test_make_tmpdir();
    double d[2] = {1.5, -2.25};
    ct_st_entry e = {"d", CT_DTYPE_F64, 1, {2}, d};
    const char *path = ct_test_path("m.safetensors");
    ck_assert_int_eq(ct_st_save(path, &e, 1, NULL, 0), CT_OK);
    char *raw = ct_test_read_file(path, NULL);
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
    ct_test_remove_tmpdir();
}
END_TEST

START_TEST(st_tensor_helpers) {
    ct_test_make_tmpdir();
    const char *path = ct_test_path("t.safetensors");
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
        ct_test_expect_error(ct_st_copy_f32(f, "w", ct_zeros(CT_SHAPE(4))), CT_ERR_SHAPE, path, "'w'",
                     "[2, 2]", "[4]", NULL);
        ct_test_expect_error(ct_st_copy_f32(f, "steps", s2), CT_ERR_SHAPE, path, "I64", NULL);
        ct_test_expect_error(ct_st_copy_f32(f, "nope", s2), CT_ERR_SHAPE, path, "'nope'", NULL);
        ct_st_free(f);
    }
    ct_test_remove_tmpdir();
}
END_TEST

START_TEST(st_save_rejects_bad_entries) {
    ct_test_make_tmpdir();
    const char *path = ct_test_path("keep.safetensors");
    ct_test_write_file(path, "old", 3);
    float x = 1;
    ct_st_entry dup[] = {{"a", CT_DTYPE_F32, 0, {0}, &x}, {"a", CT_DTYPE_F32, 0, {0}, &x}};
    ct_test_expect_error(ct_st_save(path, dup, 2, NULL, 0), CT_ERR_ARG, path, "'a'", NULL);
    ct_st_entry bad_dtype = {"b", (ct_dtype)99, 0, {0}, &x};
    ct_test_expect_error(ct_st_save(path, &bad_dtype, 1, NULL, 0), CT_ERR_ARG, path, "dtype", NULL);
    ct_st_entry no_data = {"c", CT_DTYPE_F32, 1, {3}, NULL};
    ct_test_expect_error(ct_st_save(path, &no_data, 1, NULL, 0), CT_ERR_ARG, path, "'c'", NULL);
    ct_st_entry neg = {"d", CT_DTYPE_F32, 1, {-1}, &x};
    ct_test_expect_error(ct_st_save(path, &neg, 1, NULL, 0), CT_ERR_ARG, path, "'d'", NULL);
    ct_st_entry reserved = {"__metadata__", CT_DTYPE_F32, 0, {0}, &x};
    ct_test_expect_error(ct_st_save(path, &reserved, 1, NULL, 0), CT_ERR_ARG, path, NULL);
    ct_st_entry bad_utf8[] = {{"ok", CT_DTYPE_F32, 0, {0}, &x}, {"\xff", CT_DTYPE_F32, 0, {0}, &x}};
    ct_test_expect_error(ct_st_save(path, bad_utf8, 2, NULL, 0), CT_ERR_ARG, path, "UTF-8", NULL);
    ct_st_meta m[] = {{"k", "1"}, {"k", "2"}};
    ct_test_expect_error(ct_st_save(path, &dup[0], 1, m, 2), CT_ERR_ARG, path, "'k'", NULL);
    char *raw = ct_test_read_file(path, NULL);
    ck_assert_str_eq(raw, "old");
    free(raw);
    ck_assert_int_eq(ct_test_count_files(), 1);
    ct_test_remove_tmpdir();
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
    /* the tensors must tile the data section exactly: no trailing bytes, no holes */
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8, CT_ERR_FORMAT,
     "end at byte 4 of the 8-byte data section"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
     "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}", 12, CT_ERR_FORMAT,
     "bytes [4, 8) of the data section, before tensor 'b', belong to no tensor"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, CT_ERR_FORMAT,
     "bytes [0, 4) of the data section, before tensor 'a'"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}", 4, CT_ERR_FORMAT,
     "end at byte 0 of the 4-byte data section"},
};

START_TEST(st_corrupt_files) {
    ct_test_make_tmpdir();
    char name[32];
    snprintf(name, sizeof name, "corrupt%d.safetensors", _i);
    const char *path = ct_test_path(name);
    unsigned char zeros[16] = {0};
    write_st(path, corrupt[_i].json, zeros, corrupt[_i].data_len);
    ct_st_file *f = (ct_st_file *)1;
    ct_test_expect_error(ct_st_load(path, &f), corrupt[_i].want, path, corrupt[_i].what, NULL);
    ck_assert_ptr_null(f);
    ct_test_remove_tmpdir();
}
END_TEST

START_TEST(st_bad_sizes) {
    ct_test_make_tmpdir();
    ct_st_file *f;
    const char *path = ct_test_path("short.safetensors");
    ct_test_write_file(path, "\x10\0\0\0\0", 5);
    ct_test_expect_error(ct_st_load(path, &f), CT_ERR_FORMAT, path, "too short", NULL);

    unsigned char huge[16] = {0, 0, 0, 0, 0, 0, 0, 0x10, '{', '}'};
    path = ct_test_path("huge.safetensors");
    ct_test_write_file(path, huge, sizeof huge);
    ct_test_expect_error(ct_st_load(path, &f), CT_ERR_FORMAT, path, "exceeds the file size", NULL);

    /* a valid file cut short: the last tensor's offsets now point past the end */
    float x[4] = {1, 2, 3, 4};
    ct_st_entry e = {"x", CT_DTYPE_F32, 1, {4}, x};
    path = ct_test_path("cut.safetensors");
    ck_assert_int_eq(ct_st_save(path, &e, 1, NULL, 0), CT_OK);
    size_t n;
    char *raw = ct_test_read_file(path, &n);
    ct_test_write_file(path, raw, n - 3);
    free(raw);
    ct_test_expect_error(ct_st_load(path, &f), CT_ERR_FORMAT, path, "'x'", "past the end", NULL);

    /* A header length 4 short: the header's last 4 padding spaces fall into the data
     * section and every tensor would be read 4 bytes early. */
    const char json[] = "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}    ";
    unsigned char buf[8 + sizeof json - 1 + 4] = {sizeof json - 1 - 4};
    memcpy(buf + 8, json, sizeof json - 1);
    path = ct_test_path("short_header.safetensors");
    ct_test_write_file(path, buf, sizeof buf);
    ct_test_expect_error(ct_st_load(path, &f), CT_ERR_FORMAT, path, "the tensors end at byte 4 of the 8-byte data section",
                 "wrong header length", NULL);
    buf[0] += 4; /* the right length reads */
    ct_test_write_file(path, buf, sizeof buf);
    ck_assert_msg(ct_st_load(path, &f) == CT_OK, "%s", ct_last_error());
    ct_st_free(f);

    path = ct_test_path("missing.safetensors");
    ct_test_expect_error(ct_st_load(path, &f), CT_ERR_IO, path, NULL);
    ct_test_expect_error(ct_st_load(ct_test_tmpdir, &f), CT_ERR_IO, ct_test_tmpdir, "not a regular file", NULL);
    ct_test_remove_tmpdir();
}
END_TEST

START_TEST(st_order_and_misalignment) {
    /* other writers may list ranges out of order or misalign them: both readable */
    ct_test_make_tmpdir();
    const char *path = ct_test_path("odd.safetensors");
    unsigned char data[13] = {7};
    float a = 1.25f, b[2] = {-2, 3.5f};
    memcpy(data + 1, &a, 4); /* misaligned F32 */
    memcpy(data + 5, b, 8);
    write_st(path,
             "{\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[5,13]},"
             "\"a\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[1,5]},"
             "\"u\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}",
             data, sizeof data);
    ct_st_file *f;
    ck_assert_msg(ct_st_load(path, &f) == CT_OK, "%s", ct_last_error());
    ck_assert_str_eq(ct_st_at(f, 0)->name, "b");
    const float *pa = ct_st_find(f, "a")->data, *pb = ct_st_find(f, "b")->data;
    ck_assert_uint_eq((uintptr_t)pa % 4, 0);
    ck_assert_float_eq(pa[0], 1.25f);
    ck_assert_float_eq(pb[0], -2);
    ck_assert_float_eq(pb[1], 3.5f);
    ck_assert_int_eq(*(const unsigned char *)ct_st_find(f, "u")->data, 7);
    ct_st_free(f);
    ct_test_remove_tmpdir();
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
    ct_test_make_tmpdir();
    const char *gen = ct_test_path("gen.py"), *check = ct_test_path("check.py"), *pt = ct_test_path("ref.pt");
    const char *py_st = ct_test_path("py.safetensors"), *c_st = ct_test_path("c.safetensors");
    ct_test_write_file(gen, gen_py, strlen(gen_py));
    ct_test_write_file(check, check_py, strlen(check_py));
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
    char *a = ct_test_read_file(py_st, &n1), *b = ct_test_read_file(c_st, &n2);
    ck_assert_uint_eq(n1, n2);
    ck_assert_mem_eq(a, b, n1);
    free(a);
    free(b);

    /* and the reverse script turns the C file back into the original state_dict */
    const char *back_pt = ct_test_path("back.pt");
    ck_assert_int_eq(run(PY " %s %s %s 2>/dev/null", back, c_st, back_pt), 0);
    ck_assert_int_eq(run(PY " %s %s %s", check, pt, back_pt), 0);

    /* both scripts fail loudly on bad input and leave no output */
    ct_test_write_file(ct_test_path("junk.pt"), "junk", 4);
    ck_assert_int_ne(run(PY " %s %s %s 2>/dev/null", script, ct_test_path("junk.pt"), ct_test_path("o.st")), 0);
    ck_assert_int_ne(run(PY " %s %s %s 2>/dev/null", back, ct_test_path("junk.pt"), ct_test_path("o.pt")), 0);
    ck_assert_int_ne(access(ct_test_path("o.st"), F_OK), 0);
    ck_assert_int_ne(access(ct_test_path("o.pt"), F_OK), 0);
    ct_test_remove_tmpdir();
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
    const char *tmp = ct_test_path("ctrain.safetensors");
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
    ct_test_make_tmpdir();
    ct_module *src = small_model(1), *dst = small_model(2);
    ct_module_find(src, "1.running_mean")->data[2] = 0.5f;
    ct_nn_as_batchnorm(src->children[1])->num_batches_tracked = 42;
    ct_rng before = ct_nn_as_dropout(dst->children[2])->rng;
    ck_assert(memcmp(&before, &ct_nn_as_dropout(src->children[2])->rng, sizeof before) != 0);
    const char *path = ct_test_path("export.safetensors");
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
    ck_assert_int_eq(ct_ckpt_save(ct_test_path("c.safetensors"), src, NULL, &p), CT_OK);
    ck_assert_int_eq(ct_st_load(ct_test_path("c.safetensors"), &f), CT_OK);
    ck_assert_int_eq(ct_ckpt_load_model(f, dst, true, NULL), CT_OK);
    ck_assert_mem_eq(&ct_nn_as_dropout(dst->children[2])->rng, &ct_nn_as_dropout(src->children[2])->rng, sizeof before);
    ct_st_free(f);

    /* a missing or an unexpected state_dict entry is still a strict error, naming only it */
    write_torch_export(path, src, "3.bias", NULL);
    ck_assert_int_eq(ct_st_load(path, &f), CT_OK);
    ct_test_expect_error(ct_ckpt_load_model(f, dst, true, NULL), CT_ERR_SHAPE, path,
                 "missing from the checkpoint: 3.bias", NULL);
    ck_assert_ptr_null(strstr(ct_last_error(), "rng"));
    ck_assert_int_eq(ct_ckpt_load_model(f, dst, false, NULL), CT_OK); /* non-strict: fine */
    ct_st_free(f);
    write_torch_export(path, src, NULL, "4.weight");
    ck_assert_int_eq(ct_st_load(path, &f), CT_OK);
    ct_test_expect_error(ct_ckpt_load_model(f, dst, true, NULL), CT_ERR_SHAPE,
                 "unexpected in the checkpoint: 4.weight", NULL);
    ct_st_free(f);
    ct_module_free(src);
    ct_module_free(dst);
    ct_module_free(fresh);
    ct_module_free(ref);
    ct_test_remove_tmpdir();
}
END_TEST

/* ---- atomic writes -------------------------------------------------------------------------- */

static ct_status write_then_fail(FILE *f, void *ctx) {
    (void)ctx;
    fputs("half of the new content", f);
    return ct_error(CT_ERR_IO, "simulated failure");
}

START_TEST(atomic_write) {
    ct_test_make_tmpdir();
    const char *path = ct_test_path("file.txt");
    ck_assert_int_eq(ct_write_file_atomic(path, "old", 3), CT_OK);
    ck_assert_int_eq(ct_write_file_atomic(path, "new!", 4), CT_OK);
    char *raw = ct_test_read_file(path, NULL);
    ck_assert_str_eq(raw, "new!");
    free(raw);
    ck_assert_int_eq(ct_test_count_files(), 1);

    /* a writer that fails halfway: the old file stays, the temporary goes */
    ct_test_expect_error(ct_write_atomic(path, write_then_fail, NULL), CT_ERR_IO, path,
                 "simulated failure", NULL);
    raw = ct_test_read_file(path, NULL);
    ck_assert_str_eq(raw, "new!");
    free(raw);
    ck_assert_int_eq(ct_test_count_files(), 1);

    /* a directory that does not exist */
    const char *nodir = ct_test_path("no/such/dir/file.txt");
    ct_test_expect_error(ct_write_file_atomic(nodir, "x", 1), CT_ERR_IO, nodir, NULL);
    ck_assert_int_eq(ct_test_count_files(), 1);

    /* the target is a directory: the rename fails, the directory survives, no temporary */
    const char *dir = ct_test_path("adir");
    ck_assert_int_eq(mkdir(dir, 0700), 0);
    ct_test_expect_error(ct_write_file_atomic(dir, "x", 1), CT_ERR_IO, dir, "rename", NULL);
    struct stat sb;
    ck_assert_int_eq(stat(dir, &sb), 0);
    ck_assert(S_ISDIR(sb.st_mode));
    ck_assert_int_eq(ct_test_count_files(), 2);

    /* a directory we may not write to (root may write anywhere, so only as a user) */
    if (geteuid() != 0) {
        ck_assert_int_eq(chmod(ct_test_tmpdir, 0500), 0);
        ct_test_expect_error(ct_write_file_atomic(path, "y", 1), CT_ERR_IO, path, NULL);
        ck_assert_int_eq(chmod(ct_test_tmpdir, 0700), 0);
        raw = ct_test_read_file(path, NULL);
        ck_assert_str_eq(raw, "new!");
        free(raw);
    } else {
        printf("test_io: running as root, skipping the read-only directory case\n");
    }
    ck_assert_int_eq(ct_test_count_files(), 2);
    ct_test_remove_tmpdir();
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
    tcase_add_test(st, st_order_and_misalignment);
    tcase_add_test(st, atomic_write);
    tcase_add_test(st, ckpt_torch_export_loads_strict);
    tcase_add_unchecked_fixture(st, ct_test_dir_setup, ct_test_dir_teardown);
    suite_add_tcase(s, st);
    TCase *py = tcase_create("torch");
    tcase_set_timeout(py, 120); /* three python processes importing torch */
    tcase_add_test(py, st_matches_torch_script);
    tcase_add_unchecked_fixture(py, ct_test_dir_setup, ct_test_dir_teardown);
    suite_add_tcase(s, py);
    return ct_test_run(s);
}
