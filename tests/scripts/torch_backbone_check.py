#!/usr/bin/python3
"""The comparisons of tests/scripts/test_torch_backbone.sh. Prints one "PASS label" or
"FAIL label: detail" line per check; the shell script counts them.

usage:
  torch_backbone_check.py frozen EXPORT RUN_DIR [--bn-changes]
      EXPORT is the PyTorch backbone (scripts/torch_backbone.py pretrain), RUN_DIR a ctrain
      run that fine-tuned over it with backbone.* frozen and checkpoint_every = 1. Checks
      that the final checkpoint has the export's state_dict names and shapes, that every
      backbone parameter and every BatchNorm buffer (running_mean, running_var,
      num_batches_tracked) is bit-identical to the export in the first and last checkpoints,
      and that the head differs from the export's and changed between them. --bn-changes
      (the control run with bn_eval_when_frozen = false) expects the opposite for the
      BatchNorm buffers: the check above must be able to fail.
  torch_backbone_check.py same-eval LABEL CTRAIN_JSON TORCH_JSON
      The same number of samples and of correct answers (correct = accuracy * samples, as
      ctrain prints accuracy to 6 decimals) and the same mean loss to 1e-4 relative.
"""
import json
import os
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts"))

BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def report(ok, label, detail=""):
    print(f"PASS {label}" if ok else f"FAIL {label}: {detail}", flush=True)


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.numpy().tobytes() == b.numpy().tobytes()


def frozen(export_path, run_dir, bn_changes=False):
    from safetensors_to_torch import is_model_entry, read  # imports torch: only here
    with open(os.path.join(run_dir, "latest")) as f:
        last = os.path.join(run_dir, f.read().strip())
    first = os.path.join(run_dir, "ckpt-epoch0001.safetensors")
    ref, _ = read(export_path)
    tag = os.path.basename(run_dir)
    ckpts = [(name, read(path, is_model_entry)[0]) for name, path in
             (("epoch 1", first), (os.path.basename(last), last))]
    if first == last:
        report(False, f"{tag}: two checkpoints", "the run has only one")
        return
    final = ckpts[1][1]
    report(list(final) == list(ref) and all(final[k].shape == ref[k].shape for k in ref),
           f"{tag}: checkpoint has the export's state_dict names, order and shapes",
           f"{list(final)} vs {list(ref)}")
    params = [k for k in ref if k.startswith("backbone.") and not k.endswith(BN_BUFFERS)]
    buffers = [k for k in ref if k.startswith("backbone.") and k.endswith(BN_BUFFERS)]
    head = [k for k in ref if k.startswith("head.")]
    for when, sd in ckpts:
        bad = [k for k in params if not same_bits(sd[k], ref[k])]
        report(not bad and len(params) == 8,
               f"{tag}: {when}: the {len(params)} backbone parameters are bit-identical to the "
               f"torch export", f"changed: {bad}")
        bad = [k for k in buffers if not same_bits(sd[k], ref[k])]
        if bn_changes:
            report(len(bad) == len(buffers) and len(buffers) == 6,
                   f"{tag}: {when}: control: BatchNorm in train mode changed all {len(buffers)} "
                   f"running statistics (the unchanged-check can fail)",
                   f"only {bad} changed")
        else:
            report(not bad and len(buffers) == 6,
                   f"{tag}: {when}: the {len(buffers)} BatchNorm buffers of the frozen backbone "
                   f"(running_mean, running_var, num_batches_tracked) are unchanged",
                   f"changed: {bad}")
        same = [k for k in head if same_bits(sd[k], ref[k])]
        report(not same and len(head) == 4, f"{tag}: {when}: every head tensor differs from "
               f"the export's (fresh head, init_exclude = head.*)", f"equal: {same}")
    same = [k for k in head if same_bits(ckpts[0][1][k], final[k])]
    report(not same, f"{tag}: the head trained (every head tensor changed after epoch 1)",
           f"unchanged: {same}")


def same_eval(label, ctrain_line, torch_line):
    try:
        c, t = json.loads(ctrain_line), json.loads(torch_line)
        c_correct = round(c["accuracy"] * c["samples"])
        ok = (c["samples"] == t["samples"] and c_correct == t["correct"]
              and abs(c["loss"] - t["loss"]) <= 1e-4 * max(abs(t["loss"]), 1e-6))
        detail = (f"ctrain {c_correct}/{c['samples']} correct, loss {c['loss']}; "
                  f"torch {t['correct']}/{t['samples']}, loss {t['loss']}")
    except (ValueError, KeyError, TypeError) as e:
        ok, detail = False, f"cannot compare {ctrain_line!r} and {torch_line!r}: {e}"
    report(ok, f"{label}: " + (detail if ok else "same samples, correct answers and loss"),
           detail)


def main():
    if len(sys.argv) >= 4 and sys.argv[1] == "frozen":
        frozen(sys.argv[2], sys.argv[3], "--bn-changes" in sys.argv[4:])
    elif len(sys.argv) == 5 and sys.argv[1] == "same-eval":
        same_eval(*sys.argv[2:])
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
