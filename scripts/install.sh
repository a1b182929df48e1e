#!/usr/bin/env bash
# Create .venv with everything the project needs (CPU torch pinned first, so pip never pulls a CUDA wheel).
# Idempotent: re-running only installs what is missing. Usage: scripts/install.sh [extras], default "test,eval".
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-test,eval}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip "setuptools>=77" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q -e ".[${extras}]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import torch, transformers, glimpseprune; print('installed: torch', torch.__version__, '| transformers', transformers.__version__, '| glimpseprune', glimpseprune.__version__)"
