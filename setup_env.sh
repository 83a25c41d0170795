#!/usr/bin/env bash
# Source this from the bundle root: creates .venv with the CPU requirements (idempotent: pip runs only when a
# requirements file changed) and activates it. WITH_DEV=1 adds requirements-dev.txt (format checks, ONNX export:
# the test suite needs them) and MONAI Label (as WITH_MONAILABEL=1 does). GPU users add requirements-gpu.txt (see
# docs/README.md).
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
# MONAI Label: optional, so a failed install (no network) only warns; tests/test_monailabel.py then skips. Own stamp,
# so a failure is retried on the next run without redoing the install above. --no-deps for monailabel itself: its
# declared requirements pull torchvision, sam2 and GBs of CUDA wheels; requirements-monailabel.txt has what it needs.
if [ "${WITH_DEV:-0}" = 1 ] || [ "${WITH_MONAILABEL:-0}" = 1 ]; then
  monailabel_pin="monailabel==0.8.5"
  monailabel_stamp=.venv/.monailabel.sha256
  monailabel_want=$( (cat requirements-monailabel.txt; echo "$monailabel_pin") | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$monailabel_stamp" 2>/dev/null)" != "$monailabel_want" ]; then
    echo "[setup] installing $monailabel_pin (--no-deps) and requirements-monailabel.txt into .venv"
    if .venv/bin/python -m pip install -q -r requirements-monailabel.txt > .venv/monailabel-install.log 2>&1 &&
      .venv/bin/python -m pip install -q --no-deps "$monailabel_pin" >> .venv/monailabel-install.log 2>&1; then
      echo "$monailabel_want" > "$monailabel_stamp"
    else
      echo "[setup] WARNING: could not install $monailabel_pin (see .venv/monailabel-install.log); the MONAI Label" \
        "tests will be skipped"
    fi
  fi
fi
# shellcheck disable=SC1091
source .venv/bin/activate
set +e
