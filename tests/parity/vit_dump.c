/* torchvision parity for the VisionTransformer, the ctrain half (run by
 * tests/parity/test_vit_parity.py, which builds the model in torchvision and compares).
 *
 * usage: vit_dump IMAGE PATCH LAYERS HEADS HIDDEN MLP IN_CHANNELS CLASSES STATE BATCH OUT [forward]
 *
 * Builds ct_nn_vit (no dropout), loads STATE (a safetensors state_dict, e.g. torchvision's
 * through scripts/torch_to_safetensors.py) strict and reads BATCH (x F32 [N, C, H, W],
 * y I64 [N]). Then: forward, mean cross entropy, backward; one SGD step (lr 0.1); ct_ckpt_save
 * to OUT.step.safetensors; a second forward from the stepped weights. OUT.dump.safetensors
 * holds logits, loss, grad.<param> and step.logits. "forward" (vit_b_16 at 224 px) stops
 * after the first forward and dumps only logits and loss. A STATE that does not fit is
 * refused: the loader's message goes to stderr and the exit status is 1. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctrain.h"

static void die(const char *what) {
    fprintf(stderr, "vit_dump: %s: %s\n", what, ct_last_error());
    exit(1);
}

typedef struct {
    ct_st_entry e[1024];
    char *names[1024];
    int n;
} dump;

/* Entries point at tensors kept alive by the enclosing scope; names are owned. */
static void put(dump *d, const char *name, const ct_tensor *t) {
    CT_ASSERT(d->n < 1024, "vit_dump: too many entries");
    d->names[d->n] = strdup(name);
    CT_ASSERT(d->names[d->n], "vit_dump: out of memory");
    d->e[d->n] = ct_st_from_tensor(d->names[d->n], t);
    d->n++;
}

int main(int argc, char **argv) {
    if (argc != 12 && argc != 13) {
        fprintf(stderr, "usage: vit_dump IMAGE PATCH LAYERS HEADS HIDDEN MLP IN_CHANNELS CLASSES STATE BATCH OUT "
                        "[forward]\n");
        return 2;
    }
    ct_vit_config c = {.image_size = atoi(argv[1]), .patch_size = atoi(argv[2]), .num_layers = atoi(argv[3]),
                       .num_heads = atoi(argv[4]), .hidden_dim = atoi(argv[5]), .mlp_dim = atoi(argv[6]),
                       .in_channels = atoi(argv[7]), .num_classes = atoi(argv[8])};
    const char *out = argv[11];
    bool forward_only = argc == 13 && strcmp(argv[12], "forward") == 0;
    ct_rng rng;
    ct_rng_seed(&rng, 1);
    ct_module *m = NULL;
    if (ct_nn_vit(&c, &rng, &m) != CT_OK) die("vit");
    ct_module_pack(m);
    ct_st_file *state = NULL, *batch = NULL;
    if (ct_st_load(argv[9], &state) != CT_OK) die(argv[9]);
    if (ct_ckpt_load_model(state, m, true, NULL) != CT_OK) die("strict load");
    ct_st_free(state);
    if (ct_st_load(argv[10], &batch) != CT_OK) die(argv[10]);
    const ct_st_entry *xe = ct_st_find(batch, "x"), *ye = ct_st_find(batch, "y");
    if (!xe || xe->dtype != CT_DTYPE_F32 || xe->ndim != 4 || !ye || ye->dtype != CT_DTYPE_I64 ||
        ye->ndim != 1 || ye->shape[0] != xe->shape[0]) {
        fprintf(stderr, "vit_dump: %s: needs x F32 [N, C, H, W] and y I64 [N]\n", argv[10]);
        return 1;
    }
    ct_named ps = ct_module_params(m, true);
    ct_optim *o = ct_optim_new(ct_sgd_config(0.1, 0, 0, false));
    ct_optim_add_group(o, ps.n, (const char *const *)ps.names, ps.tensors, CT_OPTIM_DEFAULT, CT_OPTIM_DEFAULT);
    dump d = {.n = 0};
    char path[4096], name[600];
    CT_SCOPE {
        ct_tensor *x = ct_from_data(4, xe->shape, xe->data);
        const int64_t *y = ye->data;
        ct_tensor *logits = ct_module_forward(m, x);
        ct_tensor *loss = ct_cross_entropy(logits, y, CT_REDUCE_MEAN);
        put(&d, "logits", logits);
        put(&d, "loss", loss);
        if (!forward_only) {
            ct_backward(loss);
            for (int k = 0; k < ps.n; k++) {
                CT_ASSERT(ct_grad(ps.tensors[k]), "vit_dump: no gradient for %s", ps.names[k]);
                snprintf(name, sizeof name, "grad.%s", ps.names[k]);
                put(&d, name, ct_clone_data(ct_grad(ps.tensors[k])));
            }
            ct_optim_step(o);
            ct_optim_zero_grad(o);
            ct_progress prog = {.epoch = 0, .step = 1, .seed = 1, .world = 1};
            snprintf(path, sizeof path, "%s.step.safetensors", out);
            if (ct_ckpt_save(path, m, NULL, &prog) != CT_OK) die(path);
            CT_NO_GRAD { put(&d, "step.logits", ct_module_forward(m, x)); }
        }
        snprintf(path, sizeof path, "%s.dump.safetensors", out);
        if (ct_st_save(path, d.e, d.n, NULL, 0) != CT_OK) die(path);
    }
    for (int i = 0; i < d.n; i++) free(d.names[i]);
    printf("vit_dump: %d parameters, %lld values, %d dumped tensors\n", ps.n, (long long)ct_named_numel(&ps), d.n);
    ct_optim_free(o);
    ct_named_free(&ps);
    ct_st_free(batch);
    ct_module_free(m);
    ct_scope_shutdown();
    return 0;
}
