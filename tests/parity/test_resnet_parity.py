#!/usr/bin/python3
"""torchvision parity for ctrain's ResNets (run by tests/scripts/test_resnet_parity.sh).

usage: test_resnet_parity.py BUILD_DIR [CASE ...]   (cases: resnet18, resnet50, resnet18_small)

For each case below, torchvision builds the model (random initialisation; conv1 swapped for
the case's channel count or for the small stem, with the max pool an Identity; every
BatchNorm given random affine parameters and running statistics so that none can be ignored
or swapped unnoticed). Its state_dict goes through the existing converter,
scripts/torch_to_safetensors.py, and BUILD/tests/parity/resnet_dump loads it strict into
ct_nn_resnet and runs: train-mode forward, mean cross entropy, backward, one SGD step (lr 0.1),
a checkpoint, then an eval-mode forward and backward. Compared, per case:
  layout   ctrain's checkpoint names and order == torchvision's state_dict
  train    logits, loss, every parameter gradient; running_mean/var and num_batches_tracked
           after the pass; every parameter after the SGD step
  eval     logits, loss, every gradient, against torchvision loaded strict from ctrain's
           checkpoint (the exported statistics are what eval normalises with)
  export   scripts/safetensors_to_torch.py --model-only of ctrain's checkpoint loads into
           torchvision with strict=True, every tensor unchanged
  control  the train comparison with one conv weight scaled by 1 + 1e-3 must fail
Metric as in tests/parity/test_parity.py: max|a - b| / max|b| <= 1e-4 per tensor, b from
torchvision in float64 on the same float32 weights and batch. One adjustment: float32 rounding
(ctrain's or PyTorch's alike: float32 torchvision is 1e-2 to 3e-1 away from float64 on
ResNet-50's train-mode gradients here) puts a few of ResNet-50's millions of ReLU inputs on the
other side of 0 than float64, and each such entry changes a gradient by its full size. So the
float64 referee's ReLUs take ctrain's side of the kink (resnet_dump records every ReLU call),
and a check asserts that they only ever differ where the float64 input is within 1e-4 of its
tensor's scale from 0.
Then, refusals: state_dicts that do not fit (another depth, width, channel count, class count,
a missing key) make resnet_dump exit 1 before writing anything, with a message naming the key
and, for a shape, both shapes. Last, `ctrain eval --checkpoint` of a bare torchvision
state_dict on Fashion-MNIST classes 0-1 counts the same correct answers with the same loss as
torchvision (skipped when the data set is not installed).

Prints one line per check and "N passed, M failed"; exits 1 on any failure. Without torch or
torchvision: "SKIP: ..." and exit 0.
"""
import json
import os
import subprocess
import sys
import tempfile
from collections import OrderedDict

try:
    import torch
    import torchvision
    from torch import nn
except ImportError as e:
    print(f"SKIP: torch/torchvision not available ({e})")
    sys.exit(0)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
sys.dont_write_bytecode = True
from parity_check import RTOL, SCRIPTS, check, close, is_model_entry, max_rel, read, save_st, summary  # noqa: E402

LR = 0.1
DATA = "/usr/share/datasets/fashion-mnist"

# name, depth, in_channels, classes, stem, batch shape [N, C, H, W]
CASES = [
    ("resnet18", 18, 1, 10, "imagenet", (8, 1, 32, 32)),
    ("resnet50", 50, 3, 10, "small", (8, 3, 12, 12)),
    ("resnet18_small", 18, 1, 10, "small", (4, 1, 12, 12)),
]

def torchvision_resnet(depth, in_ch, classes, stem, seed):
    """torchvision's resnet<depth> with conv1 fitted to in_ch / the small stem."""
    torch.manual_seed(seed)
    m = getattr(torchvision.models, f"resnet{depth}")(num_classes=classes)
    if stem == "small":
        m.conv1 = nn.Conv2d(in_ch, 64, 3, 1, 1, bias=False)
        m.maxpool = nn.Identity()
    elif in_ch != 3:
        m.conv1 = nn.Conv2d(in_ch, 64, 7, 2, 3, bias=False)
    nn.init.kaiming_normal_(m.conv1.weight, mode="fan_out", nonlinearity="relu")
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0, 0.1)
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
                mod.num_batches_tracked.fill_(3)
    return m


def export(model_or_sd, path, tmp):
    """state_dict -> .pt -> scripts/torch_to_safetensors.py -> path."""
    sd = model_or_sd.state_dict() if isinstance(model_or_sd, nn.Module) else model_or_sd
    pt = os.path.join(tmp, "export.pt")
    torch.save(sd, pt)
    subprocess.run([sys.executable, os.path.join(SCRIPTS, "torch_to_safetensors.py"), pt, path], check=True)


class KinkReLU(nn.Module):
    """ReLU that takes ctrain's side of the kink: calls pop ctrain's outputs of the same ReLU
    calls in order (torchvision calls a block's one relu module two or three times, ctrain
    the same sequence) and keep x where ctrain's output was > 0. Where float64 disagrees, x
    is within rounding of 0 (checked: kink_check)."""

    def __init__(self, calls):
        super().__init__()
        self.calls = calls

    def forward(self, x):
        c = self.calls.pop(0)
        if c.shape != x.shape:
            raise RuntimeError(f"ReLU call shape {tuple(x.shape)}, ctrain's {tuple(c.shape)}")
        self.calls.seen.append((x.detach(), c))
        return x * (c > 0).to(x.dtype)


class Calls(list):
    seen = None


def follow_kinks(model, outputs):
    """Makes every ReLU of the torchvision model a KinkReLU over ctrain's outputs."""
    calls = Calls(outputs)
    calls.seen = []
    for mod in [model] + [m for m in model.modules() if hasattr(m, "relu")]:
        if isinstance(getattr(mod, "relu", None), nn.ReLU):
            mod.relu = KinkReLU(calls)
    return calls


def relu_calls(dump, mode):
    n = sum(1 for k in dump if k.startswith(f"{mode}.relu."))
    return [dump[f"{mode}.relu.{i}"] for i in range(n)]


def kink_check(label, calls, total):
    """Every ReLU call used, and ctrain's side of the kink differs from float64's only where
    the float64 input is within 1e-4 of the call's largest |input| (rounding, not a bug)."""
    flips, worst = 0, 0.0
    for x, c in calls.seen:
        differ = (x > 0) != (c > 0)
        flips += int(differ.sum())
        if differ.any():
            worst = max(worst, (x[differ].abs().max() / x.abs().max()).item())
    check(not calls and len(calls.seen) == total and worst <= RTOL,
          f"{label}: {total} ReLU calls; float64 on the other side of the kink at {flips} entries",
          f"largest such |input| {worst:.1e} of its call's scale" + (f"; {len(calls)} unused" if calls else ""))


def run(model, x, y, train):
    model.train(train)
    model.zero_grad(set_to_none=True)
    logits = model(x.double())
    loss = nn.functional.cross_entropy(logits, y)
    loss.backward()
    return logits.detach(), loss.detach(), OrderedDict((n, p.grad.detach().clone())
                                                       for n, p in model.named_parameters())


def compare_pass(name, mode, dump, ref):
    ok = close(f"{name} {mode} logits", dump[f"{mode}.logits"], ref[0])
    ok &= close(f"{name} {mode} loss", dump[f"{mode}.loss"], ref[1])
    worst, bad = 0.0, []
    for pname, g in ref[2].items():
        key = f"{mode}.grad.{pname}"
        rel = max_rel(dump[key], g) if key in dump else float("inf")
        worst = max(worst, rel)
        if rel > RTOL:
            bad.append(f"{pname} {rel:.2e}")
    extra = [k for k in dump if k.startswith(f"{mode}.grad.") and k[len(mode) + 6:] not in ref[2]]
    ok &= check(not bad and not extra, f"{name} {mode} grads: all {len(ref[2])} parameters",
                f"worst max_rel {worst:.2e}" + (f"; over: {bad}" if bad else "") +
                (f"; extra: {extra}" if extra else ""))
    return ok


def run_case(bin_dir, tmp, case, seed):
    name, depth, in_ch, classes, stem, shape = case
    tv = torchvision_resnet(depth, in_ch, classes, stem, seed)
    init = OrderedDict((k, v.clone()) for k, v in tv.state_dict().items())
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    y = torch.randint(0, classes, (shape[0],), generator=g)
    state = os.path.join(tmp, f"{name}.state.safetensors")
    export(tv, state, tmp)
    batch = os.path.join(tmp, f"{name}.batch.safetensors")
    save_st(batch, OrderedDict(x=x, y=y))
    out = os.path.join(tmp, name)
    r = subprocess.run([os.path.join(bin_dir, "resnet_dump"), str(depth), str(in_ch), str(classes), stem,
                        state, batch, out], capture_output=True, text=True)
    if not check(r.returncode == 0, f"{name}: resnet_dump loads the torchvision export strict and runs",
                 (r.stdout + r.stderr).strip()[-400:]):
        return
    dump, _ = read(f"{out}.dump.safetensors")
    step, _ = read(f"{out}.step.safetensors", lambda n: not n.startswith("rng."))
    step = OrderedDict((k, v) for k, v in step.items() if is_model_entry(k))
    names = list(tv.state_dict())
    check(list(step) == names, f"{name} layout: checkpoint names and order == torchvision state_dict",
          "" if list(step) == names else f"{[n for n in names if n not in step][:5]} missing, "
                                         f"{[n for n in step if n not in names][:5]} extra")

    # train mode, float64 torchvision from the same weights
    m64 = torchvision_resnet(depth, in_ch, classes, stem, seed).double()
    m64.load_state_dict(init, strict=True)
    calls = follow_kinks(m64, relu_calls(dump, "train"))
    ref = run(m64, x, y, True)
    kink_check(f"{name} train", calls, len(relu_calls(dump, "train")))
    compare_pass(name, "train", dump, ref)
    bufs = OrderedDict(m64.named_buffers())
    worst, bad = 0.0, []
    for bname, b in bufs.items():
        if bname.endswith("num_batches_tracked"):
            if not (step[bname].dtype == torch.int64 and step[bname].item() == b.item() == 4):
                bad.append(f"{bname} ctrain {step[bname].item()} torch {b.item()}")
            continue
        rel = max_rel(step[bname], b)
        worst = max(worst, rel)
        if rel > RTOL:
            bad.append(f"{bname} {rel:.2e}")
    check(not bad, f"{name} train running statistics and num_batches_tracked: all {len(bufs)} buffers",
          f"worst max_rel {worst:.2e}" + (f"; off: {bad[:5]}" if bad else ""))
    worst, bad = 0.0, []
    for pname, p in m64.named_parameters():
        rel = max_rel(step[pname], p.detach() - LR * ref[2][pname])
        worst = max(worst, rel)
        if rel > RTOL:
            bad.append(f"{pname} {rel:.2e}")
    check(not bad, f"{name} parameters after one SGD step (lr {LR})",
          f"worst max_rel {worst:.2e}" + (f"; off: {bad[:5]}" if bad else ""))

    # eval mode from ctrain's checkpoint, loaded strict
    e64 = torchvision_resnet(depth, in_ch, classes, stem, seed).double()
    e64.load_state_dict(step, strict=True)
    calls = follow_kinks(e64, relu_calls(dump, "eval"))
    ref = run(e64, x, y, False)
    kink_check(f"{name} eval", calls, len(relu_calls(dump, "eval")))
    compare_pass(name, "eval", dump, ref)

    # ctrain's checkpoint back into torchvision through the converter, strict
    pt = os.path.join(tmp, f"{name}.back.pt")
    r = subprocess.run([sys.executable, os.path.join(SCRIPTS, "safetensors_to_torch.py"), "--model-only",
                        f"{out}.step.safetensors", pt], capture_output=True, text=True)
    ok, detail = r.returncode == 0, r.stderr.strip()[-300:]
    if ok:
        sd = torch.load(pt)
        back = torchvision_resnet(depth, in_ch, classes, stem, seed + 1)
        try:
            back.load_state_dict(sd, strict=True)
            ok = all(torch.equal(back.state_dict()[k], v) for k, v in step.items())
            detail = f"{len(sd)} entries, equal to ctrain's"
        except RuntimeError as e:
            ok, detail = False, str(e).splitlines()[0]
    check(ok, f"{name} export: ctrain's checkpoint loads into torchvision strict=True", detail)

    # control: a 1e-3 error in one weight must show
    bad_sd = OrderedDict((k, v.clone()) for k, v in init.items())
    bad_sd["layer1.0.conv1.weight"] *= 1 + 1e-3
    c64 = torchvision_resnet(depth, in_ch, classes, stem, seed).double()
    c64.load_state_dict(bad_sd, strict=True)
    follow_kinks(c64, relu_calls(dump, "train"))
    rb = run(c64, x, y, True)
    caught = max_rel(dump["train.logits"], rb[0]) > RTOL or any(
        max_rel(dump[f"train.grad.{n}"], g) > RTOL for n, g in rb[2].items())
    check(caught, f"{name} control: layer1.0.conv1.weight * (1 + 1e-3) is detected")


def refusals(bin_dir, tmp):
    """State_dicts that do not fit ctrain's resnet18 (1 channel, 10 classes, imagenet stem)."""
    x = torch.zeros(2, 1, 32, 32)
    batch = os.path.join(tmp, "refuse.batch.safetensors")
    save_st(batch, OrderedDict(x=x, y=torch.zeros(2, dtype=torch.int64)))
    no_bn_var = torchvision_resnet(18, 1, 10, "imagenet", 5).state_dict()
    del no_bn_var["layer4.1.bn2.running_var"]
    cases = [
        ("3-channel conv1", torchvision_resnet(18, 3, 10, "imagenet", 5),
         ["conv1.weight is F32 [64, 3, 7, 7] in the checkpoint but F32 [64, 1, 7, 7] in the model"]),
        ("5 classes", torchvision_resnet(18, 1, 5, "imagenet", 5),
         ["fc.weight is F32 [5, 512] in the checkpoint but F32 [10, 512] in the model",
          "fc.bias is F32 [5] in the checkpoint but F32 [10] in the model"]),
        ("resnet34", torchvision_resnet(34, 1, 10, "imagenet", 5),
         ["unexpected in the checkpoint: layer1.2.conv1.weight"]),
        ("resnet50", torchvision_resnet(50, 1, 10, "imagenet", 5),
         # the report is cut at the error buffer's 1 KiB; the first mismatch is named
         ["does not match the model",
          "layer1.0.conv1.weight is F32 [64, 64, 1, 1] in the checkpoint but F32 [64, 64, 3, 3] in the model"]),
        ("a missing running_var", no_bn_var, ["missing from the checkpoint: layer4.1.bn2.running_var"]),
    ]
    for label, model, want in cases:
        state = os.path.join(tmp, "refuse.state.safetensors")
        export(model, state, tmp)
        out = os.path.join(tmp, "refused")
        r = subprocess.run([os.path.join(bin_dir, "resnet_dump"), "18", "1", "10", "imagenet", state, batch, out],
                           capture_output=True, text=True)
        missing = [w for w in want if w not in r.stderr]
        wrote = [p for p in (f"{out}.step.safetensors", f"{out}.dump.safetensors") if os.path.exists(p)]
        check(r.returncode == 1 and not missing and not wrote,
              f"refused into resnet18: {label}, naming " + "; ".join(want),
              f"exit {r.returncode}" + (f", not named: {missing}; stderr: {r.stderr.strip()[-300:]}"
                                        if missing else "") + (f", wrote {wrote}" if wrote else ""))


def cli_eval(build, tmp):
    """`ctrain eval --checkpoint` of a bare torchvision state_dict, vs torchvision."""
    if not os.path.exists(os.path.join(DATA, "t10k-images-idx3-ubyte.gz")):
        print(f"skip: ctrain eval of a torchvision export ({DATA} not installed)")
        return
    from torch_backbone import evaluate_model, load_split
    tv = torchvision_resnet(18, 1, 2, "imagenet", 11)  # the cheap stem: 2000 images, both sides
    state = os.path.join(tmp, "eval.safetensors")
    export(tv, state, tmp)
    r = subprocess.run([os.path.join(build, "ctrain"), "eval", os.path.join(ROOT, "examples", "fmnist_cnn.ini"),
                        "--checkpoint", state, "model.name=resnet18", "model.in_channels=1", "model.stem=imagenet",
                        "data.classes=0-1", "train.eval_batch_size=250"], capture_output=True, text=True,
                       # Open MPI's own allocations are never freed: no leak reports under LeakSanitizer
                       env=dict(os.environ, ASAN_OPTIONS=os.environ.get("ASAN_OPTIONS", "") + ":detect_leaks=0"))
    lines = [json.loads(s) for s in r.stdout.splitlines() if '"event":"eval"' in s.replace(" ", "")]
    if not check(r.returncode == 0 and lines, "ctrain eval --checkpoint of a torchvision resnet18 state_dict",
                 r.stderr.strip()[-300:]):
        return
    ours = lines[-1]
    x, y = load_split(DATA, "test", [0, 1])
    loss, correct, n = evaluate_model(tv, x, y)
    c_ours = round(ours["accuracy"] * ours["samples"])
    rel = abs(ours["loss"] - loss) / abs(loss)
    check(ours["samples"] == n and c_ours == correct and rel <= RTOL,
          "ctrain eval of the torchvision export == torchvision's evaluation",
          f"ctrain {c_ours}/{ours['samples']} loss {ours['loss']:.6f}; torchvision {correct}/{n} loss {loss:.6f}")


def main():
    if len(sys.argv) < 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    build, only = sys.argv[1], sys.argv[2:]  # CASE ...: only those cases, no refusals or CLI
    bin_dir = os.path.join(build, "tests", "parity")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        for i, case in enumerate(CASES):
            if only and case[0] not in only:
                continue
            try:
                run_case(bin_dir, tmp, case, 100 + i)
            except Exception as e:  # noqa: BLE001 - one case's crash is one failure
                check(False, f"{case[0]}: {type(e).__name__}: {e}")
        if not only:
            refusals(bin_dir, tmp)
            cli_eval(build, tmp)
    return summary()


if __name__ == "__main__":
    sys.exit(main())
