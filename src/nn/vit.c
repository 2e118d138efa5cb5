/* torchvision's VisionTransformer (torchvision/models/vision_transformer.py): the same
 * tree, state_dict names and initialisation, so its state_dict loads strict here and ours
 * loads into torchvision: class_token, conv_proj.*, encoder.pos_embedding,
 * encoder.layers.encoder_layer_N.*, encoder.ln.*, heads.head.*. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "nn.h"

/* The tree is torchvision's, as nested Sequentials, so the per-layer release scopes and the
 * frozen prefix (the feature cache) work on it like on any Sequential: the root holds
 * class_token and runs conv_proj, encoder, class_feature, heads; the encoder holds
 * pos_embedding and runs embed, dropout, layers.encoder_layer_0.., ln. conv_proj is a
 * Conv2d whose forward also flattens the patch grid into tokens ([N, L-1, E], torchvision's
 * _process_input); embed (class token in front, + pos_embedding) and class_feature (x[:, 0])
 * are parameter-free layers that are inline code in torchvision's forward, so the
 * state_dict names are the same. */

typedef struct {
    ct_module base;
    int64_t hidden;
} patch_embed;

/* conv -> [N, E, h, w] -> [N, E, h*w] -> [N, h*w, E] */
static ct_tensor *conv_proj_forward(ct_module *m, ct_tensor *x) {
    int64_t E = ((patch_embed *)m)->hidden, p = m->params[0]->shape[2];
    CT_ASSERT(x->ndim == 4 && x->shape[1] == m->params[0]->shape[1] && x->shape[2] % p == 0 && x->shape[3] % p == 0,
              "VisionTransformer.conv_proj: expected input [N, %lld, H, W] with H, W multiples of %lld, got %s",
              (long long)m->params[0]->shape[1], (long long)p, CT_SHAPE_STR(x));
    ct_tensor *y = ct_conv2d(x, m->params[0], m->params[1], (int)p, 0);
    return ct_transpose(ct_reshape(y, CT_SHAPE(x->shape[0], E, y->shape[2] * y->shape[3])));
}

static const ct_module_ops conv_proj_ops = {.type = "Conv2d", .forward = conv_proj_forward};

typedef struct {
    ct_module base;
    ct_tensor *class_token, *pos_embedding; /* the root's and the encoder's, borrowed */
} token_embed;

/* cat([class_token.expand(N, -1, -1), x], dim=1) + pos_embedding */
static ct_tensor *embed_forward(ct_module *m, ct_tensor *x) {
    token_embed *t = (token_embed *)m;
    const ct_tensor *pos = t->pos_embedding;
    CT_ASSERT(x->ndim == 3 && x->shape[1] + 1 == pos->shape[1] && x->shape[2] == pos->shape[2],
              "VisionTransformer: %s patch tokens do not fit pos_embedding %s", CT_SHAPE_STR(x), CT_SHAPE_STR(pos));
    ct_tensor *cls = ct_expand(t->class_token, CT_SHAPE(x->shape[0], 1, x->shape[2]));
    return ct_add(ct_cat(2, (ct_tensor *[]){cls, x}, 1), t->pos_embedding);
}

static const ct_module_ops embed_ops = {.type = "ClassTokenPosEmbedding", .forward = embed_forward};

static ct_tensor *class_feature_forward(ct_module *m, ct_tensor *x) {
    (void)m;
    return ct_select(x, 1, 0);
}

static const ct_module_ops class_feature_ops = {.type = "ClassTokenFeature", .forward = class_feature_forward};

ct_status ct_vit_preset(const char *name, ct_vit_config *c) {
    /* image size, patch, layers, heads, hidden, mlp */
    static const struct {
        const char *name;
        int64_t v[6];
    } presets[] = {
        {"vit_b_16", {224, 16, 12, 12, 768, 3072}},
        {"vit_b_32", {224, 32, 12, 12, 768, 3072}},
        /* for 28-32 px images: 4x4 patches (49 tokens + class at 28 px), 4 blocks of 64 */
        {"vit_tiny", {28, 4, 4, 4, 64, 128}},
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
    ct_module *m = ct_nn_sequential();
    ct_tensor *cls = ct_module_add_param(m, "class_token", ct_own(ct_zeros(CT_SHAPE(1, 1, E))));

    /* the patchify stem: trunc_normal_(std = sqrt(1 / fan_in)) within [-2, 2], zero bias */
    ct_module *proj = ct_module_new(sizeof(patch_embed), &conv_proj_ops);
    ((patch_embed *)proj)->hidden = E;
    ct_tensor *w = ct_module_add_param(proj, "weight", ct_own(ct_tensor_new(CT_SHAPE(E, c->in_channels, p, p))));
    ct_module_add_param(proj, "bias", ct_own(ct_zeros(CT_SHAPE(E))));
    float std = sqrtf(1.0f / (float)(c->in_channels * p * p));
    for (int64_t i = 0; i < w->numel; i++) {
        float r;
        do r = std * ct_rng_normal(rng);
        while (r < -2 || r > 2);
        w->data[i] = r;
    }
    ct_seq_add(m, "conv_proj", proj);

    ct_module *enc = ct_nn_sequential();
    ct_tensor *pos = ct_module_add_param(enc, "pos_embedding", ct_own(ct_rand_normal(CT_SHAPE(1, seq, E), 0, 0.02f, rng)));
    ct_module *embed = ct_module_new(sizeof(token_embed), &embed_ops);
    ((token_embed *)embed)->class_token = cls;
    ((token_embed *)embed)->pos_embedding = pos;
    ct_seq_add(enc, "embed", embed);
    ct_seq_add(enc, "dropout", ct_nn_dropout(c->dropout, ct_rng_next(rng)));
    ct_module *layers = ct_nn_sequential();
    for (int64_t i = 0; i < c->num_layers; i++) {
        char name[40];
        snprintf(name, sizeof name, "encoder_layer_%lld", (long long)i);
        ct_seq_add(layers, name, ct_nn_vit_encoder_block(E, (int)c->num_heads, c->mlp_dim, c->dropout,
                                                          c->attention_dropout, rng));
    }
    ct_seq_add(enc, "layers", layers);
    ct_seq_add(enc, "ln", ct_nn_layernorm(E, 1e-6f));
    ct_seq_add(m, "encoder", enc);
    ct_seq_add(m, "class_feature", ct_module_new(sizeof(ct_module), &class_feature_ops));

    /* heads.head starts at zero, as torchvision's does without a representation layer */
    ct_module *heads = ct_nn_sequential();
    ct_module *head = ct_nn_linear(E, c->num_classes, true, rng);
    for (int k = 0; k < 2; k++) memset(head->params[k]->data, 0, (size_t)head->params[k]->numel * sizeof(float));
    ct_seq_add(heads, "head", head);
    ct_seq_add(m, "heads", heads);
    *out = m;
    return CT_OK;
}
