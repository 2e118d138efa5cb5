/* Modules: PyTorch names and layouts, init, train/eval vs grad mode, freezing, packing. */
#include <string.h>

#include <signal.h>

#include "util.h"

static ct_rng rng_of(uint64_t seed) {
    ct_rng r;
    ct_rng_seed(&r, seed);
    return r;
}

START_TEST(cnn_state_names_match_pytorch) {
    ct_rng r = rng_of(1);
    ct_module *m = ct_nn_cnn(1, 28, 10, 0.25f, &r);
    ct_named p = ct_module_params(m, false), b = ct_module_buffers(m);
    const char *want_p[] = {"backbone.0.weight", "backbone.0.bias", "backbone.1.weight",
                            "backbone.1.bias", "backbone.4.weight", "backbone.4.bias",
                            "backbone.5.weight", "backbone.5.bias", "head.0.weight",
                            "head.0.bias", "head.3.weight", "head.3.bias"};
    ck_assert_int_eq(p.n, 12);
    for (int i = 0; i < p.n; i++) ck_assert_str_eq(p.names[i], want_p[i]);
    ck_assert_int_eq(b.n, 4);
    ck_assert_str_eq(b.names[0], "backbone.1.running_mean");
    ck_assert_str_eq(b.names[3], "backbone.5.running_var");
    /* layouts: conv [out, in, kh, kw], linear [out, in] */
    ct_tensor *w = ct_module_find(m, "backbone.4.weight");
    ck_assert_int_eq(w->ndim, 4);
    ck_assert_int_eq(w->shape[0], 64);
    ck_assert_int_eq(w->shape[1], 32);
    ck_assert_int_eq(w->shape[2], 3);
    ct_tensor *fc = ct_module_find(m, "head.0.weight");
    ck_assert_int_eq(fc->shape[0], 128);
    ck_assert_int_eq(fc->shape[1], 64 * 7 * 7);
    ck_assert_ptr_null(ct_module_find(m, "head.9.weight"));
    ct_named_free(&p);
    ct_named_free(&b);
    ct_module_free(m);
}
END_TEST

START_TEST(default_init_bounds) {
    ct_rng r = rng_of(2);
    ct_module *lin = ct_nn_linear(400, 300, true, &r);
    float bound = 1.0f / 20; /* 1/sqrt(400) */
    double var = 0;
    ct_tensor *w = lin->params[0], *b = lin->params[1];
    for (int64_t i = 0; i < w->numel; i++) {
        ck_assert(w->data[i] >= -bound && w->data[i] <= bound);
        var += (double)w->data[i] * w->data[i];
    }
    var /= (double)w->numel;
    ck_assert_close(var, bound * bound / 3.0, 0.02); /* variance of U(-b, b) */
    for (int64_t i = 0; i < b->numel; i++) ck_assert(fabsf(b->data[i]) <= bound);
    ct_module_free(lin);
    /* conv fan_in = in * k * k = 8 * 9 */
    ct_module *conv = ct_nn_conv2d(8, 4, 3, 1, 1, true, &r);
    float cb = 1.0f / sqrtf(72);
    float mx = 0;
    for (int64_t i = 0; i < conv->params[0]->numel; i++) mx = fmaxf(mx, fabsf(conv->params[0]->data[i]));
    ck_assert(mx <= cb && mx > 0.8f * cb);
    ct_module_free(conv);
}
END_TEST

START_TEST(train_eval_is_separate_from_grad_mode) {
    ct_rng r = rng_of(3);
    ct_module *m = ct_nn_cnn(1, 28, 10, 0.25f, &r);
    ct_module_train(m, false);
    ck_assert(ct_is_grad_enabled()); /* eval() leaves grad mode alone */
    ck_assert(!m->children[1]->children[2]->training); /* recursive */
    CT_NO_GRAD { ct_module_train(m, true); }
    ck_assert(m->children[0]->children[1]->training); /* no_grad leaves module mode alone */
    /* the evaluate helper sets both and restores both, including mixed modes */
    m->children[1]->training = false;
    CT_EVALUATE(m) {
        ck_assert(!ct_is_grad_enabled());
        ck_assert(!m->training && !m->children[0]->children[1]->training);
    }
    ck_assert(ct_is_grad_enabled());
    ck_assert(m->training && m->children[0]->training && !m->children[1]->training);
    ct_module_free(m);
}
END_TEST

START_TEST(freeze_by_glob_and_unfreeze) {
    ct_rng r = rng_of(4);
    ct_module *m = ct_nn_cnn(1, 28, 10, 0.25f, &r);
    ck_assert_int_eq(ct_module_set_requires_grad(m, "backbone.*", false), 8);
    ct_named t = ct_module_params(m, true);
    ck_assert_int_eq(t.n, 4);
    ck_assert_str_eq(t.names[0], "head.0.weight");
    ct_named_free(&t);
    ck_assert(!ct_module_find(m, "backbone.0.weight")->requires_grad);
    /* unfreeze the last block, by a list of globs */
    ck_assert_int_eq(ct_module_set_requires_grad(m, "backbone.4.*, backbone.5.*", true), 4);
    t = ct_module_params(m, true);
    ck_assert_int_eq(t.n, 8);
    ct_named_free(&t);
    ck_assert_int_eq(ct_module_set_requires_grad(m, "nothing.*", false), 0);
    ct_module_free(m);
}
END_TEST

/* Frozen BN stays in eval mode (its running stats do not move) while the model trains;
 * with the policy off, or once unfrozen, training updates them. */
START_TEST(frozen_batchnorm_keeps_running_stats) {
    ct_rng r = rng_of(5);
    ct_module *bn = ct_nn_batchnorm2d(3);
    CT_SCOPE {
        ct_tensor *x = ct_rand_uniform(CT_SHAPE(4, 3, 5, 5), 1, 3, &r);
        ct_module_set_requires_grad(bn, "*", false);
        ct_module_forward(bn, x);
        ck_assert_float_eq(bn->buffers[0]->data[0], 0);
        ck_assert_int_eq(ct_nn_as_batchnorm(bn)->num_batches_tracked, 0);
        ct_module_set_frozen_bn_eval(bn, false);
        ct_module_forward(bn, x);
        ck_assert_float_ne(bn->buffers[0]->data[0], 0);
        ck_assert_int_eq(ct_nn_as_batchnorm(bn)->num_batches_tracked, 1);
        /* eval mode never updates them, whatever the grad mode */
        float before = bn->buffers[0]->data[0];
        ct_module_train(bn, false);
        ct_module_forward(bn, x);
        ck_assert_float_eq(bn->buffers[0]->data[0], before);
    }
    ct_module_free(bn);
}
END_TEST

START_TEST(dropout_module_modes) {
    ct_module *d = ct_nn_dropout(0.5f, 7);
    CT_SCOPE {
        ct_tensor *x = ct_ones(CT_SHAPE(1000));
        ct_tensor *y = ct_module_forward(d, x);
        int zeros = 0;
        for (int i = 0; i < 1000; i++) zeros += y->data[i] == 0;
        ck_assert(zeros > 400 && zeros < 600);
        ct_module_train(d, false);
        y = ct_module_forward(d, x);
        for (int i = 0; i < 1000; i++) ck_assert_float_eq(y->data[i], 1);
    }
    ct_module_free(d);
}
END_TEST

START_TEST(pack_makes_one_slab) {
    ct_rng r = rng_of(6);
    ct_alloc_trim(); /* an empty cache, whatever ran before in this process */
    ct_module *m = ct_nn_mlp(784, 10, &r);
    float first = ct_module_find(m, "1.weight")->data[5], last = ct_module_find(m, "5.bias")->data[9];
    size_t wbytes = (size_t)ct_module_find(m, "1.weight")->numel * sizeof(float);
    ct_module_pack(m);
    /* The parameters' old blocks went back to the system, not to the allocator's cache
     * (where they would stay resident): a block of 1.weight's size is a new allocation. */
    int64_t mallocs = ct_stats_get().mallocs;
    void *blk = ct_alloc(wbytes);
    ck_assert_int_eq(ct_stats_get().mallocs, mallocs + 1);
    ct_free(blk, wbytes);
    ct_named p = ct_module_params(m, false);
    const float *expect = m->slab;
    for (int i = 0; i < p.n; i++) {
        ck_assert_ptr_eq(p.tensors[i]->data, expect);
        expect += p.tensors[i]->numel;
    }
    ck_assert_int_eq((int64_t)m->slab_floats, ct_named_numel(&p));
    ck_assert_float_eq(ct_module_find(m, "1.weight")->data[5], first);
    ck_assert_float_eq(ct_module_find(m, "5.bias")->data[9], last);
    ct_named_free(&p);
    ct_module_free(m);
}
END_TEST

START_TEST(spec_builds_and_rejects) {
    ct_rng r = rng_of(7);
    ct_module *m = NULL;
    ck_assert_int_eq(ct_nn_from_spec("conv:8:3:1:1,bn,relu,maxpool:2,flatten,linear:10",
                                     CT_SHAPE(1, 28, 28), 0.1f, &r, &m), CT_OK);
    ck_assert_int_eq(m->nchildren, 6);
    ck_assert_int_eq(ct_module_find(m, "5.weight")->shape[1], 8 * 14 * 14);
    CT_SCOPE {
        ct_tensor *y = ct_module_forward(m, ct_zeros(CT_SHAPE(2, 1, 28, 28)));
        ck_assert_int_eq(y->shape[0], 2);
        ck_assert_int_eq(y->shape[1], 10);
    }
    ct_module_free(m);
    ck_assert_int_eq(ct_nn_from_spec("flatten,linear:64,swish", CT_SHAPE(1, 28, 28), 0, &r, &m),
                     CT_ERR_CONFIG);
    ck_assert_ptr_null(m);
    ck_assert_ptr_nonnull(strstr(ct_last_error(), "item 3 'swish'"));
    ck_assert_int_eq(ct_nn_from_spec("linear:10", CT_SHAPE(1, 28, 28), 0, &r, &m), CT_ERR_CONFIG);
    ck_assert_ptr_nonnull(strstr(ct_last_error(), "flatten"));
}
END_TEST

/* Sequential gives each layer its own scope: under no_grad only the output survives the
 * forward; with grad mode the saved activations do. */
START_TEST(sequential_nograd_frees_activations) {
    ct_rng r = rng_of(8);
    ct_module *m = ct_nn_mlp(784, 10, &r);
    CT_SCOPE {
        ct_tensor *x = ct_rand_uniform(CT_SHAPE(32, 784), 0, 1, &r);
        int64_t base = ct_stats_get().live_bytes;
        int64_t held_nograd = 0, held_grad = 0;
        CT_SCOPE {
            CT_NO_GRAD { ct_module_forward(m, x); }
            held_nograd = ct_stats_get().live_bytes - base;
        }
        CT_SCOPE {
            ct_module_forward(m, x);
            held_grad = ct_stats_get().live_bytes - base;
        }
        ck_assert_int_eq(held_nograd, 32 * 10 * 4);
        /* relu outputs 256 and 128 wide are saved (for relu's and the next linear's backward) */
        ck_assert_int_ge(held_grad, 32 * (256 + 128 + 10) * 4);
    }
    ct_module_free(m);
}
END_TEST


/* A small MLP learns a synthetic 3-class problem (the class is the index of the largest of
 * three fixed random projections) to a low loss with plain SGD: the whole stack of
 * modules, autograd and ops agrees on the gradient. */
START_TEST(mlp_fits_synthetic_problem) {
    ct_rng r = rng_of(9);
    ct_module *m = ct_nn_sequential();
    ct_seq_add(m, NULL, ct_nn_linear(8, 32, true, &r));
    ct_seq_add(m, NULL, ct_nn_relu());
    ct_seq_add(m, NULL, ct_nn_linear(32, 3, true, &r));
    float proj[3][8];
    for (int c = 0; c < 3; c++)
        for (int k = 0; k < 8; k++) proj[c][k] = ct_rng_normal(&r);
    ct_named ps = ct_module_params(m, false);
    double loss = 0;
    int64_t y[64];
    for (int step = 0; step < 600; step++) CT_SCOPE {
        ct_tensor *x = ct_rand_normal(CT_SHAPE(64, 8), 0, 1, &r);
        for (int i = 0; i < 64; i++) {
            float best = -1e30f;
            for (int c = 0; c < 3; c++) {
                float v = 0;
                for (int k = 0; k < 8; k++) v += proj[c][k] * x->data[i * 8 + k];
                if (v > best) best = v, y[i] = c;
            }
        }
        ct_tensor *l = ct_cross_entropy(ct_module_forward(m, x), y, CT_REDUCE_MEAN);
        ct_backward(l);
        for (int i = 0; i < ps.n; i++) {
            ct_tensor *p = ps.tensors[i];
            for (int64_t k = 0; k < p->numel; k++) p->data[k] -= 0.1f * p->grad->data[k];
            ct_zero_grad(p);
        }
        /* average over the last 50 steps */
        if (step >= 550) loss += l->data[0] / 50;
    }
    ck_assert_msg(loss < 0.15, "final loss %g", loss);
    ct_named_free(&ps);
    ct_module_free(m);
}
END_TEST


/* A frozen backbone in front costs only its forward: it records no graph node, so backward
 * computes no backbone gradient at all (counted with the GEMM and node counters). */
START_TEST(frozen_backbone_costs_no_backward) {
    ct_rng r = rng_of(10);
    ct_module *m = ct_nn_cnn(1, 28, 10, 0.25f, &r);
    ct_module_set_requires_grad(m, "backbone.*", false);
    int64_t y[4] = {1, 2, 3, 4};
    CT_SCOPE {
        ct_tensor *x = ct_rand_uniform(CT_SHAPE(4, 1, 28, 28), 0, 1, &r);
        ct_stats s0 = ct_stats_get();
        ct_tensor *feat = ct_module_forward(m->children[0], x);
        ck_assert(!feat->requires_grad);
        ck_assert_int_eq(ct_stats_get().graph_nodes, s0.graph_nodes); /* no backbone node */
        ct_tensor *loss = ct_cross_entropy(ct_module_forward(m->children[1], feat), y, CT_REDUCE_MEAN);
        /* head: linear, relu, dropout, linear, cross_entropy */
        ck_assert_int_eq(ct_stats_get().graph_nodes - s0.graph_nodes, 5);
        int64_t g0 = ct_stats_get().gemm_calls;
        ct_backward(loss);
        /* dW of both head linears and dX of the second: no GEMM for the backbone or the data */
        ck_assert_int_eq(ct_stats_get().gemm_calls - g0, 3);
    }
    ct_named p = ct_module_params(m, false);
    for (int i = 0; i < p.n; i++) {
        bool head = strncmp(p.names[i], "head.", 5) == 0;
        ck_assert_msg(head == (ct_grad(p.tensors[i]) != NULL), "%s", p.names[i]);
    }
    ct_named_free(&p);
    ck_assert_int_eq(ct_module_frozen_prefix(m), 9); /* the backbone's 9 layers can be cached */
    ct_module_set_frozen_bn_eval(m, false); /* ...unless its BN keeps training: only the conv before it */
    ck_assert_int_eq(ct_module_frozen_prefix(m), 1);
    ct_module_free(m);
}
END_TEST

/* The frozen prefix may end inside a nested Sequential: with the head's first linear frozen
 * too it is backbone.0-8, head.0 (linear) and head.1 (ReLU); the active dropout (head.2)
 * ends it. Running the prefix and then the rest is the model's forward, bit for bit, in
 * train mode (same dropout seed) and in eval mode. */
START_TEST(frozen_prefix_ends_inside_a_nested_sequential) {
    ct_rng r = rng_of(11);
    ct_module *m = ct_nn_cnn(1, 28, 10, 0.25f, &r);
    ck_assert_int_eq(ct_seq_num_layers(m), 13);
    ct_module_set_requires_grad(m, "backbone.*", false);
    ct_module_set_requires_grad(m, "head.0.*", false);
    ck_assert_int_eq(ct_module_frozen_prefix(m), 11);
    ct_module_set_requires_grad(m, "head.0.*", true);
    ck_assert_int_eq(ct_module_frozen_prefix(m), 9);
    ct_module_train(m, false); /* eval: the dropout is the identity, so it joins the prefix */
    ct_module_set_requires_grad(m, "head.0.*", false);
    ck_assert_int_eq(ct_module_frozen_prefix(m), 12);
    ct_module_set_requires_grad(m, "head.3.*", false); /* all 13 fixed: nothing left to train */
    ck_assert_int_eq(ct_module_frozen_prefix(m), 0);
    for (int train = 0; train < 2; train++) CT_SCOPE {
        ct_module_train(m, train);
        ct_tensor *x = ct_rand_uniform(CT_SHAPE(3, 1, 28, 28), 0, 1, &r);
        ct_dropout_module *drop = ct_nn_as_dropout(m->children[1]->children[2]); /* head.2 */
        ct_rng saved = drop->rng;
        ct_tensor *full = ct_module_forward(m, x);
        drop->rng = saved;
        ct_tensor *split = ct_seq_forward_range(m, 11, 13, ct_seq_forward_range(m, 0, 11, x));
        ck_assert_int_eq(full->numel, split->numel);
        for (int64_t i = 0; i < full->numel; i++) ck_assert_float_eq(full->data[i], split->data[i]);
    }
    ct_module_free(m);
}
END_TEST

/* A grouped (depthwise) Conv2d module: the weight is [out, in/groups, k, k] and the forward
 * is the grouped convolution op with the module's stride and padding; groups that do not
 * divide the channels are refused. */
START_TEST(conv2d_module_groups) {
    CT_SCOPE {
        ct_rng r;
        ct_rng_seed(&r, 5);
        ct_module *m = ct_nn_conv2d_groups(4, 8, 3, 2, 1, 4, true, &r);
        ck_assert_int_eq(m->params[0]->shape[0], 8);
        ck_assert_int_eq(m->params[0]->shape[1], 1);
        ck_assert_int_eq(ct_nn_as_conv2d(m)->groups, 4);
        ct_tensor *x = ct_test_rand(CT_SHAPE(2, 4, 7, 6), -1, 1, 9);
        ct_tensor *y = ct_module_forward(m, x);
        ct_conv2d_opts o = {.stride_h = 2, .stride_w = 2, .pad_h = 1, .pad_w = 1, .groups = 4};
        ct_tensor *want = ct_conv2d_ex(x, m->params[0], m->params[1], &o);
        ck_assert_int_eq(y->numel, want->numel);
        ck_assert_mem_eq(y->data, want->data, (size_t)y->numel * sizeof(float));
        ct_module_free(m);
    }
}
END_TEST

/* A Sequential runs a BatchNorm directly followed by a ReLU as one batch_norm_relu node
 * with the two layers' values and state (running statistics, num_batches_tracked); a
 * range that ends between them, or a ReLU that is not next, keeps them apart. */
START_TEST(sequential_fuses_batchnorm_relu) {
    ct_module *seq = ct_nn_sequential(), *ref = ct_nn_sequential();
    ct_module *mods[2][3];
    for (int k = 0; k < 2; k++) {
        mods[k][0] = ct_nn_batchnorm2d(3);
        mods[k][1] = ct_nn_relu();
        mods[k][2] = ct_nn_relu();
    }
    ct_seq_add(seq, NULL, mods[0][0]);
    ct_seq_add(seq, NULL, mods[0][1]);
    ct_seq_add(ref, NULL, mods[1][0]);
    CT_SCOPE {
        ct_tensor *x = ct_test_rand(CT_SHAPE(4, 3, 5, 5), -2, 2, 1);
        ct_set_requires_grad(x, true);
        ct_tensor *y = ct_module_forward(seq, x);
        ck_assert_str_eq(y->grad_fn->op, "batch_norm_relu");
        ct_tensor *yr = ct_relu(ct_module_forward(ref, x)); /* the two ops, apart */
        ck_assert_str_eq(yr->grad_fn->op, "relu");
        for (int64_t i = 0; i < y->numel; i++) ck_assert_float_eq(y->data[i], yr->data[i]);
        for (int b = 0; b < 2; b++)
            for (int64_t c = 0; c < 3; c++)
                ck_assert_float_eq(mods[0][0]->buffers[b]->data[c], mods[1][0]->buffers[b]->data[c]);
        ck_assert_int_eq(ct_nn_as_batchnorm(mods[0][0])->num_batches_tracked, 1);
        /* a range that stops after the BatchNorm runs it alone */
        ct_tensor *h = ct_seq_forward_range(seq, 0, 1, x);
        ck_assert_str_eq(h->grad_fn->op, "batch_norm");
        ck_assert_str_eq(ct_seq_forward_range(seq, 1, 2, h)->grad_fn->op, "relu");
    }
    ct_module_free(seq);
    ct_module_free(ref);
    ct_module_free(mods[1][1]);
    ct_module_free(mods[1][2]);
    ct_module_free(mods[0][2]);
}
END_TEST

START_TEST(conv2d_module_bad_groups_aborts) {
    ct_test_expect_abort("groups 3 must divide");
    ct_rng r;
    ct_rng_seed(&r, 5);
    ct_nn_conv2d_groups(4, 8, 3, 1, 1, 3, false, &r);
}
END_TEST

int main(void) {
    Suite *s = suite_create("nn");
    TCase *tc = tcase_create("modules");
    tcase_add_test(tc, cnn_state_names_match_pytorch);
    tcase_add_test(tc, default_init_bounds);
    tcase_add_test(tc, train_eval_is_separate_from_grad_mode);
    tcase_add_test(tc, freeze_by_glob_and_unfreeze);
    tcase_add_test(tc, frozen_batchnorm_keeps_running_stats);
    tcase_add_test(tc, dropout_module_modes);
    tcase_add_test(tc, pack_makes_one_slab);
    tcase_add_test(tc, spec_builds_and_rejects);
    tcase_add_test(tc, sequential_nograd_frees_activations);
    tcase_add_test(tc, mlp_fits_synthetic_problem);
    tcase_add_test(tc, frozen_backbone_costs_no_backward);
    tcase_add_test(tc, frozen_prefix_ends_inside_a_nested_sequential);
    tcase_add_test(tc, conv2d_module_groups);
    tcase_add_test(tc, sequential_fuses_batchnorm_relu);
    tcase_add_test_raise_signal(tc, conv2d_module_bad_groups_aborts, SIGABRT);
    suite_add_tcase(s, tc);
    return ct_test_run(s);
}
