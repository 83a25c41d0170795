"""SS2D's cross-scan and cross-merge as tiled Triton kernels (``mamba_unet.CROSS_SCAN_IMPL = "triton"``).

SS2D's feature map leaves the depthwise conv channels-last ((B, H, W, D) in memory), the selective scan wants the
four directions as (B, 4, D, L) sequences (row-major, column-major, both reversed), and out_norm wants their sum
channels-last again: both moves are transposes. Index gathers, and Inductor's kernels that fuse them (with the SiLU
before and the LayerNorm after), walk one side of a transpose with a stride of D or H elements: 335 GB/s for the
largest of them in the compiled bf16 profile (docs/performance.md), a tenth of what the H100's memory gives. Here a
program moves one tile of TD channels x TS x TS pixels: it reads and writes runs of channels on the channels-last
side and runs of positions on the sequence side (each access's pointer is contiguous along the tile axis Triton then
lays its threads on, so every warp access covers whole 32-byte sectors), and Triton transposes the tile through
shared memory in between. The reversed directions store and load runs of positions backwards (still whole sectors,
just not vectorised); the column-major ones use the tile transposed, [TD, TS (w), TS (h)], so their runs lie along
its last axis.

Hand-written because neither PyTorch nor MONAI has a "gather into several orders and back" that is coalesced on both
sides, and Inductor's fused versions of the gathers ran at the bandwidth above. Each kernel is the other's backward:
the merge of the four gradients is the cross-scan's gradient and vice versa.

Importing this module never needs Triton: the kernels are defined only when ``triton`` imports (without a GPU they
run in Triton's CPU interpreter, ``TRITON_INTERPRET=1``, as in the tests).
"""

from __future__ import annotations

import os
from typing import Any

import torch

__all__ = ["triton_cross_scan", "triton_cross_merge"]

try:  # optional dependency: plain import-guard because the kernels below must be module-level for @triton.jit
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = None
    tl = None

NUM_DIRECTIONS = 4
# Channels and pixels (TS x TS) per program, warps per program. 16 x 2-byte values are one 32-byte sector on either
# side of the transpose; the 4,096-value tile keeps 32 values per thread at 4 warps. Not yet tuned on a GPU.
TILE_CHANNELS, TILE_PIXELS, NUM_WARPS = 16, 16, 4


if triton is not None:
    _DIRECTIONS = tl.constexpr(NUM_DIRECTIONS)  # a jit function reads module globals only as constexprs

    @triton.jit
    def _tile_coordinates(dim, height, width, TD: tl.constexpr, TS: tl.constexpr):
        """This program's batch item and its tile: channels [TD, 1, 1], rows [1, TS, 1] and columns [1, 1, TS] in
        row-major tile order, rows [1, 1, TS] and columns [1, TS, 1] in the transposed one, and both masks."""
        tiles_w = tl.cdiv(width, TS)
        h0 = (tl.program_id(0) // tiles_w) * TS
        w0 = (tl.program_id(0) % tiles_w) * TS
        batch = tl.program_id(2).to(tl.int64)
        chans = (tl.program_id(1) * TD + tl.arange(0, TD))[:, None, None]
        along = tl.arange(0, TS)
        rows, cols = (h0 + along)[None, :, None], (w0 + along)[None, None, :]
        rows_t, cols_t = (h0 + along)[None, None, :], (w0 + along)[None, :, None]
        mask = (chans < dim) & (rows < height) & (cols < width)
        mask_t = (chans < dim) & (rows_t < height) & (cols_t < width)
        return batch, chans, rows, cols, rows_t, cols_t, mask, mask_t

    @triton.jit
    def _cross_scan_kernel(
        x_ptr,
        out_ptr,
        dim,
        height,
        width,
        stride_x_batch,
        stride_x_dim,
        stride_x_row,
        stride_x_col,
        TD: tl.constexpr,
        TS: tl.constexpr,
    ):
        """x (B, D, H, W), any strides -> out (B, 4, D, L) contiguous, out[b, k, d, l] = x at scan k's l-th pixel."""
        batch, chans, rows, cols, rows_t, cols_t, mask, mask_t = _tile_coordinates(dim, height, width, TD, TS)
        length = height * width
        x = tl.load(
            x_ptr + batch * stride_x_batch + chans * stride_x_dim + rows * stride_x_row + cols * stride_x_col, mask=mask
        ).to(out_ptr.dtype.element_ty)
        seq = out_ptr + (batch * _DIRECTIONS * dim + chans) * length
        row_major = rows * width + cols
        tl.store(seq + row_major, x, mask=mask)
        tl.store(seq + 2 * dim * length + (length - 1 - row_major), x, mask=mask)
        x_t = tl.permute(x, (0, 2, 1))  # [TD, TS (w), TS (h)]: column-major positions run along the last axis
        column_major = cols_t * height + rows_t
        tl.store(seq + dim * length + column_major, x_t, mask=mask_t)
        tl.store(seq + 3 * dim * length + (length - 1 - column_major), x_t, mask=mask_t)

    @triton.jit
    def _cross_merge_kernel(
        y_ptr, out_ptr, dim, height, width, ACC_FP64: tl.constexpr, TD: tl.constexpr, TS: tl.constexpr
    ):
        """y (B, 4, D, L) contiguous -> out (B, H, W, D) contiguous, the sum of the four scans at each pixel
        (accumulated in float32, float64 with ACC_FP64)."""
        batch, chans, rows, cols, rows_t, cols_t, mask, mask_t = _tile_coordinates(dim, height, width, TD, TS)
        length = height * width
        acc_dtype = tl.float64 if ACC_FP64 else tl.float32
        seq = y_ptr + (batch * _DIRECTIONS * dim + chans) * length
        row_major = rows * width + cols
        column_major = cols_t * height + rows_t
        acc = tl.load(seq + row_major, mask=mask, other=0.0).to(acc_dtype)
        acc += tl.load(seq + 2 * dim * length + (length - 1 - row_major), mask=mask, other=0.0).to(acc_dtype)
        acc_t = tl.load(seq + dim * length + column_major, mask=mask_t, other=0.0).to(acc_dtype)
        acc_t += tl.load(seq + 3 * dim * length + (length - 1 - column_major), mask=mask_t, other=0.0).to(acc_dtype)
        acc += tl.permute(acc_t, (0, 2, 1))
        out = out_ptr + ((batch * height + rows) * width + cols) * dim + chans
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask)


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _grid_and_tiles(batch: int, dim: int, height: int, width: int) -> tuple[tuple[int, int, int], int, int]:
    tile_pixels = min(TILE_PIXELS, _next_pow2(max(height, width)))
    tile_channels = min(TILE_CHANNELS, _next_pow2(dim))
    grid = (triton.cdiv(height, tile_pixels) * triton.cdiv(width, tile_pixels), triton.cdiv(dim, tile_channels), batch)
    return grid, tile_channels, tile_pixels


def _require_triton(t: torch.Tensor) -> None:
    """RuntimeError unless the kernels can run on t's device: Triton installed, and a CUDA tensor (or the CPU
    interpreter, TRITON_INTERPRET=1, as in the tests)."""
    if triton is None:
        raise RuntimeError(
            "scripts/triton_cross_scan.py: Triton is not installed; set mamba_unet.CROSS_SCAN_IMPL to 'gather'"
        )
    if t.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            f"scripts/triton_cross_scan.py: the Triton cross-scan needs CUDA tensors, got one on {t.device}; set "
            "mamba_unet.CROSS_SCAN_IMPL to 'gather' (or TRITON_INTERPRET=1 to interpret the kernels on the CPU)"
        )


def _launch_cross_scan(x: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """x (B, D, H, W), any strides -> (B, 4, D, H*W) contiguous in out_dtype."""
    batch, dim, height, width = x.shape
    out = torch.empty((batch, NUM_DIRECTIONS, dim, height * width), device=x.device, dtype=out_dtype)
    grid, tile_channels, tile_pixels = _grid_and_tiles(batch, dim, height, width)
    _cross_scan_kernel[grid](
        x, out, dim, height, width, *x.stride(), TD=tile_channels, TS=tile_pixels, num_warps=NUM_WARPS
    )
    return out


def _merged_view(y: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The merge's forward: (B, 4, D, L) -> (B, D, L), a transposed view of the channels-last sum in float32 or
    wider."""
    batch, _, dim, length = y.shape
    out = _launch_cross_merge(y, height, width, torch.promote_types(y.dtype, torch.float32))
    return out.view(batch, length, dim).transpose(1, 2)


def _launch_cross_merge(y: torch.Tensor, height: int, width: int, out_dtype: torch.dtype) -> torch.Tensor:
    """y (B, 4, D, H*W) -> (B, H, W, D) contiguous in out_dtype: the four scans summed at each pixel."""
    y = y.contiguous()
    batch, _, dim, _ = y.shape
    out = torch.empty((batch, height, width, dim), device=y.device, dtype=out_dtype)
    grid, tile_channels, tile_pixels = _grid_and_tiles(batch, dim, height, width)
    _cross_merge_kernel[grid](
        y,
        out,
        dim,
        height,
        width,
        ACC_FP64=out_dtype == torch.float64,
        TD=tile_channels,
        TS=tile_pixels,
        num_warps=NUM_WARPS,
    )
    return out


class TritonCrossScan(torch.autograd.Function):
    """(B, D, H, W) -> (B, 4, D, L); the backward is the merge of the four gradients, in x's dtype (a channels-last
    (B, D, H, W) view)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.input_dtype = x.dtype
        ctx.height, ctx.width = x.shape[2], x.shape[3]
        return _launch_cross_scan(x, x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return _launch_cross_merge(grad, ctx.height, ctx.width, ctx.input_dtype).permute(0, 3, 1, 2)


class TritonCrossMerge(torch.autograd.Function):
    """(B, 4, D, L) -> (B, D, L) view of a channels-last (B, H, W, D) sum in float32 or wider; the backward gathers
    the gradient into the four scan orders, in y's dtype."""

    @staticmethod
    def forward(ctx: Any, y: torch.Tensor, height: int, width: int) -> torch.Tensor:  # type: ignore[override]
        ctx.input_dtype = y.dtype
        ctx.height, ctx.width = height, width
        return _merged_view(y, height, width)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        return _launch_cross_scan(grad.unflatten(2, (ctx.height, ctx.width)), ctx.input_dtype), None, None


def _check_map(x: torch.Tensor) -> None:
    if x.dim() != 4 or not x.is_floating_point() or x.numel() == 0:
        raise ValueError(
            f"triton_cross_scan: expected a non-empty float (B, D, H, W) map, got {x.dtype} {tuple(x.shape)}"
        )


def triton_cross_scan(x: torch.Tensor) -> torch.Tensor:
    """The four SS2D scan sequences of a feature map, differentiable.

    Args:
        x: (B, D, H, W), any strides (channels-last memory reads best), float.

    Returns:
        (B, 4, D, L) contiguous in x's dtype, L = H*W: [row-major, column-major, reversed row-major, reversed
        column-major], as mamba_unet.cross_scan.
    """
    _require_triton(x)
    _check_map(x)
    if torch.is_grad_enabled() and x.requires_grad:
        return TritonCrossScan.apply(x)
    return _launch_cross_scan(x, x.dtype)


def triton_cross_merge(y: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The four scans summed in row-major order, differentiable.

    Args:
        y: (B, 4, D, L) in the order of :func:`triton_cross_scan`, L = height*width, float.

    Returns:
        (B, D, L) in float32 (float64 for float64 y): a transposed view of a contiguous channels-last (B, L, D)
        tensor, so ``.transpose(1, 2)`` gives the (B, L, D) map without a copy.
    """
    _require_triton(y)
    if y.dim() != 4 or y.shape[1] != NUM_DIRECTIONS or y.shape[3] != height * width or not y.is_floating_point():
        raise ValueError(
            f"triton_cross_merge: expected float (B, {NUM_DIRECTIONS}, D, {height}*{width}), got {y.dtype} "
            f"{tuple(y.shape)}"
        )
    if torch.is_grad_enabled() and y.requires_grad:
        return TritonCrossMerge.apply(y, height, width)
    return _merged_view(y, height, width)
