"""Shared test helpers: the bundle root on sys.path, and running `python -m monai.bundle` as a user would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BUNDLE_ROOT = Path(__file__).resolve().parents[1]
ACDC_DIR = BUNDLE_ROOT.parent / "shared" / "data" / "ACDC"

if str(BUNDLE_ROOT) not in sys.path:
    sys.path.insert(0, str(BUNDLE_ROOT))

# Without a GPU, the Triton scan's kernels run in Triton's CPU interpreter (tests/test_triton_scan.py); the variable
# must be set before scripts/triton_scan.py is imported, where @triton.jit reads it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def bundle_cli(
    *args: str, cwd: Path = BUNDLE_ROOT, check: bool = True, timeout: int = 420
) -> subprocess.CompletedProcess:
    """Run `python -m monai.bundle <args>` in a subprocess (fresh interpreter, as a user would) and return the result.

    On timeout the child gets SIGABRT with faulthandler enabled, so the failure shows every thread's stack instead of
    a silent hang.
    """
    env = dict(
        os.environ, PYTHONPATH=str(BUNDLE_ROOT), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="2", PYTHONFAULTHANDLER="1"
    )
    cmd = [sys.executable, "-m", "monai.bundle", *args]
    process = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)
        stdout, stderr = process.communicate()
        raise AssertionError(
            f"command hung for {timeout} s: {' '.join(cmd)}\n--- stderr (thread dump) ---\n{stderr[-8000:]}"
        ) from None
    result = subprocess.CompletedProcess(cmd, process.returncode, stdout, stderr)
    if check and result.returncode != 0:
        raise AssertionError(
            f"command failed ({result.returncode}): {' '.join(cmd)}\n--- stdout ---\n{result.stdout[-6000:]}"
            f"\n--- stderr ---\n{result.stderr[-6000:]}"
        )
    return result


def config_list(*names: str) -> str:
    """The `--config_file` argument for several bundle configs, e.g. "['configs/train.json','configs/demo.json']"."""
    return "[" + ",".join(f"'{BUNDLE_ROOT / 'configs' / n}'" for n in names) + "]"


@pytest.fixture(scope="session")
def acdc_dir() -> Path:
    """The real SSL4MIS ACDC data when this machine has it (skips cleanly otherwise)."""
    if not (ACDC_DIR / "val.list").exists():
        pytest.skip(f"real ACDC data not found at {ACDC_DIR}")
    return ACDC_DIR
