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


@pytest.mark.skipif(not INTERPRETED, reason="needs Triton with TRITON_INTERPRET=1 (CPU interpreter)")
@pytest.mark.parametrize("forward_kind", ["tile", "seq", "vec"])
@pytest.mark.parametrize("bc_position_major", [True, False], ids=["bc_position_major", "bc_as_given"])
@pytest.mark.parametrize(
    "dtype, batch, dim, length, d_state, groups",
    [
        (torch.float32, 2, 8, 37, 4, 4),  # L not a multiple of the tile, two tiles
        (torch.float64, 1, 4, 20, 5, None),  # N not a power of two, ungrouped B/C, fp64 in (fp32 inside)
    ],
)
def test_interpreter_matches_torch_scan(
    monkeypatch, forward_kind, bc_position_major, dtype, batch, dim, length, d_state, groups
):
    monkeypatch.setattr(triton_scan, "FWD_KIND", forward_kind)
    monkeypatch.setattr(triton_scan, "FWD_BC_POSITION_MAJOR", bc_position_major)
    monkeypatch.setattr(triton_scan, "BWD_BLOCK_L", 16)  # several tiles even on short sequences
    inputs = make_inputs(1, batch, dim, length, d_state, groups, dtype)
    dy = torch.randn(batch, dim, length, dtype=dtype, generator=torch.Generator().manual_seed(2))
    got = output_and_grads(triton_scan.triton_selective_scan, inputs, dy)
    ref = output_and_grads(torch_scan, [t.double() for t in inputs], dy.double())
    for name, x, r in zip(("y",) + GRAD_NAMES, got, ref):
        assert x.dtype == dtype and x.shape == r.shape, name
        assert rel_err(x, r) < 1e-5, name
    # Inference path (no autograd): same output.
    with torch.no_grad():
        assert rel_err(triton_scan.triton_selective_scan(*inputs), ref[0]) < 1e-5


def set_backward_kind(monkeypatch, backward_kind):
    """BWD_KIND, with "reg4" for the reg backward in 4-position steps (BWD_REG_STEP = 4)."""
    monkeypatch.setattr(triton_scan, "BWD_KIND", "reg" if backward_kind == "reg4" else backward_kind)
    monkeypatch.setattr(triton_scan, "BWD_REG_STEP", 4 if backward_kind == "reg4" else 8)


@pytest.mark.skipif(not INTERPRETED, reason="needs Triton with TRITON_INTERPRET=1 (CPU interpreter)")
@pytest.mark.parametrize(
    "dtype, batch, dim, length, d_state, groups, block_d, chunk, forward_kind, skip_and_bias",
    [
        # 2 groups of 16 channels, 2 programs per group; chunks 16 + 16 + 5 (partial last), prologue / epilogue in
        # pieces of 8 positions (the last one partial); fp64 in (fp32 inside)
        (torch.float64, 2, 32, 37, 4, 2, 8, 16, "seq", True),
        # N not a power of two, ungrouped B/C, 2 programs; chunks 8 + 8 + 4; no D, no delta_bias; tile forward
        (torch.float32, 1, 8, 20, 5, None, 4, 8, "tile", False),
        # the sequence shorter than one chunk; 4 groups of 2 channels, one program each
        (torch.float32, 1, 8, 5, 4, 4, 2, 16, "seq", True),
        # the vec forward: chunks of 8 = its steps, N padded 5 -> 8, no D, no delta_bias; then 5 positions, one
        # partial step
        (torch.float32, 1, 8, 20, 5, None, 4, 8, "vec", False),
        (torch.float64, 1, 8, 5, 4, 4, 2, 16, "vec", True),
    ],
)
@pytest.mark.parametrize("backward_kind", ["seq", "vec", "reg", "reg4"])
def test_interpreter_seq_backward_matches_torch_scan(
    monkeypatch, dtype, batch, dim, length, d_state, groups, block_d, chunk, forward_kind, skip_and_bias, backward_kind
):
    """The seq backward, its 8-position-step variant ("vec") and the all-register one ("reg", "reg4": 4-position
    steps, so every second step carries the saved state): chunks of 8 and 16 (one or two steps), partial last chunks
    and steps."""
    set_backward_kind(monkeypatch, backward_kind)
    monkeypatch.setattr(triton_scan, "BWD_SEQ_BLOCK_D", block_d)
    monkeypatch.setattr(triton_scan, "BWD_SEQ_CHUNK", chunk)
    monkeypatch.setattr(triton_scan, "BWD_REG_BLOCK_D", block_d)
    monkeypatch.setattr(triton_scan, "BWD_REG_CHUNK", chunk)
    monkeypatch.setattr(triton_scan, "BWD_SEQ_UNROLL", 3)  # a remainder in every chunk (ignored by the interpreter)
    monkeypatch.setattr(triton_scan, "FWD_KIND", forward_kind)
    inputs = make_inputs(5, batch, dim, length, d_state, groups, dtype)
    names = ("y",) + GRAD_NAMES
    if not skip_and_bias:
        inputs, names = inputs[:5], names[:6]

    def reference(*args):
        return torch_scan(*args, *[None] * (7 - len(args)))

    dy = torch.randn(batch, dim, length, dtype=dtype, generator=torch.Generator().manual_seed(6))
    got = output_and_grads(triton_scan.triton_selective_scan, inputs, dy)
    ref = output_and_grads(reference, [t.double() for t in inputs], dy.double())
    for name, x, r in zip(names, got, ref, strict=True):
        assert x.dtype == dtype and x.shape == r.shape, name
        assert rel_err(x, r) < 1e-5, name


def reordered_torch_scan(u, delta, A, B, C, D, delta_bias, orders):
    """Reference for ``orders``: gather every group's inputs into its scan order, run the PyTorch scan, scatter y
    back to memory order (autograd of the gathers gives the reference gradients); u may be shared by the groups."""
    batch, dim, length = delta.shape
    groups = B.shape[1]
    index = orders.long().view(1, groups, 1, length)

    def to_scan(x):  # (batch, groups * rows, L) or (batch, groups, rows, L) in memory order -> scan order
        grouped = x.reshape(batch, groups, -1, length)
        return grouped.gather(3, index.expand_as(grouped)).reshape(x.shape)

    u_full = u.repeat(1, dim // u.shape[1], 1)  # channel d reads u channel d % u_channels
    y_scan = torch_scan(to_scan(u_full), to_scan(delta), A, to_scan(B), to_scan(C), D, delta_bias)
    inverse = orders.long().argsort(dim=1).view(1, groups, 1, length)
    grouped = y_scan.view(batch, groups, -1, length)
    return grouped.gather(3, inverse.expand_as(grouped)).reshape(batch, dim, length)


@pytest.mark.skipif(not INTERPRETED, reason="needs Triton with TRITON_INTERPRET=1 (CPU interpreter)")
@pytest.mark.parametrize(
    "forward_kind, backward_kind, u_groups, orders_kind",
    [
        ("tile", "tile", 4, "ss2d"),  # SS2D's fused cross-scan ("index"): 4 directions of one 5x7 map share u
        ("seq", "seq", 4, "ss2d"),
        ("vec", "seq", 4, "ss2d"),  # 35 positions: four 8-position steps and a partial fifth
        ("vec", "vec", 4, "ss2d"),  # the vec backward: chunks 16 + 16 + 3, its last step partial
        ("vec", "reg", 4, "ss2d"),  # the reg backward: chunks of 16 = two steps, the first carried over
        ("seq", "reg", 1, "random"),
        ("vec", "reg4", 4, "ss2d"),
        ("seq", "vec", 1, "random"),
        ("vec", "tile", 1, "random"),
        ("seq", "tile", 2, "pair"),  # "pair": 2 copies of u, each walked forward and backward
        ("seq", "tile", 1, "random"),  # any permutation per group, u per channel
        ("tile", "seq", 1, "random"),
    ],
)
def test_interpreter_orders_match_gathered_torch_scan(monkeypatch, forward_kind, backward_kind, u_groups, orders_kind):
    """u_groups: how many groups share each u channel."""
    from scripts.networks.mamba_unet import _direction_orders

    monkeypatch.setattr(triton_scan, "FWD_KIND", forward_kind)
    set_backward_kind(monkeypatch, backward_kind)
    monkeypatch.setattr(triton_scan, "BWD_BLOCK_L", 16)  # tiles 16 + 16 + 3: a partial last tile
    monkeypatch.setattr(triton_scan, "BWD_SEQ_CHUNK", 16)
    monkeypatch.setattr(triton_scan, "BWD_SEQ_BLOCK_D", 2)  # 2 programs per group
    monkeypatch.setattr(triton_scan, "BWD_REG_CHUNK", 16)
    monkeypatch.setattr(triton_scan, "BWD_REG_BLOCK_D", 2)
    batch, dim, groups, height, width = 1, 16, 4, 5, 7
    length = height * width
    inputs = make_inputs(7, batch, dim, length, 4, groups, torch.float32)
    inputs[0] = inputs[0][:, : dim // u_groups]
    if orders_kind == "ss2d":
        orders = _direction_orders(height, width, torch.device("cpu"))[0].int()
    elif orders_kind == "pair":
        forward = torch.arange(length, dtype=torch.int32)
        orders = torch.stack([forward, forward, forward.flip(0), forward.flip(0)])
    else:
        gen = torch.Generator().manual_seed(8)
        orders = torch.stack([torch.randperm(length, generator=gen) for _ in range(groups)]).int()
    dy = torch.randn(batch, dim, length, generator=torch.Generator().manual_seed(9))

    def fused(*args):
        return triton_scan.triton_selective_scan(*args, orders=orders)

    def reference(*args):
        return reordered_torch_scan(*args, orders)

    got = output_and_grads(fused, inputs, dy)
    ref = output_and_grads(reference, [t.double() for t in inputs], dy.double())
    for name, x, r in zip(("y",) + GRAD_NAMES, got, ref, strict=True):
        assert x.dtype == torch.float32 and x.shape == r.shape, name
        assert rel_err(x, r) < 1e-5, name
    with torch.no_grad():
        assert rel_err(fused(*inputs), ref[0]) < 1e-5


@pytest.mark.skipif(not triton_scan.triton_available(), reason="needs Triton")
@pytest.mark.parametrize(
    "orders, u_channels, message",
    [
        (torch.zeros(4, 8, dtype=torch.int64), 4, "orders must be int32"),
        (torch.zeros(2, 8, dtype=torch.int32), 4, "orders must be int32 \\(groups=4"),
        (torch.zeros(4, 8, dtype=torch.int32), 3, "u must be"),
        (torch.zeros(4, 8, dtype=torch.int32), 0, "u must be"),  # no channels: an error, not a division by zero
    ],
)
def test_bad_orders_raise_before_any_kernel_runs(orders, u_channels, message):
    inputs = make_inputs(0, 1, 8, 8, 4, 4, torch.float32)
    inputs[0] = inputs[0][:, :u_channels]
    with pytest.raises(ValueError, match=message):
        triton_scan.triton_selective_scan(*inputs, orders=orders)


@pytest.mark.skipif(not triton_scan.triton_available(), reason="needs Triton")
def test_unknown_forward_kind_and_vec_with_a_short_chunk_raise(monkeypatch):
    inputs = [t.requires_grad_() for t in make_inputs(0, 1, 4, 8, 4, 2, torch.float32)]
    monkeypatch.setattr(triton_scan, "FWD_KIND", "fast")
    with pytest.raises(ValueError, match="FWD_KIND must be one of"):
        triton_scan.triton_selective_scan(*inputs)
    monkeypatch.setattr(triton_scan, "FWD_KIND", "vec")
    monkeypatch.setattr(triton_scan, "BWD_KIND", "seq")
    monkeypatch.setattr(triton_scan, "BWD_SEQ_CHUNK", 4)  # states every 4 positions: not a multiple of vec's 8
    with pytest.raises(ValueError, match="saves states every 8k positions"):
        triton_scan.triton_selective_scan(*inputs)


@pytest.mark.skipif(not triton_scan.triton_available(), reason="needs Triton")
def test_unknown_backward_kind_raises(monkeypatch):
    monkeypatch.setattr(triton_scan, "BWD_KIND", "scan")
    device = "cuda" if ON_GPU else "cpu"  # the vec check below runs the forward kernel first
    inputs = [t.requires_grad_() for t in make_inputs(0, 1, 4, 8, 4, 2, torch.float32, device=device)]
    with pytest.raises(ValueError, match="BWD_KIND must be one of"):
        triton_scan.triton_selective_scan(*inputs)
    monkeypatch.setattr(triton_scan, "BWD_KIND", "vec")
    monkeypatch.setattr(triton_scan, "FWD_KIND", "seq")
    monkeypatch.setattr(triton_scan, "BWD_SEQ_CHUNK", 4)  # its steps are 8 positions
    y = triton_scan.triton_selective_scan(*inputs)
    with pytest.raises(ValueError, match="at least 8 for BWD_KIND 'vec'"):
        y.sum().backward()
    monkeypatch.setattr(triton_scan, "BWD_KIND", "reg")
    monkeypatch.setattr(triton_scan, "BWD_REG_CHUNK", 12)  # states every 12 positions: not whole 8-position steps
    y = triton_scan.triton_selective_scan(*inputs)
    with pytest.raises(ValueError, match="BWD_REG_CHUNK must be a multiple of 8"):
        y.sum().backward()


@pytest.mark.skipif(not (ON_GPU and mamba_ssm_available()), reason="needs CUDA, Triton and mamba-ssm")
@pytest.mark.parametrize(
    "forward_kind, backward_kind",
    [("seq", "tile"), ("seq", "seq"), ("vec", "seq"), ("vec", "vec"), ("vec", "reg"), ("vec", "reg4")],
    ids=["tile", "seq", "vec-seq", "vec-vec", "vec-reg", "vec-reg4"],
)
@pytest.mark.parametrize("d_inner, side", [(192, 56), (384, 28), (768, 14), (1536, 7)])
def test_gpu_matches_mamba_ssm_on_ss2d_shapes(monkeypatch, forward_kind, backward_kind, d_inner, side):
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    monkeypatch.setattr(triton_scan, "FWD_KIND", forward_kind)
    set_backward_kind(monkeypatch, backward_kind)

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
