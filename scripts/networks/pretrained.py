"""Loading ImageNet-pretrained encoders into the U-shaped networks the way the paper's code (``load_from``) does.

VMamba v0 (Mamba-UNet) and Swin-T (Swin-UNet) checkpoints are mapped the same way: every checkpoint key is a candidate
as is, and every encoder key ``layers.{i}.*`` is also a candidate for the mirrored decoder stage
``layers_up.{n-1-i}.*`` (n = number of stages). A key the checkpoint already holds under its own name wins over a
mirrored copy. For a 1-channel stem and a 3-channel checkpoint stem the kernel is summed over its input channels, so a
gray image gives the response of the same image repeated to RGB. Candidates whose shape differs from the model's are
skipped; the rest load with strict=False, and a one-paragraph report is logged.
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn

logger = logging.getLogger(__name__)


def read_state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    """Tensor dict of a checkpoint that is either {"model": state_dict, ...} or a plain state dict."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise RuntimeError(
            f"{path}: the file holds pickled Python objects besides tensors (e.g. a training config), which "
            "torch.load(weights_only=True) refuses. If you trust the file, extract the weights once with "
            f"`torch.save(torch.load('{path}', map_location='cpu', weights_only=False)['model'], 'weights.pth')` "
            "and pass the new file."
        ) from err
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, Mapping) else checkpoint
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict of tensors or a dict with key 'model' holding one")
    return state


def load_mirrored_encoder_weights(network: nn.Module, checkpoint_path: str, source_name: str) -> dict[str, list[str]]:
    """Load ``checkpoint_path`` into ``network`` (which has ``layers`` and ``layers_up``) as the module docstring says.

    Returns:
        {"loaded": model keys loaded, "missing": model keys left at their init, "skipped_shape": model keys whose
        candidate had another shape, "unused": checkpoint keys that loaded nowhere}.
    """
    path = Path(checkpoint_path)
    if not path.is_file():
        raise FileNotFoundError(f"{source_name} checkpoint not found: {path}")
    state = read_state_dict(path)

    num_stages = len(network.layers)
    candidates: dict[str, tuple[str, torch.Tensor]] = {key: (key, value) for key, value in state.items()}
    for key, value in state.items():
        match = re.fullmatch(r"layers\.(\d+)\.(.+)", key)
        if match and int(match[1]) < num_stages:
            candidates.setdefault(f"layers_up.{num_stages - 1 - int(match[1])}.{match[2]}", (key, value))

    model_state = network.state_dict()
    stem_key = "patch_embed.proj.weight"
    if stem_key in candidates and stem_key in model_state:
        source, kernel = candidates[stem_key]
        if model_state[stem_key].shape[1] == 1 and kernel.ndim == 4 and kernel.shape[1] == 3:
            candidates[stem_key] = (source, kernel.sum(dim=1, keepdim=True))

    to_load: dict[str, torch.Tensor] = {}
    skipped_shape: list[str] = []
    used_sources: set[str] = set()
    for target, (source, value) in candidates.items():
        if target not in model_state:
            continue
        if value.shape != model_state[target].shape:
            skipped_shape.append(target)
            continue
        to_load[target] = value
        used_sources.add(source)
    network.load_state_dict(to_load, strict=False)

    report = {
        "loaded": [key for key in model_state if key in to_load],
        "missing": [key for key in model_state if key not in to_load],
        "skipped_shape": skipped_shape,
        "unused": [key for key in state if key not in used_sources],
    }
    parameters = dict(network.named_parameters())  # the state dict may also hold buffers (Swin's position indices)
    loaded_params = sum(parameters[key].numel() for key in report["loaded"] if key in parameters)
    total_params = sum(value.numel() for value in parameters.values())
    logger.info(
        "Loaded %s weights from %s: %d of %d tensors, %s of %s parameters (%.1f%%). %d model tensors keep "
        "their random init (%s); %d checkpoint tensors unused (%s); %d skipped for a shape mismatch (%s).",
        source_name,
        path,
        len(report["loaded"]),
        len(model_state),
        f"{loaded_params:,}",
        f"{total_params:,}",
        100.0 * loaded_params / max(total_params, 1),
        len(report["missing"]),
        _abbreviate(report["missing"]),
        len(report["unused"]),
        _abbreviate(report["unused"]),
        len(skipped_shape),
        _abbreviate(skipped_shape),
    )
    return report


def _abbreviate(keys: list[str], limit: int = 4) -> str:
    """First few keys for a log line."""
    if not keys:
        return "none"
    return ", ".join(keys[:limit]) + (f", ... (+{len(keys) - limit})" if len(keys) > limit else "")
