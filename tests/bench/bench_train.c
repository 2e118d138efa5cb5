/* Training and evaluation throughput of the built-in models, for comparison with the
 * PyTorch reference in scripts/bench_torch.py (scripts/bench.sh runs both and prints the
 * ratios). Runs under mpirun with any number of ranks, or alone as a one-rank job.
 *
 *   bench_train [--model mlp|cnn|resnet18|vit_tiny] [--mode train|eval|layers] [--steps N]
 *               [--warmup N] [--batch B] [--repeats R] [--data synthetic|fmnist|folder]
 *               [--data-dir DIR] [--workers N] [--freeze GLOBS] [--shm 0|1]
 *
 * Models: the built-in mlp and cnn (Fashion-MNIST shaped); resnet18, torchvision's with the
 * imagenet stem on 3x32x32 inputs; vit_tiny, the small ViT preset on 1x28x28 inputs (no
 * dropout). All with 10 classes, as scripts/bench_torch.py builds them.
 *
 * train:  the CLI's training step (ddp prepare, forward, cross_entropy, backward, ddp finish,
 *         Adam step, zero grad) with DDP over every rank; per-rank batch B.
 * eval:   eval mode + no_grad forward of a batch of B samples (one rank).
 * layers: the training step with per-layer timers: each leaf module's forward and each
 *         graph node's backward (by wrapping the function pointers, so the library is
 *         untouched); one rank.
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
    fprintf(stderr, "usage: bench_train [--model mlp|cnn|resnet18|vit_tiny] [--mode train|eval|layers] [--steps N] "
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
    if ((strcmp(o.model, "mlp") && strcmp(o.model, "cnn") && strcmp(o.model, "resnet18") && strcmp(o.model, "vit_tiny")) ||
        o.steps < 1 || o.warmup < 0 ||
        o.batch < 1 || o.repeats < 1 || (strcmp(o.data, "synthetic") && strcmp(o.data, "fmnist") && strcmp(o.data, "folder")) ||
        (strcmp(o.mode, "train") && strcmp(o.mode, "eval") && strcmp(o.mode, "layers")))
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
        CT_ASSERT(strcmp(o->model, "resnet18"), "bench_train: --model resnet18 takes 3x32x32 synthetic inputs only");
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
    bool rgb32 = !strcmp(o->model, "resnet18");
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

enum { MAXL = 512 }; /* leaf modules and graph nodes per step: ResNet-18 has about 200 nodes */

typedef struct {
    ct_module *m;
    const ct_module_ops *orig;
    ct_module_ops ops; /* orig with forward timed */
    char name[64];
    uint64_t out_seq; /* the node that made this layer's output in the current step */
} layer_timer;

typedef struct {
    ct_node *n;
    ct_backward_fn orig;
    int slot;  /* index into node_names */
    int layer; /* index into layers; nlayers stands for the loss */
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

static ct_tensor *timed_forward(ct_module *m, ct_tensor *x) {
    for (int i = 0; i < nlayers; i++) {
        if (layers[i].m != m) continue;
        double t0 = now();
        ct_tensor *y = layers[i].orig->forward(m, x);
        fwd_t[cur_step * MAXL + i] += now() - t0;
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
        mm->ops = &l->ops;
    }
    ct_named_free(&mods);
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
        nodes[nnodes++] = (node_timer){all[i], all[i]->backward, slot, layer};
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
    if (!strcmp(name, "resnet18")) {
        st = ct_nn_resnet(&(ct_resnet_config){.depth = 18, .in_channels = 3, .num_classes = 10,
                                              .stem = CT_RESNET_STEM_IMAGENET},
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
    if (!train || !strcmp(o.mode, "layers"))
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
        CT_ASSERT(fwd_t && bwd_t && node_t && ph, "bench: out of memory");
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
        /* every parameter in registration order (DDP's bucket order, reversed), for
         * scripts/scaling_model.py: name, elements, trainable */
        printf("}, \"params\":[");
        ct_named ps = ct_module_params(m, false);
        for (int i = 0; i < ps.n; i++)
            printf("%s[\"%s\", %lld, %s]", i ? ", " : "", ps.names[i], (long long)ps.tensors[i]->numel,
                   ps.tensors[i]->requires_grad ? "true" : "false");
        ct_named_free(&ps);
        printf("]}\n");
        for (int i = 0; i < nlayers; i++) layers[i].m->ops = layers[i].orig;
        free(fwd_t);
        free(bwd_t);
        free(node_t);
        free(ph);
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
