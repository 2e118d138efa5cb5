/* Internal to the library (not installed): the counters ct_stats_get reads, which core and
 * autograd update. */
#ifndef CT_CORE_INTERNAL_H
#define CT_CORE_INTERNAL_H

#include "core.h"

extern ct_stats ct__stats;
/* Every update of a counter goes through this: any thread may allocate tensors or record
 * graph nodes, and a plain ++ from two threads loses updates. Relaxed order is enough for
 * counters (nothing is published through them); an uncontended atomic add costs about
 * what the plain one does. */
#define CT_STAT_ADD(field, v) ((void)__atomic_fetch_add(&ct__stats.field, (v), __ATOMIC_RELAXED))

/* The first time a thread caches a block or adopts a tensor: at its exit, its scopes'
 * tensors are released and its allocator cache returned to the system (thread.c). */
void ct__thread_register(void);
/* Frees a block from ct_alloc to the system, bypassing the cache (for one-off sizes). */
void ct__alloc_release(void *p);
/* fn runs at the exit of every registered thread, after its scopes are released and before
 * its allocator cache is trimmed: a layer above core frees its per-thread scratch there.
 * Called once per layer (at most 4 in all). */
void ct__thread_atexit(void (*fn)(void));
/* At a thread's exit: releases whatever its scopes still hold, open or not (scope.c). */
void ct__scope_thread_exit(void);

#endif
