/* Core benchmarks (issue: core). One JSON object per line:
 *   linear_mlp      forward+backward through 784-256-128-10 at batch 64, GFLOP/s, against raw
 *                   sgemm on the same GEMM shapes in the same run;
 *   alloc           system mallocs per steady-state training step;
 *   nograd_forward  a conv net at batch 1000: forward time and bytes still alive while only
 *                   the output is held, with and without grad mode. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "ctrain.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

enum { B = 64 };
static const int64_t dims[] = {784, 256, 128, 10};

/* The GEMMs one MLP step performs: forward x W^T per layer, then dW for every layer and dX
 * for all but the first (the data needs no gradient). */
static double mlp_step_flops(void) {
    double f = 0;
    for (int l = 0; l < 3; l++) f += 2.0 * B * dims[l] * dims[l + 1] * (l == 0 ? 2 : 3);
    return f;
}

static double time_raw_sgemm(int reps, float **w, float **gw, float *x, float **act, float **gact) {
    double t0 = now();
    for (int r = 0; r < reps; r++) {
        const float *in = x;
        for (int l = 0; l < 3; l++) {
            ct_gemm(false, true, B, dims[l + 1], dims[l], 1, in, dims[l], w[l], dims[l], 0, act[l], dims[l + 1]);
            in = act[l];
        }
        for (int l = 2; l >= 0; l--) {
            const float *a = l ? act[l - 1] : x;
            ct_gemm(true, false, dims[l + 1], dims[l], B, 1, gact[l], dims[l + 1], a, dims[l], 0,
                    gw[l], dims[l]);
            if (l) ct_gemm(false, false, B, dims[l], dims[l + 1], 1, gact[l], dims[l + 1], w[l], dims[l], 0, gact[l - 1], dims[l]);
        }
    }
    return now() - t0;
}

static void bench_linear_mlp(void) {
    ct_rng rng;
    ct_rng_seed(&rng, 1);
    ct_module *m = ct_nn_mlp(784, 10, &rng);
    int64_t *y = malloc(B * sizeof *y);
    for (int i = 0; i < B; i++) y[i] = i % 10;
    ct_tensor *x = ct_own(ct_rand_uniform(CT_SHAPE(B, 784), 0, 1, &rng));
    ct_named ps = ct_module_params(m, false);
    /* raw sgemm on the same shapes, with scratch buffers of the same sizes */
    float *w[3], *gw[3], *act[3], *gact[3], *xr = calloc(B * 784, sizeof(float));
    for (int l = 0; l < 3; l++) {
        w[l] = calloc(dims[l] * dims[l + 1], sizeof(float));
        gw[l] = calloc(dims[l] * dims[l + 1], sizeof(float));
        act[l] = calloc(B * dims[l + 1], sizeof(float));
        gact[l] = calloc(B * dims[l + 1], sizeof(float));
    }
    /* The machine is shared and noisy: alternate short rounds of both and keep each one's
     * best, so both sides see the same noise. Round 0 warms up. */
    int reps = 100, rounds = 9;
    double t_ct = 1e30, t_raw = 1e30;
    for (int round = 0; round < rounds; round++) {
        double t0 = now();
        for (int r = 0; r < reps; r++) {
            CT_SCOPE { ct_backward(ct_cross_entropy(ct_module_forward(m, x), y, CT_REDUCE_MEAN)); }
            for (int i = 0; i < ps.n; i++) ct_zero_grad(ps.tensors[i]);
        }
        double tc = now() - t0, tr = time_raw_sgemm(reps, w, gw, xr, act, gact);
        if (round && tc < t_ct) t_ct = tc;
        if (round && tr < t_raw) t_raw = tr;
    }
    double flops = mlp_step_flops() * reps;
    printf("{\"bench\":\"linear_mlp\", \"gflops\":%.2f, \"sgemm_gflops\":%.2f, \"ratio_to_sgemm\":%.3f}\n",
           flops / t_ct * 1e-9, flops / t_raw * 1e-9, t_raw / t_ct);
    for (int l = 0; l < 3; l++) free(w[l]), free(gw[l]), free(act[l]), free(gact[l]);
    free(xr);
    free(y);
    ct_named_free(&ps);
    ct_release(x);
    ct_module_free(m);
}

/* A plain SGD step by hand keeps this benchmark about the core (no optimizer layer). */
static void bench_alloc(void) {
    ct_rng rng;
    ct_rng_seed(&rng, 2);
    ct_module *m = ct_nn_cnn(1, 28, 10, 0.25f, &rng);
    ct_named ps = ct_module_params(m, false);
    int64_t y[B];
    for (int i = 0; i < B; i++) y[i] = i % 10;
    ct_tensor *x = ct_own(ct_rand_uniform(CT_SHAPE(B, 1, 28, 28), 0, 1, &rng));
    int64_t before = 0;
    int steps = 20;
    for (int s = 0; s < steps + 3; s++) {
        if (s == 3) before = ct_stats_get().mallocs;
        CT_SCOPE { ct_backward(ct_cross_entropy(ct_module_forward(m, x), y, CT_REDUCE_MEAN)); }
        for (int i = 0; i < ps.n; i++) {
            ct_tensor *p = ps.tensors[i];
            for (int64_t k = 0; k < p->numel; k++) p->data[k] -= 0.01f * p->grad->data[k];
            ct_zero_grad(p);
        }
    }
    printf("{\"bench\":\"alloc\", \"mallocs_per_step\":%.3f}\n",
           (double)(ct_stats_get().mallocs - before) / steps);
    ct_named_free(&ps);
    ct_release(x);
    ct_module_free(m);
}

static void bench_nograd_forward(void) {
    ct_rng rng;
    ct_rng_seed(&rng, 3);
    ct_module *m = ct_nn_cnn(1, 28, 10, 0.25f, &rng);
    ct_module_train(m, false);
    ct_tensor *x = ct_own(ct_rand_uniform(CT_SHAPE(1000, 1, 28, 28), 0, 1, &rng));
    double ms[2] = {1e30, 1e30};
    int64_t retained[2] = {0};
    /* Alternating grad mode and no_grad, best of 5 each (after a warm-up of both). */
    for (int r = 0; r < 6; r++) {
        for (int grad = 0; grad < 2; grad++) {
            bool prev = ct_set_grad_enabled(grad);
            int64_t base = ct_stats_get().live_bytes;
            double t0 = now();
            CT_SCOPE {
                ct_module_forward(m, x);
                double t = (now() - t0) * 1e3;
                if (r && t < ms[grad]) ms[grad] = t;
                retained[grad] = ct_stats_get().live_bytes - base;
            }
            ct_set_grad_enabled(prev);
        }
    }
    printf("{\"bench\":\"nograd_forward\", \"grad_ms\":%.2f, \"nograd_ms\":%.2f, "
           "\"grad_retained_bytes\":%lld, \"nograd_retained_bytes\":%lld}\n",
           ms[1], ms[0], (long long)retained[1], (long long)retained[0]);
    ct_release(x);
    ct_module_free(m);
}

int main(void) {
    bench_linear_mlp();
    bench_alloc();
    bench_nograd_forward();
    ct_scope_shutdown();
    return 0;
}
