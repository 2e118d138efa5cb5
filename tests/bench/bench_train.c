/* Training and evaluation throughput of the built-in models, for comparison with the
 * PyTorch reference in scripts/bench_torch.py (scripts/bench.sh runs both and prints the
 * ratios). Runs under mpirun with any number of ranks, or alone as a one-rank job.
 *
 *   bench_train [--model mlp|cnn|resnet18|resnet18_small|vit_tiny]
 *               [--mode train|eval|layers|gflops] [--steps N] [--warmup N] [--batch B]
 *               [--repeats R] [--data synthetic|fmnist|folder] [--data-dir DIR] [--workers N]
 *               [--freeze GLOBS] [--shm 0|1]
 *
 * Models: the built-in mlp and cnn (Fashion-MNIST shaped); resnet18, torchvision's with the
 * imagenet stem on 3x32x32 inputs (resnet18_small: the 3x3 stride-1 stem); vit_tiny, the
 * small ViT preset on 1x28x28 inputs (no dropout). All with 10 classes, as
 * scripts/bench_torch.py builds them.
 *
 * train:  the CLI's training step (ddp prepare, forward, cross_entropy, backward, ddp finish,
 *         Adam step, zero grad) with DDP over every rank; per-rank batch B.
 * eval:   eval mode + no_grad forward of a batch of B samples (one rank).
 * layers: the training step with per-layer timers: each leaf module's forward and each
 *         graph node's backward (by wrapping the function pointers, so the library is
 *         untouched); one rank. Also each op's share of the step ("ops": forward by the
 *         leaf module's op, backward by graph node op; "other" is the rest of the step).
 * gflops: the training step's useful FLOP rate (direct-convolution and linear FLOPs counted
 *         from the shapes, whatever algorithm runs) against the sgemm rate of a 1024^3
 *         product in the same process: rounds alternate both, the best of each is kept.
 * Data: synthetic (default) cycles 8 in-memory batches of N(0, 1) features and uniform
 * labels in the model's input shape, so no loader cost is timed (the PyTorch side does
 * the same); fmnist runs the
 * CLI's input path instead: Fashion-MNIST from IDX through the sampler and the loader with
 * normalisation, which is what the peak-RSS run uses; folder the same from a folder tree of
 * gray images (scripts/fmnist_to_images.py's PNG tree) decoded by the loader with N
 * --workers, as `ctrain train` with data.format = folder and data.workers = N.
 * Each repeat times `steps` steps after `warmup` untimed ones; the best repeat (highest
 * samples/s; the machine is shared and noisy) is reported, its phase times averaged over
 * ranks. Prints one JSON object on rank 0. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "ctrain.h"
#include "parallel/internal.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double max_rss_mib(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0; /* KiB on Linux */
}

typedef struct {
    const char *model, *mode, *data, *data_dir, *freeze;
    int steps, warmup, batch, repeats, workers, shm;
} opts;

static void usage(void) {
    fprintf(stderr, "usage: bench_train [--model mlp|cnn|resnet18|resnet18_small|vit_tiny] "
                    "[--mode train|eval|layers|gflops] [--steps N] "
                    "[--warmup N] [--batch B] [--repeats R] [--data synthetic|fmnist|folder] [--data-dir DIR] "
                    "[--freeze GLOBS] [--workers N] [--shm 0|1]\n");
    exit(2);
}

static opts parse(int argc, char **argv) {
    opts o = {"cnn", "train", "synthetic", CT_FASHION_MNIST_DIR, NULL, 50, 5, 64, 3, 0, 1};
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc) usage();
        const char *k = argv[i], *v = argv[++i];
        if (!strcmp(k, "--model")) o.model = v;
        else if (!strcmp(k, "--mode")) o.mode = v;
        else if (!strcmp(k, "--data")) o.data = v;
        else if (!strcmp(k, "--data-dir")) o.data_dir = v;
        else if (!strcmp(k, "--freeze")) o.freeze = v;
        else if (!strcmp(k, "--steps")) o.steps = atoi(v);
        else if (!strcmp(k, "--warmup")) o.warmup = atoi(v);
        else if (!strcmp(k, "--batch")) o.batch = atoi(v);
        else if (!strcmp(k, "--repeats")) o.repeats = atoi(v);
        else if (!strcmp(k, "--workers")) o.workers = atoi(v);
        else if (!strcmp(k, "--shm")) o.shm = atoi(v);
        else usage();
    }
    if ((strcmp(o.model, "mlp") && strcmp(o.model, "cnn") && strcmp(o.model, "resnet18") &&
         strcmp(o.model, "resnet18_small") && strcmp(o.model, "vit_tiny")) ||
        o.steps < 1 || o.warmup < 0 ||
        o.batch < 1 || o.repeats < 1 || (strcmp(o.data, "synthetic") && strcmp(o.data, "fmnist") && strcmp(o.data, "folder")) ||
        (strcmp(o.mode, "train") && strcmp(o.mode, "eval") && strcmp(o.mode, "layers") &&
         strcmp(o.mode, "gflops")))
        usage();
    return o;
}

/* ---- input batches ------------------------------------------------------------------------- */

enum { NSYN = 8 };

typedef struct {
    bool real;
    /* synthetic */
    ct_tensor *x[NSYN];
    int64_t *y[NSYN];
    int next;
    /* real */
    ct_dataset ds;
    ct_sampler *sampler;
    ct_loader *loader;
    int64_t shard, batch;
    uint64_t epoch;
} source;

static void source_init(source *s, const opts *o, const ct_dist *d) {
    memset(s, 0, sizeof *s);
    if (strcmp(o->data, "synthetic")) {
        CT_ASSERT(strncmp(o->model, "resnet", 6), "bench_train: --model resnet18* takes 3x32x32 synthetic inputs only");
        s->real = true;
        ct_status st = !strcmp(o->data, "fmnist") ? ct_dataset_from_idx(&s->ds, o->data_dir, CT_SPLIT_TRAIN)
                                                  : ct_dataset_from_folder(&s->ds, o->data_dir, NULL, 1);
        if (st != CT_OK) ct_fatal("%s", ct_last_error());
        if (!strcmp(o->model, "mlp") && ct_dataset_reshape(&s->ds, 1, (int64_t[]){784}) != CT_OK)
            ct_fatal("%s", ct_last_error());
        ct_sampler_opts so = {.n = s->ds.n, .world = d->size, .rank = d->rank, .mode = CT_SHARD_DROP,
                              .shuffle = true, .seed = 0};
        ct_loader_opts lo = ct_loader_opts_default(o->batch);
        lo.mean = 0.2860f; /* examples/fmnist_*.ini */
        lo.std = 0.3530f;
        lo.workers = o->workers;
        if (ct_sampler_new(&s->sampler, &so) != CT_OK || ct_loader_new(&s->loader, &s->ds, &lo) != CT_OK)
            ct_fatal("%s", ct_last_error());
        s->shard = ct_sampler_size(s->sampler);
        s->batch = o->batch;
        CT_ASSERT(s->shard >= s->batch, "bench_train: --batch %d is larger than a rank's shard (%lld)",
                  o->batch, (long long)s->shard);
        ct_loader_start(s->loader, ct_sampler_epoch(s->sampler, s->epoch), s->shard);
        return;
    }
    ct_rng rng;
    ct_rng_seed(&rng, 1000 + (uint64_t)d->rank);
    bool rgb32 = !strncmp(o->model, "resnet", 6);
    for (int i = 0; i < NSYN; i++) {
        s->x[i] = !strcmp(o->model, "mlp") ? ct_own(ct_rand_normal(CT_SHAPE(o->batch, 784), 0, 1, &rng))
                  : rgb32                  ? ct_own(ct_rand_normal(CT_SHAPE(o->batch, 3, 32, 32), 0, 1, &rng))
                                           : ct_own(ct_rand_normal(CT_SHAPE(o->batch, 1, 28, 28), 0, 1, &rng));
        s->y[i] = malloc((size_t)o->batch * sizeof(int64_t));
        for (int k = 0; k < o->batch; k++) s->y[i][k] = (int64_t)ct_rng_below(&rng, 10);
    }
}

/* The next batch; x belongs to the caller's open scope when real (the loader's contract). */
static void source_next(source *s, ct_tensor **x, const int64_t **y) {
    if (!s->real) {
        *x = s->x[s->next];
        *y = s->y[s->next];
        s->next = (s->next + 1) % NSYN;
        return;
    }
    ct_batch b;
    /* Full batches only (drop_last), starting a new epoch when the shard runs out. */
    while (!ct_loader_next(s->loader, &b) || b.size < s->batch)
        ct_loader_start(s->loader, ct_sampler_epoch(s->sampler, ++s->epoch), s->shard);
    *x = b.x;
    *y = b.y;
}

static void source_free(source *s) {
    for (int i = 0; i < NSYN; i++) {
        if (s->x[i]) ct_release(s->x[i]);
        free(s->y[i]);
    }
    ct_loader_free(s->loader);
    ct_sampler_free(s->sampler);
    ct_dataset_free(&s->ds);
}

/* ---- per-layer timers (layers mode) ---------------------------------------------------------- */

enum { MAXL = 512, MAXOPS = 32 }; /* leaf modules and graph nodes per step: ResNet-18 has about 200 nodes */

typedef struct {
    ct_module *m;
    const ct_module_ops *orig;
    ct_module_ops ops; /* orig with forward timed */
    char name[64];
    uint64_t out_seq; /* the node that made this layer's output in the current step */
    int op;           /* index into op_names */
    int op_relu;      /* the same for its fused forward with a ReLU (ct_module_forward_relu) */
} layer_timer;

typedef struct {
    ct_node *n;
    ct_backward_fn orig;
    int slot;  /* index into node_names */
    int layer; /* index into layers; nlayers stands for the loss */
    int op;    /* index into op_names */
} node_timer;

static layer_timer layers[MAXL];
static int nlayers;
static node_timer nodes[MAXL];
static int nnodes;
static char node_names[MAXL][48];
static int nslots;
static bool timing_layers;
/* Per-step times, [step * MAXL + i]: i a layer, or nlayers for the loss (fwd_t, bwd_t), or a
 * node name slot (node_t). Medians over steps are reported, robust to preemption. */
static double *fwd_t, *bwd_t, *node_t;
static int cur_step;
/* Per-op times, [step * MAXOPS + op], forward (by the leaf module's op) and backward (by
 * the node's op), and the ops' names: the graph's op names, a module type mapped to the op
 * it records. Ops that run outside any leaf module (a block's residual add) are timed in
 * backward only; their forward falls in "other". */
static double *op_fwd_t, *op_bwd_t;
static char op_names[MAXOPS][32];
static int nops;
/* Useful FLOPs of the current step: 2 multiply-adds per weight use of each Conv2d (direct
 * convolution) and Linear, for the forward, dW, and dX where the input needs a gradient. */
static double step_flops;

static int op_index(const char *name) {
    for (int i = 0; i < nops; i++)
        if (!strcmp(op_names[i], name)) return i;
    CT_ASSERT(nops < MAXOPS, "bench: too many ops");
    snprintf(op_names[nops], sizeof op_names[nops], "%s", name);
    return nops++;
}

/* The op a leaf module's forward records (its type otherwise). */
static const char *module_op(const char *type) {
    static const char *map[][2] = {{"Conv2d", "conv2d"}, {"BatchNorm2d", "batch_norm"}, {"BatchNorm1d", "batch_norm"},
                                   {"ReLU", "relu"}, {"MaxPool2d", "max_pool2d"}, {"AvgPool2d", "avg_pool2d"},
                                   {"AdaptiveAvgPool2d", "adaptive_avg_pool2d"}, {"Linear", "linear"},
                                   {"Dropout", "dropout"}, {"Flatten", "flatten"}, {"GELU", "gelu"},
                                   {"LayerNorm", "layer_norm"}};
    for (size_t i = 0; i < sizeof map / sizeof *map; i++)
        if (!strcmp(map[i][0], type)) return map[i][1];
    return type;
}

/* Adds the FLOPs of one forward of module m (x in, y out) and its backward to step_flops. */
static void count_flops(ct_module *m, const ct_tensor *x, const ct_tensor *y) {
    const char *type = ct_module_type(m);
    if (strcmp(type, "Conv2d") && strcmp(type, "Linear")) return;
    const ct_tensor *w = m->params[0];
    double per_out = (double)(w->numel / w->shape[0]); /* C/groups*kh*kw or in */
    double f = 2.0 * (double)y->numel * per_out;
    bool dx = x->requires_grad || x->grad_fn;
    step_flops += f * (1 + (w->requires_grad ? 1 : 0) + (dx ? 1 : 0));
}

static ct_tensor *timed_forward(ct_module *m, ct_tensor *x) {
    for (int i = 0; i < nlayers; i++) {
        if (layers[i].m != m) continue;
        double t0 = now();
        ct_tensor *y = layers[i].orig->forward(m, x);
        double dt = now() - t0;
        if (fwd_t) {
            fwd_t[cur_step * MAXL + i] += dt;
            op_fwd_t[cur_step * MAXOPS + layers[i].op] += dt;
        }
        count_flops(m, x, y);
        layers[i].out_seq = y->grad_fn ? y->grad_fn->seq : 0;
        return y;
    }
    ct_fatal("bench: untimed module %s", ct_module_type(m));
}

/* forward_relu (BatchNorm + ReLU fused) of a timed layer, its time under the fused op. */
static ct_tensor *timed_forward_relu(ct_module *m, ct_tensor *x) {
    for (int i = 0; i < nlayers; i++) {
        if (layers[i].m != m) continue;
        double t0 = now();
        ct_tensor *y = layers[i].orig->forward_relu(m, x);
        double dt = now() - t0;
        if (fwd_t) {
            fwd_t[cur_step * MAXL + i] += dt;
            op_fwd_t[cur_step * MAXOPS + layers[i].op_relu] += dt;
        }
        layers[i].out_seq = y->grad_fn ? y->grad_fn->seq : 0;
        return y;
    }
    ct_fatal("bench: untimed module %s", ct_module_type(m));
}

static void timed_backward(ct_node *n, const ct_tensor *gout) {
    for (int i = 0; i < nnodes; i++) {
        if (nodes[i].n != n) continue;
        double t0 = now();
        nodes[i].orig(n, gout);
        double dt = now() - t0;
        node_t[cur_step * MAXL + nodes[i].slot] += dt;
        bwd_t[cur_step * MAXL + nodes[i].layer] += dt;
        op_bwd_t[cur_step * MAXOPS + nodes[i].op] += dt;
        return;
    }
    ct_fatal("bench: untimed node %s", n->op);
}

static void wrap_leaf_modules(ct_module *m) {
    ct_named mods = ct_module_modules(m);
    for (int i = 0; i < mods.n; i++) {
        ct_module *mm = mods.owners[i];
        if (mm->nchildren || nlayers == MAXL) continue;
        layer_timer *l = &layers[nlayers++];
        l->m = mm;
        /* the layer's own table with forward swapped for the timer */
        l->orig = mm->ops;
        l->ops = *mm->ops;
        l->ops.forward = timed_forward;
        snprintf(l->name, sizeof l->name, "%s %s", mods.names[i], ct_module_type(mm));
        l->op = op_index(module_op(ct_module_type(mm)));
        if (l->ops.forward_relu) {
            l->ops.forward_relu = timed_forward_relu;
            l->op_relu = op_index("batch_norm_relu");
        }
        mm->ops = &l->ops;
    }
    ct_named_free(&mods);
}

static void unwrap_leaf_modules(void) {
    for (int i = 0; i < nlayers; i++) layers[i].m->ops = layers[i].orig;
    nlayers = 0;
}

static int cmp_seq_desc(const void *a, const void *b) {
    uint64_t x = (*(ct_node *const *)a)->seq, y = (*(ct_node *const *)b)->seq;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* Wraps every node of this step's graph. Nodes are named "<op>#k", k counting nodes of the
 * same op in backward (reverse creation) order, so names are stable from step to step. A
 * node belongs to the first layer (forward order) whose output node was created no earlier
 * than it, so a layer that records several nodes gets all of them; later nodes are the
 * loss's. */
static void wrap_graph(ct_tensor *root) {
    ct_node *all[MAXL];
    int n = 0;
    ct_node *stack[MAXL];
    int sp = 0;
    if (root->grad_fn) stack[sp++] = root->grad_fn;
    while (sp) {
        ct_node *x = stack[--sp];
        bool seen = false;
        for (int i = 0; i < n; i++) seen |= all[i] == x;
        if (seen) continue;
        CT_ASSERT(n < MAXL, "bench: graph too large");
        all[n++] = x;
        for (int i = 0; i < x->ninputs; i++)
            if (x->next[i] && sp < MAXL) stack[sp++] = x->next[i];
    }
    qsort(all, (size_t)n, sizeof *all, cmp_seq_desc);
    nnodes = 0;
    for (int i = 0; i < n; i++) {
        int k = 0;
        for (int j = 0; j < i; j++) k += !strcmp(all[j]->op, all[i]->op);
        char name[48];
        snprintf(name, sizeof name, "%s#%d", all[i]->op, k);
        int slot = -1;
        for (int s = 0; s < nslots; s++)
            if (!strcmp(node_names[s], name)) slot = s;
        if (slot < 0) {
            CT_ASSERT(nslots < MAXL, "bench: too many node names");
            slot = nslots++;
            snprintf(node_names[slot], sizeof node_names[slot], "%s", name);
        }
        int layer = nlayers;
        for (int l = nlayers - 1; l >= 0; l--)
            if (layers[l].out_seq && layers[l].out_seq >= all[i]->seq) layer = l;
        nodes[nnodes++] = (node_timer){all[i], all[i]->backward, slot, layer, op_index(all[i]->op)};
        all[i]->backward = timed_backward;
    }
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The median over n values v[0], v[stride], ... */
static double median(const double *v, int n, int stride) {
    double *t = malloc((size_t)n * sizeof *t);
    CT_ASSERT(t, "bench: out of memory");
    for (int i = 0; i < n; i++) t[i] = v[(size_t)i * stride];
    qsort(t, (size_t)n, sizeof *t, cmp_double);
    double m = n % 2 ? t[n / 2] : (t[n / 2 - 1] + t[n / 2]) / 2;
    free(t);
    return m;
}

/* ---- the models --------------------------------------------------------------------------- */

static ct_module *build_model(const char *name, ct_rng *rng) {
    if (!strcmp(name, "mlp")) return ct_nn_mlp(784, 10, rng);
    if (!strcmp(name, "cnn")) return ct_nn_cnn(1, 28, 10, 0.25f, rng);
    ct_module *m = NULL;
    ct_status st;
    if (!strncmp(name, "resnet18", 8)) {
        st = ct_nn_resnet(&(ct_resnet_config){.depth = 18, .in_channels = 3, .num_classes = 10,
                                              .stem = strcmp(name, "resnet18") ? CT_RESNET_STEM_SMALL
                                                                               : CT_RESNET_STEM_IMAGENET},
                          rng, &m);
    } else {
        ct_vit_config c = {.in_channels = 1, .num_classes = 10, .dropout = 0, .attention_dropout = 0};
        st = ct_vit_preset(name, &c);
        if (st == CT_OK) st = ct_nn_vit(&c, rng, &m);
    }
    if (st != CT_OK) ct_fatal("%s", ct_last_error());
    return m;
}

/* ---- the step ---------------------------------------------------------------------------------- */

typedef struct {
    double prepare, fwd, bwd, wait, finish, optim, step;
} phases;

/* One training step as src/cli/train.c runs it. */
static void train_step(ct_module *m, ct_ddp *ddp, ct_optim *opt, source *src, phases *ph) {
    CT_SCOPE {
        double t0 = now();
        ct_tensor *x;
        const int64_t *y;
        source_next(src, &x, &y);
        double tp = now();
        if (ct_ddp_prepare(ddp) != CT_OK) ct_fatal("%s", ct_last_error());
        double t1 = now();
        ct_tensor *logits = ct_module_forward(m, x);
        double tl = now();
        ct_tensor *loss = ct_cross_entropy(logits, y, CT_REDUCE_MEAN);
        double t2 = now();
        if (timing_layers) {
            fwd_t[cur_step * MAXL + nlayers] += t2 - tl;
            op_fwd_t[cur_step * MAXOPS + op_index("cross_entropy")] += t2 - tl;
            wrap_graph(loss);
        }
        ct_backward(loss);
        double t3 = now();
        ct_ddp_finish(ddp);
        double t4 = now();
        ct_optim_step(opt);
        ct_ddp_zero_grad(ddp);
        double t5 = now();
        if (ph) {
            ph->prepare += t1 - tp;
            ph->fwd += t2 - t1;
            ph->bwd += t3 - t2;
            ph->wait += ct_ddp_get_stats(ddp).comm_wait_s;
            ph->finish += t4 - t3;
            ph->optim += t5 - t4;
            ph->step += t5 - t0;
        }
    }
}

/* "ops":[...]: each op's forward and backward ms (medians over steps), the optimizer's
 * (Adam and zero_grad), and "other" (the step less all of those: data, DDP, the forward of
 * ops outside leaf modules); share = ms / step ms. */
static void print_op_shares(const phases *ph, int steps) {
    const int pn = (int)(sizeof *ph / sizeof(double));
    double step = median(&ph->step, steps, pn), optim = median(&ph->optim, steps, pn);
    double *other = malloc((size_t)steps * sizeof *other); /* per step, then its median */
    CT_ASSERT(other, "bench: out of memory");
    for (int s = 0; s < steps; s++) {
        other[s] = ph[s].step - ph[s].optim;
        for (int i = 0; i < nops; i++) other[s] -= op_fwd_t[s * MAXOPS + i] + op_bwd_t[s * MAXOPS + i];
    }
    double rest = median(other, steps, 1);
    free(other);
    printf("\"ops\":[");
    for (int i = 0; i < nops; i++) {
        double f = median(op_fwd_t + i, steps, MAXOPS), b = median(op_bwd_t + i, steps, MAXOPS);
        printf("%s{\"op\":\"%s\", \"fwd_ms\":%.4f, \"bwd_ms\":%.4f, \"share\":%.4f}", i ? ", " : "",
               op_names[i], f * 1e3, b * 1e3, (f + b) / step);
    }
    printf(", {\"op\":\"optimizer\", \"fwd_ms\":0, \"bwd_ms\":0, \"ms\":%.4f, \"share\":%.4f}", optim * 1e3,
           optim / step);
    printf(", {\"op\":\"other\", \"fwd_ms\":0, \"bwd_ms\":0, \"ms\":%.4f, \"share\":%.4f}]", rest * 1e3,
           rest / step);
}

/* gflops mode: rounds alternate a single-thread 1024^3 sgemm (5 timed calls) and `steps`
 * training steps; the best rate of each is kept, so both sides see the same noise. The
 * step's FLOPs are counted once, from the shapes of one step with the modules wrapped. */
static void run_gflops(const opts *o, ct_module *m, ct_ddp *ddp, ct_optim *opt, source *src) {
    wrap_leaf_modules(m);
    step_flops = 0;
    train_step(m, ddp, opt, src, NULL);
    unwrap_leaf_modules();
    double flops = step_flops;
    enum { G = 1024 };
    float *a = malloc(sizeof(float) * G * G), *b = malloc(sizeof(float) * G * G), *c = malloc(sizeof(float) * G * G);
    CT_ASSERT(a && b && c, "bench: out of memory");
    for (int64_t i = 0; i < (int64_t)G * G; i++) a[i] = (float)(i % 7) * 0.1f, b[i] = (float)(i % 5) * 0.1f;
    double best_gemm = 0, best_step = 1e30;
    char all_g[256] = "", all_s[256] = "";
    for (int r = 0; r < o->repeats; r++) {
        ct_gemm_serial(false, false, G, G, G, 1, a, G, b, G, 0, c, G); /* warm */
        double t0 = now();
        for (int k = 0; k < 5; k++) ct_gemm_serial(false, false, G, G, G, 1, a, G, b, G, 0, c, G);
        double g = 5 * 2.0 * G * G * G / (now() - t0) * 1e-9;
        for (int s = 0; s < o->warmup; s++) train_step(m, ddp, opt, src, NULL);
        t0 = now();
        for (int s = 0; s < o->steps; s++) train_step(m, ddp, opt, src, NULL);
        double st = (now() - t0) / o->steps;
        snprintf(all_g + strlen(all_g), sizeof all_g - strlen(all_g), "%s%.1f", r ? ", " : "", g);
        snprintf(all_s + strlen(all_s), sizeof all_s - strlen(all_s), "%s%.2f", r ? ", " : "", st * 1e3);
        best_gemm = g > best_gemm ? g : best_gemm;
        best_step = st < best_step ? st : best_step;
    }
    double gf = flops / best_step * 1e-9;
    printf("{\"prog\":\"ctrain\", \"model\":\"%s\", \"mode\":\"gflops\", \"batch\":%d, \"threads\":%d, "
           "\"step_flops\":%.0f, \"step_ms\":%.3f, \"gflops\":%.2f, \"sgemm_gflops\":%.2f, \"fraction\":%.3f, "
           "\"step_ms_all\":[%s], \"sgemm_gflops_all\":[%s]}\n",
           o->model, o->batch, ct_get_threads(), flops, best_step * 1e3, gf, best_gemm, gf / best_gemm, all_s, all_g);
    free(a);
    free(b);
    free(c);
}

static void eval_step(ct_module *m, source *src) {
    CT_SCOPE {
        ct_tensor *x;
        const int64_t *y;
        source_next(src, &x, &y);
        CT_EVALUATE(m) { ct_module_forward(m, x); }
    }
}

int main(int argc, char **argv) {
    opts o = parse(argc, argv);
    ct_dist d;
    if (ct_dist_init(&argc, &argv, &d) != CT_OK) {
        fprintf(stderr, "bench_train: %s\n", ct_last_error());
        return 1;
    }
    ct_binding bind;
    if (ct_dist_bind(&d, &bind) != CT_OK) ct_fatal("%s", ct_last_error());
    double rss_start = max_rss_mib(); /* the process with MPI up, before model and data */
    bool train = strcmp(o.mode, "eval") != 0;
    if (!train || !strcmp(o.mode, "layers") || !strcmp(o.mode, "gflops"))
        CT_ASSERT(d.size == 1, "bench_train: --mode %s runs on one rank", o.mode);

    ct_rng rng;
    ct_rng_seed(&rng, 0);
    ct_module *m = build_model(o.model, &rng);
    /* --freeze GLOB: a frozen backbone, as the CLI's model.freeze (its BatchNorm then runs
     * on running statistics); no feature cache here, so the backbone's forward is timed */
    if (o.freeze && ct_module_set_requires_grad(m, o.freeze, false) == 0) ct_fatal("--freeze %s matches nothing", o.freeze);
    ct_module_pack(m); /* as the CLI does */
    source src;
    source_init(&src, &o, &d);
    ct_ddp *ddp = NULL;
    ct_optim *opt = NULL;
    if (train) {
        ct_ddp_config dc = ct_ddp_defaults();
        dc.shm = o.shm != 0; /* --shm 0: gradients through MPI even within the node (dist.shm = false) */
        if (ct_ddp_new(m, &d, &dc, &ddp) != CT_OK) ct_fatal("%s", ct_last_error());
        opt = ct_optim_new(ct_adam_config(1e-3, 0));
        ct_named ps = ct_module_params(m, true);
        ct_optim_add_group(opt, ps.n, (const char *const *)ps.names, ps.tensors, CT_OPTIM_DEFAULT,
                           CT_OPTIM_DEFAULT);
        ct_named_free(&ps);
    }

    if (!strcmp(o.mode, "layers")) {
        for (int s = 0; s < o.warmup; s++) train_step(m, ddp, opt, &src, NULL);
        wrap_leaf_modules(m);
        fwd_t = calloc((size_t)o.steps * MAXL, sizeof *fwd_t);
        bwd_t = calloc((size_t)o.steps * MAXL, sizeof *bwd_t);
        node_t = calloc((size_t)o.steps * MAXL, sizeof *node_t);
        phases *ph = calloc((size_t)o.steps, sizeof *ph);
        op_fwd_t = calloc((size_t)o.steps * MAXOPS, sizeof *op_fwd_t);
        op_bwd_t = calloc((size_t)o.steps * MAXOPS, sizeof *op_bwd_t);
        CT_ASSERT(fwd_t && bwd_t && node_t && ph && op_fwd_t && op_bwd_t, "bench: out of memory");
        timing_layers = true;
        for (cur_step = 0; cur_step < o.steps; cur_step++) train_step(m, ddp, opt, &src, &ph[cur_step]);
        timing_layers = false;
        const int pn = (int)(sizeof *ph / sizeof(double));
        printf("{\"prog\":\"ctrain\", \"model\":\"%s\", \"mode\":\"layers\", \"batch\":%d, \"steps\":%d, "
               "\"statistic\":\"median over steps\", \"step_ms\":%.3f, \"forward_ms\":%.3f, \"backward_ms\":%.3f, "
               "\"optim_ms\":%.3f, \"layers\":[",
               o.model, o.batch, o.steps, median(&ph->step, o.steps, pn) * 1e3,
               median(&ph->fwd, o.steps, pn) * 1e3, median(&ph->bwd, o.steps, pn) * 1e3,
               median(&ph->optim, o.steps, pn) * 1e3);
        for (int i = 0; i <= nlayers; i++)
            printf("%s{\"name\":\"%s\", \"fwd_ms\":%.4f, \"bwd_ms\":%.4f}", i ? ", " : "",
                   i < nlayers ? layers[i].name : "loss", median(fwd_t + i, o.steps, MAXL) * 1e3,
                   median(bwd_t + i, o.steps, MAXL) * 1e3);
        printf("], \"backward_nodes\":{");
        for (int i = 0; i < nslots; i++)
            printf("%s\"%s\":%.4f", i ? ", " : "", node_names[i], median(node_t + i, o.steps, MAXL) * 1e3);
        printf("}, \"step_flops\":%.0f, ", step_flops / o.steps);
        print_op_shares(ph, o.steps);
        /* every parameter in registration order (DDP's bucket order, reversed), for
         * scripts/scaling_model.py: name, elements, trainable */
        printf(", \"params\":[");
        ct_named ps = ct_module_params(m, false);
        for (int i = 0; i < ps.n; i++)
            printf("%s[\"%s\", %lld, %s]", i ? ", " : "", ps.names[i], (long long)ps.tensors[i]->numel,
                   ps.tensors[i]->requires_grad ? "true" : "false");
        ct_named_free(&ps);
        printf("]}\n");
        unwrap_leaf_modules();
        free(fwd_t);
        free(bwd_t);
        free(node_t);
        free(op_fwd_t);
        free(op_bwd_t);
        free(ph);
    } else if (!strcmp(o.mode, "gflops")) {
        run_gflops(&o, m, ddp, opt, &src);
    } else {
        double best_sps = 0;
        phases best = {0};
        char all[256] = "";
        for (int r = 0; r < o.repeats; r++) {
            for (int s = 0; s < o.warmup; s++) train ? train_step(m, ddp, opt, &src, NULL) : eval_step(m, &src);
            phases ph = {0};
            CT_CHECK_MPI(MPI_Barrier(d.comm->mpi));
            double t0 = now();
            for (int s = 0; s < o.steps; s++) train ? train_step(m, ddp, opt, &src, &ph) : eval_step(m, &src);
            double el = now() - t0;
            /* The slowest rank sets the pace; phases are averaged over ranks. */
            CT_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, &el, 1, MPI_DOUBLE, MPI_MAX, d.comm->mpi));
            CT_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, &ph, (int)(sizeof ph / sizeof(double)), MPI_DOUBLE, MPI_SUM, d.comm->mpi));
            double sps = (double)o.steps * o.batch * d.size / el;
            snprintf(all + strlen(all), sizeof all - strlen(all), "%s%.1f", r ? ", " : "", sps);
            if (sps > best_sps) best_sps = sps, best = ph;
        }
        double k = 1e3 / ((double)o.steps * d.size);
        if (d.rank == 0) {
            printf("{\"prog\":\"ctrain\", \"model\":\"%s\", \"mode\":\"%s\", \"data\":\"%s\", \"ranks\":%d, "
                   "\"batch\":%d, \"steps\":%d, \"repeats\":%d, \"sps\":%.1f, \"sps_all\":[%s]",
                   o.model, o.mode, o.data, d.size, o.batch, o.steps, o.repeats, best_sps, all);
            if (train)
                printf(", \"step_ms\":%.3f, \"prepare_ms\":%.3f, \"forward_ms\":%.3f, \"backward_ms\":%.3f, "
                       "\"comm_wait_ms\":%.3f, \"finish_ms\":%.3f, \"optim_ms\":%.3f",
                       best.step * k, best.prepare * k, best.fwd * k, best.bwd * k, best.wait * k, best.finish * k, best.optim * k);
            if (train) {
                ct_ddp_stats st = ct_ddp_get_stats(ddp);
                printf(", \"nbuckets\":%d, \"bytes_reduced\":%lld", st.nbuckets, (long long)st.bytes_reduced);
            }
            printf(", \"rss_start_mib\":%.1f, \"max_rss_mib\":%.1f}\n", rss_start, max_rss_mib());
            fflush(stdout);
        }
    }
    ct_optim_free(opt);
    ct_ddp_free(ddp);
    source_free(&src);
    ct_module_free(m);
    ct_dist_finalize(&d);
    ct_scope_shutdown();
    return 0;
}
