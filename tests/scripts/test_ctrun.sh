#!/usr/bin/env bash
# launcher/ctrun: the launch command it builds (--dry-run) for mpirun and srun, bad usage,
# exit status pass-through, how it finds ctrain, and a real 2-rank training run.
source "$(dirname "$0")/lib.sh"
CFG=$ROOT/examples/fmnist_mlp.ini

# dry NAME [ENV=VAL ...] -- CTRUN-ARGS...: runs ctrun --dry-run, leaves its stdout in $out,
# its stderr in $T/dry.err and its exit status in $rc. The ctrain it resolves is a stand-in,
# so these cases do not depend on the build.
fake_ctrain=$T/bin/ctrain
mkdir -p "$T/bin" && printf '#!/bin/sh\nexit 0\n' >"$fake_ctrain" && chmod +x "$fake_ctrain"
dry() {
    local envs=()
    while [ "$1" != -- ]; do envs+=("$1"); shift; done
    shift
    out=$(env CTRUN_CTRAIN="$fake_ctrain" "${envs[@]}" "$CTRUN" --dry-run "$@" 2>"$T/dry.err")
    rc=$?
}
has() { [[ " $out " == *" $1 "* ]]; }
lacks() { ! has "$1"; }

# ---- mpirun ---------------------------------------------------------------------------------
dry CTRUN_CORES=8 -- -np 2 -- ctrain train "$CFG" train.epochs=2
expect_eq "dry-run exits 0" 0 "$rc"
expect_eq "dry-run prints one line" 1 "$(printf '%s\n' "$out" | wc -l)"
check "mpirun without Slurm" [ "${out%% *}" = mpirun ]
check "-np reflected" has "-np 2"
check "cores/ranks threads: 2 ranks x 4 cores bound (PE=4)" has "--map-by socket:PE=4 --bind-to core"
check "thread env exported with -x" has "-x CT_THREADS=4 -x OMP_NUM_THREADS=4 -x OPENBLAS_NUM_THREADS=4"
check "ctrain resolved, the rest passed through" has "$fake_ctrain train $CFG train.epochs=2"
check "no oversubscription when it fits" lacks "--oversubscribe"
if [ "$(id -u)" -eq 0 ]; then
    check "root gets --allow-run-as-root" has "--allow-run-as-root"
    if command -v setpriv >/dev/null; then
        # The same command as an unprivileged user must not carry the flag.
        cp "$CTRUN" "$T/bin/ctrun" && chmod 755 "$T" "$T/bin"
        out=$(env CTRUN_CORES=8 setpriv --reuid=65534 --regid=65534 --clear-groups \
            bash "$T/bin/ctrun" -np 2 --dry-run -- ctrain train x 2>/dev/null)
        check "non-root: no --allow-run-as-root" lacks "--allow-run-as-root"
        check "non-root: still mpirun -np 2" has "mpirun -np 2"
    fi
else
    check "non-root: no --allow-run-as-root" lacks "--allow-run-as-root"
fi

dry CTRUN_CORES=8 -- -np 3 -- ctrain train "$CFG"
check "default threads = cores / ranks rounded down (8/3 = 2)" has "-x CT_THREADS=2"
check "3 ranks x 2 cores bound" has "--map-by socket:PE=2 --bind-to core"

dry CTRUN_CORES=8 -- -np 8 -- ctrain train "$CFG"
check "one core per rank maps by core" has "--map-by core --bind-to core"
check "one thread per rank" has "-x OMP_NUM_THREADS=1"

dry CTRUN_CORES=8 -- -np 2 --threads 3 -- ctrain train "$CFG"
check "--threads reflected in PE and env" has "--map-by socket:PE=3 --bind-to core"
check "--threads exported" has "-x OPENBLAS_NUM_THREADS=3"

dry CTRUN_CORES=8 -- -np 2 --threads 8 -- ctrain train "$CFG"
check "threads x ranks > cores: nothing bound" has "--bind-to none --oversubscribe"
check "threads x ranks > cores: no core binding" lacks "--bind-to core"
check "threads x ranks > cores: threads still exported" has "-x CT_THREADS=8"

dry CTRUN_CORES=2 -- -np 3 -- ctrain train "$CFG"
check "more ranks than cores: oversubscribed, unbound" has "--bind-to none --oversubscribe"
check "more ranks than cores: 1 thread" has "-x CT_THREADS=1"

printf '# two nodes\nnode1 slots=8\nnode2 slots=8  # comment\n\n' >"$T/hosts"
dry -- -np 4 --hostfile "$T/hosts" -- ctrain train "$CFG"
check "--hostfile reflected" has "--hostfile $T/hosts"
check "hostfile: 2 ranks per node x 4 cores from its slots" has "--map-by ppr:2:node:PE=4 --bind-to core"
check "hostfile: threads from slots" has "-x CT_THREADS=4"
dry -- -np 4 --hostfile "$T/hosts" --threads 2 -- ctrain train "$CFG"
check "hostfile with --threads" has "--map-by ppr:2:node:PE=2 --bind-to core"

# The line is shell-quoted: reading it back gives the same words.
odd=('output.dir=a dir/with "quotes"' '$HOME' "it's" '' $'tab\there' 'a,b=c')
dry CTRUN_CORES=4 -- -np 1 -- ctrain train "$CFG" "${odd[@]}"
expect_eq "dry-run with odd arguments is still one line" 1 "$(printf '%s\n' "$out" | wc -l)"
eval "set -- $out"
expect_eq "odd arguments survive the round trip (spaces, quotes, \$, empty, tab)" \
    "$(printf '[%s]' "${odd[@]}")" "$(printf '[%s]' "${@: -${#odd[@]}}")"
check "plain words stay unquoted" has "-x OPENBLAS_NUM_THREADS=4 $fake_ctrain train $CFG"

dry CTRUN_CORES=4 -- -np 2 -- echo hello
check "another program passes through unchanged" has "-x OPENBLAS_NUM_THREADS=2 echo hello"

# ---- srun -----------------------------------------------------------------------------------
mkdir -p "$T/slurm"
cat >"$T/slurm/srun" <<EOF
#!/bin/sh
printf '%s\n' "\$@" >"$T/srun.args"
exit \${FAKE_SRUN_RC:-0}
EOF
chmod +x "$T/slurm/srun"
dry SLURM_JOB_ID=42 SLURM_CPUS_ON_NODE=8 PATH="$T/slurm:$PATH" -- -np 4 -- ctrain train "$CFG"
check "srun inside a Slurm allocation" [ "${out%% *}" = srun ]
check "srun: tasks, cpus per task, core binding" has "srun --ntasks=4 --cpus-per-task=2 --cpu-bind=cores"
check "srun: thread env exported" has "--export=ALL,CT_THREADS=2,OMP_NUM_THREADS=2,OPENBLAS_NUM_THREADS=2"
check "srun: no mpirun flags" lacks "--allow-run-as-root"
check "srun: command passed through" has "$fake_ctrain train $CFG"
dry SLURM_JOB_ID=42 SLURM_CPUS_ON_NODE=2 PATH="$T/slurm:$PATH" -- -np 4 -- ctrain train "$CFG"
check "srun: more ranks than cpus is not bound" has "--overcommit --cpu-bind=none"
dry SLURM_JOB_ID=42 CTRUN_CORES=4 PATH="$T/slurm:$PATH" -- -np 2 -- ctrain train "$CFG"
expect_eq "srun without SLURM_CPUS_ON_NODE exits 0" 0 "$rc"
check "srun without SLURM_CPUS_ON_NODE: cores from this node" has "--ntasks=2 --cpus-per-task=2"
dry CTRUN_CORES=8 PATH="$T/slurm:$PATH" -- -np 4 -- ctrain train "$CFG"
check "srun on PATH but no SLURM_JOB_ID: mpirun" [ "${out%% *}" = mpirun ]
if ! command -v srun >/dev/null; then
    dry SLURM_JOB_ID=42 CTRUN_CORES=8 -- -np 4 -- ctrain train "$CFG"
    check "SLURM_JOB_ID but no srun: mpirun" [ "${out%% *}" = mpirun ]
fi
# Really run (the fake) srun: it gets exactly the dry-run words, and its status comes back.
dry SLURM_JOB_ID=42 SLURM_CPUS_ON_NODE=8 PATH="$T/slurm:$PATH" -- -np 2 -- ctrain train "$CFG" 'a b'
eval "set -- $out"
shift
expected=$(printf '%s\n' "$@")
env CTRUN_CTRAIN="$fake_ctrain" SLURM_JOB_ID=42 SLURM_CPUS_ON_NODE=8 PATH="$T/slurm:$PATH" FAKE_SRUN_RC=3 \
    "$CTRUN" -np 2 -- ctrain train "$CFG" 'a b' 2>/dev/null
expect_eq "srun's exit status passes through" 3 "$?"
expect_eq "srun got the dry-run arguments" "$expected" "$(cat "$T/srun.args" 2>/dev/null)"

# ---- finding ctrain -----------------------------------------------------------------------
mkdir -p "$T/tree/launcher" "$T/tree/build" "$T/inst/bin" "$T/lonely" "$T/onpath"
for d in "$T/tree/launcher" "$T/inst/bin" "$T/lonely"; do cp "$CTRUN" "$d/ctrun"; done
cp "$fake_ctrain" "$T/tree/build/ctrain"
cp "$fake_ctrain" "$T/inst/bin/ctrain"
cp "$fake_ctrain" "$T/onpath/ctrain"
out=$(CTRUN_CORES=2 "$T/tree/launcher/ctrun" -np 1 --dry-run -- ctrain eval c 2>/dev/null)
check "source tree: ../build/ctrain" has "$T/tree/build/ctrain eval c"
out=$(CTRUN_CORES=2 "$T/inst/bin/ctrun" -np 1 --dry-run -- ctrain eval c 2>/dev/null)
check "installed: ctrain next to ctrun" has "$T/inst/bin/ctrain eval c"
out=$(CTRUN_CORES=2 PATH="$T/onpath:/usr/bin:/bin" "$T/lonely/ctrun" -np 1 --dry-run -- ctrain eval c 2>/dev/null)
check "otherwise ctrain on PATH" has "$T/onpath/ctrain eval c"
CTRUN_CORES=2 PATH=/usr/bin:/bin "$T/lonely/ctrun" -np 1 --dry-run -- ctrain eval c >/dev/null 2>"$T/lonely.err"
expect_eq "no ctrain anywhere: exit 127" 127 "$?"
check "no ctrain anywhere: says so" contains "$T/lonely.err" "cannot find the ctrain binary"

# ---- bad usage ------------------------------------------------------------------------------
bad() {
    local name=$1
    shift
    "$CTRUN" "$@" >"$T/bad.out" 2>"$T/bad.err"
    local r=$?
    if [ "$r" -eq 2 ] && contains "$T/bad.err" "usage:" && [ ! -s "$T/bad.out" ]; then
        pass "bad usage exits 2 with usage: $name"
    else
        fail "bad usage: $name (exit $r)"
        show "$T/bad.err"
    fi
}
bad "no arguments"
bad "missing -np" -- ctrain train "$CFG"
bad "non-numeric -np" -np two -- ctrain train "$CFG"
bad "zero ranks" -np 0 -- ctrain train "$CFG"
bad "-np without value" -np
bad "non-numeric --threads" -np 2 --threads lots -- ctrain train "$CFG"
bad "missing --" -np 2 ctrain train "$CFG"
bad "nothing after --" -np 2 --
bad "unknown option" -np 2 --frobnicate -- ctrain train "$CFG"
bad "unreadable hostfile" -np 2 --hostfile "$T/no-such-hosts" -- ctrain train "$CFG"
bad "negative --restarts" -np 2 --restarts -1 -- ctrain train "$CFG"
bad "--min-np without --restarts" -np 2 --min-np 1 -- ctrain train "$CFG"
bad "--min-np above -np" -np 2 --restarts 1 --min-np 3 -- ctrain train "$CFG"
bad "--min-np 0" -np 2 --restarts 1 --min-np 0 -- ctrain train "$CFG"
"$CTRUN" --help >"$T/help.out" 2>&1
expect_eq "--help exits 0" 0 "$?"
check "--help prints usage" contains "$T/help.out" "usage: ctrun -np N"

# ---- real runs ------------------------------------------------------------------------------
CTRUN_CTRAIN=$CTRAIN "$CTRUN" -np 1 -- sh -c 'exit 7' >/dev/null 2>&1
expect_eq "mpirun's exit status passes through" 7 "$?"

CTRUN_CTRAIN=$CTRAIN timeout 120 "$CTRUN" -np 2 -- ctrain train "$CFG" data.per_class=100 train.epochs=2 \
    output.dir="$T/run2" >"$T/run2.out" 2>"$T/run2.err"
r=$?
expect_eq "2-rank training through ctrun exits 0" 0 "$r"
[ "$r" -eq 0 ] || show "$T/run2.err"
expect_eq "one eval line per epoch, from rank 0 only" 2 "$(grep -c '^{"event":"eval"' "$T/run2.out")"
check "epoch 1 then epoch 2" [ "$(grep -o '"epoch":[0-9]*' "$T/run2.out" | tr '\n' ' ')" = '"epoch":1 "epoch":2 ' ]
check "nothing else on stdout" [ "$(wc -l <"$T/run2.out")" -eq 2 ]
check "both ranks ran" contains "$T/run2.err" "rank 1/2"
check "it ran as 2 ranks" contains "$T/run2.err" "on 2 rank(s)"

finish
