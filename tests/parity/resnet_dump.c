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

#include "ctrain.h"

#define LR 0.1

static void die(const char *what) {
    fprintf(stderr, "resnet_dump: %s: %s\n", what, ct_last_error());
    exit(1);
}

typedef struct {
    ct_st_entry e[1024];
    char *names[1024];
    ct_tensor *owned[1024]; /* copies that must outlive the scopes they were made in */
    int n, nowned;
} dump;

/* Entries point at tensors kept alive by the scope the caller is in; names are owned. */
static void put(dump *d, const char *name, const ct_tensor *t) {
    CT_ASSERT(d->n < 1024, "resnet_dump: too many entries");
    d->names[d->n] = strdup(name);
    CT_ASSERT(d->names[d->n], "resnet_dump: out of memory");
    d->e[d->n] = ct_st_from_tensor(d->names[d->n], t);
    d->n++;
}

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
    /* Sequential releases what a layer made when the layer ends: own the copy */
    ct_tensor *c = ct_own(ct_clone_data(y));
    rec_dump->owned[rec_dump->nowned++] = c;
    put(rec_dump, name, c);
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
    const char *mode = train ? "train" : "eval";
    char name[600];
    ct_module_train(m, train);
    rec_dump = d, rec_mode = mode, rec_calls = 0;
    ct_tensor *logits = ct_module_forward(m, x);
    ct_tensor *loss = ct_cross_entropy(logits, y, CT_REDUCE_MEAN);
    ct_backward(loss);
    snprintf(name, sizeof name, "%s.logits", mode);
    put(d, name, logits);
    snprintf(name, sizeof name, "%s.loss", mode);
    put(d, name, loss);
    for (int k = 0; k < ps->n; k++) {
        ct_tensor *g = ct_grad(ps->tensors[k]);
        CT_ASSERT(g, "resnet_dump: %s: no gradient for %s", mode, ps->names[k]);
        snprintf(name, sizeof name, "%s.grad.%s", mode, ps->names[k]);
        put(d, name, ct_clone_data(g)); /* the grads are zeroed before the next pass */
    }
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
    if (ct_nn_resnet(&c, &rng, &m) != CT_OK) die("resnet");
    ct_module_pack(m);
    ct_st_file *state = NULL, *batch = NULL;
    if (ct_st_load(argv[5], &state) != CT_OK) die(argv[5]);
    if (ct_ckpt_load_model(state, m, true, NULL) != CT_OK) die("strict load");
    ct_st_free(state);
    if (ct_st_load(argv[6], &batch) != CT_OK) die(argv[6]);
    const ct_st_entry *xe = ct_st_find(batch, "x"), *ye = ct_st_find(batch, "y");
    if (!xe || xe->dtype != CT_DTYPE_F32 || xe->ndim != 4 || !ye || ye->dtype != CT_DTYPE_I64 ||
        ye->ndim != 1 || ye->shape[0] != xe->shape[0]) {
        fprintf(stderr, "resnet_dump: %s: needs x F32 [N, C, H, W] and y I64 [N]\n", argv[6]);
        return 1;
    }
    record_relus(m);
    ct_named ps = ct_module_params(m, true);
    ct_optim *o = ct_optim_new(ct_sgd_config(LR, 0, 0, false));
    ct_optim_add_group(o, ps.n, (const char *const *)ps.names, ps.tensors, CT_OPTIM_DEFAULT, CT_OPTIM_DEFAULT);
    dump d = {.n = 0};
    char path[4096];
    CT_SCOPE {
        ct_tensor *x = ct_from_data(4, xe->shape, xe->data);
        const int64_t *y = ye->data;
        pass(&d, m, &ps, x, y, true);
        ct_optim_step(o);
        ct_optim_zero_grad(o);
        ct_progress prog = {.epoch = 0, .step = 1, .seed = 1, .world = 1};
        snprintf(path, sizeof path, "%s.step.safetensors", out);
        if (ct_ckpt_save(path, m, NULL, &prog) != CT_OK) die(path);
        pass(&d, m, &ps, x, y, false);
        snprintf(path, sizeof path, "%s.dump.safetensors", out);
        if (ct_st_save(path, d.e, d.n, NULL, 0) != CT_OK) die(path);
    }
    for (int i = 0; i < d.n; i++) free(d.names[i]);
    for (int i = 0; i < d.nowned; i++) ct_release(d.owned[i]);
    printf("resnet_dump: resnet%d: %d parameters, %lld values, %d dumped tensors\n", c.depth, ps.n,
           (long long)ct_named_numel(&ps), d.n);
    ct_optim_free(o);
    ct_named_free(&ps);
    ct_st_free(batch);
    ct_module_free(m);
    ct_scope_shutdown();
    return 0;
}
