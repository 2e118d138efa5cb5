#include "mpi_util.h"

#include <stdio.h>

ct_dist D;

int ct_mpi_test_main(int argc, char **argv, Suite *(*make_suite)(void)) {
    if (ct_dist_init(&argc, &argv, &D) != CT_OK) {
        fprintf(stderr, "%s\n", ct_last_error());
        return 1;
    }
    SRunner *sr = srunner_create(make_suite());
    srunner_run_all(sr, D.rank == 0 ? CK_NORMAL : CK_SILENT);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    MPI_Allreduce(MPI_IN_PLACE, &failed, 1, MPI_INT, MPI_MAX, D.comm->mpi);
    ct_dist_finalize(&D);
    ct_scope_shutdown();
    return failed ? 1 : 0;
}
