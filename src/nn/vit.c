/* torchvision's VisionTransformer (torchvision/models/vision_transformer.py): the same
 * tree, state_dict names and initialisation, so its state_dict loads strict here and ours
 * loads into torchvision. Root: class_token, conv_proj, encoder (pos_embedding, dropout,
 * layers.encoder_layer_N, ln), heads.head. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "nn.h"

#define AS(type, m) ((type *)(m))

typedef struct {
    ct_module base;
    ct_module *dropout, *layers, *ln; /* children, borrowed */
} vit_encoder;

/* ln(layers(dropout(input + pos_embedding))) */
static ct_tensor *encoder_forward(ct_module *m, ct_tensor *x) {
    vit_encoder *e = AS(vit_encoder, m);
    ct_tensor *pos = m->params[0];
    CT_ASSERT(x->ndim == 3 && x->shape[1] == pos->shape[1] && x->shape[2] == pos->shape[2],
              "Encoder: input %s does not match pos_embedding %s", CT_SHAPE_STR(x), CT_SHAPE_STR(pos));
    x = ct_module_forward(e->dropout, ct_add(x, pos));
    return ct_module_forward(e->ln, ct_module_forward(e->layers, x));
}

static const ct_module_ops encoder_ops = {.type = "Encoder", .forward = encoder_forward};

typedef struct {
    ct_module base;
    ct_vit_config cfg;
    ct_module *conv_proj, *encoder, *heads; /* children, borrowed */
} vit_model;

/* conv_proj -> [N, L-1, E] patches, class token in front, encoder, x[:, 0], heads. */
static ct_tensor *vit_forward(ct_module *m, ct_tensor *x) {
    vit_model *v = AS(vit_model, m);
    int64_t sz = v->cfg.image_size, E = v->cfg.hidden_dim;
    CT_ASSERT(x->ndim == 4 && x->shape[1] == v->cfg.in_channels && x->shape[2] == sz && x->shape[3] == sz,
              "VisionTransformer: expected input [N, %lld, %lld, %lld], got %s", (long long)v->cfg.in_channels,
              (long long)sz, (long long)sz, CT_SHAPE_STR(x));
    int64_t n = x->shape[0], patches = (sz / v->cfg.patch_size) * (sz / v->cfg.patch_size);
    ct_tensor *p = ct_module_forward(v->conv_proj, x);                     /* [N, E, h, w] */
    p = ct_transpose(ct_reshape(p, CT_SHAPE(n, E, patches)));              /* [N, L-1, E] */
    ct_tensor *cls = ct_expand(m->params[0], CT_SHAPE(n, 1, E));
    ct_tensor *h = ct_module_forward(v->encoder, ct_cat(2, (ct_tensor *[]){cls, p}, 1));
    return ct_module_forward(v->heads, ct_select(h, 1, 0));
}

static const ct_module_ops vit_ops = {.type = "VisionTransformer", .forward = vit_forward};

ct_status ct_vit_preset(const char *name, ct_vit_config *c) {
    /* image size, patch, layers, heads, hidden, mlp */
    static const struct {
        const char *name;
        int64_t v[6];
    } presets[] = {
        {"vit_b_16", {224, 16, 12, 12, 768, 3072}},
        {"vit_b_32", {224, 32, 12, 12, 768, 3072}},
        /* for 28-32 px images: 4x4 patches (49 tokens + class at 28 px), 6 blocks of 128 */
        {"vit_tiny", {28, 4, 6, 4, 128, 256}},
    };
    for (size_t i = 0; i < sizeof presets / sizeof *presets; i++)
        if (strcmp(name, presets[i].name) == 0) {
            const int64_t *v = presets[i].v;
            c->image_size = v[0], c->patch_size = v[1], c->num_layers = v[2];
            c->num_heads = v[3], c->hidden_dim = v[4], c->mlp_dim = v[5];
            return CT_OK;
        }
    return ct_error(CT_ERR_CONFIG, "vit: unknown preset '%s' (vit_b_16, vit_b_32, vit_tiny)", name);
}

static ct_status check_config(const ct_vit_config *c) {
    const struct {
        const char *key;
        int64_t v;
    } pos[] = {{"image_size", c->image_size}, {"patch_size", c->patch_size}, {"num_layers", c->num_layers},
               {"num_heads", c->num_heads},   {"hidden_dim", c->hidden_dim}, {"mlp_dim", c->mlp_dim},
               {"in_channels", c->in_channels}, {"num_classes", c->num_classes}};
    for (size_t i = 0; i < sizeof pos / sizeof *pos; i++)
        if (pos[i].v < 1) return ct_error(CT_ERR_CONFIG, "vit: %s = %lld must be >= 1", pos[i].key, (long long)pos[i].v);
    if (c->image_size % c->patch_size)
        return ct_error(CT_ERR_CONFIG, "vit: image_size %lld is not a multiple of patch_size %lld",
                        (long long)c->image_size, (long long)c->patch_size);
    if (c->hidden_dim % c->num_heads)
        return ct_error(CT_ERR_CONFIG, "vit: num_heads %lld does not divide hidden_dim %lld",
                        (long long)c->num_heads, (long long)c->hidden_dim);
    if (!(c->dropout >= 0 && c->dropout < 1) || !(c->attention_dropout >= 0 && c->attention_dropout < 1))
        return ct_error(CT_ERR_CONFIG, "vit: dropout %g and attention_dropout %g must be in [0, 1)",
                        (double)c->dropout, (double)c->attention_dropout);
    return CT_OK;
}

ct_status ct_nn_vit(const ct_vit_config *c, ct_rng *rng, ct_module **out) {
    *out = NULL;
    ct_status st = check_config(c);
    if (st != CT_OK) return st;
    int64_t E = c->hidden_dim, p = c->patch_size, seq = (c->image_size / p) * (c->image_size / p) + 1;
    ct_module *m = ct_module_new(sizeof(vit_model), &vit_ops);
    vit_model *v = AS(vit_model, m);
    v->cfg = *c;
    ct_module_add_param(m, "class_token", ct_own(ct_zeros(CT_SHAPE(1, 1, E))));

    /* the patchify stem: trunc_normal_(std = sqrt(1 / fan_in)) within [-2, 2], zero bias */
    v->conv_proj = ct_module_add_child(m, "conv_proj", ct_nn_conv2d(c->in_channels, E, (int)p, (int)p, 0, true, rng));
    ct_tensor *w = v->conv_proj->params[0], *b = v->conv_proj->params[1];
    float std = sqrtf(1.0f / (float)(c->in_channels * p * p));
    for (int64_t i = 0; i < w->numel; i++) {
        float r;
        do r = std * ct_rng_normal(rng);
        while (r < -2 || r > 2);
        w->data[i] = r;
    }
    memset(b->data, 0, (size_t)b->numel * sizeof(float));

    ct_module *enc = ct_module_new(sizeof(vit_encoder), &encoder_ops);
    ct_module_add_param(enc, "pos_embedding", ct_own(ct_rand_normal(CT_SHAPE(1, seq, E), 0, 0.02f, rng)));
    vit_encoder *e = AS(vit_encoder, enc);
    e->dropout = ct_module_add_child(enc, "dropout", ct_nn_dropout(c->dropout, ct_rng_next(rng)));
    ct_module *layers = ct_nn_sequential();
    for (int64_t i = 0; i < c->num_layers; i++) {
        char name[40];
        snprintf(name, sizeof name, "encoder_layer_%lld", (long long)i);
        ct_seq_add(layers, name, ct_nn_vit_encoder_block(E, (int)c->num_heads, c->mlp_dim, c->dropout,
                                                          c->attention_dropout, rng));
    }
    e->layers = ct_module_add_child(enc, "layers", layers);
    e->ln = ct_module_add_child(enc, "ln", ct_nn_layernorm(E, 1e-6f));
    v->encoder = ct_module_add_child(m, "encoder", enc);

    /* heads.head starts at zero, as torchvision's does without a representation layer */
    ct_module *heads = ct_nn_sequential();
    ct_module *head = ct_nn_linear(E, c->num_classes, true, rng);
    for (int k = 0; k < 2; k++) memset(head->params[k]->data, 0, (size_t)head->params[k]->numel * sizeof(float));
    ct_seq_add(heads, "head", head);
    v->heads = ct_module_add_child(m, "heads", heads);
    *out = m;
    return CT_OK;
}
