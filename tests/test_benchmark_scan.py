"""Tests of scripts/benchmark_scan.py that need no GPU: the sweep visits the configurations it names and restores
every triton_scan constant it changes."""

from __future__ import annotations

from scripts import benchmark_scan, triton_scan

SWEPT = ("FWD_BLOCK_D", "FWD_WARPS", "FWD_MAXNREG", "BWD_BLOCK_D", "BWD_CHUNK", "BWD_WARPS", "BWD_STEP")
SWEPT += ("BWD_MAXNREG", "BWD_ROTATE_STATES", "FWD_PREFETCH", "BWD_REDUCE_BC")
LENGTHS = [side * side for _, side in benchmark_scan.STAGES]


def constants():
    by_length = {length: dict(tiles) for length, tiles in triton_scan.TILES_BY_LENGTH.items()}
    return {name: getattr(triton_scan, name) for name in SWEPT} | {"by_length": by_length}


def modelled_time_backend(stage_ms):
    """A fake time_backend: each stage's time is stage_ms(stage, tile) where tile(name) is the constant the scan of
    that stage's length would use; the whole step is the sum of the stages."""

    def time_backend(fn, stage, backward):
        stages = range(4) if stage is None else [stage]
        return sum(stage_ms(s, lambda name, s=s: triton_scan.tile(name, LENGTHS[s]), backward) for s in stages)

    return time_backend


def test_sweep_times_forward_and_backward_configurations_and_restores_constants(capsys):
    before = constants()
    rows = []

    def fake_time_backend(fn, stage, backward):
        rows.append((backward, stage, constants()))
        return 1.0

    assert benchmark_scan.sweep(fake_time_backend) == []  # all equal: the defaults stay
    assert constants() == before
    forward_rows = [(stage, c) for backward, stage, c in rows if not backward]
    backward_rows = [(stage, c) for backward, stage, c in rows if backward]
    assert len({(c["FWD_BLOCK_D"], c["FWD_WARPS"]) for _, c in forward_rows}) >= 4
    assert {(c["FWD_PREFETCH"], c["FWD_MAXNREG"]) for _, c in forward_rows} >= {(0, None), (1, None), (1, 104)}
    configs = {(c["BWD_BLOCK_D"], c["BWD_CHUNK"], c["BWD_STEP"]) for _, c in backward_rows}
    assert len(configs) >= 6 and {step for *_, step in configs} == {4, 8}
    # the whole step and each stage, for both kernels
    assert {stage for stage, _ in backward_rows} == {stage for stage, _ in forward_rows} == {None, 0, 1, 2, 3}
    assert any(not c["BWD_REDUCE_BC"] for _, c in backward_rows)
    assert {c["BWD_MAXNREG"] for _, c in backward_rows} >= {None, 224}
    assert {c["BWD_ROTATE_STATES"] for _, c in backward_rows} == {0, 1}  # version 8's layout against version 9's
    # every backward row runs after the default forward configuration, whatever was swept last
    assert all((c["FWD_BLOCK_D"], c["FWD_WARPS"], c["FWD_MAXNREG"]) == (8, 1, None) for _, c in backward_rows)
    out = capsys.readouterr().out
    assert "maxnreg 224" in out and "stages" in out and "sweep winner: the defaults" in out


def test_sweep_picks_a_faster_configuration_but_not_one_within_one_percent(capsys):
    def stage_ms(stage, tile, backward):
        if not backward:  # prefetching 0.5% faster: noise, not a winner
            return 0.995 if tile("FWD_PREFETCH") else 1.0
        return 0.9 if tile("BWD_MAXNREG") == 224 else 1.0

    before = constants()
    winners = benchmark_scan.sweep(modelled_time_backend(stage_ms))
    assert winners == [("BWD_MAXNREG", None, 224)] and constants() == before
    out = capsys.readouterr().out
    assert "sweep winner: --tile BWD_MAXNREG=224" in out and "per-stage mix" not in out


def test_sweep_tries_and_keeps_a_per_stage_mix(capsys):
    """BLOCK_D 4 halves stage 0 but slows the others: the mix (stage 0 at 4, the rest default) wins."""

    def stage_ms(stage, tile, backward):
        if not backward or tile("BWD_BLOCK_D") != 4:
            return 1.0
        return 0.5 if stage == 0 else 1.5

    winners = benchmark_scan.sweep(modelled_time_backend(stage_ms), backward_only=True)
    assert winners == [("BWD_BLOCK_D", LENGTHS[0], 4)]
    out = capsys.readouterr().out
    assert "sweep fwd+bwd per-stage mix --tile BWD_BLOCK_D@3136=4: 3.500 ms" in out
    assert "sweep winner: --tile BWD_BLOCK_D@3136=4" in out
    # the printed arguments parse back into the same settings
    assert [triton_scan.parse_tile(arg) for arg in out.split("sweep winner: ")[1].split()[1::2]] == winners


def test_sweep_drops_a_per_stage_mix_that_is_not_faster_as_a_whole(capsys):
    """Stage 0 faster at BLOCK_D 4 when timed alone, but the mix is not faster back to back (the modelled total
    charges an extra 0.6 ms whenever the stages' tiles differ): the default stays."""

    def time_backend(fn, stage, backward):
        block = [triton_scan.tile("BWD_BLOCK_D", length) for length in LENGTHS]
        per_stage = [
            0.5 if (backward and b == 4 and s == 0) else (1.5 if backward and b == 4 else 1.0)
            for s, b in enumerate(block)
        ]
        if stage is not None:
            return per_stage[stage]
        return sum(per_stage) + (0.6 if len(set(block)) > 1 else 0.0)

    assert benchmark_scan.sweep(time_backend, backward_only=True) == []
    out = capsys.readouterr().out
    assert "per-stage mix" in out and "sweep winner: the defaults" in out


def test_backward_only_sweep_skips_the_forward_rows():
    rows = []

    def fake_time_backend(fn, stage, backward):
        rows.append(backward)
        return 1.0

    benchmark_scan.sweep(fake_time_backend, backward_only=True)
    assert rows and all(rows)


def test_a_configuration_that_fails_is_reported_and_skipped(capsys):
    def fake_time_backend(fn, stage, backward):
        if backward and triton_scan.BWD_BLOCK_D == 16:
            raise RuntimeError("out of resources: shared memory")
        return 1.0

    assert benchmark_scan.sweep(fake_time_backend, backward_only=True) == []
    assert "failed RuntimeError: out of resources" in capsys.readouterr().out


def test_format_tiles_writes_the_tile_arguments():
    settings = [("BWD_MAXNREG", None, 224), ("BWD_BLOCK_D", 3136, 4), ("FWD_MAXNREG", None, None)]
    text = benchmark_scan.format_tiles(settings)
    assert text == "--tile BWD_MAXNREG=224 --tile BWD_BLOCK_D@3136=4 --tile FWD_MAXNREG=None"
    assert [triton_scan.parse_tile(arg) for arg in text.split()[1::2]] == settings


def test_sweep_only_times_the_matching_rows_and_the_defaults(capsys):
    def stage_ms(stage, tile, backward):
        if not backward:
            return 0.9 if tile("FWD_WARPS") == 2 else 1.0  # would win, but its row is filtered out
        return 0.8 if tile("BWD_MAXNREG") == 224 else 1.0

    winners = benchmark_scan.sweep(modelled_time_backend(stage_ms), only=r"prefetch|FWD_PREFETCH|maxnreg 224")
    out = capsys.readouterr().out
    labels = [line.split(":")[0] for line in out.splitlines() if line.startswith("sweep ") and " ms " in line]
    assert labels[0] == "sweep fwd (8, 1)" and "sweep fwd+bwd (8, 8, 1, 8)" in labels  # the defaults, always
    assert any("FWD_PREFETCH" in label for label in labels) and "sweep fwd+bwd (8, 8, 1, 8), maxnreg 224" in labels
    assert not any("(16, 2)" in label or "WITHOUT" in label or "states in order" in label for label in labels)
    assert winners == [("BWD_MAXNREG", None, 224)]


def test_layout_table_times_every_impl_per_stage_with_its_bytes():
    """--layout's table (on the CPU here, the Triton kernels interpreted): one row per stage and impl, positive times,
    GB/s from layout_bytes, the speedup against the first impl; the byte count is the passes' fewest bytes."""
    import torch

    from scripts.benchmark import Timer

    impls = ("gather", "views", "triton") if triton_scan.triton_available() else ("gather", "views")
    rows = benchmark_scan.layout_rows(
        impls, 2, torch.bfloat16, torch.device("cpu"), Timer(torch.device("cpu")), 1, 0, stages=((8, 4), (16, 2))
    )
    assert len(rows) == 2 + 2 * len(impls)
    assert [row.split()[0] for row in rows[2:]] == list(impls) * 2
    assert all(float(row.split()[3]) > 0 for row in rows[2:])  # forward ms
    assert "x/" not in rows[2] and "x/" in rows[3]  # the first impl is the baseline of its stage
    # bf16 map of n values: forward 1 + 4 reads/writes of 2 bytes and 4 x 2 + 4 (fp32 sum); backward the mirror image
    n = 2 * 8 * 16
    assert benchmark_scan.layout_bytes(2, 8, 4, 2, False) == n * (10 + 12)
    assert benchmark_scan.layout_bytes(2, 8, 4, 2, True) == 2 * n * (10 + 12)
