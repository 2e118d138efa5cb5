/* Shared by the MPI suites: the world communicator and the runner. */
#ifndef CT_MPI_TEST_UTIL_H
#define CT_MPI_TEST_UTIL_H

#include <check.h>

#include "ctrain.h"
#include "parallel/internal.h"

extern ct_dist D; /* the world, set up by ct_mpi_test_main */

/* Initialises MPI, runs the suite make_suite() builds (rank 0 prints the summary line CI
 * counts; every rank's result decides the exit status), finalises. */
int ct_mpi_test_main(int argc, char **argv, Suite *(*make_suite)(void));

#endif
