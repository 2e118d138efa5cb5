/* Image transforms against torchvision 0.14 (tests/unit/transform_ref.py): resize, center
 * crop, resized crop and flip pixel for pixel on PIL-decoded images of several kinds and
 * sizes (shrinking and enlarging, odd offsets, crops larger than the image);
 * RandomResizedCrop's parameters from torchvision's own get_params run on ctrain's random
 * stream; and a whole Resize + CenterCrop + ToTensor + Normalize pipeline through a folder
 * data set and the loader, float for float. No tolerance is needed anywhere: PIL's
 * resampling is integer arithmetic that transform.c repeats step by step, and ToTensor +
 * Normalize are the same float32 operations as the loader's table. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/data.h"
#include "util.h"

static char dir[64];

static void make_refs(void) {
    ct_test_make_fixtures(dir, "ct_transform",
                          "/usr/bin/python3 tests/unit/make_images.py {}/img && "
                          "/usr/bin/python3 tests/unit/transform_ref.py {}/img {}/ref");
}

static void remove_refs(void) { ct_test_remove_fixtures(dir); }

START_TEST(ops_match_torchvision) {
    char path[256], image[64], mode[8], op[32];
    snprintf(path, sizeof path, "%s/ref/cases.txt", dir);
    FILE *m = fopen(path, "r");
    ck_assert_ptr_nonnull(m);
    int id, count = 0;
    long long a[5], oh, ow;
    while (fscanf(m, "%d %63s %7s %31s %lld %lld %lld %lld %lld %lld %lld", &id, image, mode, op, &a[0], &a[1],
                  &a[2], &a[3], &a[4], &oh, &ow) == 11) {
        snprintf(path, sizeof path, "%s/img/%s", dir, image);
        ct_image im, out = {0};
        ck_assert_int_eq(ct_image_read(path, strcmp(mode, "L") ? 3 : 1, &im), CT_OK);
        ct_transforms t = {0};
        char spec[64];
        if (!strcmp(op, "resized_crop")) {
            ct_image crop;
            ct_image_crop(&im, a[0], a[1], a[2], a[3], &crop);
            ct_image_resize(&crop, a[4], a[4], &out);
            ct_image_free(&crop);
        } else {
            if (!strcmp(op, "hflip"))
                snprintf(spec, sizeof spec, "random_horizontal_flip");
            else
                snprintf(spec, sizeof spec, "%s:%lld", op, a[0]);
            ck_assert_int_eq(ct_transforms_parse(spec, &t), CT_OK);
            int64_t ph, pw;
            ct_transforms_out_size(&t, im.h, im.w, &ph, &pw);
            ck_assert(ph == oh && pw == ow);
            if (!strcmp(op, "hflip")) {
                ct_image_hflip(&im);
            } else {
                ct_transforms_apply(&t, &im, NULL);
            }
            out = im;
            im = (ct_image){0};
        }
        ck_assert_msg(out.h == oh && out.w == ow, "case %d (%s %s %lld): %lldx%lld, torchvision %lldx%lld", id,
                      image, op, a[0], (long long)out.w, (long long)out.h, ow, oh);
        snprintf(path, sizeof path, "%s/ref/%d.bin", dir, id);
        size_t n;
        uint8_t *want = (uint8_t *)ct_test_read_file(path, &n);
        ck_assert_uint_eq(n, (size_t)(oh * ow * out.c));
        size_t diff = 0, first = 0;
        for (size_t i = n; i-- > 0;)
            if (want[i] != out.px[i]) diff++, first = i;
        ck_assert_msg(diff == 0, "case %d (%s %s %s %lld %lld %lld %lld %lld): %zu of %zu bytes differ, first at "
                      "%zu (%d vs torchvision %d)", id, image, mode, op, a[0], a[1], a[2], a[3], a[4], diff, n,
                      first, out.px[first], want[first]);
        free(want);
        ct_image_free(&out);
        ct_image_free(&im);
        count++;
    }
    fclose(m);
    ck_assert_int_ge(count, 76);
}
END_TEST

START_TEST(rrc_params_match_torchvision) {
    char path[256];
    snprintf(path, sizeof path, "%s/ref/rrc.txt", dir);
    FILE *m = fopen(path, "r");
    ck_assert_ptr_nonnull(m);
    long long H, W, seed, want[4];
    int count = 0, fallback = 0;
    const double scale[2] = {0.08, 1.0}, ratio[2] = {3.0 / 4.0, 4.0 / 3.0};
    while (fscanf(m, "%lld %lld %lld %lld %lld %lld %lld", &H, &W, &seed, &want[0], &want[1], &want[2], &want[3]) ==
           7) {
        ct_rng rng;
        ct_rng_seed(&rng, (uint64_t)seed);
        int64_t got[4];
        ct_rrc_params(H, W, scale, ratio, &rng, got);
        ck_assert_msg(got[0] == want[0] && got[1] == want[1] && got[2] == want[2] && got[3] == want[3],
                      "%lldx%lld seed %lld: (%lld %lld %lld %lld), torchvision (%lld %lld %lld %lld)", W, H, seed,
                      (long long)got[0], (long long)got[1], (long long)got[2], (long long)got[3], want[0],
                      want[1], want[2], want[3]);
        fallback += H == 5 && want[2] == 5; /* the thin images end in the fallback */
        count++;
    }
    fclose(m);
    ck_assert_int_eq(count, 7 * 60);
    ck_assert_int_gt(fallback, 0);
}
END_TEST

/* decode -> resize:40 -> center_crop:32 -> per-channel normalize, through the data set and
 * the loader, equals torchvision's Compose(...) with ToTensor and Normalize. */
START_TEST(pipeline_matches_torchvision) {
    char root[128], cmd[512];
    snprintf(root, sizeof root, "%s/tree", dir);
    snprintf(cmd, sizeof cmd, "mkdir -p %s/c && cp %s/img/rgb420.jpg %s/c/", root, dir, root);
    ck_assert_int_eq(system(cmd), 0);
    ct_dataset ds;
    ck_assert_int_eq(ct_dataset_from_folder(&ds, root, NULL, 3), CT_OK);
    ct_transforms t;
    ck_assert_int_eq(ct_transforms_parse("resize:40,center_crop:32", &t), CT_OK);
    ct_dataset_set_transforms(&ds, &t);
    ck_assert(ds.sample_shape[0] == 3 && ds.sample_shape[1] == 32 && ds.sample_shape[2] == 32);
    ct_loader_opts o = ct_loader_opts_default(1);
    o.norm_channels = 3;
    const float mean[3] = {0.485f, 0.456f, 0.406f}, std[3] = {0.229f, 0.224f, 0.225f};
    memcpy(o.channel_mean, mean, sizeof mean);
    memcpy(o.channel_std, std, sizeof std);
    ct_loader *l;
    ck_assert_int_eq(ct_loader_new(&l, &ds, &o), CT_OK);
    int64_t idx = 0;
    ct_loader_start(l, &idx, 1);
    char path[256];
    snprintf(path, sizeof path, "%s/ref/pipeline.bin", dir);
    size_t n;
    float *want = (float *)(void *)ct_test_read_file(path, &n);
    ck_assert_uint_eq(n, 3 * 32 * 32 * sizeof(float));
    CT_SCOPE {
        ct_batch b;
        ck_assert(ct_loader_next(l, &b));
        for (int i = 0; i < 3 * 32 * 32; i++)
            ck_assert_msg(b.x->data[i] == want[i], "feature %d: %.9g, torchvision %.9g", i, b.x->data[i], want[i]);
    }
    free(want);
    ct_loader_free(l);
    ct_dataset_free(&ds);
}
END_TEST

/* The transform RNG is per sample: a sample's crop and flip do not depend on which other
 * samples came before it in the epoch. */
START_TEST(random_choices_are_per_sample) {
    char root[128], cmd[512];
    snprintf(root, sizeof root, "%s/tree2", dir);
    snprintf(cmd, sizeof cmd, "mkdir -p %s/c && for i in 0 1 2 3; do cp %s/img/big.jpeg %s/c/$i.jpg; done", root, dir,
             root);
    ck_assert_int_eq(system(cmd), 0);
    ct_dataset ds;
    ck_assert_int_eq(ct_dataset_from_folder(&ds, root, NULL, 3), CT_OK);
    ct_transforms t;
    ck_assert_int_eq(ct_transforms_parse("random_resized_crop:24,random_horizontal_flip", &t), CT_OK);
    ct_dataset_set_transforms(&ds, &t);
    ct_loader_opts o = ct_loader_opts_default(4);
    ct_loader *a, *b;
    ck_assert_int_eq(ct_loader_new(&a, &ds, &o), CT_OK);
    ck_assert_int_eq(ct_loader_new(&b, &ds, &o), CT_OK);
    int64_t fwd[] = {0, 1, 2, 3}, rev[] = {3, 2, 1, 0};
    ct_loader_start(a, fwd, 4);
    ct_loader_start(b, rev, 4);
    int64_t F = ds.sample_numel;
    CT_SCOPE {
        ct_batch ba, bb;
        ck_assert(ct_loader_next(a, &ba) && ct_loader_next(b, &bb));
        for (int k = 0; k < 4; k++)
            ck_assert_mem_eq(ba.x->data + k * F, bb.x->data + (3 - k) * F, (size_t)F * sizeof(float));
        /* the same file, yet different crops: the choices do depend on the sample */
        ck_assert(memcmp(ba.x->data, ba.x->data + F, (size_t)F * sizeof(float)) != 0);
    }
    ct_loader_free(a);
    ct_loader_free(b);
    ct_dataset_free(&ds);
}
END_TEST

/* ct_transforms_read's fast path (a random_resized_crop first: only the crop is decoded and
 * resized where it lies) gives exactly the pixels and random draws of decoding the whole
 * image then applying the transforms (which ops_match_torchvision checks): JPEGs of every
 * subsampling and a PNG, RGB and gray, output sizes that are and are not multiples of 8
 * (the SIMD resize does 8 at a time), shrinking and enlarging, many random crops each. */
START_TEST(read_with_crop_matches_full_decode) {
    static const char *const images[] = {"big.jpeg", "big444.jpg", "big422.jpg", "big_progressive.jpg",
                                         "big_gray.jpg", "rgb420.jpg", "rgb.png"};
    static const char *const specs[] = {"random_resized_crop:64,random_horizontal_flip", "random_resized_crop:61",
                                        "random_resized_crop:200", "random_resized_crop:8,resize:13"};
    int checked = 0;
    for (size_t i = 0; i < sizeof images / sizeof *images; i++)
        for (int channels = 1; channels <= 3; channels += 2)
            for (size_t k = 0; k < sizeof specs / sizeof *specs; k++) {
                char path[256];
                snprintf(path, sizeof path, "%s/img/%s", dir, images[i]);
                ct_transforms t;
                ck_assert_int_eq(ct_transforms_parse(specs[k], &t), CT_OK);
                for (uint64_t seed = 0; seed < 40; seed++) {
                    ct_rng r1, r2;
                    ct_rng_seed(&r1, seed);
                    ct_rng_seed(&r2, seed);
                    ct_image fast, slow;
                    ck_assert_int_eq(ct_transforms_read(&t, path, channels, &r1, &fast), CT_OK);
                    ck_assert_int_eq(ct_image_read(path, channels, &slow), CT_OK);
                    ct_transforms_apply(&t, &slow, &r2);
                    ck_assert(fast.h == slow.h && fast.w == slow.w && fast.c == slow.c);
                    ck_assert_msg(!memcmp(fast.px, slow.px, (size_t)(fast.h * fast.w * fast.c)),
                                  "%s, %d channels, %s, seed %llu: pixels differ", images[i], channels, specs[k],
                                  (unsigned long long)seed);
                    ck_assert_uint_eq(ct_rng_next(&r1), ct_rng_next(&r2)); /* the same draws */
                    ct_image_free(&fast);
                    ct_image_free(&slow);
                    checked++;
                }
            }
    ck_assert_int_eq(checked, 7 * 2 * 4 * 40);
}
END_TEST

START_TEST(parse_errors) {
    ct_transforms t;
    static const char *bad[] = {"resize", "resize:0", "crop:3", "center_crop:x", "random_horizontal_flip:2",
                                "resize:1,resize:1,resize:1,resize:1,resize:1,resize:1,resize:1,resize:1,resize:1"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        ck_assert_int_eq(ct_transforms_parse(bad[i], &t), CT_ERR_ARG);
        ck_assert_ptr_nonnull(strstr(ct_last_error(), bad[i]));
    }
    ck_assert_int_eq(ct_transforms_parse("", &t), CT_OK);
    ck_assert_int_eq(t.n, 0);
    ck_assert_int_eq(ct_transforms_parse("resize:256,center_crop:224", &t), CT_OK);
    ck_assert(t.n == 2 && t.t[0].kind == CT_TF_RESIZE && t.t[1].size == 224);
    ck_assert(ct_transforms_fixed_size(&t));
}
END_TEST

int main(void) {
    Suite *s = suite_create("transform");
    TCase *t = tcase_create("torchvision");
    tcase_add_unchecked_fixture(t, make_refs, remove_refs);
    tcase_set_timeout(t, 120);
    tcase_add_test(t, ops_match_torchvision);
    tcase_add_test(t, rrc_params_match_torchvision);
    tcase_add_test(t, pipeline_matches_torchvision);
    tcase_add_test(t, random_choices_are_per_sample);
    tcase_add_test(t, read_with_crop_matches_full_decode);
    tcase_add_test(t, parse_errors);
    suite_add_tcase(s, t);
    return ct_test_run(s);
}
