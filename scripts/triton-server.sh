#!/usr/bin/env bash
# Builds the Triton server's own environment (.triton-env) and starts tritonserver from it.
#   scripts/triton-server.sh setup       build/refresh .triton-env (install.sh calls this)
#   scripts/triton-server.sh start --model-repository DIR --http-port P --grpc-port Q
#                                  [--metrics-port M] [--address 127.0.0.1] [-- TRITON ARGS...]
#                                        run tritonserver in the foreground (exec: the caller
#                                        owns the process; pam/bench/triton_server.py wraps it)
#   scripts/triton-server.sh binary      print the tritonserver path (after setup)
# The tritonserver binary comes from the nvidia-pytriton wheel (2.51, Python backend only). Its
# Python backend stub runs the first `python3` on PATH and links the system libpython, and it
# needs numpy<2 (with numpy 2 every output comes back empty): hence this separate environment.
set -euo pipefail
CALLER_DIR=$(pwd)  # relative paths given by the caller are relative to here
cd "$(dirname "$0")/.."
ENV_DIR=${PAM_TRITON_ENV:-.triton-env}
PY=${PYTHON:-python3}
TRITON_REQUIREMENTS=(numpy==1.26.4 onnxruntime==1.32.0 nvidia-pytriton==0.7.0)

log() { printf '[triton] %s\n' "$*" >&2; }

site_packages() { "$ENV_DIR/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }

# A backend directory holding the Python backend plus the stub built for this env's Python
# (pytriton ships one stub per Python version and copies the right one at run time, as we do).
prepare_backends() {
  local sp dist pyver
  sp=$(site_packages)
  dist="$sp/pytriton/tritonserver"
  pyver=$("$ENV_DIR/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  rm -rf "$ENV_DIR/triton"
  mkdir -p "$ENV_DIR/triton/backends/python"
  cp "$dist/backends/python/libtriton_python.so" "$dist/backends/python/triton_python_backend_utils.py" \
     "$ENV_DIR/triton/backends/python/"
  cp "$dist/python_backend_stubs/$pyver/triton_python_backend_stub" "$ENV_DIR/triton/backends/python/"
  cp -r "$dist/caches" "$ENV_DIR/triton/caches"
}

setup() {
  local want
  want=$(printf '%s\n' "${TRITON_REQUIREMENTS[@]}" v2-backends | sha1sum | cut -c1-12)
  if [ -f "$ENV_DIR/.installed-$want" ]; then log "$ENV_DIR up to date"; return 0; fi
  log "building $ENV_DIR"
  rm -rf "$ENV_DIR"
  "$PY" -m venv "$ENV_DIR"
  "$ENV_DIR/bin/pip" install -q --upgrade pip
  "$ENV_DIR/bin/pip" install -q "${TRITON_REQUIREMENTS[@]}"
  prepare_backends
  touch "$ENV_DIR/.installed-$want"
}

binary() { echo "$(site_packages)/pytriton/tritonserver/bin/tritonserver"; }

start() {
  local repo="" http="" grpc="" metrics="" address=127.0.0.1
  while [ $# -gt 0 ]; do
    case "$1" in
      --model-repository) repo=$2; [[ "$repo" = /* ]] || repo="$CALLER_DIR/$repo"; shift 2 ;;
      --http-port) http=$2; shift 2 ;;
      --grpc-port) grpc=$2; shift 2 ;;
      --metrics-port) metrics=$2; shift 2 ;;
      --address) address=$2; shift 2 ;;
      --) shift; break ;;
      *) echo "triton-server.sh start: unknown argument $1" >&2; exit 2 ;;
    esac
  done
  if [ -z "$repo" ] || [ -z "$http" ] || [ -z "$grpc" ]; then
    echo "usage: $0 start --model-repository DIR --http-port P --grpc-port Q [--metrics-port M]" >&2
    exit 2
  fi
  [ -d "$repo" ] || { echo "triton-server.sh: no model repository at $repo" >&2; exit 2; }
  setup
  local sp libdir metrics_args
  sp=$(site_packages)
  libdir=$("$ENV_DIR/bin/python" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')
  export PATH="$(cd "$ENV_DIR/bin" && pwd):$PATH"
  export LD_LIBRARY_PATH="$libdir:$sp/nvidia_pytriton.libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  if [ -n "$metrics" ]; then
    metrics_args=(--allow-metrics=true --allow-gpu-metrics=false --metrics-address="$address" --metrics-port="$metrics")
  else
    metrics_args=(--allow-metrics=false)
  fi
  log "tritonserver on $address: http $http, grpc $grpc${metrics:+, metrics $metrics}; repository $repo"
  exec "$(binary)" \
    --model-repository="$(cd "$repo" && pwd)" \
    --backend-directory="$(cd "$ENV_DIR/triton/backends" && pwd)" \
    --cache-directory="$(cd "$ENV_DIR/triton/caches" && pwd)" \
    --http-address="$address" --http-port="$http" \
    --grpc-address="$address" --grpc-port="$grpc" \
    "${metrics_args[@]}" \
    --allow-sagemaker=false --allow-vertex-ai=false \
    --pinned-memory-pool-byte-size=0 \
    --strict-readiness=true --exit-on-error=true \
    --log-verbose=0 "$@"
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  setup) setup ;;
  start) start "$@" ;;
  binary) binary ;;
  *) echo "usage: $0 setup | start --model-repository DIR --http-port P --grpc-port Q [--metrics-port M] | binary" >&2; exit 2 ;;
esac
