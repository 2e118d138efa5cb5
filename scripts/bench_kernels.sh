#!/usr/bin/env bash
# names: op_share cnn_gflops
# Kernel benchmarks (issue 13, requirements 3 and 5), one JSON line each, ctrain only:
#   op_share    each op's share of a training step (forward + backward ms, the optimizer, and
#               "other": data, DDP, forward of ops outside leaf modules), one rank, one
#               thread, medians over steps: the CNN (batch 64) and ResNet-18 (imagenet stem,
#               3x32x32 synthetic inputs, batch 32). One line per (model, op).
#   cnn_gflops  the CNN training step's useful FLOP rate (direct-convolution and linear
#               FLOPs from the shapes, whatever algorithm runs) as a fraction of the
#               single-thread sgemm rate (1024^3) measured in the same process, rounds
#               alternating both and keeping each one's best; one thread.
# About 2 minutes. ROUNDS and BENCH_QUICK=1 as in scripts/benchlib.sh.
source "$(cd "$(dirname "$0")" && pwd)/benchlib.sh"
want op_share cnn_gflops || exit 0
ROUNDS=${ROUNDS:-5}
S_CNN=40 S_RES=10 S_GF=30
if [ "$QUICK" = 1 ]; then ROUNDS=1 S_CNN=3 S_RES=2 S_GF=3; fi
export CT_THREADS=1 OMP_NUM_THREADS=1

if want op_share; then
    for spec in "cnn 64 $S_CNN" "resnet18 32 $S_RES"; do
        read -r model batch steps <<<"$spec"
        timeout 900 "$B/bench/bench_train" --model "$model" --mode layers --batch "$batch" \
            --steps "$steps" --warmup 3 | "$GLUE_PY" -c '
import json, sys
d = json.load(sys.stdin)
for o in d["ops"]:
    if o.get("ms", o["fwd_ms"] + o["bwd_ms"]) < 0.001:
        continue  # a module type whose op never ran (a BatchNorm that always fuses its ReLU)
    print(json.dumps({"bench": "op_share", "model": d["model"], "batch": d["batch"], "op": o["op"],
                      "fwd_ms": o["fwd_ms"], "bwd_ms": o["bwd_ms"],
                      "ms": o.get("ms", round(o["fwd_ms"] + o["bwd_ms"], 4)), "share": o["share"],
                      "step_ms": d["step_ms"]}), flush=True)'
    done
fi

if want cnn_gflops; then
    timeout 900 "$B/bench/bench_train" --model cnn --mode gflops --batch 64 --steps "$S_GF" \
        --warmup 3 --repeats "$ROUNDS" | "$GLUE_PY" -c '
import json, sys
d = json.load(sys.stdin)
print(json.dumps({"bench": "cnn_gflops", "gflops": d["gflops"], "sgemm_gflops": d["sgemm_gflops"],
                  "fraction": d["fraction"], "step_ms": d["step_ms"], "step_flops": d["step_flops"],
                  "step_ms_all": d["step_ms_all"], "sgemm_gflops_all": d["sgemm_gflops_all"]}), flush=True)'
fi
