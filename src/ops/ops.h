/* ctrain ops: each returns a new tensor in the innermost release scope and, when grad mode
 * is on and an input requires grad, records one graph node whose backward computes only
 * the input gradients that are needed. Misuse aborts through the core abort hook with a
 * message naming the op and the shapes. One file per family; forward and backward sit
 * side by side. */
#ifndef CT_OPS_H
#define CT_OPS_H

#include "../autograd/autograd.h"

/* ---- elementwise.c: broadcasting binary ops, scalar forms, unary math --------------- */
/* Binary ops broadcast numpy/PyTorch-style (trailing dims aligned, size-1 dims stretch). */
ct_tensor *ct_add(ct_tensor *a, ct_tensor *b);
ct_tensor *ct_sub(ct_tensor *a, ct_tensor *b);
ct_tensor *ct_mul(ct_tensor *a, ct_tensor *b);
ct_tensor *ct_div(ct_tensor *a, ct_tensor *b);
ct_tensor *ct_add_scalar(ct_tensor *a, float s);
ct_tensor *ct_sub_scalar(ct_tensor *a, float s);
ct_tensor *ct_mul_scalar(ct_tensor *a, float s);
ct_tensor *ct_div_scalar(ct_tensor *a, float s);
ct_tensor *ct_neg(ct_tensor *a);
ct_tensor *ct_exp(ct_tensor *a);
ct_tensor *ct_log(ct_tensor *a);
/* x broadcast to shape (torch's expand, materialised); its backward sums over the
 * broadcast dims. */
ct_tensor *ct_expand(ct_tensor *x, int ndim, const int64_t *shape);

/* ---- matmul.c ------------------------------------------------------------------------ */
/* a [M, K] @ b [K, N] -> [M, N]. */
ct_tensor *ct_matmul(ct_tensor *a, ct_tensor *b);
/* Batched: a [B, M, K] @ b [B, K, N] -> [B, M, N] (torch.bmm). */
ct_tensor *ct_bmm(ct_tensor *a, ct_tensor *b);
/* x [..., in] @ w[out, in]^T + b[out] -> [..., out]; b may be NULL. */
ct_tensor *ct_linear(ct_tensor *x, ct_tensor *w, ct_tensor *b);

/* ---- reduce.c ------------------------------------------------------------------------ */
ct_tensor *ct_sum(ct_tensor *x);  /* all elements -> 0-d tensor */
ct_tensor *ct_mean(ct_tensor *x); /* all elements -> 0-d tensor */
ct_tensor *ct_sum_dim(ct_tensor *x, int dim, bool keepdim);
ct_tensor *ct_mean_dim(ct_tensor *x, int dim, bool keepdim);
/* Row-wise argmax of a [N, C] tensor into out[N] (no autograd; for accuracy). */
void ct_argmax_rows(const ct_tensor *x, int64_t *out);

/* ---- shape.c: views and layout ------------------------------------------------------- */
/* Views of x's storage. One entry of shape may be -1 (inferred). */
ct_tensor *ct_reshape(ct_tensor *x, int ndim, const int64_t *shape);
/* Collapses dims start_dim..end into one (nn.Flatten uses start_dim = 1). */
ct_tensor *ct_flatten(ct_tensor *x, int start_dim);
/* Swaps the last two dims: [..., R, C] -> [..., C, R] (a copy: tensors are always
 * contiguous). The 2-d transpose, and torch's x.transpose(-2, -1) for batches. */
ct_tensor *ct_transpose(ct_tensor *x);

/* Concatenates n (1..4) tensors along dim (torch.cat); all other dims must match. */
ct_tensor *ct_cat(int n, ct_tensor *const *xs, int dim);
/* The slice [start, start + length) of dim (a copy; x.narrow(dim, start, length)). */
ct_tensor *ct_narrow(ct_tensor *x, int dim, int64_t start, int64_t length);
/* x.select(dim, index): the slice at index with dim removed (x[:, 0] is select(x, 1, 0)). */
ct_tensor *ct_select(ct_tensor *x, int dim, int64_t index);

/* ---- activation.c -------------------------------------------------------------------- */
ct_tensor *ct_relu(ct_tensor *x);
ct_tensor *ct_leaky_relu(ct_tensor *x, float negative_slope);
ct_tensor *ct_gelu(ct_tensor *x); /* exact erf form, PyTorch's default */
ct_tensor *ct_tanh(ct_tensor *x);
ct_tensor *ct_sigmoid(ct_tensor *x);

/* ---- softmax.c ----------------------------------------------------------------------- */
ct_tensor *ct_softmax(ct_tensor *x, int dim);
ct_tensor *ct_log_softmax(ct_tensor *x, int dim);

/* ---- loss.c -------------------------------------------------------------------------- */
typedef enum { CT_REDUCE_MEAN, CT_REDUCE_SUM } ct_reduction;
/* logits [N, C], target[N] class indices in [0, C): fused log_softmax + NLL -> 0-d. */
ct_tensor *ct_cross_entropy(ct_tensor *logits, const int64_t *target, ct_reduction red);
/* The same against (1 - smoothing) * onehot + smoothing / C: PyTorch's
 * CrossEntropyLoss(label_smoothing = smoothing), smoothing in [0, 1]. */
ct_tensor *ct_cross_entropy_smooth(ct_tensor *logits, const int64_t *target, float smoothing,
                                   ct_reduction red);
/* Mean (or sum) of (a - b)^2 over all elements; shapes must match. -> 0-d. */
ct_tensor *ct_mse_loss(ct_tensor *a, ct_tensor *b, ct_reduction red);

/* ---- conv.c -------------------------------------------------------------------------- */
/* x [N, C, H, W], w [O, C, kh, kw], b [O] or NULL -> [N, O, OH, OW] (im2col + sgemm),
 * OH = (H + 2*padding - kh) / stride + 1 and likewise OW. */
ct_tensor *ct_conv2d(ct_tensor *x, ct_tensor *w, ct_tensor *b, int stride, int padding);
/* PyTorch's Conv2d arguments beyond the square ones (no dilation). A field left 0 means
 * stride 1, padding 0, groups 1, so (ct_conv2d_opts){.groups = C} is a depthwise conv. */
typedef struct ct_conv2d_post ct_conv2d_post;
typedef struct {
    int stride_h, stride_w;
    int pad_h, pad_w; /* zeros on each side */
    int groups;       /* divides C and O; w is then [O, C/groups, kh, kw] */
    const ct_conv2d_post *post; /* NULL, or an epilogue (below) */
} ct_conv2d_opts;
/* An epilogue for inference: each output value v (bias included) becomes
 *   relu?( v * scale[o] + shift[o] + residual )
 * computed in that order, so it is bit for bit what batch_norm in eval mode, then add, then
 * relu would give; it runs on each chunk of outputs while they are in cache, instead of
 * three passes over memory. NULL pointers: scale 1, shift 0, no residual (the output's
 * shape). No graph is recorded through it, so conv2d refuses it when a gradient would be
 * needed (grad mode on and x, w, b or the residual requiring grad). */
struct ct_conv2d_post {
    const float *scale, *shift; /* [O] each */
    const ct_tensor *residual;  /* [N, O, OH, OW] */
    bool relu;
};
/* ct_conv2d with separate row/column stride and padding and groups; opts NULL: defaults. */
ct_tensor *ct_conv2d_ex(ct_tensor *x, ct_tensor *w, ct_tensor *b, const ct_conv2d_opts *opts);
/* The algorithm a convolution runs. AUTO (the default): on small planes where every input
 * pixel reaches every output pixel (2x2 and 1x1 planes of 3x3 / padding 1), one GEMM over
 * the batch with the padding left out (DENSE); else for 3x3 / stride 1 / padding 1 with 16
 * or more channels in and out, Winograd for the forward and dX (F(4x4, 3x3) on planes that
 * divide into 4x4 tiles, 4x fewer multiplications, else F(2x2, 3x3), 2.25x); else im2col
 * + sgemm. IM2COL, WINOGRAD, DENSE: that one where it
 * applies, im2col elsewhere (for tests and comparisons). Results differ between them by
 * float rounding. Returns the old setting. */
typedef enum { CT_CONV_AUTO, CT_CONV_IM2COL, CT_CONV_WINOGRAD, CT_CONV_DENSE } ct_conv_algo;
ct_conv_algo ct_conv2d_set_algo(ct_conv_algo algo);
/* im2col convolutions can group their output pixels by the kernel taps that land inside
 * the input and never multiply the zero padding (pixel classes). AUTO (the default): where
 * that cuts 40% or more of the multiply-adds (3x3/padding-1 on 2x2 planes), where it
 * measured faster; elsewhere only the taps that are padding for every pixel are skipped.
 * NEVER / ALWAYS: for tests and comparisons. Returns the old mode. */
typedef enum { CT_PAD_SKIP_NEVER, CT_PAD_SKIP_AUTO, CT_PAD_SKIP_ALWAYS } ct_pad_skip;
ct_pad_skip ct_conv2d_set_pad_skip(ct_pad_skip mode);

/* ---- pool.c -------------------------------------------------------------------------- */
/* x [N, C, H, W]; stride 0 means stride = kernel. Padding for max pool is -inf. */
ct_tensor *ct_max_pool2d(ct_tensor *x, int kernel, int stride, int padding);
/* avg pool counts padded zeros in the divisor (PyTorch's count_include_pad=True). */
ct_tensor *ct_avg_pool2d(ct_tensor *x, int kernel, int stride, int padding);
/* x [N, C, H, W] -> [N, C, out_h, out_w], each output the mean of its window: rows
 * [floor(i*H/out_h), ceil((i+1)*H/out_h)), columns likewise (PyTorch's; 1x1 is the global
 * average pool). */
ct_tensor *ct_adaptive_avg_pool2d(ct_tensor *x, int out_h, int out_w);

/* ---- norm.c -------------------------------------------------------------------------- */
/* x [N, C] or [N, C, H, W]; weight/bias [C] or NULL. Training: normalise with the batch
 * statistics (biased variance) and, when running_mean/var are given, update them in place
 * as PyTorch does: r = (1 - momentum) * r + momentum * batch_stat, with the unbiased
 * variance. Inference (training=false): normalise with running_mean/var. */
ct_tensor *ct_batch_norm(ct_tensor *x, ct_tensor *weight, ct_tensor *bias,
                         ct_tensor *running_mean, ct_tensor *running_var, bool training,
                         float momentum, float eps);
/* relu(ct_batch_norm(...)) in one op: one pass over the tensor forward and none for the
 * ReLU backward (its mask is folded into batch norm's sums and dx). The same values, bit
 * for bit, as the two ops; it saves its output (for the mask) instead of the ReLU doing so. */
ct_tensor *ct_batch_norm_relu(ct_tensor *x, ct_tensor *weight, ct_tensor *bias,
                              ct_tensor *running_mean, ct_tensor *running_var, bool training,
                              float momentum, float eps);
/* Inference batch norm as y = a[c] * x + b[c]: a = weight / sqrt(running_var + eps),
 * b = bias - running_mean * a (C floats each; weight/bias NULL: 1/0). The coefficients
 * ct_batch_norm uses in eval mode, for folding it into a convolution's epilogue. */
void ct_batch_norm_eval_coeffs(const ct_tensor *weight, const ct_tensor *bias,
                               const ct_tensor *running_mean, const ct_tensor *running_var,
                               float eps, float *a, float *b);
/* Normalises over the last `nlast` dims; weight/bias have that trailing shape or NULL. */
ct_tensor *ct_layer_norm(ct_tensor *x, int nlast, ct_tensor *weight, ct_tensor *bias, float eps);

/* ---- dropout.c ----------------------------------------------------------------------- */
/* Training: zero each element with probability p and scale the rest by 1/(1-p), drawing
 * from rng. Otherwise (or p == 0) the identity: x itself, retained in the scope. */
ct_tensor *ct_dropout(ct_tensor *x, float p, bool training, ct_rng *rng);

/* ---- attention.c ---------------------------------------------------------------------- */
/* Multi-head scaled dot-product attention on packed projections qkv [N, L, 3E] (q, k, v
 * side by side in each row, as x @ in_proj_weight^T gives them): per head h (dh = E/heads)
 * softmax(Q_h K_h^T / sqrt(dh)) V_h, with dropout p on the attention weights in training
 * (from rng) -> [N, L, E], heads concatenated. Saves qkv, the softmax output and the
 * dropout bits for backward, never the scores. */
ct_tensor *ct_attention(ct_tensor *qkv, int heads, float p, bool training, ct_rng *rng);
/* torch.nn.MultiheadAttention(batch_first=True) self-attention, x [N, L, E]:
 * out_proj(attention(in_proj(x))) with in_w [3E, E], in_b [3E], out_w [E, E], out_b [E]
 * (biases may be NULL). */
ct_tensor *ct_multi_head_attention(ct_tensor *x, ct_tensor *in_w, ct_tensor *in_b, ct_tensor *out_w,
                                   ct_tensor *out_b, int heads, float p, bool training, ct_rng *rng);

/* ---- embedding.c --------------------------------------------------------------------- */
/* weight [V, D]; idx has `ndim` dims of `shape` (n = prod(shape) indices) -> [shape..., D]. */
ct_tensor *ct_embedding(ct_tensor *weight, const int64_t *idx, int ndim, const int64_t *shape);

#endif
