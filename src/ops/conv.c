/* 2-d convolution (cross-correlation, as PyTorch) by im2col + sgemm, one sample (or one
 * chunk of small images) at a time, with separate row/column stride and padding and
 * PyTorch's `groups`. Two other algorithms take the shapes they suit (ct_conv2d_set_algo):
 * a dense GEMM over the whole batch where every input pixel reaches every output pixel
 * (conv_dense.c: 2x2 and 1x1 planes), and Winograd for 3x3 / stride 1 / padding 1 with 16
 * or more channels (winograd.c). This file picks, and runs im2col for the rest.
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
 * Small images are the exception: a GEMM with OH*OW = 1..64 columns is a matrix-vector
 * product that reads the whole weight once per sample (ResNet's layer4 on 32x32 inputs:
 * 9.4 MB of weights for one column). So a chunk of samples shares one column matrix
 * [C*kh*kw, nb*OH*OW], sample j in columns [j*OH*OW, (j+1)*OH*OW), with nb chosen so a
 * chunk has about CHUNK_COLS columns; the output then goes through a [O, nb*OH*OW]
 * buffer and is copied to NCHW (and the upstream gradient gathered from it). Images of
 * CHUNK_COLS pixels or more (the CNN's) keep one sample per chunk and the direct path.
 *
 * Backward, per chunk and only for the gradients that are needed:
 *   dW += gout[chunk] @ col^T  (col recomputed from the saved x: saving x is 9x smaller)
 *   dX += col2im(W^T @ gout[chunk])
 *   db += sum over pixels of gout[n]
 * A 1x1 kernel with stride 1 and no padding needs no im2col for a one-sample chunk: col
 * is x[n] itself, and W^T @ gout[n] is accumulated straight into dX[n].
 *
 * Dead taps: on a small image a kernel row or column can fall in the zero padding for
 * every output (a 3x3/padding-1 conv on a 1x1 image uses only its centre: ResNet's layer4
 * on 32x32 inputs). im2col then leaves those taps out, so K shrinks (9x there), and the
 * GEMMs use the weight at the live taps (a copy; dW is computed there and added back into
 * the full gradient, whose dead taps get 0, as the definition says).
 *
 * Pixel classes: a tap can also be padding for some outputs only (on 2x2 planes every
 * output of a 3x3/padding-1 conv is a corner: 5/9 of its multiply-adds are padding). Along
 * each axis the outputs fall into runs with the same live taps (for 3x3/padding-1: the
 * first, the middle ones, the last); a class is a run of rows x a run of columns, and each
 * class gets its own column matrix [C*its taps, nb*its pixels] and GEMMs with its taps of
 * the weight, so no multiply reads padding; outputs go back to NCHW per class. Forward, dX
 * (W^T @ gout per class, col2im of its taps) and dW (per class, added in class order) use
 * the same classes. With several classes the rows are tap-major, (ki, kj, c), and so is a
 * copy of the weight, [O, kh, kw, C/groups]: a class's taps are then one block of a weight
 * row, or one per kernel row, used in place through the GEMMs' leading dimension. (Cutting
 * a weight copy per class, C/groups runs of 1-3 floats, cost as much as it saved.)
 *   The extra GEMMs (up to 17 per chunk for 3x3), their short rows and the per-class
 * copies cost more than they save unless the padding is a large share: CPU time of one
 * thread, batch 32, forward / backward, against one class on the same build, best of 8,
 * at load 7-8: 256 channels on 2x2 planes (5/9 padding) 1.24-1.31x / 1.09-1.27x faster;
 * 128 to 256 on 4x4, stride 2 (31%) 0.97x / 0.89-1.05x; 128 channels on 4x4 (31%)
 * 0.82-0.88x / 0.81-0.85x; 64 on 8x8 (16%) 0.82-0.85x / 0.75-0.77x. So classes are used where they cut 40% or more of the multiply-adds
 * (CT_PAD_SKIP_AUTO; ct_conv2d_set_pad_skip forces them on or off for tests): the larger
 * planes, the CNN's 28x28 and 14x14 ones among them, keep one class. Winograd keeps its
 * cases (3x3/padding 1/stride 1 with 16 or more channels, on 2x2 planes and more, which
 * measured faster than classes on 2x2: see winograd.c).
 *
 * Groups: im2col orders its rows (c, ki, kj) (or (ki, kj, c) within a group), so group gi's
 * rows are the contiguous block [gi*K, (gi+1)*K) with K = C/groups*kh*kw, and
 * w[O, C/groups, kh, kw] is already one [O/groups, K] matrix per group. Every GEMM above
 * becomes one GEMM per group on those blocks; im2col and col2im run once over all channels,
 * as without groups. */
#include "internal.h"
#include "../core/internal.h" /* the conv_epilogues counter */

#include <immintrin.h>
#include <string.h>

/* Output ranges along one axis and the kernel taps they use: outputs [o0, o1) all read the
 * input at taps [k0, k1) (o*s - p + i inside [0, n) for exactly those i). */
typedef struct {
    int64_t o0, o1, k0, k1;
} conv_span;

/* A class of output pixels: a rectangle of rows x columns whose pixels share the same live
 * taps, with the sizes and offsets of its blocks in the chunk's packed buffers. */
typedef struct {
    conv_span r, c;   /* output rows and columns, and their taps */
    int64_t k;        /* rows of one group's column matrix: C/groups x the class's taps */
    int64_t pix, cw;  /* pixels and columns per plane */
    int64_t poff;     /* sum of their pix (output buffer: o*nb*poff floats before) */
    int64_t coff;     /* sum of their k*pix (column matrices: groups*nb*coff floats before) */
} conv_cls;

#define MAX_SPANS 8 /* per axis; more (huge kernels) fall back to one class */
#define MAX_CLS (MAX_SPANS * MAX_SPANS)

typedef struct {
    int64_t c, h, w;   /* input channels (all groups) and size */
    int64_t kh, kw;    /* kernel */
    int64_t sh, sw;    /* stride along rows and columns */
    int64_t ph, pw;    /* padding of rows and columns */
    int64_t groups;
    int64_t oh, ow;    /* output size */
    int64_t ki0, ki1, kj0, kj1; /* taps any class uses: rows [ki0, ki1), columns [kj0, kj1) */
    int ncls;          /* pixel classes (1: the whole plane, with its live taps) */
    conv_cls cls[MAX_CLS];
} conv_geom;

/* The spans of one axis (kernel k, stride s, padding p, input n, output out) in sp,
 * returning how many. With split, one span per distinct set of live taps, each its own
 * class: the padding is then never multiplied. Without (or past MAX_SPANS), one span over
 * every output with the taps that are live for some output: the dead ones (only ever
 * padding: a 3x3/padding-1 conv on a 1x1 image uses only its centre) are left out, the
 * rest kept. A span with no live tap keeps one dead one, which reads zero padding, so the
 * GEMMs stay well formed. */
static int axis_spans(int64_t k, int64_t s, int64_t p, int64_t n, int64_t out, bool split,
                      conv_span *sp) {
    int cnt = 0;
    int64_t ulo = k, uhi = 0;
    for (int64_t o = 0; o < out; o++) {
        int64_t lo = p - o * s > 0 ? p - o * s : 0, hi = n + p - o * s < k ? n + p - o * s : k;
        if (lo < hi)
            ulo = lo < ulo ? lo : ulo, uhi = hi > uhi ? hi : uhi;
        else
            lo = 0, hi = 1;
        if (cnt && sp[cnt - 1].k0 == lo && sp[cnt - 1].k1 == hi)
            sp[cnt - 1].o1 = o + 1;
        else if (cnt < MAX_SPANS)
            sp[cnt++] = (conv_span){o, o + 1, lo, hi};
        else
            split = false;
    }
    if (split) return cnt;
    if (ulo >= uhi) ulo = 0, uhi = 1;
    sp[0] = (conv_span){0, out, ulo, uhi};
    return 1;
}

/* When pixel classes are used (ct_conv2d_set_pad_skip): by default where they cut the
 * multiply-adds to SKIP_KEEP or less of one class's (see the top comment). */
#define SKIP_KEEP 0.6
static ct_pad_skip skip_mode = CT_PAD_SKIP_AUTO;
ct_pad_skip ct_conv2d_set_pad_skip(ct_pad_skip mode) {
    ct_pad_skip old = skip_mode;
    skip_mode = mode;
    return old;
}

/* Fills in the classes once the output size is known: row spans x column spans. */
static void geom_split(conv_geom *g, bool split) {
    conv_span rs[MAX_SPANS], cs[MAX_SPANS];
    int nr = axis_spans(g->kh, g->sh, g->ph, g->h, g->oh, split, rs);
    int nc = axis_spans(g->kw, g->sw, g->pw, g->w, g->ow, split, cs);
    int64_t poff = 0, coff = 0;
    g->ncls = nr * nc;
    g->ki0 = g->kh, g->ki1 = 0, g->kj0 = g->kw, g->kj1 = 0;
    for (int i = 0; i < nr; i++) {
        g->ki0 = rs[i].k0 < g->ki0 ? rs[i].k0 : g->ki0;
        g->ki1 = rs[i].k1 > g->ki1 ? rs[i].k1 : g->ki1;
    }
    for (int i = 0; i < nc; i++) {
        g->kj0 = cs[i].k0 < g->kj0 ? cs[i].k0 : g->kj0;
        g->kj1 = cs[i].k1 > g->kj1 ? cs[i].k1 : g->kj1;
    }
    for (int q = 0; q < g->ncls; q++) {
        conv_cls *z = &g->cls[q];
        *z = (conv_cls){.r = rs[q / nc], .c = cs[q % nc], .poff = poff, .coff = coff};
        z->cw = z->c.o1 - z->c.o0;
        z->pix = (z->r.o1 - z->r.o0) * z->cw;
        z->k = g->c / g->groups * (z->r.k1 - z->r.k0) * (z->c.k1 - z->c.k0);
        poff += z->pix, coff += z->k * z->pix;
    }
}

/* Multiply-adds per output channel and sample (all groups' rows: x groups). */
static int64_t geom_macs(const conv_geom *g) {
    const conv_cls *z = &g->cls[g->ncls - 1];
    return z->coff + z->k * z->pix;
}

static void geom_classes(conv_geom *g) {
    geom_split(g, skip_mode != CT_PAD_SKIP_NEVER);
    if (skip_mode != CT_PAD_SKIP_AUTO || g->ncls == 1) return;
    int64_t split = geom_macs(g);
    geom_split(g, false);
    if ((double)split <= SKIP_KEEP * (double)geom_macs(g)) geom_split(g, true);
}
/* One output channel's weights at the used taps (see layout_weight). */
static int64_t geom_wrow(const conv_geom *g) {
    return (g->ki1 - g->ki0) * (g->kj1 - g->kj0) * (g->c / g->groups);
}

/* The GEMMs of class z take its taps in blocks that are contiguous in a tap-major weight
 * row: all its taps when it spans whole kernel rows (the interior, the top and bottom
 * edges of a 3x3/padding-1 conv), else one block per kernel row. Block b starts at *woff
 * in a weight row and at row *roff of the class's (one group's) column matrix, *kb long. */
static int64_t cls_blocks(const conv_geom *g, const conv_cls *z) {
    return z->c.k1 - z->c.k0 == g->kj1 - g->kj0 ? 1 : z->r.k1 - z->r.k0;
}
static void cls_block(const conv_geom *g, const conv_cls *z, int64_t b, int64_t *woff,
                      int64_t *roff, int64_t *kb) {
    int64_t cg = g->c / g->groups, nkj = z->c.k1 - z->c.k0, hw = g->kj1 - g->kj0;
    if (nkj == hw) {
        *woff = (z->r.k0 - g->ki0) * hw * cg, *roff = 0, *kb = z->k;
    } else {
        *woff = ((z->r.k0 - g->ki0 + b) * hw + z->c.k0 - g->kj0) * cg, *roff = b * nkj * cg;
        *kb = nkj * cg;
    }
}
static int64_t geom_pix(const conv_geom *g) { return g->oh * g->ow; }

/* Columns a chunk of samples aims for. Chunking at all is what matters on ResNet-18's
 * 32x32-input layers (1x1..8x8 outputs, batch 32, one thread): it takes their GEMMs from
 * matrix-vector to matrix-matrix speed. 128 to 1024 columns did about equally well there;
 * 256 keeps the scratch small and leaves the CNN's 14x14 and 28x28 layers unchunked. */
#define CHUNK_COLS 256
static int64_t chunk_samples(const conv_geom *g, int64_t batch) {
    int64_t nb = CHUNK_COLS / geom_pix(g);
    return nb < 1 ? 1 : nb > batch ? batch : nb;
}
/* A 1x1/stride-1/no-padding conv is a plain matrix product over channels. */
static bool geom_pointwise(const conv_geom *g) {
    return g->kh == 1 && g->kw == 1 && g->sh == 1 && g->sw == 1 && g->ph == 0 && g->pw == 0;
}

/* The output columns [lo, hi) whose input column ox*sw - pw + kj lies inside [0, w). */
static void valid_cols(const conv_geom *g, int64_t kj, int64_t *lo, int64_t *hi) {
    int64_t a = g->pw - kj, b = g->w - 1 + g->pw - kj, s = g->sw;
    if (s == 1) { /* the common case, without the divisions */
        *lo = a > 0 ? a : 0;
        *hi = b + 1;
    } else {
        *lo = a > 0 ? (a + s - 1) / s : 0;
        *hi = b < 0 ? 0 : b / s + 1;
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
/* dst[0..n) = src[0, 2, .., 2(n-1)]: the rows of a stride-2 convolution (ResNet's stem and
 * downsampling convolutions). Two loads and one permute per 16 floats; the loads are
 * masked so that nothing past src[2(n-1)] is read. */
static inline CT_AVX512 void copy_row16_s2(float *restrict dst, const float *restrict src, int64_t n) {
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    for (int64_t j = 0; j < n; j += 16) {
        int64_t m = n - j < 16 ? n - j : 16, need = 2 * m - 1; /* floats read: src[2j, 2j + need) */
        __mmask16 lo = (__mmask16)(need >= 16 ? 0xFFFF : (1u << need) - 1);
        __mmask16 hi = (__mmask16)(need > 16 ? (1u << (need - 16)) - 1 : 0);
        __m512 a = _mm512_maskz_loadu_ps(lo, src + 2 * j), b = _mm512_maskz_loadu_ps(hi, src + 2 * j + 16);
        _mm512_mask_storeu_ps(dst + j, (__mmask16)((1u << m) - 1), _mm512_permutex2var_ps(a, even, b));
    }
}
#define ALWAYS_INLINE static inline __attribute__((always_inline))
ALWAYS_INLINE void copy_row(float *restrict dst, const float *restrict src, int64_t n, bool wide) {
    if (wide)
        copy_row16(dst, src, n);
    else
        memcpy(dst, src, (size_t)n * sizeof(float));
}
ALWAYS_INLINE void add_row(float *restrict dst, const float *restrict src, int64_t n, bool wide) {
    if (wide)
        add_row16(dst, src, n);
    else
        for (int64_t j = 0; j < n; j++) dst[j] += src[j];
}

/* One sample's planes with a zero border: [C, H + 2ph, W + 2pw]. im2col then reads whole
 * rows without bounds checks. */
ALWAYS_INLINE void pad_planes_rows(const conv_geom *g, const float *restrict x, float *restrict xp,
                                   bool wide) {
    int64_t hp = g->h + 2 * g->ph, wp = g->w + 2 * g->pw;
    memset(xp, 0, (size_t)(g->c * hp * wp) * sizeof(float));
    for (int64_t c = 0; c < g->c; c++)
        for (int64_t y = 0; y < g->h; y++)
            copy_row(xp + (c * hp + y + g->ph) * wp + g->pw, x + (c * g->h + y) * g->w, g->w, wide);
}

/* col[(c, ki, kj), (oy, ox)] = xp[c, oy*sh + ki, ox*sw + kj] from the padded planes, for
 * class z's pixels and taps only, rows ld floats apart. The padded copy costs one pass
 * over x and halves the im2col time of a 3x3 conv compared with clipping every row
 * against the border. */
ALWAYS_INLINE void im2col_row(const conv_geom *g, const conv_cls *z, const float *restrict xp,
                              float *restrict dst, int64_t c, int64_t ki, int64_t kj, bool wide) {
    int64_t hp = g->h + 2 * g->ph, wp = g->w + 2 * g->pw, cw = z->cw, s = g->sw;
    for (int64_t oy = z->r.o0; oy < z->r.o1; oy++, dst += cw) {
        const float *restrict src = xp + (c * hp + oy * g->sh + ki) * wp + z->c.o0 * s + kj;
        if (s == 1)
            copy_row(dst, src, cw, wide);
        else if (s == 2 && wide && cw >= 8) /* shorter rows: the scalar copy is faster */
            copy_row16_s2(dst, src, cw);
        else
            for (int64_t ox = 0; ox < cw; ox++) dst[ox] = src[ox * s];
    }
}
/* The rows in order: (c, ki, kj) for one class, (ki, kj, c) within each group for several
 * (tap-major, see layout_weight). */
ALWAYS_INLINE void im2col_rows(const conv_geom *g, const conv_cls *z, const float *restrict xp,
                               float *restrict col, int64_t ld, bool wide) {
    int64_t cg = g->c / g->groups, r = 0;
    if (g->ncls == 1)
        for (int64_t c = 0; c < g->c; c++)
            for (int64_t ki = z->r.k0; ki < z->r.k1; ki++)
                for (int64_t kj = z->c.k0; kj < z->c.k1; kj++)
                    im2col_row(g, z, xp, col + r++ * ld, c, ki, kj, wide);
    else
        for (int64_t gi = 0; gi < g->groups; gi++)
            for (int64_t ki = z->r.k0; ki < z->r.k1; ki++)
                for (int64_t kj = z->c.k0; kj < z->c.k1; kj++)
                    for (int64_t c = gi * cg; c < (gi + 1) * cg; c++)
                        im2col_row(g, z, xp, col + r++ * ld, c, ki, kj, wide);
}

/* The row loops, compiled once for AVX-512 and once for any x86-64-v3 CPU (col2im too). */
static CT_AVX512 void pad_planes_512(const conv_geom *g, const float *x, float *xp) {
    pad_planes_rows(g, x, xp, true);
}
static CT_AVX512 void im2col_512(const conv_geom *g, const conv_cls *z, const float *xp,
                                 float *col, int64_t ld) {
    im2col_rows(g, z, xp, col, ld, true);
}
static void pad_planes(const conv_geom *g, const float *x, float *xp) {
    if (ct_cpu_avx512())
        pad_planes_512(g, x, xp);
    else
        pad_planes_rows(g, x, xp, false);
}
static void im2col(const conv_geom *g, const conv_cls *z, const float *xp, float *col, int64_t ld) {
    if (ct_cpu_avx512())
        im2col_512(g, z, xp, col, ld);
    else
        im2col_rows(g, z, xp, col, ld, false);
}

/* Scratch for one chunk, from the caching allocator (no malloc in a steady-state step)
 * and released with the enclosing scope. The chunk's buffers hold one block per class, in
 * class order: its column matrix [groups*k, nb*pix] (sample j in columns [j*pix,
 * (j+1)*pix)) and its outputs or upstream gradient [O, nb*pix]. */
typedef struct {
    int64_t nb;  /* samples per chunk */
    float *xp;   /* one sample's padded planes (NULL: no padding) */
    float *col;  /* the chunk's column matrices (NULL: a one-sample pointwise chunk) */
    float *buf;  /* outputs or upstream gradient (NULL: one sample, one class: NCHW itself) */
} col_scratch;

static col_scratch scratch_new(const conv_geom *g, int64_t batch, int64_t o) {
    col_scratch sc = {.nb = chunk_samples(g, batch)};
    if (sc.nb > 1 || g->ncls > 1) sc.buf = ct_tensor_new(CT_SHAPE(o, sc.nb * geom_pix(g)))->data;
    if (geom_pointwise(g) && sc.nb == 1) return sc; /* x[n] is its own column matrix */
    int64_t padded = g->c * (g->h + 2 * g->ph) * (g->w + 2 * g->pw);
    if (g->ph > 0 || g->pw > 0) sc.xp = ct_tensor_new(CT_SHAPE(padded))->data;
    sc.col = ct_tensor_new(CT_SHAPE(g->groups * geom_macs(g), sc.nb))->data;
    return sc;
}

/* Where class z's column matrix and its outputs start in a chunk of nb samples (both
 * with rows ld = nb*pix). */
static int64_t cls_col(const conv_geom *g, const conv_cls *z, int64_t nb) {
    return g->groups * nb * z->coff;
}
static int64_t cls_buf(const conv_cls *z, int64_t o, int64_t nb) { return o * nb * z->poff; }

/* The column matrices of every class (see col_scratch) of the nb samples x [nb, C, H, W]. */
static const float *chunk_cols(const conv_geom *g, const float *x, int64_t nb,
                               const col_scratch *sc) {
    if (!sc->col) return x;
    for (int64_t j = 0; j < nb; j++) {
        const float *xj = x + j * g->c * g->h * g->w;
        if (sc->xp) {
            pad_planes(g, xj, sc->xp);
            xj = sc->xp;
        }
        for (int q = 0; q < g->ncls; q++) {
            const conv_cls *z = &g->cls[q];
            im2col(g, z, xj, sc->col + cls_col(g, z, nb) + j * z->pix, nb * z->pix);
        }
    }
    return sc->col;
}

/* Between NCHW planes t[nb, O, OH, OW] and the chunk's class blocks buf: from t into buf
 * (from_nchw) or back. A class spanning whole rows moves as one run per plane. */
static void chunk_move(const conv_geom *g, int64_t nb, int64_t o, const float *src, float *dst,
                       bool from_nchw) {
    int64_t npix = geom_pix(g);
    for (int q = 0; q < g->ncls; q++) {
        const conv_cls *z = &g->cls[q];
        int64_t ld = nb * z->pix, base = cls_buf(z, o, nb);
        bool whole = z->cw == g->ow;
        int64_t len = whole ? z->pix : z->cw, rows = whole ? 1 : z->r.o1 - z->r.o0;
        for (int64_t j = 0; j < nb; j++)
            for (int64_t c = 0; c < o; c++)
                for (int64_t y = 0; y < rows; y++) {
                    int64_t a = base + c * ld + j * z->pix + y * z->cw;
                    int64_t b = (j * o + c) * npix + (z->r.o0 + y) * g->ow + z->c.o0;
                    memcpy(dst + (from_nchw ? a : b), src + (from_nchw ? b : a),
                           (size_t)len * sizeof(float));
                }
    }
}

/* The adjoint of im2col (class z, col rows ld apart): dx[c, iy, ix] += every col entry
 * that was copied from it, skipping the entries that came from the zero border. Within
 * one (c, ki, kj) every dx pixel gets at most one entry, so the row order is free: even
 * rows first, then odd ones. Adjacent rows are closer than one vector apart, and the CPU
 * makes the masked load of a row wait for the masked store of the row before it; two rows
 * apart that false dependency is gone and col2im runs twice as fast. */
ALWAYS_INLINE void col2im_row(const conv_geom *g, const conv_cls *z, const float *restrict row,
                              float *restrict dx, int64_t c, int64_t ki, int64_t kj, bool wide) {
    int64_t cw = z->cw, s = g->sw, lo, hi;
    valid_cols(g, kj, &lo, &hi);
    lo = lo > z->c.o0 ? lo : z->c.o0;
    hi = hi < z->c.o1 ? hi : z->c.o1;
    if (hi <= lo) return;
    for (int64_t first = 0; first < 2; first++)
        for (int64_t oy = z->r.o0 + first; oy < z->r.o1; oy += 2) {
            int64_t iy = oy * g->sh - g->ph + ki;
            if (iy < 0 || iy >= g->h) continue;
            const float *restrict src = row + (oy - z->r.o0) * cw + lo - z->c.o0;
            float *restrict dst = dx + (c * g->h + iy) * g->w + lo * s - g->pw + kj;
            if (s == 1)
                add_row(dst, src, hi - lo, wide);
            else
                for (int64_t j = 0; j < hi - lo; j++) dst[j * s] += src[j];
        }
}
ALWAYS_INLINE void col2im_rows(const conv_geom *g, const conv_cls *z, const float *restrict col,
                               int64_t ld, float *restrict dx, bool wide) {
    int64_t cg = g->c / g->groups, r = 0;
    if (g->ncls == 1)
        for (int64_t c = 0; c < g->c; c++)
            for (int64_t ki = z->r.k0; ki < z->r.k1; ki++)
                for (int64_t kj = z->c.k0; kj < z->c.k1; kj++)
                    col2im_row(g, z, col + r++ * ld, dx, c, ki, kj, wide);
    else
        for (int64_t gi = 0; gi < g->groups; gi++)
            for (int64_t ki = z->r.k0; ki < z->r.k1; ki++)
                for (int64_t kj = z->c.k0; kj < z->c.k1; kj++)
                    for (int64_t c = gi * cg; c < (gi + 1) * cg; c++)
                        col2im_row(g, z, col + r++ * ld, dx, c, ki, kj, wide);
}

static CT_AVX512 void col2im_512(const conv_geom *g, const conv_cls *z, const float *col,
                                 int64_t ld, float *dx) {
    col2im_rows(g, z, col, ld, dx, true);
}
static void col2im_add(const conv_geom *g, const conv_cls *z, const float *col, int64_t ld,
                       float *dx) {
    if (ct_cpu_avx512())
        col2im_512(g, z, col, ld, dx);
    else
        col2im_rows(g, z, col, ld, dx, false);
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

/* The weight as the GEMMs read it, at the used taps only (dead ones, e.g. all but the
 * centre of a 3x3/padding-1 conv on a 1x1 image, are left out): one class, [O, C/groups,
 * ki1-ki0, kj1-kj0], w itself when every tap is used; several, tap-major [O, ki1-ki0,
 * kj1-kj0, C/groups] like their column matrices' rows, so every class's taps are one or a
 * few contiguous blocks of a weight row (cls_block), used in place by the GEMMs through
 * their leading dimension. (Cutting a weight per class instead, C/groups runs of 1-3 taps
 * each, cost as much as the GEMMs it saved on 2x2 planes; the tap-major copy, used for one
 * class too, made a plane's one GEMM 5-10% slower on 4x4 to 8x8 planes.) A new tensor in the
 * current scope unless w. */
static bool weight_copied(const conv_geom *g) {
    bool all = g->ki1 - g->ki0 == g->kh && g->kj1 - g->kj0 == g->kw;
    return !all || (g->ncls > 1 && g->kh * g->kw > 1 && g->c / g->groups > 1);
}
/* Copies between w [O, C/groups, kh, kw] and the laid-out wt at the used taps: to wt, or
 * back (dw += dwt) with add. */
static void layout_copy(const conv_geom *g, int64_t o, const float *src, float *dst, bool add) {
    int64_t cg = g->c / g->groups, wr = geom_wrow(g), nt = wr / cg, t = g->kh * g->kw;
    int64_t hw = g->kj1 - g->kj0, si = g->ncls > 1 ? cg : 1, sc = g->ncls > 1 ? 1 : nt;
    CT_PAR_FOR(o * wr)
    for (int64_t oc = 0; oc < o; oc++)
        for (int64_t i = 0; i < nt; i++) {
            int64_t a = oc * wr + i * si;
            int64_t b = oc * cg * t + (g->ki0 + i / hw) * g->kw + g->kj0 + i % hw;
            if (add)
                for (int64_t c = 0; c < cg; c++) dst[b + c * t] += src[a + c * sc];
            else
                for (int64_t c = 0; c < cg; c++) dst[a + c * sc] = src[b + c * t];
        }
}
static const float *layout_weight(const conv_geom *g, int64_t o, const float *w) {
    if (!weight_copied(g)) return w;
    float *wt = ct_tensor_new(CT_SHAPE(o * geom_wrow(g)))->data;
    layout_copy(g, o, w, wt, false);
    return wt;
}

/* The adjoint of layout_weight: dw [O, C/groups, kh, kw] += dwt at the used taps. */
static void unlayout_add(const conv_geom *g, int64_t o, const float *dwt, float *dw) {
    layout_copy(g, o, dwt, dw, true);
}

/* The geometry travels in the node's i[] as int32s (it has more fields than i[] has
 * slots); the forward checks every field fits. */
typedef struct {
    int32_t c, h, w, kh, kw, sh, sw, ph, pw, groups;
} conv_packed;
_Static_assert(sizeof(conv_packed) <= sizeof(((ct_node *)0)->i), "conv geometry must fit in i[]");

static conv_geom geom_load(const ct_node *n) {
    conv_packed p;
    memcpy(&p, n->i, sizeof p);
    conv_geom g = {.c = p.c, .h = p.h, .w = p.w, .kh = p.kh, .kw = p.kw, .sh = p.sh,
                   .sw = p.sw, .ph = p.ph, .pw = p.pw, .groups = p.groups,
                   .oh = n->out_shape[2], .ow = n->out_shape[3]};
    geom_classes(&g);
    return g;
}

static void geom_store(ct_node *n, const conv_geom *g) {
    conv_packed p = {(int32_t)g->c, (int32_t)g->h, (int32_t)g->w, (int32_t)g->kh,
                     (int32_t)g->kw, (int32_t)g->sh, (int32_t)g->sw, (int32_t)g->ph,
                     (int32_t)g->pw, (int32_t)g->groups};
    memcpy(n->i, &p, sizeof p);
}

/* Threads: chunks are independent except for dW, so the forward runs its chunks in
 * parallel, and the backward runs parts of consecutive chunks in parallel, each part
 * summing its own partial dW; the partials are then added in part order. The number of
 * parts depends only on the shapes, never on the thread count, so the bits do not either.
 * Each worker has its own scratch, allocated up front on the calling thread, and runs its
 * GEMMs whole on its own thread; with a single part (or chunk) the GEMMs are split into
 * blocks across the threads instead (ct_gemm). */
typedef void gemm_fn(bool, bool, int64_t, int64_t, int64_t, float, const float *, int64_t,
                     const float *, int64_t, float, float *, int64_t);
#define MAX_TEAM CT__MAX_TEAM
#define DW_PARTS 8                /* enough to keep 8 threads busy on a batch of chunks */
#define DW_PART_BYTES (32 << 20)  /* partials beyond this go serial (huge dW, few chunks) */
int64_t ct__conv_parts(int64_t nchunks, int64_t dw_numel) {
    int64_t p = nchunks < DW_PARTS ? nchunks : DW_PARTS;
    int64_t cap = DW_PART_BYTES / (dw_numel * (int64_t)sizeof(float));
    return p > cap ? (cap < 1 ? 1 : cap) : p;
}
#define dw_parts ct__conv_parts

/* Threads for `tasks` independent tasks of `work` elements in all. */
int ct__conv_team(int64_t tasks, int64_t work) {
    int64_t t = work < CT_PAR_MIN ? 1 : ct_get_threads();
    t = t < tasks ? t : tasks;
    return (int)(t < 1 ? 1 : t > MAX_TEAM ? MAX_TEAM : t);
}
#define team_size ct__conv_team

/* The algorithm (ct_conv2d_set_algo): the dense GEMM where it applies (conv_dense.c),
 * else Winograd for the 3x3 / stride 1 / padding 1 convolutions with enough channels (see
 * winograd.c), else im2col. */
static ct_conv_algo algo = CT_CONV_AUTO;
ct_conv_algo ct_conv2d_set_algo(ct_conv_algo a) {
    ct_conv_algo old = algo;
    algo = a;
    return old;
}
static ct__conv_shape geom_shape(const conv_geom *g, int64_t o) {
    return (ct__conv_shape){g->c, g->h, g->w, o, g->oh, g->ow, g->kh, g->kw,
                            g->sh, g->sw, g->ph, g->pw, g->groups};
}
/* The algorithm this shape and batch run, forward and backward alike: DENSE, WINOGRAD or
 * IM2COL (the setting's choice where it applies, else im2col). */
static ct_conv_algo pick_algo(const conv_geom *g, int64_t o, int64_t batch) {
    ct__conv_shape s = geom_shape(g, o);
    bool dense = ct__dense_applies(&s, batch);
    bool wino = g->kh == 3 && g->kw == 3 && g->sh == 1 && g->sw == 1 && g->ph == 1 &&
                g->pw == 1 && g->groups == 1 && ct__wino_applies(g->c, o, g->h, g->w);
    if (dense && (algo == CT_CONV_AUTO || algo == CT_CONV_DENSE)) return CT_CONV_DENSE;
    if (wino && (algo == CT_CONV_AUTO || algo == CT_CONV_WINOGRAD)) return CT_CONV_WINOGRAD;
    return CT_CONV_IM2COL;
}

/* A chunk's class GEMMs on one chunk (gemm == ct_gemm: no parallel chunks) would each
 * open a parallel region (ct_gemm) for a small product; they run instead in one region,
 * split into tasks that write disjoint outputs: the forward and dW by blocks of ROW_BLOCK
 * output channels (every class's GEMMs for those rows, in class order), dX by class
 * block. Block sizes are shape-only, so the bits do not depend on the thread count. Under
 * load, one region per GEMM made ResNet's 2x2 layers several times slower on 2 threads. */
#define ROW_BLOCK 64
static bool cls_parallel(const conv_geom *g, gemm_fn *gemm) {
    return gemm == ct_gemm && g->ncls > 1;
}

/* Output channels [r0, r0 + m) of a chunk's class GEMMs, in class, group and tap-block order,
 * the same for the forward and for dW so that both split their rows alike:
 *   forward (!dw): c = out_q += a[rows, taps] @ col_q, with a = wt, from zero for a class's
 *                  first block unless onto (the bias is already there);
 *   dW (dw):       c = dwt[rows, taps] += a_q @ col_q^T, with a = the upstream gradient.
 * a_q / out_q: the class's part of the chunk's per-class buffer (cls_buf). */
static void row_block_gemms(const conv_geom *g, bool dw, int64_t nb, int64_t o, int64_t r0,
                            int64_t m, gemm_fn *gm, const float *a, const float *cols, float *c,
                            bool onto) {
    int64_t og = o / g->groups, wr = geom_wrow(g);
    for (int q = 0; q < g->ncls; q++) {
        const conv_cls *z = &g->cls[q];
        int64_t k = z->k, ld = nb * z->pix;
        const float *cq = cols + cls_col(g, z, nb);
        for (int64_t gi = 0; gi < g->groups; gi++)
            for (int64_t bl = 0; bl < cls_blocks(g, z); bl++) {
                int64_t woff, roff, kb;
                cls_block(g, z, bl, &woff, &roff, &kb);
                int64_t w_at = (gi * og + r0) * wr + woff, b_at = cls_buf(z, o, nb) + (gi * og + r0) * ld;
                const float *col = cq + (gi * k + roff) * ld;
                if (dw)
                    gm(false, true, m, kb, ld, 1, a + b_at, ld, col, ld, 1, c + w_at, wr);
                else
                    gm(false, false, m, ld, kb, 1, a + w_at, wr, col, ld, onto || bl ? 1 : 0, c + b_at, ld);
            }
    }
}

/* One plane of the epilogue, inlined once per (residual, relu) pair so that each loop is
 * branch-free and vectorises. The operations run in batch_norm's, add's and relu's order,
 * so the bits are theirs. */
static inline __attribute__((always_inline)) void post_loop(float *restrict y,
                                                            const float *restrict res, float a,
                                                            float b, bool with_res, bool relu,
                                                            int64_t hw) {
    for (int64_t k = 0; k < hw; k++) {
        float t = a * y[k] + b;
        if (with_res) t = t + res[k];
        if (relu) t = t < 0 ? 0.0f : t; /* as relu_fwd: NaN stays NaN */
        y[k] = t;
    }
}
static void post_plane(float *y, const float *res, float a, float b, bool relu, int64_t hw) {
    if (res && relu) post_loop(y, res, a, b, true, true, hw);
    else if (res) post_loop(y, res, a, b, true, false, hw);
    else if (relu) post_loop(y, NULL, a, b, false, true, hw);
    else post_loop(y, NULL, a, b, false, false, hw);
}

/* The epilogue on one sample's planes (internal.h). winograd.c applies it in its lanes. */
void ct__conv_sample_post(float *y, const float *res, int64_t o, int64_t hw,
                          const ct_conv2d_post *p) {
    for (int64_t l = 0; l < o; l++)
        post_plane(y + l * hw, res ? res + l * hw : NULL, p->scale ? p->scale[l] : 1.0f,
                   p->shift ? p->shift[l] : 0.0f, p->relu, hw);
}

/* The forward of chunk ci (samples [ci*sc->nb, ...)) into y: per class and group,
 * out = W (the class's taps of wt) @ col, then to NCHW, then the epilogue if any. */
static void forward_chunk(const conv_geom *g, int64_t ci, int64_t batch, int64_t o,
                          const float *x, const float *wt, const float *bias,
                          const ct_conv2d_post *post, const col_scratch *sc, gemm_fn *gemm,
                          float *y) {
    int64_t og = o / g->groups, npix = geom_pix(g), in_sz = g->c * g->h * g->w;
    int64_t i0 = ci * sc->nb, nb = batch - i0 < sc->nb ? batch - i0 : sc->nb;
    float *out = sc->buf ? sc->buf : y + i0 * o * npix;
    const float *cols = chunk_cols(g, x + i0 * in_sz, nb, sc);
    /* Start from the broadcast bias and let sgemm accumulate onto it (beta = 1). */
    for (int q = 0; bias && q < g->ncls; q++) {
        int64_t ld = nb * g->cls[q].pix;
        float *oq = out + cls_buf(&g->cls[q], o, nb);
        for (int64_t c = 0; c < o; c++)
            for (int64_t j = 0; j < ld; j++) oq[c * ld + j] = bias[c];
    }
    bool par = cls_parallel(g, gemm);
    int64_t bs = par ? ROW_BLOCK : og, nrb = (og + bs - 1) / bs;
    gemm_fn *gm = par ? ct_gemm_serial : gemm;
#pragma omp parallel for schedule(static) if (par && nrb > 1)
    for (int64_t rb = 0; rb < nrb; rb++) {
        int64_t r0 = rb * bs, m = og - r0 < bs ? og - r0 : bs;
        row_block_gemms(g, false, nb, o, r0, m, gm, wt, cols, out, bias != NULL);
    }
    if (sc->buf) chunk_move(g, nb, o, sc->buf, y + i0 * o * npix, false);
    const float *res = post && post->residual ? post->residual->data : NULL;
    for (int64_t j = i0; post && j < i0 + nb; j++)
        ct__conv_sample_post(y + j * o * npix, res ? res + j * o * npix : NULL, o, npix, post);
}

/* The backward of chunk ci (samples [ci*sc->nb, ...)): dW (laid out as wt, added onto
 * dwt) and dX (from wt) for the gradients asked for (dwt / gx non-NULL), class by class. */
static void backward_chunk(const conv_geom *g, int64_t ci, int64_t batch, int64_t o,
                           const float *gout, const float *x, const float *wt,
                           const col_scratch *sc, gemm_fn *gemm, float *dwt, float *gx) {
    int64_t og = o / g->groups, npix = geom_pix(g), in_sz = g->c * g->h * g->w, wr = geom_wrow(g);
    int64_t i0 = ci * sc->nb, nb = batch - i0 < sc->nb ? batch - i0 : sc->nb;
    bool par = cls_parallel(g, gemm);
    gemm_fn *gm = par ? ct_gemm_serial : gemm;
    const float *go = gout + i0 * o * npix;
    if (sc->buf) {
        chunk_move(g, nb, o, go, sc->buf, true);
        go = sc->buf;
    }
    if (dwt) {
        const float *cols = chunk_cols(g, x + i0 * in_sz, nb, sc);
        int64_t bs = par ? ROW_BLOCK : og, nrb = (og + bs - 1) / bs;
#pragma omp parallel for schedule(static) if (par && nrb > 1)
        for (int64_t rb = 0; rb < nrb; rb++) {
            int64_t r0 = rb * bs, m = og - r0 < bs ? og - r0 : bs;
            row_block_gemms(g, true, nb, o, r0, m, gm, go, cols, dwt, true);
        }
    }
    if (gx) {
        /* one-sample pointwise: dX[n] += W^T @ gout[n] directly; else via col, col2im */
        float *dx = gx + i0 * in_sz, *dst = sc->col ? sc->col : dx;
        int64_t ntask = 0;
        for (int q = 0; q < g->ncls; q++) ntask += g->groups * cls_blocks(g, &g->cls[q]);
#pragma omp parallel for schedule(static) if (par && ntask > 1)
        for (int64_t t = 0; t < ntask; t++) {
            int q = 0;
            int64_t u = t;
            while (u >= g->groups * cls_blocks(g, &g->cls[q]))
                u -= g->groups * cls_blocks(g, &g->cls[q++]);
            const conv_cls *z = &g->cls[q];
            int64_t k = z->k, ld = nb * z->pix, gi = u / cls_blocks(g, z), woff, roff, kb;
            cls_block(g, z, u % cls_blocks(g, z), &woff, &roff, &kb);
            gm(true, false, kb, ld, og, 1, wt + gi * og * wr + woff, wr,
               go + cls_buf(z, o, nb) + gi * og * ld, ld, sc->col ? 0 : 1,
               dst + cls_col(g, z, nb) + (gi * k + roff) * ld, ld);
        }
        for (int q = 0; sc->col && q < g->ncls; q++)
            for (int64_t j = 0; j < nb; j++)
                col2im_add(g, &g->cls[q], sc->col + cls_col(g, &g->cls[q], nb) + j * g->cls[q].pix,
                           nb * g->cls[q].pix, dx + j * in_sz);
    }
}

/* dW and dX (for gw / gx non-NULL) by im2col + sgemm in geometry g, in chunks. */
static void backward_im2col(const conv_geom *g, int64_t batch, int64_t o, const float *gout,
                            const float *x, const float *w, ct_tensor *gw, ct_tensor *gx) {
    int64_t k = geom_wrow(g);
    int64_t nbs = chunk_samples(g, batch), nchunks = (batch + nbs - 1) / nbs;
    /* dX from the weight laid out for the GEMMs; dW summed in that layout (from zero: the
     * classes' blocks overlap), then added into the gradient (in place when it is w's) */
    if (gx) w = layout_weight(g, o, w);
    float *dw = gw ? gw->data : NULL;
    bool copied = gw && weight_copied(g);
    if (copied) dw = ct_zeros(CT_SHAPE(o * k))->data;
    int64_t parts = gw ? dw_parts(nchunks, o * k) : nchunks;
    float *part = gw && parts > 1 ? ct_zeros(CT_SHAPE(parts, o * k))->data : NULL;
    int nt = team_size(parts, batch * o * geom_macs(g) * g->groups);
    col_scratch sc[MAX_TEAM];
    for (int t = 0; t < nt; t++) sc[t] = scratch_new(g, batch, o);
    gemm_fn *gemm = parts > 1 ? ct_gemm_serial : ct_gemm;
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t p = 0; p < parts; p++) {
        const col_scratch *s = &sc[ct_thread_id()];
        float *dwp = part ? part + p * o * k : dw;
        for (int64_t ci = p * nchunks / parts; ci < (p + 1) * nchunks / parts; ci++)
            backward_chunk(g, ci, batch, o, gout, x, w, s, gemm, gw ? dwp : NULL,
                           gx ? gx->data : NULL);
    }
    for (int64_t p = 0; part && p < parts; p++) { /* in part order, one contiguous pass each */
        const float *src = part + p * o * k;
        CT_PAR_FOR(o * k)
        for (int64_t i = 0; i < o * k; i++) dw[i] += src[i];
    }
    if (copied) unlayout_add(g, o, dw, gw->data);
}

static void conv2d_backward(ct_node *n, const ct_tensor *gout) {
    conv_geom g = geom_load(n);
    int64_t batch = n->out_shape[0], o = n->out_shape[1];
    int64_t npix = geom_pix(&g);
    ct_tensor *gx = ct_node_grad_in(n, 0), *gw = ct_node_grad_in(n, 1), *gb = ct_node_grad_in(n, 2);
    /* The forward saved x only if dW is needed and w only if dX is, in that order. */
    int slot = 0;
    const float *x = gw ? n->saved[slot++]->data : NULL;
    const float *w = gx ? n->saved[slot++]->data : NULL;

    if (gb) { /* plane sums in parallel, added in sample order */
        float *ps = ct_tensor_new(CT_SHAPE(batch * o))->data;
        CT_PAR_FOR(batch * o * npix)
        for (int64_t j = 0; j < batch * o; j++) ps[j] = sum_floats(gout->data + j * npix, npix);
        for (int64_t j = 0; j < batch * o; j++) gb->data[j % o] += ps[j];
    }
    if (!gw && !gx) return;
    ct_conv_algo run = pick_algo(&g, o, batch);
    if (run == CT_CONV_DENSE) {
        ct__conv_shape s = geom_shape(&g, o);
        ct__dense_backward(&s, batch, gout->data, x, w, gw ? gw->data : NULL, gx ? gx->data : NULL);
        return;
    }
    if (run == CT_CONV_WINOGRAD) { /* dX and dW by Winograd (see winograd.c) */
        if (gx) ct__wino_conv(gout->data, batch, o, g.c, g.h, g.w, w, true, NULL, NULL, gx->data, true, false);
        if (gw) ct__wino_dw(x, gout->data, batch, g.c, o, g.h, g.w, gw->data);
        return;
    }
    if (gw || gx) backward_im2col(&g, batch, o, gout->data, x, w, gw, gx);
}

ct_tensor *ct_conv2d_ex(ct_tensor *x, ct_tensor *w, ct_tensor *b, const ct_conv2d_opts *opts) {
    ct_conv2d_opts d = {0};
    const ct_conv2d_opts *a = opts ? opts : &d;
    conv_geom g = {.sh = a->stride_h ? a->stride_h : 1, .sw = a->stride_w ? a->stride_w : 1,
                   .ph = a->pad_h, .pw = a->pad_w, .groups = a->groups ? a->groups : 1};
    ct__check_ndim("conv2d", x, 4, "[N, C, H, W]");
    CT_ASSERT(g.sh >= 1 && g.sw >= 1 && g.ph >= 0 && g.pw >= 0 && g.groups >= 1,
              "conv2d: stride %lldx%lld must be >= 1, padding %lldx%lld >= 0 and groups %lld "
              ">= 1",
              (long long)g.sh, (long long)g.sw, (long long)g.ph, (long long)g.pw,
              (long long)g.groups);
    CT_ASSERT(x->shape[1] % g.groups == 0 && w->ndim == 4 && w->shape[0] % g.groups == 0 &&
                  w->shape[1] * g.groups == x->shape[1],
              "conv2d: weight %s ([O, C/groups, kh, kw], groups %lld) does not match input %s "
              "([N, C, H, W])",
              CT_SHAPE_STR(w), (long long)g.groups, CT_SHAPE_STR(x));
    CT_ASSERT(!b || (b->ndim == 1 && b->shape[0] == w->shape[0]),
              "conv2d: bias %s does not match weight %s", b ? CT_SHAPE_STR(b) : "",
              CT_SHAPE_STR(w));
    g.c = x->shape[1], g.h = x->shape[2], g.w = x->shape[3], g.kh = w->shape[2], g.kw = w->shape[3];
    CT_ASSERT(g.kh >= 1 && g.kw >= 1 && g.kh <= g.h + 2 * g.ph && g.kw <= g.w + 2 * g.pw,
              "conv2d: kernel %lldx%lld of weight %s is larger than the padded input %s "
              "(padding %lldx%lld)",
              (long long)g.kh, (long long)g.kw, CT_SHAPE_STR(w), CT_SHAPE_STR(x),
              (long long)g.ph, (long long)g.pw);
    CT_ASSERT(g.c <= INT32_MAX && g.h + 2 * g.ph <= INT32_MAX && g.w + 2 * g.pw <= INT32_MAX &&
                  g.sh <= INT32_MAX && g.sw <= INT32_MAX,
              "conv2d: input %s or its geometry is too large", CT_SHAPE_STR(x));
    g.oh = (g.h + 2 * g.ph - g.kh) / g.sh + 1;
    g.ow = (g.w + 2 * g.pw - g.kw) / g.sw + 1;
    geom_classes(&g);

    int64_t batch = x->shape[0], o = w->shape[0];
    const ct_conv2d_post *post = a->post;
    /* whether a gradient will flow through y (Winograd's F(4x4) only runs where none does) */
    bool graph = ct_is_grad_enabled() &&
                 (ct_requires_grad(x) || ct_requires_grad(w) || (b && ct_requires_grad(b)));
    if (post) {
        const ct_tensor *r = post->residual;
        CT_ASSERT(!graph && !(ct_is_grad_enabled() && r && ct_requires_grad(r)),
                  "conv2d: an epilogue (post) records no graph, but a gradient is needed");
        CT_ASSERT(!r || (r->ndim == 4 && r->shape[0] == batch && r->shape[1] == o &&
                         r->shape[2] == g.oh && r->shape[3] == g.ow),
                  "conv2d: residual %s does not match the output [%lld, %lld, %lld, %lld]",
                  r ? CT_SHAPE_STR(r) : "", (long long)batch, (long long)o, (long long)g.oh,
                  (long long)g.ow);
        CT_STAT_ADD(conv_epilogues, 1);
    }
    ct_tensor *y = ct_tensor_new(CT_SHAPE(batch, o, g.oh, g.ow));
    ct__conv_shape shape = geom_shape(&g, o);
    ct_conv_algo run = pick_algo(&g, o, batch);
    if (run == CT_CONV_DENSE)
        ct__dense_forward(&shape, batch, x->data, w->data, b ? b->data : NULL, post, y->data);
    else if (run == CT_CONV_WINOGRAD)
        ct__wino_conv(x->data, batch, g.c, o, g.h, g.w, w->data, false, b ? b->data : NULL, post,
                      y->data, false, !graph);
    else CT_SCOPE { /* the scratch goes back to the cache as soon as the loop is done */
        int64_t nbs = chunk_samples(&g, batch), nchunks = (batch + nbs - 1) / nbs;
        int nt = team_size(nchunks, batch * o * geom_macs(&g) * g.groups);
        col_scratch sc[MAX_TEAM];
        for (int t = 0; t < nt; t++) sc[t] = scratch_new(&g, batch, o);
        const float *wt = layout_weight(&g, o, w->data);
        gemm_fn *gemm = nchunks > 1 ? ct_gemm_serial : ct_gemm;
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
        for (int64_t ci = 0; ci < nchunks; ci++)
            forward_chunk(&g, ci, batch, o, x->data, wt, b ? b->data : NULL, post,
                          &sc[ct_thread_id()], gemm, y->data);
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

ct_tensor *ct_conv2d(ct_tensor *x, ct_tensor *w, ct_tensor *b, int stride, int padding) {
    CT_ASSERT(stride >= 1 && padding >= 0, "conv2d: stride %d must be >= 1 and padding %d >= 0",
              stride, padding);
    ct_conv2d_opts o = {.stride_h = stride, .stride_w = stride, .pad_h = padding, .pad_w = padding,
                        .groups = 1};
    return ct_conv2d_ex(x, w, b, &o);
}
