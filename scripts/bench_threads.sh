#!/usr/bin/env bash
# names: threads_eff train_cnn_1rank_2threads hybrid
# Intra-op threads, one JSON line each (the CNN, batch 64 per rank, Adam, real Fashion-MNIST
# batches on both sides, 300 timed steps), about 2 minutes:
#   threads_eff               ctrain with 2 threads against ctrain with 1:
#                             eff = sps_2threads / (2 * sps_1thread)
#   train_cnn_1rank_2threads  ctrain with 2 threads against PyTorch with 2 intra-op threads
#                             (torch.set_num_threads(2)): ratio = ctrain_sps / torch_sps
#   hybrid                    ctrain's two ways to use both cores: 1 rank x 2 threads against
#                             2 ranks x 1 thread (mpirun -np 2, DDP), samples/s of each and
#                             ratio = threads / ranks
# Each round (ROUNDS, default 2) runs ctrain 1 thread, ctrain 2 threads, PyTorch 2 threads and
# ctrain 2 ranks back to back (same noise for all); the best samples/s of each side is kept.
# Both sides run under the same OpenMP environment (libgomp's defaults).
source "$(cd "$(dirname "$0")" && pwd)/benchlib.sh"
want threads_eff train_cnn_1rank_2threads hybrid || exit 0
ROUNDS=${ROUNDS:-2}
STEPS=${STEPS_THREADS:-300}
if [ "$QUICK" = 1 ]; then ROUNDS=1 STEPS=3; fi
args=(--model cnn --mode train --batch 64 --data fmnist --steps "$STEPS" --warmup 10 --repeats 1)
for ((r = 0; r < ROUNDS; r++)); do
    if want threads_eff; then
        CT_THREADS=1 OMP_NUM_THREADS=1 ct ct1 1 "${args[@]}"
    fi
    CT_THREADS=2 OMP_NUM_THREADS=2 ct ct2 1 "${args[@]}"
    if want train_cnn_1rank_2threads; then
        OMP_NUM_THREADS=2 pt ct2 1 --threads 2 "${args[@]}"
    fi
    if want hybrid; then
        CT_THREADS=1 OMP_NUM_THREADS=1 ct ranks2 2 "${args[@]}"
    fi
done
report <<'PYEOF'
from benchlib import best, compare, emit, ratio, runs
sps = lambda name, side="ctrain": [r["sps"] for r in runs(name, side)]
top = lambda name, side="ctrain": best(name, side)["sps"] if runs(name, side) else None
b1, b2, br = top("ct1"), top("ct2"), top("ranks2")
emit({"bench": "threads_eff", "sps_1thread": b1, "sps_2threads": b2,
      "eff": ratio(b2, 2 * b1) if b1 else None, "sps_1thread_all": sps("ct1"), "sps_2threads_all": sps("ct2")})
d = compare("ct2")
d["bench"] = "train_cnn_1rank_2threads"
emit(d)
emit({"bench": "hybrid", "sps_1rank_2threads": b2, "sps_2ranks_1thread": br, "ratio": ratio(b2, br),
      "sps_1rank_2threads_all": sps("ct2"), "sps_2ranks_1thread_all": sps("ranks2")})
PYEOF
