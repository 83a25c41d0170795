"""scripts/export.py (TorchScript / ONNX match eager) and scripts/package.py (the zoo zip, fetched with
`python -m monai.bundle download` into a fresh folder and run from there)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import pytest
import torch
from conftest import BUNDLE_ROOT
from monai.data import load_net_with_metadata

from scripts.export import export_and_verify
from scripts.export import main as export_main
from scripts.networks.mamba_unet import MambaUNet
from scripts.package import BUNDLE_NAME, package_bundle
from scripts.selective_scan import selective_scan

META = json.loads((BUNDLE_ROOT / "configs" / "metadata.json").read_text())
TINY_NET = {"embed_dim": 16, "depths": [1, 1]}  # two stages: inputs divisible by 8, export in seconds


def tiny_network() -> MambaUNet:
    torch.manual_seed(0)
    return MambaUNet(in_channels=1, out_channels=4, scan_backend="torch", **TINY_NET).eval().requires_grad_(False)


def test_scan_without_autograd_is_the_autograd_forward_bit_for_bit():
    """The export path (no grad: plain forward math) and training (autograd.Function) compute identical outputs."""
    g = torch.Generator().manual_seed(0)
    shapes = {"u": (2, 8, 40), "delta": (2, 8, 40), "B": (2, 2, 4, 40), "C": (2, 2, 4, 40), "D": (8,)}
    inputs = {name: torch.randn(*shape, generator=g) for name, shape in shapes.items()}
    inputs["A"], inputs["delta_bias"] = -torch.rand(8, 4, generator=g) - 0.1, torch.randn(8, generator=g)
    with torch.no_grad():
        plain = selective_scan(**inputs, backend="torch")
    inputs["u"].requires_grad_()
    tracked = selective_scan(**inputs, backend="torch")
    assert tracked.grad_fn is not None and torch.equal(plain, tracked.detach())


def test_torchscript_and_onnx_match_eager(tmp_path):
    pytest.importorskip("onnxruntime", reason="ONNX Runtime verifies the ONNX export (requirements-dev.txt)")
    errors = export_and_verify(
        tiny_network(), (2, 1, 32, 32), tmp_path, metadata={"version": META["version"]}, name="tiny"
    )
    assert set(errors) == {"torchscript", "onnx"} and max(errors.values()) < 1e-4, errors
    _, meta, _ = load_net_with_metadata(str(tmp_path / "tiny.ts"))
    assert meta["version"] == META["version"]  # the bundle metadata travels inside the TorchScript file
    import onnx

    graph = onnx.load(str(tmp_path / "tiny.onnx")).graph
    assert [i.name for i in graph.input] == ["image"] and [o.name for o in graph.output] == ["pred"]


def test_export_cli_loads_fp16_checkpoint(tmp_path, capsys):
    """The CLI path: network_def from inference.json (+ overrides), a half-precision state dict, TorchScript."""
    ckpt = tmp_path / "model.pt"
    torch.save({k: v.half() for k, v in tiny_network().state_dict().items()}, ckpt)
    args = ["--ckpt_file", str(ckpt), "--output_dir", str(tmp_path), "--formats", "torchscript"]
    args += ["--spatial_shape", "16", "16", "--net_overrides", json.dumps(TINY_NET)]
    assert export_main(args) == 0
    assert "relative error" in capsys.readouterr().out
    traced = torch.jit.load(str(tmp_path / "model.ts"))
    assert traced(torch.rand(1, 1, 16, 16)).shape == (1, 4, 16, 16)
    assert export_main(["--ckpt_file", str(tmp_path / "missing.pt"), "--formats", "torchscript"]) == 1


@pytest.fixture(scope="module")
def packaged(tmp_path_factory) -> Path:
    """The zoo zip with random full-size weights stored as float16."""
    work = tmp_path_factory.mktemp("package")
    torch.manual_seed(0)
    torch.save(MambaUNet(in_channels=1, out_channels=4).state_dict(), work / "model.pt")
    return package_bundle(work / "dist", ckpt_file=work / "model.pt", half=True)


def test_package_layout_and_reproducibility(packaged, tmp_path):
    assert packaged.name == f"{BUNDLE_NAME}_v{META['version']}.zip"
    with zipfile.ZipFile(packaged) as archive:
        names = archive.namelist()
        weights = torch.load(archive.open(f"{BUNDLE_NAME}/models/model.pt"), weights_only=True)
        dates = {info.date_time for info in archive.infolist()}
    assert all(n.startswith(f"{BUNDLE_NAME}/") for n in names)
    for required in ("configs/metadata.json", "configs/inference.json", "LICENSE", "large_files.yml", "docs/README.md"):
        assert f"{BUNDLE_NAME}/{required}" in names, f"{required} missing from the zip"
    assert f"{BUNDLE_NAME}/scripts/networks/mamba_unet.py" in names
    assert not [n for n in names if "/tests/" in n or "__pycache__" in n or ".venv" in n], names
    assert dates == {(2022, 5, 30, 0, 0, 0)}
    assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.float16}
    again = package_bundle(tmp_path, ckpt_file=None, half=False)  # no weights: code and configs only
    with zipfile.ZipFile(again) as archive:
        assert f"{BUNDLE_NAME}/models/model.pt" not in archive.namelist()
    assert package_bundle(tmp_path / "twice", ckpt_file=None).read_bytes() == again.read_bytes()


def run_bundle(bundle: Path, *args: str) -> None:
    """`python -m monai.bundle` inside the downloaded bundle, with only that bundle's scripts/ importable."""
    env = dict(os.environ, PYTHONPATH=str(bundle), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="2")
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args], cwd=bundle, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"{args}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"


def test_download_then_evaluate_and_infer_from_the_fresh_folder(packaged, tmp_path):
    fresh = tmp_path / "bundles"
    download = [sys.executable, "-m", "monai.bundle", "download", "--name", BUNDLE_NAME]
    download += ["--url", packaged.as_uri(), "--bundle_dir", str(fresh)]
    result = subprocess.run(download, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    bundle = fresh / BUNDLE_NAME
    assert (bundle / "models" / "model.pt").is_file() and (bundle / "scripts" / "export.py").is_file()

    data = ["--data_source", "phantom", "--dataset_dir", str(tmp_path / "phantom"), "--patch_size", "[32,32]"]
    run_bundle(
        bundle, "run", "evaluating", "--config_file", "['configs/train.json','configs/evaluate.json']",
        *data, "--output_dir", str(tmp_path / "eval"), "--num_workers", "0",
    )  # fmt: skip
    summary = json.loads(next((tmp_path / "eval").glob("evaluation_val_*/summary.json")).read_text())
    assert summary, "evaluation wrote an empty summary"

    run_bundle(
        bundle, "run", "evaluating", "--config_file", "configs/inference.json",
        "--dataset_dir", str(tmp_path / "phantom"), "--output_dir", str(tmp_path / "infer"), "--patch_size", "[32,32]",
    )  # fmt: skip
    predictions = sorted((tmp_path / "infer").glob("inference_*/*_seg.nii.gz"))
    assert predictions, "inference from the downloaded bundle wrote nothing"
    assert nib.load(predictions[0]).get_data_dtype() == "uint8"
