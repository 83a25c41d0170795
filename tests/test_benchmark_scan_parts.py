"""Tests of scripts/benchmark_scan_parts.py: its variant kernel (all parts on) is the selective scan, in either B/C
memory order, and every part switch runs (Triton's CPU interpreter); without a GPU the benchmark refuses clearly."""

from __future__ import annotations

import os

import pytest
import torch

from scripts import benchmark_scan_parts
from scripts.selective_scan import selective_scan

INTERPRETED = benchmark_scan_parts.triton is not None and os.environ.get("TRITON_INTERPRET") == "1"
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")


def small_inputs(batch=2, dim=16, length=11):
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(batch, dim, length, generator=gen)
    delta = 0.5 * torch.randn(batch, dim, length, generator=gen) - 1.0
    A = -torch.exp(0.5 * torch.randn(dim, benchmark_scan_parts.D_STATE, generator=gen))
    B, C = (
        torch.randn(batch, benchmark_scan_parts.GROUPS, benchmark_scan_parts.D_STATE, length, generator=gen)
        for _ in range(2)
    )
    return u, delta, A, B, C


@pytest.mark.skipif(not INTERPRETED, reason="needs Triton with TRITON_INTERPRET=1 (CPU interpreter)")
@pytest.mark.parametrize("position_major", [True, False])
def test_full_variant_is_the_selective_scan(position_major):
    u, delta, A, B, C = small_inputs()
    y, _ = benchmark_scan_parts.parts_scan(
        u, delta, A, B, C, block_d=4, num_warps=1, unroll=2, bc_position_major=position_major
    )
    ref = selective_scan(*(t.double() for t in (u, delta, A, B, C)), backend="torch")
    assert torch.allclose(y.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not INTERPRETED, reason="needs Triton with TRITON_INTERPRET=1 (CPU interpreter)")
@pytest.mark.parametrize("label, switches", benchmark_scan_parts.PARTS[1:])
def test_each_part_switch_changes_the_result_and_stays_finite(label, switches):
    u, delta, A, B, C = small_inputs()
    full, _ = benchmark_scan_parts.parts_scan(u, delta, A, B, C, block_d=4, num_warps=1, unroll=2)
    part, _ = benchmark_scan_parts.parts_scan(u, delta, A, B, C, block_d=4, num_warps=1, unroll=2, **switches)
    assert torch.isfinite(part).all(), label
    assert not torch.allclose(part, full), label  # the switch really removes work


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_refuses_without_a_gpu():
    with pytest.raises(SystemExit, match="needs a CUDA GPU and Triton"):
        benchmark_scan_parts.main([])
