#!/usr/bin/env bash
# Source this from the bundle root: creates .venv with the CPU requirements (idempotent: pip runs only when
# requirements.txt changed) and activates it. GPU users add requirements-gpu.txt (see docs/README.md).
set -e
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing requirements.txt into .venv (first run: a few minutes)"
  # torch first and alone: its CPU build is what the other packages must then accept as satisfying `torch`
  .venv/bin/python -m pip install -q "$(grep '^torch==' requirements.txt)"
  .venv/bin/python -m pip install -q -r requirements.txt
  echo "$want" > "$stamp"
fi
# shellcheck disable=SC1091
source .venv/bin/activate
set +e
