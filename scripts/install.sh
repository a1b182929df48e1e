#!/usr/bin/env bash
# Create .venv with everything the project needs (CPU torch pinned first, so pip never pulls a CUDA wheel).
# Idempotent: re-running only installs what is missing. Usage: scripts/install.sh [extras], default "test,eval,train,ui,tensorboard,lmms".
# With the ui extra it also installs Debian's chromium (as root, via apt-get) for the browser test of
# `glimpseprune ui` (tests/test_ui.py): Playwright drives that system browser, it downloads none of its own.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-test,eval,train,ui,tensorboard,lmms}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip "setuptools>=77" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q -e ".[${extras}]" 2>&1 | grep -v "^WARNING: Location" || true
if [[ ",${extras}," == *",lmms,"* ]]; then
  # lmms-eval without its declared requirements (torchvision would pull a CUDA torch over the CPU one); the lmms
  # extra above installed what it imports for the plug-in (docs/lmms_eval.md)
  .venv/bin/python -m pip install -q --no-deps "lmms-eval==0.7.3" 2>&1 | grep -v "^WARNING: Location" || true
fi
if [[ ",${extras}," == *",ui,"* ]] && ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's chromium for the browser test (apt-get)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
  else
    echo "note: tests/test_ui.py needs a Chromium executable: install your distribution's chromium package" \
         "(or set GLIMPSEPRUNE_CHROMIUM=/path/to/chrome)" >&2
  fi
fi
.venv/bin/python -c "import torch, transformers, glimpseprune; print('installed: torch', torch.__version__, '| transformers', transformers.__version__, '| glimpseprune', glimpseprune.__version__)"
