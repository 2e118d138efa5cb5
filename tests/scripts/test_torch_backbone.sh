#!/usr/bin/env bash
# A backbone from PyTorch, end to end, at a small scale:
#   1. scripts/torch_backbone.py pretrain: torch trains ctrain's built-in CNN on classes 0-4
#      and exports its state_dict to safetensors; `ctrain eval` of that file (strict) must
#      count the same correct answers as torch did on the same test set.
#   2. ctrain train examples/transfer/from_torch.ini: a fresh head for classes 5-9 over the
#      frozen torch backbone, on 1 rank and on 2 ranks (mpirun). In every checkpoint the
#      backbone's parameters and BatchNorm buffers are bit-identical to the export and the
#      head is not; the head changes between epochs.
#   3. scripts/torch_backbone.py evaluate loads the fine-tuned checkpoint into PyTorch
#      (strict, model entries only) and must count the same correct answers out of the same
#      samples as ctrain's last evaluation, with the same loss; `ctrain eval` of the same
#      checkpoint (the full model, no feature cache) must print ctrain train's numbers.
#   4. Control: with bn_eval_when_frozen = false the frozen backbone's BatchNorm runs in train
#      mode and its running statistics change, so the check in 2 can fail.
# Prints "N passed, M failed"; exits 1 on a failure. Without torch: "SKIP: torch not available".
set -u
cd "$(dirname "$0")/../.."
B=${B:-build}
PY=${TORCH_PYTHON:-/usr/bin/python3}
if ! "$PY" -c 'import torch, numpy' >/dev/null 2>&1; then
    echo "SKIP: torch not available"
    exit 0
fi
ctrain="$B/ctrain"
[ -x "$ctrain" ] || { echo "test_torch_backbone.sh: $ctrain is not built (make $ctrain)"; exit 1; }
source scripts/mpi_env.sh
# Open MPI's own allocations are never freed: no leak reports for ctrain under LeakSanitizer.
export ASAN_OPTIONS="${ASAN_OPTIONS:-}:detect_leaks=0"
# torch uses OpenBLAS too; give it the fast kernels as build/ctrain does for itself.
if [ -z "${OPENBLAS_CORETYPE:-}" ] && grep -qw avx512f /proc/cpuinfo 2>/dev/null &&
   grep -qw avx512bw /proc/cpuinfo && grep -qw avx512dq /proc/cpuinfo && grep -qw avx512vl /proc/cpuinfo; then
    export OPENBLAS_CORETYPE=SkylakeX
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ct_torchbb.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
pass=0
fail=0
ok() { echo "PASS $1"; pass=$((pass + 1)); }
bad() { echo "FAIL $1"; fail=$((fail + 1)); }
# Runs a checker and counts its PASS/FAIL lines; a checker that dies is a failure too.
tally() {
    local out rc
    out=$("$@" 2>&1)
    rc=$?
    echo "$out"
    pass=$((pass + $(grep -c '^PASS ' <<<"$out")))
    fail=$((fail + $(grep -c '^FAIL ' <<<"$out")))
    [ $rc -eq 0 ] || bad "checker exited with status $rc: $*"
}
finish() {
    echo "$pass passed, $fail failed"
    [ "$fail" -eq 0 ] && [ "$pass" -gt 0 ]
    exit
}
last_eval() { grep '"event":"eval"' "$1" | tail -n 1; }
check=tests/scripts/torch_backbone_check.py
export_st="$tmp/torch_backbone.safetensors"

# 1. pretrain in torch (1000 samples, one epoch) and evaluate the export in ctrain
if "$PY" scripts/torch_backbone.py pretrain --out "$export_st" --classes 0-4 --per-class 200 \
        --epochs 1 --seed 3 >"$tmp/pretrain.out" 2>"$tmp/pretrain.err" && [ -s "$export_st" ]; then
    ok "torch pretrain wrote $(basename "$export_st"): $(tail -n 1 "$tmp/pretrain.out")"
else
    bad "torch pretrain: $(cat "$tmp/pretrain.err")"
    finish
fi
if "$ctrain" eval examples/fmnist_cnn.ini --checkpoint "$export_st" data.classes=0-4 \
        >"$tmp/eval_export.out" 2>"$tmp/eval_export.err"; then
    ok "ctrain eval loads the torch export strict"
    tally "$PY" "$check" same-eval "torch export on classes 0-4, ctrain vs torch" \
        "$(last_eval "$tmp/eval_export.out")" "$(tail -n 1 "$tmp/pretrain.out")"
else
    bad "ctrain eval of the torch export: $(cat "$tmp/eval_export.err")"
fi

# 2 and 3. fine-tune in ctrain over the frozen torch backbone, evaluate the result in torch
finetune() { # NAME NP EPOCHS [overrides...]
    local name=$1 np=$2 epochs=$3 launch=()
    shift 3
    [ "$np" -gt 1 ] && launch=(mpirun "${CT_MPIRUN_FLAGS[@]}" -np "$np")
    if timeout 300 "${launch[@]}" "$ctrain" train examples/transfer/from_torch.ini \
            model.init_from="$export_st" output.dir="$tmp/$name" data.per_class=100 \
            train.epochs="$epochs" output.checkpoint_every=1 "$@" \
            >"$tmp/$name.out" 2>"$tmp/$name.err" &&
       [ "$(grep -c '"event":"eval"' "$tmp/$name.out")" -eq "$epochs" ]; then
        ok "$name: ctrain train on $np rank(s), $epochs epochs: $(last_eval "$tmp/$name.out")"
        return 0
    fi
    bad "$name: ctrain train on $np rank(s): $(tail -n 5 "$tmp/$name.err")"
    return 1
}
torch_eval() { # NAME
    local ck="$tmp/$1/$(cat "$tmp/$1/latest")"
    if "$PY" scripts/torch_backbone.py evaluate --checkpoint "$ck" --classes 5-9 \
            >"$tmp/$1.torch" 2>"$tmp/$1.torch.err"; then
        tally "$PY" "$check" same-eval "$1: fine-tuned model, ctrain vs torch" \
            "$(last_eval "$tmp/$1.out")" "$(tail -n 1 "$tmp/$1.torch")"
    else
        bad "$1: torch_backbone.py evaluate: $(cat "$tmp/$1.torch.err")"
    fi
}

if finetune np1 1 3; then
    grep -q "init_from .* (strict): excluded: head.0.weight" "$tmp/np1.err" &&
        ok "np1: init_from loaded the export strict, head.* excluded" ||
        bad "np1: no strict init_from line in: $(grep init_from "$tmp/np1.err")"
    tally "$PY" "$check" frozen "$export_st" "$tmp/np1"
    torch_eval np1
    # strict in torch too: a model with 4 outputs must refuse the 5-class checkpoint
    if "$PY" scripts/torch_backbone.py evaluate --checkpoint "$tmp/np1/$(cat "$tmp/np1/latest")" \
            --classes 5-8 >/dev/null 2>"$tmp/np1.wrong"; then
        bad "np1: torch_backbone.py evaluate --classes 5-8 accepted a 5-class checkpoint"
    else
        grep -q "size mismatch for head.3.weight" "$tmp/np1.wrong" &&
            ok "np1: torch_backbone.py evaluate --classes 5-8 refuses the 5-class head (strict)" ||
            bad "np1: evaluate --classes 5-8 failed without naming head.3: $(cat "$tmp/np1.wrong")"
    fi
    ck="$tmp/np1/$(cat "$tmp/np1/latest")"
    if "$ctrain" eval examples/transfer/from_torch.ini --checkpoint "$ck" model.init_from="$export_st" \
            >"$tmp/np1.eval" 2>"$tmp/np1.eval.err"; then
        a=$(last_eval "$tmp/np1.out" | sed -E 's/.*("loss".*)/\1/')
        b=$(last_eval "$tmp/np1.eval" | sed -E 's/.*("loss".*)/\1/')
        [ "$a" = "$b" ] && ok "np1: ctrain eval of the checkpoint prints train's last evaluation: $b" ||
            bad "np1: ctrain eval of the checkpoint: $b, train printed $a"
    else
        bad "np1: ctrain eval: $(cat "$tmp/np1.eval.err")"
    fi
fi
if finetune np2 2 2; then
    tally "$PY" "$check" frozen "$export_st" "$tmp/np2"
    torch_eval np2
fi

# 4. control: BatchNorm of the frozen backbone in train mode updates its running statistics
if finetune bn_train 1 2 model.bn_eval_when_frozen=false data.per_class=20; then
    tally "$PY" "$check" frozen "$export_st" "$tmp/bn_train" --bn-changes
fi
finish
