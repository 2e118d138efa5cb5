#!/usr/bin/python3
"""A backbone trained in PyTorch, fine-tuned in ctrain, and loaded back into PyTorch.

usage:
  torch_backbone.py pretrain --out BACKBONE.safetensors [--classes 0-4] [--per-class N]
                             [--epochs N] [--seed S] [--batch-size B] [--lr LR]
  torch_backbone.py evaluate --checkpoint CKPT.safetensors [--classes 5-9]

The model is ctrain's built-in CNN (`[model] name = cnn`, ct_nn_cnn in src/nn/builtins.c)
written out as PyTorch code with the same state_dict names:
  Sequential(backbone = Sequential(Conv2d(1,32,3,p1), BatchNorm2d, ReLU, MaxPool2d(2),
                                   Conv2d(32,64,3,p1), BatchNorm2d, ReLU, MaxPool2d(2), Flatten),
             head     = Sequential(Linear(3136,128), ReLU, Dropout, Linear(128,classes)))

pretrain  trains it (Adam, train mode, one thread) on Fashion-MNIST's training set restricted
          to --classes (renumbered 0..k-1, the first --per-class samples of each class, as
          ctrain's data.per_class), then writes its state_dict with torch_to_safetensors.py's
          encoder. ctrain loads that file with `model.init_from` (examples/transfer/
          from_torch.ini). Prints {"event":"pretrain",...} per epoch (train loss; test accuracy
          on the same classes, as `ctrain eval` would print it, unless --no-eval).
evaluate  reads a safetensors checkpoint written by ctrain (or by pretrain), keeps only the
          model entries (safetensors_to_torch.py --model-only: drops optim.* and rng.*), loads
          them with load_state_dict(strict=True), and evaluates in eval mode under no_grad on
          the test set of --classes, with ctrain's input pipeline: x/255 in float32, then
          (x - mean) / std with data.mean/data.std's defaults, labels renumbered 0..k-1. Prints
          {"accuracy":A,"loss":L,"samples":N,"correct":C}: loss is the mean cross entropy and
          accuracy = correct / samples, as `ctrain eval` prints them. --save-pt also writes the
          loaded state_dict with torch.save.
"""
import argparse
import gzip
import json
import os
import sys
import time
from collections import OrderedDict

NAME = "torch_backbone"
HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # no __pycache__ in scripts/
sys.path.insert(0, HERE)
# fail() and the torch import (a clear error without torch) are shared with the converters
from torch_to_safetensors import encode, fail, torch, write_atomic  # noqa: E402
from safetensors_to_torch import is_model_entry, read  # noqa: E402

try:
    import numpy as np
    import torch.nn.functional as F
    from torch import nn
except ImportError as e:
    fail(f"cannot import torch/numpy: {e}")

DATA_DIR = "/usr/share/datasets/fashion-mnist"  # ctrain's data.dir default
MEAN, STD = 0.2860, 0.3530                        # ctrain's data.mean / data.std defaults
NUM_CLASSES = 10                                  # Fashion-MNIST


# ---- the model ------------------------------------------------------------------------------

def cnn(classes, dropout=0.25):
    """ct_nn_cnn(1, 28, classes, dropout): same layers, same state_dict names and order."""
    backbone = nn.Sequential(nn.Conv2d(1, 32, 3, 1, 1), nn.BatchNorm2d(32), nn.ReLU(),
                             nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, 1, 1), nn.BatchNorm2d(64),
                             nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
    head = nn.Sequential(nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(128, classes))
    return nn.Sequential(OrderedDict(backbone=backbone, head=head))


# ---- data: ctrain's pipeline ----------------------------------------------------------------

def parse_classes(spec):
    """ct_config_classes: "all", "3", "0-4", "1,3,5-7" -> the sorted list of kept classes."""
    spec = spec.strip()
    if spec == "all":
        return list(range(NUM_CLASSES))
    keep = set()
    for part in spec.split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            fail(f"--classes '{spec}': '{part}' is not a class or a range")
        if not 0 <= a <= b < NUM_CLASSES:
            fail(f"--classes '{spec}': '{part}' is outside 0-{NUM_CLASSES - 1}")
        keep.update(range(a, b + 1))
    return sorted(keep)


def read_idx(path, magic, header):
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        fail(f"{path}: cannot read: {e}")
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        fail(f"{path}: not an IDX file with magic 0x{magic:08x}")
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range((header - 4) // 4)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=header)
    if data.size != int(np.prod(dims)):
        fail(f"{path}: {data.size} bytes of data for dimensions {dims}")
    return data.reshape(dims)


def load_split(data_dir, split, classes, per_class=0, mean=MEAN, std=STD):
    """Returns (x [N,1,28,28] float32 normalised, y int64 renumbered) as ctrain builds them:
    ct_dataset_from_idx (x / 255 in float32), ct_dataset_keep_classes(renumber), then
    ct_dataset_few_shot (the first per_class samples of each class, in file order), then the
    loader's (x - mean) / std with mean and std as float32."""
    pre = "train" if split == "train" else "t10k"
    images = read_idx(os.path.join(data_dir, f"{pre}-images-idx3-ubyte.gz"), 0x803, 16)
    labels = read_idx(os.path.join(data_dir, f"{pre}-labels-idx1-ubyte.gz"), 0x801, 8)
    if len(images) != len(labels):
        fail(f"{data_dir}: {len(images)} {split} images but {len(labels)} labels")
    keep = np.isin(labels, classes)
    if per_class > 0:
        seen = {c: 0 for c in classes}
        for i in np.flatnonzero(keep):
            c = int(labels[i])
            keep[i] = seen[c] < per_class
            seen[c] += 1
    renumber = np.full(NUM_CLASSES, -1, dtype=np.int64)
    renumber[classes] = np.arange(len(classes))
    x = torch.from_numpy(images[keep].astype(np.float32)).unsqueeze(1) / 255.0
    x = (x - torch.tensor(mean, dtype=torch.float32)) / torch.tensor(std, dtype=torch.float32)
    y = torch.from_numpy(renumber[labels[keep]])
    return x, y


@torch.no_grad()
def evaluate_model(model, x, y, batch_size=256):
    """model.eval() under no_grad; returns (mean cross entropy, correct, samples)."""
    was_training = model.training
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(x), batch_size):
        logits = model(x[i:i + batch_size])
        t = y[i:i + batch_size]
        loss += F.cross_entropy(logits.double(), t, reduction="sum").item()
        correct += int((logits.argmax(1) == t).sum())
    model.train(was_training)
    return loss / len(x), correct, len(x)


# ---- subcommands ----------------------------------------------------------------------------

def cmd_pretrain(a):
    torch.manual_seed(a.seed)
    classes = parse_classes(a.classes)
    x, y = load_split(a.data_dir, "train", classes, a.per_class, a.mean, a.std)
    test = None if a.no_eval else load_split(a.data_dir, "test", classes, 0, a.mean, a.std)
    model = cnn(len(classes), a.dropout)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    gen = torch.Generator().manual_seed(a.seed)
    for epoch in range(1, a.epochs + 1):
        t0 = time.time()
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        total, steps = 0.0, 0
        for i in range(0, len(x), a.batch_size):
            idx = perm[i:i + a.batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
            steps += 1
        line = {"event": "pretrain", "epoch": epoch, "train_loss": round(total / steps, 6),
                "train_samples": len(x)}
        if test is not None:
            tl, correct, n = evaluate_model(model, *test)
            line.update(loss=round(tl, 6), accuracy=round(correct / n, 6), samples=n,
                        correct=correct)
        line["seconds"] = round(time.time() - t0, 2)
        print(json.dumps(line), flush=True)
    meta = {"format": "pt", "source": "scripts/torch_backbone.py pretrain",
            "classes": ",".join(map(str, classes)), "epochs": str(a.epochs), "seed": str(a.seed)}
    write_atomic(a.out, encode(model.state_dict(), meta))
    print(f"{NAME}: wrote {a.out}", file=sys.stderr)


def cmd_evaluate(a):
    classes = parse_classes(a.classes)
    state_dict, _ = read(a.checkpoint, is_model_entry)  # safetensors_to_torch.py --model-only
    model = cnn(len(classes))
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        fail(f"{a.checkpoint}: does not load into the CNN with {len(classes)} classes "
             f"(--classes {a.classes}): {e}")
    if a.save_pt:
        torch.save(model.state_dict(), a.save_pt)
    x, y = load_split(a.data_dir, "test", classes, 0, a.mean, a.std)
    loss, correct, n = evaluate_model(model, x, y, a.batch_size)
    print(json.dumps({"accuracy": round(correct / n, 6), "loss": round(loss, 6), "samples": n,
                      "correct": correct}), flush=True)


def main():
    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description="PyTorch backbone <-> ctrain round trip")
    sub = ap.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", default=DATA_DIR, help="Fashion-MNIST IDX .gz files")
    common.add_argument("--mean", type=float, default=MEAN, help="ctrain's data.mean")
    common.add_argument("--std", type=float, default=STD, help="ctrain's data.std")
    p = sub.add_parser("pretrain", parents=[common], help="train the CNN, export safetensors")
    p.add_argument("--out", required=True, help="safetensors file to write")
    p.add_argument("--classes", default="0-4")
    p.add_argument("--per-class", type=int, default=1000,
                   help="training samples per class, first in file order (0 = all)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--dropout", type=float, default=0.25, help="ctrain's model.dropout")
    p.add_argument("--no-eval", action="store_true", help="skip the test-set evaluation")
    p.set_defaults(fn=cmd_pretrain)
    e = sub.add_parser("evaluate", parents=[common], help="evaluate a ctrain checkpoint in torch")
    e.add_argument("--checkpoint", required=True, help="safetensors file written by ctrain")
    e.add_argument("--classes", default="5-9")
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--save-pt", metavar="OUT.pt", help="also torch.save the loaded state_dict")
    e.set_defaults(fn=cmd_evaluate)
    a = ap.parse_args()
    if a.cmd == "pretrain" and (a.epochs < 1 or a.batch_size < 1 or a.per_class < 0):
        fail("--epochs and --batch-size must be >= 1, --per-class >= 0")
    a.fn(a)


if __name__ == "__main__":
    main()
