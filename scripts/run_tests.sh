#!/usr/bin/env bash
# Runs the given Check suites (unit tests), then the MPI suites ($MPI_TESTS) under mpirun
# with 2 and 3 ranks, each over the default transport and over TCP (what a multi-node run
# uses), then the script tests in tests/scripts and the fault suite in tests/faults. Every
# suite runs; the exit status is non-zero if any failed.
set -u
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:${UBSAN_OPTIONS:-}"
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
here=$(cd "$(dirname "$0")" && pwd)
source "$here/mpi_env.sh"
failed=()
for t in "$@"; do
    echo "== $t"
    "$t" || failed+=("$t")
done
for t in ${MPI_TESTS:-}; do
    for np in 2 3; do
        for btl in default tcp; do
            echo "== mpirun -np $np ($btl transport) $t"
            extra=()
            [ "$btl" = tcp ] && extra=(--mca btl self,tcp)
            # LeakSanitizer reports Open MPI's own allocations, which it never frees.
            # One intra-op thread per rank: 3 ranks x 2 threads would oversubscribe 2 cores.
            ASAN_OPTIONS="$ASAN_OPTIONS:detect_leaks=0" CK_FORK=no OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} \
                timeout 600 mpirun "${CT_MPIRUN_FLAGS[@]}" "${extra[@]}" -np $np "$t" ||
                failed+=("$t(np=$np,$btl)")
        done
    done
done
for t in "$here"/../tests/scripts/test_*.sh "$here"/../tests/faults/test_*.sh; do
    [ -e "$t" ] || continue
    echo "== $t"
    B=${B:-build} bash "$t" || failed+=("$t")
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED suites: ${failed[*]}"
    exit 1
fi
echo "all suites passed"
