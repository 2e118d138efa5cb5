# Sourced by scripts/bench.sh and by every benchmark block, scripts/bench_<block>.sh: the
# environment both frameworks run under and the helpers the blocks share.
#
# A block starts with a "# names: a b c" line listing the JSON lines ("bench" values) it can
# print; bench.sh runs it when BENCH (comma-separated names, default all) selects one of them,
# so a new scripts/bench_<block>.sh joins `make bench` and `make bench BENCH=...` by itself.
# A block can also run alone: `BENCH=train_cnn_1rank bash scripts/bench_compare.sh`.
#
# Knobs: BENCH, ROUNDS (alternating rounds per comparison; each block has its default),
# BENCH_QUICK=1 (a few steps only, to check the plumbing), PYTHON (the interpreter with
# torch; default /usr/bin/python3 if it has torch, else python3).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
B=${B:-build}
case $B in /*) ;; *) B=$root/$B ;; esac
source "$here/mpi_env.sh"
# One thread per process on both sides unless a block says otherwise; OpenBLAS 0.3.21 falls
# back to slow kernels on AVX-512 machines unless told their core type (both sides alike).
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
if [ -z "${OPENBLAS_CORETYPE:-}" ] && grep -qw avx512bw /proc/cpuinfo && grep -qw avx512vl /proc/cpuinfo; then
    export OPENBLAS_CORETYPE=SkylakeX
fi
QUICK=${BENCH_QUICK:-0}
export BENCH=${BENCH:-}

PY=${PYTHON:-}
if [ -z "$PY" ]; then
    for p in /usr/bin/python3 python3; do
        if "$p" -c 'import torch' 2>/dev/null; then PY=$p; break; fi
    done
fi
have_torch=0
if [ -n "$PY" ] && "$PY" -c 'import torch' 2>/dev/null; then have_torch=1; fi
GLUE_PY=${PY:-python3}
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" PYTHONDONTWRITEBYTECODE=1

# want NAME...: true if BENCH selects any of the names (an empty BENCH selects all)
want() {
    local n
    for n; do
        [ -z "$BENCH" ] || [[ ",$BENCH," == *",$n,"* ]] && return 0
    done
    return 1
}

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

ct() { # name ranks args...: one bench_train run, its JSON line appended to $out/name.ctrain
    local name=$1 np=$2
    shift 2
    if [ "$np" = 1 ]; then
        timeout 900 "$B/bench/bench_train" "$@" >>"$out/$name.ctrain"
    else
        timeout 900 mpirun "${CT_MPIRUN_FLAGS[@]}" -np "$np" "$B/bench/bench_train" "$@" >>"$out/$name.ctrain"
    fi
}
pt() { # name ranks args...: the same run of scripts/bench_torch.py, appended to $out/name.torch
    local name=$1 np=$2
    shift 2
    [ "$have_torch" = 1 ] || return 0
    timeout 900 "$PY" "$here/bench_torch.py" --ranks "$np" "$@" >>"$out/$name.torch"
}
both() { # name ranks args...: ctrain, then PyTorch, on the same arguments
    ct "$@"
    pt "$@"
}
# report: the block's summary, a Python program on stdin run with $out as its argument; it
# imports scripts/benchlib.py (emit prints only the lines BENCH selects).
report() { "$GLUE_PY" - "$out" "$@"; }
