/* Size-class caching allocator. Block sizes are powers of two from 64 B; a freed block
 * goes onto its class's free list, so once a training step has run, the next one finds
 * every buffer it needs there and makes no system allocation. Blocks above 1 GiB bypass
 * the cache.
 *
 * Every thread has free lists of its own, so allocating and freeing take no lock and any
 * thread may do both: a block freed on another thread than the one that allocated it
 * simply joins the freeing thread's cache. A thread's cached blocks go back to the system
 * when it exits (thread.c), so threads that come and go leak nothing. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

ct_stats ct__stats;

#define MIN_SHIFT 6
#define NCLASS 25 /* 64 B .. 1 GiB */

typedef struct block {
    struct block *next;
} block;

static _Thread_local block *free_list[NCLASS];

static int size_class(size_t bytes) {
    int c = 0;
    size_t sz = (size_t)1 << MIN_SHIFT;
    while (sz < bytes && c < NCLASS) {
        sz <<= 1;
        c++;
    }
    return c; /* NCLASS means "too big to cache" */
}

void *ct_alloc(size_t bytes) {
    if (bytes == 0) bytes = 1;
    int c = size_class(bytes);
    if (c < NCLASS && free_list[c]) {
        block *b = free_list[c];
        free_list[c] = b->next;
        return b;
    }
    size_t sz = c < NCLASS ? (size_t)1 << (c + MIN_SHIFT) : (bytes + 63) / 64 * 64;
    void *p = ct_aligned_malloc(64, sz);
    CT_STAT_ADD(mallocs, 1);
    return p;
}

void ct_free(void *p, size_t bytes) {
    if (!p) return;
    if (bytes == 0) bytes = 1;
    int c = size_class(bytes);
    if (c >= NCLASS) {
        free(p);
        return;
    }
    ct__thread_register(); /* its exit returns the cache to the system */
    block *b = p;
    b->next = free_list[c];
    free_list[c] = b;
}

void ct__alloc_release(void *p) { free(p); }

void ct_alloc_trim(void) {
    for (int c = 0; c < NCLASS; c++) {
        while (free_list[c]) {
            block *b = free_list[c];
            free_list[c] = b->next;
            free(b);
        }
    }
}

ct_stats ct_stats_get(void) {
    ct_stats s;
#define LOAD_(f) s.f = __atomic_load_n(&ct__stats.f, __ATOMIC_RELAXED)
    LOAD_(live_tensors);
    LOAD_(live_bytes);
    LOAD_(graph_nodes);
    LOAD_(saved_tensors);
    LOAD_(mallocs);
    LOAD_(gemm_calls);
    LOAD_(conv_epilogues);
    LOAD_(gemm_flops);
#undef LOAD_
    return s;
}
