/* ctrain nn: a PyTorch-style module tree with named parameters and buffers, train/eval
 * mode (separate from grad mode), freezing by glob, and the built-in models. State names
 * and layouts match an nn.Sequential of the same layers ("0.weight" is [out, in]). */
#ifndef CT_NN_H
#define CT_NN_H

#include "../ops/ops.h"

typedef struct ct_module ct_module;

#define CT_MODULE_MAX_TENSORS 4
#define CT_MODULE_MAX_EXTRA 2

/* State a layer keeps beyond its parameters and buffers that checkpoints must carry. */
typedef struct {
    const char *name;   /* "num_batches_tracked", "rng" */
    bool in_state_dict; /* true: "<path>.<name>", part of PyTorch's state_dict (broadcast with
                         * the buffers); false: ctrain's own, saved as "<name>.<path>" */
    ct_dtype dtype;
    int ndim;            /* 0 (a scalar) or 1 */
    int64_t numel;
    void *data;          /* the module's own memory */
} ct_module_extra;

/* What differs per layer kind. Only forward is required; the rest may be NULL. */
typedef struct {
    const char *type; /* PyTorch class name: "Linear", "Conv2d", "Sequential", ... */
    ct_tensor *(*forward)(ct_module *m, ct_tensor *x);
    /* Fills out[0..CT_MODULE_MAX_EXTRA) with the extra checkpoint state; returns the count. */
    int (*extra_state)(ct_module *m, ct_module_extra *out);
    /* Restarts the layer's random stream (Dropout) from seed. */
    void (*reseed)(ct_module *m, uint64_t seed);
    /* False when, in its current mode, a sample's output depends on the rest of the batch or
     * on a random stream (BatchNorm on batch statistics, active Dropout): then its output
     * cannot be cached. NULL: always true. Children and trainable parameters are checked
     * generically (ct_module_frozen_prefix). */
    bool (*per_sample)(const ct_module *m);
    /* forward followed by a ReLU, fused (BatchNorm): what a Sequential or a ResNet block
     * runs for a layer directly followed by a ReLU (ct_module_forward_relu). NULL: none. */
    ct_tensor *(*forward_relu)(ct_module *m, ct_tensor *x);
} ct_module_ops;

/* The base of every module. A layer kind is a struct whose first member is a ct_module
 * (ct_linear_module, ct_batchnorm_module, ...); the tree, names, modes and freezing only
 * ever see the base. */
struct ct_module {
    const ct_module_ops *ops;
    bool training;
    /* parameters then buffers, in registration order; owned references */
    int nparams, nbuffers;
    const char *param_names[CT_MODULE_MAX_TENSORS];
    ct_tensor *params[CT_MODULE_MAX_TENSORS];
    const char *buffer_names[CT_MODULE_MAX_TENSORS];
    ct_tensor *buffers[CT_MODULE_MAX_TENSORS];
    /* named children, in registration order: owned */
    int nchildren;
    char **child_names;
    ct_module **children;
    /* packed parameter slab (root only): every parameter is a view into it */
    float *slab;
    size_t slab_floats;
};

/* ---- the layer kinds' typed state ---------------------------------------------------------- */
typedef struct {
    ct_module base;
    int64_t in_features, out_features;
} ct_linear_module;
typedef struct {
    ct_module base;
    int64_t in_channels, out_channels;
    int kernel, stride, padding;
    int groups; /* weight [out, in/groups, k, k]; in = out = groups is depthwise */
} ct_conv2d_module;
typedef struct {
    ct_module base;
    int64_t num_features;
    int ndim; /* of the input: 2 (BatchNorm1d) or 4 (BatchNorm2d) */
    float momentum, eps;
    int64_t num_batches_tracked; /* int64 in PyTorch's state_dict */
    bool frozen_bn_eval;         /* stay in eval while the parameters are frozen */
} ct_batchnorm_module;
typedef struct {
    ct_module base;
    float p;
    ct_rng rng; /* saved in checkpoints as "rng.<path>" */
} ct_dropout_module;
typedef struct {
    ct_module base;
    int kernel, stride, padding;
} ct_pool2d_module;
/* Checked downcasts: the typed layer, or NULL when m is another kind. */
ct_conv2d_module *ct_nn_as_conv2d(ct_module *m);
ct_batchnorm_module *ct_nn_as_batchnorm(ct_module *m);
ct_dropout_module *ct_nn_as_dropout(ct_module *m);

/* ---- building blocks for layers (also for users' own modules) ------------------------- */
/* A zeroed module of `size` bytes (a struct whose first member is a ct_module) of the kind
 * ops describes, in train mode; free with ct_module_free. */
ct_module *ct_module_new(size_t size, const ct_module_ops *ops);
/* The PyTorch class name of m. */
const char *ct_module_type(const ct_module *m);
/* Registers a parameter (sets requires_grad) or buffer; takes the caller's reference (use
 * ct_own on a fresh tensor). name must outlive the module (a string literal). */
ct_tensor *ct_module_add_param(ct_module *m, const char *name, ct_tensor *t);
ct_tensor *ct_module_add_buffer(ct_module *m, const char *name, ct_tensor *t);
/* Registers child under name (copied; unique among m's children) and takes ownership;
 * the child takes m's mode. Returns child. */
ct_module *ct_module_add_child(ct_module *m, const char *name, ct_module *child);

/* ---- layers (each returns an owned module; free the root with ct_module_free) -------- */
/* Weights: kaiming-uniform with a = sqrt(5) (bound 1/sqrt(fan_in)); biases uniform within
 * 1/sqrt(fan_in): PyTorch's defaults, drawn from rng. */
ct_module *ct_nn_linear(int64_t in, int64_t out, bool bias, ct_rng *rng);
ct_module *ct_nn_conv2d(int64_t in_ch, int64_t out_ch, int kernel, int stride, int padding,
                        bool bias, ct_rng *rng);
/* nn.Conv2d(..., groups=groups): groups divides in_ch and out_ch; fan_in = in_ch/groups*k*k. */
ct_module *ct_nn_conv2d_groups(int64_t in_ch, int64_t out_ch, int kernel, int stride, int padding,
                               int groups, bool bias, ct_rng *rng);
/* eps 1e-5, momentum 0.1, affine, tracking running stats (PyTorch's defaults). */
ct_module *ct_nn_batchnorm1d(int64_t features);
ct_module *ct_nn_batchnorm2d(int64_t channels);
ct_module *ct_nn_dropout(float p, uint64_t seed);
ct_module *ct_nn_relu(void);
ct_module *ct_nn_gelu(void);
ct_module *ct_nn_tanh(void);
ct_module *ct_nn_maxpool2d(int kernel, int stride);
ct_module *ct_nn_maxpool2d_padded(int kernel, int stride, int padding);
ct_module *ct_nn_avgpool2d(int kernel, int stride);
/* AdaptiveAvgPool2d((1, 1)): [N, C, H, W] -> [N, C, 1, 1], the mean over each plane. */
ct_module *ct_nn_global_avgpool2d(void);
ct_module *ct_nn_flatten(void); /* start_dim = 1 */
ct_module *ct_nn_sequential(void);
/* Appends child under `name` (NULL: its index, as nn.Sequential does). Takes ownership;
 * returns seq. */
ct_module *ct_seq_add(ct_module *seq, const char *name, ct_module *child);

/* Restarts m's own random stream, if its kind has one (not its children's). */
void ct_module_reseed(ct_module *m, uint64_t seed);
/* The extra checkpoint state of m itself (not its children): fills out, returns the count. */
int ct_module_extra_state(ct_module *m, ct_module_extra out[CT_MODULE_MAX_EXTRA]);

void ct_module_free(ct_module *m);

/* Runs the module. Sequential runs each child in its own release scope, so under no_grad
 * an intermediate is freed as soon as the next layer has used it. */
ct_tensor *ct_module_forward(ct_module *m, ct_tensor *x);
/* ct_module_forward(relu, ct_module_forward(m, x)), as one fused op when m has one
 * (BatchNorm: ct_batch_norm_relu) and relu is a ReLU module; state, names and values are
 * the same either way. */
ct_tensor *ct_module_forward_relu(ct_module *m, ct_module *relu, ct_tensor *x);
/* Whether m is a ReLU layer (ct_nn_relu). */
bool ct_module_is_relu(const ct_module *m);
/* conv (a Conv2d), then bn (a BatchNorm2d), then + residual (when not NULL), then a ReLU
 * (when relu), as one convolution with an epilogue (ct_conv2d_post), bit for bit what the
 * separate ops give. Only when bn uses its running statistics (eval mode, or frozen with
 * bn_eval_when_frozen) and no gradient is needed (no_grad, or nothing involved requires
 * grad: inference, evaluation, frozen stages); otherwise NULL, and the caller runs the ops
 * one by one. Saves BatchNorm's, add's and ReLU's passes over memory. */
ct_tensor *ct_nn_conv_bn_fold(ct_module *conv, ct_module *bn, ct_tensor *x, ct_tensor *residual,
                              bool relu);

/* A Sequential's layers are its children with every nested Sequential replaced by its own
 * layers, depth first: running them in order is running the Sequential. (The CNN's 13:
 * backbone.0-8, head.0-3.) Any other module counts as one layer. */
int ct_seq_num_layers(ct_module *m);
/* Runs layers [from, to) of a Sequential, each in its own release scope. */
ct_tensor *ct_seq_forward_range(ct_module *seq, int from, int to, ct_tensor *x);
/* How many leading layers of a Sequential form a frozen prefix that is a fixed function
 * in the current mode (no trainable parameter, no active dropout, BatchNorm on running
 * statistics), leaving at least one layer to train; 0 if none. Its outputs can be cached.
 * The prefix may end inside a nested Sequential (the backbone and the head's frozen
 * first layer, say). */
int ct_module_frozen_prefix(ct_module *m);

/* ---- modes ---------------------------------------------------------------------------- */
/* Sets train (true) or eval (false) mode recursively; never touches grad mode. */
void ct_module_train(ct_module *m, bool on);
/* Evaluation scope: eval mode and no_grad together, restoring both afterwards. */
typedef struct {
    bool grad;
    bool *modes;
    int n;
} ct_eval_state;
ct_eval_state ct_eval_enter(ct_module *m);
void ct_eval_exit(ct_module *m, ct_eval_state *s);
#define CT_EVALUATE(m)                                                                    \
    for (ct_eval_state ct__es = ct_eval_enter(m), *ct__p = &ct__es; ct__p;                \
         ct_eval_exit((m), ct__p), ct__p = NULL)

/* ---- named parameters and buffers ----------------------------------------------------- */
typedef struct {
    int n;
    char **names;      /* full dotted names, owned by the list */
    ct_tensor **tensors; /* borrowed */
    ct_module **owners;  /* the module each entry belongs to */
} ct_named;
/* Parameters in registration order (trainable_only: requires_grad only). */
ct_named ct_module_params(ct_module *m, bool trainable_only);
/* Buffers (running_mean, running_var) in registration order. */
ct_named ct_module_buffers(ct_module *m);
/* Every module in the tree with its dotted path ("" for the root), pre-order. */
ct_named ct_module_modules(ct_module *m);
void ct_named_free(ct_named *l);
int64_t ct_named_numel(const ct_named *l);
/* The parameter or buffer with this dotted name, or NULL. */
ct_tensor *ct_module_find(ct_module *m, const char *name);

/* ---- freezing -------------------------------------------------------------------------- */
/* Sets requires_grad on every parameter whose dotted name matches the glob (fnmatch, e.g.
 * "backbone.*"); a comma-separated list of globs is accepted. Returns how many matched.
 * Unfreezing (requires_grad = true) works the same way. */
int ct_module_set_requires_grad(ct_module *m, const char *globs, bool requires_grad);
/* True when name matches one of the comma-separated fnmatch globs (NULL or "": none). */
bool ct_glob_match(const char *globs, const char *name);
/* Sets whether frozen BatchNorm layers stay in eval mode (default true). */
void ct_module_set_frozen_bn_eval(ct_module *m, bool on);

/* Moves every parameter into one contiguous slab in registration order (the optimizer's
 * fused loop and the checkpoint writer then see flat memory). Idempotent. */
void ct_module_pack(ct_module *m);

/* ---- built-in models ------------------------------------------------------------------- */
/* mlp: 784-256-128-10 with ReLU: Sequential(0 Flatten, 1 Linear, 2 ReLU, 3 Linear, 4 ReLU,
 * 5 Linear). cnn: Sequential(backbone = Sequential(conv3x3 32, BN, ReLU, maxpool2,
 * conv3x3 64, BN, ReLU, maxpool2, Flatten), head = Sequential(Linear 3136-128, ReLU,
 * Dropout, Linear 128-classes)). */
ct_module *ct_nn_mlp(int64_t in, int64_t classes, ct_rng *rng);
ct_module *ct_nn_cnn(int64_t in_ch, int64_t hw, int64_t classes, float dropout, ct_rng *rng);
/* torchvision's ResNets: resnet18/34 (BasicBlock), resnet50 (Bottleneck), with its names
 * ("conv1.weight", "layer2.0.downsample.1.running_var", "fc.bias") and initialisation (convs
 * kaiming-normal fan_out without bias, BatchNorm weight 1 and bias 0, fc Linear's default).
 * The stem is torchvision's (7x7 stride 2 and a 3x3 stride-2 max pool) or, for 28-32 px
 * images, a 3x3 stride-1 conv1 without the max pool. The model is a Sequential of conv1,
 * bn1, relu, [maxpool,] layer1-4, avgpool, flatten, fc. Returns CT_ERR_CONFIG for a depth
 * other than 18, 34, 50. */
typedef enum { CT_RESNET_STEM_IMAGENET, CT_RESNET_STEM_SMALL } ct_resnet_stem;
typedef struct {
    int depth; /* 18, 34 or 50 */
    int64_t in_channels, num_classes;
    ct_resnet_stem stem;
} ct_resnet_config;
ct_status ct_nn_resnet(const ct_resnet_config *c, ct_rng *rng, ct_module **out);
/* One block with children conv1, bn1, relu, conv2, bn2 (BasicBlock) or conv1, bn1, conv2,
 * bn2, conv3, bn3, relu (Bottleneck: planes wide, 4 * planes out), and a downsample
 * Sequential (1x1 conv, BatchNorm) when stride != 1 or the channel count changes. */
ct_module *ct_nn_resnet_block(int64_t inplanes, int64_t planes, int stride, bool bottleneck,
                              ct_rng *rng);
/* Builds a Sequential from a layer list such as "flatten,linear:256,relu,linear:10" for
 * inputs of shape in_shape (per sample); shapes are inferred layer by layer. Returns
 * CT_ERR_CONFIG naming the bad item. */
ct_status ct_nn_from_spec(const char *spec, int ndim, const int64_t *in_shape, float dropout,
                          ct_rng *rng, ct_module **out);

/* ---- transformers (transformer.c, vit.c) ---------------------------------------------- */
/* LayerNorm over the last dim (weight ones, bias zeros). */
ct_module *ct_nn_layernorm(int64_t dim, float eps);
/* nn.MultiheadAttention(embed, heads, dropout, batch_first=True) used as self-attention
 * (forward(x) = attn(x, x, x)): in_proj_weight [3E, E] (xavier), in_proj_bias, out_proj
 * (Linear, zero bias); the attention dropout draws from the module's own stream. */
ct_module *ct_nn_multihead_attention(int64_t embed, int heads, float dropout, ct_rng *rng);
/* torchvision's ViT EncoderBlock: ln_1, self_attention, dropout, ln_2, mlp (0 Linear,
 * 1 GELU, 2 Dropout, 3 Linear, 4 Dropout), LayerNorms with eps 1e-6. */
ct_module *ct_nn_vit_encoder_block(int64_t hidden, int heads, int64_t mlp_dim, float dropout,
                                   float attention_dropout, ct_rng *rng);
typedef struct {
    int64_t image_size, patch_size, num_layers, num_heads, hidden_dim, mlp_dim;
    int64_t in_channels, num_classes;
    float dropout, attention_dropout;
} ct_vit_config;
/* Sets the architecture fields (image_size .. mlp_dim) of a named preset: vit_b_16,
 * vit_b_32 (224 px), vit_tiny (28 px, 4x4 patches, 4 layers, 4 heads, 64 wide, mlp 128).
 * CT_ERR_CONFIG naming the preset if there is no such one. */
ct_status ct_vit_preset(const char *name, ct_vit_config *c);
/* torchvision's VisionTransformer with its state_dict names and init; inputs
 * [N, in_channels, image_size, image_size] -> logits [N, num_classes]. CT_ERR_CONFIG naming
 * the bad field. */
ct_status ct_nn_vit(const ct_vit_config *c, ct_rng *rng, ct_module **out);

#endif
