#!/usr/bin/env bash
# examples/transfer/'s workflow on torchvision's ResNet-18, on NP ranks (default 2):
#   (a) pretrain on classes 0-4, (b) fine-tune layer4 and a fresh fc over the frozen conv1,
#   bn1 and layer1-layer3 on classes 5-9 with 100 labels per class (feature cache on),
#   (c) train the whole ResNet-18 from scratch with the same data and budget; then print
#   each run's test accuracy and wall time.
# Usage: examples/transfer_resnet/run.sh [NP]   (extra key=value overrides: RUN_ARGS)
source "$(dirname "$0")/../transfer_lib.sh" examples/transfer_resnet "$@"
echo "(a) pretrain on classes 0-4"; run pretrain
echo "(b) fine-tune layer4 and fc over the frozen layer1-layer3"; run finetune
echo "(c) from scratch, same data and budget"; run scratch
table "pretrain, classes 0-4=pretrain" "frozen layer1-3, layer4 + new fc, classes 5-9=finetune" \
    "from scratch, classes 5-9=scratch"
