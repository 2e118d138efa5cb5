#!/usr/bin/env bash
# examples/transfer/'s workflow on torchvision's ResNet-18, on NP ranks (default 2):
#   (a) pretrain on classes 0-4, (b) fine-tune layer4 and a fresh fc over the frozen conv1,
#   bn1 and layer1-layer3 on classes 5-9 with 100 labels per class (feature cache on),
#   (c) train the whole ResNet-18 from scratch with the same data and budget; then print
#   each run's test accuracy and wall time.
# Usage: examples/transfer_resnet/run.sh [NP]   (extra key=value overrides: RUN_ARGS)
set -euo pipefail
cd "$(dirname "$0")/../.."
np=${1:-2}
make -s all
declare -A acc secs
run() { # NAME: trains examples/transfer_resnet/NAME.ini, keeps its last eval line and wall time
    local t0=$SECONDS out
    out=$(launcher/ctrun -np "$np" -- ctrain train "examples/transfer_resnet/$1.ini" ${RUN_ARGS:-} | tail -n 1)
    secs[$1]=$((SECONDS - t0))
    acc[$1]=$(sed -E 's/.*"accuracy":([0-9.]+).*/\1/' <<<"$out")
    echo "$1: $out (${secs[$1]} s)"
}
echo "(a) pretrain on classes 0-4"; run pretrain
echo "(b) fine-tune layer4 and fc over the frozen layer1-layer3"; run finetune
echo "(c) from scratch, same data and budget"; run scratch
printf '\n| run | test accuracy | wall time (s) |\n|---|---|---|\n'
printf '| pretrain, classes 0-4 | %s | %s |\n' "${acc[pretrain]}" "${secs[pretrain]}"
printf '| frozen layer1-3, layer4 + new fc, classes 5-9 | %s | %s |\n' "${acc[finetune]}" "${secs[finetune]}"
printf '| from scratch, classes 5-9 | %s | %s |\n' "${acc[scratch]}" "${secs[scratch]}"
