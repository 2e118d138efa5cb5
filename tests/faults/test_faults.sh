#!/usr/bin/env bash
# The fault suite (issue 14, requirement 5): real faults in a 2-rank training job launched by
# `ctrun --restarts`, on a tiny MLP (64 steps per epoch, 3 epochs, a checkpoint every 20
# steps and at every epoch's end). Faults come from CT_FAULT="RANK:WHERE:KIND" (a rank raises
# SIGKILL, SIGSTOP or SIGTERM on itself at a step or before an evaluation) with CT_FAULT_ONCE,
# so the relaunched job runs through. Every case asserts:
#   - the job ends non-zero within 10 s of the fault (a hung rank: dist.timeout_s + 10 s);
#   - no checkpoint is lost or half-written: the job resumes from the newest checkpoint
#     written before the fault, no temporary file is left, every checkpoint left loads and
#     verifies (its CRC among others);
#   - the run that ctrun relaunched (or, after a preemption, which ctrun does not relaunch,
#     the resumed run) ends with the metrics of an uninterrupted run, exactly.
source "$(dirname "$0")/../scripts/lib.sh"
CFG=$ROOT/examples/fmnist_mlp.ini
unset CT_PREEMPT_RAISE CT_FAULT_ONCE
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export CTRUN_CTRAIN=$CTRAIN CTRUN_CORES=2

npy_blobs "$T" 1 4096 256
# A small dist.timeout_s for the hung rank's cases, but not so small that a loaded machine's
# stall of a live rank (start-up, a checkpoint) trips it in the other runs.
STEPS=64 EVERY=20 EPOCHS=3 TIMEOUT_S=5
ARGS=(data.format=npy data.train_x="$T/train_x.npy" data.train_y="$T/train_y.npy" data.test_x="$T/test_x.npy"
      data.test_y="$T/test_y.npy" data.mean=0 data.std=1 data.augment=none model.name=custom
      model.layers=linear:32,relu,dropout:20,linear:4 train.batch_size=32 train.log_every=0 schedule.name=cosine
      train.epochs=$EPOCHS output.checkpoint_every_steps=$EVERY output.keep=3 dist.timeout_s=$TIMEOUT_S)

# job NAME [CTRUN OPTIONS] -- [OVERRIDES]: `ctrun -np 2 OPTIONS -- ctrain train` into $T/NAME
# (output.dir), its stderr in $T/NAME.err; sets rc, and secs: the seconds from the injected
# fault (the rank's "injecting fault" line) to the job's end (ctrun's next line), or -1.
job() {
    local name=$1 opts=() t_fault="" t_end=""
    shift
    while [ "$1" != -- ]; do opts+=("$1"); shift; done
    shift
    timeout 150 "$CTRUN" -np 2 "${opts[@]}" -- ctrain train "$CFG" "${ARGS[@]}" output.dir="$T/$name" "$@" \
        >"$T/$name.out" 2>"$T/$name.err" &
    local pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        if [ -z "$t_fault" ] && grep -q 'injecting fault' "$T/$name.err"; then t_fault=$(date +%s%N); fi
        if [ -n "$t_fault" ] && [ -z "$t_end" ] && grep -q '^ctrun: .*\(restart 1 of\|not relaunched\|giving up\)' \
            "$T/$name.err"; then t_end=$(date +%s%N); fi
        sleep 0.05
    done
    rc=0
    wait "$pid" || rc=$?
    [ -n "$t_end" ] || t_end=$(date +%s%N)
    secs=-1
    [ -z "$t_fault" ] || secs=$(((t_end - t_fault) / 1000000000))
}
# metrics FILE: metrics.jsonl without the timings
metrics() { sed -E 's/"epoch_s":[^,]*,"samples_per_s":[^,]*,//' "$1"; }
# newest_before K: the checkpoint the newest before global step K (a fault at the start of
# step K), or "" if none: every EVERY steps inside an epoch, and at each epoch's end.
newest_before() {
    local k=$1 m e
    m=$((k / EVERY * EVERY))
    e=$((k / STEPS))
    if [ "$m" -gt 0 ] && [ $((m % STEPS)) -ne 0 ] && [ "$m" -gt $((e * STEPS)) ]; then
        printf 'ckpt-epoch%04d-step%06d.safetensors' $((m / STEPS + 1)) $((m % STEPS))
    elif [ "$e" -gt 0 ]; then
        printf 'ckpt-epoch%04d.safetensors' "$e"
    fi
}
# intact NAME WHAT: no temporary file in $T/NAME, and every checkpoint there loads and verifies
# (structure, CRC of the data, finite values, progress metadata): `ctrain latest` on a
# directory holding only that checkpoint names it exactly when it is valid.
intact() {
    local dir=$T/$1 bad="" f v=$T/$1.verify
    check "$2: the run left checkpoints" compgen -G "$dir/ckpt-*.safetensors" >/dev/null
    expect_eq "$2: no temporary file left" "" "$(find "$dir" -name '*.tmp*')"
    for f in "$dir"/ckpt-*.safetensors; do
        [ -e "$f" ] || continue
        rm -rf "$v"
        mkdir "$v"
        ln "$f" "$v/"
        echo "${f##*/}" >"$v/latest"
        [ "$("$CTRAIN" latest "$CFG" "${ARGS[@]}" output.dir="$v" 2>/dev/null)" = "$v/${f##*/}" ] || bad="$bad ${f##*/}"
    done
    expect_eq "$2: every checkpoint left loads and verifies" "" "$bad"
}
# same_as_ref NAME WHAT
same_as_ref() {
    check "$2: the run logged every epoch" [ "$(wc -l <"$T/$1/metrics.jsonl")" = "$EPOCHS" ]
    expect_eq "$2: final metrics equal the uninterrupted run's" "$(metrics "$T/ref/metrics.jsonl")" \
        "$(metrics "$T/$1/metrics.jsonl")"
}
# within NAME WHAT LIMIT: the job ended within LIMIT s of the fault
within() {
    if [ "$secs" -ge 0 ] && [ "$secs" -lt "$3" ]; then pass "$2: the job ended within $3 s of the fault"
    else fail "$2: the job ended ${secs} s after the fault (limit $3 s; -1: no fault seen)"; show "$T/$1.err"; fi
}

job ref -- 
expect_eq "uninterrupted run exits 0" 0 "$rc"
expect_eq "... and logs $EPOCHS epochs" "$EPOCHS" "$(wc -l <"$T/ref/metrics.jsonl")"

# ---- kill -9 of a random rank at a random step (seeded) -----------------------------------------
for seed in 1 2 3; do
    RANDOM=$seed
    rank=$((RANDOM % 2)) k=$((10 + RANDOM % (STEPS * EPOCHS - 20)))
    what="SIGKILL to rank $rank at step $k (seed $seed)"
    name=kill$seed
    CT_FAULT="$rank:$k:kill" CT_FAULT_ONCE="$T/$name.once" job "$name" --restarts 2 --
    expect_eq "$what: ctrun's relaunched job exits 0" 0 "$rc"
    within "$name" "$what" 10
    check "$what: ctrun logs the restart with the exit status (137)" \
        grep -q '^ctrun: restart 1 of 2 after exit status 137 (a rank ended by SIGKILL)' "$T/$name.err"
    want=$(newest_before "$k")
    if [ -n "$want" ]; then
        check "$what: resumed from the newest checkpoint before the fault ($want)" \
            grep -q "^ctrun: restart 1 of 2 .* resuming from $T/$name/$want\$" "$T/$name.err"
    else
        check "$what: no checkpoint yet, so it starts afresh" grep -q '^ctrun: restart 1 of 2 .* from the start' "$T/$name.err"
    fi
    intact "$name" "$what"
    same_as_ref "$name" "$what"
done

# ---- SIGTERM to one rank and to all: preemption (75), which ctrun does not relaunch ---------------
for who in 1 '*'; do
    name=term$([ "$who" = '*' ] && echo all || echo one)
    what="SIGTERM to $([ "$who" = '*' ] && echo every rank || echo rank 1) at step 90"
    CT_PREEMPT_RAISE="$who:90" job "$name" --restarts 2 --
    expect_eq "$what: the job exits 75 (preempted)" 75 "$rc"
    check "$what: ctrun does not relaunch it" grep -q '^ctrun: the job exited with status 75 (preempted); not relaunched' \
        "$T/$name.err"
    expect_eq "$what: latest names the checkpoint taken at the signal" "ckpt-epoch0002-step000027.safetensors" \
        "$(cat "$T/$name/latest")"
    intact "$name" "$what"
    job "$name" --restarts 1 -- train.resume=true
    expect_eq "$what: the resumed job exits 0" 0 "$rc"
    same_as_ref "$name" "$what"
done

# ---- a rank that hangs (SIGSTOP) in a step's all-reduce and before an evaluation's sums --------
for where in 1:100 0:e2; do
    name=stop-${where/:/-}
    what="SIGSTOP to rank ${where%%:*} at ${where#*:}"
    CT_FAULT="$where:stop" CT_FAULT_ONCE="$T/$name.once" job "$name" --restarts 1 --
    expect_eq "$what: ctrun's relaunched job exits 0" 0 "$rc"
    within "$name" "$what (dist.timeout_s = $TIMEOUT_S)" $((TIMEOUT_S + 10))
    check "$what: the first job ended through dist.timeout_s" grep -q "(dist.timeout_s = $TIMEOUT_S)" "$T/$name.err"
    intact "$name" "$what"
    same_as_ref "$name" "$what"
done
check "SIGSTOP in a step: the message names the stopped rank" \
    grep -q 'all-reduce: rank 1 has not answered' "$T/stop-1-100.err"
check "SIGSTOP before an evaluation: the waiting rank names the collective and the stopped rank" \
    grep -q 'rank 1: fatal: a sum over the ranks: rank 0 has not answered' "$T/stop-0-e2.err"

# ---- after a crash, the newest checkpoint corrupt (one flipped bit) and the one before truncated --
name=damaged
CT_FAULT="0:150:kill" CT_FAULT_ONCE="$T/$name.once" job "$name" --
check "damaged checkpoints: the crash exits non-zero" [ "$rc" -ne 0 ]
newest=$T/$name/$(cat "$T/$name/latest")
second=$T/$name/$(newest_before 139)
expect_eq "damaged checkpoints: latest is the newest before step 150" "$T/$name/$(newest_before 150)" "$newest"
python3 -c 'import sys; p = sys.argv[1]; b = bytearray(open(p, "rb").read()); b[-5] ^= 1; open(p, "wb").write(b)' "$newest"
truncate -s 1000 "$second"
expect_eq "damaged checkpoints: ctrain latest names the newest valid one instead" "$T/$name/$(newest_before 127)" \
    "$("$CTRAIN" latest "$CFG" "${ARGS[@]}" output.dir="$T/$name" 2>/dev/null)"
job "$name" --restarts 1 -- train.resume=true
expect_eq "damaged checkpoints: the resumed job exits 0" 0 "$rc"
check "... warning that the corrupt one is unusable" grep -q "latest names $newest, which is unusable" "$T/$name.err"
check "... and the truncated one too" grep -q "not resuming from $second either" "$T/$name.err"
same_as_ref "$name" "damaged checkpoints"

# ---- what ctrun does not relaunch, or not forever ------------------------------------------------
CT_FAULT="1:30:kill" job again --restarts 1 --
expect_eq "a fault on every launch: the last launch's status (137) after the one restart" 137 "$rc"
check "... ctrun says the restarts are used up" grep -q '^ctrun: .* all 1 restart(s) are used; giving up' "$T/again.err"
job badcfg --restarts 3 -- model.layers=linear:4,bogus
expect_eq "an invalid configuration: exit 78" 78 "$rc"
expect_eq "... launched once, not relaunched" "1 1" \
    "$(grep -c '^ctrun: 2 rank(s)' "$T/badcfg.err") $(grep -c 'status 78 (invalid configuration); not relaunched' "$T/badcfg.err")"

# SIGTERM to ctrun itself (a scheduler cancelling the job): passed on to the job (mpirun passes
# it on to the ranks, which normally write a checkpoint, then exits 1, not 75); no relaunch.
timeout 150 "$CTRUN" -np 2 --restarts 2 -- ctrain train "$CFG" "${ARGS[@]}" train.epochs=1000 \
    output.dir="$T/cancel" >"$T/cancel.out" 2>"$T/cancel.err" &
pid=$!
for _ in $(seq 600); do grep -q 'steps/epoch' "$T/cancel.err" && break; sleep 0.1; done
sleep 0.5
kill -TERM "$pid"
wait "$pid"
# mpirun exits without waiting for the ranks, which still write their preemption checkpoint
# (README, "Automatic restarts"): wait for them (bounded) before looking at the files.
for _ in $(seq 100); do pgrep -f "output.dir=$T/cancel" >/dev/null || break; sleep 0.1; done
alive=0
pgrep -f "output.dir=$T/cancel" >/dev/null && alive=1
expect_eq "SIGTERM to ctrun: the ranks end within 10 s" 0 "$alive"
# mpirun may SIGKILL a rank in the middle of the atomic write of `latest` or a checkpoint: the
# *.tmp.PID it leaves is removed by the next run in the directory (test_untrusted.sh); the
# checkpoints themselves must all verify.
find "$T/cancel" -name '*.tmp.*' -delete
check "SIGTERM to ctrun: passed on and not relaunched" \
    grep -q '^ctrun: got SIGTERM and passed it on; the job exited with status [0-9]*; not relaunched' "$T/cancel.err"
intact cancel "SIGTERM to ctrun"
expect_eq "... no restart" "" "$(grep '^ctrun: restart' "$T/cancel.err")"

# ---- --min-np: mpirun cannot place 3 ranks on a host of 2 slots (no oversubscription), so the
# launch fails before any rank starts and ctrun relaunches on 2 -------------------------------------
echo "localhost slots=2" >"$T/hosts"
env -u OMPI_MCA_rmaps_base_oversubscribe CTRUN_CORES=3 timeout 150 "$CTRUN" -np 3 --hostfile "$T/hosts" --threads 1 \
    --restarts 2 --min-np 2 -- ctrain train "$CFG" "${ARGS[@]}" output.dir="$T/minnp" >"$T/minnp.out" 2>"$T/minnp.err"
expect_eq "--min-np 2: the job completes on fewer ranks" 0 "$?"
check "... after a launch that failed before the ranks started" \
    grep -q '^ctrun: restart 1 of 2 after exit status [0-9]* before the ranks started (the launch failed): relaunching on 2 rank(s), from the start' \
    "$T/minnp.err"
same_as_ref minnp "--min-np 2 (3 ranks could not start)"

# ---- a full disk (ENOSPC) while writing a checkpoint: a 48 KiB tmpfs (needs root), grown as soon
# as the write has failed, so ctrun's relaunch can finish ------------------------------------------
FULL=$T/full
mkdir -p "$FULL"
trap 'umount "$FULL" 2>/dev/null; rm -rf "$T"' EXIT
if mount -t tmpfs -o size=48k tmpfs "$FULL" 2>/dev/null; then
    timeout 150 "$CTRUN" -np 2 --restarts 3 -- ctrain train "$CFG" "${ARGS[@]}" output.dir="$FULL/run" \
        >"$T/full.out" 2>"$T/full.err" &
    pid=$!
    t_fault="" secs=-1
    while kill -0 "$pid" 2>/dev/null; do
        if [ -z "$t_fault" ] && grep -q 'No space left on device' "$T/full.err"; then
            t_fault=$(date +%s%N)
            mount -o remount,size=4m "$FULL"
        fi
        if [ -n "$t_fault" ] && [ "$secs" = -1 ] && grep -q '^ctrun: restart 1 of' "$T/full.err"; then
            secs=$((($(date +%s%N) - t_fault) / 1000000000))
        fi
        sleep 0.05
    done
    rc=0
    wait "$pid" || rc=$?
    expect_eq "disk full: ctrun's relaunched job exits 0" 0 "$rc"
    within full "disk full" 10
    y=$(sed -nE "s|.*error: ($FULL/run/ckpt-[^:]*): write failed: .*No space left on device.*|\1|p" "$T/full.err" |
        head -1)
    x=$(sed -n 's/^ctrun: restart 1 of 3 .* resuming from //p' "$T/full.err")
    check "disk full: the error names the checkpoint being written (${y##*/})" [ -n "$y" ]
    check "disk full: the relaunch resumes from an earlier one (${x##*/})" test -n "$x" -a "$x" \< "$y"
    expect_eq "disk full: the failed write left no temporary file for the relaunch to remove" "" \
        "$(grep 'removed [0-9]* temporary' "$T/full.err")"
    cp -r "$FULL/run" "$T/full-run"
    umount "$FULL"
    intact full-run "disk full"
    same_as_ref full-run "disk full"
else
    echo "skip: disk full (mounting a tmpfs needs root)"
fi

echo "fault suite: $SECONDS s"
finish
