/* Grad-mode semantics, requires_grad, the backward engine, hooks and memory counters. */
#include "util.h"

static ct_tensor *leaf(int ndim, const int64_t *shape, uint64_t seed, bool rg) {
    ct_tensor *t = ct_test_rand(ndim, shape, -1, 1, seed);
    ct_set_requires_grad(t, rg);
    return t;
}

START_TEST(no_grad_records_nothing) {
    CT_SCOPE {
        ct_tensor *w = leaf(CT_SHAPE(4, 3), 1, true), *x = leaf(CT_SHAPE(2, 3), 2, false);
        ct_stats s0 = ct_stats_get();
        ct_tensor *y = NULL;
        CT_NO_GRAD { y = ct_mul(ct_linear(x, w, NULL), ct_exp(ct_linear(x, w, NULL))); }
        ct_stats s1 = ct_stats_get();
        ck_assert_int_eq(s1.graph_nodes, s0.graph_nodes);
        ck_assert_int_eq(s1.saved_tensors, s0.saved_tensors);
        ck_assert(!ct_requires_grad(y));
        ck_assert(ct_is_leaf(y));
        /* the same expression with grad on records 4 nodes and saves tensors */
        y = ct_mul(ct_linear(x, w, NULL), ct_exp(ct_linear(x, w, NULL)));
        ck_assert(ct_requires_grad(y));
        ck_assert_int_eq(ct_stats_get().graph_nodes - s0.graph_nodes, 4);
        ck_assert_int_gt(ct_stats_get().saved_tensors, s0.saved_tensors);
    }
}
END_TEST

START_TEST(grad_mode_nests_and_restores) {
    ck_assert(ct_is_grad_enabled());
    CT_NO_GRAD {
        ck_assert(!ct_is_grad_enabled());
        CT_ENABLE_GRAD {
            ck_assert(ct_is_grad_enabled());
            CT_NO_GRAD { ck_assert(!ct_is_grad_enabled()); }
            ck_assert(ct_is_grad_enabled());
        }
        ck_assert(!ct_is_grad_enabled());
    }
    ck_assert(ct_is_grad_enabled());
    bool prev = ct_set_grad_enabled(false);
    ck_assert(prev);
    ck_assert(!ct_set_grad_enabled(true));
}
END_TEST

START_TEST(requires_grad_propagates) {
    CT_SCOPE {
        ct_tensor *a = leaf(CT_SHAPE(3), 1, false), *b = leaf(CT_SHAPE(3), 2, false);
        ct_tensor *c = ct_add(a, b);
        ck_assert(!ct_requires_grad(c)); /* no input requires grad: no node */
        ck_assert(ct_is_leaf(c));
        ct_set_requires_grad(b, true);
        ct_tensor *d = ct_add(a, b);
        ck_assert(ct_requires_grad(d));
        ck_assert(!ct_is_leaf(d));
        ck_assert(ct_requires_grad(ct_mul_scalar(d, 2))); /* through a non-leaf */
    }
}
END_TEST

START_TEST(requires_grad_on_nonleaf_aborts) {
    CT_SCOPE {
        ct_tensor *a = leaf(CT_SHAPE(3), 1, true);
        ct_set_requires_grad(ct_neg(a), false);
    }
}
END_TEST

/* x -> linear(w1, trainable) -> linear(w2, frozen) -> sum: w1 gets a gradient through the
 * frozen layer; w2 gets none and costs no dW GEMM; x (data) costs no dX GEMM. */
START_TEST(frozen_layer_passes_gradient_through) {
    CT_SCOPE {
        ct_tensor *x = leaf(CT_SHAPE(5, 4), 1, false);
        ct_tensor *w1 = leaf(CT_SHAPE(3, 4), 2, true), *w2 = leaf(CT_SHAPE(2, 3), 3, false);
        ct_tensor *loss = ct_sum(ct_linear(ct_linear(x, w1, NULL), w2, NULL));
        int64_t g0 = ct_stats_get().gemm_calls;
        ct_backward(loss);
        /* exactly two GEMMs: dX of layer 2 (flows to w1) and dW of layer 1 */
        ck_assert_int_eq(ct_stats_get().gemm_calls - g0, 2);
        ck_assert_ptr_nonnull(ct_grad(w1));
        ck_assert_ptr_null(ct_grad(w2));
        ck_assert_ptr_null(ct_grad(x));
        /* d sum(x w1^T w2^T) / d w1[i][j] = sum_n x[n][j] * sum_k w2[k][i] */
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 4; j++) {
                double want = 0, cs = 0;
                for (int k = 0; k < 2; k++) cs += w2->data[k * 3 + i];
                for (int n = 0; n < 5; n++) want += x->data[n * 4 + j] * cs;
                ck_assert_close(ct_grad(w1)->data[i * 4 + j], want, 1e-5);
            }
    }
}
END_TEST

START_TEST(graph_freed_after_backward) {
    CT_SCOPE {
        ct_stats s0 = ct_stats_get();
        ct_tensor *w = leaf(CT_SHAPE(3, 3), 1, true);
        ct_tensor *loss = ct_sum(ct_exp(ct_linear(w, w, NULL)));
        ck_assert_int_gt(ct_stats_get().saved_tensors, s0.saved_tensors);
        ct_backward(loss);
        ck_assert_int_eq(ct_stats_get().saved_tensors, s0.saved_tensors);
    }
}
END_TEST

START_TEST(second_backward_aborts) {
    CT_SCOPE {
        ct_tensor *w = leaf(CT_SHAPE(3), 1, true);
        ct_tensor *loss = ct_sum(ct_exp(w));
        ct_backward(loss);
        ct_backward(loss);
    }
}
END_TEST

START_TEST(retain_graph_allows_second_backward) {
    CT_SCOPE {
        ct_tensor *w = leaf(CT_SHAPE(3), 1, true);
        ct_tensor *loss = ct_sum(ct_exp(w));
        ct_backward_ex(loss, NULL, true);
        ct_backward_ex(loss, NULL, false);
        for (int i = 0; i < 3; i++) ck_assert_close(ct_grad(w)->data[i], 2 * expf(w->data[i]), 1e-6);
    }
}
END_TEST

START_TEST(grad_accumulates_until_zeroed) {
    CT_SCOPE {
        ct_tensor *w = leaf(CT_SHAPE(4), 1, true);
        ck_assert_ptr_null(ct_grad(w)); /* lazily created */
        for (int rep = 0; rep < 2; rep++) ct_backward(ct_sum(ct_mul_scalar(w, 3)));
        for (int i = 0; i < 4; i++) ck_assert_float_eq(ct_grad(w)->data[i], 6);
        ct_zero_grad(w);
        ct_backward(ct_sum(ct_mul_scalar(w, 3)));
        for (int i = 0; i < 4; i++) ck_assert_float_eq(ct_grad(w)->data[i], 3);
    }
}
END_TEST

START_TEST(shared_input_sums_gradients) {
    CT_SCOPE {
        ct_tensor *w = leaf(CT_SHAPE(3), 1, true);
        ct_backward(ct_sum(ct_mul(w, w))); /* d/dw w^2 = 2w, both paths accumulate */
        for (int i = 0; i < 3; i++) ck_assert_close(ct_grad(w)->data[i], 2 * w->data[i], 1e-6);
    }
}
END_TEST

START_TEST(detach_cuts_graph) {
    CT_SCOPE {
        ct_tensor *w = leaf(CT_SHAPE(3), 1, true);
        ct_tensor *y = ct_exp(w), *d = ct_detach(y);
        ck_assert(!ct_requires_grad(d));
        ck_assert(ct_is_leaf(d));
        ck_assert_ptr_eq(d->data, y->data);
        ck_assert(!ct_requires_grad(ct_mul(d, d)));
    }
}
END_TEST

typedef struct {
    ct_tensor *order[8];
    int n;
} hook_log;

static void record_hook(ct_tensor *t, void *ctx) {
    hook_log *log = ctx;
    /* the gradient is final when the hook fires */
    ck_assert_ptr_nonnull(ct_grad(t));
    log->order[log->n++] = t;
}

START_TEST(grad_hooks_fire_once_in_ready_order) {
    CT_SCOPE {
        hook_log log = {.n = 0};
        ct_tensor *x = leaf(CT_SHAPE(2, 4), 1, false);
        ct_tensor *w1 = leaf(CT_SHAPE(3, 4), 2, true), *w2 = leaf(CT_SHAPE(2, 3), 3, true);
        ct_tensor *frozen = leaf(CT_SHAPE(2), 4, false);
        ct_set_grad_hook(w1, record_hook, &log);
        ct_set_grad_hook(w2, record_hook, &log);
        ct_set_grad_hook(frozen, record_hook, &log);
        /* w1 is used twice, so its hook must wait for both contributions */
        ct_tensor *h = ct_add(ct_linear(x, w1, NULL), ct_linear(x, w1, NULL));
        ct_tensor *loss = ct_sum(ct_add(ct_linear(h, w2, NULL), frozen));
        ct_backward(loss);
        ck_assert_int_eq(log.n, 2);
        ck_assert_ptr_eq(log.order[0], w2); /* the later layer is ready first */
        ck_assert_ptr_eq(log.order[1], w1);
    }
}
END_TEST

START_TEST(grad_into_external_buffer) {
    float buf[6] = {0};
    CT_SCOPE {
        ct_tensor *w = leaf(CT_SHAPE(2, 3), 1, true);
        ct_set_grad_storage(w, buf);
        ct_backward(ct_sum(ct_mul_scalar(w, 2)));
        ck_assert_ptr_eq(ct_grad(w)->data, buf);
        ct_clear_grad(w); /* external grads are zeroed, not dropped */
        ck_assert_ptr_eq(ct_grad(w)->data, buf);
        ck_assert_float_eq(buf[0], 0);
        ct_backward(ct_sum(ct_mul_scalar(w, 2)));
    }
    for (int i = 0; i < 6; i++) ck_assert_float_eq(buf[i], 2);
}
END_TEST

/* One layer of an MLP, each in its own scope as Sequential does, so an intermediate dies
 * as soon as the next layer has used it unless a graph node saved it. */
static ct_tensor *mlp_forward(ct_tensor *x, ct_tensor **w, int layers) {
    ct_tensor *h = x;
    ct_retain(h);
    for (int l = 0; l < layers; l++) {
        size_t m = ct_scope_begin();
        ct_tensor *y = ct_exp(ct_mul_scalar(ct_linear(h, w[l], NULL), 0.01f));
        ct_retain(y);
        ct_scope_end(m);
        ct_release(h);
        h = y;
    }
    return ct_scope_adopt(h);
}

START_TEST(no_grad_forward_holds_only_output) {
    enum { L = 8, B = 32, D = 64 };
    CT_SCOPE {
        ct_tensor *w[L];
        for (int l = 0; l < L; l++) w[l] = leaf(CT_SHAPE(D, D), 10 + l, true);
        ct_tensor *x = leaf(CT_SHAPE(B, D), 1, false);
        int64_t base = ct_stats_get().live_bytes;
        int64_t out_bytes = B * D * 4;
        int64_t nograd_bytes = 0, grad_bytes = 0;
        CT_SCOPE {
            CT_NO_GRAD { mlp_forward(x, w, L); }
            nograd_bytes = ct_stats_get().live_bytes - base;
        }
        CT_SCOPE {
            mlp_forward(x, w, L);
            grad_bytes = ct_stats_get().live_bytes - base;
        }
        ck_assert_int_eq(ct_stats_get().live_bytes, base);
        ck_assert_int_eq(nograd_bytes, out_bytes); /* only the output survives */
        /* grad mode keeps every layer's exp output (saved by exp, and by the next linear
         * as its input for dW): L activations instead of 1 */
        ck_assert_int_eq(grad_bytes, (int64_t)L * out_bytes);
    }
}
END_TEST

START_TEST(step_returns_to_baseline) {
    CT_SCOPE {
        ct_tensor *w = leaf(CT_SHAPE(8, 8), 1, true), *x = leaf(CT_SHAPE(4, 8), 2, false);
        ct_stats base = {0};
        int64_t warm_mallocs = 0;
        for (int step = 0; step < 5; step++) {
            CT_SCOPE {
                ct_tensor *loss = ct_sum(ct_exp(ct_mul_scalar(ct_linear(x, w, NULL), 0.1f)));
                ct_backward(loss);
            }
            ct_zero_grad(w);
            ct_stats s = ct_stats_get();
            if (step == 0) base = s;
            ck_assert_int_eq(s.live_tensors, base.live_tensors);
            ck_assert_int_eq(s.live_bytes, base.live_bytes);
            ck_assert_int_eq(s.graph_nodes, 0);
            ck_assert_int_eq(s.saved_tensors, 0);
            /* after a warm-up step the caching allocator serves every request */
            if (step == 1) warm_mallocs = s.mallocs;
            if (step > 1) ck_assert_int_eq(s.mallocs, warm_mallocs);
        }
    }
}
END_TEST

START_TEST(scope_keep_and_own) {
    ct_tensor *kept = NULL, *owned = NULL;
    int64_t t0 = ct_stats_get().live_tensors;
    CT_SCOPE {
        CT_SCOPE {
            kept = ct_scope_keep(ct_zeros(CT_SHAPE(2)));
            owned = ct_own(ct_ones(CT_SHAPE(2)));
            ct_zeros(CT_SHAPE(3)); /* dropped at the end of the inner scope */
        }
        ck_assert_int_eq(ct_stats_get().live_tensors - t0, 2);
        ck_assert_float_eq(kept->data[1], 0);
    }
    ck_assert_int_eq(ct_stats_get().live_tensors - t0, 1);
    ck_assert_float_eq(owned->data[0], 1);
    ct_release(owned);
    ck_assert_int_eq(ct_stats_get().live_tensors, t0);
}
END_TEST

/* ---- ct_node_grad_in_fresh --------------------------------------------------------- */

/* y = 2x, an op whose backward takes the uninitialised-buffer path: it overwrites a
 * fresh gradient and accumulates into one that already holds contributions. It logs
 * what the engine told it. */
static bool fresh_log[8];
static int fresh_n;

static void scale2_backward(ct_node *n, const ct_tensor *gout) {
    bool fresh;
    ct_tensor *gx = ct_node_grad_in_fresh(n, 0, &fresh);
    if (!gx) return;
    fresh_log[fresh_n++ & 7] = fresh;
    for (int64_t i = 0; i < gx->numel; i++)
        gx->data[i] = (fresh ? 0 : gx->data[i]) + 2 * gout->data[i];
}

static ct_tensor *scale2(ct_tensor *x) {
    ct_tensor *y = ct_empty_like(x);
    for (int64_t i = 0; i < x->numel; i++) y->data[i] = 2 * x->data[i];
    CT_RECORD("scale2", scale2_backward, y, x);
    return y;
}

/* Several consumers of one non-leaf tensor t: only the first contribution (the latest
 * consumer, which the engine runs first) may be fresh; every later one, whether it comes
 * through ct_node_grad_in or the fresh variant, must see and add to the earlier sum. */
START_TEST(fresh_grad_only_for_first_contribution) {
    CT_SCOPE {
        ct_tensor *x = leaf(CT_SHAPE(5), 1, true);
        /* two fresh-path consumers: d/dx sum(2t) + 3 sum(2t) = 8 */
        fresh_n = 0;
        ct_tensor *t = ct_mul_scalar(x, 1);
        ct_backward(ct_add(ct_sum(scale2(t)), ct_mul_scalar(ct_sum(scale2(t)), 3)));
        ck_assert_int_eq(fresh_n, 2);
        ck_assert(fresh_log[0] && !fresh_log[1]);
        for (int i = 0; i < 5; i++) ck_assert_float_eq(ct_grad(x)->data[i], 8);
        ct_clear_grad(x);

        /* a zero-filling consumer runs first (created later), then the fresh-path one
         * must accumulate: 3 + 2 */
        fresh_n = 0;
        t = ct_mul_scalar(x, 1);
        ct_tensor *a = scale2(t), *b = ct_mul_scalar(t, 3);
        ct_backward(ct_add(ct_sum(a), ct_sum(b)));
        ck_assert_int_eq(fresh_n, 1);
        ck_assert(!fresh_log[0]);
        for (int i = 0; i < 5; i++) ck_assert_float_eq(ct_grad(x)->data[i], 5);
        ct_clear_grad(x);

        /* the fresh-path op's own output used twice (u + u): its gradient is 2 * 2 */
        fresh_n = 0;
        ct_tensor *u = scale2(ct_mul_scalar(x, 1));
        ct_backward(ct_sum(ct_add(u, u)));
        ck_assert_int_eq(fresh_n, 1);
        ck_assert(fresh_log[0]);
        for (int i = 0; i < 5; i++) ck_assert_float_eq(ct_grad(x)->data[i], 4);
    }
}
END_TEST

/* A leaf's .grad is fresh only when it does not exist: a second backward, a zeroed grad
 * and external storage all accumulate; after ct_clear_grad it is fresh again. */
START_TEST(fresh_leaf_grad_still_accumulates_across_backwards) {
    CT_SCOPE {
        ct_tensor *x = leaf(CT_SHAPE(4), 2, true);
        fresh_n = 0;
        ct_backward(ct_sum(scale2(x)));
        ct_backward(ct_sum(scale2(x)));
        ck_assert_int_eq(fresh_n, 2);
        ck_assert(fresh_log[0] && !fresh_log[1]);
        for (int i = 0; i < 4; i++) ck_assert_float_eq(ct_grad(x)->data[i], 4);
        ct_zero_grad(x);
        ct_backward(ct_sum(scale2(x)));
        ck_assert(!fresh_log[2]);
        for (int i = 0; i < 4; i++) ck_assert_float_eq(ct_grad(x)->data[i], 2);
        ct_clear_grad(x);
        ct_backward(ct_sum(scale2(x)));
        ck_assert(fresh_log[3]);
        for (int i = 0; i < 4; i++) ck_assert_float_eq(ct_grad(x)->data[i], 2);
        float buf[4] = {0};
        ct_set_grad_storage(x, buf); /* copies the current 2s in */
        ct_backward(ct_sum(scale2(x)));
        ck_assert(!fresh_log[4]);
        for (int i = 0; i < 4; i++) ck_assert_float_eq(buf[i], 4);
        ct_set_grad_storage(x, NULL);
    }
}
END_TEST

/* The same through real ops that take the fresh path (relu, batch_norm, max_pool2d):
 * two relus of one tensor, and one relu's output added to itself. */
START_TEST(fresh_path_ops_sum_over_consumers) {
    CT_SCOPE {
        ct_tensor *x = leaf(CT_SHAPE(2, 3, 4, 4), 3, true);
        ct_tensor *t = ct_mul_scalar(x, 1);
        ct_backward(ct_add(ct_sum(ct_relu(t)), ct_mul_scalar(ct_sum(ct_relu(t)), 2)));
        for (int64_t i = 0; i < x->numel; i++)
            ck_assert_float_eq(ct_grad(x)->data[i], x->data[i] > 0 ? 3 : 0);
        ct_tensor *y = ct_relu(x); /* leaf input: accumulates onto the 3s */
        ct_backward(ct_sum(ct_add(y, y)));
        for (int64_t i = 0; i < x->numel; i++)
            ck_assert_float_eq(ct_grad(x)->data[i], x->data[i] > 0 ? 5 : 0);
        /* max_pool2d and batch_norm on a shared input: sum of both consumers' gradients,
         * each checked against its own single-consumer backward */
        ct_clear_grad(x);
        ct_backward(ct_sum(ct_max_pool2d(ct_mul_scalar(x, 1), 2, 0, 0)));
        ct_tensor *g1 = ct_clone_data(ct_grad(x));
        ct_clear_grad(x);
        ct_tensor *wsum = ct_test_rand(CT_SHAPE(2, 3, 4, 4), -1, 1, 9);
        ct_backward(ct_sum(ct_mul(
            ct_batch_norm(ct_mul_scalar(x, 1), NULL, NULL, NULL, NULL, true, 0.1f, 1e-5f), wsum)));
        ct_tensor *g2 = ct_clone_data(ct_grad(x));
        ct_clear_grad(x);
        t = ct_mul_scalar(x, 1);
        ct_tensor *bn = ct_batch_norm(t, NULL, NULL, NULL, NULL, true, 0.1f, 1e-5f);
        ct_backward(ct_add(ct_sum(ct_max_pool2d(t, 2, 0, 0)), ct_sum(ct_mul(bn, wsum))));
        ct_tensor *g12 = ct_grad(x);
        for (int64_t i = 0; i < x->numel; i++)
            ck_assert_close(g12->data[i], g1->data[i] + g2->data[i], 1e-5);
    }
}
END_TEST

int main(void) {
    Suite *s = suite_create("autograd");
    TCase *tc = tcase_create("semantics");
    tcase_add_test(tc, no_grad_records_nothing);
    tcase_add_test(tc, grad_mode_nests_and_restores);
    tcase_add_test(tc, requires_grad_propagates);
    tcase_add_test_raise_signal(tc, requires_grad_on_nonleaf_aborts, SIGABRT);
    tcase_add_test(tc, frozen_layer_passes_gradient_through);
    tcase_add_test(tc, graph_freed_after_backward);
    tcase_add_test_raise_signal(tc, second_backward_aborts, SIGABRT);
    tcase_add_test(tc, retain_graph_allows_second_backward);
    tcase_add_test(tc, grad_accumulates_until_zeroed);
    tcase_add_test(tc, shared_input_sums_gradients);
    tcase_add_test(tc, detach_cuts_graph);
    tcase_add_test(tc, grad_hooks_fire_once_in_ready_order);
    tcase_add_test(tc, grad_into_external_buffer);
    tcase_add_test(tc, fresh_grad_only_for_first_contribution);
    tcase_add_test(tc, fresh_leaf_grad_still_accumulates_across_backwards);
    tcase_add_test(tc, fresh_path_ops_sum_over_consumers);
    suite_add_tcase(s, tc);
    TCase *tm = tcase_create("memory");
    tcase_add_test(tm, no_grad_forward_holds_only_output);
    tcase_add_test(tm, step_returns_to_baseline);
    tcase_add_test(tm, scope_keep_and_own);
    suite_add_tcase(s, tm);
    return ct_test_run(s);
}
