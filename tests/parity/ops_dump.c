/* PyTorch parity of single ops, the ctrain half: runs each case below forward and backward
 * with a fixed upstream gradient and writes everything to one safetensors file, which
 * tests/parity/test_ops_parity.py recomputes with torch.nn.functional and compares.
 *
 * usage: ops_dump OUT.safetensors
 *
 * Per case <name>: entries <name>.x, .w, .w2, .b, .b2 (the inputs the op takes), .gout, .y and
 * .grad.<input> for every input; the metadata entry "case.<name>" says which op with which
 * arguments ("op=conv2d stride=2,2 padding=3,3 groups=1"), so the cases live here only. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dump_util.h"

typedef enum {
    CONV, MAXPOOL, AVGPOOL, ADAPTIVE, RESIDUAL, RESIDUAL_DOWN,
    /* the ViT's ops, on inputs of any shape (op_case.shapes) */
    BMM, TRANSPOSE, ATTENTION, MHA, CAT, SELECT, NARROW, CLS_TOKEN, POS_EMBED, LAYER_NORM, GELU
} op_kind;

typedef struct {
    const char *name;
    op_kind op;
    int64_t n, c, h, w;
    /* conv: weight [o, c/groups, kh, kw]; residual: w [o, c, kh, kw] with o = c */
    int64_t o, kh, kw;
    int sh, sw, ph, pw, groups;
    bool bias;
    /* max/avg pool: kernel k, stride s, padding p; adaptive: output oh x ow */
    int k, s, p, oh, ow;
    /* the ViT's ops: shapes of x, w, w2, b, b2 (ndim 0: absent); heads; dim/start/len */
    struct {
        int nd;
        int64_t d[4];
    } shapes[5];
    int heads, dim, start, len;
} op_case;

/* Every field named, so each kind of case lists only what it uses. */
#define CONV_CASE(nm, N, C, H, W, O, KH, KW, SH, SW, PH, PW, G, BIAS)                          \
    {.name = nm, .op = CONV, .n = N, .c = C, .h = H, .w = W, .o = O, .kh = KH, .kw = KW,      \
     .sh = SH, .sw = SW, .ph = PH, .pw = PW, .groups = G, .bias = BIAS}
#define POOL_CASE(nm, OP, N, C, H, W, K, S, P)                                                 \
    {.name = nm, .op = OP, .n = N, .c = C, .h = H, .w = W, .k = K, .s = S, .p = P}
#define ADAPTIVE_CASE(nm, N, C, H, W, OH, OW)                                                  \
    {.name = nm, .op = ADAPTIVE, .n = N, .c = C, .h = H, .w = W, .oh = OH, .ow = OW}
#define RESIDUAL_CASE(nm, OP, N, C, H, W, O)                                                   \
    {.name = nm, .op = OP, .n = N, .c = C, .h = H, .w = W, .o = O, .kh = 3, .kw = 3}

#define SH(...) {CT_NARGS_(__VA_ARGS__), {__VA_ARGS__}}
#define NO {0, {0}}
/* x, w, w2, b, b2 as in MHA: x, in_proj_weight, out_proj.weight, in_proj_bias, out_proj.bias */
#define SEQ_CASE(nm, OP, X, W, W2, B, B2, ...)                                                  \
    {.name = nm, .op = OP, .shapes = {X, W, W2, B, B2}, __VA_ARGS__}

static const op_case cases[] = {
    /* convolution: the CNN's 3x3, ResNet's stem, downsample and stages, groups */
    CONV_CASE("conv3x3", 2, 3, 10, 9, 8, 3, 3, 1, 1, 1, 1, 1, true),
    CONV_CASE("conv_stem7x7s2", 2, 3, 32, 29, 8, 7, 7, 2, 2, 3, 3, 1, false),
    CONV_CASE("conv_down1x1s2", 2, 8, 15, 16, 12, 1, 1, 2, 2, 0, 0, 1, false),
    CONV_CASE("conv3x3s2", 2, 8, 14, 14, 16, 3, 3, 2, 2, 1, 1, 1, false),
    CONV_CASE("conv_pointwise", 2, 16, 7, 6, 8, 1, 1, 1, 1, 0, 0, 1, true),
    CONV_CASE("conv_rect", 1, 4, 9, 11, 5, 3, 5, 2, 1, 1, 2, 1, true),
    CONV_CASE("conv_groups4", 2, 8, 9, 8, 12, 3, 3, 1, 1, 1, 1, 4, true),
    CONV_CASE("conv_depthwise_s2", 2, 6, 11, 10, 6, 3, 3, 2, 2, 1, 1, 6, false),
    CONV_CASE("conv_depthwise_x2", 1, 4, 8, 8, 8, 5, 5, 1, 1, 2, 2, 4, true),
    /* samples per GEMM: chunks of 2 + 2 + 1 (100 pixels), and of one (>= 256 pixels) */
    CONV_CASE("conv_chunks_2_2_1", 5, 4, 10, 10, 6, 3, 3, 1, 1, 1, 1, 1, true),
    CONV_CASE("conv_one_per_chunk", 2, 3, 20, 18, 5, 3, 3, 1, 1, 1, 1, 1, true),
    CONV_CASE("conv_pointwise_one", 2, 8, 16, 17, 6, 1, 1, 1, 1, 0, 0, 2, false),
    /* dead taps: ResNet's layer4 on 32x32 inputs (1x1 image, and the 2x2 stride-2 conv) */
    CONV_CASE("conv_1x1_image", 4, 16, 1, 1, 8, 3, 3, 1, 1, 1, 1, 1, true),
    CONV_CASE("conv_2x2_image_s2", 4, 8, 2, 2, 16, 3, 3, 2, 2, 1, 1, 1, false),
    CONV_CASE("conv_1x3_image_groups", 3, 4, 1, 3, 6, 3, 3, 1, 1, 1, 1, 2, true),
    /* pixel classes by live taps, the padding skipped: 2x2 planes (ResNet's layer3 on 32x32
     * inputs, and the stride-2 conv into it, with groups), and a 5x3 kernel padded 2x1 */
    CONV_CASE("conv_2x2_image", 4, 16, 2, 2, 8, 3, 3, 1, 1, 1, 1, 1, true),
    CONV_CASE("conv_4x4_s2_groups", 3, 8, 4, 4, 12, 3, 3, 2, 2, 1, 1, 2, false),
    CONV_CASE("conv_2x1_image_5x3", 2, 4, 2, 1, 6, 5, 3, 1, 1, 2, 1, 1, true),
    /* pooling: ResNet's stem max pool on even and odd sizes, the CNN's 2x2, others */
    POOL_CASE("maxpool3s2p1", MAXPOOL, 2, 4, 16, 16, 3, 2, 1),
    POOL_CASE("maxpool3s2p1_odd", MAXPOOL, 2, 3, 15, 13, 3, 2, 1),
    POOL_CASE("maxpool2x2", MAXPOOL, 2, 3, 13, 35, 2, 2, 0),
    POOL_CASE("maxpool5s3p2", MAXPOOL, 1, 2, 12, 10, 5, 3, 2),
    POOL_CASE("maxpool3s1p1", MAXPOOL, 1, 2, 6, 7, 3, 1, 1),
    POOL_CASE("avgpool3s2p1", AVGPOOL, 2, 3, 9, 8, 3, 2, 1),
    /* adaptive average pool: ResNet's global pool and PyTorch's overlapping windows */
    ADAPTIVE_CASE("adaptive1x1", 2, 8, 7, 7, 1, 1),
    ADAPTIVE_CASE("adaptive1x1_rect", 2, 4, 5, 3, 1, 1),
    ADAPTIVE_CASE("adaptive3x2", 2, 3, 7, 5, 3, 2),
    ADAPTIVE_CASE("adaptive4x5_up", 1, 2, 3, 3, 4, 5),
    /* residual: y = x + conv3x3(x, w); down: y = conv1x1/2(x, w2) + conv3x3/2(x, w) */
    RESIDUAL_CASE("residual", RESIDUAL, 2, 4, 6, 5, 4),
    RESIDUAL_CASE("residual_down", RESIDUAL_DOWN, 2, 4, 7, 6, 6),
    /* the ViT: bmm, attention on packed q|k|v (1, 2, 4 heads), nn.MultiheadAttention, the
     * class token (expand + cat), x[:, 0], the positional embedding (broadcast add),
     * LayerNorm(eps 1e-6) over E, exact GELU, the patch transpose */
    SEQ_CASE("bmm", BMM, SH(3, 4, 5), SH(3, 5, 6), NO, NO, NO, .heads = 0),
    SEQ_CASE("transpose_batched", TRANSPOSE, SH(2, 8, 5), NO, NO, NO, NO, .heads = 0),
    SEQ_CASE("attention_1head", ATTENTION, SH(2, 5, 12), NO, NO, NO, NO, .heads = 1),
    SEQ_CASE("attention_2heads", ATTENTION, SH(2, 7, 24), NO, NO, NO, NO, .heads = 2),
    SEQ_CASE("attention_4heads", ATTENTION, SH(3, 17, 48), NO, NO, NO, NO, .heads = 4),
    SEQ_CASE("mha_2heads", MHA, SH(2, 5, 8), SH(24, 8), SH(8, 8), SH(24), SH(8), .heads = 2),
    SEQ_CASE("mha_3heads", MHA, SH(3, 10, 12), SH(36, 12), SH(12, 12), SH(36), SH(12), .heads = 3),
    SEQ_CASE("cat_dim1", CAT, SH(2, 1, 6), SH(2, 4, 6), NO, NO, NO, .dim = 1),
    SEQ_CASE("cat_dim2", CAT, SH(2, 3, 2), SH(2, 3, 5), NO, NO, NO, .dim = 2),
    SEQ_CASE("select_class_token", SELECT, SH(3, 5, 6), NO, NO, NO, NO, .dim = 1, .start = 0),
    SEQ_CASE("narrow", NARROW, SH(3, 5, 6), NO, NO, NO, NO, .dim = 2, .start = 1, .len = 3),
    SEQ_CASE("class_token", CLS_TOKEN, SH(3, 4, 6), SH(1, 1, 6), NO, NO, NO, .heads = 0),
    SEQ_CASE("pos_embedding", POS_EMBED, SH(3, 5, 6), SH(1, 5, 6), NO, NO, NO, .heads = 0),
    SEQ_CASE("layer_norm_eps1e-6", LAYER_NORM, SH(3, 5, 16), SH(16), NO, SH(16), NO, .heads = 0),
    SEQ_CASE("gelu", GELU, SH(4, 5, 16), NO, NO, NO, NO, .heads = 0),
};
#define NCASES (int)(sizeof cases / sizeof *cases)

/* ---- the dump ---------------------------------------------------------------------------- */

static void put(dump *d, const char *cname, const char *what, const ct_tensor *t) {
    char name[256];
    snprintf(name, sizeof name, "%s.%s", cname, what);
    dump_tensor(d, name, t);
}

static void describe(dump *d, const op_case *k) {
    char key[256], val[256];
    snprintf(key, sizeof key, "case.%s", k->name);
    switch (k->op) {
    case CONV:
        snprintf(val, sizeof val, "op=conv2d stride=%d,%d padding=%d,%d groups=%d", k->sh, k->sw,
                 k->ph, k->pw, k->groups);
        break;
    case MAXPOOL:
    case AVGPOOL:
        snprintf(val, sizeof val, "op=%s kernel_size=%d stride=%d padding=%d",
                 k->op == MAXPOOL ? "max_pool2d" : "avg_pool2d", k->k, k->s, k->p);
        break;
    case ADAPTIVE:
        snprintf(val, sizeof val, "op=adaptive_avg_pool2d output_size=%d,%d", k->oh, k->ow);
        break;
    case RESIDUAL: snprintf(val, sizeof val, "op=residual"); break;
    case RESIDUAL_DOWN: snprintf(val, sizeof val, "op=residual_down"); break;
    case BMM: snprintf(val, sizeof val, "op=bmm"); break;
    case TRANSPOSE: snprintf(val, sizeof val, "op=transpose"); break;
    case ATTENTION: snprintf(val, sizeof val, "op=attention heads=%d", k->heads); break;
    case MHA: snprintf(val, sizeof val, "op=mha heads=%d", k->heads); break;
    case CAT: snprintf(val, sizeof val, "op=cat dim=%d", k->dim); break;
    case SELECT: snprintf(val, sizeof val, "op=select dim=%d index=%d", k->dim, k->start); break;
    case NARROW:
        snprintf(val, sizeof val, "op=narrow dim=%d start=%d length=%d", k->dim, k->start, k->len);
        break;
    case CLS_TOKEN: snprintf(val, sizeof val, "op=class_token"); break;
    case POS_EMBED: snprintf(val, sizeof val, "op=pos_embedding"); break;
    case LAYER_NORM: snprintf(val, sizeof val, "op=layer_norm"); break; /* eps 1e-6 */
    case GELU: snprintf(val, sizeof val, "op=gelu"); break;
    }
    dump_meta(d, key, val);
}

/* ---- one case ----------------------------------------------------------------------------- */

static ct_tensor *input(int ndim, const int64_t *shape, ct_rng *r) {
    ct_tensor *t = ct_rand_uniform(ndim, shape, -1, 1, r);
    ct_set_requires_grad(t, true);
    return t;
}

/* The ViT's ops: inputs x, w, w2, b, b2 of the case's shapes, the output of one call. */
static ct_tensor *run_seq(const op_case *k, ct_tensor **in) {
    ct_tensor *x = in[0], *w = in[1], *w2 = in[2], *b = in[3], *b2 = in[4];
    switch (k->op) {
    case BMM: return ct_bmm(x, w);
    case TRANSPOSE: return ct_transpose(x);
    case ATTENTION: return ct_attention(x, k->heads, 0, true, NULL);
    case MHA: return ct_multi_head_attention(x, w, b, w2, b2, k->heads, 0, true, NULL);
    case CAT: return ct_cat(2, (ct_tensor *[]){x, w}, k->dim);
    case SELECT: return ct_select(x, k->dim, k->start);
    case NARROW: return ct_narrow(x, k->dim, k->start, k->len);
    case CLS_TOKEN: /* torch.cat([class_token.expand(n, -1, -1), x], dim=1) */
        return ct_cat(2, (ct_tensor *[]){ct_expand(w, CT_SHAPE(x->shape[0], 1, w->shape[2])), x}, 1);
    case POS_EMBED: return ct_add(x, w);
    case LAYER_NORM: return ct_layer_norm(x, 1, w, b, 1e-6f);
    case GELU: return ct_gelu(x);
    default: CT_ASSERT(false, "ops_dump: %s is not a sequence case", k->name);
    }
    return NULL;
}

static void run_case(dump *d, const op_case *k, uint64_t seed) {
    ct_rng r;
    ct_rng_seed(&r, seed);
    CT_SCOPE {
        ct_tensor *ins[5] = {NULL}, *y = NULL;
        if (k->op >= BMM) {
            for (int i = 0; i < 5; i++)
                if (k->shapes[i].nd) ins[i] = input(k->shapes[i].nd, k->shapes[i].d, &r);
            y = run_seq(k, ins);
        } else {
            ct_tensor *x = input(CT_SHAPE(k->n, k->c, k->h, k->w), &r), *w = NULL, *w2 = NULL, *b = NULL;
            if (k->op == CONV || k->op == RESIDUAL || k->op == RESIDUAL_DOWN)
                w = input(CT_SHAPE(k->o, k->c / (k->groups ? k->groups : 1), k->kh, k->kw), &r);
            if (k->op == RESIDUAL_DOWN) w2 = input(CT_SHAPE(k->o, k->c, 1, 1), &r);
            if (k->bias) b = input(CT_SHAPE(k->o), &r);
            ins[0] = x, ins[1] = w, ins[2] = w2, ins[3] = b;
            switch (k->op) {
            case CONV: {
                ct_conv2d_opts o = {.stride_h = k->sh, .stride_w = k->sw, .pad_h = k->ph,
                                    .pad_w = k->pw, .groups = k->groups};
                y = ct_conv2d_ex(x, w, b, &o);
                break;
            }
            case MAXPOOL: y = ct_max_pool2d(x, k->k, k->s, k->p); break;
            case AVGPOOL: y = ct_avg_pool2d(x, k->k, k->s, k->p); break;
            case ADAPTIVE: y = ct_adaptive_avg_pool2d(x, k->oh, k->ow); break;
            case RESIDUAL: y = ct_add(x, ct_conv2d(x, w, NULL, 1, 1)); break;
            case RESIDUAL_DOWN: y = ct_add(ct_conv2d(x, w2, NULL, 2, 0), ct_conv2d(x, w, NULL, 2, 1)); break;
            default: break;
            }
        }
        ct_tensor *gout = ct_rand_uniform(y->ndim, y->shape, -1, 1, &r);
        ct_backward_ex(y, gout, false);
        const char *names[] = {"x", "w", "w2", "b", "b2"};
        for (int i = 0; i < 5; i++)
            if (ins[i]) {
                char g[32];
                snprintf(g, sizeof g, "grad.%s", names[i]);
                CT_ASSERT(ct_grad(ins[i]), "ops_dump: %s: no gradient for %s", k->name, names[i]);
                put(d, k->name, names[i], ins[i]);
                put(d, k->name, g, ct_grad(ins[i]));
            }
        put(d, k->name, "gout", gout);
        put(d, k->name, "y", y);
        describe(d, k);
    }
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: ops_dump OUT.safetensors\n");
        return 2;
    }
    dump d = {0};
    for (int i = 0; i < NCASES; i++) run_case(&d, &cases[i], 100 + (uint64_t)i);
    dump_save(&d, argv[1]);
    printf("ops_dump: %d cases, %d tensors\n", NCASES, d.n);
    dump_free(&d);
    ct_scope_shutdown();
    return 0;
}
