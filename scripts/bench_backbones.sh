#!/usr/bin/env bash
# names: train_resnet18_2rank train_frozen_resnet18_2rank eval_resnet18_1rank rss_resnet18_train train_vit_2rank eval_vit_1rank vit_linear_probe_2rank
# Real backbones against torchvision in the same run: the same model (torchvision's layout and
# initialisation on both sides), per-rank batch, Adam (lr 1e-3) and one thread per process;
# two ranks are mpirun -np 2 for ctrain and DistributedDataParallel (gloo) for PyTorch. About
# 5 minutes; ROUNDS (default 2) alternating rounds, the best run of each side.
#   train_resnet18_2rank         ResNet-18, imagenet stem, 3x32x32 synthetic inputs, batch 32
#                                per rank, samples/s (S_RESNET steps per run);
#   train_frozen_resnet18_2rank  the same with conv1, bn1, layer1-3 frozen (frozen BatchNorm in
#                                eval mode on both sides; no feature cache, so both sides run
#                                the frozen stages every step);
#   eval_resnet18_1rank          eval + no_grad forward, batch 256;
#   rss_resnet18_train           peak RSS of a fresh process per side, 30 training steps of
#                                train_resnet18's (one rank);
#   train_vit_2rank              the small ViT (vit_tiny: 28 px, 4x4 patches, 4 layers, 64
#                                wide, 1 channel, no dropout), synthetic inputs, batch 32 per rank;
#   eval_vit_1rank               eval + no_grad, batch 256;
#   vit_linear_probe_2rank       the whole backbone frozen (class_token,conv_proj.*,encoder.*;
#                                only heads.head trains), real Fashion-MNIST, batch 32 per rank:
#                                ctrain's CLI with the feature cache (which holds the class-token
#                                feature), samples/s of epochs 2-3 of a 3-epoch run on 20,000
#                                images, against PyTorch DDP with the same freeze, which runs the
#                                frozen encoder every step (it has no cache): steady-state
#                                samples/s over S_PROBE steps after warm-up.
# Steps per run are fewer than the CNN's 300 (a ResNet-18 step is ~40x a CNN step): what
# keeps `make bench` under 25 minutes.
source "$(cd "$(dirname "$0")" && pwd)/benchlib.sh"
want train_resnet18_2rank train_frozen_resnet18_2rank eval_resnet18_1rank rss_resnet18_train \
    train_vit_2rank eval_vit_1rank vit_linear_probe_2rank || exit 0
ROUNDS=${ROUNDS:-2}
S_RESNET=40 S_FROZEN=80 S_EVAL=12 S_RSS=30 S_VIT=150 S_EVIT=30 S_PROBE=150
if [ "$QUICK" = 1 ]; then ROUNDS=1 S_RESNET=2 S_FROZEN=2 S_EVAL=1 S_RSS=2 S_VIT=2 S_EVIT=1 S_PROBE=2; fi
R18=(--model resnet18 --batch 32 --repeats 1)
VIT=(--model vit_tiny --repeats 1)
FREEZE_R18='conv1.*,bn1.*,layer1.*,layer2.*,layer3.*'
FREEZE_VIT='class_token,conv_proj.*,encoder.*'

for ((r = 0; r < ROUNDS; r++)); do
    if want train_resnet18_2rank; then
        both train_resnet18_2rank 2 "${R18[@]}" --mode train --steps $S_RESNET --warmup 3
    fi
    if want train_frozen_resnet18_2rank; then
        both train_frozen_resnet18_2rank 2 "${R18[@]}" --mode train --steps $S_FROZEN --warmup 3 --freeze "$FREEZE_R18"
    fi
    if want eval_resnet18_1rank; then
        both eval_resnet18_1rank 1 --model resnet18 --batch 256 --repeats 1 --mode eval --steps $S_EVAL --warmup 1
    fi
    if want train_vit_2rank; then
        both train_vit_2rank 2 "${VIT[@]}" --batch 32 --mode train --steps $S_VIT --warmup 5
    fi
    if want eval_vit_1rank; then
        both eval_vit_1rank 1 "${VIT[@]}" --batch 256 --mode eval --steps $S_EVIT --warmup 2
    fi
    if want vit_linear_probe_2rank; then
        pt vit_linear_probe_2rank 2 "${VIT[@]}" --batch 32 --mode train --data fmnist --steps $S_PROBE --warmup 10 \
            --freeze "$FREEZE_VIT"
    fi
done
if want rss_resnet18_train; then
    both rss_resnet18_train 1 "${R18[@]}" --mode train --steps $S_RSS --warmup 0
fi
if want vit_linear_probe_2rank; then
    per_class=2000
    [ "$QUICK" = 1 ] && per_class=20
    timeout 1200 mpirun "${CT_MPIRUN_FLAGS[@]}" -np 2 "$B/ctrain" train "$root/examples/vit/fmnist_vit.ini" \
        model.freeze="$FREEZE_VIT" data.per_class=$per_class train.epochs=3 train.batch_size=32 train.log_every=0 \
        optim.name=adam optim.weight_decay=0 schedule.name=none train.feature_cache=auto output.dir="$out/probe" \
        >/dev/null 2>"$out/probe.err" || { cat "$out/probe.err" >&2; exit 1; }
fi

report <<'PY'
from benchlib import best, compare, emit, epochs_sps, r1, ratio, rss, runs
emit(compare("train_resnet18_2rank", model="resnet18", stem="imagenet", input="3x32x32", batch=32))
emit(compare("train_frozen_resnet18_2rank", model="resnet18", frozen="conv1.*,bn1.*,layer1.*,layer2.*,layer3.*",
             batch=32))
emit(compare("eval_resnet18_1rank", model="resnet18", batch=256))
emit(rss("rss_resnet18_train", model="resnet18", batch=32))
emit(compare("train_vit_2rank", model="vit_tiny", batch=32))
emit(compare("eval_vit_1rank", model="vit_tiny", batch=256))
t = best("vit_linear_probe_2rank", "torch")
c = epochs_sps("probe")
emit({"bench": "vit_linear_probe_2rank", "model": "vit_tiny", "frozen": "class_token,conv_proj.*,encoder.*",
      "batch": 32, "ctrain_sps": r1(c), "torch_sps": t["sps"] if t else None, "ratio": ratio(c, t["sps"] if t else None),
      "ctrain": "epochs 2-3 with the feature cache",
      "torch_sps_all": [r["sps"] for r in runs("vit_linear_probe_2rank", "torch")]})
PY
