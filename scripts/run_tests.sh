#!/usr/bin/env bash
# Runs the given Check suites (unit tests), then the MPI suites and the PyTorch parity
# tests. Every suite runs; the exit status is non-zero if any failed.
set -u
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:${UBSAN_OPTIONS:-}"
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
failed=()
for t in "$@"; do
    echo "== $t"
    "$t" || failed+=("$t")
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED suites: ${failed[*]}"
    exit 1
fi
echo "all suites passed"
