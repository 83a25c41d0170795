"""Triton selective scan (S6) for Mamba-UNet's SS2D: forward and hand-written backward, fp32 state, any float I/O.

Computes mamba-ssm's ``selective_scan_fn(u, delta, A, B, C, D, z=None, delta_bias, delta_softplus=True)`` with grouped
B/C: ``dt = softplus(delta + delta_bias)``; ``h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t`` (``h_{-1} = 0``);
``y_t = sum_n h_t[n] * C_t[n] + D * u_t``.

Why a second kernel next to mamba-ssm's: on SS2D's shapes (G=4 groups of 192..1536 channels, N=16) mamba-ssm's kernel
runs one CUDA block per channel and reloads B and C for every channel, so the 16 scans of a training step move ~9x the
bytes they need. Here one program owns BLOCK_D channels of one group and one batch item (B/C tiles loaded once for
BLOCK_D channels, read position-major so one position's N values are one contiguous load) and walks L sequentially,
the [BLOCK_D, N] state in fp32 registers, in steps of 8 positions whose loads are all issued before their arithmetic.

Forward (`_scan_fwd_vec_kernel`, version 6 in docs/performance.md): for training it also saves the state every
BWD_CHUNK positions, (batch, dim, L / chunk, N) fp32.

Backward (`_scan_bwd_reg_kernel`, version 8): steps of 8 (or BWD_STEP = 4) positions from the end of the sequence
to its start; each step recomputes its states from the saved one into registers and walks them in reverse,
``g_t = C_t dy_t + exp(dt_{t+1} A) g_{t+1}``, while the next step's tiles load. dB and dC (sums over a group's
channels) and dA, dD, d(delta_bias) (sums over batch and L) are reduced inside each program, then added across
programs with fp32 atomics, so like mamba-ssm's backward the gradients are not bitwise deterministic. Version 9
(BWD_ROTATE_STATES) addresses the states through a pair rotation, which only changes Triton's register layout: 29%
fewer warp shuffles per position (compiled offline; not yet timed on a GPU).

Measured on one H100 (fp32, batch 24, the 16 scans of a training step; docs/performance.md, version 8): forward 5.4-5.8
ms against mamba-ssm's 17.0-17.1 (2.9-3.1x), forward+backward 24.5-28.4 ms against 68.1-68.4 (2.4-2.8x); outputs and
every gradient within 3e-6 of mamba-ssm. Earlier designs (associative-scan tiles, chunk-parallel, one thread per
channel, one position per loop step, a scratch-buffer backward: versions 1-5 and 7) measured slower and were removed;
their code is at commit c3e021e (versions 2 and 3: 0eff9e2), their measurements in docs/performance.md.

Importing this module never needs Triton (CI has none): the kernels are defined only when ``triton`` imports.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from scripts.selective_scan import check_scan_inputs, last_dim_contiguous

__all__ = ["triton_available", "triton_selective_scan", "TritonSelectiveScan"]

try:  # optional dependency: plain import-guard because the kernels below must be module-level for @triton.jit
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = None
    tl = None

# Forward: FWD_BLOCK_D channels per program in FWD_WARPS warps (swept on one H100, docs/performance.md, version 6:
# 8 / 1 beat 4, 16 and 32 channels).
FWD_BLOCK_D, FWD_WARPS = 8, 1
# Backward: BWD_BLOCK_D channels per program in BWD_WARPS warps; the forward saves a state every BWD_CHUNK positions (a
# multiple of 8; with more, each step first carries the saved state over the chunk's earlier steps). Chunk 8 keeps 2
# fp32 per channel-position for the backward (+2.3 GiB of fp32 training memory for Mamba-UNet against chunk 32).
# Swept on one H100 (16 scans, f+b ms): (8, 8, 1) 24.5, (4, 8, 1) 24.8, (8, 16, 1) 26.5, (16, 8, 1) 26.9, (16, 8, 2)
# 36.5, (8, 8, 2) 43.5.
BWD_BLOCK_D, BWD_CHUNK, BWD_WARPS = 8, 8, 1
# Positions per backward step: 8, or 4 (half the recomputed states live at once, so 16 channels per warp fit in the
# registers: fewer shuffles per channel in the reductions over the channels; not yet timed on a GPU).
BWD_STEP = 8
# Register caps (Triton's maxnreg; None: the compiler's choice); a cap trades spills (local memory) for resident
# warps. Version 8's backward took 249 registers (ncu, stage 0): 8 one-warp programs per SM. Measured on one H100: no
# gain at 168 or 128 for that backward (26.4 and 36.6 ms against 24.5 uncapped) or at 96 and 64 for the forward (5.3
# and 6.4 ms against ~5.4; offline with the GPU machine's Triton 3.6 the forward takes 96 registers uncapped).
FWD_MAXNREG: int | None = None
BWD_MAXNREG: int | None = None
# 1: the forward loads each step's tiles during the previous step's arithmetic, as the backward does (126 instead of
# 96 registers offline with Triton 3.6; not yet timed on a GPU); 0: at the start of their own step (version 6).
FWD_PREFETCH = 0
# 1: the backward addresses the N states through a pair rotation, which changes Triton's register layout of its
# [BLOCK_D, N] tiles so the per-position sums need 29% fewer warp shuffles (version 9; see the kernel); 0: in order.
BWD_ROTATE_STATES = 1
# False only for the timing diagnostic of scripts/benchmark_scan.py --sweep: skips the dB/dC atomics (wrong dB, dC).
BWD_REDUCE_BC = True
# The tile constants above, by name (scripts/benchmark_scan.py sweeps them, both benchmarks' --tile sets them).
TILE_SETTINGS = ("FWD_BLOCK_D", "FWD_WARPS", "FWD_MAXNREG", "BWD_BLOCK_D", "BWD_CHUNK", "BWD_WARPS", "BWD_STEP")
TILE_SETTINGS += ("BWD_MAXNREG", "BWD_ROTATE_STATES", "FWD_PREFETCH")
# Per sequence length L, tile constants that replace the module-wide ones for scans of that length, e.g.
# {3136: {"BWD_BLOCK_D": 4}}: the best tile can differ per stage (a stage's program count against the resident
# programs decides its last wave's fill). Empty: every length uses the constants above.
TILES_BY_LENGTH: dict[int, dict[str, int | None]] = {}


def tile(name: str, length: int) -> Any:
    """The tile constant ``name`` for a scan of length ``length``: TILES_BY_LENGTH's entry, else the module's."""
    if name not in TILE_SETTINGS:
        raise KeyError(f"triton_scan: unknown tile constant {name!r}; choose from {TILE_SETTINGS}")
    return TILES_BY_LENGTH.get(length, {}).get(name, getattr(sys.modules[__name__], name))


def parse_tile(text: str) -> tuple[str, int | None, int | None]:
    """``"BWD_MAXNREG=224"`` -> ``("BWD_MAXNREG", None, 224)`` (module-wide); ``"BWD_BLOCK_D@3136=4"`` ->
    ``("BWD_BLOCK_D", 3136, 4)`` (scans of length 3136 only); VALUE ``None`` is Triton's own choice (the caps).
    Raises ValueError naming the problem."""
    target, sep, value = text.partition("=")
    name, at, length = target.partition("@")
    if not sep or name not in TILE_SETTINGS:
        raise ValueError(f"tile setting {text!r}: expected NAME=VALUE or NAME@L=VALUE with NAME in {TILE_SETTINGS}")
    try:
        where = int(length) if at else None
        number = None if value == "None" else int(value)
    except ValueError:
        raise ValueError(f"tile setting {text!r}: L and VALUE must be integers (VALUE may be None)") from None
    if where is not None and where < 1:
        raise ValueError(f"tile setting {text!r}: L must be >= 1")
    return name, where, number


def set_tile(name: str, length: int | None, value: int | None) -> None:
    """Set a tile constant module-wide (length None) or for scans of one length (TILES_BY_LENGTH)."""
    if name not in TILE_SETTINGS:
        raise KeyError(f"triton_scan: unknown tile constant {name!r}; choose from {TILE_SETTINGS}")
    if length is None:
        globals()[name] = value
    else:
        TILES_BY_LENGTH.setdefault(length, {})[name] = value


def tile_config() -> str:
    """The tile settings in use, as the benchmarks' headers print them."""
    text = ", ".join(f"{name}={globals()[name]}" for name in TILE_SETTINGS)
    for length, settings in sorted(TILES_BY_LENGTH.items()):
        if settings:
            text += f"; L={length}: " + ", ".join(f"{name}={value}" for name, value in settings.items())
    return text


def triton_available() -> bool:
    """True when Triton imports and can run here: on CUDA, or on CPU tensors under ``TRITON_INTERPRET=1``."""
    return triton is not None


if triton is not None:

    @triton.jit
    def _softplus(x):
        """log(1 + exp(x)) like mamba-ssm (identity above 20), with log1p accuracy for tiny exp(x)."""
        z = tl.exp(-tl.abs(x))
        log1p_z = tl.where(z < 1e-4, z * (1.0 - 0.5 * z), tl.log(1.0 + z))
        return tl.where(x > 20.0, x, tl.maximum(x, 0.0) + log1p_z)

    @triton.jit
    def _memory_position(order_ptr, group, t, length, REORDER: tl.constexpr):
        """Where scan step t of this group reads and writes along L: ``order[group, t]`` with REORDER (SS2D's fused
        cross-scan: every direction walks its copy of the feature map in its own order), else t itself. t: a scalar
        or a vector of steps; steps past the end map to 0 (their loads and stores are masked anyway)."""
        if REORDER:
            return tl.load(order_ptr + group * length + t, mask=t < length, other=0)
        else:
            return t

    @triton.jit
    def _eight_columns(tile):
        """[R, 8] -> its 8 columns, each [R] (register renames where a thread holds a row's 8 values, else
        Triton moves them through shared memory)."""
        x0, x1 = tl.split(tl.reshape(tile, [tile.shape[0], 4, 2]))  # x_j[r, i] = tile[r, 2 i + j]
        y00, y01 = tl.split(tl.reshape(x0, [tile.shape[0], 2, 2]))  # y_jl[r, k] = tile[r, 4 k + 2 l + j]
        y10, y11 = tl.split(tl.reshape(x1, [tile.shape[0], 2, 2]))
        c0, c4 = tl.split(y00)
        c2, c6 = tl.split(y01)
        c1, c5 = tl.split(y10)
        c3, c7 = tl.split(y11)
        return c0, c1, c2, c3, c4, c5, c6, c7

    @triton.jit
    def _join_eight_columns(c0, c1, c2, c3, c4, c5, c6, c7):
        """The inverse of _eight_columns: 8 [R] columns -> [R, 8]."""
        y00 = tl.join(c0, c4)
        y01 = tl.join(c2, c6)
        y10 = tl.join(c1, c5)
        y11 = tl.join(c3, c7)
        x0 = tl.reshape(tl.join(y00, y01), [c0.shape[0], 4])
        x1 = tl.reshape(tl.join(y10, y11), [c0.shape[0], 4])
        return tl.reshape(tl.join(x0, x1), [c0.shape[0], 8])

    @triton.jit
    def _four_columns(tile):
        """[R, 4] -> its 4 columns, each [R] (as _eight_columns)."""
        x0, x1 = tl.split(tl.reshape(tile, [tile.shape[0], 2, 2]))  # x_j[r, i] = tile[r, 2 i + j]
        c0, c2 = tl.split(x0)
        c1, c3 = tl.split(x1)
        return c0, c1, c2, c3

    @triton.jit
    def _join_four_columns(c0, c1, c2, c3):
        """The inverse of _four_columns: 4 [R] columns -> [R, 4]."""
        return tl.reshape(tl.join(tl.join(c0, c2), tl.join(c1, c3)), [c0.shape[0], 4])

    @triton.jit
    def _state_step(h, a_log2, dt, dtu, b_col):
        """One position of the recurrence: h [BLOCK_D, N] <- exp(dt A) h + dt u B (a_log2 = A log2(e))."""
        return tl.exp2(dt[:, None] * a_log2) * h + dtu[:, None] * b_col[None, :]

    @triton.jit
    def _seq_step(h, a_log2, dt, dtu, b_col, c_col):
        """One position of the forward: h <- _state_step(h); returns (h, y [BLOCK_D])."""
        h = _state_step(h, a_log2, dt, dtu, b_col)
        return h, tl.sum(h * c_col[None, :], axis=1)

    @triton.jit
    def _bwd_step(g, a_next, da_acc, h, h_prev, dt, dtu, dy, b_col, c_col, a_log2, a_mat):
        """One position of the backward's reverse walk: g [BLOCK_D, N] <- a_{t+1} g + C_t dy_t, dA accumulated;
        returns (g, a_t, da_acc, dC_t [N], dB_t [N], sum_n g B_t [BLOCK_D], sum_n g a_t h_{t-1} A [BLOCK_D])."""
        decay = tl.exp2(dt[:, None] * a_log2)  # a_t
        g = a_next * g + c_col[None, :] * dy[:, None]
        dc = tl.sum(h * dy[:, None], axis=0)
        db = tl.sum(g * dtu[:, None], axis=0)
        decayed_prev = g * (decay * h_prev)  # g_t a_t h_{t-1} = dL/d(dt_t A)
        da_acc += decayed_prev * dt[:, None]
        return g, decay, da_acc, dc, db, tl.sum(g * b_col[None, :], axis=1), tl.sum(decayed_prev * a_mat, axis=1)

    @triton.jit
    def _step_tiles(u_rows, delta_rows, b_rows, c_rows, stride_b_pos, stride_c_pos, mem, pos_ok, state_ok):
        """One step's inputs in their stored dtype: u, delta as [BLOCK_D, T] and B, C as [N, T] tiles at the memory
        positions ``mem`` (0 where not ``pos_ok`` or past N), loaded together before any arithmetic uses them."""
        bc_mask = state_ok[:, None] & pos_ok[None, :]
        return (
            tl.load(u_rows + mem[None, :], mask=pos_ok[None, :], other=0.0),
            tl.load(delta_rows + mem[None, :], mask=pos_ok[None, :], other=0.0),
            tl.load(b_rows + mem[None, :] * stride_b_pos, mask=bc_mask, other=0.0),
            tl.load(c_rows + mem[None, :] * stride_c_pos, mask=bc_mask, other=0.0),
        )

    @triton.jit
    def _scan_fwd_vec_kernel(
        u_ptr,
        delta_ptr,
        a_ptr,
        b_ptr,
        c_ptr,
        d_ptr,
        bias_ptr,
        y_ptr,
        state_ptr,
        order_ptr,
        dim,
        u_channels,
        length,
        n_state,
        channels_per_group,
        n_tiles,
        stride_u_batch,
        stride_u_dim,
        stride_delta_batch,
        stride_delta_dim,
        stride_b_batch,
        stride_b_group,
        stride_b_state,
        stride_c_batch,
        stride_c_group,
        stride_c_state,
        stride_b_pos,
        stride_c_pos,
        HAS_D: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        SAVE_STATE: tl.constexpr,
        REORDER: tl.constexpr,
        N_PAD: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_L: tl.constexpr,
        PREFETCH: tl.constexpr,
    ):
        """Forward, 8 positions per loop step: u, delta as [BLOCK_D, 8] and B, C as [N, 8] tiles loaded before any
        of their compute, softplus on the whole [BLOCK_D, 8] tile, then the 8 positions one after the other
        (`_seq_step` on columns split out of the tiles), and y stored once as a [BLOCK_D, 8] tile. With SAVE_STATE
        the state before every BLOCK_L-th position (BLOCK_L a multiple of 8) goes to state_ptr for the backward.

        Why tiles: a kernel that loads each position right before its own arithmetic (version 4) waits for one load
        latency per position (its sm_90 code cannot move the loads above the previous position's y store), and
        repeats the per-channel softplus on the 4 lanes that share a channel; here the 8 positions' loads are in
        flight together and the softplus is computed once per element."""
        T: tl.constexpr = 8
        pid_d = tl.program_id(0)
        batch = tl.program_id(1)
        chans = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        group = (pid_d * BLOCK_D) // channels_per_group
        states = tl.arange(0, N_PAD)
        state_ok = states < n_state
        steps = tl.arange(0, T)
        a_mat = tl.load(a_ptr + chans[:, None] * n_state + states[None, :], mask=state_ok[None, :], other=0.0)
        a_log2 = a_mat.to(tl.float32) * 1.4426950408889634
        if HAS_D:
            d_skip = tl.load(d_ptr + chans).to(tl.float32)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + chans).to(tl.float32)
        u_rows = u_ptr + batch * stride_u_batch + (chans % u_channels)[:, None] * stride_u_dim
        delta_rows = delta_ptr + batch * stride_delta_batch + chans[:, None] * stride_delta_dim
        y_rows = y_ptr + batch * dim * length + chans[:, None] * length
        b_rows = b_ptr + batch * stride_b_batch + group * stride_b_group + states[:, None] * stride_b_state
        c_rows = c_ptr + batch * stride_c_batch + group * stride_c_group + states[:, None] * stride_c_state
        state_rows = state_ptr + ((batch * dim + chans[:, None]) * n_tiles) * n_state + states[None, :]
        h = tl.zeros([BLOCK_D, N_PAD], dtype=tl.float32)
        if PREFETCH:  # the first step's tiles; each step then loads the next one's before its own arithmetic
            next_u, next_delta, next_b, next_c = _step_tiles(
                u_rows,
                delta_rows,
                b_rows,
                c_rows,
                stride_b_pos,
                stride_c_pos,
                _memory_position(order_ptr, group, steps, length, REORDER),
                steps < length,
                state_ok,
            )
        for base in range(0, length, T):
            if SAVE_STATE:
                if base % BLOCK_L == 0:
                    tl.store(state_rows + (base // BLOCK_L) * n_state, h, mask=state_ok[None, :])
            pos = base + steps
            pos_ok = pos < length
            mem = _memory_position(order_ptr, group, pos, length, REORDER)
            if PREFETCH:
                u, delta, b_tile, c_tile = next_u, next_delta, next_b, next_c
                ahead = pos + T  # past the end at the last step: masked, never used
                next_u, next_delta, next_b, next_c = _step_tiles(
                    u_rows,
                    delta_rows,
                    b_rows,
                    c_rows,
                    stride_b_pos,
                    stride_c_pos,
                    _memory_position(order_ptr, group, ahead, length, REORDER),
                    ahead < length,
                    state_ok,
                )
            else:
                u, delta, b_tile, c_tile = _step_tiles(
                    u_rows, delta_rows, b_rows, c_rows, stride_b_pos, stride_c_pos, mem, pos_ok, state_ok
                )
            u, delta, b_tile, c_tile = (
                u.to(tl.float32),
                delta.to(tl.float32),
                b_tile.to(tl.float32),
                c_tile.to(tl.float32),
            )
            if HAS_BIAS:
                delta += bias[:, None]
            dt = tl.where(pos_ok[None, :], _softplus(delta), 0.0)  # dt 0 past the end: the state stays
            dt0, dt1, dt2, dt3, dt4, dt5, dt6, dt7 = _eight_columns(dt)
            du0, du1, du2, du3, du4, du5, du6, du7 = _eight_columns(dt * u)
            b0, b1, b2, b3, b4, b5, b6, b7 = _eight_columns(b_tile)
            c0, c1, c2, c3, c4, c5, c6, c7 = _eight_columns(c_tile)
            h, y0 = _seq_step(h, a_log2, dt0, du0, b0, c0)
            h, y1 = _seq_step(h, a_log2, dt1, du1, b1, c1)
            h, y2 = _seq_step(h, a_log2, dt2, du2, b2, c2)
            h, y3 = _seq_step(h, a_log2, dt3, du3, b3, c3)
            h, y4 = _seq_step(h, a_log2, dt4, du4, b4, c4)
            h, y5 = _seq_step(h, a_log2, dt5, du5, b5, c5)
            h, y6 = _seq_step(h, a_log2, dt6, du6, b6, c6)
            h, y7 = _seq_step(h, a_log2, dt7, du7, b7, c7)
            y = _join_eight_columns(y0, y1, y2, y3, y4, y5, y6, y7)
            if HAS_D:
                y += d_skip[:, None] * u
            tl.store(y_rows + mem[None, :], y.to(y_ptr.dtype.element_ty), mask=pos_ok[None, :])

    @triton.jit
    def _reg_walk_eight(g, a_next, da_acc, h, a_log2, a_mat, dt_t, dtu_t, dy_t, b_t, c_t):
        """One 8-position step of the reg backward: the step's states recomputed from h (the state before it) into
        registers, then the reverse walk (`_bwd_step`) from its last position to its first. dt_t, dtu_t, dy_t:
        [BLOCK_D, 8]; b_t, c_t: [N, 8]. Returns (g, a_next, da_acc, dC [N, 8], dB [N, 8], sum_n g B [BLOCK_D, 8],
        sum_n g a h_prev A [BLOCK_D, 8])."""
        dt0, dt1, dt2, dt3, dt4, dt5, dt6, dt7 = _eight_columns(dt_t)
        du0, du1, du2, du3, du4, du5, du6, du7 = _eight_columns(dtu_t)
        dy0, dy1, dy2, dy3, dy4, dy5, dy6, dy7 = _eight_columns(dy_t)
        b0, b1, b2, b3, b4, b5, b6, b7 = _eight_columns(b_t)
        c0, c1, c2, c3, c4, c5, c6, c7 = _eight_columns(c_t)
        # hp_k = h_{base + k - 1}: the state before position base + k; h ends as the step's last state.
        hp0 = h
        hp1 = _state_step(hp0, a_log2, dt0, du0, b0)
        hp2 = _state_step(hp1, a_log2, dt1, du1, b1)
        hp3 = _state_step(hp2, a_log2, dt2, du2, b2)
        hp4 = _state_step(hp3, a_log2, dt3, du3, b3)
        hp5 = _state_step(hp4, a_log2, dt4, du4, b4)
        hp6 = _state_step(hp5, a_log2, dt5, du5, b5)
        hp7 = _state_step(hp6, a_log2, dt6, du6, b6)
        h = _state_step(hp7, a_log2, dt7, du7, b7)
        g, a_next, da_acc, dc7, db7, gb7, gah7 = _bwd_step(
            g, a_next, da_acc, h, hp7, dt7, du7, dy7, b7, c7, a_log2, a_mat
        )
        g, a_next, da_acc, dc6, db6, gb6, gah6 = _bwd_step(
            g, a_next, da_acc, hp7, hp6, dt6, du6, dy6, b6, c6, a_log2, a_mat
        )
        g, a_next, da_acc, dc5, db5, gb5, gah5 = _bwd_step(
            g, a_next, da_acc, hp6, hp5, dt5, du5, dy5, b5, c5, a_log2, a_mat
        )
        g, a_next, da_acc, dc4, db4, gb4, gah4 = _bwd_step(
            g, a_next, da_acc, hp5, hp4, dt4, du4, dy4, b4, c4, a_log2, a_mat
        )
        g, a_next, da_acc, dc3, db3, gb3, gah3 = _bwd_step(
            g, a_next, da_acc, hp4, hp3, dt3, du3, dy3, b3, c3, a_log2, a_mat
        )
        g, a_next, da_acc, dc2, db2, gb2, gah2 = _bwd_step(
            g, a_next, da_acc, hp3, hp2, dt2, du2, dy2, b2, c2, a_log2, a_mat
        )
        g, a_next, da_acc, dc1, db1, gb1, gah1 = _bwd_step(
            g, a_next, da_acc, hp2, hp1, dt1, du1, dy1, b1, c1, a_log2, a_mat
        )
        g, a_next, da_acc, dc0, db0, gb0, gah0 = _bwd_step(
            g, a_next, da_acc, hp1, hp0, dt0, du0, dy0, b0, c0, a_log2, a_mat
        )
        return (
            g,
            a_next,
            da_acc,
            _join_eight_columns(dc0, dc1, dc2, dc3, dc4, dc5, dc6, dc7),
            _join_eight_columns(db0, db1, db2, db3, db4, db5, db6, db7),
            _join_eight_columns(gb0, gb1, gb2, gb3, gb4, gb5, gb6, gb7),
            _join_eight_columns(gah0, gah1, gah2, gah3, gah4, gah5, gah6, gah7),
        )

    @triton.jit
    def _reg_walk_four(g, a_next, da_acc, h, a_log2, a_mat, dt_t, dtu_t, dy_t, b_t, c_t):
        """_reg_walk_eight for a 4-position step ([BLOCK_D, 4] and [N, 4] tiles): half the states live at once, so
        a program can hold twice the channels in the same registers."""
        dt0, dt1, dt2, dt3 = _four_columns(dt_t)
        du0, du1, du2, du3 = _four_columns(dtu_t)
        dy0, dy1, dy2, dy3 = _four_columns(dy_t)
        b0, b1, b2, b3 = _four_columns(b_t)
        c0, c1, c2, c3 = _four_columns(c_t)
        hp0 = h
        hp1 = _state_step(hp0, a_log2, dt0, du0, b0)
        hp2 = _state_step(hp1, a_log2, dt1, du1, b1)
        hp3 = _state_step(hp2, a_log2, dt2, du2, b2)
        h = _state_step(hp3, a_log2, dt3, du3, b3)
        g, a_next, da_acc, dc3, db3, gb3, gah3 = _bwd_step(
            g, a_next, da_acc, h, hp3, dt3, du3, dy3, b3, c3, a_log2, a_mat
        )
        g, a_next, da_acc, dc2, db2, gb2, gah2 = _bwd_step(
            g, a_next, da_acc, hp3, hp2, dt2, du2, dy2, b2, c2, a_log2, a_mat
        )
        g, a_next, da_acc, dc1, db1, gb1, gah1 = _bwd_step(
            g, a_next, da_acc, hp2, hp1, dt1, du1, dy1, b1, c1, a_log2, a_mat
        )
        g, a_next, da_acc, dc0, db0, gb0, gah0 = _bwd_step(
            g, a_next, da_acc, hp1, hp0, dt0, du0, dy0, b0, c0, a_log2, a_mat
        )
        return (
            g,
            a_next,
            da_acc,
            _join_four_columns(dc0, dc1, dc2, dc3),
            _join_four_columns(db0, db1, db2, db3),
            _join_four_columns(gb0, gb1, gb2, gb3),
            _join_four_columns(gah0, gah1, gah2, gah3),
        )

    @triton.jit
    def _advance_four(h, a_log2, dt_t, dtu_t, b_t):
        """h [BLOCK_D, N] carried over the 4 positions of [BLOCK_D, 4] dt / dt u and [N, 4] B tiles."""
        dt0, dt1, dt2, dt3 = _four_columns(dt_t)
        du0, du1, du2, du3 = _four_columns(dtu_t)
        b0, b1, b2, b3 = _four_columns(b_t)
        h = _state_step(h, a_log2, dt0, du0, b0)
        h = _state_step(h, a_log2, dt1, du1, b1)
        h = _state_step(h, a_log2, dt2, du2, b2)
        return _state_step(h, a_log2, dt3, du3, b3)

    @triton.jit
    def _advance_eight(h, a_log2, dt_t, dtu_t, b_t):
        """h [BLOCK_D, N] carried over the 8 positions of [BLOCK_D, 8] dt / dt u and [N, 8] B tiles."""
        dt0, dt1, dt2, dt3, dt4, dt5, dt6, dt7 = _eight_columns(dt_t)
        du0, du1, du2, du3, du4, du5, du6, du7 = _eight_columns(dtu_t)
        b0, b1, b2, b3, b4, b5, b6, b7 = _eight_columns(b_t)
        h = _state_step(h, a_log2, dt0, du0, b0)
        h = _state_step(h, a_log2, dt1, du1, b1)
        h = _state_step(h, a_log2, dt2, du2, b2)
        h = _state_step(h, a_log2, dt3, du3, b3)
        h = _state_step(h, a_log2, dt4, du4, b4)
        h = _state_step(h, a_log2, dt5, du5, b5)
        h = _state_step(h, a_log2, dt6, du6, b6)
        return _state_step(h, a_log2, dt7, du7, b7)

    @triton.jit
    def _scan_bwd_reg_kernel(
        u_ptr,
        delta_ptr,
        a_ptr,
        b_ptr,
        c_ptr,
        d_ptr,
        bias_ptr,
        dy_ptr,
        state_ptr,
        order_ptr,
        du_ptr,
        ddelta_ptr,
        da_ptr,
        db_ptr,
        dc_ptr,
        dd_ptr,
        dbias_ptr,
        dim,
        u_channels,
        length,
        n_state,
        channels_per_group,
        n_groups,
        n_tiles,
        stride_u_batch,
        stride_u_dim,
        stride_delta_batch,
        stride_delta_dim,
        stride_b_batch,
        stride_b_group,
        stride_b_state,
        stride_c_batch,
        stride_c_group,
        stride_c_state,
        stride_b_pos,
        stride_c_pos,
        stride_dy_batch,
        stride_dy_dim,
        HAS_D: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        REDUCE_BC: tl.constexpr,
        REORDER: tl.constexpr,
        N_PAD: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_L: tl.constexpr,
        T: tl.constexpr,
        ROTATE_STATES: tl.constexpr,
    ):
        """Backward in T-position steps (T = 8, or 4) with every value in registers: no scratch, no barriers.

        The steps run from the sequence's end to its start. Per step: its u, delta, dy tiles ([BLOCK_D, T]) and B, C
        tiles ([N, T]) arrive from the previous iteration's prefetch (the next step's loads are issued before this
        step's arithmetic, so their latency hides behind it); the state at the step's start is the forward's saved
        one (BLOCK_L = T) or is carried there from the saved one over the earlier steps of its BLOCK_L chunk; the
        step's T states are recomputed into registers and walked in reverse (`_reg_walk_eight` / `_reg_walk_four`,
        `_bwd_step` per position); dB / dC go out as one [N, T] atomic each; du, ddelta, dD and
        d(delta_bias) of the step are finished as tiles at once.
        Against version 7 (the same arithmetic with the chunk's states, dt, dt u and the two sums over the states
        in a per-program scratch buffer) this drops ~7 GB of L2 round trips per stage-0 scan, four barriers per
        chunk and the chunk's separate prologue and epilogue passes."""
        pid_d = tl.program_id(0)
        batch = tl.program_id(1)
        chans = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        group = (pid_d * BLOCK_D) // channels_per_group
        # ROTATE_STATES: the state each of the N_PAD slots of a [BLOCK_D, N] tile holds is rotated by one pair (slots
        # 0, 1 hold states 2, 3, ..., the last two 0, 1). Every N-indexed load, store and atomic below goes through
        # it, so the arithmetic is the same, but the addresses are only 2-contiguous: Triton then lays the tiles out
        # as 4 x 8 lanes with 2 x 2 values per thread instead of 8 x 4 lanes with 1 x 4, and each position's two sums
        # over the channels and two over the states take 20 shuffles instead of 28 (kernel_report, stage 0: 160
        # instead of 224 SHFL and 1,030 instead of 1,150 instructions per 8-position step; version 9).
        slots = tl.arange(0, N_PAD)
        if ROTATE_STATES and N_PAD >= 4:
            states = slots % 2 + 2 * ((slots // 2 + 1) % (N_PAD // 2))
        else:
            states = slots
        state_ok = states < n_state
        steps = tl.arange(0, T)

        a_mat = tl.load(a_ptr + chans[:, None] * n_state + states[None, :], mask=state_ok[None, :], other=0.0)
        a_mat = a_mat.to(tl.float32)
        a_log2 = a_mat * 1.4426950408889634
        if HAS_D:
            d_skip = tl.load(d_ptr + chans).to(tl.float32)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + chans).to(tl.float32)
        u_rows = u_ptr + batch * stride_u_batch + (chans % u_channels)[:, None] * stride_u_dim
        delta_rows = delta_ptr + batch * stride_delta_batch + chans[:, None] * stride_delta_dim
        dy_rows = dy_ptr + batch * stride_dy_batch + chans[:, None] * stride_dy_dim
        grad_rows = (batch * dim + chans[:, None]) * length  # du, ddelta: contiguous (batch, dim, L)
        b_rows = b_ptr + batch * stride_b_batch + group * stride_b_group + states[:, None] * stride_b_state
        c_rows = c_ptr + batch * stride_c_batch + group * stride_c_group + states[:, None] * stride_c_state
        dbc_rows = (batch * n_groups + group) * length * n_state + states[:, None]  # position-major (batch, G, L, N)
        state_rows = state_ptr + ((batch * dim + chans[:, None]) * n_tiles) * n_state + states[None, :]

        g = tl.zeros([BLOCK_D, N_PAD], dtype=tl.float32)  # dL/dh_t (through y_t and all later positions)
        a_next = tl.zeros([BLOCK_D, N_PAD], dtype=tl.float32)  # a_{t+1}; times g_{t+1} = 0 past the end
        da_acc = tl.zeros([BLOCK_D, N_PAD], dtype=tl.float32)
        dd_acc = tl.zeros([BLOCK_D, T], dtype=tl.float32)  # summed over the positions at the end
        dbias_acc = tl.zeros([BLOCK_D, T], dtype=tl.float32)

        # The last step's tiles; positions past the end read u = delta = dy = B = C = 0 and get dt = 0 below (the
        # state stays, g stays 0: they exist only at the sequence's end).
        n_steps = tl.cdiv(length, T)
        pos = (n_steps - 1) * T + steps
        pos_ok = pos < length
        mem = _memory_position(order_ptr, group, pos, length, REORDER)
        u, x, b_t, c_t = _step_tiles(
            u_rows, delta_rows, b_rows, c_rows, stride_b_pos, stride_c_pos, mem, pos_ok, state_ok
        )
        dy = tl.load(dy_rows + mem[None, :], mask=pos_ok[None, :], other=0.0)
        for jj in range(0, n_steps):
            base = (n_steps - 1 - jj) * T
            chunk = base // BLOCK_L
            h = tl.load(state_rows + chunk * n_state, mask=state_ok[None, :], other=0.0)
            # Prefetch the previous step's tiles (at the first step: the same tiles again, never used).
            prev_pos = tl.maximum(base - T, 0) + steps
            prev_ok = prev_pos < length  # all but a sequence shorter than one step
            prev_mem = _memory_position(order_ptr, group, prev_pos, length, REORDER)
            next_u, next_x, next_b, next_c = _step_tiles(
                u_rows, delta_rows, b_rows, c_rows, stride_b_pos, stride_c_pos, prev_mem, prev_ok, state_ok
            )
            next_dy = tl.load(dy_rows + prev_mem[None, :], mask=prev_ok[None, :], other=0.0)

            pos_ok = base + steps < length
            mem = _memory_position(order_ptr, group, base + steps, length, REORDER)
            u_f = u.to(tl.float32)
            x_f = x.to(tl.float32)
            if HAS_BIAS:
                x_f += bias[:, None]
            dt_t = tl.where(pos_ok[None, :], _softplus(x_f), 0.0)
            dtu_t = dt_t * u_f
            b_f = b_t.to(tl.float32)
            c_f = c_t.to(tl.float32)
            dy_f = dy.to(tl.float32)
            if BLOCK_L > T:  # carry the saved state from the chunk's start to this step's start
                for s0 in range(chunk * BLOCK_L, base, T):
                    s_mem = _memory_position(order_ptr, group, s0 + steps, length, REORDER)
                    s_x = tl.load(delta_rows + s_mem[None, :]).to(tl.float32)
                    if HAS_BIAS:
                        s_x += bias[:, None]
                    s_dt = _softplus(s_x)
                    s_u = tl.load(u_rows + s_mem[None, :]).to(tl.float32)
                    s_b = tl.load(b_rows + s_mem[None, :] * stride_b_pos, mask=state_ok[:, None], other=0.0)
                    if T == 8:
                        h = _advance_eight(h, a_log2, s_dt, s_dt * s_u, s_b.to(tl.float32))
                    else:
                        h = _advance_four(h, a_log2, s_dt, s_dt * s_u, s_b.to(tl.float32))

            if T == 8:
                g, a_next, da_acc, dc_t, db_t, gb_t, gah_t = _reg_walk_eight(
                    g, a_next, da_acc, h, a_log2, a_mat, dt_t, dtu_t, dy_f, b_f, c_f
                )
            else:
                g, a_next, da_acc, dc_t, db_t, gb_t, gah_t = _reg_walk_four(
                    g, a_next, da_acc, h, a_log2, a_mat, dt_t, dtu_t, dy_f, b_f, c_f
                )
            if REDUCE_BC:
                bc_mask = state_ok[:, None] & pos_ok[None, :]
                bc_at = dbc_rows + mem[None, :] * n_state
                tl.atomic_add(dc_ptr + bc_at, dc_t, mask=bc_mask, sem="relaxed")
                tl.atomic_add(db_ptr + bc_at, db_t, mask=bc_mask, sem="relaxed")
            # du_t = dt_t sum_n g_t B_t + D dy_t; ddt_t = u_t sum_n g_t B_t + sum_n g_t a_t h_{t-1} A;
            # ddelta_t = ddt_t softplus'(x_t) = ddt_t sigmoid(x_t) (softplus is the identity above 20).
            du = dt_t * gb_t
            if HAS_D:
                du += d_skip[:, None] * dy_f
                dd_acc += dy_f * u_f
            ddt = u_f * gb_t + gah_t
            ddelta = tl.where(pos_ok[None, :], tl.where(x_f > 20.0, ddt, ddt / (1.0 + tl.exp(-x_f))), 0.0)
            if HAS_BIAS:
                dbias_acc += ddelta
            tl.store(du_ptr + grad_rows + mem[None, :], du.to(du_ptr.dtype.element_ty), mask=pos_ok[None, :])
            tl.store(
                ddelta_ptr + grad_rows + mem[None, :], ddelta.to(ddelta_ptr.dtype.element_ty), mask=pos_ok[None, :]
            )
            u, x, dy, b_t, c_t = next_u, next_x, next_dy, next_b, next_c

        tl.atomic_add(
            da_ptr + chans[:, None] * n_state + states[None, :], da_acc, mask=state_ok[None, :], sem="relaxed"
        )
        if HAS_D:
            tl.atomic_add(dd_ptr + chans, tl.sum(dd_acc, axis=1), sem="relaxed")
        if HAS_BIAS:
            tl.atomic_add(dbias_ptr + chans, tl.sum(dbias_acc, axis=1), sem="relaxed")


def _block_d(channels_per_group: int, preferred: int) -> int:
    """Largest power of two <= preferred dividing the group size: a channel block must sit inside one group."""
    block = 1
    while block * 2 <= preferred and channels_per_group % (block * 2) == 0:
        block *= 2
    return block


def _next_pow2(value: int) -> int:
    return 1 << max(0, (value - 1).bit_length())


def _tile_length(length: int, preferred: int) -> int:
    """BLOCK_L for a sequence: the preferred length, or the next power of two >= L (at least 16) for short ones."""
    return min(preferred, max(16, _next_pow2(length)))


def _position_major(x: torch.Tensor) -> torch.Tensor:
    """The same (batch, G, N, L) view in position-major memory, strides (G L N, L N, 1, N): one position's N values
    are contiguous (a copy unless x already is)."""
    return x.transpose(2, 3).contiguous().transpose(2, 3)


def _forward(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    save_state: bool,
    orders: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """Launch the forward kernel; returns y (delta's shape, u's dtype), with save_state the states before every
    chunk-th position, (batch, dim, n_chunks, N) fp32 (else None), and the chunk length. Tile sizes come from the
    module constants at call time (scripts/benchmark_scan.py sweeps them). orders: see triton_selective_scan."""
    batch, dim, length = delta.shape
    n_groups, n_state = B.shape[1], A.shape[1]
    per_group = dim // n_groups
    block_d = _block_d(per_group, tile("FWD_BLOCK_D", length))
    chunk = _tile_length(length, tile("BWD_CHUNK", length))
    if chunk % 8:  # the forward's 8-position steps must start every saved-state chunk, the backward's steps divide it
        raise ValueError(f"triton_scan.BWD_CHUNK must be a multiple of 8, got {tile('BWD_CHUNK', length)}")
    n_chunks = triton.cdiv(length, chunk)
    y = torch.empty((batch, dim, length), device=u.device, dtype=u.dtype)  # in memory order, like delta
    state = (
        torch.empty((batch, dim, n_chunks, n_state), device=u.device, dtype=torch.float32)
        if save_state
        else y  # never written (SAVE_STATE=False), any pointer does
    )
    a_fp32 = A.float().contiguous()
    B, C = _position_major(B), _position_major(C)
    max_registers = tile("FWD_MAXNREG", length)
    extra = {} if max_registers is None else {"maxnreg": max_registers}
    _scan_fwd_vec_kernel[(dim // block_d, batch)](
        u,
        delta,
        a_fp32,
        B,
        C,
        D if D is not None else a_fp32,
        delta_bias if delta_bias is not None else a_fp32,
        y,
        state,
        orders if orders is not None else a_fp32,  # never read without REORDER
        dim,
        u.shape[1],
        length,
        n_state,
        per_group,
        n_chunks,
        u.stride(0),
        u.stride(1),
        delta.stride(0),
        delta.stride(1),
        B.stride(0),
        B.stride(1),
        B.stride(2),
        C.stride(0),
        C.stride(1),
        C.stride(2),
        B.stride(3),
        C.stride(3),
        HAS_D=D is not None,
        HAS_BIAS=delta_bias is not None,
        SAVE_STATE=save_state,
        REORDER=orders is not None,
        N_PAD=_next_pow2(n_state),
        BLOCK_D=block_d,
        BLOCK_L=chunk,
        PREFETCH=bool(tile("FWD_PREFETCH", length)),
        num_warps=tile("FWD_WARPS", length),
        **extra,
    )
    return y, (state if save_state else None), chunk


def _backward(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    dy: torch.Tensor,
    state: torch.Tensor,
    chunk: int,
    orders: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ...]:
    """Launch the backward kernel with the forward's saved states (one every ``chunk`` positions); returns (du, ddelta,
    dA, dB, dC, dD, ddelta_bias), du in u's shape."""
    batch, dim, length = delta.shape
    step = tile("BWD_STEP", length)
    if step not in (4, 8):
        raise ValueError(f"triton_scan.BWD_STEP must be 4 or 8, got {step}")
    n_groups, n_state = B.shape[1], A.shape[1]
    per_group = dim // n_groups
    block_d = _block_d(per_group, tile("BWD_BLOCK_D", length))
    # u shared by several groups (SS2D's fused cross-scan): channel d reads u channel d % u_channels; each group's du
    # in fp32, summed over the groups sharing a u channel below.
    shared_u = u.shape[1] != dim
    du = torch.empty((batch, dim, length), device=u.device, dtype=torch.float32 if shared_u else u.dtype)
    ddelta = torch.empty((batch, dim, length), device=u.device, dtype=delta.dtype)
    # Accumulated with atomics across programs: fp32 and zero-initialised; dB, dC position-major (batch, G, L, N).
    da = torch.zeros((dim, n_state), device=u.device, dtype=torch.float32)
    db = torch.zeros((batch, n_groups, length, n_state), device=u.device, dtype=torch.float32)
    dc = torch.zeros_like(db)
    dd = torch.zeros(dim, device=u.device, dtype=torch.float32)
    dbias = torch.zeros(dim, device=u.device, dtype=torch.float32)
    a_fp32 = A.float().contiguous()
    B, C = _position_major(B), _position_major(C)
    max_registers = tile("BWD_MAXNREG", length)
    extra = {} if max_registers is None else {"maxnreg": max_registers}
    _scan_bwd_reg_kernel[(dim // block_d, batch)](
        u,
        delta,
        a_fp32,
        B,
        C,
        D if D is not None else a_fp32,
        delta_bias if delta_bias is not None else a_fp32,
        dy,
        state,
        orders if orders is not None else a_fp32,  # never read without REORDER
        du,
        ddelta,
        da,
        db,
        dc,
        dd,
        dbias,
        dim,
        u.shape[1],
        length,
        n_state,
        per_group,
        n_groups,
        state.shape[2],
        u.stride(0),
        u.stride(1),
        delta.stride(0),
        delta.stride(1),
        B.stride(0),
        B.stride(1),
        B.stride(2),
        C.stride(0),
        C.stride(1),
        C.stride(2),
        B.stride(3),
        C.stride(3),
        dy.stride(0),
        dy.stride(1),
        HAS_D=D is not None,
        HAS_BIAS=delta_bias is not None,
        REDUCE_BC=BWD_REDUCE_BC,
        REORDER=orders is not None,
        N_PAD=_next_pow2(n_state),
        BLOCK_D=block_d,
        BLOCK_L=chunk,
        T=step,
        ROTATE_STATES=bool(tile("BWD_ROTATE_STATES", length)),
        num_warps=tile("BWD_WARPS", length),
        **extra,
    )
    db, dc = db.transpose(2, 3), dc.transpose(2, 3)  # (batch, G, N, L) views; .to below copies only for a dtype change
    if shared_u:
        du = du.view(batch, dim // u.shape[1], u.shape[1], length).sum(dim=1).to(u.dtype)
    return (
        du,
        ddelta,
        da.to(A.dtype),
        db.to(B.dtype),
        dc.to(C.dtype),
        None if D is None else dd.to(D.dtype),
        None if delta_bias is None else dbias.to(delta_bias.dtype),
    )


class TritonSelectiveScan(torch.autograd.Function):
    """Differentiable Triton selective scan; saves the inputs plus the (batch, dim, n_chunks, N) fp32 chunk states."""

    @staticmethod
    def forward(ctx: Any, u, delta, A, B, C, D, delta_bias, orders):  # type: ignore[override]
        y, state, chunk = _forward(u, delta, A, B, C, D, delta_bias, save_state=True, orders=orders)
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, state, orders)
        ctx.chunk = chunk
        return y

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor):  # type: ignore[override]
        u, delta, A, B, C, D, delta_bias, state, orders = ctx.saved_tensors
        dy = last_dim_contiguous(dy)
        grads = _backward(u, delta, A, B, C, D, delta_bias, dy, state, ctx.chunk, orders)
        return (*grads, None)


def _check_orders(u: torch.Tensor, delta: torch.Tensor, B: torch.Tensor, orders: torch.Tensor) -> None:
    """Raise ValueError unless ``orders`` and a possibly shared ``u`` fit triton_selective_scan's signature (the
    kernels index memory with the orders, so a wrong shape would read out of bounds)."""
    batch, dim, length = delta.shape
    n_groups = B.shape[1] if B.dim() == 4 else 1
    if orders.shape != (n_groups, length) or orders.dtype != torch.int32 or orders.device != delta.device:
        raise ValueError(
            f"triton_selective_scan: orders must be int32 (groups={n_groups}, L={length}) on {delta.device}, got "
            f"{orders.dtype} {tuple(orders.shape)} on {orders.device}"
        )
    per_group = dim // n_groups
    u_channels = u.shape[1] if u.dim() == 3 else 0
    shape_ok = u.dim() == 3 and (u.shape[0], u.shape[2]) == (batch, length) and u_channels > 0
    if not (shape_ok and u_channels % per_group == 0 and dim % u_channels == 0) or u.device != delta.device:
        raise ValueError(
            f"triton_selective_scan: with orders, u must be (batch={batch}, k * {per_group}, L={length}) with k "
            f"dividing the {n_groups} groups, on {delta.device}; got {tuple(u.shape)} on {u.device}"
        )


def triton_selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    orders: torch.Tensor | None = None,
) -> torch.Tensor:
    """Selective scan with delta_softplus=True (mamba-ssm's ``selective_scan_fn`` without z), differentiable.

    Args:
        u, delta: (batch, dim, L), float32/bfloat16/float16 (last dim contiguous, else copied).
        A: (dim, N) real, negative for a decaying state (computed in float32).
        B, C: (batch, G, N, L) with channel d using group d // (dim / G), or (batch, N, L) (one group); any float dtype.
        D, delta_bias: (dim,) or None.
        orders: None (every group scans positions 0, 1, ..., L-1), or (G, L) int32 on u's device whose row g is a
            permutation of 0..L-1 (not checked: each entry must lie in [0, L)): group g's recurrence visits the
            positions orders[g, 0], orders[g, 1], ... of u, delta, B and C, and y (and every gradient) is written at
            those positions, so all tensors stay in one memory order while each group scans in its own order. With
            orders, u may also have fewer channels, (batch, k dim / G, L) with k dividing G: channel d reads u channel
            d % (k dim / G), so G / k groups share each u channel (SS2D's fused cross-scan: the four directions read
            one or two copies of the feature map), and u's gradient is summed over the groups sharing it.

    Returns:
        y: (batch, dim, L) in u's dtype; the state and all arithmetic are float32 (float64 inputs are computed in
        float32 too). Gradients come back in each input's dtype.
    """
    if triton is None:
        raise RuntimeError("scripts/triton_scan.py: Triton is not installed; use the 'cuda' or 'torch' scan backend")
    if orders is None:
        check_scan_inputs(u, delta, A, B, C, D, delta_bias)
    else:
        check_scan_inputs(delta, delta, A, B, C, D, delta_bias)
        _check_orders(u, delta, B, orders)
    B = B.unsqueeze(1) if B.dim() == 3 else B
    C = C.unsqueeze(1) if C.dim() == 3 else C
    u, delta, B, C = (last_dim_contiguous(t) for t in (u, delta, B, C))
    if orders is not None:
        orders = orders.contiguous()
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (u, delta, A, B, C, D, delta_bias)):
        return TritonSelectiveScan.apply(u, delta, A, B, C, D, delta_bias, orders)
    return _forward(u, delta, A, B, C, D, delta_bias, save_state=False, orders=orders)[0]
