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

#include "dump_util.h"

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
    if (ct_nn_vit(&c, &rng, &m) != CT_OK) dump_die("vit");
    ct_module_pack(m);
    const ct_st_entry *xe, *ye;
    ct_st_file *batch = dump_load(m, argv[9], argv[10], &xe, &ye);
    ct_named ps = ct_module_params(m, true);
    ct_optim *o = ct_optim_new(ct_sgd_config(0.1, 0, 0, false));
    ct_optim_add_group(o, ps.n, (const char *const *)ps.names, ps.tensors, CT_OPTIM_DEFAULT, CT_OPTIM_DEFAULT);
    dump d = {0};
    char path[4096];
    CT_SCOPE {
        ct_tensor *x = ct_from_data(4, xe->shape, xe->data);
        const int64_t *y = ye->data;
        dump_pass(&d, m, &ps, x, y, "", !forward_only);
        if (!forward_only) {
            ct_optim_step(o);
            ct_optim_zero_grad(o);
            ct_progress prog = {.epoch = 0, .step = 1, .seed = 1, .world = 1};
            snprintf(path, sizeof path, "%s.step.safetensors", out);
            if (ct_ckpt_save(path, m, NULL, &prog) != CT_OK) dump_die(path);
            CT_NO_GRAD { dump_tensor(&d, "step.logits", ct_module_forward(m, x)); }
        }
        snprintf(path, sizeof path, "%s.dump.safetensors", out);
        dump_save(&d, path);
    }
    printf("vit_dump: %d parameters, %lld values, %d dumped tensors\n", ps.n, (long long)ct_named_numel(&ps), d.n);
    dump_free(&d);
    ct_optim_free(o);
    ct_named_free(&ps);
    ct_st_free(batch);
    ct_module_free(m);
    ct_scope_shutdown();
    return 0;
}
