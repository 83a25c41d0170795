"""Tests of scripts/benchmark_scan.py that need no GPU: the sweep visits the configurations it names and restores
every triton_scan constant it changes."""

from __future__ import annotations

import argparse

import pytest

from scripts import benchmark_scan, triton_scan

SWEPT = ("FWD_BLOCK_D", "FWD_WARPS", "FWD_MAXNREG", "BWD_BLOCK_D", "BWD_CHUNK", "BWD_WARPS", "BWD_STEP")
SWEPT += ("BWD_MAXNREG", "BWD_REDUCE_BC")


def constants():
    return {name: getattr(triton_scan, name) for name in SWEPT}


def test_sweep_times_forward_and_backward_configurations_and_restores_constants(capsys):
    before = constants()
    rows = []

    def fake_time_backend(fn, stage, backward):
        rows.append((backward, stage, constants()))
        return 1.0

    benchmark_scan.sweep(fake_time_backend)
    assert constants() == before
    forward_rows = [c for backward, _, c in rows if not backward]
    backward_rows = [(stage, c) for backward, stage, c in rows if backward]
    assert len({(c["FWD_BLOCK_D"], c["FWD_WARPS"]) for c in forward_rows}) >= 4
    assert {c["FWD_MAXNREG"] for c in forward_rows} >= {None, 96}
    configs = {(c["BWD_BLOCK_D"], c["BWD_CHUNK"], c["BWD_STEP"]) for _, c in backward_rows}
    assert len(configs) >= 6 and {step for *_, step in configs} == {4, 8}
    assert {stage for stage, _ in backward_rows} == {None, 0, 1, 2, 3}  # the whole step and each stage
    assert any(not c["BWD_REDUCE_BC"] for _, c in backward_rows)
    assert {c["BWD_MAXNREG"] for _, c in backward_rows} >= {None, 224}
    # every backward row runs after the default forward configuration, whatever was swept last
    assert all((c["FWD_BLOCK_D"], c["FWD_WARPS"], c["FWD_MAXNREG"]) == (8, 1, None) for _, c in backward_rows)
    out = capsys.readouterr().out
    assert "maxnreg 224" in out and "stages" in out


def test_backward_only_sweep_skips_the_forward_rows():
    rows = []

    def fake_time_backend(fn, stage, backward):
        rows.append(backward)
        return 1.0

    benchmark_scan.sweep(fake_time_backend, backward_only=True)
    assert rows and all(rows)


def test_tile_option_parses_known_constants_and_rejects_the_rest():
    assert benchmark_scan.parse_tile("BWD_MAXNREG=224") == ("BWD_MAXNREG", 224)
    assert benchmark_scan.parse_tile("FWD_MAXNREG=None") == ("FWD_MAXNREG", None)
    for bad in ("BWD_MAXNREG", "BWD_MAXNREG=lots", "NOT_A_TILE=4", "BWD_REDUCE_BC=0"):
        with pytest.raises(argparse.ArgumentTypeError):
            benchmark_scan.parse_tile(bad)
    assert set(benchmark_scan.TILE_SETTINGS) <= set(vars(triton_scan))
    assert f"BWD_STEP={triton_scan.BWD_STEP}" in benchmark_scan.triton_config()
