/* Checkpoints: round trip of model, buffers, optimizer state and progress; strict and
 * non-strict loading with every mismatch reported; exclusion; atomic replacement. */
#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util.h"

static char dir[64];
static char path[128];

static void setup(void) {
    snprintf(dir, sizeof dir, "/tmp/ct_ckpt_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/c.safetensors", dir);
}

static void teardown(void) {
    DIR *d = opendir(dir);
    struct dirent *e;
    char p[512];
    while (d && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        unlink(p);
    }
    if (d) closedir(d);
    rmdir(dir);
}

static ct_module *model(uint64_t seed, int64_t classes) {
    ct_rng r;
    ct_rng_seed(&r, seed);
    return ct_nn_cnn(1, 8, classes, 0.25f, &r);
}

static ct_optim *adam_over(ct_module *m) {
    ct_optim *o = ct_optim_new(ct_adam_config(1e-3, 0));
    ct_named p = ct_module_params(m, true);
    ct_optim_add_group(o, p.n, (const char *const *)p.names, p.tensors, CT_OPTIM_DEFAULT, CT_OPTIM_DEFAULT);
    ct_named_free(&p);
    return o;
}

static void train_step(ct_module *m, ct_optim *o, uint64_t seed) {
    ct_rng r;
    ct_rng_seed(&r, seed);
    int64_t y[4] = {0, 1, 2, 3};
    CT_SCOPE {
        ct_tensor *x = ct_rand_uniform(CT_SHAPE(4, 1, 8, 8), 0, 1, &r);
        ct_backward(ct_cross_entropy(ct_module_forward(m, x), y, CT_REDUCE_MEAN));
    }
    ct_optim_step(o);
    ct_optim_zero_grad(o);
}

static bool same_state(ct_module *a, ct_module *b) {
    bool same = true;
    for (int pass = 0; pass < 2; pass++) {
        ct_named la = pass ? ct_module_buffers(a) : ct_module_params(a, false);
        ct_named lb = pass ? ct_module_buffers(b) : ct_module_params(b, false);
        for (int i = 0; i < la.n; i++)
            same &= memcmp(la.tensors[i]->data, lb.tensors[i]->data, (size_t)la.tensors[i]->numel * 4) == 0;
        ct_named_free(&la);
        ct_named_free(&lb);
    }
    return same;
}

/* Saving after two steps and restoring into a fresh model and optimizer, then stepping
 * both, gives bit-identical parameters: model, buffers, counters, RNG and Adam state. */
START_TEST(round_trip_resumes_exactly) {
    ct_module *a = model(1, 10), *b = model(2, 10);
    ct_optim *oa = adam_over(a), *ob = adam_over(b);
    train_step(a, oa, 10);
    train_step(a, oa, 11);
    ct_progress p = {.epoch = 3, .step = 2, .seed = 7, .world = 2, .epoch_step = 4, .rank_state = "00ff"};
    ck_assert_int_eq(ct_ckpt_save(path, a, oa, &p), CT_OK);
    ct_st_file *f = NULL;
    ck_assert_int_eq(ct_st_load(path, &f), CT_OK);
    ck_assert_int_eq(ct_ckpt_load_model(f, b, true, NULL), CT_OK);
    ck_assert_int_eq(ct_ckpt_load_optim(f, ob), CT_OK);
    ct_progress q;
    ck_assert_int_eq(ct_ckpt_progress(f, &q), CT_OK);
    ck_assert_int_eq(q.epoch, 3);
    ck_assert_int_eq(q.step, 2);
    ck_assert_int_eq(q.world, 2);
    ck_assert_int_eq(q.epoch_step, 4); /* a mid-epoch checkpoint's position and per-rank state */
    ck_assert_str_eq(q.rank_state, "00ff");
    /* PyTorch's dtype for the counter */
    const ct_st_entry *nbt = ct_st_find(f, "backbone.1.num_batches_tracked");
    ck_assert_ptr_nonnull(nbt);
    ck_assert_int_eq(nbt->dtype, CT_DTYPE_I64);
    ck_assert_int_eq(*(const int64_t *)nbt->data, 2);
    ct_st_free(f);
    ck_assert(same_state(a, b));
    ck_assert_int_eq(ct_nn_as_batchnorm(b->children[0]->children[1])->num_batches_tracked, 2);
    train_step(a, oa, 12);
    train_step(b, ob, 12);
    ck_assert(same_state(a, b));
    ct_optim_free(oa);
    ct_optim_free(ob);
    ct_module_free(a);
    ct_module_free(b);
}
END_TEST

/* Strict loading into a model with a different head reports every mismatch at once and
 * changes nothing. */
START_TEST(strict_reports_every_mismatch) {
    ct_module *a = model(1, 10), *b = model(2, 5);
    ct_progress p = {0};
    ck_assert_int_eq(ct_ckpt_save(path, a, NULL, &p), CT_OK);
    float before = ct_module_find(b, "backbone.0.weight")->data[0];
    ct_st_file *f = NULL;
    ck_assert_int_eq(ct_st_load(path, &f), CT_OK);
    ck_assert_int_eq(ct_ckpt_load_model(f, b, true, NULL), CT_ERR_SHAPE);
    const char *msg = ct_last_error();
    ck_assert_msg(strstr(msg, path) && strstr(msg, "head.3.weight is F32 [10, 128] in the checkpoint but F32 [5, 128] in the model") &&
                      strstr(msg, "head.3.bias is F32 [10]"),
                  "%s", msg);
    ck_assert_float_eq(ct_module_find(b, "backbone.0.weight")->data[0], before);
    ct_st_free(f);
    ct_module_free(a);
    ct_module_free(b);
}
END_TEST

/* Non-strict: a backbone checkpoint goes into a larger model; what is not loaded is
 * listed, and init_exclude keeps a fresh head even where shapes match. */
START_TEST(non_strict_loads_backbone) {
    ct_module *a = model(1, 10), *b = model(2, 5), *c = model(3, 10);
    ct_progress p = {0};
    ck_assert_int_eq(ct_ckpt_save(path, a, NULL, &p), CT_OK);
    ct_st_file *f = NULL;
    ck_assert_int_eq(ct_st_load(path, &f), CT_OK);
    char *rep = NULL;
    ck_assert_int_eq(ct_ckpt_load_model(f, b, false, &rep), CT_OK);
    ck_assert_msg(rep && strstr(rep, "head.3.weight") && strstr(rep, "head.3.bias"), "%s", rep);
    free(rep);
    ck_assert_float_eq(ct_module_find(b, "backbone.4.weight")->data[7], ct_module_find(a, "backbone.4.weight")->data[7]);
    ck_assert_float_eq(ct_module_find(b, "head.0.weight")->data[3], ct_module_find(a, "head.0.weight")->data[3]);
    ck_assert_float_ne(ct_module_find(b, "head.3.bias")->data[0], ct_module_find(a, "head.3.bias")->data[0]);
    float fresh = ct_module_find(c, "head.0.weight")->data[3];
    ck_assert_int_eq(ct_ckpt_load_model_except(f, c, false, "head.*", &rep), CT_OK);
    ck_assert_msg(rep && strstr(rep, "excluded: head.0.weight"), "%s", rep);
    free(rep);
    ck_assert_float_eq(ct_module_find(c, "head.0.weight")->data[3], fresh);
    ck_assert_float_eq(ct_module_find(c, "backbone.0.bias")->data[1], ct_module_find(a, "backbone.0.bias")->data[1]);
    ct_st_free(f);
    ct_module_free(a);
    ct_module_free(b);
    ct_module_free(c);
}
END_TEST

/* A failed save leaves the previous checkpoint in place and no temporary file. */
START_TEST(failed_save_keeps_old_file) {
    ct_module *a = model(1, 10);
    ct_progress p = {.epoch = 1};
    ck_assert_int_eq(ct_ckpt_save(path, a, NULL, &p), CT_OK);
    char bad[160];
    snprintf(bad, sizeof bad, "%s/missing/c.safetensors", dir);
    ck_assert_int_ne(ct_ckpt_save(bad, a, NULL, &p), CT_OK);
    ck_assert_ptr_nonnull(strstr(ct_last_error(), bad));
    ct_st_file *f = NULL;
    ck_assert_int_eq(ct_st_load(path, &f), CT_OK);
    ct_st_free(f);
    DIR *d = opendir(dir);
    struct dirent *e;
    int files = 0;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') files++, ck_assert_msg(!strstr(e->d_name, ".tmp"), "%s left", e->d_name);
    closedir(d);
    ck_assert_int_eq(files, 1);
    ct_module_free(a);
}
END_TEST

/* An error that wraps an earlier one ("%s: %s", path, ct_last_error()) keeps the earlier
 * text intact: formatting straight into the buffer it reads garbled every optimizer-state
 * resume error. */
START_TEST(wrapped_errors_keep_the_inner_message) {
    ct_error(CT_ERR_IO, "inner reason");
    ck_assert_str_eq(ct_last_error(), "inner reason");
    ct_error(CT_ERR_IO, "%s: %s", "outer/file", ct_last_error());
    ck_assert_str_eq(ct_last_error(), "outer/file: inner reason");
    ct_module *a = model(1, 10), *b = model(2, 5);
    ct_optim *oa = adam_over(a), *ob = adam_over(b);
    train_step(a, oa, 10);
    ct_progress p = {0};
    ck_assert_int_eq(ct_ckpt_save(path, a, oa, &p), CT_OK);
    ct_st_file *f = NULL;
    ck_assert_int_eq(ct_st_load(path, &f), CT_OK);
    ck_assert_int_ne(ct_ckpt_load_optim(f, ob), CT_OK);
    const char *msg = ct_last_error();
    ck_assert_msg(strncmp(msg, path, strlen(path)) == 0 && strstr(msg, ": optimizer state 'optim.head.3.") &&
                      strstr(msg, "1280 elements, parameter [5, 128] has 640"),
                  "%s", msg);
    ct_st_free(f);
    ct_optim_free(oa);
    ct_optim_free(ob);
    ct_module_free(a);
    ct_module_free(b);
}
END_TEST

/* Progress metadata comes from a file that may have been edited or written elsewhere: every
 * field is range-checked (an epoch of 2^31 overflowed int, a saturated one spun forever on
 * resume, a negative epoch aborted later, step -1 and world 0 passed). */
static const struct {
    const char *key, *value;
    bool ok;
} progress_cases[] = {
    {"epoch", "2147483647", true},   {"epoch", "2147483648", false},
    {"epoch", "9223372036854775807", false}, {"epoch", "99999999999999999999", false},
    {"epoch", "-1", false},          {"epoch", "", false},
    {"epoch", "1x", false},          {"step", "-1", false},
    {"step", "9223372036854775807", true}, {"world", "0", false},
    {"world", "-2", false},          {"world", "2147483648", false},
    {"seed", "18446744073709551615", true}, {"seed", "18446744073709551616", false},
    {"seed", "-1", false},           {"seed", "", false},
    {"epoch_step", "5", true},       {"epoch_step", "-1", false},
    {"epoch_step", "1x", false},
};

START_TEST(progress_fields_are_range_checked) {
    const char *key = progress_cases[_i].key, *value = progress_cases[_i].value;
    ct_st_meta meta[] = {{"format", "ctrain-checkpoint-1"}, {"epoch", "3"}, {"step", "30"},
                         {"seed", "7"}, {"world", "2"}, {"epoch_step", "0"}};
    /* epoch_step is optional (older checkpoints): written only when it is the key tried */
    int nmeta = strcmp(key, "epoch_step") ? 5 : 6;
    for (int k = 1; k < 6; k++)
        if (!strcmp(meta[k].key, key)) meta[k].value = value;
    float w = 1;
    ct_st_entry e = {.name = "w", .dtype = CT_DTYPE_F32, .ndim = 1, .shape = {1}, .data = &w};
    ck_assert_int_eq(ct_st_save(path, &e, 1, meta, nmeta), CT_OK);
    ct_st_file *f = NULL;
    ck_assert_int_eq(ct_st_load(path, &f), CT_OK);
    ct_progress p = {.epoch = -5};
    ct_status st = ct_ckpt_progress(f, &p);
    if (progress_cases[_i].ok) {
        ck_assert_msg(st == CT_OK, "%s = '%s': %s", key, value, ct_last_error());
        if (!strcmp(key, "seed")) ck_assert(p.seed == UINT64_MAX);
        if (!strcmp(key, "epoch")) ck_assert_int_eq(p.epoch, 2147483647);
        ck_assert_int_eq(p.epoch_step, strcmp(key, "epoch_step") ? 0 : 5);
        ck_assert_ptr_null(p.rank_state);
    } else {
        char want[64];
        snprintf(want, sizeof want, "metadata '%s' is", key);
        ck_assert_msg(st == CT_ERR_FORMAT && strstr(ct_last_error(), path) && strstr(ct_last_error(), want),
                      "%s = '%s': status %d, %s", key, value, st, ct_last_error());
        ck_assert_int_eq(p.epoch, -5); /* unchanged */
    }
    ct_st_free(f);
}
END_TEST

/* Non-strict loading that loads nothing (another model's file, or everything excluded) is
 * an error, not a silent fresh start. */
START_TEST(non_strict_loading_nothing_fails) {
    ct_rng r;
    ct_rng_seed(&r, 1);
    ct_module *a = model(1, 10), *mlp = ct_nn_mlp(64, 10, &r);
    ct_progress p = {0};
    ck_assert_int_eq(ct_ckpt_save(path, a, NULL, &p), CT_OK);
    ct_st_file *f = NULL;
    ck_assert_int_eq(ct_st_load(path, &f), CT_OK);
    float before = ct_module_find(mlp, "1.weight")->data[0];
    ck_assert_int_eq(ct_ckpt_load_model(f, mlp, false, NULL), CT_ERR_SHAPE);
    ck_assert_msg(strstr(ct_last_error(), path) && strstr(ct_last_error(), "not one tensor of the model"), "%s",
                  ct_last_error());
    ck_assert_float_eq(ct_module_find(mlp, "1.weight")->data[0], before);
    ck_assert_int_eq(ct_ckpt_load_model_except(f, a, false, "*", NULL), CT_ERR_SHAPE);
    ck_assert_int_eq(ct_ckpt_load_model_except(f, a, false, "backbone.*", NULL), CT_OK);
    ct_st_free(f);
    ct_module_free(a);
    ct_module_free(mlp);
}
END_TEST

/* Every checkpoint carries the CRC32 of its tensor data; one flipped bit anywhere in the
 * data makes the load fail naming the file, where it used to load a silently wrong weight. */
START_TEST(checksum_catches_a_flipped_bit) {
    ct_module *a = model(1, 10);
    ct_optim *oa = adam_over(a);
    train_step(a, oa, 10);
    ct_progress p = {.epoch = 1, .step = 1, .world = 1};
    ck_assert_int_eq(ct_ckpt_save(path, a, oa, &p), CT_OK);
    ct_st_file *f = NULL;
    ck_assert_int_eq(ct_st_load(path, &f), CT_OK);
    ck_assert_ptr_nonnull(ct_st_meta_get(f, "data_crc32"));
    ck_assert_uint_eq(strlen(ct_st_meta_get(f, "data_crc32")), 8);
    ct_st_free(f);
    FILE *fp = fopen(path, "r+b");
    ck_assert_ptr_nonnull(fp);
    fseek(fp, 0, SEEK_END);
    long size = ftell(fp);
    long at[] = {size - 1, size / 2};
    for (int k = 0; k < 2; k++) {
        fseek(fp, at[k], SEEK_SET);
        int c = fgetc(fp);
        fseek(fp, at[k], SEEK_SET);
        fputc(c ^ 0x10, fp);
        fflush(fp);
        f = (ct_st_file *)1;
        ck_assert_int_eq(ct_st_load(path, &f), CT_ERR_FORMAT);
        ck_assert_ptr_null(f);
        ck_assert_msg(strstr(ct_last_error(), path) && strstr(ct_last_error(), "does not match its checksum"), "%s",
                      ct_last_error());
        fseek(fp, at[k], SEEK_SET);
        fputc(c, fp); /* restored: loads again */
        fflush(fp);
        ck_assert_int_eq(ct_st_load(path, &f), CT_OK);
        ct_st_free(f);
    }
    fclose(fp);
    ct_optim_free(oa);
    ct_module_free(a);
}
END_TEST

int main(void) {
    Suite *s = suite_create("checkpoint");
    TCase *tc = tcase_create("checkpoint");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, round_trip_resumes_exactly);
    tcase_add_test(tc, strict_reports_every_mismatch);
    tcase_add_test(tc, non_strict_loads_backbone);
    tcase_add_test(tc, failed_save_keeps_old_file);
    tcase_add_test(tc, wrapped_errors_keep_the_inner_message);
    tcase_add_test(tc, non_strict_loading_nothing_fails);
    tcase_add_test(tc, checksum_catches_a_flipped_bit);
    tcase_add_loop_test(tc, progress_fields_are_range_checked, 0,
                        (int)(sizeof progress_cases / sizeof progress_cases[0]));
    suite_add_tcase(s, tc);
    return ct_test_run(s);
}
