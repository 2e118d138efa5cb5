/* What every command sets up from its config: data, model, initial weights, freezing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

ct_status ct_run_agree(const ct_dist *d, ct_status st) {
    int first_bad = st != CT_OK ? d->rank : d->size;
    CT_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, &first_bad, 1, MPI_INT, MPI_MIN, d->world));
    if (first_bad == d->size) return CT_OK;
    if (d->rank == first_bad) {
        if (d->size > 1)
            fprintf(stderr, "ctrain: rank %d: error: %s\n", d->rank, ct_last_error());
        else
            fprintf(stderr, "ctrain: error: %s\n", ct_last_error());
    }
    return st != CT_OK ? st : CT_ERR_MPI;
}

static ct_status load_split(ct_run *r, ct_split split, ct_dataset *ds) {
    const ct_config *c = &r->cfg;
    ct_status st;
    if (c->data.format == CT_CFG_FORMAT_IDX) {
        st = ct_dataset_from_idx(ds, c->data.dir, split);
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
    return st;
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
                            "%s: model.name = cnn needs square [C, H, W] samples with H divisible by 4",
                            r->cfg_path);
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
    }
    return ct_error(CT_ERR_CONFIG, "%s: bad model.name", r->cfg_path);
}

static ct_status init_from(ct_run *r) {
    const char *path = r->cfg.model.init_from;
    if (!*path) return CT_OK;
    ct_st_file *f = NULL;
    ct_status st = ct_st_load(path, &f);
    char *rep = NULL;
    if (st == CT_OK)
        st = ct_ckpt_load_model_except(f, r->model, r->cfg.model.init_strict, r->cfg.model.init_exclude, &rep);
    if (st == CT_OK && r->d.rank == 0)
        fprintf(stderr, "ctrain: init_from %s (%s): %s\n", path,
                r->cfg.model.init_strict ? "strict" : "non-strict", rep ? rep : "every tensor loaded");
    free(rep);
    ct_st_free(f);
    return st;
}

ct_status ct_run_setup(ct_run *r, const char *cfg_path, int noverrides, char *const *overrides,
                       bool with_train) {
    r->cfg_path = cfg_path;
    ct_status st = ct_config_load(&r->cfg, cfg_path, noverrides, overrides);
    return st == CT_OK ? ct_run_build(r, with_train) : st;
}

ct_status ct_run_build(ct_run *r, bool with_train) {
    const char *cfg_path = r->cfg_path;
    ct_status st = load_split(r, CT_SPLIT_TEST, &r->test);
    if (st == CT_OK && with_train) {
        st = load_split(r, CT_SPLIT_TRAIN, &r->train);
        r->have_train = st == CT_OK;
        if (st == CT_OK && r->train.num_classes != r->test.num_classes)
            st = ct_error(CT_ERR_FORMAT, "training set has %lld classes but test set %lld",
                          (long long)r->train.num_classes, (long long)r->test.num_classes);
    }
    if (st == CT_OK) st = build_model(r);
    if (st == CT_OK) st = init_from(r);
    if (st == CT_OK && *r->cfg.model.freeze) {
        if (ct_module_set_requires_grad(r->model, r->cfg.model.freeze, false) == 0)
            st = ct_error(CT_ERR_CONFIG, "%s: model.freeze = '%s' matches no parameter", cfg_path,
                          r->cfg.model.freeze);
    }
    if (r->model) {
        ct_module_set_frozen_bn_eval(r->model, r->cfg.model.bn_eval_when_frozen);
        ct_module_pack(r->model);
    }
    r->eval_opts = ct_loader_opts_default(r->cfg.train.eval_batch_size);
    r->eval_opts.mean = (float)r->cfg.data.mean;
    r->eval_opts.std = (float)r->cfg.data.std;
    return st;
}

void ct_run_free(ct_run *r) {
    ct_module_free(r->model);
    ct_dataset_free(&r->train); /* a zeroed data set is fine */
    ct_dataset_free(&r->test);
}
