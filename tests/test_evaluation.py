"""Tests of scripts/evaluation.py: hand-computed metrics on tiny volumes, the empty-mask policy and the report handler."""

from __future__ import annotations

import csv
import json
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor
from monai.networks.utils import one_hot

from scripts.evaluation import (
    CLASS_NAMES,
    EMPTY_MASK_POLICY,
    METRICS,
    SegmentationReport,
    case_metrics,
    format_table,
    slice_dice,
)

# MONAI 1.6 warns about its own deprecated internal argument inside get_mask_edges; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*always_return_as_numpy.*")

RV, MYO, LV = 1, 2, 3


def assert_metrics(actual: dict, expected: dict) -> None:
    for metric, value in expected.items():
        assert actual[metric] == pytest.approx(value, rel=1e-5, abs=1e-6), metric


# ---- case_metrics ----------------------------------------------------------------------------------------------------


def test_confusion_metrics_by_hand() -> None:
    gt = np.zeros((4, 4, 2), dtype=np.int64)  # N = 32 voxels
    pred = np.zeros_like(gt)
    # RV: gt 4 voxels, pred 5 voxels, 3 shared -> TP 3, FP 2, FN 1, TN 26
    for voxel in [(0, 0, 0), (0, 1, 0), (1, 0, 0), (1, 1, 0)]:
        gt[voxel] = RV
    for voxel in [(0, 0, 0), (0, 1, 0), (1, 0, 0), (2, 0, 0), (2, 1, 0)]:
        pred[voxel] = RV
    # MYO: identical 3 voxels -> perfect
    for voxel in [(0, 0, 1), (0, 1, 1), (0, 2, 1)]:
        gt[voxel] = pred[voxel] = MYO
    # LV: gt 2 voxels, pred 3 voxels, 1 shared -> TP 1, FP 2, FN 1, TN 28
    gt[3, 3, 0] = gt[3, 3, 1] = LV
    pred[3, 3, 1] = pred[3, 2, 1] = pred[3, 1, 1] = LV

    result = case_metrics(torch.from_numpy(pred), gt)  # torch and numpy inputs mix

    assert list(result) == ["RV", "MYO", "LV"]
    assert_metrics(
        result["RV"],
        {
            "Dice": 6 / 9,
            "IoU": 3 / 6,
            "Accuracy": 29 / 32,
            "Precision": 3 / 5,
            "Sensitivity": 3 / 4,
            "Specificity": 26 / 28,
        },
    )
    assert_metrics(
        result["MYO"],
        {"Dice": 1, "IoU": 1, "Accuracy": 1, "Precision": 1, "Sensitivity": 1, "Specificity": 1, "HD95": 0, "ASD": 0},
    )
    assert_metrics(
        result["LV"],
        {
            "Dice": 2 / 5,
            "IoU": 1 / 4,
            "Accuracy": 29 / 32,
            "Precision": 1 / 3,
            "Sensitivity": 1 / 2,
            "Specificity": 28 / 30,
        },
    )
    assert all(set(result[c]) == set(METRICS) | {"gt_empty", "pred_empty"} for c in result)
    assert not any(result[c]["gt_empty"] or result[c]["pred_empty"] for c in result)


def shifted_cubes() -> tuple[np.ndarray, np.ndarray]:
    """LV cube 4x4x4 at x 2..5 (gt) and x 4..7 (pred), i.e. shifted by 2 voxels along x, away from the borders.

    Edge voxels of each cube: 64 - 8 inner = 56. Distances from gt edges to the nearest pred edge (pixels):
    x=2 face 16 voxels -> 2; x=3 ring 12 -> 1; x=4 ring 12 -> 0; x=5 face: ring 12 -> 0, inner 4 -> 1 (to the side).
    Sum 48 over 56, the same in the other direction by symmetry: ASD = 48 / 56; 95th percentile = 2 = HD95.
    """
    gt = np.zeros((12, 10, 10), dtype=np.int64)
    pred = np.zeros_like(gt)
    gt[2:6, 3:7, 3:7] = LV
    pred[4:8, 3:7, 3:7] = LV
    return pred, gt


def test_distances_of_shifted_cube_in_pixels_and_mm() -> None:
    pred, gt = shifted_cubes()
    pixels = case_metrics(pred, gt)["LV"]
    assert_metrics(pixels, {"Dice": 0.5, "IoU": 1 / 3, "HD95": 2.0, "ASD": 48 / 56})

    isotropic = case_metrics(pred, gt, spacing=(0.5, 0.5, 0.5))["LV"]
    assert_metrics(isotropic, {"HD95": 1.0, "ASD": 24 / 56, "Dice": 0.5})

    # x spacing 2 mm: the x distances double (x=2: 4 mm, x=3: 2 mm) but the 4 inner x=5 voxels stay 1 mm from
    # the side ring: (16*4 + 12*2 + 4*1) / 56 = 92 / 56; HD95 = 4 mm.
    anisotropic = case_metrics(pred, gt, spacing=(2.0, 1.0, 1.0))["LV"]
    assert_metrics(anisotropic, {"HD95": 4.0, "ASD": 92 / 56})


def test_empty_mask_policy() -> None:
    gt = np.zeros((12, 10, 10), dtype=np.int64)  # N = 1200
    pred = np.zeros_like(gt)
    gt[2:6, 3:7, 3:7] = LV  # 64 voxels, LV not predicted
    pred[8:10, 1:3, 1:3] = RV  # 8 voxels, RV absent from gt; MYO absent from both
    diagonal = math.sqrt(12**2 + 10**2 + 10**2)

    result = case_metrics(pred, gt)
    assert result["LV"]["pred_empty"] and not result["LV"]["gt_empty"]
    assert_metrics(
        result["LV"],
        {
            "Dice": 0,
            "IoU": 0,
            "Precision": 0,
            "Sensitivity": 0,
            "Specificity": 1,
            "Accuracy": (1200 - 64) / 1200,
            "HD95": diagonal,
            "ASD": diagonal,
        },
    )
    assert result["RV"]["gt_empty"] and not result["RV"]["pred_empty"]
    assert_metrics(
        result["RV"],
        {
            "Dice": 0,
            "IoU": 0,
            "Precision": 0,
            "Sensitivity": 0,
            "Specificity": (1200 - 8) / 1200,
            "Accuracy": (1200 - 8) / 1200,
            "HD95": diagonal,
            "ASD": diagonal,
        },
    )
    assert result["MYO"]["gt_empty"] and result["MYO"]["pred_empty"]
    assert_metrics(
        result["MYO"],
        {"Dice": 1, "IoU": 1, "Precision": 1, "Sensitivity": 1, "Specificity": 1, "Accuracy": 1, "HD95": 0, "ASD": 0},
    )
    # The worst case is in the same units as the distances.
    in_mm = case_metrics(pred, gt, spacing=(2.0, 1.0, 1.0))
    assert in_mm["LV"]["HD95"] == pytest.approx(math.sqrt(24**2 + 10**2 + 10**2))
    assert in_mm["RV"]["ASD"] == pytest.approx(math.sqrt(24**2 + 10**2 + 10**2))
    assert "rewards missing a class" in EMPTY_MASK_POLICY


def test_specificity_when_class_fills_the_volume() -> None:
    full = np.full((2, 2, 2), RV)
    result = case_metrics(full, full)["RV"]
    assert result["Specificity"] == 1.0 and result["Dice"] == 1.0 and result["HD95"] == 0.0


@pytest.mark.parametrize(
    "pred, label, spacing, message",
    [
        (np.zeros((4, 4, 2)), np.zeros((4, 4, 3)), None, "shapes differ"),
        (np.full((4, 4, 2), 4), np.zeros((4, 4, 2)), None, "labels must be in 0..3"),
        (np.full((4, 4, 2), 0.5), np.zeros((4, 4, 2)), None, "non-integer"),
        (np.zeros((4, 4, 2)), np.zeros((4, 4, 2)), (1.0, 1.0), "spacing must be 3 positive"),
        (np.zeros((4, 4, 2)), np.zeros((4, 4, 2)), (1.0, 0.0, 1.0), "spacing must be 3 positive"),
    ],
)
def test_bad_input_is_rejected(pred, label, spacing, message) -> None:
    with pytest.raises(ValueError, match=message):
        case_metrics(pred, label, spacing)


# ---- slice_dice --------------------------------------------------------------------------------------------------


def test_slice_dice() -> None:
    gt = np.zeros((4, 4, 3), dtype=np.int64)
    pred = np.zeros_like(gt)
    gt[0, 0:2, 0] = RV  # slice 0: 2 gt voxels, 2 pred voxels, 1 shared -> 0.5
    pred[0, 1:3, 0] = RV
    gt[3, 3, 2] = RV  # slice 2: RV missed -> 0.0; slice 1 has no RV anywhere -> left out
    gt[2, 0:2, 1] = pred[2, 0:2, 1] = LV  # slice 1: LV perfect; MYO nowhere -> no entries
    assert slice_dice(pred, gt) == [("RV", 0, 0.5), ("RV", 2, 0.0), ("LV", 1, 1.0)]
    with pytest.raises(ValueError, match="3D"):
        slice_dice(gt[..., 0], gt[..., 0])


# ---- SegmentationReport ------------------------------------------------------------------------------------------

SPACING = (1.5, 1.5, 10.0)


def make_case(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, gt, pred) of shape (16, 16, 4): nested LV/MYO blocks and an RV block; pred is gt perturbed."""
    rng = np.random.default_rng(seed)
    gt = np.zeros((16, 16, 4), dtype=np.int64)
    gt[3:11, 3:11, :3] = MYO
    gt[5:9, 5:9, :3] = LV
    gt[3:11, 11:14, 1:4] = RV
    pred = gt.copy()
    flip = rng.random(gt.shape) < 0.05 * (seed + 1)  # more noise for later cases -> distinct Dice ranking
    pred[flip] = rng.integers(0, 4, size=int(flip.sum()))
    image = (gt * 50 + rng.normal(0, 5, gt.shape)).astype(np.float32)
    return image, gt, pred


def make_item(seed: int, pred_as_one_hot: bool = False, meta: dict | None = None, case: str | None = None) -> dict:
    image, gt, pred = make_case(seed)
    meta = meta or {
        "filename_or_obj": f"/data/ACDC/patient{seed:03d}_frame01.nii.gz",
        "pixdim": np.array([1.0, *SPACING, 1.0, 1.0, 1.0, 1.0]),
        "spacing_known": torch.tensor(True),
    }
    pred_tensor = torch.from_numpy(pred)[None]
    if pred_as_one_hot:  # probabilities (4, X, Y, Z) -> the handler takes the argmax
        pred_tensor = torch.softmax(one_hot(pred_tensor[None], 4, dim=1)[0] * 5.0, dim=0)
    item = {
        "image": MetaTensor(torch.from_numpy(image)[None], meta=dict(meta)),
        "label": MetaTensor(torch.from_numpy(gt)[None], meta=dict(meta)),
        "pred": MetaTensor(pred_tensor, meta=dict(meta)),
    }
    if case is not None:
        item["case"] = case
    return item


def run_report(batches: list[list[dict]], **kwargs) -> tuple[SegmentationReport, Engine]:
    engine = Engine(lambda engine, batch: batch)  # the "evaluator" yields decollated outputs unchanged
    report = SegmentationReport(**kwargs)
    report.attach(engine)
    engine.run(batches, max_epochs=1)
    return report, engine


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_report_files_numbers_and_folders(tmp_path: Path) -> None:
    seeds = [1, 2, 3, 4]
    batches = [[make_item(1), make_item(2, pred_as_one_hot=True)], [make_item(3), make_item(4)]]
    report, engine = run_report(batches, output_dir=tmp_path)

    folder = report.report_dir
    assert folder is not None and folder.parent == tmp_path
    assert re.fullmatch(r"evaluation_\d{8}-\d{6}", folder.name)
    names = [f"patient{s:03d}_frame01" for s in seeds]
    expected_files = {"metrics_per_case.csv", "summary.json", "summary.md", "slice_dice_histogram.png"}
    files = {path.name for path in folder.iterdir()}
    overlays = {name for name in files if name.startswith("overlay_")}
    assert expected_files <= files and len(overlays) == 3 and files == expected_files | overlays
    assert overlays <= {f"overlay_{name}.png" for name in names}
    assert all((folder / name).stat().st_size > 0 for name in files)
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no staging leftovers

    # Numbers: every summary value is the average of case_metrics over the cases (spacing from pixdim, mm).
    direct = []
    for seed in seeds:
        _, gt, pred = make_case(seed)
        direct.append(case_metrics(pred, gt, spacing=SPACING))
    summary = json.loads((folder / "summary.json").read_text())
    assert summary == json.loads(json.dumps(report.summary))
    assert summary["num_cases"] == 4 and summary["cases"] == names and summary["units"] == "mm"
    assert summary["units_warning"] is None and summary["empty_mask_policy"] == EMPTY_MASK_POLICY
    for class_name in CLASS_NAMES.values():
        for metric in METRICS:
            values = [case[class_name][metric] for case in direct]
            stats = summary["per_class"][class_name][metric]
            assert stats["mean"] == pytest.approx(np.mean(values)) and stats["std"] == pytest.approx(np.std(values))
    for metric in METRICS:
        per_case_mean = [np.mean([case[c][metric] for c in CLASS_NAMES.values()]) for case in direct]
        assert summary["mean"][metric]["mean"] == pytest.approx(np.mean(per_case_mean))
        assert summary["mean"][metric]["std"] == pytest.approx(np.std(per_case_mean))
    assert engine.state.metrics["report_mean_dice"] == pytest.approx(summary["mean"]["Dice"]["mean"])
    assert summary["empty_mask_events"]["total"] == {"gt_empty": 0, "pred_empty": 0, "both_empty": 0}

    with open(folder / "metrics_per_case.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 * 3
    assert list(rows[0]) == ["case", "class", *METRICS, "gt_empty", "pred_empty"]
    assert float(rows[0]["Dice"]) == pytest.approx(direct[0]["RV"]["Dice"])
    assert [(r["case"], r["class"]) for r in rows[:3]] == [(names[0], c) for c in ("RV", "MYO", "LV")]

    markdown = (folder / "summary.md").read_text()
    header = "| Class | Dice | IoU | Acc | Pre | Sen | Spe | HD95 (mm) | ASD (mm) |"
    assert header in markdown and markdown.count(header) == 2  # mean table and std table
    table = markdown[markdown.index(header) :].splitlines()
    assert [line.split("|")[1].strip() for line in table[2:6]] == ["RV", "MYO", "LV", "Mean"]
    assert f"{summary['per_class']['MYO']['Dice']['mean']:.4f}" in table[3]
    assert format_table(summary) == "\n".join(table[:6])

    # A second run writes a new folder and leaves the first untouched.
    first = folder_bytes(folder)
    second, _ = run_report(batches, output_dir=tmp_path)
    assert second.report_dir != folder and second.report_dir.name.startswith("evaluation_")
    assert folder_bytes(folder) == first

    # overwrite=True writes output_dir/<name>, replacing whatever was there.
    stale = tmp_path / "final"
    stale.mkdir()
    (stale / "stale.txt").write_text("old")
    third, _ = run_report(batches[:1], output_dir=tmp_path, overwrite=True, name="final", num_overlays=1)
    assert third.report_dir == stale and not (stale / "stale.txt").exists()
    assert json.loads((stale / "summary.json").read_text())["num_cases"] == 2
    assert len(list(stale.glob("overlay_*.png"))) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([folder.name, second.report_dir.name, "final"])


def test_report_units_names_duplicates_and_empty_events(tmp_path: Path) -> None:
    h5_meta = {"filename_or_obj": "/data/ACDC/data/patient005_frame02.h5", "spacing_known": False}
    named = make_item(6, case="my_case")  # "case" wins over the file name
    _, gt, _ = make_case(7)
    no_myo = make_item(7, meta=h5_meta)
    no_myo["pred"] = MetaTensor(torch.from_numpy(np.where(gt == MYO, 0, gt))[None], meta=dict(h5_meta))
    report, _ = run_report([[no_myo, named], [make_item(6, case="my_case")]], output_dir=tmp_path, num_overlays=0)

    summary = report.summary
    assert summary["cases"] == ["patient005_frame02", "my_case"] and summary["num_cases"] == 2  # duplicate once
    assert summary["units"] == "mixed" and "mm" in summary["units_warning"]
    assert "WARNING" in (report.report_dir / "summary.md").read_text()
    assert "HD95 (MIXED units)" in format_table(summary)
    assert summary["empty_mask_events"]["MYO"] == {"gt_empty": 0, "pred_empty": 1, "both_empty": 0}
    assert not list(report.report_dir.glob("overlay_*"))
    # The h5 case is in pixels: its LV HD95 is the pixel-unit value.
    rows = list(csv.DictReader(open(report.report_dir / "metrics_per_case.csv", newline="")))
    h5_myo = next(r for r in rows if r["case"] == "patient005_frame02" and r["class"] == "MYO")
    assert float(h5_myo["HD95"]) == pytest.approx(math.sqrt(16**2 + 16**2 + 4**2))  # pixel diagonal
    assert h5_myo["pred_empty"] == "1" and h5_myo["gt_empty"] == "0"


def test_report_rejects_bad_prediction(tmp_path: Path) -> None:
    item = make_item(1)
    item["pred"] = MetaTensor(torch.zeros(2, 16, 16, 4), meta=dict(item["label"].meta))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="patient001_frame01.*2 channels"):
            run_report([[item]], output_dir=tmp_path)
