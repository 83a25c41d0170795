"""Reliability: bad input on the evaluation and inference paths, SIGKILL + resume, seeded reproducibility, NaN guard, bf16.

The training path's bad-input CLI cases are in test_bad_input_cli.py and every problem is checked once at the loader
level in test_data.py; here each other path gets a few representative CLI cases plus the legitimate edge cases
(all-background volume, volume smaller than the network's minimum size) run in-process through the real configs.
A 16-channel, one-block-per-stage MambaUNet (same code, ~100x cheaper than the paper's) keeps everything in seconds.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import BUNDLE_ROOT, bundle_cli, config_list
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser
from monai.handlers import from_engine
from test_bad_input_cli import write_ssl4mis

from scripts.data import InputDataError, find_input_error, write_phantom
from scripts.networks.mamba_unet import MambaUNet
from scripts.training import NonFiniteLossError, ResumableCheckpoint, StopOnNonFiniteLoss

CONFIGS = BUNDLE_ROOT / "configs"
TINY_NET = {"embed_dim": 16, "depths": [1, 1, 1, 1], "d_state": 4}
TINY_NET_ARGS = [arg for key, value in TINY_NET.items() for arg in (f"--network_def#{key}", json.dumps(value))]
SMALL_RUN = {"patch_size": [32, 32], "batch_size": 2, "num_workers": 0}


def parse_bundle(configs: list[str], overrides: dict[str, Any]) -> ConfigParser:
    """A fresh ConfigParser of `configs` with the tiny network on CPU and `overrides` (ids like "network_def#x")."""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / name) for name in configs])
    parser.update({"bundle_root": str(BUNDLE_ROOT), "device": "$torch.device('cpu')"})
    parser.update({f"network_def#{key}": value for key, value in TINY_NET.items()})
    parser.update(overrides)
    return parser


def save_tiny_model(ckpt_dir: Path) -> Path:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(MambaUNet(in_channels=1, out_channels=4, **TINY_NET).state_dict(), ckpt_dir / "model.pt")
    return ckpt_dir / "model.pt"


def single_error_line(result: subprocess.CompletedProcess) -> str:
    """The run failed with exactly one "ERROR: <path>: <problem>" line on stderr and no traceback there."""
    assert result.returncode != 0, result.stdout[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return errors[0]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread: the tiny network gains nothing from more, and on a shared 2-core machine two threads per
    process oversubscribe the cores and run ~50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    """The demo's phantom (default size, as train.json + demo.json ask for it), written once for this module."""
    root = tmp_path_factory.mktemp("phantom")
    write_phantom(root)
    return root


# ------------------------------------------------------------------------------------------------ evaluation path --


def _truncate_volume(data: Path) -> Path:
    path = data / "data" / "patient051_frame01.h5"
    path.write_bytes(path.read_bytes()[:400])
    return path


def _slice_as_volume(data: Path) -> Path:
    path = data / "data" / "patient050_frame01.h5"
    with h5py.File(path, "r+") as f:
        image, label = f["image"][0], f["label"][0]
        del f["image"], f["label"]
        f["image"], f["label"] = image, label
    return path


@pytest.mark.parametrize(
    "corrupt, problem",
    [(_truncate_volume, "cannot read h5"), (_slice_as_volume, "expected a 3D volume")],
    ids=["truncated-h5", "2D-volume"],
)
def test_evaluation_stops_with_one_clear_line_and_writes_no_report(tmp_path, corrupt, problem):
    data = tmp_path / "data"
    write_ssl4mis(data)
    bad = corrupt(data)
    save_tiny_model(tmp_path / "models")
    result = bundle_cli(
        "run", "evaluating", "--config_file", config_list("train.json", "evaluate.json"), *TINY_NET_ARGS,
        "--bundle_root", str(BUNDLE_ROOT), "--dataset_dir", str(data), "--ckpt_dir", str(tmp_path / "models"),
        "--output_dir", str(tmp_path / "eval"), "--log_dir", str(tmp_path / "logs"), "--patch_size", "[32,32]",
        "--num_workers", "0", check=False,
    )  # fmt: skip
    error = single_error_line(result)
    assert str(bad) in error and problem in error, error
    assert not (tmp_path / "eval").exists(), list((tmp_path / "eval").rglob("*"))


def test_evaluation_reports_all_background_and_small_volumes(tmp_path):
    """An all-background 20x20 volume (smaller than the 32x32 patch) is legitimate: evaluated, counted as empty."""
    data = tmp_path / "data"
    write_ssl4mis(data, n_volumes=2)
    rng = np.random.default_rng(1)
    with h5py.File(data / "data" / "patient051_frame01.h5", "w") as f:
        f["image"] = rng.random((3, 20, 20), dtype=np.float32)
        f["label"] = np.zeros((3, 20, 20), np.uint8)
    save_tiny_model(tmp_path / "models")
    parser = parse_bundle(
        ["train.json", "evaluate.json"],
        {
            "dataset_dir": str(data), "ckpt_dir": str(tmp_path / "models"), "output_dir": str(tmp_path / "eval"),
            **SMALL_RUN,
        },
    )  # fmt: skip
    evaluator = parser.get_parsed_content("validate#evaluator")
    evaluator.run()
    (report,) = (tmp_path / "eval").glob("evaluation_val_*")
    summary = json.loads((report / "summary.json").read_text())
    assert summary["empty_mask_events"]["total"]["gt_empty"] >= 3  # RV, MYO and LV are all absent in that volume
    rows = (report / "metrics_per_case.csv").read_text().splitlines()
    assert sum("patient051_frame01" in row for row in rows) == 3, rows


# ------------------------------------------------------------------------------------------------- inference path --


def _nifti(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([1.5, 1.5, 10.0, 1.0])), path)
    return path


_GOOD = np.random.default_rng(0).uniform(0, 500, (24, 20, 3)).astype(np.float32)
_NAN = _GOOD.copy()
_NAN[3, 4, 1] = np.nan
INFERENCE_BAD = {
    "NaN": (_NAN, "1 NaN"),
    "2D": (_GOOD[..., 0], "expected a 3D volume"),
    "4D": (np.stack([_GOOD, _GOOD], -1), "4D"),
    "constant": (np.full((24, 20, 3), 5.0, np.float32), "constant image"),
}


@pytest.mark.parametrize("case", INFERENCE_BAD)
def test_inference_preprocessing_rejects_bad_volumes(tmp_path, case):
    """inference.json's own preprocessing (as parsed from the config) names the file and the problem."""
    array, problem = INFERENCE_BAD[case]
    path = _nifti(tmp_path / "case.nii.gz", array)
    preprocessing = parse_bundle(["inference.json"], {"patch_size": [32, 32]}).get_parsed_content("preprocessing")
    with pytest.raises(Exception) as raised:
        preprocessing({"image": str(path)})
    error = find_input_error(raised.value)
    assert isinstance(error, InputDataError) and error.path == str(path) and problem in error.problem, raised.value


def _corrupt_gzip(folder: Path) -> Path:
    path = _nifti(folder / "case.nii.gz", _GOOD)
    path.write_bytes(gzip.compress(b"not a NIfTI header at all")[:-4])
    return path


def _empty_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    return folder


@pytest.mark.parametrize(
    "make_input, problem",
    [(_corrupt_gzip, "cannot read"), (_empty_folder, "no NIfTI images")],
    ids=["corrupt-gzip", "empty-folder"],
)
def test_inference_stops_with_one_clear_line_and_writes_no_prediction(tmp_path, make_input, problem):
    bad = make_input(tmp_path / "input")
    save_tiny_model(tmp_path / "models")
    result = bundle_cli(
        "run", "evaluating", "--config_file", str(CONFIGS / "inference.json"), *TINY_NET_ARGS,
        "--bundle_root", str(BUNDLE_ROOT), "--dataset_dir", str(tmp_path / "input"),
        "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "eval"), "--patch_size", "[32,32]",
        check=False,
    )  # fmt: skip
    error = single_error_line(result)
    assert str(bad) in error and problem in error, error
    assert not (tmp_path / "eval").exists(), list((tmp_path / "eval").rglob("*"))


def test_inference_on_a_volume_smaller_than_the_patch(tmp_path):
    """A 20x20 volume (below the network's 32x32 minimum) is resized in and out: the labels keep its geometry."""
    image = _nifti(tmp_path / "input" / "small.nii.gz", _GOOD[2:22, :, :])
    save_tiny_model(tmp_path / "models")
    parser = parse_bundle(
        ["inference.json"],
        {
            "dataset_dir": str(tmp_path / "input"), "ckpt_dir": str(tmp_path / "models"), "output_dir": str(tmp_path),
            "patch_size": [32, 32],
        },
    )  # fmt: skip
    parser.get_parsed_content("evaluator").run()
    (prediction,) = tmp_path.glob("inference_*/small_seg.nii.gz")
    assert nib.load(prediction).shape == nib.load(image).shape == (20, 20, 3)


# --------------------------------------------------------------------------------------------------------- resume --


def _latest(ckpt_dir: Path) -> dict | None:
    try:
        return torch.load(ckpt_dir / "latest.pt", map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None


def _training_command(work: Path, phantom: Path, max_iterations: int) -> list[str]:
    """`run training` of the tiny network on the phantom, 32x32, batch 2, validation every 2 iterations, in `work`."""
    return [
        sys.executable, "-m", "monai.bundle", "run", "training",
        "--config_file", config_list("train.json", "demo.json"), *TINY_NET_ARGS,
        "--bundle_root", str(BUNDLE_ROOT), "--dataset_dir", str(phantom), "--ckpt_dir", str(work / "models"),
        "--output_dir", str(work / "eval"), "--log_dir", str(work / "logs"), "--max_iterations", str(max_iterations),
        "--val_interval", "2", "--batch_size", "2", "--patch_size", "[32,32]", "--num_workers", "0",
    ]  # fmt: skip


def test_sigkill_then_rerun_resumes_from_the_last_checkpoint(tmp_path, phantom):
    work = tmp_path / "run"
    args = _training_command(work, phantom, max_iterations=16)
    env = dict(os.environ, PYTHONPATH=str(BUNDLE_ROOT), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    with open(tmp_path / "first.log", "w") as log:
        process = subprocess.Popen(args, cwd=BUNDLE_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 180
            while (state := _latest(work / "models")) is None or state["iteration"] < 4:
                assert process.poll() is None, f"training ended early:\n{(tmp_path / 'first.log').read_text()[-3000:]}"
                assert time.monotonic() < deadline, "no checkpoint at iteration >= 4 within 180 s"
                time.sleep(0.05)
            assert process.poll() is None, "training finished before it could be killed"
            os.kill(process.pid, signal.SIGKILL)
        finally:
            process.kill()
            process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL

    killed = _latest(work / "models")  # whatever the kill interrupted, the file on disk is a complete checkpoint
    assert 4 <= killed["iteration"] < 16 and killed["epoch"] == killed["iteration"] // 2
    best_at_kill = hashlib.sha256((work / "models" / "model.pt").read_bytes()).hexdigest()

    rerun = subprocess.run(args, cwd=BUNDLE_ROOT, env=env, capture_output=True, text=True, timeout=300)
    log = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, log[-3000:]
    assert f"Resumed from {work / 'models' / 'latest.pt'} at iteration {killed['iteration']}" in log, log[-3000:]
    final = _latest(work / "models")
    assert final["iteration"] == 16 and final["lr_scheduler"]["last_epoch"] == 16
    assert final["best_metric"] >= killed["best_metric"]
    if final["best_iteration"] == killed["best_iteration"]:  # no better model after the restart: model.pt untouched
        assert hashlib.sha256((work / "models" / "model.pt").read_bytes()).hexdigest() == best_at_kill
    assert {p.name for p in (work / "models").glob("*.pt")} == {"latest.pt", "model.pt"}  # no stray checkpoint
    MambaUNet(in_channels=1, out_channels=4, **TINY_NET).load_state_dict(
        torch.load(work / "models" / "model.pt", map_location="cpu", weights_only=True)
    )


def test_time_limit_ends_the_command_resumably_and_the_rerun_finishes(tmp_path, phantom):
    work = tmp_path / "run"
    args = _training_command(work, phantom, max_iterations=4)
    env = dict(os.environ, PYTHONPATH=str(BUNDLE_ROOT), OMP_NUM_THREADS="1")
    # 1 s: start-up alone passes it, so the run stops after its first validation period, right after the save
    first = subprocess.run(args + ["--time_limit_s", "1"], cwd=BUNDLE_ROOT, env=env, capture_output=True, text=True)
    log = first.stdout + first.stderr
    assert first.returncode == 75, log[-3000:]
    assert "Time limit: stopping at iteration 2 of 4" in log and "Training finished" not in log, log[-3000:]
    assert _latest(work / "models")["iteration"] == 2

    rerun = subprocess.run(args, cwd=BUNDLE_ROOT, env=env, capture_output=True, text=True)
    log = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, log[-3000:]
    assert "Training finished at iteration 4" in log and "in 2 segment(s)" in log, log[-3000:]
    final = _latest(work / "models")
    assert final["iteration"] == 4 and final["segments"] == 2 and final["train_seconds"] > 0


# ------------------------------------------------------------------------------------------------ reproducibility --


def _first_losses(phantom: Path, work: Path, seed: int, stop_after: int = 50) -> list[float]:
    """Losses of the first `stop_after` iterations of train.json + demo.json (50-iteration schedule), built afresh."""
    parser = parse_bundle(
        ["train.json", "demo.json"],
        {
            "dataset_dir": str(phantom), "ckpt_dir": str(work / "models"), "log_dir": str(work / "logs"),
            "max_iterations": 50, "val_interval": 50, "seed": seed, **SMALL_RUN,
        },
    )  # fmt: skip
    parser.get_parsed_content("initialize")  # set_determinism(seed=@seed), as `monai.bundle run` does first
    trainer = parser.get_parsed_content("train#trainer")
    losses: list[float] = []

    @trainer.on(Events.ITERATION_COMPLETED)
    def _record(engine: Engine) -> None:
        losses.append(float(from_engine(["loss"], first=True)(engine.state.output)))
        if len(losses) == stop_after:
            engine.terminate()

    trainer.run()
    return losses


def test_same_seed_gives_the_same_first_50_losses_on_cpu(tmp_path, phantom):
    first = _first_losses(phantom, tmp_path / "a", seed=1337)
    second = _first_losses(phantom, tmp_path / "b", seed=1337)
    assert len(first) == 50 and all(np.isfinite(first))
    assert first == second  # bitwise: CPU kernels here are deterministic
    other = _first_losses(phantom, tmp_path / "c", seed=7, stop_after=5)
    assert other != first[:5]


# ------------------------------------------------------------------------------------------------------ NaN guard --


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, phantom):
    parser = parse_bundle(
        ["train.json", "demo.json"],
        {
            "dataset_dir": str(phantom), "ckpt_dir": str(tmp_path / "models"), "log_dir": str(tmp_path / "logs"),
            "max_iterations": 4, "val_interval": 2, **SMALL_RUN,
        },
    )  # fmt: skip
    trainer = parser.get_parsed_content("train#trainer")
    network = parser.get_parsed_content("network")

    def poison_from_iteration_3(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
        return output * float("nan") if trainer.state.iteration >= 3 else None

    network.register_forward_hook(poison_from_iteration_3)
    with pytest.raises(NonFiniteLossError) as raised:
        trainer.run()
    latest = tmp_path / "models" / "latest.pt"
    message = str(raised.value)
    assert "loss is nan at iteration 3" in message and f"{latest} (iteration 2) is kept" in message, message
    kept = torch.load(latest, map_location="cpu", weights_only=True)
    assert kept["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in kept["network"].values() if v.is_floating_point())


def _linear_run(ckpt_dir: Path, poison_at: int) -> Engine:
    """Two iterations per epoch; at iteration `poison_at` a weight becomes inf while the loss stays finite."""
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=100)

    def step(engine: Engine, batch: torch.Tensor) -> dict:
        if engine.state.iteration == poison_at:
            with torch.no_grad():
                net.weight[0, 0] = float("inf")
        return {"loss": torch.tensor(0.5)}

    trainer = Engine(step)
    StopOnNonFiniteLoss(str(ckpt_dir), net, output_transform=lambda out: out["loss"]).attach(trainer)
    ResumableCheckpoint(str(ckpt_dir), net, opt, sched).attach(trainer)  # after the guard, as in train.json
    trainer.run([torch.zeros(1, 3)] * 2, max_epochs=3)
    return trainer


def test_non_finite_weights_are_never_saved_as_latest(tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"weights became non-finite by iteration 4 .*weight"):
        _linear_run(tmp_path, poison_at=3)
    kept = torch.load(tmp_path / "latest.pt", weights_only=True)
    assert kept["iteration"] == 2 and torch.isfinite(kept["network"]["weight"]).all()
    with pytest.raises(NonFiniteLossError, match="No checkpoint was saved yet"):
        _linear_run(tmp_path / "fresh", poison_at=1)
    assert not (tmp_path / "fresh" / "latest.pt").exists()


# ----------------------------------------------------------------------------------------------------------- bf16 --


@pytest.mark.parametrize("scale", [1.0, 1e3, 1e5])
def test_bf16_autocast_is_finite_where_fp32_is(scale):
    """CPU bf16 autocast on large intensities and a long sequence (64x64 -> 256 tokens at stage 1): the selective
    scan accumulates in fp32, so bf16 may be less precise but never non-finite where fp32 is finite."""
    torch.manual_seed(0)
    net = MambaUNet(in_channels=1, out_channels=4, **TINY_NET).eval()
    x = torch.randn(1, 1, 64, 64) * scale
    with torch.no_grad():
        reference = net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(x)
    assert torch.isfinite(reference).all()
    assert torch.isfinite(low).all(), f"bf16 produced {(~torch.isfinite(low)).sum()} non-finite logits at x{scale}"
    agreement = (low.float().argmax(1) == reference.argmax(1)).float().mean()
    assert agreement > 0.9, f"bf16 and fp32 argmax agree on only {agreement:.2%} of pixels"
