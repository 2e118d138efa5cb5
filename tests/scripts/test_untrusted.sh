#!/usr/bin/env bash
# Untrusted inputs (issue 14, requirement 8): each case is a defect a probe of the code found
# (garbled or misleading error messages, checkpoints and `latest` files from elsewhere,
# non-finite values, configs, stale temporary files, a stopped rank), run through
# build/ctrain on a tiny NPY data set so the whole script takes seconds.
source "$(dirname "$0")/lib.sh"
CFG=$ROOT/examples/fmnist_mlp.ini

# fails NAME MUST_CONTAIN... -- ARGS: ctrain must exit non-zero (124, the timeout, is not
# enough) and say every MUST_CONTAIN on stderr.
fails() {
    local name=$1
    shift
    local want=() w ok=1
    while [ "$1" != -- ]; do want+=("$1"); shift; done
    shift
    run "$name" 0 "$@"
    [ "$rc" -ne 0 -a "$rc" -ne 124 ] || ok=0
    for w in "${want[@]}"; do contains "$T/$name.err" "$w" || ok=0; done
    if [ "$ok" = 1 ]; then pass "error: $name (exit $rc)"; else fail "error: $name (exit $rc)"; show "$T/$name.err"; fi
}

# A 4-class problem with 16 features: 256 training and 128 test samples, plus copies of the
# label files with one stray label and of the features with NaNs, and a larger training set.
npy_blobs "$T" 0 256 128
/usr/bin/python3 - "$T" <<'EOF'
import sys
import numpy as np
d = sys.argv[1]
rng = np.random.default_rng(0)
for split in ("train", "test"):
    y = np.load(f"{d}/{split}_y.npy")
    y[17 if split == "test" else 40] = 255
    np.save(f"{d}/{split}_y_bad.npy", y)
    x = np.load(f"{d}/{split}_x.npy")
    x[[3, 100]] = np.nan  # two samples of NaN features
    np.save(f"{d}/{split}_x_nan.npy", x)
# 20000 samples: 312 steps per epoch on 2 ranks, for runs that must still be going when
# something happens to them
y = rng.integers(0, 4, 20000)
np.save(f"{d}/big_x.npy", (rng.normal(0, 1, (20000, 16)) + y[:, None]).astype(np.float32))
np.save(f"{d}/big_y.npy", y.astype(np.int64))
EOF
DATA=(data.format=npy data.train_x="$T/train_x.npy" data.train_y="$T/train_y.npy"
      data.test_x="$T/test_x.npy" data.test_y="$T/test_y.npy" data.mean=0 data.std=1)
SMALL=(model.name=custom model.layers=linear:32,relu,linear:4 train.batch_size=32 train.log_every=0)

run base 0 train "$CFG" "${DATA[@]}" "${SMALL[@]}" train.epochs=2 output.dir="$T/base"
ran_ok "training on the tiny data set" base
MLP=$T/mlp
run mlp 0 train "$CFG" "${DATA[@]}" train.epochs=1 train.log_every=0 output.dir="$MLP"
ran_ok "training the built-in MLP" mlp

# ---- error messages that embed another one, or name the wrong thing --------------------------
fails classes-message "$CFG: data.classes = '0-42': class outside" -- \
    train "$CFG" "${DATA[@]}" data.classes=0-42 output.dir="$T/e1"
fails layers-message "$CFG: model.layers item 2 'bogus': expected one of" -- \
    train "$CFG" "${DATA[@]}" model.name=custom model.layers=linear:4,bogus output.dir="$T/e2"
fails optimizer-state-message "$T/base/ckpt-epoch0002.safetensors: optimizer state 'optim." -- \
    train "$CFG" "${DATA[@]}" "${SMALL[@]}" train.epochs=3 optim.name=sgd resume=true output.dir="$T/base"
fails empty-output-dir "$CFG: output.dir is empty" -- train "$CFG" "${DATA[@]}" "${SMALL[@]}" output.dir=
fails bad-training-label "$T/train_y_bad.npy: sample 40 has label 255" "test set's labels ($T/test_y.npy) go up to 3" -- \
    train "$CFG" "${DATA[@]}" data.train_y="$T/train_y_bad.npy" output.dir="$T/e3"
fails bad-training-label-custom-model "$T/train_y_bad.npy: sample 40 has label 255" -- \
    train "$CFG" "${DATA[@]}" "${SMALL[@]}" data.train_y="$T/train_y_bad.npy" data.test_y="$T/test_y_bad.npy" \
    output.dir="$T/e4"
fails bad-test-label-eval "$T/test_y_bad.npy: sample 17 has label 255, but the model has 4 outputs" -- \
    eval "$CFG" "${DATA[@]}" "${SMALL[@]}" data.test_y="$T/test_y_bad.npy" --checkpoint "$T/base/ckpt-epoch0002.safetensors"
fails bad-test-label-builtin-model "model has 256 classes because $T/test_y_bad.npy holds label 255, at sample 17" -- \
    eval "$CFG" "${DATA[@]}" data.test_y="$T/test_y_bad.npy" --checkpoint "$MLP/ckpt-epoch0001.safetensors"

# ---- `latest` and checkpoint paths: only a plain file name inside output.dir, only regular files
L=$T/lat
mkdir -p "$L" && cp "$T/base/ckpt-epoch0001.safetensors" "$L/"
RESUME=(train "$CFG" "${DATA[@]}" "${SMALL[@]}" train.epochs=3 resume=true output.dir="$L")
echo "$T/base/ckpt-epoch0002.safetensors" >"$L/latest"
fails latest-absolute-path "$L/latest: must hold the name of a checkpoint file in $L" -- "${RESUME[@]}"
echo "../base/ckpt-epoch0002.safetensors" >"$L/latest"
fails latest-outside-the-directory "$L/latest: must hold the name of a checkpoint file" -- "${RESUME[@]}"
printf 'ckpt-epoch0001.safetensors\nckpt-epoch0002.safetensors\n' >"$L/latest"
fails latest-two-lines "$L/latest: must hold the name" -- "${RESUME[@]}"
rm "$L/latest" && mkdir "$L/latest"
fails latest-is-a-directory "$L/latest: not a regular file (a directory)" -- "${RESUME[@]}"
rmdir "$L/latest" && mkfifo "$L/latest"
fails latest-is-a-fifo "$L/latest: not a regular file (a FIFO)" -- "${RESUME[@]}"
rm "$L/latest" && echo ckpt-epoch0001.safetensors >"$L/latest"
run latest-plain-name 0 "${RESUME[@]}"
ran_ok "resume from a plain name in latest" latest-plain-name
check "resume named the checkpoint in output.dir" contains "$T/latest-plain-name.err" "resumed from $L/ckpt-epoch0001.safetensors"
mkfifo "$T/fifo.safetensors"
fails eval-checkpoint-is-a-fifo "$T/fifo.safetensors: not a regular file (a FIFO)" -- \
    eval "$CFG" "${DATA[@]}" "${SMALL[@]}" --checkpoint "$T/fifo.safetensors"
fails init-from-a-fifo "$T/fifo.safetensors: not a regular file (a FIFO)" -- \
    train "$CFG" "${DATA[@]}" "${SMALL[@]}" model.init_from="$T/fifo.safetensors" output.dir="$T/e5"

# ---- integrity: a corrupt or truncated newest checkpoint falls back to the newest valid one ----
FB=$T/fb
run fb-full 0 train "$CFG" "${DATA[@]}" "${SMALL[@]}" train.epochs=3 output.dir="$FB"
ran_ok "3 epochs with a checkpoint each" fb-full
last=$(tail -1 "$T/fb-full.out")
head -c 1000 "$FB/ckpt-epoch0003.safetensors" >"$T/cut" && mv "$T/cut" "$FB/ckpt-epoch0003.safetensors"
run fb-truncated 0 "${RESUME[@]/$L/$FB}"
ran_ok "resume with a truncated newest checkpoint" fb-truncated
check "truncated: the warning names both files" contains "$T/fb-truncated.err" \
    "$FB/latest names $FB/ckpt-epoch0003.safetensors, which is unusable"
check "truncated: ... and the one it resumed from" contains "$T/fb-truncated.err" \
    "resuming from $FB/ckpt-epoch0002.safetensors, the newest valid checkpoint"
expect_eq "truncated: epoch 3 replays exactly" "$last" "$(cat "$T/fb-truncated.out")"
# one flipped bit in the data of epochs 3 and 2 (the checksum catches it): back to epoch 1
for e in 3 2; do
    python3 -c 'import sys; p = sys.argv[1]; b = bytearray(open(p, "rb").read()); b[-9] ^= 1; open(p, "wb").write(b)' \
        "$FB/ckpt-epoch000$e.safetensors"
done
run fb-corrupt 0 "${RESUME[@]/$L/$FB}"
ran_ok "resume with the two newest checkpoints corrupt" fb-corrupt
check "corrupt: the checksum mismatch is named" contains "$T/fb-corrupt.err" \
    "$FB/ckpt-epoch0003.safetensors: the tensor data does not match its checksum"
check "corrupt: the other bad one is named too" contains "$T/fb-corrupt.err" \
    "not resuming from $FB/ckpt-epoch0002.safetensors either"
check "corrupt: resumed from epoch 1" contains "$T/fb-corrupt.err" "resumed from $FB/ckpt-epoch0001.safetensors (epoch 1,"
expect_eq "corrupt: epoch 3 replays exactly" "$last" "$(tail -1 "$T/fb-corrupt.out")"
rm "$FB"/ckpt-epoch000[12].safetensors
head -c 1000 "$T/base/ckpt-epoch0001.safetensors" >"$FB/ckpt-epoch0003.safetensors"
fails fb-none-valid "$FB/ckpt-epoch0003.safetensors" "(and no other checkpoint in $FB is valid)" -- "${RESUME[@]/$L/$FB}"

# ---- a full disk while checkpointing, or a read-only output dir: the job ends naming the file
# (a 64 KiB tmpfs holds config.ini, metrics and four checkpoints of this model; needs root)
FULL=$T/full
mkdir -p "$FULL"
trap 'umount "$FULL" 2>/dev/null; rm -rf "$T"' EXIT # a failed step must not leave it mounted
if mount -t tmpfs -o size=64k tmpfs "$FULL" 2>/dev/null; then
    timeout 120 "${MPIRUN[@]}" -np 2 "$CTRAIN" train "$CFG" "${DATA[@]}" "${SMALL[@]}" train.epochs=20 \
        output.dir="$FULL/run" >"$T/full.out" 2>"$T/full.err"
    rc=$?
    check "disk full: the job ends non-zero (got $rc)" [ "$rc" -ne 0 -a "$rc" -ne 124 ]
    check "disk full: the error names the checkpoint and ENOSPC" \
        grep -q "error: $FULL/run/ckpt-epoch[0-9]*.safetensors: write failed: .*No space left on device" "$T/full.err"
    cp -r "$FULL/run" "$T/full_copy"
    umount "$FULL"
    expect_eq "disk full: no temporary file left" "" "$(ls "$T/full_copy" | grep tmp)"
    n=$(grep -c '"event":"eval"' "$T/full.out") # the last epoch evaluated, then failed to save
    expect_eq "disk full: latest names the epoch before" "ckpt-epoch$(printf %04d $((n - 1))).safetensors" \
        "$(cat "$T/full_copy/latest")"
    run full-eval 0 eval "$CFG" "${DATA[@]}" "${SMALL[@]}" --checkpoint "$T/full_copy/$(cat "$T/full_copy/latest")"
    ran_ok "disk full: that checkpoint is intact" full-eval
    # A read-only output directory: resuming into it fails at once, naming the file, on both ranks.
    mount -t tmpfs -o size=1m tmpfs "$FULL"
    cp -r "$T/full_copy" "$FULL/run"
    mount -o remount,ro "$FULL"
    timeout 120 "${MPIRUN[@]}" -np 2 "$CTRAIN" train "$CFG" "${DATA[@]}" "${SMALL[@]}" train.epochs=20 resume=true \
        output.dir="$FULL/run" >"$T/ro.out" 2>"$T/ro.err"
    rc=$?
    check "read-only output dir: the job ends non-zero (got $rc)" [ "$rc" -ne 0 -a "$rc" -ne 124 ]
    check "read-only output dir: the error names the file" \
        grep -q "error: $FULL/run/config.ini: cannot create temporary file .*Read-only file system" "$T/ro.err"
    umount "$FULL"
else
    echo "skip: cannot mount a tmpfs (not root?): the full-disk case"
fi

# ---- a non-strict init_from that loads nothing is an error --------------------------------
fails init-from-another-model "$MLP/ckpt-epoch0001.safetensors: not one tensor of the model could be loaded" -- \
    train "$CFG" "${DATA[@]}" "${SMALL[@]}" model.init_from="$MLP/ckpt-epoch0001.safetensors" output.dir="$T/e6"
run init-from-partial 0 train "$CFG" "${DATA[@]}" model.name=custom model.layers=linear:32,relu,linear:4 \
    train.epochs=1 model.init_from="$T/base/ckpt-epoch0002.safetensors" model.init_exclude=2.* output.dir="$T/ok6"
ran_ok "non-strict init_from that loads some tensors" init-from-partial

# ---- freezing everything is a config error, not an abort in backward ------------------------
fails freeze-everything "$CFG: model.freeze = '*' freezes every parameter: nothing left to train" -- \
    train "$CFG" "${DATA[@]}" "${SMALL[@]}" model.freeze='*' output.dir="$T/e7"
run eval-frozen 0 eval "$CFG" "${DATA[@]}" "${SMALL[@]}" model.freeze='*' --checkpoint "$T/base/ckpt-epoch0002.safetensors"
ran_ok "eval with every parameter frozen" eval-frozen
# ---- temporaries left by a rank killed while writing are removed by the next run ---------------
S=$T/stale
mkdir -p "$S"
sh -c 'exit 0' &
dead=$!
wait $dead # nothing has this pid now (pids are not reused this quickly)
for f in ckpt-epoch0001.safetensors.tmp.$dead latest.tmp.$dead config.ini.tmp.$dead \
         ckpt-epoch0002.safetensors.tmp.$$ notes.tmp.txt; do echo x >"$S/$f"; done
run stale 0 train "$CFG" "${DATA[@]}" "${SMALL[@]}" train.epochs=1 output.dir="$S"
ran_ok "a run into a directory with stale temporaries" stale
expect_eq "stale temporaries of dead pids removed; a live pid's and other files kept" \
    "ckpt-epoch0002.safetensors.tmp.$$ notes.tmp.txt" "$(cd "$S" && ls | grep tmp | tr '\n' ' ' | sed 's/ $//')"
check "the run says it removed them" contains "$T/stale.err" "removed 3 temporary file(s) in $S"

# ---- non-finite values: the training loss, checkpoints, and the JSON lines -------------------
# strict JSON: Python's json accepts NaN and Infinity unless told not to
JSON_CHECK='import json,sys
def bad(c): raise ValueError("non-JSON number " + c)
for l in open(sys.argv[1]): json.loads(l, parse_constant=bad)'
NANX=data.train_x="$T/train_x_nan.npy"
fails nan-loss-is-an-error "fatal: epoch 1 step" "the training loss is nan (train.on_nonfinite = error" -- \
    train "$CFG" "${DATA[@]}" "${SMALL[@]}" "$NANX" output.dir="$T/nan_err"
check "a NaN loss writes no checkpoint" [ ! -e "$T/nan_err/ckpt-epoch0001.safetensors" ]
check "a NaN loss prints no eval line" [ ! -s "$T/nan-loss-is-an-error.out" ]
run nan-skip 0 train "$CFG" "${DATA[@]}" "${SMALL[@]}" "$NANX" train.on_nonfinite=skip train.epochs=2 output.dir="$T/nan_skip"
ran_ok "train.on_nonfinite = skip" nan-skip
check "skip: says how many steps it skipped" grep -q "epoch 1: skipped 2 of 8 steps with a non-finite loss" "$T/nan-skip.err"
check "skip: finite evaluations" python3 -c 'import json,sys; assert all(0 < json.loads(l)["loss"] < 10 for l in open(sys.argv[1]))' \
    "$T/nan-skip.out"
run nan-skip-eval 0 eval "$CFG" "${DATA[@]}" "${SMALL[@]}" --checkpoint "$T/nan_skip/ckpt-epoch0002.safetensors"
ran_ok "skip: the checkpoint is finite and loads" nan-skip-eval
timeout 120 "${MPIRUN[@]}" -np 2 "$CTRAIN" train "$CFG" "${DATA[@]}" "${SMALL[@]}" "$NANX" train.on_nonfinite=skip \
    output.dir="$T/nan_skip2" >"$T/nan-skip-2.out" 2>"$T/nan-skip-2.err"
rc=$?
ran_ok "2 ranks: train.on_nonfinite = skip" nan-skip-2
check "2 ranks, skip: both ranks skip the same steps (counted once)" grep -q "skipped 2 of 4 steps" "$T/nan-skip-2.err"
timeout 120 "${MPIRUN[@]}" -np 2 "$CTRAIN" train "$CFG" "${DATA[@]}" "${SMALL[@]}" "$NANX" \
    output.dir="$T/nan_err2" >"$T/nan-err-2.out" 2>"$T/nan-err-2.err"
rc=$?
check "2 ranks: a NaN loss ends the job non-zero (got $rc)" [ "$rc" -ne 0 -a "$rc" -ne 124 ]
check "2 ranks: the message names the rank" grep -q "rank [01]: fatal: epoch 1 step [0-9]*: the training loss is nan" \
    "$T/nan-err-2.err"

run nan-eval 0 train "$CFG" "${DATA[@]}" "${SMALL[@]}" data.test_x="$T/test_x_nan.npy" train.epochs=1 output.dir="$T/nan_eval"
ran_ok "training with NaN test features" nan-eval
check "stdout: a NaN evaluation loss is null" grep -q '"loss":null' "$T/nan-eval.out"
check "stdout is strict JSON" python3 -c "$JSON_CHECK" "$T/nan-eval.out"
check "metrics.jsonl: eval_loss null" grep -q '"eval_loss":null' "$T/nan_eval/metrics.jsonl"
check "metrics.jsonl is strict JSON" python3 -c "$JSON_CHECK" "$T/nan_eval/metrics.jsonl"

# A checkpoint with one NaN weight (and a checksum that matches) is refused unless
# model.allow_nonfinite.
python3 - "$T/base/ckpt-epoch0002.safetensors" "$T/nan.safetensors" <<'EOF'
import json, struct, sys, zlib
raw = bytearray(open(sys.argv[1], "rb").read())
n = struct.unpack("<Q", raw[:8])[0]
header = json.loads(raw[8:8 + n])
b, e = header["2.weight"]["data_offsets"]
at = 8 + n + b + 4 * 5  # element 5 of 2.weight
raw[at:at + 4] = struct.pack("<f", float("nan"))
crc = header["__metadata__"]["data_crc32"].encode()
raw[8:8 + n] = raw[8:8 + n].replace(crc, b"%08x" % zlib.crc32(raw[8 + n:]))
open(sys.argv[2], "wb").write(raw)
EOF
fails nan-checkpoint "$T/nan.safetensors: tensor '2.weight' holds NaN at element 5" "model.allow_nonfinite = true" -- \
    eval "$CFG" "${DATA[@]}" "${SMALL[@]}" --checkpoint "$T/nan.safetensors"
fails nan-init-from "$T/nan.safetensors: tensor '2.weight' holds NaN at element 5" -- \
    train "$CFG" "${DATA[@]}" "${SMALL[@]}" model.init_from="$T/nan.safetensors" output.dir="$T/e8"
mkdir -p "$T/nan_resume" && cp "$T/nan.safetensors" "$T/nan_resume/" && echo nan.safetensors >"$T/nan_resume/latest"
fails nan-resume "$T/nan_resume/nan.safetensors: tensor '2.weight' holds NaN" -- \
    train "$CFG" "${DATA[@]}" "${SMALL[@]}" train.epochs=3 resume=true output.dir="$T/nan_resume"
run nan-allowed 0 eval "$CFG" "${DATA[@]}" "${SMALL[@]}" model.allow_nonfinite=true --checkpoint "$T/nan.safetensors"
ran_ok "model.allow_nonfinite = true loads it" nan-allowed
check "... and its eval line is strict JSON" python3 -c "$JSON_CHECK" "$T/nan-allowed.out"

# ---- a stopped rank: the others stop spinning and, after dist.timeout_s, end the job -----------
# Rank 1 is stopped (SIGSTOP) early in epoch 1 of 312 steps; rank 0 waits for it in the
# gradient all-reduce, sleeping, and after 3 s ends the job naming rank 1.
timeout 120 "${MPIRUN[@]}" -np 2 "$CTRAIN" train "$CFG" "${DATA[@]}" "${SMALL[@]}" data.train_x="$T/big_x.npy" \
    data.train_y="$T/big_y.npy" train.log_every=10 train.epochs=50 dist.timeout_s=3 output.dir="$T/stop" \
    >"$T/stop.out" 2>"$T/stop.err" &
job=$!
rank1=
for _ in $(seq 600); do # up to 60 s for start-up on a loaded machine
    if grep -q '^epoch 1 step 10/' "$T/stop.err" 2>/dev/null; then
        for p in $(pgrep -f "$CTRAIN train"); do
            tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx OMPI_COMM_WORLD_RANK=1 &&
                grep -qF "$T/stop" "/proc/$p/cmdline" 2>/dev/null && rank1=$p
        done
        break
    fi
    sleep 0.1
done
if [ -n "$rank1" ]; then
    kill -STOP "$rank1"
    start=$(date +%s)
    wait $job
    rc=$?
    secs=$(($(date +%s) - start))
    kill -KILL "$rank1" 2>/dev/null # in case the launcher left it stopped
    check "stopped rank: the job ends non-zero (got $rc)" [ "$rc" -ne 0 -a "$rc" -ne 124 ]
    check "stopped rank: it ends within the timeout + 30 s (took ${secs} s)" [ "$secs" -le 33 ]
    check "stopped rank: rank 0 names rank 1 and the timeout" \
        contains "$T/stop.err" "rank 0: fatal: all-reduce: rank 1 has not answered for 3 s (dist.timeout_s = 3)"
else
    kill $job 2>/dev/null
    wait $job
    fail "stopped rank: rank 1 of the job was not found"
    show "$T/stop.err"
fi

for d in e1 e2 e3 e4 e5 e6 e7 e8; do check "no output dir made by a failed start-up ($d)" [ ! -e "$T/$d" ]; done

finish
