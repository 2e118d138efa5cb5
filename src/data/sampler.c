/* The distributed sampler: pure index arithmetic, identical on every rank given the same
 * options, so no communication is needed to agree on who reads what. */
#include "internal.h"

#include <stdlib.h>

struct ct_sampler {
    ct_sampler_opts o;
    int64_t size;  /* this rank's indices per epoch */
    int64_t *perm; /* n, only when shuffling */
    int64_t *out;  /* size */
};

void ct_permutation(int64_t n, uint64_t seed, uint64_t epoch, int64_t *out) {
    ct_rng r;
    ct_rng_seed(&r, seed * 1000003u + epoch);
    for (int64_t i = 0; i < n; i++) out[i] = i;
    for (int64_t i = n - 1; i > 0; i--) { /* Fisher-Yates */
        int64_t j = (int64_t)ct_rng_below(&r, (uint64_t)i + 1);
        int64_t t = out[i];
        out[i] = out[j];
        out[j] = t;
    }
}

int64_t ct_shard_size(int64_t n, int world, int rank, ct_shard_mode mode) {
    CT_ASSERT(n >= 0 && world >= 1 && rank >= 0 && rank < world,
              "ct_shard_size: n %lld, world %d, rank %d", (long long)n, world, rank);
    switch (mode) {
    case CT_SHARD_DROP: return n / world;
    case CT_SHARD_PAD: return (n + world - 1) / world;
    case CT_SHARD_EXACT: return n / world + (rank < n % world);
    }
    ct_fatal("ct_shard_size: unknown mode %d", (int)mode);
}

ct_status ct_sampler_new(ct_sampler **out, const ct_sampler_opts *opts) {
    const ct_sampler_opts *o = opts;
    if (o->n < 0 || o->world < 1 || o->rank < 0 || o->rank >= o->world)
        return ct_error(CT_ERR_ARG, "sampler: need n >= 0 and 0 <= rank < world, got n %lld, "
                        "world %d, rank %d", (long long)o->n, o->world, o->rank);
    if (o->mode != CT_SHARD_DROP && o->mode != CT_SHARD_PAD && o->mode != CT_SHARD_EXACT)
        return ct_error(CT_ERR_ARG, "sampler: unknown mode %d", (int)o->mode);
    if (o->mode == CT_SHARD_EXACT && o->shuffle)
        return ct_error(CT_ERR_ARG, "sampler: exact evaluation mode does not shuffle");
    ct_sampler *s = ct_malloc(sizeof *s);
    *s = (ct_sampler){.o = *o, .size = ct_shard_size(o->n, o->world, o->rank, o->mode)};
    s->perm = o->shuffle ? ct_malloc((size_t)o->n * sizeof *s->perm) : NULL;
    s->out = ct_malloc((size_t)s->size * sizeof *s->out);
    *out = s;
    return CT_OK;
}

const int64_t *ct_sampler_epoch(ct_sampler *s, uint64_t epoch) {
    const ct_sampler_opts *o = &s->o;
    if (o->mode == CT_SHARD_EXACT) {
        int64_t q = o->n / o->world, rem = o->n % o->world;
        int64_t start = o->rank * q + (o->rank < rem ? o->rank : rem);
        for (int64_t i = 0; i < s->size; i++) s->out[i] = start + i;
        return s->out;
    }
    if (o->shuffle) ct_permutation(o->n, o->seed, epoch, s->perm);
    /* PyTorch's DistributedSampler: the permutation, truncated (DROP) or extended by
     * wrapping round to its start (PAD), dealt out so rank r takes positions r, r+W, ... */
    for (int64_t i = 0; i < s->size; i++) {
        int64_t p = (o->rank + i * o->world) % o->n;
        s->out[i] = o->shuffle ? s->perm[p] : p;
    }
    return s->out;
}

int64_t ct_sampler_size(const ct_sampler *s) { return s->size; }

int64_t ct_sampler_max_batches(const ct_sampler *s, int64_t batch_size) {
    CT_ASSERT(batch_size >= 1, "ct_sampler_max_batches: batch_size %lld", (long long)batch_size);
    /* rank 0's shard is a largest one in every mode */
    int64_t largest = ct_shard_size(s->o.n, s->o.world, 0, s->o.mode);
    return (largest + batch_size - 1) / batch_size;
}

void ct_sampler_free(ct_sampler *s) {
    if (!s) return;
    free(s->perm);
    free(s->out);
    free(s);
}
