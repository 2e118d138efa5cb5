/* Intra-op threads: the same training steps give the same bits with 1, 2 and 3 threads.
 * And the thread model: tensors made, recorded in graphs, run backward and freed on many
 * threads at once leave the counters exactly where they were. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

/* Every parameter, every buffer and every loss of `steps` training steps of the CNN
 * (conv, BatchNorm, ReLU, max-pool, dropout, linear, cross-entropy, AdamW or SGD with
 * momentum) or of vit_tiny (attention, LayerNorm, GELU; AdamW; then the logits of an
 * inference forward, which runs the blocks in chunks) on a fixed batch, run with `threads`
 * threads; *n gets the count (free it). */
static float *train_model(int threads, bool adamw, bool vit, int64_t *n) {
    ct_set_threads(threads);
    ck_assert_int_eq(ct_get_threads(), threads);
    ct_rng r;
    ct_rng_seed(&r, 7);
    ct_module *m = NULL;
    if (vit) {
        ct_vit_config c = {0};
        ck_assert(ct_vit_preset("vit_tiny", &c) == CT_OK);
        c.in_channels = 1, c.num_classes = 10;
        ck_assert_msg(ct_nn_vit(&c, &r, &m) == CT_OK, "%s", ct_last_error());
    } else {
        m = ct_nn_cnn(1, 28, 10, 0.25f, &r);
    }
    ct_module_pack(m);
    ct_named p = ct_module_params(m, true), b = ct_module_buffers(m);
    ct_optim *o = ct_optim_new(adamw ? ct_adamw_config(1e-3, 1e-2) : ct_sgd_config(0.05, 0.9, 1e-4, true));
    ct_optim_add_group(o, p.n, (const char *const *)p.names, p.tensors, CT_OPTIM_DEFAULT,
                       CT_OPTIM_DEFAULT);
    /* under memcheck (CT_TEST_SMALL) a quarter of the batch and two steps: still above the
     * size where the ops' loops go parallel (CT_PAR_MIN), so the same code runs */
    enum { BMAX = 48 };
    const int B = ct_test_small() ? 12 : BMAX, STEPS = ct_test_small() ? 2 : 3;
    int64_t y[BMAX];
    for (int i = 0; i < B; i++) y[i] = (int64_t)ct_rng_below(&r, 10);
    *n = STEPS + ct_named_numel(&p) + ct_named_numel(&b) + (vit ? B * 10 : 0);
    float *out = malloc((size_t)*n * sizeof(float)), *dst = out;
    CT_SCOPE {
        ct_tensor *x = ct_test_rand(CT_SHAPE(B, 1, 28, 28), -1, 1, 11);
        for (int s = 0; s < STEPS; s++) {
            CT_SCOPE {
                ct_optim_zero_grad(o);
                ct_tensor *loss = ct_cross_entropy(ct_module_forward(m, x), y, CT_REDUCE_MEAN);
                ct_backward(loss);
                ct_optim_step(o);
                *dst++ = loss->data[0];
            }
        }
        if (vit)
            CT_EVALUATE(m) {
                ct_tensor *logits = ct_module_forward(m, x);
                memcpy(dst, logits->data, (size_t)logits->numel * sizeof(float));
                dst += logits->numel;
            }
    }
    for (int i = 0; i < p.n; i++, dst += p.tensors[i - 1]->numel)
        memcpy(dst, p.tensors[i]->data, (size_t)p.tensors[i]->numel * sizeof(float));
    for (int i = 0; i < b.n; i++, dst += b.tensors[i - 1]->numel)
        memcpy(dst, b.tensors[i]->data, (size_t)b.tensors[i]->numel * sizeof(float));
    ck_assert_int_eq(dst - out, *n);
    ct_named_free(&p);
    ct_named_free(&b);
    ct_optim_free(o);
    ct_module_free(m);
    return out;
}

static void expect_same_bits(const float *a, const float *b, int64_t n, int threads) {
    for (int64_t i = 0; i < n; i++)
        ck_assert_msg(memcmp(&a[i], &b[i], sizeof(float)) == 0,
                      "value %lld: %.9g with 1 thread, %.9g with %d", (long long)i, a[i], b[i],
                      threads);
}

static void model_case(bool adamw, bool vit) {
    int saved = ct_get_threads();
    int64_t n1, n;
    float *one = train_model(1, adamw, vit, &n1);
    for (int t = 2; t <= 3; t++) {
        float *many = train_model(t, adamw, vit, &n);
        ck_assert_int_eq(n, n1);
        expect_same_bits(one, many, n, t);
        free(many);
    }
    free(one);
    ct_set_threads(saved);
}

START_TEST(cnn_steps_adamw_same_bits_for_1_2_3_threads) { model_case(true, false); }
END_TEST

START_TEST(cnn_steps_sgd_same_bits_for_1_2_3_threads) { model_case(false, false); }
END_TEST

START_TEST(vit_steps_and_eval_same_bits_for_1_2_3_threads) { model_case(true, true); }
END_TEST

/* One conv's output and every gradient with `threads` threads: x [n, c, hw[0], hw[1]],
 * w [o, c/groups, 3, 3], a bias, a fixed upstream gradient; *n gets the count. */
typedef struct {
    int64_t n, c, o, h, w;
    ct_conv2d_opts opts;
} conv_case;

static float *conv_run(const conv_case *k, int threads, int64_t *n) {
    ct_set_threads(threads);
    float *out = NULL;
    CT_SCOPE {
        int64_t s = k->opts.stride_h, p = k->opts.pad_h;
        int64_t oh = (k->h + 2 * p - 3) / s + 1, ow = (k->w + 2 * p - 3) / s + 1;
        ct_tensor *x = ct_test_rand(CT_SHAPE(k->n, k->c, k->h, k->w), -1, 1, 1);
        ct_tensor *w = ct_test_rand(CT_SHAPE(k->o, k->c / k->opts.groups, 3, 3), -1, 1, 2);
        ct_tensor *bias = ct_test_rand(CT_SHAPE(k->o), -1, 1, 3);
        ct_tensor *g = ct_test_rand(CT_SHAPE(k->n, k->o, oh, ow), -1, 1, 4);
        ct_tensor *in[3] = {x, w, bias};
        for (int i = 0; i < 3; i++) ct_set_requires_grad(in[i], true);
        ct_tensor *y = ct_conv2d_ex(x, w, bias, &k->opts);
        ct_backward_ex(y, g, false);
        *n = y->numel + x->numel + w->numel + bias->numel;
        out = malloc((size_t)*n * sizeof(float));
        float *dst = out;
        memcpy(dst, y->data, (size_t)y->numel * sizeof(float));
        dst += y->numel;
        for (int i = 0; i < 3; i++, dst += in[i - 1]->numel)
            memcpy(dst, in[i]->grad->data, (size_t)in[i]->numel * sizeof(float));
        for (int i = 0; i < 3; i++) ct_zero_grad(in[i]);
    }
    return out;
}

static void conv_same_bits(const conv_case *k) {
    int saved = ct_get_threads();
    int64_t n1, n;
    float *one = conv_run(k, 1, &n1);
    for (int t = 2; t <= 3; t++) {
        float *many = conv_run(k, t, &n);
        ck_assert_int_eq(n, n1);
        expect_same_bits(one, many, n, t);
        free(many);
    }
    free(one);
    ct_set_threads(saved);
}

/* Small images: chunks of several samples and dW summed in parts (the ResNet layer4 path),
 * with groups, stride 2 and bias. */
START_TEST(chunked_conv_same_bits_for_1_2_3_threads) {
    conv_case k = {96, 8, 16, 6, 6, {.stride_h = 2, .stride_w = 2, .pad_h = 1, .pad_w = 1, .groups = 2}};
    conv_same_bits(&k);
}
END_TEST

/* Pixel classes (2x2 planes: four corner classes, the padding skipped): the classes' GEMMs
 * add into the same dW blocks, in class order whatever the thread count. With groups and
 * two chunks (parallel chunks), and in one chunk of 4 samples (below the dense path's
 * batch) with 160 output channels (the GEMMs split into blocks of rows and of classes
 * across the threads). */
START_TEST(classed_conv_same_bits_for_1_2_3_threads) {
    conv_case k = {80, 8, 12, 2, 2, {.stride_h = 1, .stride_w = 1, .pad_h = 1, .pad_w = 1, .groups = 2}};
    conv_same_bits(&k);
    conv_case one = {4, 8, 160, 2, 2, {.stride_h = 1, .stride_w = 1, .pad_h = 1, .pad_w = 1, .groups = 1}};
    conv_same_bits(&one);
}
END_TEST

/* One GEMM over the batch (conv_dense.c; 2x2 and 1x1 planes, 8 samples or more): ct_gemm's
 * blocks, D's rows and dW's fold by output channel. */
START_TEST(dense_conv_same_bits_for_1_2_3_threads) {
    conv_case k = {16, 64, 160, 2, 2, {.stride_h = 1, .stride_w = 1, .pad_h = 1, .pad_w = 1, .groups = 1}};
    conv_same_bits(&k);
    conv_case s = {40, 96, 80, 1, 1, {.stride_h = 1, .stride_w = 1, .pad_h = 1, .pad_w = 1, .groups = 1}};
    conv_same_bits(&s);
}
END_TEST

/* Winograd (3x3, stride 1, padding 1, 16+ channels, 2x2+ planes): odd plane sizes (half
 * tiles) and 10 samples in chunks of 3, 3, 3 and 1; 4x4 planes, 70 samples in chunks of
 * 32, 32 and 6. */
START_TEST(winograd_conv_same_bits_for_1_2_3_threads) {
    conv_case k = {10, 16, 20, 11, 13, {.stride_h = 1, .stride_w = 1, .pad_h = 1, .pad_w = 1, .groups = 1}};
    conv_same_bits(&k);
    conv_case s = {70, 16, 16, 4, 4, {.stride_h = 1, .stride_w = 1, .pad_h = 1, .pad_w = 1, .groups = 1}};
    conv_same_bits(&s);
}
END_TEST

/* ---- many threads allocating at once ----------------------------------------------------- */

enum { HAMMER_THREADS = 4, HAMMER_ITERS = 100000 };

typedef struct {
    int id;
    ct_tensor *handed_back; /* made here, released by the main thread */
    double sum;             /* of every backward's gradient, checked by the caller */
} hammer_arg;

/* Per iteration: tensors of several size classes, a view, a recorded graph (nodes and saved
 * tensors) and, every 64th time, a backward; all dropped by the scope. Every counter update
 * of the allocator, the tensors and autograd happens here in parallel with the others. */
static void *hammer(void *p) {
    hammer_arg *a = p;
    for (int i = 0; i < HAMMER_ITERS; i++) CT_SCOPE {
        int64_t n = 1 + (i * 7 + a->id) % 300; /* 4 B .. 1.2 KB: several size classes */
        ct_tensor *x = ct_full(CT_SHAPE(n), 1.0f);
        ct_tensor *v = ct_view_raw(x, CT_SHAPE(1, n));
        ct_set_requires_grad(x, true);
        ct_tensor *y = ct_sum(ct_mul(x, ct_full(CT_SHAPE(n), 2.0f)));
        if (i % 64 == 0) {
            ct_backward(y);
            a->sum += x->grad->data[0]; /* d(sum 2x)/dx = 2 */
        }
        (void)v;
    }
    a->handed_back = ct_own(ct_zeros(CT_SHAPE(3, 5)));
    ct_zeros(CT_SHAPE(7)); /* left in no scope: the thread's exit releases it */
    return NULL;
}

START_TEST(counters_exact_after_tensors_on_many_threads) {
    ct_alloc_trim();
    ct_stats before = ct_stats_get();
    pthread_t th[HAMMER_THREADS];
    hammer_arg args[HAMMER_THREADS];
    for (int i = 0; i < HAMMER_THREADS; i++) {
        args[i] = (hammer_arg){.id = i};
        ck_assert_int_eq(pthread_create(&th[i], NULL, hammer, &args[i]), 0);
    }
    for (int i = 0; i < HAMMER_THREADS; i++) ck_assert_int_eq(pthread_join(th[i], NULL), 0);
    ct_stats during = ct_stats_get(); /* the handed-back tensors are still alive */
    ck_assert_int_eq(during.live_tensors, before.live_tensors + HAMMER_THREADS);
    ck_assert_int_eq(during.live_bytes, before.live_bytes + HAMMER_THREADS * 15 * (int64_t)sizeof(float));
    for (int i = 0; i < HAMMER_THREADS; i++) {
        ck_assert_double_eq(args[i].sum, 2.0 * ((HAMMER_ITERS + 63) / 64));
        ct_release(args[i].handed_back); /* a block made on another thread joins this cache */
    }
    ct_test_assert_counters_back(before);
}
END_TEST

int main(void) {
    Suite *s = suite_create("threads");
    TCase *tc = tcase_create("bits");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, cnn_steps_adamw_same_bits_for_1_2_3_threads);
    tcase_add_test(tc, cnn_steps_sgd_same_bits_for_1_2_3_threads);
    tcase_add_test(tc, vit_steps_and_eval_same_bits_for_1_2_3_threads);
    tcase_add_test(tc, chunked_conv_same_bits_for_1_2_3_threads);
    tcase_add_test(tc, winograd_conv_same_bits_for_1_2_3_threads);
    tcase_add_test(tc, dense_conv_same_bits_for_1_2_3_threads);
    tcase_add_test(tc, classed_conv_same_bits_for_1_2_3_threads);
    suite_add_tcase(s, tc);
    TCase *tm = tcase_create("model");
    tcase_set_timeout(tm, 120);
    tcase_add_test(tm, counters_exact_after_tensors_on_many_threads);
    suite_add_tcase(s, tm);
    return ct_test_run(s);
}
