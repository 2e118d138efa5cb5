/* Exact distributed evaluation. */
#include <stdlib.h>

#include "internal.h"

ct_status ct_dist_evaluate(const ct_dist *d, ct_module *m, const ct_dataset *ds,
                           const ct_loader_opts *opts, ct_eval_result *out) {
    return ct_dist_evaluate_from(d, m, 0, ds, opts, out);
}

ct_status ct_dist_evaluate_from(const ct_dist *d, ct_module *m, int first, const ct_dataset *ds,
                                const ct_loader_opts *opts, ct_eval_result *out) {
    ct_sampler *s = NULL;
    ct_loader *l = NULL;
    ct_sampler_opts so = {.n = ds->n, .world = d->size, .rank = d->rank, .mode = CT_SHARD_EXACT};
    ct_loader_opts lo = *opts;
    lo.crop_pad = 0;
    lo.hflip = false;
    lo.wrap = false; /* a skipped file is left out, never replaced by a second look at another */
    ct_status st = ct_sampler_new(&s, &so);
    if (st == CT_OK) st = ct_loader_new(&l, ds, &lo);
    double sums[3] = {0, 0, 0}; /* loss sum, correct, samples */
    if (st == CT_OK) {
        ct_loader_start(l, ct_sampler_epoch(s, 0), ct_sampler_size(s));
        int64_t nb = ct_loader_num_batches(l);
        int64_t *pred = ct_malloc((size_t)lo.batch_size * sizeof *pred);
        int nlayers = ct_seq_num_layers(m);
        CT_EVALUATE(m) {
            for (int64_t i = 0; i < nb; i++) CT_SCOPE {
                ct_batch b;
                /* an undecodable file ends this rank's part; the all-reduce below tells all */
                if (st != CT_OK || !ct_loader_next(l, &b) || (st = ct_loader_status(l)) != CT_OK) continue;
                ct_tensor *logits = first ? ct_seq_forward_range(m, first, nlayers, b.x)
                                          : ct_module_forward(m, b.x);
                sums[0] += ct_cross_entropy(logits, b.y, CT_REDUCE_SUM)->data[0];
                ct_argmax_rows(logits, pred);
                for (int64_t k = 0; k < b.size; k++) sums[1] += pred[k] == b.y[k];
                sums[2] += (double)b.size;
            }
        }
        free(pred);
    }
    ct_loader_free(l);
    ct_sampler_free(s);
    /* Every rank reaches the agreement, even one whose set-up failed, so a local error
     * cannot leave the others waiting; then all sum, or all return the same error. */
    st = ct_dist_agree(d, st, NULL);
    if (st != CT_OK) return st;
    ct_dist_sum(d, sums, 3);
    out->samples = (int64_t)sums[2];
    out->loss = sums[2] > 0 ? sums[0] / sums[2] : 0;
    out->accuracy = sums[2] > 0 ? sums[1] / sums[2] : 0;
    return CT_OK;
}
