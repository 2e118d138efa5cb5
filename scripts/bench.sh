#!/usr/bin/env bash
# Runs every benchmark; each prints one JSON object per line.
#
# 1. build/bench/bench_core: core micro-benchmarks (linear_mlp, alloc, nograd_forward), and
#    build/bench/bench_allreduce under mpirun: all-reduce costs behind DDP's choices (MPI's,
#    with libnbc's ring and its default, and ctrain's own through shared memory).
# 2. ctrain against PyTorch (scripts/bench_torch.py) on the same machine in the same run,
#    same model, per-rank batch, Adam, and one thread per process (OMP_NUM_THREADS,
#    OPENBLAS_NUM_THREADS = 1, torch.set_num_threads(1)); OPENBLAS_CORETYPE=SkylakeX for both
#    sides on AVX-512 machines (OpenBLAS 0.3.21 otherwise falls back to slow kernels).
#    Throughput runs use synthetic in-memory batches on both sides (no loader cost timed);
#    the peak-RSS run uses the real Fashion-MNIST training set on both sides.
#    The machine is shared and noisy, so each comparison runs ROUNDS (default 5) rounds,
#    alternating ctrain and PyTorch (and 1 and 2 ranks) so all see the same noise, and keeps
#    each side's best samples/s (2 timed repeats per round). A two-rank run needs both
#    virtual CPUs quiet at once, so it needs more samples than a one-rank run to find a
#    quiet spell: on this host one vCPU at a time slows down for seconds.
#    Two ranks: mpirun -np 2 for ctrain, DistributedDataParallel (gloo) in two processes
#    for PyTorch; ranks are pinned one per core on both sides.
#    Lines: train_mlp_1rank, train_cnn_1rank, eval_cnn_1rank, rss_cnn_train,
#    train_mlp_2rank, train_cnn_2rank (with scaling_eff = sps_2 / (2 * sps_1), both ctrain),
#    step_breakdown (ctrain, 2 ranks, CNN), and cnn_layer (per-layer forward/backward ms of
#    the CNN at batch 64, one rank, both frameworks; one round).
#    Without torch the ctrain figures are printed with null for PyTorch.
# Knobs: ROUNDS, BENCH_QUICK=1 (a few steps only, to check the plumbing), PYTHON (the
# interpreter with torch; default /usr/bin/python3 if it has torch, else python3).
set -euo pipefail
B=${B:-build}
here=$(cd "$(dirname "$0")" && pwd)
source "$here/mpi_env.sh"
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
if [ -z "${OPENBLAS_CORETYPE:-}" ] && grep -qw avx512bw /proc/cpuinfo && grep -qw avx512vl /proc/cpuinfo; then
    export OPENBLAS_CORETYPE=SkylakeX
fi
# BENCH=threads_eff,train_cnn_1rank_2threads runs only those lines (scripts/bench_threads.sh).
# BENCH=op_share,cnn_gflops the same for the kernel lines (scripts/bench_kernels.sh).
if [ -n "${BENCH:-}" ]; then
    B="$B" bash "$here/bench_threads.sh"
    B="$B" bash "$here/bench_kernels.sh"
    exit 0
fi

"$B/bench/bench_core"
# All-reduce costs on 2 and 3 ranks, with libnbc's ring (as ctrain runs) and its default.
for np in 2 3; do
    for alg in ring default; do
        env=()
        [ $alg = default ] && env=(-x OMPI_MCA_coll_libnbc_iallreduce_algorithm=0)
        timeout 300 mpirun "${CT_MPIRUN_FLAGS[@]}" "${env[@]}" -np $np "$B/bench/bench_allreduce"
    done
done

PY=${PYTHON:-}
if [ -z "$PY" ]; then
    for p in /usr/bin/python3 python3; do
        if "$p" -c 'import torch' 2>/dev/null; then PY=$p; break; fi
    done
fi
have_torch=0
if [ -n "$PY" ] && "$PY" -c 'import torch' 2>/dev/null; then have_torch=1; fi
[ "$have_torch" = 1 ] || echo "bench: PyTorch not found; printing ctrain figures only" >&2
GLUE_PY=${PY:-python3}

ROUNDS=${ROUNDS:-5}
# steps per timed repeat (after warm-up): a few seconds each at this machine's speed
S_MLP=600 S_CNN=60 S_EVAL=6 S_LAYERS=40 S_RSS=200
if [ "${BENCH_QUICK:-0}" = 1 ]; then ROUNDS=1 S_MLP=20 S_CNN=3 S_EVAL=1 S_LAYERS=3 S_RSS=5; fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
cut -d' ' -f1-3 /proc/loadavg >"$out/load_start"

ct() { # name ranks args...: one ctrain run, its JSON appended to $out/name.ctrain
    local name=$1 np=$2
    shift 2
    if [ "$np" = 1 ]; then
        timeout 600 "$B/bench/bench_train" "$@" >>"$out/$name.ctrain"
    else
        timeout 600 mpirun "${CT_MPIRUN_FLAGS[@]}" -np "$np" "$B/bench/bench_train" "$@" >>"$out/$name.ctrain"
    fi
}
pt() { # name ranks args...: one PyTorch run, appended to $out/name.torch
    local name=$1 np=$2
    shift 2
    [ "$have_torch" = 1 ] || return 0
    timeout 600 "$PY" "$here/bench_torch.py" --ranks "$np" "$@" >>"$out/$name.torch"
}

both() { # name ranks args...: ctrain, then PyTorch, each keeping its best of 2 repeats
    ct "$@" --repeats 2
    pt "$@" --repeats 2
}

# ROUNDS rounds; each runs every comparison once, the 1-rank and 2-rank runs of a model
# back to back, so that scaling_eff compares runs that saw the same machine.
for ((r = 0; r < ROUNDS; r++)); do
    both train_mlp_1rank 1 --model mlp --mode train --batch 64 --steps $S_MLP --warmup 50
    both train_mlp_2rank 2 --model mlp --mode train --batch 64 --steps $S_MLP --warmup 50
    both train_cnn_1rank 1 --model cnn --mode train --batch 64 --steps $S_CNN --warmup 5
    both train_cnn_2rank 2 --model cnn --mode train --batch 64 --steps $S_CNN --warmup 5
    both eval_cnn_1rank 1 --model cnn --mode eval --batch 1000 --steps $S_EVAL --warmup 1
done
# Peak RSS: a fresh process per side running a fixed number of steps on real data.
ct rss_cnn_train 1 --model cnn --mode train --batch 64 --data fmnist --steps $S_RSS --warmup 0 --repeats 1
pt rss_cnn_train 1 --model cnn --mode train --batch 64 --data fmnist --steps $S_RSS --warmup 0 --repeats 1
ct cnn_layers 1 --model cnn --mode layers --batch 64 --steps $S_LAYERS --warmup 5
pt cnn_layers 1 --model cnn --mode layers --batch 64 --steps $S_LAYERS --warmup 5

B="$B" ROUNDS=$ROUNDS bash "$here/bench_kernels.sh"
cut -d' ' -f1-3 /proc/loadavg >"$out/load_end"
ROUNDS=$ROUNDS "$GLUE_PY" - "$out" <<'EOF'
import json, os, sys

out = sys.argv[1]

def runs(name, side):
    p = os.path.join(out, f"{name}.{side}")
    if not os.path.exists(p):
        return []
    return [json.loads(l) for l in open(p) if l.strip()]

def best(name, side):
    rs = runs(name, side)
    return max(rs, key=lambda r: r["sps"]) if rs else None

def r1(x, n=1):
    return None if x is None else round(x, n)

def ratio(a, b):
    return None if a is None or b is None or b == 0 else round(a / b, 3)

def emit(d):
    print(json.dumps(d), flush=True)

sps1 = {}
for name in ["train_mlp_1rank", "train_cnn_1rank", "eval_cnn_1rank", "train_mlp_2rank", "train_cnn_2rank"]:
    c, t = best(name, "ctrain"), best(name, "torch")
    cs, ts = c["sps"], (t["sps"] if t else None)
    d = {"bench": name, "ctrain_sps": r1(cs), "torch_sps": r1(ts), "ratio": ratio(cs, ts)}
    if name.startswith("train_") and name.endswith("_1rank"):
        sps1[name] = cs
    elif name.endswith("_2rank"):
        d["scaling_eff"] = ratio(cs, 2 * sps1[name.replace("2rank", "1rank")])
        d["torch_scaling_eff"] = None if t is None else ratio(ts, 2 * best(name.replace("2rank", "1rank"), "torch")["sps"])
    d["ctrain_sps_all"] = [r["sps"] for r in runs(name, "ctrain")]
    d["torch_sps_all"] = [r["sps"] for r in runs(name, "torch")]
    emit(d)
    if name == "train_cnn_2rank":
        emit({"bench": "step_breakdown", "model": "cnn", "ranks": 2,
              **{k: r1(c[k], 3) for k in ["forward_ms", "backward_ms", "comm_wait_ms", "optim_ms"]},
              "prepare_ms": r1(c["prepare_ms"], 3), "finish_ms": r1(c["finish_ms"], 3),
              "step_ms": r1(c["step_ms"], 3), "nbuckets": c["nbuckets"], "bytes_reduced": c["bytes_reduced"],
              "torch_forward_ms": r1(t["forward_ms"], 3) if t else None,
              "torch_backward_ms": r1(t["backward_ms"], 3) if t else None,
              "torch_optim_ms": r1(t["optim_ms"], 3) if t else None})

c, t = runs("rss_cnn_train", "ctrain")[0], (runs("rss_cnn_train", "torch") or [None])[0]
emit({"bench": "rss_cnn_train", "ctrain_mib": c["max_rss_mib"], "torch_mib": t["max_rss_mib"] if t else None,
      "ratio": ratio(c["max_rss_mib"], t["max_rss_mib"]) if t else None, "steps": c["steps"],
      "ctrain_start_mib": c["rss_start_mib"], "torch_start_mib": t["rss_start_mib"] if t else None,
      "data_mib": round(60000 * 784 * 4 / 2**20, 1)})

c, t = runs("cnn_layers", "ctrain")[0], (runs("cnn_layers", "torch") or [None])[0]
tl = {l["name"]: l for l in t["layers"]} if t else {}
for l in c["layers"]:
    u = tl.get(l["name"])
    emit({"bench": "cnn_layer", "layer": l["name"], "ctrain_fwd_ms": l["fwd_ms"], "ctrain_bwd_ms": l["bwd_ms"],
          "torch_fwd_ms": u["fwd_ms"] if u else None, "torch_bwd_ms": u["bwd_ms"] if u else None})
emit({"bench": "cnn_layer", "layer": "total step", "ctrain_fwd_ms": r1(c["forward_ms"], 3),
      "ctrain_bwd_ms": r1(c["backward_ms"], 3), "ctrain_optim_ms": r1(c["optim_ms"], 3),
      "torch_fwd_ms": r1(t["forward_ms"], 3) if t else None, "torch_bwd_ms": r1(t["backward_ms"], 3) if t else None,
      "torch_optim_ms": r1(t["optim_ms"], 3) if t else None})
# The machine is shared: its load average (1, 5, 15 min) around the comparisons says how
# much other work may have disturbed them.
emit({"bench": "machine", "cpus": os.cpu_count(),
      "loadavg_start": [float(v) for v in open(os.path.join(out, "load_start")).read().split()],
      "loadavg_end": [float(v) for v in open(os.path.join(out, "load_end")).read().split()],
      "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"), "rounds": int(os.environ["ROUNDS"])})
EOF

# The sweep benchmark (sweep_8ckpt) and the frozen-backbone benchmarks.
B="$B" ROUNDS=$ROUNDS bash "$here/bench_sweep.sh"
B="$B" ROUNDS=$ROUNDS bash "$here/bench_frozen.sh"
# The image loader (loader_folder, train_from_folder).
B="$B" ROUNDS=$ROUNDS bash "$here/bench_loader.sh"
B="$B" ROUNDS=$ROUNDS bash "$here/bench_threads.sh"
