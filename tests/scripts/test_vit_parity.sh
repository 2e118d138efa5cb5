#!/usr/bin/env bash
# torchvision parity for the VisionTransformer: tests/parity/test_vit_parity.py builds
# torchvision's VisionTransformer (two small configurations, and vit_b_16 for one forward at
# 224 px), loads the state_dicts strict into $B/tests/parity/vit_dump and compares logits,
# loss, every gradient and the SGD step; exports back with strict=True; checks refusals.
# Without torchvision it prints "SKIP: ...".
set -u
cd "$(dirname "$0")/../.."
B=${B:-build}
PY=${PARITY_PYTHON:-/usr/bin/python3}
[ -x "$B/tests/parity/vit_dump" ] || { echo "test_vit_parity.sh: $B/tests/parity/vit_dump is not built"; exit 1; }
timeout 900 "$PY" tests/parity/test_vit_parity.py "$B"
