#!/usr/bin/env bash
# names: sweep_8ckpt
# One JSON line: the best (of ROUNDS, default 3) wall time of `ctrain sweep` over 8 checkpoints of the example CNN on the
# Fashion-MNIST test set (10000 samples each) with 1 and with 2 ranks (groups of one rank),
# launch and output writing included, and the speedup. The checkpoints are copies of one
# briefly trained CNN: evaluation costs the same whatever the weights. About 1 minute.
source "$(cd "$(dirname "$0")" && pwd)/benchlib.sh"
want sweep_8ckpt || exit 0
ROUNDS=${ROUNDS:-3}
[ "$QUICK" = 0 ] || ROUNDS=1
cfg=$root/examples/fmnist_cnn.ini
tmp=$out

"$B/ctrain" train "$cfg" train.epochs=1 data.per_class=10 train.log_every=never \
    output.dir="$tmp/run" >"$tmp/train.log" 2>&1 || { cat "$tmp/train.log" >&2; exit 1; }
mkdir "$tmp/ckpt"
for i in 1 2 3 4 5 6 7 8; do cp "$tmp/run/ckpt-epoch0001.safetensors" "$tmp/ckpt/c$i.safetensors"; done

sweep_s() { # NP -> "start end" of the whole mpirun, after checking all 8 jobs succeeded
    local t0=$EPOCHREALTIME
    mpirun "${CT_MPIRUN_FLAGS[@]}" -np "$1" "$B/ctrain" sweep "$cfg" \
        "sweep.checkpoints=$tmp/ckpt/*.safetensors" sweep.out="$tmp/out$1" >"$tmp/sweep$1.log" 2>&1 ||
        { cat "$tmp/sweep$1.log" >&2; exit 1; }
    local t1=$EPOCHREALTIME
    [ "$(grep -c ',ok,' "$tmp/out$1/results.csv")" -eq 8 ] || { echo "bench_sweep: jobs failed" >&2; exit 1; }
    echo "$t0 $t1"
}
# The machine is noisy: ROUNDS alternating rounds (default 3), the best time of each.
best() { python3 -c 'import sys; print(min(float(v) for v in sys.argv[1:]))' "$@"; }
t1=() t2=()
for ((r = 0; r < ROUNDS; r++)); do
    read -r s e <<<"$(sweep_s 1)"; t1+=("$(python3 -c "print($e - $s)")")
    read -r s e <<<"$(sweep_s 2)"; t2+=("$(python3 -c "print($e - $s)")")
done
# job_s: mean seconds per job (load + evaluate) from results.csv; if it grows from np1 to
# np2 the ranks were competing for cores or memory bandwidth, not waiting on the queue.
python3 - "$(best "${t1[@]}")" "$(best "${t2[@]}")" "$tmp/out1/results.csv" "$tmp/out2/results.csv" <<'PY'
import csv, sys
a, b = map(float, sys.argv[1:3])
ja, jb = (sum(float(r["seconds"]) for r in rows) / len(rows)
          for rows in (list(csv.DictReader(open(p))) for p in sys.argv[3:5]))
print(f'{{"bench":"sweep_8ckpt","model":"cnn","samples_per_ckpt":10000,"np1_s":{a:.2f},'
      f'"np2_s":{b:.2f},"speedup":{a / b:.2f},"np1_job_s":{ja:.2f},"np2_job_s":{jb:.2f}}}')
PY
