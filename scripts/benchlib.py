"""Shared by the summaries of scripts/bench_*.sh (see scripts/benchlib.sh): reading the runs'
JSON lines from the block's output directory and printing the block's lines."""
import json
import os
import sys

OUT = sys.argv[1] if len(sys.argv) > 1 else "."


def want(name):
    sel = os.environ.get("BENCH", "")
    return not sel or name in sel.split(",")


def emit(d):
    """Prints one JSON line if BENCH selects its "bench" name."""
    if want(d["bench"]):
        print(json.dumps(d), flush=True)


def runs(name, side=None):
    """Every JSON line of $out/name.side (or $out/name), [] if the file is missing."""
    p = os.path.join(OUT, f"{name}.{side}" if side else name)
    if not os.path.exists(p):
        return []
    return [json.loads(line) for line in open(p) if line.strip()]


def best(name, side=None, key="sps"):
    """The run with the highest `key` (the machine is shared and noisy), or None."""
    rs = runs(name, side)
    return max(rs, key=lambda r: r[key]) if rs else None


def r1(x, n=1):
    return None if x is None else round(x, n)


def ratio(a, b):
    return None if a is None or b is None or b == 0 else round(a / b, 3)


def compare(name, **extra):
    """The line of a ctrain-vs-PyTorch throughput comparison: best samples/s of each side,
    their ratio, and every sample (each round's best repeat)."""
    c, t = best(name, "ctrain"), best(name, "torch")
    cs, ts = (c["sps"] if c else None), (t["sps"] if t else None)
    d = {"bench": name, "ctrain_sps": r1(cs), "torch_sps": r1(ts), "ratio": ratio(cs, ts)}
    d.update(extra)
    d["ctrain_sps_all"] = [r["sps"] for r in runs(name, "ctrain")]
    d["torch_sps_all"] = [r["sps"] for r in runs(name, "torch")]
    return d


def rss(name, **extra):
    """Peak RSS of one fresh process per side."""
    c, t = (runs(name, "ctrain") or [None])[0], (runs(name, "torch") or [None])[0]
    d = {"bench": name, "ctrain_mib": c["max_rss_mib"] if c else None, "torch_mib": t["max_rss_mib"] if t else None,
         "ratio": ratio(c["max_rss_mib"], t["max_rss_mib"]) if c and t else None, "steps": c["steps"] if c else None,
         "ctrain_start_mib": c["rss_start_mib"] if c else None, "torch_start_mib": t["rss_start_mib"] if t else None}
    d.update(extra)
    return d


def epochs_sps(run_dir, first=2):
    """Mean samples/s of epochs >= first in a CLI run's metrics.jsonl."""
    rs = [r for r in runs(os.path.join(run_dir, "metrics.jsonl")) if r.get("epoch", 0) >= first]
    return sum(r["samples_per_s"] for r in rs) / len(rs) if rs else None
