"""Tests of scripts/benchmark_scan.py that need no GPU: the sweep visits the seq backward rows and restores every
triton_scan constant it changes."""

from __future__ import annotations

from scripts import benchmark_scan, triton_scan

SWEPT = ("FWD_KIND", "FWD_BLOCK_D", "FWD_BLOCK_L", "FWD_WARPS", "FWD_SEQ_BLOCK_D", "FWD_UNROLL", "FWD_SEQ_WARPS")
SWEPT += ("BWD_BLOCK_D", "BWD_BLOCK_L", "BWD_WARPS", "BWD_REDUCE_BC")
SWEPT += ("BWD_KIND", "BWD_SEQ_BLOCK_D", "BWD_SEQ_CHUNK", "BWD_SEQ_WARPS", "BWD_SEQ_UNROLL")


def test_sweep_times_seq_backward_and_restores_constants(capsys):
    before = {name: getattr(triton_scan, name) for name in SWEPT}
    seen = []

    def fake_time_backend(fn, stage, backward):
        seen.append((triton_scan.BWD_KIND, backward, triton_scan.BWD_SEQ_BLOCK_D, triton_scan.BWD_SEQ_CHUNK))
        return 1.0

    benchmark_scan.sweep(fake_time_backend)
    assert {name: getattr(triton_scan, name) for name in SWEPT} == before
    seq_rows = [s for s in seen if s[0] == "seq" and s[1]]
    assert len({s[2:] for s in seq_rows}) >= 4  # several (BLOCK_D, chunk) configurations of the seq backward
    assert "seq bwd" in capsys.readouterr().out
