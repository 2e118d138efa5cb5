/* The layers: each constructor registers parameters/buffers under PyTorch's names, and
 * each forward is one call into the ops layer. */
#include <math.h>
#include <stdlib.h>

#include "nn.h"

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

ct_module *ct_nn_linear(int64_t in, int64_t out, bool bias, ct_rng *rng) {
    ct_module *m = ct_module_new("Linear", linear_forward);
    m->cfg[0] = in, m->cfg[1] = out;
    ct_module_add_param(m, "weight", init_uniform(CT_SHAPE(out, in), in, rng));
    if (bias) ct_module_add_param(m, "bias", init_uniform(CT_SHAPE(out), in, rng));
    return m;
}

/* ---- Conv2d ----------------------------------------------------------------------------- */

static ct_tensor *conv_forward(ct_module *m, ct_tensor *x) {
    return ct_conv2d(x, m->params[0], m->nparams > 1 ? m->params[1] : NULL, (int)m->cfg[3],
                     (int)m->cfg[4]);
}

ct_module *ct_nn_conv2d(int64_t in_ch, int64_t out_ch, int kernel, int stride, int padding,
                        bool bias, ct_rng *rng) {
    ct_module *m = ct_module_new("Conv2d", conv_forward);
    m->cfg[0] = in_ch, m->cfg[1] = out_ch, m->cfg[2] = kernel, m->cfg[3] = stride;
    m->cfg[4] = padding;
    int64_t fan_in = in_ch * kernel * kernel;
    ct_module_add_param(m, "weight", init_uniform(CT_SHAPE(out_ch, in_ch, kernel, kernel), fan_in, rng));
    if (bias) ct_module_add_param(m, "bias", init_uniform(CT_SHAPE(out_ch), fan_in, rng));
    return m;
}

/* ---- BatchNorm ---------------------------------------------------------------------------- */

/* Train mode uses batch statistics and updates the running ones, unless the layer is
 * frozen and frozen_bn_eval is set: the usual fine-tuning choice, so a frozen backbone's
 * statistics are untouched while the head trains. */
static ct_tensor *batchnorm_forward(ct_module *m, ct_tensor *x) {
    ct_tensor *w = m->params[0], *b = m->params[1];
    bool frozen = !w->requires_grad && !b->requires_grad;
    bool train = m->training && !(frozen && m->frozen_bn_eval);
    CT_ASSERT(x->ndim == m->cfg[1] && x->shape[1] == m->cfg[0],
              "%s(%lld): expected input [N, %lld%s], got %s", m->type, (long long)m->cfg[0],
              (long long)m->cfg[0], m->cfg[1] == 4 ? ", H, W" : "", CT_SHAPE_STR(x));
    if (train) m->num_batches_tracked++;
    return ct_batch_norm(x, w, b, m->buffers[0], m->buffers[1], train, m->fcfg[0], m->fcfg[1]);
}

static ct_module *batchnorm(const char *type, int64_t c, int ndim) {
    ct_module *m = ct_module_new(type, batchnorm_forward);
    m->cfg[0] = c, m->cfg[1] = ndim;
    m->fcfg[0] = 0.1f, m->fcfg[1] = 1e-5f; /* momentum, eps */
    ct_module_add_param(m, "weight", ct_own(ct_ones(CT_SHAPE(c))));
    ct_module_add_param(m, "bias", ct_own(ct_zeros(CT_SHAPE(c))));
    ct_module_add_buffer(m, "running_mean", ct_own(ct_zeros(CT_SHAPE(c))));
    ct_module_add_buffer(m, "running_var", ct_own(ct_ones(CT_SHAPE(c))));
    return m;
}

ct_module *ct_nn_batchnorm1d(int64_t features) { return batchnorm("BatchNorm1d", features, 2); }
ct_module *ct_nn_batchnorm2d(int64_t channels) { return batchnorm("BatchNorm2d", channels, 4); }

/* ---- parameter-free layers ---------------------------------------------------------------- */

static ct_tensor *dropout_forward(ct_module *m, ct_tensor *x) {
    return ct_dropout(x, m->fcfg[0], m->training, &m->rng);
}

ct_module *ct_nn_dropout(float p, uint64_t seed) {
    CT_ASSERT(p >= 0 && p < 1, "Dropout: p = %g outside [0, 1)", p);
    ct_module *m = ct_module_new("Dropout", dropout_forward);
    m->fcfg[0] = p;
    ct_rng_seed(&m->rng, seed);
    return m;
}

static ct_tensor *relu_forward(ct_module *m, ct_tensor *x) { (void)m; return ct_relu(x); }
static ct_tensor *gelu_forward(ct_module *m, ct_tensor *x) { (void)m; return ct_gelu(x); }
static ct_tensor *tanh_forward(ct_module *m, ct_tensor *x) { (void)m; return ct_tanh(x); }
static ct_tensor *flatten_forward(ct_module *m, ct_tensor *x) { (void)m; return ct_flatten(x, 1); }

ct_module *ct_nn_relu(void) { return ct_module_new("ReLU", relu_forward); }
ct_module *ct_nn_gelu(void) { return ct_module_new("GELU", gelu_forward); }
ct_module *ct_nn_tanh(void) { return ct_module_new("Tanh", tanh_forward); }
ct_module *ct_nn_flatten(void) { return ct_module_new("Flatten", flatten_forward); }

static ct_tensor *maxpool_forward(ct_module *m, ct_tensor *x) {
    return ct_max_pool2d(x, (int)m->cfg[0], (int)m->cfg[1], 0);
}

static ct_tensor *avgpool_forward(ct_module *m, ct_tensor *x) {
    return ct_avg_pool2d(x, (int)m->cfg[0], (int)m->cfg[1], 0);
}

ct_module *ct_nn_maxpool2d(int kernel, int stride) {
    ct_module *m = ct_module_new("MaxPool2d", maxpool_forward);
    m->cfg[0] = kernel, m->cfg[1] = stride ? stride : kernel;
    return m;
}

ct_module *ct_nn_avgpool2d(int kernel, int stride) {
    ct_module *m = ct_module_new("AvgPool2d", avgpool_forward);
    m->cfg[0] = kernel, m->cfg[1] = stride ? stride : kernel;
    return m;
}
