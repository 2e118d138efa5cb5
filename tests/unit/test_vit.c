/* The VisionTransformer and its layers (LayerNorm, MultiheadAttention, EncoderBlock):
 * torchvision's state_dict names, sizes and initialisation, the presets, the frozen prefix
 * the feature cache uses (a linear probe caches the class-token feature only), backward
 * stopping at a frozen backbone, and refused configurations. torchvision parity itself:
 * tests/parity/test_vit_parity.py. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

/* torchvision: VisionTransformer(8, 4, 1, 2, 8, 16, num_classes=3).state_dict(), in order. */
static const struct {
    const char *name;
    int64_t numel;
} tv_names[] = {
    {"class_token", 8},
    {"conv_proj.weight", 384},
    {"conv_proj.bias", 8},
    {"encoder.pos_embedding", 40},
    {"encoder.layers.encoder_layer_0.ln_1.weight", 8},
    {"encoder.layers.encoder_layer_0.ln_1.bias", 8},
    {"encoder.layers.encoder_layer_0.self_attention.in_proj_weight", 192},
    {"encoder.layers.encoder_layer_0.self_attention.in_proj_bias", 24},
    {"encoder.layers.encoder_layer_0.self_attention.out_proj.weight", 64},
    {"encoder.layers.encoder_layer_0.self_attention.out_proj.bias", 8},
    {"encoder.layers.encoder_layer_0.ln_2.weight", 8},
    {"encoder.layers.encoder_layer_0.ln_2.bias", 8},
    {"encoder.layers.encoder_layer_0.mlp.0.weight", 128},
    {"encoder.layers.encoder_layer_0.mlp.0.bias", 16},
    {"encoder.layers.encoder_layer_0.mlp.3.weight", 128},
    {"encoder.layers.encoder_layer_0.mlp.3.bias", 8},
    {"encoder.ln.weight", 8},
    {"encoder.ln.bias", 8},
    {"heads.head.weight", 24},
    {"heads.head.bias", 3},
};

static ct_module *vit(int64_t image, int64_t patch, int64_t layers, int64_t heads, int64_t hidden, int64_t mlp,
                      int64_t chans, int64_t classes, float dropout, uint64_t seed) {
    ct_vit_config c = {image, patch, layers, heads, hidden, mlp, chans, classes, dropout, dropout};
    ct_rng r;
    ct_rng_seed(&r, seed);
    ct_module *m = NULL;
    ck_assert_msg(ct_nn_vit(&c, &r, &m) == CT_OK, "%s", ct_last_error());
    return m;
}

START_TEST(state_names_match_torchvision) {
    ct_module *m = vit(8, 4, 1, 2, 8, 16, 3, 3, 0, 1);
    ct_named p = ct_module_params(m, false);
    int n = (int)(sizeof tv_names / sizeof *tv_names);
    ck_assert_int_eq(p.n, n);
    for (int i = 0; i < n; i++) {
        ck_assert_str_eq(p.names[i], tv_names[i].name);
        ck_assert_int_eq(p.tensors[i]->numel, tv_names[i].numel);
    }
    ct_named_free(&p);
    ct_named b = ct_module_buffers(m);
    ck_assert_int_eq(b.n, 0);
    ct_named_free(&b);
    ct_module_free(m);
}
END_TEST

static double mean_sq(const ct_tensor *t) {
    double s = 0;
    for (int64_t i = 0; i < t->numel; i++) s += (double)t->data[i] * t->data[i];
    return s / (double)t->numel;
}

static double max_abs(const ct_tensor *t) {
    double s = 0;
    for (int64_t i = 0; i < t->numel; i++) s = fabs(t->data[i]) > s ? fabs(t->data[i]) : s;
    return s;
}

/* torchvision's initialisation, statistically (64 wide, 3 channels, 8x8 patches). */
START_TEST(init_matches_torchvision) {
    ct_module *m = vit(32, 8, 2, 4, 64, 128, 3, 10, 0, 2);
    const char *pre = "encoder.layers.encoder_layer_1.";
    char name[160];
#define P(s) ct_module_find(m, s)
#define L(s) (snprintf(name, sizeof name, "%s%s", pre, s), ct_module_find(m, name))
    ck_assert_double_eq(max_abs(P("class_token")), 0);
    ck_assert_double_eq(max_abs(P("heads.head.weight")), 0);
    ck_assert_double_eq(max_abs(P("heads.head.bias")), 0);
    ck_assert_double_eq(max_abs(P("conv_proj.bias")), 0);
    ck_assert_double_eq(max_abs(L("self_attention.in_proj_bias")), 0);
    ck_assert_double_eq(max_abs(L("self_attention.out_proj.bias")), 0);
    ck_assert_double_eq(max_abs(L("ln_1.bias")), 0);
    ct_tensor *ln = L("ln_2.weight");
    for (int64_t i = 0; i < ln->numel; i++) ck_assert_float_eq(ln->data[i], 1);
    /* std: conv_proj sqrt(1 / (3*8*8)), pos_embedding 0.02; xavier bound sqrt(6 / (in + out)) */
    ck_assert_double_eq_tol(sqrt(mean_sq(P("conv_proj.weight"))), sqrt(1.0 / 192), 0.1 * sqrt(1.0 / 192));
    ck_assert_double_eq_tol(sqrt(mean_sq(P("encoder.pos_embedding"))), 0.02, 0.002);
    double xb = sqrt(6.0 / (64 + 192));
    ck_assert_double_le(max_abs(L("self_attention.in_proj_weight")), xb);
    ck_assert_double_ge(max_abs(L("self_attention.in_proj_weight")), 0.95 * xb);
    ck_assert_double_eq_tol(mean_sq(L("self_attention.in_proj_weight")), xb * xb / 3, 0.1 * xb * xb / 3);
    double mb = sqrt(6.0 / (64 + 128));
    ck_assert_double_le(max_abs(L("mlp.0.weight")), mb);
    ck_assert_double_ge(max_abs(L("mlp.3.weight")), 0.95 * mb);
    ck_assert_double_le(max_abs(L("mlp.0.bias")), 1e-5); /* N(0, 1e-6) */
    ck_assert_double_gt(max_abs(L("mlp.0.bias")), 0);
    /* out_proj.weight: Linear's default, U(-1/sqrt(64), 1/sqrt(64)) */
    ck_assert_double_le(max_abs(L("self_attention.out_proj.weight")), 1.0 / 8);
    ck_assert_double_ge(max_abs(L("self_attention.out_proj.weight")), 0.9 / 8);
#undef P
#undef L
    ct_module_free(m);
}
END_TEST

START_TEST(presets_have_torchvision_sizes) {
    static const struct {
        const char *name;
        int64_t params;
    } want[] = {{"vit_b_16", 86567656}, {"vit_b_32", 88224232}};
    for (int i = 0; i < 2; i++) {
        ct_vit_config c = {.in_channels = 3, .num_classes = 1000};
        ck_assert_int_eq(ct_vit_preset(want[i].name, &c), CT_OK);
        ck_assert_int_eq(c.image_size, 224);
        if (ct_test_small()) continue; /* 175M draws under memcheck; the small ViTs build alike */
        ct_rng r;
        ct_rng_seed(&r, 3);
        ct_module *m = NULL;
        ck_assert_int_eq(ct_nn_vit(&c, &r, &m), CT_OK);
        ct_named p = ct_module_params(m, false);
        ck_assert_int_eq(ct_named_numel(&p), want[i].params);
        ct_named_free(&p);
        ct_module_free(m);
    }
    ct_vit_config t = {0};
    ck_assert_int_eq(ct_vit_preset("vit_tiny", &t), CT_OK);
    ck_assert_int_eq(t.image_size, 28);
    ck_assert_int_eq(t.image_size % t.patch_size, 0);
    ct_test_expect_error(ct_vit_preset("vit_l_16", &t), CT_ERR_CONFIG, "vit_l_16", "vit_b_16", NULL);
}
END_TEST

START_TEST(bad_configs_are_refused) {
    ct_rng r;
    ct_rng_seed(&r, 4);
    ct_module *m = (ct_module *)1;
    ct_vit_config c = {28, 5, 1, 2, 8, 16, 1, 10, 0, 0};
    ct_test_expect_error(ct_nn_vit(&c, &r, &m), CT_ERR_CONFIG, "image_size 28", "patch_size 5", NULL);
    ck_assert_ptr_null(m);
    c.patch_size = 4, c.num_heads = 3;
    ct_test_expect_error(ct_nn_vit(&c, &r, &m), CT_ERR_CONFIG, "num_heads 3", "hidden_dim 8", NULL);
    c.num_heads = 2, c.num_layers = 0;
    ct_test_expect_error(ct_nn_vit(&c, &r, &m), CT_ERR_CONFIG, "num_layers = 0", NULL);
    c.num_layers = 1, c.attention_dropout = 1;
    ct_test_expect_error(ct_nn_vit(&c, &r, &m), CT_ERR_CONFIG, "attention_dropout 1", NULL);
}
END_TEST

/* The linear probe: with class_token, conv_proj.* and encoder.* frozen, the frozen prefix is
 * everything up to the class-token feature, which is [N, hidden] per batch (what the cache
 * keeps), and running prefix then rest is the forward, bit for bit. Backward runs only the
 * head's dW GEMM. With the last block trainable the prefix ends inside encoder.layers. */
START_TEST(frozen_prefix_is_the_class_token_feature) {
    ct_module *m = vit(16, 4, 3, 2, 16, 32, 1, 5, 0, 5);
    /* class_token, conv_proj, encoder: embed dropout 3 blocks ln, class_feature, heads.head */
    ck_assert_int_eq(ct_seq_num_layers(m), 1 + 6 + 1 + 1);
    ck_assert_int_eq(ct_module_frozen_prefix(m), 0);
    ck_assert_int_eq(ct_module_set_requires_grad(m, "class_token,conv_proj.*,encoder.*", false), 18 + 12 * 2);
    ck_assert_int_eq(ct_module_frozen_prefix(m), 8);
    int64_t y[3] = {0, 4, 2};
    CT_SCOPE {
        ct_tensor *x = ct_test_rand(CT_SHAPE(3, 1, 16, 16), -1, 1, 6);
        ct_tensor *feat = ct_seq_forward_range(m, 0, 8, x);
        ck_assert_int_eq(feat->ndim, 2);
        ck_assert_int_eq(feat->shape[0], 3);
        ck_assert_int_eq(feat->shape[1], 16);
        ck_assert(!feat->requires_grad);
        ct_tensor *full = ct_module_forward(m, x), *split = ct_seq_forward_range(m, 8, 9, feat);
        for (int64_t i = 0; i < full->numel; i++) ck_assert_float_eq(full->data[i], split->data[i]);
        int64_t g0 = ct_stats_get().gemm_calls;
        ct_backward(ct_cross_entropy(full, y, CT_REDUCE_MEAN));
        ck_assert_int_eq(ct_stats_get().gemm_calls - g0, 1); /* heads.head dW only */
    }
    ct_named p = ct_module_params(m, false);
    for (int i = 0; i < p.n; i++)
        ck_assert_msg((strncmp(p.names[i], "heads.", 6) == 0) == (ct_grad(p.tensors[i]) != NULL), "%s", p.names[i]);
    ct_named_free(&p);
    /* the last block trains too: conv_proj, embed, dropout and two blocks are fixed */
    ct_module_set_requires_grad(m, "encoder.layers.encoder_layer_2.*", true);
    ck_assert_int_eq(ct_module_frozen_prefix(m), 5);
    /* a trainable class token is used inside the encoder: only conv_proj can be cached... but
     * the class token lives at the root, so no root layer is fixed */
    ct_module_set_requires_grad(m, "class_token", true);
    ck_assert_int_eq(ct_module_frozen_prefix(m), 0);
    ct_module_set_requires_grad(m, "class_token", false);
    ct_module_set_requires_grad(m, "encoder.pos_embedding", true);
    ck_assert_int_eq(ct_module_frozen_prefix(m), 1); /* conv_proj */
    ct_module_free(m);
}
END_TEST

/* Active dropout (train mode, p > 0) ends the prefix at encoder.dropout; attention dropout
 * at the first block. Eval mode makes both fixed functions. */
START_TEST(dropout_ends_the_prefix_in_train_mode) {
    ct_module *m = vit(16, 4, 2, 2, 16, 32, 1, 5, 0.1f, 7);
    ct_module_set_requires_grad(m, "class_token,conv_proj.*,encoder.*", false);
    ck_assert_int_eq(ct_module_frozen_prefix(m), 2); /* conv_proj, encoder.embed */
    ct_module_train(m, false);
    ck_assert_int_eq(ct_module_frozen_prefix(m), 7);
    ct_module_free(m);
}
END_TEST

/* Train mode with dropout draws from the modules' streams: two forwards differ; eval and
 * a reseed repeat. Everything made in a training step is freed. */
START_TEST(training_step_frees_everything) {
    ct_module *m = vit(16, 4, 2, 2, 16, 32, 1, 5, 0.2f, 8);
    ct_module_pack(m);
    ct_tensor *hw = ct_module_find(m, "heads.head.weight"); /* zero at init: logits would be too */
    for (int64_t i = 0; i < hw->numel; i++) hw->data[i] = (float)((i % 7) - 3) * 0.1f;
    ct_stats before = ct_stats_get();
    int64_t y[2] = {1, 3};
    CT_SCOPE {
        ct_tensor *x = ct_test_rand(CT_SHAPE(2, 1, 16, 16), -1, 1, 9);
        ct_tensor *a = ct_module_forward(m, x), *b = ct_module_forward(m, x);
        ck_assert(a->data[0] != b->data[0] || a->data[1] != b->data[1]);
        ct_backward(ct_cross_entropy(a, y, CT_REDUCE_MEAN));
        CT_EVALUATE(m) {
            ct_tensor *e1 = ct_module_forward(m, x), *e2 = ct_module_forward(m, x);
            for (int64_t i = 0; i < e1->numel; i++) ck_assert_float_eq(e1->data[i], e2->data[i]);
        }
    }
    ct_named p = ct_module_params(m, false);
    for (int i = 0; i < p.n; i++) ct_clear_grad(p.tensors[i]);
    ct_named_free(&p);
    ct_test_assert_counters_back(before);
    ct_module_free(m);
}
END_TEST

/* An inference forward (eval mode, no autograd) runs each encoder block over chunks of
 * 512 tokens (30 samples of 17 here, so 65 samples make chunks of 30, 30 and 5): the
 * logits match the whole-batch forward that grad mode runs, and a sample alone. */
START_TEST(inference_forward_in_chunks_matches_whole_batch) {
    ct_module *m = vit(16, 4, 2, 2, 16, 32, 1, 5, 0, 11);
    ct_tensor *hw = ct_module_find(m, "heads.head.weight"); /* zero at init: logits would be too */
    for (int64_t i = 0; i < hw->numel; i++) hw->data[i] = (float)((i % 7) - 3) * 0.1f;
    ct_module_train(m, false);
    CT_SCOPE {
        ct_tensor *x = ct_test_rand(CT_SHAPE(65, 1, 16, 16), -1, 1, 12);
        int64_t g0 = ct_stats_get().gemm_calls;
        ct_tensor *whole = ct_module_forward(m, x), *chunked = NULL, *last = NULL;
        int64_t g1 = ct_stats_get().gemm_calls;
        ck_assert(whole->requires_grad); /* a graph: the blocks saw the whole batch */
        CT_NO_GRAD {
            chunked = ct_module_forward(m, x);
            /* 3 chunks: each block's 4 linears run 3 times (attention's per-head GEMMs and
             * the rest are the same in number) */
            ck_assert_int_eq(ct_stats_get().gemm_calls - g1, g1 - g0 + 2 * 2 * 4);
            last = ct_module_forward(m, ct_narrow(x, 0, 64, 1));
        }
        ck_assert_int_eq(chunked->numel, 65 * 5);
        for (int64_t i = 0; i < chunked->numel; i++) ck_assert_close(chunked->data[i], whole->data[i], 1e-5);
        for (int64_t j = 0; j < 5; j++) ck_assert_close(chunked->data[64 * 5 + j], last->data[j], 1e-5);
    }
    ct_module_free(m);
}
END_TEST

START_TEST(wrong_input_shape_aborts) {
    ct_test_expect_abort("VisionTransformer: [2, 9, 16] patch tokens do not fit pos_embedding [1, 17, 16]");
    ct_module *m = vit(16, 4, 1, 2, 16, 32, 1, 5, 0, 10);
    CT_SCOPE { ct_module_forward(m, ct_zeros(CT_SHAPE(2, 1, 12, 12))); }
}
END_TEST

int main(void) {
    Suite *s = suite_create("vit");
    TCase *tc = tcase_create("model");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, state_names_match_torchvision);
    tcase_add_test(tc, init_matches_torchvision);
    tcase_add_test(tc, presets_have_torchvision_sizes);
    tcase_add_test(tc, bad_configs_are_refused);
    tcase_add_test(tc, frozen_prefix_is_the_class_token_feature);
    tcase_add_test(tc, dropout_ends_the_prefix_in_train_mode);
    tcase_add_test(tc, training_step_frees_everything);
    tcase_add_test(tc, inference_forward_in_chunks_matches_whole_batch);
    tcase_add_test_raise_signal(tc, wrong_input_shape_aborts, SIGABRT);
    suite_add_tcase(s, tc);
    return ct_test_run(s);
}
