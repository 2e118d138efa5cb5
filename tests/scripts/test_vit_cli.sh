#!/usr/bin/env bash
# model.name = vit* through build/ctrain on small Fashion-MNIST subsets: configuration errors
# that name the key, an explicit-keys ViT with torchvision's parameter count, and a linear
# probe on 2 ranks (class_token, conv_proj.*, encoder.* frozen) whose feature cache holds the
# class-token feature only and whose checkpoints keep the backbone bit-identical.
source "$(dirname "$0")/lib.sh"
CFG=$ROOT/examples/vit/fmnist_vit.ini
SMALL=(data.classes=0-1 data.per_class=20 train.batch_size=8 train.log_every=0)

run() { # NAME NP ARGS...
    local name=$1 np=$2 launch=()
    shift 2
    [ "$np" -gt 0 ] && launch=("${MPIRUN[@]}" -np "$np")
    timeout 300 "${launch[@]}" "$CTRAIN" train "$CFG" "${SMALL[@]}" output.dir="$T/$name" "$@" \
        >"$T/$name.out" 2>"$T/$name.err"
    rc=$?
}

run missing 0 model.name=vit
if [ "$rc" -ne 0 ] && contains "$T/missing.err" "model.name = vit needs model.patch_size"; then
    pass "model.name = vit without the architecture keys exits $rc naming model.patch_size"
else
    fail "model.name = vit without keys: status $rc"; show "$T/missing.err"
fi
run channels 0 model.in_channels=3
if [ "$rc" -ne 0 ] && contains "$T/channels.err" "model.in_channels = 3" && contains "$T/channels.err" "[1, 28, 28]"; then
    pass "vit_tiny with model.in_channels = 3 on grey images exits $rc naming both shapes"
else
    fail "in_channels mismatch: status $rc"; show "$T/channels.err"
fi
run heads 0 model.num_heads=3
if [ "$rc" -ne 0 ] && contains "$T/heads.err" "num_heads 3 does not divide hidden_dim 64"; then
    pass "model.num_heads = 3 with hidden_dim 64 is refused"
else
    fail "num_heads 3: status $rc"; show "$T/heads.err"
fi

# explicit keys: torchvision's VisionTransformer(28, 7, 1, 2, 16, 32, num_classes=2), 1 channel
run explicit 0 model.name=vit model.patch_size=7 model.num_layers=1 model.num_heads=2 model.hidden_dim=16 \
    model.mlp_dim=32 train.epochs=1
if [ "$rc" -eq 0 ] && contains "$T/explicit.err" "3378 parameters, 3378 trainable" &&
   [ "$(grep -c '"event":"eval"' "$T/explicit.out")" -eq 1 ]; then
    pass "model.name = vit with explicit keys trains: torchvision's 3378 parameters"
else
    fail "explicit ViT: status $rc"; show "$T/explicit.err"
fi

# linear probe on 2 ranks: only heads.head trains, 64 x 2 + 2 = 130 values
run probe 2 'model.freeze=class_token,conv_proj.*,encoder.*' train.epochs=2
if [ "$rc" -eq 0 ] && contains "$T/probe.err" "130 trainable" &&
   contains "$T/probe.err" "feature cache on" && contains "$T/probe.err" "64 features per sample"; then
    pass "linear probe on 2 ranks: 130 trainable values, the cache holds 64 features (the class token) per sample"
else
    fail "linear probe: status $rc"; show "$T/probe.err"
fi
# the backbone is bit-identical in both checkpoints, the head is not
same=$(python3 - "$T/probe/ckpt-epoch0001.safetensors" "$T/probe/ckpt-epoch0002.safetensors" <<'PY'
import json, struct, sys
def read(p):
    b = open(p, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    return {k: b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]] for k, v in h.items() if k != "__metadata__"}
a, b = read(sys.argv[1]), read(sys.argv[2])
frozen = [k for k in a if k.startswith(("class_token", "conv_proj.", "encoder."))]
head = [k for k in a if k.startswith("heads.")]
print(len(frozen), all(a[k] == b[k] for k in frozen), len(head), all(a[k] != b[k] for k in head))
PY
)
# class_token, conv_proj 2, pos_embedding, 4 blocks of 12, encoder.ln 2: 54 tensors
expect_eq "probe checkpoints: the 54 backbone tensors unchanged, both head tensors changed" "54 True 2 True" "$same"
finish
