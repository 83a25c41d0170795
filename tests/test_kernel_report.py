"""Tests of scripts/kernel_report.py: the Triton scan's kernels compile for sm_90 on a machine without a GPU (so CI
catches a kernel that runs in the interpreter but does not compile), and the report reads registers, spills,
residency and loops from the SASS. The compiles run in a subprocess without TRITON_INTERPRET (the suite's conftest
sets it, and interpreted kernels do not compile)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from scripts import kernel_report, triton_scan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def has_nvidia_backend() -> bool:
    if not triton_scan.triton_available():
        return False
    try:
        kernel_report.cuobjdump_path()
    except RuntimeError:
        return False
    return True


needs_backend = pytest.mark.skipif(not has_nvidia_backend(), reason="needs Triton with its NVIDIA backend")


def compiled(*args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-m", "scripts.kernel_report", "--json", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@needs_backend
def test_default_backward_compiles_without_spills_and_loops_over_its_steps():
    result = compiled()
    assert 0 < result["registers"] <= 255 and result["stack_bytes"] == 0
    assert result["programs_per_sm"] == 65536 // (-(-result["registers"] * 32 // 256) * 256)
    main_loop = max(result["loops"], key=lambda loop: loop["instructions"])
    # 8 positions of reductions over the channels and the states (warp shuffles) and of exponentials
    assert main_loop["opcodes"]["SHFL"] >= 8 and main_loop["opcodes"]["MUFU"] >= 8


@needs_backend
def test_rotated_states_take_fewer_shuffles_than_states_in_order():
    """Version 9's pair-rotated state index changes Triton's layout of the [8, 16] tiles: 20 shuffles per position
    for the two sums over the channels and the two over the states, against 28 with the states in order."""
    loops = {}
    for rotate in ("1", "0"):
        result = compiled("--rotate_states", rotate, "--block_d", "8", "--step", "8")
        loops[rotate] = max(result["loops"], key=lambda loop: loop["instructions"])
    assert loops["1"]["opcodes"]["SHFL"] == 20 * 8 and loops["0"]["opcodes"]["SHFL"] == 28 * 8
    assert loops["1"]["instructions"] < 0.95 * loops["0"]["instructions"]


@needs_backend
def test_register_cap_trades_spills_for_residency():
    capped = compiled("--maxnreg", "224")
    assert capped["registers"] <= 224 and capped["programs_per_sm"] == 9


@needs_backend
def test_forward_and_four_position_steps_compile():
    forward = compiled("--kernel", "forward")
    assert forward["registers"] > 0 and forward["loops"]
    prefetching = compiled("--kernel", "forward", "--prefetch", "1")  # the next step's tiles live across the step
    assert prefetching["registers"] >= forward["registers"] and prefetching["loops"]
    # the 4-position steps carry the saved state over the chunk's first half: a second (inner) loop
    four = compiled("--block_d", "16", "--step", "4")
    assert len(four["loops"]) >= 2


@needs_backend
def test_interpreted_kernels_are_refused_clearly(monkeypatch):
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("only under the interpreter")
    with pytest.raises(RuntimeError, match="unset TRITON_INTERPRET"):
        kernel_report.report("backward", 8, 8, 8, 1)


def test_programs_per_sm_follows_sm90_limits():
    assert kernel_report.KernelReport(255, 0, 0, 1, []).programs_per_sm == 8
    assert kernel_report.KernelReport(224, 0, 0, 1, []).programs_per_sm == 9
    assert kernel_report.KernelReport(128, 0, 0, 1, []).programs_per_sm == 16
    assert kernel_report.KernelReport(32, 0, 0, 1, []).programs_per_sm == 32  # the block limit, not registers
    assert kernel_report.KernelReport(64, 0, 0, 4, []).programs_per_sm == 8


@needs_backend
def test_layout_kernels_compile_without_spills_with_wide_channel_accesses():
    """SS2D's tiled cross-scan and merge (scripts/triton_cross_scan.py) compile for sm_90; on the channels-last side
    each thread moves 8 bf16 (cross-scan loads) or 4 fp32 (merge stores) channels in one 128-bit access."""
    for kernel, access in (("cross_scan", "LDG.128"), ("cross_merge", "STG.128")):
        result = compiled("--kernel", kernel)
        assert 0 < result["registers"] <= 255 and result["stack_bytes"] == 0
        assert result["whole"]["opcodes"].get(access, 0) > 0, (kernel, result["whole"]["opcodes"])
