/* PyTorch parity, the ctrain half: for each model it writes what tests/parity/test_parity.py
 * rebuilds and recomputes in PyTorch, from the same weights and the same batch.
 *
 * usage: parity_dump OUTDIR [MODEL ...]   (default: every model below)
 *
 * Per model, OUTDIR/<model>.*.safetensors:
 *   init  ct_ckpt_save of the freshly initialised model (the weights PyTorch starts from)
 *   step  ct_ckpt_save after one train-mode forward/backward and one Adam step (lr 1e-3):
 *         updated parameters, BatchNorm running stats and num_batches_tracked, Adam's
 *         moments ("optim.*"); PyTorch's eval-mode pass starts from this file
 *   dump  x [N, 1, 28, 28] F32, y [N] I64, then for mode in train, eval:
 *         <mode>.logits, <mode>.loss (mean cross entropy, 0-d) and <mode>.grad.<param>
 * The eval pass runs after the step (so BatchNorm normalises with running statistics that
 * the train pass updated) and computes gradients too: eval-mode BatchNorm has its own
 * backward. Dropout is left out (PyTorch's mask cannot be reproduced); the built-in cnn is
 * built with p = 0. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dump_util.h"

#define BATCH 16

/* Layer lists go through ct_nn_from_spec, the path configs take; the built-ins are what
 * `model.name = mlp|cnn` trains. test_parity.py defines each model independently. */
static const struct {
    const char *name, *spec;
} models[] = {
    {"mlp", NULL},
    {"mlp_bn", "flatten,linear:64,bn,gelu,linear:32,tanh,linear:10"},
    {"cnn_bn", "conv:8:3:1:1,bn,relu,maxpool:2,conv:16:3:2:1,bn,relu,avgpool:2,flatten,linear:32,"
               "relu,linear:10"},
    {"cnn", NULL},
};
#define NMODELS (int)(sizeof models / sizeof *models)

/* ---- the batch ------------------------------------------------------------------------------ */

/* The first BATCH test images of Fashion-MNIST, normalised as examples/fmnist_cnn.ini does, or, if the
 * data set is not installed, a seeded N(0, 1) batch (the comparison does not depend on it). */
static ct_tensor *make_batch(int64_t *y) {
    ct_dataset ds;
    ct_tensor *x = NULL;
    if (ct_dataset_from_idx(&ds, CT_FASHION_MNIST_DIR, CT_SPLIT_TEST) == CT_OK) {
        ct_loader_opts o = ct_loader_opts_default(BATCH);
        o.mean = 0.2860f;
        o.std = 0.3530f;
        ct_loader *l;
        if (ct_loader_new(&l, &ds, &o) != CT_OK) dump_die("loader");
        int64_t idx[BATCH];
        for (int i = 0; i < BATCH; i++) idx[i] = i;
        ct_loader_start(l, idx, BATCH);
        ct_batch b;
        CT_SCOPE {
            CT_ASSERT(ct_loader_next(l, &b) && b.size == BATCH, "parity_dump: short batch");
            x = ct_own(ct_clone_data(b.x));
            memcpy(y, b.y, BATCH * sizeof *y);
        }
        ct_loader_free(l);
        ct_dataset_free(&ds);
    } else {
        fprintf(stderr, "parity_dump: %s; using a synthetic batch\n", ct_last_error());
        ct_rng r;
        ct_rng_seed(&r, 7);
        x = ct_own(ct_rand_normal(CT_SHAPE(BATCH, 1, 28, 28), 0, 1, &r));
        for (int i = 0; i < BATCH; i++) y[i] = (int64_t)ct_rng_below(&r, 10);
    }
    return x;
}

/* ---- one model -------------------------------------------------------------------------------- */

static ct_module *build(int i) {
    ct_rng rng;
    ct_rng_seed(&rng, 1000 + (uint64_t)i);
    if (!strcmp(models[i].name, "mlp")) return ct_nn_mlp(784, 10, &rng);
    if (!strcmp(models[i].name, "cnn")) return ct_nn_cnn(1, 28, 10, 0.0f, &rng);
    ct_module *m;
    if (ct_nn_from_spec(models[i].spec, CT_SHAPE(1, 28, 28), 0.0f, &rng, &m) != CT_OK)
        dump_die(models[i].name);
    return m;
}

/* Forward in the given mode, mean cross entropy, backward; dumps logits, loss and grads. */
static void pass(dump *d, ct_module *m, const ct_named *ps, ct_tensor *x, const int64_t *y, bool train) {
    ct_module_train(m, train);
    dump_pass(d, m, ps, x, y, train ? "train." : "eval.", true);
}

static void run_model(int i, const char *dir, ct_tensor *x, const int64_t *y) {
    char path[4096];
    ct_module *m = build(i);
    ct_module_pack(m); /* as the CLI does: parameters (and so Adam's loop) in one slab */
    ct_progress prog = {.epoch = 0, .step = 0, .seed = 1000 + (uint64_t)i, .world = 1};
    snprintf(path, sizeof path, "%s/%s.init.safetensors", dir, models[i].name);
    if (ct_ckpt_save(path, m, NULL, &prog) != CT_OK) dump_die(path);

    ct_named ps = ct_module_params(m, true);
    ct_optim *o = ct_optim_new(ct_adam_config(1e-3, 0));
    ct_optim_add_group(o, ps.n, (const char *const *)ps.names, ps.tensors, CT_OPTIM_DEFAULT,
                       CT_OPTIM_DEFAULT);

    dump d = {0};
    dump_tensor(&d, "x", x);
    dump_raw(&d, "y", CT_DTYPE_I64, 1, (const int64_t[]){BATCH}, y);
    pass(&d, m, &ps, x, y, true);
    ct_optim_step(o);
    prog.step = 1;
    snprintf(path, sizeof path, "%s/%s.step.safetensors", dir, models[i].name);
    if (ct_ckpt_save(path, m, o, &prog) != CT_OK) dump_die(path);
    ct_optim_zero_grad(o);
    pass(&d, m, &ps, x, y, false);

    const char *spec = models[i].spec ? models[i].spec : "built-in";
    dump_meta(&d, "model", models[i].name);
    dump_meta(&d, "spec", spec);
    snprintf(path, sizeof path, "%s/%s.dump.safetensors", dir, models[i].name);
    dump_save(&d, path);
    printf("parity_dump: %s: %d parameters, %" PRId64 " values, %d dumped tensors\n",
           models[i].name, ps.n, ct_named_numel(&ps), d.n);

    dump_free(&d);
    ct_optim_free(o);
    ct_named_free(&ps);
    ct_module_free(m);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: parity_dump OUTDIR [MODEL ...]\nmodels:");
        for (int i = 0; i < NMODELS; i++) fprintf(stderr, " %s", models[i].name);
        fprintf(stderr, "\n");
        return 2;
    }
    bool want[NMODELS];
    for (int i = 0; i < NMODELS; i++) want[i] = argc == 2;
    for (int a = 2; a < argc; a++) {
        int i = 0;
        while (i < NMODELS && strcmp(argv[a], models[i].name)) i++;
        if (i == NMODELS) {
            fprintf(stderr, "parity_dump: unknown model '%s'\n", argv[a]);
            return 2;
        }
        want[i] = true;
    }
    int64_t y[BATCH];
    ct_tensor *x = make_batch(y);
    for (int i = 0; i < NMODELS; i++)
        if (want[i]) run_model(i, argv[1], x, y);
    ct_release(x);
    ct_scope_shutdown();
    return 0;
}
