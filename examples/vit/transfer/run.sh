#!/usr/bin/env bash
# examples/transfer/'s workflow on the small ViT (vit_tiny), on NP ranks (default 2):
#   (a) pretrain on classes 0-4; on classes 5-9 with 100 labels per class and a fresh head,
#   (b1) a linear probe (class_token, conv_proj and the whole encoder frozen; the feature
#   cache holds the class-token feature), (b2) the last encoder block fine-tuned (the first
#   three frozen; the cache holds their output), (c) the whole ViT from scratch with the same
#   data and budget; then print each run's test accuracy and wall time.
# Usage: examples/vit/transfer/run.sh [NP]   (extra key=value overrides: RUN_ARGS)
source "$(dirname "$0")/../../transfer_lib.sh" examples/vit/transfer "$@"
echo "(a) pretrain on classes 0-4"; run pretrain
echo "(b1) linear probe over the frozen ViT"; run probe
echo "(b2) fine-tune the last encoder block"; run last_block
echo "(c) from scratch, same data and budget"; run scratch
table "pretrain, classes 0-4=pretrain" "linear probe (heads.head only), classes 5-9=probe" \
    "last block + encoder.ln + head, classes 5-9=last_block" "from scratch, classes 5-9=scratch"
