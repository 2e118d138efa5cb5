/* Internal to src/parallel (and its tests and benchmarks; not installed): the MPI handles
 * behind the public parallel.h, which compiles without <mpi.h> so a program that trains on
 * one process needs no MPI include path. */
#ifndef CT_DIST_INTERNAL_H
#define CT_DIST_INTERNAL_H

#include <mpi.h>

#include "parallel.h"

/* What a ct_dist's opaque handle holds. */
struct ct_comm {
    MPI_Comm mpi;     /* a dup of MPI_COMM_WORLD, or of a sweep group */
    MPI_Comm node;    /* the ranks of mpi on this node (MPI_COMM_TYPE_SHARED) */
    double timeout_s; /* ct_dist_set_timeout; 0 = wait forever */
};

/* The one wait loop of src/parallel (the gradient all-reduce's counters and every other
 * collective's MPI request). It spins for a few turns (the others are usually microseconds
 * behind), then gives the core away (with more ranks than cores the rank it waits for may
 * need it), then sleeps, twice as long each time up to 1 ms: a rank waiting for a stopped
 * or hung peer costs no CPU. */
typedef struct {
    int spins;
    double t0;     /* when the wait began yielding; 0 before */
    long sleep_ns; /* the next sleep; 0 while still yielding */
} ct_waiter;
/* One turn of a wait loop. Returns the seconds waited so far once that is more than
 * timeout_s (> 0), else 0: the caller then ends the job, naming what it waited for. */
double ct_wait_turn(ct_waiter *w, double timeout_s);
/* Completes a non-blocking collective over d through ct_wait_turn; a wait longer than d's
 * timeout ends the job, naming `what` (the collective) and this rank. */
void ct_dist_wait(const ct_dist *d, MPI_Request *req, const char *what);

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
