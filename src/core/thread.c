/* Intra-op threads: OpenMP runs the ops' loops and the blocks of large GEMMs (ct_gemm),
 * each block a one-thread OpenBLAS call; one count sets it all. */
#include "core.h"

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
