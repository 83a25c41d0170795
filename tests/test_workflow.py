"""End to end through `python -m monai.bundle`: run training on the phantom, resume, run evaluating, inference."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import BUNDLE_ROOT, bundle_cli, config_list

from scripts.networks.mamba_unet import MambaUNet

META = ["--meta_file", str(BUNDLE_ROOT / "configs" / "metadata.json")]
LOGGING = ["--logging_file", str(BUNDLE_ROOT / "configs" / "logging.conf")]


def tiny_run_overrides(work: Path, max_iterations: int = 4) -> list[str]:
    """Shrinks the demo to seconds: 32x32 inputs, batch 2, 4 iterations with validation every 2."""
    return [
        "--bundle_root", str(BUNDLE_ROOT),
        "--dataset_dir", str(work / "phantom"),
        "--ckpt_dir", str(work / "models"),
        "--output_dir", str(work / "eval"),
        "--log_dir", str(work / "logs"),
        "--max_iterations", str(max_iterations),
        "--val_interval", "2",
        "--batch_size", "2",
        "--patch_size", "[32,32]",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, str]:
    work = tmp_path_factory.mktemp("run")
    result = bundle_cli(
        "run", "training", "--config_file", config_list("train.json", "demo.json"), *META, *LOGGING,
        *tiny_run_overrides(work),
    )  # fmt: skip
    return work, result.stdout + result.stderr


def test_training_saves_best_and_latest(trained):
    work, log = trained
    assert "val_mean_dice" in log
    best = torch.load(work / "models" / "model.pt", map_location="cpu", weights_only=True)
    MambaUNet(in_channels=1, out_channels=4).load_state_dict(best)  # a plain state dict of the network
    latest = torch.load(work / "models" / "latest.pt", map_location="cpu", weights_only=True)
    assert latest["iteration"] == 4 and latest["epoch"] == 2
    assert 0.0 <= latest["best_metric"] <= 1.0 and latest["best_iteration"] in (2, 4)
    assert any((work / "logs").glob("events.out.tfevents.*")), "no TensorBoard log written"


def test_evaluating_writes_every_report_file_and_never_overwrites(trained):
    work, _ = trained
    args = ["run", "evaluating", "--config_file", config_list("train.json", "evaluate.json", "demo.json"), *META]
    bundle_cli(*args, *LOGGING, *tiny_run_overrides(work))
    bundle_cli(*args, *LOGGING, *tiny_run_overrides(work))
    reports = sorted((work / "eval").glob("evaluation_val_*"))
    assert len(reports) == 2, f"expected two separate report folders, got {reports}"
    for report in reports:
        for name in ("metrics_per_case.csv", "summary.json", "summary.md", "slice_dice_histogram.png"):
            assert (report / name).stat().st_size > 0, f"{name} missing in {report}"
        assert list(report.glob("overlay_*.png")), f"no overlays in {report}"
        summary = json.loads((report / "summary.json").read_text())
        assert summary["units"] == "mm"  # the phantom is NIfTI with spacing
    header = next(line for line in (reports[0] / "summary.md").read_text().splitlines() if line.startswith("|"))
    columns = [c.strip().split(" ")[0] for c in header.strip("|").split("|")][1:]
    assert columns == ["Dice", "IoU", "Acc", "Pre", "Sen", "Spe", "HD95", "ASD"], header


def test_inference_writes_labels_with_input_geometry(trained):
    work, _ = trained
    bundle_cli(
        "run", "evaluating", "--config_file", str(BUNDLE_ROOT / "configs" / "inference.json"), *META, *LOGGING,
        "--bundle_root", str(BUNDLE_ROOT), "--ckpt_dir", str(work / "models"), "--output_dir", str(work / "eval"),
        "--dataset_dir", str(work / "phantom"), "--patch_size", "[32,32]",
    )  # fmt: skip
    outputs = sorted((work / "eval").glob("inference_*/*_seg.nii.gz"))
    assert outputs, "inference wrote no segmentation"
    for out in outputs:
        source = next((work / "phantom").rglob(out.name.replace("_seg.nii.gz", ".nii.gz")))
        pred, image = nib.load(out), nib.load(source)
        assert pred.shape == image.shape
        np.testing.assert_allclose(pred.affine, image.affine, atol=1e-5)
        values = np.unique(np.asarray(pred.dataobj))
        assert set(values.tolist()) <= {0, 1, 2, 3} and pred.get_data_dtype() == np.uint8


def test_rerun_resumes_from_latest_checkpoint(trained):
    work, _ = trained
    result = bundle_cli(
        "run", "training", "--config_file", config_list("train.json", "demo.json"), *META, *LOGGING,
        *tiny_run_overrides(work, max_iterations=6),
    )  # fmt: skip
    assert "Resumed from" in result.stdout + result.stderr
    latest = torch.load(work / "models" / "latest.pt", map_location="cpu", weights_only=True)
    assert latest["iteration"] == 6
