/* Internal to src/parallel (and its tests and benchmarks; not installed): the MPI handles
 * behind the public parallel.h, which compiles without <mpi.h> so a program that trains on
 * one process needs no MPI include path. */
#ifndef CT_DIST_INTERNAL_H
#define CT_DIST_INTERNAL_H

#include <mpi.h>

#include "parallel.h"

/* What a ct_dist's opaque handle holds. */
struct ct_comm {
    MPI_Comm mpi;  /* a dup of MPI_COMM_WORLD, or of a sweep group */
    MPI_Comm node; /* the ranks of mpi on this node (MPI_COMM_TYPE_SHARED) */
};

/* Fills d for an existing communicator (e.g. a sweep group); comm is duplicated. */
ct_status ct_dist_from_comm(MPI_Comm comm, ct_dist *d);

/* Aborts naming file:line, the call and MPI's error string unless rc == MPI_SUCCESS. */
#define CT_CHECK_MPI(call)                                                                \
    do {                                                                                  \
        int ct_mpi_rc_ = (call);                                                          \
        if (ct_mpi_rc_ != MPI_SUCCESS) ct_mpi_fail(__FILE__, __LINE__, #call, ct_mpi_rc_); \
    } while (0)
_Noreturn void ct_mpi_fail(const char *file, int line, const char *call, int rc);

#endif
