/* Transformer layers with torch.nn's names and layouts: LayerNorm, MultiheadAttention
 * (batch_first self-attention, packed in_proj_weight [3E, E], out_proj child) and
 * torchvision's ViT EncoderBlock (ln_1, self_attention, dropout, ln_2, mlp). */
#include <math.h>
#include <string.h>

#include "nn.h"

#define AS(type, m) ((type *)(m))

/* xavier_uniform_: U(-b, b), b = sqrt(6 / (fan_in + fan_out)), fan_in = shape[1],
 * fan_out = shape[0] of a 2-d weight. */
static void xavier_uniform(ct_tensor *w, ct_rng *rng) {
    float b = sqrtf(6.0f / (float)(w->shape[0] + w->shape[1]));
    for (int64_t i = 0; i < w->numel; i++) w->data[i] = -b + 2 * b * ct_rng_uniform(rng);
}

static void fill(ct_tensor *t, float v) {
    for (int64_t i = 0; i < t->numel; i++) t->data[i] = v;
}

/* ---- LayerNorm ------------------------------------------------------------------------ */

typedef struct {
    ct_module base;
    int64_t dim;
    float eps;
} layernorm_module;

static ct_tensor *layernorm_forward(ct_module *m, ct_tensor *x) {
    const layernorm_module *ln = AS(layernorm_module, m);
    CT_ASSERT(x->ndim >= 1 && x->shape[x->ndim - 1] == ln->dim, "LayerNorm(%lld): input %s",
              (long long)ln->dim, CT_SHAPE_STR(x));
    return ct_layer_norm(x, 1, m->params[0], m->params[1], ln->eps);
}

static const ct_module_ops layernorm_ops = {.type = "LayerNorm", .forward = layernorm_forward};

ct_module *ct_nn_layernorm(int64_t dim, float eps) {
    ct_module *m = ct_module_new(sizeof(layernorm_module), &layernorm_ops);
    AS(layernorm_module, m)->dim = dim;
    AS(layernorm_module, m)->eps = eps;
    ct_module_add_param(m, "weight", ct_own(ct_ones(CT_SHAPE(dim))));
    ct_module_add_param(m, "bias", ct_own(ct_zeros(CT_SHAPE(dim))));
    return m;
}

/* ---- MultiheadAttention ------------------------------------------------------------------ */

typedef struct {
    ct_module base;
    int64_t embed;
    int heads;
    float dropout;
    ct_rng rng; /* the attention dropout's stream, saved in checkpoints as "rng.<path>" */
} mha_module;

static ct_tensor *mha_forward(ct_module *m, ct_tensor *x) {
    mha_module *a = AS(mha_module, m);
    CT_ASSERT(x->ndim == 3 && x->shape[2] == a->embed,
              "MultiheadAttention(%lld, heads %d): expected input [N, L, %lld] (batch_first), got %s",
              (long long)a->embed, a->heads, (long long)a->embed, CT_SHAPE_STR(x));
    ct_module *out = m->children[0];
    return ct_multi_head_attention(x, m->params[0], m->params[1], out->params[0], out->params[1], a->heads,
                                   a->dropout, m->training, &a->rng);
}

static bool mha_per_sample(const ct_module *m) { return !m->training || AS(const mha_module, m)->dropout == 0; }

static void mha_reseed(ct_module *m, uint64_t seed) { ct_rng_seed(&AS(mha_module, m)->rng, seed); }

static int mha_extra(ct_module *m, ct_module_extra *out) {
    ct_rng *r = &AS(mha_module, m)->rng;
    out[0] = (ct_module_extra){.name = "rng", .in_state_dict = false, .dtype = CT_DTYPE_U64, .ndim = 1,
                               .numel = (int64_t)(sizeof r->s / sizeof r->s[0]), .data = r->s};
    return 1;
}

static const ct_module_ops mha_ops = {.type = "MultiheadAttention", .forward = mha_forward,
                                      .extra_state = mha_extra, .reseed = mha_reseed,
                                      .per_sample = mha_per_sample};

ct_module *ct_nn_multihead_attention(int64_t embed, int heads, float dropout, ct_rng *rng) {
    CT_ASSERT(heads >= 1 && embed % heads == 0, "MultiheadAttention: %d heads do not divide embed_dim %lld",
              heads, (long long)embed);
    CT_ASSERT(dropout >= 0 && dropout < 1, "MultiheadAttention: dropout %g outside [0, 1)", dropout);
    ct_module *m = ct_module_new(sizeof(mha_module), &mha_ops);
    mha_module *a = AS(mha_module, m);
    a->embed = embed, a->heads = heads, a->dropout = dropout;
    /* torch's _reset_parameters: xavier in_proj, zero biases; out_proj keeps Linear's
     * default weight init */
    ct_tensor *w = ct_module_add_param(m, "in_proj_weight", ct_own(ct_tensor_new(CT_SHAPE(3 * embed, embed))));
    xavier_uniform(w, rng);
    ct_module_add_param(m, "in_proj_bias", ct_own(ct_zeros(CT_SHAPE(3 * embed))));
    ct_module *out = ct_module_add_child(m, "out_proj", ct_nn_linear(embed, embed, true, rng));
    fill(out->params[1], 0);
    mha_reseed(m, ct_rng_next(rng));
    return m;
}

/* ---- torchvision's MLPBlock and EncoderBlock ------------------------------------------------- */

/* Linear with xavier_uniform_ weight and N(0, 1e-6) bias (MLPBlock's init). */
static ct_module *mlp_linear(int64_t in, int64_t out, ct_rng *rng) {
    ct_module *l = ct_nn_linear(in, out, true, rng);
    xavier_uniform(l->params[0], rng);
    ct_tensor *b = l->params[1];
    for (int64_t i = 0; i < b->numel; i++) b->data[i] = 1e-6f * ct_rng_normal(rng);
    return l;
}

typedef struct {
    ct_module base;
    ct_module *ln_1, *self_attention, *dropout, *ln_2, *mlp; /* the children, borrowed */
} encoder_block;

/* x = input + dropout(self_attention(ln_1(input))); return x + mlp(ln_2(x)) */
static ct_tensor *encoder_block_run(encoder_block *b, ct_tensor *input) {
    ct_tensor *x = ct_module_forward(b->ln_1, input);
    x = ct_module_forward(b->dropout, ct_module_forward(b->self_attention, x));
    x = ct_add(x, input);
    ct_tensor *y = ct_module_forward(b->mlp, ct_module_forward(b->ln_2, x));
    return ct_add(x, y);
}

/* Tokens per chunk of an inference forward: a chunk's intermediates (qkv, the attention
 * weights, the MLP's hidden layer) then stay in L2 instead of streaming the whole batch's
 * through memory between ops, which made vit_tiny's eval ~1.5x slower at batch 256 than at
 * 16. A fixed size, so the result does not depend on the thread count. */
#define BLOCK_CHUNK_TOKENS 512

static ct_tensor *encoder_block_forward(ct_module *m, ct_tensor *input) {
    encoder_block *b = AS(encoder_block, m);
    CT_ASSERT(input->ndim == 3, "EncoderBlock: expected (batch_size, seq_length, hidden_dim), got %s",
              CT_SHAPE_STR(input));
    int64_t N = input->shape[0], L = input->shape[1], E = input->shape[2];
    int64_t chunk = L >= BLOCK_CHUNK_TOKENS ? 1 : BLOCK_CHUNK_TOKENS / L;
    /* Only in eval mode without autograd: samples are then independent (no active dropout,
     * no graph to keep), so the batch can go through in chunks of samples. */
    if (m->training || ct_is_grad_enabled() || N <= chunk) return encoder_block_run(b, input);
    ct_tensor *out = ct_empty_like(input);
    for (int64_t n0 = 0; n0 < N; n0 += chunk) {
        int64_t len = N - n0 < chunk ? N - n0 : chunk;
        size_t off = (size_t)(n0 * L * E);
        CT_SCOPE {
            ct_tensor *y = encoder_block_run(b, ct_tensor_wrap(CT_SHAPE(len, L, E), input->data + off));
            memcpy(out->data + off, y->data, (size_t)y->numel * sizeof(float));
        }
    }
    return out;
}

static const ct_module_ops encoder_block_ops = {.type = "EncoderBlock", .forward = encoder_block_forward};

ct_module *ct_nn_vit_encoder_block(int64_t hidden, int heads, int64_t mlp_dim, float dropout,
                                   float attention_dropout, ct_rng *rng) {
    ct_module *m = ct_module_new(sizeof(encoder_block), &encoder_block_ops);
    encoder_block *b = AS(encoder_block, m);
    b->ln_1 = ct_module_add_child(m, "ln_1", ct_nn_layernorm(hidden, 1e-6f));
    b->self_attention = ct_module_add_child(m, "self_attention",
                                            ct_nn_multihead_attention(hidden, heads, attention_dropout, rng));
    b->dropout = ct_module_add_child(m, "dropout", ct_nn_dropout(dropout, ct_rng_next(rng)));
    b->ln_2 = ct_module_add_child(m, "ln_2", ct_nn_layernorm(hidden, 1e-6f));
    /* MLPBlock is torchvision's MLP, a Sequential: 0 Linear, 1 GELU, 2 Dropout, 3 Linear, 4 Dropout */
    ct_module *mlp = ct_nn_sequential();
    ct_seq_add(mlp, NULL, mlp_linear(hidden, mlp_dim, rng));
    ct_seq_add(mlp, NULL, ct_nn_gelu());
    ct_seq_add(mlp, NULL, ct_nn_dropout(dropout, ct_rng_next(rng)));
    ct_seq_add(mlp, NULL, mlp_linear(mlp_dim, hidden, rng));
    ct_seq_add(mlp, NULL, ct_nn_dropout(dropout, ct_rng_next(rng)));
    b->mlp = ct_module_add_child(m, "mlp", mlp);
    return m;
}
