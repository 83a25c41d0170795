"""ACDC data access: the paper's patient split, datalists for four layouts, a synthetic phantom, the loader transform.

Data sources (each gives a plain list of dicts that MONAI datasets take; ``datalist`` is the one entry point):

- ``"ssl4mis"``: the SSL4MIS h5 release the paper trained on (``train_slices.list`` -> ``data/slices/*.h5`` 2D slices,
  ``val.list``/``test.list`` -> ``data/*.h5`` 3D volumes).
- ``"acdc_nifti"``: the official ACDC download (``patientXXX/patientXXX_frameYY[_gt].nii.gz`` + ``Info.cfg``).
- ``"nnunet"``: an nnU-Net v2 raw dataset (e.g. U-Mamba's Dataset027_ACDC).
- ``"phantom"``: a deterministic synthetic short-axis cine phantom written in the official ACDC layout (tests, demo).

Patients are assigned to train/val/test by ``configs/acdc_split.json`` (the paper's SSL4MIS split: 70/10/20 patients),
so every source trains and evaluates on the same patients. Training items are 2D slices (``"slice": k`` picks slice k of
a 3D volume, h5 slice files are 2D already); val/test items are 3D volumes.

Axis convention: arrays are (X, Y[, Z]) as nibabel returns NIfTI data. SSL4MIS h5 arrays were written from SimpleITK,
i.e. (Z, Y, X); ``LoadACDCd`` transposes them so a model sees the same orientation whichever source it was trained on.
Labels: 0 background, 1 right-ventricle cavity (RV), 2 myocardium (MYO), 3 left-ventricle cavity (LV).
Every problem with the input data raises ``InputDataError`` with the message ``"<path>: <problem>"``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import CacheDataset, MetaTensor, NibabelReader
from monai.engines.utils import PrepareBatch, PrepareBatchDefault
from monai.networks.layers import AffineTransform
from monai.transforms import LoadImage, MapTransform
from monai.utils import convert_to_numpy
from scipy import ndimage

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
LABEL_NAMES = ("background", "RV", "MYO", "LV")  # index = label value
NUM_CLASSES = len(LABEL_NAMES)
DEFAULT_SPLIT_FILE = Path(__file__).parents[1] / "configs" / "acdc_split.json"
DATA_SOURCES = ("ssl4mis", "acdc_nifti", "nnunet", "phantom")

_PATIENT_ID = re.compile(r"patient\d{3}")
_NIFTI_SUFFIXES = (".nii", ".nii.gz")


class InputDataError(ValueError):
    """Bad input data. ``str(error)`` is one line: ``"<path>: <problem>"``; ``.path`` and ``.problem`` hold the parts.

    ``InputDataError(message)`` (one argument) is accepted too, so the error survives being re-raised by PyTorch's
    DataLoader workers, which rebuild exceptions from their message.
    """

    def __init__(self, path: str | os.PathLike, problem: str | None = None) -> None:
        super().__init__(path, problem)  # all args, so pickle and copy rebuild the error
        self.path = str(path)
        self.problem = problem

    def __str__(self) -> str:
        return self.path if self.problem is None else f"{self.path}: {self.problem}"


def find_input_error(error: BaseException) -> InputDataError | None:
    """The InputDataError behind ``error`` (MONAI's Compose re-raises transform errors as RuntimeError), else None."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, InputDataError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _short_reason(error: BaseException) -> str:
    """``"ExcType: first line of the message"``: enough to tell truncated from corrupt without the library's traceback."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


# ----------------------------------------------------------------------------------------------------------- split --


def patient_id(name: str) -> str | None:
    """The ``patientXXX`` part of a case, volume or slice name (``patient001_frame01_slice_3`` -> ``patient001``)."""
    match = _PATIENT_ID.search(name)
    return match.group(0) if match else None


def _check_split_name(split: str, where: str | os.PathLike) -> None:
    if split not in SPLITS:
        raise InputDataError(where, f"unknown split {split!r} (expected one of {', '.join(SPLITS)})")


def _read_list(list_file: Path) -> list[str]:
    """Non-empty, stripped lines of an SSL4MIS ``*.list`` file."""
    if not list_file.is_file():
        raise InputDataError(list_file, "list file not found")
    names = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
    if not names:
        raise InputDataError(list_file, "list file is empty")
    return names


def split_from_ssl4mis_lists(dataset_dir: str | os.PathLike) -> dict[str, list[str]]:
    """The patient split behind SSL4MIS's ``{train,val,test}.list`` (volume names -> sorted unique patient ids)."""
    split = {}
    for name in SPLITS:
        list_file = Path(dataset_dir) / f"{name}.list"
        ids = set()
        for volume in _read_list(list_file):
            pid = patient_id(volume)
            if pid is None:
                raise InputDataError(list_file, f"entry {volume!r} has no patientXXX id")
            ids.add(pid)
        split[name] = sorted(ids)
    _check_split(split, Path(dataset_dir))
    return split


def save_split(split: Mapping[str, Sequence[str]], split_file: str | os.PathLike) -> None:
    """Write a split json (4-space indent, trailing newline: the committed file's format)."""
    Path(split_file).write_text(json.dumps({name: list(split[name]) for name in SPLITS}, indent=4) + "\n")


def _check_split(split: Any, where: Path) -> None:
    if not isinstance(split, dict) or set(split) != set(SPLITS):
        keys = sorted(split) if isinstance(split, dict) else type(split).__name__
        raise InputDataError(where, f"a split must be a json object with keys {list(SPLITS)}, got {keys}")
    owner: dict[str, str] = {}
    for name in SPLITS:
        ids = split[name]
        if not isinstance(ids, list) or not all(isinstance(pid, str) and _PATIENT_ID.fullmatch(pid) for pid in ids):
            raise InputDataError(where, f"split {name!r} must be a list of ids like 'patient001'")
        for pid in ids:
            if pid in owner:
                raise InputDataError(where, f"{pid} is listed in both {owner[pid]!r} and {name!r}")
            owner[pid] = name


def load_split(split_file: str | os.PathLike | None = None) -> dict[str, list[str]]:
    """The patient split {"train": [...], "val": [...], "test": [...]}; default: the paper's (configs/acdc_split.json)."""
    path = Path(split_file) if split_file is not None else DEFAULT_SPLIT_FILE
    if not path.is_file():
        raise InputDataError(path, "split file not found")
    try:
        split = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise InputDataError(path, f"split file is not valid json ({error})") from None
    _check_split(split, path)
    return split


# ------------------------------------------------------------------------------------------------------ datalists --


def _require_dir(dataset_dir: str | os.PathLike, what: str = "dataset folder") -> Path:
    path = Path(dataset_dir).expanduser()
    if not path.is_dir():
        raise InputDataError(path, f"{what} not found")
    return path


def ssl4mis_datalist(dataset_dir: str | os.PathLike, split: str) -> list[dict]:
    """Items of the SSL4MIS h5 layout (the data the paper used).

    "train": ``train_slices.list`` -> ``data/slices/{name}.h5`` 2D slice items; "val"/"test": ``{split}.list`` ->
    ``data/{name}.h5`` 3D volume items. Item: ``{"image": path, "label": path, "case": name}`` (image and label are
    datasets of the same h5 file).
    """
    root = _require_dir(dataset_dir)
    _check_split_name(split, root)
    list_file = root / ("train_slices.list" if split == "train" else f"{split}.list")
    folder = root / "data" / "slices" if split == "train" else root / "data"
    items = []
    for name in _read_list(list_file):
        path = folder / f"{name}.h5"
        if not path.is_file():
            raise InputDataError(list_file, f"entry {name!r} has no file (expected {path})")
        items.append({"image": str(path), "label": str(path), "case": name})
    return items


def _nifti_shape(path: Path) -> tuple[int, ...]:
    """Shape of a NIfTI image from its header only (no voxel data is read)."""
    if not path.is_file():
        raise InputDataError(path, "file not found")
    try:
        return tuple(int(n) for n in nib.load(path).shape)
    except Exception as error:  # nibabel raises many types (ImageFileError, EOFError, zlib/gzip errors)
        raise InputDataError(path, f"cannot read NIfTI header ({_short_reason(error)})") from None


def _slice_count(path: Path) -> int:
    """Number of slices of a 3D NIfTI volume, from its header only."""
    shape = _nifti_shape(path)
    if len(shape) != 3:
        raise InputDataError(path, f"wrong dimensionality: expected a 3D volume, the header says shape {shape}")
    return shape[2]


def training_slices(items: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Training items as 2D slices: an item naming a 3D NIfTI volume without a ``"slice"`` index becomes one item per
    slice (``"slice": k``, k along the last axis); slice items, 2D images and h5 files (SSL4MIS slices) pass unchanged.

    Why: the bundle's own datalists already list slices, but MONAI Label's training task replaces
    ``train#dataset#data`` with whole annotated volumes ``{"image": path, "label": path}``. Raises InputDataError for
    an empty list, an item without an image, or a NIfTI image that is neither 2D nor 3D.
    """
    if not items:
        raise InputDataError("train#dataset#data", "no training items (empty data list)")
    slices = []
    for item in items:
        image = item.get("image") if isinstance(item, Mapping) else None
        if not image:
            raise InputDataError("train#dataset#data", f"training item without an 'image' path: {item!r}")
        if "slice" in item or not str(image).endswith(_NIFTI_SUFFIXES):
            slices.append(dict(item))
            continue
        shape = _nifti_shape(Path(image))
        if len(shape) == 2:
            slices.append(dict(item))
        elif len(shape) == 3:
            case = item.get("case", patient_id(Path(image).name) or Path(image).name.split(".")[0])
            slices.extend({**item, "case": case, "slice": k} for k in range(shape[2]))
        else:
            raise InputDataError(image, f"wrong dimensionality: expected a 2D slice or a 3D volume, shape {shape}")
    return slices


class TrainingSliceDataset(CacheDataset):
    """MONAI's CacheDataset over :func:`training_slices` of ``data`` (same arguments as CacheDataset)."""

    def __init__(self, data: Sequence[Mapping[str, Any]], transform: Any = None, **kwargs: Any) -> None:
        super().__init__(training_slices(data), transform, **kwargs)


def _cases_to_items(cases: Sequence[tuple[str, Path, Path]], split: str) -> list[dict]:
    """(case, image, label) triples -> slice items for "train", volume items otherwise."""
    items = []
    for case, image, label in cases:
        if split == "train":
            for k in range(_slice_count(image)):
                items.append({"image": str(image), "label": str(label), "slice": k, "case": case})
        else:
            items.append({"image": str(image), "label": str(label), "case": case})
    return items


def read_info_cfg(path: str | os.PathLike) -> dict[str, int]:
    """ED and ES frame numbers from an ACDC ``Info.cfg`` (lines ``"ED: 1"``, ``"ES: 12"``, ``"Group: DCM"``, ...)."""
    path = Path(path)
    if not path.is_file():
        raise InputDataError(path, "Info.cfg not found")
    fields = {}
    for line in path.read_text(errors="replace").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    frames = {}
    for key in ("ED", "ES"):
        if key not in fields:
            raise InputDataError(path, f"bad Info.cfg: no '{key}:' line")
        try:
            frames[key] = int(fields[key])
        except ValueError:
            raise InputDataError(path, f"bad Info.cfg: {key} must be a frame number, got {fields[key]!r}") from None
        if frames[key] < 0:
            raise InputDataError(path, f"bad Info.cfg: {key} must be a frame number, got {frames[key]}")
    return frames


def _acdc_search_roots(root: Path) -> list[Path]:
    """The folder itself plus the official download's ``training/``/``testing/`` (patients 101-150) if present."""
    candidates = [root] + [root / sub / part for sub in ("", "database") for part in ("training", "testing")]
    return [path for path in candidates if path.is_dir()]


def acdc_nifti_datalist(
    dataset_dir: str | os.PathLike, split: str, split_file: str | os.PathLike | None = None
) -> list[dict]:
    """Items of the official ACDC layout: ``patientXXX/patientXXX_frameYY.nii.gz`` + ``_gt`` + ``Info.cfg``.

    ``dataset_dir`` may be ``training/``, ``testing/`` or the folder holding both. The split's patients that are present
    contribute their ED and ES frames (missing ones are logged, not an error); cases keep the real frame numbers
    (``patient001_frame12``), unlike SSL4MIS's renamed frame01/frame02. "train": one item per slice (slice counts from
    the NIfTI headers); "val"/"test": volume items.
    """
    root = _require_dir(dataset_dir)
    _check_split_name(split, root)
    wanted = load_split(split_file)[split]
    roots = _acdc_search_roots(root)
    cases, missing = [], []
    for pid in wanted:
        patient_dir = next((base / pid for base in roots if (base / pid).is_dir()), None)
        if patient_dir is None:
            missing.append(pid)
            continue
        frames = read_info_cfg(patient_dir / "Info.cfg")
        for frame in sorted({frames["ED"], frames["ES"]}):
            case = f"{pid}_frame{frame:02d}"
            image, label = patient_dir / f"{case}.nii.gz", patient_dir / f"{case}_gt.nii.gz"
            if not image.is_file():
                raise InputDataError(image, f"image of frame {frame} (named in Info.cfg) not found")
            if not label.is_file():
                raise InputDataError(label, "ground-truth (_gt) file not found")
            cases.append((case, image, label))
    if not cases:
        searched = ", ".join(str(path) for path in roots)
        raise InputDataError(root, f"no patient of split {split!r} found (searched {searched} for {wanted[:3]}...)")
    if missing:
        logger.warning("%s: %d of %d %s patients not found: %s", root, len(missing), len(wanted), split, missing)
    return _cases_to_items(cases, split)


def _label_name_key(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


_LABEL_SYNONYMS = {
    0: {"background", "bg", "bkg"},
    1: {"rv", "rvc", "rv cavity", "right ventricle", "right ventricle cavity", "right ventricular cavity"},
    2: {"myo", "mlv", "myocardium", "lv myocardium", "left ventricle myocardium", "left ventricular myocardium"},
    3: {
        "lv",
        "lvc",
        "lv cavity",
        "left ventricle",
        "left ventricle cavity",
        "left ventricular cavity",
        "lv blood pool",
    },
}


def _check_nnunet_labels(labels: Any, path: Path) -> None:
    """dataset.json "labels" must name ACDC's classes with ACDC's values (v2 {name: value} or v1 {value: name})."""
    if not isinstance(labels, dict) or not labels:
        raise InputDataError(path, "dataset.json has no 'labels' object")
    if all(str(key).isdigit() for key in labels):  # nnU-Net v1 style {"0": "background", ...}
        labels = {name: int(value) for value, name in labels.items()}
    value_of = {}
    for name, value in labels.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise InputDataError(path, f"label {name!r} maps to {value!r}; only plain integer labels are supported")
        value_of[value] = _label_name_key(str(name))
    expected = {value: LABEL_NAMES[value] for value in range(NUM_CLASSES)}
    wrong = sorted(value_of.keys() ^ expected.keys()) + sorted(
        value for value, name in value_of.items() if value in _LABEL_SYNONYMS and name not in _LABEL_SYNONYMS[value]
    )
    if wrong:
        raise InputDataError(
            path,
            f"labels {labels} do not match ACDC's {expected} (e.g. {{'background': 0, 'RV': 1, 'MLV': 2, 'LVC': 3}})",
        )


def nnunet_datalist(
    dataset_dir: str | os.PathLike, split: str, split_file: str | os.PathLike | None = None
) -> list[dict]:
    """Items of an nnU-Net v2 raw dataset: ``imagesTr/{case}_0000{ending}``, ``labelsTr/{case}{ending}`` (and
    ``imagesTs``/``labelsTs`` if present). Cases join the split by the ``patientXXX`` id in their name; dataset.json's
    labels must be ACDC's (0 background, 1 RV, 2 MYO, 3 LV). "train": slice items (NIfTI only); else volume items.
    """
    root = _require_dir(dataset_dir)
    _check_split_name(split, root)
    spec_file = root / "dataset.json"
    if not spec_file.is_file():
        raise InputDataError(spec_file, "dataset.json not found (is this an nnU-Net raw dataset folder?)")
    try:
        spec = json.loads(spec_file.read_text())
    except json.JSONDecodeError as error:
        raise InputDataError(spec_file, f"not valid json ({error})") from None
    ending = spec.get("file_ending") if isinstance(spec, dict) else None
    if not isinstance(ending, str) or not ending:
        raise InputDataError(spec_file, "dataset.json has no 'file_ending'")
    _check_nnunet_labels(spec.get("labels"), spec_file)
    if split == "train" and ending not in _NIFTI_SUFFIXES:
        raise InputDataError(spec_file, f"slice items need NIfTI files, file_ending is {ending!r}")
    if not (root / "imagesTr").is_dir():
        raise InputDataError(root / "imagesTr", "folder not found")
    wanted = set(load_split(split_file)[split])
    cases = []
    for images_dir, labels_dir in (root / "imagesTr", root / "labelsTr"), (root / "imagesTs", root / "labelsTs"):
        if not images_dir.is_dir():
            continue
        for image in sorted(images_dir.glob(f"*_0000{ending}")):
            case = image.name[: -len(f"_0000{ending}")]
            if patient_id(case) not in wanted:
                continue
            label = labels_dir / f"{case}{ending}"
            if not label.is_file():
                raise InputDataError(image, f"no label file (expected {label})")
            cases.append((case, image, label))
    if not cases:
        raise InputDataError(root, f"no case of split {split!r} found (case names must contain ids like patient001)")
    return _cases_to_items(cases, split)


# -------------------------------------------------------------------------------------------------------- phantom --

_PHANTOM_VERSION = 1
_PHANTOM_MANIFEST = "phantom.json"
_PHANTOM_SPLIT = "phantom_split.json"
_PHANTOM_SPACING = (1.5, 1.5, 10.0)  # mm, typical ACDC short-axis cine


def _ellipse_radius(grid: tuple[np.ndarray, np.ndarray], center, radii, angle: float) -> np.ndarray:
    """(X, Y) map of the normalised elliptic radius: < 1 inside the ellipse (center, semi-axes radii, rotated)."""
    dx, dy = grid[0] - center[0], grid[1] - center[1]
    cos, sin = np.cos(angle), np.sin(angle)
    return np.hypot((cos * dx + sin * dy) / radii[0], (-sin * dx + cos * dy) / radii[1])


def _phantom_case(
    rng: np.random.Generator, image_size: tuple[int, int], num_slices: int
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], int]:
    """One synthetic patient: {"ED"/"ES": (image uint16 (X, Y, Z), label uint8 (X, Y, Z))} and the ES frame number.

    Short-axis stack from base (z=0) to apex: body ellipse with textured tissue and a bright subcutaneous fat rim, LV
    blood pool (label 3, bright, with papillary muscles) inside a dark myocardial ring (2), RV crescent (1) against the
    septum. Cavities shrink towards the apex, the RV vanishes there. ES: smaller cavities, thicker wall (myocardial
    area is conserved). Then partial-volume blur, smooth bias field, Rician noise, an arbitrary scanner gain.
    """
    size = np.asarray(image_size, dtype=np.float64)
    unit = float(size.min())  # every length scales with the field of view
    grid = np.meshgrid(np.arange(image_size[0]), np.arange(image_size[1]), indexing="ij")
    body_center = size / 2 + rng.uniform(-0.03, 0.03, 2) * unit
    body_radii = rng.uniform([0.40, 0.32], [0.46, 0.40]) * size
    body_angle = rng.uniform(-0.3, 0.3)
    fat_rim = rng.uniform(0.06, 0.1)
    heart_center = body_center + rng.uniform(-0.07, 0.07, 2) * unit
    apex_drift = rng.normal(0.0, 0.02 * unit, 2)
    lv_radius, wall = rng.uniform(0.09, 0.12) * unit, rng.uniform(0.045, 0.06) * unit
    lv_ellipticity, lv_angle = rng.uniform(0.0, 0.12), rng.uniform(0.0, np.pi)
    rv_angle = np.pi + rng.uniform(-0.7, 0.7)  # direction LV -> RV
    rv_depth, rv_span, rv_wall = rng.uniform(0.7, 0.95), rng.uniform(1.25, 1.5), 0.02 * unit
    papillary_angles = lv_angle + rng.uniform(0.0, 2 * np.pi) + np.array([0.0, rng.uniform(1.5, 2.5)])
    es_lv, es_rv, es_frame = rng.uniform(0.55, 0.75), rng.uniform(0.6, 0.8), int(rng.integers(9, 15))
    tissue, fat, myo = rng.uniform(0.3, 0.42), rng.uniform(0.65, 0.8), rng.uniform(0.12, 0.2)
    lv_blood = rng.uniform(0.85, 1.0)
    rv_blood = lv_blood * rng.uniform(0.85, 1.0)
    bias = rng.normal(0.0, 0.15, 4)
    noise_sigma, gain = rng.uniform(0.02, 0.04), rng.uniform(300.0, 1200.0)

    body = _ellipse_radius(grid, body_center, body_radii, body_angle)
    in_body = body < 1
    u, v = (grid[0] / size[0]) * 2 - 1, (grid[1] / size[1]) * 2 - 1
    bias_field = np.exp(bias[0] * u + bias[1] * v + bias[2] * u * v + bias[3] * u * u)[..., None]
    shape = (*image_size, num_slices)
    frames = {}
    for phase in ("ED", "ES"):
        image = np.full(shape, 0.02)
        label = np.zeros(shape, dtype=np.uint8)
        texture = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=(2.0, 2.0, 0.0))
        texture *= 0.06 / max(texture.std(), 1e-8)
        for z in range(num_slices):
            depth = z / max(num_slices - 1, 1)  # 0 at the base, 1 at the apex
            base_endo = lv_radius * (1 - 0.5 * depth**1.5)
            epi_ed = base_endo + wall
            endo = base_endo * (es_lv if phase == "ES" else 1.0)
            epi = np.sqrt(endo**2 + epi_ed**2 - base_endo**2)  # same myocardial area in ED and ES
            center = heart_center + depth * apex_drift
            lv_r = _ellipse_radius(grid, center, (1 + lv_ellipticity, 1 - lv_ellipticity), lv_angle)
            rv_scale = max(0.0, 1 - 1.1 * depth**1.5) * (es_rv if phase == "ES" else 1.0)  # gone at the apex
            rv_a, rv_b = rv_depth * epi * rv_scale, rv_span * epi * np.sqrt(rv_scale)
            lv_cavity, lv_wall = lv_r < endo, (lv_r >= endo) & (lv_r < epi)
            rv_cavity = rv_free_wall = np.zeros(image_size, dtype=bool)
            if rv_a > 1.0:
                rv_center = center + (epi + 0.3 * rv_a) * np.array([np.cos(rv_angle), np.sin(rv_angle)])
                rv_outer = _ellipse_radius(grid, rv_center, (rv_a + rv_wall, rv_b + rv_wall), rv_angle) < 1
                rv_cavity = (_ellipse_radius(grid, rv_center, (rv_a, rv_b), rv_angle) < 1) & (lv_r >= epi) & in_body
                rv_free_wall = rv_outer & ~rv_cavity & (lv_r >= epi) & in_body
            tissue_z = in_body & ~lv_cavity & ~lv_wall & ~rv_cavity & ~rv_free_wall
            slice_image = image[..., z]
            slice_image[in_body] = tissue
            slice_image[in_body & (body > 1 - fat_rim)] = fat
            slice_image[tissue_z] += texture[..., z][tissue_z]
            slice_image[lv_wall | rv_free_wall] = myo + 0.3 * texture[..., z][lv_wall | rv_free_wall]
            slice_image[lv_cavity] = lv_blood
            slice_image[rv_cavity] = rv_blood
            if depth < 0.8:  # papillary muscles: dark spots in the LV cavity, labelled LV as in ACDC
                for angle in papillary_angles:
                    spot = center + 0.65 * endo * np.array([np.cos(angle), np.sin(angle)])
                    slice_image[(np.hypot(grid[0] - spot[0], grid[1] - spot[1]) < 0.15 * endo) & lv_cavity] = myo
            label[..., z][rv_cavity] = 1
            label[..., z][lv_wall] = 2
            label[..., z][lv_cavity] = 3
        image = ndimage.gaussian_filter(image, sigma=(0.7, 0.7, 0.0)) * bias_field  # partial volume, coil sensitivity
        image = np.hypot(image + rng.normal(0.0, noise_sigma, shape), rng.normal(0.0, noise_sigma, shape))  # Rician
        frames[phase] = (np.clip(np.rint(image * gain), 0, 65535).astype(np.uint16), label)
    return frames, es_frame


def _save_nifti_atomic(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """nibabel writes gzip without a timestamp (byte-identical reruns); write-then-rename so readers never see half a
    file (several processes may create the phantom at once)."""
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    tmp = path.with_name(f".{os.getpid()}.{path.name}")
    nib.save(image, tmp)
    os.replace(tmp, path)


def _write_text_atomic(text: str, path: Path) -> None:
    tmp = path.with_name(f".{os.getpid()}.{path.name}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _phantom_split(case_ids: Sequence[str]) -> dict[str, list[str]]:
    """~70/10/20 with at least 2 val and 2 test cases; cases are i.i.d., so consecutive blocks are as good as random."""
    n = len(case_ids)
    n_val, n_test = max(2, round(0.1 * n)), max(2, round(0.2 * n))
    n_train = n - n_val - n_test
    return {
        "train": list(case_ids[:n_train]),
        "val": list(case_ids[n_train : n_train + n_val]),
        "test": list(case_ids[n_train + n_val :]),
    }


def _read_manifest(manifest_file: Path) -> dict | None:
    """The phantom manifest; None if there is none, {} if it is unreadable (then the phantom is rewritten)."""
    if not manifest_file.is_file():
        return None
    try:
        manifest = json.loads(manifest_file.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def _phantom_is_current(root: Path, old: dict, manifest: dict) -> bool:
    """The phantom under root was written with these parameters and none of its files is missing."""
    if any(old.get(key) != value for key, value in manifest.items()) or not (root / _PHANTOM_SPLIT).is_file():
        return False
    files = old.get("files") if isinstance(old.get("files"), dict) else {}
    return bool(files) and all((root / pid / name).is_file() for pid, names in files.items() for name in names)


def write_phantom(
    root: str | os.PathLike,
    num_cases: int = 12,
    image_size: Sequence[int] = (128, 128),
    num_slices: int = 8,
    seed: int = 0,
) -> Path:
    """Write the synthetic ACDC-layout phantom under ``root`` unless a manifest with the same parameters is there.

    Layout: ``root/patientXXX/{patientXXX_frame01,_frameES}[_gt].nii.gz`` + ``Info.cfg``, spacing 1.5 x 1.5 x 10 mm,
    images uint16 (X, Y, Z), labels uint8; ``phantom_split.json`` (~70/10/20) and the manifest ``phantom.json``.
    Case i depends only on (seed, i), so the files are byte-identical for identical parameters. Returns the split file.
    """
    if num_cases < 5:
        raise ValueError(f"num_cases must be >= 5 (train + 2 val + 2 test), got {num_cases}")
    if num_slices < 2 or len(image_size) != 2 or min(image_size) < 16:
        raise ValueError(f"need num_slices >= 2 and a 2D image_size >= 16 px, got {num_slices}, {tuple(image_size)}")
    root = Path(root).expanduser()
    case_ids = [f"patient{i + 1:03d}" for i in range(num_cases)]
    params = {"num_cases": num_cases, "image_size": [int(s) for s in image_size], "num_slices": num_slices}
    manifest = {"generator": f"{__name__}.write_phantom", "version": _PHANTOM_VERSION, "seed": seed, **params}
    manifest_file, split_file = root / _PHANTOM_MANIFEST, root / _PHANTOM_SPLIT
    old = _read_manifest(manifest_file)
    if old is not None and _phantom_is_current(root, old, manifest):
        return split_file
    if old is None and root.is_dir() and any(root.glob("patient*")):
        raise InputDataError(root, f"holds patient folders but no {_PHANTOM_MANIFEST}: refusing to overwrite real data")
    for pid in (old or {}).get("cases", []):  # parameters changed: remove the previous phantom's cases only
        if _PATIENT_ID.fullmatch(str(pid)) and (root / pid).is_dir():
            shutil.rmtree(root / pid)
    affine = np.diag([*_PHANTOM_SPACING, 1.0])
    affine[:3, 3] = [-image_size[0] * _PHANTOM_SPACING[0] / 2, -image_size[1] * _PHANTOM_SPACING[1] / 2, 0.0]
    files_of = {}
    for index, pid in enumerate(case_ids):
        rng = np.random.default_rng([seed, index])
        frames, es_frame = _phantom_case(rng, tuple(int(s) for s in image_size), num_slices)
        patient_dir = root / pid
        patient_dir.mkdir(parents=True, exist_ok=True)
        names = []
        for phase, frame in (("ED", 1), ("ES", es_frame)):
            image, label = frames[phase]
            case = f"{pid}_frame{frame:02d}"
            _save_nifti_atomic(image, affine, patient_dir / f"{case}.nii.gz")
            _save_nifti_atomic(label, affine, patient_dir / f"{case}_gt.nii.gz")
            names += [f"{case}.nii.gz", f"{case}_gt.nii.gz"]
        info = f"ED: 1\nES: {es_frame}\nGroup: NOR\nHeight: {160 + index % 30}.0\nNbFrame: 30\nWeight: {60 + index}.0\n"
        _write_text_atomic(info, patient_dir / "Info.cfg")
        files_of[pid] = names + ["Info.cfg"]
    _write_text_atomic(json.dumps(_phantom_split(case_ids), indent=4) + "\n", split_file)
    _write_text_atomic(json.dumps({**manifest, "cases": case_ids, "files": files_of}, indent=4) + "\n", manifest_file)
    return split_file


def phantom_datalist(
    root: str | os.PathLike,
    split: str,
    num_cases: int = 12,
    image_size: Sequence[int] = (128, 128),
    num_slices: int = 8,
    seed: int = 0,
) -> list[dict]:
    """Datalist of the synthetic phantom (written by ``write_phantom`` on first use) with its own split file."""
    split_file = write_phantom(root, num_cases=num_cases, image_size=image_size, num_slices=num_slices, seed=seed)
    return acdc_nifti_datalist(root, split, split_file)


def datalist(source: str, dataset_dir: str | os.PathLike, split: str, **kwargs: Any) -> list[dict]:
    """One entry point for the configs: ``source`` in ``DATA_SOURCES`` -> the matching ``*_datalist`` function."""
    functions = {
        "ssl4mis": ssl4mis_datalist,
        "acdc_nifti": acdc_nifti_datalist,
        "nnunet": nnunet_datalist,
        "phantom": phantom_datalist,
    }
    if source not in functions:
        raise InputDataError(dataset_dir, f"unknown data source {source!r} (expected one of {', '.join(DATA_SOURCES)})")
    return functions[source](dataset_dir, split, **kwargs)


def inference_datalist(dataset_dir: str | os.PathLike) -> list[dict]:
    """``{"image": path}`` items for every NIfTI image under ``dataset_dir`` (recursively), or for one NIfTI file.

    ACDC's own ``*_gt`` label files and ``*_4d`` cine sequences are skipped, so the official ``patientXXX`` folders can
    be passed as they are. The slices are segmented one by one, so any 3D short-axis volume works.
    """
    path = Path(dataset_dir).expanduser()
    if path.is_file() and path.name.endswith(_NIFTI_SUFFIXES):
        return [{"image": str(path)}]
    root = _require_dir(path, "inference input folder")
    images = sorted(
        p
        for p in root.rglob("*")
        if p.name.endswith(_NIFTI_SUFFIXES) and not p.name.split(".")[0].endswith(("_gt", "_4d", "_seg"))
    )
    if not images:
        raise InputDataError(root, "no NIfTI images (*.nii, *.nii.gz) found to segment")
    return [{"image": str(p)} for p in images]


# ---------------------------------------------------------------------------------------------------- validation --


def _describe_values(values: np.ndarray, limit: int = 5) -> str:
    unique = np.unique(values)
    shown = ", ".join(f"{value:g}" for value in unique[:limit].tolist())
    return shown + (f", ... ({unique.size} distinct)" if unique.size > limit else "")


def check_image(array: np.ndarray, path: str | os.PathLike, ndim: int) -> None:
    """Raise InputDataError unless ``array`` is a usable ``ndim``-D image: numeric, finite, not empty, not constant."""
    expected = {2: "a 2D slice", 3: "a 3D volume"}.get(ndim, f"a {ndim}D array")
    if array.ndim != ndim:
        hint = " (a 4D cine series? use the ED/ES frames)" if array.ndim == 4 else ""
        raise InputDataError(
            path, f"wrong dimensionality: expected {expected}, got a {array.ndim}D array of shape {array.shape}{hint}"
        )
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise InputDataError(path, f"unsupported image dtype {array.dtype}")
    if array.size == 0:
        raise InputDataError(path, f"empty image of shape {array.shape}")
    if np.issubdtype(array.dtype, np.floating):
        num_nan, num_inf = int(np.isnan(array).sum()), int(np.isinf(array).sum())
        if num_nan or num_inf:
            found = [f"{count} {what}" for count, what in ((num_nan, "NaN"), (num_inf, "inf")) if count]
            raise InputDataError(path, f"non-finite intensities: {' and '.join(found)} voxels")
    low, high = array.min(), array.max()
    if low == high:
        raise InputDataError(path, f"constant image (every voxel is {low:g}): cannot be normalised")


def check_label(array: np.ndarray, path: str | os.PathLike) -> None:
    """Raise InputDataError unless every label value is an integer in 0..3 (all-background is fine)."""
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise InputDataError(path, f"unsupported label dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.floating):
        fractional = array[~(array == np.round(array))]  # NaN fails the comparison, so it lands here too
        if fractional.size:
            raise InputDataError(path, f"non-integer label values: {_describe_values(fractional)}")
    outside = array[(array < 0) | (array > NUM_CLASSES - 1)]
    if outside.size:
        raise InputDataError(
            path, f"label values outside 0..{NUM_CLASSES - 1}: {_describe_values(outside)} (expected {LABEL_NAMES})"
        )


def check_pair(image_shape: Sequence[int], label_shape: Sequence[int], path: str | os.PathLike) -> None:
    """Raise InputDataError unless the label's shape equals the image's."""
    if tuple(image_shape) != tuple(label_shape):
        raise InputDataError(
            path, f"shape mismatch: image shape {tuple(image_shape)} != label shape {tuple(label_shape)}"
        )


class ValidateImaged(MapTransform):
    """``check_image`` on already-loaded images (e.g. after MONAI's LoadImaged in inference); returns data unchanged.

    Args:
        keys: keys of the images to check.
        ndim: expected spatial dimensionality (2 or 3).
        channel_first: the image carries a leading channel axis, which must have size 1 (grey-scale MRI).
    """

    def __init__(
        self, keys: KeysCollection, ndim: int, channel_first: bool = False, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.ndim = ndim
        self.channel_first = channel_first

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            path = str(image.meta.get("filename_or_obj", key)) if isinstance(image, MetaTensor) else str(key)
            array = convert_to_numpy(image)
            if self.channel_first:
                if array.ndim == 0 or array.shape[0] != 1:
                    raise InputDataError(path, f"expected one channel first, got shape {array.shape}")
                array = array[0]
            check_image(array, path, self.ndim)
        return d


# --------------------------------------------------------------------------------------------------------- loader --


class LoadACDCd(MapTransform):
    """Load an ACDC item (h5 or NIfTI) as validated channel-first MetaTensors.

    Input item: ``{"image": path, "label": path, "case": name[, "slice": k]}``. Output: the item with image float32
    (1, X, Y[, Z]) and label uint8 (1, X, Y[, Z]) MetaTensors (``meta["filename_or_obj"]`` = the path); other keys kept.

    - ``.h5`` (SSL4MIS): datasets "image"/"label", stored (Z, Y, X) or (Y, X), transposed to NIfTI's (X, Y[, Z]);
      identity affine, ``meta["spacing_known"] = False`` (distances are pixels).
    - anything else: MONAI's LoadImage (nibabel for NIfTI), affine and pixdim kept, ``meta["spacing_known"] = True``.
    - ``"slice": k`` takes slice k (last axis) of a 3D volume; its affine is moved to that slice.

    ``normalize=True``: a 3D volume is min-max normalised to [0, 1] over the whole volume *before* slicing, as SSL4MIS
    did when it wrote its slices; stored 2D slices (SSL4MIS h5) were normalised that way already, so they are only
    checked to lie in [0, 1] (else an error: the slice is not SSL4MIS-preprocessed).

    Every problem (unreadable file, missing dataset, wrong dimensionality, image/label shape mismatch, label values
    outside 0..3 or non-integer, NaN/inf, constant image, slice index out of range) raises InputDataError naming the
    file. Small in-plane sizes and all-background labels are accepted.

    Args:
        keys: the image key, optionally followed by the label key (``("image",)`` for inference).
        ndim: 2 if the item must yield a 2D slice (training), 3 for a 3D volume (validation/test).
        normalize: see above.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        ndim: int = 2,
        normalize: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if not 1 <= len(self.keys) <= 2:
            raise ValueError(f"keys must be (image_key,) or (image_key, label_key), got {self.keys}")
        if ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got {ndim}")
        self.ndim = ndim
        self.normalize = normalize
        self._load_image = LoadImage(image_only=True, dtype=None)
        self._nibabel = NibabelReader()

    def _read(self, path: str, dataset: str, h5_cache: dict[str, h5py.File]) -> tuple[np.ndarray, dict]:
        """(array in (X, Y[, Z]) order, meta) of ``path``; ``dataset`` names the h5 dataset ("image"/"label")."""
        if not Path(path).is_file():
            raise InputDataError(path, "file not found")
        if path.endswith((".h5", ".hdf5")):
            try:
                if path not in h5_cache:
                    h5_cache[path] = h5py.File(path, "r")
                h5 = h5_cache[path]
                if dataset not in h5:
                    raise InputDataError(path, f"missing dataset {dataset!r} in h5 file (has {sorted(h5.keys())})")
                array = h5[dataset][()]
            except InputDataError:
                raise
            except Exception as error:  # h5py raises OSError/KeyError/RuntimeError for truncated or corrupt files
                raise InputDataError(
                    path, f"cannot read h5 file, truncated or corrupt? ({_short_reason(error)})"
                ) from None
            meta = {"affine": torch.eye(4, dtype=torch.float64), "spacing_known": False}
            return np.transpose(array), meta  # SimpleITK's (Z, Y, X) / (Y, X) -> (X, Y, Z) / (X, Y)
        try:
            # nibabel is called directly for NIfTI so its own error surfaces (LoadImage would hide it behind ITK's).
            reader = self._nibabel if path.endswith(_NIFTI_SUFFIXES) else None
            image = self._load_image(path, reader=reader)
            array = convert_to_numpy(image)
        except Exception as error:  # readers raise many types (ImageFileError, EOFError, zlib/gzip, RuntimeError)
            raise InputDataError(
                path, f"cannot read image file, truncated or corrupt? ({_short_reason(error)})"
            ) from None
        meta = {k: v for k, v in image.meta.items() if k != "affine"}
        meta.update(affine=image.affine.clone(), spacing_known=True)
        return array, meta

    @staticmethod
    def _to_metatensor(array: np.ndarray, meta: dict, path: str, slice_index: int | None) -> MetaTensor:
        affine = meta.pop("affine")
        if slice_index is not None:  # origin of slice k = origin + k * (third column of the affine)
            affine = affine.clone()
            affine[:3, 3] += affine[:3, 2] * slice_index
        meta.update({"filename_or_obj": path, "spatial_shape": np.asarray(array.shape)})
        return MetaTensor(torch.from_numpy(np.ascontiguousarray(array[None])), affine=affine, meta=meta)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys or keys[0] != self.keys[0]:
            raise KeyError(f"item has no image key {self.keys[0]!r}: {sorted(map(str, d))}")
        image_key, label_key = keys[0], (keys[1] if len(keys) > 1 else None)
        image_path = str(d[image_key])
        slice_index = d.get("slice")
        if slice_index is not None and self.ndim != 2:
            raise InputDataError(
                image_path, f"slice item (slice {slice_index}) given to a loader with ndim={self.ndim}"
            )
        stored_ndim = 3 if slice_index is not None else self.ndim
        h5_cache: dict[str, h5py.File] = {}
        try:
            image, image_meta = self._read(image_path, "image", h5_cache)
            check_image(image, image_path, stored_ndim)
            if label_key is not None:
                label_path = str(d[label_key])
                label, label_meta = self._read(label_path, "label", h5_cache)
        finally:
            for h5 in h5_cache.values():
                h5.close()
            # drop the File objects now: a traceback keeping them alive until interpreter exit lets h5py deallocate
            # them during final garbage collection, which can deadlock the process after the error was reported
            h5_cache.clear()
        image = image.astype(np.float32)
        if self.normalize and stored_ndim == 3:
            low, high = image.min(), image.max()
            image = (image - low) / (high - low)
        elif self.normalize and (image.min() < 0 or image.max() > 1):
            raise InputDataError(
                image_path,
                f"2D slice with values in [{image.min():g}, {image.max():g}], not [0, 1]: not SSL4MIS-preprocessed "
                "(SSL4MIS slices are min-max normalised per volume; give the volume with a 'slice' index instead)",
            )
        if label_key is not None:
            check_label(label, label_path)
            check_pair(image.shape, label.shape, label_path)
            label = label.astype(np.uint8)
        if slice_index is not None:
            depth = image.shape[-1]
            if isinstance(slice_index, bool) or not isinstance(slice_index, (int, np.integer)):
                raise InputDataError(image_path, f"slice index must be an integer, got {slice_index!r}")
            if not 0 <= slice_index < depth:
                raise InputDataError(image_path, f"slice index {slice_index} out of range (volume has {depth} slices)")
            image = image[..., slice_index]
            if label_key is not None:
                label = label[..., slice_index]
        d[image_key] = self._to_metatensor(image, image_meta, image_path, slice_index)
        if label_key is not None:
            d[label_key] = self._to_metatensor(label, label_meta, label_path, slice_index)
        return d


# --------------------------------------------------------------------------------------------------- augmentation --


class RandRotFlipOrRotate:
    """The paper's training augmentation (SSL4MIS ``RandomGenerator``), applied to a whole batch on its device.

    Per sample, independently: with probability ``p_rot_flip`` ``rot90`` by k in 0..3 then a flip along a random axis,
    as the reference does (that is one of the 4 reflections of the square, uniformly: never a pure rotation);
    otherwise, with probability ``p_rotate`` (of all samples), a rotation by an angle uniform in +-``max_degrees``
    about the centre, nearest neighbour, zero padding, same size (``ndimage.rotate(order=0, reshape=False)``);
    otherwise unchanged. Image and label are resampled
    together with nearest neighbour (as the reference does for both), so labels stay in 0..3 and rot90/flip are exact.

    Hand-written instead of MONAI's per-sample dict transforms (``RandRotate90d``/``RandAxisFlipd``/``RandRotated`` in a
    ``OneOf``, this bundle's first version): those run per sample in DataLoader workers and capped the full pipeline at
    471 img/s for UNet on an H100 (bare training step 828 img/s). Here the batch stays on the GPU (cached there by
    ``CacheDataset``) and the whole augmentation is one batched resampling through MONAI's ``AffineTransform``.
    Random numbers come from torch's global CPU generator, so ``set_determinism(seed)`` makes runs repeatable.

    Call: ``image`` (B, C, H, W) float, ``label`` (B, 1, H, W) -> both augmented, same shapes and dtypes; H must equal W
    (rot90 of a non-square patch would change its shape).
    """

    def __init__(self, max_degrees: float = 20.0, p_rot_flip: float = 0.5, p_rotate: float = 0.25) -> None:
        if not (0 <= p_rot_flip <= 1 and 0 <= p_rotate <= 1 - p_rot_flip):
            raise ValueError(f"need 0 <= p_rot_flip and 0 <= p_rotate <= 1 - p_rot_flip, got {p_rot_flip}, {p_rotate}")
        self.max_radians = float(np.deg2rad(max_degrees))
        self.p_rot_flip = p_rot_flip
        self.p_rotate = p_rotate
        # normalized coordinates with align_corners=False: on a square grid, quarter turns and flips map pixel centres
        # exactly onto pixel centres, so nearest-neighbour sampling reproduces torch.rot90/flip bit for bit.
        self.resample = AffineTransform(normalized=True, mode="nearest", padding_mode="zeros", align_corners=False)

    def random_matrices(self, batch: int) -> torch.Tensor:
        """(batch, 2, 2) float64 in-plane matrices drawn per sample as described in the class docstring."""
        choice = torch.rand(batch, dtype=torch.float64)
        quarter_turns = torch.randint(0, 4, (batch,))
        flip_axis = torch.randint(0, 2, (batch,))
        angle = (torch.rand(batch, dtype=torch.float64) * 2 - 1) * self.max_radians
        rot_flip = choice < self.p_rot_flip
        rotate = ~rot_flip & (choice < self.p_rot_flip + self.p_rotate)
        angle = torch.where(rot_flip, quarter_turns * (np.pi / 2), torch.where(rotate, angle, torch.zeros_like(angle)))
        cos, sin = torch.cos(angle), torch.sin(angle)
        cos = torch.where(rot_flip, cos.round(), cos)  # exact 0/+-1 for quarter turns (cos(pi/2) is 6e-17, not 0)
        sin = torch.where(rot_flip, sin.round(), sin)
        rotation = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
        flip = torch.ones(batch, 2, dtype=torch.float64)
        flip[rot_flip, flip_axis[rot_flip]] = -1.0
        return rotation @ torch.diag_embed(flip)

    def __call__(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if (
            image.dim() != 4
            or label.dim() != 4
            or image.shape[0] != label.shape[0]
            or image.shape[2:] != label.shape[2:]
        ):
            raise ValueError(
                f"augmentation expects image (B, C, H, W) and label (B, 1, H, W) of one size, got {tuple(image.shape)} "
                f"and {tuple(label.shape)}"
            )
        if image.shape[2] != image.shape[3]:
            raise ValueError(f"augmentation needs square patches (rot90), got {tuple(image.shape[2:])}: set patch_size")
        batch, channels = image.shape[:2]
        theta = torch.zeros(batch, 2, 3, dtype=torch.float64)
        theta[:, :, :2] = self.random_matrices(batch)
        both = torch.cat([image, label.to(image.dtype)], dim=1)
        moved = self.resample(both, theta.to(device=image.device, dtype=torch.float32))
        return moved[:, :channels].to(image.dtype), moved[:, channels:].to(label.dtype)


class PrepareAugmentedBatch(PrepareBatch):
    """SupervisedTrainer ``prepare_batch``: the default (image, label) to the device, then ``augmentation`` there."""

    def __init__(self, augmentation: RandRotFlipOrRotate) -> None:
        self.augmentation = augmentation

    def __call__(
        self,
        batchdata: dict[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = PrepareBatchDefault()(batchdata, device, non_blocking, **kwargs)
        return self.augmentation(image, label)
