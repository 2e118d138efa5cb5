/* ctrain parallel (the ct_dist_* API): the MPI communicator, data-parallel training (DDP)
 * with trainable-only bucketed all-reduce overlapped with backward, BatchNorm buffer policies, exact
 * distributed evaluation and hwloc binding. */
#ifndef CT_PARALLEL_H
#define CT_PARALLEL_H

#include "../data/data.h"
#include "../nn/nn.h"

/* ---- communicator ----------------------------------------------------------------------- */

/* The MPI communicators, opaque here so this header needs no <mpi.h> (src/parallel/internal.h). */
typedef struct ct_comm ct_comm;

typedef struct {
    ct_comm *comm;        /* the job's communicator (MPI_COMM_WORLD) or a sweep group's */
    int rank, size;       /* in comm */
    int local_rank, local_size;
    char host[64];
} ct_dist;

/* MPI_Init_thread (FUNNELED) if needed, then fills d and routes the abort hook to
 * MPI_Abort with the rank in the message, so a fatal error on one rank ends the job. */
ct_status ct_dist_init(int *argc, char ***argv, ct_dist *d);
void ct_dist_free(ct_dist *d);
/* ct_dist_free plus MPI_Finalize. */
void ct_dist_finalize(ct_dist *d);
/* Collective over d: CT_OK on every rank if st is CT_OK on every rank. Otherwise every rank
 * returns the status of the lowest failing rank, whose ct_last_error() message becomes every
 * rank's message, so all ranks report the same reason; *failed_rank (may be NULL) gets that
 * rank, or -1 when none failed. The one way ranks agree on "did anyone fail, and who". */
ct_status ct_dist_agree(const ct_dist *d, ct_status st, int *failed_rank);
/* MPI_Bcast of bytes bytes (at most INT_MAX) from root over d. */
void ct_dist_bcast(const ct_dist *d, void *buf, size_t bytes, int root);
/* Sums x[0..n) over the ranks of d, in place. */
void ct_dist_sum(const ct_dist *d, double *x, int n);
/* The collectives above (and DDP's buffer averaging and broadcasts) wait for the other
 * ranks at most this long, then end the job through ct_fatal (dist.timeout_s); the waits
 * back off to sleeping, as the gradient all-reduce's do. 0 (the default) waits forever. */
void ct_dist_set_timeout(ct_dist *d, double seconds);

/* ---- DDP -------------------------------------------------------------------------------- */

typedef enum { CT_BUFFERS_AVERAGE = 0, CT_BUFFERS_BROADCAST, CT_BUFFERS_NONE } ct_buffer_policy;

typedef struct {
    size_t bucket_bytes;       /* cap per bucket; default 25 MiB */
    size_t first_bucket_bytes; /* the first (last layers') bucket, small so communication
                                  starts early; default 1 MiB */
    ct_buffer_policy buffers;  /* BatchNorm running statistics */
    bool shm;                  /* all-reduce through shared memory within a node and MPI
                                  between nodes (src/parallel/allreduce.h); false: MPI even
                                  between ranks of one node. Default true */
    double timeout_s;          /* a rank silent this long in the gradient all-reduce ends the
                                  job, naming it; 0 = wait forever; default 1800 (PyTorch's
                                  30 minutes) */
} ct_ddp_config;
ct_ddp_config ct_ddp_defaults(void);

typedef struct ct_ddp ct_ddp;

typedef struct {
    int64_t bytes_reduced;   /* gradient bytes all-reduced in the last synced step */
    int nbuckets;
    int64_t trainable_numel;
    double comm_wait_s;      /* time blocked in the last ct_ddp_finish */
    int64_t rebuilds;        /* bucket plans built so far */
} ct_ddp_stats;

/* Wraps m for data-parallel training over d. Checks that every rank has the same
 * parameter names, shapes and requires_grad flags (CT_ERR_MPI naming the first mismatch
 * and the ranks), then broadcasts rank 0's parameters and buffers. */
ct_status ct_ddp_new(ct_module *m, const ct_dist *d, const ct_ddp_config *cfg, ct_ddp **out);
/* Collective over d (it frees the shared-memory window). NULL is a no-op. */
void ct_ddp_free(ct_ddp *p);
/* Call before each training forward: rebuilds the buckets (collectively) if the trainable
 * set changed since the last step, and applies the broadcast buffer policy. Returns
 * CT_ERR_MPI if ranks disagree on the trainable set. */
ct_status ct_ddp_prepare(ct_ddp *p);
/* no_sync: while off, backward accumulates locally and nothing is communicated. */
void ct_ddp_set_sync(ct_ddp *p, bool sync);
/* After backward: starts any bucket not yet started, waits for all; the gradients are
 * then the mean over ranks. */
void ct_ddp_finish(ct_ddp *p);
/* Applies the buffer policy before evaluation or a checkpoint (average: all-reduce mean). */
void ct_ddp_sync_buffers(ct_ddp *p);
ct_ddp_stats ct_ddp_get_stats(const ct_ddp *p);
/* Zeroes every trainable gradient (the bucket memory). */
void ct_ddp_zero_grad(ct_ddp *p);
/* Collective over the DDP's ranks: true on every rank iff v is true on every rank (through
 * the all-reduce's shared-memory counters within a node). */
bool ct_ddp_all(ct_ddp *p, bool v);

/* Broadcasts every parameter and buffer (and BatchNorm counters) from root. */
void ct_dist_broadcast_module(const ct_dist *d, ct_module *m, int root);
/* All-reduce mean of every buffer (BatchNorm running statistics). */
void ct_dist_average_buffers(const ct_dist *d, ct_module *m);

/* ---- exact distributed evaluation --------------------------------------------------------- */

typedef struct {
    double loss;     /* mean cross-entropy over every sample */
    double accuracy; /* correct / samples */
    int64_t samples; /* == the data set size: each sample is evaluated exactly once */
} ct_eval_result;

/* Evaluates m on all of ds, sharded across d's ranks in contiguous ranges (nothing padded
 * or duplicated), in eval mode under no_grad, then restores both. Loss sum, correct count
 * and sample count are combined in one all-reduce, the only collective, so uneven shards
 * cannot hang. opts gives batch size and normalisation (augmentation is ignored). */
ct_status ct_dist_evaluate(const ct_dist *d, ct_module *m, const ct_dataset *ds,
                           const ct_loader_opts *opts, ct_eval_result *out);

/* As ct_dist_evaluate, but ds holds the outputs of layers [0, first) of the Sequential
 * m (a feature cache) and only layers [first, n) run (see ct_seq_num_layers). */
ct_status ct_dist_evaluate_from(const ct_dist *d, ct_module *m, int first, const ct_dataset *ds,
                                const ct_loader_opts *opts, ct_eval_result *out);

/* ---- feature cache for a frozen prefix ------------------------------------------------------ */

/* The number of features per sample that layers [0, prefix) of m make from in's samples. */
int64_t ct_dist_cache_numel(ct_module *m, int prefix, const ct_dataset *in);
/* Runs layers [0, prefix) of the Sequential m once over all of in (normalised by opts,
 * never augmented), under no_grad and in m's current mode, each rank on its exact shard,
 * then all-gathers the features so every rank holds the whole cache in out (same labels,
 * sample shape = the prefix's output). Training the remaining layers from out gives the
 * same results as running the prefix every step, when ct_module_frozen_prefix says the
 * prefix is a fixed function. */
ct_status ct_dist_cache_features(const ct_dist *d, ct_module *m, int prefix, const ct_dataset *in,
                                 const ct_loader_opts *opts, ct_dataset *out);

/* ---- sweeps --------------------------------------------------------------------------------- */

/* A sweep splits the world into groups of group_size consecutive ranks (the last may be
 * smaller), and the groups take jobs 0..njobs-1 from one queue: each job goes to exactly one
 * group, and a group that finishes early takes the next job. The queue is an int64 counter
 * in an MPI window on world rank 0 that group leaders bump with MPI_Fetch_and_op. If the
 * MPI library offers no one-sided window (Open MPI over TCP between nodes with its pt2pt
 * component disabled), jobs are dealt round-robin instead and dynamic is false. */
typedef struct {
    ct_dist group;   /* this rank's group (evaluate over it) */
    int group_index; /* 0..ngroups-1, in world-rank order */
    int ngroups;
    bool dynamic;    /* the shared counter is in use */
    struct ct_sweep_queue *queue; /* private to src/parallel/sweep.c */
} ct_sweep;

/* Collective over world: makes the groups and the queue. group_size is clamped to
 * [1, world size]. */
ct_status ct_sweep_open(const ct_dist *world, int group_size, int64_t njobs, ct_sweep *s);
/* Collective over s->group: the next job for this group, the same on all its ranks, or -1
 * when the queue is empty (and on every later call). */
int64_t ct_sweep_next(ct_sweep *s);
/* Collective over world: world rank 0 receives every rank's n records of rec_size bytes
 * (in world-rank order) in *all (malloc'd; free it) and their count in *nall; other ranks
 * get NULL and 0. */
void ct_sweep_gather(ct_sweep *s, const void *recs, int n, size_t rec_size, void **all, int *nall);
/* Collective over world: frees the queue and the group. */
void ct_sweep_close(ct_sweep *s);

/* ---- binding ------------------------------------------------------------------------------ */

typedef struct {
    int cores;        /* cores this rank may use */
    int threads;      /* intra-op threads set (ct_set_threads: OpenMP and the GEMM blocks) */
    bool bound_by_us; /* false when mpirun/srun had already bound the rank, or when binding
                         would oversubscribe */
    char cpus[128];   /* the bound PU list, e.g. "0-3" */
    char pinned[128]; /* thread i's PUs, e.g. "0 1" ("" when threads are not pinned) */
} ct_binding;

/* Discovers the node's topology with hwloc and binds this rank to its share of the cores
 * (ranks per node: d->local_size). A binding made by the launcher is kept as it is. The
 * intra-op threads (ct_set_threads) = cores per rank unless CT_THREADS (else
 * OMP_NUM_THREADS, else OPENBLAS_NUM_THREADS) is set; never more threads than cores. The
 * threads share the rank's cores; with CT_PIN_THREADS=1 (and a bound rank) thread i is
 * pinned to the i-th core of the set. */
ct_status ct_dist_bind(const ct_dist *d, ct_binding *out);
/* Rank 0 prints one line per rank: host, bound cores and threads (collective). */
void ct_dist_print_bindings(const ct_dist *d, const ct_binding *b);

#endif
