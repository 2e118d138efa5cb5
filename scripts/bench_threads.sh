#!/usr/bin/env bash
# Intra-op threads, one JSON line each (one rank, the CNN, batch 64, Adam, real Fashion-MNIST
# batches on both sides):
#   threads_eff               ctrain with 2 threads against ctrain with 1:
#                             eff = sps_2threads / (2 * sps_1thread)
#   train_cnn_1rank_2threads  ctrain with 2 threads against PyTorch with 2 intra-op threads
#                             (torch.set_num_threads(2)): ratio = ctrain_sps / torch_sps
# Each round runs ctrain 1 thread, ctrain 2 threads and PyTorch 2 threads back to back (same
# noise for all), 2 timed repeats each; the best samples/s of each side is kept. Both sides
# run under the same OpenMP environment (libgomp's defaults). BENCH=name runs just that line.
# Called by scripts/bench.sh, which sets the BLAS environment.
set -euo pipefail
B=${B:-build}
here=$(cd "$(dirname "$0")" && pwd)
ROUNDS=${ROUNDS:-3}
STEPS=${STEPS_THREADS:-300}
PY=${PYTHON:-/usr/bin/python3}
"$PY" -c 'import torch' 2>/dev/null || PY=""
want() { [ -z "${BENCH:-}" ] || [[ ",$BENCH," == *",$1,"* ]]; }
want threads_eff || want train_cnn_1rank_2threads || exit 0
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
cut -d' ' -f1-3 /proc/loadavg >"$out/load_start"
args=(--model cnn --mode train --batch 64 --data fmnist --steps "$STEPS" --warmup 10 --repeats 2)
for ((r = 0; r < ROUNDS; r++)); do
    if want threads_eff; then
        CT_THREADS=1 OMP_NUM_THREADS=1 timeout 900 "$B/bench/bench_train" "${args[@]}" >>"$out/ct1"
    fi
    CT_THREADS=2 OMP_NUM_THREADS=2 timeout 900 "$B/bench/bench_train" "${args[@]}" >>"$out/ct2"
    if want train_cnn_1rank_2threads && [ -n "$PY" ]; then
        OMP_NUM_THREADS=2 timeout 900 "$PY" "$here/bench_torch.py" --ranks 1 --threads 2 "${args[@]}" >>"$out/pt2"
    fi
done
cut -d' ' -f1-3 /proc/loadavg >"$out/load_end"
BENCH=${BENCH:-} "${PY:-python3}" - "$out" <<'PYEOF'
import json, os, sys

out = sys.argv[1]
want = lambda n: not os.environ["BENCH"] or n in os.environ["BENCH"].split(",")
def sps(f):
    p = os.path.join(out, f)
    return [json.loads(l)["sps"] for l in open(p) if l.strip()] if os.path.exists(p) else []
load = lambda f: [float(v) for v in open(os.path.join(out, f)).read().split()]
machine = {"loadavg_start": load("load_start"), "loadavg_end": load("load_end")}
c1, c2, t2 = sps("ct1"), sps("ct2"), sps("pt2")
b1, b2, bt = (max(v) if v else None for v in (c1, c2, t2))
if want("threads_eff"):
    print(json.dumps({"bench": "threads_eff", "sps_1thread": b1, "sps_2threads": b2,
                      "eff": round(b2 / (2 * b1), 3), "sps_1thread_all": c1, "sps_2threads_all": c2,
                      **machine}), flush=True)
if want("train_cnn_1rank_2threads"):
    print(json.dumps({"bench": "train_cnn_1rank_2threads", "ctrain_sps": b2, "torch_sps": bt,
                      "ratio": round(b2 / bt, 3) if bt else None, "ctrain_sps_all": c2,
                      "torch_sps_all": t2, **machine}), flush=True)
PYEOF
