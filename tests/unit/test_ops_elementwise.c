/* Finite-difference checks for elementwise ops (with broadcasting) and matmul/linear. */
#include <math.h>

#include "util.h"

typedef ct_tensor *(*binfn)(ct_tensor *, ct_tensor *);

static ct_tensor *apply_bin(ct_tensor **in, void *ctx) { return ((binfn)ctx)(in[0], in[1]); }

static void check_binary(const char *name, binfn f, int nda, const int64_t *sa, int ndb,
                         const int64_t *sb, float lo) {
    CT_SCOPE {
        ct_tensor *a = ct_test_rand(nda, sa, lo, 2, 1), *b = ct_test_rand(ndb, sb, lo, 2, 2);
        ct_set_requires_grad(a, true);
        ct_set_requires_grad(b, true);
        double err = ct_test_gradcheck(name, apply_bin, 2, (ct_tensor *[]){a, b}, (void *)f,
                                       1e-2, 1e-3, 1e-2);
        ck_assert_msg(err <= 1, "%s: gradcheck error %g", name, err);
    }
}

static const binfn bins[] = {ct_add, ct_sub, ct_mul, ct_div};
static const char *bin_names[] = {"add", "sub", "mul", "div"};

START_TEST(binary_same_shape) {
    /* div's denominators stay in [0.5, 2) so the quotient is smooth */
    check_binary(bin_names[_i], bins[_i], CT_SHAPE(3, 4), CT_SHAPE(3, 4), 0.5f);
}
END_TEST

START_TEST(binary_broadcast) {
    check_binary(bin_names[_i], bins[_i], CT_SHAPE(2, 3, 4), CT_SHAPE(4), 0.5f);      /* bias */
    check_binary(bin_names[_i], bins[_i], CT_SHAPE(2, 1, 4), CT_SHAPE(3, 1), 0.5f);   /* both */
    check_binary(bin_names[_i], bins[_i], CT_SHAPE(1), CT_SHAPE(2, 3), 0.5f);         /* scalar */
    check_binary(bin_names[_i], bins[_i], CT_SHAPE(2, 3, 1, 5), CT_SHAPE(3, 4, 1), 0.5f);
}
END_TEST

START_TEST(broadcast_values) {
    CT_SCOPE {
        ct_tensor *a = ct_from_data(CT_SHAPE(2, 1), (float[]){1, 2});
        ct_tensor *b = ct_from_data(CT_SHAPE(3), (float[]){10, 20, 30});
        ct_tensor *c = ct_add(a, b);
        ck_assert_int_eq(c->ndim, 2);
        ck_assert_int_eq(c->shape[0], 2);
        ck_assert_int_eq(c->shape[1], 3);
        float want[] = {11, 21, 31, 12, 22, 32};
        for (int i = 0; i < 6; i++) ck_assert_float_eq(c->data[i], want[i]);
    }
}
END_TEST

static ct_tensor *unary(ct_tensor **in, void *ctx) {
    switch ((int)(intptr_t)ctx) {
    case 0: return ct_exp(in[0]);
    case 1: return ct_log(in[0]);
    case 2: return ct_neg(in[0]);
    case 3: return ct_add_scalar(in[0], 3);
    case 4: return ct_sub_scalar(in[0], 3);
    case 5: return ct_mul_scalar(in[0], -2.5f);
    default: return ct_div_scalar(in[0], 4);
    }
}

START_TEST(unary_ops) {
    CT_SCOPE {
        ct_tensor *x = ct_test_rand(CT_SHAPE(2, 5), 0.5f, 2, 3); /* positive for log */
        ct_set_requires_grad(x, true);
        double err = ct_test_gradcheck("unary", unary, 1, &x, (void *)(intptr_t)_i, 1e-2, 1e-3, 1e-2);
        ck_assert_msg(err <= 1, "unary %d: error %g", _i, err);
    }
}
END_TEST

static ct_tensor *mm(ct_tensor **in, void *ctx) {
    (void)ctx;
    return ct_matmul(in[0], in[1]);
}

static ct_tensor *lin(ct_tensor **in, void *ctx) {
    return ct_linear(in[0], in[1], ctx ? in[2] : NULL);
}

START_TEST(matmul_grad) {
    CT_SCOPE {
        ct_tensor *a = ct_test_rand(CT_SHAPE(3, 4), -1, 1, 4), *b = ct_test_rand(CT_SHAPE(4, 5), -1, 1, 5);
        ct_set_requires_grad(a, true);
        ct_set_requires_grad(b, true);
        ck_assert(ct_test_gradcheck("matmul", mm, 2, (ct_tensor *[]){a, b}, NULL, 1e-2, 1e-3, 1e-2) <= 1);
    }
}
END_TEST

START_TEST(linear_grad) {
    CT_SCOPE {
        ct_tensor *x = ct_test_rand(CT_SHAPE(2, 3, 4), -1, 1, 6);
        ct_tensor *w = ct_test_rand(CT_SHAPE(5, 4), -1, 1, 7), *b = ct_test_rand(CT_SHAPE(5), -1, 1, 8);
        ct_set_requires_grad(x, true);
        ct_set_requires_grad(w, true);
        ct_set_requires_grad(b, true);
        ct_tensor *in[] = {x, w, b};
        ck_assert(ct_test_gradcheck("linear", lin, 3, in, (void *)1, 1e-2, 1e-3, 1e-2) <= 1);
        ck_assert(ct_test_gradcheck("linear_nobias", lin, 2, in, NULL, 1e-2, 1e-3, 1e-2) <= 1);
    }
}
END_TEST

START_TEST(linear_values) {
    CT_SCOPE {
        ct_tensor *x = ct_from_data(CT_SHAPE(1, 2), (float[]){1, 2});
        ct_tensor *w = ct_from_data(CT_SHAPE(2, 2), (float[]){1, 0, 3, 4});
        ct_tensor *b = ct_from_data(CT_SHAPE(2), (float[]){0.5f, -1});
        ct_tensor *y = ct_linear(x, w, b);
        ck_assert_float_eq(y->data[0], 1.5f);
        ck_assert_float_eq(y->data[1], 10.0f);
    }
}
END_TEST

/* ---- one tensor feeding both operands of add (a residual connection) ------------------ */

START_TEST(add_same_leaf_twice_doubles_gradient) {
    CT_SCOPE {
        ct_tensor *x = ct_test_rand(CT_SHAPE(2, 3), -1, 1, 5);
        ct_set_requires_grad(x, true);
        ct_tensor *g = ct_test_rand(CT_SHAPE(2, 3), -1, 1, 6);
        ct_backward_ex(ct_add(x, x), g, false);
        for (int64_t i = 0; i < x->numel; i++) ck_assert_float_eq(ct_grad(x)->data[i], 2 * g->data[i]);
    }
}
END_TEST

/* h = 1.5 x is an op result, so add sees the same graph node on both inputs and the engine
 * must wait for both contributions before h's backward runs. */
static ct_tensor *residual_tanh(ct_tensor **in, void *ctx) {
    (void)ctx;
    ct_tensor *h = ct_mul_scalar(in[0], 1.5f);
    return ct_add(h, ct_tanh(h));
}

START_TEST(residual_add_gradcheck) {
    CT_SCOPE {
        ct_tensor *x = ct_test_rand(CT_SHAPE(3, 4), -1, 1, 7);
        ct_set_requires_grad(x, true);
        double err = ct_test_gradcheck("h + tanh(h)", residual_tanh, 1, &x, NULL, 1e-2, 1e-4, 1e-3);
        ck_assert_msg(err <= 1, "h + tanh(h): gradcheck error %g", err);
        /* and in closed form, with gout = 1: d/dx = 1.5 * (1 + 1 - tanh(1.5 x)^2) */
        ct_clear_grad(x);
        ct_backward(ct_sum(residual_tanh(&x, NULL)));
        for (int64_t i = 0; i < x->numel; i++) {
            double t = tanh(1.5 * x->data[i]);
            ck_assert_close(ct_grad(x)->data[i], 1.5 * (2 - t * t), 1e-5);
        }
    }
}
END_TEST

static void shape_mismatch_add(void) {
    CT_SCOPE { ct_add(ct_zeros(CT_SHAPE(2, 3)), ct_zeros(CT_SHAPE(4))); }
}

START_TEST(broadcast_mismatch_aborts) { shape_mismatch_add(); }
END_TEST

START_TEST(matmul_mismatch_aborts) {
    CT_SCOPE { ct_matmul(ct_zeros(CT_SHAPE(2, 3)), ct_zeros(CT_SHAPE(4, 2))); }
}
END_TEST

int main(void) {
    Suite *s = suite_create("ops_elementwise_matmul");
    TCase *tc = tcase_create("grad");
    tcase_add_loop_test(tc, binary_same_shape, 0, 4);
    tcase_add_loop_test(tc, binary_broadcast, 0, 4);
    tcase_add_test(tc, broadcast_values);
    tcase_add_loop_test(tc, unary_ops, 0, 7);
    tcase_add_test(tc, matmul_grad);
    tcase_add_test(tc, linear_grad);
    tcase_add_test(tc, linear_values);
    tcase_add_test(tc, add_same_leaf_twice_doubles_gradient);
    tcase_add_test(tc, residual_add_gradcheck);
    suite_add_tcase(s, tc);
    TCase *te = tcase_create("errors");
    tcase_add_test_raise_signal(te, broadcast_mismatch_aborts, SIGABRT);
    tcase_add_test_raise_signal(te, matmul_mismatch_aborts, SIGABRT);
    suite_add_tcase(s, te);
    return ct_test_run(s);
}
