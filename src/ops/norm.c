/* Batch norm and layer norm. Both keep only the input (an alias, never a copy) and the
 * per-channel / per-row mean and inverse std (in the node's aux scratch) for backward,
 * and recompute x-hat on the fly, as PyTorch does. Batch norm runs every step of a CNN,
 * so its loops go channel by channel over contiguous H*W planes; [N, C] inputs (H*W = 1)
 * take row-major loops that vectorise over C instead. Any [N, C, ...] input works (the
 * trailing dims are the plane), so BatchNorm1d's [N, C, L] form is covered too. */
#include "internal.h"

#include <math.h>
#include <string.h>

/* ---- batch norm -------------------------------------------------------------------- */

/* x viewed as [N, C, HW]; cnt = N * HW values per channel. */
typedef struct {
    int64_t N, C, HW, cnt;
} bn_dims;

/* Scratch from the caching allocator (no malloc in steady state). */
typedef struct {
    double *s1, *s2;    /* per-channel double accumulators */
    float *mean, *istd; /* per-channel statistics (when no node keeps them in aux) */
    float *a, *b;       /* per-channel affine coefficients */
    float *ma, *mb;     /* a fused ReLU's input from x (the forward's a and b; see relu_g) */
    size_t bytes;
    void *base;
} bn_scratch;

static bn_scratch bn_scratch_new(int64_t C) {
    bn_scratch s;
    s.bytes = (size_t)C * (2 * sizeof(double) + 6 * sizeof(float));
    s.base = ct_alloc(s.bytes ? s.bytes : 1);
    s.s1 = s.base;
    s.s2 = s.s1 + C;
    s.mean = (float *)(s.s2 + C);
    s.istd = s.mean + C;
    s.a = s.istd + C;
    s.b = s.a + C;
    s.ma = s.b + C;
    s.mb = s.ma + C;
    memset(s.s1, 0, 2 * (size_t)C * sizeof(double));
    return s;
}

static void bn_scratch_free(bn_scratch *s) { ct_free(s->base, s->bytes ? s->bytes : 1); }

/* Channels per thread's block in the sums: enough for sequential streams within a sample. */
#define BN_CBLOCK 4

/* The upstream gradient as batch norm sees it: g, or with a fused ReLU after it ReLU's
 * backward of g, zero where its output is <= 0 (exactly relu_bwd's values). The backward
 * does not read that output: it recomputes the ReLU's input t = ma[c] * x + mb[c] from x,
 * which it reads anyway, with the forward's own coefficients and expression (no
 * contraction into fma under -std=c11), so t is the forward's value bit for bit, and
 * t <= 0 exactly where the output max(t, 0) is <= 0 (-0 and NaN included). That saves a
 * read of the output in each of the backward's two passes. */
/* A function, so both values are loaded unconditionally and the select vectorises (a
 * conditional load stays a branch, data-random here). */
static inline float relu_g(float g, float t) { return t <= 0 ? 0.0f : g; }
static inline float relu_in(float x, float ma, float mb) { return ma * x + mb; }

/* s1[c] += sum of g over channel c; if need_s2, s2[c] += sum of g * (x - mean[c]); g masked
 * by a fused ReLU when ma is given (mask coefficients ma, mb: see relu_g; x is then given
 * even without need_s2). */
static void bn_sums(const float *restrict g, const float *restrict ma, const float *restrict mb,
                    const float *restrict x, bool need_s2, const float *restrict mean, bn_dims d,
                    double *restrict s1, double *restrict s2) {
    int64_t C = d.C, HW = d.HW;
    if (HW == 1) {
        for (int64_t r = 0; r < d.N; r++) {
            const float *gr = g + r * C, *xr = x ? x + r * C : NULL;
            if (ma) { /* the fused ReLU's mask */
                for (int64_t c = 0; c < C; c++) s1[c] += relu_g(gr[c], relu_in(xr[c], ma[c], mb[c]));
                if (need_s2)
                    for (int64_t c = 0; c < C; c++)
                        s2[c] += relu_g(gr[c], relu_in(xr[c], ma[c], mb[c])) * (xr[c] - mean[c]);
                continue;
            }
            for (int64_t c = 0; c < C; c++) s1[c] += gr[c];
            if (!need_s2) continue;
            for (int64_t c = 0; c < C; c++) s2[c] += gr[c] * (xr[c] - mean[c]);
        }
        return;
    }
    if (ma) { /* the fused ReLU's mask: a loop of its own, so the plain one stays as it was */
        int64_t nblk = (C + BN_CBLOCK - 1) / BN_CBLOCK;
        CT_PAR_FOR(d.N * C * HW)
        for (int64_t cb = 0; cb < nblk; cb++) {
            int64_t c0 = cb * BN_CBLOCK, c1 = c0 + BN_CBLOCK < C ? c0 + BN_CBLOCK : C;
            for (int64_t r = 0; r < d.N; r++)
                for (int64_t c = c0; c < c1; c++) {
                    const float *gp = g + (r * C + c) * HW, *xp = x + (r * C + c) * HW;
                    float a = ma[c], b = mb[c];
                    if (!need_s2) {
                        CT_LANE_SUM(0, HW, k, relu_g(gp[k], relu_in(xp[k], a, b)), s1[c]);
                        continue;
                    }
                    float m = mean[c];
                    CT_LANE_SUM2(0, HW, k, relu_g(gp[k], relu_in(xp[k], a, b)), s1[c],
                                 relu_g(gp[k], relu_in(xp[k], a, b)) * (xp[k] - m), s2[c]);
                }
        }
        return;
    }
/* Sample-major, so g and x are read as two sequential streams (channel-major jumps
     * C*HW floats between planes). Each channel still adds its planes in sample order,
     * so the sums are bit-identical to the channel-major order. */
    /* Threads take blocks of BN_CBLOCK channels (disjoint sums). */
    int64_t nblk = (C + BN_CBLOCK - 1) / BN_CBLOCK;
    CT_PAR_FOR(d.N * C * HW)
    for (int64_t cb = 0; cb < nblk; cb++) {
        int64_t c0 = cb * BN_CBLOCK, c1 = c0 + BN_CBLOCK < C ? c0 + BN_CBLOCK : C;
        for (int64_t r = 0; r < d.N; r++) {
            for (int64_t c = c0; c < c1; c++) {
                const float *gp = g + (r * C + c) * HW;
                if (!need_s2) {
                    CT_LANE_SUM(0, HW, k, gp[k], s1[c]);
                    continue;
                }
                const float *xp = x + (r * C + c) * HW;
                float m = mean[c];
                CT_LANE_SUM2(0, HW, k, gp[k], s1[c], gp[k] * (xp[k] - m), s2[c]);
            }
        }
    }
}

/* Batch mean and biased variance per channel (two passes: stable for large means). */
static void bn_batch_stats(const float *x, bn_dims d, bn_scratch *s, float *mean, float *var) {
    int64_t C = d.C, HW = d.HW;
    if (HW == 1) {
        double *restrict s1 = s->s1, *restrict s2 = s->s2;
        float *restrict mu = mean;
        for (int64_t r = 0; r < d.N; r++) for (int64_t c = 0; c < C; c++) s1[c] += x[r * C + c];
        for (int64_t c = 0; c < C; c++) mu[c] = (float)(s1[c] / (double)d.cnt);
        for (int64_t r = 0; r < d.N; r++)
            for (int64_t c = 0; c < C; c++) s2[c] += (x[r * C + c] - mu[c]) * (x[r * C + c] - mu[c]);
    } else {
        CT_PAR_FOR(2 * d.N * C * HW) /* channels are independent */
        for (int64_t c = 0; c < C; c++) {
            for (int64_t r = 0; r < d.N; r++) {
                const float *xp = x + (r * C + c) * HW;
                CT_LANE_SUM(0, HW, k, xp[k], s->s1[c]);
            }
            mean[c] = (float)(s->s1[c] / (double)d.cnt);
            float m = mean[c];
            for (int64_t r = 0; r < d.N; r++) {
                const float *xp = x + (r * C + c) * HW;
                CT_LANE_SUM(0, HW, k, (xp[k] - m) * (xp[k] - m), s->s2[c]);
            }
        }
    }
    for (int64_t c = 0; c < C; c++) var[c] = (float)(s->s2[c] / (double)d.cnt);
}

/* One plane of bn_affine with the fused ReLU's two sides: relu applies it to the result
 * (forward), masked uses u only where the ReLU's input ma * mp + mb is > 0 (backward, mp
 * = x: see relu_g), with v the v * e term. Always inlined where the flags are literal
 * constants (a pointer tested inside the loop would keep it scalar and branchy), so each
 * combination is its own vectorised loop. */
static inline __attribute__((always_inline)) void affine_relu_plane(
    float *restrict yp, bool acc, const float *restrict up, bool masked, const float *restrict mp,
    float ma, float mb, float ac, float bc, bool with_v, const float *restrict vp, float ec,
    bool relu, int64_t HW) {
    for (int64_t k = 0; k < HW; k++) {
        float uk = up[k];
        if (masked) uk = relu_g(uk, relu_in(mp[k], ma, mb));
        float t = ac * uk + bc;
        if (with_v) t = ac * uk + bc + ec * vp[k];
        if (relu) t = t < 0 ? 0.0f : t; /* as relu_fwd: NaN stays NaN */
        if (acc) t += yp[k];
        yp[k] = t;
    }
}

/* bn_affine over planes with a fused ReLU: relu on the output (forward: no m, v or acc),
 * or u masked by the ReLU whose input is ma * m + mb (backward, m = x). */
static void bn_affine_relu(float *restrict y, bool acc, const float *restrict u,
                           const float *restrict m, const float *restrict ma,
                           const float *restrict mb, const float *restrict a,
                           const float *restrict b, const float *restrict v,
                           const float *restrict e, bool relu, bn_dims d) {
    int64_t C = d.C, HW = d.HW;
    CT_PAR_FOR(d.N * C * HW)
    for (int64_t rc = 0; rc < d.N * C; rc++) {
        int64_t c = rc % C, o = rc * HW;
        if (relu)
            affine_relu_plane(y + o, false, u + o, false, NULL, 0, 0, a[c], b[c], false, NULL, 0, true, HW);
        else if (v && acc)
            affine_relu_plane(y + o, true, u + o, true, m + o, ma[c], mb[c], a[c], b[c], true, v + o, e[c], false, HW);
        else if (v)
            affine_relu_plane(y + o, false, u + o, true, m + o, ma[c], mb[c], a[c], b[c], true, v + o, e[c], false, HW);
        else if (acc)
            affine_relu_plane(y + o, true, u + o, true, m + o, ma[c], mb[c], a[c], b[c], false, NULL, 0, false, HW);
        else
            affine_relu_plane(y + o, false, u + o, true, m + o, ma[c], mb[c], a[c], b[c], false, NULL, 0, false, HW);
    }
}

/* y = a[c] * u + b[c] (+ v * e[c] when v is given), channel by channel; acc: y += that. */
static void bn_affine(float *restrict y, bool acc, const float *restrict u,
                      const float *restrict a, const float *restrict b,
                      const float *restrict v, const float *restrict e, bn_dims d) {
    int64_t C = d.C, HW = d.HW;
    if (HW > 1) { /* plane by plane */
        CT_PAR_FOR(d.N * C * HW)
        for (int64_t rc = 0; rc < d.N * C; rc++) {
            int64_t c = rc % C, o = rc * HW;
            float *yp = y + o;
            const float *up = u + o;
            float ac = a[c], bc = b[c];
            if (v) {
                const float *vp = v + o;
                float ec = e[c];
                if (acc)
                    for (int64_t k = 0; k < HW; k++) yp[k] += ac * up[k] + bc + ec * vp[k];
                else
                    for (int64_t k = 0; k < HW; k++) yp[k] = ac * up[k] + bc + ec * vp[k];
            } else if (acc) {
                for (int64_t k = 0; k < HW; k++) yp[k] += ac * up[k] + bc;
            } else {
                for (int64_t k = 0; k < HW; k++) yp[k] = ac * up[k] + bc;
            }
        }
        return;
    }
    CT_PAR_FOR(d.N * C) /* rows are independent */
    for (int64_t r = 0; r < d.N; r++) {
        {
            float *yr = y + r * C;
            const float *ur = u + r * C, *vr = v ? v + r * C : NULL;
            if (vr && acc)
                for (int64_t c = 0; c < C; c++) yr[c] += a[c] * ur[c] + b[c] + e[c] * vr[c];
            else if (vr)
                for (int64_t c = 0; c < C; c++) yr[c] = a[c] * ur[c] + b[c] + e[c] * vr[c];
            else if (acc)
                for (int64_t c = 0; c < C; c++) yr[c] += a[c] * ur[c] + b[c];
            else
                for (int64_t c = 0; c < C; c++) yr[c] = a[c] * ur[c] + b[c];
        }
    }
}

static void affine_coeffs(const ct_tensor *weight, const ct_tensor *bias, float mean, float istd,
                          int64_t c, float *a, float *b);

/* Node layout: i[0] training, i[1..3] N, C, HW, i[4] saved slot of x, i[5] saved slot of
 * weight (-1 when not saved), i[6] saved slot of bias (batch_norm_relu only, -1 when there
 * is none); aux holds mean[C] then invstd[C] (batch statistics in training, running
 * statistics in eval) when x or weight needs a gradient, and always with a fused ReLU
 * (relu), whose mask the backward recomputes from x (see relu_g). */
static void bn_backward(ct_node *n, const ct_tensor *gout, bool relu) {
    /* dx is one affine pass over the whole tensor, so it can overwrite a fresh buffer
     * (no zero fill, no read of zeros); the per-channel dw and db accumulate as usual. */
    bool fresh;
    ct_tensor *gx = ct_node_grad_in_fresh(n, 0, &fresh);
    ct_tensor *gw = ct_node_grad_in(n, 1), *gb = ct_node_grad_in(n, 2);
    bool training = n->i[0];
    bn_dims d = {n->i[1], n->i[2], n->i[3], n->i[1] * n->i[3]};
    int64_t C = d.C;
    const float *x = n->i[4] >= 0 ? n->saved[n->i[4]]->data : NULL;
    const ct_tensor *wt = n->i[5] >= 0 ? n->saved[n->i[5]] : NULL;
    const float *w = wt ? wt->data : NULL;
    const float *mean = n->aux, *istd = mean ? mean + C : NULL;
    const float *g = gout->data;
    bn_scratch s = bn_scratch_new(C);
    const float *ma = NULL, *mb = NULL; /* the ReLU's input from x: the forward's a and b */
    if (relu) {
        const ct_tensor *bias = n->i[6] >= 0 ? n->saved[n->i[6]] : NULL;
        for (int64_t c = 0; c < C; c++) affine_coeffs(wt, bias, mean[c], istd[c], c, s.ma, s.mb);
        ma = s.ma, mb = s.mb;
    }
    /* s1 = sum(dy), s2 = sum(dy * (x - mean)) per channel; eval-mode dx needs neither. */
    bool need_s1 = gb || (gx && training), need_s2 = gw || (gx && training);
    if (need_s1 || need_s2) bn_sums(g, ma, mb, x, need_s2, mean, d, s.s1, s.s2);
    if (gb)
        for (int64_t c = 0; c < C; c++) gb->data[c] += (float)s.s1[c];
    if (gw)
        for (int64_t c = 0; c < C; c++) gw->data[c] += (float)(s.s2[c] * istd[c]);
    if (gx) {
        for (int64_t c = 0; c < C; c++) s.a[c] = (w ? w[c] : 1.0f) * istd[c];
        if (training) {
            /* dx = a * (dy - mean(dy) - xhat * mean(dy * xhat)), a = w * invstd, written
             * as a * dy + e * x + b with per-channel e and b. */
            float *e = s.mean; /* free scratch here */
            for (int64_t c = 0; c < C; c++) {
                double inv_n = 1.0 / (double)d.cnt;
                double ec = -(double)s.a[c] * istd[c] * istd[c] * s.s2[c] * inv_n;
                e[c] = (float)ec;
                s.b[c] = (float)(-(double)s.a[c] * s.s1[c] * inv_n - ec * mean[c]);
            }
            if (relu)
                bn_affine_relu(gx->data, !fresh, g, x, ma, mb, s.a, s.b, x, e, false, d);
            else
                bn_affine(gx->data, !fresh, g, s.a, s.b, x, e, d);
        } else {
            memset(s.b, 0, (size_t)C * sizeof(float));
            if (relu)
                bn_affine_relu(gx->data, !fresh, g, x, ma, mb, s.a, s.b, NULL, NULL, false, d);
            else
                bn_affine(gx->data, !fresh, g, s.a, s.b, NULL, NULL, d);
        }
    }
    bn_scratch_free(&s);
}

static void batch_norm_backward(ct_node *n, const ct_tensor *gout) { bn_backward(n, gout, false); }

static void batch_norm_relu_backward(ct_node *n, const ct_tensor *gout) {
    bn_backward(n, gout, true);
}

static void check_channel_vec(const char *what, const ct_tensor *t, const ct_tensor *x, int64_t C) {
    CT_ASSERT(t->ndim == 1 && t->shape[0] == C,
              "batch_norm: %s %s does not match the %lld channels of input %s", what,
              CT_SHAPE_STR(t), (long long)C, CT_SHAPE_STR(x));
}

/* ct_batch_norm, followed by a fused ReLU when relu. */
static float eval_istd(float var, float eps) { return 1.0f / sqrtf(var + eps); }
/* y = x * a + b with a = w * invstd, b = bias - mean * a (the backward recomputes them for
 * the fused ReLU's mask: one definition, so the bits agree). */
static void affine_coeffs(const ct_tensor *weight, const ct_tensor *bias, float mean, float istd,
                          int64_t c, float *a, float *b) {
    a[c] = (weight ? weight->data[c] : 1.0f) * istd;
    b[c] = (bias ? bias->data[c] : 0.0f) - mean * a[c];
}

void ct_batch_norm_eval_coeffs(const ct_tensor *weight, const ct_tensor *bias,
                               const ct_tensor *running_mean, const ct_tensor *running_var,
                               float eps, float *a, float *b) {
    for (int64_t c = 0; c < running_mean->numel; c++)
        affine_coeffs(weight, bias, running_mean->data[c], eval_istd(running_var->data[c], eps), c,
                      a, b);
}

static ct_tensor *bn_forward(ct_tensor *x, ct_tensor *weight, ct_tensor *bias,
                             ct_tensor *running_mean, ct_tensor *running_var, bool training,
                             float momentum, float eps, bool relu) {
    CT_ASSERT(x->ndim >= 2, "batch_norm: expected an input [N, C] or [N, C, H, W], got %s",
              CT_SHAPE_STR(x));
    bn_dims d = {x->shape[0], x->shape[1], 1, 0};
    for (int k = 2; k < x->ndim; k++) d.HW *= x->shape[k];
    d.cnt = d.N * d.HW;
    int64_t C = d.C;
    if (weight) check_channel_vec("weight", weight, x, C);
    if (bias) check_channel_vec("bias", bias, x, C);
    CT_ASSERT(!running_mean == !running_var,
              "batch_norm: running_mean and running_var must be given together");
    if (running_mean) {
        check_channel_vec("running_mean", running_mean, x, C);
        check_channel_vec("running_var", running_var, x, C);
    }
    CT_ASSERT(training || running_mean,
              "batch_norm: eval mode needs running_mean and running_var (input %s)",
              CT_SHAPE_STR(x));
    CT_ASSERT(!training || d.cnt > 1,
              "batch_norm: training needs more than 1 value per channel, got input %s",
              CT_SHAPE_STR(x));

    ct_tensor *out = ct_empty_like(x);
    bn_scratch s = bn_scratch_new(C);
    float *mean = s.mean, *istd = s.istd;
    if (training) {
        float *var = s.b; /* free until the affine coefficients are formed */
        bn_batch_stats(x->data, d, &s, mean, var);
        for (int64_t c = 0; c < C; c++) istd[c] = 1.0f / sqrtf(var[c] + eps);
        if (running_mean) {
            /* Buffers, updated in place and never part of the graph; PyTorch blends in
             * the unbiased variance. */
            double corr = (double)d.cnt / (double)(d.cnt - 1);
            float *rm = running_mean->data, *rv = running_var->data;
            for (int64_t c = 0; c < C; c++) {
                rm[c] = (1 - momentum) * rm[c] + momentum * mean[c];
                rv[c] = (1 - momentum) * rv[c] + momentum * (float)(s.s2[c] / d.cnt * corr);
            }
        }
    } else {
        for (int64_t c = 0; c < C; c++) {
            mean[c] = running_mean->data[c];
            istd[c] = eval_istd(running_var->data[c], eps);
        }
    }
    for (int64_t c = 0; c < C; c++) affine_coeffs(weight, bias, mean[c], istd[c], c, s.a, s.b);
    if (relu)
        bn_affine_relu(out->data, false, x->data, NULL, NULL, NULL, s.a, s.b, NULL, NULL, true, d);
    else
        bn_affine(out->data, false, x->data, s.a, s.b, NULL, NULL, d);

    ct_node *n = relu ? CT_RECORD("batch_norm_relu", batch_norm_relu_backward, out, x, weight, bias)
                      : CT_RECORD("batch_norm", batch_norm_backward, out, x, weight, bias);
    if (n) {
        bool nx = ct_node_needs(n, 0), nw = ct_node_needs(n, 1);
        n->i[0] = training;
        n->i[1] = d.N, n->i[2] = C, n->i[3] = d.HW;
        n->i[4] = n->i[5] = n->i[6] = -1;
        /* dbias needs only dy. The statistics serve dx and dweight; x serves dweight and
         * the training-mode dx (eval-mode dx is just dy * w * invstd); the weight values
         * serve dx. A fused ReLU's mask for every gradient needs x, the statistics, the
         * weight and the bias (aliases, no copies). */
        if (nx || nw || relu) {
            float *st = ct_node_aux(n, 2 * (size_t)C * sizeof(float));
            memcpy(st, mean, (size_t)C * sizeof(float));
            memcpy(st + C, istd, (size_t)C * sizeof(float));
        }
        if (nw || (nx && training) || relu) {
            n->i[4] = n->nsaved;
            ct_save(n, x);
        }
        if ((nx || relu) && weight) {
            n->i[5] = n->nsaved;
            ct_save(n, weight);
        }
        if (relu && bias) {
            n->i[6] = n->nsaved;
            ct_save(n, bias);
        }
    }
    bn_scratch_free(&s);
    return out;
}

ct_tensor *ct_batch_norm(ct_tensor *x, ct_tensor *weight, ct_tensor *bias,
                         ct_tensor *running_mean, ct_tensor *running_var, bool training,
                         float momentum, float eps) {
    return bn_forward(x, weight, bias, running_mean, running_var, training, momentum, eps, false);
}

ct_tensor *ct_batch_norm_relu(ct_tensor *x, ct_tensor *weight, ct_tensor *bias,
                              ct_tensor *running_mean, ct_tensor *running_var, bool training,
                              float momentum, float eps) {
    return bn_forward(x, weight, bias, running_mean, running_var, training, momentum, eps, true);
}

/* ---- layer norm -------------------------------------------------------------------- */

/* Row kernels; restrict parameters spare the vectoriser its runtime alias checks. */
static void ln_row_forward(float *restrict y, const float *restrict x, const float *restrict w,
                           const float *restrict b, float m, float is, int64_t D) {
    if (w && b)
        for (int64_t j = 0; j < D; j++) y[j] = (x[j] - m) * is * w[j] + b[j];
    else if (w)
        for (int64_t j = 0; j < D; j++) y[j] = (x[j] - m) * is * w[j];
    else if (b)
        for (int64_t j = 0; j < D; j++) y[j] = (x[j] - m) * is + b[j];
    else
        for (int64_t j = 0; j < D; j++) y[j] = (x[j] - m) * is;
}

/* gw += g * xhat (x given) or gb += g (x NULL). */
static void ln_row_param_grad(float *restrict acc, const float *restrict g,
                              const float *restrict x, float m, float is, int64_t D) {
    if (x)
        for (int64_t j = 0; j < D; j++) acc[j] += g[j] * (x[j] - m) * is;
    else
        for (int64_t j = 0; j < D; j++) acc[j] += g[j];
}

/* dx = invstd * (dxh - mean(dxh) - xhat * mean(dxh * xhat)), dxh = dy * w. */
static void ln_row_input_grad(float *restrict gx, const float *restrict g,
                              const float *restrict x, const float *restrict w, float m,
                              float is, int64_t D) {
    double c1 = 0, c2 = 0;
    if (w) {
        CT_LANE_SUM(0, D, k, g[k] * w[k], c1);
        CT_LANE_SUM(0, D, k, g[k] * w[k] * (x[k] - m), c2);
    } else {
        CT_LANE_SUM(0, D, k, g[k], c1);
        CT_LANE_SUM(0, D, k, g[k] * (x[k] - m), c2);
    }
    float k1 = (float)(c1 / (double)D), k2 = (float)(c2 * is / (double)D);
    if (w)
        for (int64_t j = 0; j < D; j++) gx[j] += is * (g[j] * w[j] - k1 - (x[j] - m) * is * k2);
    else
        for (int64_t j = 0; j < D; j++) gx[j] += is * (g[j] - k1 - (x[j] - m) * is * k2);
}

/* Node layout: i[0] rows M, i[1] row length D, i[2] saved slot of x, i[3] saved slot of
 * weight (-1 when not saved); aux holds mean[M] then invstd[M]. */
static void layer_norm_backward(ct_node *n, const ct_tensor *gout) {
    ct_tensor *gx = ct_node_grad_in(n, 0), *gw = ct_node_grad_in(n, 1), *gb = ct_node_grad_in(n, 2);
    int64_t M = n->i[0], D = n->i[1];
    const float *x = n->i[2] >= 0 ? n->saved[n->i[2]]->data : NULL;
    const float *w = n->i[3] >= 0 ? n->saved[n->i[3]]->data : NULL;
    const float *mean = n->aux, *istd = mean ? mean + M : NULL;
    for (int64_t r = 0; r < M; r++) {
        const float *g = gout->data + r * D;
        if (gb) ln_row_param_grad(gb->data, g, NULL, 0, 0, D);
        if (gw) ln_row_param_grad(gw->data, g, x + r * D, mean[r], istd[r], D);
        if (gx) ln_row_input_grad(gx->data + r * D, g, x + r * D, w, mean[r], istd[r], D);
    }
}

ct_tensor *ct_layer_norm(ct_tensor *x, int nlast, ct_tensor *weight, ct_tensor *bias, float eps) {
    CT_ASSERT(nlast >= 1 && nlast <= x->ndim,
              "layer_norm: cannot normalise the last %d dims of input %s", nlast, CT_SHAPE_STR(x));
    int64_t D = 1;
    for (int k = x->ndim - nlast; k < x->ndim; k++) D *= x->shape[k];
    const ct_tensor *pars[2] = {weight, bias};
    for (int p = 0; p < 2; p++) {
        const ct_tensor *t = pars[p];
        if (!t) continue;
        bool ok = t->ndim == nlast;
        for (int k = 0; ok && k < nlast; k++) ok = t->shape[k] == x->shape[x->ndim - nlast + k];
        CT_ASSERT(ok, "layer_norm: %s %s does not match the last %d dims of input %s",
                  p ? "bias" : "weight", CT_SHAPE_STR(t), nlast, CT_SHAPE_STR(x));
    }
    CT_ASSERT(D > 0, "layer_norm: empty normalised shape in input %s", CT_SHAPE_STR(x));
    int64_t M = x->numel / D;

    ct_tensor *out = ct_empty_like(x);
    ct_node *n = CT_RECORD("layer_norm", layer_norm_backward, out, x, weight, bias);
    bool keep = n && M > 0 && (ct_node_needs(n, 0) || ct_node_needs(n, 1));
    size_t st_bytes = 2 * (size_t)M * sizeof(float);
    float *st = keep ? ct_node_aux(n, st_bytes) : NULL;
    const float *w = weight ? weight->data : NULL, *b = bias ? bias->data : NULL;
    for (int64_t r = 0; r < M; r++) {
        const float *xr = x->data + r * D;
        double sum = 0, sq = 0;
        CT_LANE_SUM(0, D, k, xr[k], sum);
        float m = (float)(sum / (double)D);
        CT_LANE_SUM(0, D, k, (xr[k] - m) * (xr[k] - m), sq);
        float is = 1.0f / sqrtf((float)(sq / (double)D) + eps);
        if (st) st[r] = m, st[M + r] = is;
        ln_row_forward(out->data + r * D, xr, w, b, m, is, D);
    }
    if (n) {
        n->i[0] = M, n->i[1] = D;
        n->i[2] = n->i[3] = -1;
        if (keep) {
            n->i[2] = n->nsaved;
            ct_save(n, x);
        }
        if (ct_node_needs(n, 0) && weight) {
            n->i[3] = n->nsaved;
            ct_save(n, weight);
        }
    }
    return out;
}
