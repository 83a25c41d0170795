"""MONAI Label on this bundle: the tasks its `monaibundle` app builds for a bundle, on phantom studies.

`BundleTrainTask` (MONAI Label's training path: it overrides ``train#dataset#data``, ``train#trainer#max_epochs``,
``train#handlers``, ``device`` and ``bundle_root`` of configs/train.json and calls ``monai.bundle.run("run")``) trains a
few iterations from a MONAI Label `LocalDatastore`; `BundleInferTask` (built on configs/inference.json) segments a NIfTI
volume. Skipped when monailabel is not installed (setup_env.sh installs it with WITH_DEV=1 or WITH_MONAILABEL=1).
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import BUNDLE_ROOT

pytest.importorskip("monailabel")

# ITK's SWIG types, imported by MONAI Label's result writer, warn on every import of an ITK module under Python 3.11+
pytestmark = pytest.mark.filterwarnings("ignore:builtin type .* has no __module__ attribute:DeprecationWarning")

# tiny run on the CPU: 32x32 patches, batch 2, a validation period of 2 iterations, the loss logged every iteration
TINY_TRAIN_OVERRIDES = {"patch_size": [32, 32], "batch_size": 2, "val_interval": 2, "log_interval": 1, "num_workers": 0}
# inference at 64x64 instead of 224x224 (a test-sized run, as tests/test_workflow.py does with --patch_size)
TINY_INFER_OVERRIDES = {"patch_size": [64, 64]}
LABEL_VALUES = {0, 1, 2, 3}


def _torchvision_placeholder() -> dict[str, types.ModuleType]:
    """``torchvision`` + ``torchvision.utils`` modules whose ``make_grid``/``save_image`` raise when called.

    Why: ``monailabel.transform.post`` (imported by the bundle infer task) imports these two functions at module level
    for its 2D-thumbnail transforms, which the bundle path never calls; PyPI's torchvision is a CUDA build that cannot
    be imported next to the CPU torch of this environment. Calling either raises, so a code path of this test that
    needed torchvision would fail instead of passing silently.
    """

    def unavailable(*args, **kwargs):
        raise RuntimeError("torchvision is not installed (tests/test_monailabel.py placeholder)")

    torchvision, utils = types.ModuleType("torchvision"), types.ModuleType("torchvision.utils")
    utils.make_grid = utils.save_image = unavailable
    torchvision.utils = utils
    return {"torchvision": torchvision, "torchvision.utils": utils}


@pytest.fixture(scope="module")
def monailabel_env() -> Iterator[None]:
    """Imports of MONAI Label's bundle tasks, undone afterwards.

    The tasks put the bundle folder first on ``sys.path`` and drop ``scripts.*`` from ``sys.modules`` to import the
    bundle's own ``scripts``; ``monai.bundle.run`` applies the bundle's logging.conf to the root logger. Both are
    restored here so later tests see this checkout's ``scripts`` modules and the logging they started with.
    """
    saved_scripts = {k: m for k, m in sys.modules.items() if k == "scripts" or k.startswith("scripts.")}
    saved_path, saved_handlers, saved_level = list(sys.path), list(logging.root.handlers), logging.root.level
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MAMBA_UNET_SCAN", "torch")  # the pure-PyTorch selective scan (no mamba-ssm on a CPU)
        try:
            import torchvision.utils  # noqa: F401
        except Exception:  # absent, or a CUDA build that fails to load its operators next to a CPU torch
            for name, module in _torchvision_placeholder().items():
                patch.setitem(sys.modules, name, module)
        yield
    for name in [k for k in sys.modules if k == "scripts" or k.startswith("scripts.")]:
        del sys.modules[name]
    sys.modules.update(saved_scripts)
    sys.path[:] = saved_path
    for handler in [h for h in logging.root.handlers if h not in saved_handlers]:
        logging.root.removeHandler(handler)
        handler.close()
    for handler in saved_handlers:
        if handler not in logging.root.handlers:
            logging.root.addHandler(handler)
    logging.root.setLevel(saved_level)


@pytest.fixture(scope="module")
def studies(tmp_path_factory, monailabel_env) -> Path:
    """A MONAI Label local datastore: 3 phantom volumes (48 x 40 x 3) with final labels in ``labels/final``."""
    from scripts.data import write_phantom

    work = tmp_path_factory.mktemp("monailabel")
    write_phantom(work / "phantom", num_cases=5, image_size=(48, 40), num_slices=3)
    root = work / "studies"
    (root / "labels" / "final").mkdir(parents=True)
    for image in sorted((work / "phantom").rglob("*_frame01.nii.gz"))[:3]:
        shutil.copy(image, root / image.name)
        label = image.with_name(image.name.replace(".nii.gz", "_gt.nii.gz"))
        shutil.copy(label, root / "labels" / "final" / image.name)  # a datastore label has its image's name
    return root


def make_bundle(folder: Path, inference_overrides: dict | None = None) -> Path:
    """A copy of this bundle (configs/ + scripts/, empty models/) in ``folder``: MONAI Label writes into models/.

    ``inference_overrides``: top-level keys replaced in the copy's configs/inference.json (the infer task reads the
    file as it is, with no override mechanism).
    """
    ignore = shutil.ignore_patterns("__pycache__")
    for name in ("configs", "scripts"):
        shutil.copytree(BUNDLE_ROOT / name, folder / name, ignore=ignore)
    if inference_overrides:
        config_file = folder / "configs" / "inference.json"
        config = json.loads(config_file.read_text())
        missing = set(inference_overrides) - set(config)
        assert not missing, f"inference.json has no {sorted(missing)}"
        config_file.write_text(json.dumps({**config, **inference_overrides}, indent=4) + "\n")
    (folder / "models").mkdir()
    return folder


def test_bundle_train_task_trains_from_the_datastore(studies, tmp_path, capfd):
    from monailabel.datastore.local import LocalDatastore
    from monailabel.tasks.train.bundle import BundleTrainTask

    from scripts.networks.mamba_unet import MambaUNet

    class TinyBundleTrainTask(BundleTrainTask):
        def _update_overrides(self, overrides: dict) -> dict:  # MONAI Label's hook for extra overrides
            overrides.update(TINY_TRAIN_OVERRIDES)
            return overrides

    bundle = make_bundle(tmp_path / "bundle")
    task = TinyBundleTrainTask(str(bundle), {})
    assert task.is_valid()
    datastore = LocalDatastore(str(studies), extensions=["*.nii.gz"])
    assert len(datastore.datalist()) == 3
    # max_epochs = validation periods of val_interval iterations: 2 x 2 = 4 iterations; 2 volumes train, 1 validates
    request = {"model": "mamba_unet_acdc", "max_epochs": 2, "val_split": 0.34, "device": "cpu", "multi_gpu": False}
    task(request, datastore)

    output = "".join(capfd.readouterr())
    losses = [float(v) for v in re.findall(r"train_loss: (\S+)", output)]
    assert len(losses) == 4, f"expected 4 logged training losses, got {losses}\n{output[-3000:]}"
    assert all(math.isfinite(v) for v in losses), losses
    assert "val_mean_dice" in output
    latest = torch.load(bundle / "models" / "latest.pt", map_location="cpu", weights_only=True)
    assert (latest["iteration"], latest["epoch"]) == (4, 2)
    best = torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    MambaUNet(in_channels=1, out_channels=4).load_state_dict(best)  # the plain state dict the infer task loads


def test_bundle_infer_task_segments_a_nifti_volume(studies, tmp_path):
    from monailabel.tasks.infer.bundle import BundleInferTask

    from scripts.networks.mamba_unet import MambaUNet

    bundle = make_bundle(tmp_path / "bundle", TINY_INFER_OVERRIDES)
    torch.manual_seed(0)
    torch.save(MambaUNet(in_channels=1, out_channels=4).state_dict(), bundle / "models" / "model.pt")
    # strict: with the app's default (False) weights that do not fit the network would only be warned about
    task = BundleInferTask(str(bundle), {}, load_strict=True)
    assert task.is_valid()
    assert task.labels == {"right ventricle": 1, "myocardium": 2, "left ventricle": 3}  # from metadata.json

    image_path = sorted(studies.glob("*.nii.gz"))[0]
    result_file, result = task({"image": str(image_path), "device": "cpu"})
    try:
        prediction, image = nib.load(result_file), nib.load(image_path)
        assert prediction.shape == image.shape == (48, 40, 3)
        np.testing.assert_allclose(prediction.affine, image.affine, atol=1e-5)
        values = np.unique(np.asarray(prediction.dataobj))
        assert set(values.tolist()) <= LABEL_VALUES, values
        assert result["label_names"] == task.labels
    finally:
        Path(result_file).unlink(missing_ok=True)  # MONAI Label writes the result to a temporary file
