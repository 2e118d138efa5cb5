/* Reductions (sum, mean, sum_dim, mean_dim, argmax_rows) and shape ops (reshape, flatten,
 * transpose): values against hand-computed references, backward against finite
 * differences, views really sharing storage, and misuse aborting with a message that
 * names the shapes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util.h"

/* Every op here is linear or a product of two inputs, so one tolerance fits them all:
 * step 1e-2, |analytic - numeric| <= 1e-3 + 1e-2 |numeric|. */
static void gradcheck1(const char *name, ct_test_fn f, ct_tensor *x, void *ctx) {
    double err = ct_test_gradcheck(name, f, 1, &x, ctx, 1e-2, 1e-3, 1e-2);
    ck_assert_msg(err <= 1, "%s: gradcheck error %g", name, err);
}

static void assert_shape(const ct_tensor *t, int ndim, const int64_t *shape) {
    ck_assert_int_eq(t->ndim, ndim);
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        ck_assert_int_eq(t->shape[i], shape[i]);
        n *= shape[i];
    }
    ck_assert_int_eq(t->numel, n);
}

/* ---- sum / mean -------------------------------------------------------------------- */

START_TEST(sum_mean_values) {
    CT_SCOPE {
        ct_tensor *x = ct_from_data(CT_SHAPE(2, 3), (float[]){1, 2, 3, 4, 5, 6});
        ct_tensor *s = ct_sum(x), *m = ct_mean(x);
        ck_assert_int_eq(s->ndim, 0);
        ck_assert_int_eq(s->numel, 1);
        ck_assert_int_eq(m->ndim, 0);
        ck_assert_int_eq(m->numel, 1);
        ck_assert_float_eq(s->data[0], 21.0f);
        ck_assert_float_eq(m->data[0], 3.5f);
        /* 1000 copies of 0.1 plus a tail that is not a multiple of the 8 lanes */
        ct_tensor *y = ct_full(CT_SHAPE(1003), 0.1f);
        ck_assert_close(ct_sum(y)->data[0], 1003 * (double)0.1f, 1e-6);
        ck_assert_close(ct_mean(y)->data[0], (double)0.1f, 1e-6);
    }
}
END_TEST

START_TEST(sum_mean_backward_values) {
    CT_SCOPE {
        ct_tensor *x = ct_test_rand(CT_SHAPE(3, 5), -1, 1, 11);
        ct_set_requires_grad(x, true);
        ct_backward(ct_mean(x));
        for (int i = 0; i < 15; i++) ck_assert_float_eq_tol(x->grad->data[i], 1.0f / 15, 1e-7);
        ct_backward(ct_sum(x)); /* accumulates on top */
        for (int i = 0; i < 15; i++) ck_assert_float_eq_tol(x->grad->data[i], 1 + 1.0f / 15, 1e-6);
    }
}
END_TEST

static ct_tensor *reduce_all_fn(ct_tensor **in, void *ctx) {
    return ctx ? ct_mean(in[0]) : ct_sum(in[0]);
}

START_TEST(sum_mean_grad) {
    CT_SCOPE {
        ct_tensor *x = ct_test_rand(CT_SHAPE(3, 4, 5), -1, 1, 12);
        ct_set_requires_grad(x, true);
        gradcheck1("sum", reduce_all_fn, x, NULL);
        gradcheck1("mean", reduce_all_fn, x, (void *)1);
    }
}
END_TEST

/* ---- sum_dim / mean_dim ------------------------------------------------------------ */

START_TEST(reduce_dim_values) {
    CT_SCOPE {
        /* x[i][j][k] = 100 i + 10 j + k, shape [2, 3, 4] */
        ct_tensor *x = ct_tensor_new(CT_SHAPE(2, 3, 4));
        for (int i = 0; i < 2; i++)
            for (int j = 0; j < 3; j++)
                for (int k = 0; k < 4; k++) x->data[(i * 3 + j) * 4 + k] = 100 * i + 10 * j + k;

        ct_tensor *s1 = ct_sum_dim(x, 1, false); /* [2, 4]: 300 i + 30 + 3 k */
        assert_shape(s1, CT_SHAPE(2, 4));
        for (int i = 0; i < 2; i++)
            for (int k = 0; k < 4; k++)
                ck_assert_float_eq(s1->data[i * 4 + k], 300 * i + 30 + 3 * k);

        ct_tensor *m1 = ct_mean_dim(x, 1, true); /* [2, 1, 4]: 100 i + 10 + k */
        assert_shape(m1, CT_SHAPE(2, 1, 4));
        for (int i = 0; i < 2; i++)
            for (int k = 0; k < 4; k++) ck_assert_float_eq(m1->data[i * 4 + k], 100 * i + 10 + k);

        ct_tensor *s2 = ct_sum_dim(x, -1, true); /* [2, 3, 1]: 400 i + 40 j + 6 */
        assert_shape(s2, CT_SHAPE(2, 3, 1));
        for (int i = 0; i < 2; i++)
            for (int j = 0; j < 3; j++)
                ck_assert_float_eq(s2->data[i * 3 + j], 400 * i + 40 * j + 6);

        ct_tensor *m0 = ct_mean_dim(x, 0, false); /* [3, 4]: 50 + 10 j + k */
        assert_shape(m0, CT_SHAPE(3, 4));
        for (int j = 0; j < 3; j++)
            for (int k = 0; k < 4; k++) ck_assert_float_eq(m0->data[j * 4 + k], 50 + 10 * j + k);

        ct_tensor *m2 = ct_mean_dim(x, -1, false); /* [2, 3]: 100 i + 10 j + 1.5 */
        assert_shape(m2, CT_SHAPE(2, 3));
        for (int i = 0; i < 2; i++)
            for (int j = 0; j < 3; j++)
                ck_assert_float_eq(m2->data[i * 3 + j], 100 * i + 10 * j + 1.5f);

        /* A 1-d reduction gives a 0-d tensor (or [1] with keepdim). */
        ct_tensor *v = ct_from_data(CT_SHAPE(3), (float[]){1, 2, 4});
        ct_tensor *r0 = ct_sum_dim(v, 0, false), *r1 = ct_mean_dim(v, 0, true);
        ck_assert_int_eq(r0->ndim, 0);
        ck_assert_float_eq(r0->data[0], 7);
        assert_shape(r1, CT_SHAPE(1));
        ck_assert_float_eq_tol(r1->data[0], 7.0f / 3, 1e-6);
    }
}
END_TEST

typedef struct {
    int dim;
    bool keepdim, mean;
} reduce_case;

static ct_tensor *reduce_dim_fn(ct_tensor **in, void *ctx) {
    const reduce_case *c = ctx;
    return c->mean ? ct_mean_dim(in[0], c->dim, c->keepdim) : ct_sum_dim(in[0], c->dim, c->keepdim);
}

START_TEST(reduce_dim_grad) {
    /* _i enumerates dim in {0, 1, 2, -1, -2} x keepdim x {sum, mean}; the inner size of
     * the last dim (9) exercises the 8-wide blocks and their scalar tail. */
    static const int dims[] = {0, 1, 2, -1, -2};
    reduce_case c = {dims[_i % 5], (_i / 5) % 2, _i / 10};
    CT_SCOPE {
        ct_tensor *x = ct_test_rand(CT_SHAPE(3, 4, 9), -1, 1, 13 + (uint64_t)_i);
        ct_set_requires_grad(x, true);
        char name[64];
        snprintf(name, sizeof name, "%s_dim(dim=%d, keepdim=%d)", c.mean ? "mean" : "sum", c.dim,
                 c.keepdim);
        gradcheck1(name, reduce_dim_fn, x, &c);
    }
}
END_TEST

/* ---- argmax_rows ------------------------------------------------------------------- */

START_TEST(argmax_rows_values) {
    CT_SCOPE {
        ct_tensor *x = ct_from_data(CT_SHAPE(4, 3), (float[]){
                                                       0.1f, 0.7f, 0.2f,  /* 1 */
                                                       5, -1, 5,          /* tie: first wins */
                                                       -3, -2, -1,        /* 2 */
                                                       1, NAN, 9,         /* NaN is the max */
                                                   });
        int64_t idx[4] = {-1, -1, -1, -1};
        ct_argmax_rows(x, idx);
        ck_assert_int_eq(idx[0], 1);
        ck_assert_int_eq(idx[1], 0);
        ck_assert_int_eq(idx[2], 2);
        ck_assert_int_eq(idx[3], 1);
    }
}
END_TEST

/* ---- reshape / flatten ------------------------------------------------------------- */

START_TEST(reshape_is_a_view) {
    CT_SCOPE {
        ct_tensor *x = ct_test_rand(CT_SHAPE(2, 3, 4), -1, 1, 20);
        ct_tensor *y = ct_reshape(x, CT_SHAPE(6, 4));
        assert_shape(y, CT_SHAPE(6, 4));
        ck_assert_ptr_eq(y->data, x->data);
        x->data[5] = 42; /* a write through one handle is seen through the other */
        ck_assert_float_eq(y->data[5], 42);

        ct_tensor *z = ct_reshape(x, CT_SHAPE(-1, 4)); /* -1 first */
        assert_shape(z, CT_SHAPE(6, 4));
        ct_tensor *w = ct_reshape(x, CT_SHAPE(3, 2, -1)); /* -1 last */
        assert_shape(w, CT_SHAPE(3, 2, 4));
        ct_tensor *v = ct_reshape(x, CT_SHAPE(-1)); /* everything */
        assert_shape(v, CT_SHAPE(24));
        ck_assert_ptr_eq(v->data, x->data);

        ct_tensor *one = ct_from_data(CT_SHAPE(1, 1), (float[]){7});
        ct_tensor *scalar = ct_reshape(one, 0, NULL); /* to 0-d and back */
        ck_assert_int_eq(scalar->ndim, 0);
        ck_assert_int_eq(scalar->numel, 1);
        assert_shape(ct_reshape(scalar, CT_SHAPE(-1)), CT_SHAPE(1));

        /* Views outlive the scope of the tensor they came from (shared storage refcount). */
        ct_tensor *kept = NULL;
        CT_SCOPE {
            ct_tensor *t = ct_from_data(CT_SHAPE(2, 2), (float[]){1, 2, 3, 4});
            kept = ct_scope_keep(ct_reshape(t, CT_SHAPE(4)));
        }
        ck_assert_float_eq(kept->data[3], 4);
    }
}
END_TEST

START_TEST(flatten_is_a_view) {
    CT_SCOPE {
        ct_tensor *x = ct_test_rand(CT_SHAPE(2, 3, 4, 5), -1, 1, 21);
        ct_tensor *f1 = ct_flatten(x, 1);
        assert_shape(f1, CT_SHAPE(2, 60));
        ck_assert_ptr_eq(f1->data, x->data);
        assert_shape(ct_flatten(x, 0), CT_SHAPE(120));
        assert_shape(ct_flatten(x, 2), CT_SHAPE(2, 3, 20));
        assert_shape(ct_flatten(x, -1), CT_SHAPE(2, 3, 4, 5));
        assert_shape(ct_flatten(x, -3), CT_SHAPE(2, 60));
        /* torch.flatten of a 0-d tensor is [1] */
        ct_tensor *s = ct_full(0, NULL, 3);
        assert_shape(ct_flatten(s, 0), CT_SHAPE(1));
    }
}
END_TEST

static ct_tensor *reshape_fn(ct_tensor **in, void *ctx) {
    (void)ctx;
    /* a non-trivial consumer so the gradient arriving at the view is not uniform */
    ct_tensor *y = ct_reshape(in[0], CT_SHAPE(4, -1));
    return ct_mul(y, y);
}

static ct_tensor *flatten_fn(ct_tensor **in, void *ctx) {
    ct_tensor *y = ct_flatten(in[0], (int)(intptr_t)ctx);
    return ct_mul(y, y);
}

START_TEST(view_grad) {
    CT_SCOPE {
        ct_tensor *x = ct_test_rand(CT_SHAPE(2, 3, 4), -1, 1, 22);
        ct_set_requires_grad(x, true);
        gradcheck1("reshape", reshape_fn, x, NULL);
        gradcheck1("flatten1", flatten_fn, x, (void *)1);
        gradcheck1("flatten0", flatten_fn, x, (void *)0);
    }
}
END_TEST

START_TEST(view_backward_values) {
    CT_SCOPE {
        /* d/dx sum(reshape(x) * c) = c laid back out in x's shape */
        ct_tensor *x = ct_zeros(CT_SHAPE(2, 3));
        ct_set_requires_grad(x, true);
        ct_tensor *c = ct_from_data(CT_SHAPE(3, 2), (float[]){1, 2, 3, 4, 5, 6});
        ct_tensor *y = ct_reshape(x, CT_SHAPE(3, 2));
        ck_assert(y->requires_grad);
        ck_assert(!ct_is_leaf(y));
        ct_backward(ct_sum(ct_mul(y, c)));
        ck_assert_int_eq(x->grad->ndim, 2);
        ck_assert_int_eq(x->grad->shape[0], 2);
        for (int i = 0; i < 6; i++) ck_assert_float_eq(x->grad->data[i], i + 1);

        /* a chain of views: reshape -> flatten -> reshape */
        ct_clear_grad(x);
        ct_tensor *z = ct_reshape(ct_flatten(ct_reshape(x, CT_SHAPE(1, 6)), 0), CT_SHAPE(3, 2));
        ck_assert_ptr_eq(z->data, x->data);
        ct_backward(ct_sum(ct_mul(z, c)));
        for (int i = 0; i < 6; i++) ck_assert_float_eq(x->grad->data[i], i + 1);

        /* Under no_grad a reshape is still a view but records nothing. */
        CT_NO_GRAD {
            ct_tensor *v = ct_reshape(x, CT_SHAPE(6));
            ck_assert(!v->requires_grad);
            ck_assert_ptr_eq(v->data, x->data);
        }
    }
}
END_TEST

START_TEST(views_free_everything) {
    /* Views share storage by reference count: once the scope closes, the storage, every
     * handle and every node are gone, whether or not backward ran. */
    ct_stats before = ct_stats_get();
    for (int with_backward = 0; with_backward < 2; with_backward++) {
        CT_SCOPE {
            ct_tensor *x = ct_test_rand(CT_SHAPE(2, 3, 4), -1, 1, 26);
            ct_set_requires_grad(x, true);
            ct_tensor *y = ct_reshape(ct_transpose(ct_flatten(x, 1)), CT_SHAPE(-1, 2));
            ct_tensor *loss = ct_mean(ct_sum_dim(ct_mul(y, y), 0, false));
            if (with_backward) ct_backward(loss);
        }
        ct_test_assert_counters_back(before);
    }
}
END_TEST

/* ---- transpose --------------------------------------------------------------------- */

START_TEST(transpose_values) {
    CT_SCOPE {
        ct_tensor *x = ct_from_data(CT_SHAPE(2, 3), (float[]){1, 2, 3, 4, 5, 6});
        ct_tensor *t = ct_transpose(x);
        assert_shape(t, CT_SHAPE(3, 2));
        float want[] = {1, 4, 2, 5, 3, 6};
        for (int i = 0; i < 6; i++) ck_assert_float_eq(t->data[i], want[i]);
        ck_assert_ptr_ne(t->data, x->data); /* a copy */

        /* larger than one 32x32 tile, with ragged edges */
        ct_tensor *big = ct_test_rand(CT_SHAPE(37, 70), -1, 1, 23);
        ct_tensor *bt = ct_transpose(big);
        for (int i = 0; i < 37; i++)
            for (int j = 0; j < 70; j++)
                ck_assert_float_eq(bt->data[j * 37 + i], big->data[i * 70 + j]);
    }
}
END_TEST

static ct_tensor *transpose_fn(ct_tensor **in, void *ctx) {
    (void)ctx;
    return ct_transpose(in[0]);
}

START_TEST(transpose_grad) {
    CT_SCOPE {
        ct_tensor *x = ct_test_rand(CT_SHAPE(3, 5), -1, 1, 24);
        ct_set_requires_grad(x, true);
        gradcheck1("transpose", transpose_fn, x, NULL);
        ct_tensor *y = ct_test_rand(CT_SHAPE(33, 40), -1, 1, 25); /* crosses a 32x32 tile */
        ct_set_requires_grad(y, true);
        gradcheck1("transpose_big", transpose_fn, y, NULL);
    }
}
END_TEST

/* ---- misuse aborts, naming the shapes ---------------------------------------------- */


START_TEST(reshape_numel_mismatch) {
    ct_test_expect_abort("reshape: cannot reshape [2, 3] (6 elements) into [4, 2]");
    CT_SCOPE { ct_reshape(ct_zeros(CT_SHAPE(2, 3)), CT_SHAPE(4, 2)); }
}
END_TEST

START_TEST(reshape_two_inferred) {
    ct_test_expect_abort("only one dim can be -1");
    CT_SCOPE { ct_reshape(ct_zeros(CT_SHAPE(2, 3)), CT_SHAPE(-1, -1)); }
}
END_TEST

START_TEST(reshape_not_divisible) {
    ct_test_expect_abort("into [4, -1]");
    CT_SCOPE { ct_reshape(ct_zeros(CT_SHAPE(2, 3)), CT_SHAPE(4, -1)); }
}
END_TEST

START_TEST(reshape_negative) {
    ct_test_expect_abort("[-2, -3]");
    CT_SCOPE { ct_reshape(ct_zeros(CT_SHAPE(2, 3)), CT_SHAPE(-2, -3)); }
}
END_TEST

START_TEST(sum_dim_bad_dim) {
    ct_test_expect_abort("sum_dim: dim 3 out of range for [2, 3, 4]");
    CT_SCOPE { ct_sum_dim(ct_zeros(CT_SHAPE(2, 3, 4)), 3, false); }
}
END_TEST

START_TEST(mean_dim_bad_negative_dim) {
    ct_test_expect_abort("mean_dim: dim -3 out of range for [2, 3]");
    CT_SCOPE { ct_mean_dim(ct_zeros(CT_SHAPE(2, 3)), -3, true); }
}
END_TEST

START_TEST(flatten_bad_dim) {
    ct_test_expect_abort("flatten: dim 2 out of range for [2, 3]");
    CT_SCOPE { ct_flatten(ct_zeros(CT_SHAPE(2, 3)), 2); }
}
END_TEST

START_TEST(transpose_not_2d) {
    ct_test_expect_abort("transpose: expected at least 2 dims [..., R, C], got [4]");
    CT_SCOPE { ct_transpose(ct_zeros(CT_SHAPE(4))); }
}
END_TEST

START_TEST(argmax_not_2d) {
    ct_test_expect_abort("argmax_rows: expected a 2-d input");
    CT_SCOPE {
        int64_t idx[3];
        ct_argmax_rows(ct_zeros(CT_SHAPE(3)), idx);
    }
}
END_TEST

int main(void) {
    Suite *s = suite_create("ops_reduce_shape");
    TCase *tr = tcase_create("reduce");
    tcase_add_test(tr, sum_mean_values);
    tcase_add_test(tr, sum_mean_backward_values);
    tcase_add_test(tr, sum_mean_grad);
    tcase_add_test(tr, reduce_dim_values);
    tcase_add_loop_test(tr, reduce_dim_grad, 0, 20);
    tcase_add_test(tr, argmax_rows_values);
    suite_add_tcase(s, tr);
    TCase *ts = tcase_create("shape");
    tcase_add_test(ts, reshape_is_a_view);
    tcase_add_test(ts, flatten_is_a_view);
    tcase_add_test(ts, view_grad);
    tcase_add_test(ts, view_backward_values);
    tcase_add_test(ts, views_free_everything);
    tcase_add_test(ts, transpose_values);
    tcase_add_test(ts, transpose_grad);
    suite_add_tcase(s, ts);
    TCase *te = tcase_create("errors");
    tcase_add_test_raise_signal(te, reshape_numel_mismatch, SIGABRT);
    tcase_add_test_raise_signal(te, reshape_two_inferred, SIGABRT);
    tcase_add_test_raise_signal(te, reshape_not_divisible, SIGABRT);
    tcase_add_test_raise_signal(te, reshape_negative, SIGABRT);
    tcase_add_test_raise_signal(te, sum_dim_bad_dim, SIGABRT);
    tcase_add_test_raise_signal(te, mean_dim_bad_negative_dim, SIGABRT);
    tcase_add_test_raise_signal(te, flatten_bad_dim, SIGABRT);
    tcase_add_test_raise_signal(te, transpose_not_2d, SIGABRT);
    tcase_add_test_raise_signal(te, argmax_not_2d, SIGABRT);
    suite_add_tcase(s, te);
    return ct_test_run(s);
}
