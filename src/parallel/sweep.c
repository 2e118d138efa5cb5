/* Sweeps: groups of ranks taking jobs from one shared queue (a group turns one rank's
 * failure into the same failed result on all of its ranks with ct_dist_agree).
 *
 * Why a one-sided counter and not a master loop: every rank evaluates (a master that only
 * hands out jobs would idle a rank, half the machine at -np 2), and a master that also
 * evaluates could only answer requests between its own jobs, so the other groups would
 * wait for it. A window made by MPI_Win_allocate lets Open MPI use shared-memory atomics
 * on one node (osc/sm) or network atomics across nodes (osc/ucx, osc/rdma), and then
 * MPI_Fetch_and_op completes without rank 0 doing anything. (MPI_Win_create memory cannot
 * take the sm path; with emulated atomics a fetch waited ~2 s for a busy rank 0.) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* The queue behind a ct_sweep (its MPI handles stay out of the public header). */
struct ct_sweep_queue {
    MPI_Comm world; /* the ct_dist the sweep was opened on (not owned) */
    MPI_Win win;    /* the job counter, on world rank 0 */
    bool have_win, done;
    int64_t njobs, dealt; /* dealt: jobs taken round-robin, without a window */
};

ct_status ct_sweep_open(const ct_dist *world, int group_size, int64_t njobs, ct_sweep *s) {
    memset(s, 0, sizeof *s);
    s->queue = ct_calloc(1, sizeof *s->queue);
    s->queue->world = world->comm->mpi;
    s->queue->njobs = njobs;
    if (group_size < 1) group_size = 1;
    if (group_size > world->size) group_size = world->size;
    s->group_index = world->rank / group_size;
    s->ngroups = (world->size + group_size - 1) / group_size;
    MPI_Comm split;
    ct_status st = CT_OK;
    if (MPI_Comm_split(world->comm->mpi, s->group_index, world->rank, &split) != MPI_SUCCESS) {
        st = ct_error(CT_ERR_MPI, "rank %d: MPI_Comm_split into sweep groups failed", world->rank);
    } else {
        st = ct_dist_from_comm(split, &s->group);
        MPI_Comm_free(&split);
    }
    if (st != CT_OK) {
        ct_dist_free(&s->group);
        free(s->queue);
        s->queue = NULL;
        return st;
    }

    /* The world communicator returns errors (ct_dist_init), so a library without a usable
     * one-sided component reports it here instead of aborting. */
    int64_t *counter = NULL;
    int rc = MPI_Win_allocate(world->rank == 0 ? (MPI_Aint)sizeof(int64_t) : 0,
                              (int)sizeof(int64_t), MPI_INFO_NULL, world->comm->mpi, &counter,
                              &s->queue->win);
    int all_ok = ct_dist_agree(world, rc == MPI_SUCCESS ? CT_OK
                                      : ct_error(CT_ERR_MPI, "MPI_Win_allocate failed"),
                               NULL) == CT_OK;
    /* A window made on some ranks only cannot be freed (the free is collective); it is
     * left to MPI_Finalize. */
    s->queue->have_win = all_ok;
    s->dynamic = all_ok;
    if (!all_ok) return CT_OK;
    CT_CHECK_MPI(MPI_Win_set_errhandler(s->queue->win, MPI_ERRORS_RETURN));
    if (world->rank == 0) {
        /* local stores to window memory go inside an epoch (separate memory model) */
        CT_CHECK_MPI(MPI_Win_lock(MPI_LOCK_EXCLUSIVE, 0, 0, s->queue->win));
        *counter = 0;
        CT_CHECK_MPI(MPI_Win_unlock(0, s->queue->win));
    }
    CT_CHECK_MPI(MPI_Barrier(world->comm->mpi)); /* nobody fetches before the counter is 0 */
    return CT_OK;
}

int64_t ct_sweep_next(ct_sweep *s) {
    int64_t job = -1;
    if (s->group.rank == 0 && !s->queue->done) {
        if (s->dynamic) {
            const int64_t one = 1;
            CT_CHECK_MPI(MPI_Win_lock(MPI_LOCK_SHARED, 0, 0, s->queue->win));
            CT_CHECK_MPI(MPI_Fetch_and_op(&one, &job, MPI_INT64_T, 0, 0, MPI_SUM, s->queue->win));
            CT_CHECK_MPI(MPI_Win_unlock(0, s->queue->win));
        } else {
            job = s->group_index + s->queue->dealt++ * s->ngroups;
        }
        if (job >= s->queue->njobs) job = -1;
    }
    CT_CHECK_MPI(MPI_Bcast(&job, 1, MPI_INT64_T, 0, s->group.comm->mpi));
    if (job < 0) s->queue->done = true;
    return job;
}

void ct_sweep_gather(ct_sweep *s, const void *recs, int n, size_t rec_size, void **all,
                     int *nall) {
    int rank, size;
    MPI_Comm_rank(s->queue->world, &rank);
    MPI_Comm_size(s->queue->world, &size);
    MPI_Datatype rec;
    CT_CHECK_MPI(MPI_Type_contiguous((int)rec_size, MPI_BYTE, &rec));
    CT_CHECK_MPI(MPI_Type_commit(&rec));
    int *counts = rank == 0 ? ct_calloc((size_t)size, sizeof *counts) : NULL;
    int *displs = rank == 0 ? ct_calloc((size_t)size, sizeof *displs) : NULL;
    CT_CHECK_MPI(MPI_Gather(&n, 1, MPI_INT, counts, 1, MPI_INT, 0, s->queue->world));
    int total = 0;
    for (int r = 0; rank == 0 && r < size; r++) {
        displs[r] = total;
        total += counts[r];
    }
    void *buf = NULL;
    if (rank == 0) {
        buf = ct_malloc(total ? (size_t)total * rec_size : 1);
    }
    CT_CHECK_MPI(MPI_Gatherv(recs, n, rec, buf, counts, displs, rec, 0, s->queue->world));
    MPI_Type_free(&rec);
    free(counts);
    free(displs);
    *all = buf;
    *nall = total;
}

void ct_sweep_close(ct_sweep *s) {
    if (s->queue && s->queue->have_win) MPI_Win_free(&s->queue->win);
    free(s->queue);
    ct_dist_free(&s->group);
    memset(s, 0, sizeof *s);
}
