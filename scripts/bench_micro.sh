#!/usr/bin/env bash
# names: linear_mlp alloc nograd_forward allreduce
# ctrain alone, about 1 minute:
# - build/bench/bench_core: linear_mlp (the MLP's forward+backward GFLOP/s against raw sgemm on
#   the same shapes), alloc (system mallocs per steady-state CNN step), nograd_forward (the
#   CNN at batch 1000 with and without grad mode: time and bytes kept alive).
# - allreduce: build/bench/bench_allreduce under mpirun on 2 and 3 ranks, with libnbc's ring
#   (as ctrain runs) and its default: the all-reduce costs behind DDP's choices (MPI's and
#   ctrain's own through shared memory); scripts/scaling_model.py reads these lines.
source "$(cd "$(dirname "$0")" && pwd)/benchlib.sh"
if want linear_mlp alloc nograd_forward; then
    "$B/bench/bench_core" >"$out/core"
    report <<'PY'
from benchlib import emit, runs
for d in runs("core"):
    emit(d)
PY
fi
if want allreduce; then
    for np in 2 3; do
        for alg in ring default; do
            env=()
            [ $alg = default ] && env=(-x OMPI_MCA_coll_libnbc_iallreduce_algorithm=0)
            timeout 300 mpirun "${CT_MPIRUN_FLAGS[@]}" "${env[@]}" -np $np "$B/bench/bench_allreduce"
        done
    done
fi
