"""Tests of scripts/data.py: split, datalists (SSL4MIS h5, official ACDC NIfTI, nnU-Net, phantom), loader, validation."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Compose, LoadImaged

from scripts.data import (
    DEFAULT_SPLIT_FILE,
    InputDataError,
    LoadACDCd,
    PrepareAugmentedBatch,
    RandRotFlipOrRotate,
    TrainingSliceDataset,
    ValidateImaged,
    acdc_nifti_datalist,
    check_image,
    check_label,
    check_pair,
    datalist,
    find_input_error,
    load_split,
    nnunet_datalist,
    phantom_datalist,
    read_info_cfg,
    save_split,
    split_from_ssl4mis_lists,
    ssl4mis_datalist,
    training_slices,
    write_phantom,
)

SMALL_PHANTOM = {"num_cases": 5, "image_size": (48, 44), "num_slices": 5}  # non-square: catches swapped axes


def _write_h5(path: Path, image: np.ndarray, label: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=image)
        if label is not None:
            f.create_dataset("label", data=label)
    return path


def _write_nifti(path: Path, array: np.ndarray, spacing=(1.5, 1.5, 10.0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), path)
    return path


def _write_split(path: Path, train: list[str], val: list[str], test: list[str]) -> Path:
    save_split({"train": train, "val": val, "test": test}, path)
    return path


def _volume(shape=(20, 18, 4), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """(image float32 in 100..1000, label uint8 with all classes), both (X, Y, Z)."""
    rng = np.random.default_rng(seed)
    image = rng.uniform(100, 1000, shape).astype(np.float32)
    label = rng.integers(0, 4, shape).astype(np.uint8)
    return image, label


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantom")
    write_phantom(root, **SMALL_PHANTOM)
    return root


# ----------------------------------------------------------------------------------------------------------- split --


def test_committed_split_is_the_papers():
    split = load_split()
    assert [len(split[name]) for name in ("train", "val", "test")] == [70, 10, 20]
    assert not set(split["train"]) & set(split["val"]) | set(split["train"]) & set(split["test"])
    assert split["val"] == sorted(f"patient{i:03d}" for i in (2, 19, 28, 30, 39, 45, 78, 82, 85, 87))
    assert DEFAULT_SPLIT_FILE.read_text() == json.dumps(split, indent=4) + "\n"


def test_committed_split_matches_ssl4mis_lists(acdc_dir):
    assert split_from_ssl4mis_lists(acdc_dir) == load_split()


def test_load_split_rejects_overlap_and_bad_json(tmp_path):
    overlap = _write_split(tmp_path / "overlap.json", ["patient001"], ["patient001"], ["patient002"])
    with pytest.raises(InputDataError, match="overlap.json: patient001 is listed in both"):
        load_split(overlap)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(InputDataError, match="bad.json: split file is not valid json"):
        load_split(tmp_path / "bad.json")
    with pytest.raises(InputDataError, match="missing.json: split file not found"):
        load_split(tmp_path / "missing.json")


# -------------------------------------------------------------------------------------------------------- phantom --


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def test_phantom_is_deterministic_and_seed_dependent(tmp_path, phantom_root):
    write_phantom(tmp_path / "again", **SMALL_PHANTOM)
    digest = _tree_digest(phantom_root)
    assert _tree_digest(tmp_path / "again") == digest
    assert len([name for name in digest if name.endswith(".nii.gz")]) == 4 * SMALL_PHANTOM["num_cases"]
    write_phantom(tmp_path / "other", seed=1, **SMALL_PHANTOM)
    other = _tree_digest(tmp_path / "other")
    assert other["patient001/patient001_frame01.nii.gz"] != digest["patient001/patient001_frame01.nii.gz"]


def test_phantom_is_reused_rewritten_and_never_overwrites_real_data(tmp_path):
    root = tmp_path / "ph"
    write_phantom(root, **SMALL_PHANTOM)
    image = root / "patient001" / "patient001_frame01.nii.gz"
    stamp = image.stat().st_mtime_ns
    write_phantom(root, **SMALL_PHANTOM)
    assert image.stat().st_mtime_ns == stamp  # same parameters: nothing rewritten
    write_phantom(root, **{**SMALL_PHANTOM, "num_slices": 3})
    assert nib.load(image).shape == (48, 44, 3)
    real = tmp_path / "real"
    (real / "patient001").mkdir(parents=True)
    with pytest.raises(InputDataError, match="refusing to overwrite"):
        write_phantom(real, **SMALL_PHANTOM)


def test_phantom_split_sizes(tmp_path, phantom_root):
    small = load_split(phantom_root / "phantom_split.json")
    assert [len(small[name]) for name in ("train", "val", "test")] == [1, 2, 2]
    dozen = load_split(write_phantom(tmp_path, num_cases=12, image_size=(16, 16), num_slices=2))
    assert [len(dozen[name]) for name in ("train", "val", "test")] == [8, 2, 2]
    assert len(phantom_datalist(phantom_root, "train", **SMALL_PHANTOM)) == 2 * SMALL_PHANTOM["num_slices"]
    assert len(phantom_datalist(phantom_root, "test", **SMALL_PHANTOM)) == 4


def test_phantom_content_follows_acdc_conventions(phantom_root):
    lv_volumes = {}
    for case_dir in sorted(phantom_root.glob("patient*")):
        frames = read_info_cfg(case_dir / "Info.cfg")
        assert frames["ED"] == 1 and frames["ES"] > 1
        for phase, frame in frames.items():
            image_file = case_dir / f"{case_dir.name}_frame{frame:02d}.nii.gz"
            image, label = nib.load(image_file), nib.load(str(image_file).replace(".nii.gz", "_gt.nii.gz"))
            assert image.header.get_zooms() == (1.5, 1.5, 10.0) and image.get_data_dtype() == np.uint16
            assert label.get_data_dtype() == np.uint8
            pixels, labels = np.asarray(image.dataobj), np.asarray(label.dataobj)
            assert pixels.max() > 100  # raw scanner-like range, not normalised
            assert set(np.unique(labels[..., SMALL_PHANTOM["num_slices"] // 2])) == {0, 1, 2, 3}
            lv = labels == 3  # the myocardium encloses the LV cavity: no LV pixel touches background or RV
            for axis in (0, 1):
                for shift in (1, -1):
                    assert not np.any(lv & (np.roll(labels, shift, axis) < 2))
            assert pixels[labels == 3].mean() > 2 * pixels[labels == 2].mean()  # bright blood, dark myocardium
            lv_volumes[case_dir.name, phase] = int(lv.sum())
    for name, _ in lv_volumes:
        assert lv_volumes[name, "ES"] < lv_volumes[name, "ED"]


def test_loader_keeps_nifti_spacing(phantom_root):
    item = phantom_datalist(phantom_root, "val", **SMALL_PHANTOM)[0]
    out = LoadACDCd(ndim=3)(item)
    assert tuple(out["image"].pixdim.tolist()) == (1.5, 1.5, 10.0)
    assert out["image"].meta["spacing_known"] is True
    assert out["image"].shape == (1, 48, 44, SMALL_PHANTOM["num_slices"]) and out["label"].dtype == torch.uint8


# ------------------------------------------------------------------------------------------------------ datalists --


@pytest.fixture()
def ssl4mis_dir(tmp_path) -> Path:
    """SSL4MIS layout: 2 training slices (Y, X) = (6, 5), one val volume (Z, Y, X) = (3, 6, 5)."""
    rng = np.random.default_rng(0)
    for name in ("patient001_frame01_slice_0", "patient001_frame01_slice_1"):
        _write_h5(tmp_path / "data" / "slices" / f"{name}.h5", rng.random((6, 5), dtype=np.float32), np.ones((6, 5)))
    volume = rng.uniform(0, 50, (3, 6, 5)).astype(np.float32)
    _write_h5(tmp_path / "data" / "patient002_frame01.h5", volume, rng.integers(0, 4, (3, 6, 5)).astype(np.uint8))
    (tmp_path / "train_slices.list").write_text("patient001_frame01_slice_0\npatient001_frame01_slice_1\n")
    (tmp_path / "val.list").write_text("patient002_frame01\n")
    return tmp_path


def test_ssl4mis_datalist_and_orientation(ssl4mis_dir):
    train = ssl4mis_datalist(ssl4mis_dir, "train")
    assert [item["case"] for item in train] == ["patient001_frame01_slice_0", "patient001_frame01_slice_1"]
    assert train[0]["image"] == train[0]["label"] == str(ssl4mis_dir / "data/slices/patient001_frame01_slice_0.h5")
    out = LoadACDCd(ndim=2)(train[0])
    with h5py.File(train[0]["image"]) as f:
        stored = f["image"][()]  # (Y, X)
    assert out["image"].shape == (1, 5, 6) and out["image"].dtype == torch.float32
    np.testing.assert_array_equal(out["image"][0].numpy(), stored.T)  # 2D h5 slices: only range-checked
    assert out["image"].meta["spacing_known"] is False and out["case"] == "patient001_frame01_slice_0"
    assert out["image"].meta["filename_or_obj"] == train[0]["image"]

    (val,) = datalist("ssl4mis", ssl4mis_dir, "val")
    volume = LoadACDCd(ndim=3)(val)
    with h5py.File(val["image"]) as f:
        image, label = f["image"][()], f["label"][()]  # (Z, Y, X)
    assert volume["image"].shape == volume["label"].shape == (1, 5, 6, 3)
    expected = (image - image.min()) / (image.max() - image.min())
    np.testing.assert_allclose(volume["image"][0].numpy(), expected.transpose(2, 1, 0), rtol=1e-6)
    np.testing.assert_array_equal(volume["label"][0].numpy(), label.transpose(2, 1, 0))


def test_slice_item_is_slice_of_normalised_volume(tmp_path):
    image, label = _volume()
    _write_nifti(tmp_path / "v.nii.gz", image)
    _write_nifti(tmp_path / "v_gt.nii.gz", label)
    item = {"image": str(tmp_path / "v.nii.gz"), "label": str(tmp_path / "v_gt.nii.gz"), "case": "v"}
    volume = LoadACDCd(ndim=3)(item)["image"][0].numpy()
    assert volume.min() == 0.0 and volume.max() == 1.0
    for k in range(image.shape[2]):
        out = LoadACDCd(ndim=2)({**item, "slice": k})
        np.testing.assert_array_equal(out["image"][0].numpy(), volume[..., k])
        np.testing.assert_array_equal(out["label"][0].numpy(), label[..., k])
        assert out["image"].affine[2, 3] == 10.0 * k  # the slice's affine points at slice k
    raw = LoadACDCd(ndim=2, normalize=False)({**item, "slice": 1})["image"][0].numpy()
    np.testing.assert_array_equal(raw, image[..., 1])
    only_image = LoadACDCd(keys=("image",), ndim=3)({"image": item["image"]})
    assert set(only_image) == {"image"} and only_image["image"].shape == (1, 20, 18, 4)


def test_training_slices_expand_whole_volumes_only(tmp_path):
    """MONAI Label hands training whole volumes: each 3D NIfTI becomes its slices; slice items, 2D images, h5 pass."""
    image, label = _volume()
    volume = {"image": str(_write_nifti(tmp_path / "patient007_frame01.nii.gz", image)), "label": "lbl.nii.gz"}
    flat = {"image": str(_write_nifti(tmp_path / "flat.nii.gz", image[..., 0])), "label": "flat_gt.nii.gz"}
    given_slice = {"image": volume["image"], "label": "lbl.nii.gz", "slice": 2, "case": "c"}
    h5_slice = {"image": str(tmp_path / "s.h5"), "label": str(tmp_path / "s.h5")}  # not opened: h5 items pass as is
    items = training_slices([volume, flat, given_slice, h5_slice])
    assert items[:4] == [{**volume, "case": "patient007", "slice": k} for k in range(4)]
    assert items[4:] == [flat, given_slice, h5_slice]

    dataset = TrainingSliceDataset([volume], transform=LoadACDCd(keys=("image",)), progress=False)
    assert len(dataset) == 4 and dataset[3]["image"].shape == (1, 20, 18)

    with pytest.raises(InputDataError, match="empty data list"):
        training_slices([])
    with pytest.raises(InputDataError, match="without an 'image' path"):
        training_slices([{"label": "x.nii.gz"}])
    with pytest.raises(InputDataError, match="missing.nii.gz: file not found"):
        training_slices([{"image": str(tmp_path / "missing.nii.gz")}])
    four_d = tmp_path / "cine_4d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 2, 3), np.float32), np.eye(4)), four_d)
    with pytest.raises(InputDataError, match="cine_4d.nii.gz: wrong dimensionality"):
        training_slices([{"image": str(four_d)}])
    (tmp_path / "corrupt.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(InputDataError, match="corrupt.nii.gz: cannot read NIfTI header"):
        training_slices([{"image": str(tmp_path / "corrupt.nii.gz")}])


def _acdc_patient(folder: Path, pid: str, ed: int = 1, es: int = 7, shape=(12, 10, 3)) -> None:
    for frame in (ed, es):
        image, label = _volume(shape, seed=frame)
        _write_nifti(folder / pid / f"{pid}_frame{frame:02d}.nii.gz", image)
        _write_nifti(folder / pid / f"{pid}_frame{frame:02d}_gt.nii.gz", label)
    (folder / pid / "Info.cfg").write_text(f"ED: {ed}\nES: {es}\nGroup: DCM\nHeight: 180.0\nNbFrame: 30\n")


def test_acdc_nifti_datalist_searches_training_and_testing(tmp_path):
    _acdc_patient(tmp_path / "training", "patient001")
    _acdc_patient(tmp_path / "testing", "patient101", es=12)
    split = _write_split(tmp_path / "split.json", ["patient001", "patient101", "patient050"], ["patient002"], [])
    train = acdc_nifti_datalist(tmp_path, "train", split)  # patient050 absent: skipped
    assert len(train) == 4 * 3
    assert {item["case"] for item in train} == {
        "patient001_frame01",
        "patient001_frame07",
        "patient101_frame01",
        "patient101_frame12",
    }
    assert train[0] == {
        "image": str(tmp_path / "training/patient001/patient001_frame01.nii.gz"),
        "label": str(tmp_path / "training/patient001/patient001_frame01_gt.nii.gz"),
        "slice": 0,
        "case": "patient001_frame01",
    }
    assert len(acdc_nifti_datalist(tmp_path / "training", "train", split)) == 2 * 3
    assert len(acdc_nifti_datalist(tmp_path / "testing", "train", split)) == 2 * 3
    with pytest.raises(InputDataError, match="no patient of split 'val' found"):
        acdc_nifti_datalist(tmp_path, "val", split)


def _nnunet_dataset(root: Path, labels: dict) -> Path:
    image, label = _volume((12, 10, 3))
    for folder, case in (("Tr", "patient001_frame01"), ("Tr", "patient001_frame12"), ("Ts", "patient101_frame01")):
        _write_nifti(root / f"images{folder}" / f"{case}_0000.nii.gz", image)
        _write_nifti(root / f"labels{folder}" / f"{case}.nii.gz", label)
    spec = {"channel_names": {"0": "cineMRI"}, "labels": labels, "numTraining": 2, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(spec))
    return root


def test_nnunet_datalist(tmp_path):
    root = _nnunet_dataset(tmp_path / "Dataset027_ACDC", {"background": 0, "RV": 1, "MLV": 2, "LVC": 3})
    split = _write_split(tmp_path / "split.json", ["patient001"], ["patient101"], ["patient003"])
    train = nnunet_datalist(root, "train", split)
    assert len(train) == 2 * 3 and train[0]["label"] == str(root / "labelsTr/patient001_frame01.nii.gz")
    assert nnunet_datalist(root, "val", split) == [
        {
            "image": str(root / "imagesTs/patient101_frame01_0000.nii.gz"),
            "label": str(root / "labelsTs/patient101_frame01.nii.gz"),
            "case": "patient101_frame01",
        }
    ]
    assert LoadACDCd(ndim=2)(train[4])["image"].shape == (1, 12, 10)
    with pytest.raises(InputDataError, match="no case of split 'test'"):
        nnunet_datalist(root, "test", split)
    _nnunet_dataset(root, {"background": 0, "myocardium": 1, "RV": 2, "LV": 3})  # BraTS-like mix-up
    with pytest.raises(InputDataError, match=r"dataset.json: labels .* do not match ACDC"):
        nnunet_datalist(root, "train", split)
    _nnunet_dataset(root, {"0": "background", "1": "right ventricle", "2": "myocardium", "3": "left ventricle"})
    assert len(nnunet_datalist(root, "train", split)) == 6  # nnU-Net v1 style {value: name}


def test_datalist_rejects_unknown_source_and_split(tmp_path):
    with pytest.raises(InputDataError, match="unknown data source 'msd'"):
        datalist("msd", tmp_path, "train")
    with pytest.raises(InputDataError, match="unknown split 'training'"):
        datalist("ssl4mis", tmp_path, "training")


# ------------------------------------------------------------------------------------------------------ real data --


def test_real_ssl4mis_data(acdc_dir):  # acdc_dir (conftest.py) skips when the real data are absent
    train, val = ssl4mis_datalist(acdc_dir, "train"), ssl4mis_datalist(acdc_dir, "val")
    assert len(train) == 1312 and len(val) == 20
    assert {item["case"].split("_slice")[0][:10] for item in train} == set(load_split()["train"])
    out = LoadACDCd(ndim=2)(train[0])
    with h5py.File(train[0]["image"]) as f:
        height, width = f["image"].shape
    assert out["image"].shape == out["label"].shape == (1, width, height)
    assert out["image"].dtype == torch.float32 and out["label"].dtype == torch.uint8
    assert 0 <= out["image"].min() < out["image"].max() <= 1 and set(out["label"].unique().tolist()) <= {0, 1, 2, 3}
    volume = LoadACDCd(ndim=3)(val[0])
    with h5py.File(val[0]["image"]) as f:
        depth, height, width = f["image"].shape
    assert volume["image"].shape == volume["label"].shape == (1, width, height, depth)
    assert volume["image"].min() == 0 and volume["image"].max() == 1
    assert set(volume["label"].unique().tolist()) == {0, 1, 2, 3}
    if not any((acdc_dir / "data").glob("patient001_frame01.h5")):  # test volumes are held out here
        with pytest.raises(InputDataError, match=r"test.list: entry 'patient0\d\d_frame0\d' has no file"):
            ssl4mis_datalist(acdc_dir, "test")


# -------------------------------------------------------------------------------------------------- bad-input matrix --


def _h5_item(tmp_path: Path, image: np.ndarray, label: np.ndarray | None, name="bad.h5") -> dict:
    path = _write_h5(tmp_path / name, image, label)
    return {"image": str(path), "label": str(path), "case": "bad"}


def _nifti_item(tmp_path: Path, image: np.ndarray, label: np.ndarray) -> dict:
    return {
        "image": str(_write_nifti(tmp_path / "img.nii.gz", image)),
        "label": str(_write_nifti(tmp_path / "img_gt.nii.gz", label)),
        "case": "img",
    }


def _truncated_h5(tmp_path: Path) -> dict:
    item = _h5_item(tmp_path, np.random.default_rng(0).random((64, 64), dtype=np.float32), np.zeros((64, 64)))
    data = Path(item["image"]).read_bytes()
    Path(item["image"]).write_bytes(data[: len(data) // 2])
    return item


def _corrupt_nifti(tmp_path: Path, kind: str) -> dict:
    image, label = _volume()
    item = _nifti_item(tmp_path, image, label)
    path = Path(item["image"])
    if kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(2000))
    else:
        path.write_bytes(path.read_bytes()[:-300])  # truncated gzip stream
    return item


def _image_case(image: np.ndarray, label: np.ndarray | None = None):
    return lambda tmp_path: _nifti_item(tmp_path, image, label if label is not None else np.zeros(image.shape, "u1"))


def _with(array: np.ndarray, index, value) -> np.ndarray:
    array = array.copy()
    array[index] = value
    return array


_IMAGE, _LABEL = _volume()
BAD_ITEMS = {
    "truncated h5": (_truncated_h5, 2, "bad.h5", "cannot read h5"),
    "corrupt nifti": (lambda p: _corrupt_nifti(p, "random"), 3, "img.nii.gz", "cannot read"),
    "truncated nifti": (lambda p: _corrupt_nifti(p, "truncated"), 3, "img.nii.gz", "cannot read"),
    "missing file": (
        lambda p: {"image": str(p / "gone.nii.gz"), "label": str(p / "gone.nii.gz")},
        3,
        "gone",
        "not found",
    ),
    "h5 without label": (
        lambda p: _h5_item(p, np.zeros((4, 4)) + np.eye(4), None),
        2,
        "bad.h5",
        "missing dataset 'label'",
    ),
    "shape mismatch": (
        _image_case(_IMAGE, _LABEL[:, :-1]),
        3,
        "img_gt.nii.gz",
        r"shape mismatch.*\(20, 18, 4\).*\(20, 17, 4\)",
    ),
    "label 4": (_image_case(_IMAGE, _with(_LABEL, (0, 0, 0), 4)), 3, "img_gt.nii.gz", "outside 0..3: 4"),
    "label 1.5": (
        _image_case(_IMAGE, _with(_LABEL.astype("f4"), (0, 0, 0), 1.5)),
        3,
        "img_gt",
        "non-integer label values: 1.5",
    ),
    "NaN": (_image_case(_with(_IMAGE, (1, 2, 3), np.nan)), 3, "img.nii.gz", "1 NaN"),
    "inf": (_image_case(_with(_IMAGE, (1, 2, 3), np.inf)), 3, "img.nii.gz", "1 inf"),
    "2D where 3D expected": (_image_case(_IMAGE[..., 0]), 3, "img.nii.gz", "dimensionality: expected a 3D volume"),
    "3D where 2D expected": (_image_case(_IMAGE), 2, "img.nii.gz", "dimensionality: expected a 2D slice"),
    "4D cine": (_image_case(_IMAGE[..., None].repeat(2, -1)), 3, "img.nii.gz", "4D"),
    "constant image": (_image_case(np.full((8, 8, 3), 7.0, "f4")), 3, "img.nii.gz", "constant image"),
    "slice out of range": (
        lambda p: {**_image_case(_IMAGE)(p), "slice": 4},
        2,
        "img.nii.gz",
        "slice index 4 out of range",
    ),
    "unnormalised h5 slice": (
        lambda p: _h5_item(p, _IMAGE[..., 0], _LABEL[..., 0]),
        2,
        "bad.h5",
        "not SSL4MIS-preprocessed",
    ),
}


@pytest.mark.parametrize("case", BAD_ITEMS)
def test_bad_input_raises_input_data_error(tmp_path, case):
    make_item, ndim, file_name, problem = BAD_ITEMS[case]
    with pytest.raises(InputDataError, match=problem) as raised:
        LoadACDCd(ndim=ndim)(make_item(tmp_path))
    message = str(raised.value)
    assert file_name in message and "\n" not in message and message.startswith(str(tmp_path))


def test_bad_layouts_raise_input_data_error(tmp_path, ssl4mis_dir):
    with pytest.raises(InputDataError, match="nowhere: dataset folder not found"):
        ssl4mis_datalist(tmp_path / "nowhere", "train")
    (ssl4mis_dir / "val.list").write_text("\n")
    with pytest.raises(InputDataError, match="val.list: list file is empty"):
        ssl4mis_datalist(ssl4mis_dir, "val")
    with pytest.raises(InputDataError, match="test.list: list file not found"):
        ssl4mis_datalist(ssl4mis_dir, "test")
    (ssl4mis_dir / "train_slices.list").write_text("patient001_frame01_slice_0\npatient001_frame01_slice_9\n")
    with pytest.raises(
        InputDataError, match=r"train_slices.list: entry 'patient001_frame01_slice_9' has no file .*slice_9.h5"
    ):
        ssl4mis_datalist(ssl4mis_dir, "train")

    acdc = tmp_path / "acdc"
    split = _write_split(tmp_path / "split.json", ["patient001"], [], [])
    _acdc_patient(acdc, "patient001")
    (acdc / "patient001" / "patient001_frame07_gt.nii.gz").unlink()
    with pytest.raises(InputDataError, match="patient001_frame07_gt.nii.gz: ground-truth"):
        acdc_nifti_datalist(acdc, "train", split)
    (acdc / "patient001" / "Info.cfg").write_text("ED: 1\nES: twelve\n")
    with pytest.raises(InputDataError, match="Info.cfg: bad Info.cfg: ES must be a frame number, got 'twelve'"):
        acdc_nifti_datalist(acdc, "train", split)
    (acdc / "patient001" / "Info.cfg").write_text("ED: 1\n")
    with pytest.raises(InputDataError, match="Info.cfg: bad Info.cfg: no 'ES:' line"):
        acdc_nifti_datalist(acdc, "train", split)
    (acdc / "patient001" / "Info.cfg").write_text("ED: 1\nES: 7\n")
    with gzip.open(acdc / "patient001" / "patient001_frame07_gt.nii.gz", "wb") as broken:
        broken.write(b"not a nifti header")
    with pytest.raises(InputDataError, match="patient001_frame07.nii.gz|patient001_frame07_gt.nii.gz"):
        LoadACDCd(ndim=2)(acdc_nifti_datalist(acdc, "train", split)[-1])
    shutil.rmtree(acdc / "patient001")
    with pytest.raises(InputDataError, match="no patient of split 'train' found"):
        acdc_nifti_datalist(acdc, "train", split)


def test_check_functions_accept_edge_cases():
    check_image(np.arange(12.0).reshape(3, 4), "small.nii.gz", 2)  # tiny in-plane size: resized later, fine
    check_label(np.zeros((3, 4, 2), np.uint8), "empty_gt.nii.gz")  # all-background label is legitimate
    check_label(np.array([0.0, 3.0]), "float_gt.nii.gz")  # integer-valued floats are fine
    check_pair((3, 4), (3, 4), "pair.h5")
    with pytest.raises(InputDataError, match=r"neg_gt.nii.gz: label values outside 0..3: -1"):
        check_label(np.array([0, -1]), "neg_gt.nii.gz")


def test_validate_imaged_after_monai_loadimaged(tmp_path):
    good = _write_nifti(tmp_path / "good.nii.gz", _IMAGE)
    bad = _write_nifti(tmp_path / "nan.nii.gz", _with(_IMAGE, (0, 0, 0), np.nan))
    pipeline = Compose([LoadImaged("image", ensure_channel_first=True), ValidateImaged("image", 3, channel_first=True)])
    assert pipeline({"image": str(good)})["image"].shape == (1, 20, 18, 4)
    with pytest.raises(RuntimeError) as raised:  # MONAI's Compose wraps transform errors
        pipeline({"image": str(bad)})
    error = find_input_error(raised.value)
    assert isinstance(error, InputDataError) and error.path == str(bad) and "NaN" in error.problem
    with pytest.raises(InputDataError, match="good.nii.gz: wrong dimensionality: expected a 2D slice"):
        ValidateImaged("image", 2)(LoadImaged("image")({"image": str(good)}))
    assert str(InputDataError("a.h5: rebuilt from a worker's message")) == "a.h5: rebuilt from a worker's message"


def test_inference_datalist_skips_labels_and_cine(tmp_path):
    from scripts.data import inference_datalist

    (tmp_path / "patient001").mkdir()
    for name in ("patient001_frame01.nii.gz", "patient001_frame01_gt.nii.gz", "patient001_4d.nii.gz", "other.nii"):
        (tmp_path / "patient001" / name).write_bytes(b"")
    found = [Path(d["image"]).name for d in inference_datalist(tmp_path)]
    assert found == ["other.nii", "patient001_frame01.nii.gz"]
    assert inference_datalist(tmp_path / "patient001" / "other.nii") == [
        {"image": str(tmp_path / "patient001" / "other.nii")}
    ]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputDataError, match="no NIfTI images"):
        inference_datalist(tmp_path / "empty")
    with pytest.raises(InputDataError, match="not found"):
        inference_datalist(tmp_path / "missing")


# ---------------------------------------------------------------------------------------------- augmentation --


def _dihedral_variants(t: torch.Tensor) -> list[torch.Tensor]:
    """The 8 rot90/flip variants of a (C, H, W) tensor (the reference: rot90 by k, then a flip)."""
    turns = [torch.rot90(t, k, (1, 2)) for k in range(4)]
    return turns + [r.flip(1) for r in turns]


def test_augmentation_draws_the_reference_mix_and_keeps_image_and_label_together():
    torch.manual_seed(3)
    batch, size = 400, 12
    # Asymmetric content (an increasing ramp) so every dihedral variant is distinct; label = a function of the image.
    image = torch.arange(size * size, dtype=torch.float32).reshape(1, 1, size, size).repeat(batch, 1, 1, 1) + 1
    label = (image % 4).to(torch.float32)
    out_image, out_label = RandRotFlipOrRotate()(image, label)
    assert out_image.shape == image.shape and out_label.shape == label.shape and out_label.dtype == label.dtype
    kinds = {"unchanged": 0, "rot_flip": 0, "rotated": 0}
    variants = _dihedral_variants(image[0])
    for i in range(batch):
        if torch.equal(out_image[i], image[i]):
            kinds["unchanged"] += 1
        elif any(torch.equal(out_image[i], v) for v in variants):
            kinds["rot_flip"] += 1
        else:
            kinds["rotated"] += 1
        # nearest neighbour on both: label values stay labels and follow the image pixel for pixel
        inside = out_image[i] > 0  # zero padding appears only where a rotation leaves the field of view
        assert torch.equal(out_label[i][inside], out_image[i][inside] % 4)
        assert set(out_label[i].unique().tolist()) <= {0.0, 1.0, 2.0, 3.0}
    # reference probabilities 0.5 / 0.25 / 0.25 (small rotations round back to the identity only for tiny angles)
    assert abs(kinds["rot_flip"] / batch - 0.5) < 0.08, kinds
    assert abs(kinds["rotated"] / batch - 0.25) < 0.08 and abs(kinds["unchanged"] / batch - 0.25) < 0.08, kinds


def test_augmentation_rotations_stay_within_max_degrees_and_all_4_reflections_occur():
    torch.manual_seed(4)
    matrices = RandRotFlipOrRotate(max_degrees=20.0, p_rot_flip=0.5, p_rotate=0.5).random_matrices(2000)
    det = torch.linalg.det(matrices)
    exact = (matrices == matrices.round()).all(dim=(1, 2))  # the dihedral draws are exact 0/+-1 matrices
    assert (exact == (det < 0)).float().mean() > 0.99  # every rot_flip draw is a reflection (a flip is always applied)
    assert len({tuple(m.flatten().tolist()) for m in matrices[det < 0]}) == 4  # rot90^k then flip: 4 reflections
    angles = torch.rad2deg(torch.atan2(matrices[:, 1, 0], matrices[:, 0, 0]))[det > 0]
    assert angles.abs().max() <= 20.0 and angles.abs().max() > 19.0 and (angles > 0).any() and (angles < 0).any()


def test_augmentation_is_repeatable_under_a_seed_and_rejects_bad_shapes():
    image, label = torch.rand(6, 1, 10, 10), torch.randint(0, 4, (6, 1, 10, 10)).float()
    torch.manual_seed(11)
    first = RandRotFlipOrRotate()(image, label)
    torch.manual_seed(11)
    second = RandRotFlipOrRotate()(image, label)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    with pytest.raises(ValueError, match="square"):
        RandRotFlipOrRotate()(torch.rand(2, 1, 8, 10), torch.zeros(2, 1, 8, 10))
    with pytest.raises(ValueError, match="image .B, C, H, W."):
        RandRotFlipOrRotate()(torch.rand(2, 8, 8), torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match="p_rotate"):
        RandRotFlipOrRotate(p_rot_flip=0.8, p_rotate=0.5)


def test_prepare_augmented_batch_is_a_trainer_prepare_batch():
    torch.manual_seed(0)
    batch = {"image": torch.rand(4, 1, 8, 8), "label": torch.randint(0, 4, (4, 1, 8, 8)).float(), "case": ["a"] * 4}
    calls = []

    def recording(image, label):
        calls.append((image, label))
        return image + 1, label

    image, label = PrepareAugmentedBatch(recording)(batch, torch.device("cpu"), False)
    assert len(calls) == 1 and torch.equal(image, batch["image"] + 1) and torch.equal(label, batch["label"])
