/* Intra-op threads: OpenMP runs the ops' loops and the blocks of large GEMMs (ct_gemm),
 * each block a one-thread OpenBLAS call; one count sets it all. */
#include "internal.h"

#include <pthread.h>

#ifdef _OPENMP
#include <omp.h>
#endif

void ct_set_threads(int n) {
    if (n < 1) n = 1;
#ifdef _OPENMP
    omp_set_num_threads(n);
#endif
    ct_blas_set_threads(1);
}

int ct_get_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

int ct_thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* Per-thread state (the release scopes' list, the allocator's free lists) lives in TLS; a
 * pthread key's destructor, which runs in the exiting thread while its TLS is still there,
 * hands it back. The main thread's is left to ct_scope_shutdown and ct_alloc_trim. */
static pthread_key_t exit_key;
static pthread_once_t exit_once = PTHREAD_ONCE_INIT;
static _Thread_local bool registered;

#define MAX_EXIT_FNS 4
static void (*exit_fns[MAX_EXIT_FNS])(void);
static int n_exit_fns;

void ct__thread_atexit(void (*fn)(void)) {
    int i = __atomic_fetch_add(&n_exit_fns, 1, __ATOMIC_ACQ_REL);
    CT_ASSERT(i < MAX_EXIT_FNS, "threads: more than %d per-thread exit functions", MAX_EXIT_FNS);
    __atomic_store_n(&exit_fns[i], fn, __ATOMIC_RELEASE);
}

static void on_thread_exit(void *unused) {
    (void)unused;
    ct__scope_thread_exit(); /* releases tensors into this thread's cache ... */
    int n = __atomic_load_n(&n_exit_fns, __ATOMIC_ACQUIRE);
    for (int i = 0; i < n && i < MAX_EXIT_FNS; i++) {
        void (*fn)(void) = __atomic_load_n(&exit_fns[i], __ATOMIC_ACQUIRE);
        if (fn) fn(); /* the layers above: e.g. the autograd engine's scratch */
    }
    ct_alloc_trim();    /* ... and the cache goes back */
    registered = false; /* anything cached later registers again: POSIX calls us again */
}

static void make_exit_key(void) {
    CT_ASSERT(pthread_key_create(&exit_key, on_thread_exit) == 0, "threads: no pthread key left");
}

void ct__thread_register(void) {
    if (registered) return;
    pthread_once(&exit_once, make_exit_key);
    pthread_setspecific(exit_key, &registered); /* any non-NULL value gets the call */
    registered = true;
}
