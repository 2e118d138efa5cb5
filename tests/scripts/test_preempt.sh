#!/usr/bin/env bash
# Preemption and mid-epoch checkpoints (issue 14, requirements 1 and 2), on a tiny NPY image
# set with a CNN (dropout and BatchNorm) and random crops and flips, so every per-rank stream
# (the loader's augmentation, dropout, BatchNorm's running statistics) must come back exactly:
# - a signal to one rank, or to all, of a 2-rank run: every rank exits 75 with a mid-epoch
#   checkpoint, and the resumed run ends with the very bytes of an uninterrupted run's final
#   checkpoint (so every loss along the way was the same) and the same metrics;
# - output.checkpoint_every_steps: resuming from any such checkpoint does the same;
# - resuming a mid-epoch checkpoint on another number of ranks goes on from the next epoch;
# - output.keep, and a bad train.preempt_signals.
source "$(dirname "$0")/lib.sh"
CFG=$ROOT/examples/fmnist_mlp.ini
unset CT_PREEMPT_RAISE

/usr/bin/python3 - "$T" <<'EOF'
import sys
import numpy as np
d = sys.argv[1]
rng = np.random.default_rng(0)
for split, n in (("train", 512), ("test", 128)):
    y = rng.integers(0, 4, n)
    x = rng.normal(0, 1, (n, 1, 8, 8)) + y[:, None, None, None]
    np.save(f"{d}/{split}_x.npy", x.astype(np.float32))
    np.save(f"{d}/{split}_y.npy", y.astype(np.int64))
# 40000 samples: 625 steps per epoch on 2 ranks, for runs still going when a signal comes
y = rng.integers(0, 4, 40000)
np.save(f"{d}/big_x.npy", (rng.normal(0, 1, (40000, 16)) + y[:, None]).astype(np.float32))
np.save(f"{d}/big_y.npy", y.astype(np.int64))
y = rng.integers(0, 4, 128)
np.save(f"{d}/flat_x.npy", (rng.normal(0, 1, (128, 16)) + y[:, None]).astype(np.float32))
np.save(f"{d}/flat_y.npy", y.astype(np.int64))
EOF
# 8 steps per epoch on 2 ranks, 3 epochs: 24 steps
ARGS=(data.format=npy data.train_x="$T/train_x.npy" data.train_y="$T/train_y.npy" data.test_x="$T/test_x.npy"
      data.test_y="$T/test_y.npy" data.mean=0 data.std=1 model.name=cnn model.dropout=0.5 data.augment=crop_flip
      data.crop_pad=2 train.batch_size=32 train.log_every=0 train.epochs=3 schedule.name=cosine)
FINAL=ckpt-epoch0003.safetensors

# train NP NAME ARGS...: an NP-rank run; stdout/stderr in $T/NAME.out/.err, status in $rc.
train() {
    local np=$1 name=$2
    shift 2
    timeout 120 "${MPIRUN[@]}" -np "$np" -x CT_PREEMPT_RAISE "$CTRAIN" train "$CFG" "$@" \
        >"$T/$name.out" 2>"$T/$name.err"
    rc=$?
}
# metrics FILE: metrics.jsonl without the timings
metrics() { sed -E 's/"epoch_s":[^,]*,"samples_per_s":[^,]*,//' "$1"; }
# same_as REF DIR WHAT: DIR's final checkpoint and metrics equal REF's.
same_as() {
    check "$3: final checkpoint identical to the uninterrupted run's" cmp -s "$1/$FINAL" "$2/$FINAL"
    expect_eq "$3: metrics equal the uninterrupted run's" "$(metrics "$1/metrics.jsonl")" "$(metrics "$2/metrics.jsonl")"
}
# resumes NP NAME DIR REF WHAT: resume DIR to the end on NP ranks, then compare with REF.
resumes() {
    train "$1" "$2" "${ARGS[@]}" train.resume=true output.dir="$3"
    if [ "$rc" -eq 0 ]; then pass "$5: the resumed run completes"; else fail "$5: resumed run exits $rc"; show "$T/$2.err"; fi
    same_as "$4" "$3" "$5"
}

export CT_PREEMPT_RAISE=
train 2 ref "${ARGS[@]}" output.dir="$T/ref"
expect_eq "uninterrupted 2-rank run exits 0" 0 "$rc"

# ---- a signal (raised by the rank itself at a given step: CT_PREEMPT_RAISE) -------------------
for who in 1 '*'; do
    name=raise-$([ "$who" = '*' ] && echo all || echo one)
    what="SIGTERM to $([ "$who" = '*' ] && echo every rank || echo rank 1 only) at step 19"
    CT_PREEMPT_RAISE="$who:19" train 2 "$name" "${ARGS[@]}" output.dir="$T/$name"
    expect_eq "$what: the job exits 75 (preempted)" 75 "$rc"
    check "$what: rank 0 says so" contains "$T/$name.err" "preempted"
    expect_eq "$what: latest names the mid-epoch checkpoint" "ckpt-epoch0003-step000004.safetensors" \
        "$(cat "$T/$name/latest")"
    check "$what: no final checkpoint yet" [ ! -e "$T/$name/$FINAL" ]
    resumes 2 "$name-resume" "$T/$name" "$T/ref" "$what"
done

# A signal at an epoch's last step: the checkpoint is taken before the evaluation, which the
# resumed run then does.
CT_PREEMPT_RAISE="0:15" train 2 raise-end "${ARGS[@]}" output.dir="$T/raise-end"
expect_eq "signal at an epoch's last step: exits 75" 75 "$rc"
resumes 2 raise-end-resume "$T/raise-end" "$T/ref" "signal at an epoch's last step"

# ---- output.checkpoint_every_steps --------------------------------------------------------------
train 2 every "${ARGS[@]}" output.checkpoint_every_steps=5 output.dir="$T/every"
expect_eq "checkpoint_every_steps: exits 0" 0 "$rc"
same_as "$T/ref" "$T/every" "checkpoint_every_steps (the checkpoints change nothing)"
for ck in ckpt-epoch0001-step000005 ckpt-epoch0002-step000002 ckpt-epoch0002-step000007 ckpt-epoch0003-step000004; do
    check "checkpoint_every_steps: $ck written" [ -f "$T/every/$ck.safetensors" ]
    rm -rf "$T/from"
    mkdir "$T/from"
    # the metrics of the epochs before the checkpoint's: the resumed run must write the rest
    cp "$T/every/$ck.safetensors" "$T/from/"
    head -n $((10#${ck:10:4} - 1)) "$T/every/metrics.jsonl" >"$T/from/metrics.jsonl"
    echo "$ck.safetensors" >"$T/from/latest"
    resumes 2 "from-$ck" "$T/from" "$T/ref" "resumed from $ck"
done

# Staged unfreezing: the first conv joins training after epoch 1, so a checkpoint 2 steps into
# epoch 2 holds the new optimizer group, which the resumed run must set up before loading it.
STAGED=(model.freeze='backbone.0.*' train.unfreeze='backbone.0.*' train.unfreeze_after=1 output.checkpoint_every_steps=5)
train 2 staged "${ARGS[@]}" "${STAGED[@]}" output.dir="$T/staged"
expect_eq "staged unfreezing with checkpoint_every_steps: exits 0" 0 "$rc"
rm -rf "$T/staged-from"
mkdir "$T/staged-from"
cp "$T/staged/ckpt-epoch0002-step000002.safetensors" "$T/staged-from/"
head -n 1 "$T/staged/metrics.jsonl" >"$T/staged-from/metrics.jsonl"
echo ckpt-epoch0002-step000002.safetensors >"$T/staged-from/latest"
train 2 staged-resume "${ARGS[@]}" "${STAGED[@]}" train.resume=true output.dir="$T/staged-from"
expect_eq "staged unfreezing: resumed 2 steps into the epoch that unfroze, exits 0" 0 "$rc"
same_as "$T/staged" "$T/staged-from" "staged unfreezing resumed mid-epoch"

# ---- another number of ranks: on from the next epoch boundary, with a warning --------------------
rm -rf "$T/other"
mkdir "$T/other"
cp "$T/every/ckpt-epoch0002-step000002.safetensors" "$T/other/"
echo ckpt-epoch0002-step000002.safetensors >"$T/other/latest"
train 1 other "${ARGS[@]}" train.resume=true output.dir="$T/other"
expect_eq "mid-epoch checkpoint of 2 ranks resumed on 1: exits 0" 0 "$rc"
check "... warns that it goes on from the start of epoch 3" contains "$T/other.err" "from the start of epoch 3"
expect_eq "... and trains epoch 3 only" 3 "$(sed -E 's/.*"epoch":([0-9]+).*/\1/' "$T/other/metrics.jsonl" | tr '\n' ' ' | xargs)"

# ---- output.keep -------------------------------------------------------------------------------
train 2 keep "${ARGS[@]}" output.checkpoint_every_steps=5 output.keep=2 output.dir="$T/keep"
expect_eq "output.keep = 2 with mid-epoch checkpoints: exits 0" 0 "$rc"
expect_eq "... keeps the newest two" "ckpt-epoch0003-step000004.safetensors $FINAL" \
    "$(cd "$T/keep" && ls ckpt-* | sort | tr '\n' ' ' | xargs)"

# ---- a real signal from outside, to one rank and to both ----------------------------------------
# A 2-rank run of 625 steps per epoch and no schedule, so train.epochs only says when to stop:
# once it has logged step 10, SIGTERM goes to the ranks' processes (found by their rank and
# output directory). The resumed run finishes the epoch the signal came in and must end exactly
# as an uninterrupted run of that many epochs.
BIG=(data.format=npy data.train_x="$T/big_x.npy" data.train_y="$T/big_y.npy" data.test_x="$T/flat_x.npy"
     data.test_y="$T/flat_y.npy" data.mean=0 data.std=1 data.augment=none model.name=custom
     model.layers=linear:32,relu,linear:4 train.batch_size=32 train.log_every=10 schedule.name=none)
for target in one all; do
    dir=$T/kill-$target
    timeout 120 "${MPIRUN[@]}" -np 2 "$CTRAIN" train "$CFG" "${BIG[@]}" train.epochs=1000 output.dir="$dir" \
        >"$dir.out" 2>"$dir.err" &
    job=$!
    pids=
    for _ in $(seq 600); do # up to 60 s for start-up on a loaded machine
        if grep -q '^epoch 1 step 10/' "$dir.err" 2>/dev/null; then
            for p in $(pgrep -f "$CTRAIN train"); do
                grep -qF "$dir" "/proc/$p/cmdline" 2>/dev/null || continue
                r=$(tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | sed -n 's/^OMPI_COMM_WORLD_RANK=//p')
                [ -n "$r" ] && [ "$target" = all -o "$r" = 1 ] && pids="$pids $p"
            done
            break
        fi
        sleep 0.1
    done
    if [ -z "$pids" ]; then
        kill $job 2>/dev/null
        wait $job
        fail "SIGTERM to $target: the ranks were not found"
        show "$dir.err"
        continue
    fi
    kill -TERM $pids
    wait $job
    rc=$?
    expect_eq "SIGTERM from outside to $target rank(s): the job exits 75" 75 "$rc"
    latest=$(cat "$dir/latest")
    check "SIGTERM to $target: latest names a mid-epoch checkpoint ($latest)" grep -q -- '-step' "$dir/latest"
    epochs=$((10#${latest:10:4}))
    train 2 "kill-$target-resume" "${BIG[@]}" train.epochs=$epochs train.resume=true output.dir="$dir"
    expect_eq "SIGTERM to $target: the resumed run exits 0" 0 "$rc"
    train 2 "kill-$target-ref" "${BIG[@]}" train.epochs=$epochs output.dir="$dir-ref"
    final=$(printf 'ckpt-epoch%04d.safetensors' "$epochs")
    check "SIGTERM to $target: final checkpoint identical to an uninterrupted $epochs-epoch run's" \
        cmp -s "$dir-ref/$final" "$dir/$final"
    expect_eq "SIGTERM to $target: metrics equal" "$(metrics "$dir-ref/metrics.jsonl")" "$(metrics "$dir/metrics.jsonl")"
done

# ---- the grace period: rank 0 is stopped (SIGSTOP), rank 1 gets SIGTERM and waits for it in the
# step's all-reduce; after train.preempt_grace_s = 2 it exits 75 by itself (dist.timeout_s, 1800 s,
# would be far later), and the launcher ends the job. Without the alarm this would hang until
# `timeout` (exit 124).
dir=$T/grace
timeout 120 "${MPIRUN[@]}" -np 2 "$CTRAIN" train "$CFG" "${BIG[@]}" train.epochs=1000 train.preempt_grace_s=2 \
    output.dir="$dir" >"$dir.out" 2>"$dir.err" &
job=$!
rank0= rank1=
for _ in $(seq 600); do
    if grep -q '^epoch 1 step 10/' "$dir.err" 2>/dev/null; then
        for p in $(pgrep -f "$CTRAIN train"); do
            grep -qF "$dir" "/proc/$p/cmdline" 2>/dev/null || continue
            r=$(tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | sed -n 's/^OMPI_COMM_WORLD_RANK=//p')
            [ "$r" = 0 ] && rank0=$p
            [ "$r" = 1 ] && rank1=$p
        done
        break
    fi
    sleep 0.1
done
if [ -n "$rank0" ] && [ -n "$rank1" ]; then
    kill -STOP "$rank0"
    kill -TERM "$rank1"
    wait $job
    rc=$?
    kill -KILL "$rank0" 2>/dev/null # in case the launcher left it stopped
    expect_eq "grace period: a rank stuck in the all-reduce exits 75 after train.preempt_grace_s" 75 "$rc"
    check "... saying the grace period ran out" contains "$dir.err" "preempt_grace_s ran out"
else
    kill $job 2>/dev/null
    wait $job
    fail "grace period: the ranks were not found"
    show "$dir.err"
fi

# ---- configuration -------------------------------------------------------------------------------
train 1 badsig "${ARGS[@]}" train.preempt_signals=TERM,KILL output.dir="$T/badsig"
check "train.preempt_signals = TERM,KILL is a config error naming the key and the word" \
    [ "$rc" -ne 0 -a "$rc" -ne 75 ]
check "... naming the key and the word" contains "$T/badsig.err" "preempt_signals"
contains "$T/badsig.err" "'KILL'" || { fail "... the message names 'KILL'"; show "$T/badsig.err"; }
CT_PREEMPT_RAISE="0:3" train 1 usr1 "${ARGS[@]}" train.preempt_signals=USR1 output.dir="$T/usr1"
expect_eq "train.preempt_signals = USR1: SIGUSR1 preempts (exit 75)" 75 "$rc"

finish
