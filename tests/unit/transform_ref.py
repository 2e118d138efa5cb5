#!/usr/bin/python3
"""torchvision 0.14's outputs for tests/unit/test_transform.c.

    transform_ref.py FIXTURE_DIR OUT_DIR

FIXTURE_DIR holds make_images.py's images. OUT_DIR gets
  cases.txt    "ID IMAGE MODE OP A B C D E" lines; OUT_DIR/ID.bin is torchvision's output
               (PIL tobytes()) for OP on Image.open(IMAGE).convert(MODE):
                 resize S / center_crop S / resized_crop TOP LEFT H W S / hflip
  pipeline.bin Compose([Resize(40), CenterCrop(32), ToTensor(), Normalize(mean, std)]) of
               rgb420.jpg as float32 bytes, mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)
  rrc.txt      "H W SEED TOP LEFT H W": RandomResizedCrop.get_params itself, run on ctrain's
               random stream (xoshiro256** seeded as ct_rng_seed), so the C algorithm is
               checked against torchvision's code, not against a copy of it.
"""
import os
import sys

import numpy as np
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as F
import torchvision.transforms.transforms as TT
from PIL import Image

fix, out = sys.argv[1:]
os.makedirs(out, exist_ok=True)

cases = []
for image, mode in (("rgb.png", "RGB"), ("big.jpeg", "RGB"), ("gray.png", "L"), ("palette.png", "RGB")):
    img = Image.open(os.path.join(fix, image)).convert(mode)
    ops = [("resize", s) for s in (5, 10, 16, 23, 40, 64, 131, 200)]
    ops += [("center_crop", s) for s in (1, 8, 20, 21, 30, 50)]
    ops += [("resized_crop", 0, 0, img.height, img.width, 16), ("resized_crop", 3, 5, 10, 12, 32),
            ("resized_crop", 1, 2, 20, 30, 7), ("resized_crop", 2, 1, 17, 9, 9), ("hflip",)]
    for op in ops:
        if op[0] == "resize":
            r = T.Resize(op[1])(img)
        elif op[0] == "center_crop":
            r = T.CenterCrop(op[1])(img)
        elif op[0] == "resized_crop":
            r = F.resized_crop(img, *op[1:5], [op[5], op[5]])
        else:
            r = F.hflip(img)
        cid = len(cases)
        with open(os.path.join(out, f"{cid}.bin"), "wb") as f:
            f.write(r.tobytes())
        args = list(op[1:]) + [0] * (5 - len(op[1:]))
        cases.append(f"{cid} {image} {mode} {op[0]} " + " ".join(map(str, args)) + f" {r.height} {r.width}")
with open(os.path.join(out, "cases.txt"), "w") as f:
    f.write("\n".join(cases) + "\n")

mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
pipe = T.Compose([T.Resize(40), T.CenterCrop(32), T.ToTensor(), T.Normalize(mean, std)])
x = pipe(Image.open(os.path.join(fix, "rgb420.jpg")).convert("RGB"))
with open(os.path.join(out, "pipeline.bin"), "wb") as f:
    f.write(x.numpy().astype(np.float32).tobytes())

# ---- RandomResizedCrop.get_params on ctrain's random stream ----
M = (1 << 64) - 1


class Rng:
    """ct_rng: xoshiro256** seeded by splitmix64 (src/core/rng.c)."""

    def __init__(self, seed):
        z, self.s = seed, []
        for _ in range(4):
            z = (z + 0x9E3779B97F4A7C15) & M
            x = z
            x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M
            x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M
            self.s.append(x ^ (x >> 31))

    def next(self):
        s = self.s
        rotl = lambda x, k: ((x << k) | (x >> (64 - k))) & M
        result = (rotl((s[1] * 5) & M, 7) * 9) & M
        t = (s[1] << 17) & M
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = rotl(s[3], 45)
        return result

    def below(self, n):
        return (self.next() * n) >> 64


class Uniform:
    """torch.empty(1): uniform_(lo, hi) draws ctrain's float32 uniform (transform.c's uniform_f32)."""

    def __init__(self, rng):
        self.rng = rng

    def uniform_(self, lo, hi):
        lo, hi = float(lo), float(hi)
        u = (self.rng.next() >> 11) * 2.0**-53
        v = np.float32(lo + u * (hi - lo))
        if float(v) >= hi:
            v = np.nextafter(np.float32(hi), np.float32(-np.inf))
        return torch.tensor([v], dtype=torch.float32)


class FakeTorch:
    """torch for transforms.py, with torch.empty and torch.randint drawing from Rng."""

    def __init__(self, rng):
        self.rng = rng

    def __getattr__(self, name):
        return getattr(torch, name)

    def empty(self, *size):
        return Uniform(self.rng)

    def randint(self, low, high, size):
        return torch.tensor([low + self.rng.below(high - low)])


lines = []
for H, W in ((23, 37), (130, 171), (224, 224), (5, 300), (300, 7), (1, 1), (2, 3)):
    for seed in range(60):
        rng = Rng(seed)
        TT.torch = FakeTorch(rng)
        i, j, h, w = T.RandomResizedCrop.get_params(torch.zeros(1, H, W), [0.08, 1.0], [3.0 / 4.0, 4.0 / 3.0])
        lines.append(f"{H} {W} {seed} {i} {j} {h} {w}")
TT.torch = torch
with open(os.path.join(out, "rrc.txt"), "w") as f:
    f.write("\n".join(lines) + "\n")
