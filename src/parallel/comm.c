/* MPI set-up and tear-down, the abort hook that makes one rank's fatal error end the
 * whole job instead of leaving the others blocked in a collective, and the few collectives
 * the layers above use (agreement on a status, broadcast, sum), so they make no MPI calls
 * of their own. */
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

static int abort_rank = -1;

static void mpi_abort_hook(const char *msg) {
    fprintf(stderr, "ctrain: rank %d: fatal: %s\n", abort_rank, msg);
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 134);
    _exit(134);
}

_Noreturn void ct_mpi_fail(const char *file, int line, const char *call, int rc) {
    char err[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, err, &len);
    ct_fatal("%s:%d: %s failed: %s", file, line, call, err);
}

ct_status ct_dist_from_comm(MPI_Comm comm, ct_dist *d) {
    memset(d, 0, sizeof *d);
    d->comm = ct_malloc(sizeof *d->comm);
    d->comm->mpi = d->comm->node = MPI_COMM_NULL;
    d->comm->timeout_s = 0; /* wait forever until ct_dist_set_timeout */
    if (MPI_Comm_dup(comm, &d->comm->mpi) != MPI_SUCCESS)
        return ct_error(CT_ERR_MPI, "MPI_Comm_dup failed");
    MPI_Comm_rank(d->comm->mpi, &d->rank);
    MPI_Comm_size(d->comm->mpi, &d->size);
    if (MPI_Comm_split_type(d->comm->mpi, MPI_COMM_TYPE_SHARED, d->rank, MPI_INFO_NULL, &d->comm->node) !=
        MPI_SUCCESS)
        return ct_error(CT_ERR_MPI, "rank %d: MPI_Comm_split_type(SHARED) failed", d->rank);
    MPI_Comm_rank(d->comm->node, &d->local_rank);
    MPI_Comm_size(d->comm->node, &d->local_size);
    if (gethostname(d->host, sizeof d->host) != 0) snprintf(d->host, sizeof d->host, "unknown");
    d->host[sizeof d->host - 1] = 0;
    return CT_OK;
}

/* DDP's node leaders all-reduce between nodes with MPI_Iallreduce (src/parallel/allreduce.c).
 * Open MPI's non-blocking all-reduce (libnbc) picks a binomial tree for small worlds,
 * which sends every byte log2(N) times; its ring algorithm is bandwidth-optimal and about
 * twice as fast for DDP-sized buckets (tests/bench/bench_allreduce.c prints both). A
 * user's own setting wins, and MPI libraries other than Open MPI are left alone. It must
 * be set before MPI_Init reads it. */
static void tune_mpi(void) {
#ifdef OPEN_MPI
    setenv("OMPI_MCA_coll_libnbc_iallreduce_algorithm", "1", 0);
#endif
}

ct_status ct_dist_init(int *argc, char ***argv, ct_dist *d) {
    int inited = 0, provided = 0;
    MPI_Initialized(&inited);
    if (!inited) tune_mpi();
    if (!inited && MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
        return ct_error(CT_ERR_MPI, "MPI_Init_thread failed");
    /* Errors come back as codes we report ourselves (with the rank), not MPI's default
     * handler's terse abort. */
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    ct_status st = ct_dist_from_comm(MPI_COMM_WORLD, d);
    if (st != CT_OK) return st;
    abort_rank = d->rank;
    ct_set_abort_hook(mpi_abort_hook);
    return CT_OK;
}

void ct_dist_free(ct_dist *d) {
    if (!d->comm) return;
    if (d->comm->node != MPI_COMM_NULL) MPI_Comm_free(&d->comm->node);
    if (d->comm->mpi != MPI_COMM_NULL) MPI_Comm_free(&d->comm->mpi);
    free(d->comm);
    d->comm = NULL;
}

void ct_dist_finalize(ct_dist *d) {
    ct_dist_free(d);
    ct_set_abort_hook(NULL);
    int fin = 0;
    MPI_Finalized(&fin);
    if (!fin) MPI_Finalize();
}

/* ---- waiting ------------------------------------------------------------------------------ */

enum { SPINS = 64 };
#define YIELD_S 0.002 /* yield this long before sleeping */
#define MAX_SLEEP_NS 1000000L

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

double ct_wait_turn(ct_waiter *w, double timeout_s) {
    if (++w->spins <= SPINS) return 0;
    double t = now_s();
    if (w->t0 == 0) w->t0 = t;
    if (t - w->t0 < YIELD_S) {
        sched_yield();
    } else {
        w->sleep_ns = w->sleep_ns ? w->sleep_ns * 2 : 10000;
        if (w->sleep_ns > MAX_SLEEP_NS) w->sleep_ns = MAX_SLEEP_NS;
        nanosleep(&(struct timespec){0, w->sleep_ns}, NULL);
    }
    return timeout_s > 0 && t - w->t0 > timeout_s ? t - w->t0 : 0;
}

void ct_dist_set_timeout(ct_dist *d, double seconds) { d->comm->timeout_s = seconds > 0 ? seconds : 0; }

/* The only point-to-point messages on a ct_dist's communicator: "still here", after a timeout. */
enum { HERE_TAG = 0x4e7e };
#define LISTEN_S 2.0 /* how long a timed-out rank listens for the others' "still here" */

/* A collective does not say whom it waits for. Every rank that still answers is waiting in
 * the same collective and times out too, within the skew of their arrivals: each tells every
 * other rank it is here and listens for LISTEN_S seconds; the ranks not heard from go into
 * out ("rank 2", "ranks 1, 3"), or "some rank" if every rank was heard (the ranks are then
 * waiting in different collectives). The sends are never completed: the job ends next. */
static void silent_ranks(const ct_dist *d, char *out, size_t n) {
    static int token;
    bool *heard = ct_calloc((size_t)d->size, sizeof *heard);
    MPI_Request *reqs = ct_calloc((size_t)d->size, sizeof *reqs);
    for (int q = 0; q < d->size; q++)
        if (q != d->rank) MPI_Isend(&token, 1, MPI_INT, q, HERE_TAG, d->comm->mpi, &reqs[q]);
    int missing = d->size - 1;
    for (ct_waiter w = {0}; missing > 0 && ct_wait_turn(&w, LISTEN_S) == 0;) {
        int flag = 0, got;
        MPI_Status stat;
        MPI_Iprobe(MPI_ANY_SOURCE, HERE_TAG, d->comm->mpi, &flag, &stat);
        if (!flag) continue;
        MPI_Recv(&got, 1, MPI_INT, stat.MPI_SOURCE, HERE_TAG, d->comm->mpi, MPI_STATUS_IGNORE);
        if (!heard[stat.MPI_SOURCE]) heard[stat.MPI_SOURCE] = true, missing--;
    }
    size_t len = (size_t)snprintf(out, n, "%s", missing > 1 ? "ranks" : missing ? "rank" : "some rank");
    for (int q = 0, k = 0; q < d->size && len < n; q++)
        if (q != d->rank && !heard[q]) len += (size_t)snprintf(out + len, n - len, "%s %d", k++ ? "," : "", q);
    free(heard);
    free(reqs);
}

void ct_dist_wait(const ct_dist *d, MPI_Request *req, const char *what) {
    int done = 0;
    for (ct_waiter w = {0};;) {
        CT_CHECK_MPI(MPI_Test(req, &done, MPI_STATUS_IGNORE));
        if (done) return;
        double waited = ct_wait_turn(&w, d->comm->timeout_s);
        if (waited > 0) {
            char who[256];
            silent_ranks(d, who, sizeof who);
            ct_fatal("%s: %s has not answered for %.0f s (dist.timeout_s = %g): it is stopped, hung or dead",
                     what, who, waited, d->comm->timeout_s);
        }
    }
}

/* ---- agreement, broadcast, sum ---------------------------------------------------------- */

ct_status ct_dist_agree(const ct_dist *d, ct_status st, int *failed_rank) {
    int first = st != CT_OK ? d->rank : d->size;
    MPI_Request req;
    CT_CHECK_MPI(MPI_Iallreduce(MPI_IN_PLACE, &first, 1, MPI_INT, MPI_MIN, d->comm->mpi, &req));
    ct_dist_wait(d, &req, "agreeing on a status");
    if (failed_rank) *failed_rank = first < d->size ? first : -1;
    if (first == d->size) return CT_OK;
    /* The failing rank's status and message go to every rank, so all report one reason. */
    struct {
        int st;
        char msg[CT_ERROR_MSG_SIZE];
    } why = {0};
    if (d->rank == first) {
        why.st = (int)st;
        snprintf(why.msg, sizeof why.msg, "%s", ct_last_error());
    }
    ct_dist_bcast(d, &why, sizeof why, first);
    return ct_error((ct_status)why.st, "%s", why.msg);
}

void ct_dist_bcast(const ct_dist *d, void *buf, size_t bytes, int root) {
    CT_ASSERT(bytes <= INT_MAX, "ct_dist_bcast: %zu bytes is more than one call sends", bytes);
    MPI_Request req;
    CT_CHECK_MPI(MPI_Ibcast(buf, (int)bytes, MPI_BYTE, root, d->comm->mpi, &req));
    ct_dist_wait(d, &req, "a broadcast");
}

void ct_dist_sum(const ct_dist *d, double *x, int n) {
    MPI_Request req;
    CT_CHECK_MPI(MPI_Iallreduce(MPI_IN_PLACE, x, n, MPI_DOUBLE, MPI_SUM, d->comm->mpi, &req));
    ct_dist_wait(d, &req, "a sum over the ranks");
}
