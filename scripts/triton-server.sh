#!/usr/bin/env bash
# Builds the Triton server's own environment (.triton-env) and starts tritonserver from it.
#   scripts/triton-server.sh setup                     build/refresh .triton-env
# The tritonserver binary comes from the nvidia-pytriton wheel; its Python backend stub needs
# numpy<2 (with numpy 2 outputs come back empty) and the running Python's libpython.
set -euo pipefail
cd "$(dirname "$0")/.."
ENV_DIR=${PAM_TRITON_ENV:-.triton-env}
PY=${PYTHON:-python3}
TRITON_REQUIREMENTS=(numpy==1.26.4 onnxruntime==1.32.0 nvidia-pytriton==0.7.0)

cmd=${1:-}
case "$cmd" in
  setup)
    want=$(printf '%s\n' "${TRITON_REQUIREMENTS[@]}" | sha1sum | cut -c1-12)
    if [ -f "$ENV_DIR/.installed-$want" ]; then echo "[triton] $ENV_DIR up to date"; exit 0; fi
    echo "[triton] building $ENV_DIR"
    rm -rf "$ENV_DIR"
    "$PY" -m venv "$ENV_DIR"
    "$ENV_DIR/bin/pip" install -q --upgrade pip
    "$ENV_DIR/bin/pip" install -q "${TRITON_REQUIREMENTS[@]}"
    touch "$ENV_DIR/.installed-$want"
    ;;
  *)
    echo "usage: $0 setup" >&2; exit 2 ;;
esac
