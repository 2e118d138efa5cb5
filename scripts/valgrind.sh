#!/usr/bin/env bash
# make check-valgrind: the unit suites and a short 1-rank training run under memcheck.
# Passes when every suite reports 100% and memcheck finds 0 errors and 0 definite leaks
# (--error-exitcode turns either into a failing test or a failing run). Open MPI's own
# suppressions hide its known uninitialised-byte reports inside MPI_Init.
# CT_TEST_SMALL=1: the suites that would initialise tens of millions of parameters (resnet34/50,
# the ViT-B presets) build fewer or smaller models under memcheck (tests/unit/util.h). Each
# line reports the suite's wall time. VG_OUT (default $B/valgrind) is where the logs go and
# VG_TRAIN=0 skips the training run, so a subset of suites can run on its own.
set -uo pipefail
B=${B:-build}
out=${VG_OUT:-$B/valgrind}
mkdir -p "$out"
ulimit -c 0 # an abort test would otherwise leave a vgcore file per abort
export CK_TIMEOUT_MULTIPLIER=20 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 CT_TEST_SMALL=1
# libjpeg-turbo's SIMD chroma upsampling (h1v2, h2v2: 4:4:0 and 4:1:0 JPEGs) works on vector
# lanes past a row's end that memcheck cannot prove defined, so it reports the decoded pixels
# as uninitialised; the pixels do not depend on those lanes (the same bytes under any
# MALLOC_PERTURB_), and with libjpeg-turbo's plain C code memcheck reports nothing.
export JSIMD_FORCENONE=1
vg=(valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite
    --show-leak-kinds=definite --suppressions=/usr/share/openmpi/openmpi-valgrind.supp
    --suppressions=tests/valgrind.supp)
# A memcheck report in a forked Check child that ends by the signal its test expects (the
# abort tests) changes no exit status, so the log itself is searched for reports too.
reports() {
    grep -E '^==[0-9]+== (Invalid |Conditional jump|Use of uninitialised|Syscall param|Mismatched|Source and destination|Argument |.*definitely lost)' "$1"
}
fail=0
for t in "$@"; do
    name=$(basename "$t")
    start=$SECONDS
    if "${vg[@]}" "$t" >"$out/$name.log" 2>&1 && grep -q '^100%: Checks' "$out/$name.log" &&
        ! reports "$out/$name.log" >/dev/null; then
        echo "ok: $name: $(grep '^100%: Checks' "$out/$name.log") ($((SECONDS - start)) s)"
    else
        echo "FAIL $name after $((SECONDS - start)) s (see $out/$name.log)"
        grep -m5 -E '==[0-9]+== [A-Z]|Checks:|:[EF]:' "$out/$name.log" | sed 's/^/    /'
        fail=1
    fi
done
[ "${VG_TRAIN:-1}" = 0 ] && exit $fail
# one epoch of the MLP on 20 samples per class, one process (MPI singleton)
start=$SECONDS
run=$out/run
rm -rf "$run"
if "${vg[@]}" "$B/ctrain" train examples/fmnist_mlp.ini train.epochs=1 data.per_class=20 \
    output.dir="$run" >"$out/train.log" 2>&1 && grep -q '"event":"eval"' "$out/train.log" &&
    ! reports "$out/train.log" >/dev/null; then
    echo "ok: 1-rank training run: $(grep -c '"event":"eval"' "$out/train.log") evaluation, no memcheck error ($((SECONDS - start)) s)"
else
    echo "FAIL 1-rank training run (see $out/train.log)"
    grep -m5 -E '==[0-9]+== [A-Z]|error' "$out/train.log" | sed 's/^/    /'
    fail=1
fi
exit $fail
