#!/usr/bin/env bash
# The transfer-learning workflow end to end on NP ranks (default 2):
#   (a) pretrain on classes 0-4, (b) fine-tune a fresh head over the frozen backbone on
#   classes 5-9 with 100 labels per class (and a staged-unfreezing variant), (c) train
#   the same model from scratch with the same budget, then compare test accuracy.
# Usage: examples/transfer/run.sh [NP]
set -euo pipefail
cd "$(dirname "$0")/../.."
np=${1:-2}
make -s all
run() { launcher/ctrun -np "$np" -- ctrain train "examples/transfer/$1.ini" "${@:2}" | tail -n 1; }
echo "(a) pretrain on classes 0-4"; run pretrain
echo "(b) fine-tune the head over the frozen backbone"; ft=$(run finetune); echo "$ft"
echo "(b') staged unfreezing of the last block"; st=$(run staged); echo "$st"
echo "(c) from scratch, same budget"; sc=$(run scratch); echo "$sc"
acc() { sed -E 's/.*"accuracy":([0-9.]+).*/\1/' <<<"$1"; }
printf '\n| run | test accuracy (classes 5-9) |\n|---|---|\n| frozen backbone + new head | %s |\n| staged unfreezing | %s |\n| from scratch | %s |\n' \
    "$(acc "$ft")" "$(acc "$st")" "$(acc "$sc")"
