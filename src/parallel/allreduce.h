/* Internal to src/parallel: the gradient all-reduce behind DDP.
 *
 * Ranks on one node reduce through an MPI-3 shared-memory window: every rank's gradient
 * buffer is in the window, each rank sums its slice of a range over all of the node's
 * buffers and, with one node, writes the mean straight back into every buffer. That moves
 * each byte about once, where MPI's all-reduce copies it through its own buffers
 * (tests/bench/bench_allreduce.c prints both). With several nodes, each node's leader (local
 * rank 0) all-reduces the node's sum with the other leaders by MPI_Iallreduce, and the
 * other ranks of the node copy the result from the leader's buffer. Without shared memory
 * (shm false) every rank is its own node and everything goes through MPI. */
#ifndef CT_DIST_ALLREDUCE_H
#define CT_DIST_ALLREDUCE_H

#include "internal.h"

typedef struct ct_allreduce ct_allreduce;

/* Collective over d->comm->mpi: the node groups (d->comm->node, or single ranks if !shm) and the
 * leaders' communicator. No buffer yet. */
ct_allreduce *ct_allreduce_new(const ct_dist *d, bool shm);
/* Waits back off from spinning to sleeping (up to 1 ms at a time), so a rank waiting for a
 * stopped peer costs no CPU; a wait longer than `seconds` ends the job through ct_fatal,
 * naming the rank that stopped answering. 0 (the default) waits forever. */
void ct_allreduce_set_timeout(ct_allreduce *a, double seconds);
/* Collective: frees the buffer and the communicators. */
void ct_allreduce_free(ct_allreduce *a);
/* Collective: replaces the buffer by one of numel floats (64-byte aligned, contents
 * undefined) and returns it. It is this rank's gradient memory until the next call. */
float *ct_allreduce_resize(ct_allreduce *a, int64_t numel);
/* Starts averaging floats [begin, end) of the buffer over all ranks. Every rank starts the
 * same ranges in the same order, and must not write to a range once it is started. */
void ct_allreduce_start(ct_allreduce *a, int64_t begin, int64_t end);
/* Does the work for started ranges that is possible now, without waiting. */
void ct_allreduce_progress(ct_allreduce *a);
/* Waits until every started range holds the mean over all ranks and no other rank will
 * touch this rank's buffer again; then the buffer is this rank's to write. */
void ct_allreduce_wait(ct_allreduce *a);
/* Collective: true on every rank iff every rank passed the same v. Within a node it costs a
 * store and a few loads in shared memory, not an MPI message. */
bool ct_allreduce_agree(ct_allreduce *a, uint64_t v);

#endif
