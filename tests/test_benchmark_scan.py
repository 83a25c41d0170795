"""Tests of scripts/benchmark_scan.py that need no GPU: the sweep visits the seq backward rows and restores every
triton_scan constant it changes."""

from __future__ import annotations

from scripts import benchmark_scan, triton_scan

SWEPT = ("FWD_KIND", "FWD_BLOCK_D", "FWD_BLOCK_L", "FWD_WARPS", "FWD_SEQ_BLOCK_D", "FWD_UNROLL", "FWD_SEQ_WARPS")
SWEPT += ("FWD_VEC_BLOCK_D", "FWD_VEC_WARPS", "BWD_BLOCK_D", "BWD_BLOCK_L", "BWD_WARPS", "BWD_REDUCE_BC")
SWEPT += ("BWD_KIND", "BWD_SEQ_BLOCK_D", "BWD_SEQ_CHUNK", "BWD_SEQ_WARPS", "BWD_SEQ_UNROLL", "BWD_MAXNREG")
SWEPT += ("FWD_VEC_MAXNREG", "BWD_REG_BLOCK_D", "BWD_REG_CHUNK", "BWD_REG_WARPS", "BWD_REG_STEP")


def test_sweep_times_seq_backward_and_restores_constants(capsys):
    before = {name: getattr(triton_scan, name) for name in SWEPT}
    seen = []

    forward_default = {name: before[name] for name in SWEPT if name.startswith("FWD_")}
    forwards, backward_forwards = [], []

    def fake_time_backend(fn, stage, backward):
        seen.append((triton_scan.BWD_KIND, backward, triton_scan.BWD_SEQ_BLOCK_D, triton_scan.BWD_SEQ_CHUNK))
        fwd = {name: getattr(triton_scan, name) for name in forward_default if name != "FWD_KIND"}
        (backward_forwards if backward else forwards).append((triton_scan.FWD_KIND, fwd))
        return 1.0

    benchmark_scan.sweep(fake_time_backend)
    assert {name: getattr(triton_scan, name) for name in SWEPT} == before
    seq_rows = [s for s in seen if s[0] == "seq" and s[1]]
    assert len({s[2:] for s in seq_rows}) >= 4  # several (BLOCK_D, chunk) configurations of the seq backward
    vec_bwd_rows = [s for s in seen if s[0] == "vec" and s[1]]
    assert len({s[2:] for s in vec_bwd_rows}) >= 4  # and of its 8-position-step variant
    vec_rows = {(fwd["FWD_VEC_BLOCK_D"], fwd["FWD_VEC_WARPS"]) for kind, fwd in forwards if kind == "vec"}
    assert len(vec_rows) >= 4  # the 8-position-tile forward at several tile configurations
    # every backward row runs after the default forward configuration (tile sizes), whatever was swept last
    default_sizes = {name: value for name, value in forward_default.items() if name != "FWD_KIND"}
    assert all(fwd == default_sizes for _, fwd in backward_forwards)
    assert "seq bwd" in capsys.readouterr().out


def test_reg_sweep_times_only_the_reg_backward_per_stage_and_restores_constants(capsys):
    before = {name: getattr(triton_scan, name) for name in SWEPT}
    seen = []

    def fake_time_backend(fn, stage, backward):
        seen.append((triton_scan.BWD_KIND, backward, stage, triton_scan.BWD_REG_BLOCK_D, triton_scan.BWD_REG_STEP))
        return 1.0

    benchmark_scan.sweep(fake_time_backend, backward_only=True, reg_only=True)
    assert {name: getattr(triton_scan, name) for name in SWEPT} == before
    assert seen and all(kind == "reg" and backward for kind, backward, *_ in seen)
    assert {s[2] for s in seen} == {None, 0, 1, 2, 3}  # the whole step and each stage
    assert {s[4] for s in seen} == {4, 8}  # 8- and 4-position steps
    assert len({s[3] for s in seen}) >= 3
    assert "maxnreg 224" in capsys.readouterr().out
