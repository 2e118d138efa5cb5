#!/usr/bin/python3
"""Converts a PyTorch state_dict (.pt) into a safetensors file, without the `safetensors`
package (Debian may not ship it): the format is an 8-byte little-endian header length, a JSON
header and the raw bytes.

usage: torch_to_safetensors.py IN.pt OUT.safetensors [--meta KEY=VALUE ...]

IN.pt is torch.save of a state_dict, of a dict holding one under 'state_dict' or 'model', or of
a module. Tensors keep their dtype (BatchNorm's num_batches_tracked stays I64). The layout is
byte-for-byte what ctrain's writer (src/io/safetensors.c) produces for the same tensors and
metadata: header in state_dict order, compact JSON padded with spaces to a multiple of 8, data
ordered largest element size first (stable) so every tensor is aligned.
"""
import argparse
import json
import os
import struct
import sys

def fail(msg):
    """Exits with an error naming the running script (these helpers are shared)."""
    name = os.path.splitext(os.path.basename(sys.argv[0]))[0] or "ctrain"
    print(f"{name}: error: {msg}", file=sys.stderr)
    sys.exit(1)


try:
    import torch
except ImportError as e:
    fail(f"cannot import torch: {e}")

DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}


def load_state_dict(path):
    try:
        obj = torch.load(path, map_location="cpu")
    except Exception as e:  # torch raises many types for a bad file
        fail(f"{path}: torch.load failed: {e}")
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], (dict, torch.nn.Module)):
                obj = obj[key]
                break
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, dict):
        fail(f"{path}: holds a {type(obj).__name__}, not a state_dict")
    if not obj:
        fail(f"{path}: the state_dict is empty")
    for name, t in obj.items():
        if not isinstance(name, str) or not name or name == "__metadata__":
            fail(f"{path}: key {name!r} cannot be a tensor name")
        if not isinstance(t, torch.Tensor):
            fail(f"{path}: '{name}' is not a tensor (it is {type(t).__name__})")
        if t.layout != torch.strided or t.is_quantized:
            fail(f"{path}: '{name}' is not a dense tensor")
        if t.dtype not in DTYPES:
            fail(f"{path}: '{name}' has dtype {t.dtype}, which safetensors cannot hold here")
    return obj


def encode(state_dict, metadata):
    """Returns the bytes of the safetensors file for state_dict and the metadata dict."""
    names = list(state_dict)
    tensors = [state_dict[n].detach().cpu().contiguous() for n in names]
    # stable sort: 8-byte elements first, then 4, 2, 1, each in state_dict order
    order = sorted(range(len(names)), key=lambda i: -tensors[i].element_size())
    blobs, begin, offset = [], {}, 0
    for i in order:
        blob = tensors[i].reshape(-1).view(torch.uint8).numpy().tobytes()
        begin[i] = offset
        offset += len(blob)
        blobs.append(blob)
    header = {}
    if metadata:
        header["__metadata__"] = metadata
    for i, (name, t) in enumerate(zip(names, tensors)):
        size = t.numel() * t.element_size()
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [begin[i], begin[i] + size]}
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def write_atomic(path, write):
    """Calls write(f) on a temporary file next to path, then renames it over path, so a
    failure never leaves a half-written file. write may be bytes, written as they are."""
    if isinstance(write, (bytes, bytearray)):
        data = write
        write = lambda f: f.write(data)  # noqa: E731
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        fail(f"{path}: cannot write: {e}")


def main():
    ap = argparse.ArgumentParser(description="PyTorch state_dict (.pt) -> safetensors")
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                    help="metadata entry (default: format=pt)")
    args = ap.parse_args()
    metadata = {"format": "pt"}
    for item in args.meta:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--meta {item!r} is not KEY=VALUE")
        metadata[key] = value
    write_atomic(args.output, encode(load_state_dict(args.input), metadata))


if __name__ == "__main__":
    main()
