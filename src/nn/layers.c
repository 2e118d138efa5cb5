/* The layers: each kind is a struct embedding ct_module with its typed settings, and a
 * table of what differs per kind. Constructors register parameters/buffers under PyTorch's
 * names; each forward is one call into the ops layer. */
#include <math.h>
#include <stdlib.h>

#include "nn.h"

/* The typed layer behind a base pointer (the base is its first member). */
#define AS(type, m) ((type *)(m))

/* kaiming_uniform_(a=sqrt(5)) gives bound = gain * sqrt(3 / fan_in) with
 * gain = sqrt(2 / (1 + a^2)) = sqrt(1/3), i.e. 1/sqrt(fan_in); the bias uses the same. */
static ct_tensor *init_uniform(int ndim, const int64_t *shape, int64_t fan_in, ct_rng *rng) {
    float bound = fan_in > 0 ? 1.0f / sqrtf((float)fan_in) : 0;
    return ct_own(ct_rand_uniform(ndim, shape, -bound, bound, rng));
}

/* ---- Linear ----------------------------------------------------------------------------- */

static ct_tensor *linear_forward(ct_module *m, ct_tensor *x) {
    return ct_linear(x, m->params[0], m->nparams > 1 ? m->params[1] : NULL);
}

static const ct_module_ops linear_ops = {.type = "Linear", .forward = linear_forward};

ct_module *ct_nn_linear(int64_t in, int64_t out, bool bias, ct_rng *rng) {
    ct_module *m = ct_module_new(sizeof(ct_linear_module), &linear_ops);
    AS(ct_linear_module, m)->in_features = in;
    AS(ct_linear_module, m)->out_features = out;
    ct_module_add_param(m, "weight", init_uniform(CT_SHAPE(out, in), in, rng));
    if (bias) ct_module_add_param(m, "bias", init_uniform(CT_SHAPE(out), in, rng));
    return m;
}

/* ---- Conv2d ----------------------------------------------------------------------------- */

static ct_tensor *conv_forward(ct_module *m, ct_tensor *x) {
    const ct_conv2d_module *c = AS(ct_conv2d_module, m);
    ct_conv2d_opts o = {.stride_h = c->stride, .stride_w = c->stride, .pad_h = c->padding,
                        .pad_w = c->padding, .groups = c->groups};
    return ct_conv2d_ex(x, m->params[0], m->nparams > 1 ? m->params[1] : NULL, &o);
}

static const ct_module_ops conv_ops = {.type = "Conv2d", .forward = conv_forward};

ct_conv2d_module *ct_nn_as_conv2d(ct_module *m) {
    return m->ops == &conv_ops ? AS(ct_conv2d_module, m) : NULL;
}

ct_module *ct_nn_conv2d_groups(int64_t in_ch, int64_t out_ch, int kernel, int stride, int padding,
                               int groups, bool bias, ct_rng *rng) {
    CT_ASSERT(groups >= 1 && in_ch % groups == 0 && out_ch % groups == 0,
              "Conv2d: groups %d must divide in_channels %lld and out_channels %lld", groups,
              (long long)in_ch, (long long)out_ch);
    ct_module *m = ct_module_new(sizeof(ct_conv2d_module), &conv_ops);
    ct_conv2d_module *c = AS(ct_conv2d_module, m);
    c->in_channels = in_ch, c->out_channels = out_ch;
    c->kernel = kernel, c->stride = stride, c->padding = padding, c->groups = groups;
    int64_t fan_in = in_ch / groups * kernel * kernel;
    ct_module_add_param(m, "weight",
                        init_uniform(CT_SHAPE(out_ch, in_ch / groups, kernel, kernel), fan_in, rng));
    if (bias) ct_module_add_param(m, "bias", init_uniform(CT_SHAPE(out_ch), fan_in, rng));
    return m;
}

ct_module *ct_nn_conv2d(int64_t in_ch, int64_t out_ch, int kernel, int stride, int padding,
                        bool bias, ct_rng *rng) {
    return ct_nn_conv2d_groups(in_ch, out_ch, kernel, stride, padding, 1, bias, rng);
}

/* ---- BatchNorm ---------------------------------------------------------------------------- */

/* Train mode uses batch statistics and updates the running ones, unless the layer is
 * frozen and frozen_bn_eval is set: the usual fine-tuning choice, so a frozen backbone's
 * statistics are untouched while the head trains. */
static bool batchnorm_uses_batch(const ct_module *m) {
    const ct_batchnorm_module *bn = AS(const ct_batchnorm_module, m);
    bool frozen = !m->params[0]->requires_grad && !m->params[1]->requires_grad;
    return m->training && !(frozen && bn->frozen_bn_eval);
}

/* The layer's forward, followed by a fused ReLU when relu (ct_module_forward_relu). */
static ct_tensor *batchnorm_run(ct_module *m, ct_tensor *x, bool relu) {
    ct_batchnorm_module *bn = AS(ct_batchnorm_module, m);
    bool train = batchnorm_uses_batch(m);
    CT_ASSERT(x->ndim == bn->ndim && x->shape[1] == bn->num_features,
              "%s(%lld): expected input [N, %lld%s], got %s", ct_module_type(m),
              (long long)bn->num_features, (long long)bn->num_features, bn->ndim == 4 ? ", H, W" : "",
              CT_SHAPE_STR(x));
    if (train) bn->num_batches_tracked++;
    return (relu ? ct_batch_norm_relu : ct_batch_norm)(x, m->params[0], m->params[1], m->buffers[0],
                                                       m->buffers[1], train, bn->momentum, bn->eps);
}
static ct_tensor *batchnorm_forward(ct_module *m, ct_tensor *x) { return batchnorm_run(m, x, false); }
static ct_tensor *batchnorm_relu_forward(ct_module *m, ct_tensor *x) { return batchnorm_run(m, x, true); }

static bool batchnorm_per_sample(const ct_module *m) { return !batchnorm_uses_batch(m); }

static int batchnorm_extra(ct_module *m, ct_module_extra *out) {
    out[0] = (ct_module_extra){.name = "num_batches_tracked", .in_state_dict = true,
                               .dtype = CT_DTYPE_I64, .ndim = 0, .numel = 1,
                               .data = &AS(ct_batchnorm_module, m)->num_batches_tracked};
    return 1;
}

static const ct_module_ops bn1d_ops = {.type = "BatchNorm1d", .forward = batchnorm_forward,
                                       .extra_state = batchnorm_extra, .per_sample = batchnorm_per_sample,
                                       .forward_relu = batchnorm_relu_forward};
static const ct_module_ops bn2d_ops = {.type = "BatchNorm2d", .forward = batchnorm_forward,
                                       .extra_state = batchnorm_extra, .per_sample = batchnorm_per_sample,
                                       .forward_relu = batchnorm_relu_forward};

ct_batchnorm_module *ct_nn_as_batchnorm(ct_module *m) {
    return m->ops == &bn1d_ops || m->ops == &bn2d_ops ? AS(ct_batchnorm_module, m) : NULL;
}

static ct_module *batchnorm(const ct_module_ops *ops, int64_t c, int ndim) {
    ct_module *m = ct_module_new(sizeof(ct_batchnorm_module), ops);
    ct_batchnorm_module *bn = AS(ct_batchnorm_module, m);
    bn->num_features = c, bn->ndim = ndim;
    bn->momentum = 0.1f, bn->eps = 1e-5f;
    bn->frozen_bn_eval = true;
    ct_module_add_param(m, "weight", ct_own(ct_ones(CT_SHAPE(c))));
    ct_module_add_param(m, "bias", ct_own(ct_zeros(CT_SHAPE(c))));
    ct_module_add_buffer(m, "running_mean", ct_own(ct_zeros(CT_SHAPE(c))));
    ct_module_add_buffer(m, "running_var", ct_own(ct_ones(CT_SHAPE(c))));
    return m;
}

/* ---- Conv2d -> BatchNorm2d folded, for inference ------------------------------------------- */

ct_tensor *ct_nn_conv_bn_fold(ct_module *conv, ct_module *bn, ct_tensor *x, ct_tensor *residual,
                              bool relu) {
    const ct_conv2d_module *c = ct_nn_as_conv2d(conv);
    const ct_batchnorm_module *b = ct_nn_as_batchnorm(bn);
    if (!c || !b || b->ndim != 4 || b->num_features != c->out_channels || batchnorm_uses_batch(bn))
        return NULL;
    if (ct_is_grad_enabled()) { /* a graph would be recorded: the unfolded ops keep it */
        bool grad = ct_requires_grad(x) || (residual && ct_requires_grad(residual));
        for (int i = 0; i < conv->nparams; i++) grad = grad || ct_requires_grad(conv->params[i]);
        for (int i = 0; i < bn->nparams; i++) grad = grad || ct_requires_grad(bn->params[i]);
        if (grad) return NULL;
    }
    ct_tensor *ab = ct_tensor_new(CT_SHAPE(2, b->num_features));
    float *a = ab->data, *sh = ab->data + b->num_features;
    ct_batch_norm_eval_coeffs(bn->params[0], bn->params[1], bn->buffers[0], bn->buffers[1], b->eps,
                              a, sh);
    ct_conv2d_post post = {.scale = a, .shift = sh, .residual = residual, .relu = relu};
    ct_conv2d_opts o = {.stride_h = c->stride, .stride_w = c->stride, .pad_h = c->padding,
                        .pad_w = c->padding, .groups = c->groups, .post = &post};
    return ct_conv2d_ex(x, conv->params[0], conv->nparams > 1 ? conv->params[1] : NULL, &o);
}

ct_module *ct_nn_batchnorm1d(int64_t features) { return batchnorm(&bn1d_ops, features, 2); }
ct_module *ct_nn_batchnorm2d(int64_t channels) { return batchnorm(&bn2d_ops, channels, 4); }

/* ---- Dropout ------------------------------------------------------------------------------ */

static ct_tensor *dropout_forward(ct_module *m, ct_tensor *x) {
    ct_dropout_module *d = AS(ct_dropout_module, m);
    return ct_dropout(x, d->p, m->training, &d->rng);
}

static bool dropout_per_sample(const ct_module *m) {
    return !m->training || AS(const ct_dropout_module, m)->p == 0;
}

static void dropout_reseed(ct_module *m, uint64_t seed) { ct_rng_seed(&AS(ct_dropout_module, m)->rng, seed); }

static int dropout_extra(ct_module *m, ct_module_extra *out) {
    ct_rng *r = &AS(ct_dropout_module, m)->rng;
    out[0] = (ct_module_extra){.name = "rng", .in_state_dict = false, .dtype = CT_DTYPE_U64,
                               .ndim = 1, .numel = (int64_t)(sizeof r->s / sizeof r->s[0]),
                               .data = r->s};
    return 1;
}

static const ct_module_ops dropout_ops = {.type = "Dropout", .forward = dropout_forward,
                                          .extra_state = dropout_extra, .reseed = dropout_reseed,
                                          .per_sample = dropout_per_sample};

ct_dropout_module *ct_nn_as_dropout(ct_module *m) {
    return m->ops == &dropout_ops ? AS(ct_dropout_module, m) : NULL;
}

ct_module *ct_nn_dropout(float p, uint64_t seed) {
    CT_ASSERT(p >= 0 && p < 1, "Dropout: p = %g outside [0, 1)", p);
    ct_module *m = ct_module_new(sizeof(ct_dropout_module), &dropout_ops);
    AS(ct_dropout_module, m)->p = p;
    dropout_reseed(m, seed);
    return m;
}

/* ---- parameter-free layers ---------------------------------------------------------------- */

static ct_tensor *relu_forward(ct_module *m, ct_tensor *x) { (void)m; return ct_relu(x); }
static ct_tensor *gelu_forward(ct_module *m, ct_tensor *x) { (void)m; return ct_gelu(x); }
static ct_tensor *tanh_forward(ct_module *m, ct_tensor *x) { (void)m; return ct_tanh(x); }
static ct_tensor *flatten_forward(ct_module *m, ct_tensor *x) { (void)m; return ct_flatten(x, 1); }

static const ct_module_ops relu_ops = {.type = "ReLU", .forward = relu_forward};
static const ct_module_ops gelu_ops = {.type = "GELU", .forward = gelu_forward};
static const ct_module_ops tanh_ops = {.type = "Tanh", .forward = tanh_forward};
static const ct_module_ops flatten_ops = {.type = "Flatten", .forward = flatten_forward};

ct_module *ct_nn_relu(void) { return ct_module_new(sizeof(ct_module), &relu_ops); }
ct_module *ct_nn_gelu(void) { return ct_module_new(sizeof(ct_module), &gelu_ops); }
ct_module *ct_nn_tanh(void) { return ct_module_new(sizeof(ct_module), &tanh_ops); }
ct_module *ct_nn_flatten(void) { return ct_module_new(sizeof(ct_module), &flatten_ops); }

static ct_tensor *maxpool_forward(ct_module *m, ct_tensor *x) {
    const ct_pool2d_module *p = AS(ct_pool2d_module, m);
    return ct_max_pool2d(x, p->kernel, p->stride, p->padding);
}

static ct_tensor *avgpool_forward(ct_module *m, ct_tensor *x) {
    const ct_pool2d_module *p = AS(ct_pool2d_module, m);
    return ct_avg_pool2d(x, p->kernel, p->stride, p->padding);
}

static const ct_module_ops maxpool_ops = {.type = "MaxPool2d", .forward = maxpool_forward};
static const ct_module_ops avgpool_ops = {.type = "AvgPool2d", .forward = avgpool_forward};

static ct_module *pool2d(const ct_module_ops *ops, int kernel, int stride, int padding) {
    ct_module *m = ct_module_new(sizeof(ct_pool2d_module), ops);
    ct_pool2d_module *p = AS(ct_pool2d_module, m);
    p->kernel = kernel, p->stride = stride ? stride : kernel, p->padding = padding;
    return m;
}

ct_module *ct_nn_maxpool2d(int kernel, int stride) { return pool2d(&maxpool_ops, kernel, stride, 0); }
ct_module *ct_nn_maxpool2d_padded(int kernel, int stride, int padding) {
    return pool2d(&maxpool_ops, kernel, stride, padding);
}
ct_module *ct_nn_avgpool2d(int kernel, int stride) { return pool2d(&avgpool_ops, kernel, stride, 0); }

/* nn.AdaptiveAvgPool2d((1, 1)), ResNet's global pool. */
static ct_tensor *global_avgpool_forward(ct_module *m, ct_tensor *x) {
    CT_ASSERT(x->ndim == 4, "%s: expected input [N, C, H, W], got %s", ct_module_type(m), CT_SHAPE_STR(x));
    return ct_adaptive_avg_pool2d(x, 1, 1);
}

static const ct_module_ops global_avgpool_ops = {.type = "AdaptiveAvgPool2d", .forward = global_avgpool_forward};

ct_module *ct_nn_global_avgpool2d(void) { return ct_module_new(sizeof(ct_module), &global_avgpool_ops); }
