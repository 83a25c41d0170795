"""Segmentation metrics and the evaluation report of the bundle (ACDC labels: 0 background, 1 RV, 2 MYO, 3 LV).

This module is the one home for metrics and reporting. Everything else (configs, docs, the report) cites it.

Protocol. Per case and per class c in {1, 2, 3}: binary ``pred == c`` against ``label == c`` on the whole volume
(all slices at once, as in the paper's ``val_2D.calculate_metric_percase``). The metrics, in Table-1 order:

- Dice = 2TP / (2TP + FP + FN) (MONAI ``DiceMetric``), IoU = TP / (TP + FP + FN) (MONAI ``MeanIoU``);
- Accuracy = (TP + TN) / N, Precision = TP / (TP + FP), Sensitivity = TP / (TP + FN), Specificity = TN / (TN + FP)
  (MONAI ``ConfusionMatrixMetric``);
- HD95: MONAI ``HausdorffDistanceMetric(percentile=95)`` = the larger of the two directed 95th percentiles of the
  distances between the edge voxels of the two masks. The paper's code used medpy ``hd95``, the 95th percentile of
  the POOLED distances of both directions, so values differ slightly (MONAI's is never smaller);
- ASD: MONAI ``SurfaceDistanceMetric(symmetric=True)`` = the mean of the pooled edge distances of both directions
  (ASSD, the paper's eq. 9).

Units: HD95 and ASD are in mm when the voxel spacing is known, else in pixels (unit spacing in index space, slices one
unit apart), which is what the paper's code did (medpy without ``voxelspacing``).

Empty-mask policy (MONAI returns nan/inf for these; we replace them, always the same way):

- gt and pred both empty for a class: Dice = IoU = Precision = Sensitivity = 1 and HD95 = ASD = 0 (perfect agreement
  on absence);
- exactly one of them empty: Dice = IoU = 0; the undefined one of Precision (pred empty) / Sensitivity (gt empty) = 0
  (the other one is 0 by its formula); HD95 = ASD = the diagonal of the volume in the same units,
  sqrt(sum((n_i * s_i)^2)), i.e. a worst case no real prediction can exceed. The paper's code returned HD95 = 0 when a
  class was not predicted, which rewards missing a class; we do not;
- Accuracy is always defined; Specificity is undefined only when the class fills the whole volume (no negatives),
  then it is 1.

Summary statistics: mean and population standard deviation (ddof=0) over cases; the "Mean" row is, per case, the mean
over RV, MYO and LV, then mean and std over cases (its mean equals the mean of the three class means).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from monai.data import MetaTensor, decollate_batch
from monai.metrics import ConfusionMatrixMetric, DiceMetric, HausdorffDistanceMetric, MeanIoU, SurfaceDistanceMetric
from monai.networks.utils import one_hot
from monai.utils import CommonKeys, convert_to_tensor

__all__ = [
    "CLASS_NAMES",
    "METRICS",
    "EMPTY_MASK_POLICY",
    "case_metrics",
    "slice_dice",
    "format_table",
    "atomic_write_bytes",
    "TABLE_HEADERS",
    "SegmentationReport",
]

CLASS_NAMES: dict[int, str] = {1: "RV", 2: "MYO", 3: "LV"}
METRICS: tuple[str, ...] = ("Dice", "IoU", "Accuracy", "Precision", "Sensitivity", "Specificity", "HD95", "ASD")
FLAGS: tuple[str, ...] = ("gt_empty", "pred_empty")
NUM_LABELS = len(CLASS_NAMES) + 1  # background included
TABLE_HEADERS: dict[str, str] = {
    "Dice": "Dice",
    "IoU": "IoU",
    "Accuracy": "Acc",
    "Precision": "Pre",
    "Sensitivity": "Sen",
    "Specificity": "Spe",
    "HD95": "HD95",
    "ASD": "ASD",
}
CLASS_COLOURS: dict[str, str] = {"RV": "#e41a1c", "MYO": "#4daf4a", "LV": "#377eb8"}
EMPTY_MASK_POLICY = (
    "gt and pred both empty for a class: Dice = IoU = Precision = Sensitivity = 1, HD95 = ASD = 0. "
    "Exactly one empty: Dice = IoU = 0, the undefined Precision (pred empty) or Sensitivity (gt empty) = 0, "
    "HD95 = ASD = the volume diagonal sqrt(sum((n_i * s_i)^2)) in the report's units (worst case; the paper's code "
    "returned HD95 = 0 when a class was not predicted, which rewards missing a class). Accuracy is always defined; "
    "Specificity = 1 if a class fills the whole volume. HD95 is MONAI's (max of the two directed 95th percentiles), "
    "not medpy's pooled hd95 used by the paper's code."
)
_CASE_SUFFIXES = (".nii.gz", ".nii", ".h5")

logger = logging.getLogger(__name__)

LabelArray = np.ndarray | torch.Tensor


def _as_label_map(volume: Any, what: str) -> torch.Tensor:
    """Integer label map (same shape) from a numpy array / tensor; rejects non-integer values and labels > 3."""
    tensor = convert_to_tensor(volume, track_meta=False)
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{what}: expected a numpy array or torch tensor, got {type(volume).__name__}")
    if tensor.is_floating_point() and not torch.equal(tensor, tensor.round()):
        raise ValueError(f"{what}: expected an integer label map, got non-integer values")
    tensor = tensor.long()
    if tensor.numel() and (tensor.min() < 0 or tensor.max() >= NUM_LABELS):
        found = torch.unique(tensor).tolist()
        raise ValueError(f"{what}: labels must be in 0..{NUM_LABELS - 1}, found {found[:10]}")
    return tensor


def _foreground_one_hot(label_map: torch.Tensor) -> torch.Tensor:
    """(B, *spatial) integer labels -> (B, 3, *spatial) float one-hot of the classes 1..3 (background dropped)."""
    return one_hot(label_map.unsqueeze(1), num_classes=NUM_LABELS, dim=1)[:, 1:]


def _check_spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...] | None:
    if spacing is None:
        return None
    values = tuple(float(s) for s in np.asarray(spacing, dtype=float).ravel())
    if len(values) != ndim or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing must be {ndim} positive numbers (one per spatial axis), got {spacing!r}")
    return values


def _volume_diagonal(shape: Sequence[int], spacing: Sequence[float] | None) -> float:
    """Length of the volume's diagonal, sqrt(sum((n_i * s_i)^2)): an upper bound of any distance inside it."""
    steps = spacing if spacing is not None else (1.0,) * len(shape)
    return math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, steps)))


def _apply_empty_mask_policy(values: dict[str, float], gt_empty: bool, pred_empty: bool, worst: float) -> None:
    """Replace MONAI's nan/inf for empty masks by the documented values (see the module docstring)."""
    if gt_empty and pred_empty:
        values.update(Dice=1.0, IoU=1.0, Precision=1.0, Sensitivity=1.0, HD95=0.0, ASD=0.0)
    elif gt_empty or pred_empty:
        values.update(Dice=0.0, IoU=0.0, HD95=worst, ASD=worst)
        if pred_empty:
            values["Precision"] = 0.0  # TP + FP = 0
        if gt_empty:
            values["Sensitivity"] = 0.0  # TP + FN = 0
    if math.isnan(values["Specificity"]):  # TN + FP = 0: the class fills the volume, there is nothing to reject
        values["Specificity"] = 1.0


def case_metrics(
    pred: LabelArray, label: LabelArray, spacing: Sequence[float] | None = None
) -> dict[str, dict[str, float | bool]]:
    """Per-class metrics of one case.

    Args:
        pred: predicted label map (X, Y, Z) (or any spatial shape), integers in 0..3, numpy or torch.
        label: ground-truth label map, same shape.
        spacing: voxel size per spatial axis (mm); None means pixel units (unit spacing).

    Returns:
        {class_name: {metric: float for metric in METRICS} | {"gt_empty": bool, "pred_empty": bool}} for RV, MYO, LV.
    """
    pred_map, label_map = _as_label_map(pred, "pred"), _as_label_map(label, "label")
    if pred_map.shape != label_map.shape:
        raise ValueError(f"pred and label shapes differ: {tuple(pred_map.shape)} vs {tuple(label_map.shape)}")
    if pred_map.ndim not in (2, 3):
        raise ValueError(f"expected a 2D or 3D label map without channel axis, got shape {tuple(pred_map.shape)}")
    spacing = _check_spacing(spacing, pred_map.ndim)

    pred_oh, gt_oh = _foreground_one_hot(pred_map[None]), _foreground_one_hot(label_map[None])  # (1, 3, *spatial)
    pred_empty = pred_oh.flatten(2).sum(-1)[0] == 0  # (3,)
    gt_empty = gt_oh.flatten(2).sum(-1)[0] == 0

    dice = DiceMetric(include_background=True, reduction="none", ignore_empty=False)(pred_oh, gt_oh)[0]
    iou = MeanIoU(include_background=True, reduction="none", ignore_empty=False)(pred_oh, gt_oh)[0]
    confusion = ConfusionMatrixMetric(
        include_background=True,
        metric_name=("accuracy", "precision", "sensitivity", "specificity"),
        compute_sample=True,
        reduction="none",
    )
    confusion(pred_oh, gt_oh)
    accuracy, precision, sensitivity, specificity = (result[0] for result in confusion.aggregate())

    # Distances only where both masks exist: MONAI warns and returns nan/inf otherwise, and the policy decides anyway.
    hd95 = torch.full((len(CLASS_NAMES),), float("nan"))
    asd = torch.full((len(CLASS_NAMES),), float("nan"))
    both = torch.nonzero(~gt_empty & ~pred_empty).flatten()
    if both.numel():
        sub_pred, sub_gt = pred_oh[:, both], gt_oh[:, both]
        hd_metric = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")
        asd_metric = SurfaceDistanceMetric(include_background=True, symmetric=True, reduction="none")
        hd95[both] = hd_metric(sub_pred, sub_gt, spacing=spacing)[0].float().cpu()
        asd[both] = asd_metric(sub_pred, sub_gt, spacing=spacing)[0].float().cpu()

    worst = _volume_diagonal(tuple(pred_map.shape), spacing)
    per_class = (dice, iou, accuracy, precision, sensitivity, specificity, hd95, asd)
    result: dict[str, dict[str, float | bool]] = {}
    for index, name in enumerate(CLASS_NAMES.values()):
        values = {metric: float(tensor[index]) for metric, tensor in zip(METRICS, per_class)}
        _apply_empty_mask_policy(values, bool(gt_empty[index]), bool(pred_empty[index]), worst)
        result[name] = {**values, "gt_empty": bool(gt_empty[index]), "pred_empty": bool(pred_empty[index])}
    return result


def slice_dice(pred: LabelArray, label: LabelArray) -> list[tuple[str, int, float]]:
    """Per-slice Dice (paper Fig. 5): 2D slices along the last axis of (X, Y, Z) label maps.

    Returns:
        [(class_name, slice_index, dice)] sorted by class then slice, only for slices where gt or pred contains the
        class (slices where both are empty carry no information).
    """
    pred_map, label_map = _as_label_map(pred, "pred"), _as_label_map(label, "label")
    if pred_map.shape != label_map.shape or pred_map.ndim != 3:
        raise ValueError(
            f"slice_dice needs two 3D label maps of the same shape, got {tuple(pred_map.shape)} and "
            f"{tuple(label_map.shape)}"
        )
    # Slices become the batch axis: (Z, 3, X, Y).
    pred_oh = _foreground_one_hot(pred_map.movedim(-1, 0))
    gt_oh = _foreground_one_hot(label_map.movedim(-1, 0))
    dice = DiceMetric(include_background=True, reduction="none", ignore_empty=False)(pred_oh, gt_oh)  # (Z, 3)
    present = (pred_oh + gt_oh).flatten(2).amax(-1) > 0  # (Z, 3)
    names = list(CLASS_NAMES.values())
    return [
        (names[class_index], int(slice_index), float(dice[slice_index, class_index]))
        for class_index in range(len(names))
        for slice_index in torch.nonzero(present[:, class_index]).flatten().tolist()
    ]


def format_table(summary: Mapping[str, Any], statistic: str = "mean") -> str:
    """Markdown table in Table-1 layout: rows RV, MYO, LV, Mean; columns Dice IoU Acc Pre Sen Spe HD95 ASD (4 dp).

    Args:
        summary: the dict written to summary.json (``SegmentationReport.summary``).
        statistic: "mean" or "std" over cases.
    """
    units = summary["units"] if summary["units"] != "mixed" else "MIXED units"
    headers = [TABLE_HEADERS[m] + (f" ({units})" if m in ("HD95", "ASD") else "") for m in METRICS]
    lines = ["| Class | " + " | ".join(headers) + " |", "|---" * (len(headers) + 1) + "|"]
    rows = [(name, summary["per_class"][name]) for name in CLASS_NAMES.values()] + [("Mean", summary["mean"])]
    for row_name, stats in rows:
        lines.append(f"| {row_name} | " + " | ".join(f"{stats[m][statistic]:.4f}" for m in METRICS) + " |")
    return "\n".join(lines)


@dataclass
class _CaseRecord:
    """What the report keeps of one case: scalars plus a few 2D slices for the overlay (not the whole volume)."""

    name: str
    units: str
    metrics: dict[str, dict[str, float | bool]]
    slice_dice: list[tuple[str, int, float]]
    overlay_slices: list[int]
    image: np.ndarray | None  # (K, X, Y) float32, K = len(overlay_slices)
    gt: np.ndarray  # (K, X, Y) uint8
    pred: np.ndarray  # (K, X, Y) uint8

    @property
    def mean_dice(self) -> float:
        return float(np.mean([self.metrics[c]["Dice"] for c in CLASS_NAMES.values()]))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temp file in the same folder + os.replace, so a kill never leaves a truncated file."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _figure_png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def _overlay_slice_indices(gt_map: torch.Tensor, pred_map: torch.Tensor) -> list[int]:
    """Up to 3 slices (last axis): middle and quartiles of the slices where gt (else pred) has foreground."""
    for volume in (gt_map, pred_map):
        occupied = torch.nonzero(volume.flatten(0, -2).amax(0) > 0).flatten().tolist()
        if occupied:
            picks = [occupied[round(q * (len(occupied) - 1))] for q in (0.25, 0.5, 0.75)]
            return sorted(set(picks))
    return [gt_map.shape[-1] // 2]


class SegmentationReport:
    """Ignite handler that evaluates every case of a run and writes a report folder at the end.

    Each iteration's ``engine.state.output`` (after ``output_transform``) is what MONAI's ``SupervisedEvaluator``
    yields after decollation: a list of dicts with "pred" ((1, X, Y, Z) label map, or (4, X, Y, Z) one-hot /
    probabilities -> argmax), "label" ((1, X, Y, Z)) and "image" ((1, X, Y, Z), needed only for overlays), as
    MetaTensors. Spacing: meta "pixdim"[1:4] in mm, unless meta "spacing_known" is False (h5 data) or there is no
    "pixdim" -> pixel units. Case name: the item's "case", else the stem of meta "filename_or_obj".

    On COMPLETED it writes ``output_dir/<name>_<YYYYmmdd-HHMMSS>[_2, _3, ...]`` (or ``output_dir/<name>``, replaced,
    with ``overwrite=True``): metrics_per_case.csv, summary.json, summary.md, slice_dice_histogram.png and
    overlay_<case>.png for ``num_overlays`` cases spread over the mean-Dice ranking (3: worst, median, best). The folder
    is built under a hidden temporary name and renamed when complete. Under torch.distributed, cases are gathered
    from all ranks and rank 0 writes. Sets ``engine.state.metrics["report_mean_dice"]``, ``self.report_dir`` and
    ``self.summary``. Cases are collected anew at every STARTED, so each ``engine.run`` gives its own report.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        output_transform: Callable[[Any], Any] = lambda x: x,
        num_overlays: int = 3,
        overwrite: bool = False,
        name: str = "evaluation",
    ) -> None:
        if num_overlays < 0:
            raise ValueError(f"num_overlays must be >= 0, got {num_overlays}")
        if not name or re.search(r"[^\w.-]", name):
            raise ValueError(f"name must be a plain folder name (letters, digits, _ . -), got {name!r}")
        self.output_dir = Path(output_dir)
        self.output_transform = output_transform
        self.num_overlays = num_overlays
        self.overwrite = overwrite
        self.name = name
        self.report_dir: Path | None = None
        self.summary: dict[str, Any] | None = None
        self._records: list[_CaseRecord] = []

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self._reset, Events.STARTED):
            engine.add_event_handler(Events.STARTED, self._reset)
        if not engine.has_event_handler(self.iteration_completed, Events.ITERATION_COMPLETED):
            engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        if not engine.has_event_handler(self.completed, Events.COMPLETED):
            engine.add_event_handler(Events.COMPLETED, self.completed)

    def _reset(self, engine: Engine) -> None:
        self._records = []

    # ---- collection -------------------------------------------------------------------------------------------

    def iteration_completed(self, engine: Engine) -> None:
        output = self.output_transform(engine.state.output)
        items = decollate_batch(output) if isinstance(output, Mapping) else output
        if not isinstance(items, Sequence):
            raise TypeError(f"SegmentationReport: expected a list of dicts as output, got {type(output).__name__}")
        for item in items:
            self._records.append(self._evaluate_item(item, position=len(self._records)))

    def _evaluate_item(self, item: Mapping[str, Any], position: int) -> _CaseRecord:
        if not isinstance(item, Mapping) or CommonKeys.PRED not in item or CommonKeys.LABEL not in item:
            keys = list(item) if isinstance(item, Mapping) else type(item).__name__
            raise KeyError(f"SegmentationReport: each output item needs 'pred' and 'label', got {keys}")
        meta = self._item_meta(item)
        case = self._case_name(item, meta, position)
        label_map = self._to_label_map(item[CommonKeys.LABEL], "label", case)
        pred_map = self._to_label_map(item[CommonKeys.PRED], "pred", case)
        spacing, units = self._spacing(meta, label_map.ndim, case)
        try:
            metrics = case_metrics(pred_map, label_map, spacing)
            per_slice = slice_dice(pred_map, label_map) if label_map.ndim == 3 else []
        except ValueError as error:
            raise ValueError(f"case {case}: {error}") from error

        slices = _overlay_slice_indices(label_map, pred_map) if label_map.ndim == 3 else []
        image = None
        if self.num_overlays and label_map.ndim == 3:
            if CommonKeys.IMAGE not in item:
                raise KeyError(f"case {case}: overlays need 'image' in the output (or set num_overlays=0)")
            volume = convert_to_tensor(item[CommonKeys.IMAGE], track_meta=False).float()
            if tuple(volume.shape[-3:]) != tuple(label_map.shape):
                raise ValueError(f"case {case}: image shape {tuple(volume.shape)} does not match the label's")
            image = volume.reshape(-1, *label_map.shape)[0][..., slices].movedim(-1, 0).cpu().numpy()
        return _CaseRecord(
            name=case,
            units=units,
            metrics=metrics,
            slice_dice=per_slice,
            overlay_slices=slices,
            image=image,
            gt=label_map[..., slices].movedim(-1, 0).to(torch.uint8).cpu().numpy(),
            pred=pred_map[..., slices].movedim(-1, 0).to(torch.uint8).cpu().numpy(),
        )

    @staticmethod
    def _item_meta(item: Mapping[str, Any]) -> dict[str, Any]:
        """Meta of the label, completed by the image's and the prediction's (label first: it comes from the file)."""
        meta: dict[str, Any] = {}
        for key in (CommonKeys.PRED, CommonKeys.IMAGE, CommonKeys.LABEL):
            value = item.get(key)
            if isinstance(value, MetaTensor):
                meta.update(value.meta)
        return meta

    @staticmethod
    def _case_name(item: Mapping[str, Any], meta: Mapping[str, Any], position: int) -> str:
        if item.get("case") is not None:
            return str(item["case"])
        source = meta.get("filename_or_obj")
        if source is None or str(source) == "":
            return f"case_{position:04d}"
        name = Path(str(source)).name
        for suffix in _CASE_SUFFIXES:
            if name.endswith(suffix):
                return name[: -len(suffix)]
        return name

    @staticmethod
    def _to_label_map(value: Any, key: str, case: str) -> torch.Tensor:
        """(1, *spatial) label map or (4, *spatial) one-hot / probabilities -> (*spatial) integer labels."""
        tensor = convert_to_tensor(value, track_meta=False)
        if tensor.ndim not in (3, 4):
            raise ValueError(f"case {case}: '{key}' must be channel-first (C, X, Y[, Z]), got {tuple(tensor.shape)}")
        if tensor.shape[0] == 1:
            return _as_label_map(tensor[0], f"case {case}: '{key}'")
        if tensor.shape[0] == NUM_LABELS:
            return tensor.argmax(0)
        raise ValueError(
            f"case {case}: '{key}' has {tensor.shape[0]} channels; expected 1 (label map) or {NUM_LABELS} (one-hot)"
        )

    @staticmethod
    def _spacing(meta: Mapping[str, Any], ndim: int, case: str) -> tuple[tuple[float, ...] | None, str]:
        known = meta.get("spacing_known")
        if known is not None:
            known = bool(torch.as_tensor(known).reshape(-1)[0])  # decollated flags can be 0-d tensors
        pixdim = meta.get("pixdim")
        if known is False:
            return None, "pixels"
        if pixdim is None:
            if known:
                raise ValueError(f"case {case}: meta says spacing_known=True but has no 'pixdim'")
            return None, "pixels"
        values = np.asarray(convert_to_tensor(pixdim, track_meta=False).cpu(), dtype=float).ravel()
        if values.size < ndim + 1:
            raise ValueError(f"case {case}: meta 'pixdim' {values.tolist()} has no spacing for {ndim} axes")
        return _check_spacing(values[1 : ndim + 1], ndim), "mm"

    # ---- report -----------------------------------------------------------------------------------------------

    def completed(self, engine: Engine) -> None:
        records = self._gather(self._records)
        records = self._drop_duplicates(records)
        if not records:
            logger.warning("SegmentationReport: no cases were evaluated, no report written")
            self.summary, self.report_dir = None, None
            return
        self.summary = self._summarize(records)
        engine.state.metrics["report_mean_dice"] = self.summary["mean"]["Dice"]["mean"]
        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            return
        self.report_dir = self._write_report(records, self.summary)
        logger.info(
            "SegmentationReport: %d cases, mean Dice %.4f, report written to %s",
            len(records),
            self.summary["mean"]["Dice"]["mean"],
            self.report_dir,
        )

    @staticmethod
    def _gather(records: list[_CaseRecord]) -> list[_CaseRecord]:
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return records
        gathered: list[list[_CaseRecord] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, records)
        return [record for part in gathered for record in (part or [])]

    @staticmethod
    def _drop_duplicates(records: list[_CaseRecord]) -> list[_CaseRecord]:
        """A case seen twice (e.g. DistributedSampler padding) is counted once; the first occurrence is kept."""
        unique: dict[str, _CaseRecord] = {}
        for record in records:
            unique.setdefault(record.name, record)
        if len(unique) < len(records):
            dropped = len(records) - len(unique)
            logger.warning("SegmentationReport: %d duplicate case name(s) counted once", dropped)
        return list(unique.values())

    def _summarize(self, records: list[_CaseRecord]) -> dict[str, Any]:
        units_seen = sorted({record.units for record in records})
        units = units_seen[0] if len(units_seen) == 1 else "mixed"
        units_warning = None
        if units == "mixed":
            with_mm = [r.name for r in records if r.units == "mm"]
            units_warning = (
                f"HD95/ASD mix mm ({len(with_mm)} cases) and pixels ({len(records) - len(with_mm)} cases); "
                "their means are not meaningful"
            )
            logger.warning("SegmentationReport: %s", units_warning)

        def stats(values: np.ndarray) -> dict[str, float]:
            return {"mean": float(np.mean(values)), "std": float(np.std(values))}

        classes = list(CLASS_NAMES.values())
        # (cases, classes, metrics)
        table = np.array([[[r.metrics[c][m] for m in METRICS] for c in classes] for r in records], dtype=float)
        per_class = {c: {m: stats(table[:, i, j]) for j, m in enumerate(METRICS)} for i, c in enumerate(classes)}
        mean = {m: stats(table[:, :, j].mean(axis=1)) for j, m in enumerate(METRICS)}

        events: dict[str, dict[str, int]] = {}
        for c in classes:
            gt_empty = [bool(r.metrics[c]["gt_empty"]) for r in records]
            pred_empty = [bool(r.metrics[c]["pred_empty"]) for r in records]
            events[c] = {
                "gt_empty": sum(gt_empty),
                "pred_empty": sum(pred_empty),
                "both_empty": sum(g and p for g, p in zip(gt_empty, pred_empty)),
            }
        events["total"] = {
            key: sum(events[c][key] for c in classes) for key in ("gt_empty", "pred_empty", "both_empty")
        }

        return {
            "timestamp": datetime.now().isoformat(timespec="seconds"),
            "num_cases": len(records),
            "cases": [r.name for r in records],
            "units": units,
            "units_warning": units_warning,
            "statistics": "mean and population std (ddof=0) over cases; 'mean' = per-case mean over RV, MYO, LV",
            "per_class": per_class,
            "mean": mean,
            "report_mean_dice": mean["Dice"]["mean"],
            "empty_mask_policy": EMPTY_MASK_POLICY,
            "empty_mask_events": events,
        }

    def _target_dir(self) -> Path:
        if self.overwrite:
            return self.output_dir / self.name
        base = self.output_dir / f"{self.name}_{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        target, counter = base, 1
        while target.exists():
            counter += 1
            target = base.with_name(f"{base.name}_{counter}")
        return target

    def _write_report(self, records: list[_CaseRecord], summary: dict[str, Any]) -> Path:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{self.name}_staging_", dir=self.output_dir))
        try:
            self._write_files(staging, records, summary)
            return self._publish(staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def _publish(self, staging: Path) -> Path:
        """Move the complete staging folder into place (renames are atomic; the folder appears whole or not at all)."""
        target = self._target_dir()
        if self.overwrite and target.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{self.name}_old_", dir=self.output_dir))
            os.replace(target, retired / target.name)
            os.replace(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
            return target
        while True:
            try:
                os.mkdir(target)  # claims the name; a concurrent writer gets FileExistsError and takes the next one
                break
            except FileExistsError:
                target = self._target_dir()
        os.replace(staging, target)  # replacing the empty folder we just claimed
        return target

    def _write_files(self, folder: Path, records: list[_CaseRecord], summary: dict[str, Any]) -> None:
        rows = io.StringIO()
        writer = csv.writer(rows, lineterminator="\n")
        writer.writerow(["case", "class", *METRICS, *FLAGS])
        for record in records:
            for class_name in CLASS_NAMES.values():
                values = record.metrics[class_name]
                writer.writerow(
                    [
                        record.name,
                        class_name,
                        *(repr(float(values[m])) for m in METRICS),
                        *(int(values[f]) for f in FLAGS),
                    ]
                )
        atomic_write_bytes(folder / "metrics_per_case.csv", rows.getvalue().encode())
        atomic_write_bytes(folder / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
        atomic_write_bytes(folder / "summary.md", self._markdown(summary).encode())
        atomic_write_bytes(folder / "slice_dice_histogram.png", _figure_png(self._histogram_figure(records)))
        for record in self._overlay_cases(records):
            safe_name = re.sub(r"[^\w.-]", "_", record.name)
            atomic_write_bytes(
                folder / f"overlay_{safe_name}.png", _figure_png(self._overlay_figure(record, len(records)))
            )

    def _markdown(self, summary: dict[str, Any]) -> str:
        events = summary["empty_mask_events"]["total"]
        parts = [
            f"# Segmentation report ({self.name})",
            "",
            f"{summary['num_cases']} cases, {summary['timestamp']}. HD95 and ASD in {summary['units']}.",
        ]
        if summary["units_warning"]:
            parts += ["", f"**WARNING: {summary['units_warning']}.**"]
        parts += [
            "",
            "Mean over cases:",
            "",
            format_table(summary, "mean"),
            "",
            "Standard deviation over cases (ddof=0):",
            "",
            format_table(summary, "std"),
            "",
            f"Empty-mask events (case x class): gt empty {events['gt_empty']}, pred empty {events['pred_empty']}, "
            f"both {events['both_empty']}.",
            "",
            f"Empty-mask policy: {summary['empty_mask_policy']}",
            "",
        ]
        return "\n".join(parts)

    def _histogram_figure(self, records: list[_CaseRecord]) -> Figure:
        figure = Figure(figsize=(12, 3.5), layout="constrained")
        axes = figure.subplots(1, len(CLASS_NAMES), sharey=True)
        for axis, class_name in zip(axes, CLASS_NAMES.values()):
            values = [d for r in records for c, _, d in r.slice_dice if c == class_name]
            axis.hist(values, bins=20, range=(0.0, 1.0), color=CLASS_COLOURS[class_name], edgecolor="black")
            mean_text = f", mean {np.mean(values):.3f}" if values else ""
            axis.set_title(f"{class_name}: {len(values)} slices{mean_text}")
            axis.set_xlabel("per-slice Dice")
        axes[0].set_ylabel("slices")
        figure.suptitle("Per-slice Dice (slices where gt or prediction contains the class)")
        return figure

    def _overlay_cases(self, records: list[_CaseRecord]) -> list[_CaseRecord]:
        """num_overlays cases spread evenly over the mean-Dice ranking from worst to best."""
        candidates = [r for r in records if r.overlay_slices and r.image is not None]
        if not candidates or not self.num_overlays:
            return []
        ranked = sorted(candidates, key=lambda r: r.mean_dice)
        count = min(self.num_overlays, len(ranked))
        positions = np.linspace(0, len(ranked) - 1, count).round().astype(int) if count > 1 else [len(ranked) // 2]
        return [ranked[p] for p in sorted(set(int(p) for p in positions))]

    @staticmethod
    def _overlay_figure(record: _CaseRecord, num_cases: int) -> Figure:
        """Image in gray, prediction as colour fill, ground truth as contour of the same colour (paper Fig. 4)."""
        figure = Figure(figsize=(4 * len(record.overlay_slices), 4.6), layout="constrained")
        axes = np.atleast_1d(figure.subplots(1, len(record.overlay_slices)))
        for axis, image, gt, pred, index in zip(axes, record.image, record.gt, record.pred, record.overlay_slices):
            axis.imshow(image, cmap="gray")
            fill = np.zeros((*pred.shape, 4))
            for label, class_name in CLASS_NAMES.items():
                fill[pred == label] = to_rgba(CLASS_COLOURS[class_name], alpha=0.4)
                if (gt == label).any():
                    axis.contour(gt == label, levels=[0.5], colors=[CLASS_COLOURS[class_name]], linewidths=1.2)
            axis.imshow(fill)
            axis.set_title(f"slice {index}")
            axis.axis("off")
        dice_text = ", ".join(f"{c} {record.metrics[c]['Dice']:.3f}" for c in CLASS_NAMES.values())
        figure.suptitle(
            f"{record.name}: mean Dice {record.mean_dice:.4f} ({dice_text}) of {num_cases} cases\n"
            "fill = prediction, line = ground truth"
        )
        figure.legend(
            handles=[Patch(color=colour, label=name) for name, colour in CLASS_COLOURS.items()],
            loc="lower center",
            ncol=len(CLASS_COLOURS),
        )
        return figure
