/* conv2d, max_pool2d and avg_pool2d: forward values against naive loops written here,
 * backward against finite differences, the skipped dW/dX GEMMs, and shape errors. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

/* ---- references ---------------------------------------------------------------------- */

/* One conv configuration: x [n, c, h, w], weight [o, c/groups, kh, kw]. */
typedef struct {
    int64_t n, c, h, w, o, kh, kw;
    int sh, sw, ph, pw, groups;
    bool bias;
    bool split; /* pixel classes (ct_conv2d_set_pad_skip) make more than one GEMM a chunk */
} conv_cfg;

/* Direct convolution straight from the definition, in double. */
static void naive_conv(const ct_tensor *x, const ct_tensor *w, const ct_tensor *b,
                       const conv_cfg *k, const ct_tensor *y) {
    int64_t n = x->shape[0], c = x->shape[1], h = x->shape[2], wd = x->shape[3];
    int64_t o = w->shape[0], cg = w->shape[1], kh = w->shape[2], kw = w->shape[3];
    int64_t oh = y->shape[2], ow = y->shape[3], og = o / k->groups;
    ck_assert_int_eq(cg * k->groups, c);
    for (int64_t i = 0; i < n; i++)
        for (int64_t f = 0; f < o; f++)
            for (int64_t oy = 0; oy < oh; oy++)
                for (int64_t ox = 0; ox < ow; ox++) {
                    double acc = b ? b->data[f] : 0;
                    for (int64_t j = 0; j < cg; j++)
                        for (int64_t ki = 0; ki < kh; ki++)
                            for (int64_t kj = 0; kj < kw; kj++) {
                                int64_t ch = f / og * cg + j; /* f's group's j-th channel */
                                int64_t iy = oy * k->sh - k->ph + ki, ix = ox * k->sw - k->pw + kj;
                                if (iy < 0 || iy >= h || ix < 0 || ix >= wd) continue;
                                acc += (double)x->data[((i * c + ch) * h + iy) * wd + ix] *
                                       w->data[((f * cg + j) * kh + ki) * kw + kj];
                            }
                    float got = y->data[((i * o + f) * oh + oy) * ow + ox];
                    ck_assert_msg(fabs(got - acc) <= 1e-4 * (1 + fabs(acc)),
                                  "y[%lld,%lld,%lld,%lld] = %g, direct convolution gives %g",
                                  (long long)i, (long long)f, (long long)oy, (long long)ox, got,
                                  acc);
                }
}

static const conv_cfg cfgs[] = {
    {2, 1, 5, 6, 3, 3, 3, 1, 1, 1, 1, 1, true, false},   /* one input channel, padded, non-square */
    {2, 3, 7, 5, 4, 3, 3, 2, 2, 0, 0, 1, false, false},  /* stride 2, no padding, no bias */
    {1, 2, 6, 7, 3, 3, 3, 2, 2, 1, 1, 1, true, false},   /* stride 2 with padding */
    {2, 3, 4, 5, 2, 1, 1, 1, 1, 0, 0, 1, true, false},   /* 1x1 fast path */
    {1, 2, 5, 4, 2, 2, 3, 1, 1, 1, 1, 1, false, false},  /* rectangular kernel */
    {1, 2, 2, 3, 2, 3, 3, 3, 3, 2, 2, 1, true, false},   /* kernel larger than the input, stride 3 */
    {3, 4, 6, 6, 5, 1, 1, 2, 2, 1, 1, 1, false, false},  /* 1x1 with stride and padding: the im2col path */
    {2, 3, 8, 7, 4, 1, 1, 2, 2, 0, 0, 1, false, false},  /* ResNet downsample: 1x1, stride 2, odd width */
    {1, 2, 11, 9, 3, 7, 7, 2, 2, 3, 3, 1, true, false},  /* ResNet stem: 7x7, stride 2, padding 3 */
    {2, 3, 6, 7, 2, 3, 2, 2, 1, 0, 2, 1, true, false},   /* stride and padding differ by axis */
    {2, 4, 6, 5, 6, 3, 3, 1, 1, 1, 1, 2, true, false},   /* two groups */
    {2, 3, 7, 6, 3, 3, 3, 2, 2, 1, 1, 3, false, false},  /* depthwise, stride 2 */
    {2, 2, 3, 41, 3, 3, 3, 2, 2, 1, 1, 1, true, false},  /* stride 2, 21 outputs a row: 16 + 5 */
    {1, 2, 5, 5, 6, 3, 3, 1, 1, 1, 1, 2, true, false},   /* depthwise with channel multiplier 3 */
    {2, 6, 4, 3, 4, 1, 1, 1, 1, 0, 0, 2, true, false},   /* grouped pointwise, chunk of 2 samples */
    /* chunking: 100 pixels make chunks of 2 samples (2 + 1 here); 272 pixels of 1 */
    {3, 2, 10, 10, 3, 3, 3, 1, 1, 1, 1, 1, true, false},
    {2, 2, 17, 16, 3, 3, 3, 1, 1, 1, 1, 1, true, false},
    {2, 4, 16, 17, 2, 1, 1, 1, 1, 0, 0, 2, true, false},  /* one-sample pointwise: no im2col */
    /* dead taps (kernel rows/columns that only see padding) */
    {3, 5, 1, 1, 4, 3, 3, 1, 1, 1, 1, 1, true, false},   /* 1x1 image: the centre tap only */
    {2, 4, 2, 2, 6, 3, 3, 2, 2, 1, 1, 1, false, false},  /* 2x2 stride 2: taps 1..2 of each axis */
    {2, 4, 1, 3, 4, 3, 3, 1, 1, 1, 1, 2, true, false},   /* rows cut, columns not, two groups */
    {1, 2, 1, 2, 3, 7, 7, 3, 3, 3, 3, 1, true, false},   /* 7x7 on a 1x2 image */
    {1, 2, 1, 1, 3, 3, 3, 2, 2, 2, 2, 1, false, false},  /* one tap of the middle row gap */
    {1, 1, 1, 1, 2, 1, 1, 10, 10, 5, 5, 1, true, false}, /* no live tap: zeros plus the bias */
    /* pixel classes by live taps (padding skipped); the ones on larger planes are forced on
     * by the tests below, as on 2x2 planes they are by default */
    {3, 3, 2, 2, 4, 3, 3, 1, 1, 1, 1, 1, true, true},   /* 2x2: four corners */
    {2, 3, 3, 3, 4, 3, 3, 1, 1, 1, 1, 1, false, true},  /* 3x3: corners, edges, centre */
    {5, 2, 4, 4, 3, 3, 3, 1, 1, 1, 1, 1, true, true},   /* 4x4: classes of several pixels */
    {3, 2, 5, 7, 3, 3, 3, 1, 1, 1, 1, 1, true, true},   /* 5x7 */
    {2, 2, 5, 6, 3, 3, 3, 2, 2, 1, 1, 1, true, true},   /* stride 2: last row and column */
    {2, 2, 4, 5, 3, 5, 5, 1, 1, 2, 2, 1, true, true},   /* 5x5 padding 2: 4 spans an axis */
    {2, 2, 3, 4, 3, 3, 3, 1, 1, 2, 2, 1, false, true},  /* 3x3 padding 2: one-tap rims */
    {2, 4, 4, 4, 6, 3, 3, 1, 1, 1, 1, 2, true, true},   /* two groups */
    {2, 4, 3, 3, 4, 3, 3, 1, 1, 1, 1, 4, false, true},  /* depthwise */
    {2, 3, 8, 8, 4, 7, 7, 2, 2, 3, 3, 1, true, true},   /* 7x7/2 padding 3 on 8x8 */
    {2, 3, 5, 6, 4, 7, 7, 2, 2, 3, 3, 1, false, true},  /* 7x7/2 padding 3 on 5x6 */
    {2, 2, 2, 2, 3, 1, 1, 1, 1, 1, 1, 1, true, false},  /* 1x1 padding 1: rims with no tap */
    {2, 3, 4, 3, 2, 3, 2, 2, 1, 0, 2, 1, true, true},   /* padding on columns only */
    /* Winograd: 3x3, stride 1, padding 1, 16+ channels, 2x2+ planes (odd: half tiles) */
    {2, 16, 11, 10, 16, 3, 3, 1, 1, 1, 1, 1, true, false},
    /* one GEMM over the batch (conv_dense.c): every input pixel reaches every output one */
    {8, 3, 2, 2, 4, 3, 3, 1, 1, 1, 1, 1, true, false},   /* 2x2 planes */
    {9, 5, 1, 1, 4, 3, 3, 1, 1, 1, 1, 1, false, false},  /* 1x1 planes */
    {8, 3, 2, 2, 5, 3, 3, 2, 2, 1, 1, 1, true, false},   /* 3x3 stride 2 from 2x2 to 1x1 */
    {8, 4, 2, 1, 3, 3, 3, 1, 1, 1, 1, 1, true, false},   /* 2x1 planes */
    {8, 6, 1, 1, 4, 1, 1, 1, 1, 0, 0, 1, true, false},   /* pointwise on 1x1 planes */
};
#define NCFG (int)(sizeof cfgs / sizeof cfgs[0])

static ct_tensor *conv_call(ct_tensor *x, ct_tensor *w, ct_tensor *b, const conv_cfg *k) {
    ct_conv2d_opts o = {.stride_h = k->sh, .stride_w = k->sw, .pad_h = k->ph, .pad_w = k->pw,
                        .groups = k->groups};
    return ct_conv2d_ex(x, w, k->bias ? b : NULL, &o);
}

static ct_tensor *conv_fn(ct_tensor **in, void *ctx) {
    const conv_cfg *k = ctx;
    return conv_call(in[0], in[1], k->bias ? in[2] : NULL, k);
}

static void check_forward(int _i) {
    const conv_cfg *k = &cfgs[_i];
    CT_SCOPE {
        ct_tensor *x = ct_test_rand(CT_SHAPE(k->n, k->c, k->h, k->w), -1, 1, 10 + _i);
        ct_tensor *w = ct_test_rand(CT_SHAPE(k->o, k->c / k->groups, k->kh, k->kw), -1, 1, 20 + _i);
        ct_tensor *b = ct_test_rand(CT_SHAPE(k->o), -1, 1, 30 + _i);
        ct_tensor *y = conv_call(x, w, b, k);
        ck_assert_int_eq(y->ndim, 4);
        ck_assert_int_eq(y->shape[0], k->n);
        ck_assert_int_eq(y->shape[1], k->o);
        ck_assert_int_eq(y->shape[2], (k->h + 2 * k->ph - k->kh) / k->sh + 1);
        ck_assert_int_eq(y->shape[3], (k->w + 2 * k->pw - k->kw) / k->sw + 1);
        naive_conv(x, w, k->bias ? b : NULL, k, y);
        /* the square form is the same op, and NULL options are stride 1, no padding */
        if (_i == 0) {
            ct_tensor *x0 = ct_test_rand(CT_SHAPE(1, k->c, k->h, k->w), -1, 1, 3);
            ct_tensor *a = ct_conv2d_ex(x0, w, NULL, NULL), *c = ct_conv2d(x0, w, NULL, 1, 0);
            ck_assert_int_eq(a->numel, c->numel);
            for (int64_t i = 0; i < a->numel; i++) ck_assert_float_eq(a->data[i], c->data[i]);
        }
        if (k->sh == k->sw && k->ph == k->pw && k->groups == 1) {
            ct_tensor *y2 = ct_conv2d(x, w, k->bias ? b : NULL, k->sh, k->ph);
            for (int64_t i = 0; i < y->numel; i++) ck_assert_float_eq(y2->data[i], y->data[i]);
        }
    }
}

static void check_gradients(int _i) {
    const conv_cfg *k = &cfgs[_i];
    CT_SCOPE {
        ct_tensor *x = ct_test_rand(CT_SHAPE(k->n, k->c, k->h, k->w), -1, 1, 40 + _i);
        ct_tensor *w = ct_test_rand(CT_SHAPE(k->o, k->c / k->groups, k->kh, k->kw), -1, 1, 50 + _i);
        ct_tensor *b = ct_test_rand(CT_SHAPE(k->o), -1, 1, 60 + _i);
        ct_tensor *in[] = {x, w, b};
        for (int j = 0; j < (k->bias ? 3 : 2); j++) ct_set_requires_grad(in[j], true);
        double err = ct_test_gradcheck("conv2d", conv_fn, k->bias ? 3 : 2, in, (void *)k, 1e-2,
                                       1e-3, 1e-2);
        ck_assert_msg(err <= 1, "conv2d config %d: gradcheck error %g", _i, err);
    }
}

START_TEST(conv_forward_matches_direct) { check_forward(_i); }
END_TEST

START_TEST(conv_backward_gradcheck) { check_gradients(_i); }
END_TEST

/* The same with pixel classes on every plane, whatever its size. */
START_TEST(conv_classes_forward_matches_direct) {
    ct_pad_skip old = ct_conv2d_set_pad_skip(CT_PAD_SKIP_ALWAYS);
    check_forward(_i);
    ct_conv2d_set_pad_skip(old);
}
END_TEST

START_TEST(conv_classes_backward_gradcheck) {
    ct_pad_skip old = ct_conv2d_set_pad_skip(CT_PAD_SKIP_ALWAYS);
    check_gradients(_i);
    ct_conv2d_set_pad_skip(old);
}
END_TEST

/* Malloc'd copies of n tensors' data (out) and their sizes, to compare after their scope. */
static void keep_results(ct_tensor *const *r, int n, float **out, int64_t *numel) {
    for (int i = 0; i < n; i++) {
        numel[i] = r[i]->numel;
        out[i] = malloc((size_t)numel[i] * sizeof(float));
        memcpy(out[i], r[i]->data, (size_t)numel[i] * sizeof(float));
    }
}

/* Pixel classes against one class per plane (CT_PAD_SKIP_NEVER): output, dX, dW
 * and db agree to float rounding, and the classed configurations really made more GEMMs. */
START_TEST(pad_skip_matches_one_class) {
    const conv_cfg *k = &cfgs[_i];
    float *res[2][4];
    int64_t nres[4], calls[2];
    for (int pass = 0; pass < 2; pass++) {
        ct_pad_skip old = ct_conv2d_set_pad_skip(pass ? CT_PAD_SKIP_ALWAYS : CT_PAD_SKIP_NEVER);
        CT_SCOPE {
            ct_tensor *x = ct_test_rand(CT_SHAPE(k->n, k->c, k->h, k->w), -1, 1, 70 + _i);
            ct_tensor *w = ct_test_rand(CT_SHAPE(k->o, k->c / k->groups, k->kh, k->kw), -1, 1, 80 + _i);
            ct_tensor *b = ct_test_rand(CT_SHAPE(k->o), -1, 1, 90 + _i);
            ct_set_requires_grad(x, true);
            ct_set_requires_grad(w, true);
            ct_set_requires_grad(b, true);
            int64_t before = ct_stats_get().gemm_calls;
            ct_tensor *y = conv_call(x, w, b, k);
            calls[pass] = ct_stats_get().gemm_calls - before;
            ct_backward_ex(y, ct_test_rand(y->ndim, y->shape, -1, 1, 99), false);
            ct_tensor *r[4] = {y, ct_grad(x), ct_grad(w), k->bias ? ct_grad(b) : y};
            keep_results(r, 4, res[pass], nres);
        }
        ct_conv2d_set_pad_skip(old);
    }
    for (int i = 0; i < 4; i++) {
        for (int64_t j = 0; j < nres[i]; j++) ck_assert_close(res[1][i][j], res[0][i][j], 1e-5);
        free(res[0][i]);
        free(res[1][i]);
    }
    ck_assert_int_ge(calls[1], calls[0]);
    if (k->split) ck_assert_int_gt(calls[1], calls[0]);
}
END_TEST

/* GEMMs one forward makes in the given mode (3x3, padding 1, stride s, side x side). */
static int64_t forward_gemms(ct_pad_skip mode, int64_t side, int s) {
    ct_pad_skip old = ct_conv2d_set_pad_skip(mode);
    int64_t calls = 0;
    CT_SCOPE {
        ct_tensor *x = ct_test_rand(CT_SHAPE(2, 8, side, side), -1, 1, 1);
        ct_tensor *w = ct_test_rand(CT_SHAPE(4, 8, 3, 3), -1, 1, 2);
        int64_t before = ct_stats_get().gemm_calls;
        ct_conv2d(x, w, NULL, s, 1);
        calls = ct_stats_get().gemm_calls - before;
    }
    ct_conv2d_set_pad_skip(old);
    return calls;
}

/* The default uses classes where they cut 40% or more of the multiply-adds: a 3x3/padding-1
 * conv on 2x2 planes (5/9 of them are padding), not on 4x4 (31%) or stride 2 into 2x2. */
START_TEST(pad_skip_auto_picks_small_planes) {
    ck_assert_int_eq(forward_gemms(CT_PAD_SKIP_AUTO, 2, 1), forward_gemms(CT_PAD_SKIP_ALWAYS, 2, 1));
    ck_assert_int_gt(forward_gemms(CT_PAD_SKIP_AUTO, 2, 1), forward_gemms(CT_PAD_SKIP_NEVER, 2, 1));
    ck_assert_int_eq(forward_gemms(CT_PAD_SKIP_AUTO, 4, 1), forward_gemms(CT_PAD_SKIP_NEVER, 4, 1));
    ck_assert_int_eq(forward_gemms(CT_PAD_SKIP_AUTO, 4, 2), forward_gemms(CT_PAD_SKIP_NEVER, 4, 2));
    ck_assert_int_gt(forward_gemms(CT_PAD_SKIP_ALWAYS, 4, 2), forward_gemms(CT_PAD_SKIP_NEVER, 4, 2));
}
END_TEST

/* Winograd (F(2x2): a graph is recorded) against the im2col path it replaces, on shapes
 * of the CNN (14x14), ResNet's small stem (16x16) and ResNet-18's layers at 32 px (8x8 to
 * 2x2), odd planes, channel counts that are not multiples of the 16 lanes, one-tile 2x2
 * planes and batches past one chunk (70 samples of 4x4 with 16 channels: 3 chunks, the
 * last short; dW sums them in parts): output, dX and dW agree to float rounding. */
START_TEST(winograd_matches_im2col) {
    static const int64_t shapes[][5] = {{5, 32, 64, 14, 14}, {3, 16, 24, 16, 16}, {9, 17, 16, 11, 13},
                                        {3, 20, 33, 8, 8},   {70, 16, 16, 4, 4},  {4, 40, 18, 2, 2},
                                        {2, 16, 17, 5, 7},   {2, 18, 16, 3, 3}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int64_t *k = shapes[s];
        float *res[2][3];
        int64_t nres[3];
        for (int pass = 0; pass < 2; pass++) {
            ct_conv2d_set_algo(pass == 1 ? CT_CONV_WINOGRAD : CT_CONV_IM2COL);
            CT_SCOPE {
                ct_tensor *x = ct_test_rand(CT_SHAPE(k[0], k[1], k[3], k[4]), -1, 1, 5);
                ct_tensor *w = ct_test_rand(CT_SHAPE(k[2], k[1], 3, 3), -0.2f, 0.2f, 6);
                ct_tensor *b = ct_test_rand(CT_SHAPE(k[2]), -1, 1, 7);
                ct_set_requires_grad(x, true);
                ct_set_requires_grad(w, true);
                ct_tensor *y = ct_conv2d(x, w, b, 1, 1);
                ct_backward_ex(y, ct_test_rand(y->ndim, y->shape, -1, 1, 8), false);
                ct_tensor *r[3] = {y, ct_grad(x), ct_grad(w)};
                keep_results(r, 3, res[pass], nres);
            }
        }
        ct_conv2d_set_algo(CT_CONV_AUTO);
        for (int i = 0; i < 3; i++) {
            bool differs = false;
            for (int64_t j = 0; j < nres[i]; j++) {
                ck_assert_close(res[1][i][j], res[0][i][j], 1e-4);
                differs |= res[1][i][j] != res[0][i][j];
            }
            /* the forward, dX and dW really took the other path */
            ck_assert_msg(differs, "shape %zu: result %d is bitwise im2col's", s, i);
            free(res[0][i]);
            free(res[1][i]);
        }
    }
}
END_TEST

/* F(4x4, 3x3) runs only where no gradient flows: under no_grad, on planes that divide into
 * 4x4 tiles (one-tile 4x4 planes in 3 chunks, 8x8 with 33 output channels, 16x16, 12x8),
 * its output agrees with im2col's to float rounding and differs from the F(2x2) output
 * the same convolution gives when it records a graph. */
START_TEST(winograd_f4_inference_matches_im2col) {
    static const int64_t shapes[][5] = {{70, 16, 16, 4, 4}, {3, 20, 33, 8, 8}, {3, 16, 24, 16, 16},
                                        {2, 24, 16, 12, 8}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) CT_SCOPE {
            const int64_t *k = shapes[s];
            ct_tensor *x = ct_test_rand(CT_SHAPE(k[0], k[1], k[3], k[4]), -1, 1, 5);
            ct_tensor *w = ct_test_rand(CT_SHAPE(k[2], k[1], 3, 3), -0.2f, 0.2f, 6);
            ct_tensor *b = ct_test_rand(CT_SHAPE(k[2]), -1, 1, 7);
            ct_tensor *y[3];
            ct_conv_algo old = ct_conv2d_set_algo(CT_CONV_IM2COL);
            y[0] = ct_conv2d(x, w, b, 1, 1);
            ct_conv2d_set_algo(CT_CONV_WINOGRAD);
            CT_NO_GRAD { y[1] = ct_conv2d(x, w, b, 1, 1); }
            ct_set_requires_grad(w, true);
            y[2] = ct_conv2d(x, w, b, 1, 1); /* a graph: F(2x2) */
            ct_conv2d_set_algo(old);
            bool differs = false;
            for (int64_t j = 0; j < y[0]->numel; j++) {
                ck_assert_close(y[1]->data[j], y[0]->data[j], 1e-4);
                differs |= y[1]->data[j] != y[2]->data[j];
            }
            ck_assert_msg(differs, "shape %zu: the no_grad output is F(2x2)'s bit for bit", s);
        }
}
END_TEST

/* The dense path (one GEMM over the batch) against im2col on ResNet-18's small planes at
 * 32 px (2x2 and 1x1, 3x3 stride 2 into 1x1) and a rectangular one: output, dX, dW and db
 * agree to float rounding and the forward is a single GEMM. Where it does not apply (4x4
 * planes, a batch below 8, groups) forcing it changes no bit. */
START_TEST(dense_matches_im2col) {
    static const struct {
        int64_t n, c, o, h, w, stride, groups;
        bool applies;
    } cfg[] = {{24, 16, 40, 2, 2, 1, 1, true},  {12, 32, 24, 1, 1, 1, 1, true},
               {10, 8, 16, 2, 2, 2, 1, true},   {8, 7, 5, 1, 2, 1, 1, true},
               {16, 16, 16, 4, 4, 1, 1, false}, {4, 16, 8, 2, 2, 1, 1, false},
               {16, 8, 8, 2, 2, 1, 2, false}};
    for (size_t s = 0; s < sizeof cfg / sizeof cfg[0]; s++) {
        float *res[2][4];
        int64_t nres[4], calls = 0;
        for (int pass = 0; pass < 2; pass++) {
            ct_conv_algo old = ct_conv2d_set_algo(pass ? CT_CONV_DENSE : CT_CONV_IM2COL);
            CT_SCOPE {
                ct_tensor *x = ct_test_rand(CT_SHAPE(cfg[s].n, cfg[s].c, cfg[s].h, cfg[s].w), -1, 1, 5);
                ct_tensor *w = ct_test_rand(CT_SHAPE(cfg[s].o, cfg[s].c / cfg[s].groups, 3, 3), -0.3f, 0.3f, 6);
                ct_tensor *b = ct_test_rand(CT_SHAPE(cfg[s].o), -1, 1, 7);
                ct_tensor *in[3] = {x, w, b};
                for (int i = 0; i < 3; i++) ct_set_requires_grad(in[i], true);
                ct_conv2d_opts o = {.stride_h = (int)cfg[s].stride, .stride_w = (int)cfg[s].stride,
                                    .pad_h = 1, .pad_w = 1, .groups = (int)cfg[s].groups};
                int64_t before = ct_stats_get().gemm_calls;
                ct_tensor *y = ct_conv2d_ex(x, w, b, &o);
                calls = ct_stats_get().gemm_calls - before;
                ct_backward_ex(y, ct_test_rand(y->ndim, y->shape, -1, 1, 8), false);
                ct_tensor *r[4] = {y, ct_grad(x), ct_grad(w), ct_grad(b)};
                keep_results(r, 4, res[pass], nres);
            }
            ct_conv2d_set_algo(old);
        }
        if (cfg[s].applies) ck_assert_msg(calls == 1, "shape %zu: %lld GEMMs", s, (long long)calls);
        for (int i = 0; i < 4; i++) {
            for (int64_t j = 0; j < nres[i]; j++) {
                if (cfg[s].applies)
                    ck_assert_close(res[1][i][j], res[0][i][j], 1e-5);
                else
                    ck_assert_msg(memcmp(&res[1][i][j], &res[0][i][j], sizeof(float)) == 0,
                                  "shape %zu: result %d differs from im2col's at %lld", s, i, (long long)j);
            }
            free(res[0][i]);
            free(res[1][i]);
        }
    }
}
END_TEST

/* The epilogue (ct_conv2d_post) is, bit for bit, conv2d then batch_norm in eval mode, then
 * add the residual, then relu: on Winograd shapes (channels a multiple of 16 or not, so the
 * lane groups' tails), on im2col ones (stride 2 with several pixel classes, 1x1, a 7x7
 * stem, groups), on dense ones, with and without bias, residual and relu. */
START_TEST(conv_epilogue_is_bn_add_relu_bitwise) {
    static const struct {
        int64_t n, c, o, h, k, stride, pad, groups;
    } cfg[] = {{3, 32, 48, 8, 3, 1, 1, 1}, {2, 16, 20, 5, 3, 1, 1, 1}, {4, 24, 32, 2, 3, 1, 1, 1},
               {3, 16, 32, 8, 3, 2, 1, 1}, {2, 8, 12, 7, 1, 2, 0, 1},  {2, 3, 16, 16, 7, 2, 3, 1},
               {2, 8, 8, 6, 3, 1, 1, 4},  {2, 5, 6, 1, 3, 1, 1, 1},
               /* several chunks of samples: the residual is read at each chunk's samples */
               {70, 16, 16, 4, 3, 1, 1, 1}, {40, 16, 16, 8, 3, 2, 1, 1}, {24, 8, 8, 14, 3, 1, 1, 1},
               /* one GEMM over the batch (conv_dense.c): 2x2, 1x1, stride 2 into 1x1 */
               {9, 16, 24, 2, 3, 1, 1, 1}, {8, 8, 12, 1, 3, 1, 1, 1}, {8, 16, 16, 2, 3, 2, 1, 1}};
    for (size_t i = 0; i < sizeof cfg / sizeof cfg[0]; i++)
        for (int variant = 0; variant < 4; variant++) CT_SCOPE {
                bool bias = variant & 1, res = variant & 2, relu = variant != 2;
                ct_tensor *x = ct_test_rand(CT_SHAPE(cfg[i].n, cfg[i].c, cfg[i].h, cfg[i].h), -1, 1, 11);
                ct_tensor *w = ct_test_rand(CT_SHAPE(cfg[i].o, cfg[i].c / cfg[i].groups, cfg[i].k, cfg[i].k),
                                            -0.3f, 0.3f, 12);
                ct_tensor *b = bias ? ct_test_rand(CT_SHAPE(cfg[i].o), -1, 1, 13) : NULL;
                ct_tensor *gamma = ct_test_rand(CT_SHAPE(cfg[i].o), 0.5f, 1.5f, 14);
                ct_tensor *beta = ct_test_rand(CT_SHAPE(cfg[i].o), -0.5f, 0.5f, 15);
                ct_tensor *mean = ct_test_rand(CT_SHAPE(cfg[i].o), -0.2f, 0.2f, 16);
                ct_tensor *var = ct_test_rand(CT_SHAPE(cfg[i].o), 0.5f, 2, 17);
                ct_conv2d_opts o = {.stride_h = (int)cfg[i].stride, .stride_w = (int)cfg[i].stride,
                                    .pad_h = (int)cfg[i].pad, .pad_w = (int)cfg[i].pad,
                                    .groups = (int)cfg[i].groups};
                ct_tensor *want = ct_batch_norm(ct_conv2d_ex(x, w, b, &o), gamma, beta, mean, var, false,
                                                0.1f, 1e-5f);
                ct_tensor *r = res ? ct_test_rand(want->ndim, want->shape, -1, 1, 18) : NULL;
                if (r) want = ct_add(want, r);
                if (relu) want = ct_relu(want);
                float *a = ct_empty_like(gamma)->data, *sh = ct_empty_like(gamma)->data;
                ct_batch_norm_eval_coeffs(gamma, beta, mean, var, 1e-5f, a, sh);
                ct_conv2d_post post = {.scale = a, .shift = sh, .residual = r, .relu = relu};
                o.post = &post;
                int64_t before = ct_stats_get().conv_epilogues;
                ct_tensor *got = ct_conv2d_ex(x, w, b, &o);
                ck_assert_int_eq(ct_stats_get().conv_epilogues, before + 1);
                ck_assert(!got->requires_grad);
                ck_assert_int_eq(got->numel, want->numel);
                for (int64_t j = 0; j < got->numel; j++)
                    ck_assert_msg(memcmp(&got->data[j], &want->data[j], sizeof(float)) == 0,
                                  "cfg %zu variant %d: y[%lld] = %.9g, the ops give %.9g", i, variant,
                                  (long long)j, got->data[j], want->data[j]);
            }
}
END_TEST

/* Runs y = conv(x, w, b) and backward with a fixed upstream gradient, returning how many
 * GEMMs the backward made. */
static int64_t conv_backward_gemms(ct_tensor *x, ct_tensor *w, ct_tensor *b) {
    int64_t calls = 0;
    CT_SCOPE {
        ct_tensor *y = ct_conv2d(x, w, b, 1, 1);
        ct_tensor *g = ct_test_rand(y->ndim, y->shape, -1, 1, 77);
        int64_t before = ct_stats_get().gemm_calls;
        ct_backward_ex(y, g, false);
        calls = ct_stats_get().gemm_calls - before;
    }
    return calls;
}

/* How many GEMMs a backward makes depends on how the samples are chunked; what must hold
 * is that dW and dX each take half of them and db none. */
START_TEST(conv_skips_unneeded_gradients) {
    for (int64_t side = 5; side <= 17; side += 12) /* chunks of several samples, then of one */
        CT_SCOPE {
            ct_tensor *x = ct_test_rand(CT_SHAPE(3, 2, side, side), -1, 1, 1);
            ct_tensor *w = ct_test_rand(CT_SHAPE(4, 2, 3, 3), -1, 1, 2);
            ct_tensor *b = ct_test_rand(CT_SHAPE(4), -1, 1, 3);

            /* everything trainable: dW and dX GEMMs */
            ct_set_requires_grad(x, true);
            ct_set_requires_grad(w, true);
            ct_set_requires_grad(b, true);
            int64_t full = conv_backward_gemms(x, w, b);
            ck_assert_int_gt(full, 0);
            ck_assert_int_eq(full % 2, 0);
            if (side == 17) ck_assert_int_eq(full, 2 * 3); /* 289 pixels: one sample a chunk */
            ct_tensor *gx_full = ct_clone_data(ct_grad(x)), *gb_full = ct_clone_data(ct_grad(b));

            /* a data input (first layer): no dX GEMM and no .grad on x */
            ct_clear_grad(x);
            ct_clear_grad(w);
            ct_clear_grad(b);
            ct_set_requires_grad(x, false);
            ck_assert_int_eq(conv_backward_gemms(x, w, b), full / 2);
            ck_assert_ptr_null(ct_grad(x));
            ck_assert_ptr_nonnull(ct_grad(w));

            /* a frozen weight: no dW GEMM and no .grad on w, but x's gradient still flows */
            ct_clear_grad(w);
            ct_clear_grad(b);
            ct_set_requires_grad(x, true);
            ct_set_requires_grad(w, false);
            ck_assert_int_eq(conv_backward_gemms(x, w, b), full / 2);
            ck_assert_ptr_null(ct_grad(w));
            ck_assert_ptr_nonnull(ct_grad(x));
            for (int64_t i = 0; i < x->numel; i++) ck_assert_close(ct_grad(x)->data[i], gx_full->data[i], 1e-5);
            for (int64_t i = 0; i < b->numel; i++) ck_assert_close(ct_grad(b)->data[i], gb_full->data[i], 1e-5);

            /* only the bias: no GEMM at all */
            ct_clear_grad(x);
            ct_clear_grad(b);
            ct_set_requires_grad(x, false);
            ck_assert_int_eq(conv_backward_gemms(x, w, b), 0);
            ck_assert_ptr_nonnull(ct_grad(b));
            for (int64_t i = 0; i < b->numel; i++) ck_assert_close(ct_grad(b)->data[i], gb_full->data[i], 1e-5);
        }
}
END_TEST

START_TEST(conv_saves_only_what_backward_uses) {
    CT_SCOPE {
        ct_tensor *x = ct_test_rand(CT_SHAPE(2, 2, 4, 4), -1, 1, 1);
        ct_tensor *w = ct_test_rand(CT_SHAPE(3, 2, 3, 3), -1, 1, 2);
        int64_t base = ct_stats_get().saved_tensors;
        ct_set_requires_grad(w, true);
        ct_conv2d(x, w, NULL, 1, 1); /* dW only: saves x */
        ck_assert_int_eq(ct_stats_get().saved_tensors - base, 1);
        ct_set_requires_grad(x, true);
        ct_conv2d(x, w, NULL, 1, 1); /* dW and dX: saves x and w */
        ck_assert_int_eq(ct_stats_get().saved_tensors - base, 3);
        CT_NO_GRAD { ct_conv2d(x, w, NULL, 1, 1); } /* no_grad: nothing */
        ck_assert_int_eq(ct_stats_get().saved_tensors - base, 3);
    }
}
END_TEST

START_TEST(conv_steady_state_makes_no_mallocs) {
    CT_SCOPE {
        ct_tensor *x = ct_test_rand(CT_SHAPE(4, 3, 9, 9), -1, 1, 1);
        ct_tensor *w = ct_test_rand(CT_SHAPE(5, 3, 3, 3), -1, 1, 2);
        ct_tensor *b = ct_test_rand(CT_SHAPE(5), -1, 1, 3);
        ct_set_requires_grad(x, true);
        ct_set_requires_grad(w, true);
        ct_set_requires_grad(b, true);
        int64_t before = 0;
        for (int step = 0; step < 5; step++) {
            if (step == 2) before = ct_stats_get().mallocs; /* caches are warm by now */
            CT_SCOPE {
                ct_tensor *y = ct_max_pool2d(ct_conv2d(x, w, b, 1, 1), 2, 0, 0);
                ct_backward_ex(y, ct_ones(y->ndim, y->shape), false);
            }
        }
        /* im2col scratch, outputs and argmax indices all come back from the cache */
        ck_assert_int_eq(ct_stats_get().mallocs - before, 0);
    }
}
END_TEST

/* ---- residual blocks: one tensor feeding two branches that meet in an add --------------- */

/* in = {x [2, 4, 6, 5], w1 [4, 4, 3, 3], w2 [4, 4, 3, 3], wd [6, 4, 1, 1], w3 [6, 4, 3, 3]}.
 * ctx 0: the identity block, x + conv(relu(conv(x))) (ResNet's BasicBlock without BN);
 * ctx 1: the downsampling one, conv1x1/2(x) + conv3x3/2(relu(conv(x))) with 6 channels. */
static ct_tensor *residual_block(ct_tensor **in, void *ctx) {
    ct_tensor *h = ct_relu(ct_conv2d(in[0], in[1], NULL, 1, 1));
    if (!*(int *)ctx) return ct_add(in[0], ct_conv2d(h, in[2], NULL, 1, 1));
    return ct_add(ct_conv2d(in[0], in[3], NULL, 2, 0), ct_conv2d(h, in[4], NULL, 2, 1));
}

START_TEST(residual_block_gradcheck) {
    int down = _i;
    CT_SCOPE {
        ct_tensor *in[] = {ct_test_rand(CT_SHAPE(2, 4, 6, 5), -1, 1, 1),
                           ct_test_rand(CT_SHAPE(4, 4, 3, 3), -0.5f, 0.5f, 2),
                           ct_test_rand(CT_SHAPE(4, 4, 3, 3), -0.5f, 0.5f, 3),
                           ct_test_rand(CT_SHAPE(6, 4, 1, 1), -0.5f, 0.5f, 4),
                           ct_test_rand(CT_SHAPE(6, 4, 3, 3), -0.5f, 0.5f, 5)};
        ct_set_requires_grad(in[0], true);
        ct_set_requires_grad(in[1], true);
        ct_set_requires_grad(in[down ? 3 : 2], true);
        if (down) ct_set_requires_grad(in[4], true);
        ct_tensor *y = residual_block(in, &down);
        ck_assert_int_eq(y->shape[1], down ? 6 : 4);
        ck_assert_int_eq(y->shape[2], down ? 3 : 6);
        ck_assert_int_eq(y->shape[3], down ? 3 : 5);
        double err = ct_test_gradcheck("residual block", residual_block, 5, in, &down, 1e-2,
                                       1e-3, 1e-2);
        ck_assert_msg(err <= 1, "residual block (downsample %d): gradcheck error %g", down, err);
    }
}
END_TEST

/* The skip connection adds gout to x's gradient on top of what the branch sends: with
 * the same upstream gradient g, grad(x + f(x)) - grad(f(x)) must be g itself. */
START_TEST(residual_gradient_is_branch_plus_identity) {
    CT_SCOPE {
        ct_tensor *x = ct_test_rand(CT_SHAPE(2, 3, 5, 4), -1, 1, 11);
        ct_tensor *w = ct_test_rand(CT_SHAPE(3, 3, 3, 3), -1, 1, 12);
        ct_tensor *g = ct_test_rand(CT_SHAPE(2, 3, 5, 4), -1, 1, 13);
        ct_set_requires_grad(x, true);
        ct_backward_ex(ct_conv2d(x, w, NULL, 1, 1), g, false);
        ct_tensor *branch = ct_clone_data(ct_grad(x));
        ct_clear_grad(x);
        ct_backward_ex(ct_add(x, ct_conv2d(x, w, NULL, 1, 1)), g, false);
        for (int64_t i = 0; i < x->numel; i++)
            ck_assert_close(ct_grad(x)->data[i] - branch->data[i], g->data[i], 1e-5);
    }
}
END_TEST

/* ---- pooling ------------------------------------------------------------------------- */

/* Pooling from the definition: windows over the zero/-inf padded input. */
static void naive_pool(const ct_tensor *x, int k, int s, int p, bool max, const ct_tensor *y) {
    int64_t planes = x->shape[0] * x->shape[1], h = x->shape[2], w = x->shape[3];
    int64_t oh = y->shape[2], ow = y->shape[3];
    ck_assert_int_eq(oh, (h + 2 * p - k) / s + 1);
    ck_assert_int_eq(ow, (w + 2 * p - k) / s + 1);
    for (int64_t pl = 0; pl < planes; pl++)
        for (int64_t oy = 0; oy < oh; oy++)
            for (int64_t ox = 0; ox < ow; ox++) {
                double acc = max ? -INFINITY : 0;
                for (int ki = 0; ki < k; ki++)
                    for (int kj = 0; kj < k; kj++) {
                        int64_t iy = oy * s - p + ki, ix = ox * s - p + kj;
                        bool in = iy >= 0 && iy < h && ix >= 0 && ix < w;
                        double v = in ? x->data[(pl * h + iy) * w + ix] : (max ? -INFINITY : 0);
                        acc = max ? fmax(acc, v) : acc + v;
                    }
                if (!max) acc /= k * k;
                ck_assert_close(y->data[(pl * oh + oy) * ow + ox], acc, 1e-5);
            }
}

typedef struct {
    int k, s, p;
} pool_cfg;

static const pool_cfg pcfgs[] = {{2, 0, 0}, {3, 2, 1}, {3, 1, 1}, {2, 1, 1}, {4, 3, 2}};
#define NPCFG (int)(sizeof pcfgs / sizeof pcfgs[0])

/* x [2, 3, 5, 6] holding a shuffled 0.1-spaced ramp: no ties in any window, and a
 * finite-difference step of 0.01 never changes which element is the maximum. */
static ct_tensor *distinct_input(uint64_t seed) {
    ct_tensor *x = ct_zeros(CT_SHAPE(2, 3, 5, 6));
    ct_rng r;
    ct_rng_seed(&r, seed);
    for (int64_t i = 0; i < x->numel; i++) x->data[i] = 0.1f * (float)i - 9;
    for (int64_t i = x->numel - 1; i > 0; i--) {
        int64_t j = (int64_t)ct_rng_below(&r, (uint64_t)i + 1);
        float t = x->data[i];
        x->data[i] = x->data[j];
        x->data[j] = t;
    }
    return x;
}

static ct_tensor *pool_fn(ct_tensor **in, void *ctx) {
    const int *a = ctx; /* {max?, k, s, p} */
    return a[0] ? ct_max_pool2d(in[0], a[1], a[2], a[3]) : ct_avg_pool2d(in[0], a[1], a[2], a[3]);
}

START_TEST(pool_forward_matches_definition) {
    const pool_cfg *c = &pcfgs[_i];
    int s = c->s ? c->s : c->k;
    CT_SCOPE {
        ct_tensor *x = ct_test_rand(CT_SHAPE(2, 3, 7, 6), -1, 1, 5 + _i);
        /* nothing needs a gradient: max pool takes its values-only path (no argmax) */
        naive_pool(x, c->k, s, c->p, true, ct_max_pool2d(x, c->k, c->s, c->p));
        naive_pool(x, c->k, s, c->p, false, ct_avg_pool2d(x, c->k, c->s, c->p));
        ct_set_requires_grad(x, true); /* recorded: the argmax path */
        ct_tensor *y = ct_max_pool2d(x, c->k, c->s, c->p);
        ck_assert_ptr_nonnull(y->grad_fn);
        naive_pool(x, c->k, s, c->p, true, y);
    }
}
END_TEST

START_TEST(pool_backward_gradcheck) {
    const pool_cfg *c = &pcfgs[_i];
    CT_SCOPE {
        ct_tensor *x = distinct_input(90 + _i);
        ct_set_requires_grad(x, true);
        int maxa[] = {1, c->k, c->s, c->p}, avga[] = {0, c->k, c->s, c->p};
        double e1 = ct_test_gradcheck("max_pool2d", pool_fn, 1, &x, maxa, 1e-2, 1e-3, 1e-2);
        ck_assert_msg(e1 <= 1, "max_pool2d config %d: gradcheck error %g", _i, e1);
        double e2 = ct_test_gradcheck("avg_pool2d", pool_fn, 1, &x, avga, 1e-2, 1e-3, 1e-2);
        ck_assert_msg(e2 <= 1, "avg_pool2d config %d: gradcheck error %g", _i, e2);
    }
}
END_TEST

START_TEST(pool_matches_torch) {
    CT_SCOPE {
        /* x = torch.arange(20.).reshape(1,1,4,5) * torch.tensor([1.,-1.]*10).reshape(1,1,4,5) */
        ct_tensor *x = ct_zeros(CT_SHAPE(1, 1, 4, 5));
        for (int i = 0; i < 20; i++) x->data[i] = (float)(i % 2 ? -i : i);
        /* F.max_pool2d(x, 3, 2, 1), F.avg_pool2d(x, 3, 2, 1), F.max_pool2d(x, 2) */
        const float mx[] = {6, 8, 8, 16, 18, 18};
        const float av[] = {0, 0.5555555820465088f, 0, 0.1111111119389534f, 1.3333333730697632f,
                            -0.1111111119389534f};
        const float m2[] = {6, 8, 16, 18};
        ct_tensor *a = ct_max_pool2d(x, 3, 2, 1), *b = ct_avg_pool2d(x, 3, 2, 1);
        ct_tensor *c = ct_max_pool2d(x, 2, 0, 0);
        ck_assert_int_eq(a->numel, 6);
        ck_assert_int_eq(c->numel, 4);
        for (int i = 0; i < 6; i++) ck_assert_float_eq(a->data[i], mx[i]);
        for (int i = 0; i < 6; i++) ck_assert_float_eq_tol(b->data[i], av[i], 1e-6);
        for (int i = 0; i < 4; i++) ck_assert_float_eq(c->data[i], m2[i]);
    }
}
END_TEST

START_TEST(max_pool_routes_gradient_to_argmax) {
    CT_SCOPE {
        /* windows {1,5,3,4}, {2,0,7,6} and the tie {2,2,2,2}: as in PyTorch, the first
         * maximum of a tied window takes the gradient */
        ct_tensor *x = ct_from_data(CT_SHAPE(1, 1, 2, 6), (float[]){1, 5, 2, 0, 2, 2, 3, 4, 7, 6, 2, 2});
        ct_set_requires_grad(x, true);
        ct_tensor *y = ct_max_pool2d(x, 2, 0, 0);
        ck_assert_float_eq(y->data[2], 2);
        ct_backward_ex(y, ct_from_data(CT_SHAPE(1, 1, 1, 3), (float[]){10, 20, 30}), false);
        const float want[] = {0, 10, 0, 0, 30, 0, 0, 0, 20, 0, 0, 0};
        for (int i = 0; i < 12; i++) ck_assert_float_eq(ct_grad(x)->data[i], want[i]);
    }
}
END_TEST

/* Padding is -inf, not 0: on an all-negative input every window of ResNet's stem pool
 * (3x3, stride 2, padding 1) returns its largest real value and routes the gradient to it,
 * including the windows that hang over the border. */
START_TEST(max_pool_padding_is_minus_infinity) {
    CT_SCOPE {
        ct_tensor *x = ct_zeros(CT_SHAPE(1, 1, 5, 4));
        for (int i = 0; i < 20; i++) x->data[i] = -1.0f - (float)((i * 7) % 20); /* distinct */
        ct_set_requires_grad(x, true);
        ct_tensor *y = ct_max_pool2d(x, 3, 2, 1);
        ck_assert_int_eq(y->shape[2], 3); /* floor((5 + 2 - 3) / 2) + 1 */
        ck_assert_int_eq(y->shape[3], 2); /* floor((4 + 2 - 3) / 2) + 1 */
        float want_grad[20] = {0};
        for (int oy = 0; oy < 3; oy++)
            for (int ox = 0; ox < 2; ox++) {
                float best = -INFINITY;
                int at = -1;
                for (int iy = 2 * oy - 1; iy <= 2 * oy + 1; iy++)
                    for (int ix = 2 * ox - 1; ix <= 2 * ox + 1; ix++)
                        if (iy >= 0 && iy < 5 && ix >= 0 && ix < 4 && x->data[iy * 4 + ix] > best)
                            best = x->data[iy * 4 + ix], at = iy * 4 + ix;
                ck_assert_float_eq(y->data[oy * 2 + ox], best);
                ck_assert_float_lt(y->data[oy * 2 + ox], 0);
                want_grad[at] += 1;
            }
        ct_backward(ct_sum(y));
        for (int i = 0; i < 20; i++) ck_assert_float_eq(ct_grad(x)->data[i], want_grad[i]);
    }
}
END_TEST

START_TEST(max_pool_propagates_nan) {
    CT_SCOPE {
        ct_tensor *x = ct_from_data(CT_SHAPE(1, 1, 2, 2), (float[]){1, NAN, 5, 2});
        ck_assert(isnan(ct_max_pool2d(x, 2, 0, 0)->data[0])); /* torch gives nan too */
        /* 3x3 / stride 2 / padding 1 (ResNet's stem) on 4x4, a NaN at (1, 2): the windows
         * of outputs (0, 1) and (1, 1) hold it, the two on the left do not; the same
         * without a graph (values only) and with one (argmax) */
        for (int grad = 0; grad < 2; grad++) {
            ct_tensor *z = ct_zeros(CT_SHAPE(1, 1, 4, 4));
            for (int i = 0; i < 16; i++) z->data[i] = (float)i;
            z->data[1 * 4 + 2] = NAN;
            ct_set_requires_grad(z, grad);
            ct_tensor *y = ct_max_pool2d(z, 3, 2, 1);
            ck_assert(isnan(y->data[1]) && isnan(y->data[3]));
            ck_assert_float_eq(y->data[0], 5);
            ck_assert_float_eq(y->data[2], 13);
        }
    }
}
END_TEST

/* The 2x2 / stride 2 kernel (vectorised) against the scan from the definition, on rows
 * wider than one vector (ow = 18: a full 16-window step plus a masked tail), odd h and w
 * (the last row and column belong to no window), values drawn from {0, 1, 2, -inf} so
 * most windows tie, and a few NaNs (some windows with two). PyTorch scans (0,0), (0,1),
 * (1,0), (1,1) and takes v when v > max or v is NaN: the first maximum, the last NaN.
 * Routing is checked through backward with distinct gout values, twice, so the leaf's
 * .grad is also seen accumulating onto an existing gradient. */
START_TEST(max_pool_2x2_matches_scan_with_ties_and_nan) {
    ct_cpu_force_avx512(_i == 0); /* both kernels: AVX-512 (where the CPU has it), AVX2 */
    CT_SCOPE {
        const int64_t P = 3, H = 7, W = 37, OH = 3, OW = 18;
        ct_tensor *x = ct_zeros(CT_SHAPE(1, P, H, W));
        ct_rng r;
        ct_rng_seed(&r, 77);
        for (int64_t i = 0; i < x->numel; i++) {
            uint64_t k = ct_rng_below(&r, 40);
            x->data[i] = k < 2 ? NAN : k < 5 ? -INFINITY : (float)(k % 3);
        }
        ct_set_requires_grad(x, true);
        ct_tensor *g = ct_zeros(CT_SHAPE(1, P, OH, OW));
        for (int64_t i = 0; i < g->numel; i++) g->data[i] = (float)(i + 1);
        float want_grad[3 * 7 * 37] = {0};
        int nan_windows = 0;
        for (int rep = 0; rep < 2; rep++) {
            ct_tensor *y = ct_max_pool2d(x, 2, 0, 0);
            ck_assert_int_eq(y->shape[2], OH);
            ck_assert_int_eq(y->shape[3], OW);
            for (int64_t pl = 0; pl < P; pl++)
                for (int64_t oy = 0; oy < OH; oy++)
                    for (int64_t ox = 0; ox < OW; ox++) {
                        const float *xp = x->data + pl * H * W;
                        int64_t at = 2 * oy * W + 2 * ox;
                        int64_t order[4] = {at, at + 1, at + W, at + W + 1};
                        int64_t best = order[0];
                        for (int q = 1; q < 4; q++) {
                            float v = xp[order[q]];
                            if (v > xp[best] || isnan(v)) best = order[q];
                        }
                        int64_t j = (pl * OH + oy) * OW + ox;
                        float got = y->data[j], ref = xp[best];
                        if (isnan(ref)) {
                            ck_assert_msg(isnan(got), "window %lld: want NaN", (long long)j);
                            nan_windows += rep == 0;
                        } else {
                            ck_assert_msg(got == ref, "window %lld: %g vs %g", (long long)j, got, ref);
                        }
                        want_grad[pl * H * W + best] += g->data[j];
                    }
            ct_backward_ex(y, g, false);
            for (int64_t i = 0; i < x->numel; i++)
                ck_assert_msg(ct_grad(x)->data[i] == want_grad[i], "pass %d, dx[%lld] = %g, want %g",
                              rep, (long long)i, ct_grad(x)->data[i], want_grad[i]);
        }
        ck_assert_int_ge(nan_windows, 3); /* the NaN rule was exercised */
    }
}
END_TEST

/* The 2x2 gradient flowing into an intermediate buffer that another consumer also adds
 * to: z = maxpool(y) summed with weights, plus y itself (y = x * 1 so y is not a leaf). */
START_TEST(max_pool_2x2_gradient_adds_to_other_consumers) {
    CT_SCOPE {
        ct_tensor *x = ct_test_rand(CT_SHAPE(2, 2, 6, 34), -1, 1, 41);
        ct_set_requires_grad(x, true);
        ct_tensor *y = ct_mul_scalar(x, 1.0f);
        ct_tensor *p = ct_max_pool2d(y, 2, 0, 0);
        ct_tensor *loss = ct_add(ct_sum(ct_mul_scalar(p, 3.0f)), ct_sum(y));
        ct_backward(loss);
        /* every x gets 1 from sum(y), plus 3 where it is its window's maximum */
        int64_t planes = 4, h = 6, w = 34;
        for (int64_t pl = 0; pl < planes; pl++)
            for (int64_t i = 0; i < h * w; i++) {
                int64_t iy = i / w, ix = i % w, wy = iy & ~1, wx = ix & ~1;
                const float *xp = x->data + pl * h * w;
                bool is_max = true;
                for (int dy = 0; dy < 2; dy++)
                    for (int dx = 0; dx < 2; dx++)
                        is_max &= xp[(wy + dy) * w + wx + dx] <= xp[i];
                ck_assert_float_eq(ct_grad(x)->data[pl * h * w + i], is_max ? 4.0f : 1.0f);
            }
    }
}
END_TEST

/* Winograd's lane kernels, AVX-512 and the AVX2 build's: the same bits for the forward
 * with a graph (F(2x2)), dX, dW and the forward without one (F(4x4) on 8x8), with 16 and
 * 20 channels (a whole lane group and a tail) and a residual epilogue. */
START_TEST(winograd_avx512_and_avx2_agree_bitwise) {
    static const int64_t shapes[][5] = {{3, 16, 20, 8, 8}, {2, 20, 16, 14, 14}, {3, 16, 16, 7, 9}};
    for (size_t sh = 0; sh < sizeof shapes / sizeof shapes[0]; sh++) {
        const int64_t *k = shapes[sh];
        float *out[2][4];
        int64_t nout[4];
        for (int pass = 0; pass < 2; pass++) {
            ct_cpu_force_avx512(pass == 0);
            CT_SCOPE {
                ct_tensor *x = ct_test_rand(CT_SHAPE(k[0], k[1], k[3], k[4]), -1, 1, 31);
                ct_tensor *w = ct_test_rand(CT_SHAPE(k[2], k[1], 3, 3), -0.3f, 0.3f, 32);
                ct_tensor *r = ct_test_rand(CT_SHAPE(k[0], k[2], k[3], k[4]), -1, 1, 33);
                float a[32], b[32];
                for (int c = 0; c < 32; c++) a[c] = 0.5f + 0.03f * (float)c, b[c] = 0.1f - 0.01f * (float)c;
                ct_conv2d_post post = {.scale = a, .shift = b, .residual = r, .relu = true};
                ct_conv2d_opts o = {.stride_h = 1, .stride_w = 1, .pad_h = 1, .pad_w = 1, .groups = 1, .post = &post};
                ct_tensor *inf = ct_conv2d_ex(x, w, NULL, &o); /* no graph: F(4x4) where it fits */
                ct_set_requires_grad(x, true);
                ct_set_requires_grad(w, true);
                ct_tensor *y = ct_conv2d(x, w, NULL, 1, 1);
                ct_backward_ex(y, r, false);
                ct_tensor *res[4] = {inf, y, ct_grad(x), ct_grad(w)};
                keep_results(res, 4, out[pass], nout);
            }
        }
        ct_cpu_force_avx512(true);
        static const char *what[4] = {"inference output", "output", "dx", "dweight"};
        for (int i = 0; i < 4; i++) {
            ck_assert_msg(memcmp(out[0][i], out[1][i], (size_t)nout[i] * sizeof(float)) == 0,
                          "shape %zu: %s differs between the AVX-512 and AVX2 kernels", sh, what[i]);
            free(out[0][i]);
            free(out[1][i]);
        }
    }
}
END_TEST

/* The AVX-512 row kernels (im2col, col2im, padding, 2x2 max pool) and the AVX2 build's
 * own loops must give the same bits, so a job mixing node generations trains one model.
 * Widths cover a full 16-float vector, a masked tail and rows shorter than one vector.
 * On a CPU without AVX-512 both runs take the AVX2 path and the test says so. */
START_TEST(avx512_and_avx2_kernels_agree_bitwise) {
    if (!ct_cpu_avx512()) fprintf(stderr, "note: no AVX-512 on this CPU; comparing AVX2 with itself\n");
    const int64_t widths[] = {5, 14, 16, 28, 33};
    for (int wi = 0; wi < 5; wi++) {
        int64_t w = widths[wi];
        float *out[2][4];
        int64_t nout[4];
        for (int pass = 0; pass < 2; pass++) {
            ct_cpu_force_avx512(pass == 0);
            CT_SCOPE {
                ct_tensor *x = ct_test_rand(CT_SHAPE(2, 3, 9, w), -1, 1, 100 + (uint64_t)wi);
                ct_tensor *k = ct_test_rand(CT_SHAPE(4, 3, 3, 3), -1, 1, 200 + (uint64_t)wi);
                ct_set_requires_grad(x, true);
                ct_set_requires_grad(k, true);
                ct_tensor *y = ct_conv2d(x, k, NULL, 1, 1);
                ct_tensor *p = ct_max_pool2d(y, 2, 0, 0);
                ct_backward(ct_sum(ct_mul(p, p)));
                ct_tensor *res[4] = {y, p, ct_grad(x), ct_grad(k)};
                for (int r = 0; r < 4; r++) {
                    nout[r] = res[r]->numel;
                    out[pass][r] = malloc((size_t)nout[r] * sizeof(float));
                    memcpy(out[pass][r], res[r]->data, (size_t)nout[r] * sizeof(float));
                }
            }
        }
        ct_cpu_force_avx512(true);
        static const char *what[4] = {"conv output", "pool output", "dx", "dweight"};
        for (int r = 0; r < 4; r++) {
            ck_assert_msg(memcmp(out[0][r], out[1][r], (size_t)nout[r] * sizeof(float)) == 0,
                          "width %lld: %s differs between the AVX-512 and AVX2 kernels",
                          (long long)w, what[r]);
            free(out[0][r]);
            free(out[1][r]);
        }
    }
}
END_TEST

/* ---- adaptive average pool ----------------------------------------------------------- */

typedef struct {
    int64_t h, w;
    int oh, ow;
} adaptive_cfg;

static const adaptive_cfg acfgs[] = {
    {7, 5, 1, 1}, /* the global pool ResNet ends with, non-square input */
    {7, 5, 3, 2}, /* windows overlap: 7 rows into 3 is [0,3), [2,5), [4,7) */
    {6, 9, 2, 3}, /* sizes divide: plain 3x3 windows */
    {4, 4, 4, 4}, /* the identity */
    {3, 2, 5, 3}, /* larger output than input: windows of one cell, repeated */
};
#define NACFG (int)(sizeof acfgs / sizeof acfgs[0])

static ct_tensor *adaptive_fn(ct_tensor **in, void *ctx) {
    const adaptive_cfg *c = ctx;
    return ct_adaptive_avg_pool2d(in[0], c->oh, c->ow);
}

START_TEST(adaptive_avg_pool_matches_definition) {
    const adaptive_cfg *c = &acfgs[_i];
    CT_SCOPE {
        ct_tensor *x = ct_test_rand(CT_SHAPE(2, 3, c->h, c->w), -1, 1, 70 + _i);
        ct_tensor *y = ct_adaptive_avg_pool2d(x, c->oh, c->ow);
        ck_assert_int_eq(y->shape[0], 2);
        ck_assert_int_eq(y->shape[1], 3);
        ck_assert_int_eq(y->shape[2], c->oh);
        ck_assert_int_eq(y->shape[3], c->ow);
        for (int64_t pl = 0; pl < 6; pl++)
            for (int64_t oy = 0; oy < c->oh; oy++)
                for (int64_t ox = 0; ox < c->ow; ox++) {
                    /* the window written as PyTorch's floor/ceil in real arithmetic */
                    int64_t y0 = (int64_t)floor((double)oy * c->h / c->oh);
                    int64_t y1 = (int64_t)ceil((double)(oy + 1) * c->h / c->oh);
                    int64_t x0 = (int64_t)floor((double)ox * c->w / c->ow);
                    int64_t x1 = (int64_t)ceil((double)(ox + 1) * c->w / c->ow);
                    double s = 0;
                    for (int64_t iy = y0; iy < y1; iy++)
                        for (int64_t ix = x0; ix < x1; ix++) s += x->data[(pl * c->h + iy) * c->w + ix];
                    s /= (double)((y1 - y0) * (x1 - x0));
                    ck_assert_close(y->data[(pl * c->oh + oy) * c->ow + ox], s, 1e-6);
                }
    }
}
END_TEST

START_TEST(adaptive_avg_pool_backward_gradcheck) {
    const adaptive_cfg *c = &acfgs[_i];
    CT_SCOPE {
        ct_tensor *x = ct_test_rand(CT_SHAPE(2, 3, c->h, c->w), -1, 1, 80 + _i);
        ct_set_requires_grad(x, true);
        double err = ct_test_gradcheck("adaptive_avg_pool2d", adaptive_fn, 1, &x, (void *)c,
                                       1e-2, 1e-4, 1e-3);
        ck_assert_msg(err <= 1, "adaptive_avg_pool2d config %d: gradcheck error %g", _i, err);
    }
}
END_TEST

START_TEST(adaptive_avg_pool_matches_torch) {
    CT_SCOPE {
        /* x = torch.arange(35.).reshape(1, 1, 7, 5) ** 1.5;
         * F.adaptive_avg_pool2d(x, (3, 2)) and F.adaptive_avg_pool2d(x, 1) */
        ct_tensor *x = ct_zeros(CT_SHAPE(1, 1, 7, 5));
        for (int i = 0; i < 35; i++) x->data[i] = powf((float)i, 1.5f);
        const float want[] = {17.544536590576172f, 24.99964714050293f, 65.63648986816406f,
                              77.90808868408203f, 133.8525848388672f, 149.3932342529297f};
        ct_tensor *y = ct_adaptive_avg_pool2d(x, 3, 2);
        for (int i = 0; i < 6; i++) ck_assert_float_eq_tol(y->data[i], want[i], 1e-4);
        ck_assert_float_eq_tol(ct_adaptive_avg_pool2d(x, 1, 1)->data[0], 79.88748168945312f, 1e-4);
    }
}
END_TEST

/* ---- errors -------------------------------------------------------------------------- */

START_TEST(conv_channel_mismatch_aborts) {
    CT_SCOPE { ct_conv2d(ct_zeros(CT_SHAPE(1, 3, 5, 5)), ct_zeros(CT_SHAPE(2, 2, 3, 3)), NULL, 1, 0); }
}
END_TEST

START_TEST(conv_kernel_too_large_aborts) {
    CT_SCOPE { ct_conv2d(ct_zeros(CT_SHAPE(1, 1, 2, 5)), ct_zeros(CT_SHAPE(1, 1, 5, 3)), NULL, 1, 1); }
}
END_TEST

START_TEST(conv_bias_mismatch_aborts) {
    CT_SCOPE {
        ct_conv2d(ct_zeros(CT_SHAPE(1, 1, 5, 5)), ct_zeros(CT_SHAPE(2, 1, 3, 3)),
                  ct_zeros(CT_SHAPE(3)), 1, 0);
    }
}
END_TEST

START_TEST(conv_epilogue_with_grad_aborts) {
    ct_test_expect_abort("conv2d: an epilogue (post) records no graph, but a gradient is needed");
    CT_SCOPE {
        ct_tensor *w = ct_zeros(CT_SHAPE(2, 1, 3, 3));
        ct_set_requires_grad(w, true);
        ct_conv2d_post post = {.relu = true};
        ct_conv2d_opts o = {.post = &post};
        ct_conv2d_ex(ct_zeros(CT_SHAPE(1, 1, 5, 5)), w, NULL, &o);
    }
}
END_TEST

START_TEST(conv_epilogue_residual_mismatch_aborts) {
    ct_test_expect_abort("conv2d: residual [1, 2, 5, 5] does not match the output [1, 2, 3, 3]");
    CT_SCOPE {
        ct_conv2d_post post = {.residual = ct_zeros(CT_SHAPE(1, 2, 5, 5))};
        ct_conv2d_opts o = {.post = &post};
        ct_conv2d_ex(ct_zeros(CT_SHAPE(1, 1, 5, 5)), ct_zeros(CT_SHAPE(2, 1, 3, 3)), NULL, &o);
    }
}
END_TEST

START_TEST(conv_input_not_4d_aborts) {
    CT_SCOPE { ct_conv2d(ct_zeros(CT_SHAPE(1, 5, 5)), ct_zeros(CT_SHAPE(2, 1, 3, 3)), NULL, 1, 0); }
}
END_TEST

START_TEST(conv_groups_not_dividing_aborts) {
    ct_test_expect_abort("groups 2");
    CT_SCOPE {
        /* 3 input channels cannot split into 2 groups */
        ct_conv2d_ex(ct_zeros(CT_SHAPE(1, 3, 5, 5)), ct_zeros(CT_SHAPE(2, 1, 3, 3)), NULL,
                     &(ct_conv2d_opts){.groups = 2});
    }
}
END_TEST

START_TEST(conv_negative_stride_aborts) {
    ct_test_expect_abort("stride");
    CT_SCOPE {
        ct_conv2d_ex(ct_zeros(CT_SHAPE(1, 1, 5, 5)), ct_zeros(CT_SHAPE(1, 1, 3, 3)), NULL,
                     &(ct_conv2d_opts){.stride_h = -1});
    }
}
END_TEST

START_TEST(adaptive_avg_pool_zero_output_aborts) {
    ct_test_expect_abort("adaptive_avg_pool2d: output size 0x1");
    CT_SCOPE { ct_adaptive_avg_pool2d(ct_zeros(CT_SHAPE(1, 1, 4, 4)), 0, 1); }
}
END_TEST

START_TEST(pool_kernel_too_large_aborts) {
    CT_SCOPE { ct_max_pool2d(ct_zeros(CT_SHAPE(1, 1, 2, 2)), 4, 0, 0); }
}
END_TEST

START_TEST(pool_padding_over_half_kernel_aborts) {
    CT_SCOPE { ct_avg_pool2d(ct_zeros(CT_SHAPE(1, 1, 6, 6)), 2, 1, 2); }
}
END_TEST

int main(void) {
    Suite *s = suite_create("ops_conv_pool");
    TCase *tc = tcase_create("conv");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, conv_forward_matches_direct, 0, NCFG);
    tcase_add_loop_test(tc, conv_backward_gradcheck, 0, NCFG);
    tcase_add_loop_test(tc, conv_classes_forward_matches_direct, 0, NCFG);
    tcase_add_loop_test(tc, conv_classes_backward_gradcheck, 0, NCFG);
    tcase_add_loop_test(tc, pad_skip_matches_one_class, 0, NCFG);
    tcase_add_test(tc, pad_skip_auto_picks_small_planes);
    tcase_add_test(tc, conv_skips_unneeded_gradients);
    tcase_add_test(tc, winograd_matches_im2col);
    tcase_add_test(tc, dense_matches_im2col);
    tcase_add_test(tc, winograd_f4_inference_matches_im2col);
    tcase_add_test(tc, conv_epilogue_is_bn_add_relu_bitwise);
    tcase_add_test(tc, conv_saves_only_what_backward_uses);
    tcase_add_test(tc, conv_steady_state_makes_no_mallocs);
    tcase_add_loop_test(tc, residual_block_gradcheck, 0, 2);
    tcase_add_test(tc, residual_gradient_is_branch_plus_identity);
    suite_add_tcase(s, tc);
    TCase *tp = tcase_create("pool");
    tcase_set_timeout(tp, 60);
    tcase_add_loop_test(tp, pool_forward_matches_definition, 0, NPCFG);
    tcase_add_loop_test(tp, pool_backward_gradcheck, 0, NPCFG);
    tcase_add_test(tp, pool_matches_torch);
    tcase_add_test(tp, max_pool_routes_gradient_to_argmax);
    tcase_add_test(tp, max_pool_propagates_nan);
    tcase_add_test(tp, max_pool_padding_is_minus_infinity);
    tcase_add_loop_test(tp, max_pool_2x2_matches_scan_with_ties_and_nan, 0, 2);
    tcase_add_test(tp, avx512_and_avx2_kernels_agree_bitwise);
    tcase_add_test(tp, winograd_avx512_and_avx2_agree_bitwise);
    tcase_add_test(tp, max_pool_2x2_gradient_adds_to_other_consumers);
    tcase_add_loop_test(tp, adaptive_avg_pool_matches_definition, 0, NACFG);
    tcase_add_loop_test(tp, adaptive_avg_pool_backward_gradcheck, 0, NACFG);
    tcase_add_test(tp, adaptive_avg_pool_matches_torch);
    suite_add_tcase(s, tp);
    TCase *te = tcase_create("errors");
    tcase_add_test_raise_signal(te, conv_channel_mismatch_aborts, SIGABRT);
    tcase_add_test_raise_signal(te, conv_kernel_too_large_aborts, SIGABRT);
    tcase_add_test_raise_signal(te, conv_bias_mismatch_aborts, SIGABRT);
    tcase_add_test_raise_signal(te, conv_input_not_4d_aborts, SIGABRT);
    tcase_add_test_raise_signal(te, conv_epilogue_with_grad_aborts, SIGABRT);
    tcase_add_test_raise_signal(te, conv_epilogue_residual_mismatch_aborts, SIGABRT);
    tcase_add_test_raise_signal(te, conv_groups_not_dividing_aborts, SIGABRT);
    tcase_add_test_raise_signal(te, conv_negative_stride_aborts, SIGABRT);
    tcase_add_test_raise_signal(te, adaptive_avg_pool_zero_output_aborts, SIGABRT);
    tcase_add_test_raise_signal(te, pool_kernel_too_large_aborts, SIGABRT);
    tcase_add_test_raise_signal(te, pool_padding_over_half_kernel_aborts, SIGABRT);
    suite_add_tcase(s, te);
    return ct_test_run(s);
}
