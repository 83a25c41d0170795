"""configs/multi_gpu_train.json with torchrun: two gloo processes on the CPU train, validate and checkpoint once."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import BUNDLE_ROOT, config_list


def _ddp_training(tmp_path, network_configs=(), patch="[32,32]", extra=()) -> subprocess.CompletedProcess:
    """torchrun, 2 gloo processes: train.json + demo.json (+ network configs) + multi_gpu_train.json, 4 iterations."""
    env = dict(os.environ, PYTHONPATH=str(BUNDLE_ROOT), OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="1")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
        "-m", "monai.bundle", "run", "training",
        "--config_file", config_list("train.json", "demo.json", *network_configs, "multi_gpu_train.json"),
        "--meta_file", str(BUNDLE_ROOT / "configs" / "metadata.json"),
        "--bundle_root", str(BUNDLE_ROOT), "--dataset_dir", str(tmp_path / "phantom"),
        "--ckpt_dir", str(tmp_path / "models"), "--log_dir", str(tmp_path / "logs"), "--output_dir", str(tmp_path / "eval"),
        "--max_iterations", "4", "--val_interval", "2", "--batch_size", "4", "--patch_size", patch, *extra,
    ]  # fmt: skip
    return subprocess.run(cmd, cwd=BUNDLE_ROOT, env=env, capture_output=True, text=True, timeout=600)


# U-Mamba_Bot without deep supervision leaves its lower heads without gradient: DDP must be told (the config asks the
# network), or the second iteration fails with "Expected to have finished reduction in the prior iteration".
# (U-Mamba needs 64x64 here: at 32x32 its bottleneck is 1x1, where InstanceNorm cannot train.)
@pytest.mark.parametrize(
    "network_configs, patch",
    [([], "[32,32]"), (["networks/umamba_bot.json"], "[64,64]")],
    ids=["mamba_unet", "umamba_bot"],
)
def test_two_process_ddp_training_on_cpu(tmp_path, network_configs, patch):
    result = _ddp_training(tmp_path, network_configs, patch)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-6000:]
    latest = torch.load(tmp_path / "models" / "latest.pt", map_location="cpu", weights_only=True)
    assert latest["iteration"] == 4  # 4 iterations of the global batch 4 = 2 per process
    assert not any(k.startswith("module.") for k in latest["network"]), "DDP wrapper leaked into the checkpoint"
    assert (tmp_path / "models" / "model.pt").exists()
    reports = [line for line in log.splitlines() if "Metrics --" in line and "val_mean_dice:" in line]
    assert len(reports) == 2, "validation should be reported by rank 0 only, once per period"
    assert log.count("Got new best metric of val_mean_dice") <= 2, "rank > 0 engine loggers should be quiet"


def test_time_limit_stops_both_processes_at_the_same_period(tmp_path):
    # if the ranks decided apart, one would wait forever in the next all-reduce (the 600 s timeout would fail the test)
    result = _ddp_training(tmp_path, extra=["--time_limit_s", "1"])
    log = result.stdout + result.stderr
    # torchrun itself exits 1 and may SIGTERM the second worker as soon as the first has exited 75
    assert result.returncode != 0 and "exitcode  : 75" in log, log[-6000:]
    assert log.count("Time limit: stopping at iteration 2 of 4") == 1, "rank 0 alone should log the stop"
    assert torch.load(tmp_path / "models" / "latest.pt", map_location="cpu", weights_only=True)["iteration"] == 2
