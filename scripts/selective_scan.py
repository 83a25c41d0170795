"""Selective scan (S6) used by SS2D: mamba-ssm's CUDA kernel on GPU, a chunked pure-PyTorch scan elsewhere.

Semantics (= ``mamba_ssm.ops.selective_scan_interface.selective_scan_ref`` without ``z``), computed in fp32
(fp64 when given fp64): ``delta = softplus(delta + delta_bias)`` if ``delta_softplus``;
``h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t`` (``h_{-1} = 0``); ``y_t = sum_n h_t[n] * C_t[n] + D * u_t``;
the result has u's input dtype.

Backends: ``"cuda"`` = mamba-ssm's CUDA kernel (the extension behind its ``selective_scan_fn``, imported lazily at the
first CUDA call, never at module import) wrapped as a torch custom op (see the CUDA section below), ``"triton"`` = the
bundle's own Triton kernel (:mod:`scripts.triton_scan`, CUDA only, ``delta_softplus=True`` only), ``"torch"`` =
``_ChunkedSelectiveScan`` below (CPU and CUDA), ``"auto"`` = cuda when possible (mamba-ssm stays the reference and the
default). With ``backend="auto"`` the environment variable ``MAMBA_UNET_SCAN`` (auto|torch|cuda|triton) overrides the
choice.

The torch backend is a chunked linear recurrence, not a loop over all L steps: the sequence is cut into chunks of T
steps, the recurrence runs inside all chunks at once (a loop over T, vectorised over chunks), chunk-end states are
carried across chunks (a loop over the chunks on (batch, dim, N), with whole-chunk decays ``exp(A * sum(delta))``),
and each position then adds the carried-in state times the running product of decays since the chunk start (no division
by cumulative products, which overflows). Only the inputs are saved; backward recomputes the states and runs the
reverse recurrence ``g_t = C_t dy_t + exp(delta_{t+1} A) g_{t+1}`` with the same chunked scan.

Timings, fp32, G=4, N=16, seconds (min of 3-5 runs). CPU: 1 thread of a shared 2-core Xeon VM, torch 2.13 (with 2
OpenMP threads on that busy VM every op waited ms on its barrier: 2-15x slower); "loop" = the previous per-step Python
loop through autograd, whose backward is quadratic in L:

    shape (batch, dim, L)   forward: chunked / loop     forward+backward: chunked / loop
    (2, 768, 256)           0.023 / 0.13                0.086 / 3.4
    (1, 768, 3136)          0.28  / 2.0                 0.95  / 500

GPU, H100, (24, 768, 3136) (stage 0 at 224x224, batch 24): mamba-ssm 2.1 ms forward, 9.5 ms forward+backward; the
torch backend 28 ms / 95 ms and +12.7 GiB peak memory; outputs and all gradients agree to a relative 2e-6.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "selective_scan",
    "scan_backend_in_use",
    "resolve_scan_backend",
    "mamba_ssm_available",
    "check_scan_inputs",
    "last_dim_contiguous",
]

logger = logging.getLogger(__name__)

SCAN_ENV_VAR = "MAMBA_UNET_SCAN"
_BACKENDS = ("auto", "torch", "cuda", "triton")

# Chunk length T of the torch scan: the Python loops run ~3T + L/T small-tensor steps, each step of the T loops works
# on L/T positions at once. On CPU T = 16..28 was fastest for L = 256..3136 (larger T: smaller, slower steps), so use
# sqrt(L)/2 with a floor of 16, which keeps the loop count near its minimum for very long L too.
_MIN_CHUNK = 16

_mamba_kernel: Any = None  # mamba-ssm's CUDA extension module ``selective_scan_cuda`` once imported
_mamba_import_error: str | None = None
_mamba_import_tried = False
_mamba_warning_logged = False


def _load_mamba_kernel() -> Any:
    """Import mamba-ssm's CUDA extension ``selective_scan_cuda`` once; cache the module or the import error text."""
    global _mamba_kernel, _mamba_import_error, _mamba_import_tried
    if not _mamba_import_tried:
        _mamba_import_tried = True
        try:
            import selective_scan_cuda  # the compiled extension that mamba-ssm's selective_scan_fn calls
        except Exception as err:  # a broken CUDA extension raises more than ImportError
            _mamba_import_error = f"{type(err).__name__}: {err}"
        else:
            _mamba_kernel = selective_scan_cuda
    return _mamba_kernel


def mamba_ssm_available() -> bool:
    """True when mamba-ssm's CUDA selective scan imports (the import is attempted once, then cached)."""
    return _load_mamba_kernel() is not None


def _requested_backend(backend: str) -> str:
    if backend not in _BACKENDS:
        raise ValueError(f"selective_scan: backend must be one of {_BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    override = os.environ.get(SCAN_ENV_VAR, "").strip().lower()
    if override and override not in _BACKENDS:
        raise ValueError(
            f"selective_scan: environment variable {SCAN_ENV_VAR} must be one of {_BACKENDS}, got {override!r}"
        )
    return override or "auto"


def scan_backend_in_use(u: torch.Tensor, backend: str = "auto") -> str:
    """Return ``"cuda"``, ``"triton"`` or ``"torch"``: the backend ``selective_scan(u, ..., backend=backend)`` runs.

    Raises RuntimeError when ``"cuda"`` or ``"triton"`` is forced (argument or ``MAMBA_UNET_SCAN``) but cannot run.
    """
    global _mamba_warning_logged
    requested = _requested_backend(backend)
    if requested == "torch":
        return "torch"
    if requested == "triton":
        from scripts.triton_scan import triton_available

        if not u.is_cuda or not triton_available():
            raise RuntimeError(
                f"selective_scan: backend 'triton' needs CUDA tensors and Triton, got tensors on {u.device} "
                f"(Triton {'installed' if triton_available() else 'not installed'}); use backend='cuda' or 'torch'"
            )
        return "triton"
    if requested == "cuda":
        if not u.is_cuda:
            raise RuntimeError(
                f"selective_scan: backend 'cuda' (mamba-ssm) needs CUDA tensors, got tensors on {u.device}; "
                f"use backend='torch' or {SCAN_ENV_VAR}=torch"
            )
        if _load_mamba_kernel() is None:
            raise RuntimeError(
                f"selective_scan: backend 'cuda' needs mamba-ssm, whose import failed ({_mamba_import_error}); "
                f"install mamba-ssm (requirements-gpu.txt) or use backend='torch' / {SCAN_ENV_VAR}=torch"
            )
        return "cuda"
    if not u.is_cuda:
        return "torch"
    if _load_mamba_kernel() is None:
        if not _mamba_warning_logged:
            _mamba_warning_logged = True
            logger.warning(
                "mamba-ssm is not importable (%s); using the slower pure-PyTorch selective scan on CUDA",
                _mamba_import_error,
            )
        return "torch"
    return "cuda"


def check_scan_inputs(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
) -> None:
    """Raise ValueError naming the offending argument unless the inputs fit :func:`selective_scan`'s signature (shared
    by every backend: the kernels would read out of bounds otherwise)."""
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (batch, dim, L), got shape {tuple(u.shape)}")
    batch, dim, length = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"selective_scan: delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"selective_scan: A must be (dim={dim}, N), got shape {tuple(A.shape)}")
    if A.is_complex():
        raise ValueError("selective_scan: complex A is not supported (Mamba-UNet uses real A)")
    d_state = A.shape[1]
    for name, mat in (("B", B), ("C", C)):
        ok = mat.dim() in (3, 4) and mat.shape[0] == batch and mat.shape[-2:] == (d_state, length)
        if not ok:
            raise ValueError(
                f"selective_scan: {name} must be (batch={batch}, N={d_state}, L={length}) or "
                f"(batch, groups, N, L), got shape {tuple(mat.shape)}"
            )
        if mat.dim() == 4 and dim % mat.shape[1] != 0:
            raise ValueError(f"selective_scan: dim={dim} is not divisible by the {mat.shape[1]} groups of {name}")
    if B.dim() == 4 and C.dim() == 4 and B.shape[1] != C.shape[1]:
        raise ValueError(
            f"selective_scan: B and C must have the same number of groups, got {B.shape[1]} and {C.shape[1]}"
        )
    for name, vec in (("D", D), ("delta_bias", delta_bias)):
        if vec is not None and vec.shape != (dim,):
            raise ValueError(f"selective_scan: {name} must be (dim={dim},), got shape {tuple(vec.shape)}")
    devices = {t.device for t in (u, delta, A, B, C, D, delta_bias) if t is not None}
    if len(devices) != 1:
        raise ValueError(f"selective_scan: all tensors must be on one device, got {sorted(map(str, devices))}")


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    backend: str = "auto",
) -> torch.Tensor:
    """Selective scan y = S6(u); differentiable w.r.t. every tensor argument.

    Args:
        u, delta: (batch, dim, L).
        A: (dim, N), real (negative for a decaying state).
        B, C: (batch, G, N, L) with channel d using group d // (dim / G), or (batch, N, L) (= one group).
        D: (dim,) skip weight or None.
        delta_bias: (dim,) added to delta before the softplus, or None.
        delta_softplus: apply softplus to delta (+ bias).
        backend: "auto" | "torch" | "cuda" | "triton" (see the module docstring; ``MAMBA_UNET_SCAN`` overrides
            "auto").

    Returns:
        (batch, dim, L) in u's dtype; the scan itself runs in fp32 (fp64 for fp64 inputs on the torch backend).
    """
    check_scan_inputs(u, delta, A, B, C, D, delta_bias)
    resolved = resolve_scan_backend(u, backend)
    if resolved == "cuda":
        return _mamba_selective_scan(u, delta, A, B, C, D, delta_bias, delta_softplus)
    if resolved == "triton":
        if not delta_softplus:
            raise ValueError("selective_scan: backend 'triton' computes delta_softplus=True only")
        from scripts.triton_scan import triton_selective_scan

        return triton_selective_scan(u, delta, A, B, C, D, delta_bias)
    compute_dtype = (
        torch.float64 if torch.float64 in (u.dtype, delta.dtype, A.dtype, B.dtype, C.dtype) else torch.float32
    )

    def as_compute(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(compute_dtype)

    B4 = B if B.dim() == 4 else B.unsqueeze(1)
    C4 = C if C.dim() == 4 else C.unsqueeze(1)
    tensors = [as_compute(t) for t in (u, delta, A, B4, C4, D, delta_bias)]
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        out = _ChunkedSelectiveScan.apply(*tensors, delta_softplus)
    else:
        # Nothing to differentiate (inference, torch.jit.trace, ONNX export): run the same forward math without the
        # autograd.Function, which TorchScript cannot serialise (it records an opaque prim::PythonOp).
        out = _ChunkedSelectiveScan.scan(*tensors, delta_softplus)
    return out.to(u.dtype)


# Backend resolved per (requested backend, device type), for torch.compile: dynamo cannot trace the environment and
# import checks of scan_backend_in_use, so under compilation the value resolved in eager mode (or now) is reused.
_RESOLVED_BACKENDS: dict[tuple[str, str], str] = {}


def resolve_scan_backend(u: torch.Tensor, requested: str) -> str:
    """:func:`scan_backend_in_use`, safe inside torch.compile (reuses the eager-mode answer there)."""
    key = (requested, u.device.type)
    if torch.compiler.is_compiling() and key in _RESOLVED_BACKENDS:
        return _RESOLVED_BACKENDS[key]
    resolved = scan_backend_in_use(u, requested)
    _RESOLVED_BACKENDS[key] = resolved
    return resolved


# ----------------------------------------------------------------------------------------------------------------
# CUDA backend: mamba-ssm's selective-scan kernel as a PyTorch custom op.
# Why not call mamba-ssm's selective_scan_fn: (1) it is an opaque pybind call inside an autograd.Function, which
# torch.compile cannot trace (a graph break per call); as a custom op with a fake (shape-only) implementation a whole
# network compiles into one graph around it; (2) it lets bf16/fp16 u, delta, B, C through (the kernel computes in fp32
# internally and takes low-precision inputs with fp32 A, D, delta_bias), where casting to fp32 copies costs memory
# traffic. Forward returns (out, states): states = the kernel's per-chunk scan states (batch, dim, ceil(L/2048), 2N)
# fp32, which its backward needs.
# ----------------------------------------------------------------------------------------------------------------
_KERNEL_CHUNK = 2048


@torch.library.custom_op("mamba_unet::selective_scan_fwd", mutates_args=())
def _kernel_fwd(
    u: torch.Tensor,
    delta: torch.Tensor,
    a_mat: torch.Tensor,
    b_mat: torch.Tensor,
    c_mat: torch.Tensor,
    d_skip: torch.Tensor,
    delta_bias: torch.Tensor,
    delta_softplus: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    out, states, *_ = _load_mamba_kernel().fwd(u, delta, a_mat, b_mat, c_mat, d_skip, None, delta_bias, delta_softplus)
    return out, states


@_kernel_fwd.register_fake
def _(u, delta, a_mat, b_mat, c_mat, d_skip, delta_bias, delta_softplus):
    batch, dim, length = u.shape
    n_chunks = -(-length // _KERNEL_CHUNK)
    return torch.empty_like(u), u.new_empty((batch, dim, n_chunks, 2 * a_mat.shape[1]), dtype=torch.float32)


@torch.library.custom_op("mamba_unet::selective_scan_bwd", mutates_args=())
def _kernel_bwd(
    u: torch.Tensor,
    delta: torch.Tensor,
    a_mat: torch.Tensor,
    b_mat: torch.Tensor,
    c_mat: torch.Tensor,
    d_skip: torch.Tensor,
    delta_bias: torch.Tensor,
    grad_out: torch.Tensor,
    states: torch.Tensor,
    delta_softplus: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    grads = _load_mamba_kernel().bwd(
        u, delta, a_mat, b_mat, c_mat, d_skip, None, delta_bias, grad_out, states, None, None, delta_softplus, False
    )
    du, ddelta, d_a, d_b, d_c, d_d, ddelta_bias = grads[:7]
    # The kernel accumulates dB/dC in fp32; hand them back in the inputs' dtype as autograd expects.
    return du, ddelta, d_a, d_b.to(b_mat.dtype), d_c.to(c_mat.dtype), d_d, ddelta_bias


@_kernel_bwd.register_fake
def _(u, delta, a_mat, b_mat, c_mat, d_skip, delta_bias, grad_out, states, delta_softplus):
    return tuple(torch.empty_like(t) for t in (u, delta, a_mat, b_mat, c_mat, d_skip, delta_bias))


def _kernel_setup_context(ctx, inputs, output) -> None:
    ctx.delta_softplus = inputs[-1]
    ctx.save_for_backward(*inputs[:-1], output[1])


def _kernel_backward(ctx, grad_out: torch.Tensor, _grad_states: torch.Tensor | None):
    *inputs, states = ctx.saved_tensors
    grads = _kernel_bwd(*inputs, grad_out.contiguous(), states, ctx.delta_softplus)
    return (*grads, None)


_kernel_fwd.register_autograd(_kernel_backward, setup_context=_kernel_setup_context)


def last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _mamba_selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
) -> torch.Tensor:
    """mamba-ssm's kernel: u, delta, B, C go in as bf16/fp16 when u is (else fp32); A, D, delta_bias in fp32."""
    io_dtype = u.dtype if u.dtype in (torch.float32, torch.bfloat16, torch.float16) else torch.float32
    dim = u.shape[1]
    # A missing D / delta_bias is a zero one: same result, one code path (their unused gradients cost nothing).
    d_skip = u.new_zeros(dim, dtype=torch.float32) if D is None else D.float().contiguous()
    bias = u.new_zeros(dim, dtype=torch.float32) if delta_bias is None else delta_bias.float().contiguous()
    B4 = B if B.dim() == 4 else B.unsqueeze(1)
    C4 = C if C.dim() == 4 else C.unsqueeze(1)
    out, _ = _kernel_fwd(
        last_dim_contiguous(u.to(io_dtype)),
        last_dim_contiguous(delta.to(io_dtype)),
        A.float().contiguous(),
        last_dim_contiguous(B4.to(io_dtype)),
        last_dim_contiguous(C4.to(io_dtype)),
        d_skip,
        bias,
        delta_softplus,
    )
    return out.to(u.dtype)


# ----------------------------------------------------------------------------------------------------------------
# Pure-PyTorch backend.
# Large tensors live in a "chunked" layout (T, batch, G, n_chunks, dim/G, N): position t of every chunk is one
# contiguous slice, so each recurrence step is one contiguous elementwise op over all chunks, and the group axis G
# sits next to the per-group channels so B and C broadcast over them. Small per-step tensors (batch, dim, L) use the
# same layout without N.
# ----------------------------------------------------------------------------------------------------------------


def _chunk_length(length: int) -> int:
    return min(length, max(_MIN_CHUNK, math.isqrt(length) // 2))


class _Chunker:
    """Moves (batch, dim, L) and (batch, G, N, L) tensors to/from the chunked layout (zero padding to n_chunks * T)."""

    def __init__(self, batch: int, dim: int, groups: int, length: int) -> None:
        self.batch, self.dim, self.groups, self.length = batch, dim, groups, length
        self.chunk = _chunk_length(length)
        self.n_chunks = -(-length // self.chunk)
        self.pad = self.n_chunks * self.chunk - length

    def _to_chunks(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, G, X, L) -> (T, batch, G, n_chunks, X), contiguous.

        Two copies (a 2-D transpose, then a permute of contiguous rows) are ~3x faster on CPU than one strided gather.
        """
        batch, groups, width, _ = x.shape
        x = F.pad(x, (0, self.pad)).reshape(batch * groups, width, self.n_chunks * self.chunk)
        x = x.transpose(1, 2).contiguous().view(batch, groups, self.n_chunks, self.chunk, width)
        return x.permute(3, 0, 1, 2, 4).contiguous()

    def _from_chunks(self, x: torch.Tensor) -> torch.Tensor:
        """(T, batch, G, n_chunks, X) -> (batch, G, X, L), contiguous."""
        _, batch, groups, _, width = x.shape
        x = x.permute(1, 2, 3, 0, 4).reshape(batch * groups, self.n_chunks * self.chunk, width)
        x = x.transpose(1, 2)[..., : self.length].contiguous()
        return x.view(batch, groups, width, self.length)

    def seq(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, dim, L) -> (T, batch, G, n_chunks, dim/G), contiguous."""
        return self._to_chunks(x.reshape(self.batch, self.groups, self.dim // self.groups, self.length))

    def unseq(self, x: torch.Tensor) -> torch.Tensor:
        """(T, batch, G, n_chunks, dim/G) -> (batch, dim, L), contiguous."""
        return self._from_chunks(x).view(self.batch, self.dim, self.length)

    def state_seq(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, G, N, L) -> (T, batch, G, n_chunks, 1, N), contiguous (broadcasts over the channels of a group)."""
        return self._to_chunks(x).unsqueeze(4)

    def state_unseq(self, x: torch.Tensor) -> torch.Tensor:
        """(T, batch, G, n_chunks, N) -> (batch, G, N, L)."""
        return self._from_chunks(x)

    def a_matrix(self, A: torch.Tensor) -> torch.Tensor:
        """(dim, N) -> (G, 1, dim/G, N): broadcasts against the chunked layout."""
        return A.view(self.groups, 1, self.dim // self.groups, A.shape[1])


def _chunked_linear_scan(
    decay: torch.Tensor, x: torch.Tensor, delta_seq: torch.Tensor, A_b: torch.Tensor, reverse: bool
) -> torch.Tensor:
    """In place, x becomes h with h_t = decay_t * h_{t-1} + x_t (forward) or h_t = decay_{t+1} * h_{t+1} + x_t (reverse).

    decay = exp(delta * A), x: (T, batch, G, n_chunks, dim/G, N); delta_seq: (T, batch, G, n_chunks, dim/G), used for
    the decay over whole chunks; A_b: (G, 1, dim/G, N). Zero state outside the sequence. Returns the state carried into
    each chunk,
    (batch, G, n_chunks, dim/G, N): h at the end of the previous chunk (forward) or decay * h at the start of the next
    chunk (reverse).
    """
    chunk, n_chunks = x.shape[0], x.shape[3]
    # 1) Recurrence inside every chunk at once, starting from a zero state.
    steps = range(1, chunk) if not reverse else range(chunk - 2, -1, -1)
    for t in steps:
        prev = t - 1 if not reverse else t + 1
        x[t].addcmul_(decay[t if not reverse else prev], x[prev])
    # 2) Carry states across chunks. The decay over a whole chunk is exp(A * sum(delta)), in (n_chunks, ...) layout.
    chunk_decay = torch.exp(delta_seq.sum(0).unsqueeze(-1) * A_b).movedim(2, 0).contiguous()
    chunk_out = (x[chunk - 1] if not reverse else decay[0] * x[0]).movedim(2, 0).contiguous()
    carry = torch.zeros_like(chunk_out)
    order = range(1, n_chunks) if not reverse else range(n_chunks - 2, -1, -1)
    for c in order:
        src = c - 1 if not reverse else c + 1
        torch.addcmul(chunk_out[src], chunk_decay[src], carry[src], out=carry[c])
    carry = carry.movedim(0, 2).contiguous()
    # 3) Add the carried-in state decayed to each position; the running product of decays avoids one exp per element.
    carried = carry.clone()
    for t in range(chunk) if not reverse else range(chunk - 1, -1, -1):
        if not reverse:
            carried.mul_(decay[t])
        elif t < chunk - 1:
            carried.mul_(decay[t + 1])
        x[t].add_(carried)
    return carry


def _channel_dot(values: torch.Tensor, per_step: torch.Tensor) -> torch.Tensor:
    """sum_n values[..., d, n] * per_step[..., n] as one batched matmul (no (..., dim/G, N) temporary).

    values: (T, batch, G, n_chunks, dim/G, N); per_step: (T, batch, G, n_chunks, 1, N) -> (T, batch, G, n_chunks, dim/G).
    """
    n_state = values.shape[-1]
    out = torch.matmul(values.view(-1, values.shape[-2], n_state), per_step.reshape(-1, n_state, 1))
    return out.view(values.shape[:-1])


def _group_dot(values: torch.Tensor, per_channel: torch.Tensor) -> torch.Tensor:
    """sum over the channels of a group of values[..., d, n] * per_channel[..., d], as one batched matmul.

    values: (T, batch, G, n_chunks, dim/G, N); per_channel: (T, batch, G, n_chunks, dim/G) -> (T, batch, G, n_chunks, N).
    """
    per_group, n_state = values.shape[-2:]
    out = torch.matmul(values.view(-1, per_group, n_state).transpose(1, 2), per_channel.reshape(-1, per_group, 1))
    return out.view(*values.shape[:-2], n_state)


class _ChunkedSelectiveScan(torch.autograd.Function):
    """Selective scan with a hand-written backward that recomputes the (batch, dim, L, N) states instead of saving them.

    Big (batch, dim, L, N) buffers are allocated once per pass and reused in place: on CPU a fresh allocation of that
    size costs as much as an elementwise op over it (page faults).
    """

    @staticmethod
    def _states(
        chunker: _Chunker, u_seq: torch.Tensor, delta_seq: torch.Tensor, A_b: torch.Tensor, B_seq: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decays exp(delta*A), states h and carried-in states (chunked layout, see _chunked_linear_scan)."""
        big_shape = (*delta_seq.shape, A_b.shape[-1])
        decay = torch.mul(delta_seq.unsqueeze(-1), A_b, out=delta_seq.new_empty(big_shape)).exp_()
        states = torch.mul((delta_seq * u_seq).unsqueeze(-1), B_seq, out=delta_seq.new_empty(big_shape))
        carry = _chunked_linear_scan(decay, states, delta_seq, A_b, reverse=False)
        return decay, states, carry

    @staticmethod
    def scan(
        u: torch.Tensor,
        delta: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        D: torch.Tensor | None,
        delta_bias: torch.Tensor | None,
        delta_softplus: bool,
    ) -> torch.Tensor:
        """The forward math, no autograd bookkeeping: u, delta (batch, dim, L), A (dim, N), B, C (batch, G, N, L),
        D, delta_bias (dim,) or None, all in the compute dtype -> y (batch, dim, L)."""
        batch, dim, length = u.shape
        chunker = _Chunker(batch, dim, B.shape[1], length)
        delta_pre = delta if delta_bias is None else delta + delta_bias[:, None]
        delta_eff = F.softplus(delta_pre) if delta_softplus else delta_pre
        _, states, _ = _ChunkedSelectiveScan._states(
            chunker, chunker.seq(u), chunker.seq(delta_eff), chunker.a_matrix(A), chunker.state_seq(B)
        )
        y = chunker.unseq(_channel_dot(states, chunker.state_seq(C)))
        if D is not None:
            y = y + D[:, None] * u
        return y

    @staticmethod
    def forward(
        ctx: Any,
        u: torch.Tensor,
        delta: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        D: torch.Tensor | None,
        delta_bias: torch.Tensor | None,
        delta_softplus: bool,
    ) -> torch.Tensor:
        y = _ChunkedSelectiveScan.scan(u, delta, A, B, C, D, delta_bias, delta_softplus)
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias)
        ctx.delta_softplus = delta_softplus
        return y

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        u, delta, A, B, C, D, delta_bias = ctx.saved_tensors
        need_u, need_delta, need_A, need_B, need_C, need_D, need_bias, _ = ctx.needs_input_grad
        need_delta = need_delta or need_bias
        du = dD = dB = dC = dA = ddelta = dbias = None
        dy = dy.to(u.dtype)
        if need_D:
            dD = (dy * u).sum((0, 2))
        if not (need_u or need_delta or need_A or need_B or need_C):
            return du, ddelta, dA, dB, dC, dD, dbias, None

        batch, dim, length = u.shape
        chunker = _Chunker(batch, dim, B.shape[1], length)
        delta_pre = delta if delta_bias is None else delta + delta_bias[:, None]
        delta_eff = F.softplus(delta_pre) if ctx.delta_softplus else delta_pre
        u_seq, delta_seq, dy_seq = chunker.seq(u), chunker.seq(delta_eff), chunker.seq(dy)
        A_b, B_seq = chunker.a_matrix(A), chunker.state_seq(B)
        decay, states, carry = _ChunkedSelectiveScan._states(chunker, u_seq, delta_seq, A_b, B_seq)
        if need_C:  # dC_t = sum over the group's channels of h_t * dy_t
            dC = chunker.state_unseq(_group_dot(states, dy_seq))
        if not (need_u or need_delta or need_A or need_B):
            return du, ddelta, dA, dB, dC, dD, dbias, None

        decayed_prev = None
        if need_delta or need_A:  # decay_t * h_{t-1}; h_{t-1} is h[t-1] in the chunk or the carried-in state at t = 0
            decayed_prev = torch.empty_like(states)
            torch.mul(decay[1:], states[:-1], out=decayed_prev[1:])
            torch.mul(decay[0], carry, out=decayed_prev[0])
        # g_t = dL/dh_t = C_t dy_t + decay_{t+1} g_{t+1}: the same scan run in reverse, in the states buffer.
        grad_h = torch.mul(chunker.state_seq(C), dy_seq.unsqueeze(-1), out=states)
        del states
        _chunked_linear_scan(decay, grad_h, delta_seq, A_b, reverse=True)
        if need_u or need_delta:
            grad_h_B = _channel_dot(grad_h, B_seq)  # sum_n g_t B_t
        if need_u:
            du = delta_eff * chunker.unseq(grad_h_B)
            if D is not None:
                du = du + D[:, None] * dy
        if need_B:  # dB_t = sum over the group's channels of g_t * delta_t * u_t
            dB = chunker.state_unseq(_group_dot(grad_h, delta_seq * u_seq))
        if decayed_prev is not None:
            q = decayed_prev.mul_(grad_h)  # q_t = g_t * decay_t * h_{t-1} = dL/d(delta_t * A)
            del grad_h
            if need_delta:  # dL/d(delta_eff) = sum_n (g u B + q A)
                q_A = torch.mul(q, A_b, out=decay)
                q_A_sum = torch.matmul(q_A.view(-1, q_A.shape[-1]), q_A.new_ones(q_A.shape[-1]))
                ddelta_eff = chunker.unseq(q_A_sum.view(delta_seq.shape) + u_seq * grad_h_B)
                ddelta = ddelta_eff * torch.sigmoid(delta_pre) if ctx.delta_softplus else ddelta_eff
                if need_bias:
                    dbias = ddelta.sum((0, 2))
            if need_A:  # reduce the chunk axis first: one reduction over (T, batch, n_chunks) is many times slower
                dA = q.mul_(delta_seq.unsqueeze(-1)).sum(3).sum((0, 1)).reshape(dim, -1)
        return du, ddelta, dA, dB, dC, dD, dbias, None
