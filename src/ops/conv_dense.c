/* Convolutions on small planes as one GEMM over the whole batch (conv.c picks it; see
 * ct__dense_applies). When every input pixel reaches every output pixel through some
 * kernel tap (3x3 / padding 1 on 2x2 and 1x1 planes, 3x3 / stride 2 from 2x2 to 1x1, a 1x1
 * conv on 1x1 planes: ResNet-18's layer3 and layer4 at 32 px), one sample's convolution is
 * a dense linear map
 *   y[n] (O*P) = D (O*P x C*Q) @ x[n] (C*Q),   D[(o, p), (c, q)] = w[o, c, tap(p, q)],
 * P = OH*OW output and Q = H*W input pixels, and D has no zero: it does the direct
 * convolution's multiply-adds with the padding left out, no more. In NCHW, x and y are
 * already the matrices [N, C*Q] and [N, O*P], so the batch is one GEMM, Y = X @ D^T, with
 * no im2col, no transposes and no per-pixel classes. On these planes im2col's copies (and
 * Winograd's transforms of one-tile planes) cost as much as the multiplications.
 *   dX = dY @ D,   dD = dY^T @ X, folded back onto w's taps (each D entry is one tap).
 * D is rebuilt from w on every call (w's size times P*Q/(kh*kw)), so the path is taken
 * only for batches that amortise it (DENSE_MIN_BATCH).
 *
 * Threads: ct_gemm splits its products by shape only, D's rows and the fold's output
 * channels are disjoint, so bits do not depend on the thread count. */
#include "internal.h"

/* Below this batch, building D costs more than the GEMM saves. */
#define DENSE_MIN_BATCH 8
/* D of at most 4M floats (16 MiB): 1024 -> 1024 channels on 2x2 planes. */
#define DENSE_MAX_FLOATS ((int64_t)1 << 22)
/* Input planes of at most this many pixels (always, for kernels up to 8x8). */
#define DENSE_MAX_Q 64

bool ct__dense_applies(const ct__conv_shape *s, int64_t batch) {
    return s->groups == 1 && batch >= DENSE_MIN_BATCH &&
           (s->oh - 1) * s->sh <= s->ph && s->h - 1 + s->ph < s->kh && /* every row pair */
           (s->ow - 1) * s->sw <= s->pw && s->w - 1 + s->pw < s->kw && /* every column pair */
           s->h * s->w <= DENSE_MAX_Q && s->c * s->h * s->w * s->o * s->oh * s->ow <= DENSE_MAX_FLOATS;
}

/* The kernel taps (ki * kw + kj) that join output pixel p to each input pixel q. */
static void taps_of(const ct__conv_shape *s, int64_t p, int64_t *taps) {
    for (int64_t q = 0; q < s->h * s->w; q++)
        taps[q] = (q / s->w - p / s->ow * s->sh + s->ph) * s->kw + q % s->w - p % s->ow * s->sw + s->pw;
}

/* D [O*P, C*Q] from w [O, C, kh, kw], in the caller's scope. */
static const float *dense_matrix(const ct__conv_shape *s, const float *w) {
    int64_t np = s->oh * s->ow, nq = s->h * s->w, cq = s->c * nq, khw = s->kh * s->kw;
    float *d = ct_tensor_new(CT_SHAPE(s->o * np, cq))->data;
    CT_PAR_FOR(s->o * np * cq)
    for (int64_t r = 0; r < s->o * np; r++) {
        const float *wo = w + r / np * s->c * khw;
        float *dr = d + r * cq;
        int64_t taps[DENSE_MAX_Q];
        taps_of(s, r % np, taps);
        for (int64_t c = 0; c < s->c; c++)
            for (int64_t q = 0; q < nq; q++) dr[c * nq + q] = wo[c * khw + taps[q]];
    }
    return d;
}

void ct__dense_forward(const ct__conv_shape *s, int64_t batch, const float *x, const float *w,
                       const float *bias, const ct_conv2d_post *post, float *y) {
    int64_t np = s->oh * s->ow, op = s->o * np, cq = s->c * s->h * s->w;
    CT_SCOPE {
        const float *d = dense_matrix(s, w);
        if (bias) { /* the broadcast bias, which the GEMM accumulates onto */
            CT_PAR_FOR(batch * op)
            for (int64_t j = 0; j < batch * op; j++) y[j] = bias[j % op / np];
        }
        ct_gemm(false, true, batch, op, cq, 1, x, cq, d, cq, bias ? 1 : 0, y, op);
    }
    if (!post) return;
    const float *res = post->residual ? post->residual->data : NULL;
    CT_PAR_FOR(batch * op)
    for (int64_t j = 0; j < batch; j++)
        ct__conv_sample_post(y + j * op, res ? res + j * op : NULL, s->o, np, post);
}

void ct__dense_backward(const ct__conv_shape *s, int64_t batch, const float *gout,
                        const float *x, const float *w, float *gw, float *gx) {
    int64_t np = s->oh * s->ow, nq = s->h * s->w, op = s->o * np, cq = s->c * nq;
    int64_t khw = s->kh * s->kw;
    CT_SCOPE {
        if (gx) ct_gemm(false, false, batch, cq, op, 1, gout, op, dense_matrix(s, w), cq, 1, gx, cq);
        if (gw) {
            float *dd = ct_tensor_new(CT_SHAPE(op, cq))->data;
            ct_gemm(true, false, op, cq, batch, 1, gout, op, x, cq, 0, dd, cq);
            /* dw[o, c, tap] += every dD[(o, p), (c, q)] of that tap, in (p, q) order */
            CT_PAR_FOR(op * cq)
            for (int64_t o = 0; o < s->o; o++)
                for (int64_t p = 0; p < np; p++) {
                    int64_t taps[DENSE_MAX_Q];
                    taps_of(s, p, taps);
                    const float *dr = dd + (o * np + p) * cq;
                    float *wo = gw + o * s->c * khw;
                    for (int64_t c = 0; c < s->c; c++)
                        for (int64_t q = 0; q < nq; q++) wo[c * khw + taps[q]] += dr[c * nq + q];
                }
        }
    }
}
