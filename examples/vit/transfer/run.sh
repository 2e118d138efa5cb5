#!/usr/bin/env bash
# examples/transfer/'s workflow on the small ViT (vit_tiny), on NP ranks (default 2):
#   (a) pretrain on classes 0-4; on classes 5-9 with 100 labels per class and a fresh head,
#   (b1) a linear probe (class_token, conv_proj and the whole encoder frozen; the feature
#   cache holds the class-token feature), (b2) the last encoder block fine-tuned (the first
#   three frozen; the cache holds their output), (c) the whole ViT from scratch with the same
#   data and budget; then print each run's test accuracy and wall time.
# Usage: examples/vit/transfer/run.sh [NP]   (extra key=value overrides: RUN_ARGS)
set -euo pipefail
cd "$(dirname "$0")/../../.."
np=${1:-2}
make -s all
declare -A acc secs
run() { # NAME: trains examples/vit/transfer/NAME.ini, keeps its last eval line and wall time
    local t0=$SECONDS out
    out=$(launcher/ctrun -np "$np" -- ctrain train "examples/vit/transfer/$1.ini" ${RUN_ARGS:-} | tail -n 1)
    secs[$1]=$((SECONDS - t0))
    acc[$1]=$(sed -E 's/.*"accuracy":([0-9.]+).*/\1/' <<<"$out")
    echo "$1: $out (${secs[$1]} s)"
}
echo "(a) pretrain on classes 0-4"; run pretrain
echo "(b1) linear probe over the frozen ViT"; run probe
echo "(b2) fine-tune the last encoder block"; run last_block
echo "(c) from scratch, same data and budget"; run scratch
printf '\n| run | test accuracy | wall time (s) |\n|---|---|---|\n'
printf '| pretrain, classes 0-4 | %s | %s |\n' "${acc[pretrain]}" "${secs[pretrain]}"
printf '| linear probe (heads.head only), classes 5-9 | %s | %s |\n' "${acc[probe]}" "${secs[probe]}"
printf '| last block + encoder.ln + head, classes 5-9 | %s | %s |\n' "${acc[last_block]}" "${secs[last_block]}"
printf '| from scratch, classes 5-9 | %s | %s |\n' "${acc[scratch]}" "${secs[scratch]}"
