"""Tests of scripts/triton_scan.py: the Triton selective scan against the PyTorch scan (under Triton's CPU interpreter,
``TRITON_INTERPRET=1``) and against mamba-ssm (on a CUDA GPU); the module must import and fail clearly without Triton.
"""

from __future__ import annotations

import os

import pytest
import torch

from scripts import triton_scan
from scripts.selective_scan import mamba_ssm_available, selective_scan

INTERPRETED = triton_scan.triton_available() and os.environ.get("TRITON_INTERPRET") == "1"
ON_GPU = triton_scan.triton_available() and torch.cuda.is_available() and not INTERPRETED
GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias")
# In the interpreter kernels run as numpy: an "invalid value" warning means a kernel computed on memory it never
# wrote (harmless-looking on a GPU, where NaN arithmetic is silent), so it fails the test.
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")


def make_inputs(seed, batch, dim, length, d_state, groups, dtype, device="cpu"):
    """Random scan inputs at SS2D-like magnitudes; groups=None gives ungrouped (batch, N, L) B and C."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    bc_shape = (batch, d_state, length) if groups is None else (batch, groups, d_state, length)
    tensors = [
        randn(batch, dim, length),
        0.5 * randn(batch, dim, length) - 1.0,
        -torch.exp(0.5 * randn(dim, d_state)),
        randn(*bc_shape),
        randn(*bc_shape),
        randn(dim),
        0.3 * randn(dim),
    ]
    return [t.to(device=device, dtype=dtype) for t in tensors]


def rel_err(x, ref):
    return ((x.double() - ref.double()).norm() / ref.double().norm()).item()


def output_and_grads(scan, inputs, dy):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    y = scan(*leaves)
    return [y.detach(), *torch.autograd.grad(y, leaves, dy)]


def torch_scan(u, delta, A, B, C, D, delta_bias):
    return selective_scan(u, delta, A, B, C, D=D, delta_bias=delta_bias, delta_softplus=True, backend="torch")


def test_imports_and_fails_clearly_without_triton(monkeypatch):
    monkeypatch.setattr(triton_scan, "triton", None)
    assert triton_scan.triton_available() is False
    inputs = make_inputs(0, 1, 4, 8, 4, 2, torch.float32)
    with pytest.raises(RuntimeError, match="triton_scan.py: Triton is not installed"):
        triton_scan.triton_selective_scan(*inputs)


@pytest.mark.skipif(not triton_scan.triton_available(), reason="needs Triton")
@pytest.mark.parametrize(
    "index, bad_shape, message",
    [
        (1, (1, 4, 9), "delta must have"),
        (2, (5, 4), "A must be"),
        (3, (1, 2, 5, 8), "B must be"),
        (5, (3,), "D must be"),
    ],
)
def test_bad_shapes_raise_before_any_kernel_runs(index, bad_shape, message):
    inputs = make_inputs(0, 1, 4, 8, 4, 2, torch.float32)
    inputs[index] = torch.zeros(bad_shape)
    with pytest.raises(ValueError, match=f"selective_scan: {message}"):
        triton_scan.triton_selective_scan(*inputs)


def compare_with_torch_scan(inputs, dy, tolerance, drop=()):
    """Output and every gradient of the Triton scan (training and inference paths) against autograd through the
    PyTorch scan in float64; inputs named in drop are passed as None."""
    inputs = [None if name in drop else t for name, t in zip(GRAD_NAMES, inputs)]
    present = [i for i, t in enumerate(inputs) if t is not None]

    def call(scan):
        def wrapped(*tensors):
            full = list(inputs)
            for i, t in zip(present, tensors):
                full[i] = t
            return scan(*full)

        return wrapped

    kept = [inputs[i] for i in present]
    got = output_and_grads(call(triton_scan.triton_selective_scan), kept, dy)
    ref = output_and_grads(call(torch_scan), [t.double() for t in kept], dy.double())
    names = ("y",) + tuple(GRAD_NAMES[i] for i in present)
    for name, x, r in zip(names, got, ref):
        assert x.shape == r.shape, name
        assert torch.isfinite(x).all(), name
        assert rel_err(x, r) < tolerance, (name, rel_err(x, r))
    for name, x, t in zip(names[1:], got[1:], kept):
        assert x.dtype == t.dtype, name
    # Inference path (no autograd, the forward's own chunk length): same output.
    with torch.no_grad():
        y = triton_scan.triton_selective_scan(*inputs)
    assert y.dtype == inputs[0].dtype
    assert rel_err(y, ref[0]) < tolerance


@pytest.mark.skipif(not INTERPRETED, reason="needs Triton with TRITON_INTERPRET=1 (CPU interpreter)")
@pytest.mark.parametrize("forward_kind", ["v3", "tile", "seq"])
@pytest.mark.parametrize(
    "dtype, batch, dim, length, d_state, groups",
    [
        (torch.float32, 2, 8, 37, 4, 4),  # L not a multiple of the chunk, three chunks
        (torch.float64, 1, 4, 20, 5, None),  # N not a power of two, ungrouped B/C, fp64 in (fp32 inside)
    ],
)
def test_interpreter_matches_torch_scan(monkeypatch, forward_kind, dtype, batch, dim, length, d_state, groups):
    monkeypatch.setattr(triton_scan, "FWD_KIND", forward_kind)
    monkeypatch.setattr(triton_scan, "FWD_TILE_T", 16)
    monkeypatch.setattr(triton_scan, "FWD_CHUNK", 32)
    monkeypatch.setattr(triton_scan, "BWD_CHUNK", 16)  # several chunks even on short sequences
    inputs = make_inputs(1, batch, dim, length, d_state, groups, dtype)
    dy = torch.randn(batch, dim, length, dtype=dtype, generator=torch.Generator().manual_seed(2))
    compare_with_torch_scan(inputs, dy, 1e-5)


@pytest.mark.skipif(not INTERPRETED, reason="needs Triton with TRITON_INTERPRET=1 (CPU interpreter)")
@pytest.mark.parametrize(
    "length, chunk, forward_kind, bc_reduce",
    [
        (10, 64, "v3", "partial"),  # L < chunk: one chunk of 16, no summary/carry launches
        (32, 32, "tile", "partial"),  # L == chunk
        (33, 32, "seq", "atomic"),  # one position into a second chunk
        (100, 16, "tile", "atomic"),  # many chunks, the last one partial
        (100, 16, "seq", "partial"),
        (96, 32, "v3", "partial"),  # L % 16 == 0: version 3's tile loads
    ],
)
def test_interpreter_chunk_boundaries(monkeypatch, length, chunk, forward_kind, bc_reduce):
    # Version-2 backward. G = 2 groups of 4 channels, N = 12 (padded to 16); two channel tiles per backward program
    # and two dB/dC partials per group; the summary and the tile forward take 16 positions at a time, so chunks of 32
    # take two.
    monkeypatch.setattr(triton_scan, "BWD_KIND", "v2")
    for name, value in (("FWD_KIND", forward_kind), ("FWD_CHUNK", chunk), ("BWD_CHUNK", chunk)):
        monkeypatch.setattr(triton_scan, name, value)
    for name, value in (("FWD_TILE_T", 16), ("SUM_BLOCK_T", 16), ("BWD_BC_REDUCE", bc_reduce)):
        monkeypatch.setattr(triton_scan, name, value)
    monkeypatch.setattr(triton_scan, "BWD_BLOCK_D", 1)
    monkeypatch.setattr(triton_scan, "BWD_D_PER_PROGRAM", 2)
    monkeypatch.setattr(triton_scan, "BWD_MIN_PROGRAMS", 0)
    inputs = make_inputs(5, 1, 8, length, 12, 2, torch.float32)
    dy = torch.randn(1, 8, length, generator=torch.Generator().manual_seed(6))
    compare_with_torch_scan(inputs, dy, 1e-5)


@pytest.mark.skipif(not INTERPRETED, reason="needs Triton with TRITON_INTERPRET=1 (CPU interpreter)")
@pytest.mark.parametrize("drop", [("D", "delta_bias"), ("D",), ("delta_bias",)])
def test_interpreter_without_d_or_bias(monkeypatch, drop):
    monkeypatch.setattr(triton_scan, "FWD_CHUNK", 16)
    monkeypatch.setattr(triton_scan, "BWD_CHUNK", 16)
    monkeypatch.setattr(triton_scan, "V3B_CHUNK", 16)  # version-3 backward: three chunks
    inputs = make_inputs(7, 1, 4, 40, 4, 2, torch.float32)
    dy = torch.randn(1, 4, 40, generator=torch.Generator().manual_seed(8))
    compare_with_torch_scan(inputs, dy, 1e-5, drop=drop)


@pytest.mark.skipif(not INTERPRETED, reason="needs Triton with TRITON_INTERPRET=1 (CPU interpreter)")
def test_interpreter_bf16_inputs(monkeypatch):
    # bf16 u, delta, B, C, dy; fp32 A, D, delta_bias. The reference runs in fp64 on the same bf16 values, so the only
    # differences are the bf16 rounding of y, du, ddelta (~4e-3) and the fp32 -> bf16 cast of dB, dC.
    monkeypatch.setattr(triton_scan, "FWD_CHUNK", 16)
    monkeypatch.setattr(triton_scan, "BWD_CHUNK", 16)
    monkeypatch.setattr(triton_scan, "V3B_CHUNK", 16)
    inputs = make_inputs(9, 1, 8, 40, 4, 4, torch.float32)
    inputs = [t.bfloat16() if t.dim() >= 3 else t for t in inputs]
    dy = torch.randn(1, 8, 40, generator=torch.Generator().manual_seed(10)).bfloat16()
    compare_with_torch_scan(inputs, dy, 1e-2)


@pytest.mark.skipif(not (ON_GPU and mamba_ssm_available()), reason="needs CUDA, Triton and mamba-ssm")
@pytest.mark.parametrize("d_inner, side", [(192, 56), (384, 28), (768, 14), (1536, 7)])
def test_gpu_matches_mamba_ssm_on_ss2d_shapes(d_inner, side):
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    def mamba(u, delta, A, B, C, D, delta_bias):
        return selective_scan_fn(u, delta, A, B, C, D, z=None, delta_bias=delta_bias, delta_softplus=True)

    batch, dim, length = 2, 4 * d_inner, side * side
    inputs = make_inputs(3, batch, dim, length, 16, 4, torch.float32, device="cuda")
    dy = torch.randn(batch, dim, length, device="cuda")
    got = output_and_grads(triton_scan.triton_selective_scan, inputs, dy)
    ref = output_and_grads(mamba, inputs, dy)
    for name, x, r in zip(("y",) + GRAD_NAMES, got, ref):
        assert torch.isfinite(x).all(), name
        assert rel_err(x, r) < 1e-4, name


@pytest.mark.skipif(not ON_GPU, reason="needs CUDA and Triton")
def test_gpu_bf16_inputs_match_fp32_scan():
    inputs = make_inputs(4, 2, 64, 300, 16, 4, torch.float32, device="cuda")
    low = [t.bfloat16() if t.dim() >= 3 else t for t in inputs]  # bf16 u, delta, B, C; fp32 A, D, delta_bias
    y_low = triton_scan.triton_selective_scan(*low)
    y_ref = triton_scan.triton_selective_scan(*[t.float() for t in low])
    assert y_low.dtype == torch.bfloat16
    assert rel_err(y_low, y_ref) < 1e-2


@pytest.mark.skipif(not INTERPRETED, reason="needs Triton with TRITON_INTERPRET=1 (CPU interpreter)")
@pytest.mark.parametrize(
    "length, settings",
    [
        (64, {"V3_FWD_CHUNK": 32}),  # tiles, two chunks (summary, carry, output from the starts)
        (48, {"V3_N_SPLIT": 2, "V3_T": 8, "V3B_CKPT": 8}),  # two threads per channel, 8-position tiles, one chunk
        (37, {"V3_FWD_CHUNK": 16}),  # unaligned rows: one position per load, masked tail, three chunks
        (64, {"V3_TILED": False, "V3_FWD_CHUNK": 0}),
    ],
)
def test_interpreter_v3_forward_variants(monkeypatch, length, settings):
    monkeypatch.setattr(triton_scan, "FWD_KIND", "v3")
    monkeypatch.setattr(triton_scan, "BWD_CHUNK", 16)
    for name, value in settings.items():
        monkeypatch.setattr(triton_scan, name, value)
    inputs = make_inputs(11, 1, 32, length, 12, 2, torch.float32)  # N = 12: padded states
    dy = torch.randn(1, 32, length, generator=torch.Generator().manual_seed(12))
    compare_with_torch_scan(inputs, dy, 1e-5)


@pytest.mark.skipif(not INTERPRETED, reason="needs Triton with TRITON_INTERPRET=1 (CPU interpreter)")
@pytest.mark.parametrize(
    "length, dim, groups, settings",
    [
        # Unaligned rows (L % 16 != 0), L not a multiple of the checkpoint interval or the tile: the sequence's last,
        # partial segment is masked; three backward chunks (summary launch, reverse carry); G = 2 groups of 4.
        (37, 8, 2, {"V3B_CHUNK": 16}),
        # Aligned rows (tiled forward), two forward and two backward chunks; 32-channel programs (one warp).
        (64, 32, 1, {"V3B_CHUNK": 32, "V3_FWD_CHUNK": 32}),
        # Checkpoint every 8 positions (sweep + 2 tiles), chunks of 24 (not a power of two), the last one partial.
        (60, 8, 2, {"V3B_CHUNK": 24, "V3B_CKPT": 8}),
        # Checkpoint every 16 positions (sweep over three tiles), dB/dC by atomics, one group.
        (50, 8, 1, {"V3B_CHUNK": 16, "V3B_CKPT": 16, "BWD_BC_REDUCE": "atomic"}),
        # 8-position tiles, whole sequence in one backward chunk.
        (50, 8, 2, {"V3B_CHUNK": 0, "V3B_T": 8, "V3B_CKPT": 8}),
        # Adaptive chunking (V3B_MIN_WARPS) with a version-2 inference forward.
        (70, 8, 4, {"V3B_MIN_WARPS": 2, "FWD_KIND": "seq"}),
    ],
)
def test_interpreter_v3_backward_variants(monkeypatch, length, dim, groups, settings):
    monkeypatch.setattr(triton_scan, "BWD_KIND", "v3")
    for name, value in settings.items():
        monkeypatch.setattr(triton_scan, name, value)
    inputs = make_inputs(13, 1, dim, length, 12, groups, torch.float32)  # N = 12: padded states
    dy = torch.randn(1, dim, length, generator=torch.Generator().manual_seed(14))
    compare_with_torch_scan(inputs, dy, 1e-5)


@pytest.mark.skipif(not INTERPRETED, reason="needs Triton with TRITON_INTERPRET=1 (CPU interpreter)")
def test_interpreter_v3_backward_bf16_unaligned_rows(monkeypatch):
    # bf16 u, delta, B, C, dy on rows that are not 16-byte aligned (L = 45), two backward chunks.
    monkeypatch.setattr(triton_scan, "BWD_KIND", "v3")
    monkeypatch.setattr(triton_scan, "V3B_CHUNK", 24)
    inputs = make_inputs(15, 1, 8, 45, 12, 2, torch.float32)
    inputs = [t.bfloat16() if t.dim() >= 3 else t for t in inputs]
    dy = torch.randn(1, 8, 45, generator=torch.Generator().manual_seed(16)).bfloat16()
    compare_with_torch_scan(inputs, dy, 1e-2)


@pytest.mark.skipif(not triton_scan.triton_available(), reason="needs Triton")
def test_v3_backward_checks_its_knobs(monkeypatch):
    monkeypatch.setattr(triton_scan, "V3B_CKPT", 6)
    inputs = [t.requires_grad_() for t in make_inputs(0, 1, 4, 8, 4, 2, torch.float32)]
    with pytest.raises(ValueError, match="V3B_CKPT"):
        triton_scan.triton_selective_scan(*inputs)
    monkeypatch.setattr(triton_scan, "V3B_CKPT", 4)
    monkeypatch.setattr(triton_scan, "BWD_KIND", "v4")
    with pytest.raises(ValueError, match="BWD_KIND"):
        triton_scan.triton_selective_scan(*inputs)
