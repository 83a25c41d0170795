"""Tests of scripts/triton_cross_scan.py: the tiled cross-scan / cross-merge kernels against mamba_unet's gathers,
in Triton's CPU interpreter (``TRITON_INTERPRET=1``, set by conftest.py without a GPU) and on a CUDA GPU (also under
torch.compile); the module must import and fail clearly without Triton."""

from __future__ import annotations

import os

import pytest
import torch

from scripts import triton_cross_scan
from scripts.networks import mamba_unet

HAVE_TRITON = triton_cross_scan.triton is not None
INTERPRETED = HAVE_TRITON and os.environ.get("TRITON_INTERPRET") == "1"
ON_GPU = HAVE_TRITON and torch.cuda.is_available() and not INTERPRETED
DEVICE = "cuda" if ON_GPU else "cpu"
RUNS = INTERPRETED or ON_GPU


def gathered(x: torch.Tensor, weight: torch.Tensor, height: int, width: int, impl: str, monkeypatch):
    """(cross_scan(x), cross_merge(cross_scan(x) * weight), d(sum merged^2)/dx) with CROSS_SCAN_IMPL = impl."""
    monkeypatch.setattr(mamba_unet, "CROSS_SCAN_IMPL", impl)
    leaf = x.detach().clone().requires_grad_()
    xs = mamba_unet.cross_scan(leaf)
    merged = mamba_unet.cross_merge(xs * weight, height, width)
    (grad,) = torch.autograd.grad((merged.float() * merged.float()).sum(), leaf)
    return xs.detach(), merged.detach(), grad


@pytest.mark.skipif(not RUNS, reason="needs Triton on a GPU or with TRITON_INTERPRET=1")
@pytest.mark.parametrize(
    "shape",
    [(2, 5, 5, 7), (1, 20, 17, 9), (2, 16, 7, 7), (1, 3, 1, 4), (1, 33, 16, 16)],
    ids=["5x7", "17x9-two-tiles", "7x7", "1x4", "16x16-channel-tail"],
)
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels-last"])
def test_kernels_match_the_gathers_with_gradients(monkeypatch, shape, channels_last):
    """Same scan sequences, merged sum and input gradient as the gathers, in float64, for maps with partial tiles,
    channel tails, a single row, and both memory layouts of the map."""
    torch.manual_seed(0)
    batch, dim, height, width = shape
    x = torch.randn(shape, dtype=torch.float64, device=DEVICE)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    weight = torch.randn(batch, 4, dim, height * width, dtype=torch.float64, device=DEVICE)
    got = gathered(x, weight, height, width, "triton", monkeypatch)
    ref = gathered(x, weight, height, width, "gather", monkeypatch)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)
    xs, merged, _ = got
    assert xs.is_contiguous() and merged.dtype == torch.float64
    assert merged.transpose(1, 2).is_contiguous()  # channels-last memory: out_norm reads it without a copy


@pytest.mark.skipif(not RUNS, reason="needs Triton on a GPU or with TRITON_INTERPRET=1")
def test_low_precision_sums_in_float32_and_gradients_keep_the_dtype(monkeypatch):
    torch.manual_seed(1)
    x = torch.randn(2, 6, 5, 3, device=DEVICE).bfloat16().requires_grad_()
    y = torch.randn(2, 4, 6, 15, device=DEVICE).bfloat16().requires_grad_()
    merged = triton_cross_scan.triton_cross_merge(y, 5, 3)
    monkeypatch.setattr(mamba_unet, "CROSS_SCAN_IMPL", "gather")
    assert merged.dtype == torch.float32
    torch.testing.assert_close(merged, mamba_unet.cross_merge(y, 5, 3))
    xs = triton_cross_scan.triton_cross_scan(x)
    assert xs.dtype == torch.bfloat16
    torch.testing.assert_close(xs, mamba_unet.cross_scan(x), rtol=0, atol=0)
    (grad_x,) = torch.autograd.grad(xs.float().sum(), x)
    (grad_y,) = torch.autograd.grad(merged.sum(), y)
    assert grad_x.dtype == grad_y.dtype == torch.bfloat16
    torch.testing.assert_close(grad_x.float(), torch.full(x.shape, 4.0, device=DEVICE))  # each pixel in 4 scans
    torch.testing.assert_close(grad_y.float(), torch.ones(y.shape, device=DEVICE))


@pytest.mark.skipif(not RUNS, reason="needs Triton on a GPU or with TRITON_INTERPRET=1")
def test_inference_path_and_bad_shapes(monkeypatch):
    x = torch.randn(1, 3, 4, 6, device=DEVICE)
    with torch.no_grad():
        merged = triton_cross_scan.triton_cross_merge(triton_cross_scan.triton_cross_scan(x), 4, 6)
    torch.testing.assert_close(merged, 4 * x.reshape(1, 3, 24))
    with pytest.raises(ValueError, match="non-empty float"):
        triton_cross_scan.triton_cross_scan(x[0])
    with pytest.raises(ValueError, match="expected float"):
        triton_cross_scan.triton_cross_merge(torch.randn(1, 4, 3, 24, device=DEVICE), 4, 5)


def test_fails_clearly_without_triton_or_off_the_gpu(monkeypatch):
    monkeypatch.setattr(triton_cross_scan, "triton", None)
    with pytest.raises(RuntimeError, match="Triton is not installed"):
        triton_cross_scan.triton_cross_scan(torch.randn(1, 2, 3, 3))
    monkeypatch.undo()
    if HAVE_TRITON:  # a CPU tensor without the interpreter: a clear error, not Triton's "0 active drivers"
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        with pytest.raises(RuntimeError, match="needs CUDA tensors"):
            triton_cross_scan.triton_cross_merge(torch.randn(1, 4, 2, 9), 3, 3)


@pytest.mark.skipif(not RUNS, reason="needs Triton on a GPU or with TRITON_INTERPRET=1")
def test_ss2d_with_triton_copies_matches_the_gathers(monkeypatch):
    """A whole SS2D block (torch scan) gives the same output and parameter gradients with either cross-scan."""
    torch.manual_seed(2)
    block = mamba_unet.SS2D(d_model=8, d_state=4, scan_backend="torch").double().to(DEVICE)
    x = torch.randn(2, 5, 6, 8, dtype=torch.float64, device=DEVICE)
    results = {}
    for impl in ("gather", "triton"):
        monkeypatch.setattr(mamba_unet, "CROSS_SCAN_IMPL", impl)
        out = block(x)
        grads = torch.autograd.grad(out.square().sum(), list(block.parameters()))
        results[impl] = (out.detach(), *grads)
    for got, ref in zip(results["triton"], results["gather"]):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.skipif(not RUNS, reason="needs Triton on a GPU or with TRITON_INTERPRET=1")
def test_mamba_unet_with_the_triton_cross_scan_matches_the_gathers(monkeypatch):
    """MambaUNet(cross_scan_impl="triton") against the module-wide gathers: same logits and gradients (the
    constructor argument, which the bundle's `cross_scan_impl` config key sets, reaches every block)."""
    monkeypatch.setattr(mamba_unet, "CROSS_SCAN_IMPL", "gather")
    torch.manual_seed(4)
    x = torch.randn(1, 1, 64, 64, dtype=torch.float64, device=DEVICE)
    results = {}
    for impl in (None, "triton"):
        torch.manual_seed(5)
        net = mamba_unet.MambaUNet(embed_dim=8, d_state=4, scan_backend="torch", cross_scan_impl=impl)
        net = net.double().to(DEVICE)
        logits = net(x)
        grads = torch.autograd.grad(logits.square().mean(), [net.patch_embed.proj.weight, net.output.weight])
        results[impl] = (logits.detach(), *grads)
    for got, ref in zip(results["triton"], results[None]):
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-10)


@pytest.mark.skipif(not ON_GPU, reason="needs CUDA and Triton")
@pytest.mark.parametrize("dim, side", [(192, 56), (384, 28), (768, 14), (1536, 7)])
def test_gpu_compiled_matches_gathers_on_mamba_unet_shapes(monkeypatch, dim, side):
    """Mamba-UNet's four stage shapes in bf16 from a channels-last map, eager and under torch.compile (fullgraph)."""
    torch.manual_seed(3)
    x = torch.randn(4, side, side, dim, device="cuda").bfloat16().permute(0, 3, 1, 2)  # channels-last memory
    weight = torch.randn(4, 4, dim, side * side, device="cuda").bfloat16()
    ref = gathered(x, weight, side, side, "gather", monkeypatch)
    eager = gathered(x, weight, side, side, "triton", monkeypatch)

    def scan_and_merge(t):
        xs = mamba_unet.cross_scan(t)
        return xs, mamba_unet.cross_merge(xs * weight, side, side)

    torch._dynamo.reset()
    compiled = torch.compile(scan_and_merge, fullgraph=True)  # CROSS_SCAN_IMPL is still "triton"
    leaf = x.detach().clone().requires_grad_()
    xs, merged = compiled(leaf)
    (grad,) = torch.autograd.grad((merged.float() * merged.float()).sum(), leaf)
    for result in (eager, (xs.detach(), merged.detach(), grad)):
        for g, r in zip(result, ref):
            torch.testing.assert_close(g, r)
    torch._dynamo.reset()
