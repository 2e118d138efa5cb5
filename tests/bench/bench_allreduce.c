/* The all-reduce costs behind DDP's choices, under mpirun. One JSON line per size:
 *   {"bench":"allreduce", "ranks":N, "bytes":B, "libnbc_algorithm":"...",
 *    "blocking_us":..., "nonblocking_us":..., "ctrain_us":...}
 * blocking_us is MPI_Allreduce, nonblocking_us is MPI_Iallreduce + MPI_Wait, both in place on
 * floats; ctrain_us is DDP's own all-reduce (src/parallel/allreduce.h: shared memory within the
 * node), start + wait. Each is the best of 5 rounds of 100 (the machine is noisy). Sizes: the CNN's small buckets,
 * the MLP's whole gradient (940 KB) and the CNN's fc1 weight (1.6 MB). ct_dist_init applies
 * ctrain's Open MPI tuning unless OMPI_MCA_coll_libnbc_iallreduce_algorithm is already set,
 * so scripts/bench.sh runs this once as ctrain does and once with the default (0). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctrain.h"
#include "parallel/allreduce.h"

enum { BLOCKING, NONBLOCKING, CTRAIN };

static double time_one(const ct_dist *d, ct_allreduce *ar, float *buf, int n, int how) {
    double best = 1e30;
    for (int round = 0; round < 6; round++) { /* round 0 warms up */
        CT_CHECK_MPI(MPI_Barrier(d->comm->mpi));
        double t0 = MPI_Wtime();
        for (int it = 0; it < 100; it++) {
            if (how == NONBLOCKING) {
                MPI_Request rq;
                CT_CHECK_MPI(MPI_Iallreduce(MPI_IN_PLACE, buf, n, MPI_FLOAT, MPI_SUM, d->comm->mpi, &rq));
                CT_CHECK_MPI(MPI_Wait(&rq, MPI_STATUS_IGNORE));
            } else if (how == BLOCKING) {
                CT_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, buf, n, MPI_FLOAT, MPI_SUM, d->comm->mpi));
            } else {
                ct_allreduce_start(ar, 0, n);
                ct_allreduce_wait(ar);
            }
        }
        double t = (MPI_Wtime() - t0) / 100;
        CT_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, &t, 1, MPI_DOUBLE, MPI_MAX, d->comm->mpi));
        if (round && t < best) best = t;
    }
    return best * 1e6;
}

int main(int argc, char **argv) {
    ct_dist d;
    if (ct_dist_init(&argc, &argv, &d) != CT_OK) {
        fprintf(stderr, "bench_allreduce: %s\n", ct_last_error());
        return 1;
    }
    const char *env = getenv("OMPI_MCA_coll_libnbc_iallreduce_algorithm");
    const char *alg = !env ? "not Open MPI" : !strcmp(env, "1") ? "ring" : !strcmp(env, "0") ? "default" : env;
    static const int sizes[] = {19 * 1024, 235146, 401408};
    for (int s = 0; s < 3; s++) {
        int n = sizes[s];
        float *buf = calloc((size_t)n, sizeof *buf);
        CT_ASSERT(buf, "bench_allreduce: out of memory");
        ct_allreduce *ar = ct_allreduce_new(&d, true);
        float *shared = ct_allreduce_resize(ar, n);
        memset(shared, 0, (size_t)n * sizeof *shared);
        double bl = time_one(&d, NULL, buf, n, BLOCKING), nb = time_one(&d, NULL, buf, n, NONBLOCKING);
        double own = time_one(&d, ar, shared, n, CTRAIN);
        if (d.rank == 0)
            printf("{\"bench\":\"allreduce\", \"ranks\":%d, \"bytes\":%d, \"libnbc_algorithm\":\"%s\", "
                   "\"blocking_us\":%.1f, \"nonblocking_us\":%.1f, \"ctrain_us\":%.1f}\n",
                   d.size, n * 4, alg, bl, nb, own);
        ct_allreduce_free(ar);
        free(buf);
    }
    ct_dist_finalize(&d);
    ct_scope_shutdown();
    return 0;
}
