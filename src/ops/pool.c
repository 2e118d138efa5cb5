/* 2-d max, average and adaptive average pooling over [N, C, H, W], PyTorch semantics with
 * ceil_mode=False.
 * Max pool treats padding as -inf and routes the gradient to the argmax of each window
 * (the first maximum, or a NaN, as PyTorch's CPU kernel does); the argmax indices live in
 * the node's aux scratch, written only when a node is recorded. Average pool divides by
 * kernel^2 including padded zeros (count_include_pad=True, PyTorch's default). Adaptive
 * average pool uses PyTorch's windows: output cell o of n covers input cells
 * [floor(o*in/n), ceil((o+1)*in/n)), so neighbouring windows overlap when n does not
 * divide in. */
#include "internal.h"

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    int64_t planes, h, w; /* N*C input planes of h x w */
    int64_t k, s, p;
    int64_t oh, ow;
} pool_geom;

/* Validates the arguments the way PyTorch does and works out the output size. */
static pool_geom pool_setup(const char *op, const ct_tensor *x, int kernel, int stride,
                            int padding) {
    ct__check_ndim(op, x, 4, "[N, C, H, W]");
    CT_ASSERT(kernel >= 1 && stride >= 0 && padding >= 0,
              "%s: kernel %d must be >= 1, stride %d >= 0 and padding %d >= 0", op, kernel,
              stride, padding);
    CT_ASSERT(2 * padding <= kernel, "%s: padding %d must be at most half of kernel %d", op,
              padding, kernel);
    pool_geom g = {.planes = x->shape[0] * x->shape[1], .h = x->shape[2], .w = x->shape[3],
                   .k = kernel, .s = stride ? stride : kernel, .p = padding};
    CT_ASSERT(g.k <= g.h + 2 * g.p && g.k <= g.w + 2 * g.p,
              "%s: kernel %d is larger than the padded input %s (padding %d)", op, kernel,
              CT_SHAPE_STR(x), padding);
    g.oh = (g.h + 2 * g.p - g.k) / g.s + 1;
    g.ow = (g.w + 2 * g.p - g.k) / g.s + 1;
    return g;
}

static void pool_store(ct_node *n, const pool_geom *g) {
    n->i[0] = g->h, n->i[1] = g->w, n->i[2] = g->k, n->i[3] = g->s, n->i[4] = g->p;
}

static pool_geom pool_load(const ct_node *n) {
    return (pool_geom){.planes = n->out_shape[0] * n->out_shape[1], .h = n->i[0], .w = n->i[1],
                       .k = n->i[2], .s = n->i[3], .p = n->i[4], .oh = n->out_shape[2],
                       .ow = n->out_shape[3]};
}

/* The window of output (oy, ox) clipped to the input: rows [*y0, *y1), cols [*x0, *x1). */
static void window(const pool_geom *g, int64_t oy, int64_t ox, int64_t *y0, int64_t *y1,
                   int64_t *x0, int64_t *x1) {
    int64_t ys = oy * g->s - g->p, xs = ox * g->s - g->p;
    *y0 = ys > 0 ? ys : 0;
    *x0 = xs > 0 ? xs : 0;
    *y1 = ys + g->k < g->h ? ys + g->k : g->h;
    *x1 = xs + g->k < g->w ? xs + g->k : g->w;
}

/* ---- max pool ---------------------------------------------------------------------- */

/* The output columns [lo, hi) whose input column ox*s - p + kj lies inside [0, w). */
static void valid_cols(const pool_geom *g, int64_t kj, int64_t *lo, int64_t *hi) {
    int64_t a = g->p - kj, b = g->w - 1 + g->p - kj;
    *lo = a > 0 ? (a + g->s - 1) / g->s : 0;
    *hi = b < 0 ? 0 : b / g->s + 1;
    if (*hi > g->ow) *hi = g->ow;
    if (*lo > *hi) *lo = *hi;
}

/* The CNN's 2x2 / stride 2 case. A window's four elements are compared in PyTorch's scan
 * order (0,0), (0,1), (1,0), (1,1) with "take v if v > max or v is NaN", which keeps the
 * first maximum on ties and the last NaN. That rule is associative over consecutive runs
 * of the scan, so each row's pair can be reduced first and the two row results after. */
/* Lanes [0, n) set, n clamped to [0, 16]. */
static inline CT_AVX512 __mmask16 lanes(int64_t n) {
    return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? 0 : (__mmask16)((1u << n) - 1);
}

/* "v > m or v is NaN" per lane: where the scan takes v. */
static inline CT_AVX512 __mmask16 takes(__m512 v, __m512 m) {
    return _mm512_cmp_ps_mask(v, m, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
}

/* 16 windows per step: the even and odd columns of 32 input floats of each row are split
 * with one permute each, so every compare and select is a full-width vector op (the scalar
 * loop did ~15 dependent instructions per window and was 3x slower than ReLU). Row ends
 * use masked loads and stores, so any width works. */
static CT_AVX512 void max_pool_2x2_512(const float *x, float *y, int32_t *idx,
                                       const pool_geom *g, int64_t pl) {
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    const __m512i one = _mm512_set1_epi32(1), wv = _mm512_set1_epi32((int32_t)g->w);
    int64_t w = g->w, in_plane = g->h * w, out_plane = g->oh * g->ow;
    for (int64_t oy = 0; oy < g->oh; oy++) {
        const float *r0 = x + pl * in_plane + 2 * oy * w, *r1 = r0 + w;
        float *out = y + pl * out_plane + oy * g->ow;
        int32_t *arg = idx ? idx + pl * out_plane + oy * g->ow : NULL;
        for (int64_t ox = 0; ox < g->ow; ox += 16) {
            __mmask16 mo = lanes(g->ow - ox), mlo = lanes(2 * (g->ow - ox)),
                      mhi = lanes(2 * (g->ow - ox) - 16);
            const float *p0 = r0 + 2 * ox, *p1 = r1 + 2 * ox;
            __m512 a0 = _mm512_maskz_loadu_ps(mlo, p0), a1 = _mm512_maskz_loadu_ps(mhi, p0 + 16);
            __m512 b0 = _mm512_maskz_loadu_ps(mlo, p1), b1 = _mm512_maskz_loadu_ps(mhi, p1 + 16);
            __m512 e0 = _mm512_permutex2var_ps(a0, even, a1), o0 = _mm512_permutex2var_ps(a0, odd, a1);
            __m512 e1 = _mm512_permutex2var_ps(b0, even, b1), o1 = _mm512_permutex2var_ps(b0, odd, b1);
            __mmask16 c0 = takes(o0, e0), c1 = takes(o1, e1);
            __m512 h0 = _mm512_mask_blend_ps(c0, e0, o0), h1 = _mm512_mask_blend_ps(c1, e1, o1);
            __mmask16 c = takes(h1, h0); /* the second row wins */
            _mm512_mask_storeu_ps(out + ox, mo, _mm512_mask_blend_ps(c, h0, h1));
            if (!arg) continue;
            /* plane offset of (2*oy, 2*ox): + 1 for the odd column, + w for row 1 */
            __m512i at = _mm512_add_epi32(_mm512_set1_epi32((int32_t)(2 * oy * w + 2 * ox)), even);
            __mmask16 col = (__mmask16)((c & c1) | (~c & c0));
            at = _mm512_mask_add_epi32(at, col, at, one);
            at = _mm512_mask_add_epi32(at, c, at, wv);
            _mm512_mask_storeu_epi32(arg + ox, mo, at);
        }
    }
}

/* dx of the 2x2 case written densely, 16 windows per step: each of a window's four
 * positions gets gout where the argmax points at it and 0 elsewhere, and the even/odd
 * columns are interleaved back. This is a plain streaming pass instead of a zero fill plus
 * a scatter. fresh: dx is uninitialised and is overwritten, including the last row and
 * column that an odd h or w leaves outside every window; otherwise dx accumulates. */
static CT_AVX512 void max_pool_2x2_backward_512(float *dx, const float *go, const int32_t *idx,
                                                const pool_geom *g, bool fresh, int64_t pl) {
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i hi = _mm512_add_epi32(lo, _mm512_set1_epi32(8));
    const __m512i one = _mm512_set1_epi32(1), wv = _mm512_set1_epi32((int32_t)g->w);
    int64_t w = g->w, h = g->h, in_plane = h * w, out_plane = g->oh * g->ow;
    { /* plane pl */
        float *xp = dx + pl * in_plane;
        for (int64_t oy = 0; oy < g->oh; oy++) {
            float *r[2] = {xp + 2 * oy * w, xp + (2 * oy + 1) * w};
            const float *gr = go + pl * out_plane + oy * g->ow;
            const int32_t *ar = idx + pl * out_plane + oy * g->ow;
            for (int64_t ox = 0; ox < g->ow; ox += 16) {
                __mmask16 mo = lanes(g->ow - ox), mlo = lanes(2 * (g->ow - ox)),
                          mhi = lanes(2 * (g->ow - ox) - 16);
                __m512 gv = _mm512_maskz_loadu_ps(mo, gr + ox);
                __m512i at = _mm512_maskz_loadu_epi32(mo, ar + ox);
                __m512i base = _mm512_add_epi32(_mm512_set1_epi32((int32_t)(2 * oy * w + 2 * ox)), even);
                for (int k = 0; k < 2; k++) {
                    __m512i b = k ? _mm512_add_epi32(base, wv) : base;
                    __m512 ev = _mm512_maskz_mov_ps(_mm512_cmpeq_epi32_mask(at, b), gv);
                    __m512 od = _mm512_maskz_mov_ps(
                        _mm512_cmpeq_epi32_mask(at, _mm512_add_epi32(b, one)), gv);
                    __m512 v0 = _mm512_permutex2var_ps(ev, lo, od), v1 = _mm512_permutex2var_ps(ev, hi, od);
                    float *p = r[k] + 2 * ox;
                    if (!fresh) {
                        v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(mlo, p));
                        v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(mhi, p + 16));
                    }
                    _mm512_mask_storeu_ps(p, mlo, v0);
                    _mm512_mask_storeu_ps(p + 16, mhi, v1);
                }
            }
            if (fresh && (w & 1)) r[0][w - 1] = r[1][w - 1] = 0;
        }
        if (fresh && (h & 1)) memset(xp + (h - 1) * w, 0, (size_t)w * sizeof(float));
    }
}
/* Without AVX-512: one window at a time with everything in registers and selects, not
 * branches (which element wins is data-random; mispredictions made this the slowest part
 * of the CNN). */
static void max_pool_2x2_any(const float *x, float *y, int32_t *idx, const pool_geom *g) {
    int64_t w = g->w, in_plane = g->h * w, out_plane = g->oh * g->ow;
    CT_PAR_FOR(g->planes * g->h * g->w) /* planes are independent */
    for (int64_t pl = 0; pl < g->planes; pl++) {
        const float *src = x + pl * in_plane;
        float *dst = y + pl * out_plane;
        int32_t *arg = idx ? idx + pl * out_plane : NULL;
        for (int64_t oy = 0; oy < g->oh; oy++) {
            const float *r0 = src + 2 * oy * w, *r1 = r0 + w;
            float *out = dst + oy * g->ow;
            int32_t *ao = arg ? arg + oy * g->ow : NULL;
            int32_t row = (int32_t)(2 * oy * w);
            for (int64_t ox = 0; ox < g->ow; ox++) {
                float a1 = r0[2 * ox + 1], b0 = r1[2 * ox], b1 = r1[2 * ox + 1];
                float m = r0[2 * ox];
                int32_t at = row + (int32_t)(2 * ox);
                bool c = (a1 > m) | (a1 != a1);
                m = c ? a1 : m;
                int32_t at1 = c ? at + 1 : at;
                c = (b0 > m) | (b0 != b0);
                m = c ? b0 : m;
                at1 = c ? at + (int32_t)w : at1;
                c = (b1 > m) | (b1 != b1);
                m = c ? b1 : m;
                at1 = c ? at + (int32_t)w + 1 : at1;
                out[ox] = m;
                if (ao) ao[ox] = at1;
            }
        }
    }
}

/* The maximum of a and b, NaN if either is (PyTorch's max pool propagates NaN). */
static inline float nan_max(float a, float b) { return a > b || a != a ? a : b; }

/* Values only, no argmax (nothing will run backward: under no_grad, say the ResNet stem's
 * 3x3 / stride 2 pool in eval): per output row, the window's rows are first reduced
 * column by column, then the k column offsets one after the other across the row; both
 * are loops along a row, which vectorise (one output at a time, the NaN test made every
 * comparison a branch). */
static void max_pool_values(const pool_geom *g, const float *x, float *y) {
    CT_PAR_FOR(g->planes * g->h * g->w)
    for (int64_t pl = 0; pl < g->planes; pl++) {
        const float *src = x + pl * g->h * g->w;
        float col[g->w];
        for (int64_t oy = 0; oy < g->oh; oy++) {
            int64_t y0 = oy * g->s - g->p, y1 = y0 + g->k;
            y0 = y0 < 0 ? 0 : y0, y1 = y1 > g->h ? g->h : y1;
            for (int64_t q = 0; q < g->w; q++) col[q] = src[y0 * g->w + q];
            for (int64_t iy = y0 + 1; iy < y1; iy++)
                for (int64_t q = 0; q < g->w; q++) col[q] = nan_max(src[iy * g->w + q], col[q]);
            float *dst = y + (pl * g->oh + oy) * g->ow;
            for (int64_t ox = 0; ox < g->ow; ox++) dst[ox] = -INFINITY;
            for (int64_t kj = 0; kj < g->k; kj++) { /* whole rows: vector selects, no branches */
                int64_t lo, hi;
                valid_cols(g, kj, &lo, &hi);
                const float *c = col + kj - g->p;
                for (int64_t ox = lo; ox < hi; ox++) dst[ox] = nan_max(c[ox * g->s], dst[ox]);
            }
        }
    }
}

static void max_pool2d_backward(ct_node *n, const ct_tensor *gout) {
    bool fresh;
    ct_tensor *gx = ct_node_grad_in_fresh(n, 0, &fresh);
    if (!gx) return;
    pool_geom g = pool_load(n);
    const int32_t *idx = n->aux;
    if (g.k == 2 && g.s == 2 && g.p == 0 && ct_cpu_avx512()) {
        /* the planes on the intra-op threads; the pragma stays out of the AVX-512
         * function (clang's outlined loop body would lose its target attribute) */
        CT_PAR_FOR(g.planes * g.h * g.w)
        for (int64_t pl = 0; pl < g.planes; pl++)
            max_pool_2x2_backward_512(gx->data, gout->data, idx, &g, fresh, pl);
        return;
    }
    /* the scatter below adds, and overlapping windows may hit one pixel twice */
    if (fresh) memset(gx->data, 0, (size_t)gx->numel * sizeof(float));
    int64_t in_plane = g.h * g.w, out_plane = g.oh * g.ow;
    CT_PAR_FOR(g.planes * g.h * g.w) /* planes are independent */
    for (int64_t pl = 0; pl < g.planes; pl++) {
        float *dx = gx->data + pl * in_plane;
        const float *go = gout->data + pl * out_plane;
        const int32_t *ix = idx + pl * out_plane;
        for (int64_t j = 0; j < out_plane; j++) dx[ix[j]] += go[j];
    }
}

ct_tensor *ct_max_pool2d(ct_tensor *x, int kernel, int stride, int padding) {
    pool_geom g = pool_setup("max_pool2d", x, kernel, stride, padding);
    CT_ASSERT(g.h * g.w <= INT32_MAX, "max_pool2d: input planes of %s are too large",
              CT_SHAPE_STR(x));
    ct_tensor *y = ct_tensor_new(CT_SHAPE(x->shape[0], x->shape[1], g.oh, g.ow));
    ct_node *n = CT_RECORD("max_pool2d", max_pool2d_backward, y, x);
    /* argmax within the input plane, kept in the node for backward; without a node, the
     * 2x2 kernels skip it (idx NULL) and the other shapes take the values-only path */
    int32_t *idx = NULL;
    if (n) {
        pool_store(n, &g);
        idx = ct_node_aux(n, (size_t)y->numel * sizeof(int32_t));
    }
    int64_t in_plane = g.h * g.w, out_plane = g.oh * g.ow;
    if (g.k == 2 && g.s == 2 && g.p == 0) {
        if (ct_cpu_avx512()) {
            CT_PAR_FOR(g.planes * g.h * g.w) /* planes are independent */
            for (int64_t pl = 0; pl < g.planes; pl++) max_pool_2x2_512(x->data, y->data, idx, &g, pl);
        } else
            max_pool_2x2_any(x->data, y->data, idx, &g);
        return y;
    }
    if (!n) {
        max_pool_values(&g, x->data, y->data);
        return y;
    }
    CT_PAR_FOR(g.planes * g.h * g.w) /* planes are independent */
    for (int64_t pl = 0; pl < g.planes; pl++) {
        const float *src = x->data + pl * in_plane;
        for (int64_t oy = 0; oy < g.oh; oy++) {
            /* A whole output row at a time, one window offset (ki, kj) after the other.
             * Offsets go in row-major order, so ties keep the first maximum as in
             * PyTorch, and a NaN wins (and stays) as it does there. */
            float *best = y->data + pl * out_plane + oy * g.ow;
            int32_t *arg = idx + pl * out_plane + oy * g.ow;
            int64_t y0 = oy * g.s - g.p > 0 ? oy * g.s - g.p : 0;
            for (int64_t ox = 0; ox < g.ow; ox++) {
                int64_t x0 = ox * g.s - g.p > 0 ? ox * g.s - g.p : 0;
                best[ox] = -INFINITY;
                arg[ox] = (int32_t)(y0 * g.w + x0);
            }
            for (int64_t ki = 0; ki < g.k; ki++) {
                int64_t iy = oy * g.s - g.p + ki;
                if (iy < 0 || iy >= g.h) continue;
                for (int64_t kj = 0; kj < g.k; kj++) {
                    int64_t lo, hi;
                    valid_cols(&g, kj, &lo, &hi);
                    for (int64_t ox = lo; ox < hi; ox++) {
                        int32_t at = (int32_t)(iy * g.w + ox * g.s - g.p + kj);
                        float v = src[at], b = best[ox];
                        int32_t a = arg[ox];
                        bool gt = v > b; /* selects, not a branch: gt is data-random */
                        b = gt ? v : b;
                        a = gt ? at : a;
                        if (isnan(v)) { /* rare, so this branch is predictable */
                            b = v;
                            a = at;
                        }
                        best[ox] = b;
                        arg[ox] = a;
                    }
                }
            }
        }
    }
    return y;
}

/* ---- average pool ------------------------------------------------------------------ */

static void avg_pool2d_backward(ct_node *n, const ct_tensor *gout) {
    ct_tensor *gx = ct_node_grad_in(n, 0);
    if (!gx) return;
    pool_geom g = pool_load(n);
    float inv = 1.0f / (float)(g.k * g.k);
    int64_t in_plane = g.h * g.w, out_plane = g.oh * g.ow;
    CT_PAR_FOR(g.planes * g.h * g.w) /* planes are independent */
    for (int64_t pl = 0; pl < g.planes; pl++) {
        float *dx = gx->data + pl * in_plane;
        const float *go = gout->data + pl * out_plane;
        for (int64_t oy = 0; oy < g.oh; oy++)
            for (int64_t ox = 0; ox < g.ow; ox++) {
                int64_t y0, y1, x0, x1;
                window(&g, oy, ox, &y0, &y1, &x0, &x1);
                float v = go[oy * g.ow + ox] * inv;
                for (int64_t iy = y0; iy < y1; iy++)
                    for (int64_t ix = x0; ix < x1; ix++) dx[iy * g.w + ix] += v;
            }
    }
}

ct_tensor *ct_avg_pool2d(ct_tensor *x, int kernel, int stride, int padding) {
    pool_geom g = pool_setup("avg_pool2d", x, kernel, stride, padding);
    ct_tensor *y = ct_tensor_new(CT_SHAPE(x->shape[0], x->shape[1], g.oh, g.ow));
    float inv = 1.0f / (float)(g.k * g.k);
    int64_t in_plane = g.h * g.w, out_plane = g.oh * g.ow;
    CT_PAR_FOR(g.planes * g.h * g.w) /* planes are independent */
    for (int64_t pl = 0; pl < g.planes; pl++) {
        const float *src = x->data + pl * in_plane;
        float *dst = y->data + pl * out_plane;
        for (int64_t oy = 0; oy < g.oh; oy++)
            for (int64_t ox = 0; ox < g.ow; ox++) {
                int64_t y0, y1, x0, x1;
                window(&g, oy, ox, &y0, &y1, &x0, &x1);
                float s = 0;
                for (int64_t iy = y0; iy < y1; iy++)
                    for (int64_t ix = x0; ix < x1; ix++) s += src[iy * g.w + ix];
                dst[oy * g.ow + ox] = s * inv;
            }
    }
    ct_node *n = CT_RECORD("avg_pool2d", avg_pool2d_backward, y, x);
    if (n) pool_store(n, &g);
    return y;
}

/* ---- adaptive average pool ---------------------------------------------------------- */

/* The input window of output (oy, ox): rows [y0, y1), columns [x0, x1), by PyTorch's
 * start_index/end_index, [floor(o*in/out), ceil((o+1)*in/out)) in each dimension. */
typedef struct {
    int64_t y0, y1, x0, x1;
} adaptive_window;

static adaptive_window adaptive_at(int64_t oy, int64_t ox, int64_t h, int64_t w, int64_t oh,
                                   int64_t ow) {
    return (adaptive_window){oy * h / oh, ((oy + 1) * h + oh - 1) / oh, ox * w / ow,
                             ((ox + 1) * w + ow - 1) / ow};
}

static void adaptive_avg_pool2d_backward(ct_node *n, const ct_tensor *gout) {
    ct_tensor *gx = ct_node_grad_in(n, 0);
    if (!gx) return;
    int64_t h = n->i[0], w = n->i[1], oh = n->out_shape[2], ow = n->out_shape[3];
    int64_t planes = n->out_shape[0] * n->out_shape[1];
    CT_PAR_FOR(planes * h * w) /* planes are independent */
    for (int64_t pl = 0; pl < planes; pl++) {
        float *dx = gx->data + pl * h * w;
        const float *go = gout->data + pl * oh * ow;
        for (int64_t oy = 0; oy < oh; oy++)
            for (int64_t ox = 0; ox < ow; ox++) {
                adaptive_window a = adaptive_at(oy, ox, h, w, oh, ow);
                /* += : windows overlap when the output size does not divide the input's */
                float v = go[oy * ow + ox] / (float)((a.y1 - a.y0) * (a.x1 - a.x0));
                for (int64_t iy = a.y0; iy < a.y1; iy++) {
                    float *row = dx + iy * w + a.x0;
                    for (int64_t j = 0; j < a.x1 - a.x0; j++) row[j] += v;
                }
            }
    }
}

ct_tensor *ct_adaptive_avg_pool2d(ct_tensor *x, int out_h, int out_w) {
    ct__check_ndim("adaptive_avg_pool2d", x, 4, "[N, C, H, W]");
    CT_ASSERT(out_h >= 1 && out_w >= 1 && x->shape[2] >= 1 && x->shape[3] >= 1,
              "adaptive_avg_pool2d: output size %dx%d must be >= 1 and input %s non-empty",
              out_h, out_w, CT_SHAPE_STR(x));
    int64_t h = x->shape[2], w = x->shape[3], oh = out_h, ow = out_w;
    ct_tensor *y = ct_tensor_new(CT_SHAPE(x->shape[0], x->shape[1], oh, ow));
    int64_t planes = x->shape[0] * x->shape[1];
    CT_PAR_FOR(planes * h * w) /* planes are independent */
    for (int64_t pl = 0; pl < planes; pl++) {
        const float *src = x->data + pl * h * w;
        float *dst = y->data + pl * oh * ow;
        for (int64_t oy = 0; oy < oh; oy++)
            for (int64_t ox = 0; ox < ow; ox++) {
                adaptive_window a = adaptive_at(oy, ox, h, w, oh, ow);
                double s = 0;
                if (a.x0 == 0 && a.x1 == w) /* whole rows (global pooling): one contiguous run */
                    s = ct__sumf(src + a.y0 * w, (a.y1 - a.y0) * w);
                else
                    for (int64_t iy = a.y0; iy < a.y1; iy++)
                        s += ct__sumf(src + iy * w + a.x0, a.x1 - a.x0);
                dst[oy * ow + ox] = (float)(s / (double)((a.y1 - a.y0) * (a.x1 - a.x0)));
            }
    }
    ct_node *n = CT_RECORD("adaptive_avg_pool2d", adaptive_avg_pool2d_backward, y, x);
    if (n) n->i[0] = h, n->i[1] = w;
    return y;
}
