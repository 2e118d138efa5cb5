#!/usr/bin/python3
"""The PyTorch side of scripts/bench_loader.sh's loader_folder line: torchvision's ImageFolder
with RandomResizedCrop, RandomHorizontalFlip, ToTensor and Normalize (ImageNet's) through a
shuffled DataLoader with N worker processes, timed as tests/bench/bench_loader.c times
ctrain's loader: each repeat starts an epoch and times K batches after W untimed ones; the
best repeat's images/s is printed as one JSON object.

    bench_loader_torch.py --dir DIR [--workers N] [--batch B] [--batches K] [--warmup W]
                          [--size S] [--repeats R]
"""
import argparse
import json
import time

import torch
from torchvision import datasets, transforms

ap = argparse.ArgumentParser()
ap.add_argument("--dir", required=True)
ap.add_argument("--workers", type=int, default=0)
ap.add_argument("--batch", type=int, default=64)
ap.add_argument("--batches", type=int, default=20)
ap.add_argument("--warmup", type=int, default=2)
ap.add_argument("--size", type=int, default=64)
ap.add_argument("--repeats", type=int, default=1)
a = ap.parse_args()
torch.set_num_threads(1)
tf = transforms.Compose([transforms.RandomResizedCrop(a.size), transforms.RandomHorizontalFlip(),
                         transforms.ToTensor(),
                         transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
ds = datasets.ImageFolder(a.dir, tf)
# persistent workers: ctrain's threads also live as long as the loader
dl = torch.utils.data.DataLoader(ds, batch_size=a.batch, shuffle=True, num_workers=a.workers, drop_last=True,
                                 persistent_workers=a.workers > 0)
best = 0.0
it = None
for r in range(a.repeats):
    it = iter(dl)
    t0 = 0.0
    for k in range(a.warmup + a.batches):
        if k == a.warmup:
            t0 = time.perf_counter()
        try:
            next(it)
        except StopIteration:  # the data set ran out: the next epoch
            it = iter(dl)
            next(it)
    best = max(best, a.batches * a.batch / (time.perf_counter() - t0))
print(json.dumps({"prog": "torch", "workers": a.workers, "batch": a.batch, "batches": a.batches,
                  "images": len(ds), "ips": round(best, 1)}), flush=True)
