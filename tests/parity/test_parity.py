#!/usr/bin/python3
"""PyTorch parity, the PyTorch half: rebuilds each model that tests/parity/parity_dump.c ran,
loads the same weights from ctrain's safetensors checkpoints, feeds the same batch and compares.

usage: test_parity.py DUMPDIR [MODEL ...]      (run by tests/scripts/test_parity.sh)

The torch models below are written out by hand, independently of ctrain's layer parser, as
nn.Sequential with the same names, so load_state_dict(strict=True) must accept ctrain's files.
Per model:
  layout   the checkpoints' model entries are the torch state_dict's names, in its order
  train    logits, loss and every parameter gradient in train mode (BatchNorm batch
           statistics); running_mean, running_var and num_batches_tracked after it
  adam     one Adam step (lr 1e-3) from the same gradients: the parameters, the update
           p1 - p0 (about lr in size, it would hide inside the parameters), exp_avg,
           exp_avg_sq, the step count and the lr; then the end-to-end step (see below)
  eval     logits, loss and every parameter gradient in eval mode, from ctrain's post-step
           checkpoint loaded strict (so the running statistics the train pass made are used)
  control  the train pass with one weight tensor scaled by 1 + 1e-3 must fail the comparison
And once, on the cnn's checkpoint (dropout RNG streams, U64, and optimizer state):
  scripts/safetensors_to_torch.py --model-only gives a .pt that loads strict; without the
  flag the script refuses the file.

Metric. Per tensor, max|a - b| / max|b| <= 1e-4, where a is ctrain's and b the reference:
an absolute tolerance at the tensor's own scale. (Elementwise relative error is meaningless
for entries that are zero up to rounding.) The reference for logits, loss, gradients and
running statistics is the same PyTorch model run in float64 on the same float32 weights and
batch: float32 PyTorch's own rounding is not small against 1e-4 everywhere (the gradient of
a first conv layer that feeds train-mode BatchNorm is a sum that mostly cancels: float32
PyTorch is 6e-5 away from float64 there, ctrain 1e-6). Each line also prints ctrain's
distance to float32 PyTorch and float32 PyTorch's own distance to float64.
Two places need a different scale, and say so in their line:
  * the bias of a layer feeding train-mode BatchNorm: the batch mean removes it, so its
    gradient is exactly 0 and both sides compute rounding noise. The gradient is the sum of
    d loss / d output over batch and positions, so the scale is the sum of the magnitudes,
    sum |d loss / d output| per channel (from the float64 run).
  * the end-to-end Adam step (each side from its own gradients): Adam's first update
    lr * g / (|g| + eps) turns a gradient entry near eps into a large relative change (MLP
    gradient entries of 4e-8 differ by 2% between ctrain and float32 PyTorch). So the step is
    checked from ctrain's gradients with float32 PyTorch (same input, so 1e-4 of the
    tensor's scale), and end to end the tolerance adds, per entry, how far the update can
    move for the measured gradient difference: lr * eps * |g_a - g_b| / (min|g| + eps)^2
    (min|g| = 0 if the signs differ).

Prints one line per comparison and "N passed, M failed"; exits 1 on any failure. Without
torch it prints "SKIP: torch not available" and exits 0.
"""
import os
import subprocess
import sys
import tempfile
from collections import OrderedDict

try:
    import torch
    from torch import nn
except ImportError:
    print("SKIP: torch not available")
    sys.exit(0)

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = os.path.join(HERE, "..", "..", "scripts")
sys.dont_write_bytecode = True  # no __pycache__ in scripts/
sys.path.insert(0, SCRIPTS)
from safetensors_to_torch import is_model_entry, read  # noqa: E402

RTOL = 1e-4
LR, EPS = 1e-3, 1e-8  # Adam as parity_dump.c runs it (PyTorch's defaults besides lr)


# ---- the models, as PyTorch code --------------------------------------------------------------

def mlp():  # ct_nn_mlp(784, 10)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128),
                         nn.ReLU(), nn.Linear(128, 10))


def mlp_bn():  # "flatten,linear:64,bn,gelu,linear:32,tanh,linear:10"
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.BatchNorm1d(64), nn.GELU(),
                         nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))


def cnn_bn():  # "conv:8:3:1:1,bn,relu,maxpool:2,conv:16:3:2:1,bn,relu,avgpool:2,flatten,..."
    return nn.Sequential(nn.Conv2d(1, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AvgPool2d(2),  # 7x7 -> 3x3: the last row and column are dropped
                         nn.Flatten(), nn.Linear(16 * 3 * 3, 32), nn.ReLU(), nn.Linear(32, 10))


def cnn():  # ct_nn_cnn(1, 28, 10, dropout 0)
    backbone = nn.Sequential(nn.Conv2d(1, 32, 3, 1, 1), nn.BatchNorm2d(32), nn.ReLU(),
                             nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, 1, 1), nn.BatchNorm2d(64),
                             nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
    head = nn.Sequential(nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Dropout(0.0),
                         nn.Linear(128, 10))
    return nn.Sequential(OrderedDict(backbone=backbone, head=head))


MODELS = OrderedDict(mlp=mlp, mlp_bn=mlp_bn, cnn_bn=cnn_bn, cnn=cnn)


def build(name, state_dict, dtype):
    model = MODELS[name]().to(dtype)
    model.load_state_dict(state_dict, strict=True)  # raises on missing/unexpected/shape
    return model


def layers_feeding_bn(model):
    """Module names of the linear/conv layers with a bias whose output goes into BatchNorm."""
    names = []
    for prefix, mod in model.named_modules():
        if isinstance(mod, nn.Sequential):
            kids = list(mod.named_children())
            for (n, a), (_, b) in zip(kids, kids[1:]):
                if (isinstance(a, (nn.Linear, nn.Conv2d)) and a.bias is not None
                        and isinstance(b, nn.modules.batchnorm._BatchNorm)):
                    names.append(f"{prefix}.{n}" if prefix else n)
    return names


def run(model, x, y, train, watch=()):
    """Forward, mean cross entropy, backward. Returns logits, loss, the grads by name, and for
    each module in watch the sum of |d loss / d output| over all dims but the channel dim."""
    sums, handles = {}, []
    mods = dict(model.named_modules())
    for mname in watch:
        def hook(mod, inp, out, mname=mname):
            dims = [d for d in range(out.dim()) if d != 1]
            out.register_hook(lambda g: sums.__setitem__(mname, g.abs().sum(dims)))
        handles.append(mods[mname].register_forward_hook(hook))
    model.train(train)
    model.zero_grad(set_to_none=True)
    dtype = next(model.parameters()).dtype
    logits = model(x.to(dtype))
    loss = nn.functional.cross_entropy(logits, y)
    loss.backward()
    for h in handles:
        h.remove()
    grads = OrderedDict((n, p.grad.detach().clone()) for n, p in model.named_parameters())
    return logits.detach(), loss.detach(), grads, sums


# ---- comparison and reporting -----------------------------------------------------------------

def max_rel(a, b, scale=None, allow=None):
    """max|a - b| / scale, scale = max|b| unless given (a number or a per-entry tensor);
    allow (per entry) is subtracted from |a - b| first."""
    a = a.detach().double().reshape(-1)
    b = b.detach().double().reshape(-1)
    if a.shape != b.shape:
        return float("inf")
    if a.numel() == 0:
        return 0.0
    s = b.abs().max() if scale is None else torch.as_tensor(scale).double().reshape(-1)
    err = (a - b).abs()
    if allow is not None:
        err = (err - allow.double().reshape(-1)).clamp(min=0)
    rel = torch.where(err == 0, torch.zeros_like(err), err / s)  # 0/0 is agreement
    return rel.max().item()


class Report:
    def __init__(self, verbose=True):
        self.verbose = verbose
        self.passed = self.failed = 0
        self.worst = OrderedDict()  # quantity -> [largest vs reference, largest vs float32]

    def check(self, ok, label, detail=""):
        if self.verbose:
            print(f"{'ok  ' if ok else 'FAIL'} {label}{'  ' + detail if detail else ''}", flush=True)
        self.passed += bool(ok)
        self.failed += not ok
        return ok

    def measure(self, quantity, ours, ref, scale=None, allow=None):
        """max_rel of ours (ctrain) vs ref, remembered as the worst of its quantity."""
        rel = max_rel(ours, ref, scale, allow)
        worst = self.worst.setdefault(quantity, [0.0, None])
        worst[0] = max(worst[0], rel)
        return rel

    def close(self, label, quantity, ours, ref, scale=None, f32=None, note="", allow=None):
        """One comparison: ours vs ref within RTOL. f32, if given, is float32 PyTorch's
        value: ctrain's distance to it, and its own to ref, are printed but not judged."""
        rel = self.measure(quantity, ours, ref, scale, allow)
        detail = f"max_rel {rel:.2e}{note}"
        if f32 is not None:
            r32 = max_rel(ours, f32, scale)
            self.worst[quantity][1] = max(self.worst[quantity][1] or 0.0, r32)
            detail += (f"  | vs float32 torch {r32:.2e} "
                       f"(float32 torch vs float64 {max_rel(f32, ref, scale):.2e})")
        return self.check(rel <= RTOL, label, detail)


def compare_pass(rep, name, mode, dump, r64, r32, feeding_bn):
    """One mode's logits, loss and gradients against the float64 run r64 (r32: float32)."""
    rep.close(f"{name} {mode} logits", "logits", dump[f"{mode}.logits"], r64[0], f32=r32[0])
    rep.close(f"{name} {mode} loss", "loss", dump[f"{mode}.loss"], r64[1], f32=r32[1])
    zero = {f"{m}.bias": m for m in feeding_bn} if mode == "train" else {}
    for pname, g in r64[2].items():
        key = f"{mode}.grad.{pname}"
        if key not in dump:
            rep.check(False, f"{name} {mode} grad.{pname}", "missing from the dump")
        elif pname in zero:
            rep.close(f"{name} {mode} grad.{pname} (0 up to rounding)", "grads that are 0 (scale: sum|dy|)",
                      dump[key], g, scale=r64[3][zero[pname]], f32=r32[2][pname],
                      note=" of sum|d loss/d output|")
        else:
            rep.close(f"{name} {mode} grad.{pname}", "grads", dump[key], g, f32=r32[2][pname])
    extra = sorted(k for k in dump if k.startswith(f"{mode}.grad.") and k[len(mode) + 6:] not in r64[2])
    rep.check(not extra, f"{name} {mode} gradient set", "extra: " + ", ".join(extra) if extra else "")


def adam_step(model, grads=None):
    """One Adam step on model; grads (by name) replace the model's own if given."""
    opt = torch.optim.Adam(model.parameters(), lr=LR, foreach=False)
    if grads is not None:
        for n, p in model.named_parameters():
            p.grad = grads[n].to(p.dtype).reshape(p.shape).clone()
    opt.step()
    return opt


def compare_adam(rep, name, init, dump, step, r64):
    # the step from ctrain's own gradients: float32 PyTorch is an exact reference here
    model = build(name, init, torch.float32)
    cgrads = {n: dump[f"train.grad.{n}"] for n, _ in model.named_parameters()}
    opt = adam_step(model, cgrads)
    for pname, p in model.named_parameters():  # one line each: all five must hold
        st = opt.state[p]
        parts = [("params", step[pname], p),
                 ("update p1 - p0", step[pname] - init[pname], p.detach() - init[pname]),
                 ("exp_avg", step[f"optim.{pname}.exp_avg"], st["exp_avg"]),
                 ("exp_avg_sq", step[f"optim.{pname}.exp_avg_sq"], st["exp_avg_sq"])]
        ok, texts = True, []
        for q, a, b in parts:
            rel = rep.measure(q if q != "params" else "params after Adam", a, b)
            ok &= rel <= RTOL
            texts.append(f"{q} {rel:.2e}")
        steps = step.get(f"optim.{pname}.step")
        ok &= steps is not None and steps.item() == float(st["step"]) == 1.0
        texts.append(f"step {None if steps is None else steps.item():g}")
        rep.check(ok, f"{name} adam {pname}", "max_rel " + ", ".join(texts))
    lr = step.get("optim.group.0.lr")
    rep.check(lr is not None and lr.item() == LR, f"{name} adam group lr",
              f"ctrain {None if lr is None else lr.item()}")

    # end to end: float64 PyTorch's own gradients and step
    model = build(name, init, torch.float64)
    for n, p in model.named_parameters():
        p.grad = r64[2][n].clone()
    adam_step(model)
    for pname, p in model.named_parameters():
        gc, gr = cgrads[pname].double(), r64[2][pname]
        m = torch.where(gc * gr > 0, torch.minimum(gc.abs(), gr.abs()), torch.zeros_like(gr))
        bound = LR * EPS * (gc - gr).abs() / (m + EPS) ** 2
        plain = max_rel(step[pname], p)
        rep.close(f"{name} adam end-to-end {pname}", "params after Adam, end to end", step[pname], p,
                  allow=bound, note=f" beyond the bound (without it: {plain:.2e})")


def run_model(rep, name, d):
    paths = {k: os.path.join(d, f"{name}.{k}.safetensors") for k in ("init", "step", "dump")}
    init, _ = read(paths["init"], is_model_entry)
    dump, _ = read(paths["dump"])
    step, _ = read(paths["step"], lambda n: not n.startswith("rng."))
    step_model = OrderedDict((k, v) for k, v in step.items() if is_model_entry(k))
    x, y = dump["x"], dump["y"]

    names = list(MODELS[name]().state_dict())
    rep.check(list(init) == names and list(step_model) == names,
              f"{name} layout: checkpoint names and order == torch state_dict",
              "" if list(init) == names else f"ctrain {list(init)} vs torch {names}")

    # train mode from the initial weights
    m64, m32 = build(name, init, torch.float64), build(name, init, torch.float32)
    feeding_bn = layers_feeding_bn(m64)
    r64, r32 = run(m64, x, y, True, feeding_bn), run(m32, x, y, True)
    compare_pass(rep, name, "train", dump, r64, r32, feeding_bn)
    buf32 = dict(m32.named_buffers())
    for bname, b in m64.named_buffers():
        if bname.endswith("num_batches_tracked"):
            ok = step[bname].dtype == torch.int64 and step[bname].item() == b.item() == 1
            rep.check(ok, f"{name} train {bname}", f"ctrain {step[bname].item()} torch {b.item()}")
        else:
            rep.close(f"{name} train {bname}", "running stats", step[bname], b, f32=buf32[bname])

    compare_adam(rep, name, init, dump, step, r64)

    # eval mode from ctrain's post-step state
    m64, m32 = build(name, step_model, torch.float64), build(name, step_model, torch.float32)
    compare_pass(rep, name, "eval", dump, run(m64, x, y, False), run(m32, x, y, False), [])

    # negative control: the same comparison must catch a 1e-3 error in one weight tensor
    wname = next(n for n in init if n.endswith("weight") and init[n].dim() > 1)
    bad = OrderedDict((k, v.clone()) for k, v in init.items())
    bad[wname] *= 1 + 1e-3
    rb = run(build(name, bad, torch.float64), x, y, True, feeding_bn)
    quiet = Report(verbose=False)
    compare_pass(quiet, name, "train", dump, rb, rb, feeding_bn)
    rep.check(quiet.failed > 0, f"{name} control: {wname} * (1 + 1e-3) is detected",
              f"{quiet.failed} of {quiet.passed + quiet.failed} comparisons fail")


def check_model_only_flag(rep, d, name):
    """The conversion script on a checkpoint holding rng.* (U64) and optim.* entries."""
    src = os.path.join(d, f"{name}.step.safetensors")
    script = os.path.join(SCRIPTS, "safetensors_to_torch.py")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "model.pt")
        r = subprocess.run([sys.executable, script, src, out], capture_output=True, text=True)
        last = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"
        rep.check(r.returncode != 0 and "rng." in r.stderr and not os.path.exists(out),
                  f"safetensors_to_torch.py without --model-only refuses {name}.step", last)
        r = subprocess.run([sys.executable, script, "--model-only", src, out],
                           capture_output=True, text=True)
        ok, detail = r.returncode == 0, r.stderr.strip()[-300:]
        if ok:
            sd = torch.load(out)
            try:
                build(name, sd, torch.float32)
                full, _ = read(src, lambda n: not n.startswith("rng."))
                ok = (list(sd) == [k for k in full if is_model_entry(k)]
                      and all(torch.equal(full[k], v) and full[k].dtype == v.dtype
                              for k, v in sd.items()))
                detail = f"{len(sd)} entries, the checkpoint's model entries unchanged"
            except RuntimeError as e:
                ok, detail = False, str(e).splitlines()[0]
        rep.check(ok, f"safetensors_to_torch.py --model-only {name}.step loads strict", detail)


def main():
    if len(sys.argv) < 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    d, names = sys.argv[1], sys.argv[2:] or list(MODELS)
    torch.set_num_threads(1)
    rep = Report()
    for name in names:
        try:
            run_model(rep, name, d)
        except (Exception, SystemExit) as e:  # read() exits through fail() on a bad file
            rep.check(False, f"{name}: {type(e).__name__}: {e}")
    if "cnn" in names:
        check_model_only_flag(rep, d, "cnn")
    print(f"largest max_rel per quantity (limit {RTOL:g}; then ctrain vs float32 torch, not judged):")
    for q, (v, v32) in rep.worst.items():
        print(f"  {q:36s} {v:.2e}" + (f"   {v32:.2e}" if v32 is not None else ""))
    print(f"{rep.passed} passed, {rep.failed} failed")
    return 1 if rep.failed else 0


if __name__ == "__main__":
    sys.exit(main())
