#!/usr/bin/env bash
# ctrain sweep end to end, and scripts/plot.py. Trains a few small checkpoints,
# adds a missing path, a truncated file, a file that is not safetensors and a checkpoint of
# another model to the job list, then sweeps with 1 rank, with 3 and 4 ranks in groups of 1
# and 2, and with the round-robin fallback. Checks: every job appears once, failed rows name
# their file, accuracies agree across rank/group layouts and with `ctrain eval`, good rows
# saw the whole test set, the tables and the PNG exist. Also data set x override variants
# and the command's errors. Prints "N passed, M failed"; exits non-zero on any failure.
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
B=${B:-build}
case $B in /*) ;; *) B=$root/$B ;; esac
ct=$B/ctrain
source "$root/scripts/mpi_env.sh"
# LeakSanitizer (SANITIZE=1) reports Open MPI's own allocations, which it never frees.
export ASAN_OPTIONS="${ASAN_OPTIONS:-}:detect_leaks=0"
export OPENBLAS_NUM_THREADS=1
FM=/usr/share/datasets/fashion-mnist
cfg=$root/examples/fmnist_mlp.ini
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

passed=0
failed=0
# check DESCRIPTION COMMAND...: one counted assertion
check() {
    local what=$1
    shift
    if "$@" >"$tmp/check.out" 2>&1; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "FAIL: $what"
        sed 's/^/    /' "$tmp/check.out" | head -20
    fi
}
# expect_rc WANT COMMAND...: the command's exit status is WANT
expect_rc() {
    local want=$1
    shift
    "$@"
    local rc=$?
    [ "$rc" -eq "$want" ] || { echo "exit status $rc, expected $want"; return 1; }
}
is_png() { [ "$(head -c 8 "$1" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ]; }

# ---- CSV checks, in Python for proper CSV parsing ----------------------------------------
cat >"$tmp/csvcheck.py" <<'EOF'
import csv, json, sys

def rows(path):
    with open(path, newline="") as f:
        r = list(csv.DictReader(f))
    return r

def cmd_validate(path, njobs, nfailed, samples):
    """Jobs 0..n-1 once each, every (checkpoint, dataset, overrides) once, failed rows name
    their file, good rows saw `samples` samples (or any count if samples == 'any')."""
    r = rows(path)
    hdr = "job,checkpoint,dataset,overrides,status,accuracy,loss,samples,seconds,error"
    assert open(path).readline().strip() == hdr, "header"
    assert len(r) == int(njobs), f"{len(r)} rows, expected {njobs}"
    assert sorted(int(x["job"]) for x in r) == list(range(int(njobs))), "job numbers"
    keys = [(x["checkpoint"], x["dataset"], x["overrides"]) for x in r]
    assert len(set(keys)) == len(keys), "a job appears twice"
    bad = [x for x in r if x["status"] == "failed"]
    assert len(bad) == int(nfailed), f"{len(bad)} failed rows, expected {nfailed}"
    for x in r:
        if x["status"] == "failed":
            assert x["checkpoint"] in x["error"], f"reason does not name the file: {x}"
            assert x["accuracy"] == x["loss"] == x["samples"] == "", x
        else:
            assert x["status"] == "ok" and x["error"] == "", x
            assert 0 <= float(x["accuracy"]) <= 1 and float(x["loss"]) > 0, x
            if samples != "any":
                assert int(x["samples"]) == int(samples), x

def cmd_same(a, b):
    """Same jobs, statuses, reasons, accuracies and sample counts; loss within 1e-5."""
    ra = {(x["checkpoint"], x["dataset"], x["overrides"]): x for x in rows(a)}
    rb = {(x["checkpoint"], x["dataset"], x["overrides"]): x for x in rows(b)}
    assert ra.keys() == rb.keys(), "different jobs"
    for k in ra:
        x, y = ra[k], rb[k]
        for f in ("status", "accuracy", "samples", "error"):
            assert x[f] == y[f], f"{k} {f}: {x[f]!r} vs {y[f]!r}"
        if x["status"] == "ok":
            assert abs(float(x["loss"]) - float(y["loss"])) <= 1e-5, (k, x["loss"], y["loss"])

def cmd_eval(path, ckpt, dataset, overrides, eval_json, loss_tol):
    """The sweep row equals `ctrain eval`'s output for the same checkpoint and config."""
    ev = [json.loads(l) for l in open(eval_json) if l.startswith('{"event":"eval"')][0]
    x = [x for x in rows(path) if (x["checkpoint"], x["dataset"], x["overrides"]) == (ckpt, dataset, overrides)]
    assert len(x) == 1, f"no row for {ckpt}"
    x = x[0]
    assert x["status"] == "ok", x
    assert x["accuracy"] == f"{ev['accuracy']:.6f}", (x["accuracy"], ev["accuracy"])
    assert int(x["samples"]) == ev["samples"], (x["samples"], ev["samples"])
    assert abs(float(x["loss"]) - ev["loss"]) <= float(loss_tol), (x["loss"], ev["loss"])

def cmd_status(path, ckpt, dataset, overrides, status, samples):
    x = [x for x in rows(path) if (x["checkpoint"], x["dataset"], x["overrides"]) == (ckpt, dataset, overrides)]
    assert len(x) == 1 and x[0]["status"] == status, x
    if status == "ok":
        assert x[0]["samples"] == samples, (x[0]["samples"], samples)

def cmd_jobs_lines(log, njobs):
    """One sweep_job line per job and one summary line on stdout."""
    ls = [json.loads(l) for l in open(log) if l.startswith("{")]
    jobs = sorted(l["job"] for l in ls if l.get("event") == "sweep_job")
    assert jobs == list(range(int(njobs))), jobs
    s = [l for l in ls if l.get("event") == "sweep"]
    assert len(s) == 1 and s[0]["jobs"] == int(njobs), s

globals()["cmd_" + sys.argv[1]](*sys.argv[2:])
EOF
csvq() { python3 "$tmp/csvcheck.py" "$@"; }

# ---- checkpoints --------------------------------------------------------------------------
cd "$tmp"
"$ct" train "$cfg" train.epochs=3 data.per_class=100 train.log_every=never output.dir="$tmp/run" \
    >"$tmp/train.log" 2>&1 || { echo "training the test checkpoints failed"; cat "$tmp/train.log"; exit 1; }
# a checkpoint of another model: a 5-class head
"$ct" train "$cfg" train.epochs=1 data.per_class=100 data.classes=0-4 train.log_every=never \
    output.dir="$tmp/five" >"$tmp/train5.log" 2>&1 || { echo "training failed"; cat "$tmp/train5.log"; exit 1; }
mkdir -p "$tmp/bad"
head -c 3000 "$tmp/run/ckpt-epoch0001.safetensors" >"$tmp/bad/corrupt.safetensors"
echo "not a checkpoint" >"$tmp/bad/notes.safetensors"
cat >"$tmp/list.txt" <<EOF
# more jobs: globs work here too; a duplicate is dropped
$tmp/bad/*.safetensors

$tmp/five/ckpt-epoch0001.safetensors
$tmp/run/ckpt-epoch0001.safetensors
EOF
# 3 good + missing + corrupt + notes + five-class = 7 jobs, 4 of them failing
CK="sweep.checkpoints=$tmp/run/ckpt-*.safetensors,$tmp/missing.safetensors,@$tmp/list.txt"

for e in 1 2 3; do
    "$ct" eval "$cfg" --checkpoint "$tmp/run/ckpt-epoch000$e.safetensors" >"$tmp/eval$e.json" 2>/dev/null
done

# ---- the same sweep on different layouts ---------------------------------------------------
run_sweep() { # NAME NP GROUP_SIZE [mpirun args...]
    local name=$1 np=$2 gs=$3
    shift 3
    if [ "$np" = 0 ]; then
        "$ct" sweep "$cfg" "$CK" sweep.out="$tmp/$name" sweep.group_size="$gs" \
            >"$tmp/$name.log" 2>"$tmp/$name.err"
    else
        timeout 300 mpirun "${CT_MPIRUN_FLAGS[@]}" "$@" -np "$np" "$ct" sweep "$cfg" "$CK" \
            sweep.out="$tmp/$name" sweep.group_size="$gs" >"$tmp/$name.log" 2>"$tmp/$name.err"
    fi
}
run_sweep s1 0 1
rc=$?
check "1 rank: exit status 3 (finished, some jobs failed)" test "$rc" -eq 3
check "1 rank: every job once, failed rows name their file" csvq validate "$tmp/s1/results.csv" 7 4 10000
check "1 rank: one sweep_job line per job" csvq jobs_lines "$tmp/s1.log" 7
for e in 1 2 3; do
    check "1 rank: epoch $e equals ctrain eval" \
        csvq eval "$tmp/s1/results.csv" "$tmp/run/ckpt-epoch000$e.safetensors" "$FM" "" "$tmp/eval$e.json" 0
done
check "missing file: reason" grep -q "missing.safetensors,$FM,,failed,,,,[0-9.]*,$tmp/missing.safetensors: cannot open" "$tmp/s1/results.csv"
check "other model: reason" grep -q "five/ckpt-epoch0001.safetensors: does not match the model" "$tmp/s1/results.csv"
check "results.md has a row per job" test "$(grep -c '^| [0-9]' "$tmp/s1/results.md")" -eq 7
check "results.md marks the failures" test "$(grep -c '\*\*failed\*\*' "$tmp/s1/results.md")" -eq 4
check "results.png is a PNG" is_png "$tmp/s1/results.png"
check "plot.gp is kept" grep -q "results.png" "$tmp/s1/plot.gp"

for layout in "s3 3 1" "s4 4 2" "s3g2 3 2"; do
    set -- $layout
    run_sweep "$1" "$2" "$3"
    rc=$?
    check "-np $2 group_size $3: exit status 3" test "$rc" -eq 3
    check "-np $2 group_size $3: every job once" csvq validate "$tmp/$1/results.csv" 7 4 10000
    check "-np $2 group_size $3: one sweep_job line per job" csvq jobs_lines "$tmp/$1.log" 7
    check "-np $2 group_size $3: same results as 1 rank" csvq same "$tmp/s1/results.csv" "$tmp/$1/results.csv"
    check "-np $2 group_size $3: results.png" is_png "$tmp/$1/results.png"
    groups=$(( ($2 + $3 - 1) / $3 ))
    check "-np $2 group_size $3: $groups groups" grep -q "\"groups\":$groups,\"queue\":\"dynamic\"" "$tmp/$1.log"
done

# Open MPI over TCP with only osc/rdma has no one-sided window: jobs are dealt round-robin
OMPI_MCA_osc=rdma run_sweep rr 2 1 --mca btl self,tcp
rc=$?
check "round-robin fallback: exit status 3" test "$rc" -eq 3
check "round-robin fallback: says so" grep -q "round-robin" "$tmp/rr.err"
check "round-robin fallback: same results" csvq same "$tmp/s1/results.csv" "$tmp/rr/results.csv"

# ---- data sets x override groups -----------------------------------------------------------
python3 - "$FM" "$tmp/sub" <<'EOF'
import gzip, os, struct, sys
src, dst = sys.argv[1:]
os.makedirs(dst)
n = 1500  # the first 1500 test samples, as plain (uncompressed) IDX
img = gzip.open(f"{src}/t10k-images-idx3-ubyte.gz").read()
lab = gzip.open(f"{src}/t10k-labels-idx1-ubyte.gz").read()
open(f"{dst}/t10k-images-idx3-ubyte", "wb").write(struct.pack(">IIII", 0x803, n, 28, 28) + img[16:16 + n * 784])
open(f"{dst}/t10k-labels-idx1-ubyte", "wb").write(struct.pack(">II", 0x801, n) + lab[8:8 + n])
print(sum(1 for b in lab[8:8 + n] if b < 5), file=open(f"{dst}/n_low", "w"))
EOF
nlow=$(cat "$tmp/sub/n_low")
E3=$tmp/run/ckpt-epoch0003.safetensors
F5=$tmp/five/ckpt-epoch0001.safetensors
timeout 300 mpirun "${CT_MPIRUN_FLAGS[@]}" -np 2 "$ct" sweep "$cfg" "sweep.checkpoints=$E3,$F5" \
    "sweep.datasets=$tmp/sub, $FM" "sweep.overrides=| data.classes=0-4" sweep.out="$tmp/var" \
    >"$tmp/var.log" 2>"$tmp/var.err"
rc=$?
check "variants: exit status 3" test "$rc" -eq 3
check "variants: 2 checkpoints x 2 data sets x 2 groups, each once" csvq validate "$tmp/var/results.csv" 8 4 any
check "variants: 10-class checkpoint on the subset" csvq status "$tmp/var/results.csv" "$E3" "$tmp/sub" "" ok 1500
check "variants: 10-class checkpoint, 5-class config fails" csvq status "$tmp/var/results.csv" "$E3" "$FM" "data.classes=0-4" failed ""
check "variants: 5-class checkpoint, 5 classes of the subset" csvq status "$tmp/var/results.csv" "$F5" "$tmp/sub" "data.classes=0-4" ok "$nlow"
check "variants: 5-class checkpoint, 5 classes of the full set" csvq status "$tmp/var/results.csv" "$F5" "$FM" "data.classes=0-4" ok 5000
check "variants: 5-class checkpoint, 10-class config fails" csvq status "$tmp/var/results.csv" "$F5" "$FM" "" failed ""
"$ct" eval "$cfg" --checkpoint "$E3" data.dir="$tmp/sub" >"$tmp/eval_sub.json" 2>/dev/null
"$ct" eval "$cfg" --checkpoint "$F5" data.classes=0-4 >"$tmp/eval_five.json" 2>/dev/null
check "variants: subset row equals ctrain eval" csvq eval "$tmp/var/results.csv" "$E3" "$tmp/sub" "" "$tmp/eval_sub.json" 1e-5
check "variants: 5-class row equals ctrain eval" csvq eval "$tmp/var/results.csv" "$F5" "$FM" "data.classes=0-4" "$tmp/eval_five.json" 1e-5
check "variants: results.md shows both columns" grep -q "| dataset | overrides |" "$tmp/var/results.md"
check "variants: results.png" is_png "$tmp/var/results.png"

# ---- exit statuses and errors --------------------------------------------------------------
check "all good: exit status 0" expect_rc 0 "$ct" sweep "$cfg" "sweep.checkpoints=$tmp/run/ckpt-*.safetensors" \
    sweep.out="$tmp/good"
check "all good: 3 ok rows" csvq validate "$tmp/good/results.csv" 3 0 10000
check "default out dir is <output.dir>/sweep" expect_rc 0 "$ct" sweep "$cfg" "sweep.checkpoints=$E3" \
    output.dir="$tmp/outdir"
check "default out dir has the tables" test -s "$tmp/outdir/sweep/results.csv" -a -s "$tmp/outdir/sweep/results.md"
"$ct" sweep "$cfg" >"$tmp/e1.log" 2>"$tmp/e1.err"
rc=$?
check "no checkpoints: exit status 1" test "$rc" -eq 1
check "no checkpoints: says so" grep -q "sweep.checkpoints is empty" "$tmp/e1.err"
timeout 120 mpirun "${CT_MPIRUN_FLAGS[@]}" -np 2 "$ct" sweep "$cfg" "sweep.checkpoints=@$tmp/nolist.txt" \
    >"$tmp/e2.log" 2>"$tmp/e2.err"
rc=$?
check "missing list file on 2 ranks: exit status 1, no hang" test "$rc" -eq 1
check "missing list file: named" grep -q "sweep.checkpoints: list .*nolist.txt: cannot open" "$tmp/e2.err"
"$ct" sweep "$cfg" "sweep.checkpoints=$E3" "sweep.overrides=model.dropout=2" >"$tmp/e3.log" 2>"$tmp/e3.err"
rc=$?
check "bad override group: exit status 1" test "$rc" -eq 1
check "bad override group: named" grep -q "sweep.overrides.*group 1.*model.dropout" "$tmp/e3.err"
timeout 120 mpirun "${CT_MPIRUN_FLAGS[@]}" -np 2 "$ct" sweep "$cfg" "sweep.checkpoints=$E3" \
    "sweep.datasets=$tmp/nodata" sweep.out="$tmp/nodata_out" >"$tmp/e4.log" 2>"$tmp/e4.err"
rc=$?
check "missing data set: a failed row, exit status 3" test "$rc" -eq 3
check "missing data set: reason names it" grep -q "failed,.*$tmp/nodata/t10k-images-idx3-ubyte: missing file" "$tmp/nodata_out/results.csv"

# ---- scripts/plot.py ---------------------------------------------------------------
PM="python3 $root/scripts/plot.py"
check "plot_metrics: run dir" $PM "$tmp/run"
check "plot_metrics: run dir -> metrics.png" is_png "$tmp/run/metrics.png"
check "plot_metrics: JSONL and -o" $PM "$tmp/run/metrics.jsonl" -o "$tmp/m.png" --script "$tmp/m.gp"
check "plot_metrics: -o is a PNG" is_png "$tmp/m.png"
acc3=$(python3 -c "import json,sys; print([json.loads(l) for l in open(sys.argv[1])][-1]['eval_accuracy'])" "$tmp/run/metrics.jsonl")
check "plot_metrics: the script holds the metrics" grep -qx "3 $acc3" "$tmp/m.gp"
# a resumed run repeats an epoch: the later line wins
{ cat "$tmp/run/metrics.jsonl"; echo '{"epoch":3,"train_loss":0.5,"eval_loss":0.6,"eval_accuracy":0.9}'; } >"$tmp/resumed.jsonl"
check "plot_metrics: repeated epoch" $PM "$tmp/resumed.jsonl" -o "$tmp/r.png" --script "$tmp/r.gp"
check "plot_metrics: later line wins" test "$(grep -c '^3 ' "$tmp/r.gp")" -eq 3 -a "$(grep -cx '3 0.9' "$tmp/r.gp")" -eq 1
printf '{"epoch":1,"train_loss":1.0}\nnot json\n' >"$tmp/broken.jsonl"
$PM "$tmp/broken.jsonl" -o "$tmp/b.png" 2>"$tmp/broken.err"
rc=$?
check "plot_metrics: a bad line is an error" test "$rc" -eq 1
check "plot_metrics: ... naming file:line" grep -q "broken.jsonl:2: not JSON" "$tmp/broken.err"
check "plot_metrics: no PNG from a failed run" test ! -e "$tmp/b.png"
check "plot_metrics: missing input" expect_rc 1 $PM "$tmp/nothing"
echo '{"event":"x"}' >"$tmp/empty.jsonl"
check "plot_metrics: no epoch records" expect_rc 1 $PM "$tmp/empty.jsonl"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
