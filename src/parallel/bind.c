/* hwloc binding: one share of the node's cores per rank, and intra-op threads to match,
 * each pinned to one of those cores. */
#include <hwloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Pins intra-op thread i to core i of the rank's cpuset (the same team the ops use), so a
 * thread keeps its core's caches (CT_PIN_THREADS=1); out->pinned lists each thread's PUs. */
static void pin_threads(hwloc_topology_t topo, hwloc_const_bitmap_t set, int threads,
                        ct_binding *out) {
    int cores = hwloc_get_nbobjs_inside_cpuset_by_type(topo, set, HWLOC_OBJ_CORE);
    if (cores < threads) return;
    char pus[64][16] = {{0}};
    bool ok = true;
#pragma omp parallel num_threads(threads) reduction(&& : ok)
    {
        int t = ct_thread_id();
        hwloc_obj_t core = hwloc_get_obj_inside_cpuset_by_type(topo, set, HWLOC_OBJ_CORE, (unsigned)t);
        ok = core && hwloc_set_cpubind(topo, core->cpuset, HWLOC_CPUBIND_THREAD) == 0;
        if (ok && t < 64) hwloc_bitmap_list_snprintf(pus[t], sizeof pus[t], core->cpuset);
    }
    if (!ok) return;
    size_t len = 0;
    for (int t = 0; t < threads && t < 64 && len < sizeof out->pinned; t++)
        len += (size_t)snprintf(out->pinned + len, sizeof out->pinned - len, "%s%s", t ? " " : "", pus[t]);
}

ct_status ct_dist_bind(const ct_dist *d, ct_binding *out) {
    memset(out, 0, sizeof *out);
    hwloc_topology_t topo;
    if (hwloc_topology_init(&topo) != 0 || hwloc_topology_load(topo) != 0)
        return ct_error(CT_ERR_IO, "rank %d: hwloc could not discover the topology", d->rank);
    int ncores = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_CORE);
    if (ncores < 1) ncores = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_PU);
    hwloc_bitmap_t cur = hwloc_bitmap_alloc();
    hwloc_get_cpubind(topo, cur, HWLOC_CPUBIND_PROCESS);
    const struct hwloc_bitmap_s *all = hwloc_topology_get_allowed_cpuset(topo);
    /* The launcher bound us if our cpuset is a strict subset of what the node allows. */
    bool launcher_bound = !hwloc_bitmap_isequal(cur, all) && hwloc_bitmap_isincluded(cur, all);
    int cores;
    if (launcher_bound) {
        cores = hwloc_get_nbobjs_inside_cpuset_by_type(topo, cur, HWLOC_OBJ_CORE);
        if (cores < 1) cores = 1;
    } else if (d->local_size > ncores) {
        cores = 1; /* more ranks than cores: binding would stack ranks, so leave it to the OS */
    } else {
        int per = ncores / d->local_size;
        hwloc_bitmap_t set = hwloc_bitmap_alloc();
        for (int c = d->local_rank * per; c < (d->local_rank + 1) * per; c++) {
            hwloc_obj_t core = hwloc_get_obj_by_type(topo, HWLOC_OBJ_CORE, (unsigned)c);
            if (core) hwloc_bitmap_or(set, set, core->cpuset);
        }
        if (!hwloc_bitmap_iszero(set) && hwloc_set_cpubind(topo, set, HWLOC_CPUBIND_PROCESS) == 0) {
            out->bound_by_us = true;
            hwloc_bitmap_copy(cur, set);
        }
        hwloc_bitmap_free(set);
        cores = per;
    }
    hwloc_bitmap_list_snprintf(out->cpus, sizeof out->cpus, cur);

    int threads = cores;
    const char *names[] = {"CT_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"};
    for (int i = 0; i < 3; i++) { /* the user's explicit choice, ctrun's first */
        const char *env = getenv(names[i]);
        if (!env || !*env) continue;
        char *end;
        long t = strtol(env, &end, 10);
        if (*end || t < 1) {
            hwloc_bitmap_free(cur);
            hwloc_topology_destroy(topo);
            return ct_error(CT_ERR_CONFIG, "rank %d: thread count %s='%s' is not a positive integer",
                            d->rank, names[i], env);
        }
        threads = (int)t < cores ? (int)t : cores; /* never oversubscribe our cores */
        break;
    }
    out->cores = cores;
    out->threads = threads;
    ct_set_threads(threads);
    /* Every thread of the rank is bound to the rank's cores (the process binding above).
     * One thread per core only on request: on a shared node a thread pinned to a busy core
     * cannot move, and a step waits for its slowest thread (2x slower measured here). */
    const char *pin = getenv("CT_PIN_THREADS");
    if ((launcher_bound || out->bound_by_us) && pin && !strcmp(pin, "1"))
        pin_threads(topo, cur, threads, out);
    hwloc_bitmap_free(cur);
    hwloc_topology_destroy(topo);
    return CT_OK;
}

void ct_dist_print_bindings(const ct_dist *d, const ct_binding *b) {
    char line[640];
    snprintf(line, sizeof line, "rank %d/%d host %s cores %s (%d) threads %d%s%s%s", d->rank,
             d->size, d->host, b->cpus, b->cores, b->threads, b->pinned[0] ? " on PUs " : "",
             b->pinned, b->bound_by_us ? "" : " (binding from the launcher or none)");
    char *all = d->rank == 0 ? ct_malloc(sizeof line * (size_t)d->size) : NULL;
    CT_CHECK_MPI(MPI_Gather(line, sizeof line, MPI_CHAR, all, sizeof line, MPI_CHAR, 0, d->comm->mpi));
    if (d->rank == 0) {
        for (int r = 0; r < d->size; r++) fprintf(stderr, "ctrain: %s\n", all + (size_t)r * sizeof line);
        free(all);
    }
}
