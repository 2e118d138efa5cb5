#include "util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

ct_tensor *ct_test_rand(int ndim, const int64_t *shape, float lo, float hi, uint64_t seed) {
    ct_rng r;
    ct_rng_seed(&r, seed);
    return ct_rand_uniform(ndim, shape, lo, hi, &r);
}

/* L = sum(y * R) in double, so the finite differences are not swamped by rounding. */
static double project(const ct_tensor *y, const ct_tensor *r) {
    double s = 0;
    for (int64_t i = 0; i < y->numel; i++) s += (double)y->data[i] * r->data[i];
    return s;
}

static double eval_f(ct_test_fn f, ct_tensor **in, void *ctx, const ct_tensor *r) {
    double s = 0;
    CT_NO_GRAD CT_SCOPE { s = project(f(in, ctx), r); }
    return s;
}

double ct_test_gradcheck(const char *name, ct_test_fn f, int n, ct_tensor **in, void *ctx,
                         double eps, double atol, double rtol) {
    double worst = 0;
    CT_SCOPE {
        ct_tensor *y = f(in, ctx);
        ck_assert_msg(y->requires_grad, "%s: output does not require grad", name);
        ct_tensor *r = ct_test_rand(y->ndim, y->shape, -1, 1, 1234);
        for (int k = 0; k < n; k++)
            if (in[k]->requires_grad) ct_clear_grad(in[k]);
        ct_tensor *g = ct_empty_like(y);
        for (int64_t i = 0; i < y->numel; i++) g->data[i] = r->data[i];
        ct_backward_ex(y, g, false);
        for (int k = 0; k < n; k++) {
            ct_tensor *x = in[k];
            if (!x->requires_grad) continue;
            ck_assert_msg(x->grad != NULL, "%s: input %d got no gradient", name, k);
            for (int64_t j = 0; j < x->numel; j++) {
                float orig = x->data[j];
                float xp = (float)(orig + eps), xm = (float)(orig - eps);
                x->data[j] = xp;
                double lp = eval_f(f, in, ctx, r);
                x->data[j] = xm;
                double lm = eval_f(f, in, ctx, r);
                x->data[j] = orig;
                double num = (lp - lm) / ((double)xp - xm); /* the step float really took */
                double ana = x->grad->data[j];
                double err = fabs(ana - num) / (atol + rtol * fabs(num));
                if (err > worst) worst = err;
                if (err > 1)
                    fprintf(stderr, "%s: input %d elem %lld: analytic %.6g numeric %.6g\n", name,
                            k, (long long)j, ana, num);
            }
        }
    }
    return worst;
}

void ct_test_assert_counters_back(ct_stats before) {
    ct_stats after = ct_stats_get();
    ck_assert_int_eq(after.live_tensors, before.live_tensors);
    ck_assert_int_eq(after.live_bytes, before.live_bytes);
    ck_assert_int_eq(after.graph_nodes, before.graph_nodes);
    ck_assert_int_eq(after.saved_tensors, before.saved_tensors);
}

static const char *expected_msg;

static void msg_hook(const char *msg) {
    if (!strstr(msg, expected_msg)) {
        fprintf(stderr, "abort message \"%s\" lacks \"%s\"\n", msg, expected_msg);
        _exit(3);
    }
    abort();
}

void ct_test_expect_abort(const char *text) {
    expected_msg = text;
    ct_set_abort_hook(msg_hook);
}

int ct_test_run(Suite *s) {
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    ct_scope_shutdown();
    ct_alloc_trim();
    return failed == 0 ? 0 : 1;
}
