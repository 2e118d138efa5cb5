#!/usr/bin/env bash
# Folder and list data sets end to end, on part of Fashion-MNIST written as PNG and JPEG
# files by scripts/fmnist_to_images.py:
# - training from the PNG files gives bit-identical batches to the IDX files of the same
#   samples: the same losses and evaluations to the last digit, on 1 and 2 ranks (the list
#   in IDX order against the IDX files; the folder tree against the IDX samples sorted by
#   class, which is ImageFolder's order);
# - classes.txt, the JPEG tree, and the errors: undecodable files (an error naming the file,
#   on any rank, without a hang; or skipped, logged and counted), a missing directory, an
#   empty class folder, an unknown label, a model whose input does not match the images;
# - transforms and per-channel normalisation from the config on 1 and 2 ranks;
# - data.workers: decoding threads give the inline runs' losses and evaluations exactly
#   (transforms, skipped files), and a bad file is still an error on every rank.
source "$(dirname "$0")/lib.sh"
PY=/usr/bin/python3
CFG=$ROOT/examples/fmnist_cnn.ini
D=$T/fm

# losses and evaluations of a run, without timings
losses() { sed 's/"lr".*//' "$1/metrics.jsonl"; }
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

$PY "$ROOT/scripts/fmnist_to_images.py" "$D" --train 600 --test 200 >/dev/null || { fail "fmnist_to_images.py png"; finish; }
$PY "$ROOT/scripts/fmnist_to_images.py" "$T/fmj" --format jpeg --train 600 --test 200 >/dev/null ||
    fail "fmnist_to_images.py jpeg"
# The same samples in ImageFolder's order (by class, IDX order within a class) as IDX files.
mkdir -p "$D/idx_by_class"
$PY - "$D/idx" "$D/idx_by_class" <<'EOF' || fail "sorting the IDX files by class"
import sys
import numpy as np
src, dst = sys.argv[1:]
for pre in ("train", "t10k"):
    x = open(f"{src}/{pre}-images-idx3-ubyte", "rb").read()
    y = open(f"{src}/{pre}-labels-idx1-ubyte", "rb").read()
    labels = np.frombuffer(y, np.uint8, offset=8)
    images = np.frombuffer(x, np.uint8, offset=16).reshape(len(labels), -1)
    order = np.argsort(labels, kind="stable")
    open(f"{dst}/{pre}-images-idx3-ubyte", "wb").write(x[:16] + images[order].tobytes())
    open(f"{dst}/{pre}-labels-idx1-ubyte", "wb").write(y[:8] + labels[order].tobytes())
EOF

# The CNN decodes every batch during training (no frozen prefix, so no feature cache).
# 600 samples in batches of 30 on 1 or 2 ranks: every file is read every epoch.
RUN=(train.epochs=2 train.batch_size=30 train.eval_batch_size=64 train.log_every=0 data.channels=1)
LIST=(data.format=list data.train_list="$D/train.csv" data.test_list="$D/test.csv")
FOLDER=(data.format=folder data.train_dir="$D/train" data.test_dir="$D/test")

# ---- bit-identical to IDX ---------------------------------------------------------------------
for np in 0 2; do
    run idx$np $np train "$CFG" "${RUN[@]}" data.dir="$D/idx" output.dir="$T/idx$np"
    ran_ok "IDX subset, np=$np" idx$np
    run list$np $np train "$CFG" "${RUN[@]}" "${LIST[@]}" output.dir="$T/list$np"
    ran_ok "PNG list, np=$np" list$np
    expect_eq "PNG list = IDX: eval lines, np=$np" "$(eval_lines idx$np)" "$(eval_lines list$np)"
    expect_eq "PNG list = IDX: training losses, np=$np" "$(losses "$T/idx$np")" "$(losses "$T/list$np")"
    run byclass$np $np train "$CFG" "${RUN[@]}" data.dir="$D/idx_by_class" output.dir="$T/byclass$np"
    run folder$np $np train "$CFG" "${RUN[@]}" "${FOLDER[@]}" output.dir="$T/folder$np"
    ran_ok "PNG folder, np=$np" folder$np
    expect_eq "PNG folder = IDX sorted by class: eval lines, np=$np" "$(eval_lines byclass$np)" "$(eval_lines folder$np)"
    expect_eq "PNG folder = IDX sorted by class: losses, np=$np" "$(losses "$T/byclass$np")" "$(losses "$T/folder$np")"
done
check "the list's runs differ from the by-class runs (the comparison can fail)" \
    [ "$(eval_lines list0)" != "$(eval_lines folder0)" ]
# ---- sweeps over folder and list data sets ----------------------------------------------------
# The folder run's last checkpoint on the test split as a folder tree, a list and IDX files:
# the same 200 samples, so the same accuracy, and the folder row is the run's own evaluation.
run sweep 2 sweep "$CFG" "${RUN[@]}" "${FOLDER[@]}" sweep.checkpoints="$T/folder0/ckpt-epoch0002.safetensors" \
    "sweep.datasets=folder:$D/test,list:$D/test.csv,$D/idx,folder:$T/nowhere" sweep.out="$T/sweep_out"
expect_eq "sweep over folder, list and IDX data sets: exit 3 (one missing folder)" 3 "$rc"
sweep_acc() { $PY -c "import csv,sys; print(*[r['accuracy'] if r['status'] == 'ok' else r['error'] for r in csv.DictReader(open(sys.argv[1]))], sep='\n')" "$T/sweep_out/results.csv"; }
acc=$($PY -c "import json,sys; print('%.6f' % json.loads(open(sys.argv[1]).read().split(chr(10))[1])['accuracy'])" "$T/folder0.out")
mapfile -t rows < <(sweep_acc)
expect_eq "sweep: folder row = the training run's evaluation" "$acc" "$(printf '%.6f' "${rows[0]}")"
expect_eq "sweep: list row = folder row" "${rows[0]}" "${rows[1]}"
expect_eq "sweep: IDX row = folder row" "${rows[0]}" "${rows[2]}"
check "sweep: a missing folder is a failed row naming it" grep -q "$T/nowhere" <(echo "${rows[3]}")
check "classes.txt: the class folders in label order" \
    diff <(printf '%s\n' 0_tshirt_top 1_trouser 2_pullover 3_dress 4_coat 5_sandal 6_shirt 7_sneaker 8_bag 9_ankle_boot) \
    "$T/folder0/classes.txt"
check "classes.txt of an integer list: 0..9" diff <(seq 0 9) "$T/list0/classes.txt"
check "metrics.jsonl counts skipped files (none)" contains "$T/folder0/metrics.jsonl" '"skipped":0'

run classes 0 train "$CFG" "${RUN[@]}" "${FOLDER[@]}" data.classes=7,2 data.per_class=20 train.batch_size=10 \
    output.dir="$T/classes"
ran_ok "data.classes and data.per_class on a folder" classes
check "classes.txt follows data.classes (renumbered in class order)" diff <(printf '2_pullover\n7_sneaker\n') \
    "$T/classes/classes.txt"
check "40 training samples of 2 classes" contains "$T/classes.err" "40 training samples"

run jpeg 0 train "$CFG" "${RUN[@]}" data.format=folder data.train_dir="$T/fmj/train" data.test_dir="$T/fmj/test" \
    data.channels=3 output.dir="$T/jpeg"
ran_ok "JPEG folder as RGB" jpeg
check "JPEG folder trains (accuracy > 0.5 after 2 epochs)" \
    $PY -c "import json,sys; a=json.loads(open(sys.argv[1]).read().split(chr(10))[1])['accuracy']; sys.exit(a <= 0.5)" "$T/jpeg.out"

# ---- transforms (their pixels are checked against torchvision in tests/unit/test_transform.c)
TF=(data.format=folder data.train_dir="$T/fmj/train" data.test_dir="$T/fmj/test" data.channels=3
    data.train_transforms=random_resized_crop:24,random_horizontal_flip data.test_transforms=resize:28,center_crop:24
    data.channel_mean=0.29,0.29,0.29 data.channel_std=0.35,0.35,0.35)
for np in 0 2; do
    run tf$np $np train "$CFG" "${RUN[@]}" "${TF[@]}" output.dir="$T/tf$np"
    ran_ok "random_resized_crop + flip, per-channel normalisation, np=$np" tf$np
done
run tfw 2 train "$CFG" "${RUN[@]}" "${TF[@]}" data.workers=2 data.prefetch=3 output.dir="$T/tfw"
ran_ok "transforms with data.workers = 2, np=2" tfw
expect_eq "transforms: 2 workers per rank = inline, to the last digit" "$(losses "$T/tf2")" "$(losses "$T/tfw")"
check "transforms: 24x24 RGB inputs (the CNN's 3x3x3 first conv)" contains "$T/tf0.err" "315914 parameters"
fails train-test-shapes 0 "[3, 24, 24]" "[3, 28, 28]" -- train "$CFG" "${RUN[@]}" "${TF[@]}" data.test_transforms= \
    output.dir="$T/e_shapes"
fails channel-mean-count 0 "data.channel_mean" "3 comma-separated" -- train "$CFG" "${RUN[@]}" "${TF[@]}" \
    data.channel_mean=0.5 output.dir="$T/e_cm"
fails bad-transform 0 "data.train_transforms" "blur:3" -- train "$CFG" "${RUN[@]}" "${TF[@]}" \
    data.train_transforms=blur:3 output.dir="$T/e_tf"
# Transforms on IDX/NPY images (applied once at load) are tested in test_cli.sh.

# ---- bad data --------------------------------------------------------------------------------
cp -r "$D" "$T/bad"
BADF=$T/bad/train/3_dress/$(ls "$T/bad/train/3_dress" | sed -n 5p)
head -c 100 "$D/train/3_dress/$(basename "$BADF")" >"$BADF"
BADRUN=(data.format=folder data.train_dir="$T/bad/train" data.test_dir="$T/bad/test")
fails bad-file 0 "$BADF" "PNG" -- train "$CFG" "${RUN[@]}" "${BADRUN[@]}" output.dir="$T/e_bad"
fails bad-file-2-ranks 2 "$BADF" "rank" -- train "$CFG" "${RUN[@]}" "${BADRUN[@]}" output.dir="$T/e_bad2"
for np in 0 2; do
    run skip$np $np train "$CFG" "${RUN[@]}" "${BADRUN[@]}" data.on_bad=skip output.dir="$T/skip$np"
    ran_ok "data.on_bad = skip, np=$np" skip$np
    check "skip logs the file, np=$np" contains "$T/skip$np.err" "skipped an undecodable file: $BADF"
    expect_eq "skip counts it once per epoch, np=$np" 2 "$(grep -c '"skipped":1' "$T/skip$np/metrics.jsonl")"
done
run skipw 2 train "$CFG" "${RUN[@]}" "${BADRUN[@]}" data.on_bad=skip data.workers=3 output.dir="$T/skipw"
ran_ok "data.on_bad = skip with data.workers = 3, np=2" skipw
expect_eq "skip: 3 workers per rank = inline, to the last digit" "$(losses "$T/skip2")" "$(losses "$T/skipw")"
fails bad-file-workers 2 "$BADF" "rank" -- train "$CFG" "${RUN[@]}" "${BADRUN[@]}" data.workers=2 output.dir="$T/e_badw"
BADT=$T/bad/test/0_tshirt_top/$(ls "$T/bad/test/0_tshirt_top" | head -1) # the first: sizes the set
echo "not a png" >"$BADT"
fails bad-test-file-2-ranks 2 "$BADT" -- train "$CFG" "${RUN[@]}" "${BADRUN[@]}" data.train_dir="$D/train" \
    train.epochs=1 output.dir="$T/e_badt"
run skipt 0 train "$CFG" "${RUN[@]}" "${BADRUN[@]}" data.on_bad=skip train.epochs=1 output.dir="$T/skipt"
check "a skipped test file leaves 199 evaluated samples" contains "$T/skipt.out" '"samples":199'

fails missing-dir 0 "$T/nowhere" -- train "$CFG" "${RUN[@]}" data.format=folder data.train_dir="$T/nowhere" \
    data.test_dir="$D/test" output.dir="$T/e_miss"
fails missing-dir-key 0 "data.test_dir" -- train "$CFG" "${RUN[@]}" data.format=folder data.train_dir="$D/train" \
    output.dir="$T/e_key"
mkdir "$T/bad/train/99_empty"
fails empty-class 2 "$T/bad/train/99_empty" "no .jpg" -- train "$CFG" "${RUN[@]}" "${BADRUN[@]}" output.dir="$T/e_empty"
sed 's/,7$/,11/' "$D/test.csv" >"$D/test_bad.csv"
fails unknown-label 0 "test_bad.csv:" "unknown label '11'" -- train "$CFG" "${RUN[@]}" "${LIST[@]}" \
    data.test_list="$D/test_bad.csv" output.dir="$T/e_label"
fails two-channels 0 "data.channels" -- train "$CFG" "${RUN[@]}" "${FOLDER[@]}" data.channels=2 output.dir="$T/e_ch"
fails input-mismatch 0 "[3, 28, 28]" "data.channels" -- train "$CFG" "${RUN[@]}" "${FOLDER[@]}" data.channels=3 \
    model.init_from="$T/folder0/ckpt-epoch0002.safetensors" model.init_strict=true output.dir="$T/e_in"

finish
