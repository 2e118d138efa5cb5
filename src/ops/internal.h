/* Helpers shared by the op files (not public). */
#ifndef CT_OPS_INTERNAL_H
#define CT_OPS_INTERNAL_H

#include "ops.h"

/* Aborts naming the op and both shapes unless a and b have the same shape. */
void ct__check_same_shape(const char *op, const ct_tensor *a, const ct_tensor *b);
/* Aborts naming the op unless x has exactly `ndim` dims (what = "[N, C, H, W]" etc). */
void ct__check_ndim(const char *op, const ct_tensor *x, int ndim, const char *what);
/* Normalises a possibly negative dim, aborting when out of range. */
int ct__dim(const char *op, const ct_tensor *x, int dim);
/* A pointwise op: out[i] = f(x[i]), recorded with backward bw, which finds the output
 * (save_output) or the input in saved[0]. */
ct_tensor *ct__map(const char *op, ct_tensor *x, float (*f)(float), ct_backward_fn bw,
                   bool save_output);

/* A kernel compiled for AVX-512 in every build (the build's baseline is AVX2); it runs only
 * where ct_cpu_avx512() says the CPU has it. Intrinsics from <immintrin.h> are usable
 * inside such a function, and a static inline helper without the attribute inlines into it. */
#define CT_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl")))

/* The convolution's threading (conv.c), shared with winograd.c: threads for `tasks`
 * independent tasks of `work` elements in all (at most CT__MAX_TEAM), and the shape-fixed
 * number of parts a weight gradient of dw_numel floats is summed in over nchunks chunks. */
#define CT__MAX_TEAM 256
int ct__conv_team(int64_t tasks, int64_t work);
int64_t ct__conv_parts(int64_t nchunks, int64_t dw_numel);
/* Winograd for 3x3 / stride 1 / padding 1 / one group (winograd.c): whether it is used for
 * these channels and plane size; y [batch, cout, h, w] = (or += when acc) the convolution
 * of x [batch, cin, h, w] with wt [cout, cin, 3, 3] (flip: wt is [cin, cout, 3, 3] used
 * rotated 180 degrees, the dX of the forward), plus bias if not NULL, then post. f4: no
 * gradient flows through y, so F(4x4, 3x3) may run (else F(2x2, 3x3)). */
bool ct__wino_applies(int64_t c, int64_t o, int64_t h, int64_t w);
void ct__wino_conv(const float *x, int64_t batch, int64_t cin, int64_t cout, int64_t h, int64_t w,
                   const float *wt, bool flip, const float *bias, const ct_conv2d_post *post,
                   float *y, bool acc, bool f4);
/* dw [cout, cin, 3, 3] += the weight gradient of that convolution (F(2x2, 3x3)), from x and
 * the upstream gradient gy [batch, cout, h, w]. */
void ct__wino_dw(const float *x, const float *gy, int64_t batch, int64_t cin, int64_t cout,
                 int64_t h, int64_t w, float *dw);

/* A convolution's shape, for the paths outside conv.c. */
typedef struct {
    int64_t c, h, w, o, oh, ow, kh, kw, sh, sw, ph, pw, groups;
} ct__conv_shape;
/* The epilogue (ct_conv2d_post) on one sample's o output planes of hw floats, res the
 * residual at the same place or NULL (conv.c). */
void ct__conv_sample_post(float *y, const float *res, int64_t o, int64_t hw,
                          const ct_conv2d_post *p);
/* Small planes as one GEMM over the batch (conv_dense.c): whether the shape and batch take
 * it; y [batch, O, OH, OW] = the convolution of x with w [O, C, kh, kw] plus bias if not
 * NULL, then post; and the backward, gw += dW and gx += dX for those not NULL. */
bool ct__dense_applies(const ct__conv_shape *s, int64_t batch);
void ct__dense_forward(const ct__conv_shape *s, int64_t batch, const float *x, const float *w,
                       const float *bias, const ct_conv2d_post *post, float *y);
void ct__dense_backward(const ct__conv_shape *s, int64_t batch, const float *gout,
                        const float *x, const float *w, float *gw, float *gx);

/* Views x as [outer, d, inner] around dim (already normalised) (reduce.c). */
void ct__split_dim(const ct_tensor *x, int dim, int64_t *outer, int64_t *d, int64_t *inner);
/* Sum of x[0..n) accumulated in double in 8 lanes (reduce.c). */
double ct__sumf(const float *x, int64_t n);
/* Max of x[0..n), -inf when n == 0. NaNs are skipped; callers' arithmetic on x still
 * propagates them (reduce.c). */
float ct__maxf(const float *x, int64_t n);

/* y += a * x over n floats (reduce.c). */
void ct__axpy(float *restrict y, const float *restrict x, float a, int64_t n);

/* The one vectorisation idiom, for float sums whose order is part of the result: the lanes
 * fix the order (the compiler may not reassociate a float sum, so a single running sum
 * would stay scalar). Loops whose order does not matter (elementwise passes) are plain
 * loops, which the build's dynamic cost model vectorises. */

/* Sums EXPR over k in [b, e) for a contiguous run: eight float lanes let the compiler
 * vectorise without reassociating, and each 256-element block is flushed into a double so
 * long planes (e.g. 224x224) keep their precision. */
#define CT_LANE_SUM(b, e, k, EXPR, out)                                               \
    do {                                                                              \
        double t_ = 0;                                                                \
        for (int64_t b_ = (b); b_ < (e); b_ += 256) {                                 \
            int64_t e_ = b_ + 256 < (e) ? b_ + 256 : (e);                             \
            float a_[8] = {0};                                                        \
            int64_t k0_ = b_;                                                         \
            for (; k0_ + 8 <= e_; k0_ += 8)                                           \
                for (int j_ = 0; j_ < 8; j_++) {                                      \
                    int64_t k = k0_ + j_;                                             \
                    a_[j_] += (EXPR);                                                 \
                }                                                                     \
            for (int64_t k = k0_; k < e_; k++) a_[0] += (EXPR);                       \
            t_ += (double)(((a_[0] + a_[1]) + (a_[2] + a_[3])) +                      \
                           ((a_[4] + a_[5]) + (a_[6] + a_[7])));                      \
        }                                                                             \
        (out) += t_;                                                                  \
    } while (0)

/* CT_LANE_SUM of two expressions in one pass over the run, each summed exactly as
 * CT_LANE_SUM would (same lanes, same order), so fusing changes no bit of either result. */
#define CT_LANE_SUM2(b, e, k, EXPR1, out1, EXPR2, out2)                               \
    do {                                                                              \
        double t1_ = 0, t2_ = 0;                                                      \
        for (int64_t b_ = (b); b_ < (e); b_ += 256) {                                 \
            int64_t e_ = b_ + 256 < (e) ? b_ + 256 : (e);                             \
            float a_[8] = {0}, c_[8] = {0};                                           \
            int64_t k0_ = b_;                                                         \
            for (; k0_ + 8 <= e_; k0_ += 8)                                           \
                for (int j_ = 0; j_ < 8; j_++) {                                      \
                    int64_t k = k0_ + j_;                                             \
                    a_[j_] += (EXPR1);                                                \
                    c_[j_] += (EXPR2);                                                \
                }                                                                     \
            for (int64_t k = k0_; k < e_; k++) {                                      \
                a_[0] += (EXPR1);                                                     \
                c_[0] += (EXPR2);                                                     \
            }                                                                         \
            t1_ += (double)(((a_[0] + a_[1]) + (a_[2] + a_[3])) +                     \
                            ((a_[4] + a_[5]) + (a_[6] + a_[7])));                     \
            t2_ += (double)(((c_[0] + c_[1]) + (c_[2] + c_[3])) +                     \
                            ((c_[4] + c_[5]) + (c_[6] + c_[7])));                     \
        }                                                                             \
        (out1) += t1_;                                                                \
        (out2) += t2_;                                                                \
    } while (0)

/* Fills mask[(numel + 63) / 64] with keep bits (1 = kept, probability 1 - p), bit i of
 * word i / 64 for element i, from rng (dropout.c; attention's dropout uses it too). */
void ct__dropout_mask(ct_rng *rng, float p, int64_t numel, uint64_t *mask);
/* Row-wise softmax of rows x [rows, d] into y, and its backward gx += y * (g - <g, y>), or
 * gx = that (_set: gx need not be initialised) (softmax.c; attention uses them). */
void ct__softmax_rows(float *y, const float *x, int64_t rows, int64_t d);
void ct__softmax_rows_backward(float *gx, const float *y, const float *g, int64_t rows, int64_t d);
void ct__softmax_rows_backward_set(float *gx, const float *y, const float *g, int64_t rows, int64_t d);

#endif
