/* Loader throughput on an image folder (the loader_folder line of scripts/bench_loader.sh,
 * against torchvision's ImageFolder + DataLoader in scripts/bench_loader_torch.py):
 *
 *   bench_loader --dir DIR [--workers N] [--prefetch P] [--batch B] [--batches K]
 *                [--warmup W] [--transforms SPEC] [--repeats R]
 *
 * Decodes DIR as a data.format = folder RGB data set with the transforms (default
 * random_resized_crop:64,random_horizontal_flip) and ImageNet's per-channel normalisation,
 * through a one-rank shuffled sampler and the loader with N decoding threads, exactly as
 * `ctrain train` feeds a step. Each repeat starts an epoch and times K batches after W
 * untimed ones (the next epoch starts when the data set runs out); the best repeat's
 * images/s is printed as one JSON object. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ctrain.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void usage(void) {
    fprintf(stderr, "usage: bench_loader --dir DIR [--workers N] [--prefetch P] [--batch B] [--batches K] "
                    "[--warmup W] [--transforms SPEC] [--repeats R]\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *dir = NULL, *spec = "random_resized_crop:64,random_horizontal_flip";
    int workers = 0, prefetch = 2, batch = 64, batches = 20, warmup = 2, repeats = 1;
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc) usage();
        const char *k = argv[i], *v = argv[++i];
        if (!strcmp(k, "--dir")) dir = v;
        else if (!strcmp(k, "--transforms")) spec = v;
        else if (!strcmp(k, "--workers")) workers = atoi(v);
        else if (!strcmp(k, "--prefetch")) prefetch = atoi(v);
        else if (!strcmp(k, "--batch")) batch = atoi(v);
        else if (!strcmp(k, "--batches")) batches = atoi(v);
        else if (!strcmp(k, "--warmup")) warmup = atoi(v);
        else if (!strcmp(k, "--repeats")) repeats = atoi(v);
        else usage();
    }
    if (!dir || batch < 1 || batches < 1 || warmup < 0 || repeats < 1) usage();
    ct_dataset ds;
    ct_transforms tf;
    if (ct_dataset_from_folder(&ds, dir, NULL, 3) != CT_OK || ct_transforms_parse(spec, &tf) != CT_OK)
        ct_fatal("%s", ct_last_error());
    ct_dataset_set_transforms(&ds, &tf);
    ct_sampler *s;
    ct_sampler_opts so = {.n = ds.n, .world = 1, .rank = 0, .mode = CT_SHARD_DROP, .shuffle = true};
    ct_loader_opts lo = ct_loader_opts_default(batch);
    lo.workers = workers;
    lo.prefetch = prefetch;
    lo.norm_channels = 3;
    const float mean[3] = {0.485f, 0.456f, 0.406f}, std[3] = {0.229f, 0.224f, 0.225f};
    memcpy(lo.channel_mean, mean, sizeof mean);
    memcpy(lo.channel_std, std, sizeof std);
    lo.wrap = true; /* no epoch ends mid-run: every batch is full */
    ct_loader *l;
    if (ct_sampler_new(&s, &so) != CT_OK || ct_loader_new(&l, &ds, &lo) != CT_OK) ct_fatal("%s", ct_last_error());
    double best = 0;
    uint64_t epoch = 0;
    for (int r = 0; r < repeats; r++) {
        /* a fresh epoch per repeat, so every repeat starts with an empty ring, as torch's
         * iterator does */
        ct_loader_start(l, ct_sampler_epoch(s, epoch++), ct_sampler_size(s));
        double t0 = 0;
        for (int k = 0; k < warmup + batches; k++) {
            if (k == warmup) t0 = now();
            CT_SCOPE {
                ct_batch b;
                while (!ct_loader_next(l, &b)) /* the data set ran out: the next epoch */
                    ct_loader_start(l, ct_sampler_epoch(s, epoch++), ct_sampler_size(s));
                if (ct_loader_status(l) != CT_OK) ct_fatal("bench_loader: batch %d: %s", k, ct_last_error());
            }
        }
        double ips = (double)batches * batch / (now() - t0);
        if (ips > best) best = ips;
    }
    printf("{\"prog\":\"ctrain\", \"workers\":%d, \"prefetch\":%d, \"batch\":%d, \"batches\":%d, "
           "\"images\":%lld, \"sample\":[%lld, %lld, %lld], \"ips\":%.1f}\n",
           workers, prefetch, batch, batches, (long long)ds.n, (long long)ds.sample_shape[0],
           (long long)ds.sample_shape[1], (long long)ds.sample_shape[2], best);
    ct_loader_free(l);
    ct_sampler_free(s);
    ct_dataset_free(&ds);
    return 0;
}
