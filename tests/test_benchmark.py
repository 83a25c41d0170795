"""CPU smoke test of scripts/benchmark.py: a tiny run of every stage (steps, scans, pipeline) and the final table."""

from __future__ import annotations

import pytest

from scripts.benchmark import COLUMNS, main


def test_tiny_cpu_run_prints_the_table(capsys):
    argv = ["--networks", "mamba_unet", "--size", "32", "--batch", "2", "--steps", "1", "--warmup", "0"]
    results = main([*argv, "--pipeline_iters", "2", "--num_workers", "0", "--device", "cpu"])
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert [cell.strip() for cell in table[0].strip("|").split("|")] == COLUMNS
    row = [cell.strip() for cell in table[2].strip("|").split("|")]
    assert row[0] == "mamba_unet" and len(row) == len(COLUMNS)
    (result,) = results
    assert result.train_ms > 0 and result.infer_ms > 0 and result.peak_gib is None  # no CUDA memory stats on CPU
    assert result.scan_fwd_ms > 0 and result.scan_fwd_bwd_ms > 0 and "14 scan calls per step" in result.notes
    assert result.pipeline_img_s > 0 and 0.0 <= result.val_dice <= 1.0
    assert row[1] == f"{2000.0 / result.train_ms:,.1f}"


def test_unknown_network_is_rejected(capsys):
    with pytest.raises(SystemExit):
        main(["--networks", "resnet"])
    assert "unknown network" in capsys.readouterr().err
