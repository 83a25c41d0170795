#!/usr/bin/env bash
# Source this from the bundle root: creates .venv with the CPU requirements (idempotent: pip runs only when a
# requirements file changed) and activates it. WITH_DEV=1 adds requirements-dev.txt (format checks, ONNX export:
# the test suite needs them). GPU users add requirements-gpu.txt (see docs/README.md).
set -e
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.requirements.sha256
req_files=(requirements.txt)
[ "${WITH_DEV:-0}" = 1 ] && req_files+=(requirements-dev.txt)
want=$(cat "${req_files[@]}" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing ${req_files[*]} into .venv (first run: a few minutes)"
  # torch first and alone: its CPU build is what the other packages must then accept as satisfying `torch`
  .venv/bin/python -m pip install -q "$(grep '^torch==' requirements.txt)"
  for f in "${req_files[@]}"; do .venv/bin/python -m pip install -q -r "$f"; done
  echo "$want" > "$stamp"
fi
# shellcheck disable=SC1091
source .venv/bin/activate
set +e
