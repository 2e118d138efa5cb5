"""What the parity tests share (imported by test_resnet_parity.py, test_vit_parity.py and
test_ops_parity.py): the one metric, the checks' bookkeeping, and the safetensors converters
from scripts/. Import it after setting sys.dont_write_bytecode, so no __pycache__ is left
next to the sources."""
import os
import sys

SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts")
sys.path.insert(0, SCRIPTS)
from safetensors_to_torch import is_model_entry, read  # noqa: E402,F401
from torch_to_safetensors import encode  # noqa: E402

RTOL = 1e-4  # per tensor, max|a - b| / max|b|, b the float64 reference

passed = failed = 0


def check(ok, label, detail=""):
    """Prints one "ok"/"FAIL" line and counts it; returns ok."""
    global passed, failed
    print(f"{'ok  ' if ok else 'FAIL'} {label}{'  ' + detail if detail else ''}", flush=True)
    passed += bool(ok)
    failed += not ok
    return ok


def max_rel(a, b):
    """max|a - b| / max|b| over the tensors (inf if their sizes differ, or b is 0 and a not)."""
    a, b = a.detach().double().reshape(-1), b.detach().double().reshape(-1)
    if a.shape != b.shape:
        return float("inf")
    scale = b.abs().max().item()
    err = (a - b).abs().max().item()
    return 0.0 if err == 0 else err / scale if scale > 0 else float("inf")


def close(label, ours, ref, rtol=RTOL):
    rel = max_rel(ours, ref)
    return check(rel <= rtol, label, f"max_rel {rel:.2e}")


def save_st(path, tensors):
    """A safetensors file of the named tensors (no metadata)."""
    with open(path, "wb") as f:
        f.write(encode(tensors, {}))


def summary():
    """Prints "N passed, M failed"; the exit status: 1 on any failure or if nothing ran."""
    print(f"{passed} passed, {failed} failed")
    return 1 if failed or not passed else 0
