"""Export the trained Mamba-UNet to TorchScript (trace) and/or ONNX, verified against the eager network.

Both exports record the pure-PyTorch selective scan (``scan_backend="torch"``): mamba-ssm's CUDA kernel is a custom
autograd.Function that neither TorchScript nor ONNX can represent, so the exported graphs run on any device without
mamba-ssm. The scan's loops are unrolled for the traced sequence lengths, so an exported model accepts exactly the
exported input shape (B, 1, 224, 224 by default: the SliceInferer's roi_size), not other sizes.

    python -m scripts.export --formats onnx torchscript          # models/model.pt -> models/model.onnx, models/model.ts
    python -m scripts.export --ckpt_file other.pt --output_dir /tmp/out --batch_size 32

Each export is checked on a fresh random input: TorchScript reloaded with ``torch.jit.load``, ONNX run by ONNX
Runtime; the relative error max|exported - eager| / max|eager| is printed and must stay below ``--tolerance``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from monai.bundle import ConfigParser
from monai.data import save_net_with_metadata

BUNDLE_ROOT = Path(__file__).resolve().parents[1]
FORMATS = ("torchscript", "onnx")
SUFFIX = {"torchscript": ".ts", "onnx": ".onnx"}


class ExportError(RuntimeError):
    """An export that failed or whose outputs differ from the eager network's."""


def build_network(
    config_file: str | Path, ckpt_file: str | Path | None = None, net_overrides: dict | None = None
) -> torch.nn.Module:
    """``network_def`` of ``config_file`` on the torch scan, weights from a plain state dict, eval, no grad.

    fp16 state dicts (``scripts/package.py --half``) load into the fp32 network unchanged.
    """
    parser = ConfigParser()
    parser.read_config(str(config_file))
    parser.update(
        {"bundle_root": str(BUNDLE_ROOT), "network_def#scan_backend": "torch", "network_def#pretrained_path": "$None"}
    )
    for key, value in (net_overrides or {}).items():
        parser[f"network_def#{key}"] = value
    network = parser.get_parsed_content("network_def")
    if ckpt_file is not None:
        try:
            state = torch.load(ckpt_file, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError) as err:
            raise ExportError(f"{ckpt_file}: cannot read the checkpoint ({err})") from err
        state = state.get("model", state) if isinstance(state, dict) else state  # CheckpointSaver's {"model": ...}
        try:
            network.load_state_dict(state)
        except RuntimeError as err:
            raise ExportError(f"{ckpt_file}: not a state dict of this network_def ({err})") from err
    # requires_grad off: the scan then runs its plain forward (see selective_scan), which tracing can record
    return network.float().eval().requires_grad_(False)


def relative_error(reference: torch.Tensor, output: torch.Tensor) -> float:
    """max|output - reference| / max|reference| (both (B, C, H, W))."""
    return float((output.float() - reference.float()).abs().max() / reference.float().abs().max().clamp_min(1e-12))


def export_torchscript(
    network: torch.nn.Module, example: torch.Tensor, path: Path, metadata: dict | None, extra_files: dict | None
) -> Path:
    """torch.jit.trace at the example's shape; bundle metadata and configs stored as extra files, the way MONAI's
    ckpt_export does (read back with ``monai.data.load_net_with_metadata``)."""
    with torch.no_grad():
        traced = torch.jit.trace(network, example, check_trace=False)
    save_net_with_metadata(traced, str(path), meta_values=metadata, more_extra_files=extra_files)
    return path


def export_onnx(network: torch.nn.Module, example: torch.Tensor, path: Path) -> Path:
    """torch.export-based ONNX export (the TorchScript-based one has no symbolic for the scan's ``out=`` ops)."""
    with torch.no_grad():
        torch.onnx.export(
            network,
            (example,),
            str(path),
            dynamo=True,
            optimize=False,  # the optimiser adds minutes on the ~10k-node unrolled graph and changes no output here
            external_data=False,  # one self-contained file (the weights are far below protobuf's 2 GB limit)
            input_names=["image"],
            output_names=["pred"],
            verbose=False,
        )
    return path


def run_exported(fmt: str, path: Path, sample: torch.Tensor) -> torch.Tensor:
    """Run an exported model file the way a user would: torch.jit.load, or an ONNX Runtime CPU session."""
    if fmt == "torchscript":
        with torch.no_grad():
            return torch.jit.load(str(path), map_location="cpu")(sample)
    import onnxruntime  # imported here: only the ONNX path needs it

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: sample.numpy()})[0])


def export_and_verify(
    network: torch.nn.Module,
    input_shape: Sequence[int],
    output_dir: str | Path,
    formats: Sequence[str] = FORMATS,
    metadata: dict | None = None,
    extra_files: dict | None = None,
    tolerance: float = 1e-4,
    name: str = "model",
) -> dict[str, float]:
    """Export ``network`` for inputs of ``input_shape`` (B, C, H, W) to ``output_dir/<name>.{ts,onnx}``.

    ``metadata`` and ``extra_files`` ({name: text}) go into the TorchScript file. Returns {format: relative error
    against eager on a fresh random input}; raises ExportError above ``tolerance``.
    """
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ExportError(f"unknown export format(s) {unknown}; choose from {FORMATS}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    example = torch.rand(*input_shape, generator=generator)
    sample = torch.rand(*input_shape, generator=generator)  # not the traced input: the graph must not be constant
    with torch.no_grad():
        reference = network(sample)
    errors = {}
    for fmt in formats:
        path = output_dir / f"{name}{SUFFIX[fmt]}"
        if fmt == "torchscript":
            export_torchscript(network, example, path, metadata, extra_files)
        else:
            export_onnx(network, example, path)
        errors[fmt] = relative_error(reference, run_exported(fmt, path, sample))
        if not errors[fmt] <= tolerance:
            raise ExportError(f"{path}: output differs from the eager network (relative error {errors[fmt]:.2e})")
    return errors


def main(argv: Sequence[str] | None = None) -> int:
    configs = BUNDLE_ROOT / "configs"
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt_file", default=str(BUNDLE_ROOT / "models" / "model.pt"), help="plain state dict")
    parser.add_argument("--output_dir", default=str(BUNDLE_ROOT / "models"))
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    parser.add_argument("--config_file", default=str(configs / "inference.json"))
    parser.add_argument("--meta_file", default=str(configs / "metadata.json"))
    parser.add_argument("--batch_size", type=int, default=1, help="the exported models take exactly this batch size")
    parser.add_argument("--spatial_shape", type=int, nargs=2, help="H W (default: metadata's input spatial_shape)")
    parser.add_argument(
        "--net_overrides", type=json.loads, default={}, help='JSON for network_def, e.g. {"depths": [2, 2]}'
    )
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args(argv)

    meta = json.loads(Path(args.meta_file).read_text())
    image_format = meta["network_data_format"]["inputs"]["image"]
    spatial_shape = args.spatial_shape or image_format["spatial_shape"]
    input_shape = (args.batch_size, image_format["num_channels"], *spatial_shape)
    try:
        network = build_network(args.config_file, args.ckpt_file, args.net_overrides)
        extra_files = {"inference.json": Path(args.config_file).read_text()}
        errors = export_and_verify(
            network, input_shape, args.output_dir, args.formats, meta, extra_files, args.tolerance
        )
    except ExportError as err:
        print(f"export failed: {err}", file=sys.stderr)
        return 1
    for fmt, error in errors.items():
        print(
            f"{fmt}: {Path(args.output_dir) / ('model' + SUFFIX[fmt])} input {tuple(input_shape)}, relative error {error:.2e}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
