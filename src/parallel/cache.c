/* The feature cache: a frozen prefix's outputs computed once, sharded across ranks. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* The shape of one sample's features, from a zero sample (every rank computes the same).
 * Returns their number; *nd and shape (may be NULL) get the shape without the batch. */
static int64_t feature_shape(ct_module *m, int prefix, const ct_dataset *in, int *nd, int64_t *shape) {
    int64_t numel = 0;
    CT_NO_GRAD CT_SCOPE {
        int64_t s[CT_MAX_DIMS] = {1};
        memcpy(s + 1, in->sample_shape, (size_t)in->sample_ndim * sizeof *s);
        ct_tensor *f = ct_seq_forward_range(m, 0, prefix, ct_zeros(in->sample_ndim + 1, s));
        if (nd) *nd = f->ndim - 1;
        if (shape) memcpy(shape, f->shape + 1, (size_t)(f->ndim - 1) * sizeof *shape);
        numel = f->numel;
    }
    return numel;
}

int64_t ct_dist_cache_numel(ct_module *m, int prefix, const ct_dataset *in) {
    return feature_shape(m, prefix, in, NULL, NULL);
}

ct_status ct_dist_cache_features(const ct_dist *d, ct_module *m, int prefix, const ct_dataset *in,
                                 const ct_loader_opts *opts, ct_dataset *out) {
    memset(out, 0, sizeof *out);
    ct_loader_opts lo = *opts;
    lo.crop_pad = 0;
    lo.hflip = false;
    lo.skip_bad = false; /* every sample needs its features: an undecodable file is an error */
    int64_t fshape[CT_MAX_DIMS];
    int fnd = 0;
    int64_t fnumel = feature_shape(m, prefix, in, &fnd, fshape);
    if ((double)in->n * (double)fnumel > (double)INT_MAX)
        return ct_error(CT_ERR_ARG, "feature cache: %lld samples x %lld features exceed one MPI message",
                        (long long)in->n, (long long)fnumel);
    int *counts = ct_malloc((size_t)d->size * sizeof *counts), *displs = ct_malloc((size_t)d->size * sizeof *displs);
    float *all = ct_malloc((size_t)in->n * (size_t)fnumel * sizeof(float) + 64);
    int64_t *y = ct_malloc((size_t)in->n * sizeof *y + 8);
    int64_t off = 0;
    for (int r = 0; r < d->size; r++) {
        int64_t c = ct_shard_size(in->n, d->size, r, CT_SHARD_EXACT);
        counts[r] = (int)(c * fnumel);
        displs[r] = (int)(off * fnumel);
        off += c;
    }
    ct_sampler *s = NULL;
    ct_loader *l = NULL;
    ct_sampler_opts so = {.n = in->n, .world = d->size, .rank = d->rank, .mode = CT_SHARD_EXACT};
    ct_status st = ct_sampler_new(&s, &so);
    if (st == CT_OK) st = ct_loader_new(&l, in, &lo);
    if (st == CT_OK) {
        ct_loader_start(l, ct_sampler_epoch(s, 0), ct_sampler_size(s));
        int64_t lo_i = displs[d->rank] / fnumel, hi_i = lo_i + counts[d->rank] / fnumel;
        for (int64_t i = 0, nb = ct_loader_num_batches(l); i < nb; i++) CT_NO_GRAD CT_SCOPE {
            ct_batch b;
            if (st != CT_OK || !ct_loader_next(l, &b) || (st = ct_loader_status(l)) != CT_OK) continue;
            ct_tensor *f = ct_seq_forward_range(m, 0, prefix, b.x);
            for (int64_t k = 0; k < b.size; k++) {
                CT_ASSERT(b.idx[k] >= lo_i && b.idx[k] < hi_i, "feature cache: shard layout mismatch");
                memcpy(all + b.idx[k] * fnumel, f->data + k * fnumel, (size_t)fnumel * sizeof(float));
            }
        }
    }
    ct_loader_free(l);
    ct_sampler_free(s);
    /* Every rank joins the gather even after a local failure (so none is left waiting);
     * the verdict is agreed on afterwards. */
    CT_CHECK_MPI(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_FLOAT, all, counts, displs, MPI_FLOAT, d->comm->mpi));
    st = ct_dist_agree(d, st, NULL);
    free(counts);
    free(displs);
    if (st != CT_OK) {
        free(all);
        free(y);
        return st;
    }
    memcpy(y, in->y, (size_t)in->n * sizeof *y);
    out->n = in->n;
    out->sample_ndim = fnd;
    memcpy(out->sample_shape, fshape, (size_t)fnd * sizeof *fshape);
    out->sample_numel = fnumel;
    out->x = all; /* features are floats whatever in stores: x set, x8 left NULL */
    out->y = y;
    out->num_classes = in->num_classes;
    return CT_OK;
}
