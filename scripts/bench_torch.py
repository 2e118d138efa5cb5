#!/usr/bin/env python3
"""PyTorch reference for tests/bench/bench_train.c: the same models, step, batch, optimizer,
data choice and timing method, printing one JSON object in the same format ("prog":"torch").

  bench_torch.py [--model mlp|cnn|resnet18|vit_tiny] [--mode train|eval|layers] [--ranks 1|2]
                 [--steps N] [--warmup N] [--batch B] [--repeats R] [--data synthetic|fmnist]
                 [--threads T] [--freeze GLOBS]

Models: ctrain's mlp and cnn written out in PyTorch; torchvision's resnet18 (imagenet stem,
3x32x32 inputs) and the small ViT (ctrain's vit_tiny preset: VisionTransformer(28 px, 4x4
patches, 4 layers, 4 heads, 64 wide, mlp 128) with a 1-channel conv_proj, no dropout), all
with 10 classes.
--freeze: requires_grad=False on every parameter whose name matches one of the
comma-separated globs (fnmatch, as ctrain's model.freeze); BatchNorm layers whose parameters
are all frozen run in eval mode, as ctrain's frozen BatchNorm does.

train:  forward, cross_entropy, backward, Adam step, zero_grad (PyTorch defaults: Adam as
        constructed with lr=1e-3, zero_grad() without set_to_none). --ranks 2 runs
        DistributedDataParallel (gloo, defaults: 25 MiB buckets, broadcast_buffers) in two
        processes started with torch.multiprocessing, rendezvous over tcp://127.0.0.1; each
        process is pinned to core `rank` as ctrain's hwloc binding pins its ranks.
eval:   model.eval() and torch.no_grad() forward of a batch (one process).
layers: the training step with per-layer timers: forward hooks on each leaf module, and for
        backward, tensor hooks on every layer's output, which fire just before that layer's
        backward starts (so a layer's interval includes AccumulateGrad of its parameters).
Data: synthetic cycles 8 in-memory batches of N(0, 1) features and uniform labels (as the C
side), in the model's input shape; fmnist reads the IDX files into a float32 [0, 1] tensor, as ctrain's data set does,
and builds each batch by shuffled indexing and (x - 0.2860) / 0.3530, as ctrain's loader does.
Threads: torch.set_num_threads(--threads, default 1) and set_num_interop_threads(1); the
caller exports OMP_NUM_THREADS (= --threads), OPENBLAS_NUM_THREADS=1 and OPENBLAS_CORETYPE
(scripts/bench.sh does).
"""
import argparse
import fnmatch
import gzip
import json
import os
import resource
import socket
import sys
import time
from collections import OrderedDict

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

FMNIST = "/usr/share/datasets/fashion-mnist"
INPUT = {"mlp": (784,), "cnn": (1, 28, 28), "resnet18": (3, 32, 32), "vit_tiny": (1, 28, 28)}  # per sample


def max_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def make_model(name):
    if name == "resnet18":
        import torchvision
        return torchvision.models.resnet18(num_classes=10)
    if name == "vit_tiny":
        from torchvision.models.vision_transformer import VisionTransformer
        m = VisionTransformer(image_size=28, patch_size=4, num_layers=4, num_heads=4, hidden_dim=64, mlp_dim=128,
                              num_classes=10)
        # one input channel, as ctrain's model.in_channels = 1, initialised as torchvision's
        m.conv_proj = nn.Conv2d(1, 64, kernel_size=4, stride=4)
        fan_in = m.conv_proj.in_channels * 4 * 4
        nn.init.trunc_normal_(m.conv_proj.weight, std=(1.0 / fan_in) ** 0.5)
        nn.init.zeros_(m.conv_proj.bias)
        return m
    if name == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128),
                             nn.ReLU(), nn.Linear(128, 10))
    backbone = nn.Sequential(
        nn.Conv2d(1, 32, 3, 1, 1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2, 2),
        nn.Conv2d(32, 64, 3, 1, 1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2, 2),
        nn.Flatten())
    head = nn.Sequential(nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Dropout(0.25),
                         nn.Linear(128, 10))
    return nn.Sequential(OrderedDict(backbone=backbone, head=head))


def read_idx(path):
    with gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


class Source:
    """Batches: synthetic (8 cycled in-memory batches) or Fashion-MNIST (the rank's shard of
    a per-epoch permutation, full batches only, normalised as ctrain's loader does)."""

    def __init__(self, a, rank, world):
        self.a, self.i = a, 0
        if a.data == "synthetic":
            g = torch.Generator().manual_seed(1000 + rank)
            shape = (a.batch,) + INPUT[a.model]
            self.batches = [(torch.randn(shape, generator=g), torch.randint(0, 10, (a.batch,), generator=g))
                            for _ in range(8)]
            return
        self.batches = None
        x = read_idx(os.path.join(FMNIST, "train-images-idx3-ubyte.gz")).astype(np.float32)
        x /= 255.0  # in place: one float32 copy, as ctrain's data set holds
        self.x = torch.from_numpy(x).reshape((-1,) + INPUT[a.model])
        self.y = torch.from_numpy(read_idx(os.path.join(FMNIST, "train-labels-idx1-ubyte.gz")).astype(np.int64))
        self.rank, self.world, self.epoch = rank, world, 0
        self.start_epoch()

    def start_epoch(self):
        g = torch.Generator().manual_seed(self.epoch)
        n = len(self.y) // self.world * self.world
        self.shard = torch.randperm(len(self.y), generator=g)[:n][self.rank::self.world]
        self.pos = 0
        self.epoch += 1

    def next(self):
        if self.batches is not None:
            b = self.batches[self.i]
            self.i = (self.i + 1) % len(self.batches)
            return b
        if self.pos + self.a.batch > len(self.shard):
            self.start_epoch()
        idx = self.shard[self.pos:self.pos + self.a.batch]
        self.pos += self.a.batch
        return (self.x[idx] - 0.2860) / 0.3530, self.y[idx]


def train_step(model, opt, src, ph):
    t0 = time.perf_counter()
    x, y = src.next()
    t1 = time.perf_counter()
    loss = F.cross_entropy(model(x), y)
    t2 = time.perf_counter()
    loss.backward()
    t3 = time.perf_counter()
    opt.step()
    opt.zero_grad()
    t4 = time.perf_counter()
    if ph is not None:
        ph["forward"] += t2 - t1
        ph["backward"] += t3 - t2
        ph["optim"] += t4 - t3
        ph["step"] += t4 - t0


def eval_step(model, src):
    x, _ = src.next()
    with torch.no_grad():
        model(x)


def leaf_modules(model):
    return [(n, m) for n, m in model.named_modules() if not list(m.children())]


def run_layers(a, model, opt, src):
    for _ in range(a.warmup):
        train_step(model, opt, src, None)
    leaves = leaf_modules(model)
    nl = len(leaves)
    fwd = [[0.0] * (nl + 1) for _ in range(a.steps)]  # [step][layer]; nl is the loss
    bwd = [[0.0] * (nl + 1) for _ in range(a.steps)]
    stamps = {}
    t_start = [0.0]
    cur = [0]

    def pre(i):
        def hook(mod, inp):
            t_start[0] = time.perf_counter()
        return hook

    def post(i):
        def hook(mod, inp, out):
            fwd[cur[0]][i] += time.perf_counter() - t_start[0]
            if out.requires_grad:
                out.register_hook(lambda g: stamps.__setitem__(i, time.perf_counter()))
        return hook

    handles = []
    for i, (_, m) in enumerate(leaves):
        handles.append(m.register_forward_pre_hook(pre(i)))
        handles.append(m.register_forward_hook(post(i)))
    ph = dict(forward=[], backward=[], optim=[], step=[])
    for s in range(a.steps):
        cur[0] = s
        stamps.clear()
        t0 = time.perf_counter()
        x, y = src.next()
        t1 = time.perf_counter()
        logits = model(x)
        tl = time.perf_counter()
        loss = F.cross_entropy(logits, y)
        t2 = time.perf_counter()
        fwd[s][nl] += t2 - tl
        loss.backward()
        t3 = time.perf_counter()
        # The hook on layer i's output fires when layer i+1 (or the loss) has finished.
        bwd[s][nl] += stamps[nl - 1] - t2
        for i in range(nl - 1, -1, -1):
            end = stamps[i - 1] if i > 0 else t3
            bwd[s][i] += end - stamps[i] if i in stamps else 0.0
        opt.step()
        opt.zero_grad()
        t4 = time.perf_counter()
        ph["forward"].append(t2 - t1)
        ph["backward"].append(t3 - t2)
        ph["optim"].append(t4 - t3)
        ph["step"].append(t4 - t0)
    for h in handles:
        h.remove()

    def med_ms(v):
        return round(float(np.median(v)) * 1e3, 4)

    names = [f"{n} {type(m).__name__}" for n, m in leaves] + ["loss"]
    layers = [dict(name=names[i], fwd_ms=med_ms([f[i] for f in fwd]), bwd_ms=med_ms([b[i] for b in bwd]))
              for i in range(nl + 1)]
    return dict(prog="torch", model=a.model, mode="layers", batch=a.batch, steps=a.steps,
                statistic="median over steps", step_ms=med_ms(ph["step"]), forward_ms=med_ms(ph["forward"]),
                backward_ms=med_ms(ph["backward"]), optim_ms=med_ms(ph["optim"]), layers=layers)


def worker(rank, a, port, out):
    rss_start = max_rss_mib()  # the interpreter with torch imported
    torch.set_num_threads(a.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already set in this process
    world = a.ranks
    if world > 1:
        if os.environ.get("BENCH_TORCH_PIN", "1") == "1":
            os.sched_setaffinity(0, {rank % os.cpu_count()})
        import torch.distributed as dist
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = make_model(a.model)
    globs = [g for g in a.freeze.split(",") if g]
    for n, q in model.named_parameters():
        if any(fnmatch.fnmatchcase(n, g) for g in globs):
            q.requires_grad_(False)
    # the usual fine-tuning choice, as ctrain's frozen BatchNorm: running statistics
    frozen_bn = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                 and not any(q.requires_grad for q in m.parameters())]
    src = Source(a, rank, world)
    train = a.mode != "eval"
    if train:
        if world > 1:
            model = nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=1e-3)
        model.train()
        for m in frozen_bn:
            m.eval()
    else:
        model.eval()
    if a.mode == "layers":
        out.append(run_layers(a, model, opt, src))
        return
    best, best_ph, all_sps = 0.0, None, []
    for _ in range(a.repeats):
        for _ in range(a.warmup):
            train_step(model, opt, src, None) if train else eval_step(model, src)
        ph = dict(forward=0.0, backward=0.0, optim=0.0, step=0.0)
        if world > 1:
            dist.barrier()
        t0 = time.perf_counter()
        for _ in range(a.steps):
            train_step(model, opt, src, ph) if train else eval_step(model, src)
        el = time.perf_counter() - t0
        if world > 1:  # the slowest rank sets the pace; phases are averaged over ranks
            t = torch.tensor([el], dtype=torch.float64)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            el = t.item()
            v = torch.tensor([ph[k] for k in sorted(ph)], dtype=torch.float64)
            dist.all_reduce(v)
            ph = {k: v[i].item() / world for i, k in enumerate(sorted(ph))}
        sps = a.steps * a.batch * world / el
        all_sps.append(round(sps, 1))
        if sps > best:
            best, best_ph = sps, ph
    if rank == 0:
        r = dict(prog="torch", model=a.model, mode=a.mode, data=a.data, ranks=world, batch=a.batch,
                 steps=a.steps, repeats=a.repeats, sps=round(best, 1), sps_all=all_sps)
        if train:
            k = 1e3 / a.steps
            r.update(step_ms=best_ph["step"] * k, forward_ms=best_ph["forward"] * k,
                     backward_ms=best_ph["backward"] * k, optim_ms=best_ph["optim"] * k)
        r.update(rss_start_mib=round(rss_start, 1), max_rss_mib=round(max_rss_mib(), 1))
        out.append(r)
    if world > 1:
        dist.destroy_process_group()


def spawned(rank, a, port):
    out = []
    worker(rank, a, port, out)
    if out:
        print(json.dumps(out[0]), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", choices=sorted(INPUT), default="cnn")
    p.add_argument("--mode", choices=["train", "eval", "layers"], default="train")
    p.add_argument("--ranks", type=int, default=1)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per rank (torch.set_num_threads)")
    p.add_argument("--data", choices=["synthetic", "fmnist"], default="synthetic")
    p.add_argument("--freeze", default="", help="comma-separated parameter-name globs to freeze, as ctrain's model.freeze")
    a = p.parse_args()
    if a.data == "fmnist" and INPUT[a.model] not in [(784,), (1, 28, 28)]:
        sys.exit("bench_torch.py: --model %s takes synthetic inputs only" % a.model)
    if a.ranks > 1 and a.mode != "train":
        sys.exit("bench_torch.py: --mode %s runs on one rank" % a.mode)
    if a.ranks == 1:
        spawned(0, a, 0)
        return
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    import torch.multiprocessing as mp
    mp.spawn(spawned, args=(a, port), nprocs=a.ranks, join=True)


if __name__ == "__main__":
    main()
