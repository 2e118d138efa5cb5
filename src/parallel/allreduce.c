/* The gradient all-reduce behind DDP (see allreduce.h for the scheme). A range passes
 * through up to four stages, and each rank publishes how many ranges it has taken through
 * each stage in counters in a small shared window of its own:
 *   ARRIVED    the rank started the range (its gradients in it are final);
 *   REDUCED    it summed its slice of the range over the node's buffers;
 *   PUBLISHED  (leader, several nodes) the leaders' MPI all-reduce of the range is done;
 *   COPIED     (other ranks, several nodes) it copied the result from the leader.
 * Two more count agreement rounds (VOTED, and DECIDED on a leader of several nodes). Counts
 * only grow for the life of the object, so a reader never sees one reset under it. Each
 * rank does all its own stages, in range order, from progress() and wait(). */
#include <stdalign.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "allreduce.h"

enum { ARRIVED, REDUCED, PUBLISHED, COPIED, VOTED, DECIDED, NCOUNTERS };

/* One cache line each: other ranks spin on them. VOTED and DECIDED carry a value per round,
 * in two slots by parity: a rank can be one round ahead of a reader, never two. */
typedef struct {
    alignas(64) _Atomic int64_t v;
    _Atomic uint64_t val[2];
} counter;
typedef struct {
    counter c[NCOUNTERS];
} counters;

typedef struct {
    int64_t begin, end;
} range;

struct ct_allreduce {
    MPI_Comm node;    /* the ranks that share memory (one rank without shm) */
    MPI_Comm leaders; /* local rank 0 of every node; MPI_COMM_NULL on the others */
    int nrank, nsize, nnodes, world;
    float scale;      /* 1 / world size: the sum becomes the mean on the way */
    MPI_Win ctl, data; /* the counters, and the buffers (several node ranks only) */
    bool have_data;
    float *priv;      /* the buffer of a node of one rank (no window needed) */
    counters own;     /* ... and its counters */
    float **buf;      /* every node rank's buffer */
    counters **ctr;   /* every node rank's counters */
    range *r;         /* this step's ranges, in start order */
    MPI_Request *req; /* the leader's all-reduce of each */
    int nr, cap;
    int nreduced, nposted, npublished, ncopied; /* this rank's progress through r */
    int64_t base;     /* ranges finished in earlier steps */
    int64_t rounds;   /* agreement rounds so far */
    int *wrank;       /* world rank of every node rank, for messages */
    double timeout_s; /* a wait this long ends the job; 0 = never */
};

static int64_t get(const ct_allreduce *a, int q, int which) {
    return atomic_load_explicit(&a->ctr[q]->c[which].v, memory_order_acquire);
}

static void set(ct_allreduce *a, int which, int64_t v) {
    atomic_store_explicit(&a->ctr[a->nrank]->c[which].v, v, memory_order_release);
}

/* Ends the job naming what the wait is for: the first node rank whose counter `which` is
 * below n, or (which < 0, between nodes) the leaders' MPI all-reduce. Returns if no rank
 * lags any more (it answered just now). */
static void timed_out(const ct_allreduce *a, int which, int64_t n, double waited);

/* One turn of a wait loop for node ranks to reach n at `which`. */
static void backoff(const ct_allreduce *a, ct_waiter *w, int which, int64_t n) {
    double waited = ct_wait_turn(w, a->timeout_s);
    if (waited > 0) timed_out(a, which, n, waited);
}

/* Waits until node rank q has counted n at `which`. */
static void spin_until(const ct_allreduce *a, int q, int which, int64_t n) {
    for (ct_waiter w = {0}; get(a, q, which) < n;) backoff(a, &w, which, n);
}

/* True when every node rank except `skip` has taken n ranges through stage `which`. */
static bool node_reached(const ct_allreduce *a, int which, int64_t n, int skip) {
    for (int q = 0; q < a->nsize; q++)
        if (q != skip && get(a, q, which) < n) return false;
    return true;
}

/* Collective over the node: a window of `bytes` per rank in memory all of them can load and
 * store, each rank's part on its own pages from a 64-byte boundary (Open MPI does not align
 * the parts). Returns every rank's part (malloc'd array; free it). */
static char **shared_alloc(ct_allreduce *a, size_t bytes, MPI_Win *win) {
    char **parts = ct_calloc((size_t)a->nsize, sizeof *parts);
    MPI_Info info;
    MPI_Info_create(&info);
    MPI_Info_set(info, "alloc_shared_noncontig", "true");
    char *mine;
    int rc = MPI_Win_allocate_shared((MPI_Aint)(64 + bytes), 1, info, a->node, &mine, win);
    MPI_Info_free(&info);
    if (rc != MPI_SUCCESS)
        ct_fatal("cannot allocate %zu bytes of memory shared between the ranks of a node for the "
                 "gradients; set dist.shm = false to send them through MPI instead",
                 64 + bytes);
    /* A passive-target epoch for the window's lifetime: MPI's license for direct loads and
     * stores; the counters' acquire/release order them. */
    CT_CHECK_MPI(MPI_Win_lock_all(MPI_MODE_NOCHECK, *win));
    for (int q = 0; q < a->nsize; q++) {
        MPI_Aint size;
        int disp;
        char *p;
        CT_CHECK_MPI(MPI_Win_shared_query(*win, q, &size, &disp, &p));
        parts[q] = p + (64 - (uintptr_t)p % 64) % 64;
    }
    return parts;
}

ct_allreduce *ct_allreduce_new(const ct_dist *d, bool shm) {
    ct_allreduce *a = ct_calloc(1, sizeof *a);
    a->world = d->size;
    a->scale = 1.0f / (float)d->size;
    CT_CHECK_MPI(MPI_Comm_dup(shm ? d->comm->node : MPI_COMM_SELF, &a->node));
    MPI_Comm_rank(a->node, &a->nrank);
    MPI_Comm_size(a->node, &a->nsize);
    CT_CHECK_MPI(MPI_Comm_split(d->comm->mpi, a->nrank == 0 ? 0 : MPI_UNDEFINED, d->rank, &a->leaders));
    if (a->nrank == 0) MPI_Comm_size(a->leaders, &a->nnodes);
    CT_CHECK_MPI(MPI_Bcast(&a->nnodes, 1, MPI_INT, 0, a->node));
    a->buf = ct_calloc((size_t)a->nsize, sizeof *a->buf);
    a->ctr = ct_calloc((size_t)a->nsize, sizeof *a->ctr);
    a->wrank = ct_calloc((size_t)a->nsize, sizeof *a->wrank);
    CT_CHECK_MPI(MPI_Allgather(&d->rank, 1, MPI_INT, a->wrank, 1, MPI_INT, a->node));
    if (a->nsize == 1) {
        a->ctr[0] = &a->own;
    } else {
        char **parts = shared_alloc(a, sizeof(counters), &a->ctl);
        for (int q = 0; q < a->nsize; q++) a->ctr[q] = (counters *)parts[q];
        free(parts);
        memset(a->ctr[a->nrank], 0, sizeof(counters));
        /* every counter is zero before any rank reads one */
        CT_CHECK_MPI(MPI_Barrier(a->node));
    }
    return a;
}

void ct_allreduce_set_timeout(ct_allreduce *a, double seconds) { a->timeout_s = seconds > 0 ? seconds : 0; }

static void release_buffer(ct_allreduce *a) {
    if (a->have_data) {
        MPI_Win_unlock_all(a->data);
        MPI_Win_free(&a->data); /* collective: no rank is still reading the others' memory */
        a->have_data = false;
    }
    free(a->priv);
    a->priv = NULL;
}

void ct_allreduce_free(ct_allreduce *a) {
    if (!a) return;
    release_buffer(a);
    if (a->nsize > 1) {
        MPI_Win_unlock_all(a->ctl);
        MPI_Win_free(&a->ctl);
    }
    if (a->leaders != MPI_COMM_NULL) MPI_Comm_free(&a->leaders);
    MPI_Comm_free(&a->node);
    free(a->buf);
    free(a->ctr);
    free(a->wrank);
    free(a->r);
    free(a->req);
    free(a);
}

float *ct_allreduce_resize(ct_allreduce *a, int64_t numel) {
    CT_ASSERT(a->nr == 0, "allreduce: resized with %d ranges in flight", a->nr);
    release_buffer(a);
    size_t bytes = ((size_t)numel * sizeof(float) + 63) / 64 * 64;
    if (a->nsize == 1) {
        a->priv = ct_aligned_malloc(64, bytes ? bytes : 64);
        a->buf[0] = a->priv;
    } else {
        char **parts = shared_alloc(a, bytes, &a->data);
        for (int q = 0; q < a->nsize; q++) a->buf[q] = (float *)parts[q];
        free(parts);
        a->have_data = true;
    }
    return a->buf[a->nrank];
}

void ct_allreduce_start(ct_allreduce *a, int64_t begin, int64_t end) {
    if (a->world == 1) return;
    if (a->nr == a->cap) {
        a->cap = a->cap ? 2 * a->cap : 16;
        a->r = ct_realloc(a->r, (size_t)a->cap * sizeof *a->r);
        a->req = ct_realloc(a->req, (size_t)a->cap * sizeof *a->req);
    }
    a->r[a->nr] = (range){begin, end};
    a->req[a->nr] = MPI_REQUEST_NULL;
    a->nr++;
    set(a, ARRIVED, a->base + a->nr);
}

/* out[o][i] = (in[0][i] + ... + in[n-1][i]) * scale for i in [lo, hi) and every o, in blocks
 * that stay in L1 so that each pass is a plain vectorised loop. Summing in rank order
 * makes the result the same bits whichever rank computes it. */
static void sum_into(float *const *in, int n, float scale, float *const *out, int nout, int64_t lo,
                     int64_t hi) {
    enum { BLOCK = 1024 };
    float acc[BLOCK];
    for (int64_t i = lo; i < hi; i += BLOCK) {
        int m = (int)(hi - i < BLOCK ? hi - i : BLOCK);
        memcpy(acc, in[0] + i, (size_t)m * sizeof *acc);
        for (int q = 1; q < n; q++) {
            const float *b = in[q] + i;
            for (int j = 0; j < m; j++) acc[j] += b[j];
        }
        for (int j = 0; j < m; j++) acc[j] *= scale;
        for (int o = 0; o < nout; o++) memcpy(out[o] + i, acc, (size_t)m * sizeof *acc);
    }
}

/* Slice k of n of [begin, end), cut at cache-line boundaries so no two ranks write one line. */
static int64_t cut(int64_t begin, int64_t end, int k, int n) {
    if (k == n) return end;
    int64_t x = (begin + (end - begin) * k / n) / 16 * 16;
    return x < begin ? begin : x;
}

/* This rank's slice of range r, summed over the node: with one node the mean goes into every
 * buffer; otherwise the node's share of it goes into the leader's, for the leaders to sum. */
static void reduce_slice(ct_allreduce *a, const range *r) {
    int64_t lo = cut(r->begin, r->end, a->nrank, a->nsize), hi = cut(r->begin, r->end, a->nrank + 1, a->nsize);
    sum_into(a->buf, a->nsize, a->scale, a->buf, a->nnodes == 1 ? a->nsize : 1, lo, hi);
}

void ct_allreduce_progress(ct_allreduce *a) {
    while (a->nreduced < a->nr && node_reached(a, ARRIVED, a->base + a->nreduced + 1, -1)) {
        reduce_slice(a, &a->r[a->nreduced++]);
        set(a, REDUCED, a->base + a->nreduced);
    }
    if (a->nnodes == 1) return;
    if (a->nrank == 0) {
        /* The leaders post in range order, so every leader issues the same sequence. */
        while (a->nposted < a->nreduced && node_reached(a, REDUCED, a->base + a->nposted + 1, -1)) {
            const range *r = &a->r[a->nposted];
            CT_CHECK_MPI(MPI_Iallreduce(MPI_IN_PLACE, a->buf[0] + r->begin, (int)(r->end - r->begin),
                                        MPI_FLOAT, MPI_SUM, a->leaders, &a->req[a->nposted]));
            a->nposted++;
        }
        while (a->npublished < a->nposted) {
            int done = 0;
            CT_CHECK_MPI(MPI_Test(&a->req[a->npublished], &done, MPI_STATUS_IGNORE));
            if (!done) break;
            set(a, PUBLISHED, a->base + ++a->npublished);
        }
    } else {
        while (a->ncopied < a->nr && get(a, 0, PUBLISHED) >= a->base + a->ncopied + 1) {
            const range *r = &a->r[a->ncopied++];
            memcpy(a->buf[a->nrank] + r->begin, a->buf[0] + r->begin, (size_t)(r->end - r->begin) * sizeof(float));
            set(a, COPIED, a->base + a->ncopied);
        }
    }
}

/* Every range is final in this rank's buffer, and no other rank will read or write it. */
static bool finished(const ct_allreduce *a) {
    int64_t end = a->base + a->nr;
    if (a->nreduced < a->nr) return false;
    if (a->nnodes == 1) return node_reached(a, REDUCED, end, -1); /* all wrote into mine */
    if (a->nrank != 0) return a->ncopied == a->nr;  /* copied after every rank summed */
    return a->npublished == a->nr && node_reached(a, COPIED, end, 0); /* all copied mine */
}

/* What an unfinished wait is waiting for: node ranks to reach *n at *which, or (*which =
 * -1) the leaders' MPI all-reduce. Mirrors finished() and progress(). */
static void pending(const ct_allreduce *a, int *which, int64_t *n) {
    int64_t end = a->base + a->nr;
    *which = -1;
    if (a->nreduced < a->nr) *which = ARRIVED, *n = a->base + a->nreduced + 1;
    else if (a->nnodes == 1) *which = REDUCED, *n = end;
    else if (a->nrank != 0) *which = PUBLISHED, *n = a->base + a->ncopied + 1; /* the leader's */
    else if (a->nposted < a->nr) *which = REDUCED, *n = a->base + a->nposted + 1;
    else if (a->npublished == a->nr) *which = COPIED, *n = end;
}

static void timed_out(const ct_allreduce *a, int which, int64_t n, double waited) {
    if (which < 0)
        ct_fatal("all-reduce: the node leaders' MPI all-reduce has not completed for %.0f s (dist.timeout_s = "
                 "%g): a rank on another node is stopped, hung or dead", waited, a->timeout_s);
    for (int q = 0; q < a->nsize; q++)
        if (q != a->nrank && get(a, q, which) < n)
            ct_fatal("all-reduce: rank %d has not answered for %.0f s (dist.timeout_s = %g): it is stopped, "
                     "hung or dead", a->wrank[q], waited, a->timeout_s);
}

void ct_allreduce_wait(ct_allreduce *a) {
    for (ct_waiter w = {0}; !finished(a);) {
        ct_allreduce_progress(a);
        int which = -1;
        int64_t n = 0;
        if (w.t0 > 0) pending(a, &which, &n); /* only needed once the wait is long */
        backoff(a, &w, which, n);
    }
    a->base += a->nr;
    a->nr = a->nreduced = a->nposted = a->npublished = a->ncopied = 0;
}

bool ct_allreduce_agree(ct_allreduce *a, uint64_t v) {
    if (a->world == 1) return true;
    int64_t round = ++a->rounds;
    int slot = (int)(round & 1);
    counter *mine = &a->ctr[a->nrank]->c[VOTED];
    atomic_store_explicit(&mine->val[slot], v, memory_order_relaxed);
    set(a, VOTED, round);
    /* Every rank compares every vote with its own: if any two differ, each rank sees at
     * least one that differs from its own, so all reach the same verdict. */
    bool same = true;
    for (int q = 0; q < a->nsize; q++) {
        spin_until(a, q, VOTED, round);
        same &= atomic_load_explicit(&a->ctr[q]->c[VOTED].val[slot], memory_order_relaxed) == v;
    }
    if (a->nnodes == 1) return same;
    if (a->nrank == 0) {
        /* All equal iff max(v) == min(v) == ~max(~v); a node that disagrees sends values
         * that cannot pass. */
        uint64_t mm[2] = {same ? v : UINT64_MAX, same ? ~v : UINT64_MAX};
        CT_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, mm, 2, MPI_UINT64_T, MPI_MAX, a->leaders));
        same = mm[0] == ~mm[1];
        atomic_store_explicit(&a->ctr[0]->c[DECIDED].val[slot], same, memory_order_relaxed);
        set(a, DECIDED, round);
        return same;
    }
    spin_until(a, 0, DECIDED, round);
    return atomic_load_explicit(&a->ctr[0]->c[DECIDED].val[slot], memory_order_relaxed) != 0;
}
