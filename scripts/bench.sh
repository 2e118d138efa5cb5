#!/usr/bin/env bash
# Runs every benchmark; each prints one JSON object per line. Single-threaded BLAS unless
# the caller says otherwise, so ctrain and the PyTorch references compare like for like.
set -euo pipefail
B=${B:-build}
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
"$B/bench/bench_core"
B="$B" bash "$(dirname "$0")/bench_sweep.sh"
