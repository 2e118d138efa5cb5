#!/usr/bin/python3
"""PyTorch parity of single ops, the PyTorch half: for every case tests/parity/ops_dump.c
wrote (convolution with stride, padding and groups, max/avg pooling, adaptive average
pooling, residual adds, and the ViT's bmm, attention, nn.MultiheadAttention, cat/select/
narrow, class token, positional embedding, LayerNorm eps 1e-6 and GELU), recomputes the output and the gradient of every input from the
same inputs and upstream gradient with torch.nn.functional, and compares.

usage: test_ops_parity.py DUMP.safetensors      (run by tests/scripts/test_ops_parity.sh)

Metric, as in test_parity.py: per tensor max|a - b| / max|b| <= 1e-5, a = ctrain's, b = the
reference, which is PyTorch in float64 on the same float32 inputs. ctrain's distance to
float32 PyTorch is printed too, not judged. A control checks that the comparison catches a
weight off by 1e-4.

Prints one line per comparison and "N passed, M failed"; exits 1 on any failure. Without
torch it prints "SKIP: torch not available" and exits 0.
"""
import sys

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    print("SKIP: torch not available")
    sys.exit(0)

sys.dont_write_bytecode = True  # no __pycache__ next to the sources
from parity_check import max_rel, read  # noqa: E402

RTOL = 1e-5
INPUTS = ("x", "w", "w2", "b", "b2")


def parse(desc):
    """'op=conv2d stride=2,2 groups=1' -> ('conv2d', {'stride': (2, 2), 'groups': 1})."""
    args = dict(kv.split("=", 1) for kv in desc.split())
    op = args.pop("op")
    kw = {k: tuple(int(v) for v in s.split(",")) if "," in s else int(s) for k, s in args.items()}
    return op, kw


def forward(op, kw, t):
    """The op on the tensors t (by input name) with torch.nn.functional."""
    x, w, w2, b, b2 = (t.get(n) for n in INPUTS)
    if op == "conv2d":
        return F.conv2d(x, w, b, **kw)
    if op == "max_pool2d":
        return F.max_pool2d(x, **kw)
    if op == "avg_pool2d":
        return F.avg_pool2d(x, **kw)
    if op == "adaptive_avg_pool2d":
        return F.adaptive_avg_pool2d(x, **kw)
    if op == "residual":
        return x + F.conv2d(x, w, padding=1)
    if op == "residual_down":
        return F.conv2d(x, w2, stride=2) + F.conv2d(x, w, stride=2, padding=1)
    if op == "bmm":
        return torch.bmm(x, w)
    if op == "transpose":
        return x.transpose(-2, -1)
    if op == "attention":  # x is q|k|v packed along the last dim, batch_first
        return packed_attention(x, kw["heads"])
    if op == "mha":  # torch's own module: in_proj [3E, E] packed, out_proj, batch_first
        return mha(x, w, b, w2, b2, kw["heads"])
    if op == "cat":
        return torch.cat([x, w], dim=kw["dim"])
    if op == "select":
        return x.select(kw["dim"], kw["index"])
    if op == "narrow":
        return x.narrow(kw["dim"], kw["start"], kw["length"])
    if op == "class_token":
        return torch.cat([w.expand(x.shape[0], -1, -1), x], dim=1)
    if op == "pos_embedding":
        return x + w
    if op == "layer_norm":
        return F.layer_norm(x, x.shape[-1:], w, b, eps=1e-6)
    if op == "gelu":
        return F.gelu(x)
    raise ValueError(f"unknown op {op!r}")


def packed_attention(qkv, heads):
    """softmax(Q K^T / sqrt(dh)) V per head, written out (the reference for the op alone)."""
    n, seq, e3 = qkv.shape
    e = e3 // 3
    q, k, v = (t.reshape(n, seq, heads, e // heads).transpose(1, 2) for t in qkv.split(e, dim=2))
    a = torch.softmax(q @ k.transpose(-2, -1) / (e // heads) ** 0.5, dim=-1)
    return (a @ v).transpose(1, 2).reshape(n, seq, e)


def mha(x, in_w, in_b, out_w, out_b, heads):
    """torch.nn.MultiheadAttention(batch_first=True) self-attention with these weights."""
    e = x.shape[-1]
    m = torch.nn.MultiheadAttention(e, heads, batch_first=True).to(x.dtype)
    with torch.no_grad():
        for p in m.parameters():
            p.requires_grad_(False)
    # the module's own parameters are replaced by the (grad-tracking) inputs
    del m.in_proj_weight, m.in_proj_bias
    m.in_proj_weight, m.in_proj_bias = in_w, in_b
    del m.out_proj.weight, m.out_proj.bias
    m.out_proj.weight, m.out_proj.bias = out_w, out_b
    return m(x, x, x, need_weights=False)[0]


def reference(op, kw, inputs, gout, dtype):
    """Output and input gradients in dtype, from the float32 inputs and upstream gradient."""
    t = {n: v.detach().to(dtype).clone().requires_grad_(True) for n, v in inputs.items()}
    y = forward(op, kw, t)
    y.backward(gout.to(dtype))
    return y.detach(), {n: v.grad for n, v in t.items()}


class Report:
    def __init__(self):
        self.passed = self.failed = 0
        self.worst = 0.0

    def check(self, ok, label, detail=""):
        print(f"{'ok  ' if ok else 'FAIL'} {label}{'  ' + detail if detail else ''}", flush=True)
        self.passed += bool(ok)
        self.failed += not ok
        return ok

    def close(self, label, ours, ref64, ref32):
        rel = max_rel(ours, ref64)
        self.worst = max(self.worst, rel)
        return self.check(rel <= RTOL, label, f"max_rel {rel:.2e}  | vs float32 torch "
                          f"{max_rel(ours, ref32):.2e} (float32 torch vs float64 "
                          f"{max_rel(ref32, ref64):.2e})")


def run_case(rep, name, desc, dump):
    op, kw = parse(desc)
    inputs = {n: dump[f"{name}.{n}"] for n in INPUTS if f"{name}.{n}" in dump}
    gout = dump[f"{name}.gout"]
    y64, g64 = reference(op, kw, inputs, gout, torch.float64)
    y32, g32 = reference(op, kw, inputs, gout, torch.float32)
    rep.close(f"{name} ({desc}) y {list(y64.shape)}", dump[f"{name}.y"], y64, y32)
    for n in inputs:
        rep.close(f"{name} grad.{n} {list(g64[n].shape)}", dump[f"{name}.grad.{n}"], g64[n], g32[n])


def control(rep, dump, name, desc):
    """The comparison must notice a weight off by 1e-4 (relative) in one conv case."""
    op, kw = parse(desc)
    inputs = {n: dump[f"{name}.{n}"] for n in INPUTS if f"{name}.{n}" in dump}
    inputs["w"] = inputs["w"] * (1 + 1e-4)
    y, g = reference(op, kw, inputs, dump[f"{name}.gout"], torch.float64)
    rel_y, rel_gx = max_rel(dump[f"{name}.y"], y), max_rel(dump[f"{name}.grad.x"], g["x"])
    rep.check(rel_y > RTOL and rel_gx > RTOL, f"control: {name} with w * (1 + 1e-4) is detected",
              f"y {rel_y:.2e}, grad.x {rel_gx:.2e}")


def main():
    if len(sys.argv) != 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    dump, meta = read(sys.argv[1])
    cases = {k[len("case."):]: v for k, v in meta.items() if k.startswith("case.")}
    rep = Report()
    rep.check(len(cases) > 0, f"{len(cases)} cases in {sys.argv[1]}")
    for name, desc in cases.items():
        try:
            run_case(rep, name, desc, dump)
        except (Exception, SystemExit) as e:  # a missing entry or a torch error fails the case
            rep.check(False, f"{name}: {type(e).__name__}: {e}")
    conv = next((n for n, d in cases.items() if d.startswith("op=conv2d")), None)
    rep.check(conv is not None, "a conv case for the control")
    if conv:
        control(rep, dump, conv, cases[conv])
    print(f"largest max_rel {rep.worst:.2e} (limit {RTOL:g})")
    print(f"{rep.passed} passed, {rep.failed} failed")
    return 1 if rep.failed else 0


if __name__ == "__main__":
    sys.exit(main())
