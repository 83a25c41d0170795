"""U-Mamba (Ma, Li, Wang 2024, arXiv 2401.04722) for 2D segmentation: U-Mamba_Bot and U-Mamba_Enc.

Re-implemented from the architecture spec of U-Mamba's code (``UMambaBot_2d.py`` / ``UMambaEnc_2d.py`` of
bowang-lab/U-Mamba @ 28459e3, an nnU-Net v2 residual U-Net) for the topology nnU-Net plans for 224 x 224 ACDC
patches: 6 stages, strides (1, 2, 2, 2, 2, 2), features (32, 64, 128, 256, 512, 512), 3 x 3 kernels, encoder blocks
(2, 2, 2, 1, 1, 1), decoder blocks (2, 2, 2, 1, 1). The constructor defaults are that topology; ``n_stages`` etc.
build smaller variants with the same rules (tests, CPU demos).

- Residual blocks: conv-norm-LeakyReLU-conv-norm plus a skip (1x1 conv with the block's stride in the first block of
  every stage, identity in the others), then LeakyReLU; InstanceNorm2d(affine), LeakyReLU(0.01), convs with bias,
  He init (kaiming_normal, a=0.01) of every Conv2d.
- Encoder: stem (a block in -> f0 plus more blocks) then one stage per entry of ``strides``; a
  :class:`~scripts.networks.mamba_layer.MambaLayer` follows the stages listed by the variant, and the (Mamba-mixed)
  stage output is the skip:
  U-Mamba_Bot: the last stage only (the bottleneck). U-Mamba_Enc: stage s when (s odd) XOR (n_stages odd), in
  channel-token mode where the stage's H*W <= its channels.
- Decoder: nearest upsampling by the stage stride and a 1x1 conv, concat the skip (except at the full-resolution
  stage, which has no skip), blocks, a 1x1 segmentation head per stage.
- Deep supervision (``deep_supervision=True``, training mode only): the list of the heads' logits, full resolution
  first, (B, K, H, W), (B, K, H/2, W/2), ...; see :func:`deep_supervision_weights` for the loss weights. Otherwise
  (and always in eval mode): the full-resolution logits (B, K, H, W). All heads exist either way, so the state dict
  does not depend on the option.

Parameter counts at the defaults (in_channels 1, out_channels 4), checked in tests/test_umamba.py against the spec's
counts (which the spec measured by building U-Mamba's own classes on CPU): U-Mamba_Bot 28,760,276 (its Mamba layer:
1,695,744); U-Mamba_Enc at 224 x 224: 27,556,250.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution, UpSample

from scripts.networks.mamba_layer import MambaLayer

__all__ = ["UMambaBot", "UMambaEnc", "deep_supervision_weights", "default_topology"]

_NORM = ("instance", {"affine": True, "eps": 1e-5})
_ACT = ("leakyrelu", {"negative_slope": 0.01, "inplace": True})
_KERNEL = 3


def default_topology(n_stages: int, base_features: int = 32, max_features: int = 512) -> dict[str, list[int]]:
    """nnU-Net's plan rules as U-Mamba applies them, for ``n_stages`` stages of 3x3 convs.

    Returns ``features`` min(base * 2**s, max), ``strides`` (1, 2, 2, ...), ``encoder_blocks`` 2 per stage but 1 from
    stage ceil(n/2) on, ``decoder_blocks`` (n - 1 entries, lowest resolution first) 2 but 1 from index ceil((n-1)/2 +
    0.5) on. For n_stages=6: features (32..512, 512), encoder (2,2,2,1,1,1), decoder (2,2,2,1,1).
    """
    if n_stages < 2:
        raise ValueError(f"U-Mamba needs at least 2 stages, got n_stages={n_stages}")
    first_single_encoder = math.ceil(n_stages / 2)
    first_single_decoder = math.ceil((n_stages - 1) / 2 + 0.5)
    return {
        "features": [min(base_features * 2**s, max_features) for s in range(n_stages)],
        "strides": [1] + [2] * (n_stages - 1),
        "encoder_blocks": [2 if s < first_single_encoder else 1 for s in range(n_stages)],
        "decoder_blocks": [2 if s < first_single_decoder else 1 for s in range(n_stages - 1)],
    }


def deep_supervision_weights(num_outputs: int) -> list[float]:
    """nnU-Net's deep-supervision loss weights (U-Mamba's trainers use them unchanged), full resolution first.

    Output i weighs 1 / 2**i, the lowest-resolution output weighs 0 (nnU-Net never supervises it), and the weights
    are normalised to sum 1. For the 5 heads of the 6-stage net: [8, 4, 2, 1, 0] / 15.
    """
    if num_outputs < 1:
        raise ValueError(f"deep_supervision_weights: need at least one output, got {num_outputs}")
    if num_outputs == 1:
        return [1.0]
    weights = [0.5**i for i in range(num_outputs - 1)] + [0.0]
    total = sum(weights)
    return [w / total for w in weights]


class ResidualBlock(nn.Module):
    """nnU-Net's residual block: act(norm(conv(act(norm(conv(x))))) + skip(x)); (B, C_in, H, W) -> (B, C_out, H/s, W/s).

    The skip is a 1x1 conv with the block's stride when ``projection`` (U-Mamba's BasicResBlock), else identity
    (BasicBlockD; needs C_in == C_out and stride 1). Hand-written: MONAI's UnetResBlock adds a norm to the
    projection and drops the conv biases, which changes the architecture (and its parameter count).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, projection: bool = True) -> None:
        super().__init__()
        if not projection and (in_channels != out_channels or stride != 1):
            raise ValueError(
                f"ResidualBlock: an identity skip needs in_channels == out_channels and stride 1, got "
                f"{in_channels} -> {out_channels}, stride {stride}"
            )
        self.conv1 = Convolution(
            2, in_channels, out_channels, strides=stride, kernel_size=_KERNEL, adn_ordering="NA", act=_ACT, norm=_NORM
        )
        self.conv2 = Convolution(
            2, out_channels, out_channels, kernel_size=_KERNEL, adn_ordering="N", act=None, norm=_NORM
        )
        self.skip = nn.Conv2d(in_channels, out_channels, 1, stride=stride) if projection else nn.Identity()
        self.act = nn.LeakyReLU(negative_slope=_ACT[1]["negative_slope"], inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.skip(x))


def _stage(in_channels: int, out_channels: int, stride: int, num_blocks: int) -> nn.Sequential:
    """A projecting ResidualBlock (in -> out, stride) then ``num_blocks - 1`` identity-skip blocks."""
    blocks = [ResidualBlock(in_channels, out_channels, stride, projection=True)]
    blocks += [ResidualBlock(out_channels, out_channels, 1, projection=False) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


def _he_init(module: nn.Module) -> None:
    """nnU-Net's InitWeights_He(1e-2) on Conv2d (the Mamba layers' Conv1d keep mamba-ssm's init, as in U-Mamba)."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, a=1e-2)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class _UMamba(nn.Module, abc.ABC):
    """The residual U-Net shared by both variants; subclasses choose where Mamba layers go (``_mamba_layers``).

    (B, in_channels, H, W) -> logits (B, out_channels, H, W), or the deep-supervision list in training mode.
    H and W must be divisible by the product of the strides (32 at the defaults).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        n_stages: int,
        features: Sequence[int] | None,
        strides: Sequence[int] | None,
        encoder_blocks: Sequence[int] | None,
        decoder_blocks: Sequence[int] | None,
        deep_supervision: bool,
        d_state: int,
        d_conv: int,
        expand: int,
        scan_backend: str,
    ) -> None:
        super().__init__()
        plan = default_topology(n_stages)
        self.features = list(features) if features is not None else plan["features"]
        self.strides = list(strides) if strides is not None else plan["strides"]
        enc_blocks = list(encoder_blocks) if encoder_blocks is not None else plan["encoder_blocks"]
        dec_blocks = list(decoder_blocks) if decoder_blocks is not None else plan["decoder_blocks"]
        for name, values, size in (
            ("features", self.features, n_stages),
            ("strides", self.strides, n_stages),
            ("encoder_blocks", enc_blocks, n_stages),
            ("decoder_blocks", dec_blocks, n_stages - 1),
        ):
            if len(values) != size:
                raise ValueError(
                    f"{type(self).__name__}: {name} needs {size} entries for n_stages={n_stages}, got {values}"
                )
        self.in_channels = in_channels
        self.deep_supervision = deep_supervision
        self.size_divisor = math.prod(self.strides)
        self.mamba_kwargs = dict(d_state=d_state, d_conv=d_conv, expand=expand, scan_backend=scan_backend)

        # Encoder (names follow U-Mamba's: encoder.stem, encoder.stages, decoder.stages/upsample_layers/seg_layers).
        self.encoder = nn.Module()
        self.encoder.stem = _stage(in_channels, self.features[0], 1, enc_blocks[0])
        self.encoder.stages = nn.ModuleList(
            _stage(self.features[max(s - 1, 0)], self.features[s], self.strides[s], enc_blocks[s])
            for s in range(n_stages)
        )
        self.encoder.mamba_layers = self._mamba_layers()
        # Decoder, lowest resolution first: stage s upsamples from features[-s] to features[-(s+1)].
        self.decoder = nn.Module()
        self.decoder.upsample_layers = nn.ModuleList()
        self.decoder.stages = nn.ModuleList()
        self.decoder.seg_layers = nn.ModuleList()
        for s in range(1, n_stages):
            below, skip = self.features[-s], self.features[-(s + 1)]
            has_skip = s < n_stages - 1  # the full-resolution stage gets no skip (U-Mamba drops skips[0])
            # U-Mamba's UpsampleLayer is nearest upsampling then a 1x1 conv (bias). A 1x1 conv commutes with nearest
            # upsampling, so MONAI's UpSample with the conv first (its pre_conv) is the same function at 1/stride^2
            # of the conv cost.
            self.decoder.upsample_layers.append(
                UpSample(
                    2,
                    below,
                    skip,
                    scale_factor=self.strides[-s],
                    mode="nontrainable",
                    pre_conv=nn.Conv2d(below, skip, 1),
                    interp_mode="nearest",
                    align_corners=None,
                )
            )
            self.decoder.stages.append(_stage(2 * skip if has_skip else skip, skip, 1, dec_blocks[s - 1]))
            self.decoder.seg_layers.append(nn.Conv2d(skip, out_channels, 1))
        self.apply(_he_init)

    @abc.abstractmethod
    def _mamba_layers(self) -> nn.ModuleList:
        """One module per encoder stage, applied to the stage's output: MambaLayer or nn.Identity."""

    @property
    def num_outputs(self) -> int:
        """Number of deep-supervision outputs (decoder stages): n_stages - 1."""
        return len(self.decoder.seg_layers)

    @property
    def unused_parameters_in_training(self) -> bool:
        """True when a training forward leaves parameters without gradient: without deep supervision the lower
        heads are unused, and DistributedDataParallel then needs ``find_unused_parameters=True``."""
        return not self.deep_supervision and self.num_outputs > 1

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """x: (B, in_channels, H, W) -> logits (B, out_channels, H, W); with deep supervision in training mode, the
        list of all heads' logits, full resolution first (output i is (B, out_channels, H / 2**i, W / 2**i))."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__} expects input (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[2] % self.size_divisor or x.shape[3] % self.size_divisor:
            raise ValueError(
                f"{type(self).__name__} needs H and W divisible by {self.size_divisor}, got input shape {tuple(x.shape)}"
            )
        x = self.encoder.stem(x)
        skips = []
        for stage, mamba in zip(self.encoder.stages, self.encoder.mamba_layers):
            x = mamba(stage(x))
            skips.append(x)
        heads_wanted = self.deep_supervision and self.training
        outputs = []
        num_stages = len(self.decoder.stages)
        for s, (upsample, stage, head) in enumerate(
            zip(self.decoder.upsample_layers, self.decoder.stages, self.decoder.seg_layers)
        ):
            x = upsample(x)
            if s < num_stages - 1:
                x = torch.cat([x, skips[-(s + 2)]], dim=1)
            x = stage(x)
            if heads_wanted or s == num_stages - 1:
                outputs.append(head(x))
        return outputs[::-1] if heads_wanted else outputs[-1]


class UMambaBot(_UMamba):
    """U-Mamba_Bot: the residual U-Net with one Mamba layer (spatial tokens, d_model = bottleneck channels) on the
    bottleneck. (B, in_channels, H, W) -> logits (B, out_channels, H, W), H and W divisible by the product of the
    strides (32 at the defaults); any such size works.

    Defaults = the 224 x 224 ACDC topology, 28,760,276 parameters (Mamba layer on 512 channels: 1,695,744); the count
    is the spec's (built from U-Mamba's code) and tests/test_umamba.py checks it.

    Args:
        in_channels, out_channels: input channels and classes.
        n_stages: encoder stages; ``features``/``strides``/``encoder_blocks``/``decoder_blocks`` default to
            :func:`default_topology` (n_stages).
        deep_supervision: in training mode return every decoder head's logits (see the module docstring).
        d_state, d_conv, expand: Mamba hyper-parameters (U-Mamba: 16, 4, 2).
        scan_backend: "auto" | "torch" | "cuda" (see :class:`~scripts.networks.mamba_layer.Mamba`).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 4,
        n_stages: int = 6,
        features: Sequence[int] | None = None,
        strides: Sequence[int] | None = None,
        encoder_blocks: Sequence[int] | None = None,
        decoder_blocks: Sequence[int] | None = None,
        deep_supervision: bool = False,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        scan_backend: str = "auto",
    ) -> None:
        super().__init__(
            in_channels, out_channels, n_stages, features, strides, encoder_blocks, decoder_blocks, deep_supervision,
            d_state, d_conv, expand, scan_backend,
        )  # fmt: skip

    def _mamba_layers(self) -> nn.ModuleList:
        last = len(self.features) - 1
        return nn.ModuleList(
            MambaLayer(self.features[s], **self.mamba_kwargs) if s == last else nn.Identity() for s in range(last + 1)
        )


class UMambaEnc(_UMamba):
    """U-Mamba_Enc: a Mamba layer after encoder stage s when (s odd) XOR (n_stages odd), always including the last
    stage. A stage whose H*W <= its channels uses channel tokens (d_model = H*W), so the network is built for one
    input size (``input_size``, the training patch) and rejects others. (B, in_channels, *input_size) -> logits.

    Defaults = the 224 x 224 ACDC topology, 27,556,250 parameters (Mamba on stage 1: 64 channels over 112x112 tokens,
    stage 3: 256 over 28x28, stage 5: channel tokens of d_model 49 = 7x7); the count is the spec's (built from
    U-Mamba's code) and tests/test_umamba.py checks it.

    Args:
        input_size: (H, W) the network is built for (sets the channel-token dimensions).
        others: as :class:`UMambaBot`.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 4,
        input_size: Sequence[int] = (224, 224),
        n_stages: int = 6,
        features: Sequence[int] | None = None,
        strides: Sequence[int] | None = None,
        encoder_blocks: Sequence[int] | None = None,
        decoder_blocks: Sequence[int] | None = None,
        deep_supervision: bool = False,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        scan_backend: str = "auto",
    ) -> None:
        if len(input_size) != 2:
            raise ValueError(f"UMambaEnc: input_size must be (H, W), got {input_size}")
        self.input_size = (int(input_size[0]), int(input_size[1]))
        super().__init__(
            in_channels, out_channels, n_stages, features, strides, encoder_blocks, decoder_blocks, deep_supervision,
            d_state, d_conv, expand, scan_backend,
        )  # fmt: skip

    def _mamba_layers(self) -> nn.ModuleList:
        n_stages = len(self.features)
        height, width = self.input_size
        if height % self.size_divisor or width % self.size_divisor:
            raise ValueError(f"UMambaEnc: input_size {self.input_size} must be divisible by {self.size_divisor}")
        layers = []
        for s in range(n_stages):
            height, width = height // self.strides[s], width // self.strides[s]
            if (s % 2 == 1) != (n_stages % 2 == 1):
                channel_token = height * width <= self.features[s]
                dim = height * width if channel_token else self.features[s]
                layers.append(MambaLayer(dim, channel_token=channel_token, **self.mamba_kwargs))
            else:
                layers.append(nn.Identity())
        return nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if x.ndim == 4 and tuple(x.shape[2:]) != self.input_size:
            raise ValueError(
                f"UMambaEnc was built for input_size {self.input_size} (its channel-token Mamba layers fit only that "
                f"size), got input shape {tuple(x.shape)}; set input_size (the configs pass @patch_size)"
            )
        return super().forward(x)
