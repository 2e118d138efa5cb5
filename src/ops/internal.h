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

/* A kernel compiled for AVX-512 in every build (the build's baseline is AVX2); it runs only
 * where ct_cpu_avx512() says the CPU has it. Intrinsics from <immintrin.h> are usable
 * inside such a function, and a static inline helper without the attribute inlines into it. */
#define CT_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl")))

/* Views x as [outer, d, inner] around dim (already normalised) (reduce.c). */
void ct__split_dim(const ct_tensor *x, int dim, int64_t *outer, int64_t *d, int64_t *inner);
/* Sum of x[0..n) accumulated in double in 8 lanes (reduce.c). */
double ct__sumf(const float *x, int64_t n);
/* Max of x[0..n), -inf when n == 0. NaNs are skipped; callers' arithmetic on x still
 * propagates them (reduce.c). */
float ct__maxf(const float *x, int64_t n);

/* y += a * x over n floats (reduce.c). */
void ct__axpy(float *restrict y, const float *restrict x, float a, int64_t n);

/* CT_VFOR(i, n, body...) runs body for i in [0, n) in a form GCC vectorises at -O2. GCC
 * 12's -O2 cost model ("very cheap") only vectorises a loop whose vector code replaces it
 * entirely, so a plain loop of unknown length stays scalar; fixed blocks of 8 plus a
 * scalar tail are vectorised. Without a runtime alias check (also not allowed at -O2) the
 * stores must be provably independent of the loads: put the loop in a small kernel whose
 * pointers are `restrict` PARAMETERS (GCC ignores restrict on local pointers here), and
 * make loads unconditional (hoist them into locals before a ?:). */
#define CT_VFOR(i, n, ...)                                                                \
    do {                                                                                  \
        int64_t ct__vn = (n), ct__vm = ct__vn & ~(int64_t)7;                              \
        for (int64_t ct__vb = 0; ct__vb < ct__vm; ct__vb += 8)                            \
            for (int64_t i = ct__vb; i < ct__vb + 8; i++) {                               \
                __VA_ARGS__;                                                              \
            }                                                                             \
        for (int64_t i = ct__vm; i < ct__vn; i++) {                                       \
            __VA_ARGS__;                                                                  \
        }                                                                                 \
    } while (0)

/* Fills mask[(numel + 63) / 64] with keep bits (1 = kept, probability 1 - p), bit i of
 * word i / 64 for element i, from rng (dropout.c; attention's dropout uses it too). */
void ct__dropout_mask(ct_rng *rng, float p, int64_t numel, uint64_t *mask);
/* Row-wise softmax of rows x [rows, d] into y, and its backward gx += y * (g - <g, y>)
 * (softmax.c; attention uses both). */
void ct__softmax_rows(float *y, const float *x, int64_t rows, int64_t d);
void ct__softmax_rows_backward(float *gx, const float *y, const float *g, int64_t rows, int64_t d);

#endif
