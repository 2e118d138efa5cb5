/* What the training loop reads: the data sets with the loader's options, or the feature
 * cache: the features of a frozen prefix of the model, computed once. */
#include <limits.h>
#include <string.h>

#include "cli.h"

/* Random transforms make every epoch's inputs differ: no feature cache then. */
static bool has_random_transform(const ct_config *c) {
    return strstr(c->data.train_transforms, "random") || strstr(c->data.test_transforms, "random");
}

/* The training loader's options: the evaluation's normalisation plus augmentation. */
static ct_loader_opts train_loader_opts(const ct_run *r) {
    const ct_config *c = &r->cfg;
    ct_loader_opts lo = ct_loader_opts_default(c->train.batch_size);
    lo.mean = (float)c->data.mean;
    lo.std = (float)c->data.std;
    lo.crop_pad = c->data.augment == CT_CFG_AUGMENT_CROP || c->data.augment == CT_CFG_AUGMENT_CROP_FLIP
                      ? c->data.crop_pad : 0;
    lo.hflip = c->data.augment == CT_CFG_AUGMENT_FLIP || c->data.augment == CT_CFG_AUGMENT_CROP_FLIP;
    lo.skip_bad = r->eval_opts.skip_bad;
    lo.workers = r->eval_opts.workers;
    lo.prefetch = r->eval_opts.prefetch;
    lo.norm_channels = r->eval_opts.norm_channels;
    memcpy(lo.channel_mean, r->eval_opts.channel_mean, sizeof lo.channel_mean);
    memcpy(lo.channel_std, r->eval_opts.channel_std, sizeof lo.channel_std);
    lo.wrap = true; /* a skipped file's place goes to another: every rank keeps its step count */
    lo.log = r->eval_opts.log;
    lo.log_ctx = r->eval_opts.log_ctx;
    return lo;
}

/* Feature cache: a frozen prefix that is a fixed function (no augmentation in front of it)
 * is run once over the data instead of every step, when its features fit the memory
 * budget (a frozen first conv alone would make 32 times the input). Staged unfreezing
 * could change the prefix, so it turns the cache off. */
ct_status ct_train_inputs_setup(ct_run *r, ct_train_inputs *in) {
    const ct_config *c = &r->cfg;
    in->lo = train_loader_opts(r);
    in->eval_lo = r->eval_opts;
    in->train = &r->train;
    in->test = &r->test;
    ct_module_train(r->model, true);
    bool augment = in->lo.crop_pad > 0 || in->lo.hflip || has_random_transform(c);
    int fixed = c->train.feature_cache == CT_CFG_CACHE_AUTO ? ct_module_frozen_prefix(r->model) : 0;
    bool skipping = r->train.files && in->lo.skip_bad; /* the cache needs every sample's features */
    const char *why_off = augment ? "data augmentation is on"
                          : skipping ? "data.on_bad = skip"
                          : c->train.unfreeze_after ? "staged unfreezing is configured" : NULL;
    char why_buf[256];
    if (fixed > 0 && !why_off) {
        double n = (double)(r->train.n + r->test.n), f = (double)ct_dist_cache_numel(r->model, fixed, &r->train);
        double mib = n * f * 4 / 1048576;
        if (mib > c->train.feature_cache_max_mb || (double)r->train.n * f > INT_MAX) {
            snprintf(why_buf, sizeof why_buf,
                     "the features of the frozen prefix (the model's first %d layers) would take %.0f MiB "
                     "per rank (train.feature_cache_max_mb = %d; at most %d floats per data set)",
                     fixed, mib, c->train.feature_cache_max_mb, INT_MAX);
            why_off = why_buf;
        }
    }
    in->prefix = why_off ? 0 : fixed;
    in->nlayers = ct_seq_num_layers(r->model);
    if (in->prefix == 0) {
        if (r->d.rank == 0 && fixed > 0) fprintf(stderr, "ctrain: feature cache off: %s\n", why_off);
        return CT_OK;
    }
    double t0 = ct_now();
    ct_status st = ct_dist_cache_features(&r->d, r->model, in->prefix, &r->train, &in->lo, &in->train_feat);
    if (st == CT_OK)
        st = ct_dist_cache_features(&r->d, r->model, in->prefix, &r->test, &r->eval_opts, &in->test_feat);
    if ((st = ct_run_check(&r->d, st)) != CT_OK) return st;
    in->train = &in->train_feat;
    in->test = &in->test_feat;
    /* the features are already normalised model activations */
    in->lo = ct_loader_opts_default(c->train.batch_size);
    in->eval_lo = ct_loader_opts_default(c->train.eval_batch_size);
    if (r->d.rank == 0) {
        fprintf(stderr, "ctrain: feature cache on: the frozen prefix (the model's first %d layers) "
                "runs once; %lld features per sample for %lld + %lld samples, %.0f MiB per rank, %.1f s\n",
                in->prefix, (long long)in->train_feat.sample_numel, (long long)in->train_feat.n,
                (long long)in->test_feat.n,
                (double)(in->train_feat.n + in->test_feat.n) * (double)in->train_feat.sample_numel * 4 / 1048576,
                ct_now() - t0);
    }
    return CT_OK;
}


void ct_train_inputs_free(ct_train_inputs *in) {
    ct_dataset_free(&in->train_feat);
    ct_dataset_free(&in->test_feat);
}
