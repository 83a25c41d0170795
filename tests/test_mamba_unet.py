"""Tests of scripts/networks/mamba_unet.py against the reference spec (shared/notes/reference_spec.md, sections 1-2)."""

from __future__ import annotations

import argparse
import logging
import math
import re

import pytest
import torch
import torch.nn.functional as F

from scripts.networks.mamba_unet import (
    SS2D,
    MambaUNet,
    PatchExpand,
    VSSLayer,
    cross_merge,
    cross_scan,
    load_vmamba_v0_weights,
)
from scripts.selective_scan import selective_scan

# Spec section 2 / section 1 "Pretrained weights".
PARAMS_RGB_STEM = 19_121_664
PARAMS_GRAY_STEM = 19_118_592
VMAMBA_T_V0_PARAMS = 22_893_448
LOADED_TENSORS, MODEL_TENSORS, LOADED_PARAMS = 197, 218, 17_036_064


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def tiny_net(**kwargs) -> MambaUNet:
    return MambaUNet(embed_dim=16, depths=(1, 1, 1, 1), **kwargs)


@pytest.fixture(scope="module")
def default_net() -> MambaUNet:
    torch.manual_seed(0)
    return MambaUNet().eval()


@pytest.fixture(scope="module")
def vmamba_checkpoint(tmp_path_factory) -> tuple[str, dict[str, torch.Tensor]]:
    """Synthetic VMamba-T v0 checkpoint: depths [2, 2, 9, 2], stem/encoder/norm/head keys, wrapped in {"model": ...}."""
    torch.manual_seed(123)
    source = MambaUNet(depths=(2, 2, 9, 2))
    state = {k: v for k, v in source.state_dict().items() if k.startswith(("patch_embed.", "layers.", "norm."))}
    state["head.weight"] = torch.randn(1000, 768) * 0.02
    state["head.bias"] = torch.zeros(1000)
    assert sum(v.numel() for v in state.values()) == VMAMBA_T_V0_PARAMS
    path = tmp_path_factory.mktemp("ckpt") / "vmamba_tiny_synthetic.pth"
    torch.save({"model": state, "epoch": 292}, path)
    return str(path), state


def test_parameter_counts_both_stems(default_net):
    assert count(default_net) == PARAMS_RGB_STEM
    assert count(MambaUNet(rgb_stem=False)) == PARAMS_GRAY_STEM


def test_parameter_counts_by_part(default_net):
    net = default_net
    for layer, dim, block_params in zip(net.layers, (96, 192, 384, 768), (105_408, 339_840, 1_195_776, 4_455_936)):
        assert layer.blocks[0].ln_1.normalized_shape == (dim,)
        assert count(layer.blocks[0]) == block_params
    assert count(net.patch_embed) == 4_896
    assert [count(net.layers[i].downsample) for i in range(3)] == [74_496, 296_448, 1_182_720]
    assert net.layers[3].downsample is None
    assert count(net.layers_up[0]) == 1_180_416
    assert [count(net.layers_up[k].upsample) for k in (1, 2)] == [295_296, 73_920]
    assert net.layers_up[3].upsample is None
    assert [count(net.layers_up[k].blocks) for k in (1, 2, 3)] == [2_391_552, 679_680, 210_816]
    assert [count(m) for m in net.concat_back_dim] == [0, 295_296, 73_920, 18_528]
    assert (count(net.norm), count(net.norm_up), count(net.up), count(net.output)) == (1_536, 192, 147_648, 384)


def test_output_shapes(default_net):
    with torch.no_grad():
        assert default_net(torch.randn(2, 1, 64, 64)).shape == (2, 4, 64, 64)
        assert default_net(torch.randn(2, 1, 64, 96)).shape == (2, 4, 64, 96)
    gray = MambaUNet(in_channels=1, out_channels=3, rgb_stem=False).eval()
    with torch.no_grad():
        assert gray(torch.randn(1, 1, 32, 64)).shape == (1, 3, 32, 64)


def test_rgb_stem_repeats_gray_input():
    torch.manual_seed(0)
    net = tiny_net().eval()
    rgb_net = tiny_net(in_channels=3).eval()
    rgb_net.load_state_dict(net.state_dict())
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(x), rgb_net(x.repeat(1, 3, 1, 1)))


@pytest.mark.parametrize("shape", [(1, 1, 48, 64), (1, 1, 64, 40)])
def test_size_not_divisible_by_32_is_rejected(default_net, shape):
    with pytest.raises(ValueError, match=re.escape(f"divisible by 32, got input shape {shape}")):
        default_net(torch.zeros(shape))


def test_wrong_channel_count_is_rejected(default_net):
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\), got shape \(1, 3, 32, 32\)"):
        default_net(torch.zeros(1, 3, 32, 32))


def test_drop_path_rates_encoder_and_mirrored_decoder(default_net):
    dpr = [0.2 * i / 7 for i in range(8)]  # linspace(0, 0.2, 8)
    for i, layer in enumerate(default_net.layers):
        assert [b.drop_path.drop_prob for b in layer.blocks] == pytest.approx(dpr[2 * i : 2 * i + 2])
    for k in (1, 2, 3):
        stage = 3 - k
        rates = [b.drop_path.drop_prob for b in default_net.layers_up[k].blocks]
        assert rates == pytest.approx(dpr[2 * stage : 2 * stage + 2])


def test_state_dict_keys_follow_vmamba_v0(default_net):
    keys = set(default_net.state_dict())
    ss2d = [
        "in_proj.weight",
        "conv2d.weight",
        "conv2d.bias",
        "x_proj_weight",
        "dt_projs_weight",
        "dt_projs_bias",
        "A_logs",
        "Ds",
        "out_norm.weight",
        "out_norm.bias",
        "out_proj.weight",
    ]
    expected = {"patch_embed.proj.weight", "patch_embed.proj.bias", "patch_embed.norm.weight", "patch_embed.norm.bias"}
    for prefix in [f"layers.{i}" for i in range(4)] + [f"layers_up.{k}" for k in (1, 2, 3)]:
        for j in range(2):
            block = f"{prefix}.blocks.{j}"
            expected |= {f"{block}.ln_1.weight", f"{block}.ln_1.bias"} | {f"{block}.self_attention.{n}" for n in ss2d}
    for i in range(3):
        expected |= {f"layers.{i}.downsample.{n}" for n in ("norm.weight", "norm.bias", "reduction.weight")}
    for prefix in ("layers_up.0", "layers_up.1.upsample", "layers_up.2.upsample", "up"):
        expected |= {f"{prefix}.{n}" for n in ("expand.weight", "norm.weight", "norm.bias")}
    for k in (1, 2, 3):
        expected |= {f"concat_back_dim.{k}.weight", f"concat_back_dim.{k}.bias"}
    expected |= {"norm.weight", "norm.bias", "norm_up.weight", "norm_up.bias", "output.weight"}
    assert keys == expected
    sa = default_net.layers[1].blocks[0].self_attention  # C=192: d_inner 384, dt_rank 12, N 16
    assert sa.x_proj_weight.shape == (4, 12 + 32, 384)
    assert sa.dt_projs_weight.shape == (4, 384, 12)
    assert sa.dt_projs_bias.shape == (4, 384)
    assert sa.A_logs.shape == (4 * 384, 16) and sa.Ds.shape == (4 * 384,)
    assert sa.conv2d.weight.shape == (384, 1, 3, 3)


def test_layer_norm_eps_and_init(default_net):
    norms = [m for m in default_net.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(m.eps == 1e-5 for m in norms)
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in norms)
    linears = [m for m in default_net.modules() if isinstance(m, torch.nn.Linear)]
    assert all(torch.all(m.bias == 0) for m in linears if m.bias is not None)
    in_proj = default_net.layers[3].blocks[0].self_attention.in_proj.weight
    assert in_proj.std().item() == pytest.approx(0.02, rel=0.02)
    for dim, layer in zip((96, 192, 384, 768), default_net.layers):
        sa = layer.blocks[0].self_attention
        d_inner, dt_rank = 2 * dim, math.ceil(dim / 16)
        torch.testing.assert_close(sa.A_logs, torch.log(torch.arange(1.0, 17.0)).expand(4 * d_inner, 16))
        assert torch.all(sa.Ds == 1)
        dt = F.softplus(sa.dt_projs_bias.detach())
        assert dt.min() >= 1e-3 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)
        assert sa.dt_projs_weight.abs().max() <= dt_rank**-0.5
        assert sa.x_proj_weight.abs().max() <= d_inner**-0.5


def test_cross_scan_orders_and_merge_inverts():
    x = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(1, 2, 3, 5)
    xs = cross_scan(x)
    assert xs.shape == (1, 4, 2, 15)
    torch.testing.assert_close(xs[0, 0, 0], x[0, 0].flatten())
    torch.testing.assert_close(xs[0, 1, 0], x[0, 0].t().flatten())  # column-major
    torch.testing.assert_close(xs[0, 2], xs[0, 0].flip(-1))
    torch.testing.assert_close(xs[0, 3], xs[0, 1].flip(-1))
    torch.testing.assert_close(cross_merge(xs, 3, 5), 4 * x.reshape(1, 2, 15))


def test_cross_scan_views_equal_gathers_with_gradients(monkeypatch):
    """CROSS_SCAN_IMPL "views" (flips and transposes) computes what the gathers do, forward and backward, on a
    non-square map; "auto" is the gathers in eager mode; an unknown value raises."""
    from scripts.networks import mamba_unet

    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 6, dtype=torch.float64)
    results = {}
    for impl in ("gather", "views", "auto"):
        monkeypatch.setattr(mamba_unet, "CROSS_SCAN_IMPL", impl)
        leaf = x.clone().requires_grad_()
        xs = cross_scan(leaf)
        weight = torch.randn(xs.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        merged = cross_merge(xs * weight, 4, 6)
        (grad,) = torch.autograd.grad((merged * merged).sum(), leaf)
        results[impl] = (xs.detach(), merged.detach(), grad)
        assert xs.is_contiguous() and merged.dtype == torch.float64
    for impl in ("views", "auto"):
        for got, ref in zip(results[impl], results["gather"]):
            torch.testing.assert_close(got, ref)
    with torch.no_grad():  # the inference path of both
        monkeypatch.setattr(mamba_unet, "CROSS_SCAN_IMPL", "views")
        torch.testing.assert_close(cross_merge(cross_scan(x), 4, 6), 4 * x.reshape(2, 3, 24))
    monkeypatch.setattr(mamba_unet, "CROSS_SCAN_IMPL", "copy")
    with pytest.raises(ValueError, match="CROSS_SCAN_IMPL must be one of"):
        cross_scan(x)


def test_cross_scan_auto_picks_views_while_torch_compile_traces(monkeypatch):
    from scripts.networks import mamba_unet

    seen = []
    resolve = mamba_unet._cross_scan_impl

    def spy(impl=None):
        seen.append(resolve(impl))
        return seen[-1]

    monkeypatch.setattr(mamba_unet, "_cross_scan_impl", spy)
    monkeypatch.setattr(mamba_unet, "CROSS_SCAN_IMPL", "auto")
    x = torch.randn(1, 2, 4, 6)
    torch._dynamo.reset()
    compiled = torch.compile(lambda t: cross_merge(cross_scan(t), 4, 6), backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), 4 * x.reshape(1, 2, 24))
    assert seen and set(seen) == {"views"}
    seen.clear()
    cross_scan(x)
    assert seen == ["gather"]
    torch._dynamo.reset()


def test_cross_scan_views_merge_sums_low_precision_in_float32(monkeypatch):
    from scripts.networks import mamba_unet

    monkeypatch.setattr(mamba_unet, "CROSS_SCAN_IMPL", "views")
    y = torch.randn(1, 4, 2, 6).bfloat16()
    merged = cross_merge(y, 2, 3)
    monkeypatch.setattr(mamba_unet, "CROSS_SCAN_IMPL", "gather")
    assert merged.dtype == torch.float32
    torch.testing.assert_close(merged, cross_merge(y, 2, 3))


def test_ss2d_matches_per_direction_reference():
    """SS2D with stacked directions == four separate scans over explicit pixel orders, summed (non-square map)."""
    torch.manual_seed(0)
    dim, height, width, n = 8, 3, 5, 16
    ss2d = SS2D(dim).double()
    x = torch.randn(2, height, width, dim, dtype=torch.float64)
    out = ss2d(x)

    xi, z = ss2d.in_proj(x).chunk(2, dim=-1)
    u = F.silu(ss2d.conv2d(xi.permute(0, 3, 1, 2))).flatten(2)  # (B, d_inner, L) row-major
    d_inner, rank, length = ss2d.d_inner, ss2d.dt_rank, height * width
    row = torch.arange(length)
    col = row.reshape(height, width).t().flatten()
    merged = torch.zeros_like(u)
    for k, order in enumerate((row, col, row.flip(0), col.flip(0))):
        seq = u[:, :, order]
        proj = torch.einsum("cd,bdl->bcl", ss2d.x_proj_weight[k], seq)
        delta = torch.einsum("dr,brl->bdl", ss2d.dt_projs_weight[k], proj[:, :rank])
        channels = slice(k * d_inner, (k + 1) * d_inner)
        y = selective_scan(
            seq,
            delta,
            -torch.exp(ss2d.A_logs[channels]),
            proj[:, rank : rank + n],
            proj[:, rank + n :],
            D=ss2d.Ds[channels],
            delta_bias=ss2d.dt_projs_bias[k],
        )
        merged[:, :, order] += y
    merged = ss2d.out_norm(merged.transpose(1, 2).reshape(2, height, width, d_inner))
    expected = ss2d.out_proj(merged * F.silu(z))
    torch.testing.assert_close(out, expected)


def test_patch_expand_rearrangement():
    torch.manual_seed(0)
    for dim, out_dim, scale in ((8, 4, 2), (4, 4, 4)):
        expand = PatchExpand(dim, out_dim, scale)
        x = torch.randn(1, 2, 3, dim)
        e = expand.expand(x)
        manual = torch.zeros(1, 2 * scale, 3 * scale, out_dim)
        for p1 in range(scale):
            for p2 in range(scale):
                group = (p1 * scale + p2) * out_dim
                manual[:, p1::scale, p2::scale] = e[..., group : group + out_dim]
        torch.testing.assert_close(expand(x), expand.norm(manual))


def test_patch_merging_gather_order():
    torch.manual_seed(0)
    layer = VSSLayer(4, [], "down", d_state=16, d_conv=3, expand=2, scan_backend="auto")
    x = torch.randn(1, 4, 6, 4)
    gathered = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
    merge = layer.downsample
    torch.testing.assert_close(layer(x), merge.reduction(merge.norm(gathered)))


def test_backward_gives_finite_grads_for_all_params():
    torch.manual_seed(0)
    net = MambaUNet().train()
    net(torch.randn(1, 1, 32, 32)).square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name


def test_same_seed_same_init():
    torch.manual_seed(7)
    a = tiny_net().state_dict()
    torch.manual_seed(7)
    b = tiny_net().state_dict()
    torch.manual_seed(8)
    c = tiny_net().state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    for name in ("in_proj.weight", "x_proj_weight", "dt_projs_bias"):
        key = f"layers.0.blocks.0.self_attention.{name}"
        assert not torch.equal(a[key], c[key])


def test_forward_wiring_skips_and_norms():
    """Skips are the encoder stages' inputs, concatenated decoder-first; norm before the decoder, norm_up before up."""
    torch.manual_seed(0)
    net = tiny_net().eval()
    inputs, outputs = {}, {}

    def keep(name):
        def hook(module, args, result):
            inputs[name], outputs[name] = args[0], result

        return hook

    modules = {f"layers.{i}": m for i, m in enumerate(net.layers)}
    modules |= {f"layers_up.{k}": m for k, m in enumerate(net.layers_up)}
    modules |= {f"concat_back_dim.{k}": m for k, m in enumerate(net.concat_back_dim)}
    modules |= {"patch_embed": net.patch_embed, "up": net.up, "output": net.output}
    for name, module in modules.items():
        module.register_forward_hook(keep(name))
    with torch.no_grad():
        logits = net(torch.randn(1, 1, 64, 32))

    torch.testing.assert_close(inputs["layers.0"], outputs["patch_embed"].permute(0, 2, 3, 1))
    for i in (1, 2, 3):
        assert inputs[f"layers.{i}"] is outputs[f"layers.{i - 1}"]
    torch.testing.assert_close(inputs["layers_up.0"], net.norm(outputs["layers.3"]))
    for k in (1, 2, 3):
        expected = torch.cat([outputs[f"layers_up.{k - 1}"], inputs[f"layers.{3 - k}"]], dim=-1)
        torch.testing.assert_close(inputs[f"concat_back_dim.{k}"], expected)
        assert inputs[f"layers_up.{k}"] is outputs[f"concat_back_dim.{k}"]
    torch.testing.assert_close(inputs["up"], net.norm_up(outputs["layers_up.3"]))
    torch.testing.assert_close(inputs["output"], outputs["up"].permute(0, 3, 1, 2))
    assert logits is outputs["output"]


def test_loader_vmamba_t_v0_layout(vmamba_checkpoint, caplog):
    path, state = vmamba_checkpoint
    torch.manual_seed(0)
    net = MambaUNet()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="scripts.networks.pretrained"):
        report = load_vmamba_v0_weights(net, path)
    after = net.state_dict()

    assert len(report["loaded"]) == LOADED_TENSORS
    assert len(report["loaded"]) + len(report["missing"]) == MODEL_TENSORS
    assert sum(after[k].numel() for k in report["loaded"]) == LOADED_PARAMS
    assert f"{LOADED_TENSORS} of {MODEL_TENSORS} tensors, 17,036,064 of 19,121,664 parameters" in caplog.text
    assert report["skipped_shape"] == []
    random_init = ("layers_up.0.", "layers_up.1.upsample.", "layers_up.2.upsample.", "concat_back_dim.")
    random_init += ("norm_up.", "up.", "output.")
    assert all(k.startswith(random_init) for k in report["missing"])
    expected_unused = {k for k in state if re.match(r"layers\.2\.blocks\.[2-8]\.", k)} | {"head.weight", "head.bias"}
    assert set(report["unused"]) == expected_unused

    # Values are copied: encoder keys as is, decoder stage k from encoder stage 3-k; random-init parts untouched.
    for key in (
        "layers.2.blocks.1.self_attention.in_proj.weight",
        "layers.0.downsample.reduction.weight",
        "norm.weight",
    ):
        assert torch.equal(after[key], state[key])
    for k, j in ((1, 1), (2, 0), (3, 1)):
        for name in ("self_attention.x_proj_weight", "self_attention.out_proj.weight", "self_attention.dt_projs_bias"):
            decoder_key = f"layers_up.{k}.blocks.{j}.{name}"
            assert torch.equal(after[decoder_key], state[f"layers.{3 - k}.blocks.{j}.{name}"])
            assert not torch.equal(after[decoder_key], before[decoder_key])
    for key in report["missing"]:
        assert torch.equal(after[key], before[key])


def test_pretrained_path_argument(vmamba_checkpoint):
    path, state = vmamba_checkpoint
    net = MambaUNet(pretrained_path=path)
    key = "layers_up.3.blocks.0.self_attention.in_proj.weight"
    assert torch.equal(net.state_dict()[key], state["layers.0.blocks.0.self_attention.in_proj.weight"])


def test_loader_sums_stem_for_gray_stem(vmamba_checkpoint):
    path, state = vmamba_checkpoint
    net = MambaUNet(rgb_stem=False)
    report = load_vmamba_v0_weights(net, path)
    assert "patch_embed.proj.weight" in report["loaded"]
    assert len(report["loaded"]) == LOADED_TENSORS
    x = torch.randn(2, 1, 16, 16)
    bias = state["patch_embed.proj.bias"]
    gray = F.conv2d(x, net.patch_embed.proj.weight.detach(), bias, stride=4)
    rgb = F.conv2d(x.repeat(1, 3, 1, 1), state["patch_embed.proj.weight"], bias, stride=4)
    torch.testing.assert_close(gray, rgb)


def test_loader_reports_shape_mismatch_and_reads_plain_state_dict(tmp_path):
    net = tiny_net()  # norm is LayerNorm(128), patch_embed.norm LayerNorm(16)
    path = tmp_path / "plain.pth"
    torch.save({"norm.weight": torch.zeros(10), "patch_embed.norm.bias": torch.full((16,), 0.5)}, path)
    report = load_vmamba_v0_weights(net, str(path))
    assert report["loaded"] == ["patch_embed.norm.bias"]
    assert report["skipped_shape"] == ["norm.weight"]
    assert report["unused"] == ["norm.weight"]
    assert torch.all(net.patch_embed.norm.bias == 0.5) and torch.all(net.norm.weight == 1)


def test_loader_errors(tmp_path):
    net = tiny_net()
    missing = tmp_path / "absent.pth"
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        load_vmamba_v0_weights(net, str(missing))
    pickled = tmp_path / "full_training_checkpoint.pth"
    torch.save({"model": {"norm.weight": torch.ones(128)}, "config": argparse.Namespace(lr=0.1)}, pickled)
    with pytest.raises(RuntimeError, match=r"pickled Python objects.*\['model'\]"):
        load_vmamba_v0_weights(net, str(pickled))


@pytest.mark.parametrize("mode", ["pair", "index"])
def test_fused_triton_cross_scan_equals_gathered_scan(monkeypatch, mode):
    """SS2D's fused paths (x_proj on a row- and a column-major copy, each walked both ways, or on the row-major map
    with every direction walked by index) compute the gathered path's function: output and every gradient, on a 5x7
    map (H != W, a partial tile), in Triton's CPU interpreter against the gathered path on the PyTorch scan."""
    import os

    from scripts import triton_scan

    if not (triton_scan.triton_available() and os.environ.get("TRITON_INTERPRET") == "1"):
        pytest.skip("needs Triton with TRITON_INTERPRET=1 (CPU interpreter)")
    monkeypatch.setattr(triton_scan, "BWD_BLOCK_D", 8)  # one program per direction: the interpreter is slow
    torch.manual_seed(0)
    block = SS2D(4, scan_backend="torch").double()
    with torch.no_grad():  # away from the init's symmetric values: distinct per-direction parameters
        for param in (block.A_logs, block.Ds, block.dt_projs_bias):
            param.add_(0.1 * torch.randn_like(param))
    x = torch.randn(1, block.d_inner, 5, 7, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(1, block.d_inner, 35, dtype=torch.float64)
    results = []
    for path in ("gathered", "fused"):
        block.zero_grad()
        x.grad = None
        if path == "fused":  # the Triton kernel computes in fp32 (its inputs may be fp64)
            y = block._fused_triton_scan(x, mode)
        else:
            y = block._gathered_scan(x, 5, 7)
        (y * dy).sum().backward()
        grads = {name: p.grad.clone() for name, p in block.named_parameters() if p.grad is not None}
        results.append((y.detach(), x.grad.clone(), grads))
    (ref_y, ref_dx, ref_grads), (y, dx, grads) = results

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()

    assert y.shape == (1, block.d_inner, 35) and y.dtype == torch.float64
    assert rel(y, ref_y) < 1e-5 and rel(dx, ref_dx) < 1e-5
    assert set(grads) == set(ref_grads) >= {"x_proj_weight", "dt_projs_weight", "dt_projs_bias", "A_logs", "Ds"}
    for name, grad in grads.items():
        assert rel(grad, ref_grads[name]) < 1e-5, name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["cuda", "triton_gather", "triton_pair", "triton_index"])
def test_gpu_scan_matches_torch_scan_inside_the_network(monkeypatch, backend):
    """mamba-ssm's kernel (and our Triton kernel, gathered around it or with the cross-scan fused into it, "pair" or
    "index": each mode named, whatever the default) and our pure-PyTorch scan give the same network outputs and
    gradients (rel. error < 1e-4)."""
    from scripts.networks import mamba_unet
    from scripts.selective_scan import mamba_ssm_available
    from scripts.triton_scan import triton_available

    if backend == "cuda" and not mamba_ssm_available():
        pytest.skip("mamba-ssm is not installed")
    if backend.startswith("triton") and not triton_available():
        pytest.skip("Triton is not installed")
    if backend.startswith("triton_"):
        monkeypatch.setattr(mamba_unet, "TRITON_CROSS_SCAN", backend.split("_")[1])
        backend = "triton"
    torch.backends.cuda.matmul.allow_tf32 = False  # compare scans, not tf32 matmul rounding
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    net = MambaUNet(in_channels=1, out_channels=4, drop_path_rate=0.0).cuda()
    x = torch.rand(2, 1, 224, 224, device="cuda")
    target = torch.randint(0, 4, (2, 224, 224), device="cuda")
    results = {}
    for name in (backend, "torch"):
        for module in net.modules():
            if hasattr(module, "scan_backend"):
                module.scan_backend = name
        net.zero_grad()
        out = net(x)
        F.cross_entropy(out, target).backward()
        results[name] = (out.detach(), {n: p.grad.detach().clone() for n, p in net.named_parameters()})

    def rel(a, b):
        return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()

    assert rel(results[backend][0], results["torch"][0]) < 1e-4
    worst = max(((rel(g, results["torch"][1][n]), n) for n, g in results[backend][1].items()))
    assert worst[0] < 1e-4, f"largest gradient difference {worst[0]:.2e} in {worst[1]}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_inference_path_and_bf16_are_consistent_and_finite():
    """On the GPU: the no-grad (inference/export) path equals the autograd path, and bf16 autocast stays finite on
    inputs where fp32 is finite, including large intensities (the U-Mamba NaN report)."""
    torch.manual_seed(0)
    net = MambaUNet(in_channels=1, out_channels=4, drop_path_rate=0.0).cuda().eval()
    for scale in (1.0, 1e3, 1e5):
        x = torch.rand(2, 1, 224, 224, device="cuda") * scale
        with torch.no_grad():
            no_grad = net(x)
        with_grad = net(x.requires_grad_())
        assert torch.isfinite(no_grad).all()
        torch.testing.assert_close(no_grad, with_grad.detach(), rtol=1e-5, atol=1e-5)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            low = net(x.detach())
        assert torch.isfinite(low).all(), f"bf16 produced non-finite values at input scale {scale}"
        agree = (low.argmax(1) == no_grad.argmax(1)).float().mean().item()
        assert agree > 0.9, f"bf16 and fp32 predictions agree on only {agree:.1%} of pixels at scale {scale}"
