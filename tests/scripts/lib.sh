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
