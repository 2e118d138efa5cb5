#!/usr/bin/env bash
# Transfer learning through the CLI on 2 ranks: a pretrained backbone loaded non-strictly
# with a fresh head and frozen by glob; the feature cache turns on by itself and gives the
# same results as running the frozen prefix every step; staged unfreezing works across
# ranks without a restart.
source "$(dirname "$0")/lib.sh"

small=(data.per_class=60 train.batch_size=32 train.log_every=0 train.eval_batch_size=500)
"$CTRAIN" train "$ROOT/examples/transfer/pretrain.ini" "${small[@]}" train.epochs=1 \
    output.dir="$T/pre" >"$T/pre.out" 2>"$T/pre.err"
check "pretrain on classes 0-4" test -f "$T/pre/ckpt-epoch0001.safetensors"

ft=("${small[@]}" model.init_from="$T/pre/ckpt-epoch0001.safetensors" train.epochs=2)
for cache in auto off; do
    "${MPIRUN[@]}" -np 2 "$CTRAIN" train "$ROOT/examples/transfer/finetune.ini" "${ft[@]}" \
        train.feature_cache=$cache output.dir="$T/ft_$cache" >"$T/ft_$cache.out" 2>"$T/ft_$cache.err" ||
        { fail "fine-tune with feature_cache=$cache exits 0"; show "$T/ft_$cache.err"; }
done
check "the fresh head was not loaded" contains "$T/ft_auto.err" "excluded: head.3.weight"
check "the log says the cache is in use" contains "$T/ft_auto.err" "feature cache on"
check "feature_cache=off runs the prefix every step" bash -c "! grep -q 'feature cache on' '$T/ft_off.err'"
expect_eq "cached and uncached runs give identical evaluations" "$(cat "$T/ft_off.out")" "$(cat "$T/ft_auto.out")"
check "two evaluations of 5000 samples" test "$(grep -c '"samples":5000' "$T/ft_auto.out")" -eq 2
check "only the head trains" contains "$T/ft_auto.err" "421189 parameters, 402181 trainable"

# A linear probe: the head's first linear frozen too, so the prefix ends inside "head"
# (11 layers, 128 features per sample) and only the classifier trains, cached or not.
for cache in auto off; do
    "${MPIRUN[@]}" -np 2 "$CTRAIN" train "$ROOT/examples/transfer/finetune.ini" "${ft[@]}" \
        model.init_exclude=head.3.* model.freeze='backbone.*,head.0.*' train.feature_cache=$cache \
        output.dir="$T/lp_$cache" >"$T/lp_$cache.out" 2>"$T/lp_$cache.err" ||
        { fail "linear probe with feature_cache=$cache exits 0"; show "$T/lp_$cache.err"; }
done
check "linear probe: the cache holds the head's 128 hidden features" contains "$T/lp_auto.err" \
    "feature cache on: the frozen prefix (the model's first 11 layers) runs once; 128 features per sample"
check "linear probe: only the classifier trains" contains "$T/lp_auto.err" "421189 parameters, 645 trainable"
expect_eq "linear probe: cached and uncached runs give identical evaluations" "$(cat "$T/lp_off.out")" "$(cat "$T/lp_auto.out")"

# a cache over the memory budget is not made, and the log says why
"$CTRAIN" train "$ROOT/examples/transfer/finetune.ini" "${ft[@]}" train.epochs=1 train.feature_cache_max_mb=1 \
    output.dir="$T/ft_big" >"$T/ft_big.out" 2>"$T/ft_big.err"
check "no cache over train.feature_cache_max_mb, and the log says why" contains "$T/ft_big.err" \
    "feature cache off: the features of the frozen prefix (the model's first 9 layers) would take"
check "...and training still runs" test "$(grep -c '"event":"eval"' "$T/ft_big.out")" -eq 1

# augmentation in front of the prefix makes its output change from step to step
"$CTRAIN" train "$ROOT/examples/transfer/finetune.ini" "${ft[@]}" train.epochs=1 data.augment=flip \
    output.dir="$T/ft_aug" >"$T/ft_aug.out" 2>"$T/ft_aug.err"
check "no cache with augmentation, and the log says why" contains "$T/ft_aug.err" "feature cache off: data augmentation is on"

"${MPIRUN[@]}" -np 2 "$CTRAIN" train "$ROOT/examples/transfer/staged.ini" "${ft[@]}" train.epochs=3 \
    train.unfreeze_after=1 output.dir="$T/staged" >"$T/staged.out" 2>"$T/staged.err" ||
    { fail "staged unfreezing exits 0"; show "$T/staged.err"; }
check "the last block is unfrozen after 1 epoch" contains "$T/staged.err" "after 1 epochs: unfroze 4 parameters (backbone.4.*, backbone.5.*) with lr x 0.1"
check "training goes on on both ranks for all 3 epochs" test "$(grep -c '"event":"eval"' "$T/staged.out")" -eq 3
finish
