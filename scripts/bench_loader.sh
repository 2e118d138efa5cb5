#!/usr/bin/env bash
# names: loader_folder train_from_folder
# The image loader's benchmarks (issue 12), two JSON lines, about 4 minutes:
# - loader_folder: images/s of decode + random_resized_crop(64) + horizontal flip +
#   per-channel normalisation from a generated tree of 512 256x256 RGB JPEGs:
#   tests/bench/bench_loader.c (ctrain's loader with N decoding threads) against
#   scripts/bench_loader_torch.py (torchvision's ImageFolder + DataLoader with N worker
#   processes) in the same run, N = 2 (and N = 0, 1 for ctrain alone: how it scales).
# - train_from_folder: samples/s of the CNN's training step (one rank, batch 64, 300 steps)
#   fed from the PNG tree of 12000 Fashion-MNIST images with 1 decoding thread, against the
#   same samples from IDX files in memory: ratio >= 0.9 means the loader hides behind the step.
# The machine is shared and noisy: ROUNDS (default 2) alternating rounds, the best of each
# side. Needs torch + torchvision under PYTHON for the PyTorch side (null without them).
source "$(cd "$(dirname "$0")" && pwd)/benchlib.sh"
want loader_folder train_from_folder || exit 0
have_tv=0
[ "$have_torch" = 0 ] || ! "$PY" -c 'import torchvision' 2>/dev/null || have_tv=1
ROUNDS=${ROUNDS:-2}
BATCHES=30 STEPS=300
if [ "$QUICK" = 1 ]; then ROUNDS=1 BATCHES=3 STEPS=3; fi
tmp=$out
PIL_PY=${PY:-python3}

want loader_folder && "$PIL_PY" - "$tmp/jpeg" <<'PY'
import os, sys
import numpy as np
from PIL import Image
out = sys.argv[1]
rng = np.random.default_rng(0)
y, x = np.mgrid[0:256, 0:256]
for c in range(4):  # 4 classes x 128 images: smooth colour waves plus noise, quality 90
    os.makedirs(f"{out}/class{c}", exist_ok=True)
    for i in range(128):
        f = rng.uniform(0.01, 0.1, 3)
        base = np.stack([128 + 100 * np.sin(f[k] * (x + (k + 1) * y) + i) for k in range(3)], -1)
        a = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(a, "RGB").save(f"{out}/class{c}/{i:04d}.jpg", quality=90)
PY
want train_from_folder && "$PIL_PY" "$here/fmnist_to_images.py" "$tmp/png" --train 12000 --test 10 >/dev/null

L=(--dir "$tmp/jpeg" --batch 64 --batches $BATCHES --warmup 2 --repeats 2)
T=(--model cnn --mode train --batch 64 --steps $STEPS --warmup 10 --repeats 1)
for ((r = 0; r < ROUNDS; r++)); do
    if want loader_folder; then
        for n in 0 1 2; do "$B/bench/bench_loader" "${L[@]}" --workers $n >>"$tmp/loader.ctrain"; done
        [ "$have_tv" = 0 ] || "$PY" "$here/bench_loader_torch.py" "${L[@]}" --workers 2 >>"$tmp/loader.torch"
    fi
    if want train_from_folder; then
        "$B/bench/bench_train" "${T[@]}" --data fmnist --data-dir "$tmp/png/idx" >>"$tmp/train.memory"
        "$B/bench/bench_train" "${T[@]}" --data folder --data-dir "$tmp/png/train" --workers 1 >>"$tmp/train.folder"
    fi
done

report <<'PY'
from benchlib import emit, ratio, runs
def best(rs, key):
    return max((r[key] for r in rs), default=None)
c = runs("loader.ctrain")
if c:
    by_n = {n: best([r for r in c if r["workers"] == n], "ips") for n in (0, 1, 2)}
    t = best(runs("loader.torch"), "ips")
    emit({"bench": "loader_folder", "workers": 2, "ctrain_ips": by_n[2], "torch_ips": t,
          "ratio": ratio(by_n[2], t), "ctrain_ips_workers_0_1_2": [by_n[0], by_n[1], by_n[2]],
          "ctrain_ips_all": [r["ips"] for r in c if r["workers"] == 2],
          "torch_ips_all": [r["ips"] for r in runs("loader.torch")]})
m, f = best(runs("train.memory"), "sps"), best(runs("train.folder"), "sps")
if m is not None:
    emit({"bench": "train_from_folder", "model": "cnn", "workers": 1, "folder_sps": f, "memory_sps": m,
          "ratio": ratio(f, m), "folder_sps_all": [r["sps"] for r in runs("train.folder")],
          "memory_sps_all": [r["sps"] for r in runs("train.memory")]})
PY
