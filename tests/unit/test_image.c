/* Image decoding against PIL: tests/unit/make_images.py writes JPEG and PNG files of every
 * supported kind together with PIL's convert("L") and convert("RGB") bytes, and every
 * decode must equal them pixel for pixel; broken and unsupported files must be refused with
 * the file named. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>

#include "data/data.h"
#include "util.h"

static char fixdir[64];

/* Runs once per process (an unchecked fixture), before the forked tests. */
static void make_fixtures(void) {
    ct_test_make_fixtures(fixdir, "ct_image", "/usr/bin/python3 tests/unit/make_images.py {}");
}

static void remove_fixtures(void) { ct_test_remove_fixtures(fixdir); }

static FILE *open_manifest(void) {
    char path[256];
    snprintf(path, sizeof path, "%s/manifest.txt", fixdir);
    FILE *m = fopen(path, "r");
    ck_assert_ptr_nonnull(m);
    return m;
}

/* The manifest's next image: its name, path and size; false at the end. */
static bool next_image(FILE *m, char name[64], char path[256], long long *h, long long *w) {
    if (fscanf(m, "%63s %lld %lld", name, h, w) != 3) return false;
    snprintf(path, 256, "%s/%s", fixdir, name);
    return true;
}

/* Every image in the manifest, both channel counts, equals PIL's bytes. */
START_TEST(decode_matches_pil) {
    int channels = _i == 0 ? 1 : 3;
    char path[256], name[64];
    FILE *m = open_manifest();
    long long h, w;
    int count = 0;
    while (next_image(m, name, path, &h, &w)) {
        ct_image im;
        ck_assert_msg(ct_image_read(path, channels, &im) == CT_OK, "%s", ct_last_error());
        ck_assert_int_eq(im.h, h);
        ck_assert_int_eq(im.w, w);
        ck_assert_int_eq(im.c, channels);
        int64_t ih, iw;
        ck_assert_int_eq(ct_image_info(path, &ih, &iw), CT_OK);
        ck_assert(ih == h && iw == w);
        snprintf(path, sizeof path, "%s/%s.%s", fixdir, name, channels == 1 ? "L" : "RGB");
        size_t n;
        uint8_t *want = (uint8_t *)ct_test_read_file(path, &n);
        ck_assert_uint_eq(n, (size_t)(h * w * channels));
        size_t diff = 0, first = 0;
        for (size_t i = n; i-- > 0;)
            if (want[i] != im.px[i]) diff++, first = i;
        ck_assert_msg(diff == 0, "%s (%d channels): %zu of %zu bytes differ from PIL, first at %zu "
                      "(%d vs PIL %d)", name, channels, diff, n, first, im.px[first], want[first]);
        free(want);
        ct_image_free(&im);
        count++;
    }
    fclose(m);
    ck_assert_int_ge(count, 14);
}
END_TEST

static void pick_box(void *ctx, int64_t h, int64_t w, int64_t box[4]) {
    (void)h, (void)w;
    memcpy(box, ctx, 4 * sizeof *box);
}

/* 300 boxes of the h x w image at path, decoded alone (ct_image_read_box), equal the same
 * pixels of its full decode: against every edge first, then random places and sizes. */
static void check_boxes(const char *path, const char *name, int channels, int64_t h, int64_t w, ct_rng *rng) {
    ct_image full;
    ck_assert_msg(ct_image_read(path, channels, &full) == CT_OK, "%s", ct_last_error());
    for (int k = 0; k < 300; k++) {
        int64_t box[4];
        box[2] = 1 + (int64_t)ct_rng_below(rng, (uint64_t)h);
        box[3] = 1 + (int64_t)ct_rng_below(rng, (uint64_t)w);
        box[0] = (int64_t)ct_rng_below(rng, (uint64_t)(h - box[2] + 1));
        box[1] = (int64_t)ct_rng_below(rng, (uint64_t)(w - box[3] + 1));
        if (k < 4) box[0] = k & 1 ? h - box[2] : 0, box[1] = k & 2 ? w - box[3] : 0;
        ct_image im;
        ck_assert_msg(ct_image_read_box(path, channels, pick_box, box, &im) == CT_OK, "%s", ct_last_error());
        ck_assert(im.h == box[2] && im.w == box[3] && im.c == channels);
        for (int64_t y = 0; y < box[2]; y++)
            ck_assert_msg(!memcmp(im.px + y * box[3] * channels, full.px + ((y + box[0]) * w + box[1]) * channels,
                                  (size_t)(box[3] * channels)),
                          "%s (%d channels): box top %lld left %lld h %lld w %lld differs in row %lld", name,
                          channels, (long long)box[0], (long long)box[1], (long long)box[2], (long long)box[3],
                          (long long)y);
        ct_image_free(&im);
    }
    ct_image_free(&full);
}

/* A JPEG decoded only around a box (libjpeg-turbo's cropped and skipped scanlines) gives
 * exactly the full decode's pixels in the box: every JPEG of the manifest (4:2:0, 4:2:2,
 * 4:4:4, progressive, gray), both channel counts. */
START_TEST(decode_box_matches_full_decode) {
    int channels = _i == 0 ? 1 : 3;
    char path[256], name[64];
    FILE *m = open_manifest();
    long long h, w;
    int jpegs = 0;
    ct_rng rng;
    ct_rng_seed(&rng, 5);
    while (next_image(m, name, path, &h, &w)) {
        if (!strstr(name, ".jp")) continue;
        jpegs++;
        check_boxes(path, name, channels, h, w, &rng);
    }
    fclose(m);
    ck_assert_int_ge(jpegs, 10);
}
END_TEST

/* Writes a 75 x 90 RGB JPEG whose luma has h x v sampling (chroma 1 x 1), arithmetic-coded
 * if arith: 4:4:0, 4:1:1 and the like, which PIL cannot write but cameras may, and the box
 * decode must get right too. */
static void write_jpeg(const char *path, int h, int v, bool arith) {
    enum { W = 90, H = 75 };
    struct jpeg_compress_struct ci;
    struct jpeg_error_mgr err;
    ci.err = jpeg_std_error(&err);
    jpeg_create_compress(&ci);
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    jpeg_stdio_dest(&ci, f);
    ci.image_width = W, ci.image_height = H, ci.input_components = 3, ci.in_color_space = JCS_RGB;
    jpeg_set_defaults(&ci);
    jpeg_set_quality(&ci, 90, TRUE);
    ci.comp_info[0].h_samp_factor = h, ci.comp_info[0].v_samp_factor = v;
    ci.arith_code = arith;
    jpeg_start_compress(&ci, TRUE);
    uint8_t row[W * 3];
    for (int y = 0; y < H; y++) {
        for (int x = 0; x < W; x++) /* gradients and a checker, so chroma changes often */
            row[x * 3] = (uint8_t)(x * 2), row[x * 3 + 1] = (uint8_t)(y * 3), row[x * 3 + 2] = ((x ^ y) & 4) ? 200 : 30;
        JSAMPROW r = row;
        jpeg_write_scanlines(&ci, &r, 1);
    }
    jpeg_finish_compress(&ci);
    jpeg_destroy_compress(&ci);
    fclose(f);
}

START_TEST(decode_box_other_samplings) {
    static const struct { int h, v; bool arith; const char *name; } cases[] = {
        {1, 2, false, "440"}, {4, 1, false, "411"}, {4, 2, false, "410"}, {2, 2, true, "420arith"},
    };
    ct_rng rng;
    ct_rng_seed(&rng, 6);
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char path[256];
        snprintf(path, sizeof path, "%s/made_%s.jpg", fixdir, cases[i].name);
        write_jpeg(path, cases[i].h, cases[i].v, cases[i].arith);
        for (int channels = 1; channels <= 3; channels += 2) check_boxes(path, cases[i].name, channels, 75, 90, &rng);
    }
}
END_TEST

/* In memory as from a file. */
START_TEST(decode_from_memory) {
    char path[256];
    snprintf(path, sizeof path, "%s/rgb420.jpg", fixdir);
    size_t n;
    void *buf = ct_test_read_file(path, &n);
    ct_image a, b;
    ck_assert_int_eq(ct_image_decode(buf, n, "mem.jpg", 3, &a), CT_OK);
    ck_assert_int_eq(ct_image_read(path, 3, &b), CT_OK);
    ck_assert_mem_eq(a.px, b.px, (size_t)(a.h * a.w * 3));
    ct_image_free(&a);
    ct_image_free(&b);
    free(buf);
}
END_TEST

/* Broken and unsupported files are errors that name the file and say what is wrong. */
START_TEST(bad_files_refused) {
    static const struct { const char *name, *why; } cases[] = {
        {"truncated.jpg", "truncated"},   {"truncated.png", "PNG"},
        {"text.jpg", "not a JPEG or PNG"}, {"empty.png", "not a JPEG or PNG"},
        {"deep16.png", "16-bit"},          {"corrupt.jpg", "cannot decode JPEG"},
        {"missing.png", "cannot open"},
    };
    char path[256];
    snprintf(path, sizeof path, "%s/%s", fixdir, cases[_i].name);
    ct_image im = {.h = -7};
    ct_status st = ct_image_read(path, 3, &im);
    ck_assert_int_ne(st, CT_OK);
    ck_assert_int_eq(st, _i == 6 ? CT_ERR_IO : CT_ERR_FORMAT);
    ck_assert_msg(strstr(ct_last_error(), path) && strstr(ct_last_error(), cases[_i].why),
                  "message '%s' should name %s and say '%s'", ct_last_error(), path, cases[_i].why);
    ck_assert_int_eq(im.h, -7); /* untouched */
    ck_assert_ptr_null(im.px);
    /* decoding a box of the first pixel only refuses it the same way (a JPEG's rows below
     * the box still go through the entropy decoder) */
    int64_t box[4] = {0, 0, 1, 1};
    ck_assert_int_eq(ct_image_read_box(path, 3, pick_box, box, &im), st);
    ck_assert_msg(strstr(ct_last_error(), path) && strstr(ct_last_error(), cases[_i].why), "box: '%s'",
                  ct_last_error());
    ck_assert_int_eq(im.h, -7);
}
END_TEST

START_TEST(bad_channel_count) {
    char path[256];
    snprintf(path, sizeof path, "%s/rgb.png", fixdir);
    ct_image im;
    ck_assert_int_eq(ct_image_read(path, 2, &im), CT_ERR_ARG);
}
END_TEST

int main(void) {
    Suite *s = suite_create("image");
    TCase *t = tcase_create("decode");
    tcase_add_unchecked_fixture(t, make_fixtures, remove_fixtures);
    tcase_set_timeout(t, 60);
    tcase_add_loop_test(t, decode_matches_pil, 0, 2);
    tcase_add_loop_test(t, decode_box_matches_full_decode, 0, 2);
    tcase_add_test(t, decode_box_other_samplings);
    tcase_add_test(t, decode_from_memory);
    tcase_add_loop_test(t, bad_files_refused, 0, 7);
    tcase_add_test(t, bad_channel_count);
    suite_add_tcase(s, t);
    return ct_test_run(s);
}
