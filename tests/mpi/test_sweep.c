/* Sweep groups and the job queue under mpirun (-np 2, -np 3): every job is handed out
 * exactly once, all ranks of a group see the same jobs, a group that is busy leaves the
 * remaining jobs to the others, and ct_dist_agree gives every rank the same verdict.
 * Assertions are made on values reduced across ranks, so all ranks pass or fail together. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctrain.h"
#include "parallel/internal.h"
#include "mpi_util.h"


static int all_min(int v, MPI_Comm c) {
    MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_INT, MPI_MIN, c);
    return v;
}

/* Takes every job this group gets; checks the group's ranks agree on the sequence and
 * world rank 0 sees each job exactly once. Returns how many jobs this group took. */
static int drain_and_check(ct_sweep *s, int64_t njobs) {
    int64_t *mine = malloc((size_t)(njobs + 1) * sizeof *mine);
    int n = 0;
    for (int64_t j; (j = ct_sweep_next(s)) >= 0;) {
        ck_assert(n < njobs + 1);
        mine[n++] = j;
    }
    ck_assert_int_eq(ct_sweep_next(s), -1); /* and stays empty */
    /* same sequence on every rank of the group: compare a position-weighted sum */
    long long h[2] = {n, 0};
    for (int i = 0; i < n; i++) h[1] += (i + 1) * (mine[i] + 7);
    long long mx[2], mn[2];
    MPI_Allreduce(h, mx, 2, MPI_LONG_LONG, MPI_MAX, s->group.comm->mpi);
    MPI_Allreduce(h, mn, 2, MPI_LONG_LONG, MPI_MIN, s->group.comm->mpi);
    int same = mx[0] == mn[0] && mx[1] == mn[1];
    ck_assert_int_eq(all_min(same, D.comm->mpi), 1);

    void *all = NULL;
    int nall = 0;
    ct_sweep_gather(s, mine, s->group.rank == 0 ? n : 0, sizeof *mine, &all, &nall);
    int ok = 1;
    if (D.rank == 0) {
        char *seen = calloc((size_t)njobs + 1, 1);
        ok = nall == njobs;
        for (int i = 0; i < nall && ok; i++) {
            int64_t j = ((int64_t *)all)[i];
            ok = j >= 0 && j < njobs && !seen[j];
            if (ok) seen[j] = 1;
        }
        free(seen);
    }
    MPI_Bcast(&ok, 1, MPI_INT, 0, D.comm->mpi);
    ck_assert_msg(ok, "jobs lost or handed out twice (njobs %lld)", (long long)njobs);
    free(all);
    free(mine);
    return n;
}

START_TEST(every_job_exactly_once) {
    const int sizes[] = {1, 2, 3, 5, 0};
    const int64_t counts[] = {0, 1, 7, 40};
    for (int a = 0; a < 5; a++) {
        for (int b = 0; b < 4; b++) {
            ct_sweep s;
            ck_assert_int_eq(ct_sweep_open(&D, sizes[a], counts[b], &s), CT_OK);
            int gs = sizes[a] < 1 ? 1 : sizes[a] > D.size ? D.size : sizes[a];
            ck_assert_int_eq(s.ngroups, (D.size + gs - 1) / gs);
            ck_assert_int_eq(s.group_index, D.rank / gs);
            ck_assert_int_eq(s.group.rank, D.rank % gs);
            int expect_size = D.rank / gs == s.ngroups - 1 ? D.size - gs * (s.ngroups - 1) : gs;
            ck_assert_int_eq(s.group.size, expect_size);
            /* on one node Open MPI always has the shared-memory window */
            ck_assert_int_eq(all_min(s.dynamic, D.comm->mpi), 1);
            drain_and_check(&s, counts[b]);
            ct_sweep_close(&s);
        }
    }
}
END_TEST

/* Group 0 takes one job and then blocks until every other group has emptied the queue:
 * with an on-demand queue the others take everything else (dealt round-robin, group 0
 * would still own a third or half of the jobs). */
START_TEST(busy_group_leaves_jobs_to_others) {
    const int64_t njobs = 30;
    ct_sweep s;
    ck_assert_int_eq(ct_sweep_open(&D, 1, njobs, &s), CT_OK);
    int64_t *mine = malloc((size_t)njobs * sizeof *mine);
    int n = 0;
    if (D.rank == 0) {
        int64_t j = ct_sweep_next(&s);
        if (j >= 0) mine[n++] = j;
        for (int r = 1; r < D.size; r++) {
            int done;
            MPI_Recv(&done, 1, MPI_INT, r, 99, D.comm->mpi, MPI_STATUS_IGNORE);
        }
        ck_assert_int_eq(ct_sweep_next(&s), -1);
    } else {
        for (int64_t j; (j = ct_sweep_next(&s)) >= 0;) mine[n++] = j;
        int done = 1;
        MPI_Send(&done, 1, MPI_INT, 0, 99, D.comm->mpi);
    }
    int total = n, first = D.rank == 0 ? n : 0;
    MPI_Allreduce(MPI_IN_PLACE, &total, 1, MPI_INT, MPI_SUM, D.comm->mpi);
    MPI_Allreduce(MPI_IN_PLACE, &first, 1, MPI_INT, MPI_SUM, D.comm->mpi);
    ck_assert_int_eq(total, njobs);
    ck_assert_int_le(first, 1);
    free(mine);
    ct_sweep_close(&s);
}
END_TEST

START_TEST(agree_reports_lowest_failing_rank) {
    ct_error(CT_ERR_ARG, "stale message");
    int failed = 42;
    ck_assert_int_eq(ct_dist_agree(&D, CT_OK, &failed), CT_OK);
    ck_assert_int_eq(failed, -1);

    /* ranks >= 1 fail with their own reason; everyone reports rank 1's */
    ct_status st = D.rank >= 1 ? ct_error(D.rank == 1 ? CT_ERR_IO : CT_ERR_SHAPE,
                                          "rank %d: file%d is bad", D.rank, D.rank)
                               : CT_OK;
    st = ct_dist_agree(&D, st, &failed);
    ck_assert_int_eq(st, CT_ERR_IO);
    ck_assert_str_eq(ct_last_error(), "rank 1: file1 is bad");
    ck_assert_int_eq(failed, 1);

    /* only the last rank fails */
    st = D.rank == D.size - 1 ? ct_error(CT_ERR_FORMAT, "last rank says no") : CT_OK;
    st = ct_dist_agree(&D, st, &failed);
    ck_assert_int_eq(st, CT_ERR_FORMAT);
    ck_assert_str_eq(ct_last_error(), "last rank says no");
    ck_assert_int_eq(failed, D.size - 1);
    ck_assert_int_eq(ct_dist_agree(&D, CT_OK, NULL), CT_OK); /* failed_rank may be NULL */
}
END_TEST

START_TEST(gather_keeps_rank_order) {
    ct_sweep s;
    ck_assert_int_eq(ct_sweep_open(&D, 1, 0, &s), CT_OK);
    typedef struct {
        int rank, i;
        char tag[32];
    } rec;
    rec mine[8];
    for (int i = 0; i < D.rank; i++) { /* rank r sends r records */
        mine[i].rank = D.rank;
        mine[i].i = i;
        snprintf(mine[i].tag, sizeof mine[i].tag, "r%d-%d", D.rank, i);
    }
    void *all = NULL;
    int nall = 0;
    ct_sweep_gather(&s, mine, D.rank, sizeof *mine, &all, &nall);
    int ok = 1;
    if (D.rank == 0) {
        const rec *g = all;
        int k = 0;
        for (int r = 0; r < D.size; r++)
            for (int i = 0; i < r; i++, k++) {
                char want[32];
                snprintf(want, sizeof want, "r%d-%d", r, i);
                ok &= k < nall && g[k].rank == r && g[k].i == i && strcmp(g[k].tag, want) == 0;
            }
        ok &= k == nall;
    } else {
        ok = all == NULL && nall == 0;
    }
    ck_assert_int_eq(all_min(ok, D.comm->mpi), 1);
    free(all);
    ct_sweep_close(&s);
}
END_TEST

static Suite *make_suite(void) {
    Suite *s = suite_create("sweep");
    TCase *tc = tcase_create("sweep");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, every_job_exactly_once);
    tcase_add_test(tc, busy_group_leaves_jobs_to_others);
    tcase_add_test(tc, agree_reports_lowest_failing_rank);
    tcase_add_test(tc, gather_keeps_rank_order);
    suite_add_tcase(s, tc);
    return s;
}

int main(int argc, char **argv) { return ct_mpi_test_main(argc, argv, make_suite); }
