"""Bad input through `python -m monai.bundle run ...`: one clear line naming the file, and nothing written."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import BUNDLE_ROOT, bundle_cli, config_list


def write_ssl4mis(root: Path, n_slices: int = 4, n_volumes: int = 2) -> None:
    """A tiny valid SSL4MIS h5 layout (2D slices for training, 3D volumes for validation)."""
    rng = np.random.default_rng(0)
    (root / "data" / "slices").mkdir(parents=True)
    slices = [f"patient{i:03d}_frame01_slice_1" for i in range(1, n_slices + 1)]
    volumes = [f"patient{i:03d}_frame01" for i in range(50, 50 + n_volumes)]
    for name in slices:
        with h5py.File(root / "data" / "slices" / f"{name}.h5", "w") as f:
            f["image"] = rng.random((40, 48), dtype=np.float32)
            f["label"] = rng.integers(0, 4, (40, 48), dtype=np.uint8)
    for name in volumes:
        with h5py.File(root / "data" / f"{name}.h5", "w") as f:
            f["image"] = rng.random((3, 40, 48), dtype=np.float32)
            f["label"] = rng.integers(0, 4, (3, 40, 48), dtype=np.uint8)
    (root / "train_slices.list").write_text("\n".join(slices) + "\n")
    (root / "val.list").write_text("\n".join(volumes) + "\n")


def corrupt_truncate(root: Path) -> Path:
    path = root / "data" / "slices" / "patient002_frame01_slice_1.h5"
    path.write_bytes(path.read_bytes()[:300])
    return path


def corrupt_label(root: Path) -> Path:
    path = root / "data" / "patient050_frame01.h5"
    with h5py.File(path, "r+") as f:
        f["label"][0, 0, 0] = 7
    return path


def corrupt_nan(root: Path) -> Path:
    path = root / "data" / "slices" / "patient003_frame01_slice_1.h5"
    with h5py.File(path, "r+") as f:
        f["image"][5, 5] = np.nan
    return path


def missing_list(root: Path) -> Path:
    path = root / "val.list"
    path.unlink()
    return path


@pytest.mark.parametrize(
    "corrupt, problem",
    [(corrupt_truncate, "h5"), (corrupt_label, "label"), (corrupt_nan, "NaN"), (missing_list, "not found")],
    ids=["truncated-h5", "label-7", "nan", "missing-list"],
)
def test_training_stops_with_one_clear_line_and_writes_nothing(tmp_path, corrupt, problem):
    data = tmp_path / "data"
    write_ssl4mis(data)
    bad = corrupt(data)
    out = tmp_path / "out"
    result = bundle_cli(
        "run", "training", "--config_file", config_list("train.json"), "--bundle_root", str(BUNDLE_ROOT),
        "--dataset_dir", str(data), "--ckpt_dir", str(out / "models"), "--log_dir", str(out / "logs"),
        "--output_dir", str(out / "eval"), "--max_iterations", "2", "--val_interval", "2", "--batch_size", "2",
        "--patch_size", "[32,32]", "--num_workers", "0", check=False,
    )  # fmt: skip
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert str(bad) in errors[0] and problem.lower() in errors[0].lower(), errors[0]
    assert "Traceback" not in result.stderr
    assert not out.exists(), f"outputs were written despite bad input: {list(out.rglob('*'))}"
