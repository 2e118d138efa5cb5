#!/usr/bin/env bash
# torchvision parity for the ResNets: tests/parity/test_resnet_parity.py builds torchvision's
# resnet18/resnet50, loads their state_dicts strict into $B/tests/parity/resnet_dump and
# compares logits, loss, gradients, BatchNorm statistics and the step; exports back; checks
# that state_dicts that do not fit are refused. Without torchvision it prints "SKIP: ...".
set -u
cd "$(dirname "$0")/../.."
B=${B:-build}
PY=${PARITY_PYTHON:-/usr/bin/python3}
[ -x "$B/tests/parity/resnet_dump" ] || { echo "test_resnet_parity.sh: $B/tests/parity/resnet_dump is not built"; exit 1; }
[ -x "$B/ctrain" ] || { echo "test_resnet_parity.sh: $B/ctrain is not built"; exit 1; }
# Both sides use OpenBLAS: the fast kernels where the CPU has them (speed only).
if [ -z "${OPENBLAS_CORETYPE:-}" ] && grep -qw avx512f /proc/cpuinfo 2>/dev/null &&
   grep -qw avx512bw /proc/cpuinfo && grep -qw avx512dq /proc/cpuinfo && grep -qw avx512vl /proc/cpuinfo; then
    export OPENBLAS_CORETYPE=SkylakeX
fi
timeout 1800 "$PY" tests/parity/test_resnet_parity.py "$B"
