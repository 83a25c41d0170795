"""Tests of scripts/selective_scan.py: the chunked PyTorch scan against a float64 Python loop, backend selection, and
(on a GPU with mamba-ssm) the CUDA kernel against the PyTorch scan."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from scripts import selective_scan as scan_module
from scripts.selective_scan import mamba_ssm_available, scan_backend_in_use, selective_scan

GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias")


def loop_reference(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True):
    """Step-by-step float64 selective scan (the semantics of mamba-ssm's selective_scan_ref, without z)."""
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.double()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, _ = u.shape
    if B.dim() == 3:
        B, C = B.unsqueeze(1), C.unsqueeze(1)
    per_group = dim // B.shape[1]
    B, C = B.repeat_interleave(per_group, dim=1), C.repeat_interleave(per_group, dim=1)  # (batch, dim, N, L)
    state = u.new_zeros(batch, dim, A.shape[1])
    outputs = []
    # unbind once: indexing [..., t] inside the loop would make backward allocate full-size gradients at every step
    for delta_t, u_t, B_t, C_t in zip(delta.unbind(-1), u.unbind(-1), B.unbind(-1), C.unbind(-1)):
        state = torch.exp(delta_t[..., None] * A) * state + (delta_t * u_t)[..., None] * B_t
        outputs.append((state * C_t).sum(-1))
    y = torch.stack(outputs, dim=-1)
    if D is not None:
        y = y + D.double()[:, None] * u
    return y


def make_inputs(
    seed,
    batch=2,
    dim=8,
    length=64,
    d_state=4,
    groups=4,
    with_d=True,
    with_bias=True,
    large_delta=False,
    a_kind="exp",
    dtype=torch.float32,
):
    """Random inputs at realistic magnitudes; groups=None gives ungrouped (batch, N, L) B and C."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    u = randn(batch, dim, length)
    delta = randn(batch, dim, length) + (6.0 if large_delta else 0.0)
    if a_kind == "exp":
        A = -torch.exp(randn(dim, d_state))
    else:  # Mamba-UNet's init: A = -(1..N) per channel
        A = -torch.arange(1, d_state + 1, dtype=torch.float64).repeat(dim, 1)
    bc_shape = (batch, d_state, length) if groups is None else (batch, groups, d_state, length)
    B, C = randn(*bc_shape), randn(*bc_shape)
    D = randn(dim) if with_d else None
    delta_bias = randn(dim) * 0.5 if with_bias else None
    tensors = dict(u=u, delta=delta, A=A, B=B, C=C, D=D, delta_bias=delta_bias)
    return {k: None if v is None else v.to(dtype).requires_grad_() for k, v in tensors.items()}


def rel_err(actual, expected):
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-300)).item()


def forward_and_grads(fn, inputs, upstream, **kwargs):
    for t in inputs.values():
        if t is not None:
            t.grad = None
    out = fn(**inputs, **kwargs)
    out.backward(upstream.to(out.dtype))
    grads = {k: None if inputs[k] is None else inputs[k].grad.clone() for k in GRAD_NAMES}
    return out.detach(), grads


CASES = {  # id -> make_inputs keywords (+ softplus); each case gets its own seed
    "L1": dict(length=1),
    "L7-G1": dict(length=7, groups=1),
    "L64-ungrouped-batch1": dict(length=64, groups=None, batch=1),
    "L257-N16": dict(length=257, d_state=16, a_kind="arange"),
    "L257-large-delta": dict(length=257, large_delta=True),
    "L100-no-D-no-bias": dict(length=100, with_d=False, with_bias=False),
    "L64-no-softplus": dict(length=64, softplus=False),
}


@pytest.mark.parametrize("seed,case", [(1000 + i, c) for i, c in enumerate(CASES.values())], ids=list(CASES))
def test_torch_scan_matches_float64_loop(seed, case):
    case = dict(case)
    softplus = case.pop("softplus", True)
    inputs = make_inputs(seed, **case)
    if not softplus:  # without softplus delta must stay positive to be a step size
        inputs["delta"] = (inputs["delta"].detach().abs() + 0.05).requires_grad_()
    upstream = torch.randn(inputs["u"].shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    expected, expected_grads = forward_and_grads(loop_reference, inputs, upstream, delta_softplus=softplus)

    inputs32 = {k: None if v is None else v.detach().float().requires_grad_() for k, v in inputs.items()}
    out, grads = forward_and_grads(selective_scan, inputs32, upstream, delta_softplus=softplus, backend="torch")
    assert out.dtype == torch.float32 and out.shape == expected.shape
    assert rel_err(out, expected) < 1e-5
    for name in GRAD_NAMES:
        if inputs[name] is None:
            assert grads[name] is None
            continue
        assert grads[name].shape == inputs[name].shape, name
        assert rel_err(grads[name], expected_grads[name]) < 1e-5, name


def test_large_delta_underflows_without_nan():
    inputs = make_inputs(7, length=200, large_delta=True)
    inputs["delta"] = (inputs["delta"].detach() * 20).requires_grad_()  # delta*A << -100: exp underflows to 0
    out = selective_scan(**inputs, backend="torch")
    out.sum().backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(inputs[k].grad).all() for k in GRAD_NAMES)
    assert rel_err(out, loop_reference(**inputs)) < 1e-5


def test_bf16_input_returns_bf16_close_to_fp32():
    inputs = make_inputs(11, length=50)
    fp32 = selective_scan(**inputs, backend="torch")
    bf16_inputs = {k: v.detach().bfloat16().requires_grad_() for k, v in inputs.items()}
    out = selective_scan(**bf16_inputs, backend="torch")
    assert out.dtype == torch.bfloat16
    # Inputs were rounded to bf16 too, so compare with a generous tolerance.
    assert rel_err(out, fp32) < 3e-2
    out.float().sum().backward()
    assert bf16_inputs["u"].grad.dtype == torch.bfloat16


def test_partial_gradients_match_full():
    inputs = make_inputs(13, length=40)
    full_out, full_grads = forward_and_grads(
        lambda **kw: selective_scan(**kw, backend="torch"), inputs, torch.ones(inputs["u"].shape, dtype=torch.float64)
    )
    for only in ("A", "C", "D", "delta_bias"):
        partial = {k: v.detach().requires_grad_(k == only) for k, v in inputs.items()}
        selective_scan(**partial, backend="torch").sum().backward()
        assert torch.allclose(partial[only].grad, full_grads[only], rtol=1e-5, atol=1e-6), only


def test_gradcheck_float64():
    inputs = make_inputs(17, batch=2, dim=4, length=5, d_state=2, groups=2, dtype=torch.float64)
    names = list(inputs)

    def fn(*tensors):
        return selective_scan(**dict(zip(names, tensors)), backend="torch")

    assert torch.autograd.gradcheck(fn, tuple(inputs.values()))


def test_cuda_backend_on_cpu_raises_clear_error():
    inputs = make_inputs(19, length=8)
    with pytest.raises(RuntimeError, match="backend 'cuda'"):
        selective_scan(**inputs, backend="cuda")


def test_triton_backend_on_cpu_raises_clear_error():
    inputs = make_inputs(21, length=8)
    with pytest.raises(RuntimeError, match="backend 'triton' needs CUDA tensors and Triton"):
        selective_scan(**inputs, backend="triton")


def test_invalid_backend_and_shapes_raise():
    inputs = make_inputs(23, length=8)
    with pytest.raises(ValueError, match="backend must be one of"):
        selective_scan(**inputs, backend="bogus")
    bad = dict(inputs, A=inputs["A"][:, :3])
    with pytest.raises(ValueError, match="B must be"):
        selective_scan(**bad, backend="torch")
    bad = dict(inputs, B=inputs["B"][:, :3], C=inputs["C"][:, :3])
    with pytest.raises(ValueError, match="not divisible"):
        selective_scan(**bad, backend="torch")
    bad = dict(inputs, D=torch.zeros_like(inputs["D"], device="meta"))
    with pytest.raises(ValueError, match="all tensors must be on one device"):
        selective_scan(**bad, backend="torch")


def test_env_override(monkeypatch):
    u = torch.zeros(1, 4, 3)
    monkeypatch.setenv("MAMBA_UNET_SCAN", "torch")
    assert scan_backend_in_use(u, "auto") == "torch"
    monkeypatch.setenv("MAMBA_UNET_SCAN", "cuda")
    with pytest.raises(RuntimeError, match="backend 'cuda'"):
        scan_backend_in_use(u, "auto")
    assert scan_backend_in_use(u, "torch") == "torch"  # an explicit backend beats the variable
    monkeypatch.setenv("MAMBA_UNET_SCAN", "fast")
    with pytest.raises(ValueError, match="MAMBA_UNET_SCAN"):
        scan_backend_in_use(u, "auto")


def test_env_override_forces_torch_on_cuda_path(monkeypatch):
    """With MAMBA_UNET_SCAN=torch the CUDA kernel is never imported, even for tensors that claim to be on CUDA."""
    monkeypatch.setenv("MAMBA_UNET_SCAN", "torch")
    monkeypatch.setattr(scan_module, "_load_mamba_kernel", lambda: pytest.fail("mamba-ssm must not be imported"))
    fake_cuda = torch.zeros(1, 4, 3)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    assert scan_backend_in_use(fake_cuda, "auto") == "torch"


def test_auto_falls_back_with_one_warning(monkeypatch, caplog):
    monkeypatch.delenv("MAMBA_UNET_SCAN", raising=False)
    monkeypatch.setattr(scan_module, "_mamba_import_tried", True)
    monkeypatch.setattr(scan_module, "_mamba_kernel", None)
    monkeypatch.setattr(scan_module, "_mamba_import_error", "ImportError: No module named 'mamba_ssm'")
    monkeypatch.setattr(scan_module, "_mamba_warning_logged", False)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    u = torch.zeros(1, 4, 3)
    with caplog.at_level(logging.WARNING, logger=scan_module.__name__):
        assert scan_backend_in_use(u, "auto") == "torch"
        assert scan_backend_in_use(u, "auto") == "torch"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "No module named 'mamba_ssm'" in warnings[0].getMessage()


def test_cpu_auto_uses_torch_without_importing_mamba(monkeypatch):
    monkeypatch.delenv("MAMBA_UNET_SCAN", raising=False)
    monkeypatch.setattr(scan_module, "_load_mamba_kernel", lambda: pytest.fail("mamba-ssm must not be imported"))
    inputs = make_inputs(29, length=9)
    assert scan_backend_in_use(inputs["u"], "auto") == "torch"
    assert rel_err(selective_scan(**inputs), loop_reference(**inputs)) < 1e-5


@pytest.mark.skipif(not torch.cuda.is_available() or not mamba_ssm_available(), reason="needs CUDA and mamba-ssm")
def test_mamba_cuda_matches_torch_scan_on_gpu():
    """Stage-0-like shape of Mamba-UNet at 224x224: dim = 4 directions x 192 channels, L = 56*56, N = 16, G = 4."""
    batch, dim, length, d_state, groups = 2, 768, 3136, 16, 4
    gen = torch.Generator().manual_seed(31)
    inputs = {
        "u": torch.randn(batch, dim, length, generator=gen),
        "delta": torch.randn(batch, dim, length, generator=gen) * 0.5 - 1.0,
        "A": -torch.arange(1, d_state + 1, dtype=torch.float32).repeat(dim, 1),
        "B": torch.randn(batch, groups, d_state, length, generator=gen),
        "C": torch.randn(batch, groups, d_state, length, generator=gen),
        "D": torch.ones(dim),
        "delta_bias": torch.randn(dim, generator=gen) * 0.5 - 3.0,
    }
    upstream = torch.randn(batch, dim, length, generator=gen).cuda()
    results = {}
    for backend in ("cuda", "torch"):
        cuda_inputs = {k: v.cuda().requires_grad_() for k, v in inputs.items()}
        assert scan_backend_in_use(cuda_inputs["u"], backend) == backend
        results[backend] = forward_and_grads(lambda **kw: selective_scan(**kw, backend=backend), cuda_inputs, upstream)
    (out_cuda, grads_cuda), (out_torch, grads_torch) = results["cuda"], results["torch"]
    assert rel_err(out_cuda, out_torch) < 1e-4
    for name in GRAD_NAMES:
        assert rel_err(grads_cuda[name], grads_torch[name]) < 1e-4, name


def test_non_contiguous_inputs():
    """SS2D hands the scan transposed/flipped views; results must not depend on memory layout."""
    inputs = make_inputs(37, length=33)
    expected = loop_reference(**inputs)
    strided = dict(inputs)
    strided["u"] = inputs["u"].detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
    strided["B"] = inputs["B"].detach().permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
    assert not strided["u"].is_contiguous() and not strided["B"].is_contiguous()
    out = selective_scan(**strided, backend="torch")
    out.sum().backward()
    assert rel_err(out, expected) < 1e-5
    assert strided["u"].grad.shape == strided["u"].shape
