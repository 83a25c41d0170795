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
@pytest.mark.parametrize("step", [8, 4])
@pytest.mark.parametrize(
    "dtype, batch, dim, length, d_state, groups, block_d, chunk, skip_and_bias",
    [
        # 2 groups of 16 channels, 2 programs per group; chunks 16 + 16 + 5 (partial last chunk and step); fp64 in
        # (fp32 inside)
        (torch.float64, 2, 32, 37, 4, 2, 8, 16, True),
        # N not a power of two (padded 5 -> 8), ungrouped B/C, 2 programs; chunks 8 + 8 + 4; no D, no delta_bias
        (torch.float32, 1, 8, 20, 5, None, 4, 8, False),
        # the sequence shorter than one step; 4 groups of 2 channels, one program each
        (torch.float32, 1, 8, 5, 4, 4, 2, 16, True),
        # one chunk of 16 = two 8-position steps (four 4-position ones), the later ones carried from the saved state
        (torch.float64, 1, 8, 16, 4, 4, 2, 16, True),
        # two batch items, L not a multiple of 8, chunks of 8
        (torch.float32, 2, 8, 37, 4, 4, 2, 8, True),
        # N = 3 (padded to 4: the rotated state index over 2 pairs, one padded slot) and N = 1 (no rotation)
        (torch.float32, 1, 8, 20, 3, 2, 4, 8, True),
        (torch.float32, 1, 8, 20, 1, 2, 4, 8, True),
    ],
)
def test_interpreter_matches_torch_scan(
    monkeypatch, dtype, batch, dim, length, d_state, groups, block_d, chunk, skip_and_bias, step
):
    """Output and every gradient against the PyTorch scan, and the inference path's output; the backward in 8- and
    4-position steps (with 4, every second step carries the saved state over the chunk's first half)."""
    monkeypatch.setattr(triton_scan, "BWD_BLOCK_D", block_d)
    monkeypatch.setattr(triton_scan, "BWD_CHUNK", chunk)
    monkeypatch.setattr(triton_scan, "BWD_STEP", step)
    monkeypatch.setattr(triton_scan, "FWD_BLOCK_D", block_d)
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
    with torch.no_grad():  # inference path (no autograd, no saved states): same output
        assert rel_err(triton_scan.triton_selective_scan(*inputs), ref[0]) < 1e-5


@pytest.mark.skipif(not INTERPRETED, reason="needs Triton with TRITON_INTERPRET=1 (CPU interpreter)")
@pytest.mark.parametrize("d_state, reorder", [(5, False), (16, False), (4, True)])
def test_interpreter_kernel_variants_agree(monkeypatch, d_state, reorder):
    """BWD_ROTATE_STATES only relabels which slot holds which state and FWD_PREFETCH only moves the forward's loads
    a step earlier: the same output and gradients with each on and off (N = 5 padded to 8 rotates a padded slot into
    the middle; L = 21 ends in a partial step; with orders every group walks its own permutation)."""
    inputs = make_inputs(7, 2, 16, 21, d_state, 2, torch.float32)
    dy = torch.randn(2, 16, 21, generator=torch.Generator().manual_seed(8))
    orders = None
    if reorder:
        gen = torch.Generator().manual_seed(9)
        orders = torch.stack([torch.randperm(21, generator=gen) for _ in range(2)]).to(torch.int32)

    def scan(*args):
        return triton_scan.triton_selective_scan(*args, orders=orders)

    results = []
    for rotate, prefetch in ((1, 0), (0, 0), (1, 1)):
        monkeypatch.setattr(triton_scan, "BWD_ROTATE_STATES", rotate)
        monkeypatch.setattr(triton_scan, "FWD_PREFETCH", prefetch)
        results.append(output_and_grads(scan, inputs, dy))
    for variant in results[1:]:
        for name, x, reference in zip(("y",) + GRAD_NAMES, variant, results[0], strict=True):
            assert rel_err(x, reference) < 1e-6, name


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
    "step, u_groups, orders_kind",
    [
        (8, 4, "ss2d"),  # SS2D's fused cross-scan ("index"): 4 directions of one 5x7 map share u; chunks 16 + 16 + 3
        (4, 4, "ss2d"),
        (8, 2, "pair"),  # "pair": 2 copies of u, each walked forward and backward
        (8, 1, "random"),  # any permutation per group, u per channel
        (4, 1, "random"),
    ],
)
def test_interpreter_orders_match_gathered_torch_scan(monkeypatch, step, u_groups, orders_kind):
    """u_groups: how many groups share each u channel."""
    from scripts.networks.mamba_unet import _direction_orders

    monkeypatch.setattr(triton_scan, "BWD_CHUNK", 16)  # chunks 16 + 16 + 3: a partial last chunk and step
    monkeypatch.setattr(triton_scan, "BWD_STEP", step)
    monkeypatch.setattr(triton_scan, "BWD_BLOCK_D", 2)  # 2 programs per group
    monkeypatch.setattr(triton_scan, "FWD_BLOCK_D", 2)
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
def test_bad_chunk_or_step_raises(monkeypatch):
    device = "cuda" if ON_GPU else "cpu"
    inputs = [t.requires_grad_() for t in make_inputs(0, 1, 4, 16, 4, 2, torch.float32, device=device)]
    monkeypatch.setattr(triton_scan, "BWD_CHUNK", 12)  # states every 12 positions: not whole 8-position steps
    with pytest.raises(ValueError, match="BWD_CHUNK must be a multiple of 8"):
        triton_scan.triton_selective_scan(*inputs)
    monkeypatch.setattr(triton_scan, "BWD_CHUNK", 8)
    monkeypatch.setattr(triton_scan, "BWD_STEP", 2)
    y = triton_scan.triton_selective_scan(*inputs)
    with pytest.raises(ValueError, match="BWD_STEP must be 4 or 8"):
        y.sum().backward()


def test_tile_settings_parse_and_resolve_module_wide_or_per_length(monkeypatch):
    monkeypatch.setattr(triton_scan, "TILES_BY_LENGTH", {})
    monkeypatch.setattr(triton_scan, "BWD_MAXNREG", triton_scan.BWD_MAXNREG)  # restored after the test
    assert triton_scan.parse_tile("BWD_MAXNREG=224") == ("BWD_MAXNREG", None, 224)
    assert triton_scan.parse_tile("FWD_MAXNREG=None") == ("FWD_MAXNREG", None, None)
    assert triton_scan.parse_tile("BWD_BLOCK_D@3136=4") == ("BWD_BLOCK_D", 3136, 4)
    for bad in ("BWD_MAXNREG", "BWD_MAXNREG=lots", "NOT_A_TILE=4", "BWD_REDUCE_BC=0", "BWD_STEP@x=4", "BWD_STEP@0=4"):
        with pytest.raises(ValueError, match="tile setting"):
            triton_scan.parse_tile(bad)
    assert set(triton_scan.TILE_SETTINGS) <= set(vars(triton_scan))
    triton_scan.set_tile("BWD_MAXNREG", None, 200)
    triton_scan.set_tile("BWD_BLOCK_D", 3136, 4)
    assert triton_scan.BWD_MAXNREG == 200 and triton_scan.TILES_BY_LENGTH == {3136: {"BWD_BLOCK_D": 4}}
    assert triton_scan.tile("BWD_BLOCK_D", 3136) == 4
    assert triton_scan.tile("BWD_BLOCK_D", 784) == triton_scan.BWD_BLOCK_D  # other lengths: the module's
    assert triton_scan.tile("BWD_MAXNREG", 3136) == 200
    config = triton_scan.tile_config()
    assert "BWD_MAXNREG=200" in config and config.endswith("; L=3136: BWD_BLOCK_D=4")
    for bad_name in ("BWD_REDUCE_BC", "nope"):
        with pytest.raises(KeyError, match="unknown tile constant"):
            triton_scan.tile(bad_name, 16)
        with pytest.raises(KeyError, match="unknown tile constant"):
            triton_scan.set_tile(bad_name, None, 1)


def test_tile_lookup_traces_under_torch_compile(monkeypatch):
    """The launchers resolve their tiles while torch.compile traces the network: tile() must trace without a graph
    break (fullgraph) and follow later changes (dynamo guards on the values)."""
    monkeypatch.setattr(triton_scan, "TILES_BY_LENGTH", {16: {"BWD_BLOCK_D": 4}})
    monkeypatch.setattr(triton_scan, "FWD_BLOCK_D", triton_scan.FWD_BLOCK_D)

    @torch.compile(fullgraph=True, backend="eager")
    def scaled(x):
        return x * triton_scan.tile("BWD_BLOCK_D", x.shape[-1]) + triton_scan.tile("FWD_BLOCK_D", x.shape[-1])

    assert scaled(torch.ones(16)).tolist() == [4.0 + triton_scan.FWD_BLOCK_D] * 16
    assert scaled(torch.ones(8)).tolist() == [float(triton_scan.BWD_BLOCK_D + triton_scan.FWD_BLOCK_D)] * 8
    triton_scan.FWD_BLOCK_D = 100
    assert scaled(torch.ones(16)).tolist() == [104.0] * 16


@pytest.mark.skipif(not triton_scan.triton_available(), reason="needs Triton")
def test_tiles_by_length_apply_to_scans_of_that_length_only(monkeypatch):
    """A bad chunk / step set for L = 16 only fails the scans of length 16; one of length 24 runs on."""
    device = "cuda" if ON_GPU else "cpu"
    monkeypatch.setattr(triton_scan, "TILES_BY_LENGTH", {16: {"BWD_CHUNK": 12}})
    with pytest.raises(ValueError, match="BWD_CHUNK must be a multiple of 8"):
        triton_scan.triton_selective_scan(*make_inputs(0, 1, 4, 16, 4, 2, torch.float32, device=device))
    monkeypatch.setattr(triton_scan, "TILES_BY_LENGTH", {16: {"BWD_STEP": 2}})
    inputs = [t.requires_grad_() for t in make_inputs(0, 1, 4, 16, 4, 2, torch.float32, device=device)]
    with pytest.raises(ValueError, match="BWD_STEP must be 4 or 8"):
        triton_scan.triton_selective_scan(*inputs).sum().backward()
    if INTERPRETED or ON_GPU:  # length 24 keeps the module's tiles (and a per-length tile for it computes the same)
        inputs = make_inputs(3, 1, 8, 24, 4, 2, torch.float32, device=device)
        dy = torch.randn(1, 8, 24, generator=torch.Generator().manual_seed(4)).to(device)
        ref = output_and_grads(torch_scan, [t.double() for t in inputs], dy.double())
        for by_length in ({16: {"BWD_STEP": 2}}, {24: {"BWD_BLOCK_D": 2, "BWD_STEP": 4, "FWD_BLOCK_D": 2}}):
            monkeypatch.setattr(triton_scan, "TILES_BY_LENGTH", by_length)
            got = output_and_grads(triton_scan.triton_selective_scan, inputs, dy)
            for name, x, r in zip(("y",) + GRAD_NAMES, got, ref, strict=True):
                assert rel_err(x, r) < 1e-5, (by_length, name)


@pytest.mark.skipif(not (ON_GPU and mamba_ssm_available()), reason="needs CUDA, Triton and mamba-ssm")
@pytest.mark.parametrize("step", [8, 4])
@pytest.mark.parametrize("d_inner, side", [(192, 56), (384, 28), (768, 14), (1536, 7)])
def test_gpu_matches_mamba_ssm_on_ss2d_shapes(monkeypatch, step, d_inner, side):
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    monkeypatch.setattr(triton_scan, "BWD_STEP", step)
    if step == 4:
        monkeypatch.setattr(triton_scan, "BWD_BLOCK_D", 16)  # the configuration 4-position steps are meant for

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


@pytest.mark.skipif(not ON_GPU, reason="needs CUDA and Triton")
def test_gpu_compiled_scan_with_per_length_tiles_matches_eager(monkeypatch):
    """The network's path under torch.compile (fullgraph), with a per-length tile: the same output and gradients."""
    monkeypatch.setattr(triton_scan, "TILES_BY_LENGTH", {196: {"BWD_BLOCK_D": 4, "BWD_STEP": 4, "FWD_BLOCK_D": 4}})
    inputs = make_inputs(9, 2, 4 * 64, 196, 16, 4, torch.float32, device="cuda")
    dy = torch.randn(2, 4 * 64, 196, device="cuda")
    compiled = torch.compile(triton_scan.triton_selective_scan, fullgraph=True)
    got = output_and_grads(compiled, inputs, dy)
    ref = output_and_grads(triton_scan.triton_selective_scan, inputs, dy)
    for name, x, r in zip(("y",) + GRAD_NAMES, got, ref, strict=True):
        assert rel_err(x, r) < 1e-5, name
