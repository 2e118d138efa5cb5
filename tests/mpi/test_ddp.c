/* DDP under mpirun (-np 2, -np 3). Every assertion is made on values reduced across ranks,
 * so all ranks pass or fail together and a failure cannot strand a rank in a collective. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctrain.h"
#include "parallel/internal.h"
#include "mpi_util.h"


/* The largest |a - b| / max(1, |b|) over all ranks' values. */
static double max_all(double v) {
    MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_DOUBLE, MPI_MAX, D.comm->mpi);
    return v;
}

/* True on every rank iff every rank has the same values in every parameter and buffer. */
static bool identical_across_ranks(ct_module *m) {
    int same = 1;
    for (int pass = 0; pass < 2; pass++) {
        ct_named l = pass ? ct_module_buffers(m) : ct_module_params(m, false);
        for (int i = 0; i < l.n; i++) {
            ct_tensor *t = l.tensors[i];
            float *mx = malloc((size_t)t->numel * sizeof *mx), *mn = malloc((size_t)t->numel * sizeof *mn);
            MPI_Allreduce(t->data, mx, (int)t->numel, MPI_FLOAT, MPI_MAX, D.comm->mpi);
            MPI_Allreduce(t->data, mn, (int)t->numel, MPI_FLOAT, MPI_MIN, D.comm->mpi);
            for (int64_t k = 0; k < t->numel; k++) same &= mx[k] == mn[k];
            free(mx);
            free(mn);
        }
        ct_named_free(&l);
    }
    MPI_Allreduce(MPI_IN_PLACE, &same, 1, MPI_INT, MPI_MIN, D.comm->mpi);
    return same;
}

static ct_module *small_mlp(uint64_t seed, int64_t hidden) {
    ct_rng r;
    ct_rng_seed(&r, seed);
    ct_module *m = ct_nn_sequential();
    ct_seq_add(m, NULL, ct_nn_linear(12, hidden, true, &r));
    ct_seq_add(m, NULL, ct_nn_tanh());
    ct_seq_add(m, NULL, ct_nn_linear(hidden, 16, true, &r));
    ct_seq_add(m, NULL, ct_nn_relu());
    ct_seq_add(m, NULL, ct_nn_linear(16, 5, true, &r));
    ct_module_pack(m);
    return m;
}

/* The global batch of step s (identical on every rank): x [rows, 12], y [rows]. */
static ct_tensor *global_batch(int step, int64_t rows, int64_t *y) {
    ct_rng r;
    ct_rng_seed(&r, 1000 + (uint64_t)step);
    ct_tensor *x = ct_rand_normal(CT_SHAPE(rows, 12), 0, 1, &r);
    for (int64_t i = 0; i < rows; i++) y[i] = (int64_t)ct_rng_below(&r, 5);
    return x;
}

/* Adam would make the equivalence test meaningless at 1e-5: it divides by sqrt(v), so a
 * gradient that is ~1e-9 by rounding (summed in a different order over ranks) becomes a
 * full lr-sized step. The comparisons use SGD, where rounding stays rounding. */
static ct_optim *make_optim(ct_module *m, bool nesterov) {
    ct_optim *o = ct_optim_new(ct_sgd_config(0.1, 0.9, 1e-4, nesterov));
    ct_named t = ct_module_params(m, false);
    ct_optim_add_group(o, t.n, (const char *const *)t.names, t.tensors, CT_OPTIM_DEFAULT, CT_OPTIM_DEFAULT);
    ct_named_free(&t);
    return o;
}

/* One training step: DDP on this rank's rows of the global batch, or (ddp == NULL) the
 * single-process reference on all of it. */
static double train_step(ct_module *m, ct_ddp *ddp, ct_optim *o, int step, int64_t per_rank) {
    int64_t rows = per_rank * D.size, y[1024];
    double lv = 0;
    CT_SCOPE {
        ct_tensor *x = global_batch(step, rows, y);
        int64_t lo = ddp ? D.rank * per_rank : 0, n = ddp ? per_rank : rows;
        ct_tensor *xs = ct_from_data(CT_SHAPE(n, 12), x->data + lo * 12);
        if (ddp && ct_ddp_prepare(ddp) != CT_OK) ck_abort_msg("%s", ct_last_error());
        ct_tensor *loss = ct_cross_entropy(ct_module_forward(m, xs), y + lo, CT_REDUCE_MEAN);
        ct_backward(loss);
        if (ddp) ct_ddp_finish(ddp);
        ct_optim_step(o);
        ct_optim_zero_grad(o);
        lv = loss->data[0];
    }
    return lv;
}

static double max_rel_diff(ct_module *a, ct_module *b) {
    ct_named la = ct_module_params(a, false), lb = ct_module_params(b, false);
    double worst = 0;
    for (int i = 0; i < la.n; i++)
        for (int64_t k = 0; k < la.tensors[i]->numel; k++) {
            double x = la.tensors[i]->data[k], y = lb.tensors[i]->data[k];
            double d = fabs(x - y) / fmax(1e-3, fabs(y));
            if (d > worst) worst = d;
        }
    ct_named_free(&la);
    ct_named_free(&lb);
    return worst;
}

/* The end of every comparison with the single-process reference: m (DDP) must match ref to
 * tol relative and be identical on every rank; then everything is freed. */
static void expect_matches_reference_tol(const char *what, double tol, ct_module *m, ct_module *ref, ct_optim *o,
                                         ct_optim *oref, ct_ddp *ddp) {
    double d = max_all(max_rel_diff(m, ref));
    ck_assert_msg(d <= tol, "%s: DDP differs from the single-process run by %g relative", what, d);
    ck_assert_msg(identical_across_ranks(m), "%s: parameters differ across ranks", what);
    ct_optim_free(o);
    ct_optim_free(oref);
    ct_ddp_free(ddp);
    ct_module_free(m);
    ct_module_free(ref);
}

static void expect_matches_reference(const char *what, ct_module *m, ct_module *ref, ct_optim *o,
                                     ct_optim *oref, ct_ddp *ddp) {
    expect_matches_reference_tol(what, 1e-5, m, ref, o, oref, ddp);
}

START_TEST(broadcast_then_identical_after_steps) {
    ct_module *m = small_mlp(100 + (uint64_t)D.rank, 32); /* a different init on every rank */
    ct_ddp *ddp = NULL;
    ck_assert_int_eq(ct_ddp_new(m, &D, NULL, &ddp), CT_OK);
    ck_assert(identical_across_ranks(m));
    ct_optim *o = make_optim(m, true);
    for (int s = 0; s < 5; s++) train_step(m, ddp, o, s, 8);
    ck_assert(identical_across_ranks(m));
    ct_optim_free(o);
    ct_ddp_free(ddp);
    ct_module_free(m);
}
END_TEST

/* The world as if its ranks sat on nodes of two (np 3: {0,1} and {2}): the nodes' leaders
 * then all-reduce through MPI, next to the shared memory within a node. */
static ct_dist two_rank_nodes(void) {
    ct_dist d = D;
    d.comm = ct_calloc(1, sizeof *d.comm); /* freed by ct_dist_free; timeout_s 0: wait forever */
    MPI_Comm_dup(D.comm->mpi, &d.comm->mpi);
    MPI_Comm_split(d.comm->mpi, D.rank / 2, D.rank, &d.comm->node);
    MPI_Comm_rank(d.comm->node, &d.local_rank);
    MPI_Comm_size(d.comm->node, &d.local_size);
    return d;
}

/* N ranks with a batch of B each == 1 process with a batch of N*B (requirement 5), over
 * three bucket layouts:
 * - default caps: 12*32+32+32*16+16+16*5+5 floats fit one bucket;
 * - 256 B / 1 KiB caps: several buckets, so several all-reduces overlap backward;
 * - a 2 KiB first bucket with hidden 64: the 4 KiB "1.weight" gradient closes its own
 *   bucket, so the layout is [2.*, 1.bias] [1.weight] [0.*] (a cap alone would give 2);
 * and each over the three ways a bucket travels: shared memory within the node, MPI only
 * (every rank its own node), and both (nodes of two ranks). */
START_TEST(equivalent_to_one_big_batch) {
    static const struct {
        const char *name;
        int64_t hidden;
        size_t first, cap;
        int min_buckets, max_buckets;
    } cases[] = {{"default", 32, 0, 0, 1, 1},
                 {"tiny buckets", 32, 256, 1024, 4, 99},
                 {"large gradient alone", 64, 2048, 1 << 20, 3, 3}};
    static const char *transports[] = {"shared memory", "MPI only", "nodes of two"};
    ct_dist nodes2 = two_rank_nodes();
    for (int c = 0; c < 3; c++)
        for (int t = 0; t < 3; t++) {
            char what[80];
            snprintf(what, sizeof what, "%s, %s", cases[c].name, transports[t]);
            bool nesterov = c == 1;
            ct_module *m = small_mlp(7, cases[c].hidden), *ref = small_mlp(7, cases[c].hidden);
            ct_ddp *ddp = NULL;
            ct_ddp_config cfg = ct_ddp_defaults();
            if (cases[c].cap) cfg.bucket_bytes = cases[c].cap, cfg.first_bucket_bytes = cases[c].first;
            cfg.shm = t != 1;
            ck_assert_int_eq(ct_ddp_new(m, t == 2 ? &nodes2 : &D, &cfg, &ddp), CT_OK);
            int nb = ct_ddp_get_stats(ddp).nbuckets;
            ck_assert_msg(nb >= cases[c].min_buckets && nb <= cases[c].max_buckets, "%s: %d buckets",
                          what, nb);
            ct_optim *o = make_optim(m, nesterov), *oref = make_optim(ref, nesterov);
            for (int s = 0; s < 6; s++) {
                train_step(m, ddp, o, s, 8);
                train_step(ref, NULL, oref, s, 8);
            }
            expect_matches_reference(what, m, ref, o, oref, ddp);
        }
    ct_dist_free(&nodes2);
}
END_TEST

static int64_t trainable_numel(ct_module *m) {
    ct_named t = ct_module_params(m, true);
    int64_t n = ct_named_numel(&t);
    ct_named_free(&t);
    return n;
}

START_TEST(frozen_parameters_are_never_sent) {
    ct_module *m = small_mlp(8, 32);
    ct_module_set_requires_grad(m, "0.*", false);
    ct_tensor *w0 = ct_module_find(m, "0.weight");
    ct_ddp *ddp = NULL;
    ck_assert_int_eq(ct_ddp_new(m, &D, NULL, &ddp), CT_OK);
    float *before = malloc((size_t)w0->numel * sizeof *before);
    memcpy(before, w0->data, (size_t)w0->numel * sizeof *before);
    ct_optim *o = make_optim(m, true);
    for (int s = 0; s < 4; s++) {
        train_step(m, ddp, o, s, 8);
        /* one rank has nothing to reduce */
        ck_assert_int_eq(ct_ddp_get_stats(ddp).bytes_reduced, D.size > 1 ? 4 * trainable_numel(m) : 0);
    }
    ck_assert_int_eq(trainable_numel(m), 32 * 16 + 16 + 16 * 5 + 5);
    ck_assert_int_eq(memcmp(before, w0->data, (size_t)w0->numel * sizeof *before), 0);
    ck_assert_ptr_null(ct_grad(w0));
    ck_assert_int_eq(ct_optim_state_params(o), 4); /* no state for the frozen layer */
    ck_assert(identical_across_ranks(m));
    free(before);
    ct_optim_free(o);
    ct_ddp_free(ddp);
    ct_module_free(m);
}
END_TEST

/* Freezing and unfreezing mid-training rebuilds the buckets collectively and still
 * matches the single-process run with the same schedule. */
START_TEST(freeze_and_unfreeze_mid_training) {
    ct_module *m = small_mlp(9, 32), *ref = small_mlp(9, 32);
    ct_ddp *ddp = NULL;
    ck_assert_int_eq(ct_ddp_new(m, &D, NULL, &ddp), CT_OK);
    ct_optim *o = make_optim(m, false), *oref = make_optim(ref, false);
    int64_t all = trainable_numel(m);
    for (int s = 0; s < 9; s++) {
        if (s == 3) {
            ct_module_set_requires_grad(m, "0.*,2.*", false);
            ct_module_set_requires_grad(ref, "0.*,2.*", false);
        }
        if (s == 6) {
            ct_module_set_requires_grad(m, "*", true);
            ct_module_set_requires_grad(ref, "*", true);
        }
        train_step(m, ddp, o, s, 8);
        train_step(ref, NULL, oref, s, 8);
        int64_t want = s >= 3 && s < 6 ? 4 * (16 * 5 + 5) : 4 * all;
        ck_assert_int_eq(ct_ddp_get_stats(ddp).bytes_reduced, D.size > 1 ? want : 0);
    }
    ck_assert_int_eq(ct_ddp_get_stats(ddp).rebuilds, 3);
    expect_matches_reference("freeze and unfreeze", m, ref, o, oref, ddp);
}
END_TEST

/* A freeze on one rank only is caught by the next prepare on every rank, over each way the
 * ranks agree (shared memory, MPI only, nodes of two); nothing is rebuilt, and once the
 * rank undoes it training goes on. */
START_TEST(freeze_on_one_rank_is_a_clear_error) {
    if (D.size == 1) return; /* nothing to differ from */
    ct_dist nodes2 = two_rank_nodes();
    for (int t = 0; t < 3; t++) {
        ct_module *m = small_mlp(12, 32);
        ct_ddp *ddp = NULL;
        ct_ddp_config cfg = ct_ddp_defaults();
        cfg.shm = t != 1;
        ck_assert_int_eq(ct_ddp_new(m, t == 2 ? &nodes2 : &D, &cfg, &ddp), CT_OK);
        ct_optim *o = make_optim(m, false);
        train_step(m, ddp, o, 0, 8);
        if (D.rank == D.size - 1) ct_module_set_requires_grad(m, "4.*", false);
        ck_assert_int_eq(ct_ddp_prepare(ddp), CT_ERR_MPI);
        ck_assert_msg(strstr(ct_last_error(), "trainable parameters differs across ranks"), "message: %s",
                      ct_last_error());
        ck_assert_int_eq(ct_ddp_get_stats(ddp).rebuilds, 1);
        ct_module_set_requires_grad(m, "4.*", true);
        train_step(m, ddp, o, 1, 8);
        ck_assert(identical_across_ranks(m));
        ct_optim_free(o);
        ct_ddp_free(ddp);
        ct_module_free(m);
    }
    ct_dist_free(&nodes2);
}
END_TEST

/* no_sync: two micro-batches accumulated locally, then one synced step == one step on the
 * two micro-batches together. */
START_TEST(no_sync_accumulates) {
    ct_module *m = small_mlp(10, 32), *ref = small_mlp(10, 32);
    ct_ddp *ddp = NULL;
    ck_assert_int_eq(ct_ddp_new(m, &D, NULL, &ddp), CT_OK);
    ct_optim *o = make_optim(m, false), *oref = make_optim(ref, false);
    int64_t B = 6, rows = 2 * B * D.size, y[1024];
    CT_SCOPE {
        ct_tensor *x = global_batch(0, rows, y);
        /* rank r's micro-batches are rows [2rB, 2rB + B) and [2rB + B, 2(r+1)B) */
        if (ct_ddp_prepare(ddp) != CT_OK) ck_abort_msg("%s", ct_last_error());
        for (int k = 0; k < 2; k++) {
            int64_t lo = (2 * D.rank + k) * B;
            ct_ddp_set_sync(ddp, k == 1);
            ct_tensor *xs = ct_from_data(CT_SHAPE(B, 12), x->data + lo * 12);
            ct_backward(ct_mul_scalar(ct_cross_entropy(ct_module_forward(m, xs), y + lo, CT_REDUCE_MEAN), 0.5f));
            if (k == 0) ck_assert_int_eq(ct_ddp_get_stats(ddp).bytes_reduced, 0);
        }
        ct_ddp_finish(ddp);
        ct_optim_step(o);
        ct_backward(ct_cross_entropy(ct_module_forward(ref, x), y, CT_REDUCE_MEAN));
        ct_optim_step(oref);
    }
    expect_matches_reference("no_sync accumulation", m, ref, o, oref, ddp);
}
END_TEST

START_TEST(model_mismatch_is_a_clear_error) {
    if (D.size == 1) return; /* nothing to differ from */
    /* rank 1 (the last rank) has a different hidden size */
    ct_module *m = small_mlp(11, D.rank == D.size - 1 ? 24 : 32);
    ct_ddp *ddp = NULL;
    ck_assert_int_eq(ct_ddp_new(m, &D, NULL, &ddp), CT_ERR_MPI);
    ck_assert_ptr_null(ddp);
    char want[64];
    snprintf(want, sizeof want, "on rank %d", D.size - 1);
    ck_assert_msg(strstr(ct_last_error(), want) && strstr(ct_last_error(), "0.weight [32, 12]"),
                  "message: %s", ct_last_error());
    ct_module_free(m);
    /* a difference in requires_grad alone is caught too */
    m = small_mlp(11, 32);
    if (D.rank == D.size - 1) ct_module_set_requires_grad(m, "4.bias", false);
    ck_assert_int_eq(ct_ddp_new(m, &D, NULL, &ddp), CT_ERR_MPI);
    ck_assert_msg(strstr(ct_last_error(), "4.bias") && strstr(ct_last_error(), "requires_grad"),
                  "message: %s", ct_last_error());
    ct_module_free(m);
}
END_TEST

START_TEST(bn_buffer_policies) {
    for (int pol = 0; pol < 2; pol++) {
        ct_module *bn = ct_nn_batchnorm1d(4);
        ct_ddp_config cfg = ct_ddp_defaults();
        cfg.buffers = pol ? CT_BUFFERS_BROADCAST : CT_BUFFERS_AVERAGE;
        ct_ddp *ddp = NULL;
        ck_assert_int_eq(ct_ddp_new(bn, &D, &cfg, &ddp), CT_OK);
        CT_SCOPE {
            ct_tensor *x = ct_full(CT_SHAPE(2, 4), 0);
            x->data[0] = x->data[4] = 0; /* channel 0: mean r on rank r */
            x->data[0] = (float)D.rank - 1, x->data[4] = (float)D.rank + 1;
            ct_module_forward(bn, x);
        }
        ct_ddp_sync_buffers(ddp);
        /* running_mean[0] = 0.1 * r on rank r: the average is 0.1 * (size - 1) / 2 */
        double want = pol ? 0 : 0.1 * (D.size - 1) / 2.0;
        double err = max_all(fabs(bn->buffers[0]->data[0] - want));
        ck_assert_msg(err < 1e-6, "policy %d: running_mean %g, want %g", pol, bn->buffers[0]->data[0], want);
        ct_ddp_free(ddp);
        ct_module_free(bn);
    }
}
END_TEST

/* Exact evaluation: every sample once, whatever the rank count, and the same numbers as
 * one process evaluating everything. */
START_TEST(exact_evaluation) {
    ct_dataset ds = {0};
    ck_assert_int_eq(ct_dataset_from_idx(&ds, "/usr/share/datasets/fashion-mnist", CT_SPLIT_TEST), CT_OK);
    ct_rng r;
    ct_rng_seed(&r, 12);
    ct_module *m = ct_nn_mlp(784, 10, &r);
    ct_loader_opts lo = ct_loader_opts_default(128);
    ct_eval_result all, one;
    ck_assert_int_eq(ct_dist_evaluate(&D, m, &ds, &lo, &all), CT_OK);
    ct_dist self;
    ck_assert_int_eq(ct_dist_from_comm(MPI_COMM_SELF, &self), CT_OK);
    ck_assert_int_eq(ct_dist_evaluate(&self, m, &ds, &lo, &one), CT_OK);
    ct_dist_free(&self);
    ck_assert_int_eq(all.samples, 10000);
    ck_assert_int_eq(one.samples, 10000);
    ck_assert_double_eq(all.accuracy, one.accuracy);
    ck_assert_double_eq_tol(all.loss, one.loss, 1e-6);
    ck_assert(ct_is_grad_enabled() && m->training); /* both restored */
    ct_module_free(m);
    ct_dataset_free(&ds);
}
END_TEST

/* ---- a ViT with all but its last encoder layer frozen (issue 11 req 4) ------------------- */

/* torchvision's VisionTransformer(8, 4, 2 layers, 2 heads, 8 wide, mlp 16), 1 channel, 5
 * classes. heads.head is zero at init (torchvision's), which would keep every gradient
 * behind it zero for the first step: it gets small non-zero values here. */
static ct_module *small_vit(uint64_t seed) {
    ct_vit_config c = {8, 4, 2, 2, 8, 16, 1, 5, 0, 0};
    ct_rng r;
    ct_rng_seed(&r, seed);
    ct_module *m = NULL;
    ck_assert_msg(ct_nn_vit(&c, &r, &m) == CT_OK, "%s", ct_last_error());
    ct_module_pack(m);
    ct_tensor *hw = ct_module_find(m, "heads.head.weight");
    for (int64_t i = 0; i < hw->numel; i++) hw->data[i] = (float)((i % 7) - 3) * 0.05f;
    return m;
}

#define VIT_FROZEN "conv_proj.*,class_token,encoder.pos_embedding,encoder.layers.encoder_layer_0.*"

/* The global batch of step s as images [rows, 1, 8, 8], labels in [0, 5). */
static ct_tensor *vit_batch(int step, int64_t rows, int64_t *y) {
    ct_rng r;
    ct_rng_seed(&r, 2000 + (uint64_t)step);
    ct_tensor *x = ct_rand_normal(CT_SHAPE(rows, 1, 8, 8), 0, 1, &r);
    for (int64_t i = 0; i < rows; i++) y[i] = (int64_t)ct_rng_below(&r, 5);
    return x;
}

/* The graph nodes a forward of m on rows [lo, lo + n) of step s's batch records, and the
 * GEMMs its backward runs: the whole model (prefix < 0), or only the layers after the
 * frozen prefix, run on the prefix's output (which must need no gradient). m must not be
 * under DDP (its gradients are cleared afterwards). */
static void vit_counts(ct_module *m, int prefix, int step, int64_t lo, int64_t n, int64_t *nodes,
                       int64_t *gemms) {
    int64_t y[256];
    CT_SCOPE {
        ct_tensor *x = vit_batch(step, lo + n, y);
        ct_tensor *xs = ct_from_data(CT_SHAPE(n, 1, 8, 8), x->data + lo * 64);
        if (prefix >= 0) {
            xs = ct_seq_forward_range(m, 0, prefix, xs);
            ck_assert(!xs->requires_grad);
        }
        ct_stats s0 = ct_stats_get();
        ct_tensor *out = prefix >= 0 ? ct_seq_forward_range(m, prefix, ct_seq_num_layers(m), xs)
                                     : ct_module_forward(m, xs);
        ct_tensor *loss = ct_cross_entropy(out, y + lo, CT_REDUCE_MEAN);
        *nodes = ct_stats_get().graph_nodes - s0.graph_nodes;
        int64_t g0 = ct_stats_get().gemm_calls;
        ct_backward(loss);
        *gemms = ct_stats_get().gemm_calls - g0;
    }
    ct_named t = ct_module_params(m, true);
    for (int i = 0; i < t.n; i++) ct_clear_grad(t.tensors[i]);
    ct_named_free(&t);
}

/* One step on this rank's rows (ddp) or on all rows (ddp == NULL, the reference); returns
 * the graph nodes its forward recorded and the GEMMs its backward ran. */
static void vit_step(ct_module *m, ct_ddp *ddp, ct_optim *o, int step, int64_t per_rank, int64_t *nodes,
                     int64_t *gemms) {
    int64_t rows = per_rank * D.size, y[256];
    CT_SCOPE {
        ct_tensor *x = vit_batch(step, rows, y);
        int64_t lo = ddp ? D.rank * per_rank : 0, n = ddp ? per_rank : rows;
        ct_tensor *xs = ct_from_data(CT_SHAPE(n, 1, 8, 8), x->data + lo * 64);
        if (ddp && ct_ddp_prepare(ddp) != CT_OK) ck_abort_msg("%s", ct_last_error());
        ct_stats s0 = ct_stats_get();
        ct_tensor *loss = ct_cross_entropy(ct_module_forward(m, xs), y + lo, CT_REDUCE_MEAN);
        *nodes = ct_stats_get().graph_nodes - s0.graph_nodes;
        int64_t g0 = ct_stats_get().gemm_calls;
        ct_backward(loss);
        *gemms = ct_stats_get().gemm_calls - g0;
        if (ddp) ct_ddp_finish(ddp);
        ct_optim_step(o);
        ct_optim_zero_grad(o);
    }
}

/* model.freeze by torchvision names, all but the last encoder layer: backward stops at
 * encoder_layer_0 (checked each step by counting nodes and GEMMs, and an unfrozen model
 * records more), only encoder_layer_1, encoder.ln and heads.head are all-reduced, frozen
 * parameters stay bit-identical, every rank ends with the same parameters, and DDP
 * matches one process on the whole batch. */
START_TEST(vit_all_but_last_layer_frozen) {
    ct_module *m = small_vit(13), *ref = small_vit(13), *full = small_vit(13);
    /* conv_proj 2, class_token, pos_embedding, encoder_layer_0's 12 */
    ck_assert_int_eq(ct_module_set_requires_grad(m, VIT_FROZEN, false), 16);
    ck_assert_int_eq(ct_module_set_requires_grad(ref, VIT_FROZEN, false), 16);
    /* conv_proj, encoder.embed, encoder.dropout, encoder_layer_0 */
    ck_assert_int_eq(ct_module_frozen_prefix(m), 4);
    ct_named all = ct_module_params(m, false);
    float **before = calloc((size_t)all.n, sizeof *before);
    int nfrozen = 0;
    for (int i = 0; i < all.n; i++) {
        if (all.tensors[i]->requires_grad) continue;
        nfrozen++;
        before[i] = malloc((size_t)all.tensors[i]->numel * sizeof(float));
        memcpy(before[i], all.tensors[i]->data, (size_t)all.tensors[i]->numel * sizeof(float));
    }
    ck_assert_int_eq(nfrozen, 16);
    /* what trains, by name: encoder_layer_1 (ln 2x8, in_proj 192+24, out_proj 64+8,
     * mlp 128+16+128+8), encoder.ln 2x8, heads.head 8x5+5 */
    ct_named tr = ct_module_params(m, true);
    ck_assert_int_eq(tr.n, 12 + 2 + 2);
    for (int i = 0; i < tr.n; i++)
        ck_assert_msg(!strncmp(tr.names[i], "encoder.layers.encoder_layer_1.", 31) ||
                          !strncmp(tr.names[i], "encoder.ln.", 11) || !strncmp(tr.names[i], "heads.head.", 11),
                      "%s trains", tr.names[i]);
    int64_t trainable = ct_named_numel(&tr);
    ck_assert_int_eq(trainable, 600 + 16 + 45);
    ct_named_free(&tr);

    /* the unfrozen model records more nodes and runs more GEMMs: the counts can tell */
    int64_t full_nodes, full_gemms, rest_nodes, rest_gemms, nodes, gemms;
    vit_counts(full, -1, 0, 0, 2, &full_nodes, &full_gemms);

    ct_ddp *ddp = NULL;
    ck_assert_int_eq(ct_ddp_new(m, &D, NULL, &ddp), CT_OK);
    ck_assert_int_eq(ct_ddp_get_stats(ddp).trainable_numel, trainable);
    ct_optim *o = make_optim(m, false), *oref = make_optim(ref, false);
    for (int s = 0; s < 5; s++) {
        /* the trainable rest alone, on this rank's rows, outside DDP */
        vit_counts(ref, 4, s, D.rank * 2, 2, &rest_nodes, &rest_gemms);
        ck_assert(rest_nodes > 0 && rest_gemms > 0);
        vit_step(m, ddp, o, s, 2, &nodes, &gemms);
        ck_assert_int_eq(nodes, rest_nodes);
        ck_assert_int_eq(gemms, rest_gemms);
        ck_assert_int_eq(ct_ddp_get_stats(ddp).bytes_reduced, D.size > 1 ? 4 * trainable : 0);
        vit_step(ref, NULL, oref, s, 2, &nodes, &gemms);
    }
    ck_assert_msg(rest_nodes < full_nodes && rest_gemms < full_gemms,
                  "frozen: %lld nodes %lld GEMMs, unfrozen: %lld, %lld", (long long)rest_nodes,
                  (long long)rest_gemms, (long long)full_nodes, (long long)full_gemms);
    ck_assert_int_eq(ct_optim_state_params(o), 16); /* no state for the frozen ones */
    for (int i = 0; i < all.n; i++) {
        ct_tensor *t = all.tensors[i];
        if (before[i])
            ck_assert_msg(!memcmp(before[i], t->data, (size_t)t->numel * sizeof(float)), "%s moved", all.names[i]);
        free(before[i]);
    }
    free(before);
    /* the last layer did train */
    ct_tensor *w1 = ct_module_find(m, "encoder.layers.encoder_layer_1.mlp.0.weight");
    ct_tensor *w1_init = ct_module_find(full, "encoder.layers.encoder_layer_1.mlp.0.weight");
    ck_assert(memcmp(w1->data, w1_init->data, (size_t)w1->numel * sizeof(float)) != 0);
    ct_named_free(&all);
    ct_module_free(full);
    /* 1e-4, not 1e-5: the gradient sums round differently over ranks, and five SGD steps
     * through attention and LayerNorm carry that further than through the MLP */
    expect_matches_reference_tol("ViT, all but the last layer frozen", 1e-4, m, ref, o, oref, ddp);
}
END_TEST

static Suite *make_suite(void) {
    Suite *s = suite_create("ddp");
    TCase *tc = tcase_create("ddp");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, broadcast_then_identical_after_steps);
    tcase_add_test(tc, equivalent_to_one_big_batch);
    tcase_add_test(tc, frozen_parameters_are_never_sent);
    tcase_add_test(tc, freeze_and_unfreeze_mid_training);
    tcase_add_test(tc, freeze_on_one_rank_is_a_clear_error);
    tcase_add_test(tc, no_sync_accumulates);
    tcase_add_test(tc, model_mismatch_is_a_clear_error);
    tcase_add_test(tc, bn_buffer_policies);
    tcase_add_test(tc, exact_evaluation);
    tcase_add_test(tc, vit_all_but_last_layer_frozen);
    suite_add_tcase(s, tc);
    return s;
}

int main(int argc, char **argv) { return ct_mpi_test_main(argc, argv, make_suite); }
