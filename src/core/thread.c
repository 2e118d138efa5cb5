/* Intra-op threads: OpenMP runs the ops' own loops, OpenBLAS its GEMMs; one count sets both. */
#include "core.h"

#ifdef _OPENMP
#include <omp.h>
#endif

void ct_set_threads(int n) {
    if (n < 1) n = 1;
#ifdef _OPENMP
    omp_set_num_threads(n);
#endif
    ct_blas_set_threads(n);
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

int ct_blas_serial_begin(void) {
    int saved = ct_blas_get_threads();
    if (saved > 1) ct_blas_set_threads(1);
    return saved;
}

void ct_blas_serial_end(int saved) {
    if (saved > 1) ct_blas_set_threads(saved);
}
