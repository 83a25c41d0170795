"""Tests of the paper's baselines (scripts/networks/unet.py, swin_unet.py) and their config overrides
(configs/networks/*.json) against the reference spec (shared/notes/reference_spec.md, sections 2-3)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn
from conftest import BUNDLE_ROOT
from monai.bundle import ConfigParser
from monai.networks.blocks import PatchEmbed

from scripts.networks.swin_unet import PATCH_SIZE, SwinStage, SwinUNet, load_swin_t_weights
from scripts.networks.unet import UNet

CONFIGS = BUNDLE_ROOT / "configs"

# Spec section 2.
UNET_PARAMS, UNET_ENCODER, UNET_DECODER = 1_813_764, 1_180_464, 633_300
SWIN_PARAMS = 27_168_420
SWIN_T_PARAMS = 28_288_354  # Swin-T ImageNet classifier (depths [2, 2, 6, 2], 1000-class head)


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def swin() -> SwinUNet:
    torch.manual_seed(0)
    return SwinUNet().eval()


# ----------------------------------------------------------------------------------------------------------- UNet


def test_unet_parameter_counts():
    net = UNet()
    assert count(net) == UNET_PARAMS
    assert count(net.encoder) == UNET_ENCODER
    assert count(net.decoder) + count(net.out_conv) == UNET_DECODER
    # The transposed-convolution variant the reference's params name (but never build): a 2x2 kernel instead of
    # the 1x1 pre-conv adds 3 * c_in * c_out weights per up block.
    features = (16, 32, 64, 128, 256)
    extra = sum(3 * c_in * c_out for c_in, c_out in zip(features[1:], features[:-1]))
    assert count(UNet(upsample="deconv")) == UNET_PARAMS + extra == 1_944_324


def test_unet_layer_order_and_dropout():
    net = UNet()

    def leaves(module: nn.Module) -> list[nn.Module]:
        return [m for m in module.modules() if not list(m.children())]

    conv_block = [nn.Conv2d, nn.BatchNorm2d, nn.LeakyReLU, nn.Dropout, nn.Conv2d, nn.BatchNorm2d, nn.LeakyReLU]
    for level, p in zip(net.encoder, (0.05, 0.1, 0.2, 0.3, 0.5)):
        layers = leaves(level)
        if isinstance(layers[0], nn.MaxPool2d):
            assert layers[0].kernel_size == 2
            layers = layers[1:]
        assert [type(m) for m in layers] == conv_block
        assert layers[3].p == p and layers[2].negative_slope == 0.01
        assert all(m.kernel_size == (3, 3) and m.padding == (1, 1) for m in layers if isinstance(m, nn.Conv2d))
    for up_block in net.decoder:
        layers = leaves(up_block)
        assert [type(m) for m in layers[:2]] == [nn.Conv2d, nn.Upsample]
        assert layers[0].kernel_size == (1, 1) and layers[0].bias is not None
        assert layers[1].mode == "bilinear" and layers[1].align_corners and layers[1].scale_factor == (2.0, 2.0)
        assert [type(m) for m in layers[2:]] == conv_block and layers[5].p == 0.0
    assert net.out_conv.kernel_size == (3, 3) and net.out_conv.out_channels == 4


def test_unet_concatenates_skip_first():
    """Each up block's ConvBlock sees [skip, upsampled]: the first channels of the last one are encoder level 0."""
    net = UNet().eval()
    seen = {}
    net.encoder[0].register_forward_hook(lambda module, args, out: seen.update(skip=out))
    net.decoder[-1].conv.register_forward_pre_hook(lambda module, args: seen.update(concat=args[0]))
    with torch.no_grad():
        net(torch.randn(1, 1, 32, 32))
    assert seen["concat"].shape == (1, 32, 32, 32)
    assert torch.equal(seen["concat"][:, :16], seen["skip"])


def test_unet_shapes_and_gradients():
    torch.manual_seed(0)
    net = UNet()
    x = torch.randn(2, 1, 64, 64)
    y = net(x)
    assert y.shape == (2, 4, 64, 64)
    y.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    with torch.no_grad():
        assert net.eval()(torch.randn(1, 1, 224, 224)).shape == (1, 4, 224, 224)


def test_unet_rejects_bad_input():
    with pytest.raises(ValueError, match="divisible by 16"):
        UNet()(torch.zeros(1, 1, 40, 40))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        UNet()(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="upsample"):
        UNet(upsample="nearest")


# ------------------------------------------------------------------------------------------------------ Swin-UNet


def test_swin_parameter_counts_by_part(swin):
    net = swin
    assert count(net) == SWIN_PARAMS
    assert count(net.patch_embed) == 4_896
    assert [count(m) for m in net.layers] == [299_190, 1_188_204, 4_735_704, 14_183_856]
    assert [count(m) for m in net.layers_up] == [1_180_416, 3_848_280, 965_676, 224_694]
    assert [count(m) for m in net.concat_back_dim] == [0, 295_296, 73_920, 18_528]
    assert (count(net.norm), count(net.norm_up), count(net.up), count(net.output)) == (1_536, 192, 147_648, 384)
    assert net.output.bias is None


def test_swin_configuration(swin):
    dims, heads = (96, 192, 384, 768), (3, 6, 12, 24)
    rates = torch.linspace(0, 0.2, 8).tolist()

    def drop_prob(block: nn.Module) -> float:  # MONAI's block uses nn.Identity for a zero rate
        return 0.0 if isinstance(block.drop_path, nn.Identity) else block.drop_path.drop_prob

    for i, layer in enumerate(swin.layers):
        assert [b.attn.num_heads for b in layer.blocks] == [heads[i]] * 2
        assert layer.blocks[0].norm1.normalized_shape == (dims[i],)
        assert layer.blocks[0].mlp.fc1.out_features == 4 * dims[i] and layer.blocks[0].attn.qkv.bias is not None
        assert math.isclose(layer.blocks[0].attn.scale, (dims[i] // heads[i]) ** -0.5)
        assert [drop_prob(b) for b in layer.blocks] == pytest.approx(rates[2 * i : 2 * i + 2])
        # Regular then shifted windows; the 7x7 bottleneck is a single window, never shifted, with no mask.
        shifted = (3, 3) if i < 3 else (0, 0)
        assert [(b.window_size, b.shift_size) for b in layer.blocks] == [((7, 7), (0, 0)), ((7, 7), shifted)]
        assert (layer.attn_mask is None) == (i == 3)
    for k in (1, 2, 3):  # decoder stage k mirrors encoder stage 3-k, drop-path rates included
        mirrored = swin.layers[3 - k]
        up = swin.layers_up[k]
        assert [drop_prob(b) for b in up.blocks] == [drop_prob(b) for b in mirrored.blocks]
        assert up.blocks[0].attn.num_heads == mirrored.blocks[0].attn.num_heads
    assert "layers.0.attn_mask" not in swin.state_dict()  # derived from the size, never saved


def test_swin_forward_224_and_rejects_other_sizes(swin):
    x = torch.randn(1, 1, 224, 224)
    with torch.no_grad():
        y = swin(x)
    assert y.shape == (1, 4, 224, 224) and torch.isfinite(y).all()
    with pytest.raises(ValueError, match="224, 224"):
        swin(torch.zeros(1, 1, 256, 256))
    with pytest.raises(ValueError, match="fixed inputs"):
        swin(torch.zeros(1, 2, 224, 224))


def test_swin_forward_backward_finite_on_a_tiny_configuration():
    """Same code path at a CPU-friendly size: 64x64 input, windows of 4 (stage 3 is a single 2x2 window)."""
    torch.manual_seed(0)
    net = SwinUNet(img_size=64, embed_dim=12, num_heads=(1, 2, 3, 4), window_size=4).train()
    x = torch.randn(2, 1, 64, 64)
    y = net(x)
    assert y.shape == (2, 4, 64, 64)
    y.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def naive_swin_block(block: nn.Module, x: torch.Tensor, window: int, shift: int) -> torch.Tensor:
    """A Swin block written token by token: query (i, j) attends to keys in its shifted window that are also within
    `window` of it in the image (tokens that the cyclic shift wrapped around from the other border are excluded).

    x: (1, H, W, C) -> (1, H, W, C); eval mode (no drop path).
    """
    _, height, width, dim = x.shape
    heads = block.attn.num_heads
    head_dim = dim // heads
    tokens = x.reshape(height * width, dim)
    qkv = block.attn.qkv(block.norm1(tokens)).reshape(height * width, 3, heads, head_dim)
    q, k, v = qkv.unbind(1)
    coords = [(i, j) for i in range(height) for j in range(width)]

    def shifted_window(i: int, j: int) -> tuple[int, int]:
        return ((i - shift) % height) // window, ((j - shift) % width) // window

    table = block.attn.relative_position_bias_table  # ((2w-1)^2, heads)
    attended = torch.zeros(height * width, heads, head_dim)
    for p, (i, j) in enumerate(coords):
        keys = [
            r
            for r, (a, b) in enumerate(coords)
            if shifted_window(a, b) == shifted_window(i, j) and abs(a - i) < window and abs(b - j) < window
        ]
        bias_index = torch.tensor(
            [(i - coords[r][0] + window - 1) * (2 * window - 1) + j - coords[r][1] + window - 1 for r in keys]
        )
        logits = torch.einsum("hd,khd->hk", q[p], k[keys]) * head_dim**-0.5 + table[bias_index].T
        attended[p] = torch.einsum("hk,khd->hd", logits.softmax(dim=-1), v[keys])
    tokens = tokens + block.attn.proj(attended.reshape(height * width, dim))
    tokens = tokens + block.mlp(block.norm2(tokens))
    return tokens.reshape(1, height, width, dim)


@pytest.mark.parametrize("block_index", [0, 1], ids=["regular-windows", "shifted-windows"])
def test_swin_block_matches_a_naive_windowed_attention(block_index):
    torch.manual_seed(0)
    window, shift = 4, 2
    stage = SwinStage(
        8, resolution=8, num_heads=2, window_size=window, mlp_ratio=2.0, drop_path_rates=[0, 0], resample=None
    )
    stage.eval()
    with torch.no_grad():
        for block in stage.blocks:  # a non-zero bias table so the relative position lookup matters
            block.attn.relative_position_bias_table.normal_(0, 1)
        x = torch.randn(1, 8, 8, 8)
        block = stage.blocks[block_index]
        expected = naive_swin_block(block, x, window, shift if block_index else 0)
        assert torch.allclose(block(x, stage.attn_mask), expected, atol=1e-5)
        if block_index:  # without the mask, wrapped-around tokens leak into the border windows
            assert not torch.allclose(block(x, None), expected, atol=1e-3)


# ---------------------------------------------------------------------------------------------------- Swin loader


@pytest.fixture(scope="module")
def swin_t_checkpoint(tmp_path_factory) -> tuple[str, dict[str, torch.Tensor]]:
    """Synthetic checkpoint in the Swin-T ImageNet layout: depths [2, 2, 6, 2], attn_mask buffers, 1000-class head."""
    torch.manual_seed(123)
    dims, heads, depths = (96, 192, 384, 768), (3, 6, 12, 24), (2, 2, 6, 2)
    state: dict[str, torch.Tensor] = {}
    stem = PatchEmbed(patch_size=PATCH_SIZE, in_chans=3, embed_dim=96, norm_layer=nn.LayerNorm, spatial_dims=2)
    state.update({f"patch_embed.{k}": v for k, v in stem.state_dict().items()})
    for i in range(4):
        stage = SwinStage(dims[i], 56 // 2**i, heads[i], 7, 4.0, [0.0] * depths[i], "down" if i < 3 else None)
        state.update({f"layers.{i}.{k}": v for k, v in stage.state_dict().items()})
        for j in range(1, depths[i], 2):  # the reference saves its masks with every shifted block
            if stage.attn_mask is not None:
                state[f"layers.{i}.blocks.{j}.attn_mask"] = stage.attn_mask.clone()
    state["norm.weight"], state["norm.bias"] = torch.rand(768), torch.rand(768)
    state["head.weight"], state["head.bias"] = torch.randn(1000, 768) * 0.02, torch.zeros(1000)
    params = sum(v.numel() for k, v in state.items() if not k.endswith(("relative_position_index", "attn_mask")))
    assert params == SWIN_T_PARAMS
    path = tmp_path_factory.mktemp("ckpt") / "swin_tiny_patch4_window7_224_synthetic.pth"
    torch.save({"model": state}, path)
    return str(path), state


def test_swin_t_loader_mirrors_encoder_into_decoder(swin_t_checkpoint, caplog):
    path, state = swin_t_checkpoint
    torch.manual_seed(1)
    net = SwinUNet(rgb_stem=False)  # 1-channel stem: the loader sums the RGB kernel
    with caplog.at_level("INFO", logger="scripts.networks.pretrained"):
        report = load_swin_t_weights(net, path)
    model_state = net.state_dict()

    missing_prefixes = ("layers_up.0.", "layers_up.1.upsample.", "layers_up.2.upsample.", "concat_back_dim.")
    missing_prefixes += ("norm_up.", "up.", "output.")
    assert report["missing"] and all(k.startswith(missing_prefixes) for k in report["missing"])
    assert len(report["loaded"]) + len(report["missing"]) == len(model_state) and not report["skipped_shape"]
    unused_blocks = tuple(f"layers.2.blocks.{j}." for j in range(2, 6))
    assert all(
        k.startswith(unused_blocks) or k.endswith("attn_mask") or k.startswith("head.") for k in report["unused"]
    )
    assert "layers.2.blocks.5.mlp.fc2.weight" in report["unused"] and "head.weight" in report["unused"]

    torch.testing.assert_close(model_state["patch_embed.proj.weight"], state["patch_embed.proj.weight"].sum(1, True))
    for key in ("layers.0.blocks.1.attn.qkv.weight", "layers.2.downsample.reduction.weight", "norm.weight"):
        torch.testing.assert_close(model_state[key], state[key])
    for k, i in ((1, 2), (2, 1), (3, 0)):  # layers_up.k <- layers.(3-k), first blocks only
        for name in ("blocks.1.attn.relative_position_bias_table", "blocks.0.mlp.fc1.weight", "blocks.1.norm2.bias"):
            torch.testing.assert_close(model_state[f"layers_up.{k}.{name}"], state[f"layers.{i}.{name}"])
    loaded = sum(model_state[k].numel() for k in report["loaded"] if not k.endswith("relative_position_index"))
    not_loaded = count(net.layers_up[0]) + count(net.concat_back_dim) + count(net.norm_up) + count(net.up)
    not_loaded += count(net.output) + count(net.layers_up[1].upsample) + count(net.layers_up[2].upsample)
    assert loaded + not_loaded == count(net)
    assert "Loaded Swin-T weights" in caplog.text

    with pytest.raises(FileNotFoundError, match="Swin-T checkpoint not found"):
        load_swin_t_weights(net, str(BUNDLE_ROOT / "no_such_checkpoint.pth"))


# ---------------------------------------------------------------------------------------------- config overrides


def parser_for(*names: str, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / n) for n in names])
    parser.update({"bundle_root": str(BUNDLE_ROOT), **overrides})
    return parser


def test_unet_override_replaces_the_whole_network_def():
    parser = parser_for("train.json", "networks/unet.json")
    assert parser["network_def"] == json.loads((CONFIGS / "networks" / "unet.json").read_text())["network_def"]
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, UNet) and count(net) == UNET_PARAMS
    # The same file fits the standalone inference config.
    assert isinstance(parser_for("inference.json", "networks/unet.json").get_parsed_content("network_def"), UNet)


def test_swin_override_builds_swin_unet_and_takes_pretrained_path_from_the_cli():
    parser = parser_for("train.json", "networks/swin_unet.json")
    assert "scan_backend" not in parser["network_def"]
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, SwinUNet) and count(net) == SWIN_PARAMS and net.img_size == 224
    assert parser.get_parsed_content("patch_size") == [224, 224]  # Swin-UNet's fixed size is the recipe's
    # CLI overrides are applied after the config files, so `--pretrained_path` still reaches the network.
    cli = parser_for("train.json", "networks/swin_unet.json", pretrained_path="swin_tiny_patch4_window7_224.pth")
    assert cli.get_parsed_content("network_def#pretrained_path") == "swin_tiny_patch4_window7_224.pth"
    inference = parser_for("inference.json", "networks/swin_unet.json")
    assert inference.get_parsed_content("network_def#pretrained_path") is None
    assert inference["network_def"]["_target_"].endswith("SwinUNet")


def test_mamba_unet_override_is_the_default_network_def():
    train = json.loads((CONFIGS / "train.json").read_text())
    assert json.loads((CONFIGS / "networks" / "mamba_unet.json").read_text()) == {"network_def": train["network_def"]}
    parser = parser_for("train.json", "networks/unet.json", "networks/mamba_unet.json")  # the last file wins
    assert parser["network_def"] == train["network_def"]
    assert parser.get_parsed_content("network_def#_target_") == "scripts.networks.mamba_unet.MambaUNet"


@pytest.mark.parametrize("path", sorted((CONFIGS / "networks").glob("*.json")), ids=lambda p: p.name)
def test_network_configs_are_formatted_like_the_model_zoo(path):
    text = path.read_text()
    assert text == json.dumps(json.loads(text), indent=4) + "\n"
