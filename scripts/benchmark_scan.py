"""Selective-scan benchmark: the scans of one Mamba-UNet training step (batch 24, 224x224), mamba-ssm vs Triton.

``python -m scripts.benchmark_scan [--batch 24] [--steps 20] [--warmup 5] [--sweep [bwd]] [--sweep_only RE]
[--check] [--no-mamba] [--dtype bfloat16] [--tile NAME[@L]=VALUE ...] [--layout]``
on a CUDA machine with Triton (and mamba-ssm for the reference rows).
Prints, for the scan shapes of one step (SS2D stacks the 4 directions: dim = 4 * d_inner, G = 4 groups, N = 16; stage
i has d_inner 192 * 2**i at L = (56 / 2**i)**2), the forward and forward+backward time of every backend, the
achieved bandwidth (the fewest bytes each pass must move: inputs read once, outputs written once, over the time) and
the speedup over mamba-ssm. --tile sets a Triton tile constant for the run, module-wide (BWD_MAXNREG=224) or for
the scans of one length (BWD_BLOCK_D@3136=4: stage 0 only); the header names the settings used.

Two step totals: "16 scans" = 4 per stage (the set the project's targets were stated for) and "network" = the scans
MambaUNet really runs per step (encoder 2 blocks x 4 stages, decoder 2 blocks x 3 stages = 14). Each of the 4 calls of
a stage gets its own input set, so repeated calls do not time the L2 cache. Timing: CUDA events around the whole
sequence of calls, warm-up first, median of --steps.

--check prints the relative error ||x - ref|| / ||ref|| of the output and every gradient against mamba-ssm (fp32).
--sweep times tile configurations and register caps of the Triton kernels first (forward: BLOCK_D, num_warps;
backward: BLOCK_D, chunk, num_warps, step; each with per-stage times), then a per-stage mix where single stages have
other winners, prints the winners as ``sweep winner: --tile ...`` and runs the table below with them; --sweep bwd
only the backward's, and nothing else. --sweep_only REGEX times only the rows whose label matches (re.search), plus
each kernel's default row, which every comparison needs: e.g. the candidates not yet timed on a GPU, in a short call.

--layout times SS2D's data movement around the scan instead: per stage, the cross-scan of a channels-last map into
the four scan orders followed by the merge of the four back into one channels-last sum, forward and
forward+backward, for each mamba_unet.CROSS_SCAN_IMPL ("gather", "views", "triton"), with the GB/s of the fewest
bytes those passes must move (layout_bytes), then stops.

"triton" rows are the Triton scan as the gathered cross-scan calls it; "tri-pair" and "tri-index" rows run it as
SS2D's fused cross-scan modes call it (``orders``, u holding 2 or 1 copies of the map shared by the 4 directions; see
mamba_unet.TRITON_CROSS_SCAN), so their times include the sum of du over the directions sharing a copy and, for
"index", the strided reads of the column-major directions; their GB/s use the same byte counts as the other rows.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from scripts import triton_scan
from scripts.benchmark import Timer, add_tile_argument, median_ms

STAGES = ((192, 56), (384, 28), (768, 14), (1536, 7))  # (d_inner, H = W) of Mamba-UNet's 4 stages at 224x224
TARGET_SCANS_PER_STAGE = (4, 4, 4, 4)
NETWORK_SCANS_PER_STAGE = (4, 4, 4, 2)  # the bottleneck stage has no decoder twin
DIRECTIONS, D_STATE = 4, 16
GRAD_NAMES = ("y", "du", "ddelta", "dA", "dB", "dC", "dD", "ddelta_bias")

ScanFn = Callable[..., torch.Tensor]


def make_inputs(batch: int, d_inner: int, side: int, dtype: torch.dtype, seed: int) -> list[torch.Tensor]:
    """SS2D-like scan inputs on CUDA: u, delta (batch, 4*d_inner, L), A (4*d_inner, 16), B, C (batch, 4, 16, L),
    D, delta_bias (4*d_inner,), at the magnitudes of a freshly initialised Mamba-UNet (S4D-real A, dt in 1e-3..0.1)."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    dim, length = DIRECTIONS * d_inner, side * side

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, device="cuda")

    dt = torch.exp(torch.rand(dim, generator=gen, device="cuda") * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    return [
        randn(batch, dim, length).to(dtype),
        (0.5 * randn(batch, dim, length)).to(dtype),
        -torch.arange(1, D_STATE + 1, device="cuda", dtype=torch.float32).expand(dim, D_STATE).contiguous(),
        randn(batch, DIRECTIONS, D_STATE, length).to(dtype),
        randn(batch, DIRECTIONS, D_STATE, length).to(dtype),
        torch.ones(dim, device="cuda"),
        dt + torch.log(-torch.expm1(-dt)),
    ]


def mamba_scan(u, delta, A, B, C, D, delta_bias) -> torch.Tensor:
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    return selective_scan_fn(u, delta, A, B, C, D, z=None, delta_bias=delta_bias, delta_softplus=True)


def pass_bytes(batch: int, d_inner: int, side: int, itemsize: int, backward: bool) -> int:
    """Fewest bytes one scan pass moves: forward reads u, delta, B, C and writes y; backward reads u, delta, dy, B, C
    and writes du, ddelta (itemsize) and dB, dC (fp32)."""
    big = batch * DIRECTIONS * d_inner * side * side
    small = batch * DIRECTIONS * D_STATE * side * side
    if not backward:
        return itemsize * (3 * big + 2 * small)
    return itemsize * (5 * big + 2 * small) + 4 * 2 * small


def fused_cross_scan(mode: str) -> ScanFn:
    """The Triton kernel as SS2D's fused cross-scan runs it (mamba_unet.TRITON_CROSS_SCAN ``mode``, "pair" or
    "index"): u holds 2 or 1 copies of the (batch, d_inner, L) map, shared by the 4 directions, and each direction
    walks its kernel order of the square map (delta, B, C, y in the same memory order)."""
    from scripts.networks.mamba_unet import _kernel_orders

    def scan(u, delta, A, B, C, D, delta_bias) -> torch.Tensor:
        side = math.isqrt(delta.shape[2])
        orders = _kernel_orders(mode, side, side, delta.device)
        return triton_scan.triton_selective_scan(u, delta, A, B, C, D, delta_bias, orders=orders)

    scan.copies = 2 if mode == "pair" else 1  # type: ignore[attr-defined]
    return scan


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def check(batch: int, dtype: torch.dtype) -> list[str]:
    """Relative errors of the Triton scan vs mamba-ssm, output and all gradients, one row per stage."""
    rows = []
    for stage, (d_inner, side) in enumerate(STAGES):
        inputs = make_inputs(batch, d_inner, side, dtype, seed=100 + stage)
        dy = torch.randn(batch, DIRECTIONS * d_inner, side * side, device="cuda").to(dtype)
        results = []
        for fn in (mamba_scan, triton_scan.triton_selective_scan):
            leaves = [t.detach().clone().requires_grad_() for t in inputs]
            y = fn(*leaves)
            results.append([y.detach(), *torch.autograd.grad(y, leaves, dy)])
        errors = [rel_err(x, ref) for x, ref in zip(results[1], results[0])]
        rows.append(
            f"stage {stage} ({DIRECTIONS * d_inner}x{side * side}) "
            + " ".join(f"{name} {err:.1e}" for name, err in zip(GRAD_NAMES, errors))
        )
    return rows


def step_timer(
    fn: ScanFn,
    input_sets: Sequence[list[torch.Tensor]],
    grads: Sequence[torch.Tensor | None],
    timer: Timer,
    steps: int,
    warmup: int,
) -> float:
    """Median ms of running fn over all input sets (backward too where grads are given)."""
    backward = grads[0] is not None
    leaves = [[t.requires_grad_(backward) if t.is_floating_point() else t for t in s] for s in input_sets]

    def run() -> None:
        with torch.set_grad_enabled(backward):
            for inputs, dy in zip(leaves, grads):
                y = fn(*inputs)
                if backward:
                    y.backward(dy)
                    for t in inputs:
                        t.grad = None

    return median_ms(run, timer, steps, warmup)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=24)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--check", action="store_true", help="print errors against mamba-ssm first")
    parser.add_argument(
        "--sweep",
        nargs="?",
        const="all",
        choices=("all", "bwd"),
        help="time tile configurations of the Triton kernels first (bwd: only the backward's, then stop)",
    )
    parser.add_argument(
        "--sweep_only", default=None, help="with --sweep: only the rows whose label matches this regex (+ defaults)"
    )
    parser.add_argument("--no-mamba", action="store_true", help="skip the mamba-ssm rows")
    parser.add_argument(
        "--layout", action="store_true", help="time the cross-scan and merge per impl instead, then stop"
    )
    add_tile_argument(parser)
    args = parser.parse_args(argv)
    for setting in args.tile:
        triton_scan.set_tile(*setting)
    if not torch.cuda.is_available() or not triton_scan.triton_available():
        raise SystemExit("scripts/benchmark_scan.py needs CUDA and Triton")
    dtype = getattr(torch, args.dtype)
    timer = Timer(torch.device("cuda"))
    if args.layout:
        print(f"batch {args.batch}, {args.dtype} map, {torch.cuda.get_device_name()}: median of {args.steps}")
        print(
            "\n".join(
                layout_rows(LAYOUT_IMPLS, args.batch, dtype, torch.device("cuda"), timer, args.steps, args.warmup)
            )
        )
        return
    if args.check:
        for row in check(4, torch.float32):
            print("check fp32 batch 4:", row, flush=True)

    # One input set (and output gradient) per scan call of the 16-scan step.
    sets, grads, stage_of = [], [], []
    for stage, ((d_inner, side), count) in enumerate(zip(STAGES, TARGET_SCANS_PER_STAGE)):
        for k in range(count):
            sets.append(make_inputs(args.batch, d_inner, side, dtype, seed=10 * stage + k))
            grads.append(torch.randn(args.batch, DIRECTIONS * d_inner, side * side, device="cuda").to(dtype))
            stage_of.append(stage)
    itemsize = torch.empty((), dtype=dtype).element_size()

    # The fused cross-scan's inputs: the same, with u the 1 or 2 copies of the (batch, d_inner, L) map that the 4
    # directions share.
    shared_u_sets = {
        copies: [[s[0][:, : s[0].shape[1] // DIRECTIONS * copies].clone(), *s[1:]] for s in sets] for copies in (1, 2)
    }

    def time_backend(fn: ScanFn, stage: int | None, backward: bool) -> float:
        picked = [i for i, s in enumerate(stage_of) if stage is None or s == stage]
        inputs = shared_u_sets[fn.copies] if hasattr(fn, "copies") else sets
        return step_timer(
            fn,
            [inputs[i] for i in picked],
            [grads[i] if backward else None for i in picked],
            timer,
            args.steps,
            args.warmup,
        )

    if args.sweep:
        winners = sweep(time_backend, backward_only=args.sweep == "bwd", only=args.sweep_only)
        if args.sweep == "bwd":
            return
        for setting in winners:  # the table below times the sweep's winners next to mamba-ssm
            triton_scan.set_tile(*setting)

    backends: list[tuple[str, ScanFn]] = [] if args.no_mamba else [("mamba-ssm", mamba_scan)]
    backends.append(("triton", triton_scan.triton_selective_scan))
    backends += [("tri-pair", fused_cross_scan("pair")), ("tri-index", fused_cross_scan("index"))]
    header = f"{'backend':<10} {'scans':<12} {'fwd ms':>8} {'fwd GB/s':>9} {'fwd+bwd ms':>11} {'f+b GB/s':>9} {'speedup f/fb':>13}"
    lines = [header, "-" * len(header)]
    baseline: dict[str, tuple[float, float]] = {}
    for name, fn in backends:
        per_stage = [(time_backend(fn, s, False), time_backend(fn, s, True)) for s in range(len(STAGES))]
        for s, (fwd, fwd_bwd) in enumerate(per_stage):
            d_inner, side = STAGES[s]
            fwd_bytes = 4 * pass_bytes(args.batch, d_inner, side, itemsize, False)
            all_bytes = fwd_bytes + 4 * pass_bytes(args.batch, d_inner, side, itemsize, True)
            lines.append(_row(name, f"stage{s} x4", fwd, fwd_bytes, fwd_bwd, all_bytes, baseline.get(f"s{s}")))
            baseline.setdefault(f"s{s}", (fwd, fwd_bwd))
        for label, counts in (("16 scans", TARGET_SCANS_PER_STAGE), ("network 14", NETWORK_SCANS_PER_STAGE)):
            # Network totals are the per-stage times scaled by the scan count (each stage was timed as 4 calls).
            fwd = sum(per_stage[s][0] * counts[s] / 4 for s in range(len(STAGES)))
            fwd_bwd = sum(per_stage[s][1] * counts[s] / 4 for s in range(len(STAGES)))
            fwd_bytes = sum(counts[s] * pass_bytes(args.batch, *STAGES[s], itemsize, False) for s in range(4))
            bwd_bytes = sum(counts[s] * pass_bytes(args.batch, *STAGES[s], itemsize, True) for s in range(4))
            lines.append(_row(name, label, fwd, fwd_bytes, fwd_bwd, fwd_bytes + bwd_bytes, baseline.get(label)))
            baseline.setdefault(label, (fwd, fwd_bwd))
        whole = (time_backend(fn, None, False), time_backend(fn, None, True))
        lines.append(_row(name, "16 in a row", whole[0], None, whole[1], None, baseline.get("row")))
        baseline.setdefault("row", whole)
    device = torch.cuda.get_device_name()
    print(
        f"batch {args.batch}, {args.dtype} inputs, {device}, Triton {triton_scan.tile_config()}: median of"
        f" {args.steps} after {args.warmup} warm-up"
    )
    print("\n".join(lines))


LAYOUT_IMPLS = ("gather", "views", "triton")


def layout_bytes(batch: int, d_inner: int, side: int, itemsize: int, backward: bool) -> int:
    """Fewest bytes SS2D's cross-scan and merge move for one block: the forward reads the map and writes the 4 scans
    (itemsize), then reads the 4 scans and writes the fp32 sum; the backward reads the fp32 gradient of the sum and
    writes the 4 scans' gradients, then reads those of the cross-scan and writes the map's. With backward: both."""
    n = batch * d_inner * side * side
    forward = n * itemsize * (1 + 4) + n * (4 * itemsize + 4)
    return forward + (n * (4 + 4 * itemsize) + n * itemsize * (4 + 1) if backward else 0)


def layout_rows(
    impls: Sequence[str],
    batch: int,
    dtype: torch.dtype,
    device: torch.device,
    timer: Timer,
    steps: int,
    warmup: int,
    stages: Sequence[tuple[int, int]] = STAGES,
) -> list[str]:
    """The --layout table: per stage and impl, cross_merge(cross_scan(map)) forward and forward+backward (ms, GB/s)
    on a channels-last (batch, d_inner, side, side) map, as the depthwise conv leaves it, and the speedup over the
    first impl."""
    from scripts.networks.mamba_unet import cross_merge, cross_scan

    itemsize = torch.empty((), dtype=dtype).element_size()
    header = (
        f"{'impl':<8} {'stage':<14} {'fwd ms':>8} {'fwd GB/s':>9} {'fwd+bwd ms':>11} {'f+b GB/s':>9} {'speedup':>13}"
    )
    lines = [header, "-" * len(header)]
    for stage, (d_inner, side) in enumerate(stages):
        gen = torch.Generator(device=device).manual_seed(stage)
        x = torch.randn(batch, side, side, d_inner, generator=gen, device=device).to(dtype).permute(0, 3, 1, 2)
        dy = torch.randn(batch, d_inner, side * side, generator=gen, device=device)
        leaf = x.detach().requires_grad_()
        fwd_bytes = layout_bytes(batch, d_inner, side, itemsize, False)
        all_bytes = layout_bytes(batch, d_inner, side, itemsize, True)
        label = f"{stage} ({d_inner}x{side}^2)"
        base = None
        for impl in impls:

            def forward(impl=impl) -> None:
                with torch.no_grad():
                    cross_merge(cross_scan(x, impl), side, side, impl)

            def forward_backward(impl=impl) -> None:
                cross_merge(cross_scan(leaf, impl), side, side, impl).backward(dy)
                leaf.grad = None

            times = (median_ms(forward, timer, steps, warmup), median_ms(forward_backward, timer, steps, warmup))
            lines.append(_row(impl, label, times[0], fwd_bytes, times[1], all_bytes, base))
            base = base or times
    return lines


def _row(name, label, fwd, fwd_bytes, fwd_bwd, all_bytes, base) -> str:
    def bw(n_bytes: int | None, ms: float) -> str:
        return f"{n_bytes / ms / 1e6:9.0f}" if n_bytes else f"{'':9}"

    speed = f"{base[0] / fwd:5.2f}x/{base[1] / fwd_bwd:5.2f}x" if base else ""
    return (
        f"{name:<10} {label:<12} {fwd:8.3f} {bw(fwd_bytes, fwd)} {fwd_bwd:11.3f} {bw(all_bytes, fwd_bwd)} {speed:>13}"
    )


TileSetting = tuple[str, int | None, int | None]  # (triton_scan constant, sequence length or None, value)


def format_tiles(settings: Sequence[TileSetting]) -> str:
    """The ``--tile`` arguments that reproduce ``settings`` (``NAME=VALUE``, or ``NAME@L=VALUE`` for one length)."""
    return " ".join(f"--tile {name}{'' if at is None else f'@{at}'}={value}" for name, at, value in settings)


@dataclass
class SweepRow:
    """One timed configuration: the tile constants it sets, the 16 scans back to back and each stage's 4 (ms)."""

    settings: dict[str, int | None]
    total: float
    stages: list[float]


def sweep(
    time_backend: Callable[[ScanFn, int | None, bool], float], backward_only: bool = False, only: str | None = None
) -> list[TileSetting]:
    """Time kernel configurations and print one line each, with its 4 stages' times (their tail waves differ): the
    forward alone at (BLOCK_D, num_warps) and register caps, then forward+backward (after the default forward) at
    (BLOCK_D, chunk, num_warps, step) and register caps, and once without the dB/dC atomics (a diagnostic: wrong dB,
    dC). For each kernel the fastest configuration wins if it is >= 1% faster than the default; where other
    configurations win single stages, that per-stage mix (TILES_BY_LENGTH) is timed too and wins if >= 1% faster
    still. Prints and returns the winners as tile settings (empty: the defaults stay); the module's constants are
    restored at the end either way. ``only``: a regex; rows whose label it does not match are skipped, except each
    kernel's default row (the first)."""
    saved = {name: getattr(triton_scan, name) for name in triton_scan.TILE_SETTINGS + ("BWD_REDUCE_BC",)}
    saved_by_length = {length: dict(tiles) for length, tiles in triton_scan.TILES_BY_LENGTH.items()}
    fwd_configs = [(8, 1), (4, 1), (16, 1), (16, 2), (32, 4)]  # (FWD_BLOCK_D, FWD_WARPS); the first is the default
    # The forward loading each step's tiles ahead (FWD_PREFETCH), uncapped and at 112 and 104 registers. Offline
    # (kernel_report, Triton 3.6 as on the GPU machine): the default takes 96 registers (21 programs per SM: stage 0's
    # 2,304 in one wave, so caps alone change nothing there); prefetching 126, 111 and 104, no stack: 16, 18, 19 per SM
    fwd_variants = [
        {"FWD_PREFETCH": 1},
        {"FWD_PREFETCH": 1, "FWD_MAXNREG": 112},
        {"FWD_PREFETCH": 1, "FWD_MAXNREG": 104},
    ]
    # (BWD_BLOCK_D, BWD_CHUNK, BWD_WARPS, BWD_STEP); the first is the default. Offline (kernel_report, Triton 3.6 as on
    # the GPU machine, stage 0, states rotated): (8, 8, 1, 8) 245 registers, 160 SHFL per step; (16, 8, 1, 4) 227;
    # (8, 8, 1, 4) 152 (13 programs per SM).
    bwd_configs = [(8, 8, 1, 8), (4, 8, 1, 8), (8, 16, 1, 8), (16, 8, 1, 8), (16, 8, 1, 4), (8, 8, 1, 4)]
    bwd_configs += [(16, 16, 1, 4), (32, 8, 2, 4)]
    # 224, 200 and 184 registers leave 9, 10 and 11 one-warp programs per SM (8 uncapped): stage 0's 2,304 programs
    # fit 2 waves at 9 instead of 2.2 at 8 (offline, Triton 3.6, states rotated: no stack at 224, 80 B at 200)
    bwd_caps = (224, 200, 184)
    fwd_names = ("FWD_BLOCK_D", "FWD_WARPS")
    bwd_names = ("BWD_BLOCK_D", "BWD_CHUNK", "BWD_WARPS", "BWD_STEP")
    lengths = [side * side for _, side in STAGES]
    fn = triton_scan.triton_selective_scan
    default_settings = [dict(zip(fwd_names, fwd_configs[0])), dict(zip(bwd_names, bwd_configs[0]))]

    def restore() -> None:
        for name, value in saved.items():
            setattr(triton_scan, name, value)
        triton_scan.TILES_BY_LENGTH.clear()
        triton_scan.TILES_BY_LENGTH.update({length: dict(tiles) for length, tiles in saved_by_length.items()})

    def timed(label: str, backward: bool, settings: dict[str, int | None], by_length=None) -> SweepRow | None:
        """One line: the 16 scans back to back and each stage's 4, with settings (and per-length ones) applied."""
        is_default = settings in default_settings
        if only is not None and not is_default and by_length is None and not re.search(only, label):
            return None
        restore()
        for name, value in settings.items():
            setattr(triton_scan, name, value)
        triton_scan.TILES_BY_LENGTH.update(by_length or {})
        try:
            row = SweepRow(
                settings, time_backend(fn, None, backward), [time_backend(fn, s, backward) for s in range(4)]
            )
        except Exception as err:  # a config that does not compile (registers, shared memory) is reported, not fatal
            print(f"sweep {label}: failed {type(err).__name__}: {str(err)[:200]}", flush=True)
            return None
        finally:
            restore()
        stages = " / ".join(f"{ms:.3f}" for ms in row.stages)
        print(f"sweep {label}: {row.total:.3f} ms (stages {stages})", flush=True)
        return row

    def winner(kernel: str, backward: bool, rows: list[SweepRow | None]) -> list[TileSetting]:
        """The winning settings among rows (rows[0]: the default), trying the per-stage mix; as tile settings."""
        timed_rows = [row for row in rows if row is not None]
        if not timed_rows or rows[0] is None:
            return []
        best = min(timed_rows, key=lambda row: row.total)
        best = best if best.total < 0.99 * rows[0].total else rows[0]
        chosen = [(name, None, value) for name, value in best.settings.items() if value != saved[name]]
        by_length = {}  # the stages some other configuration runs >= 1% faster, set to that one's constants
        for stage, length in enumerate(lengths):
            fastest = min(timed_rows, key=lambda row: row.stages[stage])
            if fastest.stages[stage] < 0.99 * best.stages[stage]:
                mine, theirs = {**saved, **best.settings}, {**saved, **fastest.settings}
                by_length[length] = {
                    name: theirs[name] for name in triton_scan.TILE_SETTINGS if theirs[name] != mine[name]
                }
        if by_length:
            mix = [(name, at, value) for at, tiles in by_length.items() for name, value in tiles.items()]
            row = timed(f"{kernel} per-stage mix {format_tiles(chosen + mix)}", backward, best.settings, by_length)
            if row is not None and row.total < 0.99 * best.total:
                chosen += mix
        return chosen

    winners: list[TileSetting] = []
    if not backward_only:
        rows = [timed(f"fwd {c}", False, dict(zip(fwd_names, c))) for c in fwd_configs]
        rows += [timed(f"fwd {format_tiles([(k, None, v) for k, v in c.items()])}", False, c) for c in fwd_variants]
        winners += winner("fwd", False, rows)
    rows = [timed(f"fwd+bwd {c}", True, dict(zip(bwd_names, c))) for c in bwd_configs]
    timed(f"fwd+bwd {bwd_configs[0]} WITHOUT dB/dC atomics", True, {"BWD_REDUCE_BC": False})
    rows += [timed(f"fwd+bwd {bwd_configs[0]}, maxnreg {cap}", True, {"BWD_MAXNREG": cap}) for cap in bwd_caps]
    # version 8's layout (the states in order: 28 instead of 20 shuffles per position), against the rotated default
    rows.append(timed(f"fwd+bwd {bwd_configs[0]}, states in order", True, {"BWD_ROTATE_STATES": 0}))
    winners += winner("fwd+bwd", True, rows)
    print(f"sweep winner: {format_tiles(winners) if winners else 'the defaults (nothing >= 1% faster)'}", flush=True)
    return winners


if __name__ == "__main__":
    main()
