/* 2-d convolution (cross-correlation, as PyTorch) by im2col + sgemm, one sample at a time.
 *
 * Layout choice: for each sample, col[C*kh*kw, OH*OW] = im2col(x[n]) and
 * y[n][O, OH*OW] = W[O, C*kh*kw] @ col. The GEMM writes straight into the NCHW output, the
 * column buffer of one sample stays in L2 (226 KB for a 3x3 conv with 32 channels on
 * 14x14), and it is reused for every sample. Measured on the small Fashion-MNIST CNN
 * (batch 64, one thread), against one im2col for the whole batch ([K, N*OH*OW], one big
 * GEMM, then a copy back to NCHW) and against groups of 2-8 samples, the per-sample GEMMs
 * are as fast or faster, skip the NCHW copy and need N times less scratch. That holds
 * for one input channel too (K = 9): the GEMM is then a small part of the time, which
 * goes to writing the output. Nine shifted GEMMs over the padded input (no im2col, a
 * repacked weight) were tried too: ~20% off the forward, nothing off the backward, so not
 * worth a second code path.
 *
 * Backward, per sample and only for the gradients that are needed:
 *   dW += gout[n] @ col^T      (col recomputed from the saved x: saving x is 9x smaller)
 *   dX += col2im(W^T @ gout[n])
 *   db += sum over pixels of gout[n]
 * A 1x1 kernel with stride 1 and no padding needs no im2col at all: col is x[n] itself,
 * and W^T @ gout[n] is accumulated straight into dX[n]. */
#include "internal.h"

#include <immintrin.h>
#include <string.h>

typedef struct {
    int64_t c, h, w;   /* input channels and size */
    int64_t kh, kw;    /* kernel */
    int64_t s, p;      /* stride and padding */
    int64_t oh, ow;    /* output size */
} conv_geom;

static int64_t geom_k(const conv_geom *g) { return g->c * g->kh * g->kw; }
static int64_t geom_pix(const conv_geom *g) { return g->oh * g->ow; }
/* A 1x1/stride-1/no-padding conv is a plain matrix product over channels. */
static bool geom_pointwise(const conv_geom *g) {
    return g->kh == 1 && g->kw == 1 && g->s == 1 && g->p == 0;
}

/* The output columns [lo, hi) whose input column ox*s - p + kj lies inside [0, w). */
static void valid_cols(const conv_geom *g, int64_t kj, int64_t *lo, int64_t *hi) {
    int64_t a = g->p - kj, b = g->w - 1 + g->p - kj;
    if (g->s == 1) { /* the common case, without the divisions */
        *lo = a > 0 ? a : 0;
        *hi = b + 1;
    } else {
        *lo = a > 0 ? (a + g->s - 1) / g->s : 0;
        *hi = b < 0 ? 0 : b / g->s + 1;
    }
    if (*lo > g->ow) *lo = g->ow;
    if (*hi > g->ow) *hi = g->ow;
    if (*hi < *lo) *hi = *lo;
}

/* dst[0..n) = src[0..n) and dst[0..n) += src[0..n) for the short rows of a small CNN
 * (14 or 28 pixels). A memcpy call or a vector loop with a scalar tail costs more than
 * the copy itself there; one masked AVX-512 op per 16 floats halves im2col and col2im.
 * `wide` picks those; the functions that loop over rows are compiled twice (an AVX-512
 * and a generic copy), so in each `wide` is a constant and the other branch goes. */
static inline CT_AVX512 void copy_row16(float *restrict dst, const float *restrict src, int64_t n) {
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) _mm512_storeu_ps(dst + j, _mm512_loadu_ps(src + j));
    if (j < n) {
        __mmask16 m = (__mmask16)((1u << (n - j)) - 1);
        _mm512_mask_storeu_ps(dst + j, m, _mm512_maskz_loadu_ps(m, src + j));
    }
}
static inline CT_AVX512 void add_row16(float *restrict dst, const float *restrict src, int64_t n) {
    int64_t j = 0;
    for (; j + 16 <= n; j += 16)
        _mm512_storeu_ps(dst + j, _mm512_add_ps(_mm512_loadu_ps(dst + j), _mm512_loadu_ps(src + j)));
    if (j < n) {
        __mmask16 m = (__mmask16)((1u << (n - j)) - 1);
        __m512 v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, dst + j), _mm512_maskz_loadu_ps(m, src + j));
        _mm512_mask_storeu_ps(dst + j, m, v);
    }
}
static inline __attribute__((always_inline)) void copy_row(float *restrict dst,
                                                           const float *restrict src, int64_t n,
                                                           bool wide) {
    if (wide)
        copy_row16(dst, src, n);
    else
        memcpy(dst, src, (size_t)n * sizeof(float));
}
static inline __attribute__((always_inline)) void add_row(float *restrict dst,
                                                          const float *restrict src, int64_t n,
                                                          bool wide) {
    if (wide)
        add_row16(dst, src, n);
    else
        for (int64_t j = 0; j < n; j++) dst[j] += src[j];
}


/* One sample's planes with a zero border of p pixels: [C, H + 2p, W + 2p]. im2col then
 * reads whole rows without bounds checks. */
static inline __attribute__((always_inline)) void pad_planes_rows(const conv_geom *g,
                                                                  const float *restrict x,
                                                                  float *restrict xp, bool wide) {
    int64_t hp = g->h + 2 * g->p, wp = g->w + 2 * g->p;
    memset(xp, 0, (size_t)(g->c * hp * wp) * sizeof(float));
    for (int64_t c = 0; c < g->c; c++)
        for (int64_t y = 0; y < g->h; y++)
            copy_row(xp + (c * hp + y + g->p) * wp + g->p, x + (c * g->h + y) * g->w, g->w, wide);
}

/* col[(c, ki, kj), (oy, ox)] = xp[c, oy*s + ki, ox*s + kj] from the padded planes. The
 * padded copy costs one pass over x and halves the im2col time of a 3x3 conv compared
 * with clipping every row against the border. */
static inline __attribute__((always_inline)) void im2col_rows(const conv_geom *g,
                                                              const float *restrict xp,
                                                              float *restrict col, bool wide) {
    int64_t hp = g->h + 2 * g->p, wp = g->w + 2 * g->p, ow = g->ow, s = g->s;
    float *restrict dst = col;
    for (int64_t c = 0; c < g->c; c++)
        for (int64_t ki = 0; ki < g->kh; ki++)
            for (int64_t kj = 0; kj < g->kw; kj++)
                for (int64_t oy = 0; oy < g->oh; oy++, dst += ow) {
                    const float *restrict src = xp + (c * hp + oy * s + ki) * wp + kj;
                    if (s == 1)
                        copy_row(dst, src, ow, wide);
                    else
                        for (int64_t ox = 0; ox < ow; ox++) dst[ox] = src[ox * s];
                }
}

/* The row loops above, compiled once for AVX-512 and once for any x86-64-v3 CPU (also
 * col2im below). */
static CT_AVX512 void pad_planes_512(const conv_geom *g, const float *x, float *xp) {
    pad_planes_rows(g, x, xp, true);
}
static CT_AVX512 void im2col_512(const conv_geom *g, const float *xp, float *col) {
    im2col_rows(g, xp, col, true);
}
static void pad_planes(const conv_geom *g, const float *x, float *xp) {
    if (ct_cpu_avx512())
        pad_planes_512(g, x, xp);
    else
        pad_planes_rows(g, x, xp, false);
}
static void im2col(const conv_geom *g, const float *xp, float *col) {
    if (ct_cpu_avx512())
        im2col_512(g, xp, col);
    else
        im2col_rows(g, xp, col, false);
}

/* Scratch for one sample's column matrix, from the caching allocator (no malloc in a
 * steady-state step) and released with the enclosing scope. */
typedef struct {
    float *xp, *col;
} col_scratch;

static col_scratch scratch_new(const conv_geom *g) {
    col_scratch sc = {0};
    if (geom_pointwise(g)) return sc; /* x[n] is already its own column matrix */
    int64_t padded = g->c * (g->h + 2 * g->p) * (g->w + 2 * g->p);
    if (g->p > 0) sc.xp = ct_tensor_new(CT_SHAPE(padded))->data;
    sc.col = ct_tensor_new(CT_SHAPE(geom_k(g), geom_pix(g)))->data;
    return sc;
}

/* The [C*kh*kw, OH*OW] column matrix of one sample x [C, H, W]. */
static const float *sample_cols(const conv_geom *g, const float *x, const col_scratch *sc) {
    if (!sc->col) return x;
    if (sc->xp) {
        pad_planes(g, x, sc->xp);
        x = sc->xp;
    }
    im2col(g, x, sc->col);
    return sc->col;
}

/* The adjoint of im2col: dx[c, iy, ix] += every col entry that was copied from it,
 * skipping the entries that came from the zero border. Within one (c, ki, kj) every dx
 * pixel gets at most one entry, so the row order is free: even rows first, then odd
 * ones. Adjacent rows are closer than one vector apart, and the CPU makes the masked
 * load of a row wait for the masked store of the row before it; two rows apart that
 * false dependency is gone and col2im runs twice as fast. */
static inline __attribute__((always_inline)) void col2im_rows(const conv_geom *g,
                                                              const float *restrict col,
                                                              float *restrict dx, bool wide) {
    int64_t ow = g->ow, s = g->s;
    for (int64_t c = 0; c < g->c; c++)
        for (int64_t ki = 0; ki < g->kh; ki++)
            for (int64_t kj = 0; kj < g->kw; kj++) {
                const float *restrict row = col + ((c * g->kh + ki) * g->kw + kj) * geom_pix(g);
                int64_t lo, hi;
                valid_cols(g, kj, &lo, &hi);
                for (int64_t first = 0; first < 2; first++)
                    for (int64_t oy = first; oy < g->oh; oy += 2) {
                        int64_t iy = oy * s - g->p + ki;
                        if (iy < 0 || iy >= g->h) continue;
                        const float *restrict src = row + oy * ow;
                        float *restrict dst = dx + (c * g->h + iy) * g->w + lo * s - g->p + kj;
                        if (s == 1)
                            add_row(dst, src + lo, hi - lo, wide);
                        else
                            for (int64_t ox = lo; ox < hi; ox++) dst[(ox - lo) * s] += src[ox];
                    }
            }
}

static CT_AVX512 void col2im_512(const conv_geom *g, const float *col, float *dx) {
    col2im_rows(g, col, dx, true);
}
static void col2im_add(const conv_geom *g, const float *col, float *dx) {
    if (ct_cpu_avx512())
        col2im_512(g, col, dx);
    else
        col2im_rows(g, col, dx, false);
}

/* Sum of n floats with 16 independent partial sums, so the loop vectorises (a single
 * running sum is one long dependency chain). */
static float sum_floats(const float *restrict v, int64_t n) {
    float acc[16] = {0};
    int64_t j = 0;
    for (; j + 16 <= n; j += 16)
        for (int l = 0; l < 16; l++) acc[l] += v[j + l];
    float s = 0;
    for (; j < n; j++) s += v[j];
    for (int l = 0; l < 16; l++) s += acc[l];
    return s;
}

static conv_geom geom_load(const ct_node *n) {
    return (conv_geom){.c = n->i[0], .h = n->i[1], .w = n->i[2], .kh = n->i[3], .kw = n->i[4],
                       .s = n->i[5], .p = n->i[6], .oh = n->out_shape[2], .ow = n->out_shape[3]};
}

static void geom_store(ct_node *n, const conv_geom *g) {
    int64_t v[] = {g->c, g->h, g->w, g->kh, g->kw, g->s, g->p};
    memcpy(n->i, v, sizeof v);
}

static void conv2d_backward(ct_node *n, const ct_tensor *gout) {
    conv_geom g = geom_load(n);
    int64_t batch = n->out_shape[0], o = n->out_shape[1];
    int64_t k = geom_k(&g), npix = geom_pix(&g), in_sz = g.c * g.h * g.w;
    ct_tensor *gx = ct_node_grad_in(n, 0), *gw = ct_node_grad_in(n, 1), *gb = ct_node_grad_in(n, 2);
    /* The forward saved x only if dW is needed and w only if dX is, in that order. */
    int slot = 0;
    const float *x = gw ? n->saved[slot++]->data : NULL;
    const float *w = gx ? n->saved[slot++]->data : NULL;

    col_scratch sc = {0};
    if (gw || gx) sc = scratch_new(&g);
    for (int64_t i = 0; i < batch; i++) {
        const float *go = gout->data + i * o * npix;
        if (gb) /* summed per sample, while gout[n] is in cache for the GEMMs below */
            for (int64_t c = 0; c < o; c++) gb->data[c] += sum_floats(go + c * npix, npix);
        if (gw) {
            const float *cols = sample_cols(&g, x + i * in_sz, &sc);
            ct_gemm(false, true, o, k, npix, 1, go, npix, cols, npix, 1, gw->data, k);
        }
        if (gx) {
            float *dx = gx->data + i * in_sz;
            if (!sc.col) { /* pointwise: dX[n] += W^T @ gout[n] directly */
                ct_gemm(true, false, k, npix, o, 1, w, k, go, npix, 1, dx, npix);
            } else {
                ct_gemm(true, false, k, npix, o, 1, w, k, go, npix, 0, sc.col, npix);
                col2im_add(&g, sc.col, dx);
            }
        }
    }
}

ct_tensor *ct_conv2d(ct_tensor *x, ct_tensor *w, ct_tensor *b, int stride, int padding) {
    ct__check_ndim("conv2d", x, 4, "[N, C, H, W]");
    CT_ASSERT(w->ndim == 4 && w->shape[1] == x->shape[1],
              "conv2d: weight %s ([O, C, kh, kw]) does not match input %s ([N, C, H, W])",
              CT_SHAPE_STR(w), CT_SHAPE_STR(x));
    CT_ASSERT(!b || (b->ndim == 1 && b->shape[0] == w->shape[0]),
              "conv2d: bias %s does not match weight %s", b ? CT_SHAPE_STR(b) : "",
              CT_SHAPE_STR(w));
    CT_ASSERT(stride >= 1 && padding >= 0, "conv2d: stride %d must be >= 1 and padding %d >= 0",
              stride, padding);
    conv_geom g = {.c = x->shape[1], .h = x->shape[2], .w = x->shape[3], .kh = w->shape[2],
                   .kw = w->shape[3], .s = stride, .p = padding};
    CT_ASSERT(g.kh >= 1 && g.kw >= 1 && g.kh <= g.h + 2 * g.p && g.kw <= g.w + 2 * g.p,
              "conv2d: kernel %lldx%lld of weight %s is larger than the padded input %s "
              "(padding %d)",
              (long long)g.kh, (long long)g.kw, CT_SHAPE_STR(w), CT_SHAPE_STR(x), padding);
    g.oh = (g.h + 2 * g.p - g.kh) / g.s + 1;
    g.ow = (g.w + 2 * g.p - g.kw) / g.s + 1;

    int64_t batch = x->shape[0], o = w->shape[0];
    int64_t k = geom_k(&g), npix = geom_pix(&g), in_sz = g.c * g.h * g.w;
    ct_tensor *y = ct_tensor_new(CT_SHAPE(batch, o, g.oh, g.ow));
    CT_SCOPE { /* the scratch goes back to the cache as soon as the loop is done */
        col_scratch sc = scratch_new(&g);
        for (int64_t i = 0; i < batch; i++) {
            float *yi = y->data + i * o * npix;
            const float *cols = sample_cols(&g, x->data + i * in_sz, &sc);
            /* Start from the broadcast bias and let sgemm accumulate onto it (beta = 1). */
            if (b)
                for (int64_t c = 0; c < o; c++)
                    for (int64_t j = 0; j < npix; j++) yi[c * npix + j] = b->data[c];
            ct_gemm(false, false, o, npix, k, 1, w->data, k, cols, npix, b ? 1 : 0, yi, npix);
        }
    }

    ct_node *n = CT_RECORD("conv2d", conv2d_backward, y, x, w, b);
    if (n) {
        geom_store(n, &g);
        /* Save only what a needed gradient uses: x for dW, w for dX (the order the
         * backward reads them in). db needs neither. */
        if (ct_node_needs(n, 1)) ct_save(n, x);
        if (ct_node_needs(n, 0)) ct_save(n, w);
    }
    return y;
}
