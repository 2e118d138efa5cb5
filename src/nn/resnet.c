/* torchvision's ResNets (torchvision/models/resnet.py): the same tree, names and
 * initialisation, so a torchvision state_dict loads strict and ours loads into torchvision.
 *
 * A block is a module with named children and its own forward. The network is a
 * Sequential of conv1, bn1, relu, [maxpool,] layer1..layer4 (Sequentials of blocks),
 * avgpool, flatten, fc: torchvision's ResNet.forward is exactly that chain (its flatten is
 * a call, here a parameter-free child, so the state_dict names are the same). Being a
 * Sequential gives it the per-layer release scopes and lets a frozen prefix end after any
 * block (the feature cache). */
#include <math.h>

#include "nn.h"

typedef struct {
    ct_module base;
    /* the children, borrowed; conv3/bn3 only in a Bottleneck, downsample may be NULL */
    ct_module *conv1, *bn1, *conv2, *bn2, *conv3, *bn3, *relu, *downsample;
} resnet_block;

/* conv, bn, then relu (when identity is NULL) or the residual add and relu: folded into the
 * convolution for inference (ct_nn_conv_bn_fold), else a bn directly followed by the relu
 * as one fused op (ct_module_forward_relu) and the add and relu as ops. */
static ct_tensor *conv_bn_relu(resnet_block *b, ct_module *conv, ct_module *bn, ct_tensor *x,
                               ct_tensor *identity) {
    ct_tensor *y = ct_nn_conv_bn_fold(conv, bn, x, identity, true);
    if (y) return y;
    y = ct_module_forward(conv, x);
    if (!identity) return ct_module_forward_relu(bn, b->relu, y);
    return ct_module_forward(b->relu, ct_add(ct_module_forward(bn, y), identity));
}

/* BasicBlock: relu(bn2(conv2(relu(bn1(conv1 x)))) + identity); Bottleneck adds the 1x1
 * conv3/bn3 after a relu. identity is x, or downsample(x) where the shape changes; it is
 * computed just before the last conv, which can then take it into its epilogue. */
static ct_tensor *block_forward(ct_module *m, ct_tensor *x) {
    resnet_block *b = (resnet_block *)m;
    ct_tensor *out = conv_bn_relu(b, b->conv1, b->bn1, x, NULL);
    if (b->conv3) out = conv_bn_relu(b, b->conv2, b->bn2, out, NULL); /* Bottleneck */
    ct_tensor *identity = b->downsample ? ct_module_forward(b->downsample, x) : x;
    return b->conv3 ? conv_bn_relu(b, b->conv3, b->bn3, out, identity)
                    : conv_bn_relu(b, b->conv2, b->bn2, out, identity);
}

static const ct_module_ops basic_ops = {.type = "BasicBlock", .forward = block_forward};
static const ct_module_ops bottleneck_ops = {.type = "Bottleneck", .forward = block_forward};

/* Conv2d without bias, initialised as torchvision does: kaiming_normal_(mode="fan_out",
 * nonlinearity="relu"), i.e. N(0, 2 / (out_ch * k * k)). */
static ct_module *conv(int64_t in, int64_t out, int k, int stride, int pad, ct_rng *rng) {
    ct_module *m = ct_nn_conv2d(in, out, k, stride, pad, false, rng);
    ct_tensor *w = m->params[0];
    float std = sqrtf(2.0f / (float)(out * k * k));
    for (int64_t i = 0; i < w->numel; i++) w->data[i] = std * ct_rng_normal(rng);
    return m;
}

ct_module *ct_nn_resnet_block(int64_t inplanes, int64_t planes, int stride, bool bottleneck,
                              ct_rng *rng) {
    CT_ASSERT(inplanes > 0 && planes > 0 && stride > 0, "resnet_block(%lld, %lld, stride %d): bad shape",
              (long long)inplanes, (long long)planes, stride);
    ct_module *m = ct_module_new(sizeof(resnet_block), bottleneck ? &bottleneck_ops : &basic_ops);
    resnet_block *b = (resnet_block *)m;
    int64_t out = bottleneck ? planes * 4 : planes;
    /* registration order is torchvision's, so is the state_dict's */
    if (bottleneck) {
        b->conv1 = ct_module_add_child(m, "conv1", conv(inplanes, planes, 1, 1, 0, rng));
        b->bn1 = ct_module_add_child(m, "bn1", ct_nn_batchnorm2d(planes));
        b->conv2 = ct_module_add_child(m, "conv2", conv(planes, planes, 3, stride, 1, rng));
        b->bn2 = ct_module_add_child(m, "bn2", ct_nn_batchnorm2d(planes));
        b->conv3 = ct_module_add_child(m, "conv3", conv(planes, out, 1, 1, 0, rng));
        b->bn3 = ct_module_add_child(m, "bn3", ct_nn_batchnorm2d(out));
        b->relu = ct_module_add_child(m, "relu", ct_nn_relu());
    } else {
        b->conv1 = ct_module_add_child(m, "conv1", conv(inplanes, planes, 3, stride, 1, rng));
        b->bn1 = ct_module_add_child(m, "bn1", ct_nn_batchnorm2d(planes));
        b->relu = ct_module_add_child(m, "relu", ct_nn_relu());
        b->conv2 = ct_module_add_child(m, "conv2", conv(planes, planes, 3, 1, 1, rng));
        b->bn2 = ct_module_add_child(m, "bn2", ct_nn_batchnorm2d(planes));
    }
    if (stride != 1 || inplanes != out) {
        ct_module *ds = ct_nn_sequential();
        ct_seq_add(ds, NULL, conv(inplanes, out, 1, stride, 0, rng));
        ct_seq_add(ds, NULL, ct_nn_batchnorm2d(out));
        b->downsample = ct_module_add_child(m, "downsample", ds);
    }
    return m;
}

ct_status ct_nn_resnet(const ct_resnet_config *c, ct_rng *rng, ct_module **out) {
    static const int blocks18[4] = {2, 2, 2, 2}, blocks34[4] = {3, 4, 6, 3};
    *out = NULL;
    const int *blocks = c->depth == 18 ? blocks18 : c->depth == 34 || c->depth == 50 ? blocks34 : NULL;
    if (!blocks)
        return ct_error(CT_ERR_CONFIG, "resnet: depth %d is not one of 18, 34, 50", c->depth);
    if (c->in_channels < 1 || c->num_classes < 1)
        return ct_error(CT_ERR_CONFIG, "resnet%d: in_channels %lld and num_classes %lld must be >= 1",
                        c->depth, (long long)c->in_channels, (long long)c->num_classes);
    bool bottleneck = c->depth == 50;
    ct_module *m = ct_nn_sequential();
    if (c->stem == CT_RESNET_STEM_SMALL) {
        /* for 28-32 px images: a 3x3 stride-1 conv and no max pool keep the resolution */
        ct_seq_add(m, "conv1", conv(c->in_channels, 64, 3, 1, 1, rng));
        ct_seq_add(m, "bn1", ct_nn_batchnorm2d(64));
        ct_seq_add(m, "relu", ct_nn_relu());
    } else {
        ct_seq_add(m, "conv1", conv(c->in_channels, 64, 7, 2, 3, rng));
        ct_seq_add(m, "bn1", ct_nn_batchnorm2d(64));
        ct_seq_add(m, "relu", ct_nn_relu());
        ct_seq_add(m, "maxpool", ct_nn_maxpool2d_padded(3, 2, 1));
    }
    int64_t inplanes = 64;
    for (int s = 0; s < 4; s++) {
        int64_t planes = 64 << s;
        ct_module *stage = ct_nn_sequential();
        for (int i = 0; i < blocks[s]; i++) {
            ct_seq_add(stage, NULL, ct_nn_resnet_block(inplanes, planes, i == 0 && s > 0 ? 2 : 1, bottleneck, rng));
            inplanes = bottleneck ? planes * 4 : planes;
        }
        char name[8] = "layer1";
        name[5] = (char)('1' + s);
        ct_seq_add(m, name, stage);
    }
    ct_seq_add(m, "avgpool", ct_nn_global_avgpool2d());
    ct_seq_add(m, "flatten", ct_nn_flatten());
    ct_seq_add(m, "fc", ct_nn_linear(inplanes, c->num_classes, true, rng)); /* Linear's default init */
    *out = m;
    return CT_OK;
}
