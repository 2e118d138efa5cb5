#!/usr/bin/env python3
"""Plots a ctrain run's metrics (loss and accuracy per epoch) or a sweep's results.

usage: scripts/plot.py RUN_DIR_OR_JSONL [-o out.png] [--script out.gp]
       scripts/plot.py --sweep SWEEP_DIR_OR_CSV [-o out.png] [--script out.gp]

RUN_DIR is a training run's output.dir (its metrics.jsonl is read); the PNG goes to
RUN_DIR/metrics.png unless -o says otherwise. A resumed run appends to metrics.jsonl; when
an epoch appears twice the later line wins. With --sweep, a `ctrain sweep` results.csv is
drawn (accuracy and loss per checkpoint, one line per data set / override variant) into
results.png next to it; `ctrain sweep` runs this script (built into the binary) itself.
This is the one place ctrain draws plots. The drawing is done by gnuplot (gnuplot-nox,
installed by scripts/deps.sh), so nothing beyond the Python standard library is needed.
--script also saves the gnuplot script (data inline) for restyling the plot by hand.
"""
import argparse
import csv
import json
import math
import os
import subprocess
import sys
import tempfile


def fail(msg):
    print(f"plot.py: error: {msg}", file=sys.stderr)
    sys.exit(1)


def read_metrics(path):
    """Returns {epoch: record} from a metrics JSONL file."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except OSError as e:
        fail(f"{path}: {e.strerror}")
    by_epoch = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            fail(f"{path}:{n}: not JSON ({e.msg})")
        if not isinstance(rec, dict) or "epoch" not in rec:
            continue  # not an epoch record
        if not isinstance(rec["epoch"], int):
            fail(f"{path}:{n}: epoch is not an integer")
        by_epoch[rec["epoch"]] = rec
    if not by_epoch:
        fail(f"{path}: no epoch records (expected lines like {{\"epoch\": 1, \"train_loss\": ...}})")
    return by_epoch


def column(by_epoch, key):
    """(epoch, value) pairs for the epochs that have a finite number under key."""
    out = []
    for e in sorted(by_epoch):
        v = by_epoch[e].get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out.append((e, float(v)))
    return out


def gp_quote(s):
    return "'" + s.replace("'", "''") + "'"  # gnuplot single-quoted string


def gnuplot_script(title, series, out):
    """series: {name: [(epoch, value)]}; two panels, loss on top and accuracy below."""
    lines = ["set terminal pngcairo size 900,800 noenhanced font ',10'",
             f"set output {gp_quote(out)}"]
    for name, pts in series.items():
        lines.append(f"${name} << EOD")
        lines += [f"{e} {v:.9g}" for e, v in pts]
        lines.append("EOD")
    epochs = [e for pts in series.values() for e, _ in pts]
    lo, hi = min(epochs), max(epochs)
    pad = 0.25 if hi - lo <= 20 else 0  # keep the end points off the frame
    lines += [f"set xrange [{lo - pad}:{hi + pad}]",
              "set xlabel 'epoch'",
              "set grid",
              "set key top right",
              "set offsets 0, 0, graph 0.05, graph 0.05",
              "set lmargin at screen 0.1",
              "set rmargin at screen 0.95",
              "set xtics 1" if hi - lo <= 20 else "set xtics autofreq",
              f"set multiplot layout 2,1 title {gp_quote(title)}"]
    panels = [("loss", [("train_loss", "train loss"), ("eval_loss", "eval loss")]),
              ("accuracy", [("eval_accuracy", "eval accuracy")])]
    for ylabel, curves in panels:
        parts = [f"${k} using 1:2 with linespoints pt 7 title {gp_quote(t)}"
                 for k, t in curves if series.get(k)]
        lines.append(f"set ylabel '{ylabel}'")
        if parts:
            lines.append("plot " + ", ".join(parts))
        else:  # keep the layout; say what is missing
            lines.append(f"set label 1 'no {ylabel} in the metrics' at graph 0.5, 0.5 center")
            lines.append("plot [0:1] [0:1] NaN notitle")
            lines.append("unset label 1")
    lines += ["unset multiplot", "set output"]
    return "\n".join(lines) + "\n"


def gp_label(s):
    return gp_quote("".join(c if c >= " " else " " for c in s))


def read_sweep(path):
    """Returns the rows of a sweep's results.csv, in job order."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        fail(f"{path}: {e.strerror}")
    need = {"job", "checkpoint", "dataset", "overrides", "status", "accuracy", "loss"}
    if not rows or not need <= set(rows[0]):
        fail(f"{path}: not a ctrain sweep results.csv (columns {', '.join(sorted(need))})")
    return sorted(rows, key=lambda r: int(r["job"]))


def short_labels(paths):
    """Checkpoint names without the directory they all share and without .safetensors."""
    common = os.path.commonprefix(paths)
    common = common[:common.rfind("/") + 1] if "/" in common else ""
    out = []
    for p in paths:
        s = p[len(common):]
        out.append(s[:-12] if len(s) > 12 and s.endswith(".safetensors") else s)
    return out


def sweep_script(rows, out):
    """Accuracy (top) and loss (bottom) for each checkpoint, one line per variant; failed
    jobs are left out."""
    ckpts, variants = [], []
    for r in rows:
        if r["checkpoint"] not in ckpts:
            ckpts.append(r["checkpoint"])
        if (r["dataset"], r["overrides"]) not in variants:
            variants.append((r["dataset"], r["overrides"]))
    vary_ds = len({d for d, _ in variants}) > 1
    vary_ov = len({o for _, o in variants}) > 1
    ok = {(r["checkpoint"], r["dataset"], r["overrides"]): r for r in rows if r["status"] == "ok"}
    lines = ["# Written by scripts/plot.py --sweep. Redraw with: gnuplot plot.gp",
             "set terminal pngcairo size 1100,900 noenhanced font ',10'",
             f"set output {gp_quote(out)}"]
    for v, (ds, ov) in enumerate(variants):
        lines.append(f"$v{v} << EOD")
        for c, ck in enumerate(ckpts):
            r = ok.get((ck, ds, ov))
            if r:
                lines.append(f"{c} {float(r['accuracy']):.6f} {float(r['loss']):.6f}")
        lines.append("EOD")
    labels = short_labels(ckpts)
    every = (len(ckpts) + 39) // 40  # at most ~40 tick labels
    tics = []
    for c in range(0, len(ckpts), every):
        failed = all((ckpts[c], ds, ov) not in ok for ds, ov in variants)
        tics.append(f"{gp_label(labels[c] + (' (failed)' if failed else ''))} {c}")
    many = len(variants) > 1
    lines += [f"set xtics ({', '.join(tics)}) rotate by -35 left",
              f"set xrange [-0.5:{len(ckpts) - 0.5:g}]",
              "set offsets 0, 0, graph 0.05, graph 0.05",
              "set grid",
              "set lmargin at screen 0.09",
              f"set rmargin at screen {'0.72' if many else '0.97'}",
              "set key outside right top" if many else "unset key",
              f"set multiplot layout 2,1 title 'ctrain sweep: {len(ok)} of {len(rows)} jobs evaluated'"]
    for k, what in enumerate(("accuracy", "loss")):
        parts = []
        for v, (ds, ov) in enumerate(variants):
            title = (ds if vary_ds else "") + (" " if vary_ds and vary_ov else "") + \
                ((ov or "(no overrides)") if vary_ov else "")
            parts.append(f"$v{v} using 1:{k + 2} with linespoints pt 7 title {gp_label(title)}")
        lines += [f"set ylabel '{what}'", "plot " + ", ".join(parts)]
    lines += ["unset multiplot", "set output"]
    return "\n".join(lines) + "\n"


def render(make_script, out, script_path):
    """Runs gnuplot on make_script(png); writes a temporary file that is renamed into place,
    so a failed run never leaves a truncated PNG under the real name."""
    out_dir = os.path.dirname(os.path.abspath(out))
    fd, tmp = tempfile.mkstemp(prefix=".plot.", suffix=".png", dir=out_dir)
    os.close(fd)
    try:
        script = make_script(tmp)
        if script_path:
            with open(script_path, "w", encoding="utf-8") as f:
                f.write(make_script(out))
        try:
            r = subprocess.run(["gnuplot"], input=script, text=True, capture_output=True)
        except FileNotFoundError:
            fail("gnuplot not found (scripts/deps.sh installs gnuplot-nox)")
        if r.returncode != 0:
            fail(f"gnuplot failed: {r.stderr.strip()}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    print(out)


def main_sweep(args):
    path = args.input
    if os.path.isdir(path):
        path = os.path.join(path, "results.csv")
    out = args.output or os.path.join(os.path.dirname(os.path.abspath(path)), "results.png")
    rows = read_sweep(path)
    if not any(r["status"] == "ok" for r in rows):
        fail(f"{path}: no job succeeded, so there is nothing to plot")
    render(lambda png: sweep_script(rows, png), out, args.script)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("input", help="a run directory (with metrics.jsonl) or a metrics JSONL file; "
                    "with --sweep, a sweep directory or its results.csv")
    ap.add_argument("--sweep", action="store_true", help="plot a ctrain sweep's results.csv")
    ap.add_argument("-o", "--output", help="PNG to write (default: next to the metrics)")
    ap.add_argument("--script", help="also write the gnuplot script (drawing to the -o path)")
    args = ap.parse_args()
    if args.sweep:
        return main_sweep(args)

    path = args.input
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    out = args.output or os.path.join(os.path.dirname(os.path.abspath(path)), "metrics.png")
    by_epoch = read_metrics(path)
    series = {k: column(by_epoch, k) for k in ("train_loss", "eval_loss", "eval_accuracy")}
    if not any(series.values()):
        fail(f"{path}: no train_loss, eval_loss or eval_accuracy values")
    last = by_epoch[max(by_epoch)]
    title = f"{path}: {len(by_epoch)} epochs"
    if isinstance(last.get("eval_accuracy"), (int, float)):
        title += f", final eval accuracy {last['eval_accuracy']:.4f}"

    render(lambda png: gnuplot_script(title, series, png), out, args.script)


if __name__ == "__main__":
    main()
