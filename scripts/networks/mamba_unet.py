"""Mamba-UNet (Wang et al. 2024, arXiv 2402.05079): a VMamba-v0 encoder with a Swin-UNet style decoder.

Re-implemented from the architecture spec of the paper's code (``mamba_sys.py``, = VMamba v0 ``vmamba.py`` plus the
Swin-UNet decoder). Module and parameter names deliberately follow that code, and thus the VMamba v0 ImageNet
checkpoint ``vmamba_tiny_e292.pth``: ``layers.{i}.blocks.{j}.self_attention.x_proj_weight`` etc. are what the
checkpoint stores, so keeping the names (and the stacked K=4 direction layout of the SS2D parameters) is what lets
:func:`load_vmamba_v0_weights` initialise the network the way the paper did. Renaming anything breaks that loading.

Layout: tensors between blocks are channels-last ``(B, H, W, C)`` as in the reference; the network's input and
output are channels-first ``(B, C, H, W)``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import PatchEmbed
from monai.networks.layers import DropPath
from monai.networks.nets.swin_unetr import PatchMergingV2

from scripts.networks.pretrained import load_mirrored_encoder_weights
from scripts.selective_scan import resolve_scan_backend, selective_scan
from scripts.triton_cross_scan import triton_cross_merge, triton_cross_scan
from scripts.triton_scan import triton_selective_scan

logger = logging.getLogger(__name__)

PATCH_SIZE = 4  # stem patch size of VMamba-T / Mamba-UNet
NUM_DIRECTIONS = 4  # SS2D scans: row-major, column-major, and both reversed
# How SS2D feeds the four directions to the Triton scan backend (the others always "gather"; scripts/benchmark.py
# --triton_cross_scan compares them): "gather" copies the map into the 4 scan orders and back (SS2D._gathered_scan);
# "pair" keeps a row-major and a column-major copy, each walked forwards and backwards by the kernel (coalesced);
# "index" keeps only the row-major map and the kernel walks every direction's pixel order by index (no copy, strided
# reads for the column-major directions). Both fused modes: SS2D._fused_triton_scan. "gather" is the default: on one
# H100 (bf16 step, seq backward) it trained at 257 img/s against 225 for "pair" (slower backward at stages 0/1) and
# the index mode's strided reads made its scans 2x slower (docs/performance.md, version 5; not re-measured with the
# version-8 backward).
TRITON_CROSS_SCAN = "gather"
TRITON_CROSS_SCAN_MODES = ("gather", "pair", "index")
# How cross_scan / cross_merge move the data when the directions are gathered: "gather" (one index gather each way,
# the backward the other gather; change 1 in docs/performance.md, the fastest eager), "views" (flip / transpose views
# copied by one stack, the merge as flips and a transpose; the backward is autograd's), or "auto" ("views" while
# torch.compile traces, "gather" eager). Why "views" under compile: Inductor turns the gathers into index loads whose
# column-major directions read x with stride W (the compiled bf16 profile's gather kernels move ~335 GB/s), while it
# can emit transposes and flips as tiled, coalesced copies. "triton": scripts/triton_cross_scan.py's tiled kernels,
# which read the channels-last conv output and write the merged sum channels-last for out_norm (both sides of each
# transpose coalesced; CUDA, or CPU under TRITON_INTERPRET=1). Neither is measured on the GPU yet, so "gather" stays the
# default.
CROSS_SCAN_IMPL = "gather"
CROSS_SCAN_IMPLS = ("gather", "views", "auto", "triton")


def _four_directions(row_major: torch.Tensor, height: int, width: int, dim: int) -> torch.Tensor:
    """(..., L) in row-major pixel order -> the four SS2D scans stacked at ``dim``: [row-major, column-major, reversed
    row-major, reversed column-major] (the one definition of the scan orders: the index orders and the "views"
    cross-scan both come from here)."""
    column_major = row_major.unflatten(-1, (height, width)).transpose(-1, -2).flatten(-2)
    return torch.stack([row_major, column_major, row_major.flip(-1), column_major.flip(-1)], dim=dim)


def _direction_orders(height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel orders of the four SS2D scans and their inverses, both (4, L) int64 with L = height*width.

    ``orders[k, l]`` is the row-major index of the l-th pixel of scan k ([row-major, column-major, reversed row-major,
    reversed column-major]); ``inverses[k, p]`` is the position of row-major pixel p in scan k. One gather with these
    replaces the reference's stack/transpose/flip/cat copies (one pass over the tensor instead of four).
    """
    key = (height, width, str(device))
    cached = _ORDER_CACHE.get(key)
    if cached is None:
        orders = _four_directions(torch.arange(height * width, device=device), height, width, dim=0)
        cached = (orders, orders.argsort(dim=1))
        _ORDER_CACHE[key] = cached
    return cached


_ORDER_CACHE: dict[tuple[int, int, str], tuple[torch.Tensor, torch.Tensor]] = {}


def _kernel_orders(mode: str, height: int, width: int, device: torch.device) -> torch.Tensor:
    """The (4, L) int32 ``orders`` of the fused Triton scan for ``mode``: "index", the pixel orders of
    :func:`_direction_orders` in the row-major map; "pair", forwards / forwards / backwards / backwards (directions
    0 and 2 walk the row-major copy, 1 and 3 the column-major copy)."""
    key = (mode, height, width, str(device))
    cached = _KERNEL_ORDER_CACHE.get(key)
    if cached is None:
        if mode == "index":
            cached = _direction_orders(height, width, device)[0].to(torch.int32)
        else:
            forward = torch.arange(height * width, device=device, dtype=torch.int32)
            cached = torch.stack([forward, forward, forward.flip(0), forward.flip(0)])
        _KERNEL_ORDER_CACHE[key] = cached
    return cached


_KERNEL_ORDER_CACHE: dict[tuple[str, int, int, str], torch.Tensor] = {}


def _gather_directions(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, D, L) gathered with (4, L) -> (B, 4, D, L): out[b, k, d, l] = x[b, d, index[k, l]]."""
    batch, dim, length = x.shape
    expanded = index.view(1, NUM_DIRECTIONS, 1, length).expand(batch, NUM_DIRECTIONS, dim, length)
    return x.unsqueeze(1).expand(batch, NUM_DIRECTIONS, dim, length).gather(3, expanded)


def _merge_directions(y: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """(B, 4, D, L) gathered with the (4, L) inverse orders and summed over the directions -> (B, D, L)."""
    batch, _, dim, length = y.shape
    expanded = inverse.view(1, NUM_DIRECTIONS, 1, length).expand(batch, NUM_DIRECTIONS, dim, length)
    # Summed in float32 whatever the input dtype, like the reference (whose scan output is float32).
    return y.gather(3, expanded).sum(dim=1, dtype=torch.promote_types(y.dtype, torch.float32))


class _CrossScan(torch.autograd.Function):
    """Gather into the four scan orders; the backward is the merge (the adjoint of a gather is a scatter-add, which
    here is the gather with the inverse orders, summed), avoiding a zero-filled scatter_add buffer per direction."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, orders: torch.Tensor, inverses: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(orders, inverses)
        ctx.input_dtype = x.dtype
        return _gather_directions(x, orders)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        _, inverses = ctx.saved_tensors
        return _merge_directions(grad, inverses).to(ctx.input_dtype), None, None


class _CrossMerge(torch.autograd.Function):
    """Sum of the four scans in row-major order (float32 or wider); the backward gathers the gradient into the scan
    orders."""

    @staticmethod
    def forward(ctx, y: torch.Tensor, orders: torch.Tensor, inverses: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(orders, inverses)
        ctx.input_dtype = y.dtype
        return _merge_directions(y, inverses)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        orders, _ = ctx.saved_tensors
        return _gather_directions(grad.to(ctx.input_dtype), orders), None, None


def _cross_scan_impl(impl: str | None = None) -> str:
    """``impl`` (None: CROSS_SCAN_IMPL) resolved: "gather", "views" or "triton" ("auto" by whether torch.compile is
    tracing)."""
    impl = CROSS_SCAN_IMPL if impl is None else impl
    if impl not in CROSS_SCAN_IMPLS:
        raise ValueError(f"mamba_unet.CROSS_SCAN_IMPL must be one of {CROSS_SCAN_IMPLS}, got {impl!r}")
    if impl == "auto":
        return "views" if torch.compiler.is_compiling() else "gather"
    return impl


def cross_scan(x: torch.Tensor, impl: str | None = None) -> torch.Tensor:
    """Unfold a feature map into the four SS2D scan sequences.

    Args:
        x: (B, D, H, W).
        impl: how the data move, one of CROSS_SCAN_IMPLS; None: the module's CROSS_SCAN_IMPL.

    Returns:
        (B, 4, D, L) contiguous with L = H*W: [row-major, column-major, reversed row-major, reversed column-major].
    """
    batch, dim, height, width = x.shape
    impl = _cross_scan_impl(impl)
    if impl == "triton":
        return triton_cross_scan(x)
    if impl == "views":
        return _four_directions(x.reshape(batch, dim, height * width), height, width, dim=1)
    orders, inverses = _direction_orders(height, width, x.device)
    flat = x.reshape(batch, dim, height * width)
    if not (torch.is_grad_enabled() and flat.requires_grad):  # inference / torch.jit.trace: no autograd.Function
        return _gather_directions(flat, orders)
    return _CrossScan.apply(flat, orders, inverses)


def cross_merge(y: torch.Tensor, height: int, width: int, impl: str | None = None) -> torch.Tensor:
    """Map the four scan outputs back to row-major order and SUM them (the reference sums, it does not average).

    Args:
        y: (B, 4, D, L) in the order produced by :func:`cross_scan`.
        height, width: spatial size with L = height*width.
        impl: as for :func:`cross_scan`.

    Returns:
        (B, D, L) in row-major order ("triton": a transposed view of channels-last (B, L, D) memory).
    """
    impl = _cross_scan_impl(impl)
    if impl == "triton":
        return triton_cross_merge(y, height, width)
    if impl == "views":
        batch, _, dim, length = y.shape
        wide = y.to(torch.promote_types(y.dtype, torch.float32))  # summed in float32 or wider, as the gather path
        row_major = wide[:, 0] + wide[:, 2].flip(-1)
        column_major = (wide[:, 1] + wide[:, 3].flip(-1)).view(batch, dim, width, height).transpose(2, 3)
        return row_major + column_major.reshape(batch, dim, length)
    orders, inverses = _direction_orders(height, width, y.device)
    if not (torch.is_grad_enabled() and y.requires_grad):  # inference / torch.jit.trace: no autograd.Function
        return _merge_directions(y, inverses)
    return _CrossMerge.apply(y, orders, inverses)


class SS2D(nn.Module):
    """2D selective-scan mixer of VMamba v0 (channels-last in and out).

    in_proj (C -> 2*d_inner) -> split x, z -> depthwise conv -> SiLU -> 4-direction selective scan, summed ->
    out_norm -> * SiLU(z) -> out_proj (d_inner -> C).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 3,
        expand: int = 2,
        scan_backend: str = "auto",
        cross_scan_impl: str | None = None,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
    ) -> None:
        super().__init__()
        self.d_state = d_state
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16)
        self.scan_backend = scan_backend
        if cross_scan_impl is not None and cross_scan_impl not in CROSS_SCAN_IMPLS:
            raise ValueError(f"cross_scan_impl must be None or one of {CROSS_SCAN_IMPLS}, got {cross_scan_impl!r}")
        self.cross_scan_impl = cross_scan_impl
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv2d = nn.Conv2d(
            self.d_inner, self.d_inner, d_conv, padding=(d_conv - 1) // 2, groups=self.d_inner, bias=True
        )
        # Plain stacked Parameters (one slice per direction), exactly as the checkpoint stores them.
        self.x_proj_weight = nn.Parameter(torch.empty(NUM_DIRECTIONS, self.dt_rank + 2 * d_state, self.d_inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(NUM_DIRECTIONS, self.d_inner, self.dt_rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(NUM_DIRECTIONS, self.d_inner))
        self.A_logs = nn.Parameter(torch.empty(NUM_DIRECTIONS * self.d_inner, d_state))
        self.Ds = nn.Parameter(torch.empty(NUM_DIRECTIONS * self.d_inner))
        self.out_norm = nn.LayerNorm(self.d_inner)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        self._init_scan_parameters(dt_min, dt_max, dt_init_floor)

    @torch.no_grad()
    def _init_scan_parameters(self, dt_min: float, dt_max: float, dt_init_floor: float) -> None:
        """Reference init of the stacked scan parameters (the network-wide Linear init never touches them)."""
        # The reference builds x_proj as nn.Linear and stacks the weights: nn.Linear's default U(+-1/sqrt(fan_in)).
        bound = self.d_inner**-0.5
        self.x_proj_weight.uniform_(-bound, bound)
        dt_std = self.dt_rank**-0.5
        self.dt_projs_weight.uniform_(-dt_std, dt_std)
        # dt ~ log-uniform in [dt_min, dt_max]; the bias is its inverse softplus so softplus(bias) starts at dt.
        log_dt = torch.rand(NUM_DIRECTIONS, self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        dt = torch.exp(log_dt).clamp(min=dt_init_floor)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        # S4D-real init: A = -(1..N) for every channel.
        self.A_logs.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).expand_as(self.A_logs))
        self.Ds.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) -> (B, H, W, C)."""
        batch, height, width, _ = x.shape
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = F.silu(self.conv2d(x.permute(0, 3, 1, 2)))  # (B, d_inner, H, W)
        mode = TRITON_CROSS_SCAN if resolve_scan_backend(x, self.scan_backend) == "triton" else "gather"
        if mode not in TRITON_CROSS_SCAN_MODES:
            raise ValueError(f"mamba_unet.TRITON_CROSS_SCAN must be one of {TRITON_CROSS_SCAN_MODES}, got {mode!r}")
        y = self._gathered_scan(x, height, width) if mode == "gather" else self._fused_triton_scan(x, mode)
        y = y.transpose(1, 2).reshape(batch, height, width, self.d_inner)
        # Like the reference, normalise the float32 sum (under autocast the norm weights stay float32 too).
        y = self.out_norm(y.to(self.out_norm.weight.dtype)).to(x.dtype)
        return self.out_proj(y * F.silu(z))

    def _scan_parameters(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A (4 d_inner, N) in float32 or wider, D (4 d_inner,), delta_bias (4 d_inner,)."""
        a_dtype = torch.promote_types(self.A_logs.dtype, torch.float32)
        return -torch.exp(self.A_logs.to(a_dtype)), self.Ds, self.dt_projs_bias.reshape(-1)

    def _gathered_scan(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """x: (B, d_inner, H, W) -> the four directions' scans summed in row-major order, (B, d_inner, L) float32.

        The reference's dataflow: gather the four scan orders into (B, 4, d_inner, L), project and scan them as one
        (B, 4 d_inner, L) sequence batch, gather back and sum."""
        batch = x.shape[0]
        length = height * width
        xs = cross_scan(x, self.cross_scan_impl)  # (B, K, d_inner, L), contiguous
        # Broadcast batched matmuls read xs in place (einsum would permute-copy it): (1,K,c,d) @ (B,K,d,L) -> (B,K,c,L).
        x_dbl = torch.matmul(self.x_proj_weight.unsqueeze(0), xs)
        dts, b_mats, c_mats = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=2)
        dts = torch.matmul(self.dt_projs_weight.unsqueeze(0), dts)  # (B, K, d_inner, L)
        u, delta = xs.view(batch, -1, length), dts.reshape(batch, -1, length)
        # B/C stay grouped per direction (B, K, N, L); on the CUDA kernel bf16 inputs (autocast) pass through as they
        # are, the torch scan computes in fp32 (fp64 for a float64 network). Both return u's dtype.
        a_mat, d_skip, delta_bias = self._scan_parameters()
        y = selective_scan(
            u,
            delta,
            a_mat,
            b_mats,
            c_mats,
            D=d_skip,
            delta_bias=delta_bias,
            delta_softplus=True,
            backend=self.scan_backend,
        )
        y = y.view(batch, NUM_DIRECTIONS, self.d_inner, length)
        return cross_merge(y, height, width, self.cross_scan_impl)  # (B, d_inner, L)

    def _fused_triton_scan(self, x: torch.Tensor, mode: str) -> torch.Tensor:
        """x: (B, d_inner, H, W) -> the same float32 sum as :meth:`_gathered_scan`, (B, d_inner, L) row-major, with
        the cross-scan fused into the Triton kernel (``mode`` "pair" or "index", see TRITON_CROSS_SCAN).

        x_proj and dt_proj act on each pixel alone, so they can run on the map in any memory order: on the row-major
        map ("index") or on its row- and column-major copies ("pair"), instead of on 4 gathered copies. The kernel
        then walks each direction's order through ``orders`` and writes y where it read, and its backward sums du
        over the directions sharing a copy. The (B, 4, d_inner, L) gathered input is never built."""
        batch, _, height, width = x.shape
        length = height * width
        copies = [x.reshape(batch, self.d_inner, length)]
        if mode == "pair":  # + column-major: pixel (h, w) at w * H + h
            copies.append(x.transpose(2, 3).reshape(batch, self.d_inner, length))
        n_copies = len(copies)
        u = torch.stack(copies, dim=1) if n_copies > 1 else copies[0].unsqueeze(1)  # (B, n, d_inner, L)
        # Direction k = n i + j reads copy j: per copy, one (4 / n * c, d_inner) @ (B, d_inner, L) matmul.
        weight = self.x_proj_weight.view(NUM_DIRECTIONS // n_copies, n_copies, -1, self.d_inner).transpose(0, 1)
        x_dbl = torch.matmul(weight.reshape(n_copies, -1, self.d_inner), u)  # (B, n, 4 / n * c, L): [j, (i, c)]
        x_dbl = x_dbl.view(batch, n_copies, NUM_DIRECTIONS // n_copies, -1, length).transpose(1, 2)
        x_dbl = x_dbl.reshape(batch, NUM_DIRECTIONS, -1, length)  # (B, K, c, L), k = n i + j
        dts, b_mats, c_mats = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=2)
        dts = torch.matmul(self.dt_projs_weight.unsqueeze(0), dts)  # (B, K, d_inner, L)
        a_mat, d_skip, delta_bias = self._scan_parameters()
        y = triton_selective_scan(
            u.view(batch, n_copies * self.d_inner, length),
            dts.reshape(batch, -1, length),
            a_mat,
            b_mats,
            c_mats,
            D=d_skip,
            delta_bias=delta_bias,
            orders=_kernel_orders(mode, height, width, x.device),
        )
        y = y.view(batch, NUM_DIRECTIONS // n_copies, n_copies, self.d_inner, length)
        y = y.sum(dim=1, dtype=torch.promote_types(y.dtype, torch.float32))  # (B, n, d_inner, L), per copy's order
        if mode == "index":
            return y[:, 0]
        column_major = y[:, 1].view(batch, self.d_inner, width, height).transpose(2, 3).reshape(batch, -1, length)
        return y[:, 0] + column_major


class VSSBlock(nn.Module):
    """x + DropPath(SS2D(LayerNorm(x))); no MLP and no layer scale. (B, H, W, C) -> (B, H, W, C).

    ``ss2d_kwargs`` (d_state, d_conv, expand, scan_backend, cross_scan_impl) go to :class:`SS2D` unchanged."""

    def __init__(self, dim: int, drop_path: float, **ss2d_kwargs: Any) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.self_attention = SS2D(dim, **ss2d_kwargs)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.self_attention(self.ln_1(x)))


class PatchExpand(nn.Module):
    """Linear(C -> scale^2 * out_dim, no bias), unfold channel groups into a scale x scale patch, LayerNorm(out_dim).

    (B, H, W, C) -> (B, scale*H, scale*W, out_dim). Swin-UNet's PatchExpand is (scale 2, out_dim C/2), its
    FinalPatchExpand_X4 is (scale 4, out_dim C). Hand-written because nn.PixelShuffle expects the channel index as
    (c, p1, p2) whereas the reference orders it (p1, p2, c).
    """

    def __init__(self, dim: int, out_dim: int, scale: int) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.scale = scale
        self.expand = nn.Linear(dim, scale * scale * out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        s = self.scale
        x = self.expand(x).reshape(batch, height, width, s, s, self.out_dim)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch, height * s, width * s, self.out_dim)
        return self.norm(x)


class VSSLayer(nn.Module):
    """One stage: VSSBlocks, then optionally PatchMerging (``downsample``, encoder) or PatchExpand (``upsample``,
    decoder). The attribute names follow the checkpoint. (B, H, W, C) -> (B, H/2, W/2, 2C) | (B, 2H, 2W, C/2) |
    (B, H, W, C). ``ss2d_kwargs`` go to every block's :class:`SS2D`."""

    def __init__(self, dim: int, drop_path_rates: Sequence[float], resample: str | None, **ss2d_kwargs: Any) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(VSSBlock(dim, rate, **ss2d_kwargs) for rate in drop_path_rates)
        # MONAI's 2D PatchMergingV2 gathers (0::2,0::2), (1::2,0::2), (0::2,1::2), (1::2,1::2) -> LN(4C) ->
        # Linear(4C -> 2C, no bias): the reference's order and parameter names.
        self.downsample = PatchMergingV2(dim, norm_layer=nn.LayerNorm, spatial_dims=2) if resample == "down" else None
        self.upsample = PatchExpand(dim, dim // 2, scale=2) if resample == "up" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        if self.downsample is not None:
            x = self.downsample(x)
        if self.upsample is not None:
            x = self.upsample(x)
        return x


def _init_linear_and_norm(module: nn.Module) -> None:
    """VSSM-wide init of the reference: Linear trunc_normal(std .02) and bias 0; LayerNorm weight 1, bias 0."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class MambaUNet(nn.Module):
    """Mamba-UNet for 2D segmentation: (B, in_channels, H, W) -> logits (B, out_channels, H, W).

    H and W must be divisible by 4 * 2**(len(depths) - 1) (32 for the paper's four stages).

    Args:
        in_channels: input channels.
        out_channels: number of classes.
        embed_dim: channels after the stem; stage i has embed_dim * 2**i.
        depths: VSSBlocks per encoder stage; decoder stage k mirrors encoder stage len(depths)-1-k.
        d_state, d_conv, expand: SS2D hyper-parameters.
        drop_path_rate: stochastic depth rises linearly from 0 to this over the encoder blocks; the decoder re-uses
            the rates of the mirrored encoder stage.
        rgb_stem: True = the paper's 3-channel stem (a 1-channel input is repeated to 3 channels, which lets the
            ImageNet stem load unchanged); False = the stem takes in_channels directly.
        scan_backend: passed to :func:`scripts.selective_scan.selective_scan`.
        cross_scan_impl: how SS2D moves the feature map into the four scan orders and back, one of CROSS_SCAN_IMPLS
            ("triton": tiled kernels, CUDA only); None: the module's CROSS_SCAN_IMPL at each call ("gather").
        pretrained_path: VMamba v0 checkpoint loaded with :func:`load_vmamba_v0_weights` after init.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 4,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 2, 2),
        d_state: int = 16,
        d_conv: int = 3,
        expand: int = 2,
        drop_path_rate: float = 0.2,
        rgb_stem: bool = True,
        scan_backend: str = "auto",
        cross_scan_impl: str | None = None,
        pretrained_path: str | None = None,
    ) -> None:
        super().__init__()
        if len(depths) < 2:
            raise ValueError(f"MambaUNet needs at least 2 stages, got depths={tuple(depths)}")
        if rgb_stem and in_channels not in (1, 3):
            raise ValueError(
                f"rgb_stem=True takes 1 (repeated to RGB) or 3 input channels, got in_channels={in_channels}"
            )
        self.in_channels = in_channels
        self.rgb_stem = rgb_stem
        num_stages = len(depths)
        self.size_divisor = PATCH_SIZE * 2 ** (num_stages - 1)
        dims = [embed_dim * 2**i for i in range(num_stages)]
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        stage_rates = [rates[sum(depths[:i]) : sum(depths[: i + 1])] for i in range(num_stages)]
        scan_kwargs = dict(
            d_state=d_state, d_conv=d_conv, expand=expand, scan_backend=scan_backend, cross_scan_impl=cross_scan_impl
        )

        # MONAI's PatchEmbed = Conv2d(k=s=4) + LayerNorm over channels, with the reference's names (proj, norm).
        self.patch_embed = PatchEmbed(
            patch_size=PATCH_SIZE,
            in_chans=3 if rgb_stem else in_channels,
            embed_dim=embed_dim,
            norm_layer=nn.LayerNorm,
            spatial_dims=2,
        )
        self.layers = nn.ModuleList(
            VSSLayer(dims[i], stage_rates[i], "down" if i < num_stages - 1 else None, **scan_kwargs)
            for i in range(num_stages)
        )
        self.norm = nn.LayerNorm(dims[-1])
        # layers_up.0 is a bare PatchExpand; layers_up.k (k >= 1) mirrors encoder stage num_stages-1-k.
        self.layers_up = nn.ModuleList([PatchExpand(dims[-1], dims[-2], scale=2)])
        self.concat_back_dim = nn.ModuleList([nn.Identity()])
        for k in range(1, num_stages):
            stage = num_stages - 1 - k
            self.layers_up.append(
                VSSLayer(dims[stage], stage_rates[stage], "up" if k < num_stages - 1 else None, **scan_kwargs)
            )
            self.concat_back_dim.append(nn.Linear(2 * dims[stage], dims[stage]))
        self.norm_up = nn.LayerNorm(embed_dim)
        self.up = PatchExpand(embed_dim, embed_dim, scale=PATCH_SIZE)
        self.output = nn.Conv2d(embed_dim, out_channels, kernel_size=1, bias=False)

        self.apply(_init_linear_and_norm)
        if pretrained_path is not None:
            load_vmamba_v0_weights(self, pretrained_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_channels, H, W) -> logits (B, out_channels, H, W)."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"MambaUNet expects input (B, {self.in_channels}, H, W), got shape {tuple(x.shape)}")
        if x.shape[2] % self.size_divisor or x.shape[3] % self.size_divisor:
            raise ValueError(
                f"MambaUNet needs H and W divisible by {self.size_divisor}, got input shape {tuple(x.shape)}"
            )
        return u_shaped_forward(self, x)


def u_shaped_forward(network: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The Swin-UNet-style U shared by Mamba-UNet and Swin-UNet: stem, encoder stages keeping each stage's INPUT as
    the skip (the finest is the raw patch embedding, the last is unused), decoder stages fusing a skip by
    concat(decoder first) + Linear, final 4x expansion and 1x1 head. x: (B, C_in, H, W) -> logits (B, C_out, H, W)."""
    if network.rgb_stem and network.in_channels == 1:
        x = x.expand(-1, 3, -1, -1)
    x = network.patch_embed(x).permute(0, 2, 3, 1)  # (B, H/4, W/4, C): channels-last between blocks
    skips = []
    for layer in network.layers:
        skips.append(x)
        x = layer(x)
    x = network.norm(x)
    num_stages = len(network.layers)
    x = network.layers_up[0](x)
    for k in range(1, num_stages):
        x = network.concat_back_dim[k](torch.cat([x, skips[num_stages - 1 - k]], dim=-1))
        x = network.layers_up[k](x)
    x = network.norm_up(x)
    x = network.up(x).permute(0, 3, 1, 2)  # (B, C, H, W)
    return network.output(x)


def load_vmamba_v0_weights(network: MambaUNet, checkpoint_path: str) -> dict[str, list[str]]:
    """Initialise ``network`` from a VMamba v0 ImageNet checkpoint (``vmamba_tiny_e292.pth`` key layout): encoder and
    mirrored decoder stages, as the paper's code does (see :mod:`scripts.networks.pretrained`). Returns the report."""
    return load_mirrored_encoder_weights(network, checkpoint_path, "VMamba v0")
