#!/usr/bin/env bash
# ResNet-18 (imagenet stem, 1 channel) through the CLI on 2 ranks, frozen by torchvision
# names: pretrain on classes 0-4; fine-tune on 5-9 with conv1, bn1 and layer1-3 frozen (only
# layer4 and fc train, so only they are all-reduced) and a fresh fc: the feature cache holds
# layer3's output and gives the same results as running the frozen stages every step;
# staged unfreezing of layer4 in its own parameter group.
source "$(dirname "$0")/lib.sh"

small=(model.name=resnet18 model.in_channels=1 data.per_class=24 train.batch_size=16 train.log_every=0
       train.eval_batch_size=500 data.augment=none)
"$CTRAIN" train "$ROOT/examples/transfer/pretrain.ini" "${small[@]}" train.epochs=1 \
    output.dir="$T/pre" >"$T/pre.out" 2>"$T/pre.err" || show "$T/pre.err"
check "resnet18 pretrain on classes 0-4" test -f "$T/pre/ckpt-epoch0001.safetensors"

frozen='conv1.*,bn1.*,layer1.*,layer2.*,layer3.*'
ft=("${small[@]}" model.init_from="$T/pre/ckpt-epoch0001.safetensors" model.init_exclude='fc.*'
    model.freeze="$frozen" train.epochs=1)
for cache in auto off; do
    "${MPIRUN[@]}" -np 2 "$CTRAIN" train "$ROOT/examples/transfer/finetune.ini" "${ft[@]}" \
        train.feature_cache=$cache output.dir="$T/ft_$cache" >"$T/ft_$cache.out" 2>"$T/ft_$cache.err" ||
        { fail "resnet18 fine-tune with feature_cache=$cache exits 0"; show "$T/ft_$cache.err"; }
done
check "the fresh fc was not loaded" contains "$T/ft_auto.err" "excluded: fc.weight"
check "only layer4 and fc train (and are all-reduced)" contains "$T/ft_auto.err" "11172805 parameters, 8396293 trainable"
check "the cache holds layer3's output: 256 x 2 x 2 features" contains "$T/ft_auto.err" \
    "feature cache on: the frozen prefix (the model's first 10 layers) runs once; 1024 features per sample"
# Same evaluations, to rounding: on images this small the convolution puts several samples
# in one GEMM (src/ops/conv.c), and OpenBLAS picks its kernel by the GEMM's shape, so a
# sample's features round differently with the batch it shares a GEMM with (the cache runs
# the prefix in other batches than training does). The CNN's layers keep one sample per
# GEMM, and test_transfer.sh checks its cached runs bit for bit.
same_evals() {
    /usr/bin/python3 - "$1" "$2" <<'PY'
import json, sys
ev = [[json.loads(l) for l in open(f) if '"event":"eval"' in l] for f in sys.argv[1:]]
ok = len(ev[0]) == len(ev[1]) > 0 and all(
    a["samples"] == b["samples"] and abs(a["accuracy"] - b["accuracy"]) <= 1e-3 and
    abs(a["loss"] - b["loss"]) <= 1e-4 * max(1, abs(b["loss"])) for a, b in zip(*ev))
sys.exit(0 if ok else 1)
PY
}
check "cached and uncached runs give the same evaluations (to 1e-4)" same_evals "$T/ft_off.out" "$T/ft_auto.out"
check "an evaluation of 5000 samples" test "$(grep -c '"samples":5000' "$T/ft_auto.out")" -eq 1

"${MPIRUN[@]}" -np 2 "$CTRAIN" train "$ROOT/examples/transfer/finetune.ini" "${ft[@]}" train.epochs=2 \
    model.freeze="$frozen,layer4.*" train.unfreeze='layer4.*' train.unfreeze_after=1 \
    output.dir="$T/staged" >"$T/staged.out" 2>"$T/staged.err" ||
    { fail "resnet18 staged unfreezing exits 0"; show "$T/staged.err"; }
check "layer4 is unfrozen after 1 epoch in its own group" contains "$T/staged.err" \
    "after 1 epochs: unfroze 15 parameters (layer4.*) with lr x 0.1"
check "training goes on on both ranks for both epochs" test "$(grep -c '"event":"eval"' "$T/staged.out")" -eq 2
finish
