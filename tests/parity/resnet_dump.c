/* torchvision parity for the ResNets, the ctrain half (run by tests/parity/test_resnet_parity.py,
 * which builds the model in torchvision and compares).
 *
 * usage: resnet_dump DEPTH IN_CHANNELS CLASSES imagenet|small STATE BATCH OUT
 *
 * Builds ct_nn_resnet, loads STATE (a safetensors state_dict, e.g. torchvision's through
 * scripts/torch_to_safetensors.py) strict, and reads BATCH (x F32 [N, C, H, W], y I64 [N]).
 * Then: a train-mode forward, mean cross entropy and backward; one SGD step (lr 0.1, no
 * momentum); ct_ckpt_save to OUT.step.safetensors (the stepped parameters, the running
 * statistics and num_batches_tracked the train pass left); an eval-mode forward and backward
 * from there. OUT.dump.safetensors holds <mode>.logits, <mode>.loss, <mode>.grad.<param>, and
 * <mode>.relu.<k>, the output of the k-th ReLU call: float32 rounding puts a few ReLU inputs on
 * the other side of 0 than float64 does (ResNet-50 has millions), which changes a gradient
 * entry by its full size; the float64 referee takes ctrain's side at those kinks.
 * A STATE that does not fit is refused: the loader's message (every key with both shapes)
 * goes to stderr and the exit status is 1, before anything is written. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dump_util.h"

#define LR 0.1

/* Every ReLU call appends its output to the dump (the ReLU modules' table is swapped for a
 * copy whose forward records; so is the BatchNorms' fused BatchNorm + ReLU forward, which
 * runs a block's bn1 and its relu as one op). */
static dump *rec_dump;
static const char *rec_mode;
static int rec_calls;
static const ct_module_ops *relu_ops, *bn_ops;
static ct_module_ops relu_rec_ops, bn_rec_ops;

static void record(ct_tensor *y);

static ct_tensor *relu_recorded(ct_module *m, ct_tensor *x) {
    ct_tensor *y = relu_ops->forward(m, x);
    record(y);
    return y;
}

static ct_tensor *bn_relu_recorded(ct_module *m, ct_tensor *x) {
    ct_tensor *y = bn_ops->forward_relu(m, x);
    record(y);
    return y;
}

static void record(ct_tensor *y) {
    char name[64];
    snprintf(name, sizeof name, "%s.relu.%d", rec_mode, rec_calls++);
    dump_tensor(rec_dump, name, y);
}

static void record_relus(ct_module *m) {
    ct_named mods = ct_module_modules(m);
    for (int i = 0; i < mods.n; i++) {
        ct_module *mm = mods.owners[i];
        if (!strcmp(ct_module_type(mm), "BatchNorm2d") && mm->ops->forward_relu) {
            bn_ops = mm->ops;
            bn_rec_ops = *mm->ops;
            bn_rec_ops.forward_relu = bn_relu_recorded;
            mm->ops = &bn_rec_ops;
        }
        if (strcmp(ct_module_type(mm), "ReLU") != 0) continue;
        relu_ops = mm->ops;
        relu_rec_ops = *mm->ops;
        relu_rec_ops.forward = relu_recorded;
        mm->ops = &relu_rec_ops;
    }
    ct_named_free(&mods);
}

static void pass(dump *d, ct_module *m, const ct_named *ps, ct_tensor *x, const int64_t *y, bool train) {
    ct_module_train(m, train);
    rec_dump = d, rec_mode = train ? "train" : "eval", rec_calls = 0;
    dump_pass(d, m, ps, x, y, train ? "train." : "eval.", true);
}

int main(int argc, char **argv) {
    if (argc != 8) {
        fprintf(stderr, "usage: resnet_dump DEPTH IN_CHANNELS CLASSES imagenet|small STATE BATCH OUT\n");
        return 2;
    }
    ct_resnet_config c = {.depth = atoi(argv[1]), .in_channels = atoi(argv[2]), .num_classes = atoi(argv[3]),
                          .stem = strcmp(argv[4], "small") ? CT_RESNET_STEM_IMAGENET : CT_RESNET_STEM_SMALL};
    const char *out = argv[7];
    ct_rng rng;
    ct_rng_seed(&rng, 1);
    ct_module *m = NULL;
    if (ct_nn_resnet(&c, &rng, &m) != CT_OK) dump_die("resnet");
    ct_module_pack(m);
    const ct_st_entry *xe, *ye;
    ct_st_file *batch = dump_load(m, argv[5], argv[6], &xe, &ye);
    record_relus(m);
    ct_named ps = ct_module_params(m, true);
    ct_optim *o = ct_optim_new(ct_sgd_config(LR, 0, 0, false));
    ct_optim_add_group(o, ps.n, (const char *const *)ps.names, ps.tensors, CT_OPTIM_DEFAULT, CT_OPTIM_DEFAULT);
    dump d = {0};
    char path[4096];
    CT_SCOPE {
        ct_tensor *x = ct_from_data(4, xe->shape, xe->data);
        const int64_t *y = ye->data;
        pass(&d, m, &ps, x, y, true);
        ct_optim_step(o);
        ct_optim_zero_grad(o);
        ct_progress prog = {.epoch = 0, .step = 1, .seed = 1, .world = 1};
        snprintf(path, sizeof path, "%s.step.safetensors", out);
        if (ct_ckpt_save(path, m, NULL, &prog) != CT_OK) dump_die(path);
        pass(&d, m, &ps, x, y, false);
        snprintf(path, sizeof path, "%s.dump.safetensors", out);
        dump_save(&d, path);
    }
    printf("resnet_dump: resnet%d: %d parameters, %lld values, %d dumped tensors\n", c.depth, ps.n,
           (long long)ct_named_numel(&ps), d.n);
    dump_free(&d);
    ct_optim_free(o);
    ct_named_free(&ps);
    ct_st_free(batch);
    ct_module_free(m);
    ct_scope_shutdown();
    return 0;
}
