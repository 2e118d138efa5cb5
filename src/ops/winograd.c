/* Winograd F(m x m, 3x3), m = 2 or 4, for the 3x3 / stride 1 / padding 1 convolutions of
 * the CNN and the ResNets (conv.c picks it; see ct__wino_applies). Each output tile of m x m
 * pixels comes from an a x a input tile (a = m + 2) with a^2 multiplications per (input,
 * output) channel pair instead of 9 m^2 (16 for 4 pixels with F(2x2), 36 for 16 with
 * F(4x4)), and the multiplications of a whole chunk of tiles are a^2 GEMMs
 *   M[xi] (T x cout) = V[xi] (T x cin) @ U[xi] (cin x cout),   xi = 0..a^2-1,
 * U the transformed weight (G g G^T), V the transformed input tiles (B^T d B), T the tiles
 * of a chunk of samples; the output is Y = A^T M A per tile. The zero padding is never
 * multiplied: tiles read it as zeros while transforming.
 *
 * F(4x4) runs only where no gradient flows through the result (inference, evaluation,
 * frozen stages; the caller says so) and the plane divides into 4x4 tiles (see geom). On
 * ResNet-18's 8x8 and 4x4 planes it took the eval forward of those layers from 9.5 and 9.0
 * ms to 6.5 and 5.4-7.1 ms (batch 256, one thread). Its rounding error is several times
 * F(2x2)'s (its transforms scale by up to 8 and by 1/6 and 1/24), and train-mode BatchNorm
 * on small batches amplifies it: ResNet-50's gradients at 32 px moved 2.6e-4 from float64
 * torchvision's, past the parity tests' 1e-4, so training keeps F(2x2).
 *
 * The transforms take 16 channels of a sample at a time, one channel per vector lane: a
 * plane is copied into lanes with its zero border, p[row][col][lane], and every add of a
 * transform is then one whole-vector op. V and M keep the channels contiguous (tiles as
 * rows), so a tile's 16 transformed values of 16 channels are 16 vector stores. An
 * earlier version transformed one plane at a time along its rows; on the 4x4 and 8x8
 * planes of ResNet-18 at 32 px a row is 4 or 8 floats, so it ran mostly scalar and lost to
 * im2col, and on the CNN's 14x14 planes its transforms cost more than its GEMMs.
 *
 * dX uses the same kernel: it is the forward of gout through the flipped weight (w[o, c]
 * rotated 180 degrees, as [c, o]); for stride 1 and padding 1 that is exactly the adjoint
 * of the forward. dW is Winograd's too (ct__wino_dw): dU[xi] = V[xi]^T @ (A dY A^T)[xi]
 * summed over the tiles by 16 GEMMs, then G^T dU G. Against im2col + sgemm it took the
 * CNN's conv2 dW from 6.7 to 4.6 ms (batch 64), and at batch 32 ResNet's 8x8 and 16x16
 * layers' backward from 3.6 to 3.0 and 13.2 to 11.3 ms, 4x4 unchanged (one thread).
 * Results differ from im2col's by float rounding only (F(4x4)'s transforms also scale by
 * 4, 1/6 and 1/24, so its rounding error is a few times F(2x2)'s: ~1e-6 relative here).
 *
 * Threads: as conv.c, chunks are independent and each writes its own samples, so bits do
 * not depend on the thread count. */
#include "internal.h"

#include <immintrin.h>
#include <string.h>

#define ALWAYS_INLINE static inline __attribute__((always_inline))
#define LANES 16
/* A chunk's V[xi] or M[xi] aims at CHUNK_FLOATS (tiles x channels), within MIN_T to MAX_T
 * tiles of F(2x2) (the GEMMs' M), and F(4x4)'s chunks cover the same output pixels with a
 * quarter of the tiles; whole samples, at least one. */
#define CHUNK_FLOATS 8192
#define MIN_T 64
#define MAX_T 128

typedef struct {
    int64_t cin, cout, h, w; /* channels in and out; planes h x w (input = output size) */
    int m, a;                /* output tile m x m (2 or 4) from input tile a x a, a = m + 2 */
    int64_t th, tw, tiles;   /* tiles per plane, ceil(h/m) x ceil(w/m) */
    int64_t pw;              /* the lane buffer's padded width, m tw + 2 */
    int64_t nb;              /* samples per chunk */
} wino_geom;

/* F(4x4, 3x3) where allowed (f4) and the plane divides into 4x4 tiles (8x8, 4x4, 16x16:
 * ResNet's planes), F(2x2, 3x3) elsewhere (the CNN's 14x14, where 4x4 tiles would waste
 * 31% of their GEMMs). */
static wino_geom geom(int64_t batch, int64_t cin, int64_t cout, int64_t h, int64_t w, bool f4) {
    int m = f4 && h % 4 == 0 && w % 4 == 0 ? 4 : 2;
    wino_geom g = {.cin = cin, .cout = cout, .h = h, .w = w, .m = m, .a = m + 2,
                   .th = (h + m - 1) / m, .tw = (w + m - 1) / m};
    g.tiles = g.th * g.tw;
    g.pw = m * g.tw + 2;
    int64_t c = cin > cout ? cin : cout, t = CHUNK_FLOATS / c;
    t = (t < MIN_T ? MIN_T : t > MAX_T ? MAX_T : t) * 4 / (m * m); /* the same pixels per chunk */
    g.nb = t / g.tiles;
    g.nb = g.nb < 1 ? 1 : g.nb > batch ? batch : g.nb;
    return g;
}

bool ct__wino_applies(int64_t c, int64_t o, int64_t h, int64_t w) {
    return c >= 16 && o >= 16 && h >= 2 && w >= 2;
}

/* The 1-D transforms of F(m x m, 3x3), m = 2 or 4 (a literal at every call, so each is
 * its own straight-line code), on vectors of LANES: the kernel's G g (3 -> a = m + 2
 * values), the input's B^T d (a -> a) and the output's A^T M (a -> m). F(4x4, 3x3) is
 * Lavin's, with points 0, 1, -1, 2, -2 and infinity. */
ALWAYS_INLINE void g_1d(int m, const float *k0, const float *k1, const float *k2, float (*o)[LANES]) {
    for (int l = 0; l < LANES; l++) {
        float g0 = k0[l], g1 = k1[l], g2 = k2[l];
        if (m == 2) {
            o[0][l] = g0;
            o[1][l] = 0.5f * (g0 + g1 + g2);
            o[2][l] = 0.5f * (g0 - g1 + g2);
            o[3][l] = g2;
        } else {
            o[0][l] = 0.25f * g0;
            o[1][l] = (-1.0f / 6) * (g0 + g1 + g2);
            o[2][l] = (-1.0f / 6) * (g0 - g1 + g2);
            o[3][l] = (1.0f / 24) * g0 + (1.0f / 12) * g1 + (1.0f / 6) * g2;
            o[4][l] = (1.0f / 24) * g0 - (1.0f / 12) * g1 + (1.0f / 6) * g2;
            o[5][l] = g2;
        }
    }
}
ALWAYS_INLINE void bt_1d(int m, const float *const *d, float (*o)[LANES]) {
    for (int l = 0; l < LANES; l++) {
        if (m == 2) {
            float d0 = d[0][l], d1 = d[1][l], d2 = d[2][l], d3 = d[3][l];
            o[0][l] = d0 - d2;
            o[1][l] = d1 + d2;
            o[2][l] = d2 - d1;
            o[3][l] = d1 - d3;
        } else {
            float d0 = d[0][l], d1 = d[1][l], d2 = d[2][l], d3 = d[3][l], d4 = d[4][l], d5 = d[5][l];
            float s12 = d1 + d2, s34 = d3 + d4, u12 = d1 - d2, u43 = d4 - d3, u42 = d4 - d2, u31 = d3 - d1;
            o[0][l] = 4 * d0 - 5 * d2 + d4;
            o[1][l] = s34 - 4 * s12;
            o[2][l] = u43 + 4 * u12;
            o[3][l] = u42 + 2 * u31;
            o[4][l] = u42 - 2 * u31;
            o[5][l] = 4 * d1 - 5 * d3 + d5;
        }
    }
}
ALWAYS_INLINE void at_1d(int m, const float *const *v, float (*o)[LANES]) {
    for (int l = 0; l < LANES; l++) {
        if (m == 2) {
            float a0 = v[0][l], a1 = v[1][l], a2 = v[2][l], a3 = v[3][l];
            o[0][l] = a0 + a1 + a2;
            o[1][l] = a1 - a2 - a3;
        } else {
            float a0 = v[0][l], a5 = v[5][l];
            float s12 = v[1][l] + v[2][l], u12 = v[1][l] - v[2][l];
            float s34 = v[3][l] + v[4][l], u34 = v[3][l] - v[4][l];
            o[0][l] = a0 + s12 + s34;
            o[1][l] = u12 + 2 * u34;
            o[2][l] = s12 + 4 * s34;
            o[3][l] = u12 + 8 * u34 + a5;
        }
    }
}

/* U[xi][ci][co] = (G g G^T)[xi] for g = w[co, ci] (flip: g = w[ci, co] rotated 180 degrees,
 * w then [cin, cout, 3, 3]). 16 kernels of consecutive co go through the transform
 * together, one per vector lane (their 9 taps gathered first), so it vectorises and u is
 * written in order: one kernel at a time it ran scalar and cost half of what the input
 * transform does on ResNet's small layers, on every forward. */
ALWAYS_INLINE void weight_transform_m(int m, const float *w, int64_t cout, int64_t cin, bool flip,
                                      float *u) {
    int64_t blocks = (cout + LANES - 1) / LANES, a = m + 2;
    CT_PAR_FOR(cout * cin * a * a)
    for (int64_t cb = 0; cb < cin * blocks; cb++) {
        int64_t ci = cb / blocks, o0 = cb % blocks * LANES, nl = cout - o0 < LANES ? cout - o0 : LANES;
        float k[9][LANES] = {{0}}, t[3][6][LANES];
        for (int64_t l = 0; l < nl; l++) {
            int64_t co = o0 + l;
            const float *src = flip ? w + (ci * cout + co) * 9 : w + (co * cin + ci) * 9;
            for (int e = 0; e < 9; e++) k[e][l] = src[flip ? 8 - e : e];
        }
        for (int j = 0; j < 3; j++) g_1d(m, k[j], k[3 + j], k[6 + j], t[j]); /* G g: column j */
        for (int i = 0; i < a; i++) { /* (G g) G^T: row i */
            float r[6][LANES];
            g_1d(m, t[0][i], t[1][i], t[2][i], r);
            for (int j = 0; j < a; j++) {
                float *dst = u + ((i * a + j) * cin + ci) * cout + o0;
                for (int64_t l = 0; l < nl; l++) dst[l] = r[j][l];
            }
        }
    }
}
static void weight_transform(int m, const float *w, int64_t cout, int64_t cin, bool flip, float *u) {
    if (m == 2) weight_transform_m(2, w, cout, cin, flip, u);
    else weight_transform_m(4, w, cout, cin, flip, u);
}

/* dst[0..n) = v[0..n) and back, n <= LANES: a whole vector when n is LANES (the loop with
 * a variable bound stayed scalar). */
ALWAYS_INLINE void put_lanes(float *restrict dst, const float *restrict v, int64_t n) {
    if (n == LANES)
        for (int l = 0; l < LANES; l++) dst[l] = v[l];
    else
        for (int64_t l = 0; l < n; l++) dst[l] = v[l];
}
ALWAYS_INLINE void get_lanes(float *restrict v, const float *restrict src, int64_t n) {
    if (n == LANES)
        for (int l = 0; l < LANES; l++) v[l] = src[l];
    else
        for (int l = 0; l < LANES; l++) v[l] = l < n ? src[l] : 0; /* lanes past n: unused */
}

/* In-register transpose of 16 rows of 16 floats (r[i][j] -> r[j][i]): pairs of rows
 * interleaved, then 4x4 blocks within each 128-bit lane, then the lanes across rows. */
static inline CT_AVX512 void transpose16(__m512 r[16]) {
    __m512 t[16], u[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) { /* u[4i + k], lane L: rows 4i..4i+3 of column 4L + k */
        u[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        u[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int k = 0; k < 4; k++) {
        __m512 v0 = _mm512_shuffle_f32x4(u[k], u[4 + k], _MM_SHUFFLE(2, 0, 2, 0));
        __m512 v1 = _mm512_shuffle_f32x4(u[k], u[4 + k], _MM_SHUFFLE(3, 1, 3, 1));
        __m512 v2 = _mm512_shuffle_f32x4(u[8 + k], u[12 + k], _MM_SHUFFLE(2, 0, 2, 0));
        __m512 v3 = _mm512_shuffle_f32x4(u[8 + k], u[12 + k], _MM_SHUFFLE(3, 1, 3, 1));
        r[k] = _mm512_shuffle_f32x4(v0, v2, _MM_SHUFFLE(2, 0, 2, 0));
        r[8 + k] = _mm512_shuffle_f32x4(v0, v2, _MM_SHUFFLE(3, 1, 3, 1));
        r[4 + k] = _mm512_shuffle_f32x4(v1, v3, _MM_SHUFFLE(2, 0, 2, 0));
        r[12 + k] = _mm512_shuffle_f32x4(v1, v3, _MM_SHUFFLE(3, 1, 3, 1));
    }
}

/* 16 planes src[l * hw + pos] into lanes p[(iy + border) * pw + ix + border][l], 16 pixels
 * at a time (border 1: a zero border around the plane, 0: none);
 * returns the pixels done (a multiple of 16; the caller copies the rest). */
static inline CT_AVX512 int64_t planes_in_512(const float *src, int64_t hw, int64_t w, int64_t pw,
                                              int64_t border, float (*p)[LANES]) {
    int64_t pos = 0;
    for (; pos + 16 <= hw; pos += 16) {
        __m512 r[16];
        for (int l = 0; l < 16; l++) r[l] = _mm512_loadu_ps(src + l * hw + pos);
        transpose16(r);
        for (int k = 0; k < 16; k++)
            _mm512_storeu_ps(p[((pos + k) / w + border) * pw + (pos + k) % w + border], r[k]);
    }
    return pos;
}

/* nl <= LANES planes src[l * hw + pos] into lanes p[(iy + border) * pw + ix + border][l]:
 * by planes_in_512 where it applies, the rest one value at a time. */
ALWAYS_INLINE void planes_to_lanes(const float *src, int64_t nl, int64_t hw, int64_t w, int64_t pw,
                                   int64_t border, float (*p)[LANES], bool wide) {
    int64_t done = wide && nl == LANES ? planes_in_512(src, hw, w, pw, border, p) : 0;
    for (int64_t l = 0; l < nl; l++)
        for (int64_t pos = done; pos < hw; pos++)
            p[(pos / w + border) * pw + pos % w + border][l] = src[l * hw + pos];
}

/* The epilogue's coefficients for the 16 (or fewer) output channels of a lane group:
 * v -> relu?(v * a[l] + b[l] + res[l * hw + pos]) (ct_conv2d_post; res NULL: none). */
typedef struct {
    float a[LANES], b[LANES];
    const float *res;
    bool relu;
} lane_post;

/* One value, in batch_norm's, add's and relu's order (the bits of the separate ops). */
ALWAYS_INLINE float post_one(float v, const lane_post *e, int64_t l, int64_t at) {
    float t = e->a[l] * v + e->b[l];
    if (e->res) t = t + e->res[at];
    return e->relu && t < 0 ? 0.0f : t;
}

/* The way back: lanes q[iy * pw + ix][l] to 16 planes dst[l * hw + pos] (= or += when acc),
 * plus bias[l], then the epilogue e if any; returns the pixels done as planes_in_512. */
static inline CT_AVX512 int64_t planes_out_512(float (*q)[LANES], int64_t hw, int64_t w, int64_t pw,
                                               const float *bias, const lane_post *e, float *dst,
                                               bool acc) {
    int64_t pos = 0;
    for (; pos + 16 <= hw; pos += 16) {
        __m512 r[16];
        for (int k = 0; k < 16; k++) r[k] = _mm512_loadu_ps(q[((pos + k) / w) * pw + (pos + k) % w]);
        transpose16(r);
        for (int l = 0; l < 16; l++) {
            __m512 v = bias ? _mm512_add_ps(r[l], _mm512_set1_ps(bias[l])) : r[l];
            if (e) { /* separate multiply and add: no fma, so the bits are the ops' */
                v = _mm512_add_ps(_mm512_mul_ps(_mm512_set1_ps(e->a[l]), v), _mm512_set1_ps(e->b[l]));
                if (e->res) v = _mm512_add_ps(v, _mm512_loadu_ps(e->res + l * hw + pos));
                /* max(0, v) returns v when v is NaN, and -0 for -0: exactly t < 0 ? 0 : t */
                if (e->relu) v = _mm512_max_ps(_mm512_setzero_ps(), v);
            }
            float *o = dst + l * hw + pos;
            _mm512_storeu_ps(o, acc ? _mm512_add_ps(_mm512_loadu_ps(o), v) : v);
        }
    }
    return pos;
}

/* V[xi][t][c] = (B^T d B)[xi] of every a x a input tile d of the nb samples x [nb, cin, h, w]
 * (rows m ty - 1 .. m ty + m, columns likewise, zero outside the plane), t = j*tiles + tile;
 * p: the lane buffer, (m th + 2) x pw, zero where no plane pixel is copied in. */
ALWAYS_INLINE void lane_input(int m, const wino_geom *g, const float *x, int64_t nb,
                              float (*p)[LANES], float *vt, bool wide) {
    int a = m + 2;
    int64_t T = nb * g->tiles, cin = g->cin, h = g->h, w = g->w, pw = g->pw, hw = h * w;
    for (int64_t j = 0; j < nb; j++)
        for (int64_t c0 = 0; c0 < cin; c0 += LANES) {
            int64_t nl = cin - c0 < LANES ? cin - c0 : LANES;
            planes_to_lanes(x + (j * cin + c0) * hw, nl, hw, w, pw, 1, p, wide);
            for (int64_t ty = 0; ty < g->th; ty++)
                for (int64_t tx = 0; tx < g->tw; tx++) {
                    float t[6][6][LANES]; /* B^T d, column b in t[b] */
                    for (int b = 0; b < a; b++) {
                        const float *d[6];
                        for (int r = 0; r < a; r++) d[r] = p[(m * ty + r) * pw + m * tx + b];
                        bt_1d(m, d, t[b]);
                    }
                    float *dst = vt + (j * g->tiles + ty * g->tw + tx) * cin + c0;
                    for (int r = 0; r < a; r++) { /* (B^T d) B: row r, then to VT[r*a + b] */
                        const float *d[6];
                        float v[6][LANES];
                        for (int b = 0; b < a; b++) d[b] = t[b][r];
                        bt_1d(m, d, v);
                        for (int b = 0; b < a; b++) put_lanes(dst + (r * a + b) * T * cin, v[b], nl);
                    }
                }
        }
}

/* y [nb, cout, h, w] (= or += when acc) A^T M A per tile, plus the bias when given, then
 * the epilogue post (on 16 planes just written, still in L1); q: the tiles' pixels in
 * lanes, (m th) x (m tw). */
ALWAYS_INLINE void lane_output(int m, const wino_geom *g, const float *mt, int64_t nb,
                               float (*q)[LANES], const float *bias, const ct_conv2d_post *post,
                               const float *res, float *y, bool acc, bool wide) {
    int a = m + 2;
    int64_t T = nb * g->tiles, cout = g->cout, h = g->h, w = g->w, qw = m * g->tw;
    for (int64_t j = 0; j < nb; j++)
        for (int64_t o0 = 0; o0 < cout; o0 += LANES) {
            int64_t nl = cout - o0 < LANES ? cout - o0 : LANES;
            for (int64_t ty = 0; ty < g->th; ty++)
                for (int64_t tx = 0; tx < g->tw; tx++) {
                    const float *mp = mt + (j * g->tiles + ty * g->tw + tx) * cout + o0;
                    float r[6][4][LANES]; /* A^T M, column b in r[b] */
                    for (int b = 0; b < a; b++) {
                        float in[6][LANES];
                        const float *v[6];
                        for (int i = 0; i < a; i++) {
                            get_lanes(in[i], mp + (i * a + b) * T * cout, nl);
                            v[i] = in[i];
                        }
                        at_1d(m, v, r[b]);
                    }
                    for (int i = 0; i < m; i++) { /* (A^T M) A: row i */
                        const float *v[6];
                        float o[4][LANES];
                        for (int b = 0; b < a; b++) v[b] = r[b][i];
                        at_1d(m, v, o);
                        float *d = q[(m * ty + i) * qw + m * tx];
                        for (int jj = 0; jj < m; jj++)
                            for (int l = 0; l < LANES; l++) d[jj * LANES + l] = o[jj][l];
                    }
                }
            int64_t hw = h * w;
            float *dst = y + (j * cout + o0) * hw;
            const float *bl = bias ? bias + o0 : NULL;
            lane_post e;
            if (post) {
                for (int64_t l = 0; l < nl; l++) {
                    e.a[l] = post->scale ? post->scale[o0 + l] : 1.0f;
                    e.b[l] = post->shift ? post->shift[o0 + l] : 0.0f;
                }
                e.res = res ? res + (j * cout + o0) * hw : NULL;
                e.relu = post->relu;
            }
            const lane_post *ep = post ? &e : NULL;
            int64_t done = wide && nl == LANES ? planes_out_512(q, hw, w, qw, bl, ep, dst, acc) : 0;
            for (int64_t l = 0; l < nl; l++) {
                float b = bl ? bl[l] : 0;
                for (int64_t pos = done; pos < hw; pos++) {
                    float v = q[pos / w * qw + pos % w][l] + b, *o = dst + l * hw + pos;
                    if (ep) v = post_one(v, ep, l, l * hw + pos);
                    *o = acc ? *o + v : v;
                }
            }
        }
}

/* dM[xi][t][co] = (A dY A^T)[xi] of every 2x2 output tile dY of the upstream gradient
 * gy [nb, cout, h, w] (F(2x2) only: the adjoint of lane_output's A^T M A), t as in V; q: a
 * lane buffer of (2 th) x (2 tw), zero where no plane pixel is copied in (odd planes: the
 * tiles' pixels past the plane, which the forward dropped, get no gradient). */
ALWAYS_INLINE void lane_grad(const wino_geom *g, const float *gy, int64_t nb, float (*q)[LANES],
                             float *dm, bool wide) {
    int64_t T = nb * g->tiles, cout = g->cout, h = g->h, w = g->w, hw = h * w, qw = 2 * g->tw;
    for (int64_t j = 0; j < nb; j++)
        for (int64_t o0 = 0; o0 < cout; o0 += LANES) {
            int64_t nl = cout - o0 < LANES ? cout - o0 : LANES;
            planes_to_lanes(gy + (j * cout + o0) * hw, nl, hw, w, qw, 0, q, wide);
            for (int64_t ty = 0; ty < g->th; ty++)
                for (int64_t tx = 0; tx < g->tw; tx++) {
                    const float *y0 = q[2 * ty * qw + 2 * tx], *y1 = y0 + qw * LANES;
                    float r[4][2][LANES]; /* A dY: (y0, y0 + y1, y0 - y1, -y1) down each column */
                    for (int c = 0; c < 2; c++)
                        for (int l = 0; l < LANES; l++) {
                            float a = y0[c * LANES + l], b = y1[c * LANES + l];
                            r[0][c][l] = a, r[1][c][l] = a + b, r[2][c][l] = a - b, r[3][c][l] = -b;
                        }
                    float *dst = dm + (j * g->tiles + ty * g->tw + tx) * cout + o0;
                    for (int a = 0; a < 4; a++) { /* (A dY) A^T: the same along each row */
                        float v[4][LANES];
                        for (int l = 0; l < LANES; l++) {
                            float c0 = r[a][0][l], c1 = r[a][1][l];
                            v[0][l] = c0, v[1][l] = c0 + c1, v[2][l] = c0 - c1, v[3][l] = -c1;
                        }
                        for (int b = 0; b < 4; b++) put_lanes(dst + (a * 4 + b) * T * cout, v[b], nl);
                    }
                }
        }
}
static CT_AVX512 void lane_grad_512(const wino_geom *g, const float *gy, int64_t nb,
                                    float (*q)[LANES], float *dm) {
    lane_grad(g, gy, nb, q, dm, true);
}
static void lane_grad_any(const wino_geom *g, const float *gy, int64_t nb, float (*q)[LANES],
                          float *dm) {
    lane_grad(g, gy, nb, q, dm, false);
}

/* Compiled for AVX-512 (16 lanes, one register) and for any x86-64-v3 CPU (two), for
 * each tile size. */
#define LANE_KERNELS(M)                                                                         \
    static CT_AVX512 void lane_input_512_##M(const wino_geom *g, const float *x, int64_t nb,    \
                                             float (*p)[LANES], float *vt) {                   \
        lane_input(M, g, x, nb, p, vt, true);                                                  \
    }                                                                                           \
    static CT_AVX512 void lane_output_512_##M(const wino_geom *g, const float *mt, int64_t nb, \
                                              float (*q)[LANES], const float *bias,             \
                                              const ct_conv2d_post *post, const float *res,     \
                                              float *y, bool acc) {                             \
        lane_output(M, g, mt, nb, q, bias, post, res, y, acc, true);                            \
    }                                                                                           \
    static void lane_input_any_##M(const wino_geom *g, const float *x, int64_t nb,             \
                                   float (*p)[LANES], float *vt) {                             \
        lane_input(M, g, x, nb, p, vt, false);                                                 \
    }                                                                                           \
    static void lane_output_any_##M(const wino_geom *g, const float *mt, int64_t nb,           \
                                    float (*q)[LANES], const float *bias,                       \
                                    const ct_conv2d_post *post, const float *res, float *y,     \
                                    bool acc) {                                                 \
        lane_output(M, g, mt, nb, q, bias, post, res, y, acc, false);                           \
    }
LANE_KERNELS(2)
LANE_KERNELS(4)

typedef void lane_in_fn(const wino_geom *, const float *, int64_t, float (*)[LANES], float *);
typedef void lane_out_fn(const wino_geom *, const float *, int64_t, float (*)[LANES], const float *,
                         const ct_conv2d_post *, const float *, float *, bool);

typedef void gemm_fn(bool, bool, int64_t, int64_t, int64_t, float, const float *, int64_t,
                     const float *, int64_t, float, float *, int64_t);

void ct__wino_conv(const float *x, int64_t batch, int64_t cin, int64_t cout, int64_t h, int64_t w,
                   const float *wt, bool flip, const float *bias, const ct_conv2d_post *post,
                   float *y, bool acc, bool f4) {
    wino_geom g = geom(batch, cin, cout, h, w, f4);
    int64_t nchunks = (batch + g.nb - 1) / g.nb, T = g.nb * g.tiles, nxi = g.a * g.a;
    bool wide = ct_cpu_avx512();
    lane_in_fn *lane_in = g.m == 4 ? (wide ? lane_input_512_4 : lane_input_any_4)
                                   : (wide ? lane_input_512_2 : lane_input_any_2);
    lane_out_fn *lane_out = g.m == 4 ? (wide ? lane_output_512_4 : lane_output_any_4)
                                     : (wide ? lane_output_512_2 : lane_output_any_2);
    const float *res = post && post->residual ? post->residual->data : NULL; /* [batch, cout, h, w] */
    CT_SCOPE {
        float *u = ct_tensor_new(CT_SHAPE(nxi * cout * cin))->data;
        weight_transform(g.m, wt, cout, cin, flip, u);
        int nt = ct__conv_team(nchunks, batch * cout * h * w * cin);
        float *vs[CT__MAX_TEAM], *ms[CT__MAX_TEAM], *ps[CT__MAX_TEAM], *qs[CT__MAX_TEAM];
        for (int t = 0; t < nt; t++) {
            vs[t] = ct_tensor_new(CT_SHAPE(nxi * cin * T))->data;
            ms[t] = ct_tensor_new(CT_SHAPE(nxi * cout * T))->data;
            /* the lane buffer: the input planes' border stays zero from here on */
            ps[t] = ct_zeros(CT_SHAPE((g.m * g.th + 2) * g.pw * LANES))->data;
            qs[t] = ct_tensor_new(CT_SHAPE(g.m * g.m * g.tiles * LANES))->data;
        }
        gemm_fn *gemm = nchunks > 1 ? ct_gemm_serial : ct_gemm;
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
        for (int64_t ci = 0; ci < nchunks; ci++) {
            int id = ct_thread_id();
            float *v = vs[id], *m = ms[id], (*p)[LANES] = (float(*)[LANES])ps[id],
                  (*q)[LANES] = (float(*)[LANES])qs[id];
            int64_t i0 = ci * g.nb, nb = batch - i0 < g.nb ? batch - i0 : g.nb, tn = nb * g.tiles;
            lane_in(&g, x + i0 * cin * h * w, nb, p, v);
            for (int64_t xi = 0; xi < nxi; xi++)
                gemm(false, false, tn, cout, cin, 1, v + xi * tn * cin, cin, u + xi * cin * cout, cout, 0,
                     m + xi * tn * cout, cout);
            lane_out(&g, m, nb, q, bias, post, res ? res + i0 * cout * h * w : NULL,
                     y + i0 * cout * h * w, acc);
        }
    }
}

/* dw [cout, cin, 3, 3] += dW by F(2x2, 3x3): per chunk, V (the input tiles, as the forward
 * makes them) and dM (lane_grad), then dU[xi] += V[xi]^T @ dM[xi] (cin x cout, the tiles
 * summed by the GEMM), and finally dw += G^T dU G per kernel. Chunks are summed in parts
 * of consecutive chunks, each part its own dU, added in part order: the number of parts
 * depends on the shapes only (as conv.c's dW), so the bits do not depend on the threads. */
void ct__wino_dw(const float *x, const float *gy, int64_t batch, int64_t cin, int64_t cout,
                 int64_t h, int64_t w, float *dw) {
    wino_geom g = geom(batch, cin, cout, h, w, false);
    int64_t nchunks = (batch + g.nb - 1) / g.nb, T = g.nb * g.tiles, usz = 16 * cin * cout;
    bool wide = ct_cpu_avx512();
    CT_SCOPE {
        int64_t parts = ct__conv_parts(nchunks, usz);
        float *du = ct_zeros(CT_SHAPE(parts, usz))->data;
        int nt = ct__conv_team(parts, batch * cout * h * w * cin);
        float *vs[CT__MAX_TEAM], *ms[CT__MAX_TEAM], *ps[CT__MAX_TEAM], *qs[CT__MAX_TEAM];
        for (int t = 0; t < nt; t++) {
            vs[t] = ct_tensor_new(CT_SHAPE(16 * cin * T))->data;
            ms[t] = ct_tensor_new(CT_SHAPE(16 * cout * T))->data;
            ps[t] = ct_zeros(CT_SHAPE((2 * g.th + 2) * g.pw * LANES))->data;
            qs[t] = ct_zeros(CT_SHAPE(4 * g.tiles * LANES))->data;
        }
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
        for (int64_t pt = 0; pt < parts; pt++) {
            int id = ct_thread_id();
            float *v = vs[id], *m = ms[id], *u = du + pt * usz;
            for (int64_t ci = pt * nchunks / parts; ci < (pt + 1) * nchunks / parts; ci++) {
                int64_t i0 = ci * g.nb, nb = batch - i0 < g.nb ? batch - i0 : g.nb, tn = nb * g.tiles;
                (wide ? lane_input_512_2 : lane_input_any_2)(&g, x + i0 * cin * h * w, nb,
                                                             (float(*)[LANES])ps[id], v);
                (wide ? lane_grad_512 : lane_grad_any)(&g, gy + i0 * cout * h * w, nb,
                                                       (float(*)[LANES])qs[id], m);
                for (int xi = 0; xi < 16; xi++)
                    ct_gemm_serial(true, false, cin, cout, tn, 1, v + xi * tn * cin, cin,
                                   m + xi * tn * cout, cout, 1, u + xi * usz / 16, cout);
            }
        }
        /* the parts' dU added in part order, into the first (contiguous passes: reading the
         * parts side by side strode 4 * usz bytes and thrashed the caches) */
        for (int64_t pt = 1; pt < parts; pt++) {
            const float *src = du + pt * usz;
            CT_PAR_FOR(usz)
            for (int64_t i = 0; i < usz; i++) du[i] += src[i];
        }
        /* dw[co, ci] += G^T dU[., ci, co] G */
        CT_PAR_FOR(usz)
        for (int64_t k = 0; k < cin * cout; k++) {
            int64_t ci = k / cout, co = k % cout;
            float d[16], t[4][3];
            for (int xi = 0; xi < 16; xi++) d[xi] = du[xi * cin * cout + k];
            for (int r = 0; r < 4; r++) { /* dU G: (v0 + v1/2 + v2/2, v1/2 - v2/2, v1/2 + v2/2 + v3) */
                const float *v = d + 4 * r;
                t[r][0] = v[0] + 0.5f * v[1] + 0.5f * v[2];
                t[r][1] = 0.5f * v[1] - 0.5f * v[2];
                t[r][2] = 0.5f * v[1] + 0.5f * v[2] + v[3];
            }
            float *o = dw + (co * cin + ci) * 9;
            for (int b = 0; b < 3; b++) { /* G^T (dU G): the same down each column */
                o[b] += t[0][b] + 0.5f * t[1][b] + 0.5f * t[2][b];
                o[3 + b] += 0.5f * t[1][b] - 0.5f * t[2][b];
                o[6 + b] += 0.5f * t[1][b] + 0.5f * t[2][b] + t[3][b];
            }
        }
    }
}
