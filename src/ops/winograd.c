/* Winograd F(2x2, 3x3) for the 3x3 / stride 1 / padding 1 convolutions of the CNN and the
 * ResNets (conv.c picks it; see ct__wino_applies). Each output tile of 2x2 pixels comes
 * from a 4x4 input tile with 16 multiplications per (input, output) channel pair instead
 * of 36, and the multiplications of a whole chunk of tiles are 16 GEMMs
 *   M[xi] (T x cout) = V[xi] (T x cin) @ U[xi] (cin x cout),   xi = 0..15,
 * U the transformed weight (G g G^T), V the transformed input tiles (B^T d B), T the tiles
 * of a chunk of samples; the output is Y = A^T M A per tile. The zero padding is never
 * multiplied: tiles read it as zeros while transforming.
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
 * of the forward. dW stays im2col + sgemm: a Winograd dW (dU = (A dY A^T) @ V^T, then
 * G^T dU G) was written and measured no faster on the CNN's conv2 and 1.4-1.5x slower on
 * 8x8 and 16x16 planes (the transforms of gout and x cost what the 16 GEMMs save).
 * Results differ from im2col's by float rounding only (the transforms add and halve).
 *
 * Threads: as conv.c, chunks are independent and each writes its own samples, so bits do
 * not depend on the thread count. */
#include "internal.h"

#include <immintrin.h>
#include <string.h>

#define ALWAYS_INLINE static inline __attribute__((always_inline))
#define LANES 16
/* A chunk's V[xi] or M[xi] aims at CHUNK_FLOATS (tiles x channels), within MIN_T to MAX_T
 * tiles (the GEMMs' M); whole samples, at least one. */
#define CHUNK_FLOATS 8192
#define MIN_T 64
#define MAX_T 128

typedef struct {
    int64_t cin, cout, h, w; /* channels in and out; planes h x w (input = output size) */
    int64_t th, tw, tiles;   /* tiles per plane, ceil(h/2) x ceil(w/2) */
    int64_t pw;              /* the lane buffer's padded width, 2 tw + 2 */
    int64_t nb;              /* samples per chunk */
} wino_geom;

static wino_geom geom(int64_t batch, int64_t cin, int64_t cout, int64_t h, int64_t w) {
    wino_geom g = {.cin = cin, .cout = cout, .h = h, .w = w, .th = (h + 1) / 2, .tw = (w + 1) / 2};
    g.tiles = g.th * g.tw;
    g.pw = 2 * g.tw + 2;
    int64_t c = cin > cout ? cin : cout, t = CHUNK_FLOATS / c;
    t = t < MIN_T ? MIN_T : t > MAX_T ? MAX_T : t;
    g.nb = t / g.tiles;
    g.nb = g.nb < 1 ? 1 : g.nb > batch ? batch : g.nb;
    return g;
}

bool ct__wino_applies(int64_t c, int64_t o, int64_t h, int64_t w) {
    return c >= 16 && o >= 16 && h >= 2 && w >= 2;
}

/* U[xi][ci][co] = (G g G^T)[xi] for g = w[co, ci] (flip: g = w[ci, co] rotated 180 degrees,
 * w then [cin, cout, 3, 3]). 16 kernels of consecutive co go through the transform
 * together, one per vector lane (their 9 taps gathered first), so it vectorises and u is
 * written in order: one kernel at a time it ran scalar and cost half of what the input
 * transform does on ResNet's small layers, on every forward. */
static void weight_transform(const float *w, int64_t cout, int64_t cin, bool flip, float *u) {
    int64_t blocks = (cout + LANES - 1) / LANES;
    CT_PAR_FOR(cout * cin * 16)
    for (int64_t cb = 0; cb < cin * blocks; cb++) {
        int64_t ci = cb / blocks, o0 = cb % blocks * LANES, nl = cout - o0 < LANES ? cout - o0 : LANES;
        float k[9][LANES] = {{0}}, t[4][3][LANES];
        for (int64_t l = 0; l < nl; l++) {
            int64_t co = o0 + l;
            const float *src = flip ? w + (ci * cout + co) * 9 : w + (co * cin + ci) * 9;
            for (int e = 0; e < 9; e++) k[e][l] = src[flip ? 8 - e : e];
        }
        for (int j = 0; j < 3; j++) /* G g: rows */
            for (int l = 0; l < LANES; l++) {
                float k0 = k[j][l], k1 = k[3 + j][l], k2 = k[6 + j][l];
                t[0][j][l] = k0;
                t[1][j][l] = 0.5f * (k0 + k1 + k2);
                t[2][j][l] = 0.5f * (k0 - k1 + k2);
                t[3][j][l] = k2;
            }
        for (int i = 0; i < 4; i++) { /* (G g) G^T: columns */
            float r[4][LANES];
            for (int l = 0; l < LANES; l++) {
                float t0 = t[i][0][l], t1 = t[i][1][l], t2 = t[i][2][l];
                r[0][l] = t0;
                r[1][l] = 0.5f * (t0 + t1 + t2);
                r[2][l] = 0.5f * (t0 - t1 + t2);
                r[3][l] = t2;
            }
            for (int j = 0; j < 4; j++) {
                float *dst = u + ((i * 4 + j) * cin + ci) * cout + o0;
                for (int64_t l = 0; l < nl; l++) dst[l] = r[j][l];
            }
        }
    }
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

/* 16 planes src[l * hw + pos] into lanes p[(iy + 1) * pw + ix + 1][l], 16 pixels at a time;
 * returns the pixels done (a multiple of 16; the caller copies the rest). */
static inline CT_AVX512 int64_t planes_in_512(const float *src, int64_t hw, int64_t w, int64_t pw,
                                              float (*p)[LANES]) {
    int64_t pos = 0;
    for (; pos + 16 <= hw; pos += 16) {
        __m512 r[16];
        for (int l = 0; l < 16; l++) r[l] = _mm512_loadu_ps(src + l * hw + pos);
        transpose16(r);
        for (int k = 0; k < 16; k++)
            _mm512_storeu_ps(p[((pos + k) / w + 1) * pw + (pos + k) % w + 1], r[k]);
    }
    return pos;
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

/* V[xi][t][c] = (B^T d B)[xi] of every 4x4 input tile d of the nb samples x [nb, cin, h, w]
 * (rows 2ty-1..2ty+2, columns 2tx-1..2tx+2, zero outside the plane), t = j*tiles + tile;
 * p: the lane buffer, (2 th + 2) x pw, zero where no plane pixel is copied in. */
ALWAYS_INLINE void lane_input(const wino_geom *g, const float *x, int64_t nb, float (*p)[LANES],
                              float *vt, bool wide) {
    int64_t T = nb * g->tiles, cin = g->cin, h = g->h, w = g->w, pw = g->pw, hw = h * w;
    for (int64_t j = 0; j < nb; j++)
        for (int64_t c0 = 0; c0 < cin; c0 += LANES) {
            int64_t nl = cin - c0 < LANES ? cin - c0 : LANES;
            const float *src = x + (j * cin + c0) * hw;
            int64_t done = wide && nl == LANES ? planes_in_512(src, hw, w, pw, p) : 0;
            for (int64_t l = 0; l < nl; l++)
                for (int64_t pos = done; pos < hw; pos++) p[(pos / w + 1) * pw + pos % w + 1][l] = src[l * hw + pos];
            for (int64_t ty = 0; ty < g->th; ty++)
                for (int64_t tx = 0; tx < g->tw; tx++) {
                    float t[4][4][LANES]; /* B^T d: rows */
                    for (int b = 0; b < 4; b++) {
                        const float *d0 = p[(2 * ty) * pw + 2 * tx + b], *d1 = d0 + pw * LANES,
                                    *d2 = d1 + pw * LANES, *d3 = d2 + pw * LANES;
                        for (int l = 0; l < LANES; l++) {
                            t[0][b][l] = d0[l] - d2[l];
                            t[1][b][l] = d1[l] + d2[l];
                            t[2][b][l] = d2[l] - d1[l];
                            t[3][b][l] = d1[l] - d3[l];
                        }
                    }
                    float *dst = vt + (j * g->tiles + ty * g->tw + tx) * cin + c0;
                    for (int a = 0; a < 4; a++) { /* (B^T d) B: columns, then to VT[a*4 + b] */
                        float v[4][LANES];
                        for (int l = 0; l < LANES; l++) {
                            v[0][l] = t[a][0][l] - t[a][2][l];
                            v[1][l] = t[a][1][l] + t[a][2][l];
                            v[2][l] = t[a][2][l] - t[a][1][l];
                            v[3][l] = t[a][1][l] - t[a][3][l];
                        }
                        for (int b = 0; b < 4; b++) put_lanes(dst + (a * 4 + b) * T * cin, v[b], nl);
                    }
                }
        }
}

/* y [nb, cout, h, w] (= or += when acc) A^T M A per tile, plus the bias when given, then
 * the epilogue post (on 16 planes just written, still in L1); q: the tiles' pixels in
 * lanes, (2 th) x (2 tw). */
ALWAYS_INLINE void lane_output(const wino_geom *g, const float *mt, int64_t nb, float (*q)[LANES],
                               const float *bias, const ct_conv2d_post *post, const float *res,
                               float *y, bool acc, bool wide) {
    int64_t T = nb * g->tiles, cout = g->cout, h = g->h, w = g->w, qw = 2 * g->tw;
    for (int64_t j = 0; j < nb; j++)
        for (int64_t o0 = 0; o0 < cout; o0 += LANES) {
            int64_t nl = cout - o0 < LANES ? cout - o0 : LANES;
            for (int64_t ty = 0; ty < g->th; ty++)
                for (int64_t tx = 0; tx < g->tw; tx++) {
                    const float *m = mt + (j * g->tiles + ty * g->tw + tx) * cout + o0;
                    float r[2][4][LANES]; /* A^T M: rows */
                    for (int b = 0; b < 4; b++) {
                        const float *m0 = m + b * T * cout, *m1 = m0 + 4 * T * cout,
                                    *m2 = m1 + 4 * T * cout, *m3 = m2 + 4 * T * cout;
                        float a0[LANES], a1[LANES], a2[LANES], a3[LANES];
                        get_lanes(a0, m0, nl), get_lanes(a1, m1, nl);
                        get_lanes(a2, m2, nl), get_lanes(a3, m3, nl);
                        for (int l = 0; l < LANES; l++) {
                            r[0][b][l] = a0[l] + a1[l] + a2[l];
                            r[1][b][l] = a1[l] - a2[l] - a3[l];
                        }
                    }
                    for (int i = 0; i < 2; i++) { /* (A^T M) A: columns */
                        float *d = q[(2 * ty + i) * qw + 2 * tx];
                        for (int l = 0; l < LANES; l++) {
                            d[l] = r[i][0][l] + r[i][1][l] + r[i][2][l];
                            d[LANES + l] = r[i][1][l] - r[i][2][l] - r[i][3][l];
                        }
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

/* Compiled for AVX-512 (16 lanes, one register) and for any x86-64-v3 CPU (two). */
static CT_AVX512 void lane_input_512(const wino_geom *g, const float *x, int64_t nb,
                                     float (*p)[LANES], float *vt) {
    lane_input(g, x, nb, p, vt, true);
}
static CT_AVX512 void lane_output_512(const wino_geom *g, const float *mt, int64_t nb,
                                      float (*q)[LANES], const float *bias,
                                      const ct_conv2d_post *post, const float *res, float *y,
                                      bool acc) {
    lane_output(g, mt, nb, q, bias, post, res, y, acc, true);
}
static void lane_input_any(const wino_geom *g, const float *x, int64_t nb, float (*p)[LANES],
                           float *vt) {
    lane_input(g, x, nb, p, vt, false);
}
static void lane_output_any(const wino_geom *g, const float *mt, int64_t nb, float (*q)[LANES],
                            const float *bias, const ct_conv2d_post *post, const float *res,
                            float *y, bool acc) {
    lane_output(g, mt, nb, q, bias, post, res, y, acc, false);
}

typedef void gemm_fn(bool, bool, int64_t, int64_t, int64_t, float, const float *, int64_t,
                     const float *, int64_t, float, float *, int64_t);

void ct__wino_conv(const float *x, int64_t batch, int64_t cin, int64_t cout, int64_t h, int64_t w,
                   const float *wt, bool flip, const float *bias, const ct_conv2d_post *post,
                   float *y, bool acc) {
    wino_geom g = geom(batch, cin, cout, h, w);
    int64_t nchunks = (batch + g.nb - 1) / g.nb, T = g.nb * g.tiles;
    bool wide = ct_cpu_avx512();
    const float *res = post && post->residual ? post->residual->data : NULL; /* [batch, cout, h, w] */
    CT_SCOPE {
        float *u = ct_tensor_new(CT_SHAPE(16 * cout * cin))->data;
        weight_transform(wt, cout, cin, flip, u);
        int nt = ct__conv_team(nchunks, batch * cout * h * w * cin);
        float *vs[CT__MAX_TEAM], *ms[CT__MAX_TEAM], *ps[CT__MAX_TEAM], *qs[CT__MAX_TEAM];
        for (int t = 0; t < nt; t++) {
            vs[t] = ct_tensor_new(CT_SHAPE(16 * cin * T))->data;
            ms[t] = ct_tensor_new(CT_SHAPE(16 * cout * T))->data;
            /* the lane buffer: the input planes' border stays zero from here on */
            ps[t] = ct_zeros(CT_SHAPE((2 * g.th + 2) * g.pw * LANES))->data;
            qs[t] = ct_tensor_new(CT_SHAPE(4 * g.tiles * LANES))->data;
        }
        gemm_fn *gemm = nchunks > 1 ? ct_gemm_serial : ct_gemm;
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
        for (int64_t ci = 0; ci < nchunks; ci++) {
            int id = ct_thread_id();
            float *v = vs[id], *m = ms[id], (*p)[LANES] = (float(*)[LANES])ps[id],
                  (*q)[LANES] = (float(*)[LANES])qs[id];
            int64_t i0 = ci * g.nb, nb = batch - i0 < g.nb ? batch - i0 : g.nb, tn = nb * g.tiles;
            (wide ? lane_input_512 : lane_input_any)(&g, x + i0 * cin * h * w, nb, p, v);
            for (int xi = 0; xi < 16; xi++)
                gemm(false, false, tn, cout, cin, 1, v + xi * tn * cin, cin, u + xi * cin * cout, cout, 0,
                     m + xi * tn * cout, cout);
            (wide ? lane_output_512 : lane_output_any)(&g, m, nb, q, bias, post,
                                                       res ? res + i0 * cout * h * w : NULL,
                                                       y + i0 * cout * h * w, acc);
        }
    }
}
