/* xoshiro256** with a splitmix64 seeder: fast, small state, good statistics. */
#include "core.h"

#include <math.h>

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

void ct_rng_seed(ct_rng *r, uint64_t seed) {
    uint64_t z = seed;
    for (int i = 0; i < 4; i++) {
        z += 0x9e3779b97f4a7c15ULL;
        uint64_t x = z;
        x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
        x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
        r->s[i] = x ^ (x >> 31);
    }
}

uint64_t ct_rng_next(ct_rng *r) {
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

float ct_rng_uniform(ct_rng *r) { return (float)(ct_rng_next(r) >> 40) * (1.0f / 16777216.0f); }

float ct_rng_normal(ct_rng *r) {
    /* Box-Muller; u1 is kept away from 0 so log() is finite. */
    double u1 = ((double)(ct_rng_next(r) >> 11) + 1.0) * (1.0 / 9007199254740992.0);
    double u2 = (double)(ct_rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

uint64_t ct_rng_below(ct_rng *r, uint64_t n) {
    /* Lemire's multiply-shift; the tiny bias is irrelevant for shuffles. */
    return (uint64_t)(((unsigned __int128)ct_rng_next(r) * n) >> 64);
}

ct_tensor *ct_rand_uniform(int ndim, const int64_t *shape, float lo, float hi, ct_rng *r) {
    ct_tensor *t = ct_tensor_new(ndim, shape);
    for (int64_t i = 0; i < t->numel; i++) t->data[i] = lo + (hi - lo) * ct_rng_uniform(r);
    return t;
}

ct_tensor *ct_rand_normal(int ndim, const int64_t *shape, float mean, float std, ct_rng *r) {
    ct_tensor *t = ct_tensor_new(ndim, shape);
    for (int64_t i = 0; i < t->numel; i++) t->data[i] = mean + std * ct_rng_normal(r);
    return t;
}
