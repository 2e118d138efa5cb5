#!/usr/bin/python3
"""Converts a safetensors file into a PyTorch state_dict (.pt), without the `safetensors`
package. Tensors keep their dtype and the header's order; metadata is printed, not saved.

usage: safetensors_to_torch.py [--model-only] IN.safetensors OUT.pt

--model-only drops the entries of a ctrain checkpoint that are not part of the model's
state_dict: the optimizer state ("optim.*") and the dropout RNG streams ("rng.*", U64, which
torch 1.13 cannot hold). What remains loads with load_state_dict(strict=True) into the
PyTorch model of the same layers. Other scripts may `from safetensors_to_torch import read`.

The file is validated like ctrain's reader (src/io/safetensors.c): header length within the
file, valid JSON object, known dtypes, shapes matching their byte ranges, ranges inside the
data section and not overlapping.
"""
import argparse
import json
import os
import struct
import sys

sys.dont_write_bytecode = True  # no __pycache__ in scripts/
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_to_safetensors import fail, torch, write_atomic  # noqa: E402

DTYPES = {  # name -> (torch dtype, element size); torch 1.13 has no U16/U32/U64
    "F64": (torch.float64, 8), "F32": (torch.float32, 4), "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2), "I64": (torch.int64, 8), "I32": (torch.int32, 4),
    "I16": (torch.int16, 2), "I8": (torch.int8, 1), "U8": (torch.uint8, 1),
    "BOOL": (torch.bool, 1), "U64": (None, 8), "U32": (None, 4), "U16": (None, 2),
}
# ctrain checkpoint entries that are not model state (src/io/checkpoint.c)
NON_MODEL_PREFIXES = ("optim.", "rng.")


def is_model_entry(name):
    return not name.startswith(NON_MODEL_PREFIXES)


def no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    for k in keys:
        if keys.count(k) > 1:
            raise ValueError(f"duplicate key {k!r}")
    return dict(pairs)


def is_count(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def read(path, keep=None):
    """Returns (state_dict, metadata) of the safetensors file at path. keep(name) picks the
    entries to convert (None: all); the others are validated but left out. keep=is_model_entry
    is --model-only."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        fail(f"{path}: cannot read: {e}")
    if len(raw) < 8:
        fail(f"{path}: file is too short ({len(raw)} bytes)")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > len(raw) - 8:
        fail(f"{path}: header length {n} exceeds the file size ({len(raw)} bytes)")
    try:
        header = json.loads(raw[8:8 + n].decode("utf-8"), object_pairs_hook=no_duplicates)
    except (UnicodeDecodeError, ValueError) as e:
        fail(f"{path}: invalid JSON header: {e}")
    if not isinstance(header, dict):
        fail(f"{path}: the JSON header is not an object")
    data = raw[8 + n:]
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        fail(f"{path}: __metadata__ is not an object of strings")
    state_dict, ranges = {}, []
    for name, info in header.items():
        if not isinstance(info, dict):
            fail(f"{path}: header entry '{name}' is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in DTYPES:
            fail(f"{path}: tensor '{name}' has unknown or unsupported dtype {dtype!r}")
        if not isinstance(shape, list) or not all(is_count(s) for s in shape):
            fail(f"{path}: tensor '{name}' has a bad shape {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(is_count(o) for o in offsets) or offsets[0] > offsets[1]):
            fail(f"{path}: tensor '{name}' has bad data_offsets {offsets!r}")
        begin, end = offsets
        if end > len(data):
            fail(f"{path}: tensor '{name}' has data_offsets {offsets} past the end of the "
                 f"{len(data)}-byte data section")
        tdtype, size = DTYPES[dtype]
        numel = 1
        for s in shape:
            numel *= s
        if numel * size != end - begin:
            fail(f"{path}: tensor '{name}' of shape {shape} and dtype {dtype} needs "
                 f"{numel * size} bytes but its data_offsets {offsets} span {end - begin}")
        if end > begin:
            ranges.append((begin, end, name))
        if keep is not None and not keep(name):
            continue  # validated above and for overlaps below, but not converted
        if tdtype is None:
            hint = "" if is_model_entry(name) else " (--model-only drops optim.* and rng.*)"
            fail(f"{path}: tensor '{name}' has dtype {dtype}, which torch {torch.__version__} "
                 f"cannot hold{hint}")
        if end > begin:
            t = torch.frombuffer(bytearray(data[begin:end]), dtype=tdtype)
        else:
            t = torch.empty(0, dtype=tdtype)
        state_dict[name] = t.reshape(shape)
    ranges.sort()
    for a, b in zip(ranges, ranges[1:]):
        if b[0] < a[1]:
            fail(f"{path}: tensors '{a[2]}' and '{b[2]}' overlap")
    return state_dict, metadata


def main():
    ap = argparse.ArgumentParser(description="safetensors -> PyTorch state_dict (.pt)")
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--model-only", action="store_true",
                    help="drop a ctrain checkpoint's optim.* and rng.* entries")
    args = ap.parse_args()
    state_dict, metadata = read(args.input, is_model_entry if args.model_only else None)
    if metadata:
        print(f"safetensors_to_torch: metadata (not saved): {json.dumps(metadata)}", file=sys.stderr)
    write_atomic(args.output, lambda f: torch.save(state_dict, f))

if __name__ == "__main__":
    main()
