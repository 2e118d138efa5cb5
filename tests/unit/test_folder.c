/* Folder and list data sets: torchvision ImageFolder's sample order (checked against
 * torchvision itself), hidden and non-image files skipped, class lists shared between
 * splits, the errors for missing folders, empty classes and unknown labels, class
 * filtering, and the loader's handling of undecodable files (error, or skip with and
 * without wrapping) and its laziness (a rank never opens another shard's files). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/data.h"
#include "util.h"

static char fix[64];  /* make_images.py's fixtures */
static char root[96]; /* a fresh tree per test */

static void make_fixtures(void) {
    ct_test_make_fixtures(fix, "ct_folder", "/usr/bin/python3 tests/unit/make_images.py {}/img");
}

static void remove_fixtures(void) { ct_test_remove_fixtures(fix); }

/* Tests run in forked children, so each makes its own unique folder. */
static void new_tree(void) {
    snprintf(root, sizeof root, "%s/tXXXXXX", fix);
    ck_assert_ptr_nonnull(mkdtemp(root));
}

/* Copies fixture `src` (e.g. "rgb.png") to root/rel, making the folders on the way. */
static void put(const char *rel, const char *src) {
    char cmd[512];
    snprintf(cmd, sizeof cmd, "mkdir -p \"$(dirname '%s/%s')\" && cp %s/img/%s '%s/%s'", root, rel, fix,
             src, root, rel);
    ck_assert_int_eq(system(cmd), 0);
}

static void put_text(const char *rel, const char *text) {
    char p[256], cmd[320];
    snprintf(cmd, sizeof cmd, "mkdir -p \"$(dirname '%s/%s')\"", root, rel);
    ck_assert_int_eq(system(cmd), 0);
    snprintf(p, sizeof p, "%s/%s", root, rel);
    FILE *f = fopen(p, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

static const char *rel(const ct_dataset *ds, int64_t i) {
    return ct_dataset_path(ds, i) + strlen(root) + 1;
}

/* A tree whose order has traps: upper-case and numeric names, nested folders whose sorted
 * path order ("a/sub-x" < "a/sub/") differs from a depth-first walk, .jpeg and .JPG. */
static void ordered_tree(void) {
    const char *files[] = {"b/2.png", "b/10.png", "b/B.PNG", "a/z.jpeg", "a/sub/q.png",
                           "a/sub/deeper/k.png", "a/sub-x/p.JPG", "a/a.png", "Cat/x.png"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++)
        put(files[i], strstr(files[i], "jp") || strstr(files[i], "JP") ? "rgb420.jpg" : "rgb.png");
}

START_TEST(folder_order_is_imagefolders) {
    new_tree();
    ordered_tree();
    char cmd[512], out[96];
    snprintf(out, sizeof out, "%s/torchvision.txt", fix);
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 -c \"import sys; from torchvision.datasets import ImageFolder as F; d = F(sys.argv[1]); "
             "[print(p[len(sys.argv[1]) + 1:], y) for p, y in d.samples]; print('classes', *d.classes)\" %s > %s",
             root, out);
    ck_assert_int_eq(system(cmd), 0);
    /* hidden files and folders and non-image files must change nothing */
    put(".hidden/x.png", "rgb.png");
    put("a/.h.png", "rgb.png");
    put("a/.cache/x.png", "rgb.png");
    put_text("a/notes.txt", "not an image\n");
    put_text("README", "top-level file, not a class\n");

    ct_dataset ds;
    ck_assert_msg(ct_dataset_from_folder(&ds, root, NULL, 3) == CT_OK, "%s", ct_last_error());
    FILE *f = fopen(out, "r");
    ck_assert_ptr_nonnull(f);
    char path[256];
    long long y;
    int64_t i = 0;
    while (fscanf(f, "%255s %lld", path, &y) == 2 && strcmp(path, "classes")) {
        ck_assert_int_lt(i, ds.n);
        ck_assert_str_eq(rel(&ds, i), path);
        ck_assert_int_eq(ds.y[i], y);
        i++;
    }
    ck_assert_int_eq(i, ds.n);
    const ct_classes *c = ct_dataset_classes(&ds);
    ck_assert_int_eq(c->n, 3);
    ck_assert_int_eq(ds.num_classes, 3);
    for (int k = 0; k < c->n; k++) {
        char name[64];
        ck_assert_int_eq(fscanf(f, "%63s", name), 1);
        ck_assert_str_eq(c->names[k], name);
    }
    fclose(f);
    ck_assert_int_eq(ds.sample_ndim, 3);
    ck_assert(ds.sample_shape[0] == 3 && ds.sample_shape[1] == 23 && ds.sample_shape[2] == 37);
    ct_dataset_free(&ds);
}
END_TEST

/* The test split numbers its classes as the training split does, even with one missing. */
START_TEST(folder_shares_training_classes) {
    new_tree();
    put("train/cat/1.png", "rgb.png");
    put("train/dog/1.png", "rgb.png");
    put("train/emu/1.png", "rgb.png");
    put("test/emu/1.png", "gray.png");
    put("test/cat/1.png", "gray.png");
    char tr[128], te[128];
    snprintf(tr, sizeof tr, "%s/train", root);
    snprintf(te, sizeof te, "%s/test", root);
    ct_classes c;
    ck_assert_int_eq(ct_classes_from_folder(tr, &c), CT_OK);
    ct_dataset ds;
    ck_assert_int_eq(ct_dataset_from_folder(&ds, te, &c, 1), CT_OK);
    ck_assert_int_eq(ds.n, 2);
    ck_assert_int_eq(ds.y[0], 0); /* cat */
    ck_assert_int_eq(ds.y[1], 2); /* emu: 2 in training, not 1 */
    ck_assert_int_eq(ds.num_classes, 3);
    ck_assert_int_eq(ds.sample_shape[0], 1);
    ct_dataset_free(&ds);
    put("test/yak/1.png", "rgb.png");
    ck_assert_int_eq(ct_dataset_from_folder(&ds, te, &c, 1), CT_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(ct_last_error(), "yak"));
    ck_assert_ptr_nonnull(strstr(ct_last_error(), "not one of the 3 training classes"));
    ct_classes_free(&c);
}
END_TEST

START_TEST(folder_errors) {
    new_tree();
    ct_dataset ds;
    char p[160];
    snprintf(p, sizeof p, "%s/nowhere", root);
    ck_assert_int_eq(ct_dataset_from_folder(&ds, p, NULL, 3), CT_ERR_IO);
    ck_assert_ptr_nonnull(strstr(ct_last_error(), p));
    ck_assert_int_eq(ct_dataset_from_folder(&ds, root, NULL, 3), CT_ERR_FORMAT); /* no class */
    ck_assert_ptr_nonnull(strstr(ct_last_error(), "no class folders"));
    put("a/1.png", "rgb.png");
    put_text("b/readme.txt", "no images here\n");
    put("b/.x.png", "rgb.png");
    ck_assert_int_eq(ct_dataset_from_folder(&ds, root, NULL, 3), CT_ERR_FORMAT);
    snprintf(p, sizeof p, "%s/b", root);
    ck_assert_msg(strstr(ct_last_error(), p) && strstr(ct_last_error(), "has no .jpg"), "%s", ct_last_error());
    ck_assert_int_eq(ct_dataset_from_folder(&ds, root, NULL, 2), CT_ERR_FORMAT); /* still b */
    snprintf(p, sizeof p, "rm -r %s/b", root);
    ck_assert_int_eq(system(p), 0);
    ck_assert_int_eq(ct_dataset_from_folder(&ds, root, NULL, 2), CT_ERR_ARG);
    put("a/2.png", "text.jpg"); /* renamed garbage: listed, refused only when decoded */
    ck_assert_int_eq(ct_dataset_from_folder(&ds, root, NULL, 3), CT_OK);
    ck_assert_int_eq(ds.n, 2);
    ct_dataset_free(&ds);
}
END_TEST

START_TEST(list_paths_labels_and_errors) {
    new_tree();
    put("imgs/a.png", "rgb.png");
    put("imgs/b,c.png", "rgb.png");
    char abs_line[256];
    snprintf(abs_line, sizeof abs_line, "%s/imgs/a.png, 2\r\n", root);
    char text[512];
    snprintf(text, sizeof text, "path,label\nimgs/a.png,0\n\nimgs/b,c.png,5\n%s", abs_line);
    put_text("train.csv", text);
    char csv[160];
    snprintf(csv, sizeof csv, "%s/train.csv", root);
    ct_dataset ds;
    ck_assert_msg(ct_dataset_from_list(&ds, csv, NULL, 3) == CT_OK, "%s", ct_last_error());
    ck_assert_int_eq(ds.n, 3);
    ck_assert_str_eq(rel(&ds, 0), "imgs/a.png");
    ck_assert_str_eq(rel(&ds, 1), "imgs/b,c.png");
    ck_assert_str_eq(rel(&ds, 2), "imgs/a.png");
    ck_assert(ds.y[0] == 0 && ds.y[1] == 5 && ds.y[2] == 2);
    ck_assert_int_eq(ds.num_classes, 6); /* integer labels: 0..max */
    ct_classes c;
    ck_assert_int_eq(ct_classes_from_list(csv, &c), CT_OK);
    ck_assert(c.numeric && c.n == 6);
    ct_dataset_free(&ds);

    /* a test list with a label the training list does not have */
    put_text("test.csv", "imgs/a.png,3\nimgs/a.png,6\n");
    snprintf(csv, sizeof csv, "%s/test.csv", root);
    ck_assert_int_eq(ct_dataset_from_list(&ds, csv, &c, 3), CT_ERR_FORMAT);
    ck_assert_msg(strstr(ct_last_error(), "test.csv:2") && strstr(ct_last_error(), "unknown label '6'"), "%s",
                  ct_last_error());
    ct_classes_free(&c);

    /* names: sorted as ImageFolder sorts folders */
    put_text("names.csv", "imgs/a.png,dog\nimgs/a.png,cat\nimgs/a.png,dog\n");
    snprintf(csv, sizeof csv, "%s/names.csv", root);
    ck_assert_int_eq(ct_dataset_from_list(&ds, csv, NULL, 1), CT_OK);
    ck_assert(ds.y[0] == 1 && ds.y[1] == 0 && ds.y[2] == 1 && ds.num_classes == 2);
    ck_assert_str_eq(ct_dataset_classes(&ds)->names[0], "cat");
    ct_dataset_free(&ds);

    static const char *bad[][2] = {{"imgs/a.png 3\n", "expected 'path,label'"},
                                   {"imgs/a.png,\n", "empty label"},
                                   {"path,label\n", "no 'path,label' entries"}};
    for (int i = 0; i < 3; i++) {
        put_text("bad.csv", bad[i][0]);
        snprintf(csv, sizeof csv, "%s/bad.csv", root);
        ck_assert_int_eq(ct_dataset_from_list(&ds, csv, NULL, 3), CT_ERR_FORMAT);
        ck_assert_msg(strstr(ct_last_error(), csv) && strstr(ct_last_error(), bad[i][1]), "%s", ct_last_error());
    }
    snprintf(csv, sizeof csv, "%s/missing.csv", root);
    ck_assert_int_eq(ct_dataset_from_list(&ds, csv, NULL, 3), CT_ERR_IO);
    ck_assert_ptr_nonnull(strstr(ct_last_error(), csv));
}
END_TEST

/* data.classes and data.per_class on files: paths and class names follow their samples. */
START_TEST(folder_filters) {
    new_tree();
    const char *cls[] = {"ant", "bee", "cow"};
    for (int k = 0; k < 3; k++)
        for (int i = 0; i < 3; i++) {
            char r[64];
            snprintf(r, sizeof r, "%s/%d.png", cls[k], i);
            put(r, "rgb.png");
        }
    ct_dataset ds;
    ck_assert_int_eq(ct_dataset_from_folder(&ds, root, NULL, 3), CT_OK);
    int64_t keep[] = {2, 0};
    ck_assert_int_eq(ct_dataset_keep_classes(&ds, keep, 2, true), CT_OK);
    ck_assert_int_eq(ct_dataset_few_shot(&ds, 2), CT_OK);
    ck_assert_int_eq(ds.n, 4);
    ck_assert_str_eq(rel(&ds, 0), "ant/0.png");
    ck_assert_int_eq(ds.y[0], 1);
    ck_assert_str_eq(rel(&ds, 3), "cow/1.png");
    ck_assert_int_eq(ds.y[3], 0);
    const ct_classes *c = ct_dataset_classes(&ds);
    ck_assert(c->n == 2 && !strcmp(c->names[0], "cow") && !strcmp(c->names[1], "ant"));
    ct_dataset_free(&ds);
}
END_TEST

/* Pixels through the data set equal the decoder's, [C, H, W]; another size is an error. */
START_TEST(load_image_layout_and_size) {
    new_tree();
    put("a/1.png", "rgb.png");
    put("a/2.jpeg", "big.jpeg");
    ct_dataset ds;
    ck_assert_int_eq(ct_dataset_from_folder(&ds, root, NULL, 3), CT_OK);
    uint8_t *px = malloc((size_t)ds.sample_numel);
    ck_assert_int_eq(ct_dataset_load_image(&ds, 0, NULL, px), CT_OK);
    ct_image im;
    ck_assert_int_eq(ct_image_read(ct_dataset_path(&ds, 0), 3, &im), CT_OK);
    for (int64_t c = 0; c < 3; c++)
        for (int64_t p = 0; p < im.h * im.w; p++) ck_assert_int_eq(px[c * im.h * im.w + p], im.px[p * 3 + c]);
    float f[3 * 23 * 37];
    ct_dataset_sample(&ds, 0, f);
    ck_assert(f[5] == (float)px[5] / 255.0f);
    ct_image_free(&im);
    ck_assert_int_eq(ct_dataset_load_image(&ds, 1, NULL, px), CT_ERR_SHAPE);
    ck_assert_msg(strstr(ct_last_error(), "2.jpeg") && strstr(ct_last_error(), "171x130"), "%s", ct_last_error());
    free(px);
    ct_dataset_free(&ds);
}
END_TEST

/* 8 files a/0..7.png, the ones in bad[] undecodable. */
static void tree_with_bad(const int *bad, int nbad, ct_dataset *ds) {
    new_tree();
    for (int i = 0; i < 8; i++) {
        bool b = false;
        for (int k = 0; k < nbad; k++) b = b || bad[k] == i;
        char r[32];
        snprintf(r, sizeof r, "a/%d.png", i);
        put(r, b ? "truncated.png" : "rgb.png");
    }
    ck_assert_int_eq(ct_dataset_from_folder(ds, root, NULL, 1), CT_OK);
}

static int logged;
static void count_log(void *ctx, const char *msg) {
    ck_assert_ptr_eq(ctx, &logged);
    ck_assert_ptr_nonnull(strstr(msg, "skipped"));
    logged++;
}

START_TEST(loader_bad_file_is_an_error) {
    int bad[] = {5};
    ct_dataset ds;
    tree_with_bad(bad, 1, &ds);
    ct_loader_opts o = ct_loader_opts_default(4);
    ct_loader *l;
    ck_assert_int_eq(ct_loader_new(&l, &ds, &o), CT_OK);
    int64_t idx[] = {0, 1, 2, 3, 4, 5, 6, 7};
    ct_loader_start(l, idx, 8);
    CT_SCOPE {
        ct_batch b;
        ck_assert(ct_loader_next(l, &b));
        ck_assert_int_eq(ct_loader_status(l), CT_OK);
        ck_assert(ct_loader_next(l, &b));
        ck_assert_int_eq(b.size, 4); /* full, so the ranks can still agree */
        ck_assert_int_eq(ct_loader_status(l), CT_ERR_FORMAT);
        ck_assert_msg(strstr(ct_last_error(), "a/5.png"), "%s", ct_last_error());
    }
    ct_loader_free(l);
    ct_dataset_free(&ds);
}
END_TEST

START_TEST(loader_skip_wraps_or_shortens) {
    bool wrap = _i;
    int bad[] = {1, 6};
    ct_dataset ds;
    tree_with_bad(bad, 2, &ds);
    ct_loader_opts o = ct_loader_opts_default(3);
    o.skip_bad = true;
    o.wrap = wrap;
    o.log = count_log;
    o.log_ctx = &logged;
    logged = 0;
    ct_loader *l;
    ck_assert_int_eq(ct_loader_new(&l, &ds, &o), CT_OK);
    int64_t idx[] = {7, 6, 5, 4, 3, 2, 1, 0};
    ct_loader_start(l, idx, 8);
    /* good files in epoch order: 7 5 4 3 2 0, then (wrapping) 7 again */
    int64_t want_wrap[] = {7, 5, 4, 3, 2, 0, 7, 5}, sizes_wrap[] = {3, 3, 2};
    int64_t want_end[] = {7, 5, 4, 3, 2, 0}, sizes_end[] = {3, 3};
    int64_t *want = wrap ? want_wrap : want_end, *sizes = wrap ? sizes_wrap : sizes_end;
    int nb = wrap ? 3 : 2, k = 0;
    for (int i = 0; i < nb; i++) CT_SCOPE {
        ct_batch b;
        ck_assert(ct_loader_next(l, &b));
        ck_assert_int_eq(ct_loader_status(l), CT_OK);
        ck_assert_int_eq(b.size, sizes[i]);
        ck_assert_int_eq(b.x->shape[0], sizes[i]);
        for (int64_t j = 0; j < b.size; j++) ck_assert_int_eq(b.idx[j], want[k++]);
    }
    CT_SCOPE {
        ct_batch b;
        ck_assert(!ct_loader_next(l, &b));
    }
    ck_assert_int_eq(ct_loader_skipped(l), wrap ? 3 : 2); /* wrapping met file 6 twice */
    ck_assert_int_eq(logged, ct_loader_skipped(l));
    ct_loader_free(l);
    ct_dataset_free(&ds);
}
END_TEST

/* A rank decodes only its shard: bad files elsewhere never reach it. */
START_TEST(loader_opens_only_its_shard) {
    int bad[] = {1, 3, 5, 7};
    ct_dataset ds;
    tree_with_bad(bad, 4, &ds);
    ct_sampler *s;
    ct_sampler_opts so = {.n = 8, .world = 2, .rank = 0, .mode = CT_SHARD_DROP, .shuffle = false};
    ck_assert_int_eq(ct_sampler_new(&s, &so), CT_OK); /* rank 0 of 2: 0, 2, 4, 6 */
    ct_loader_opts o = ct_loader_opts_default(2);
    ct_loader *l;
    ck_assert_int_eq(ct_loader_new(&l, &ds, &o), CT_OK);
    ct_loader_start(l, ct_sampler_epoch(s, 0), ct_sampler_size(s));
    for (int i = 0; i < 2; i++) CT_SCOPE {
        ct_batch b;
        ck_assert(ct_loader_next(l, &b));
        ck_assert_int_eq(ct_loader_status(l), CT_OK);
    }
    ct_loader_free(l);
    ct_sampler_free(s);
    ct_dataset_free(&ds);
}
END_TEST

/* ---- threaded loading (opts.workers) ---- */

/* 40 files of five decodings (PNG, palette, gray, two JPEG subsamplings) in 2 classes,
 * the ones at bad[] undecodable. */
static void mixed_tree(const int *bad, int nbad, ct_dataset *ds) {
    new_tree();
    const char *src[] = {"rgb.png", "palette.png", "gray.png", "rgb420.jpg", "rgb444.jpg"};
    for (int i = 0; i < 40; i++) {
        bool b = false;
        for (int k = 0; k < nbad; k++) b = b || bad[k] == i;
        char r[32];
        snprintf(r, sizeof r, "%c/%02d.%s", 'a' + i % 2, i, strstr(src[i % 5], "jpg") ? "jpg" : "png");
        put(r, b ? "truncated.png" : src[i % 5]);
    }
    ck_assert_int_eq(ct_dataset_from_folder(ds, root, NULL, 3), CT_OK);
    ct_transforms t;
    ck_assert_int_eq(ct_transforms_parse("random_resized_crop:12,random_horizontal_flip", &t), CT_OK);
    ct_dataset_set_transforms(ds, &t);
}

/* Everything a loader gives over `epochs` epochs (two shuffled shards of a sampler),
 * flattened: per batch its size, status, labels, indices and float bits, then the
 * skipped count. stop_after >= 0 abandons each epoch after that many batches. */
typedef struct {
    int64_t n, cap;
    uint32_t *v;
} trace;

static void rec(trace *t, uint32_t x) {
    if (t->n == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 4096;
        t->v = realloc(t->v, (size_t)t->cap * sizeof *t->v);
    }
    t->v[t->n++] = x;
}

static trace run_loader(const ct_dataset *ds, ct_loader_opts o, int epochs, int stop_after) {
    trace t = {0};
    ct_sampler *s;
    ct_sampler_opts so = {.n = ds->n, .world = 2, .rank = 1, .mode = CT_SHARD_PAD, .shuffle = true, .seed = 5};
    ck_assert_int_eq(ct_sampler_new(&s, &so), CT_OK);
    ct_loader *l;
    ck_assert_int_eq(ct_loader_new(&l, ds, &o), CT_OK);
    for (int e = 0; e < epochs; e++) {
        ct_loader_start(l, ct_sampler_epoch(s, (uint64_t)e), ct_sampler_size(s));
        int64_t nb = ct_loader_num_batches(l);
        for (int64_t k = 0; k < nb && k != stop_after; k++) CT_SCOPE {
            ct_batch b;
            bool got = ct_loader_next(l, &b);
            rec(&t, got);
            if (!got) continue;
            rec(&t, (uint32_t)b.size);
            rec(&t, (uint32_t)ct_loader_status(l));
            for (int64_t j = 0; j < b.size; j++) rec(&t, (uint32_t)b.y[j]), rec(&t, (uint32_t)b.idx[j]);
            for (int64_t j = 0; j < ct_numel(b.x); j++) {
                uint32_t u;
                memcpy(&u, &b.x->data[j], 4);
                rec(&t, u);
            }
        }
        rec(&t, (uint32_t)ct_loader_skipped(l));
    }
    ct_loader_free(l);
    ct_sampler_free(s);
    return t;
}

static void same_for_workers(ct_dataset *ds, ct_loader_opts o, int epochs, int stop_after) {
    o.workers = 0;
    trace ref = run_loader(ds, o, epochs, stop_after);
    ck_assert_int_gt(ref.n, 100);
    int workers[] = {1, 3}, prefetch[] = {1, 3};
    for (int w = 0; w < 2; w++) {
        o.workers = workers[w];
        o.prefetch = prefetch[w];
        trace t = run_loader(ds, o, epochs, stop_after);
        ck_assert_int_eq(t.n, ref.n);
        for (int64_t k = 0; k < t.n; k++)
            ck_assert_msg(t.v[k] == ref.v[k], "workers %d: word %lld differs", workers[w], (long long)k);
        free(t.v);
    }
    free(ref.v);
}

/* Random transforms, crop/flip augmentation and per-channel normalisation: the same bits
 * for 0, 1 and 3 workers, over two epochs. */
START_TEST(workers_give_the_same_batches) {
    ct_dataset ds;
    mixed_tree(NULL, 0, &ds);
    ct_loader_opts o = ct_loader_opts_default(6);
    o.crop_pad = 2;
    o.hflip = true;
    o.norm_channels = 3;
    for (int c = 0; c < 3; c++) o.channel_mean[c] = 0.4f + 0.1f * (float)c, o.channel_std[c] = 0.2f;
    same_for_workers(&ds, o, 2, -1);
    ct_dataset_free(&ds);
}
END_TEST

/* Bad files: skipped (with wrapping, and without: shorter last batches), or an error
 * reported with the same batch as inline; the same for any worker count. */
START_TEST(workers_give_the_same_bad_file_handling) {
    int bad[] = {3, 4, 17, 30};
    ct_dataset ds;
    mixed_tree(bad, 4, &ds);
    ct_loader_opts o = ct_loader_opts_default(4);
    o.log = count_log;
    o.log_ctx = &logged;
    o.skip_bad = true;
    for (int wrap = 0; wrap < 2; wrap++) {
        o.wrap = wrap;
        logged = 0;
        same_for_workers(&ds, o, 2, -1);
        ck_assert_int_gt(logged, 0);
    }
    o.skip_bad = false;
    o.wrap = false;
    same_for_workers(&ds, o, 1, -1);
    ct_dataset_free(&ds);
}
END_TEST

/* Epochs abandoned after 2 batches (workers are ahead), then the loader freed: the next
 * epochs start cleanly and nothing leaks or hangs. */
START_TEST(workers_stop_mid_epoch) {
    int bad[] = {9};
    ct_dataset ds;
    mixed_tree(bad, 1, &ds);
    ct_loader_opts o = ct_loader_opts_default(3);
    o.skip_bad = true;
    o.wrap = true;
    o.log = count_log;
    o.log_ctx = &logged;
    same_for_workers(&ds, o, 3, 2);
    o.workers = 3; /* freed right after starting, with every worker busy */
    ct_loader *l;
    ck_assert_int_eq(ct_loader_new(&l, &ds, &o), CT_OK);
    int64_t idx[] = {0, 1, 2, 3, 4, 5};
    ct_loader_start(l, idx, 6);
    ct_loader_free(l);
    ct_dataset_free(&ds);
}
END_TEST

int main(void) {
    Suite *s = suite_create("folder");
    TCase *t = tcase_create("folder_list_loader");
    tcase_add_unchecked_fixture(t, make_fixtures, remove_fixtures);
    tcase_set_timeout(t, 120);
    tcase_add_test(t, folder_order_is_imagefolders);
    tcase_add_test(t, folder_shares_training_classes);
    tcase_add_test(t, folder_errors);
    tcase_add_test(t, list_paths_labels_and_errors);
    tcase_add_test(t, folder_filters);
    tcase_add_test(t, load_image_layout_and_size);
    tcase_add_test(t, loader_bad_file_is_an_error);
    tcase_add_loop_test(t, loader_skip_wraps_or_shortens, 0, 2);
    tcase_add_test(t, loader_opens_only_its_shard);
    tcase_add_test(t, workers_give_the_same_batches);
    tcase_add_test(t, workers_give_the_same_bad_file_handling);
    tcase_add_test(t, workers_stop_mid_epoch);
    suite_add_tcase(s, t);
    return ct_test_run(s);
}
