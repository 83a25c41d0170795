"""Model-Zoo style unit test of the bundle's three workflows (the layout of the zoo's ci/unit_tests/test_<bundle>.py).

Each workflow is built with ``ConfigWorkflow`` exactly as the zoo's runner does, then ``check_workflow`` runs
initialize -> check_properties -> run -> finalize. Data: the synthetic ACDC-layout phantom (NIfTI), shrunk to 32x32
network inputs and two training iterations so the whole file runs in well under a minute on a CPU.
Runs under pytest here, and unchanged with ``python ci/unit_tests/runner.py --b mamba_unet_acdc_segmentation``.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import unittest
from pathlib import Path

from monai.bundle import ConfigWorkflow

# In this repository the bundle is the parent of tests/; copied into the zoo's ci/unit_tests/, the zoo layout applies.
_PARENT = Path(__file__).resolve().parents[1]
BUNDLE_ROOT = (
    str(_PARENT) if (_PARENT / "configs" / "metadata.json").is_file() else "models/mamba_unet_acdc_segmentation"
)
if BUNDLE_ROOT not in sys.path:
    sys.path.insert(0, BUNDLE_ROOT)  # like the zoo tests of bundles with scripts/: `scripts.*` must import

PHANTOM = {"num_cases": 5, "image_size": (48, 48), "num_slices": 2}  # 5 cases: 3 train, 1 val, 1 test
DATALIST = (
    "$scripts.data.datalist(@data_source, @dataset_dir, '{split}', "
    + ", ".join(f"{key}={value!r}" for key, value in PHANTOM.items())
    + ")"
)

TINY_RUN = {  # a small phantom, 32x32 inputs, batch 2, two iterations with one validation at the end
    "bundle_root": BUNDLE_ROOT,
    "data_source": "phantom",
    "train#datalist": DATALIST.format(split="train"),
    "validate#datalist": DATALIST.format(split="val"),
    "patch_size": [32, 32],
    "batch_size": 2,
    "max_iterations": 2,
    "val_interval": 2,
    "num_workers": 0,
    "resume": False,
}

TEST_CASE_TRAIN_EVAL = dict(TINY_RUN)
# the curves a user opens in TensorBoard: loss and LR per iteration, Dice per validation (mean and per class)
TENSORBOARD_TAGS = {"train_loss", "learning_rate", "val_mean_dice", "val_dice_rv", "val_dice_myo", "val_dice_lv"}

TEST_CASE_INFER = {
    "bundle_root": BUNDLE_ROOT,
    "patch_size": [32, 32],
    "handlers#0#_disabled_": True,  # do not load weights (the zoo's inference tests run on random weights)
}


def logged_scalar_tags(log_dir: str) -> set[str]:
    """Scalar tags in the TensorBoard event files under log_dir."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: set[str] = set()
    for event_file in Path(log_dir).glob("events.out.tfevents.*"):
        tags |= set(EventAccumulator(str(event_file)).Reload().Tags()["scalars"])
    return tags


def check_workflow(workflow: ConfigWorkflow, check_properties: bool = False) -> None:
    """The zoo's ci/unit_tests/utils.py check: initialize, (check the property ids), run, finalize."""
    workflow.initialize()
    if check_properties:
        check_result = workflow.check_properties()
        if check_result:
            raise ValueError(f"check properties for workflow failed: {check_result}")
    workflow.run()
    workflow.finalize()


def test_order(test_name1: str, test_name2: str) -> int:
    """Train/evaluate before inference, as in the zoo's tests (the runner sorts test methods with this)."""

    def get_order(name: str) -> int:
        return next((rank for rank, word in enumerate(("train", "eval", "infer")) if word in name), 3)

    return get_order(test_name1) - get_order(test_name2)


test_order.__test__ = False  # a sort key the zoo's runner looks up by this name, not a test for pytest


class TestMambaUNetACDCSeg(unittest.TestCase):
    def setUp(self) -> None:
        self.work_dir = tempfile.mkdtemp()
        self.dataset_dir = os.path.join(self.work_dir, "phantom")
        self.outputs = {
            "dataset_dir": self.dataset_dir,
            "ckpt_dir": os.path.join(self.work_dir, "models"),
            "output_dir": os.path.join(self.work_dir, "eval"),
            "log_dir": os.path.join(self.work_dir, "logs"),
        }
        import scripts.data

        scripts.data.write_phantom(self.dataset_dir, **PHANTOM)  # the datalists above then reuse it as it is

    def tearDown(self) -> None:
        shutil.rmtree(self.work_dir)

    def workflow(self, workflow_type: str, config_files: list[str], override: dict) -> ConfigWorkflow:
        configs = os.path.join(BUNDLE_ROOT, "configs")
        return ConfigWorkflow(
            workflow_type=workflow_type,
            config_file=[os.path.join(configs, name) for name in config_files],
            logging_file=os.path.join(configs, "logging.conf"),
            meta_file=os.path.join(configs, "metadata.json"),
            **override,
            **self.outputs,
        )

    def test_train_eval_config(self) -> None:
        override = dict(TEST_CASE_TRAIN_EVAL)
        check_workflow(self.workflow("train", ["train.json"], override), check_properties=True)
        self.assertTrue(os.path.isfile(os.path.join(self.outputs["ckpt_dir"], "model.pt")), "no best checkpoint")
        self.assertLessEqual(TENSORBOARD_TAGS, logged_scalar_tags(self.outputs["log_dir"]))
        # evaluate.json overrides train.json, so it is checked as a "train" workflow (as the zoo does)
        check_workflow(self.workflow("train", ["train.json", "evaluate.json"], override), check_properties=True)
        reports = list(Path(self.outputs["output_dir"]).glob("evaluation_val_*/summary.json"))
        self.assertEqual(len(reports), 1, f"expected one evaluation report, found {reports}")

    def test_infer_config(self) -> None:
        check_workflow(self.workflow("infer", ["inference.json"], dict(TEST_CASE_INFER)), check_properties=True)
        predictions = list(Path(self.outputs["output_dir"]).glob("inference_*/*_seg.nii.gz"))
        images = [p for p in Path(self.dataset_dir).rglob("*.nii.gz") if not p.name.endswith("_gt.nii.gz")]
        self.assertEqual(len(predictions), len(images), "inference must write one segmentation per input image")


if __name__ == "__main__":
    loader = unittest.TestLoader()
    loader.sortTestMethodsUsing = test_order
    unittest.main(testLoader=loader)
