#!/usr/bin/env bash
# PyTorch parity of single ops (tests/parity): $B/tests/parity/ops_dump runs every op case
# forward and backward and writes inputs, upstream gradient, output and input gradients;
# test_ops_parity.py recomputes them with torch.nn.functional and compares. Without torch
# the python half prints "SKIP: torch not available" and passes; the C half still runs.
set -u
cd "$(dirname "$0")/../.."
B=${B:-build}
PY=${PARITY_PYTHON:-/usr/bin/python3}
dump="$B/tests/parity/ops_dump"
[ -x "$dump" ] || { echo "test_ops_parity.sh: $dump is not built (make $dump)"; exit 1; }
out=$(mktemp -d "${TMPDIR:-/tmp}/ct_ops_parity.XXXXXX")
trap 'rm -rf "$out"' EXIT
"$dump" "$out/ops.safetensors" || { echo "test_ops_parity.sh: ops_dump failed"; exit 1; }
timeout 600 "$PY" tests/parity/test_ops_parity.py "$out/ops.safetensors"
