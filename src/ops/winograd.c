/* Winograd F(2x2, 3x3) for the 3x3 / stride 1 / padding 1 convolutions of the CNN and the
 * ResNets (conv.c picks it; see ct__wino_applies). Each output tile of 2x2 pixels comes
 * from a 4x4 input tile with 16 multiplications per (input, output) channel pair instead
 * of 36, and the multiplications of a whole chunk of tiles are 16 GEMMs
 *   M[xi] (cout x T) = U[xi] (cout x cin) @ V[xi] (cin x T),   xi = 0..15,
 * U the transformed weight (G g G^T), V the transformed input tiles (B^T d B), T the tiles
 * of a chunk of samples; the output is Y = A^T M A per tile. The zero padding is never
 * multiplied: tiles read it as zeros while transforming.
 *
 * dX uses the same kernel: it is the forward of gout through the flipped weight (w[o, c]
 * rotated 180 degrees, as [c, o]); for stride 1 and padding 1 that is exactly the adjoint
 * of the forward. dW stays im2col + sgemm: a Winograd dW (dU = (A dY A^T) @ V^T, then
 * G^T dU G) was written and measured no faster on the CNN's conv2 and 1.4-1.5x slower on
 * 8x8 and 16x16 planes (the transforms of gout and x cost what the 16 GEMMs save).
 * Results differ from im2col's by float rounding only (the transforms add and halve).
 *
 * Measured (CPU time of one thread, best of 10, batch 64 / 32, this machine), im2col
 * against Winograd: the CNN's conv2 (32 to 64 channels, 14x14) forward 3.73-3.93 ms
 * against 3.16-3.26, backward (dX + dW) 8.44-8.93 against 8.06-8.56; 64 channels on
 * 16x16 forward 5.0 against 3.7, backward 10.9 against 9.9; on 8x8 both are even, and on
 * 4x4 Winograd is 1.5-2x slower (4 tiles a plane: the transforms dominate), so it runs on
 * planes of 10x10 and more (ct__wino_applies).
 *
 * Threads: as conv.c, chunks are independent and each writes its own samples, so bits do
 * not depend on the thread count. */
#include "internal.h"

#include <string.h>

#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* Tiles a chunk aims for: the GEMMs' N. 14x14 planes (49 tiles) go 4 samples a chunk. */
#define CHUNK_TILES 200
/* Widest plane handled (one padded row buffer per tile row lives on the stack). */
#define MAX_W 512
/* Widest plane of the lane variant (below), and its padded side. */
#define SMALL_W 8
#define SMALL_P (SMALL_W + 2)

typedef struct {
    int64_t cin, cout, h, w; /* channels in and out; planes h x w (input = output size) */
    int64_t th, tw, tiles;   /* tiles per plane, ceil(h/2) x ceil(w/2) */
    int64_t nb;              /* samples per chunk */
} wino_geom;

static wino_geom geom(int64_t batch, int64_t cin, int64_t cout, int64_t h, int64_t w) {
    wino_geom g = {.cin = cin, .cout = cout, .h = h, .w = w, .th = (h + 1) / 2, .tw = (w + 1) / 2};
    g.tiles = g.th * g.tw;
    g.nb = CHUNK_TILES / g.tiles;
    g.nb = g.nb < 1 ? 1 : g.nb > batch ? batch : g.nb;
    return g;
}

bool ct__wino_applies(int64_t c, int64_t o, int64_t h, int64_t w) {
    bool small = h >= 2 && w >= 2 && h <= SMALL_W && w <= SMALL_W;
    return c >= 16 && o >= 16 && (small || (h >= 10 && w >= 10 && w <= MAX_W));
}

/* U[xi][co][ci] = (G g G^T)[xi] for g = w[co, ci] (flip: g = w[ci, co] rotated 180 degrees,
 * w then [cin, cout, 3, 3]); lanes: U[xi][ci][co] instead. 16 kernels of consecutive
 * inner indices go through the transform together, one per vector lane (their 9 taps
 * gathered first), so it vectorises and u is written in order: one kernel at a time it
 * ran scalar and cost half of what the input transform does on ResNet's small layers,
 * on every forward. */
static void weight_transform(const float *w, int64_t cout, int64_t cin, bool flip, bool lanes,
                             float *u) {
    int64_t outer = lanes ? cin : cout, inner = lanes ? cout : cin, blocks = (inner + 15) / 16;
    CT_PAR_FOR(cout * cin * 16)
    for (int64_t ab = 0; ab < outer * blocks; ab++) {
        int64_t a = ab / blocks, b0 = ab % blocks * 16, nl = inner - b0 < 16 ? inner - b0 : 16;
        float k[9][16] = {{0}}, t[4][3][16];
        for (int64_t l = 0; l < nl; l++) {
            int64_t co = lanes ? b0 + l : a, ci = lanes ? a : b0 + l;
            const float *src = flip ? w + (ci * cout + co) * 9 : w + (co * cin + ci) * 9;
            for (int e = 0; e < 9; e++) k[e][l] = src[flip ? 8 - e : e];
        }
        for (int j = 0; j < 3; j++) /* G g: rows */
            for (int l = 0; l < 16; l++) {
                float k0 = k[j][l], k1 = k[3 + j][l], k2 = k[6 + j][l];
                t[0][j][l] = k0;
                t[1][j][l] = 0.5f * (k0 + k1 + k2);
                t[2][j][l] = 0.5f * (k0 - k1 + k2);
                t[3][j][l] = k2;
            }
        for (int i = 0; i < 4; i++) { /* (G g) G^T: columns */
            float r[4][16];
            for (int l = 0; l < 16; l++) {
                float t0 = t[i][0][l], t1 = t[i][1][l], t2 = t[i][2][l];
                r[0][l] = t0;
                r[1][l] = 0.5f * (t0 + t1 + t2);
                r[2][l] = 0.5f * (t0 - t1 + t2);
                r[3][l] = t2;
            }
            for (int j = 0; j < 4; j++) {
                float *dst = u + ((i * 4 + j) * outer + a) * inner + b0;
                for (int64_t l = 0; l < nl; l++) dst[l] = r[j][l];
            }
        }
    }
}

/* V[xi][c][t] = (B^T d B)[xi] of every 4x4 input tile d of the nb samples x [nb, cin, h, w]
 * (rows 2ty-1..2ty+2, columns 2tx-1..2tx+2, zero outside the plane); t = j*tiles + tile.
 * Every loop runs along a row (contiguous, so it vectorises); the 4x4 tiles are never
 * gathered, and the input is read in place (rows outside the plane read `zero`, columns
 * outside it are the zero ends of t). */
static void input_transform(const wino_geom *g, const float *x, int64_t nb, float *v) {
    int64_t T = nb * g->tiles, h = g->h, w = g->w, tw = g->tw, cs = g->cin * T;
    static const float zero[MAX_W];
    float t[4][MAX_W + 4], ev[MAX_W / 2 + 4], od[MAX_W / 2 + 4];
    for (int k = 0; k < 4; k++) /* columns -1 and w .. 2tw: zero (only [1, w] is written) */
        for (int64_t q = 0; q < 2 * tw + 2; q++) t[k][q] = 0;
    for (int64_t j = 0; j < nb; j++)
        for (int64_t c = 0; c < g->cin; c++) {
            const float *p = x + (j * g->cin + c) * h * w;
            for (int64_t ty = 0; ty < g->th; ty++) {
                const float *r[4];
                for (int k = 0; k < 4; k++) {
                    int64_t iy = 2 * ty - 1 + k;
                    r[k] = iy >= 0 && iy < h ? p + iy * w : zero;
                }
                const float *r0 = r[0], *r1 = r[1], *r2 = r[2], *r3 = r[3];
                float *t0 = t[0] + 1, *t1 = t[1] + 1, *t2 = t[2] + 1, *t3 = t[3] + 1;
                for (int64_t q = 0; q < w; q++) { /* B^T d, on whole rows */
                    t0[q] = r0[q] - r2[q];
                    t1[q] = r1[q] + r2[q];
                    t2[q] = r2[q] - r1[q];
                    t3[q] = r1[q] - r3[q];
                }
                float *dst = v + c * T + j * g->tiles + ty * tw;
                for (int k = 0; k < 4; k++) { /* (B^T d) B: even and odd columns apart */
                    for (int64_t q = 0; q <= tw; q++) ev[q] = t[k][2 * q], od[q] = t[k][2 * q + 1];
                    float *d0 = dst + (k * 4) * cs, *d1 = d0 + cs, *d2 = d1 + cs, *d3 = d2 + cs;
                    for (int64_t tx = 0; tx < tw; tx++) d0[tx] = ev[tx] - ev[tx + 1];
                    for (int64_t tx = 0; tx < tw; tx++) d1[tx] = od[tx] + ev[tx + 1];
                    for (int64_t tx = 0; tx < tw; tx++) d2[tx] = ev[tx + 1] - od[tx];
                    for (int64_t tx = 0; tx < tw; tx++) d3[tx] = od[tx] - od[tx + 1];
                }
            }
        }
}

/* y [nb, cout, h, w] (= or +=) A^T M A per tile, plus the bias when given. Row-wise as
 * input_transform: s = A^T M over the 16 streams, then the columns, written in place. */
static void output_transform(const wino_geom *g, const float *m, int64_t nb, const float *bias,
                             float *y, bool acc) {
    int64_t T = nb * g->tiles, h = g->h, w = g->w, tw = g->tw, xs = g->cout * T, pairs = w / 2;
    float s0[4][MAX_W / 2 + 4], s1[4][MAX_W / 2 + 4];
    for (int64_t j = 0; j < nb; j++)
        for (int64_t o = 0; o < g->cout; o++) {
            float b = bias ? bias[o] : 0;
            float *yp = y + (j * g->cout + o) * h * w;
            for (int64_t ty = 0; ty < g->th; ty++) {
                const float *s = m + o * T + j * g->tiles + ty * tw;
                for (int l = 0; l < 4; l++) {
                    const float *m0 = s + l * xs, *m1 = m0 + 4 * xs, *m2 = m1 + 4 * xs, *m3 = m2 + 4 * xs;
                    for (int64_t tx = 0; tx < tw; tx++) {
                        s0[l][tx] = m0[tx] + m1[tx] + m2[tx];
                        s1[l][tx] = m1[tx] - m2[tx] - m3[tx];
                    }
                }
                for (int i = 0; i < 2 && 2 * ty + i < h; i++) {
                    float(*sr)[MAX_W / 2 + 4] = i ? s1 : s0;
                    float *dst = yp + (2 * ty + i) * w;
                    for (int64_t tx = 0; tx < pairs; tx++) {
                        float e = sr[0][tx] + sr[1][tx] + sr[2][tx] + b;
                        float od = sr[1][tx] - sr[2][tx] - sr[3][tx] + b;
                        dst[2 * tx] = acc ? dst[2 * tx] + e : e;
                        dst[2 * tx + 1] = acc ? dst[2 * tx + 1] + od : od;
                    }
                    if (w & 1) { /* the last tile's left column only */
                        float e = sr[0][pairs] + sr[1][pairs] + sr[2][pairs] + b;
                        dst[w - 1] = acc ? dst[w - 1] + e : e;
                    }
                }
            }
        }
}

/* ---- small planes (8x8 and less): channels in vector lanes ------------------------------
 * On a 4x4 plane a row is 4 floats, so the row-wise transforms above run mostly scalar
 * and cost more than the GEMMs save. Here 16 channels of one sample go through the
 * transforms together, one channel per vector lane, and the GEMMs take the transposed
 * layout, tiles as rows and channels contiguous:
 *   MT[xi] (T x cout) = VT[xi] (T x cin) @ UT[xi] (cin x cout),
 * so a tile's 16 transformed values of 16 channels are 16 whole-vector stores. A plane
 * (with its zero border) is first copied into lanes: p[row][col][lane]. */
#define LANES 16
#define SMALL_CHUNK_FLOATS 8192         /* a chunk's VT[xi] or MT[xi]: tiles x channels, */
#define SMALL_MIN_T 64                  /* within these tiles (the GEMMs' M) */
#define SMALL_MAX_T 128

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

ALWAYS_INLINE void lane_input(const wino_geom *g, const float *x, int64_t nb, float *vt) {
    int64_t T = nb * g->tiles, cin = g->cin, h = g->h, w = g->w, pw = 2 * g->tw + 2;
    float p[SMALL_P * SMALL_P][LANES];
    memset(p, 0, sizeof p); /* the border stays zero: only the interior is written below */
    for (int64_t j = 0; j < nb; j++)
        for (int64_t c0 = 0; c0 < cin; c0 += LANES) {
            int64_t nl = cin - c0 < LANES ? cin - c0 : LANES;
            const float *src = x + (j * cin + c0) * h * w;
            for (int64_t l = 0; l < nl; l++)
                for (int64_t iy = 0; iy < h; iy++)
                    for (int64_t ix = 0; ix < w; ix++) p[(iy + 1) * pw + ix + 1][l] = src[(l * h + iy) * w + ix];
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

ALWAYS_INLINE void lane_output(const wino_geom *g, const float *mt, int64_t nb, const float *bias,
                               float *y, bool acc) {
    int64_t T = nb * g->tiles, cout = g->cout, h = g->h, w = g->w, pw = 2 * g->tw;
    float q[SMALL_W * SMALL_W + 2 * SMALL_W + 1][LANES]; /* the tiles' pixels, rows pw apart */
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
                        float *d = q[(2 * ty + i) * pw + 2 * tx];
                        for (int l = 0; l < LANES; l++) {
                            d[l] = r[i][0][l] + r[i][1][l] + r[i][2][l];
                            d[LANES + l] = r[i][1][l] - r[i][2][l] - r[i][3][l];
                        }
                    }
                }
            float *dst = y + (j * cout + o0) * h * w;
            for (int64_t l = 0; l < nl; l++) {
                float b = bias ? bias[o0 + l] : 0;
                for (int64_t iy = 0; iy < h; iy++)
                    for (int64_t ix = 0; ix < w; ix++) {
                        float v = q[iy * pw + ix][l] + b;
                        float *o = dst + (l * h + iy) * w + ix;
                        *o = acc ? *o + v : v;
                    }
            }
        }
}

/* Compiled for AVX-512 (16 lanes, one register) and for any x86-64-v3 CPU (two). */
static CT_AVX512 void lane_input_512(const wino_geom *g, const float *x, int64_t nb, float *vt) {
    lane_input(g, x, nb, vt);
}
static CT_AVX512 void lane_output_512(const wino_geom *g, const float *mt, int64_t nb,
                                      const float *bias, float *y, bool acc) {
    lane_output(g, mt, nb, bias, y, acc);
}
static void lane_input_any(const wino_geom *g, const float *x, int64_t nb, float *vt) {
    lane_input(g, x, nb, vt);
}
static void lane_output_any(const wino_geom *g, const float *mt, int64_t nb, const float *bias,
                            float *y, bool acc) {
    lane_output(g, mt, nb, bias, y, acc);
}

typedef void gemm_fn(bool, bool, int64_t, int64_t, int64_t, float, const float *, int64_t,
                     const float *, int64_t, float, float *, int64_t);

void ct__wino_conv(const float *x, int64_t batch, int64_t cin, int64_t cout, int64_t h, int64_t w,
                   const float *wt, bool flip, const float *bias, float *y, bool acc) {
    bool lanes = h <= SMALL_W && w <= SMALL_W, wide = ct_cpu_avx512();
    wino_geom g = geom(batch, cin, cout, h, w);
    if (lanes) { /* SMALL_CHUNK_FLOATS per VT[xi] / MT[xi], SMALL_MIN_T to SMALL_MAX_T tiles */
        int64_t c = cin > cout ? cin : cout, t = SMALL_CHUNK_FLOATS / c;
        t = t < SMALL_MIN_T ? SMALL_MIN_T : t > SMALL_MAX_T ? SMALL_MAX_T : t;
        g.nb = t / g.tiles;
        g.nb = g.nb < 1 ? 1 : g.nb > batch ? batch : g.nb;
    }
    int64_t nchunks = (batch + g.nb - 1) / g.nb, T = g.nb * g.tiles;
    CT_SCOPE {
        float *u = ct_tensor_new(CT_SHAPE(16 * cout * cin))->data;
        weight_transform(wt, cout, cin, flip, lanes, u);
        int nt = ct__conv_team(nchunks, batch * cout * h * w * cin);
        float *vs[CT__MAX_TEAM], *ms[CT__MAX_TEAM];
        for (int t = 0; t < nt; t++) {
            vs[t] = ct_tensor_new(CT_SHAPE(16 * cin * T))->data;
            ms[t] = ct_tensor_new(CT_SHAPE(16 * cout * T))->data;
        }
        gemm_fn *gemm = nchunks > 1 ? ct_gemm_serial : ct_gemm;
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
        for (int64_t ci = 0; ci < nchunks; ci++) {
            float *v = vs[ct_thread_id()], *m = ms[ct_thread_id()];
            int64_t i0 = ci * g.nb, nb = batch - i0 < g.nb ? batch - i0 : g.nb, tn = nb * g.tiles;
            const float *xc = x + i0 * cin * h * w;
            float *yc = y + i0 * cout * h * w;
            if (lanes) {
                (wide ? lane_input_512 : lane_input_any)(&g, xc, nb, v);
                for (int xi = 0; xi < 16; xi++)
                    gemm(false, false, tn, cout, cin, 1, v + xi * tn * cin, cin, u + xi * cin * cout, cout,
                         0, m + xi * tn * cout, cout);
                (wide ? lane_output_512 : lane_output_any)(&g, m, nb, bias, yc, acc);
                continue;
            }
            input_transform(&g, xc, nb, v);
            for (int xi = 0; xi < 16; xi++)
                gemm(false, false, cout, tn, cin, 1, u + xi * cout * cin, cin, v + xi * cin * tn, tn, 0,
                     m + xi * cout * tn, tn);
            output_transform(&g, m, nb, bias, yc, acc);
        }
    }
}
