/* What every command sets up from its config: data, model, initial weights, freezing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

ct_status ct_run_check(const ct_dist *d, ct_status st) {
    int failed;
    st = ct_dist_agree(d, st, &failed);
    if (st != CT_OK && d->rank == failed) {
        if (d->size > 1)
            fprintf(stderr, "ctrain: rank %d: error: %s\n", d->rank, ct_last_error());
        else
            fprintf(stderr, "ctrain: error: %s\n", ct_last_error());
    }
    return st;
}

/* Records where split's largest label is (see ct_run.labels). */
static void note_labels(ct_run *r, ct_split split, const ct_dataset *ds) {
    const ct_config *c = &r->cfg;
    char *file = r->labels[split].file;
    size_t n = sizeof r->labels[split].file;
    if (c->data.format == CT_CFG_FORMAT_IDX) {
        /* the reader takes the plain file if present, else the .gz */
        snprintf(file, n, "%s/%s-labels-idx1-ubyte", c->data.dir, split == CT_SPLIT_TRAIN ? "train" : "t10k");
        if (access(file, F_OK) != 0 && strlen(file) + 3 < n) strcat(file, ".gz");
    } else {
        snprintf(file, n, "%s", split == CT_SPLIT_TRAIN ? c->data.train_y : c->data.test_y);
    }
    r->labels[split].max = -1;
    for (int64_t i = 0; i < ds->n; i++)
        if (ds->y[i] > r->labels[split].max) r->labels[split].max = ds->y[i], r->labels[split].sample = i;
}

ct_status ct_run_open_checkpoint(const ct_run *r, const char *path, ct_st_file **f) {
    ct_status st = ct_st_load(path, f);
    if (st != CT_OK || r->cfg.model.allow_nonfinite) return st;
    st = ct_ckpt_check_finite(*f);
    if (st == CT_OK) return st;
    ct_st_free(*f);
    *f = NULL;
    return ct_error(st, "%s (model.allow_nonfinite = true loads it anyway)", ct_last_error());
}

ct_status ct_run_explain_classes(const ct_run *r, ct_status st) {
    if (st != CT_ERR_SHAPE || strcmp(r->cfg.data.classes, "all") != 0 || r->labels[CT_SPLIT_TEST].max < 0)
        return st;
    return ct_error(st, "%s (the model has %lld classes because %s holds label %lld, at sample %lld)",
                    ct_last_error(), (long long)r->labels[CT_SPLIT_TEST].max + 1, r->labels[CT_SPLIT_TEST].file,
                    (long long)r->labels[CT_SPLIT_TEST].max, (long long)r->labels[CT_SPLIT_TEST].sample);
}

/* The training and test sets have different class counts: names the label file and the
 * sample whose label is beyond the other set's. */
static ct_status classes_differ(const ct_run *r) {
    int more = r->train.num_classes > r->test.num_classes ? CT_SPLIT_TRAIN : CT_SPLIT_TEST;
    int fewer = more == CT_SPLIT_TRAIN ? CT_SPLIT_TEST : CT_SPLIT_TRAIN;
    if (strcmp(r->cfg.data.classes, "all") != 0)
        return ct_error(CT_ERR_FORMAT, "with data.classes = %s the training set has %d classes but the test set %d",
                        r->cfg.data.classes, r->train.num_classes, r->test.num_classes);
    return ct_error(CT_ERR_FORMAT, "%s: sample %lld has label %lld, but the %s set's labels (%s) go up to %lld",
                    r->labels[more].file, (long long)r->labels[more].sample, (long long)r->labels[more].max,
                    fewer == CT_SPLIT_TRAIN ? "training" : "test", r->labels[fewer].file,
                    (long long)r->labels[fewer].max);
}

/* A folder or list data set. Both splits take the training split's classes whenever it is
 * configured (even for eval), so a label means the same class in every run. */
static ct_status load_images(ct_run *r, ct_split split, ct_dataset *ds) {
    const ct_config *c = &r->cfg;
    bool folder = c->data.format == CT_CFG_FORMAT_FOLDER;
    const char *train = folder ? c->data.train_dir : c->data.train_list;
    const char *src = split == CT_SPLIT_TRAIN ? train : folder ? c->data.test_dir : c->data.test_list;
    if (!*src)
        return ct_error(CT_ERR_CONFIG, "%s: data.format = %s needs data.%s_%s", r->cfg_path,
                        folder ? "folder" : "list", split == CT_SPLIT_TRAIN ? "train" : "test",
                        folder ? "dir" : "list");
    if (c->data.channels != 1 && c->data.channels != 3)
        return ct_error(CT_ERR_CONFIG, "%s: data.channels must be 1 (L) or 3 (RGB), got %d", r->cfg_path,
                        c->data.channels);
    ct_classes cls = {0};
    ct_status st = CT_OK;
    if (*train) st = folder ? ct_classes_from_folder(train, &cls) : ct_classes_from_list(train, &cls);
    if (st == CT_OK)
        st = folder ? ct_dataset_from_folder(ds, src, *train ? &cls : NULL, c->data.channels)
                    : ct_dataset_from_list(ds, src, *train ? &cls : NULL, c->data.channels);
    ct_classes_free(&cls);
    const char *spec = split == CT_SPLIT_TRAIN ? c->data.train_transforms : c->data.test_transforms;
    ct_transforms tf;
    if (st == CT_OK && *spec) {
        if (ct_transforms_parse(spec, &tf) != CT_OK)
            st = ct_error(CT_ERR_CONFIG, "%s: data.%s_transforms: %s", r->cfg_path,
                          split == CT_SPLIT_TRAIN ? "train" : "test", ct_last_error());
        else
            ct_dataset_set_transforms(ds, &tf);
    }
    return st;
}

/* data.channel_mean / data.channel_std: "0.485,0.456,0.406" into o (one per channel). */
static ct_status channel_norm(const ct_run *r, const ct_dataset *ds, ct_loader_opts *o) {
    const ct_config *c = &r->cfg;
    if (!*c->data.channel_mean && !*c->data.channel_std) return CT_OK;
    int64_t C = ds->sample_ndim == 3 ? ds->sample_shape[0] : -1;
    const char *spec[2] = {c->data.channel_mean, c->data.channel_std}, *key[2] = {"channel_mean", "channel_std"};
    float *dst[2] = {o->channel_mean, o->channel_std};
    for (int k = 0; k < 2; k++) {
        int n = 0;
        const char *p = spec[k];
        while (*p && n < CT_MAX_NORM_CHANNELS) {
            char *end;
            double v = strtod(p, &end);
            if (end == p || (*end && *end != ',') || !(k == 0 || v > 0)) break;
            dst[k][n++] = (float)v;
            p = *end ? end + 1 : end;
        }
        if (*p || n != C)
            return ct_error(CT_ERR_CONFIG, "%s: data.%s = '%s': needs %lld comma-separated numbers%s, one "
                            "per channel of the [C, H, W] samples", r->cfg_path, key[k], spec[k], (long long)C,
                            k ? " > 0" : "");
    }
    o->norm_channels = (int)C;
    return CT_OK;
}

void ct_run_log(void *ctx, const char *msg) {
    const ct_dist *d = ctx;
    fprintf(stderr, "ctrain: rank %d: %s\n", d->rank, msg);
}

static ct_status load_split(ct_run *r, ct_split split, ct_dataset *ds) {
    const ct_config *c = &r->cfg;
    ct_status st;
    bool images = c->data.format == CT_CFG_FORMAT_FOLDER || c->data.format == CT_CFG_FORMAT_LIST;
    if (c->data.format == CT_CFG_FORMAT_IDX) {
        st = ct_dataset_from_idx(ds, c->data.dir, split);
    } else if (c->data.format == CT_CFG_FORMAT_FOLDER || c->data.format == CT_CFG_FORMAT_LIST) {
        st = load_images(r, split, ds);
    } else {
        const char *x = split == CT_SPLIT_TRAIN ? c->data.train_x : c->data.test_x;
        const char *y = split == CT_SPLIT_TRAIN ? c->data.train_y : c->data.test_y;
        if (!*x || !*y)
            return ct_error(CT_ERR_CONFIG, "%s: data.format = npy needs data.%s_x and data.%s_y",
                            r->cfg_path, split == CT_SPLIT_TRAIN ? "train" : "test",
                            split == CT_SPLIT_TRAIN ? "train" : "test");
        st = ct_dataset_from_npy(ds, x, y);
    }
    if (st != CT_OK) return st;
    note_labels(r, split, ds);
    /* Class selection keeps the listed classes and renumbers them 0..k-1, so a head of k
     * outputs trains on them (the transfer-learning set-up). */
    bool keep[1024];
    int64_t nc = ds->num_classes;
    if (nc > 1024) return ct_error(CT_ERR_FORMAT, "data set has %lld classes (max 1024)", (long long)nc);
    st = ct_config_classes(c->data.classes, (int)nc, keep);
    if (st != CT_OK) return ct_error(st, "%s: %s", r->cfg_path, ct_last_error());
    int64_t list[1024];
    int k = 0;
    for (int64_t i = 0; i < nc; i++)
        if (keep[i]) list[k++] = i;
    if (k < nc) st = ct_dataset_keep_classes(ds, list, k, true);
    if (st == CT_OK && split == CT_SPLIT_TRAIN && c->data.per_class > 0)
        st = ct_dataset_few_shot(ds, c->data.per_class);
    /* In-memory images (IDX, NPY) take the deterministic transforms once, after the
     * selection above (folder and list data sets apply theirs as the loader decodes). */
    const char *spec = split == CT_SPLIT_TRAIN ? c->data.train_transforms : c->data.test_transforms;
    if (st == CT_OK && !images && *spec) {
        ct_transforms tf;
        st = ct_transforms_parse(spec, &tf);
        if (st == CT_OK) st = ct_dataset_transform_pixels(ds, &tf);
        if (st != CT_OK)
            st = ct_error(CT_ERR_CONFIG, "%s: data.%s_transforms = %s: %s", r->cfg_path,
                          split == CT_SPLIT_TRAIN ? "train" : "test", spec, ct_last_error());
    }
    return st;
}

/* "[1, 28, 28]" */
static const char *shape_str(const ct_dataset *ds) {
    static char buf[96];
    int k = snprintf(buf, sizeof buf, "[");
    for (int i = 0; i < ds->sample_ndim && k < 80; i++)
        k += snprintf(buf + k, sizeof buf - (size_t)k, "%s%lld", i ? ", " : "", (long long)ds->sample_shape[i]);
    snprintf(buf + k, sizeof buf - (size_t)k, "]");
    return buf;
}

static ct_status build_model(ct_run *r) {
    const ct_config *c = &r->cfg;
    const ct_dataset *ds = &r->test;
    ct_rng rng;
    ct_rng_seed(&rng, c->train.seed);
    r->classes = ds->num_classes;
    if (c->model.num_classes) {
        if (c->model.num_classes < ds->num_classes)
            return ct_error(CT_ERR_CONFIG, "%s: model.num_classes = %d but the data has %lld classes",
                            r->cfg_path, c->model.num_classes, (long long)ds->num_classes);
        r->classes = c->model.num_classes;
    }
    switch (c->model.name) {
    case CT_CFG_MODEL_MLP:
        r->model = ct_nn_mlp(ds->sample_numel, r->classes, &rng);
        return CT_OK;
    case CT_CFG_MODEL_CNN:
        if (ds->sample_ndim != 3 || ds->sample_shape[1] != ds->sample_shape[2] || ds->sample_shape[1] % 4)
            return ct_error(CT_ERR_CONFIG,
                            "%s: model.name = cnn needs square [C, H, W] samples with H divisible by 4, "
                            "the data set's are %s", r->cfg_path, shape_str(ds));
        r->model = ct_nn_cnn(ds->sample_shape[0], ds->sample_shape[1], r->classes,
                             (float)c->model.dropout, &rng);
        return CT_OK;
    case CT_CFG_MODEL_RESNET18:
    case CT_CFG_MODEL_RESNET34:
    case CT_CFG_MODEL_RESNET50: {
        int depth = c->model.name == CT_CFG_MODEL_RESNET18 ? 18 : c->model.name == CT_CFG_MODEL_RESNET34 ? 34 : 50;
        if (ds->sample_ndim != 3 || ds->sample_shape[0] != c->model.in_channels)
            return ct_error(CT_ERR_CONFIG,
                            "%s: model.name = resnet%d with model.in_channels = %d needs [%d, H, W] samples; "
                            "the data's are %d-dimensional with %lld in the first dimension",
                            r->cfg_path, depth, c->model.in_channels, c->model.in_channels,
                            ds->sample_ndim, (long long)ds->sample_shape[0]);
        ct_resnet_config rc = {.depth = depth, .in_channels = c->model.in_channels, .num_classes = r->classes,
                               .stem = c->model.stem == CT_CFG_STEM_SMALL ? CT_RESNET_STEM_SMALL
                                                                          : CT_RESNET_STEM_IMAGENET};
        ct_status st = ct_nn_resnet(&rc, &rng, &r->model);
        if (st != CT_OK) return ct_error(st, "%s: %s", r->cfg_path, ct_last_error());
        return CT_OK;
    }
    case CT_CFG_MODEL_CUSTOM: {
        ct_status st = ct_nn_from_spec(c->model.layers, ds->sample_ndim, ds->sample_shape,
                                       (float)c->model.dropout, &rng, &r->model);
        if (st != CT_OK) return ct_error(st, "%s: %s", r->cfg_path, ct_last_error());
        return CT_OK;
    }
    case CT_CFG_MODEL_VIT:
    case CT_CFG_MODEL_VIT_B_16:
    case CT_CFG_MODEL_VIT_B_32:
    case CT_CFG_MODEL_VIT_TINY: return ct_run_build_vit(r, &rng);
    }
    return ct_error(CT_ERR_CONFIG, "%s: bad model.name", r->cfg_path);
}

static ct_status init_from(ct_run *r) {
    const char *path = r->cfg.model.init_from;
    if (!*path) return CT_OK;
    ct_st_file *f = NULL;
    ct_status st = ct_run_open_checkpoint(r, path, &f);
    char *rep = NULL;
    if (st == CT_OK) {
        st = ct_ckpt_load_model_except(f, r->model, r->cfg.model.init_strict, r->cfg.model.init_exclude, &rep);
        /* the model was built for the data, so a shape mismatch is usually the data's */
        if (st == CT_ERR_SHAPE)
            st = ct_error(st, "%s (the model was built for samples of shape %s%s)", ct_last_error(),
                          shape_str(&r->test), ct_dataset_classes(&r->test) ? "; see data.channels" : "");
    }
    if (st == CT_OK && r->d.rank == 0)
        fprintf(stderr, "ctrain: init_from %s (%s): %s\n", path,
                r->cfg.model.init_strict ? "strict" : "non-strict", rep ? rep : "every tensor loaded");
    free(rep);
    ct_st_free(f);
    return st;
}

/* Every label must index one of the model's outputs: a custom model's classifier size is
 * the user's, and cross_entropy treats a label beyond it as misuse (an abort). One sample
 * of zeros through the model tells its output count. */
static ct_status check_labels_fit(ct_run *r) {
    const ct_dataset *ds = &r->test;
    int64_t shape[CT_MAX_DIMS] = {1};
    memcpy(shape + 1, ds->sample_shape, (size_t)ds->sample_ndim * sizeof *shape);
    int64_t outputs = 0;
    CT_EVALUATE(r->model) CT_SCOPE {
        ct_tensor *y = ct_module_forward(r->model, ct_zeros(ds->sample_ndim + 1, shape));
        outputs = y->ndim == 2 ? y->shape[1] : 0;
    }
    if (outputs <= 0) return CT_OK; /* not a classifier's [batch, classes] output */
    for (int split = CT_SPLIT_TRAIN; split <= CT_SPLIT_TEST; split++) {
        const ct_dataset *d = split == CT_SPLIT_TRAIN ? &r->train : &r->test;
        for (int64_t i = 0; i < d->n; i++)
            if (d->y[i] >= outputs)
                return ct_error(CT_ERR_FORMAT, "%s: sample %lld has label %lld, but the model has %lld outputs "
                                "(classes 0..%lld)%s", r->labels[split].file, (long long)i, (long long)d->y[i],
                                (long long)outputs, (long long)outputs - 1,
                                strcmp(r->cfg.data.classes, "all") ? " after data.classes renumbering" : "");
    }
    return CT_OK;
}

ct_status ct_run_setup(ct_run *r, const char *cfg_path, int noverrides, char *const *overrides,
                       bool with_train) {
    r->cfg_path = cfg_path;
    ct_status st = ct_config_load(&r->cfg, cfg_path, noverrides, overrides);
    if (st != CT_OK) return st;
    /* from here on no collective waits longer than this for a silent rank */
    ct_dist_set_timeout(&r->d, r->cfg.dist.timeout_s);
    return ct_run_build(r, with_train);
}

ct_status ct_run_build(ct_run *r, bool with_train) {
    const char *cfg_path = r->cfg_path;
    ct_status st = load_split(r, CT_SPLIT_TEST, &r->test);
    if (st == CT_OK && with_train) {
        st = load_split(r, CT_SPLIT_TRAIN, &r->train);
        r->have_train = st == CT_OK;
        bool same = st == CT_OK && r->train.sample_ndim == r->test.sample_ndim;
        for (int i = 0; same && i < r->train.sample_ndim; i++) same = r->train.sample_shape[i] == r->test.sample_shape[i];
        if (st == CT_OK && !same) {
            char tr[96];
            snprintf(tr, sizeof tr, "%s", shape_str(&r->train));
            st = ct_error(CT_ERR_SHAPE, "%s: training samples are %s but test samples %s (see "
                          "data.train_transforms and data.test_transforms)", r->cfg_path, tr, shape_str(&r->test));
        }
        if (st == CT_OK && r->train.num_classes != r->test.num_classes) st = classes_differ(r);
    }
    if (st == CT_OK) st = build_model(r);
    if (st == CT_OK) st = check_labels_fit(r);
    if (st == CT_OK) st = init_from(r);
    if (st == CT_OK && *r->cfg.model.freeze) {
        if (ct_module_set_requires_grad(r->model, r->cfg.model.freeze, false) == 0)
            st = ct_error(CT_ERR_CONFIG, "%s: model.freeze = '%s' matches no parameter", cfg_path,
                          r->cfg.model.freeze);
        ct_named t = ct_module_params(r->model, true);
        /* a step with no trainable parameter would have no graph to run backward through */
        if (st == CT_OK && with_train && t.n == 0)
            st = ct_error(CT_ERR_CONFIG, "%s: model.freeze = '%s' freezes every parameter: nothing left to train",
                          cfg_path, r->cfg.model.freeze);
        ct_named_free(&t);
    }
    if (r->model) {
        ct_module_set_frozen_bn_eval(r->model, r->cfg.model.bn_eval_when_frozen);
        ct_module_pack(r->model);
    }
    r->eval_opts = ct_loader_opts_default(r->cfg.train.eval_batch_size);
    r->eval_opts.mean = (float)r->cfg.data.mean;
    r->eval_opts.std = (float)r->cfg.data.std;
    if (st == CT_OK) st = channel_norm(r, &r->test, &r->eval_opts);
    r->eval_opts.skip_bad = r->cfg.data.on_bad == CT_CFG_ON_BAD_SKIP;
    r->eval_opts.workers = r->cfg.data.workers;
    r->eval_opts.prefetch = r->cfg.data.prefetch;
    r->eval_opts.log = ct_run_log;
    r->eval_opts.log_ctx = &r->d;
    return st;
}

void ct_run_free(ct_run *r) {
    ct_module_free(r->model);
    ct_dataset_free(&r->train); /* a zeroed data set is fine */
    ct_dataset_free(&r->test);
}
