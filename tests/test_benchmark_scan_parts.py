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


def tile_start_states(u, delta, A, B, block_l):
    """(batch, dim, n_tiles, N) float64: the state entering each tile of block_l positions (reference loop)."""
    dt = torch.nn.functional.softplus(delta.double())
    group = torch.arange(u.shape[1]) // (u.shape[1] // B.shape[1])
    h = torch.zeros(u.shape[0], u.shape[1], A.shape[1], dtype=torch.float64)
    starts = []
    for t in range(u.shape[2]):
        if t % block_l == 0:
            starts.append(h.clone())
        h = torch.exp(dt[:, :, t, None] * A.double()) * h + (dt[:, :, t] * u[:, :, t])[:, :, None] * B[:, group, :, t]
    return torch.stack(starts, dim=2)


@pytest.mark.skipif(not INTERPRETED, reason="needs Triton with TRITON_INTERPRET=1 (CPU interpreter)")
def test_full_backward_variant_gives_the_selective_scan_gradients():
    u, delta, A, B, C = small_inputs(length=11)
    dy = torch.randn(u.shape, generator=torch.Generator().manual_seed(3))
    states = tile_start_states(u, delta, A, B, block_l=4).float()  # 3 tiles, the last one partial
    got, _ = benchmark_scan_parts.parts_scan_backward(u, delta, A, B, C, dy, states, block_d=4, num_warps=1)
    leaves = [t.double().requires_grad_() for t in (u, delta, A, B, C)]
    selective_scan(*leaves, backend="torch").backward(dy.double())
    for name, x, leaf in zip(("du", "ddelta", "dA", "dB", "dC"), got, leaves):
        assert torch.allclose(x.double(), leaf.grad, rtol=1e-4, atol=1e-5), name


@pytest.mark.skipif(not INTERPRETED, reason="needs Triton with TRITON_INTERPRET=1 (CPU interpreter)")
@pytest.mark.parametrize("label, switches", benchmark_scan_parts.BWD_PARTS[1:])
def test_each_backward_switch_runs_and_stays_finite(label, switches):
    u, delta, A, B, C = small_inputs(length=11)
    dy = torch.randn(u.shape, generator=torch.Generator().manual_seed(3))
    states = tile_start_states(u, delta, A, B, block_l=4).float()
    got, _ = benchmark_scan_parts.parts_scan_backward(u, delta, A, B, C, dy, states, block_d=4, num_warps=1, **switches)
    assert all(torch.isfinite(x).all() for x in got), label


@pytest.mark.skipif(not INTERPRETED, reason="needs Triton with TRITON_INTERPRET=1 (CPU interpreter)")
def test_backward_refuses_states_that_do_not_tile_the_sequence():
    u, delta, A, B, C = small_inputs(length=11)
    with pytest.raises(ValueError, match="do not tile"):
        benchmark_scan_parts.parts_scan_backward(u, delta, A, B, C, u, torch.zeros(2, 16, 5, 16))
