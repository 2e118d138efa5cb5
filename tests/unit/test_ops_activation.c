/* Activations (relu, leaky_relu, gelu, tanh, sigmoid), softmax/log_softmax and the losses
 * (cross_entropy, mse_loss): values against PyTorch 1.13 references, backward against
 * finite differences, and misuse aborting with a message that names what is wrong. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util.h"
#include "ops/vmath.h"

/* Random values with |v| in [0.1, 1.1): relu and leaky_relu have a kink at 0, where
 * central differences are meaningless, so inputs stay at least 0.1 (> eps) away from it. */
static ct_tensor *rand_away_from_zero(int ndim, const int64_t *shape, uint64_t seed) {
    ct_tensor *x = ct_test_rand(ndim, shape, -1, 1, seed);
    for (int64_t i = 0; i < x->numel; i++) x->data[i] += x->data[i] < 0 ? -0.1f : 0.1f;
    return x;
}

/* ---- activations ------------------------------------------------------------------- */

/* PyTorch 1.13 references for x = [-2, -0.5, 0, 0.5, 2, 3]:
 * F.relu(x), F.leaky_relu(x, 0.01), F.gelu(x), torch.tanh(x), torch.sigmoid(x). */
static const float act_x[6] = {-2, -0.5f, 0, 0.5f, 2, 3};
static const float act_ref[5][6] = {
    {0, 0, 0, 0.5f, 2, 3},
    {-1.99999996e-02f, -4.99999989e-03f, 0, 5.0e-01f, 2, 3},
    {-4.55000997e-02f, -1.54268786e-01f, 0, 3.45731199e-01f, 1.95449996e+00f, 2.99595022e+00f},
    {-9.64027584e-01f, -4.62117165e-01f, 0, 4.62117165e-01f, 9.64027584e-01f, 9.95054781e-01f},
    {1.19202919e-01f, 3.77540678e-01f, 5.0e-01f, 6.22459352e-01f, 8.80797029e-01f,
     9.52574134e-01f},
};
static const char *act_names[] = {"relu", "leaky_relu", "gelu", "tanh", "sigmoid", "leaky_neg"};

/* Finite-difference tolerances per op (step 1e-2): |analytic - numeric| must stay within
 * atol + rtol |numeric|. The piecewise-linear ops are exact up to float rounding; the
 * curved ones carry the O(step^2) truncation error of central differences. Each leaves
 * roughly a 3-10x margin over the worst error measured on these inputs. */
typedef struct {
    double atol, rtol;
} tol;
static const tol act_tol[] = {
    {1e-5, 1e-3}, /* relu */
    {1e-5, 1e-3}, /* leaky_relu */
    {1e-4, 1e-3}, /* gelu */
    {1e-4, 1e-3}, /* tanh */
    {1e-5, 1e-3}, /* sigmoid */
    {1e-5, 1e-3}, /* leaky_relu, negative slope */
};
static const tol softmax_tol = {1e-4, 1e-3}, log_softmax_tol = {2e-4, 1e-3};
static const tol ce_mean_tol = {1e-4, 1e-3};
static const tol ce_sum_tol = {5e-4, 1e-3}; /* N = 5 times the mean's gradients */
static const tol mse_mean_tol = {1e-4, 1e-3}, mse_sum_tol = {1e-3, 1e-3};
#define GC_STEP 1e-2

static ct_tensor *act(int which, ct_tensor *x) {
    switch (which) {
    case 0: return ct_relu(x);
    case 1: return ct_leaky_relu(x, 0.01f);
    case 2: return ct_gelu(x);
    case 3: return ct_tanh(x);
    case 4: return ct_sigmoid(x);
    default: return ct_leaky_relu(x, -0.3f); /* a negative slope saves the input instead */
    }
}

static ct_tensor *act_fn(ct_tensor **in, void *ctx) { return act((int)(intptr_t)ctx, in[0]); }

START_TEST(activation_values) {
    CT_SCOPE {
        ct_tensor *x = ct_from_data(CT_SHAPE(2, 3), act_x);
        ct_tensor *y = act(_i, x);
        ck_assert(ct_same_shape(x, y));
        for (int i = 0; i < 6; i++) ck_assert_close(y->data[i], act_ref[_i][i], 2e-6);
    }
}
END_TEST

START_TEST(activation_grad) {
    CT_SCOPE {
        /* 3 x 7 = 21 elements: two 8-wide blocks and a scalar tail in the kernels */
        ct_tensor *x = rand_away_from_zero(CT_SHAPE(3, 7), 30 + (uint64_t)_i);
        for (int64_t i = 0; i < x->numel; i++) x->data[i] *= 2.5f; /* reach saturation */
        ct_set_requires_grad(x, true);
        double err = ct_test_gradcheck(act_names[_i], act_fn, 1, &x, (void *)(intptr_t)_i,
                                       GC_STEP, act_tol[_i].atol, act_tol[_i].rtol);
        ck_assert_msg(err <= 1, "%s: gradcheck error %g", act_names[_i], err);
    }
}
END_TEST

START_TEST(activation_backward_values) {
    CT_SCOPE {
        /* Analytic derivatives at x = [-2, -0.5, 0, 0.5, 2, 3] (PyTorch conventions: relu'(0)
         * = 0, leaky_relu'(0) = slope). */
        ct_tensor *x = ct_from_data(CT_SHAPE(6), act_x);
        ct_set_requires_grad(x, true);
        ct_backward(ct_sum(ct_relu(x)));
        float relu_d[] = {0, 0, 0, 1, 1, 1};
        for (int i = 0; i < 6; i++) ck_assert_float_eq(x->grad->data[i], relu_d[i]);
        ct_clear_grad(x);
        ct_backward(ct_sum(ct_leaky_relu(x, 0.2f)));
        float leaky_d[] = {0.2f, 0.2f, 0.2f, 1, 1, 1};
        for (int i = 0; i < 6; i++) ck_assert_float_eq(x->grad->data[i], leaky_d[i]);
        ct_clear_grad(x);
        ct_backward(ct_sum(ct_sigmoid(x)));
        for (int i = 0; i < 6; i++) {
            double s = 1 / (1 + exp(-(double)act_x[i]));
            ck_assert_close(x->grad->data[i], s * (1 - s), 1e-6);
        }
        ct_clear_grad(x);
        ct_backward(ct_sum(ct_tanh(x)));
        for (int i = 0; i < 6; i++) {
            double t = tanh((double)act_x[i]);
            ck_assert_close(x->grad->data[i], 1 - t * t, 1e-6);
        }
        ct_clear_grad(x);
        ct_backward(ct_sum(ct_gelu(x)));
        for (int i = 0; i < 6; i++) {
            double v = act_x[i];
            double d = 0.5 * (1 + erf(v / sqrt(2))) + v * exp(-0.5 * v * v) / sqrt(2 * M_PI);
            ck_assert_close(x->grad->data[i], d, 1e-6);
        }
    }
}
END_TEST

START_TEST(activation_saturation) {
    CT_SCOPE {
        /* no overflow to NaN at large |x| */
        ct_tensor *x = ct_from_data(CT_SHAPE(4), (float[]){-100, -30, 30, 100});
        ct_tensor *s = ct_sigmoid(x), *t = ct_tanh(x), *g = ct_gelu(x);
        /* torch.sigmoid gives [0, 9.3576236e-14, 1, 1]; exp(-100) is a float denormal */
        ck_assert(s->data[0] >= 0 && s->data[0] < 1e-40f);
        ck_assert_float_eq_tol(s->data[1], 9.357623589846195e-14f, 1e-19f);
        ck_assert_float_eq(s->data[2], 1);
        ck_assert_float_eq(s->data[3], 1);
        ck_assert_float_eq(t->data[0], -1);
        ck_assert_float_eq(t->data[3], 1);
        ck_assert_float_eq(g->data[0], 0); /* -100 * Phi(-100) underflows to -0 */
        ck_assert_float_eq(g->data[3], 100);
        for (int i = 0; i < 4; i++) ck_assert(isfinite(s->data[i]) && isfinite(t->data[i]));
        /* relu keeps NaN, as torch.relu does */
        ct_tensor *r = ct_relu(ct_from_data(CT_SHAPE(1), (float[]){NAN}));
        ck_assert(isnan(r->data[0]));
    }
}
END_TEST

START_TEST(relu_saves_its_output) {
    CT_SCOPE {
        /* The node keeps an alias of the output, not of the input, so the input can be
         * freed as soon as the layer that made it is done with it. */
        ct_tensor *x = ct_test_rand(CT_SHAPE(4), -1, 1, 40);
        ct_set_requires_grad(x, true);
        ct_tensor *y = ct_relu(x);
        ck_assert_int_eq(y->grad_fn->nsaved, 1);
        ck_assert_ptr_eq(y->grad_fn->saved[0]->data, y->data);
        ct_tensor *s = ct_sigmoid(x);
        ck_assert_ptr_eq(s->grad_fn->saved[0]->data, s->data);
        /* Nothing is recorded or saved when no input requires grad. */
        ct_tensor *z = ct_relu(ct_test_rand(CT_SHAPE(4), -1, 1, 41));
        ck_assert(!z->requires_grad);
        ck_assert_ptr_null(z->grad_fn);
    }
}
END_TEST

/* ---- softmax / log_softmax --------------------------------------------------------- */

START_TEST(softmax_values) {
    CT_SCOPE {
        /* torch.softmax(a, 1), torch.softmax(a, 0), torch.log_softmax(a, 1) for
         * a = [[1, 2, 3], [1, -1, 0.5]] */
        ct_tensor *a = ct_from_data(CT_SHAPE(2, 3), (float[]){1, 2, 3, 1, -1, 0.5f});
        float sm1[] = {9.00305733e-02f, 2.44728476e-01f, 6.65240943e-01f,
                       5.74096978e-01f, 7.76955783e-02f, 3.48207414e-01f};
        float sm0[] = {5.0e-01f, 9.52574134e-01f, 9.24141824e-01f,
                       5.0e-01f, 4.74258736e-02f, 7.58581758e-02f};
        float lsm1[] = {-2.40760589e+00f, -1.40760589e+00f, -4.07605946e-01f,
                        -5.54956973e-01f, -2.55495691e+00f, -1.05495691e+00f};
        ct_tensor *s1 = ct_softmax(a, 1), *s0 = ct_softmax(a, 0), *l1 = ct_log_softmax(a, -1);
        for (int i = 0; i < 6; i++) {
            ck_assert_close(s1->data[i], sm1[i], 1e-6);
            ck_assert_close(s0->data[i], sm0[i], 1e-6);
            ck_assert_close(l1->data[i], lsm1[i], 1e-6);
        }
    }
}
END_TEST

START_TEST(softmax_properties) {
    static const int dims[] = {0, 1, 2, -1};
    int dim = dims[_i];
    CT_SCOPE {
        ct_tensor *x = ct_test_rand(CT_SHAPE(3, 4, 11), -4, 4, 50);
        ct_tensor *s = ct_softmax(x, dim), *l = ct_log_softmax(x, dim);
        ct_tensor *rows = ct_sum_dim(s, dim, false);
        for (int64_t i = 0; i < rows->numel; i++) ck_assert_close(rows->data[i], 1.0, 1e-6);
        for (int64_t i = 0; i < x->numel; i++) {
            ck_assert(s->data[i] > 0 && s->data[i] < 1);
            ck_assert_close(l->data[i], log(s->data[i]), 1e-5);
        }
        /* shift invariance: softmax(x + 1000) == softmax(x), with no overflow */
        ct_tensor *big = ct_add_scalar(x, 1000);
        ct_tensor *sb = ct_softmax(big, dim), *lb = ct_log_softmax(big, dim);
        for (int64_t i = 0; i < x->numel; i++) {
            ck_assert_close(sb->data[i], s->data[i], 1e-4);
            /* x + 1000 rounds x to a multiple of 2^-14; the log-probs inherit that error */
            ck_assert_close(lb->data[i], l->data[i], 2e-4);
        }
    }
}
END_TEST

typedef struct {
    int dim;
    bool log;
} sm_case;

static ct_tensor *softmax_fn(ct_tensor **in, void *ctx) {
    const sm_case *c = ctx;
    return c->log ? ct_log_softmax(in[0], c->dim) : ct_softmax(in[0], c->dim);
}

START_TEST(softmax_grad) {
    static const int dims[] = {0, 1, 2, -1, -2};
    sm_case c = {dims[_i % 5], _i >= 5};
    CT_SCOPE {
        /* inner sizes 99, 9 and 1: strided and contiguous paths, with 8-wide tails */
        ct_tensor *x = ct_test_rand(CT_SHAPE(3, 11, 9), -2, 2, 60 + (uint64_t)_i);
        ct_set_requires_grad(x, true);
        const tol *t = c.log ? &log_softmax_tol : &softmax_tol;
        double err = ct_test_gradcheck(c.log ? "log_softmax" : "softmax", softmax_fn, 1, &x, &c,
                                       GC_STEP, t->atol, t->rtol);
        ck_assert_msg(err <= 1, "%s(dim=%d): gradcheck error %g", c.log ? "log_softmax" : "softmax",
                      c.dim, err);
    }
}
END_TEST

/* ---- cross_entropy ----------------------------------------------------------------- */

/* L = [[2, 1, 0.1, -1], [0.5, 2.5, -0.3, 0], [-1.2, 0.3, 0.8, 3]], t = [0, 3, 2] */
static const float ce_logits[12] = {2, 1, 0.1f, -1, 0.5f, 2.5f, -0.3f, 0, -1.2f, 0.3f, 0.8f, 3};
static const int64_t ce_target[3] = {0, 3, 2};

START_TEST(cross_entropy_values) {
    CT_SCOPE {
        ct_tensor *l = ct_from_data(CT_SHAPE(3, 4), ce_logits);
        ct_tensor *mean = ct_cross_entropy(l, ce_target, CT_REDUCE_MEAN);
        ct_tensor *sum = ct_cross_entropy(l, ce_target, CT_REDUCE_SUM);
        ck_assert_int_eq(mean->ndim, 0);
        ck_assert_int_eq(sum->ndim, 0);
        /* F.cross_entropy(L, t) and F.cross_entropy(L, t, reduction='sum') */
        ck_assert_close(mean->data[0], 1.85708809, 1e-6);
        ck_assert_close(sum->data[0], 5.57126427, 1e-6);
        /* the same from log_softmax, picking -log p[target] by hand */
        ct_tensor *ls = ct_log_softmax(l, 1);
        double manual = 0;
        for (int r = 0; r < 3; r++) manual -= ls->data[r * 4 + ce_target[r]];
        ck_assert_close(sum->data[0], manual, 1e-6);
        /* Large logits do not overflow: shifting a row changes nothing. */
        ct_tensor *shifted = ct_add_scalar(l, 500);
        ck_assert_close(ct_cross_entropy(shifted, ce_target, CT_REDUCE_MEAN)->data[0],
                        1.85708809, 1e-4);
    }
}
END_TEST

START_TEST(cross_entropy_grad_mean_values) {
    CT_SCOPE {
        ct_tensor *l = ct_from_data(CT_SHAPE(3, 4), ce_logits);
        ct_set_requires_grad(l, true);
        ct_tensor *loss = ct_cross_entropy(l, ce_target, CT_REDUCE_MEAN);
        /* Only the logits are an input of the graph: the targets are integers. */
        ck_assert_int_eq(loss->grad_fn->ninputs, 1);
        ct_backward(loss);
        /* Lr.grad after F.cross_entropy(Lr, t).backward() */
        float want[] = {-1.20644532e-01f, 7.82438368e-02f, 3.18115763e-02f, 1.05891516e-02f,
                        3.52923535e-02f, 2.60777205e-01f, 1.58578772e-02f, -3.11927438e-01f,
                        4.18986566e-03f, 1.87776648e-02f, -3.02374214e-01f, 2.79406667e-01f};
        for (int i = 0; i < 12; i++) ck_assert_close(l->grad->data[i], want[i], 1e-6);
        /* and the formula: (softmax - onehot) / N */
        ct_tensor *p;
        CT_NO_GRAD { p = ct_softmax(l, 1); }
        for (int r = 0; r < 3; r++)
            for (int c = 0; c < 4; c++)
                ck_assert_close(l->grad->data[r * 4 + c],
                                (p->data[r * 4 + c] - (c == ce_target[r])) / 3.0, 1e-6);
        /* SUM with an upstream gradient of 2 (through mul_scalar): 2 * (softmax - onehot) */
        ct_clear_grad(l);
        ct_backward(ct_mul_scalar(ct_cross_entropy(l, ce_target, CT_REDUCE_SUM), 2));
        for (int r = 0; r < 3; r++)
            for (int c = 0; c < 4; c++)
                ck_assert_close(l->grad->data[r * 4 + c],
                                2.0 * (p->data[r * 4 + c] - (c == ce_target[r])), 1e-6);
    }
}
END_TEST

START_TEST(cross_entropy_no_grad_needed) {
    CT_SCOPE {
        /* logits that do not require grad (or no_grad mode): no node, nothing saved */
        ct_tensor *l = ct_from_data(CT_SHAPE(3, 4), ce_logits);
        int64_t saved0 = ct_stats_get().saved_tensors, nodes0 = ct_stats_get().graph_nodes;
        ct_tensor *loss = ct_cross_entropy(l, ce_target, CT_REDUCE_MEAN);
        ck_assert(!loss->requires_grad);
        ct_set_requires_grad(l, true);
        CT_NO_GRAD { loss = ct_cross_entropy(l, ce_target, CT_REDUCE_SUM); }
        ck_assert(!loss->requires_grad);
        ck_assert_int_eq(ct_stats_get().saved_tensors, saved0);
        ck_assert_int_eq(ct_stats_get().graph_nodes, nodes0);
        ck_assert_close(loss->data[0], 5.57126427, 1e-6);
    }
}
END_TEST

START_TEST(cross_entropy_label_smoothing_values) {
    CT_SCOPE {
        ct_tensor *l = ct_from_data(CT_SHAPE(3, 4), ce_logits);
        ct_set_requires_grad(l, true);
        /* F.cross_entropy(L, t, label_smoothing=e), mean and sum, in float64 */
        ck_assert_close(ct_cross_entropy_smooth(l, ce_target, 0.1f, CT_REDUCE_SUM)->data[0],
                        5.65876428, 1e-6);
        ck_assert_close(ct_cross_entropy_smooth(l, ce_target, 1.0f, CT_REDUCE_MEAN)->data[0],
                        2.14875476, 1e-6);
        /* smoothing 0 is plain cross-entropy */
        ck_assert_close(ct_cross_entropy_smooth(l, ce_target, 0.0f, CT_REDUCE_MEAN)->data[0],
                        1.85708809, 1e-6);
        ct_tensor *loss = ct_cross_entropy_smooth(l, ce_target, 0.1f, CT_REDUCE_MEAN);
        ck_assert_close(loss->data[0], 1.88625476, 1e-6);
        ct_backward(loss);
        /* Lr.grad after F.cross_entropy(Lr, t, label_smoothing=0.1).backward() */
        float want[] = {-0.0956445496f, 0.0699104976f,  0.0234782344f, 0.00225581768f,
                        0.0269590232f,  0.252443869f,   0.00752454468f, -0.286927437f,
                        -0.00414346929f, 0.0104443346f, -0.277374193f, 0.271073328f};
        for (int i = 0; i < 12; i++) ck_assert_close(l->grad->data[i], want[i], 1e-6);
    }
}
END_TEST

typedef struct {
    const int64_t *target;
    ct_reduction red;
    float smoothing;
} ce_case;

static ct_tensor *ce_fn(ct_tensor **in, void *ctx) {
    const ce_case *c = ctx;
    return ct_cross_entropy_smooth(in[0], c->target, c->smoothing, c->red);
}

START_TEST(cross_entropy_grad) {
    CT_SCOPE {
        /* 5 rows x 13 classes: the backward's 8-wide blocks cross row boundaries */
        int64_t target[5] = {0, 12, 3, 7, 12};
        ct_tensor *l = ct_test_rand(CT_SHAPE(5, 13), -3, 3, 70);
        ct_set_requires_grad(l, true);
        ce_case mean = {target, CT_REDUCE_MEAN, 0}, sum = {target, CT_REDUCE_SUM, 0};
        ce_case smooth = {target, CT_REDUCE_SUM, 0.2f};
        ck_assert(ct_test_gradcheck("ce_mean", ce_fn, 1, &l, &mean, GC_STEP, ce_mean_tol.atol,
                                    ce_mean_tol.rtol) <= 1);
        ck_assert(ct_test_gradcheck("ce_sum", ce_fn, 1, &l, &sum, GC_STEP, ce_sum_tol.atol,
                                    ce_sum_tol.rtol) <= 1);
        ck_assert(ct_test_gradcheck("ce_smooth", ce_fn, 1, &l, &smooth, GC_STEP, ce_sum_tol.atol,
                                    ce_sum_tol.rtol) <= 1);
    }
}
END_TEST

START_TEST(training_step_frees_everything) {
    /* A step's tensors, nodes and saved aliases are all gone once its scope closes, with or
     * without backward (the softmax that cross_entropy keeps lives only in its node). */
    ct_stats before = ct_stats_get();
    for (int with_backward = 0; with_backward < 2; with_backward++) {
        CT_SCOPE {
            ct_tensor *x = ct_test_rand(CT_SHAPE(4, 2, 3), -1, 1, 90);
            ct_set_requires_grad(x, true);
            ct_tensor *h = ct_sigmoid(ct_gelu(ct_tanh(ct_relu(ct_flatten(x, 1)))));
            ct_tensor *logits = ct_log_softmax(ct_leaky_relu(h, 0.1f), 1);
            ct_tensor *loss = ct_add(ct_cross_entropy(logits, (const int64_t[]){0, 5, 2, 3},
                                                      CT_REDUCE_MEAN),
                                     ct_mse_loss(ct_softmax(h, 0), h, CT_REDUCE_SUM));
            if (with_backward) ct_backward(loss);
        }
        ct_test_assert_counters_back(before);
    }
}
END_TEST

/* ---- mse_loss ---------------------------------------------------------------------- */

START_TEST(mse_values) {
    CT_SCOPE {
        /* F.mse_loss(a, b) = 3.375 and reduction='sum' = 13.5 for these */
        ct_tensor *a = ct_from_data(CT_SHAPE(2, 2), (float[]){1, 2, 3, -4});
        ct_tensor *b = ct_from_data(CT_SHAPE(2, 2), (float[]){0.5f, 2.5f, 1, -1});
        ct_tensor *m = ct_mse_loss(a, b, CT_REDUCE_MEAN), *s = ct_mse_loss(a, b, CT_REDUCE_SUM);
        ck_assert_int_eq(m->ndim, 0);
        ck_assert_float_eq(m->data[0], 3.375f);
        ck_assert_float_eq(s->data[0], 13.5f);
        /* gradients: d/da mean = 2 (a - b) / 4, d/db = -that */
        ct_set_requires_grad(a, true);
        ct_set_requires_grad(b, true);
        ct_backward(ct_mse_loss(a, b, CT_REDUCE_MEAN));
        float d[] = {0.5f, -0.5f, 2, -3};
        for (int i = 0; i < 4; i++) {
            ck_assert_float_eq(a->grad->data[i], d[i] / 2);
            ck_assert_float_eq(b->grad->data[i], -d[i] / 2);
        }
    }
}
END_TEST

static ct_tensor *mse_fn(ct_tensor **in, void *ctx) {
    return ct_mse_loss(in[0], in[1], (ct_reduction)(intptr_t)ctx);
}

START_TEST(mse_grad) {
    CT_SCOPE {
        ct_tensor *a = ct_test_rand(CT_SHAPE(3, 7), -1, 1, 80);
        ct_tensor *b = ct_test_rand(CT_SHAPE(3, 7), -1, 1, 81);
        ct_set_requires_grad(a, true);
        ct_set_requires_grad(b, true);
        void *mean = (void *)(intptr_t)CT_REDUCE_MEAN, *sum = (void *)(intptr_t)CT_REDUCE_SUM;
        ck_assert(ct_test_gradcheck("mse_mean", mse_fn, 2, (ct_tensor *[]){a, b}, mean, GC_STEP,
                                    mse_mean_tol.atol, mse_mean_tol.rtol) <= 1);
        ck_assert(ct_test_gradcheck("mse_sum", mse_fn, 2, (ct_tensor *[]){a, b}, sum, GC_STEP,
                                    mse_sum_tol.atol, mse_sum_tol.rtol) <= 1);
        /* only the target-side input needing a gradient */
        ct_tensor *c = ct_test_rand(CT_SHAPE(3, 7), -1, 1, 82);
        ck_assert(ct_test_gradcheck("mse_b_only", mse_fn, 2, (ct_tensor *[]){c, b}, mean, GC_STEP,
                                    mse_mean_tol.atol, mse_mean_tol.rtol) <= 1);
        ck_assert_ptr_null(c->grad);
    }
}
END_TEST

START_TEST(mse_same_tensor) {
    CT_SCOPE {
        /* mse(x, x) == 0 and both gradient contributions land in the same .grad */
        ct_tensor *x = ct_test_rand(CT_SHAPE(5), -1, 1, 83);
        ct_set_requires_grad(x, true);
        ct_tensor *l = ct_mse_loss(x, x, CT_REDUCE_SUM);
        ck_assert_float_eq(l->data[0], 0);
        ct_backward(l);
        for (int i = 0; i < 5; i++) ck_assert_float_eq(x->grad->data[i], 0);
    }
}
END_TEST

/* ---- misuse aborts ----------------------------------------------------------------- */


START_TEST(ce_target_too_large) {
    ct_test_expect_abort("cross_entropy: target[1] = 4 is outside [0, 4) for logits [3, 4]");
    CT_SCOPE {
        ct_cross_entropy(ct_zeros(CT_SHAPE(3, 4)), (const int64_t[]){0, 4, 1}, CT_REDUCE_MEAN);
    }
}
END_TEST

START_TEST(ce_target_negative) {
    ct_test_expect_abort("target[2] = -1 is outside [0, 4)");
    CT_SCOPE {
        ct_cross_entropy(ct_zeros(CT_SHAPE(3, 4)), (const int64_t[]){0, 1, -1}, CT_REDUCE_SUM);
    }
}
END_TEST

START_TEST(ce_not_2d) {
    ct_test_expect_abort("cross_entropy: expected a 2-d input");
    CT_SCOPE { ct_cross_entropy(ct_zeros(CT_SHAPE(4)), (const int64_t[]){0}, CT_REDUCE_SUM); }
}
END_TEST

START_TEST(ce_smoothing_out_of_range) {
    ct_test_expect_abort("cross_entropy: label smoothing 1.5 is outside [0, 1]");
    CT_SCOPE {
        ct_cross_entropy_smooth(ct_zeros(CT_SHAPE(2, 3)), (const int64_t[]){0, 1}, 1.5f,
                                CT_REDUCE_SUM);
    }
}
END_TEST

START_TEST(mse_shape_mismatch) {
    ct_test_expect_abort("mse_loss: shapes [2, 3] and [3, 2] must match");
    CT_SCOPE { ct_mse_loss(ct_zeros(CT_SHAPE(2, 3)), ct_zeros(CT_SHAPE(3, 2)), CT_REDUCE_MEAN); }
}
END_TEST

START_TEST(softmax_bad_dim) {
    ct_test_expect_abort("softmax: dim 2 out of range for [2, 3]");
    CT_SCOPE { ct_softmax(ct_zeros(CT_SHAPE(2, 3)), 2); }
}
END_TEST

START_TEST(log_softmax_bad_dim) {
    ct_test_expect_abort("log_softmax: dim -3 out of range for [2, 3]");
    CT_SCOPE { ct_log_softmax(ct_zeros(CT_SHAPE(2, 3)), -3); }
}
END_TEST

/* ---- vmath.h: the 8-wide exp and erf behind gelu and softmax ------------------------- */

/* |got - want| in units of the float spacing at want (want computed in double). */
static double ulps(float got, double want) {
    float w = (float)want;
    double spacing = (double)nextafterf(fabsf(w), INFINITY) - fabs((double)w);
    return fabs((double)got - want) / spacing;
}

static float lane0(__m256 v) { return _mm256_cvtss_f32(v); }

/* Within 2 ulp of the double-precision value at every 1/1024 of exp's normal range and
 * every 1/4096 of [-6, 6] for erf (the worst measured: 1.23 and 0.95); the edges as libm. */
START_TEST(vector_exp_and_erf_accuracy) {
    double worst_exp = 0, worst_erf = 0;
    for (double d = -87.3; d < 88.7; d += 1.0 / 1024) {
        float x = (float)d;
        double u = ulps(lane0(ct__v8_exp(_mm256_set1_ps(x))), exp((double)x));
        if (x <= 0) /* softmax's variant: the same values where it applies */
            ck_assert(lane0(ct__v8_exp_nonpos(_mm256_set1_ps(x))) == lane0(ct__v8_exp(_mm256_set1_ps(x))));
        worst_exp = u > worst_exp ? u : worst_exp;
    }
    for (double d = -6; d < 6; d += 1.0 / 4096) {
        float x = (float)d;
        double u = ulps(lane0(ct__v8_erf(_mm256_set1_ps(x))), erf((double)x));
        worst_erf = u > worst_erf ? u : worst_erf;
    }
    ck_assert_msg(worst_exp <= 2 && worst_erf <= 2, "exp %.2f ulp, erf %.2f ulp", worst_exp, worst_erf);
    float e[8], r[8];
    _mm256_storeu_ps(e, ct__v8_exp(_mm256_setr_ps(NAN, INFINITY, -INFINITY, -100, 100, 0, -88, 1)));
    _mm256_storeu_ps(r, ct__v8_erf(_mm256_setr_ps(NAN, INFINITY, -INFINITY, -9, 9, 0, 1e-30f, -0.5f)));
    ck_assert(isnan(e[0]) && isinf(e[1]) && e[2] == 0 && e[3] == 0 && isinf(e[4]) && e[5] == 1 && e[6] == 0);
    float e2[8];
    _mm256_storeu_ps(e2, ct__v8_exp_nonpos(_mm256_setr_ps(NAN, -INFINITY, -100, 0, -88, -0.0f, -1, -87)));
    ck_assert(isnan(e2[0]) && e2[1] == 0 && e2[2] == 0 && e2[3] == 1 && e2[4] == 0 && e2[5] == 1);
    ck_assert(isnan(r[0]) && r[1] == 1 && r[2] == -1 && r[3] == -1 && r[4] == 1 && r[5] == 0);
    ck_assert_float_eq(r[6], 1.1283791e-30f); /* erf(x) ~ 2x / sqrt(pi) near 0 */
    ck_assert(ulps(r[7], erf(-0.5)) <= 2 && ulps(e[7], exp(1.0)) <= 2);
    /* a ragged tail loads only its n floats and fills the rest */
    float src[3] = {1, 2, 3}, dst[8] = {0};
    ct__v8_store_tail(dst, ct__v8_load_tail(src, 3, -1), 5);
    ck_assert(dst[0] == 1 && dst[2] == 3 && dst[3] == -1 && dst[4] == -1 && dst[5] == 0);
}
END_TEST

int main(void) {
    Suite *s = suite_create("ops_activation_softmax_loss");
    TCase *ta = tcase_create("activation");
    tcase_add_loop_test(ta, activation_values, 0, 5);
    tcase_add_loop_test(ta, activation_grad, 0, 6);
    tcase_add_test(ta, activation_backward_values);
    tcase_add_test(ta, activation_saturation);
    tcase_add_test(ta, relu_saves_its_output);
    tcase_add_test(ta, vector_exp_and_erf_accuracy);
    suite_add_tcase(s, ta);
    TCase *ts = tcase_create("softmax");
    tcase_add_test(ts, softmax_values);
    tcase_add_loop_test(ts, softmax_properties, 0, 4);
    tcase_add_loop_test(ts, softmax_grad, 0, 10);
    suite_add_tcase(s, ts);
    TCase *tl = tcase_create("loss");
    tcase_add_test(tl, cross_entropy_values);
    tcase_add_test(tl, cross_entropy_grad_mean_values);
    tcase_add_test(tl, cross_entropy_no_grad_needed);
    tcase_add_test(tl, cross_entropy_label_smoothing_values);
    tcase_add_test(tl, cross_entropy_grad);
    tcase_add_test(tl, training_step_frees_everything);
    tcase_add_test(tl, mse_values);
    tcase_add_test(tl, mse_grad);
    tcase_add_test(tl, mse_same_tensor);
    suite_add_tcase(s, tl);
    TCase *te = tcase_create("errors");
    tcase_add_test_raise_signal(te, ce_target_too_large, SIGABRT);
    tcase_add_test_raise_signal(te, ce_target_negative, SIGABRT);
    tcase_add_test_raise_signal(te, ce_not_2d, SIGABRT);
    tcase_add_test_raise_signal(te, ce_smoothing_out_of_range, SIGABRT);
    tcase_add_test_raise_signal(te, mse_shape_mismatch, SIGABRT);
    tcase_add_test_raise_signal(te, softmax_bad_dim, SIGABRT);
    tcase_add_test_raise_signal(te, log_softmax_bad_dim, SIGABRT);
    suite_add_tcase(s, te);
    return ct_test_run(s);
}
