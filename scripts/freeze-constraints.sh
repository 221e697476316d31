#!/usr/bin/env bash
# Rewrites requirements/constraints.txt from the current .venv (torch's local +cpu tag dropped:
# pip resolves torch==2.13.0 to the CPU wheel on this machine kind).
set -euo pipefail
cd "$(dirname "$0")/.."
{
  echo "# Exact versions seen working on this machine kind (2 cores, Python 3.11). Regenerate with"
  echo "# scripts/freeze-constraints.sh after changing pyproject's dependencies."
  .venv/bin/pip freeze --exclude-editable | sed 's/+cpu$//' | grep -v '^-e'
} > requirements/constraints.txt
