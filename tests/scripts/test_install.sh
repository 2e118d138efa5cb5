#!/usr/bin/env bash
# `make install PREFIX=...` puts the library, the public headers, ctrain.pc, ctrain and
# ctrun in place, and a program built with pkg-config against them runs.
source "$(dirname "$0")/lib.sh"

make -s -C "$ROOT" install PREFIX="$T/prefix" >"$T/install.log" 2>&1 ||
    { fail "make install"; show "$T/install.log"; finish; }
for f in lib/libctrain.a lib/libctrain.so lib/pkgconfig/ctrain.pc bin/ctrain bin/ctrun \
    include/ctrain/ctrain.h include/ctrain/parallel/parallel.h; do
    check "installs $f" test -e "$T/prefix/$f"
done
check "keeps private headers private" test ! -e "$T/prefix/include/ctrain/cli/cli.h"
check "keeps internal headers private" test ! -e "$T/prefix/include/ctrain/parallel/internal.h"
# A program that trains on one process needs no MPI include path: the umbrella header
# (parallel.h too: its communicator is an opaque handle) compiles with plain cc.
cat >"$T/nompi.c" <<'C'
#include <ctrain.h>
int main(void) {
    ct_dist d = {0};
    return d.comm != NULL;
}
C
check "ctrain.h compiles without <mpi.h> on the include path" \
    cc -std=c11 -Wall -Werror -I"$T/prefix/include/ctrain" -c "$T/nompi.c" -o "$T/nompi.o"
check "... and the installed headers include no <mpi.h> and name no MPI handle type" \
    bash -c "! grep -rqE '#include <mpi\.h>|MPI_(Comm|Win|Request|Datatype)\b' '$T/prefix/include/ctrain'"
cat >"$T/use.c" <<'C'
#include <ctrain.h>
#include <stdio.h>
int main(void) {
    CT_SCOPE {
        ct_tensor *w = ct_ones(CT_SHAPE(3));
        ct_set_requires_grad(w, true);
        ct_backward(ct_sum(ct_mul(w, w)));
        printf("%g\n", ct_grad(w)->data[0]);
    }
    return 0;
}
C
export PKG_CONFIG_PATH="$T/prefix/lib/pkgconfig"
# Under `make check SANITIZE=1` the installed library is the sanitized one, so the program
# must link the sanitizer runtimes too.
san=()
[ "${SANITIZE:-0}" = 1 ] && san=(-fsanitize=address,undefined)
if cc -std=c11 "${san[@]}" "$T/use.c" $(pkg-config --cflags --libs ctrain) -Wl,-rpath,"$T/prefix/lib" \
    -o "$T/use" 2>"$T/cc.log"; then
    expect_eq "a program built against the installed library runs" "2" "$("$T/use")"
else
    fail "compile against the installed library"
    show "$T/cc.log"
fi
finish
