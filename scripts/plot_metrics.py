#!/usr/bin/env python3
"""Plots a ctrain run's metrics: loss (train and eval) and eval accuracy per epoch.

usage: scripts/plot_metrics.py RUN_DIR_OR_JSONL [-o out.png] [--script out.gp]

RUN_DIR is a training run's output.dir (its metrics.jsonl is read); the PNG goes to
RUN_DIR/metrics.png unless -o says otherwise. The drawing is done by gnuplot (gnuplot-nox,
installed by scripts/deps.sh), so nothing beyond the Python standard library is needed.
A resumed run appends to metrics.jsonl; when an epoch appears twice the later line wins.
--script also saves the gnuplot script (data inline) for restyling the plot by hand.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile


def fail(msg):
    print(f"plot_metrics.py: error: {msg}", file=sys.stderr)
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("input", help="a run directory (with metrics.jsonl) or a metrics JSONL file")
    ap.add_argument("-o", "--output", help="PNG to write (default: next to the metrics)")
    ap.add_argument("--script", help="also write the gnuplot script (drawing to the -o path)")
    args = ap.parse_args()

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

    # gnuplot writes a temporary file that is renamed into place, so a failed run never
    # leaves a truncated PNG under the real name.
    out_dir = os.path.dirname(os.path.abspath(out))
    fd, tmp = tempfile.mkstemp(prefix=".plot_metrics.", suffix=".png", dir=out_dir)
    os.close(fd)
    try:
        script = gnuplot_script(title, series, tmp)
        if args.script:
            with open(args.script, "w", encoding="utf-8") as f:
                f.write(gnuplot_script(title, series, out))
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


if __name__ == "__main__":
    main()
