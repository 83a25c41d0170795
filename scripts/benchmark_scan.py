"""Selective-scan benchmark: the scans of one Mamba-UNet training step (batch 24, 224x224), mamba-ssm vs Triton.

``python -m scripts.benchmark_scan [--batch 24] [--steps 20] [--warmup 5] [--sweep [bwd]] [--check] [--bwd_kind tile|seq|vec]``
on a CUDA machine with Triton (and mamba-ssm for the reference rows). Prints, for the scan shapes of one step (SS2D
stacks the 4 directions: dim = 4 * d_inner, G = 4 groups, N = 16; stage i has d_inner 192 * 2**i at
L = (56 / 2**i)**2), the forward and forward+backward time of every backend, the achieved bandwidth (the fewest bytes
each pass must move: inputs read once, outputs written once, over the time) and the speedup over mamba-ssm.

Two step totals: "16 scans" = 4 per stage (the set the project's targets were stated for) and "network" = the scans
MambaUNet really runs per step (encoder 2 blocks x 4 stages, decoder 2 blocks x 3 stages = 14). Each of the 4 calls of
a stage gets its own input set, so repeated calls do not time the L2 cache. Timing: CUDA events around the whole
sequence of calls, warm-up first, median of --steps.

--check prints the relative error ||x - ref|| / ||ref|| of the output and every gradient against mamba-ssm (fp32).
--sweep times a few tile configurations of the Triton kernels (BLOCK_D, BLOCK_L, num_warps) first; --sweep bwd only
those of the 8-position-step backwards (vec, reg) and the register caps, and nothing else; --sweep reg only the reg
backward's (with per-stage times).
--bwd_kind picks triton_scan.BWD_KIND for --check and the timed rows: "tile" (associative scans), "seq" (version 4,
one position per step), "vec" (version 7, the seq kernel in 8-position steps) or "reg" (version 8, version 7 with
everything in registers).

"tri-seq" rows run the Triton scan with the one-position-per-step forward (``FWD_KIND = "seq"``, the default before
version 6 in docs/performance.md), the backward unchanged, beside the default's "triton" rows (the 8-position-tile "vec"
forward). "tri-vec" rows run the default forward with the version-7 backward (``BWD_KIND = "vec"``, the previous
default) beside the default's (version 8, everything in registers). "tri-pair" and "tri-index" rows run the Triton
kernel as SS2D's fused cross-scan modes call it (``orders``, u holding 2 or 1 copies of the map shared by the 4
directions; see mamba_unet.TRITON_CROSS_SCAN), so their times include the sum of du over the directions sharing a copy
and, for "index", the strided reads of the column-major directions; their GB/s use the same byte counts as the other
rows.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence

import torch

from scripts import triton_scan
from scripts.benchmark import Timer, median_ms

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


def forward_kind_scan(kind: str, setting: str = "FWD_KIND") -> ScanFn:
    """The Triton scan with triton_scan.<setting> = kind during each call (the module's value restored after); for
    BWD_KIND the forward records the kind, so its backward runs that kernel too."""

    def scan(u, delta, A, B, C, D, delta_bias) -> torch.Tensor:
        saved = getattr(triton_scan, setting)
        setattr(triton_scan, setting, kind)
        try:
            return triton_scan.triton_selective_scan(u, delta, A, B, C, D, delta_bias)
        finally:
            setattr(triton_scan, setting, saved)

    return scan


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def check(batch: int, dtype: torch.dtype, scan: ScanFn = triton_scan.triton_selective_scan) -> list[str]:
    """Relative errors of ``scan`` (the Triton scan) vs mamba-ssm, output and all gradients, one row per stage."""
    rows = []
    for stage, (d_inner, side) in enumerate(STAGES):
        inputs = make_inputs(batch, d_inner, side, dtype, seed=100 + stage)
        dy = torch.randn(batch, DIRECTIONS * d_inner, side * side, device="cuda").to(dtype)
        results = []
        for fn in (mamba_scan, scan):
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
        choices=("all", "bwd", "reg"),
        help="time tile configurations of the Triton kernels first (bwd: only the vec and reg backwards', reg: only "
        "the reg backward's)",
    )
    parser.add_argument("--no-mamba", action="store_true", help="skip the mamba-ssm rows")
    parser.add_argument(
        "--bwd_kind", choices=triton_scan.BWD_KINDS, default=triton_scan.BWD_KIND, help="Triton backward kernel"
    )
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() or not triton_scan.triton_available():
        raise SystemExit("scripts/benchmark_scan.py needs CUDA and Triton")
    triton_scan.BWD_KIND = args.bwd_kind
    dtype = getattr(torch, args.dtype)
    timer = Timer(torch.device("cuda"))
    if args.check:
        for row in check(4, torch.float32):
            print("check fp32 batch 4:", row, flush=True)
        for row in check(4, torch.float32, forward_kind_scan("seq")):
            print("check fp32 batch 4, seq forward:", row, flush=True)

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
        sweep(time_backend, backward_only=args.sweep != "all", reg_only=args.sweep == "reg")
        if args.sweep != "all":
            return

    backends: list[tuple[str, ScanFn]] = [] if args.no_mamba else [("mamba-ssm", mamba_scan)]
    backends.append(("triton", triton_scan.triton_selective_scan))
    backends.append(("tri-seq", forward_kind_scan("seq")))
    if args.bwd_kind != "vec":
        backends.append(("tri-vec", forward_kind_scan("vec", "BWD_KIND")))
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
        f"batch {args.batch}, {args.dtype} inputs, {device}, Triton backward {args.bwd_kind}: median of {args.steps}"
        f" after {args.warmup} warm-up"
    )
    print("\n".join(lines))


def _row(name, label, fwd, fwd_bytes, fwd_bwd, all_bytes, base) -> str:
    def bw(n_bytes: int | None, ms: float) -> str:
        return f"{n_bytes / ms / 1e6:9.0f}" if n_bytes else f"{'':9}"

    speed = f"{base[0] / fwd:5.2f}x/{base[1] / fwd_bwd:5.2f}x" if base else ""
    return (
        f"{name:<10} {label:<12} {fwd:8.3f} {bw(fwd_bytes, fwd)} {fwd_bwd:11.3f} {bw(all_bytes, fwd_bwd)} {speed:>13}"
    )


def sweep(
    time_backend: Callable[[ScanFn, int | None, bool], float], backward_only: bool = False, reg_only: bool = False
) -> None:
    """Time kernel configurations on the whole 16-scan step and print one line each: forward kernels ("tile":
    BLOCK_D, BLOCK_L, num_warps; "seq": BLOCK_D, unroll, num_warps) and backward kernels ("tile": BLOCK_D, BLOCK_L,
    num_warps; "seq" and "vec": BLOCK_D, chunk, num_warps, unroll; "reg": BLOCK_D, chunk, num_warps) and register
    caps. backward_only: just the "vec" and "reg" backwards' configurations after the default forward, and the caps
    (the 8-position kernels' tuning, in a fraction of the time); reg_only: just the reg backward's."""
    names = ("FWD_KIND", "FWD_BLOCK_D", "FWD_BLOCK_L", "FWD_WARPS", "FWD_SEQ_BLOCK_D", "FWD_UNROLL", "FWD_SEQ_WARPS")
    names += ("FWD_VEC_BLOCK_D", "FWD_VEC_WARPS", "BWD_BLOCK_D", "BWD_BLOCK_L", "BWD_WARPS", "BWD_REDUCE_BC")
    names += ("BWD_KIND", "BWD_SEQ_BLOCK_D", "BWD_SEQ_CHUNK", "BWD_SEQ_WARPS", "BWD_SEQ_UNROLL", "BWD_MAXNREG")
    names += ("FWD_VEC_MAXNREG", "BWD_REG_BLOCK_D", "BWD_REG_CHUNK", "BWD_REG_WARPS", "BWD_REG_STEP")
    saved = {name: getattr(triton_scan, name) for name in names}
    fwd_configs = [("tile", 4, 64, 4), ("tile", 2, 64, 4), ("tile", 4, 32, 4), ("tile", 4, 32, 2), ("tile", 2, 32, 2)]
    fwd_configs += [("seq", 16, 4, 4), ("seq", 32, 4, 4), ("seq", 16, 8, 2), ("seq", 8, 8, 1), ("seq", 32, 1, 4)]
    # ("vec", BLOCK_D, -, num_warps): the 8-position-tile forward; the first is triton_scan's FWD_VEC default
    fwd_configs += [("vec", 8, 0, 1), ("vec", 4, 0, 1), ("vec", 16, 0, 1), ("vec", 16, 0, 2), ("vec", 32, 0, 4)]
    # (BWD_REG_BLOCK_D, BWD_REG_CHUNK, BWD_REG_WARPS, BWD_REG_STEP) of the reg backward (version 8); the first is the
    # default. Offline (sm_90, stage 0): (8, 8, 1, 8) 255 registers; (16, 8, 1, 4) 247 with half the shuffles per
    # channel; (8, 8, 1, 4) 167.
    bwd_reg_configs = [(8, 8, 1, 8), (4, 8, 1, 8), (8, 16, 1, 8), (16, 8, 1, 8), (16, 8, 1, 4), (8, 8, 1, 4)]
    bwd_reg_configs += [(16, 16, 1, 4), (32, 8, 2, 4)]
    # caps of the reg backward: 224 registers leave 9 one-warp programs per SM (8 uncapped): stage 0's 2,304
    # programs then fit 2 waves instead of 2.2 (offline: 13 spill loads per step at 224, 100 at 168)
    reg_caps = (224, 200, 184)  # 9, 10 and 11 resident programs per SM
    fwd_caps, bwd_caps = (96, 64), (168, 128)  # register caps (Triton's maxnreg) of the vec forward and backwards
    bwd_configs = [(4, 32, 4), (2, 32, 2), (16, 16, 8), (32, 8, 8), (16, 32, 8)]
    # (BWD_SEQ_BLOCK_D, BWD_SEQ_CHUNK, BWD_SEQ_WARPS, BWD_SEQ_UNROLL); the first is triton_scan's default
    bwd_seq_configs = [(8, 32, 1, 4), (8, 16, 1, 4), (8, 64, 1, 4), (8, 32, 1, 1), (8, 32, 1, 8)]
    bwd_seq_configs += [(4, 32, 1, 4), (16, 32, 1, 4), (16, 32, 2, 4), (32, 16, 4, 4), (8, 32, 2, 4), (4, 64, 1, 4)]
    fn = triton_scan.triton_selective_scan

    def timed(label: str, backward: bool, per_stage: bool = False) -> None:
        """One line: the 16 scans back to back; per_stage adds each stage's 4 scans (the tail-wave effects differ)."""
        try:
            line = f"sweep {label}: {time_backend(fn, None, backward):.3f} ms"
            if per_stage:
                line += " (stages " + " / ".join(f"{time_backend(fn, s, backward):.3f}" for s in range(4)) + ")"
            print(line, flush=True)
        except Exception as err:  # a config that does not compile (registers, shared memory) is reported, not fatal
            print(f"sweep {label}: failed {type(err).__name__}: {str(err)[:200]}", flush=True)

    for kind, block_d, block_l_or_unroll, warps in [] if backward_only else fwd_configs:
        triton_scan.FWD_KIND = kind
        if kind == "tile":
            triton_scan.FWD_BLOCK_D, triton_scan.FWD_BLOCK_L, triton_scan.FWD_WARPS = block_d, block_l_or_unroll, warps
        elif kind == "vec":
            triton_scan.FWD_VEC_BLOCK_D, triton_scan.FWD_VEC_WARPS = block_d, warps
        else:
            triton_scan.FWD_SEQ_BLOCK_D, triton_scan.FWD_UNROLL, triton_scan.FWD_SEQ_WARPS = (
                block_d,
                block_l_or_unroll,
                warps,
            )
        timed(f"fwd {kind} {(block_d, warps) if kind == 'vec' else (block_d, block_l_or_unroll, warps)}", False)
    # the backward rows below run after the default forward configuration, not after the last one swept
    for name in names:
        if name.startswith("FWD_"):
            setattr(triton_scan, name, saved[name])
    triton_scan.BWD_KIND = "tile"
    # the training forward with the tile kernel or the seq kernel
    for seq_fwd in () if backward_only else (False, True):
        triton_scan.FWD_KIND = "seq" if seq_fwd else "tile"
        for config in bwd_configs:
            triton_scan.BWD_BLOCK_D, triton_scan.BWD_BLOCK_L, triton_scan.BWD_WARPS = config
            timed(f"fwd+bwd {triton_scan.FWD_KIND} fwd, bwd {config}", True)
    # Diagnostic: the same without the dB/dC atomics (wrong dB, dC), to see what the cross-program reduction costs.
    triton_scan.BWD_REDUCE_BC = False
    for config in [] if backward_only else bwd_configs[:3]:
        triton_scan.BWD_BLOCK_D, triton_scan.BWD_BLOCK_L, triton_scan.BWD_WARPS = config
        timed(f"fwd+bwd {triton_scan.FWD_KIND} fwd, bwd {config} WITHOUT dB/dC atomics", True)
    triton_scan.BWD_REDUCE_BC = True
    # Version 4 backward (one position per step) and version 7 (its 8-position steps; the unroll is unused there)
    # after the default forward.
    triton_scan.FWD_KIND = saved["FWD_KIND"]
    for kind in () if reg_only else ("vec",) if backward_only else ("seq", "vec"):
        triton_scan.BWD_KIND = kind
        for config in bwd_seq_configs:
            if kind == "vec" and config[3] != bwd_seq_configs[0][3]:
                continue  # the unroll factor is unused by the vec kernel
            (
                triton_scan.BWD_SEQ_BLOCK_D,
                triton_scan.BWD_SEQ_CHUNK,
                triton_scan.BWD_SEQ_WARPS,
                triton_scan.BWD_SEQ_UNROLL,
            ) = config
            timed(f"fwd+bwd {triton_scan.FWD_KIND} fwd, {kind} bwd {config}", True)
        triton_scan.BWD_REDUCE_BC = False
        (
            triton_scan.BWD_SEQ_BLOCK_D,
            triton_scan.BWD_SEQ_CHUNK,
            triton_scan.BWD_SEQ_WARPS,
            triton_scan.BWD_SEQ_UNROLL,
        ) = bwd_seq_configs[0]
        timed(f"fwd+bwd {triton_scan.FWD_KIND} fwd, {kind} bwd {bwd_seq_configs[0]} WITHOUT dB/dC atomics", True)
        triton_scan.BWD_REDUCE_BC = True
    triton_scan.BWD_KIND = "reg"
    reg_names = ("BWD_REG_BLOCK_D", "BWD_REG_CHUNK", "BWD_REG_WARPS", "BWD_REG_STEP")
    for config in bwd_reg_configs:
        for name, value in zip(reg_names, config):
            setattr(triton_scan, name, value)
        timed(f"fwd+bwd {triton_scan.FWD_KIND} fwd, reg bwd {config}", True, per_stage=True)
    for name, value in zip(reg_names, bwd_reg_configs[0]):
        setattr(triton_scan, name, value)
    triton_scan.BWD_REDUCE_BC = False
    timed(f"fwd+bwd {triton_scan.FWD_KIND} fwd, reg bwd {bwd_reg_configs[0]} WITHOUT dB/dC atomics", True)
    triton_scan.BWD_REDUCE_BC = True
    for cap in reg_caps:
        triton_scan.BWD_MAXNREG = cap
        timed(f"fwd+bwd {triton_scan.FWD_KIND} fwd, reg bwd {bwd_reg_configs[0]}, maxnreg {cap}", True, per_stage=True)
    triton_scan.BWD_MAXNREG = saved["BWD_MAXNREG"]
    # Register caps: the vec forward alone, then the vec and reg backwards (default tiles) after the default forward.
    for cap in () if reg_only else fwd_caps:
        triton_scan.FWD_VEC_MAXNREG = cap
        timed(f"fwd vec, maxnreg {cap}", False)
    triton_scan.FWD_VEC_MAXNREG = saved["FWD_VEC_MAXNREG"]
    for kind in () if reg_only else ("vec",):
        triton_scan.BWD_KIND = kind
        for cap in bwd_caps:
            triton_scan.BWD_MAXNREG = cap
            timed(f"fwd+bwd vec fwd, {kind} bwd (default tiles), maxnreg {cap}", True)
    triton_scan.BWD_MAXNREG = saved["BWD_MAXNREG"]
    for name, value in saved.items():
        setattr(triton_scan, name, value)


if __name__ == "__main__":
    main()
