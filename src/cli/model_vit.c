/* model.name = vit | vit_b_16 | vit_b_32 | vit_tiny: the ViT's config keys into
 * ct_vit_config. A preset gives the architecture; each architecture key set (non-zero)
 * overrides it, and model.name = vit needs them all. The image size and channels come
 * from the data, checked against model.image_size and model.in_channels. */
#include <stdio.h>
#include <string.h>

#include "cli.h"

ct_status ct_run_build_vit(ct_run *r, ct_rng *rng) {
    const ct_config *c = &r->cfg;
    const ct_dataset *ds = &r->test;
    static const char *preset[] = {[CT_CFG_MODEL_VIT_B_16] = "vit_b_16", [CT_CFG_MODEL_VIT_B_32] = "vit_b_32",
                                   [CT_CFG_MODEL_VIT_TINY] = "vit_tiny"};
    ct_vit_config v = {0};
    if (c->model.name != CT_CFG_MODEL_VIT) ct_vit_preset(preset[c->model.name], &v);
    const struct {
        const char *key;
        int value;
        int64_t *field;
    } arch[] = {{"patch_size", c->model.patch_size, &v.patch_size}, {"num_layers", c->model.num_layers, &v.num_layers},
                {"num_heads", c->model.num_heads, &v.num_heads},    {"hidden_dim", c->model.hidden_dim, &v.hidden_dim},
                {"mlp_dim", c->model.mlp_dim, &v.mlp_dim}};
    for (size_t i = 0; i < sizeof arch / sizeof *arch; i++) {
        if (arch[i].value) *arch[i].field = arch[i].value;
        if (!*arch[i].field)
            return ct_error(CT_ERR_CONFIG, "%s: model.name = vit needs model.%s (or use a preset: vit_b_16, "
                            "vit_b_32, vit_tiny)", r->cfg_path, arch[i].key);
    }
    if (ds->sample_ndim != 3 || ds->sample_shape[1] != ds->sample_shape[2] ||
        ds->sample_shape[0] != c->model.in_channels ||
        (c->model.image_size && ds->sample_shape[1] != c->model.image_size)) {
        char shape[96] = "[";
        for (int i = 0; i < ds->sample_ndim; i++)
            snprintf(shape + strlen(shape), sizeof shape - strlen(shape), "%s%lld%s", i ? ", " : "",
                     (long long)ds->sample_shape[i], i == ds->sample_ndim - 1 ? "]" : "");
        return ct_error(CT_ERR_CONFIG, "%s: the ViT needs square [model.in_channels = %d, H, W] samples%s; the "
                        "data set's are %s", r->cfg_path, c->model.in_channels,
                        c->model.image_size ? " with H = W = model.image_size" : "", shape);
    }
    v.image_size = ds->sample_shape[1];
    v.in_channels = c->model.in_channels;
    if (c->model.num_classes && c->model.num_classes < r->classes)
        return ct_error(CT_ERR_CONFIG, "%s: model.num_classes = %d but the data has %lld classes", r->cfg_path,
                        c->model.num_classes, (long long)r->classes);
    if (c->model.num_classes) r->classes = c->model.num_classes;
    v.num_classes = r->classes;
    v.dropout = (float)c->model.dropout;
    v.attention_dropout = (float)c->model.attention_dropout;
    ct_status st = ct_nn_vit(&v, rng, &r->model);
    if (st != CT_OK) return ct_error(st, "%s: %s", r->cfg_path, ct_last_error());
    return CT_OK;
}
