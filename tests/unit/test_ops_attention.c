/* The transformer ops: bmm, batched transpose, cat, narrow/select, expand, attention and
 * multi_head_attention. Values against direct references, backward against finite
 * differences (attention with dropout too: its mask is fixed by reseeding the rng before
 * every evaluation), what attention saves for backward, and misuse aborting with a message
 * that names the shapes. PyTorch parity: tests/parity/ops_dump.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

/* Step 1e-2 in float32: the products and copies here are exact up to rounding, attention
 * carries the O(step^2) curvature of the softmax. Each leaves a margin of a few times
 * over the worst error measured. */
#define GC_STEP 1e-2
static void gradcheck(const char *name, ct_test_fn f, int n, ct_tensor **in, void *ctx, double atol,
                      double rtol) {
    double err = ct_test_gradcheck(name, f, n, in, ctx, GC_STEP, atol, rtol);
    ck_assert_msg(err <= 1, "%s: gradcheck error %g", name, err);
}

static ct_tensor *param(int ndim, const int64_t *shape, uint64_t seed) {
    ct_tensor *t = ct_test_rand(ndim, shape, -1, 1, seed);
    ct_set_requires_grad(t, true);
    return t;
}

/* ---- bmm and transpose ------------------------------------------------------------------ */

START_TEST(bmm_values) {
    CT_SCOPE {
        ct_tensor *a = ct_test_rand(CT_SHAPE(3, 2, 4), -1, 1, 1), *b = ct_test_rand(CT_SHAPE(3, 4, 5), -1, 1, 2);
        ct_tensor *y = ct_bmm(a, b);
        ck_assert_int_eq(y->ndim, 3);
        ck_assert_int_eq(y->shape[0], 3);
        ck_assert_int_eq(y->shape[1], 2);
        ck_assert_int_eq(y->shape[2], 5);
        for (int t = 0; t < 3; t++)
            for (int i = 0; i < 2; i++)
                for (int j = 0; j < 5; j++) {
                    double ref = 0;
                    for (int k = 0; k < 4; k++) ref += a->data[t * 8 + i * 4 + k] * b->data[t * 20 + k * 5 + j];
                    ck_assert_close(y->data[t * 10 + i * 5 + j], ref, 1e-5);
                }
    }
}
END_TEST

static ct_tensor *bmm_fn(ct_tensor **in, void *ctx) { (void)ctx; return ct_bmm(in[0], in[1]); }
static ct_tensor *transpose_fn(ct_tensor **in, void *ctx) { (void)ctx; return ct_transpose(in[0]); }

START_TEST(bmm_transpose_grad) {
    CT_SCOPE {
        ct_tensor *a = param(CT_SHAPE(2, 3, 4), 3), *b = param(CT_SHAPE(2, 4, 5), 4);
        gradcheck("bmm", bmm_fn, 2, (ct_tensor *[]){a, b}, NULL, 1e-3, 1e-2);
        ct_tensor *frozen = ct_test_rand(CT_SHAPE(2, 4, 5), -1, 1, 5); /* dA only */
        gradcheck("bmm_a_only", bmm_fn, 2, (ct_tensor *[]){a, frozen}, NULL, 1e-3, 1e-2);
        gradcheck("transpose_batched", transpose_fn, 1, (ct_tensor *[]){param(CT_SHAPE(2, 3, 5, 4), 6)},
                  NULL, 1e-3, 1e-2);
    }
}
END_TEST

START_TEST(transpose_batched_values) {
    CT_SCOPE {
        ct_tensor *x = ct_test_rand(CT_SHAPE(2, 3, 4), -1, 1, 7), *y = ct_transpose(x);
        ck_assert_int_eq(y->shape[0], 2);
        ck_assert_int_eq(y->shape[1], 4);
        ck_assert_int_eq(y->shape[2], 3);
        for (int b = 0; b < 2; b++)
            for (int i = 0; i < 3; i++)
                for (int j = 0; j < 4; j++) ck_assert_float_eq(y->data[b * 12 + j * 3 + i], x->data[b * 12 + i * 4 + j]);
    }
}
END_TEST

/* ---- cat, narrow, select, expand -------------------------------------------------------- */

START_TEST(cat_values) {
    CT_SCOPE {
        /* the class token: [2, 1, 3] and [2, 2, 3] along dim 1 */
        ct_tensor *a = ct_from_data(CT_SHAPE(2, 1, 3), (float[]){1, 2, 3, 4, 5, 6});
        ct_tensor *b = ct_from_data(CT_SHAPE(2, 2, 3), (float[]){10, 11, 12, 13, 14, 15, 20, 21, 22, 23, 24, 25});
        ct_tensor *y = ct_cat(2, (ct_tensor *[]){a, b}, 1);
        static const float ref[] = {1, 2, 3, 10, 11, 12, 13, 14, 15, 4, 5, 6, 20, 21, 22, 23, 24, 25};
        ck_assert_int_eq(y->shape[1], 3);
        for (int i = 0; i < 18; i++) ck_assert_float_eq(y->data[i], ref[i]);
        ct_tensor *s = ct_select(y, 1, 0); /* x[:, 0] */
        ck_assert_int_eq(s->ndim, 2);
        ck_assert_int_eq(s->shape[0], 2);
        ck_assert_int_eq(s->shape[1], 3);
        for (int i = 0; i < 6; i++) ck_assert_float_eq(s->data[i], a->data[i]);
        ct_tensor *n = ct_narrow(y, 2, 1, 2);
        ck_assert_float_eq(n->data[0], 2);
        ck_assert_float_eq(n->data[1], 3);
        ck_assert_float_eq(n->data[2], 11);
    }
}
END_TEST

static ct_tensor *cat_fn(ct_tensor **in, void *ctx) {
    return ct_cat(3, (ct_tensor *[]){in[0], in[1], in[2]}, *(int *)ctx);
}
static ct_tensor *narrow_fn(ct_tensor **in, void *ctx) { (void)ctx; return ct_narrow(in[0], 1, 1, 2); }
static ct_tensor *select_fn(ct_tensor **in, void *ctx) { (void)ctx; return ct_select(in[0], -1, 2); }
static ct_tensor *expand_fn(ct_tensor **in, void *ctx) {
    (void)ctx;
    return ct_expand(in[0], CT_SHAPE(3, 2, 4));
}

START_TEST(cat_narrow_expand_grad) {
    CT_SCOPE {
        for (int dim = 0; dim < 3; dim++) {
            int64_t s0[3] = {2, 3, 4}, s1[3] = {2, 3, 4}, s2[3] = {2, 3, 4};
            s1[dim] = 1, s2[dim] = 2;
            ct_tensor *in[3] = {param(3, s0, 10), ct_test_rand(3, s1, -1, 1, 11), param(3, s2, 12)};
            gradcheck("cat", cat_fn, 3, in, &dim, 1e-3, 1e-2);
        }
        gradcheck("narrow", narrow_fn, 1, (ct_tensor *[]){param(CT_SHAPE(2, 4, 3), 13)}, NULL, 1e-3, 1e-2);
        gradcheck("select", select_fn, 1, (ct_tensor *[]){param(CT_SHAPE(2, 4, 3), 14)}, NULL, 1e-3, 1e-2);
        gradcheck("expand", expand_fn, 1, (ct_tensor *[]){param(CT_SHAPE(1, 2, 1), 15)}, NULL, 1e-3, 1e-2);
        gradcheck("expand_lead", expand_fn, 1, (ct_tensor *[]){param(CT_SHAPE(2, 4), 16)}, NULL, 1e-3, 1e-2);
    }
}
END_TEST

START_TEST(expand_values) {
    CT_SCOPE {
        ct_tensor *x = ct_from_data(CT_SHAPE(1, 1, 2), (float[]){1, 2}), *y = ct_expand(x, CT_SHAPE(3, 1, 2));
        ck_assert_int_eq(y->numel, 6);
        for (int i = 0; i < 6; i++) ck_assert_float_eq(y->data[i], (float)(1 + i % 2));
    }
}
END_TEST

/* ---- attention -------------------------------------------------------------------------- */

/* Direct reference for one output element: heads of dh columns, no dropout. */
static double attention_ref(const ct_tensor *qkv, int heads, int64_t n, int64_t i, int64_t c) {
    int64_t L = qkv->shape[1], E = qkv->shape[2] / 3, dh = E / heads, h = c / dh;
    const float *row = qkv->data + n * L * 3 * E;
    double s[64], mx = -1e300, z = 0, out = 0;
    for (int64_t j = 0; j < L; j++) {
        double d = 0;
        for (int64_t t = 0; t < dh; t++) d += (double)row[i * 3 * E + h * dh + t] * row[j * 3 * E + E + h * dh + t];
        s[j] = d / sqrt((double)dh);
        mx = s[j] > mx ? s[j] : mx;
    }
    for (int64_t j = 0; j < L; j++) z += s[j] = exp(s[j] - mx);
    for (int64_t j = 0; j < L; j++) out += s[j] / z * row[j * 3 * E + 2 * E + c];
    return out;
}

START_TEST(attention_values) {
    CT_SCOPE {
        int heads = 2;
        ct_tensor *qkv = ct_test_rand(CT_SHAPE(2, 5, 12), -2, 2, 20), *y = ct_attention(qkv, heads, 0, true, NULL);
        ck_assert_int_eq(y->shape[2], 4);
        for (int64_t n = 0; n < 2; n++)
            for (int64_t i = 0; i < 5; i++)
                for (int64_t c = 0; c < 4; c++)
                    ck_assert_close(y->data[(n * 5 + i) * 4 + c], attention_ref(qkv, heads, n, i, c), 1e-5);
    }
}
END_TEST

typedef struct {
    int heads;
    float p;
    uint64_t seed;
} attn_ctx;

static ct_tensor *attention_fn(ct_tensor **in, void *ctx) {
    attn_ctx *a = ctx;
    ct_rng r;
    ct_rng_seed(&r, a->seed); /* the same mask on every evaluation */
    return ct_attention(in[0], a->heads, a->p, true, &r);
}

static ct_tensor *mha_fn(ct_tensor **in, void *ctx) {
    attn_ctx *a = ctx;
    ct_rng r;
    ct_rng_seed(&r, a->seed);
    return ct_multi_head_attention(in[0], in[1], in[2], in[3], in[4], a->heads, a->p, true, &r);
}

START_TEST(attention_grad) {
    static const attn_ctx cases[] = {{1, 0, 1}, {2, 0, 2}, {4, 0, 3}, {2, 0.3f, 4}, {1, 0.5f, 5}};
    attn_ctx c = cases[_i];
    CT_SCOPE {
        ct_tensor *qkv = param(CT_SHAPE(2, 5, 24), 30 + (uint64_t)_i);
        char name[48];
        snprintf(name, sizeof name, "attention heads=%d p=%g", c.heads, (double)c.p);
        gradcheck(name, attention_fn, 1, &qkv, &c, 2e-3, 1e-2);
    }
}
END_TEST

START_TEST(mha_grad) {
    attn_ctx c = {2, _i ? 0.2f : 0, 9};
    CT_SCOPE {
        int64_t E = 6;
        ct_tensor *in[5] = {param(CT_SHAPE(2, 4, E), 40), param(CT_SHAPE(3 * E, E), 41), param(CT_SHAPE(3 * E), 42),
                            param(CT_SHAPE(E, E), 43), param(CT_SHAPE(E), 44)};
        gradcheck(_i ? "mha p=0.2" : "mha", mha_fn, 5, in, &c, 2e-3, 1e-2);
    }
}
END_TEST

/* Dropout on the weights: about a fraction p of them is zero, the kept ones scaled by
 * 1/(1-p), so the output is A V with rows of A no longer summing to 1; eval is exact. */
START_TEST(attention_dropout_is_random_and_off_in_eval) {
    CT_SCOPE {
        ct_tensor *qkv = ct_test_rand(CT_SHAPE(2, 6, 12), -1, 1, 50);
        ct_rng r1, r2;
        ct_rng_seed(&r1, 1);
        ct_rng_seed(&r2, 2);
        ct_tensor *ref = ct_attention(qkv, 2, 0, true, NULL);
        ct_tensor *ev = ct_attention(qkv, 2, 0.4f, false, &r1);
        for (int64_t i = 0; i < ref->numel; i++) ck_assert_float_eq(ev->data[i], ref->data[i]);
        ct_tensor *a = ct_attention(qkv, 2, 0.4f, true, &r1), *b = ct_attention(qkv, 2, 0.4f, true, &r2);
        int differ = 0;
        for (int64_t i = 0; i < a->numel; i++) differ += a->data[i] != b->data[i] || a->data[i] != ref->data[i];
        ck_assert_int_gt(differ, a->numel / 2);
        /* the same seed gives the same result, with or without grad */
        ct_rng_seed(&r1, 1);
        ct_rng_seed(&r2, 1);
        ct_tensor *c = ct_attention(qkv, 2, 0.4f, true, &r1), *d = NULL;
        CT_NO_GRAD { d = ct_attention(qkv, 2, 0.4f, true, &r2); }
        for (int64_t i = 0; i < c->numel; i++) ck_assert_float_eq(c->data[i], d->data[i]);
        ck_assert_int_eq(r1.s[0], r2.s[0]);
    }
}
END_TEST

/* Backward keeps qkv and the softmax output (plus, with dropout, one bit per weight), not
 * the scores: two saved tensors, freed with the graph. */
START_TEST(attention_saves_only_what_backward_needs) {
    ct_stats before = ct_stats_get();
    CT_SCOPE {
        ct_tensor *qkv = param(CT_SHAPE(2, 7, 24), 60);
        ct_rng r;
        ct_rng_seed(&r, 3);
        int64_t saved0 = ct_stats_get().saved_tensors;
        ct_tensor *y = ct_attention(qkv, 4, 0.1f, true, &r);
        ck_assert_int_eq(ct_stats_get().saved_tensors - saved0, 2);
        ct_node *n = y->grad_fn;
        ck_assert_ptr_nonnull(n);
        ck_assert_ptr_eq(n->saved[0]->data, qkv->data);
        ck_assert_int_eq(n->saved[1]->numel, 2 * 4 * 7 * 7);
        ck_assert_uint_eq(n->aux_bytes, (2 * 4 * 49 + 63) / 64 * 8);
        /* the saved weights are the softmax output: each row sums to 1 */
        for (int64_t row = 0; row < 2 * 4 * 7; row++) {
            double s = 0;
            for (int j = 0; j < 7; j++) s += n->saved[1]->data[row * 7 + j];
            ck_assert_close(s, 1.0, 1e-5);
        }
        ct_backward_ex(ct_sum(y), NULL, false);
        ck_assert_ptr_nonnull(ct_grad(qkv));
        CT_NO_GRAD {
            int64_t s1 = ct_stats_get().saved_tensors;
            ct_attention(qkv, 4, 0.1f, true, &r);
            ck_assert_int_eq(ct_stats_get().saved_tensors, s1);
        }
    }
    ct_test_assert_counters_back(before);
}
END_TEST

/* ---- misuse -------------------------------------------------------------------------------- */

START_TEST(attention_heads_must_divide) {
    ct_test_expect_abort("attention: 3 heads do not divide the embedding 8 (input [2, 4, 24])");
    CT_SCOPE { ct_attention(ct_zeros(CT_SHAPE(2, 4, 24)), 3, 0, false, NULL); }
}
END_TEST

START_TEST(attention_not_packed) {
    ct_test_expect_abort("attention: expected packed q|k|v [N, L, 3E], got [2, 4, 8]");
    CT_SCOPE { ct_attention(ct_zeros(CT_SHAPE(2, 4, 8)), 2, 0, false, NULL); }
}
END_TEST

START_TEST(cat_mismatch) {
    ct_test_expect_abort("cat: input 1 [2, 3, 5] does not match input 0 [2, 1, 4] outside dim 1");
    CT_SCOPE { ct_cat(2, (ct_tensor *[]){ct_zeros(CT_SHAPE(2, 1, 4)), ct_zeros(CT_SHAPE(2, 3, 5))}, 1); }
}
END_TEST

START_TEST(bmm_mismatch) {
    ct_test_expect_abort("bmm: cannot multiply [2, 3, 4] by [3, 4, 5]");
    CT_SCOPE { ct_bmm(ct_zeros(CT_SHAPE(2, 3, 4)), ct_zeros(CT_SHAPE(3, 4, 5))); }
}
END_TEST

START_TEST(expand_bad_shape) {
    ct_test_expect_abort("expand: shapes [2, 3] and [2, 4] cannot be broadcast");
    CT_SCOPE { ct_expand(ct_zeros(CT_SHAPE(2, 3)), CT_SHAPE(2, 4)); }
}
END_TEST

START_TEST(narrow_out_of_range) {
    ct_test_expect_abort("narrow: [2, 5) is outside dim 1 of [2, 4]");
    CT_SCOPE { ct_narrow(ct_zeros(CT_SHAPE(2, 4)), 1, 2, 3); }
}
END_TEST

int main(void) {
    Suite *s = suite_create("ops_attention");
    TCase *tv = tcase_create("ops");
    tcase_set_timeout(tv, 60);
    tcase_add_test(tv, bmm_values);
    tcase_add_test(tv, bmm_transpose_grad);
    tcase_add_test(tv, transpose_batched_values);
    tcase_add_test(tv, cat_values);
    tcase_add_test(tv, cat_narrow_expand_grad);
    tcase_add_test(tv, expand_values);
    tcase_add_test(tv, attention_values);
    tcase_add_loop_test(tv, attention_grad, 0, 5);
    tcase_add_loop_test(tv, mha_grad, 0, 2);
    tcase_add_test(tv, attention_dropout_is_random_and_off_in_eval);
    tcase_add_test(tv, attention_saves_only_what_backward_needs);
    suite_add_tcase(s, tv);
    TCase *te = tcase_create("errors");
    tcase_add_test_raise_signal(te, attention_heads_must_divide, SIGABRT);
    tcase_add_test_raise_signal(te, attention_not_packed, SIGABRT);
    tcase_add_test_raise_signal(te, cat_mismatch, SIGABRT);
    tcase_add_test_raise_signal(te, bmm_mismatch, SIGABRT);
    tcase_add_test_raise_signal(te, expand_bad_shape, SIGABRT);
    tcase_add_test_raise_signal(te, narrow_out_of_range, SIGABRT);
    suite_add_tcase(s, te);
    return ct_test_run(s);
}
