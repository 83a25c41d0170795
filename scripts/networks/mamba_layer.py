"""Mamba (S6) mixer and U-Mamba's ``MambaLayer``, with mamba-ssm's parameter layout and a pure-PyTorch CPU path.

:class:`Mamba` is written from the spec of ``mamba_ssm.modules.mamba_simple.Mamba`` (mamba-ssm 2.3.2): the same
parameter names and shapes (``in_proj``, ``conv1d``, ``x_proj``, ``dt_proj``, ``A_log``, ``D``, ``out_proj``) and the
same initialisation, so a state dict moves between the two unchanged. Its forward picks one of three paths:

- ``"torch"`` (CPU, or mamba-ssm missing, or ``scan_backend="torch"`` / ``MAMBA_UNET_SCAN=torch``): causal depthwise
  conv1d, SiLU, x_proj split, dt_proj, :func:`scripts.selective_scan.selective_scan`, gate ``y * SiLU(z)``, out_proj.
- ``"cuda"`` with causal-conv1d installed: mamba-ssm's fused ``mamba_inner_fn``, called exactly as mamba-ssm's own
  ``Mamba`` fast path calls it.
- ``"cuda"`` without causal-conv1d: the torch path's conv and projections with mamba-ssm's CUDA scan (what mamba-ssm's
  ``Mamba`` does in that case: ``mamba_inner_fn`` needs causal-conv1d).

mamba-ssm and causal-conv1d are imported lazily, at the first CUDA forward, never at module import.

:class:`MambaLayer` is U-Mamba's wrapper: flatten (B, C, H, W) to tokens, LayerNorm, Mamba, back to (B, C, H, W), with
no residual. It always runs in float32 with autocast off: the selective scan's output can be orders of magnitude larger
than its inputs (U-Mamba's author traced U-Mamba's AMP NaNs to this, state-spaces/mamba#72), which overflows float16
and loses most bits in bfloat16 before out_proj; U-Mamba's own MambaLayer disables autocast for the same reason.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from scripts.selective_scan import scan_backend_in_use, selective_scan

__all__ = ["Mamba", "MambaLayer", "mamba_fused_path_available"]

_fused_inner_fn: Callable[..., torch.Tensor] | None = None
_fused_import_tried = False


def _load_fused_inner_fn() -> Callable[..., torch.Tensor] | None:
    """mamba-ssm's ``mamba_inner_fn`` when both it and causal-conv1d import (tried once, then cached), else None."""
    global _fused_inner_fn, _fused_import_tried
    if not _fused_import_tried:
        _fused_import_tried = True
        try:
            import causal_conv1d  # noqa: F401  (mamba_inner_fn runs causal-conv1d's kernels; mamba-ssm checks the same)
            from mamba_ssm.ops.selective_scan_interface import mamba_inner_fn
        except Exception:  # a missing package or a broken CUDA extension: the unfused path still works
            _fused_inner_fn = None
        else:
            _fused_inner_fn = mamba_inner_fn
    return _fused_inner_fn


def mamba_fused_path_available() -> bool:
    """True when mamba-ssm's fused ``mamba_inner_fn`` can run (mamba-ssm and causal-conv1d both import)."""
    return _load_fused_inner_fn() is not None


class Mamba(nn.Module):
    """Mamba (S6) sequence mixer: (B, L, d_model) -> (B, L, d_model).

    d_inner = expand * d_model; dt_rank = ceil(d_model / 16) unless given. Parameters (names and shapes of
    mamba-ssm's ``Mamba``): ``in_proj`` Linear(d_model -> 2 d_inner), ``conv1d`` depthwise Conv1d(d_inner, k=d_conv,
    padding d_conv - 1), ``x_proj`` Linear(d_inner -> dt_rank + 2 d_state, no bias), ``dt_proj`` Linear(dt_rank ->
    d_inner), ``A_log`` (d_inner, d_state), ``D`` (d_inner,), ``out_proj`` Linear(d_inner -> d_model).

    Init as mamba-ssm: PyTorch defaults for the Linear/Conv1d weights, dt_proj.weight ~ U(+-dt_rank^-0.5),
    softplus(dt_proj.bias) log-uniform in [dt_min, dt_max] (floored at dt_init_floor), A = -(1..d_state) per channel
    (A_log = log(1..d_state)), D = 1.

    Args:
        d_model: token dimension.
        d_state: SSM state size N.
        d_conv: causal depthwise convolution width.
        expand: d_inner / d_model.
        dt_rank: rank of the delta projection, or "auto" for ceil(d_model / 16).
        dt_min, dt_max, dt_init_floor: range of the initial step sizes softplus(dt_proj.bias).
        conv_bias: bias of conv1d. bias: bias of in_proj and out_proj.
        scan_backend: "auto" | "torch" | "cuda" | "triton", resolved by
            :func:`scripts.selective_scan.scan_backend_in_use` ("auto" follows the environment variable
            ``MAMBA_UNET_SCAN``); "triton" runs the unfused path with the Triton scan.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        scan_backend: str = "auto",
    ) -> None:
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.scan_backend = scan_backend
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.conv1d = nn.Conv1d(
            self.d_inner, self.d_inner, d_conv, padding=d_conv - 1, groups=self.d_inner, bias=conv_bias
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        # A_log and D are kept in float32 whatever the module's dtype elsewhere, as in mamba-ssm.
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(self.d_inner, 1))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)
        self._init_dt_projection(dt_min, dt_max, dt_init_floor)

    @torch.no_grad()
    def _init_dt_projection(self, dt_min: float, dt_max: float, dt_init_floor: float) -> None:
        dt_std = self.dt_rank**-0.5
        self.dt_proj.weight.uniform_(-dt_std, dt_std)
        log_dt = torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        dt = torch.exp(log_dt).clamp(min=dt_init_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus: softplus(bias) = dt

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """hidden_states: (B, L, d_model) -> (B, L, d_model)."""
        if hidden_states.dim() != 3 or hidden_states.shape[-1] != self.d_model:
            raise ValueError(f"Mamba expects input (B, L, {self.d_model}), got shape {tuple(hidden_states.shape)}")
        batch, length, _ = hidden_states.shape
        # One matmul gives (2 d_inner, B*L): viewed as (B, 2 d_inner, L) it has L contiguous, the scan's layout.
        xz = self.in_proj.weight @ hidden_states.reshape(batch * length, self.d_model).t()
        xz = xz.view(2 * self.d_inner, batch, length).transpose(0, 1)
        if self.in_proj.bias is not None:
            xz = xz + self.in_proj.bias.to(xz.dtype)[:, None]
        backend = scan_backend_in_use(xz, self.scan_backend)
        if backend == "cuda":
            fused = _load_fused_inner_fn()
            if fused is not None:
                return self._fused_forward(fused, xz)
        return self._unfused_forward(xz, backend)

    def _fused_forward(self, mamba_inner_fn: Callable[..., torch.Tensor], xz: torch.Tensor) -> torch.Tensor:
        """mamba-ssm's fused conv + projections + scan + gate + out_proj, with mamba-ssm Mamba's own arguments."""
        return mamba_inner_fn(
            xz,
            self.conv1d.weight,
            self.conv1d.bias,
            self.x_proj.weight,
            self.dt_proj.weight,
            self.out_proj.weight,
            self.out_proj.bias,
            -torch.exp(self.A_log.float()),
            None,  # B and C are input-dependent (computed from x_proj inside)
            None,
            self.D.float(),
            delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
        )

    def _unfused_forward(self, xz: torch.Tensor, backend: str) -> torch.Tensor:
        """xz: (B, 2 d_inner, L) -> (B, L, d_model) with F.conv1d and :func:`selective_scan` (``backend``)."""
        length = xz.shape[-1]
        x, z = xz.chunk(2, dim=1)  # (B, d_inner, L) each
        # Causal depthwise convolution: pad d_conv - 1 on both sides, keep the first L outputs.
        x = F.conv1d(x, self.conv1d.weight, self.conv1d.bias, padding=self.d_conv - 1, groups=self.d_inner)
        x = F.silu(x[..., :length])
        x_dbl = self.x_proj(x.transpose(1, 2))  # (B, L, dt_rank + 2N)
        dt, b_mat, c_mat = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = (dt @ self.dt_proj.weight.t()).transpose(1, 2)  # (B, d_inner, L); the bias goes in as delta_bias
        # A, D and delta_bias in float32 (float64 for float64 modules), as mamba-ssm passes them.
        param_dtype = torch.promote_types(self.A_log.dtype, torch.float32)
        y = selective_scan(
            x,
            delta,
            -torch.exp(self.A_log.to(param_dtype)),
            b_mat.transpose(1, 2),  # (B, N, L)
            c_mat.transpose(1, 2),
            D=self.D.to(param_dtype),
            delta_bias=self.dt_proj.bias.to(param_dtype),
            delta_softplus=True,
            backend=backend,
        )
        y = y * F.silu(z)
        return self.out_proj(y.transpose(1, 2))


class MambaLayer(nn.Module):
    """U-Mamba's Mamba layer: (B, C, H, W) -> (B, C, H, W); the output replaces the feature map (no residual).

    Spatial-token mode (default): the H*W positions are the tokens (row-major), each of dimension C = ``dim``.
    Channel-token mode (U-Mamba-Enc where H*W <= C): the C channels are the tokens, each of dimension H*W = ``dim``
    (LayerNorm over the spatial positions), so the layer only fits one spatial size.

    Runs in float32 (float64 for float64 input) with autocast disabled and returns that dtype; see the module
    docstring for why. Parameters: ``norm`` LayerNorm(dim) and ``mamba`` :class:`Mamba` (d_model = dim).
    """

    def __init__(
        self,
        dim: int,
        channel_token: bool = False,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        scan_backend: str = "auto",
    ) -> None:
        super().__init__()
        self.dim = dim
        self.channel_token = channel_token
        self.norm = nn.LayerNorm(dim)
        self.mamba = Mamba(d_model=dim, d_state=d_state, d_conv=d_conv, expand=expand, scan_backend=scan_backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, C, H, W) in float32 (or float64)."""
        batch, channels, height, width = x.shape
        token_dim = height * width if self.channel_token else channels
        if token_dim != self.dim:
            mode = "channel-token (d_model = H*W)" if self.channel_token else "spatial-token (d_model = C)"
            raise ValueError(
                f"MambaLayer({mode}) was built for d_model={self.dim}, got a feature map of shape {tuple(x.shape)}; "
                "a channel-token layer fits only the input size the network was built for"
            )
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.to(torch.promote_types(x.dtype, torch.float32))
            tokens = x.flatten(2)  # (B, C, L): channel tokens of dimension L
            if not self.channel_token:
                tokens = tokens.transpose(1, 2)  # (B, L, C): spatial tokens of dimension C
            out = self.mamba(self.norm(tokens))
            if not self.channel_token:
                out = out.transpose(1, 2)
            # Contiguous (NCHW) again: the transposed view has channels-last strides, and on CPU (torch 2.13, oneDNN)
            # the weight gradient of a following stride-2 1x1 conv on such an input segfaults.
            return out.reshape(batch, channels, height, width).contiguous()
