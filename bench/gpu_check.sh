#!/usr/bin/env bash
# On a machine with a CUDA GPU, in under 5 minutes: the `gpu` tests (CUDA against the CPU, the
# precision options), then the speed table for ResNet20-4 (the paper's model) at every size,
# then the iDLG row on LeNet. Prints the figures; exits non-zero if a test fails.
#
#     bash bench/gpu_check.sh            # from the repository root, after `make setup`
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python
"$PY" - <<'PYEOF'
import torch, sys
if not torch.cuda.is_available():
    sys.exit("bench/gpu_check.sh needs a CUDA GPU: torch.cuda.is_available() is False here")
print("GPU:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| CUDA", torch.version.cuda)
PYEOF
echo "== gpu tests (CUDA vs CPU; precision options)"
log=$(mktemp)
"$PY" -m pytest -q -m gpu -s -p no:cacheprovider tests/test_gpu.py >"$log" 2>&1 || status=1
grep -E "PSNR|passed|failed|skipped|Error|^FAILED|^E " "$log" | head -40
[ "${status:-0}" = 0 ] || echo "gpu tests FAILED (full log: $log)"
echo "== speed: ResNet20-4, IG and the aware attacker, ours vs the plain loop (ms per iteration)"
"$PY" bench/attack_speed.py --device cuda --models resnet20-4 --attacks ig,aware \
    --sizes 1x1:200,1x4,8x1,8x4,32x1 --iterations 20 --repeats 1
echo "== speed: iDLG on LeNet"
"$PY" bench/attack_speed.py --device cuda --models lenet --attacks idlg --sizes 1x1:50,8x4 --iterations 10 --repeats 1
echo "== TF32 (an option; off by default): ResNet20-4, 8x1, 100 iterations, against the float32 reference"
"$PY" bench/attack_speed.py --device cuda --models resnet20-4 --attacks ig --sizes 8x1:100 --repeats 1 --precision tf32
exit ${status:-0}
