"""The paper's UNet baseline: the PyMIC / SSL4MIS 2D UNet that Mamba-UNet's ``train_fully_supervised_2D.py`` trains.

Re-implemented from the architecture spec (shared/notes/reference_spec.md, sections 2-3), 1,813,764 parameters for
1 input channel and 4 classes (encoder 1,180,464, decoder 633,300):

- features 16/32/64/128/256; each level is a ConvBlock conv3x3-BN-LeakyReLU-Dropout(p)-conv3x3-BN-LeakyReLU with
  p = 0.05/0.1/0.2/0.3/0.5 in the encoder and p = 0 in the decoder; MaxPool2d(2) between encoder levels.
- Up path, as the reference code EXECUTES it: conv1x1 (with bias) to the skip's channels, then bilinear x2
  upsampling with align_corners=True. The reference UNet's params say ``bilinear=False``, but its ``Decoder`` never
  passes that flag to ``UpBlock``, whose default is ``bilinear=True``; only this path gives the published 633,300
  decoder parameters (ConvTranspose2d(k2, s2) would give 763,860). ``upsample="deconv"`` builds the
  transposed-convolution variant the params describe.
- concatenation order [skip, upsampled]; output conv3x3 to the classes; PyTorch's default init everywhere.

Why not ``monai.networks.nets.BasicUNet``: its features (32..512 by default, an extra 32-channel top level), its
instance norm, and its TwoConv (dropout after both convolutions) differ from the reference, so the network is
assembled here from MONAI's ``Convolution`` and ``UpSample`` blocks, which do reproduce the reference layer order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution, UpSample

UPSAMPLE_MODES = {"bilinear": "nontrainable", "deconv": "deconv"}


def conv_block(in_channels: int, out_channels: int, dropout: float, negative_slope: float) -> nn.Sequential:
    """conv3x3-BN-LeakyReLU-Dropout-conv3x3-BN-LeakyReLU, (B, in, H, W) -> (B, out, H, W).

    MONAI's ``Convolution`` applies its ADN block in the given order, so "NAD" then "NA" is the reference order.
    """
    act = ("leakyrelu", {"negative_slope": negative_slope})
    return nn.Sequential(
        Convolution(
            2, in_channels, out_channels, kernel_size=3, act=act, norm="batch", dropout=dropout, adn_ordering="NAD"
        ),
        Convolution(2, out_channels, out_channels, kernel_size=3, act=act, norm="batch", adn_ordering="NA"),
    )


class UpBlock(nn.Module):
    """Upsample the coarser map to the skip's channels and size, concatenate [skip, up], ConvBlock.

    (B, in_channels, H, W), skip (B, skip_channels, 2H, 2W) -> (B, out_channels, 2H, 2W).
    """

    def __init__(
        self, in_channels: int, skip_channels: int, out_channels: int, upsample: str, negative_slope: float
    ) -> None:
        super().__init__()
        # "nontrainable" = conv1x1 (bias) then nn.Upsample(bilinear, align_corners=True); "deconv" = ConvTranspose2d.
        self.up = UpSample(
            2,
            in_channels,
            skip_channels,
            scale_factor=2,
            mode=UPSAMPLE_MODES[upsample],
            interp_mode="bilinear",
            align_corners=True,
        )
        self.conv = conv_block(2 * skip_channels, out_channels, dropout=0.0, negative_slope=negative_slope)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    """2D UNet of the paper's baseline: (B, in_channels, H, W) -> logits (B, out_channels, H, W).

    H and W must be divisible by 2**(len(features) - 1) (16 for the reference's five levels).

    Args:
        in_channels: input channels (the reference feeds the gray slice as is, no RGB repeat).
        out_channels: number of classes.
        features: channels per level, finest first.
        dropout: dropout probability of each encoder level's ConvBlock (the decoder uses none).
        upsample: "bilinear" (conv1x1 + bilinear x2, what the reference runs) or "deconv" (ConvTranspose2d k2 s2).
        negative_slope: LeakyReLU slope (the reference uses PyTorch's default, 0.01).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 4,
        features: Sequence[int] = (16, 32, 64, 128, 256),
        dropout: Sequence[float] = (0.05, 0.1, 0.2, 0.3, 0.5),
        upsample: str = "bilinear",
        negative_slope: float = 0.01,
    ) -> None:
        super().__init__()
        if len(features) != len(dropout) or len(features) < 2:
            raise ValueError(
                f"UNet needs at least 2 levels and one dropout rate per level, got features={tuple(features)}, "
                f"dropout={tuple(dropout)}"
            )
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(f"UNet upsample must be one of {sorted(UPSAMPLE_MODES)}, got {upsample!r}")
        self.in_channels = in_channels
        self.size_divisor = 2 ** (len(features) - 1)
        levels: list[nn.Module] = [conv_block(in_channels, features[0], dropout[0], negative_slope)]
        for i in range(1, len(features)):
            levels.append(
                nn.Sequential(nn.MaxPool2d(2), conv_block(features[i - 1], features[i], dropout[i], negative_slope))
            )
        self.encoder = nn.ModuleList(levels)
        self.decoder = nn.ModuleList(
            UpBlock(features[i], features[i - 1], features[i - 1], upsample, negative_slope)
            for i in range(len(features) - 1, 0, -1)
        )
        self.out_conv = nn.Conv2d(features[0], out_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_channels, H, W) -> logits (B, out_channels, H, W)."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"UNet expects input (B, {self.in_channels}, H, W), got shape {tuple(x.shape)}")
        if x.shape[2] % self.size_divisor or x.shape[3] % self.size_divisor:
            raise ValueError(f"UNet needs H and W divisible by {self.size_divisor}, got input shape {tuple(x.shape)}")
        skips = []
        for level in self.encoder:
            x = level(x)
            skips.append(x)
        x = skips.pop()  # the bottleneck output feeds the first up block
        for up_block in self.decoder:
            x = up_block(x, skips.pop())
        return self.out_conv(x)
