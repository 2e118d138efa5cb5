#!/usr/bin/env bash
# names: train_frozen_cnn_2rank train_frozen_cnn_cached_2rank
# Frozen-backbone benchmarks (transfer learning), one JSON line each, about 2 minutes:
#   train_frozen_cnn_2rank         ctrain on 2 ranks vs PyTorch DDP (gloo, 2 processes), the CNN
#                                  with its backbone frozen (requires_grad=False, BatchNorm in eval
#                                  mode on both sides) and only the head training; real
#                                  Fashion-MNIST batches of 64 per rank, 1 thread per rank, 300
#                                  steps. ctrain runs the backbone every step here, like PyTorch
#                                  (no feature cache), so the work is the same; cached_sps adds
#                                  the cached run below.
#   train_frozen_cnn_cached_2rank  the CLI on 2 ranks on real Fashion-MNIST (20,000 images,
#                                  data.per_class=2000), 3 epochs: samples/s of epochs 2-3 with the
#                                  feature cache (auto) against train.feature_cache=off, for two
#                                  freezes: a linear probe (backbone.* and head.0.* frozen, only
#                                  the classifier head.3 trains; the cache holds 128 features per
#                                  sample): ctrain_sps, uncached_sps, speedup; and the whole head
#                                  training (backbone.* frozen; the cache holds 3136): head_*.
source "$(cd "$(dirname "$0")" && pwd)/benchlib.sh"
want train_frozen_cnn_2rank train_frozen_cnn_cached_2rank || exit 0
ROUNDS=${ROUNDS:-2}
STEPS=${STEPS_FROZEN:-300}
if [ "$QUICK" = 1 ]; then ROUNDS=1 STEPS=3; fi

if want train_frozen_cnn_2rank; then
    for ((r = 0; r < ROUNDS; r++)); do
        both frozen 2 --model cnn --mode train --batch 64 --data fmnist --steps "$STEPS" --warmup 10 \
            --repeats 1 --freeze 'backbone.*'
    done
fi

for freeze in probe head; do
    globs='backbone.*'
    [ $freeze = probe ] && globs='backbone.*,head.0.*'
    for cache in auto off; do
        run="run_${freeze}_$cache"
        timeout 1200 mpirun "${CT_MPIRUN_FLAGS[@]}" -np 2 "$B/ctrain" train "$root/examples/fmnist_cnn.ini" \
            model.freeze="$globs" data.per_class=2000 train.epochs=3 train.log_every=0 \
            train.feature_cache=$cache output.dir="$out/$run" >/dev/null 2>"$out/$run.err" ||
            { cat "$out/$run.err" >&2; exit 1; }
    done
done

report <<'PY'
from benchlib import compare, emit, epochs_sps, r1, ratio
cached, uncached = epochs_sps("run_probe_auto"), epochs_sps("run_probe_off")
hcached, huncached = epochs_sps("run_head_auto"), epochs_sps("run_head_off")
d = compare("frozen", frozen="backbone.*", cached_sps=r1(hcached))
d["bench"] = "train_frozen_cnn_2rank"
d["ratio_cached"] = ratio(hcached, d["torch_sps"])
emit(d)
emit({"bench": "train_frozen_cnn_cached_2rank", "frozen": "backbone.*,head.0.*",
      "ctrain_sps": r1(cached), "uncached_sps": r1(uncached), "speedup": ratio(cached, uncached),
      "head_frozen": "backbone.*", "head_ctrain_sps": r1(hcached),
      "head_uncached_sps": r1(huncached), "head_speedup": ratio(hcached, huncached)})
PY
