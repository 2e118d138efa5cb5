#!/usr/bin/env bash
# `make bench`: runs the benchmark blocks scripts/bench_<block>.sh; each prints one JSON object
# per line. BENCH=name,... (the "bench" names of the lines) runs only the blocks that print
# one of them, and each block prints only the selected lines; default: everything.
# A block declares its names on a "# names: ..." line near its top (scripts/benchlib.sh), so a
# new scripts/bench_<block>.sh is picked up by itself.
# Blocks and their time on this machine with the defaults (2 vCPUs, lightly loaded; the whole
# run stays under 25 minutes):
#   micro      linear_mlp alloc nograd_forward allreduce                      ~1 min
#   compare    train_{mlp,cnn}_{1,2}rank eval_cnn_1rank step_breakdown
#              rss_cnn_train cnn_layer                                        ~6 min
#   backbones  ResNet-18 and the small ViT against torchvision                ~5 min
#   frozen     train_frozen_cnn_2rank train_frozen_cnn_cached_2rank           ~2 min
#   loader     loader_folder train_from_folder                                ~4 min
#   sweep      sweep_8ckpt                                                    ~1 min
#   threads    threads_eff train_cnn_1rank_2threads hybrid                    ~2 min
# The last line, {"bench":"machine",...}, gives the load average around the run and each
# block's wall time and the blocks that failed (bench.sh then exits 1 after running the rest).
# `make bench BENCH=list` prints the names and exits.
# Knobs: BENCH, ROUNDS, BENCH_QUICK=1, PYTHON (scripts/benchlib.sh).
source "$(cd "$(dirname "$0")" && pwd)/benchlib.sh"

names_of() { sed -n 's/^# names: //p' "$1" | head -1; }
# This order first (cheap lines early), then any other block alphabetically.
files=()
for b in micro compare backbones frozen loader sweep threads; do
    [ ! -f "$here/bench_$b.sh" ] || files+=("$here/bench_$b.sh")
done
for f in "$here"/bench_*.sh; do [[ " ${files[*]} " == *" $f "* ]] || files+=("$f"); done
blocks=()
all_names=()
for f in "${files[@]}"; do
    n=$(names_of "$f")
    [ -n "$n" ] || continue
    blocks+=("$f")
    read -ra ns <<<"$n"
    all_names+=("${ns[@]}")
done
if [ "$BENCH" = list ]; then
    for f in "${blocks[@]}"; do b=${f##*/bench_}; echo "${b%.sh}: $(names_of "$f")"; done
    exit 0
fi
IFS=, read -ra sel <<<"$BENCH"
for s in "${sel[@]}"; do
    [[ " ${all_names[*]} machine " == *" $s "* ]] ||
        { echo "bench: no benchmark named '$s' (known: ${all_names[*]})" >&2; exit 2; }
done

cut -d' ' -f1-3 /proc/loadavg >"$out/load_start"
: >"$out/blocks"
: >"$out/failed"
# A failing block is reported and the others still run: a 20-minute run is not lost to one.
for f in "${blocks[@]}"; do
    read -ra ns <<<"$(names_of "$f")"
    want "${ns[@]}" || continue
    t0=$EPOCHREALTIME
    b=${f##*/bench_}
    bash "$f" || { echo "bench: block ${b%.sh} ($f) failed" >&2; echo "${b%.sh}" >>"$out/failed"; }
    echo "${b%.sh} $(python3 -c "print(round($EPOCHREALTIME - $t0))")" >>"$out/blocks"
done
cut -d' ' -f1-3 /proc/loadavg >"$out/load_end"

report <<'PY'
import os
from benchlib import OUT
import json
load = lambda f: [float(v) for v in open(os.path.join(OUT, f)).read().split()]
block_s = {b: int(s) for b, s in (l.split() for l in open(os.path.join(OUT, "blocks")) if l.strip())}
# The machine is shared: its load average (1, 5, 15 min) around the run says how much other
# work may have disturbed it.
print(json.dumps({"bench": "machine", "cpus": os.cpu_count(), "loadavg_start": load("load_start"),
                  "loadavg_end": load("load_end"), "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
                  "rounds": os.environ.get("ROUNDS"), "block_s": block_s, "total_s": sum(block_s.values()),
                  "failed": open(os.path.join(OUT, "failed")).read().split()}))
PY
[ ! -s "$out/failed" ] || exit 1
