#!/usr/bin/env python3
"""Data-parallel scaling on paper: ctrain's measured step and bucket plan plus an alpha-beta
model of the network, projected to 1-1024 ranks (docs/SCALING.md explains the model).

usage:
  scaling_model.py measure [--build build] [--data FILE]   runs the measurements (ctrain only,
                                                            a few minutes) and writes FILE
  scaling_model.py [project] [--data FILE] [--plot PNG] [--speedup X]
                                                            reads FILE, checks the model against
                                                            the measured 2- and 3-rank runs,
                                                            prints the projection, draws PNG

FILE defaults to docs/scaling_measured.json and PNG to docs/scaling.png.

measure, for each case (cnn, cnn_frozen, resnet18, resnet18_frozen; see CASES):
  - build/bench/bench_train --mode layers on one rank: forward, backward (per layer) and
    optimizer times of the step, and the parameter list (which gives DDP's buckets);
  - the training step on 1, 2 and 3 ranks through ctrain's shared-memory all-reduce, and on
    2 and 3 ranks through Open MPI over TCP (--shm 0, --mca btl self,tcp): samples/s and the
    step's phases (the runs the model is checked against);
  and build/bench/bench_allreduce on 2 and 3 ranks, shared memory and TCP: the all-reduce
  times the alpha-beta fits for this machine come from.

The model, per step of a rank (weak scaling: the batch per rank is fixed):
  step(p) = forward + backward + exposed(p) + optimizer, samples/s = p * batch / step(p),
  efficiency = step(1) / step(p).
Buckets follow src/parallel/ddp.c: trainable parameters in reverse registration order, the
first bucket capped at 1 MiB, the others at 25 MiB, a gradient of >= 1 MiB closing its
bucket. Bucket k is ready when backward has passed every layer holding one of its
parameters (the per-layer backward times, scaled to the measured backward); buckets go out
one at a time in order, each as soon as it is ready and the previous one is done, and take
  T(n bytes, p) = 2 ceil(log2 p) alpha + 2 (p - 1) / p * n / beta
(reduce-scatter + all-gather, recursive halving/doubling: the bandwidth term of a ring with
a logarithmic latency term). exposed(p) is how far the last bucket ends after backward. For
this machine (one node), T(n, p) is fitted per p to the measured all-reduce times
(alpha + n / beta, least squares), and p ranks on `cores` cores compute max(1, p / cores)
times slower.
"""
import argparse
import json
import math
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATA = os.path.join(ROOT, "docs", "scaling_measured.json")
PLOT = os.path.join(ROOT, "docs", "scaling.png")
MiB = 1 << 20

CASES = {  # name: bench_train arguments (batch per rank), steps per timed repeat
    "cnn": (["--model", "cnn", "--batch", "64", "--data", "fmnist"], 60),
    "cnn_frozen": (["--model", "cnn", "--batch", "64", "--data", "fmnist", "--freeze", "backbone.*"], 60),
    "resnet18": (["--model", "resnet18", "--batch", "32"], 10),
    "resnet18_frozen": (["--model", "resnet18", "--batch", "32", "--freeze",
                         "conv1.*,bn1.*,layer1.*,layer2.*,layer3.*"], 10),
}
# Networks between nodes: latency per message (MPI software included) and the usable share
# of the line rate.
NETWORKS = {
    "InfiniBand 100 Gb/s": dict(alpha=2e-6, beta=100e9 / 8 * 0.9),
    "Ethernet 25 Gb/s": dict(alpha=20e-6, beta=25e9 / 8 * 0.9),
}
FIRST_BUCKET, BUCKET = 1 * MiB, 25 * MiB  # ct_ddp_defaults()


# ---- measuring --------------------------------------------------------------------------

def mpi_env():
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", CT_THREADS="1",
               OMPI_MCA_rmaps_base_oversubscribe="1")
    flags_cpu = open("/proc/cpuinfo").read().split()
    if "avx512bw" in flags_cpu and "avx512vl" in flags_cpu:  # as scripts/benchlib.sh
        env.setdefault("OPENBLAS_CORETYPE", "SkylakeX")
    flags = ["--oversubscribe"] + (["--allow-run-as-root"] if os.getuid() == 0 else [])
    return env, flags


def run_json(cmd, env):
    out = subprocess.run(cmd, env=env, check=True, stdout=subprocess.PIPE, text=True, timeout=1800).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def measure(a):
    env, flags = mpi_env()
    bt, ar = os.path.join(a.build, "bench", "bench_train"), os.path.join(a.build, "bench", "bench_allreduce")
    tcp = ["--mca", "btl", "self,tcp"]
    data = {"cores": os.cpu_count(), "allreduce": [], "cases": {}}
    for p in (2, 3):
        for net, extra, col in (("shm", [], "ctrain_us"), ("tcp", tcp, "nonblocking_us")):
            for r in run_json(["mpirun", *flags, *extra, "-np", str(p), ar], env):
                data["allreduce"].append(dict(net=net, ranks=p, bytes=r["bytes"], us=r[col]))
            print(f"measured allreduce {net} {p} ranks", file=sys.stderr)
    for name, (args, steps) in CASES.items():
        case = {}
        case["layers"] = run_json([bt, *args, "--mode", "layers", "--steps", str(steps), "--warmup", "3"], env)[0]
        runs = []
        for p, net in ((1, "shm"), (2, "shm"), (3, "shm"), (2, "tcp"), (3, "tcp")):
            cmd = [bt, *args, "--mode", "train", "--steps", str(steps), "--warmup", "3", "--repeats", "2"]
            if net == "tcp":
                cmd += ["--shm", "0"]
            launch = ["mpirun", *flags, *(tcp if net == "tcp" else []), "-np", str(p)] if p > 1 else []
            r = run_json(launch + cmd, env)[0]
            r["net"] = net
            runs.append(r)
            print(f"measured {name} {p} ranks {net}: {r['sps']} samples/s", file=sys.stderr)
        case["runs"] = runs
        data["cases"][name] = case
    with open(a.data, "w") as f:
        json.dump(data, f, indent=1)
    print(f"wrote {a.data}", file=sys.stderr)


# ---- the model --------------------------------------------------------------------------

def buckets(params, first=FIRST_BUCKET, cap=BUCKET):
    """ddp.c's plan: lists of parameter names, first bucket first (backward order)."""
    out, cur, size, close_next = [], None, 0, False
    for name, numel, trainable in reversed(params):
        if not trainable:
            continue
        nbytes = numel * 4
        limit = first if len(out) == 1 else cap
        if cur is None or close_next or size + nbytes > limit:
            cur, size = [], 0
            out.append(cur)
        cur.append((name, nbytes))
        size += nbytes
        close_next = nbytes >= first
    return out


def ready_times(layers, backward_s, plan):
    """When each bucket's last gradient is ready, seconds into backward. Backward runs the
    loss, then the layers in reverse order; the per-layer times are scaled to backward_s."""
    ls = layers["layers"]
    mods = [l["name"].split(" ")[0] for l in ls[:-1]]  # "layer1.0.conv1 Conv2d" -> module path
    bwd = [l["bwd_ms"] * 1e-3 for l in ls[:-1]]
    total = sum(bwd) + ls[-1]["bwd_ms"] * 1e-3
    scale = backward_s / total if total > 0 else 1.0
    done_at, t = {}, ls[-1]["bwd_ms"] * 1e-3 * scale
    for i in range(len(mods) - 1, -1, -1):
        t += bwd[i] * scale
        done_at[mods[i]] = t
    out = []
    for b in plan:
        r = 0.0
        for name, _ in b:
            mod = name.rsplit(".", 1)[0] if "." in name else ""
            r = max(r, done_at.get(mod, backward_s))  # a parameter of no leaf layer: at the end
        out.append(r)
    return out


def comm_time(nbytes, p, net):
    if p == 1:
        return 0.0
    if "fit" in net:  # this machine, fitted per rank count
        alpha, beta = net["fit"][p]
        return alpha + nbytes / beta
    return 2 * math.ceil(math.log2(p)) * net["alpha"] + 2 * (p - 1) / p * nbytes / net["beta"]


def exposed(ready, sizes, backward_s, p, net):
    """Seconds the all-reduce runs past the end of backward."""
    free = 0.0
    for r, n in zip(ready, sizes):
        free = max(r, free) + comm_time(n, p, net)
    return max(0.0, free - backward_s)


class Case:
    SPEEDUP = 1.0  # a rank this many times faster than one core of the measuring machine

    def __init__(self, name, d, first=FIRST_BUCKET, cap=BUCKET):
        L = d["layers"]
        self.name = name
        self.batch = L["batch"]
        k = 1e-3 / Case.SPEEDUP
        self.fwd, self.bwd, self.opt = L["forward_ms"] * k, L["backward_ms"] * k, L["optim_ms"] * k
        self.step1 = self.fwd + self.bwd + self.opt
        self.plan = buckets(L["params"], first, cap)
        self.sizes = [sum(n for _, n in b) for b in self.plan]
        self.ready = ready_times(L, self.bwd, self.plan)

    def step(self, p, net, slow=1.0):
        return self.step1 * slow + exposed([r * slow for r in self.ready], self.sizes, self.bwd * slow, p, net)

    def sps(self, p, net, slow=1.0):
        return p * self.batch / self.step(p, net, slow)

    def eff(self, p, net):
        return self.step1 / self.step(p, net)


def fit(points):
    """Least-squares alpha + n / beta through (bytes, seconds) points -> (alpha, beta)."""
    n = len(points)
    mx = sum(b for b, _ in points) / n
    my = sum(t for _, t in points) / n
    sxx = sum((b - mx) ** 2 for b, _ in points)
    slope = sum((b - mx) * (t - my) for b, t in points) / sxx
    slope = max(slope, 1e-15)
    return max(0.0, my - slope * mx), 1.0 / slope


def machine_nets(data):
    nets = {}
    for kind in ("shm", "tcp"):
        f = {}
        for p in (2, 3):
            pts = [(r["bytes"], r["us"] * 1e-6) for r in data["allreduce"] if r["net"] == kind and r["ranks"] == p]
            if pts:
                f[p] = fit(pts)
        nets[kind] = {"fit": f}
    return nets


def check(data, nets):
    """Prediction against the measured 2- and 3-rank runs on this machine."""
    speedup, Case.SPEEDUP = Case.SPEEDUP, 1.0
    try:
        return check_runs(data, nets)
    finally:
        Case.SPEEDUP = speedup


def check_runs(data, nets):
    cores = data["cores"]
    rows = []
    for name, d in data["cases"].items():
        c = Case(name, d)
        one = next(r for r in d["runs"] if r["ranks"] == 1)
        for r in d["runs"]:
            if r["ranks"] == 1:
                continue
            p, net = r["ranks"], nets[r["net"]]
            slow = max(1.0, p / cores)
            pred = c.sps(p, net, slow)
            # the comm model alone: from this run's own compute phases
            comp = (r["forward_ms"] + r["backward_ms"] + r["optim_ms"]) * 1e-3
            bw = r["backward_ms"] * 1e-3
            exp_c = exposed([x * bw / c.bwd for x in c.ready], c.sizes, bw, p, net)
            # the plan must be ddp.c's: the same bucket count as the run reports
            if r["nbuckets"] != len(c.plan):
                sys.exit(f"scaling_model.py: {name}: {len(c.plan)} buckets in the model, {r['nbuckets']} in the run")
            rows.append(dict(case=name, ranks=p, net=r["net"], measured_sps=r["sps"], predicted_sps=round(pred, 1),
                             error=round(pred / r["sps"] - 1, 3), one_rank_sps=one["sps"],
                             measured_wait_ms=round(r["finish_ms"], 3),
                             predicted_wait_ms=round(exp_c * 1e3, 3),
                             predicted_from_own_compute_sps=round(p * c.batch / (comp + exp_c), 1),
                             buckets=len(c.plan)))
    return rows


def knee(c, net, ps):
    """The first rank count at which the all-reduce no longer hides behind backward (more
    than 5% of the step exposed), or None."""
    for p in ps:
        if c.step(p, net) > 1.05 * c.step1:
            return p
    return None


def best_bucket(name, d, net, p):
    """The (first, cap) bucket sizes, MiB, that give the shortest step at p ranks."""
    best = None
    for first in (0.25, 0.5, 1, 2, 4, 8):
        for cap in (1, 2, 4, 8, 16, 25, 50, 100):
            if cap < first:
                continue
            c = Case(name, d, int(first * MiB), int(cap * MiB))
            s = c.step(p, net)
            if best is None or s < best[0] - 1e-12:
                best = (s, first, cap, len(c.plan))
    return best


def project(a):
    data = json.load(open(a.data))
    nets = machine_nets(data)
    print("# check: this machine, predicted vs measured samples/s")
    for row in check(data, nets):
        print(json.dumps(row))
    for kind, n in nets.items():
        for p, (al, be) in n["fit"].items():
            print(json.dumps({"fit": kind, "ranks": p, "alpha_us": round(al * 1e6, 2), "beta_GBps": round(be / 1e9, 2)}))
    ps = [2 ** k for k in range(11)]
    print(f"# projection: one rank per node, {Case.SPEEDUP:g} x this machine's single-core speed")
    proj = {}
    for name, d in data["cases"].items():
        c = Case(name, d)
        for nn, net in NETWORKS.items():
            effs = [round(c.eff(p, net), 3) for p in ps]
            proj[(name, nn)] = effs
            k = knee(c, net, ps[1:])
            row = dict(case=name, network=nn, step1_ms=round(c.step1 * 1e3, 2), backward_ms=round(c.bwd * 1e3, 2),
                       buckets_mib=[round(s / MiB, 3) for s in c.sizes],
                       ready_ms=[round(r * 1e3, 2) for r in c.ready], eff=dict(zip(ps, effs)),
                       sps_1024=round(c.sps(1024, net)), exposed_from=k)
            if k:
                bb = best_bucket(name, d, net, k)
                b1024 = best_bucket(name, d, net, 1024)
                row.update(best_bucket_at_knee=dict(first_mib=bb[1], cap_mib=bb[2], buckets=bb[3],
                                                    eff=round(c.step1 / bb[0], 3)),
                           best_bucket_at_1024=dict(first_mib=b1024[1], cap_mib=b1024[2], buckets=b1024[3],
                                                    eff=round(c.step1 / b1024[0], 3)))
            print(json.dumps(row))
    if a.plot:
        draw(a.plot, data, proj, ps)


def draw(out, data, proj, ps):
    """Two panels, efficiency and samples/s against ranks, with gnuplot (as scripts/plot.py:
    the project draws its plots with gnuplot, nothing beyond the standard library)."""
    sys.path.insert(0, HERE)
    from plot import gp_quote  # noqa: E402
    lines = ["set terminal pngcairo size 1100,450 noenhanced font ',9'", f"set output {gp_quote(out)}"]
    curves = []
    for k, ((name, nn), effs) in enumerate(proj.items()):
        c = Case(name, data["cases"][name])
        lines.append(f"$d{k} << EOD")
        lines += [f"{p} {e:.6g} {c.sps(p, NETWORKS[nn]):.6g}" for p, e in zip(ps, effs)]
        lines.append("EOD")
        color = list(data["cases"]).index(name) + 1
        dash = 1 if nn.startswith("Infini") else 2
        curves.append((k, f"lc {color} dt {dash} pt 7 ps 0.5", f"{name}, {nn}"))
    lines += ["set logscale x 2", "set grid", "set xlabel 'ranks'", "set xrange [0.8:1300]",
              f"set multiplot layout 1,2 title 'ctrain DDP, projected: one rank per node, {Case.SPEEDUP:g} x one core of the measuring machine'",
              "set ylabel 'scaling efficiency = step(1) / step(p)'", "set yrange [0:1.05]", "set key bottom left",
              "plot " + ", ".join(f"$d{k} using 1:2 with linespoints {st} title {gp_quote(t)}" for k, st, t in curves),
              "set logscale y", "set ylabel 'samples/s'", "set yrange [*:*]", "unset key",
              "plot " + ", ".join(f"$d{k} using 1:3 with linespoints {st} notitle" for k, st, _ in curves),
              "unset multiplot", "set output"]
    r = subprocess.run(["gnuplot"], input="\n".join(lines) + "\n", text=True, capture_output=True)
    if r.returncode != 0:
        sys.exit(f"scaling_model.py: gnuplot failed: {r.stderr.strip()}")
    print(f"wrote {out}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", nargs="?", default="project", choices=["measure", "project"])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--plot", default=None, help=f"draw the projection (e.g. {PLOT})")
    ap.add_argument("--speedup", type=float, default=1.0,
                    help="ranks this many times faster than the measured single-core step (e.g. a node's threads)")
    a = ap.parse_args()
    Case.SPEEDUP = a.speedup
    measure(a) if a.cmd == "measure" else project(a)


if __name__ == "__main__":
    main()
