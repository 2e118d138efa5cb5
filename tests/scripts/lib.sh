# Sourced by tests/scripts/test_*.sh: pass/fail bookkeeping, a scratch directory and the
# binaries under test. Each script ends with `finish`, which prints "N passed, M failed"
# (the line CI counts) and exits non-zero if anything failed.
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
B=${B:-build}
case $B in /*) ;; *) B=$ROOT/$B ;; esac
CTRAIN=$B/ctrain
CTRUN=$ROOT/launcher/ctrun
source "$ROOT/scripts/mpi_env.sh"
MPIRUN=(mpirun "${CT_MPIRUN_FLAGS[@]}")
# Open MPI never frees its own allocations; LeakSanitizer would fail every sanitized ctrain
# run on them (the unit suites check the library's leaks).
export ASAN_OPTIONS="${ASAN_OPTIONS:-}:detect_leaks=0"
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
unset CT_FAULT CT_THREADS CTRUN_CORES CTRUN_CTRAIN SLURM_JOB_ID

T=$(mktemp -d "${TMPDIR:-/tmp}/ct_script_test.XXXXXX")
trap 'rm -rf "$T"' EXIT
npass=0
nfail=0

pass() {
    npass=$((npass + 1))
    echo "ok: $*"
}
fail() {
    nfail=$((nfail + 1))
    echo "FAIL: $*"
}
# check NAME COMMAND...: passes when COMMAND succeeds.
check() {
    local name=$1
    shift
    if "$@"; then pass "$name"; else fail "$name"; fi
}
# expect_eq NAME EXPECTED ACTUAL
expect_eq() {
    if [ "$2" == "$3" ]; then
        pass "$1"
    else
        fail "$1: expected [$2], got [$3]"
    fi
}
# contains FILE STRING (fixed string)
contains() { grep -qF -- "$2" "$1"; }
# show the tail of a file when a step fails, to make CI logs useful
show() {
    echo "---- $1 (last 15 lines)"
    tail -n 15 "$1" | sed 's/^/    /'
}
finish() {
    echo "$npass passed, $nfail failed"
    exit $((nfail > 0))
}
# mpi NP COMMAND...: COMMAND under mpirun with NP ranks, bounded in time.
mpi() {
    local np=$1
    shift
    timeout 120 "${MPIRUN[@]}" -np "$np" "$@"
}
# run NAME NP ARGS...: ctrain ARGS with NP ranks (0: one plain process, no mpirun); stdout in
# $T/NAME.out, stderr in $T/NAME.err, status in $rc.
run() {
    local name=$1 np=$2
    shift 2
    if [ "$np" -eq 0 ]; then
        timeout 120 "$CTRAIN" "$@" >"$T/$name.out" 2>"$T/$name.err"
    else
        mpi "$np" "$CTRAIN" "$@" >"$T/$name.out" 2>"$T/$name.err"
    fi
    rc=$?
}
# ran_ok WHAT NAME: passes when the last run exited 0, else shows NAME's stderr.
ran_ok() {
    if [ "$rc" -eq 0 ]; then pass "$1 exits 0"; else fail "$1 exits $rc"; show "$T/$2.err"; fi
}
eval_lines() { grep '^{"event":"eval"' "$T/$1.out"; }
# npy_blobs DIR SEED NTRAIN NTEST: a 4-class problem with 16 features (class c's samples are
# centred on c), as DIR/{train,test}_{x,y}.npy, for runs that must take seconds.
npy_blobs() {
    /usr/bin/python3 - "$@" <<'PY'
import sys
import numpy as np
d, seed, sizes = sys.argv[1], int(sys.argv[2]), {"train": int(sys.argv[3]), "test": int(sys.argv[4])}
rng = np.random.default_rng(seed)
for split, n in sizes.items():
    y = rng.integers(0, 4, n)
    np.save(f"{d}/{split}_x.npy", (rng.normal(0, 1, (n, 16)) + y[:, None]).astype(np.float32))
    np.save(f"{d}/{split}_y.npy", y.astype(np.int64))
PY
}
