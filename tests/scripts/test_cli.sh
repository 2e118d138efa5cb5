#!/usr/bin/env bash
# build/ctrain end to end on small Fashion-MNIST subsets, with 1 rank and under mpirun:
# exact resume (same and different rank counts), eval, error exits, one failing rank ending
# the job, the metrics file, the eval JSON lines and the progress output.
source "$(dirname "$0")/lib.sh"
CFG=$ROOT/examples/fmnist_mlp.ini

# A model with BatchNorm, dropout and augmentation, so an exact resume must restore the
# buffers, the optimizer state and every random stream.
RUN=(data.per_class=100 train.epochs=3 train.log_every=5 model.name=custom
     model.layers=flatten,linear:128,bn,relu,dropout:25,linear:10 data.augment=crop_flip)

json_field() { sed -n "s/.*\"$2\":\([^,}]*\).*/\1/p" <<<"$1"; }
steps_per_epoch() { sed -n 's/.* \([0-9]*\) steps\/epoch$/\1/p' "$T/$1.err" | head -1; }
# Simulates a run that stopped after epoch 1: later checkpoints gone, latest names epoch 1.
cut_back_to_epoch1() {
    rm -f "$1"/ckpt-epoch0002.safetensors "$1"/ckpt-epoch0003.safetensors
    echo ckpt-epoch0001.safetensors >"$1/latest"
}

# ---- output format (1 rank, 3 epochs) ---------------------------------------------------------
run full1 0 train "$CFG" "${RUN[@]}" output.dir="$T/r1"
ran_ok "1-rank training" full1
expect_eq "one eval JSON line per epoch on stdout" 3 "$(eval_lines full1 | wc -l)"
check "stdout holds nothing but the eval lines" [ "$(wc -l <"$T/full1.out")" -eq 3 ]
check "eval lines: JSON with event, epoch, loss, accuracy, samples = 10000" python3 - "$T/full1.out" <<'EOF'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
assert [l["epoch"] for l in lines] == [1, 2, 3], lines
for l in lines:
    assert set(l) == {"event", "epoch", "loss", "accuracy", "samples"}, l
    assert l["event"] == "eval" and l["samples"] == 10000, l
    assert 0 < l["loss"] < 10 and 0.1 < l["accuracy"] <= 1, l
EOF
check "metrics.jsonl: one JSON line per epoch" python3 - "$T/r1/metrics.jsonl" <<'EOF'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
assert [l["epoch"] for l in lines] == [1, 2, 3], lines
for l in lines:
    assert {"step", "train_loss", "eval_loss", "eval_accuracy", "lr", "ranks"} <= set(l), l
EOF
expect_eq "metrics agree with stdout" "$(json_field "$(eval_lines full1 | tail -1)" accuracy)" \
    "$(json_field "$(tail -1 "$T/r1/metrics.jsonl")" eval_accuracy)"
check "a checkpoint per epoch and latest names the last" \
    [ -f "$T/r1/ckpt-epoch0001.safetensors" -a -f "$T/r1/ckpt-epoch0003.safetensors" \
    -a "$(cat "$T/r1/latest" 2>/dev/null)" = ckpt-epoch0003.safetensors ]
check "non-TTY progress: no carriage returns" [ "$(tr -dc '\r' <"$T/full1.err" | wc -c)" -eq 0 ]
check "non-TTY progress: plain lines every log_every steps, epochs counted from 1" \
    grep -q '^epoch 1 step 5/15 loss [0-9.]* samples/s' "$T/full1.err"
check "non-TTY progress: last step of the last epoch" grep -q '^epoch 3 step 15/15 ' "$T/full1.err"

# ---- label smoothing -------------------------------------------------------------------------
# With train.label_smoothing = 1 the target is uniform over the 10 classes, and the
# cross-entropy against it is at least its entropy, log 10 = 2.3026, whatever the model does;
# an unsmoothed run's training loss is far below that after an epoch. Validation reports
# plain cross-entropy either way.
run smooth 0 train "$CFG" data.per_class=100 train.epochs=1 train.label_smoothing=1 output.dir="$T/smooth"
ran_ok "training with train.label_smoothing=1" smooth
check "label_smoothing=1: training loss >= log 10, the uniform target's entropy" python3 - \
    "$T/smooth/metrics.jsonl" "$T/r1/metrics.jsonl" <<'EOF'
import json, math, sys
smooth, plain = (json.loads(open(f).readline()) for f in sys.argv[1:])
assert smooth["train_loss"] >= math.log(10) - 1e-4, smooth
assert plain["train_loss"] < 2.0, plain
EOF

# ---- exact resume, 1 rank -------------------------------------------------------------------
cp "$T/full1.out" "$T/full1.keep"
cut_back_to_epoch1 "$T/r1"
run resume1 0 train "$CFG" "${RUN[@]}" output.dir="$T/r1" resume=true
ran_ok "1-rank resume" resume1
expect_eq "1 rank: resumed epochs 2..3 print the same eval lines" "$(tail -2 "$T/full1.keep")" "$(eval_lines resume1)"
check "resume names its checkpoint" contains "$T/resume1.err" "resumed from $T/r1/ckpt-epoch0001.safetensors"
expect_eq "metrics.jsonl after resume: epochs 1,2,3 once each" "1 2 3" \
    "$(grep -o '^{"epoch":[0-9]*' "$T/r1/metrics.jsonl" | cut -d: -f2 | tr '\n' ' ' | sed 's/ $//')"

# ---- exact resume, 2 ranks, and 2 -> 1 and 2 -> 3 ranks ---------------------------------------
run full2 2 train "$CFG" "${RUN[@]}" output.dir="$T/r2"
ran_ok "2-rank training" full2
expect_eq "2 ranks: one eval line per epoch (rank 0 only)" 3 "$(eval_lines full2 | wc -l)"
# Gradients through MPI instead of shared memory: (g0 + g1) / 2 either way, the same bits.
run full2mpi 2 train "$CFG" "${RUN[@]}" output.dir="$T/r2mpi" dist.shm=false
ran_ok "2-rank training with dist.shm=false" full2mpi
expect_eq "2 ranks: dist.shm=false prints the same eval lines" "$(eval_lines full2)" "$(eval_lines full2mpi)"
for m in 1 3; do
    mkdir -p "$T/r2to$m"
    cp "$T/r2/ckpt-epoch0001.safetensors" "$T/r2to$m/"
    echo ckpt-epoch0001.safetensors >"$T/r2to$m/latest"
done
cut_back_to_epoch1 "$T/r2"
run resume2 2 train "$CFG" "${RUN[@]}" output.dir="$T/r2" resume=true
ran_ok "2-rank resume" resume2
expect_eq "2 ranks: resumed epochs 2..3 print the same eval lines" "$(eval_lines full2 | tail -2)" "$(eval_lines resume2)"
for m in 1 3; do
    run "resume2to$m" "$m" train "$CFG" "${RUN[@]}" output.dir="$T/r2to$m" resume=true
    ran_ok "2-rank checkpoint resumed with $m rank(s)" "resume2to$m"
    check "2 -> $m ranks: said it resumed a 2-rank checkpoint" contains "$T/resume2to$m.err" "written by 2 ranks"
    check "2 -> $m ranks: epochs 2 and 3 with sane accuracy (> 0.5)" python3 - "$T/resume2to$m.out" <<'EOF'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
assert [l["epoch"] for l in lines] == [2, 3], lines
assert all(l["accuracy"] > 0.5 and l["samples"] == 10000 for l in lines), lines
EOF
    # The schedule continues at epoch x (this run's steps per epoch), so it ends where a
    # fresh run with this many ranks would.
    s=$(steps_per_epoch "resume2to$m")
    expect_eq "2 -> $m ranks: schedule position rescaled to $m-rank steps" "$((3 * ${s:-0}))" \
        "$(json_field "$(tail -1 "$T/r2to$m/metrics.jsonl")" step)"
done

# ---- ctrain eval ------------------------------------------------------------------------------
CK=$T/r1/ckpt-epoch0003.safetensors
run eval1 0 eval "$CFG" "${RUN[@]}" --checkpoint "$CK"
ran_ok "eval, 1 rank" eval1
run eval2 2 eval "$CFG" "${RUN[@]}" --checkpoint "$CK"
ran_ok "eval, 2 ranks" eval2
check "eval prints {\"event\":\"eval\",...,\"samples\":10000}" \
    grep -qx '{"event":"eval","checkpoint":".*","loss":[0-9.]*,"accuracy":[0-9.]*,"samples":10000}' "$T/eval1.out"
expect_eq "eval: 2 ranks print one line" 1 "$(eval_lines eval2 | wc -l)"
a1=$(json_field "$(eval_lines eval1)" accuracy)
expect_eq "eval: same accuracy with 1 and 2 ranks" "$a1" "$(json_field "$(eval_lines eval2)" accuracy)"
expect_eq "eval of the last checkpoint = the run's last epoch" \
    "$(json_field "$(tail -1 "$T/full1.keep")" accuracy)" "$a1"
run eval3 0 eval "$CFG" "${RUN[@]}" "--checkpoint=$CK"
expect_eq "eval --checkpoint=FILE form" "$a1" "$(json_field "$(eval_lines eval3)" accuracy)"
cp "$CK" "$T/we\"ird.safetensors"
run evalq 0 eval "$CFG" "${RUN[@]}" --checkpoint "$T/we\"ird.safetensors"
check "eval line is valid JSON for a path with a quote" python3 -c \
    'import json,sys; assert json.loads(open(sys.argv[1]).read())["checkpoint"].endswith("we\"ird.safetensors")' "$T/evalq.out"

# ---- errors: non-zero exit, a message naming the key or file, no partial files --------------
# fails NAME NP MUST_CONTAIN... -- ARGS: ctrain must exit non-zero, print no eval line, and
# say every MUST_CONTAIN on stderr.
fails() {
    local name=$1 np=$2
    shift 2
    local want=()
    while [ "$1" != -- ]; do want+=("$1"); shift; done
    shift
    run "$name" "$np" "$@"
    local ok=1 w
    [ "$rc" -ne 0 ] || ok=0
    [ -z "$(eval_lines "$name")" ] || ok=0
    for w in "${want[@]}"; do contains "$T/$name.err" "$w" || ok=0; done
    if [ "$ok" = 1 ]; then pass "error: $name (exit $rc)"; else fail "error: $name (exit $rc)"; show "$T/$name.err"; fi
}
printf '[data]\ndir = /usr/share/datasets/fashion-mnist\n[train]\nepochs = 1\nbogus_key = 3\n[output]\ndir = %s\n' \
    "$T/e_key" >"$T/bad_key.ini"
fails unknown-key-in-file 0 "$T/bad_key.ini" "bogus_key" -- train "$T/bad_key.ini"
fails unknown-key-2-ranks 2 "$T/bad_key.ini" "bogus_key" -- train "$T/bad_key.ini"
expect_eq "2 ranks: the error is printed once" 1 "$(grep -c bogus_key "$T/unknown-key-2-ranks.err")"
fails unknown-key-override 0 "train.bogus" "command line" -- train "$CFG" train.bogus=1 output.dir="$T/e_ovr"
printf '[train]\nepochs = many\n[output]\ndir = %s\n' "$T/e_val" >"$T/bad_value.ini"
fails bad-value-in-file 0 "$T/bad_value.ini" "epochs" "many" -- train "$T/bad_value.ini"
fails bad-value-override 0 "train.batch_size" "x7" -- train "$CFG" train.batch_size=x7 output.dir="$T/e_val2"
fails missing-data-dir 0 "$T/no-data/" -- train "$CFG" data.dir="$T/no-data" output.dir="$T/e_data"
fails missing-config 0 "$T/no-such.ini" -- train "$T/no-such.ini"
echo "not a checkpoint" >"$T/garbage.safetensors"
fails corrupt-checkpoint 0 "$T/garbage.safetensors" -- eval "$CFG" "${RUN[@]}" --checkpoint "$T/garbage.safetensors"
head -c 30000 "$CK" >"$T/truncated.safetensors"
fails truncated-checkpoint-2-ranks 2 "$T/truncated.safetensors" -- \
    eval "$CFG" "${RUN[@]}" --checkpoint "$T/truncated.safetensors"
fails checkpoint-of-another-model 0 "$T/r1/ckpt-epoch0003.safetensors" -- eval "$CFG" --checkpoint "$CK"
fails missing-checkpoint 0 "$T/nope.safetensors" -- eval "$CFG" --checkpoint "$T/nope.safetensors"
mkdir -p "$T/e_corrupt" && cp "$T/garbage.safetensors" "$T/e_corrupt/ckpt-epoch0001.safetensors" &&
    echo ckpt-epoch0001.safetensors >"$T/e_corrupt/latest"
fails resume-from-corrupt 0 "$T/e_corrupt/ckpt-epoch0001.safetensors" -- \
    train "$CFG" "${RUN[@]}" output.dir="$T/e_corrupt" resume=true
fails resume-without-checkpoint 0 "$T/e_none/latest" -- train "$CFG" "${RUN[@]}" output.dir="$T/e_none" resume=true
touch "$T/a_file"
fails output-dir-is-a-file 0 "$T/a_file" -- train "$CFG" "${RUN[@]}" output.dir="$T/a_file"
fails train-with-checkpoint-flag 0 "--checkpoint" -- train "$CFG" "${RUN[@]}" output.dir="$T/e_ck" --checkpoint "$CK"
expect_eq "train --checkpoint is a usage error (2)" 2 "$rc"
fails eval-without-checkpoint 0 "--checkpoint" -- eval "$CFG"
for d in e_key e_ovr e_val e_val2 e_data e_ck; do
    check "no output dir made by a failed start-up ($d)" [ ! -e "$T/$d" ]
done
expect_eq "no temporary files left anywhere" "" "$(find "$T" -name '*.tmp.*')"

# ---- a rank failing mid-training ends the job -----------------------------------------------
# The time counts from the fault (its message on stderr), not from the start-up, which a
# loaded machine can stretch by seconds.
CT_FAULT=1:20 timeout 60 "${MPIRUN[@]}" -np 2 "$CTRAIN" train "$CFG" data.per_class=300 train.epochs=2 \
    output.dir="$T/fault" >"$T/fault.out" 2>"$T/fault.err" &
job=$!
start=""
while kill -0 "$job" 2>/dev/null; do
    [ -z "$start" ] && grep -q "injected fault" "$T/fault.err" 2>/dev/null && start=$(date +%s%N)
    sleep 0.05
done
wait "$job"
rc=$?
[ -z "$start" ] && start=$(date +%s%N)
ms=$((($(date +%s%N) - start) / 1000000))
check "CT_FAULT=1:20: non-zero exit (got $rc)" [ "$rc" -ne 0 -a "$rc" -ne 124 ]
check "CT_FAULT=1:20: job ended within 10 s of the fault (${ms} ms)" [ "$ms" -lt 10000 ]
check "CT_FAULT=1:20: the message names rank 1 and the fault" contains "$T/fault.err" "rank 1: fatal: injected fault"
expect_eq "CT_FAULT=1:20: no eval line (the fault is in epoch 1)" "" "$(eval_lines fault)"
expect_eq "CT_FAULT=1:20: no temporary files left" "" "$(find "$T/fault" -name '*.tmp.*')"

# ---- a TTY gets a progress bar -----------------------------------------------------------------
if command -v script >/dev/null; then
    script -qec "$(printf '%q ' "$CTRAIN" train "$CFG" data.per_class=100 train.epochs=1 output.dir="$T/tty")" \
        /dev/null >"$T/tty.log" 2>&1
    rc=$?
    ran_ok "training on a TTY" tty
    check "TTY: the bar redraws with a carriage return" grep -q $'\repoch 1 \\[=*>* *\\] [0-9]*/15 loss' "$T/tty.log"
    check "TTY: the bar ends full" grep -q 'epoch 1 \[==============================\] 15/15' "$T/tty.log"
fi


# ---- transforms on in-memory images (IDX) ---------------------------------------------------
# resize:32 on both splits: the CNN is built for the resized [1, 32, 32] samples; a random
# transform, or resizing one split only, is a configuration error naming the key.
TF=(data.per_class=20 train.epochs=1 train.log_every=0 model.name=cnn)
run tfresize 0 train "$CFG" "${TF[@]}" data.train_transforms=resize:32 data.test_transforms=resize:32 \
    output.dir="$T/tf"
ran_ok "IDX images with data.*_transforms = resize:32" tfresize
# the CNN's first linear layer is 64 x 8 x 8 -> 128 on 32 px (421,834 parameters on 28 px)
check "resize:32: the CNN is built for 32 px (544714 parameters)" grep -q "544714 parameters" "$T/tfresize.err"
expect_eq "resize:32: one eval line" 1 "$(eval_lines tfresize | wc -l)"
run tfrandom 0 train "$CFG" "${TF[@]}" data.train_transforms=random_horizontal_flip output.dir="$T/tf2"
if [ "$rc" -eq 78 ] && contains "$T/tfrandom.err" "data.train_transforms = random_horizontal_flip" &&
   contains "$T/tfrandom.err" "data.augment"; then
    pass "a random transform on IDX images exits 78 naming the key and data.augment"
else
    fail "random transform on IDX: status $rc"; show "$T/tfrandom.err"
fi
run tfone 0 train "$CFG" "${TF[@]}" data.train_transforms=resize:32 output.dir="$T/tf3"
if [ "$rc" -ne 0 ] && contains "$T/tfone.err" "[1, 32, 32] but test samples [1, 28, 28]"; then
    pass "resizing the training split only exits $rc naming both shapes"
else
    fail "one split resized: status $rc"; show "$T/tfone.err"
fi

finish
