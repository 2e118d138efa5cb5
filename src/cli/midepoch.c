/* Mid-epoch checkpoints: what a rank must get back to continue an epoch exactly where it
 * stopped. The model, optimizer and progress are in the checkpoint as at an epoch boundary;
 * what differs per rank travels in its "rank_state" metadata: each rank's dropout streams,
 * BatchNorm running statistics and running loss sum (the epoch's train_loss averages it). The loader's position and
 * its augmentation stream need no saving: the epoch is re-seeded as usual and the batches
 * already taken are drawn again (ct_midepoch_resume), which consumes the stream exactly as
 * the first time did. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* What may differ between ranks mid-epoch, in module order: the buffers (BatchNorm's running
 * statistics follow each rank's batches until dist.buffers averages them after the epoch)
 * and the extras that are not in the state_dict (the dropout streams). With buf, copies
 * them out (save) or in (load). Returns their bytes. */
static size_t rank_extras(ct_module *m, unsigned char *buf, bool load) {
    ct_named mods = ct_module_modules(m);
    size_t n = 0;
    for (int i = 0; i < mods.n; i++) {
        ct_module *mm = mods.owners[i];
        for (int k = 0; k < mm->nbuffers; k++) {
            size_t b = (size_t)ct_numel(mm->buffers[k]) * sizeof(float);
            if (buf && load) memcpy(mm->buffers[k]->data, buf + n, b);
            else if (buf) memcpy(buf + n, mm->buffers[k]->data, b);
            n += b;
        }
        ct_module_extra x[CT_MODULE_MAX_EXTRA];
        for (int k = 0, c = ct_module_extra_state(mm, x); k < c; k++) {
            if (x[k].in_state_dict) continue;
            size_t b = (size_t)x[k].numel * ct_dtype_size(x[k].dtype);
            if (buf && load) memcpy(x[k].data, buf + n, b);
            else if (buf) memcpy(buf + n, x[k].data, b);
            n += b;
        }
    }
    ct_named_free(&mods);
    return n;
}

#define HEAD (sizeof(double) + sizeof(int64_t)) /* loss sum, skipped steps */

char *ct_midepoch_gather(const ct_dist *d, ct_module *m, double loss_sum, int64_t skipped) {
    size_t per = HEAD + rank_extras(m, NULL, false);
    unsigned char *all = ct_malloc(per * (size_t)d->size);
    unsigned char *mine = all + per * (size_t)d->rank;
    memcpy(mine, &loss_sum, sizeof loss_sum);
    memcpy(mine + sizeof loss_sum, &skipped, sizeof skipped);
    rank_extras(m, mine + HEAD, false);
    /* one broadcast per rank: a checkpoint is rare and the blobs small (the buffers and RNGs) */
    for (int q = 0; q < d->size; q++) ct_dist_bcast(d, all + per * (size_t)q, per, q);
    char *hex = NULL;
    if (d->rank == 0) {
        size_t n = per * (size_t)d->size;
        hex = ct_malloc(2 * n + 1);
        for (size_t i = 0; i < n; i++) sprintf(hex + 2 * i, "%02x", all[i]);
        hex[2 * n] = 0;
    }
    free(all);
    return hex;
}

ct_status ct_midepoch_take(const ct_dist *d, ct_module *m, const ct_progress *p, const char *path,
                           ct_midepoch *out) {
    memset(out, 0, sizeof *out);
    out->at = p->epoch_step;
    out->world = p->world;
    if (!p->epoch_step) return CT_OK;
    size_t per = HEAD + rank_extras(m, NULL, false), len = p->rank_state ? strlen(p->rank_state) : 0;
    if (p->world != d->size) return CT_OK; /* exact only on the same ranks: the caller says so */
    if (len != 2 * per * (size_t)p->world)
        return ct_error(CT_ERR_FORMAT, "%s: metadata 'rank_state' holds %zu hex digits, expected %zu "
                        "(%d ranks of %zu bytes)", path, len, 2 * per * (size_t)p->world, p->world, per);
    out->state = ct_malloc(per);
    const char *h = p->rank_state + 2 * per * (size_t)d->rank;
    for (size_t i = 0; i < per; i++) {
        unsigned v;
        if (sscanf(h + 2 * i, "%2x", &v) != 1 || !strchr("0123456789abcdef", h[2 * i]) ||
            !strchr("0123456789abcdef", h[2 * i + 1])) {
            ct_midepoch_free(out);
            return ct_error(CT_ERR_FORMAT, "%s: metadata 'rank_state' is not lowercase hex", path);
        }
        out->state[i] = (unsigned char)v;
    }
    memcpy(&out->loss_sum, out->state, sizeof out->loss_sum);
    memcpy(&out->skipped, out->state + sizeof(double), sizeof out->skipped);
    if (!isfinite(out->loss_sum) || out->skipped < 0 || out->skipped > out->at) {
        ct_midepoch_free(out);
        return ct_error(CT_ERR_FORMAT, "%s: metadata 'rank_state' of rank %d is out of range", path, d->rank);
    }
    out->exact = true;
    return CT_OK;
}

void ct_midepoch_resume(ct_midepoch *s, ct_module *m, ct_loader *l) {
    rank_extras(m, s->state + HEAD, true); /* after the epoch's re-seeding, which it replaces */
    for (int64_t i = 0; i < s->at; i++) CT_SCOPE {
        ct_batch b;
        ct_loader_next(l, &b);
    }
}

void ct_midepoch_free(ct_midepoch *s) {
    free(s->state);
    s->state = NULL;
    s->exact = false;
    s->at = 0;
}
