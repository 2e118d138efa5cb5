/* torchvision's ResNets as ctrain modules: names, sizes and initialisation as torchvision
 * 0.14 has them, shapes through both stems, modes reaching into blocks, and freezing by
 * torchvision names (backward stops at the frozen stages; the frozen stages can be cached). */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util.h"

static ct_module *resnet(int depth, int64_t in_ch, int64_t classes, ct_resnet_stem stem, uint64_t seed) {
    ct_rng r;
    ct_rng_seed(&r, seed);
    ct_resnet_config c = {.depth = depth, .in_channels = in_ch, .num_classes = classes, .stem = stem};
    ct_module *m = NULL;
    ck_assert_msg(ct_nn_resnet(&c, &r, &m) == CT_OK, "%s", ct_last_error());
    return m;
}

/* The module at a dotted path. */
static ct_module *sub(ct_module *m, const char *path) {
    ct_named mods = ct_module_modules(m);
    ct_module *found = NULL;
    for (int i = 0; i < mods.n; i++)
        if (!strcmp(mods.names[i], path)) found = mods.owners[i];
    ct_named_free(&mods);
    ck_assert_msg(found, "no module %s", path);
    return found;
}

/* Counts from torchvision 0.14: sum(p.numel()), len(list(parameters())) and len(state_dict())
 * of resnet18/34/50() (1000 classes, 3 channels). */
START_TEST(sizes_match_torchvision) {
    static const struct {
        int depth;
        int64_t numel;
        int nparams, nstate;
    } want[] = {{18, 11689512, 62, 122}, {34, 21797672, 110, 218}, {50, 25557032, 161, 320}};
    for (int i = 0; i < 3; i++) {
        if (ct_test_small() && i > 0) break; /* resnet18 only: 47M more draws under memcheck */
        ct_module *m = resnet(want[i].depth, 3, 1000, CT_RESNET_STEM_IMAGENET, 1);
        ct_named p = ct_module_params(m, false), b = ct_module_buffers(m);
        ck_assert_int_eq(ct_named_numel(&p), want[i].numel);
        ck_assert_int_eq(p.n, want[i].nparams);
        /* the state_dict adds num_batches_tracked to each BatchNorm's two buffers */
        ck_assert_int_eq(p.n + b.n + b.n / 2, want[i].nstate);
        ct_named_free(&p);
        ct_named_free(&b);
        ct_module_free(m);
    }
    ct_rng r;
    ct_rng_seed(&r, 1);
    ct_module *m = NULL;
    ct_resnet_config bad = {.depth = 101, .in_channels = 3, .num_classes = 10};
    ck_assert_int_eq(ct_nn_resnet(&bad, &r, &m), CT_ERR_CONFIG);
    ck_assert_ptr_null(m);
    ck_assert_ptr_nonnull(strstr(ct_last_error(), "depth 101"));
}
END_TEST

/* torchvision's own state_dict order for resnet50, the first 30 entries (a Bottleneck with
 * its downsample), and names from each part of resnet18. */
START_TEST(names_are_torchvisions) {
    ct_module *m = resnet(50, 3, 10, CT_RESNET_STEM_IMAGENET, 2);
    const char *want[] = {"conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
                          "layer1.0.conv1.weight", "layer1.0.bn1.weight", "layer1.0.bn1.bias",
                          "layer1.0.bn1.running_mean", "layer1.0.bn1.running_var", "layer1.0.conv2.weight",
                          "layer1.0.bn2.weight", "layer1.0.bn2.bias", "layer1.0.bn2.running_mean",
                          "layer1.0.bn2.running_var", "layer1.0.conv3.weight", "layer1.0.bn3.weight",
                          "layer1.0.bn3.bias", "layer1.0.bn3.running_mean", "layer1.0.bn3.running_var",
                          "layer1.0.downsample.0.weight", "layer1.0.downsample.1.weight",
                          "layer1.0.downsample.1.bias", "layer1.0.downsample.1.running_mean",
                          "layer1.0.downsample.1.running_var"};
    /* module by module, parameters then buffers: the state_dict order without the counters */
    ct_named mods = ct_module_modules(m);
    int k = 0, n = (int)(sizeof want / sizeof *want);
    for (int i = 0; i < mods.n && k < n; i++) {
        ct_module *mm = mods.owners[i];
        for (int j = 0; j < mm->nparams + mm->nbuffers && k < n; j++, k++) {
            const char *leaf = j < mm->nparams ? mm->param_names[j] : mm->buffer_names[j - mm->nparams];
            char full[256];
            snprintf(full, sizeof full, "%s%s%s", mods.names[i], *mods.names[i] ? "." : "", leaf);
            ck_assert_str_eq(full, want[k]);
        }
    }
    ck_assert_int_eq(k, n);
    ct_named_free(&mods);
    ct_tensor *w = ct_module_find(m, "layer4.2.conv3.weight");
    ck_assert(w && w->shape[0] == 2048 && w->shape[1] == 512 && w->shape[2] == 1);
    ck_assert_ptr_null(ct_module_find(m, "layer1.1.downsample.0.weight"));
    ct_module_free(m);

    m = resnet(18, 1, 10, CT_RESNET_STEM_IMAGENET, 2);
    ck_assert_ptr_null(ct_module_find(m, "layer1.0.downsample.0.weight")); /* 64 -> 64, stride 1 */
    w = ct_module_find(m, "layer2.0.downsample.0.weight");
    ck_assert(w && w->shape[0] == 128 && w->shape[1] == 64 && w->shape[2] == 1);
    ck_assert_ptr_nonnull(ct_module_find(m, "layer2.0.downsample.1.running_var"));
    ck_assert_ptr_null(ct_module_find(m, "layer1.0.conv3.weight"));
    w = ct_module_find(m, "conv1.weight");
    ck_assert(w->shape[0] == 64 && w->shape[1] == 1 && w->shape[2] == 7);
    w = ct_module_find(m, "fc.weight");
    ck_assert(w->shape[0] == 10 && w->shape[1] == 512);
    ck_assert_str_eq(ct_module_type(m->children[4]->children[0]), "BasicBlock");
    ct_module_free(m);
    m = resnet(18, 3, 10, CT_RESNET_STEM_SMALL, 2);
    w = ct_module_find(m, "conv1.weight");
    ck_assert(w->shape[1] == 3 && w->shape[2] == 3);
    ct_module_free(m);
}
END_TEST

/* kaiming_normal_(fan_out, relu) for convs, BatchNorm 1 and 0, fc Linear's default. */
START_TEST(init_is_torchvisions) {
    ct_module *m = resnet(18, 3, 10, CT_RESNET_STEM_IMAGENET, 3);
    ct_tensor *w = ct_module_find(m, "layer4.1.conv2.weight"); /* 2.4M draws */
    double s = 0, s2 = 0;
    for (int64_t i = 0; i < w->numel; i++) s += w->data[i], s2 += (double)w->data[i] * w->data[i];
    double mean = s / (double)w->numel, var = s2 / (double)w->numel - mean * mean;
    ck_assert(fabs(mean) < 1e-4);
    ck_assert_close(var, 2.0 / (512 * 9), 0.01);
    w = ct_module_find(m, "conv1.weight");
    s2 = 0;
    for (int64_t i = 0; i < w->numel; i++) s2 += (double)w->data[i] * w->data[i];
    ck_assert_close(s2 / (double)w->numel, 2.0 / (64 * 49), 0.1);
    ct_named p = ct_module_params(m, false);
    for (int i = 0; i < p.n; i++) {
        if (!strstr(p.names[i], "bn") && !strstr(p.names[i], "downsample.1")) continue;
        float v = strstr(p.names[i], "weight") ? 1.0f : 0.0f;
        for (int64_t k = 0; k < p.tensors[i]->numel; k++) ck_assert_float_eq(p.tensors[i]->data[k], v);
    }
    ct_named_free(&p);
    w = ct_module_find(m, "fc.weight");
    float bound = 1.0f / sqrtf(512), mx = 0;
    for (int64_t i = 0; i < w->numel; i++) mx = fmaxf(mx, fabsf(w->data[i]));
    ck_assert(mx <= bound && mx > 0.9f * bound);
    ct_module_free(m);
}
END_TEST

/* Output shapes through both stems and both block kinds; modes reach every block's layers. */
START_TEST(forward_shapes_and_modes) {
    static const struct {
        int depth;
        ct_resnet_stem stem;
        int64_t c, hw;
    } cases[] = {{18, CT_RESNET_STEM_IMAGENET, 1, 28}, {18, CT_RESNET_STEM_SMALL, 3, 12},
                 {50, CT_RESNET_STEM_SMALL, 2, 6}, {34, CT_RESNET_STEM_IMAGENET, 3, 17}};
    for (int i = 0; i < 4; i++) {
        if (ct_test_small() && cases[i].depth != 18) continue; /* names_are_torchvisions builds resnet50 */
        ct_module *m = resnet(cases[i].depth, cases[i].c, 7, cases[i].stem, 4);
        ct_rng r;
        ct_rng_seed(&r, 5);
        for (int train = 1; train >= 0; train--) CT_NO_GRAD CT_SCOPE {
            ct_module_train(m, train);
            ct_tensor *x = ct_rand_normal(CT_SHAPE(3, cases[i].c, cases[i].hw, cases[i].hw), 0, 1, &r);
            ct_tensor *y = ct_module_forward(m, x);
            ck_assert_int_eq(y->ndim, 2);
            ck_assert_int_eq(y->shape[0], 3);
            ck_assert_int_eq(y->shape[1], 7);
            for (int64_t k = 0; k < y->numel; k++) ck_assert(isfinite(y->data[k]));
        }
        ct_named mods = ct_module_modules(m);
        for (int k = 0; k < mods.n; k++) ck_assert_msg(!mods.owners[k]->training, "%s", mods.names[k]);
        ct_named_free(&mods);
        ct_module_free(m);
    }
}
END_TEST

/* A checkpoint round trip reaches into blocks (num_batches_tracked of a block's BatchNorm);
 * a state_dict of another depth or width is refused naming the key and both shapes, and
 * nothing of it is loaded. */
START_TEST(checkpoints_through_blocks) {
    char dir[] = "/tmp/ct_resnet_XXXXXX", path[64], p34[64];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/r18.safetensors", dir);
    snprintf(p34, sizeof p34, "%s/r34.safetensors", dir);
    ct_module *a = resnet(18, 1, 10, CT_RESNET_STEM_SMALL, 6), *b = resnet(18, 1, 10, CT_RESNET_STEM_SMALL, 7);
    ct_nn_as_batchnorm(sub(a, "layer2.1.bn2"))->num_batches_tracked = 7;
    ct_module_find(a, "layer3.0.downsample.1.running_var")->data[3] = 2.5f;
    ct_progress prog = {.epoch = 1, .world = 1};
    ck_assert_int_eq(ct_ckpt_save(path, a, NULL, &prog), CT_OK);
    ct_st_file *f = NULL;
    ck_assert_int_eq(ct_st_load(path, &f), CT_OK);
    const ct_st_entry *e = ct_st_find(f, "layer2.1.bn2.num_batches_tracked");
    ck_assert(e && e->dtype == CT_DTYPE_I64 && e->ndim == 0 && *(const int64_t *)e->data == 7);
    ck_assert_int_eq(ct_ckpt_load_model(f, b, true, NULL), CT_OK);
    ck_assert_int_eq(ct_nn_as_batchnorm(sub(b, "layer2.1.bn2"))->num_batches_tracked, 7);
    ck_assert_float_eq(ct_module_find(b, "layer3.0.downsample.1.running_var")->data[3], 2.5f);
    ck_assert_mem_eq(ct_module_find(b, "layer4.1.conv2.weight")->data, ct_module_find(a, "layer4.1.conv2.weight")->data,
                     512 * 512 * 9 * sizeof(float));

    /* another width (5 classes) and another depth: refused, the model untouched */
    ct_module *c5 = resnet(18, 1, 5, CT_RESNET_STEM_SMALL, 8);
    ct_module *c34 = ct_test_small() ? NULL : resnet(34, 1, 10, CT_RESNET_STEM_SMALL, 8);
    float before = ct_module_find(c5, "conv1.weight")->data[0];
    ck_assert_int_eq(ct_ckpt_load_model(f, c5, true, NULL), CT_ERR_SHAPE);
    ck_assert_msg(strstr(ct_last_error(), "fc.weight is F32 [10, 512] in the checkpoint but F32 [5, 512] in the model"),
                  "%s", ct_last_error());
    ck_assert_float_eq(ct_module_find(c5, "conv1.weight")->data[0], before);
    if (c34) {
        ck_assert_int_eq(ct_ckpt_save(p34, c34, NULL, &prog), CT_OK);
        ct_st_file *f34 = NULL;
        ck_assert_int_eq(ct_st_load(p34, &f34), CT_OK);
        before = ct_module_find(b, "layer1.0.conv1.weight")->data[0];
        ck_assert_int_eq(ct_ckpt_load_model(f34, b, true, NULL), CT_ERR_SHAPE);
        ck_assert_msg(strstr(ct_last_error(), "unexpected in the checkpoint: layer1.2.conv1.weight"), "%s",
                      ct_last_error());
        ck_assert_float_eq(ct_module_find(b, "layer1.0.conv1.weight")->data[0], before);
        ct_st_free(f34);
        ct_module_free(c34);
    }
    ct_st_free(f);
    unlink(path);
    unlink(p34);
    rmdir(dir);
    ct_module_free(a);
    ct_module_free(b);
    ct_module_free(c5);
}
END_TEST

/* model.freeze = conv1.*,bn1.*,layer1.*,layer2.*,layer3.* by torchvision names: backward stops
 * at the boundary (the same graph nodes and GEMMs as running layer4 and fc alone on the frozen
 * stages' output), frozen BatchNorm stays on its running statistics in train mode, and the
 * frozen stages form a cacheable prefix whose output, fed to the rest, is the full forward. */
START_TEST(frozen_stages_stop_backward_and_cache) {
    ct_module *m = resnet(18, 1, 10, CT_RESNET_STEM_SMALL, 9);
    int hits = ct_module_set_requires_grad(m, "conv1.*,bn1.*,layer1.*,layer2.*,layer3.*", false);
    ck_assert_int_eq(hits, 3 + 12 + 15 + 15); /* stem; 2 blocks of 6; the same + downsample's 3, twice */
    int n = ct_seq_num_layers(m);
    ck_assert_int_eq(n, 3 + 8 + 3);                   /* conv1 bn1 relu, 8 blocks, avgpool flatten fc */
    ck_assert_int_eq(ct_module_frozen_prefix(m), 3 + 6); /* through layer3 */
    ct_rng r;
    ct_rng_seed(&r, 10);
    int64_t y[3] = {1, 4, 7};
    ct_tensor *rm_frozen = ct_module_find(m, "layer3.1.bn2.running_mean");
    ct_tensor *rm_train = ct_module_find(m, "layer4.1.bn2.running_mean");
    float f0 = rm_frozen->data[0], t0 = rm_train->data[0];
    CT_SCOPE {
        ct_tensor *x = ct_rand_normal(CT_SHAPE(3, 1, 8, 8), 0, 1, &r);
        /* the rest alone, on the frozen stages' output (what the feature cache feeds it) */
        ct_tensor *feat = ct_seq_forward_range(m, 0, 9, x);
        ck_assert(!feat->requires_grad);
        ct_stats s0 = ct_stats_get();
        ct_tensor *loss = ct_cross_entropy(ct_seq_forward_range(m, 9, n, feat), y, CT_REDUCE_MEAN);
        int64_t nodes_rest = ct_stats_get().graph_nodes - s0.graph_nodes;
        int64_t g0 = ct_stats_get().gemm_calls;
        ct_backward(loss);
        int64_t gemms_rest = ct_stats_get().gemm_calls - g0;
        ct_named p = ct_module_params(m, true);
        for (int i = 0; i < p.n; i++) ct_zero_grad(p.tensors[i]);
        ct_named_free(&p);
        /* the full model: the frozen stages record nothing and backward does no more */
        s0 = ct_stats_get();
        ct_tensor *full = ct_module_forward(m, x);
        ct_tensor *loss2 = ct_cross_entropy(full, y, CT_REDUCE_MEAN);
        ck_assert_int_eq(ct_stats_get().graph_nodes - s0.graph_nodes, nodes_rest);
        g0 = ct_stats_get().gemm_calls;
        ct_backward(loss2);
        ck_assert_int_eq(ct_stats_get().gemm_calls - g0, gemms_rest);
        ck_assert(gemms_rest > 0);
        ck_assert_float_eq(loss->data[0], loss2->data[0]);
    }
    ct_named p = ct_module_params(m, false);
    for (int i = 0; i < p.n; i++) {
        bool trains = !strncmp(p.names[i], "layer4.", 7) || !strncmp(p.names[i], "fc.", 3);
        ck_assert_msg(trains == (ct_grad(p.tensors[i]) != NULL), "%s", p.names[i]);
    }
    ct_named_free(&p);
    ck_assert_float_eq(rm_frozen->data[0], f0); /* frozen BN on running statistics */
    ck_assert_float_ne(rm_train->data[0], t0);
    ck_assert_int_eq(ct_nn_as_batchnorm(sub(m, "layer3.1.bn2"))->num_batches_tracked, 0);
    ck_assert_int_eq(ct_nn_as_batchnorm(sub(m, "layer4.1.bn2"))->num_batches_tracked, 2); /* two passes */
    /* the prefix ends after any stage; a trainable BN inside a stage ends it there */
    ct_module_set_requires_grad(m, "layer3.*", true);
    ck_assert_int_eq(ct_module_frozen_prefix(m), 3 + 4);
    ct_module_set_requires_grad(m, "layer2.1.bn1.*", true);
    ck_assert_int_eq(ct_module_frozen_prefix(m), 3 + 3);
    ct_module_free(m);
}
END_TEST

/* Every Conv2d -> BatchNorm2d [-> add] -> ReLU of a ResNet folds into one convolution with
 * an epilogue when no gradient is needed and BatchNorm uses its running statistics: all
 * the convolutions in eval mode under no_grad, only the frozen stages' in train mode, none
 * when the input requires grad. The output is the same bits as the unfolded ops'. */
static int count_convs(ct_module *m, const char *prefix) {
    ct_named mods = ct_module_modules(m);
    int n = 0;
    for (int i = 0; i < mods.n; i++)
        n += ct_nn_as_conv2d(mods.owners[i]) && !strncmp(mods.names[i], prefix, strlen(prefix));
    ct_named_free(&mods);
    return n;
}

static ct_tensor *forward_counting(ct_module *m, ct_tensor *x, int64_t *epilogues) {
    int64_t e0 = ct_stats_get().conv_epilogues;
    ct_tensor *y = ct_module_forward(m, x);
    *epilogues = ct_stats_get().conv_epilogues - e0;
    return y;
}

static void assert_same_bits(const ct_tensor *a, const ct_tensor *b) {
    ck_assert_int_eq(a->numel, b->numel);
    for (int64_t k = 0; k < a->numel; k++)
        ck_assert_msg(!memcmp(&a->data[k], &b->data[k], sizeof(float)), "logit %lld: %.9g vs %.9g",
                      (long long)k, a->data[k], b->data[k]);
}

START_TEST(inference_folds_conv_bn_bitwise) {
    static const struct {
        int depth;
        ct_resnet_stem stem;
        int64_t hw;
    } cases[] = {{18, CT_RESNET_STEM_IMAGENET, 32}, {50, CT_RESNET_STEM_SMALL, 8}};
    for (int i = 0; i < 2; i++) {
        if (ct_test_small() && cases[i].depth != 18) continue;
        ct_module *m = resnet(cases[i].depth, 3, 10, cases[i].stem, 21);
        ct_rng r;
        ct_rng_seed(&r, 22);
        /* BatchNorms far from identity, so a missed or doubled one would show */
        ct_named lists[2] = {ct_module_params(m, false), ct_module_buffers(m)};
        for (int l = 0; l < 2; l++) {
            for (int k = 0; k < lists[l].n; k++) {
                ct_tensor *t = lists[l].tensors[k];
                const char *nm = lists[l].names[k];
                if (t->ndim != 1 || !strncmp(nm, "fc.", 3)) continue; /* BatchNorms' vectors */
                float base = strstr(nm, "running_var") || strstr(nm, "weight") ? 1.0f : 0.0f;
                for (int64_t j = 0; j < t->numel; j++) t->data[j] = base + 0.8f * (ct_rng_uniform(&r) - 0.5f);
            }
            ct_named_free(&lists[l]);
        }
        int convs = count_convs(m, "");
        ck_assert_int_eq(convs, cases[i].depth == 18 ? 20 : 53);
        /* the same convolution arithmetic on both sides: Winograd's F(4x4) runs only where
         * no graph is recorded, so it would differ from the graph side by its rounding (the
         * epilogue in Winograd's lanes is compared bit for bit in test_ops_conv.c) */
        ct_conv_algo algo = ct_conv2d_set_algo(CT_CONV_IM2COL);
        CT_SCOPE {
            ct_tensor *x = ct_rand_normal(CT_SHAPE(2, 3, cases[i].hw, cases[i].hw), 0, 1, &r);
            int64_t folded;
            ct_module_train(m, false);
            ct_tensor *y;
            CT_NO_GRAD { y = forward_counting(m, x, &folded); }
            ck_assert_int_eq(folded, convs);
            ct_tensor *xg = ct_clone_data(x);
            ct_set_requires_grad(xg, true);
            ct_tensor *yg = forward_counting(m, xg, &folded);
            ck_assert_int_eq(folded, 0);
            ck_assert(yg->requires_grad);
            assert_same_bits(y, yg);
            /* training with the stem and layer1 frozen: their BatchNorms use running statistics */
            ct_module_train(m, true);
            ct_module_set_requires_grad(m, "conv1.*,bn1.*,layer1.*", false);
            ct_tensor *yf = forward_counting(m, x, &folded);
            ck_assert_int_eq(folded, count_convs(m, "conv1") + count_convs(m, "layer1."));
            ck_assert(yf->requires_grad);
            yg = forward_counting(m, xg, &folded);
            ck_assert_int_eq(folded, 0);
            assert_same_bits(yf, yg);
            ct_module_set_requires_grad(m, "*", true);
        }
        ct_conv2d_set_algo(algo);
        ct_module_free(m);
    }
}
END_TEST

int main(void) {
    Suite *s = suite_create("resnet");
    TCase *tc = tcase_create("resnet");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, sizes_match_torchvision);
    tcase_add_test(tc, names_are_torchvisions);
    tcase_add_test(tc, init_is_torchvisions);
    tcase_add_test(tc, forward_shapes_and_modes);
    tcase_add_test(tc, checkpoints_through_blocks);
    tcase_add_test(tc, frozen_stages_stop_backward_and_cache);
    tcase_add_test(tc, inference_folds_conv_bn_bitwise);
    suite_add_tcase(s, tc);
    return ct_test_run(s);
}
