"""Tests of scripts/compare.py: two networks trained and evaluated on the phantom, tabulated, not re-run; failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import BUNDLE_ROOT

from scripts import compare

# seconds on a CPU: the demo config at 32x32, batch 2, 4 iterations with validation every 2
TINY = ["--max_iterations", "4", "--val_interval", "2", "--batch_size", "2", "--patch_size", "[32,32]"]
DEMO = ["--configs", str(BUNDLE_ROOT / "configs" / "demo.json")]


@pytest.fixture(scope="module")
def compared(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("compare")
    status = compare.main(
        ["--networks", "unet,mamba_unet", "--out", str(work / "runs"), *DEMO, "--dataset_dir", str(work / "phantom")]
        + TINY
    )
    assert status == 0
    return work


def test_each_network_is_trained_evaluated_and_tabulated(compared):
    runs = compared / "runs"
    rows = {row["network"]: row for row in json.loads((runs / "comparison.json").read_text())}
    assert set(rows) == {"unet", "mamba_unet"}
    assert rows["unet"]["parameters"] == 1_813_764 and rows["mamba_unet"]["parameters"] == 19_121_664
    for name, row in rows.items():
        record = json.loads((runs / name / "run.json").read_text())
        assert record["status"] == "done" and record["iteration"] == 4 and record["iterations_trained"] == 4
        assert record["best_iteration"] in (2, 4) and record["batch_size"] == 2
        assert record["segments"] == 1 and 0 < record["train_seconds"] < record["train_wall_s"]
        assert record["train_img_per_s"] == pytest.approx(8 / record["train_seconds"])
        summary = json.loads((runs / record["report"]).read_text())
        assert row["mean"]["Dice"] == summary["mean"]["Dice"]["mean"]
        assert 0.0 <= row["mean"]["Dice"] <= 1.0
        assert (runs / name / "models" / "model.pt").is_file() and (runs / name / "train.log").is_file()
    table = (runs / "comparison.md").read_text()
    assert "| unet | 1,813,764 | " in table and "| mamba_unet | 19,121,664 | " in table
    assert "HD95/ASD in mm" in table  # the phantom is NIfTI with spacing


def test_finished_networks_are_not_run_again(compared, capsys):
    log = compared / "runs" / "unet" / "train.log"
    before = log.stat().st_mtime_ns
    args = ["--networks", "unet", "--out", str(compared / "runs"), *DEMO, "--dataset_dir", str(compared / "phantom")]
    assert compare.main(args + TINY) == 0
    assert log.stat().st_mtime_ns == before
    assert "| unet | 1,813,764 | " in capsys.readouterr().out


def test_a_failing_run_stops_with_its_log_and_keeps_finished_ones(compared, tmp_path, capsys):
    runs = compared / "runs"
    table_before = (runs / "comparison.md").read_text()
    missing = tmp_path / "no_such_acdc"
    args = ["--networks", "swin_unet", "--out", str(runs), "--data_source", "ssl4mis", "--dataset_dir", str(missing)]
    assert compare.main(args + TINY) == 1
    err = capsys.readouterr().err
    assert "ERROR: training of swin_unet failed" in err and str(missing) in err
    assert json.loads((runs / "swin_unet" / "run.json").read_text())["status"] == "failed"
    assert (runs / "comparison.md").read_text() == table_before  # only finished networks are tabulated


def test_a_time_limited_training_stops_resumably_and_the_rerun_completes_it(compared, tmp_path, capsys):
    runs = tmp_path / "runs"
    args = ["--networks", "unet", "--out", str(runs), *DEMO, "--dataset_dir", str(compared / "phantom"), *TINY]
    assert compare.main(args + ["--time_limit_s", "1"]) == 75  # start-up alone passes 1 s: stops after period 1
    assert "STOPPED: training of unet stopped by its time limit at iteration 2" in capsys.readouterr().err
    record = json.loads((runs / "unet" / "run.json").read_text())
    assert record["status"] == "interrupted" and record["iteration"] == 2 and record["segments"] == 1

    # a failure after the stop is a failure (the earlier command's stop line in the same log does not count)
    failing = ["--networks", "unet", "--out", str(runs), *DEMO, "--dataset_dir", str(tmp_path / "missing"), *TINY]
    assert compare.main(failing + ["--data_source", "ssl4mis"]) == 1
    assert json.loads((runs / "unet" / "run.json").read_text())["status"] == "failed"

    assert compare.main(args) == 0
    record = json.loads((runs / "unet" / "run.json").read_text())
    assert record["status"] == "done" and record["iteration"] == 4 and record["segments"] == 2
    assert record["iterations_trained"] == 2  # by the resuming command; train_seconds covers both
    assert record["train_img_per_s"] == pytest.approx(4 * 2 / record["train_seconds"])
    # train.log keeps every command's output, each after its own header
    log = (runs / "unet" / "train.log").read_text()
    assert log.count("=== ") == 3 and compare.TIME_LIMIT_STOP in log and "Resumed from" in log


def test_an_evaluation_without_a_report_is_a_command_failure(tmp_path):
    with pytest.raises(compare.CommandFailed, match="evaluation wrote no report") as failure:
        compare._newest_report(tmp_path)
    assert failure.value.status == 1


def test_command_line_is_checked_and_overrides_parsed():
    with pytest.raises(SystemExit):
        compare.main(["--networks", "no_such_net"])
    with pytest.raises(SystemExit):
        compare.main(["--table_only", "--out", "/nonexistent/compare"])
    overrides = compare._cli_overrides(["--patch_size", "[32,32]", "--amp", "True", "--device", "$torch.device('cpu')"])
    assert overrides == {"patch_size": [32, 32], "amp": True, "device": "$torch.device('cpu')"}
    command = compare.bundle_command("training", [Path("a.json")], ["--x", "1"], nproc=2)
    assert command[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
