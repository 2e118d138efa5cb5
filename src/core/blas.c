/* The one file that calls cblas. */
#include "internal.h"

#include <cblas.h>

void ct_gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
             const float *a, int64_t lda, const float *b, int64_t ldb, float beta, float *c,
             int64_t ldc) {
    if (m == 0 || n == 0) return;
    ct__stats.gemm_calls++;
    ct__stats.gemm_flops += 2 * m * n * k;
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, (blasint)m, (blasint)n, (blasint)k, alpha, a,
                (blasint)lda, b, (blasint)ldb, beta, c, (blasint)ldc);
}

void ct_blas_set_threads(int n) { openblas_set_num_threads(n < 1 ? 1 : n); }

const char *ct_blas_core(void) { return openblas_get_corename(); }
