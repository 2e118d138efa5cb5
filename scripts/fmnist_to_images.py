#!/usr/bin/python3
"""Writes (part of) Fashion-MNIST as image files, for the folder and list data sets.

    scripts/fmnist_to_images.py OUT [--format png|jpeg] [--train N] [--test N] [--quality Q]

For each split (the first N samples, in IDX order) it writes
    OUT/<split>/<label>_<name>/<index>.<ext>   an ImageFolder tree: the class folders sort in
                                               label order, the files of a class in IDX order
    OUT/<split>.csv                            "path,label" lines in IDX order (a list data set)
    OUT/idx/<split>-{images-idx3,labels-idx1}-ubyte
                                               the same samples as IDX files, so a run on the
                                               images can be compared with one on the arrays
The images are 8-bit grayscale (PIL mode L), so PNG keeps every pixel exactly.
"""
import argparse
import gzip
import os
import struct

import numpy as np
from PIL import Image

SRC = "/usr/share/datasets/fashion-mnist"
NAMES = ["tshirt_top", "trouser", "pullover", "dress", "coat",
         "sandal", "shirt", "sneaker", "bag", "ankle_boot"]


def read_idx(stem):
    for path in (f"{SRC}/{stem}", f"{SRC}/{stem}.gz"):
        if os.path.exists(path):
            with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
                data = f.read()
            ndim = data[3]
            dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
            return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)
    raise SystemExit(f"fmnist_to_images: {SRC}/{stem}[.gz] not found")


def write_idx(path, a):
    with open(path, "wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, 8, a.ndim))
        f.write(struct.pack(">" + "I" * a.ndim, *a.shape))
        f.write(np.ascontiguousarray(a, np.uint8).tobytes())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--format", choices=["png", "jpeg"], default="png")
    ap.add_argument("--train", type=int, default=60000, help="first N training samples")
    ap.add_argument("--test", type=int, default=10000, help="first N test samples")
    ap.add_argument("--quality", type=int, default=95, help="JPEG quality")
    a = ap.parse_args()
    ext = "png" if a.format == "png" else "jpg"
    os.makedirs(f"{a.out}/idx", exist_ok=True)
    for split, pre, n in (("train", "train", a.train), ("test", "t10k", a.test)):
        x = read_idx(f"{pre}-images-idx3-ubyte")[:n]
        y = read_idx(f"{pre}-labels-idx1-ubyte")[:n]
        write_idx(f"{a.out}/idx/{pre}-images-idx3-ubyte", x)
        write_idx(f"{a.out}/idx/{pre}-labels-idx1-ubyte", y)
        for k, name in enumerate(NAMES):
            os.makedirs(f"{a.out}/{split}/{k}_{name}", exist_ok=True)
        width = len(str(len(x) - 1))
        lines = ["path,label"]
        for i, (img, label) in enumerate(zip(x, y)):
            rel = f"{split}/{label}_{NAMES[label]}/{i:0{width}d}.{ext}"
            kw = {"quality": a.quality} if ext == "jpg" else {}
            Image.fromarray(img, "L").save(f"{a.out}/{rel}", **kw)
            lines.append(f"{rel},{label}")
        with open(f"{a.out}/{split}.csv", "w") as f:
            f.write("\n".join(lines) + "\n")
        print(f"{split}: {len(x)} {a.format} images in {a.out}/{split}, list {a.out}/{split}.csv")


if __name__ == "__main__":
    main()
