#!/usr/bin/env bash
# PyTorch parity (tests/parity): $B/tests/parity/parity_dump runs each model one training
# step and writes its weights, batch, logits, loss, gradients and checkpoints; then
# test_parity.py redoes it all in PyTorch and compares. Without torch the python half prints
# "SKIP: torch not available" and passes; the C half still runs (under the sanitizers too).
set -u
cd "$(dirname "$0")/../.."
B=${B:-build}
PY=${PARITY_PYTHON:-/usr/bin/python3}
dump="$B/tests/parity/parity_dump"
[ -x "$dump" ] || { echo "test_parity.sh: $dump is not built (make $dump)"; exit 1; }

# OpenBLAS 0.3.21 falls back to slow generic kernels on this CPU family; both sides use
# OpenBLAS, so give both the AVX-512 ones when the CPU has them (speed only: the comparison
# does not depend on it). A caller's own setting wins.
if [ -z "${OPENBLAS_CORETYPE:-}" ] &&
   grep -qw avx512f /proc/cpuinfo 2>/dev/null && grep -qw avx512bw /proc/cpuinfo &&
   grep -qw avx512dq /proc/cpuinfo && grep -qw avx512vl /proc/cpuinfo; then
    export OPENBLAS_CORETYPE=SkylakeX
fi

out=$(mktemp -d "${TMPDIR:-/tmp}/ct_parity.XXXXXX")
trap 'rm -rf "$out"' EXIT
"$dump" "$out" || { echo "test_parity.sh: parity_dump failed"; exit 1; }
timeout 600 "$PY" tests/parity/test_parity.py "$out"
