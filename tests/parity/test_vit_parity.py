#!/usr/bin/python3
"""torchvision parity for ctrain's VisionTransformer (run by tests/scripts/test_vit_parity.sh).

usage: test_vit_parity.py BUILD_DIR [CASE ...]   (cases: small, small_rgb, vit_b_16)

For each case torchvision builds VisionTransformer (random initialisation, then every
parameter moved by N(0, 0.05^2) noise, so the zero-initialised class token and head, the unit
LayerNorms and the zero biases cannot hide a swapped or ignored tensor). Its state_dict goes
through scripts/torch_to_safetensors.py, and BUILD/tests/parity/vit_dump loads it strict into
ct_nn_vit and runs forward, mean cross entropy, backward, one SGD step (lr 0.1), a checkpoint
and a forward from the stepped weights. Compared, per case:
  layout   ctrain's checkpoint names, order and shapes == torchvision's state_dict
  train    logits, loss and every parameter gradient; every parameter after the step
  export   the checkpoint loads into torchvision with strict=True (model entries only), and
           its logits there match ctrain's from the same weights
  control  the comparison with one in_proj_weight scaled by 1 + 1e-3 must fail
vit_b_16 (224 px, 86M parameters) runs the forward only: logits and loss.
Metric as in tests/parity/test_parity.py: max|a - b| / max|b| <= 1e-4 per tensor, b from
torchvision in float64 on the same float32 weights and batch.
Then refusals: a state_dict of another width or depth, or missing a key, makes vit_dump exit 1
before writing anything, with a message naming the key.

Prints one line per check and "N passed, M failed"; exits 1 on any failure. Without torch or
torchvision: "SKIP: ..." and exit 0.
"""
import os
import subprocess
import sys
import tempfile

try:
    import torch
    import torch.nn.functional as F
    from torchvision.models.vision_transformer import VisionTransformer, vit_b_16
except ImportError as e:
    print(f"SKIP: torch/torchvision not available ({e})")
    sys.exit(0)

sys.dont_write_bytecode = True
from parity_check import RTOL, check, close, is_model_entry, max_rel, read, save_st, summary  # noqa: E402

LR = 0.1

# name: image, patch, layers, heads, hidden, mlp, in_channels, classes, batch
CASES = {
    "small": (16, 4, 2, 2, 32, 64, 1, 10, 4),
    "small_rgb": (32, 8, 3, 4, 48, 96, 3, 7, 3),
    "vit_b_16": (224, 16, 12, 12, 768, 3072, 3, 1000, 2),
}

def build(cfg, seed):
    image, patch, layers, heads, hidden, mlp, chans, classes, _ = cfg
    torch.manual_seed(seed)
    if cfg == CASES["vit_b_16"]:
        m = vit_b_16()
    else:
        m = VisionTransformer(image, patch, layers, heads, hidden, mlp, num_classes=classes)
    if chans != 3:  # torchvision's stem is RGB; a grey one is the same conv with 1 input
        m.conv_proj = torch.nn.Conv2d(chans, hidden, patch, patch)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def run_dump(build_dir, cfg, state, batch, out, extra=()):
    args = [os.path.join(build_dir, "tests", "parity", "vit_dump")] + [str(v) for v in cfg[:8]]
    return subprocess.run(args + [state, batch, out, *extra], capture_output=True, text=True)


def reference(m32, x, y, backward=True):
    """float64 torchvision: logits, loss, grads (by name) from m32's float32 weights."""
    m = build_like(m32).double()
    m.train()
    with torch.set_grad_enabled(backward):
        logits = m(x.double())
        loss = F.cross_entropy(logits, y)
    if backward:
        loss.backward()
    return m, logits.detach(), loss.detach(), {n: p.grad for n, p in m.named_parameters()}


_builders = {}


def build_like(m32):
    m = _builders[id(m32)]()
    m.load_state_dict(m32.state_dict(), strict=True)
    return m


def run_case(build_dir, tmp, name):
    cfg = CASES[name]
    image, chans, classes, batch = cfg[0], cfg[6], cfg[7], cfg[8]
    m = build(cfg, seed=len(name))
    _builders[id(m)] = lambda: build(cfg, seed=0)
    sd = m.state_dict()
    state = os.path.join(tmp, f"{name}.state.safetensors")
    save_st(state, sd)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(batch, chans, image, image, generator=g)
    y = torch.randint(0, classes, (batch,), generator=g)
    bpath = os.path.join(tmp, f"{name}.batch.safetensors")
    save_st(bpath, {"x": x, "y": y})
    out = os.path.join(tmp, name)
    fwd = name == "vit_b_16"
    r = run_dump(build_dir, cfg, state, bpath, out, ["forward"] if fwd else [])
    if not check(r.returncode == 0, f"{name}: vit_dump loads torchvision's state_dict strict",
                 r.stderr.strip()[-400:]):
        return
    dump, _ = read(out + ".dump.safetensors")
    ref, logits, loss, grads = reference(m, x, y, backward=not fwd)
    close(f"{name}: logits {list(logits.shape)}", dump["logits"], logits)
    close(f"{name}: loss {loss.item():.6f}", dump["loss"], loss)
    if fwd:
        return
    bad = [n for n in grads if max_rel(dump[f"grad.{n}"], grads[n]) > RTOL]
    worst = max(max_rel(dump[f"grad.{n}"], grads[n]) for n in grads)
    check(not bad and len(grads) == len(list(m.parameters())),
          f"{name}: all {len(grads)} parameter gradients", f"worst max_rel {worst:.2e}; over: {bad}")
    # layout and the step
    ck, _ = read(out + ".step.safetensors", is_model_entry)
    same = list(ck) == list(sd) and all(ck[k].shape == sd[k].shape for k in sd)
    check(same, f"{name}: checkpoint names, order and shapes are torchvision's ({len(sd)} entries)",
          "" if same else f"ctrain {list(ck)} vs torchvision {list(sd)}")
    stepped = {n: p.detach() - LR * grads[n] for n, p in ref.named_parameters()}
    bad = [n for n in stepped if max_rel(ck[n], stepped[n]) > RTOL]
    check(not bad, f"{name}: every parameter after the SGD step", f"over: {bad}")
    # export: strict into torchvision, same logits from the same weights
    back = build(cfg, seed=0)
    try:
        back.load_state_dict(ck, strict=True)
        ok = check(True, f"{name}: ctrain's checkpoint loads into torchvision with strict=True")
    except RuntimeError as e:
        ok = check(False, f"{name}: ctrain's checkpoint loads into torchvision with strict=True", str(e)[:300])
    if ok:
        back = back.double()
        with torch.no_grad():
            close(f"{name}: torchvision on the exported weights gives ctrain's logits", dump["step.logits"],
                  back(x.double()))
    # control: a perturbation of one attention weight must be seen
    with torch.no_grad():
        m.encoder.layers[0].self_attention.in_proj_weight.mul_(1 + 1e-3)
    _, logits_c, _, grads_c = reference(m, x, y)
    rel = max(max_rel(dump["logits"], logits_c),
              max_rel(dump["grad.encoder.layers.encoder_layer_0.self_attention.in_proj_weight"],
                      grads_c["encoder.layers.encoder_layer_0.self_attention.in_proj_weight"]))
    check(rel > RTOL, f"{name}: control: in_proj_weight * (1 + 1e-3) is detected", f"max_rel {rel:.2e}")


def refusals(build_dir, tmp):
    cfg = CASES["small"]
    batch = os.path.join(tmp, "small.batch.safetensors")
    cases = [
        ("wider", cfg[:4] + (48, 96) + cfg[6:], "conv_proj.weight"),
        ("deeper", cfg[:2] + (3,) + cfg[3:], "encoder.layers.encoder_layer_2"),
    ]
    for label, other, key in cases:
        state = os.path.join(tmp, f"refuse_{label}.safetensors")
        save_st(state, build(other, seed=1).state_dict())
        out = os.path.join(tmp, f"refuse_{label}")
        r = run_dump(build_dir, cfg, state, batch, out)
        check(r.returncode == 1 and key in r.stderr and not os.path.exists(out + ".dump.safetensors"),
              f"refused: a {label} model's state_dict, naming {key}", r.stderr.strip()[-300:])
    sd = build(cfg, seed=1).state_dict()
    del sd["encoder.ln.bias"]
    state = os.path.join(tmp, "refuse_missing.safetensors")
    save_st(state, sd)
    r = run_dump(build_dir, cfg, state, batch, os.path.join(tmp, "refuse_missing"))
    check(r.returncode == 1 and "encoder.ln.bias" in r.stderr, "refused: a state_dict missing encoder.ln.bias",
          r.stderr.strip()[-300:])


def main():
    if len(sys.argv) < 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    names = sys.argv[2:] or list(CASES)
    with tempfile.TemporaryDirectory(prefix="ct_vit_parity.") as tmp:
        for name in names:
            run_case(sys.argv[1], tmp, name)
        if "small" in names:
            refusals(sys.argv[1], tmp)
    return summary()


if __name__ == "__main__":
    sys.exit(main())
