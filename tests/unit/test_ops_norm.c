/* batch_norm, layer_norm, dropout and embedding: finite-difference gradients, forward
 * values against independent double-precision references and PyTorch numbers, running
 * statistics, dropout masks and the identity path, and the aborts on misuse. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

/* The deterministic inputs the PyTorch references below were computed from. */
static float ref_val(int i) { return ((i * 7) % 11 - 5) * 0.25f + (i % 5) * 0.5f - (i % 2) * 0.75f; }

static ct_tensor *ref_input(int ndim, const int64_t *shape) {
    ct_tensor *t = ct_tensor_new(ndim, shape);
    for (int64_t i = 0; i < t->numel; i++) t->data[i] = ref_val((int)i);
    return t;
}

/* ---- batch norm -------------------------------------------------------------------- */

typedef struct {
    bool training, affine;
    ct_tensor *rm, *rv;
    bool relu; /* ct_batch_norm_relu */
} bn_ctx;

static ct_tensor *bn_fn(ct_tensor **in, void *ctx) {
    bn_ctx *c = ctx;
    return (c->relu ? ct_batch_norm_relu : ct_batch_norm)(in[0], c->affine ? in[1] : NULL,
                                                          c->affine ? in[2] : NULL, c->rm, c->rv,
                                                          c->training, 0.1f, 1e-5f);
}

/* Independent reference: y[n,c,k] from double-precision batch (or given) statistics. */
static void bn_reference(const ct_tensor *x, const float *w, const float *b, const float *rm,
                         const float *rv, double eps, double *y) {
    int64_t N = x->shape[0], C = x->shape[1], HW = x->numel / (N * C);
    for (int64_t c = 0; c < C; c++) {
        double mean = 0, var = 0;
        if (rm) {
            mean = rm[c], var = rv[c];
        } else {
            for (int64_t n = 0; n < N; n++)
                for (int64_t k = 0; k < HW; k++) mean += x->data[(n * C + c) * HW + k];
            mean /= (double)(N * HW);
            for (int64_t n = 0; n < N; n++)
                for (int64_t k = 0; k < HW; k++) {
                    double d = x->data[(n * C + c) * HW + k] - mean;
                    var += d * d;
                }
            var /= (double)(N * HW);
        }
        for (int64_t n = 0; n < N; n++)
            for (int64_t k = 0; k < HW; k++) {
                int64_t i = (n * C + c) * HW + k;
                y[i] = (x->data[i] - mean) / sqrt(var + eps) * (w ? w[c] : 1) + (b ? b[c] : 0);
            }
    }
}

static void bn_gradcheck_ex(int ndim, const int64_t *shape, bool training, bool affine,
                            bool x_grad, bool wb_grad, bool relu) {
    CT_SCOPE {
        int64_t C = shape[1];
        ct_tensor *x = ct_test_rand(ndim, shape, -2, 2, 11);
        ct_tensor *w = ct_test_rand(CT_SHAPE(C), 0.5f, 1.5f, 12);
        ct_tensor *b = ct_test_rand(CT_SHAPE(C), -1, 1, 13);
        ct_tensor *rm = ct_test_rand(CT_SHAPE(C), -0.5f, 0.5f, 14);
        ct_tensor *rv = ct_test_rand(CT_SHAPE(C), 0.5f, 2, 15);
        ct_set_requires_grad(x, x_grad);
        ct_set_requires_grad(w, wb_grad);
        ct_set_requires_grad(b, wb_grad);
        /* Training passes no running stats: the gradcheck calls forward many times. */
        bn_ctx c = {training, affine, training ? NULL : rm, training ? NULL : rv, relu};
        double err = ct_test_gradcheck(relu ? "batch_norm_relu" : "batch_norm", bn_fn, affine ? 3 : 1,
                                       (ct_tensor *[]){x, w, b}, &c, 1e-2, 2e-3, 2e-2);
        ck_assert_msg(err <= 1, "batch_norm %dd training=%d affine=%d relu=%d: gradcheck error %g",
                      ndim, training, affine, relu, err);
    }
}

static void bn_gradcheck(int ndim, const int64_t *shape, bool training, bool affine,
                         bool x_grad, bool wb_grad) {
    bn_gradcheck_ex(ndim, shape, training, affine, x_grad, wb_grad, false);
}

/* The fused op's own backward against finite differences (its mask included). */
START_TEST(bn_relu_grad) {
    bn_gradcheck_ex(CT_SHAPE(2, 3, 3, 4), true, true, true, true, true);
    bn_gradcheck_ex(CT_SHAPE(2, 3, 3, 4), false, true, true, true, true);
    bn_gradcheck_ex(CT_SHAPE(6, 4), true, true, true, true, true);
    bn_gradcheck_ex(CT_SHAPE(2, 3, 3, 4), true, false, true, false, true); /* dx only, no affine */
}
END_TEST

/* ct_batch_norm_relu gives relu(ct_batch_norm(...))'s output, gradients and running
 * statistics bit for bit: training and eval, planes and [N, C], fresh gradients and ones
 * that accumulate (x also feeds a second op), without weight and bias, with x frozen (the
 * fused backward recomputes the ReLU's mask from x in every case). */
START_TEST(bn_relu_same_bits_as_two_ops) {
    static const int64_t shapes[][4] = {{4, 5, 7, 9}, {16, 6, 1, 1}, {3, 2, 16, 16}};
    for (int sh = 0; sh < 3; sh++)
        for (int mode = 0; mode < 16; mode++) {
            /* bit 0: training, bit 1: x used twice, bit 2: no weight and bias, bit 3: x frozen */
            bool training = mode & 1, twice = mode & 2, affine = !(mode & 4), frozen = mode & 8;
            if (frozen && (twice || !affine)) continue; /* no gradient, or x's own */
            float *res[2][6];
            int64_t nres[6];
            for (int fused = 0; fused < 2; fused++) CT_SCOPE {
                    const int64_t *k = shapes[sh];
                    int nd = k[2] == 1 ? 2 : 4;
                    ct_tensor *x = ct_test_rand(nd, k, -2, 2, 21);
                    ct_tensor *w = ct_test_rand(CT_SHAPE(k[1]), 0.5f, 1.5f, 22);
                    ct_tensor *b = ct_test_rand(CT_SHAPE(k[1]), -1, 1, 23);
                    ct_tensor *rm = ct_test_rand(CT_SHAPE(k[1]), -0.5f, 0.5f, 24);
                    ct_tensor *rv = ct_test_rand(CT_SHAPE(k[1]), 0.5f, 2, 25);
                    ct_tensor *in[3] = {x, w, b};
                    for (int i = 0; i < 3; i++) ct_set_requires_grad(in[i], i ? affine : !frozen);
                    if (!affine) w = b = NULL;
                    ct_tensor *y = fused ? ct_batch_norm_relu(x, w, b, rm, rv, training, 0.1f, 1e-5f)
                                         : ct_relu(ct_batch_norm(x, w, b, rm, rv, training, 0.1f, 1e-5f));
                    ct_tensor *loss = ct_sum(ct_mul(y, ct_test_rand(y->ndim, y->shape, -1, 1, 26)));
                    if (twice) loss = ct_add(loss, ct_sum(ct_mul(x, x)));
                    ct_backward(loss);
                    /* the output stands in for a gradient that does not exist */
                    ct_tensor *r[6] = {y, frozen ? y : ct_grad(x), affine ? ct_grad(w) : y,
                                       affine ? ct_grad(b) : y, rm, rv};
                    for (int i = 0; i < 6; i++) {
                        nres[i] = r[i]->numel;
                        res[fused][i] = malloc((size_t)nres[i] * sizeof(float));
                        memcpy(res[fused][i], r[i]->data, (size_t)nres[i] * sizeof(float));
                    }
                }
            static const char *what[6] = {"output", "dx", "dweight", "dbias", "running_mean", "running_var"};
            for (int i = 0; i < 6; i++) {
                ck_assert_msg(memcmp(res[0][i], res[1][i], (size_t)nres[i] * sizeof(float)) == 0,
                              "shape %d mode %d: %s differs between fused and two ops", sh, mode, what[i]);
                free(res[0][i]);
                free(res[1][i]);
            }
        }
}
END_TEST

START_TEST(bn_train_grad_2d) {
    bn_gradcheck(CT_SHAPE(6, 4), true, true, true, true);
    bn_gradcheck(CT_SHAPE(6, 4), true, false, true, false); /* no weight/bias */
    bn_gradcheck(CT_SHAPE(6, 4), true, true, false, true);  /* frozen input: dw, db only */
    bn_gradcheck(CT_SHAPE(6, 4), true, true, true, false);  /* frozen affine: dx only */
}
END_TEST

START_TEST(bn_train_grad_4d) {
    bn_gradcheck(CT_SHAPE(2, 3, 3, 4), true, true, true, true); /* HW = 12: lanes + tail */
    bn_gradcheck(CT_SHAPE(3, 2, 1, 5), true, false, true, false);
    bn_gradcheck(CT_SHAPE(2, 3, 3, 4), true, true, false, true);
}
END_TEST

START_TEST(bn_eval_grad) {
    bn_gradcheck(CT_SHAPE(5, 3), false, true, true, true);
    bn_gradcheck(CT_SHAPE(2, 3, 3, 4), false, true, true, true);
    bn_gradcheck(CT_SHAPE(2, 3, 3, 4), false, false, true, false);
    bn_gradcheck(CT_SHAPE(2, 3, 3, 4), false, true, true, false); /* dx only */
    bn_gradcheck(CT_SHAPE(5, 3), false, true, false, true);       /* dw, db only */
}
END_TEST

/* Forward values against the double reference, including planes longer than one
 * 256-element accumulation block and a large mean (where one-pass variance would fail). */
START_TEST(bn_forward_values) {
    const int64_t shapes[][4] = {{7, 5, 1, 1}, {2, 3, 17, 19}, {4, 2, 3, 3}};
    for (int s = 0; s < 3; s++) CT_SCOPE {
        const int64_t *sh = shapes[s];
        int nd = s == 0 ? 2 : 4;
        ct_tensor *x = ct_test_rand(nd, sh, 99, 101, 21 + s); /* mean ~100, std ~0.6 */
        ct_tensor *w = ct_test_rand(CT_SHAPE(sh[1]), -2, 2, 31);
        ct_tensor *b = ct_test_rand(CT_SHAPE(sh[1]), -2, 2, 32);
        ct_tensor *rm = ct_test_rand(CT_SHAPE(sh[1]), -1, 1, 33);
        ct_tensor *rv = ct_test_rand(CT_SHAPE(sh[1]), 0.5f, 2, 34);
        double *ref = malloc((size_t)x->numel * sizeof(double));
        for (int mode = 0; mode < 2; mode++) {
            bool training = mode == 0;
            ct_tensor *y = ct_batch_norm(x, w, b, training ? NULL : rm, training ? NULL : rv,
                                         training, 0.1f, 1e-5f);
            ck_assert(ct_same_shape(x, y));
            bn_reference(x, w->data, b->data, training ? NULL : rm->data,
                         training ? NULL : rv->data, 1e-5, ref);
            for (int64_t i = 0; i < x->numel; i++)
                ck_assert_msg(fabs(y->data[i] - ref[i]) <= 2e-3 * (1 + fabs(ref[i])),
                              "shape %d mode %d elem %lld: %g vs %g", s, mode, (long long)i,
                              y->data[i], ref[i]);
        }
        free(ref);
    }
}
END_TEST

/* torch 1.13:
 *   x = torch.tensor([((i*7) % 11 - 5)*0.25 + (i % 5)*0.5 - (i % 2)*0.75 for i in range(24)])
 *   bn = nn.BatchNorm2d(3, momentum=0.1, eps=1e-5); weight [1.5, -0.5, 2], bias [0.1, 0.2, -0.3]
 *   bn(x.reshape(2,3,2,2)); bn(x.reshape(2,3,2,2)*1.5+0.5)   -> running stats after each call,
 *   y2 = the second output; then bn.eval(); bn(x.reshape(2,3,2,2)) -> ye. */
START_TEST(bn_running_stats_4d) {
    const float rm1[] = {0.07500000298023224f, 0.06562500447034836f, 0.02500000037252903f};
    const float rv1[] = {1.1071428060531616f, 1.044531226158142f, 1.0214285850524902f};
    const float rm2[] = {0.23000001907348633f, 0.20750001072883606f, 0.10999999940395355f};
    const float rv2[] = {1.4624998569488525f, 1.2652734518051147f, 1.1924999952316284f};
    const float y2[] = {-2.1283414363861084f, -0.45708534121513367f, -0.17854267358779907f,
                        1.4927133321762085f, -0.5086054801940918f, 1.1587015390396118f};
    const float ye[] = {-1.7357079982757568f, 0.12480683624744415f, 0.4348926544189453f,
                        2.29540753364563f, -0.7079002857208252f, 0.958991289138794f};
    CT_SCOPE {
        ct_tensor *x = ref_input(CT_SHAPE(2, 3, 2, 2));
        ct_tensor *w = ct_from_data(CT_SHAPE(3), (float[]){1.5f, -0.5f, 2});
        ct_tensor *b = ct_from_data(CT_SHAPE(3), (float[]){0.1f, 0.2f, -0.3f});
        ct_tensor *rm = ct_zeros(CT_SHAPE(3)), *rv = ct_ones(CT_SHAPE(3));
        ct_set_requires_grad(w, true);
        ct_set_requires_grad(b, true);
        int64_t nodes0 = ct_stats_get().graph_nodes;
        ct_batch_norm(x, w, b, rm, rv, true, 0.1f, 1e-5f);
        for (int c = 0; c < 3; c++) {
            ck_assert_close(rm->data[c], rm1[c], 1e-6);
            ck_assert_close(rv->data[c], rv1[c], 1e-6);
        }
        ct_tensor *x2 = ct_add_scalar(ct_mul_scalar(x, 1.5f), 0.5f);
        ct_tensor *y = ct_batch_norm(x2, w, b, rm, rv, true, 0.1f, 1e-5f);
        for (int c = 0; c < 3; c++) {
            ck_assert_close(rm->data[c], rm2[c], 1e-6);
            ck_assert_close(rv->data[c], rv2[c], 1e-6);
        }
        for (int i = 0; i < 6; i++) ck_assert_close(y->data[i], y2[i], 1e-5);
        /* Buffers stay out of the graph: one node per call, none for the stats. */
        ck_assert(!rm->requires_grad && !rv->requires_grad && !rm->grad_fn && !rv->grad_fn);
        ck_assert_int_eq(ct_stats_get().graph_nodes - nodes0, 2);
        float keep_m[3], keep_v[3];
        memcpy(keep_m, rm->data, sizeof keep_m);
        memcpy(keep_v, rv->data, sizeof keep_v);
        ct_tensor *e = ct_batch_norm(x, w, b, rm, rv, false, 0.1f, 1e-5f);
        for (int i = 0; i < 6; i++) ck_assert_close(e->data[i], ye[i], 1e-5);
        for (int c = 0; c < 3; c++) { /* eval leaves the running stats alone */
            ck_assert_float_eq(rm->data[c], keep_m[c]);
            ck_assert_float_eq(rv->data[c], keep_v[c]);
        }
    }
}
END_TEST

/* torch 1.13: bn1 = nn.BatchNorm1d(3, momentum=0.2); x2 = the first 12 values above as
 * [4, 3]; bn1(x2); bn1(x2*1.5+0.5) -> running stats after each call. Also checked against
 * the update rule computed here in double. */
START_TEST(bn_running_stats_2d) {
    const float rm1[] = {0.21250000596046448f, 0.125f, -0.10000000149011612f};
    const float rv1[] = {1.2864583730697632f, 1.0458333492279053f, 1.0666667222976685f};
    const float rm2[] = {0.5887500047683716f, 0.38749998807907104f, -0.1300000101327896f};
    const float rv2[] = {2.1236979961395264f, 1.38979172706604f, 1.4533333778381348f};
    CT_SCOPE {
        ct_tensor *x = ref_input(CT_SHAPE(4, 3));
        ct_tensor *rm = ct_zeros(CT_SHAPE(3)), *rv = ct_ones(CT_SHAPE(3));
        double em[3] = {0, 0, 0}, ev[3] = {1, 1, 1};
        for (int call = 0; call < 2; call++) {
            ct_tensor *xi = call ? ct_add_scalar(ct_mul_scalar(x, 1.5f), 0.5f) : x;
            ct_batch_norm(xi, NULL, NULL, rm, rv, true, 0.2f, 1e-5f);
            for (int c = 0; c < 3; c++) {
                double m = 0, v = 0;
                for (int n = 0; n < 4; n++) m += xi->data[n * 3 + c] / 4.0;
                for (int n = 0; n < 4; n++) v += pow(xi->data[n * 3 + c] - m, 2) / 3.0;
                em[c] = 0.8 * em[c] + 0.2 * m;
                ev[c] = 0.8 * ev[c] + 0.2 * v;
                ck_assert_close(rm->data[c], em[c], 1e-6);
                ck_assert_close(rv->data[c], ev[c], 1e-6);
                ck_assert_close(rm->data[c], call ? rm2[c] : rm1[c], 1e-6);
                ck_assert_close(rv->data[c], call ? rv2[c] : rv1[c], 1e-6);
            }
        }
    }
}
END_TEST

/* Only what a needed gradient uses is kept: db alone needs nothing saved. */
START_TEST(bn_saves_only_needed) {
    CT_SCOPE {
        ct_tensor *x = ct_test_rand(CT_SHAPE(4, 3, 2, 2), -1, 1, 41);
        ct_tensor *w = ct_ones(CT_SHAPE(3)), *b = ct_zeros(CT_SHAPE(3));
        ct_set_requires_grad(b, true);
        int64_t s0 = ct_stats_get().saved_tensors;
        ct_tensor *y = ct_batch_norm(x, w, b, NULL, NULL, true, 0.1f, 1e-5f);
        ck_assert_int_eq(ct_stats_get().saved_tensors - s0, 0);
        ct_tensor *g = ct_ones(CT_SHAPE(4, 3, 2, 2));
        ct_backward_ex(y, g, false);
        for (int c = 0; c < 3; c++) ck_assert_float_eq(b->grad->data[c], 16);
        ck_assert_ptr_null(w->grad);
        /* eval-mode dx is dy * w * invstd: the weight is kept, x is not */
        ct_tensor *x2 = ct_test_rand(CT_SHAPE(4, 3, 2, 2), -1, 1, 42);
        ct_set_requires_grad(x2, true);
        s0 = ct_stats_get().saved_tensors;
        ct_batch_norm(x2, w, NULL, ct_zeros(CT_SHAPE(3)), ct_ones(CT_SHAPE(3)), false, 0.1f, 1e-5f);
        ck_assert_int_eq(ct_stats_get().saved_tensors - s0, 1);
        CT_NO_GRAD { /* no_grad: no node even though b requires grad */
            int64_t n0 = ct_stats_get().graph_nodes;
            ct_tensor *z = ct_batch_norm(x, w, b, NULL, NULL, true, 0.1f, 1e-5f);
            ck_assert(!z->requires_grad);
            ck_assert_int_eq(ct_stats_get().graph_nodes, n0);
        }
    }
}
END_TEST

/* ---- layer norm -------------------------------------------------------------------- */

static ct_tensor *ln_fn(ct_tensor **in, void *ctx) {
    int nlast = (int)(intptr_t)ctx;
    return ct_layer_norm(in[0], nlast, nlast == 2 ? in[1] : NULL, nlast == 2 ? in[2] : NULL, 1e-5f);
}

START_TEST(ln_grad) {
    CT_SCOPE {
        ct_tensor *x = ct_test_rand(CT_SHAPE(3, 4, 5), -2, 2, 51);
        ct_tensor *w = ct_test_rand(CT_SHAPE(4, 5), 0.5f, 1.5f, 52);
        ct_tensor *b = ct_test_rand(CT_SHAPE(4, 5), -1, 1, 53);
        ct_set_requires_grad(x, true);
        ct_set_requires_grad(w, true);
        ct_set_requires_grad(b, true);
        ct_tensor *in[] = {x, w, b};
        ck_assert(ct_test_gradcheck("layer_norm2", ln_fn, 3, in, (void *)2, 1e-2, 2e-3, 2e-2) <= 1);
        ck_assert(ct_test_gradcheck("layer_norm1", ln_fn, 1, in, (void *)1, 1e-2, 2e-3, 2e-2) <= 1);
        ct_set_requires_grad(x, false); /* dw, db only */
        ck_assert(ct_test_gradcheck("layer_norm_wb", ln_fn, 3, in, (void *)2, 1e-2, 2e-3, 2e-2) <= 1);
    }
}
END_TEST

START_TEST(ln_forward_moments) {
    CT_SCOPE {
        ct_tensor *x = ct_test_rand(CT_SHAPE(4, 300), 49, 51, 61); /* large mean */
        ct_tensor *y = ct_layer_norm(x, 1, NULL, NULL, 1e-5f);
        for (int r = 0; r < 4; r++) {
            double m = 0, v = 0;
            for (int j = 0; j < 300; j++) m += y->data[r * 300 + j] / 300.0;
            for (int j = 0; j < 300; j++) v += pow(y->data[r * 300 + j] - m, 2) / 300.0;
            ck_assert_msg(fabs(m) < 1e-4, "row %d mean %g", r, m);
            ck_assert_msg(fabs(v - 1) < 1e-3, "row %d var %g", r, v);
        }
        /* affine: y = xhat * w + b elementwise over the trailing shape */
        ct_tensor *x2 = ct_from_data(CT_SHAPE(1, 2, 2), (float[]){1, 2, 3, 4});
        ct_tensor *w = ct_from_data(CT_SHAPE(2, 2), (float[]){1, 2, 3, 4});
        ct_tensor *b = ct_from_data(CT_SHAPE(2, 2), (float[]){0, 1, 0, 1});
        ct_tensor *y2 = ct_layer_norm(x2, 2, w, b, 0);
        double sd = sqrt(1.25); /* biased variance of 1..4 */
        for (int j = 0; j < 4; j++)
            ck_assert_close(y2->data[j], (j + 1 - 2.5) / sd * (j + 1) + (j % 2), 1e-5);
    }
}
END_TEST

/* ---- dropout ----------------------------------------------------------------------- */

START_TEST(dropout_mask) {
    CT_SCOPE {
        const float p = 0.3f;
        ct_tensor *x = ct_test_rand(CT_SHAPE(200, 501), 0.5f, 2, 71); /* no zeros in x */
        ct_set_requires_grad(x, true);
        ct_rng r1, r2;
        ct_rng_seed(&r1, 5);
        ct_rng_seed(&r2, 5);
        ct_tensor *y1 = ct_dropout(x, p, true, &r1);
        ct_tensor *y2;
        CT_NO_GRAD { y2 = ct_dropout(x, p, true, &r2); } /* same draws without a node */
        ck_assert(memcmp(y1->data, y2->data, (size_t)x->numel * sizeof(float)) == 0);
        ck_assert(memcmp(&r1, &r2, sizeof r1) == 0);
        float scale = 1.0f / (1.0f - p);
        int64_t zeros = 0;
        for (int64_t i = 0; i < x->numel; i++) {
            if (y1->data[i] == 0) zeros++;
            else ck_assert_float_eq(y1->data[i], x->data[i] * scale);
        }
        double frac = (double)zeros / (double)x->numel;
        ck_assert_msg(fabs(frac - p) < 0.01, "dropped fraction %g for p = %g", frac, p);
        /* a different seed gives a different mask */
        ct_rng r3;
        ct_rng_seed(&r3, 6);
        ct_tensor *y3 = ct_dropout(x, p, true, &r3);
        ck_assert(memcmp(y1->data, y3->data, (size_t)x->numel * sizeof(float)) != 0);
        /* backward: dx = dy * mask * scale */
        ct_tensor *g = ct_test_rand(CT_SHAPE(200, 501), -1, 1, 72);
        ct_backward_ex(y1, g, false);
        for (int64_t i = 0; i < x->numel; i++)
            ck_assert_float_eq(x->grad->data[i], y1->data[i] != 0 ? g->data[i] * scale : 0);
    }
}
END_TEST

START_TEST(dropout_identity) {
    CT_SCOPE {
        ct_tensor *x = ct_test_rand(CT_SHAPE(3, 4), -1, 1, 81);
        ct_set_requires_grad(x, true);
        ct_tensor *h = ct_mul_scalar(x, 3); /* a non-leaf, with its own grad_fn */
        ct_rng r;
        ct_rng_seed(&r, 1);
        ct_rng before = r;
        int refs = h->refs;
        ct_stats s0 = ct_stats_get();
        CT_SCOPE {
            ct_tensor *e = ct_dropout(h, 0.5f, false, &r); /* eval */
            ct_tensor *z = ct_dropout(h, 0, true, &r);     /* p = 0 */
            ck_assert_ptr_eq(e, h);
            ck_assert_ptr_eq(z, h);
            ck_assert_int_eq(h->refs, refs + 2); /* one scope reference per call */
            ck_assert_int_eq(ct_stats_get().graph_nodes, s0.graph_nodes);
            ck_assert_int_eq(ct_stats_get().live_tensors, s0.live_tensors);
            ct_tensor *y = ct_mul_scalar(z, 2);
            ct_backward_ex(y, ct_ones(CT_SHAPE(3, 4)), false);
        }
        ck_assert_int_eq(h->refs, refs); /* the inner scope gave its references back */
        ck_assert(memcmp(&r, &before, sizeof r) == 0); /* no draws */
        for (int i = 0; i < 12; i++) ck_assert_float_eq(x->grad->data[i], 6);
    }
}
END_TEST

/* ---- embedding --------------------------------------------------------------------- */

START_TEST(embedding_values_and_grad) {
    CT_SCOPE {
        ct_tensor *w = ct_test_rand(CT_SHAPE(5, 3), -1, 1, 91);
        ct_set_requires_grad(w, true);
        const int64_t idx[] = {4, 0, 4, 2, 4, 1};
        ct_tensor *y = ct_embedding(w, idx, CT_SHAPE(2, 3));
        ck_assert_int_eq(y->ndim, 3);
        ck_assert(y->shape[0] == 2 && y->shape[1] == 3 && y->shape[2] == 3);
        for (int t = 0; t < 6; t++)
            for (int j = 0; j < 3; j++) ck_assert_float_eq(y->data[t * 3 + j], w->data[idx[t] * 3 + j]);
        ct_tensor *g = ct_test_rand(CT_SHAPE(2, 3, 3), -1, 1, 92);
        ct_backward_ex(y, g, false);
        for (int v = 0; v < 5; v++)
            for (int j = 0; j < 3; j++) {
                float want = 0;
                for (int t = 0; t < 6; t++)
                    if (idx[t] == v) want += g->data[t * 3 + j];
                ck_assert_float_eq(w->grad->data[v * 3 + j], want); /* row 3 stays 0 */
            }
    }
}
END_TEST

static const int64_t emb_idx[] = {1, 1, 0, 3, 1};
static ct_tensor *emb_fn(ct_tensor **in, void *ctx) {
    (void)ctx;
    return ct_embedding(in[0], emb_idx, CT_SHAPE(5));
}

START_TEST(embedding_gradcheck) {
    CT_SCOPE {
        ct_tensor *w = ct_test_rand(CT_SHAPE(4, 6), -1, 1, 93);
        ct_set_requires_grad(w, true);
        ck_assert(ct_test_gradcheck("embedding", emb_fn, 1, &w, NULL, 1e-2, 1e-3, 1e-2) <= 1);
    }
}
END_TEST

/* ---- misuse aborts ----------------------------------------------------------------- */

START_TEST(bn_channel_mismatch_aborts) {
    CT_SCOPE {
        ct_batch_norm(ct_zeros(CT_SHAPE(2, 3, 2, 2)), ct_ones(CT_SHAPE(4)), NULL, NULL, NULL,
                      true, 0.1f, 1e-5f);
    }
}
END_TEST

START_TEST(bn_running_mismatch_aborts) {
    CT_SCOPE {
        ct_batch_norm(ct_zeros(CT_SHAPE(4, 3)), NULL, NULL, ct_zeros(CT_SHAPE(2)),
                      ct_ones(CT_SHAPE(2)), true, 0.1f, 1e-5f);
    }
}
END_TEST

START_TEST(bn_eval_without_stats_aborts) {
    CT_SCOPE { ct_batch_norm(ct_zeros(CT_SHAPE(4, 3)), NULL, NULL, NULL, NULL, false, 0.1f, 1e-5f); }
}
END_TEST

START_TEST(bn_single_value_aborts) {
    CT_SCOPE { ct_batch_norm(ct_zeros(CT_SHAPE(1, 3)), NULL, NULL, NULL, NULL, true, 0.1f, 1e-5f); }
}
END_TEST

START_TEST(ln_shape_mismatch_aborts) {
    CT_SCOPE { ct_layer_norm(ct_zeros(CT_SHAPE(2, 3, 4)), 2, ct_ones(CT_SHAPE(4, 3)), NULL, 1e-5f); }
}
END_TEST

START_TEST(dropout_bad_p_aborts) {
    static const float ps[] = {1.0f, 1.5f, -0.1f};
    ct_rng r;
    ct_rng_seed(&r, 1);
    CT_SCOPE { ct_dropout(ct_ones(CT_SHAPE(4)), ps[_i], true, &r); }
}
END_TEST

START_TEST(embedding_bad_index_aborts) {
    static const int64_t bad[][2] = {{0, 5}, {-1, 0}};
    CT_SCOPE { ct_embedding(ct_zeros(CT_SHAPE(5, 2)), bad[_i], CT_SHAPE(2)); }
}
END_TEST

int main(void) {
    Suite *s = suite_create("ops_norm_dropout_embedding");
    TCase *tb = tcase_create("batch_norm");
    tcase_set_timeout(tb, 60);
    tcase_add_test(tb, bn_train_grad_2d);
    tcase_add_test(tb, bn_train_grad_4d);
    tcase_add_test(tb, bn_eval_grad);
    tcase_add_test(tb, bn_relu_grad);
    tcase_add_test(tb, bn_relu_same_bits_as_two_ops);
    tcase_add_test(tb, bn_forward_values);
    tcase_add_test(tb, bn_running_stats_4d);
    tcase_add_test(tb, bn_running_stats_2d);
    tcase_add_test(tb, bn_saves_only_needed);
    suite_add_tcase(s, tb);
    TCase *tl = tcase_create("layer_norm");
    tcase_add_test(tl, ln_grad);
    tcase_add_test(tl, ln_forward_moments);
    suite_add_tcase(s, tl);
    TCase *td = tcase_create("dropout_embedding");
    tcase_add_test(td, dropout_mask);
    tcase_add_test(td, dropout_identity);
    tcase_add_test(td, embedding_values_and_grad);
    tcase_add_test(td, embedding_gradcheck);
    suite_add_tcase(s, td);
    TCase *te = tcase_create("errors");
    tcase_add_test_raise_signal(te, bn_channel_mismatch_aborts, SIGABRT);
    tcase_add_test_raise_signal(te, bn_running_mismatch_aborts, SIGABRT);
    tcase_add_test_raise_signal(te, bn_eval_without_stats_aborts, SIGABRT);
    tcase_add_test_raise_signal(te, bn_single_value_aborts, SIGABRT);
    tcase_add_test_raise_signal(te, ln_shape_mismatch_aborts, SIGABRT);
    tcase_add_loop_test_raise_signal(te, dropout_bad_p_aborts, SIGABRT, 0, 3);
    tcase_add_loop_test_raise_signal(te, embedding_bad_index_aborts, SIGABRT, 0, 2);
    suite_add_tcase(s, te);
    return ct_test_run(s);
}
