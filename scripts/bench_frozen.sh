#!/usr/bin/env bash
# Frozen-backbone benchmarks (transfer learning), one JSON line each:
#   train_frozen_cnn_2rank         ctrain on 2 ranks vs PyTorch DDP (gloo, 2 processes), the CNN
#                                  with its backbone frozen (requires_grad=False, BatchNorm in eval
#                                  mode on both sides) and only the head training; synthetic
#                                  in-memory batches of 64 per rank, 1 thread per rank. ctrain runs
#                                  the backbone every step here, like PyTorch (no feature cache), so
#                                  the work is the same; cached_sps adds the cached run below.
#   train_frozen_cnn_cached_2rank  the CLI on 2 ranks on real Fashion-MNIST (20,000 images,
#                                  data.per_class=2000), 3 epochs: samples/s of epochs 2-3 with the
#                                  feature cache (auto) against train.feature_cache=off, for two
#                                  freezes: a linear probe (backbone.* and head.0.* frozen, only
#                                  the classifier head.3 trains; the cache holds 128 features per
#                                  sample): ctrain_sps, uncached_sps, speedup; and the whole head
#                                  training (backbone.* frozen; the cache holds 3136): head_*.
# Called by scripts/bench.sh, which sets the thread and BLAS environment.
set -euo pipefail
B=${B:-build}
here=$(cd "$(dirname "$0")" && pwd)
source "$here/mpi_env.sh"
ROUNDS=${ROUNDS:-3}
STEPS=${STEPS_FROZEN:-60}
PY=${PYTHON:-/usr/bin/python3}
"$PY" -c 'import torch' 2>/dev/null || PY=""
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

for ((r = 0; r < ROUNDS; r++)); do
    timeout 600 mpirun "${CT_MPIRUN_FLAGS[@]}" -np 2 "$B/bench/bench_train" --model cnn --mode train \
        --batch 64 --steps "$STEPS" --warmup 5 --repeats 1 --freeze 'backbone.*' >>"$out/ct"
    [ -z "$PY" ] || timeout 600 "$PY" "$here/bench_torch.py" --ranks 2 --model cnn --mode train \
        --batch 64 --steps "$STEPS" --warmup 5 --repeats 1 --freeze backbone >>"$out/pt"
done

for freeze in probe head; do
    globs='backbone.*'
    [ $freeze = probe ] && globs='backbone.*,head.0.*'
    for cache in auto off; do
        run="run_${freeze}_$cache"
        timeout 1200 mpirun "${CT_MPIRUN_FLAGS[@]}" -np 2 "$B/ctrain" train "$here/../examples/fmnist_cnn.ini" \
            model.freeze="$globs" data.per_class=2000 train.epochs=3 train.log_every=0 \
            train.feature_cache=$cache output.dir="$out/$run" >/dev/null 2>"$out/$run.err" ||
            { cat "$out/$run.err" >&2; exit 1; }
    done
done

python3 - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
def lines(p):
    return [json.loads(l) for l in open(p) if l.strip()] if os.path.exists(p) else []
def best(p):
    rs = lines(p)
    return max(r["sps"] for r in rs) if rs else None
def later_epochs(run):
    rs = [r for r in lines(os.path.join(out, run, "metrics.jsonl")) if r["epoch"] >= 2]
    return sum(r["samples_per_s"] for r in rs) / len(rs)
ct, pt = best(os.path.join(out, "ct")), best(os.path.join(out, "pt"))
cached, uncached = later_epochs("run_probe_auto"), later_epochs("run_probe_off")
hcached, huncached = later_epochs("run_head_auto"), later_epochs("run_head_off")
r = lambda a, b: None if a is None or b is None else round(a / b, 3)
print(json.dumps({"bench": "train_frozen_cnn_2rank", "frozen": "backbone.*", "ctrain_sps": round(ct, 1),
                  "torch_sps": None if pt is None else round(pt, 1), "ratio": r(ct, pt),
                  "cached_sps": round(hcached, 1), "ratio_cached": r(hcached, pt)}))
print(json.dumps({"bench": "train_frozen_cnn_cached_2rank", "frozen": "backbone.*,head.0.*",
                  "ctrain_sps": round(cached, 1), "uncached_sps": round(uncached, 1), "speedup": r(cached, uncached),
                  "head_frozen": "backbone.*", "head_ctrain_sps": round(hcached, 1),
                  "head_uncached_sps": round(huncached, 1), "head_speedup": r(hcached, huncached)}))
PY
