"""The paper's Swin-UNet baseline (Cao et al. 2021) in the "lite" configuration Mamba-UNet's ``_ViT.py`` trains.

Re-implemented from the architecture spec (shared/notes/reference_spec.md, sections 2-3): 224x224 input, 4x4 patches,
embed 96, depths [2, 2, 2, 2] in the encoder and mirrored in the decoder, heads 3/6/12/24, window 7, MLP ratio 4,
qkv bias, drop path 0.2, no absolute position embedding; 27,168,420 parameters for 4 classes. The decoder (patch
expanding, skip concatenation + Linear, final 4x expand + 1x1 conv) is the same as Mamba-UNet's, with Swin blocks in
place of VSS blocks, so :class:`~scripts.networks.mamba_unet.PatchExpand` is shared.

MONAI's Swin pieces are used where they match the reference: ``SwinTransformerBlock`` (pre-norm window attention
with a relative position bias table, cyclic shift, -100 attention mask; the block falls back to an unshifted full
window when the feature map is not larger than the window, as the reference does for the 7x7 bottleneck),
``compute_mask``, ``PatchMergingV2`` (gathers (0::2,0::2), (1::2,0::2), (0::2,1::2), (1::2,1::2) like the
reference) and ``PatchEmbed``. Parameter names follow the Swin-T ImageNet checkpoint
(``swin_tiny_patch4_window7_224.pth``) so that :func:`load_swin_t_weights` can initialise the network the way the
paper did.

Layout: tensors between blocks are channels-last ``(B, H, W, C)``; the network's input and output are channels-first.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import PatchEmbed
from monai.networks.nets.swin_unetr import PatchMergingV2, SwinTransformerBlock, compute_mask

from scripts.networks.mamba_unet import PatchExpand, _init_linear_and_norm, u_shaped_forward
from scripts.networks.pretrained import load_mirrored_encoder_weights

logger = logging.getLogger(__name__)

PATCH_SIZE = 4  # stem patch size of Swin-T / Swin-UNet


class SwinMlp(nn.Module):
    """fc1 -> GELU -> fc2, (..., C) -> (..., C).

    Hand-written only for the parameter names: MONAI's ``MLPBlock`` is the same computation but names its layers
    ``linear1``/``linear2``, whereas the Swin-T checkpoint stores ``mlp.fc1``/``mlp.fc2``. Dropout is 0 in Swin-UNet.
    """

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(SwinTransformerBlock):
    """MONAI's Swin block with checkpoint-compatible MLP names. (B, H, W, C), mask -> (B, H, W, C).

    x + DropPath(W-MSA(LN(x))) then x + DropPath(MLP(LN(x))); the attention runs in (shifted) windows.
    """

    def __init__(
        self, dim: int, num_heads: int, window_size: int, shift_size: int, mlp_ratio: float, drop_path: float
    ) -> None:
        super().__init__(
            dim,
            num_heads,
            window_size=(window_size, window_size),
            shift_size=(shift_size, shift_size),
            mlp_ratio=mlp_ratio,
            qkv_bias=True,
            drop_path=drop_path,
        )
        self.mlp = SwinMlp(dim, int(dim * mlp_ratio))


class SwinStage(nn.Module):
    """Swin blocks at one fixed resolution (alternating regular and shifted windows), then optionally
    PatchMerging (``downsample``, encoder) or PatchExpand (``upsample``, decoder); names follow the checkpoint.

    (B, R, R, C) -> (B, R/2, R/2, 2C) | (B, 2R, 2R, C/2) | (B, R, R, C), with R = ``resolution``.
    """

    def __init__(
        self,
        dim: int,
        resolution: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        drop_path_rates: Sequence[float],
        resample: str | None,
    ) -> None:
        super().__init__()
        # As in the reference: a map no larger than the window is one unshifted window.
        if resolution <= window_size:
            window_size, shift_size = resolution, 0
        else:
            shift_size = window_size // 2
        if resolution % window_size:
            raise ValueError(f"Swin stage resolution {resolution} is not a multiple of the window size {window_size}")
        self.resolution = resolution
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window_size, 0 if j % 2 == 0 else shift_size, mlp_ratio, rate)
            for j, rate in enumerate(drop_path_rates)
        )
        # The mask depends only on the fixed resolution: computed once, moved with the module, never saved.
        attn_mask = None
        if shift_size > 0:
            attn_mask = compute_mask(
                [resolution, resolution], (window_size, window_size), (shift_size, shift_size), torch.device("cpu")
            )
        self.register_buffer("attn_mask", attn_mask, persistent=False)
        self.downsample = PatchMergingV2(dim, norm_layer=nn.LayerNorm, spatial_dims=2) if resample == "down" else None
        self.upsample = PatchExpand(dim, dim // 2, scale=2) if resample == "up" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, self.attn_mask)
        if self.downsample is not None:
            x = self.downsample(x)
        if self.upsample is not None:
            x = self.upsample(x)
        return x


class SwinUNet(nn.Module):
    """Swin-UNet for 2D segmentation: (B, in_channels, S, S) -> logits (B, out_channels, S, S), S = ``img_size``.

    The input size is fixed (the shifted-window masks are built for it), 224 in the paper.

    Args:
        in_channels: input channels.
        out_channels: number of classes.
        img_size: the one accepted input height and width.
        embed_dim: channels after the stem; stage i has embed_dim * 2**i.
        depths: Swin blocks per encoder stage; decoder stage k mirrors encoder stage len(depths)-1-k.
        num_heads: attention heads per stage.
        window_size: attention window (tokens per side).
        mlp_ratio: MLP hidden size / channels.
        drop_path_rate: stochastic depth rises linearly from 0 to this over the encoder blocks; the decoder re-uses
            the rates of the mirrored encoder stage.
        rgb_stem: True = the paper's 3-channel stem (a 1-channel input is repeated to 3 channels, which lets the
            ImageNet stem load unchanged); False = the stem takes in_channels directly.
        pretrained_path: Swin-T ImageNet checkpoint loaded with :func:`load_swin_t_weights` after init.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 4,
        img_size: int = 224,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.2,
        rgb_stem: bool = True,
        pretrained_path: str | None = None,
    ) -> None:
        super().__init__()
        num_stages = len(depths)
        if num_stages < 2 or len(num_heads) != num_stages:
            raise ValueError(
                f"SwinUNet needs at least 2 stages and one head count per stage, got depths={tuple(depths)}, "
                f"num_heads={tuple(num_heads)}"
            )
        if img_size % (PATCH_SIZE * 2 ** (num_stages - 1)):
            raise ValueError(
                f"SwinUNet img_size must be divisible by {PATCH_SIZE * 2 ** (num_stages - 1)}, got {img_size}"
            )
        if rgb_stem and in_channels not in (1, 3):
            raise ValueError(
                f"rgb_stem=True takes 1 (repeated to RGB) or 3 input channels, got in_channels={in_channels}"
            )
        self.in_channels = in_channels
        self.img_size = img_size
        self.rgb_stem = rgb_stem
        dims = [embed_dim * 2**i for i in range(num_stages)]
        resolutions = [img_size // PATCH_SIZE // 2**i for i in range(num_stages)]
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        stage_rates = [rates[sum(depths[:i]) : sum(depths[: i + 1])] for i in range(num_stages)]

        def stage(i: int, resample: str | None) -> SwinStage:
            return SwinStage(dims[i], resolutions[i], num_heads[i], window_size, mlp_ratio, stage_rates[i], resample)

        # MONAI's PatchEmbed = Conv2d(k=s=4) + LayerNorm over channels, with the reference's names (proj, norm).
        self.patch_embed = PatchEmbed(
            patch_size=PATCH_SIZE,
            in_chans=3 if rgb_stem else in_channels,
            embed_dim=embed_dim,
            norm_layer=nn.LayerNorm,
            spatial_dims=2,
        )
        self.layers = nn.ModuleList(stage(i, "down" if i < num_stages - 1 else None) for i in range(num_stages))
        self.norm = nn.LayerNorm(dims[-1])
        # layers_up.0 is a bare PatchExpand; layers_up.k (k >= 1) mirrors encoder stage num_stages-1-k.
        self.layers_up = nn.ModuleList([PatchExpand(dims[-1], dims[-2], scale=2)])
        self.concat_back_dim = nn.ModuleList([nn.Identity()])
        for k in range(1, num_stages):
            mirrored = num_stages - 1 - k
            self.layers_up.append(stage(mirrored, "up" if k < num_stages - 1 else None))
            self.concat_back_dim.append(nn.Linear(2 * dims[mirrored], dims[mirrored]))
        self.norm_up = nn.LayerNorm(embed_dim)
        self.up = PatchExpand(embed_dim, embed_dim, scale=PATCH_SIZE)
        self.output = nn.Conv2d(embed_dim, out_channels, kernel_size=1, bias=False)

        # Swin-UNet's init: Linear trunc_normal(.02)/bias 0, LayerNorm 1/0 (the bias tables keep MONAI's
        # trunc_normal(.02), the stem conv PyTorch's default), the same rule as Mamba-UNet's.
        self.apply(_init_linear_and_norm)
        if pretrained_path is not None:
            load_swin_t_weights(self, pretrained_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_channels, img_size, img_size) -> logits (B, out_channels, img_size, img_size)."""
        if x.ndim != 4 or x.shape[1] != self.in_channels or x.shape[2:] != (self.img_size, self.img_size):
            raise ValueError(
                f"SwinUNet is built for fixed inputs (B, {self.in_channels}, {self.img_size}, {self.img_size}) "
                f"(its shifted-window attention masks depend on the size), got shape {tuple(x.shape)}; resize the "
                f"images to {self.img_size}x{self.img_size} (patch_size in the bundle configs)"
            )
        return u_shaped_forward(self, x)


def load_swin_t_weights(network: SwinUNet, checkpoint_path: str) -> dict[str, list[str]]:
    """Initialise ``network`` from a Swin-T ImageNet checkpoint the way Swin-UNet's ``load_from`` does.

    Every checkpoint key is a candidate as is; every ``layers.{i}.*`` key is also a candidate for the mirrored
    decoder stage ``layers_up.{n-1-i}.*`` (n = number of stages), so Swin-T's depths [2, 2, 6, 2] fill the lite
    [2, 2, 2, 2] encoder and decoder blocks and the extra blocks of stage 2 stay unused. A key the checkpoint already
    holds under its own name wins over a mirrored copy. For a 1-channel stem and a 3-channel checkpoint stem the
    kernel is summed over its input channels, so a gray image gives the response of the same image repeated to RGB.
    Candidates whose shape differs from the model's are skipped; the rest load with strict=False. The checkpoint's
    ``attn_mask`` buffers are derived from the input size and recomputed here, so they are listed as unused.

    Returns:
        {"loaded": model keys loaded, "missing": model keys left at their init, "skipped_shape": model keys whose
        candidate had another shape, "unused": checkpoint keys that loaded nowhere}.
    """
    return load_mirrored_encoder_weights(network, checkpoint_path, "Swin-T")
