/* The one file that calls cblas. */
#include "internal.h"

#include <cblas.h>

/* A product is split when it has this many flops or more (below, a parallel region costs
 * more than it saves), into at most GEMM_BLOCKS blocks of at least GEMM_MIN_BLOCK rows or
 * columns, so each block keeps OpenBLAS's kernels at full speed. */
#define GEMM_PAR_FLOPS (1 << 21)
#define GEMM_BLOCKS 16
#define GEMM_MIN_BLOCK 64

static void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                  const float *a, int64_t lda, const float *b, int64_t ldb, float beta, float *c,
                  int64_t ldc) {
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, (blasint)m, (blasint)n, (blasint)k, alpha, a,
                (blasint)lda, b, (blasint)ldb, beta, c, (blasint)ldc);
}

/* OpenBLAS runs on its caller's thread; the intra-op threads do the rest. Set when the
 * library loads (after OpenBLAS's own start-up, a dependency's constructor), before any
 * product, so no GEMM ever runs with OpenBLAS's threads (they round differently). */
__attribute__((constructor)) static void blas_single_thread(void) { openblas_set_num_threads(1); }

static void count(int64_t m, int64_t n, int64_t k) {
    /* atomic: the convolution calls ct_gemm_serial from its worker threads */
    CT_STAT_ADD(gemm_calls, 1);
    CT_STAT_ADD(gemm_flops, 2 * m * n * k);
}

void ct_gemm_serial(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                    const float *a, int64_t lda, const float *b, int64_t ldb, float beta,
                    float *c, int64_t ldc) {
    if (m == 0 || n == 0) return;
    count(m, n, k);
    sgemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void ct_gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
             const float *a, int64_t lda, const float *b, int64_t ldb, float beta, float *c,
             int64_t ldc) {
    if (m == 0 || n == 0) return;
    count(m, n, k);
    bool split_n = n >= m;
    int64_t dim = split_n ? n : m, bs = (dim + GEMM_BLOCKS - 1) / GEMM_BLOCKS;
    bs = bs < GEMM_MIN_BLOCK ? GEMM_MIN_BLOCK : (bs + 15) / 16 * 16;
    int64_t nblk = (dim + bs - 1) / bs;
    if (2 * m * n * k < GEMM_PAR_FLOPS || nblk == 1) {
        sgemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        return;
    }
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < nblk; i++) {
        int64_t i0 = i * bs, len = dim - i0 < bs ? dim - i0 : bs;
        if (split_n) /* columns [i0, i0+len) of B and C */
            sgemm(trans_a, trans_b, m, len, k, alpha, a, lda, b + (trans_b ? i0 * ldb : i0), ldb,
                  beta, c + i0, ldc);
        else /* rows [i0, i0+len) of A and C */
            sgemm(trans_a, trans_b, len, n, k, alpha, a + (trans_a ? i0 : i0 * lda), lda, b, ldb,
                  beta, c + i0 * ldc, ldc);
    }
}

void ct_blas_set_threads(int n) {
    openblas_set_num_threads(n < 1 ? 1 : n);
}

const char *ct_blas_core(void) { return openblas_get_corename(); }
