#!/usr/bin/env bash
# names: train_mlp_1rank train_mlp_2rank train_cnn_1rank train_cnn_2rank eval_cnn_1rank step_breakdown rss_cnn_train cnn_layer
# ctrain against PyTorch (scripts/bench_torch.py) on the same machine in the same run, same
# model, per-rank batch 64, Adam, one thread per process (scripts/benchlib.sh's environment):
#   train_mlp_1rank, train_cnn_1rank  samples/s, one rank;
#   train_mlp_2rank, train_cnn_2rank  two ranks: mpirun -np 2 for ctrain, DistributedDataParallel
#                   (gloo) in two processes for PyTorch, ranks pinned one per core on both
#                   sides; scaling_eff = sps_2 / (2 * sps_1) of each side (the 1-rank runs
#                   are made for it even when only the 2-rank line is selected);
#   eval_cnn_1rank  eval + no_grad forward, batch 256;
#   step_breakdown  ctrain's phases of the 2-rank CNN step (from train_cnn_2rank's runs);
#   rss_cnn_train   peak RSS of a fresh process per side, 200 training steps;
#   cnn_layer       per-layer forward/backward ms of the CNN at batch 64, one rank (medians
#                   over 40 steps, one run per side).
# Every run reads the same real Fashion-MNIST training batches on both sides (IDX files in
# memory, a shuffled shard per rank, (x - mean) / std), not synthetic noise: PyTorch runs
# 5-15% faster on real images than on N(0, 1) noise. Each repeat times at least 300 steps.
# The machine is shared and noisy: ROUNDS (default 2) rounds alternate ctrain and PyTorch,
# and the 1- and 2-rank runs of a model back to back, so all see the same noise; each side
# keeps its best run. About 6 minutes on this machine with the defaults.
source "$(cd "$(dirname "$0")" && pwd)/benchlib.sh"
want train_mlp_1rank train_mlp_2rank train_cnn_1rank train_cnn_2rank eval_cnn_1rank step_breakdown \
    rss_cnn_train cnn_layer || exit 0
[ "$have_torch" = 1 ] || echo "bench: PyTorch not found; printing ctrain figures only" >&2
ROUNDS=${ROUNDS:-2}
# steps per timed repeat (after warm-up)
S_MLP=1500 S_CNN=300 S_EVAL=300 S_LAYERS=40 S_RSS=200
if [ "$QUICK" = 1 ]; then ROUNDS=1 S_MLP=20 S_CNN=3 S_EVAL=2 S_LAYERS=3 S_RSS=5; fi
D=(--data fmnist --repeats 1)

for ((r = 0; r < ROUNDS; r++)); do
    for m in mlp cnn; do
        s=S_${m^^}
        if want train_${m}_1rank train_${m}_2rank || { [ $m = cnn ] && want step_breakdown; }; then
            both train_${m}_1rank 1 --model $m --mode train --batch 64 --steps ${!s} --warmup 20 "${D[@]}"
        fi
        if want train_${m}_2rank || { [ $m = cnn ] && want step_breakdown; }; then
            both train_${m}_2rank 2 --model $m --mode train --batch 64 --steps ${!s} --warmup 20 "${D[@]}"
        fi
    done
    if want eval_cnn_1rank; then
        both eval_cnn_1rank 1 --model cnn --mode eval --batch 256 --steps $S_EVAL --warmup 5 "${D[@]}"
    fi
done
# Peak RSS: a fresh process per side running a fixed number of steps.
if want rss_cnn_train; then
    both rss_cnn_train 1 --model cnn --mode train --batch 64 --data fmnist --steps $S_RSS --warmup 0 --repeats 1
fi
if want cnn_layer; then
    both cnn_layers 1 --model cnn --mode layers --batch 64 --data fmnist --steps $S_LAYERS --warmup 5
fi

report <<'EOF_PY'
from benchlib import best, compare, emit, r1, ratio, rss, runs, want

for m in ["mlp", "cnn"]:
    one, two = f"train_{m}_1rank", f"train_{m}_2rank"
    emit(compare(one))
    if not runs(two, "ctrain"):
        continue
    eff = lambda side: ratio(best(two, side)["sps"], 2 * best(one, side)["sps"]) if best(two, side) else None
    emit(compare(two, scaling_eff=eff("ctrain"), torch_scaling_eff=eff("torch")))
    if m == "cnn":
        c, t = best(two, "ctrain"), best(two, "torch")
        emit({"bench": "step_breakdown", "model": "cnn", "ranks": 2,
              **{k: r1(c[k], 3) for k in ["forward_ms", "backward_ms", "comm_wait_ms", "optim_ms",
                                          "prepare_ms", "finish_ms", "step_ms"]},
              "nbuckets": c["nbuckets"], "bytes_reduced": c["bytes_reduced"],
              **{"torch_" + k: r1(t[k], 3) if t else None for k in ["forward_ms", "backward_ms", "optim_ms"]}})
emit(compare("eval_cnn_1rank", batch=256))
if runs("rss_cnn_train", "ctrain"):
    emit(rss("rss_cnn_train", data_mib=round(60000 * 784 * 4 / 2**20, 1)))

if want("cnn_layer"):
    c, t = runs("cnn_layers", "ctrain")[0], (runs("cnn_layers", "torch") or [None])[0]
    tl = {l["name"]: l for l in t["layers"]} if t else {}
    for l in c["layers"]:
        u = tl.get(l["name"])
        emit({"bench": "cnn_layer", "layer": l["name"], "ctrain_fwd_ms": l["fwd_ms"], "ctrain_bwd_ms": l["bwd_ms"],
              "torch_fwd_ms": u["fwd_ms"] if u else None, "torch_bwd_ms": u["bwd_ms"] if u else None})
    emit({"bench": "cnn_layer", "layer": "total step", "ctrain_fwd_ms": r1(c["forward_ms"], 3),
          "ctrain_bwd_ms": r1(c["backward_ms"], 3), "ctrain_optim_ms": r1(c["optim_ms"], 3),
          **{f"torch_{k}_ms": r1(t[f"{v}_ms"], 3) if t else None
             for k, v in [("fwd", "forward"), ("bwd", "backward"), ("optim", "optim")]}})
EOF_PY
