"""Where a sequential selective-scan forward spends its time: variants that leave one part out, timed side by side.

``python -m scripts.benchmark_scan_parts`` on a CUDA machine with Triton. One stage-0 scan of Mamba-UNet at batch 24
(u, delta (24, 768, 3136), N = 16, 4 groups of B/C; 925 M (channel, state, position) elements), run by a stripped-down
copy of ``scripts.triton_scan``'s "seq" forward (one position per loop step, the [BLOCK_D, N] state in registers) with
switches for each part: the exponential of the decay, the softplus of delta, the loads of B/C in the loop, the sum over
N for y, and the memory order of B/C ((batch, G, N, L) as mamba-ssm takes them, or position-major (batch, G, L, N)).
Per row: median time (``triton.testing.do_bench``), elements per second, registers, spills and the most frequent SASS
instructions of the compiled kernel (``cuobjdump`` from the CUDA toolkit; the row says so when it is missing).

``--passes backward`` does the same for a stripped-down copy of triton_scan's backward (its switches: BWD_PARTS) and
sweeps its tile layout; ``both`` (the default) runs the forward rows first.

Timing by difference is how this project locates time inside a kernel on machines without hardware counters (the
one-GPU kind runs gVisor, where ncu cannot read them). The part that no switch removes (the loads of u and delta, the
store of y, the recurrence's FMAs) is the floor of this design. docs/performance.md records the 2026-12-01 results
that set triton_scan's seq defaults (B/C position-major, 8 channels in one warp, 8-fold unrolled).
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence

import torch

try:  # optional dependency, as in scripts.triton_scan
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = None
    tl = None

GROUPS, D_STATE = 4, 16
FULL = {"EXP": True, "SOFTPLUS": True, "BC_LOADS": True, "Y_SUM": True}
# (label, switches); every row also runs with B/C as given and position-major unless the layout is the point
PARTS = (
    ("full (v1 seq: exp2, softplus, B/C loads, y sum)", {}),
    ("no exp2 (decay = 1 + dt a)", {"EXP": False}),
    ("no softplus", {"SOFTPLUS": False}),
    ("no B/C loads in the loop", {"BC_LOADS": False}),
    ("no y sum over N (y = u dt; h summed once at the end)", {"Y_SUM": False}),
)
# (BLOCK_D, num_warps, unroll) of the layout sweep, full kernel, both B/C orders
LAYOUTS = ((16, 4, 4), (32, 4, 4), (16, 1, 4), (8, 1, 8), (4, 1, 8), (8, 2, 8), (32, 1, 8))

# Backward: a stripped-down copy of triton_scan's backward (tiles of BLOCK_L positions in reverse, the tile's h
# recomputed from the forward's tile-start state by an associative scan, the adjoint g by a reverse one, dB/dC summed
# over the program's channels and added across programs with fp32 atomics), with these switches:
BWD_FULL = {"EXP": True, "SCANS": True, "BC_LOADS": True, "BC_GRADS": True, "ATOMICS": True}
BWD_PARTS = (
    ("full (v1 backward)", {}),
    ("no exp2 (decay = 1 + dt a)", {"EXP": False}),
    ("no associative scans (elementwise stand-ins)", {"SCANS": False}),
    ("no B/C tile loads in the loop", {"BC_LOADS": False}),
    ("dB/dC stored, not atomically added (racy: timing only)", {"ATOMICS": False}),
    ("no dB/dC at all", {"BC_GRADS": False}),
)
# (BLOCK_D, BLOCK_L, num_warps) of the backward layout sweep; the first is triton_scan's default
BWD_LAYOUTS = ((4, 32, 4), (2, 32, 2), (8, 32, 4), (4, 64, 4), (4, 16, 2), (16, 16, 8))

if triton is not None:
    # the real kernels' softplus and associative-scan operator, so the variants cost what triton_scan's code costs
    from scripts.triton_scan import _linear_combine, _softplus

    @triton.jit
    def _parts_kernel(
        u_ptr,
        delta_ptr,
        a_ptr,
        b_ptr,
        c_ptr,
        y_ptr,
        dim,
        length,
        channels_per_group,
        EXP: tl.constexpr,
        SOFTPLUS: tl.constexpr,
        BC_LOADS: tl.constexpr,
        Y_SUM: tl.constexpr,
        BC_POSITION_MAJOR: tl.constexpr,
        N: tl.constexpr,
        BLOCK_D: tl.constexpr,
        UNROLL: tl.constexpr,
    ):
        """y (batch, dim, L) of the selective scan without D and bias, parts switched off as the flags say."""
        pid_d = tl.program_id(0)
        batch = tl.program_id(1)
        chans = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        group = (pid_d * BLOCK_D) // channels_per_group
        states = tl.arange(0, N)
        a_log2 = tl.load(a_ptr + chans[:, None] * N + states[None, :]) * 1.4426950408889634
        u_rows = u_ptr + (batch * dim + chans) * length
        delta_rows = delta_ptr + (batch * dim + chans) * length
        y_rows = y_ptr + (batch * dim + chans) * length
        bc_offset = (batch * 4 + group) * N * length  # 4 = GROUPS
        if BC_POSITION_MAJOR:  # (batch, G, L, N): one position's N values are contiguous
            bc_states, bc_step = states, N
        else:  # (batch, G, N, L)
            bc_states, bc_step = states * length, 1
        b_first = tl.load(b_ptr + bc_offset + bc_states)
        c_first = tl.load(c_ptr + bc_offset + bc_states)
        h = tl.zeros([BLOCK_D, N], dtype=tl.float32)
        for pos in tl.range(0, length, loop_unroll_factor=UNROLL):
            u = tl.load(u_rows + pos)
            delta = tl.load(delta_rows + pos)
            if SOFTPLUS:
                dt = _softplus(delta)
            else:
                dt = delta
            if BC_LOADS:
                b = tl.load(b_ptr + bc_offset + bc_states + pos * bc_step)
                c = tl.load(c_ptr + bc_offset + bc_states + pos * bc_step)
            else:
                b, c = b_first, c_first
            if EXP:
                decay = tl.exp2(dt[:, None] * a_log2)
            else:
                decay = 1.0 + dt[:, None] * a_log2
            h = decay * h + (dt * u)[:, None] * b[None, :]
            if Y_SUM:
                tl.store(y_rows + pos, tl.sum(h * c[None, :], axis=1))
            else:
                tl.store(y_rows + pos, u * dt)
        if not Y_SUM:  # keeps h live, so the recurrence is not optimised away
            tl.store(y_rows, tl.sum(h, axis=1))

    @triton.jit
    def _parts_bwd_kernel(
        u_ptr,
        delta_ptr,
        a_ptr,
        b_ptr,
        c_ptr,
        dy_ptr,
        state_ptr,
        du_ptr,
        ddelta_ptr,
        da_ptr,
        db_ptr,
        dc_ptr,
        dim,
        length,
        channels_per_group,
        n_tiles,
        EXP: tl.constexpr,
        SCANS: tl.constexpr,
        BC_LOADS: tl.constexpr,
        BC_GRADS: tl.constexpr,
        ATOMICS: tl.constexpr,
        N: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_L: tl.constexpr,
    ):
        """du, ddelta (batch, dim, L) and dA, dB, dC (accumulated) of the selective scan without D and bias."""
        pid_d = tl.program_id(0)
        batch = tl.program_id(1)
        chans = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        group = (pid_d * BLOCK_D) // channels_per_group
        states = tl.arange(0, N)
        positions = tl.arange(0, BLOCK_L)
        a_mat = tl.load(a_ptr + chans[:, None] * N + states[None, :])
        a_log2 = a_mat * 1.4426950408889634
        rows = (batch * dim + chans[:, None]) * length
        bc_rows = ((batch * 4 + group) * N + states[:, None]) * length  # 4 = GROUPS
        state_rows = state_ptr + ((batch * dim + chans[:, None]) * n_tiles) * N + states[None, :]
        first_ok = positions[None, :] < length
        b_first = tl.load(b_ptr + bc_rows + positions[None, :], mask=first_ok, other=0.0)
        c_first = tl.load(c_ptr + bc_rows + positions[None, :], mask=first_ok, other=0.0)
        carry = tl.zeros([BLOCK_D, N], dtype=tl.float32)
        da_acc = tl.zeros([BLOCK_D, N], dtype=tl.float32)
        for step in range(0, n_tiles):
            tile = n_tiles - 1 - step
            pos = tile * BLOCK_L + positions
            pos_ok = pos < length
            next_ok = (pos + 1 < length) & (positions < BLOCK_L - 1)
            u = tl.load(u_ptr + rows + pos[None, :], mask=pos_ok[None, :], other=0.0)
            delta = tl.load(delta_ptr + rows + pos[None, :], mask=pos_ok[None, :], other=0.0)
            delta_next = tl.load(delta_ptr + rows + pos[None, :] + 1, mask=next_ok[None, :], other=0.0)
            dy = tl.load(dy_ptr + rows + pos[None, :], mask=pos_ok[None, :], other=0.0)
            dt = tl.where(pos_ok[None, :], _softplus(delta), 0.0)
            dt_next = tl.where(next_ok[None, :], _softplus(delta_next), 0.0)
            bc_mask = (states[:, None] < N) & pos_ok[None, :]
            if BC_LOADS:
                b_tile = tl.load(b_ptr + bc_rows + pos[None, :], mask=bc_mask, other=0.0)
                c_tile = tl.load(c_ptr + bc_rows + pos[None, :], mask=bc_mask, other=0.0)
            else:
                b_tile, c_tile = b_first, c_first
            dt_u = dt * u
            if EXP:
                decay = tl.exp2(dt[:, None, :] * a_log2[:, :, None])
                decay_next = tl.exp2(dt_next[:, None, :] * a_log2[:, :, None])
            else:
                decay = 1.0 + dt[:, None, :] * a_log2[:, :, None]
                decay_next = 1.0 + dt_next[:, None, :] * a_log2[:, :, None]
            inputs = dt_u[:, None, :] * b_tile[None, :, :]
            out_grad = c_tile[None, :, :] * dy[:, None, :]
            if SCANS:
                decay_prod, h_local = tl.associative_scan((decay, inputs), axis=2, combine_fn=_linear_combine)
                decay_next_prod, g_local = tl.associative_scan(
                    (decay_next, out_grad), axis=2, combine_fn=_linear_combine, reverse=True
                )
            else:
                decay_prod, h_local, decay_next_prod, g_local = decay, inputs, decay_next, out_grad
            h_all = h_local + decay_prod * tl.load(state_rows + tile * N)[:, :, None]
            g = g_local + decay_next_prod * carry[:, :, None]
            carry = tl.sum(tl.where(positions[None, None, :] == 0, decay * g, 0.0), axis=2)
            g_b = tl.sum(g * b_tile[None, :, :], axis=1)
            decayed_prev = g * (h_all - inputs)  # g_t exp(dt_t A) h_{t-1}
            ddt = u * g_b + tl.sum(decayed_prev * a_mat[:, :, None], axis=1)
            da_acc += tl.sum(decayed_prev * dt[:, None, :], axis=2)
            if BC_GRADS:
                dc_part = tl.sum(h_all * dy[:, None, :], axis=0)
                db_part = tl.sum(g * dt_u[:, None, :], axis=0)
                if ATOMICS:
                    tl.atomic_add(dc_ptr + bc_rows + pos[None, :], dc_part, mask=bc_mask, sem="relaxed")
                    tl.atomic_add(db_ptr + bc_rows + pos[None, :], db_part, mask=bc_mask, sem="relaxed")
                else:
                    tl.store(dc_ptr + bc_rows + pos[None, :], dc_part, mask=bc_mask)
                    tl.store(db_ptr + bc_rows + pos[None, :], db_part, mask=bc_mask)
            ddelta = tl.where(delta > 20.0, ddt, ddt / (1.0 + tl.exp(-delta)))
            tl.store(du_ptr + rows + pos[None, :], dt * g_b, mask=pos_ok[None, :])
            tl.store(ddelta_ptr + rows + pos[None, :], ddelta, mask=pos_ok[None, :])
        tl.atomic_add(da_ptr + chans[:, None] * N + states[None, :], da_acc, sem="relaxed")


def parts_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    block_d: int = 8,
    num_warps: int = 1,
    unroll: int = 8,
    bc_position_major: bool = True,
    **switches: bool,
) -> tuple[torch.Tensor, object]:
    """Run the variant kernel; u, delta (batch, dim, L) fp32 contiguous, A (dim, N), B, C (batch, 4, N, L).

    Returns y (batch, dim, L) and the compiled kernel. With every switch on (the default) y equals the selective scan
    with softplus(delta) and no D; B/C are copied position-major first when ``bc_position_major``."""
    batch, dim, length = u.shape
    flags = {**FULL, **switches}
    if bc_position_major:
        B, C = B.transpose(2, 3).contiguous(), C.transpose(2, 3).contiguous()
    y = torch.empty_like(u)
    compiled = _parts_kernel[(dim // block_d, batch)](
        u,
        delta,
        A,
        B,
        C,
        y,
        dim,
        length,
        dim // GROUPS,
        BC_POSITION_MAJOR=bc_position_major,
        N=A.shape[1],
        BLOCK_D=block_d,
        UNROLL=unroll,
        num_warps=num_warps,
        **flags,
    )
    return y, compiled


def parts_scan_backward(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    dy: torch.Tensor,
    tile_states: torch.Tensor,
    block_d: int = 4,
    num_warps: int = 4,
    **switches: bool,
) -> tuple[tuple[torch.Tensor, ...], object]:
    """Run the backward variant; u, delta, dy (batch, dim, L) fp32 contiguous, A (dim, N), B, C (batch, 4, N, L),
    tile_states (batch, dim, n_tiles, N): the state entering each tile of BLOCK_L = L / n_tiles (rounded up to a power
    of two) positions. Returns (du, ddelta, dA, dB, dC) and the compiled kernel; with every switch on (the default)
    they are the gradients of the selective scan with softplus(delta), no D, no bias."""
    batch, dim, length = u.shape
    n_tiles = tile_states.shape[2]
    block_l = triton.next_power_of_2(triton.cdiv(length, n_tiles))
    if triton.cdiv(length, block_l) != n_tiles:
        raise ValueError(f"{n_tiles} tile states do not tile L = {length} in powers of two")
    du, ddelta = torch.empty_like(u), torch.empty_like(u)
    da = torch.zeros_like(A)
    db, dc = torch.zeros_like(B), torch.zeros_like(C)
    compiled = _parts_bwd_kernel[(dim // block_d, batch)](
        u,
        delta,
        A,
        B,
        C,
        dy,
        tile_states,
        du,
        ddelta,
        da,
        db,
        dc,
        dim,
        length,
        dim // GROUPS,
        n_tiles,
        N=A.shape[1],
        BLOCK_D=block_d,
        BLOCK_L=block_l,
        num_warps=num_warps,
        **{**BWD_FULL, **switches},
    )
    return (du, ddelta, da, db, dc), compiled


def sass_summary(compiled: object, top: int = 8) -> str:
    """'regs R spills S | SASS total: OP count, ...' of a compiled Triton kernel (cuobjdump on its cubin)."""
    head = f"regs {compiled.n_regs} spills {compiled.n_spills}"
    if shutil.which("cuobjdump") is None:
        return head + " | SASS: no cuobjdump here"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        listing = subprocess.run(["cuobjdump", "-sass", cubin.name], capture_output=True, text=True).stdout
    ops = collections.Counter(
        match.group(1) for match in re.finditer(r"/\*[0-9a-f]{4}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", listing)
    )
    return f"{head} | SASS {sum(ops.values())}: " + ", ".join(f"{op} {n}" for op, n in ops.most_common(top))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m scripts.benchmark_scan_parts", description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=24)
    parser.add_argument("--channels", type=int, default=768, help="4 directions x d_inner (stage 0: 768)")
    parser.add_argument("--length", type=int, default=3136, help="positions (stage 0: 56 x 56)")
    parser.add_argument("--passes", choices=("forward", "backward", "both"), default="both")
    args = parser.parse_args(argv)
    if triton is None or not torch.cuda.is_available():
        raise SystemExit("benchmark_scan_parts needs a CUDA GPU and Triton")
    generator = torch.Generator(device="cuda").manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device="cuda", generator=generator)

    u, delta = randn(args.batch, args.channels, args.length), randn(args.batch, args.channels, args.length) * 0.5 - 2
    A = -torch.rand(args.channels, D_STATE, device="cuda", generator=generator) * 4 - 0.5
    B, C = randn(args.batch, GROUPS, D_STATE, args.length), randn(args.batch, GROUPS, D_STATE, args.length)
    elements = args.batch * args.channels * args.length * D_STATE
    copy_ms = triton.testing.do_bench(lambda: (B.transpose(2, 3).contiguous(), C.transpose(2, 3).contiguous()))
    print(
        f"{torch.cuda.get_device_name()}, Triton {triton.__version__}; one scan: u ({args.batch}, {args.channels}, "
        f"{args.length}), N {D_STATE}: {elements / 1e6:.0f} M elements; position-major copy of B and C {copy_ms:.3f} ms"
    )

    def row(label: str, layout: tuple[int, int, int], position_major: bool, switches: dict[str, bool]) -> None:
        block_d, warps, unroll = layout
        kwargs = dict(block_d=block_d, num_warps=warps, unroll=unroll, bc_position_major=position_major, **switches)
        _, compiled = parts_scan(u, delta, A, B, C, **kwargs)
        ms = triton.testing.do_bench(lambda: parts_scan(u, delta, A, B, C, **kwargs), warmup=50, rep=300)
        order = "B/C position-major" if position_major else "B/C (batch, G, N, L)"
        print(
            f"BLOCK_D {block_d:2d} warps {warps} unroll {unroll} | {order:20s} | {label:52s} | {ms:6.3f} ms | "
            f"{elements / ms / 1e6:5.0f} G elem/s | {sass_summary(compiled)}",
            flush=True,
        )

    if args.passes in ("forward", "both"):
        for label, switches in PARTS:
            row(label, LAYOUTS[0], False, switches)
        for layout in LAYOUTS:
            for position_major in (False, True):
                row(PARTS[0][0], layout, position_major, {})
    if args.passes in ("backward", "both"):
        dy = randn(args.batch, args.channels, args.length)
        for block_d, block_l, warps in BWD_LAYOUTS:
            # the states' values do not change the work; any finite ones will do
            tile_states = 0.1 * randn(args.batch, args.channels, triton.cdiv(args.length, block_l), D_STATE)
            for label, switches in BWD_PARTS if (block_d, block_l, warps) == BWD_LAYOUTS[0] else BWD_PARTS[:1]:
                kwargs = dict(block_d=block_d, num_warps=warps, **switches)
                _, compiled = parts_scan_backward(u, delta, A, B, C, dy, tile_states, **kwargs)
                ms = triton.testing.do_bench(
                    lambda: parts_scan_backward(u, delta, A, B, C, dy, tile_states, **kwargs), warmup=20, rep=200
                )
                print(
                    f"backward BLOCK_D {block_d:2d} BLOCK_L {block_l:2d} warps {warps} | {label:56s} | {ms:6.3f} ms | "
                    f"{elements / ms / 1e6:5.0f} G elem/s | {sass_summary(compiled)}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
