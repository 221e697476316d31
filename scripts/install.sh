#!/usr/bin/env bash
# The one set-up script: system packages, the project's virtualenv, the Triton server's own env.
# Used by the README's two commands, by .ci/run and by the container recipe (deploy/Containerfile).
# Idempotent: a second run only checks. Flags: --no-system (skip apt), --no-triton.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
WITH_SYSTEM=1
WITH_TRITON=1
for arg in "$@"; do
  case "$arg" in
    --no-system) WITH_SYSTEM=0 ;;
    --no-triton) WITH_TRITON=0 ;;
    *) echo "install.sh: unknown flag $arg" >&2; exit 2 ;;
  esac
done
log() { printf '[install] %s\n' "$*"; }

# System packages: PostgreSQL (user store tests), wrk (load generator), Chromium + driver
# (curation page test). All from Debian's registry; nothing is downloaded by test tools.
SYSTEM_PACKAGES=(postgresql wrk chromium chromium-driver)
if [ "$WITH_SYSTEM" = 1 ] && command -v apt-get >/dev/null 2>&1; then
  missing=()
  for p in "${SYSTEM_PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    log "apt-get install ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    log "system packages present"
  fi
fi

# The project's environment (numpy 2). torch is pinned to the CPU build in pyproject's extra.
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi
stamp=.venv/.installed-$(cat pyproject.toml requirements/constraints.txt | sha1sum | cut -c1-12)
if [ ! -f "$stamp" ]; then
  log "installing the project (train, serve, test extras)"
  .venv/bin/pip install -q -c requirements/constraints.txt -e '.[train,serve,test]'
  rm -f .venv/.installed-*; touch "$stamp"
else
  log ".venv up to date"
fi

# The Triton server's own environment (numpy<2, see ../shared/ENVIRONMENT.md).
if [ "$WITH_TRITON" = 1 ]; then
  bash scripts/triton-server.sh setup
fi
log "done ($ROOT)"
