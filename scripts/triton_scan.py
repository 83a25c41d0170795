"""Triton selective scan (S6) for Mamba-UNet's SS2D: forward version 3 (default, FWD_KIND = "v3") or version 2
("seq"/"tile"), backward version 3 (default, BWD_KIND = "v3") or version 2, fp32 state, any float I/O.

Computes mamba-ssm's ``selective_scan_fn(u, delta, A, B, C, D, z=None, delta_bias, delta_softplus=True)`` with grouped
B/C: ``dt = softplus(delta + delta_bias)``; ``h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t`` (``h_{-1} = 0``);
``y_t = sum_n C_t[n] h_t[n] + D u_t``. Channel d uses group d // (dim / G) of B and C.

Why chunks (version 1 walked all of L in one program per (channel block, batch item): ~1,152 programs for SS2D's
stage 0, latency-bound at ~6% of the H200's bandwidth, see docs/performance.md): L is split into chunks of T
positions and every (channel block, chunk, batch item) is a program of its own, ~50x more programs on long sequences.

Forward, three launches (only the last one when L fits one chunk):
 1. chunk summary: the chunk's end state from a zero start, in parallel form, no scan:
    ``h_end = sum_t exp(A R_t) dt_t u_t B_t`` with ``R_t`` the dt summed over the chunk positions after t (a reverse
    ``tl.cumsum``), and the chunk's dt total ``S`` (its decay is ``exp(A S)``). A < 0 and R >= 0: exp never overflows.
 2. carry: per (batch, channel, state), sequential over the chunks, ``start_{c+1} = exp(A S_c) start_c + h_end_c``;
    the chunk-start states, (batch, n_chunks, dim, N) fp32, are all the training forward saves for the backward.
 3. output: the recurrence inside each chunk from its start state, one position per step ("seq") or as
    ``tl.associative_scan`` tiles ("tile"), writes y.
Backward, the same three steps for the adjoint ``g_t = C_t dy_t + exp(dt_{t+1} A) g_{t+1}`` in reverse: the summary of
chunk c is what it passes back to chunk c-1, ``sum_t exp(A P_t) C_t dy_t`` with ``P_t`` the inclusive prefix sum of dt
over the chunk; a reverse carry gives each chunk ``K_c = exp(dt A) g`` at the first position after it; one kernel per
chunk then recomputes h (associative scan from the saved chunk-start state) and g (reverse associative scan from K_c)
on a [BLOCK_D, N, T] tile and produces du, ddelta and per-program partial sums of dA, dD, d(delta_bias), dB, dC.
The training forward uses the backward's chunk length, so its saved chunk starts are the backward's.

dB and dC are sums over a group's channels: a backward program loops over BWD_D_PER_PROGRAM channels (BWD_BLOCK_D at a
time) to reduce them in registers first, then either writes one partial per channel block, summed by torch
("partial", the default: deterministic gradients; the partials are N / BWD_D_PER_PROGRAM = 1/4 of u's size each,
one extra write and read) or adds it with fp32 atomics ("atomic": no extra DRAM round trip, but group size / 64 =
3..24 adds per address serialise in L2); scripts/benchmark_scan.py --sweep times both. dA, dD, d(delta_bias) go
through (batch, n_chunks, dim[, N]) partial buffers summed by torch: atomics from ~1,000 (batch, chunk) programs on
the same dim x N addresses would serialise.

Forward version 3 (``_v3_fwd_kernel``; static analysis only, not yet measured): one thread per channel holding all
N states in registers (a [N, BLOCK_D] state with BLOCK_D = 32 * V3_WARPS / V3_N_SPLIT: the sum over N for y needs no
shuffle), the recurrence one position at a time. Where rows are 16-byte aligned (L % 16 == 0) u, delta, y move as
[T, BLOCK_D] tiles with the T = 4 positions inside the thread (one 16-byte access per 4 positions) and B, C as
[N, T, BLOCK_D] broadcast tiles; a position is taken out of a tile by a where/sum over the in-thread axis (filler
-0.0, so it folds to a register move). Elsewhere (L = 196, 49) one position per load. Long sequences that would give
fewer than V3_MIN_WARPS warps are split into chunks as above (a summary launch of the same kernel without C/y, v2's
carry, the output launch); with the version-2 backward the training forward runs at BWD_CHUNK (its chunk starts).

Backward version 3 (``_v3_bwd_kernel``, BWD_KIND = "v3"; static analysis only, not yet measured): the training
forward is version 3's at its own chunking and also writes the state entering every V3B_CKPT-th position (fp32
checkpoints, N / V3B_CKPT values per (channel, position)). One thread per channel holds the N states of h, g, A and
the dA sum; each program walks its chunk backwards one checkpoint segment at a time: the states h_t of V3B_T
positions are recomputed from the checkpoint (after a sweep to the tile start when V3B_CKPT > V3B_T) into registers,
then g_t = C_t dy_t + exp(dt_{t+1} A) g_{t+1} goes backwards over them with e_t = g_t (h_t - dt_t u_t B_t); du, ddelta
come from in-thread sums over N, dB_t and dC_t from a sum over the program's channels (across lanes) into per-program
partial rows (or atomics, BWD_BC_REDUCE). Chunks as the forward's (V3B_MIN_WARPS); the adjoint entering a chunk comes
from a summary launch of the same kernel (g alone, from zero) and the reverse carry kernel.

Importing this module never needs Triton (CI has none): the kernels are defined only when ``triton`` imports.
"""

from __future__ import annotations

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

# Knobs, read at call time (scripts/benchmark_scan.py --sweep sets them). Chunk lengths are powers of two; a sequence
# shorter than a chunk gets one chunk of the next power of two >= L (at least 16).
FWD_CHUNK = 128  # positions per program of the inference forward
BWD_CHUNK = 64  # positions per backward program (one [BWD_BLOCK_D, N, BWD_CHUNK] tile); the training forward's chunk
# Forward output kernel: "seq" (one position per step, FWD_UNROLL-unrolled, FWD_BLOCK_D channels) or "tile"
# (associative scan over [FWD_TILE_BLOCK_D, N, FWD_TILE_T] tiles).
FWD_KIND, FWD_BLOCK_D, FWD_WARPS, FWD_UNROLL = "v3", 16, 4, 4
FWD_TILE_BLOCK_D, FWD_TILE_T, FWD_TILE_WARPS = 4, 32, 4
# Chunk-summary kernel (forward and backward): SUM_BLOCK_D channels x SUM_BLOCK_T positions per step.
SUM_BLOCK_D, SUM_BLOCK_T, SUM_WARPS = 4, 64, 4
# Backward: BWD_D_PER_PROGRAM channels per program, BWD_BLOCK_D per tile; dB/dC reduction "partial" or "atomic".
BWD_BLOCK_D, BWD_D_PER_PROGRAM, BWD_WARPS, BWD_BC_REDUCE = 2, 64, 8, "partial"
# Fewer channels per program (halving) while the backward has fewer programs than this (short sequences, few chunks).
BWD_MIN_PROGRAMS = 8192
# Register budget (ptxas for sm_90, Triton 3.9): the tile kernels need ~150 registers/thread at 8 values of a
# [BLOCK_D, N, T] tile per thread (BLOCK_D * 16 * T / (32 * warps)) and hit the 255 cap, spilling past it, at 16.
# The defaults keep 8: backward 2 x 16 x 64 over 8 warps, tile forward 4 x 16 x 32 over 4 warps (96 registers).
CARRY_BLOCK, CARRY_WARPS = 256, 4  # carry kernel: (channel, state) pairs per program
# Version 3 forward (FWD_KIND = "v3"): 32 * V3_WARPS threads per program, V3_N_SPLIT threads per channel (each holds
# N / V3_N_SPLIT states; 1 = all 16 states in one thread, no cross-thread sum for y), V3_T positions per tile load.
# Inference chunks: V3_FWD_CHUNK positions (0 = whole sequence), or None = whole sequence unless that gives fewer than
# V3_MIN_WARPS warps in all (stage 0 at batch 24: 576 warps for 528 SM sub-partitions), then the fewest chunks that
# reach it. Training runs it at BWD_CHUNK (the version-2 backward needs its chunk starts).
V3_WARPS, V3_N_SPLIT, V3_T = 1, 1, 4
V3_TILED = True  # tile loads where rows are 16-byte aligned (L % 16 == 0); False: one position at a time always
V3_FWD_CHUNK: int | None = None
V3_MIN_WARPS = 2112  # 4 warps per sub-partition of an H100/H200 (132 SMs x 4)
# Backward: "v3" (_v3_bwd_kernel; its training forward is always version 3's, writing checkpoints) or "v2"
# (_chunk_bwd_kernel; the training forward runs FWD_KIND at BWD_CHUNK and saves the chunk starts).
BWD_KIND = "v3"
# Version 3 backward: 32 * V3B_WARPS channels per program (one thread each), V3B_T positions recomputed into
# registers at a time, a forward checkpoint every V3B_CKPT positions (4, 8 or 16, a multiple of V3B_T and V3_T: the
# training forward saves N / V3B_CKPT fp32 values per (channel, position), 4 x u's size at fp32 and 4; at 8 or 16 the
# backward first sweeps each checkpoint segment to get its tile starts, and its unrolled code doubles or quadruples).
# Chunks: V3B_CHUNK positions (0 = whole sequence) or None = the fewest that give V3B_MIN_WARPS warps (as V3_FWD_CHUNK).
V3B_WARPS, V3B_T, V3B_CKPT = 1, 4, 4
V3B_CHUNK: int | None = None
V3B_MIN_WARPS = 2112


def triton_available() -> bool:
    """True when Triton imports and can run here: on CUDA, or on CPU tensors under ``TRITON_INTERPRET=1``."""
    return triton is not None


if triton is not None:

    @triton.jit
    def _linear_combine(a_left, b_left, a_right, b_right):
        """Compose h -> a_left h + b_left, then h -> a_right h + b_right (left = applied first)."""
        return a_left * a_right, a_right * b_left + b_right

    @triton.jit
    def _softplus(x):
        """log(1 + exp(x)) like mamba-ssm (identity above 20), with log1p accuracy for tiny exp(x)."""
        z = tl.exp(-tl.abs(x))
        log1p_z = tl.where(z < 1e-4, z * (1.0 - 0.5 * z), tl.log(1.0 + z))
        return tl.where(x > 20.0, x, tl.maximum(x, 0.0) + log1p_z)

    @triton.jit
    def _program_coords(n_dblocks, n_chunks):
        """1-D grid (no 65,535 limit on the y/z axes), channel blocks fastest so that neighbouring programs share the
        (batch, chunk)'s B/C in L2; the batch index is int64 because batch offsets can pass 2**31."""
        pid = tl.program_id(0)
        pid_d = pid % n_dblocks
        rest = pid // n_dblocks
        return pid_d, rest % n_chunks, (rest // n_chunks).to(tl.int64)

    @triton.jit
    def _chunk_summary_kernel(
        delta_ptr,
        v_ptr,
        m_ptr,
        a_ptr,
        bias_ptr,
        out_ptr,
        sums_ptr,
        dim,
        length,
        n_state,
        channels_per_group,
        n_chunks,
        n_dblocks,
        stride_delta_batch,
        stride_delta_dim,
        stride_v_batch,
        stride_v_dim,
        stride_m_batch,
        stride_m_group,
        stride_m_state,
        HAS_BIAS: tl.constexpr,
        PREFIX: tl.constexpr,
        N_PAD: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_T: tl.constexpr,
        CHUNK: tl.constexpr,
    ):
        """Per (channel block, chunk, batch item): out = sum_t exp(A W_t) w_t[d] m_t[n], sums = sum_t dt_t.

        Forward (PREFIX=False): w = dt u, m = B, W_t = dt summed over the chunk after t: the chunk's end state from a
        zero start. Backward (PREFIX=True): w = dy, m = C, W_t = dt summed over the chunk up to t included: the
        adjoint the chunk passes back, exp(dt_{t0} A) g_{t0} at its first position t0, with zero adjoint after it.
        The chunk goes by BLOCK_T-position steps (forward in time for PREFIX=False, backward for PREFIX=True), each
        step's result folded in Horner-style: acc = exp(A S_step) acc + step_sum.
        """
        pid_d, chunk, batch = _program_coords(n_dblocks, n_chunks)
        chans = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        group = (pid_d * BLOCK_D) // channels_per_group
        states = tl.arange(0, N_PAD)
        state_ok = states < n_state
        positions = tl.arange(0, BLOCK_T)
        a_mat = tl.load(a_ptr + chans[:, None] * n_state + states[None, :], mask=state_ok[None, :], other=0.0)
        a_log2 = a_mat.to(tl.float32) * 1.4426950408889634  # exp(x) = exp2(x log2 e); padded states: A = 0, m = 0
        if HAS_BIAS:
            bias = tl.load(bias_ptr + chans).to(tl.float32)
        delta_rows = delta_ptr + batch * stride_delta_batch + chans[:, None] * stride_delta_dim
        v_rows = v_ptr + batch * stride_v_batch + chans[:, None] * stride_v_dim
        m_rows = m_ptr + batch * stride_m_batch + group * stride_m_group + states[:, None] * stride_m_state

        acc = tl.zeros([BLOCK_D, N_PAD], dtype=tl.float32)
        total = tl.zeros([BLOCK_D], dtype=tl.float32)
        for step in range(0, CHUNK // BLOCK_T):
            if PREFIX:
                sub = CHUNK // BLOCK_T - 1 - step
            else:
                sub = step
            pos = chunk * CHUNK + sub * BLOCK_T + positions
            pos_ok = pos < length
            delta = tl.load(delta_rows + pos[None, :], mask=pos_ok[None, :], other=0.0).to(tl.float32)
            if HAS_BIAS:
                delta += bias[:, None]
            # dt = 0 and w = 0 past the end of the sequence: no contribution, no decay.
            dt = tl.where(pos_ok[None, :], _softplus(delta), 0.0)
            w = tl.load(v_rows + pos[None, :], mask=pos_ok[None, :], other=0.0).to(tl.float32)
            if not PREFIX:
                w = w * dt
            m = tl.load(m_rows + pos[None, :], mask=state_ok[:, None] & pos_ok[None, :], other=0.0).to(tl.float32)
            if PREFIX:
                weight_sum = tl.cumsum(dt, axis=1)
            else:
                # Reverse inclusive cumsum minus dt, not S - cumsum: no cancellation where R_t << S.
                weight_sum = tl.cumsum(dt, axis=1, reverse=True) - dt
            step_total = tl.sum(dt, axis=1)
            terms = tl.exp2(a_log2[:, :, None] * weight_sum[:, None, :]) * (w[:, None, :] * m[None, :, :])
            acc = tl.exp2(a_log2 * step_total[:, None]) * acc + tl.sum(terms, axis=2)
            total += step_total
        row = (batch * n_chunks + chunk) * dim + chans
        tl.store(out_ptr + row[:, None] * n_state + states[None, :], acc, mask=state_ok[None, :])
        tl.store(sums_ptr + row, total)

    @triton.jit
    def _chunk_carry_kernel(
        state_ptr, sums_ptr, a_ptr, dim, n_state, n_chunks, n_blocks, REVERSE: tl.constexpr, BLOCK: tl.constexpr
    ):
        """In place over (batch, n_chunks, dim, N): chunk summaries in, the state entering each chunk out.

        Forward: start_0 = 0, start_{c+1} = exp(A S_c) start_c + summary_c. Backward (REVERSE): the same from the last
        chunk down, K_{c-1} = exp(A S_c) K_c + summary_c."""
        pid = tl.program_id(0)
        batch = (pid // n_blocks).to(tl.int64)
        idx = (pid % n_blocks) * BLOCK + tl.arange(0, BLOCK)  # channel * n_state + state
        ok = idx < dim * n_state
        a_log2 = tl.load(a_ptr + idx, mask=ok, other=0.0).to(tl.float32) * 1.4426950408889634
        h = tl.zeros([BLOCK], dtype=tl.float32)
        # The last chunk in scan order passes nothing on, so its summary is never read (v3 does not even write it).
        for step in range(0, n_chunks - 1):
            if REVERSE:
                chunk = n_chunks - 1 - step
            else:
                chunk = step
            base = batch * n_chunks + chunk
            local = tl.load(state_ptr + base * dim * n_state + idx, mask=ok, other=0.0)
            total = tl.load(sums_ptr + base * dim + idx // n_state, mask=ok, other=0.0)
            tl.store(state_ptr + base * dim * n_state + idx, h, mask=ok)
            h = tl.exp2(a_log2 * total) * h + local
        if REVERSE:
            last = batch * n_chunks
        else:
            last = batch * n_chunks + n_chunks - 1
        tl.store(state_ptr + last * dim * n_state + idx, h, mask=ok)

    @triton.jit
    def _chunk_output_kernel(
        u_ptr,
        delta_ptr,
        a_ptr,
        b_ptr,
        c_ptr,
        d_ptr,
        bias_ptr,
        y_ptr,
        start_ptr,
        dim,
        length,
        n_state,
        channels_per_group,
        n_chunks,
        n_dblocks,
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
        HAS_D: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        HAS_START: tl.constexpr,
        SEQ: tl.constexpr,
        N_PAD: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_T: tl.constexpr,
        CHUNK: tl.constexpr,
        UNROLL: tl.constexpr,
    ):
        """y for one (channel block, chunk, batch item), the recurrence run from the chunk's start state.

        SEQ: one position per step, the [BLOCK_D, N] state in registers (no scan across threads, strided loads that
        L1 serves for the following positions). Else BLOCK_T-position tiles: coalesced [BLOCK_D, BLOCK_T] loads and
        one associative scan per tile (combine (a1, b1), (a2, b2) -> (a1 a2, a2 b1 + b2))."""
        pid_d, chunk, batch = _program_coords(n_dblocks, n_chunks)
        chans = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        group = (pid_d * BLOCK_D) // channels_per_group
        states = tl.arange(0, N_PAD)
        state_ok = states < n_state
        a_mat = tl.load(a_ptr + chans[:, None] * n_state + states[None, :], mask=state_ok[None, :], other=0.0)
        a_log2 = a_mat.to(tl.float32) * 1.4426950408889634
        if HAS_D:
            d_skip = tl.load(d_ptr + chans).to(tl.float32)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + chans).to(tl.float32)
        if HAS_START:
            row = (batch * n_chunks + chunk) * dim + chans
            h = tl.load(start_ptr + row[:, None] * n_state + states[None, :], mask=state_ok[None, :], other=0.0)
        else:
            h = tl.zeros([BLOCK_D, N_PAD], dtype=tl.float32)
        begin = chunk * CHUNK
        if SEQ:
            u_rows = u_ptr + batch * stride_u_batch + chans * stride_u_dim
            delta_rows = delta_ptr + batch * stride_delta_batch + chans * stride_delta_dim
            y_rows = y_ptr + batch * dim * length + chans * length
            b_rows = b_ptr + batch * stride_b_batch + group * stride_b_group + states * stride_b_state
            c_rows = c_ptr + batch * stride_c_batch + group * stride_c_group + states * stride_c_state
            for pos in tl.range(begin, tl.minimum(begin + CHUNK, length), loop_unroll_factor=UNROLL):
                u = tl.load(u_rows + pos).to(tl.float32)
                delta = tl.load(delta_rows + pos).to(tl.float32)
                if HAS_BIAS:
                    delta += bias
                dt = _softplus(delta)
                b_col = tl.load(b_rows + pos, mask=state_ok, other=0.0).to(tl.float32)
                c_col = tl.load(c_rows + pos, mask=state_ok, other=0.0).to(tl.float32)
                h = tl.exp2(dt[:, None] * a_log2) * h + (dt * u)[:, None] * b_col[None, :]
                y = tl.sum(h * c_col[None, :], axis=1)
                if HAS_D:
                    y += d_skip * u
                tl.store(y_rows + pos, y.to(y_ptr.dtype.element_ty))
        else:
            positions = tl.arange(0, BLOCK_T)
            u_rows = u_ptr + batch * stride_u_batch + chans[:, None] * stride_u_dim
            delta_rows = delta_ptr + batch * stride_delta_batch + chans[:, None] * stride_delta_dim
            y_rows = y_ptr + batch * dim * length + chans[:, None] * length
            b_rows = b_ptr + batch * stride_b_batch + group * stride_b_group + states[:, None] * stride_b_state
            c_rows = c_ptr + batch * stride_c_batch + group * stride_c_group + states[:, None] * stride_c_state
            for sub in range(0, CHUNK // BLOCK_T):
                pos = begin + sub * BLOCK_T + positions
                pos_ok = pos < length
                u = tl.load(u_rows + pos[None, :], mask=pos_ok[None, :], other=0.0).to(tl.float32)
                delta = tl.load(delta_rows + pos[None, :], mask=pos_ok[None, :], other=0.0).to(tl.float32)
                if HAS_BIAS:
                    delta += bias[:, None]
                # dt = 0 past the end: decay 1 and input 0 keep the carried state unchanged there.
                dt = tl.where(pos_ok[None, :], _softplus(delta), 0.0)
                bc_mask = state_ok[:, None] & pos_ok[None, :]
                b_tile = tl.load(b_rows + pos[None, :], mask=bc_mask, other=0.0).to(tl.float32)
                c_tile = tl.load(c_rows + pos[None, :], mask=bc_mask, other=0.0).to(tl.float32)
                decay = tl.exp2(dt[:, None, :] * a_log2[:, :, None])  # [BLOCK_D, N, BLOCK_T]
                inputs = (dt * u)[:, None, :] * b_tile[None, :, :]
                decay_prod, h_local = tl.associative_scan((decay, inputs), axis=2, combine_fn=_linear_combine)
                h_all = h_local + decay_prod * h[:, :, None]
                y = tl.sum(h_all * c_tile[None, :, :], axis=1)
                if HAS_D:
                    y += d_skip[:, None] * u
                tl.store(y_rows + pos[None, :], y.to(y_ptr.dtype.element_ty), mask=pos_ok[None, :])
                h = tl.sum(tl.where(positions[None, None, :] == BLOCK_T - 1, h_all, 0.0), axis=2)

    @triton.jit
    def _v3_store_states(ptr, rows, h, states, n_state, N_PAD: tl.constexpr):
        """Store the [N_PAD, BLOCK_D] state h at ptr + rows * n_state + n, one state at a time (strided [BLOCK_D]
        stores: a contiguous [N_PAD, BLOCK_D] access would get a vectorised layout carried into the loop)."""
        for n in tl.static_range(N_PAD):
            h_n = tl.sum(tl.where(states[:, None] == n, h, -0.0), axis=0)
            tl.store(ptr + rows * n_state + n, h_n, mask=rows * 0 + n < n_state)

    @triton.jit
    def _v3_tile(
        h,
        total,
        a_log2,
        bias,
        d_skip,
        u_rows,
        delta_rows,
        y_rows,
        b_rows,
        c_rows,
        state_ok,
        base,
        length,
        HAS_D: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        SUMMARY: tl.constexpr,
        MASKED: tl.constexpr,
        TILED: tl.constexpr,
        T: tl.constexpr,
    ):
        """Version 3: T positions from base for the [N_PAD, BLOCK_D] state h (every thread holds all the states of
        its channel); returns h after them and total + their dt. u, delta, y move as [T, BLOCK_D] tiles (positions
        inside the thread: one 16-byte access per T = 4 positions), B and C as [N_PAD, T, BLOCK_D] tiles (the same
        addresses for all channels: broadcast loads, 16 bytes each); position t is taken out of a tile with a
        where/sum over the in-thread axis whose filler is -0.0, so that it folds to a register move after unrolling."""
        if not TILED:
            # Rows not 16-byte aligned (L % 16 != 0): a [T, BLOCK_D] tile would get a layout with T across threads
            # (shuffles, spills), so each position is loaded on its own ([BLOCK_D] and [N_PAD, BLOCK_D] vectors).
            zero2 = tl.zeros_like(a_log2).to(tl.int32)
            for t in tl.static_range(T):
                p = base + t
                if MASKED:
                    ok_t = (zero2 + p) < length
                    ok_d = (tl.zeros_like(bias).to(tl.int32) + p) < length
                    u_t = tl.load(u_rows + p, mask=ok_d, other=0.0).to(tl.float32)
                    delta_t = tl.load(delta_rows + p, mask=ok_d, other=0.0).to(tl.float32)
                    b_t = tl.load(b_rows[:, None] + p + zero2, mask=state_ok[:, None] & ok_t, other=0.0)
                else:
                    u_t = tl.load(u_rows + p).to(tl.float32)
                    delta_t = tl.load(delta_rows + p).to(tl.float32)
                    b_t = tl.load(b_rows[:, None] + p + zero2, mask=state_ok[:, None], other=0.0)
                if HAS_BIAS:
                    delta_t += bias
                dt_t = _softplus(delta_t)
                if MASKED:
                    dt_t = tl.where(ok_d, dt_t, 0.0)
                total += dt_t
                h = tl.exp2(a_log2 * dt_t[None, :]) * h + b_t.to(tl.float32) * (dt_t * u_t)[None, :]
                if not SUMMARY:
                    if MASKED:
                        c_t = tl.load(c_rows[:, None] + p + zero2, mask=state_ok[:, None] & ok_t, other=0.0)
                    else:
                        c_t = tl.load(c_rows[:, None] + p + zero2, mask=state_ok[:, None], other=0.0)
                    y_t = tl.sum(h * c_t.to(tl.float32), axis=0)
                    if HAS_D:
                        y_t += d_skip * u_t
                    if MASKED:
                        tl.store(y_rows + p, y_t.to(y_rows.dtype.element_ty), mask=ok_d)
                    else:
                        tl.store(y_rows + p, y_t.to(y_rows.dtype.element_ty))
            return h, total
        cols = tl.arange(0, T)
        pos = base + cols
        # The zero channel offset makes the B/C tiles [N_PAD, T, BLOCK_D]: every thread loads the same addresses.
        zero = tl.zeros_like(bias).to(tl.int32)[None, None, :]
        bc_off = pos[None, :, None] + zero
        bc_mask = state_ok[:, None, None] & (zero == 0)
        if MASKED:
            ok = pos < length
            bc_mask = bc_mask & ok[None, :, None]
            u = tl.load(u_rows[None, :] + pos[:, None], mask=ok[:, None], other=0.0).to(tl.float32)
            delta = tl.load(delta_rows[None, :] + pos[:, None], mask=ok[:, None], other=0.0).to(tl.float32)
        else:
            u = tl.load(u_rows[None, :] + pos[:, None]).to(tl.float32)
            delta = tl.load(delta_rows[None, :] + pos[:, None]).to(tl.float32)
        b = tl.load(b_rows[:, None, None] + bc_off, mask=bc_mask, other=0.0).to(tl.float32)
        if not SUMMARY:
            c = tl.load(c_rows[:, None, None] + bc_off, mask=bc_mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            delta += bias[None, :]
        dt = _softplus(delta)
        if MASKED:
            dt = tl.where(ok[:, None], dt, 0.0)  # decay 1, input 0 past the end
        dt_u = dt * u
        total += tl.sum(dt, axis=0)
        y = tl.zeros_like(u)
        for t in tl.static_range(T):
            pick = cols == t
            dt_t = tl.sum(tl.where(pick[:, None], dt, -0.0), axis=0)
            dt_u_t = tl.sum(tl.where(pick[:, None], dt_u, -0.0), axis=0)
            b_t = tl.sum(tl.where(pick[None, :, None], b, -0.0), axis=1)
            h = tl.exp2(a_log2 * dt_t[None, :]) * h + b_t * dt_u_t[None, :]
            if not SUMMARY:
                c_t = tl.sum(tl.where(pick[None, :, None], c, -0.0), axis=1)
                y = tl.where(pick[:, None], tl.sum(h * c_t, axis=0)[None, :], y)
        if not SUMMARY:
            if HAS_D:
                y += d_skip[None, :] * u
            if MASKED:
                tl.store(y_rows[None, :] + pos[:, None], y.to(y_rows.dtype.element_ty), mask=ok[:, None])
            else:
                tl.store(y_rows[None, :] + pos[:, None], y.to(y_rows.dtype.element_ty))
        return h, total

    @triton.jit
    def _v3_fwd_kernel(
        u_ptr,
        delta_ptr,
        a_ptr,
        b_ptr,
        c_ptr,
        d_ptr,
        bias_ptr,
        y_ptr,
        state_ptr,
        sums_ptr,
        ckpt_ptr,
        dim,
        length,
        n_state,
        channels_per_group,
        n_chunks,
        grid_chunks,
        n_dblocks,
        n_seg,
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
        HAS_D: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        HAS_START: tl.constexpr,
        SUMMARY: tl.constexpr,
        TILED: tl.constexpr,
        N_PAD: tl.constexpr,
        BLOCK_D: tl.constexpr,
        T: tl.constexpr,
        CHUNK: tl.constexpr,
        CKPT: tl.constexpr,
    ):
        """Version 3 forward, one (channel block, chunk, batch item) per program, one thread per channel (or
        N_PAD * BLOCK_D / (32 * num_warps) states of it), the recurrence one position at a time in registers.

        CHUNK = 0: the whole sequence. SUMMARY: no C, no y; the chunk's end state from a zero start goes to
        state_ptr and its dt total to sums_ptr ((batch, n_chunks, dim[, N]), the carry kernel's input; only the
        first grid_chunks = n_chunks - 1 chunks run). HAS_START: the chunk starts from state_ptr's state.
        CKPT > 0 (training forward for the version-3 backward): the state entering every position p with
        p % CKPT == 0 goes to ckpt_ptr, (batch, n_seg = cdiv(L, CKPT), dim, N) fp32 (CKPT is a multiple of T).
        A, the start and the end state go one state at a time ([BLOCK_D] vectors): a [N_PAD, BLOCK_D] access,
        contiguous along N, would get a vectorised layout that the compiler then carries into the loop."""
        pid_d, chunk, batch = _program_coords(n_dblocks, grid_chunks)
        chans = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        group = (pid_d * BLOCK_D) // channels_per_group
        states = tl.arange(0, N_PAD)
        state_ok = states < n_state
        row = (batch * n_chunks + chunk) * dim + chans
        a_log2 = tl.zeros([N_PAD, BLOCK_D], dtype=tl.float32)
        h = tl.zeros([N_PAD, BLOCK_D], dtype=tl.float32)
        for n in tl.static_range(N_PAD):
            a_n = tl.load(a_ptr + chans * n_state + n, mask=chans * 0 + n < n_state, other=0.0) * 1.4426950408889634
            a_log2 = tl.where(states[:, None] == n, a_n[None, :], a_log2)
            if HAS_START:
                h_n = tl.load(state_ptr + row * n_state + n, mask=chans * 0 + n < n_state, other=0.0)
                h = tl.where(states[:, None] == n, h_n[None, :], h)
        bias = tl.zeros([BLOCK_D], dtype=tl.float32)
        d_skip = tl.zeros([BLOCK_D], dtype=tl.float32)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + chans).to(tl.float32)
        if HAS_D:
            d_skip = tl.load(d_ptr + chans).to(tl.float32)
        u_rows = u_ptr + batch * stride_u_batch + chans * stride_u_dim
        delta_rows = delta_ptr + batch * stride_delta_batch + chans * stride_delta_dim
        y_rows = y_ptr + batch * dim * length + chans * length
        b_rows = b_ptr + batch * stride_b_batch + group * stride_b_group + states * stride_b_state
        c_rows = c_ptr + batch * stride_c_batch + group * stride_c_group + states * stride_c_state
        if CHUNK == 0:
            begin = 0
            end = length
        else:
            begin = chunk * CHUNK
            end = tl.minimum(begin + CHUNK, length)
        n_full = (end - begin) // T
        total = tl.zeros([BLOCK_D], dtype=tl.float32)
        for i in range(0, n_full):
            if CKPT > 0:
                if (begin + i * T) % CKPT == 0:
                    _v3_store_states(
                        ckpt_ptr, (batch * n_seg + (begin + i * T) // CKPT) * dim + chans, h, states, n_state, N_PAD
                    )
            h, total = _v3_tile(
                h,
                total,
                a_log2,
                bias,
                d_skip,
                u_rows,
                delta_rows,
                y_rows,
                b_rows,
                c_rows,
                state_ok,
                begin + i * T,
                length,
                HAS_D,
                HAS_BIAS,
                SUMMARY,
                False,
                TILED,
                T,
            )
        if begin + n_full * T < end:
            if CKPT > 0:
                if (begin + n_full * T) % CKPT == 0:
                    _v3_store_states(
                        ckpt_ptr,
                        (batch * n_seg + (begin + n_full * T) // CKPT) * dim + chans,
                        h,
                        states,
                        n_state,
                        N_PAD,
                    )
            h, total = _v3_tile(
                h,
                total,
                a_log2,
                bias,
                d_skip,
                u_rows,
                delta_rows,
                y_rows,
                b_rows,
                c_rows,
                state_ok,
                begin + n_full * T,
                length,
                HAS_D,
                HAS_BIAS,
                SUMMARY,
                True,
                TILED,
                T,
            )
        if SUMMARY:
            _v3_store_states(state_ptr, row, h, states, n_state, N_PAD)
            tl.store(sums_ptr + row, total)

    @triton.jit
    def _v3b_load_states(ptr, rows, states, zero2, n_state, N_PAD: tl.constexpr):
        """[N_PAD, BLOCK_D] fp32 state from ptr + rows * n_state + n, one state at a time (see _v3_store_states)."""
        out = zero2.to(tl.float32)
        for n in tl.static_range(N_PAD):
            v = tl.load(ptr + rows * n_state + n, mask=rows * 0 + n < n_state, other=0.0).to(tl.float32)
            out = tl.where(states[:, None] == n, v[None, :], out)
        return out

    @triton.jit
    def _v3b_recompute(
        h,
        a_log2,
        bias,
        u_rows,
        delta_rows,
        b_rows,
        state_ok,
        zero2,
        base,
        length,
        HAS_BIAS: tl.constexpr,
        MASKED: tl.constexpr,
        STASH: tl.constexpr,
        T: tl.constexpr,
        N_PAD: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        """Version-3 backward: the state h (entering position base) run over T positions, one per load. Returns the
        state after them and, when STASH, the [T, N_PAD, BLOCK_D] states after each position (h_t) and the [T,
        BLOCK_D] tiles of u, delta + bias and dt; the tiles are assembled with where on the in-thread T axis."""
        h_tile = tl.zeros([T, N_PAD, BLOCK_D], dtype=tl.float32)
        u_tile = tl.zeros([T, BLOCK_D], dtype=tl.float32)
        x_tile = tl.zeros([T, BLOCK_D], dtype=tl.float32)
        dt_tile = tl.zeros([T, BLOCK_D], dtype=tl.float32)
        cols = tl.arange(0, T)
        for t in tl.static_range(T):
            p = base + t
            if MASKED:
                ok_d = (tl.zeros_like(bias).to(tl.int32) + p) < length
                u_t = tl.load(u_rows + p, mask=ok_d, other=0.0).to(tl.float32)
                x_t = tl.load(delta_rows + p, mask=ok_d, other=0.0).to(tl.float32)
                b_t = tl.load(b_rows[:, None] + p + zero2, mask=state_ok[:, None] & ((zero2 + p) < length), other=0.0)
            else:
                u_t = tl.load(u_rows + p).to(tl.float32)
                x_t = tl.load(delta_rows + p).to(tl.float32)
                b_t = tl.load(b_rows[:, None] + p + zero2, mask=state_ok[:, None], other=0.0)
            if HAS_BIAS:
                x_t += bias
            dt_t = _softplus(x_t)
            if MASKED:
                dt_t = tl.where(ok_d, dt_t, 0.0)  # decay 1, input 0 past the end
            h = tl.exp2(a_log2 * dt_t[None, :]) * h + b_t.to(tl.float32) * (dt_t * u_t)[None, :]
            if STASH:
                pick = cols == t
                h_tile = tl.where(pick[:, None, None], h[None, :, :], h_tile)
                u_tile = tl.where(pick[:, None], u_t[None, :], u_tile)
                x_tile = tl.where(pick[:, None], x_t[None, :], x_tile)
                dt_tile = tl.where(pick[:, None], dt_t[None, :], dt_tile)
        return h, h_tile, u_tile, x_tile, dt_tile

    @triton.jit
    def _v3b_segment(
        h_start,
        gq,
        da_acc,
        dd_acc,
        dbias_acc,
        a_log2,
        bias,
        d_skip,
        u_rows,
        delta_rows,
        dy_rows,
        grad_rows,
        du_ptr,
        ddelta_ptr,
        b_rows,
        c_rows,
        bc_rows,
        db_ptr,
        dc_ptr,
        state_ok,
        states,
        zero2,
        seg_begin,
        length,
        HAS_D: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        SUMMARY: tl.constexpr,
        ATOMIC_BC: tl.constexpr,
        MASKED: tl.constexpr,
        T: tl.constexpr,
        CKPT: tl.constexpr,
        N_PAD: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        """Version-3 backward over the CKPT positions from seg_begin, in reverse; h_start is the state entering
        seg_begin (a forward checkpoint), gq = exp(dt_{t+1} A) g_{t+1} the adjoint arriving from the position after
        the segment. Not SUMMARY: a forward sweep keeps the state at each T-position tile start (CKPT / T - 1 of
        them, in registers), then every tile from the last one: its states h_t are recomputed from its start into
        registers and the positions are walked backwards with g_t = C_t dy_t + gq. SUMMARY: g only (no h)."""
        cols = tl.arange(0, T)
        if not SUMMARY:
            starts = tl.zeros([(CKPT // T), N_PAD, BLOCK_D], dtype=tl.float32)
            tiles = tl.arange(0, (CKPT // T))
            starts = tl.where(tiles[:, None, None] == 0, h_start[None, :, :], starts)
            h = h_start
            for i in tl.static_range((CKPT // T) - 1):
                h, _h_tile, _u, _x, _dt = _v3b_recompute(
                    h,
                    a_log2,
                    bias,
                    u_rows,
                    delta_rows,
                    b_rows,
                    state_ok,
                    zero2,
                    seg_begin + i * T,
                    length,
                    HAS_BIAS,
                    MASKED,
                    False,
                    T,
                    N_PAD,
                    BLOCK_D,
                )
                starts = tl.where(tiles[:, None, None] == i + 1, h[None, :, :], starts)
        for j in tl.static_range((CKPT // T)):
            i = (CKPT // T) - 1 - j
            base = seg_begin + i * T
            if SUMMARY:
                for s in tl.static_range(T):
                    p = base + T - 1 - s
                    if MASKED:
                        ok_d = (tl.zeros_like(bias).to(tl.int32) + p) < length
                        x_t = tl.load(delta_rows + p, mask=ok_d, other=0.0).to(tl.float32)
                        dy_t = tl.load(dy_rows + p, mask=ok_d, other=0.0).to(tl.float32)
                        c_t = tl.load(
                            c_rows[:, None] + p + zero2, mask=state_ok[:, None] & ((zero2 + p) < length), other=0.0
                        )
                    else:
                        x_t = tl.load(delta_rows + p).to(tl.float32)
                        dy_t = tl.load(dy_rows + p).to(tl.float32)
                        c_t = tl.load(c_rows[:, None] + p + zero2, mask=state_ok[:, None], other=0.0)
                    if HAS_BIAS:
                        x_t += bias
                    dt_t = _softplus(x_t)
                    if MASKED:
                        dt_t = tl.where(ok_d, dt_t, 0.0)
                    dbias_acc += dt_t  # SUMMARY: the chunk's dt total
                    gq = tl.exp2(a_log2 * dt_t[None, :]) * (c_t.to(tl.float32) * dy_t[None, :] + gq)
            else:
                h_first = tl.sum(tl.where(tiles[:, None, None] == i, starts, -0.0), axis=0)
                _h_end, h_tile, u_tile, x_tile, dt_tile = _v3b_recompute(
                    h_first,
                    a_log2,
                    bias,
                    u_rows,
                    delta_rows,
                    b_rows,
                    state_ok,
                    zero2,
                    base,
                    length,
                    HAS_BIAS,
                    MASKED,
                    True,
                    T,
                    N_PAD,
                    BLOCK_D,
                )
                for s in tl.static_range(T):
                    t = T - 1 - s
                    p = base + t
                    pick = cols == t
                    h_t = tl.sum(tl.where(pick[:, None, None], h_tile, -0.0), axis=0)
                    u_t = tl.sum(tl.where(pick[:, None], u_tile, -0.0), axis=0)
                    x_t = tl.sum(tl.where(pick[:, None], x_tile, -0.0), axis=0)
                    dt_t = tl.sum(tl.where(pick[:, None], dt_tile, -0.0), axis=0)
                    if MASKED:
                        ok_d = (tl.zeros_like(bias).to(tl.int32) + p) < length
                        ok_2 = state_ok[:, None] & ((zero2 + p) < length)
                        dy_t = tl.load(dy_rows + p, mask=ok_d, other=0.0).to(tl.float32)
                        b_t = tl.load(b_rows[:, None] + p + zero2, mask=ok_2, other=0.0).to(tl.float32)
                        c_t = tl.load(c_rows[:, None] + p + zero2, mask=ok_2, other=0.0).to(tl.float32)
                    else:
                        dy_t = tl.load(dy_rows + p).to(tl.float32)
                        b_t = tl.load(b_rows[:, None] + p + zero2, mask=state_ok[:, None], other=0.0).to(tl.float32)
                        c_t = tl.load(c_rows[:, None] + p + zero2, mask=state_ok[:, None], other=0.0).to(tl.float32)
                    dt_u = dt_t * u_t
                    g = c_t * dy_t[None, :] + gq
                    # e_t = g_t exp(dt_t A) h_{t-1} = g_t (h_t - dt_t u_t B_t): no h_{t-1}, no division.
                    e = g * (h_t - b_t * dt_u[None, :])
                    da_acc += e * dt_t[None, :]
                    g_b = tl.sum(g * b_t, axis=0)  # in-thread sums over the states
                    a_e = tl.sum(e * a_log2, axis=0) * 0.6931471805599453  # sum_n A e (A = a_log2 ln 2)
                    # dB_t, dC_t: sums over the program's channels (across lanes), one partial row per program.
                    db_t = tl.sum(g * dt_u[None, :], axis=1)
                    dc_t = tl.sum(h_t * dy_t[None, :], axis=1)
                    if MASKED:
                        bc_ok = state_ok & ((states * 0 + p) < length)
                    else:
                        bc_ok = state_ok
                    if ATOMIC_BC:
                        tl.atomic_add(db_ptr + bc_rows + p, db_t, mask=bc_ok, sem="relaxed")
                        tl.atomic_add(dc_ptr + bc_rows + p, dc_t, mask=bc_ok, sem="relaxed")
                    else:
                        tl.store(db_ptr + bc_rows + p, db_t, mask=bc_ok)
                        tl.store(dc_ptr + bc_rows + p, dc_t, mask=bc_ok)
                    du_t = dt_t * g_b
                    if HAS_D:
                        du_t += d_skip * dy_t
                        dd_acc += dy_t * u_t
                    ddt = u_t * g_b + a_e
                    # softplus'(x) = sigmoid(x); past the end dy = 0 and dt = 0 give ddt = 0.
                    ddelta_t = tl.where(x_t > 20.0, ddt, ddt / (1.0 + tl.exp(-x_t)))
                    if MASKED:
                        ddelta_t = tl.where(ok_d, ddelta_t, 0.0)
                        tl.store(du_ptr + grad_rows + p, du_t.to(du_ptr.dtype.element_ty), mask=ok_d)
                        tl.store(ddelta_ptr + grad_rows + p, ddelta_t.to(ddelta_ptr.dtype.element_ty), mask=ok_d)
                    else:
                        tl.store(du_ptr + grad_rows + p, du_t.to(du_ptr.dtype.element_ty))
                        tl.store(ddelta_ptr + grad_rows + p, ddelta_t.to(ddelta_ptr.dtype.element_ty))
                    dbias_acc += ddelta_t
                    gq = tl.exp2(a_log2 * dt_t[None, :]) * g
        return gq, da_acc, dd_acc, dbias_acc

    @triton.jit
    def _v3_bwd_kernel(
        u_ptr,
        delta_ptr,
        a_ptr,
        b_ptr,
        c_ptr,
        d_ptr,
        bias_ptr,
        dy_ptr,
        ckpt_ptr,
        carry_ptr,
        sums_ptr,
        du_ptr,
        ddelta_ptr,
        da_ptr,
        db_ptr,
        dc_ptr,
        dd_ptr,
        dbias_ptr,
        dim,
        length,
        n_state,
        channels_per_group,
        n_groups,
        n_chunks,
        grid_chunks,
        n_dblocks,
        n_bc_blocks,
        n_seg,
        chunk_len,
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
        stride_dy_batch,
        stride_dy_dim,
        HAS_D: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        HAS_CARRY: tl.constexpr,
        SUMMARY: tl.constexpr,
        ATOMIC_BC: tl.constexpr,
        N_PAD: tl.constexpr,
        BLOCK_D: tl.constexpr,
        T: tl.constexpr,
        CKPT: tl.constexpr,
    ):
        """Version 3 backward, one (channel block, chunk, batch item) per program, one thread per channel holding its
        N_PAD states of h, g, A and dA in registers; the chunk is walked backwards CKPT positions (one forward
        checkpoint) at a time, see _v3b_segment. chunk_len (a multiple of CKPT, or >= L for one chunk) is a
        runtime argument so that SS2D's stages share compiles.

        Not SUMMARY: du, ddelta; dB, dC partials (batch, G, n_bc_blocks, N, L) (one row per program, summed over the
        channel axis across lanes; atomics into n_bc_blocks = 1 with ATOMIC_BC); dA, dD, dbias partials (batch,
        n_chunks, dim[, N]). HAS_CARRY: the adjoint exp(dt A) g arriving from the later chunks is carry_ptr's
        (batch, n_chunks, dim, N). SUMMARY (chunks 1 .. n_chunks - 1 only, grid_chunks = n_chunks - 1): g alone from
        a zero adjoint; the chunk's exp(dt_{t0} A) g_{t0} goes to carry_ptr and its dt total to sums_ptr, the reverse
        carry kernel's input."""
        pid_d, chunk, batch = _program_coords(n_dblocks, grid_chunks)
        if SUMMARY:
            chunk += 1
        chans = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        group = (pid_d * BLOCK_D) // channels_per_group
        states = tl.arange(0, N_PAD)
        state_ok = states < n_state
        zero2 = tl.zeros([N_PAD, BLOCK_D], dtype=tl.int32)
        row = (batch * n_chunks + chunk) * dim + chans
        a_log2 = _v3b_load_states(a_ptr, chans, states, zero2, n_state, N_PAD) * 1.4426950408889634
        if HAS_CARRY:
            gq = _v3b_load_states(carry_ptr, row, states, zero2, n_state, N_PAD)
        else:
            gq = zero2.to(tl.float32)
        bias = tl.zeros([BLOCK_D], dtype=tl.float32)
        d_skip = tl.zeros([BLOCK_D], dtype=tl.float32)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + chans).to(tl.float32)
        if HAS_D:
            d_skip = tl.load(d_ptr + chans).to(tl.float32)
        u_rows = u_ptr + batch * stride_u_batch + chans * stride_u_dim
        delta_rows = delta_ptr + batch * stride_delta_batch + chans * stride_delta_dim
        dy_rows = dy_ptr + batch * stride_dy_batch + chans * stride_dy_dim
        grad_rows = (batch * dim + chans) * length  # du, ddelta: contiguous
        b_rows = b_ptr + batch * stride_b_batch + group * stride_b_group + states * stride_b_state
        c_rows = c_ptr + batch * stride_c_batch + group * stride_c_group + states * stride_c_state
        if ATOMIC_BC:
            bc_block = 0
        else:
            bc_block = (pid_d * BLOCK_D % channels_per_group) // BLOCK_D
        bc_rows = (((batch * n_groups + group) * n_bc_blocks + bc_block) * n_state + states) * length
        begin = chunk * chunk_len
        end = tl.minimum(begin + chunk_len, length)
        da_acc = zero2.to(tl.float32)
        dd_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        dbias_acc = tl.zeros([BLOCK_D], dtype=tl.float32)  # SUMMARY: the chunk's dt total
        n_full = (end - begin) // CKPT
        h_start = gq  # placeholder for SUMMARY (never read)
        if begin + n_full * CKPT < end:  # the sequence's last, partial segment comes first
            seg_begin = begin + n_full * CKPT
            if not SUMMARY:
                h_start = _v3b_load_states(
                    ckpt_ptr, (batch * n_seg + seg_begin // CKPT) * dim + chans, states, zero2, n_state, N_PAD
                )
            gq, da_acc, dd_acc, dbias_acc = _v3b_segment(
                h_start,
                gq,
                da_acc,
                dd_acc,
                dbias_acc,
                a_log2,
                bias,
                d_skip,
                u_rows,
                delta_rows,
                dy_rows,
                grad_rows,
                du_ptr,
                ddelta_ptr,
                b_rows,
                c_rows,
                bc_rows,
                db_ptr,
                dc_ptr,
                state_ok,
                states,
                zero2,
                seg_begin,
                length,
                HAS_D,
                HAS_BIAS,
                SUMMARY,
                ATOMIC_BC,
                True,
                T,
                CKPT,
                N_PAD,
                BLOCK_D,
            )
        for k in range(0, n_full):
            seg_begin = begin + (n_full - 1 - k) * CKPT
            if not SUMMARY:
                h_start = _v3b_load_states(
                    ckpt_ptr, (batch * n_seg + seg_begin // CKPT) * dim + chans, states, zero2, n_state, N_PAD
                )
            gq, da_acc, dd_acc, dbias_acc = _v3b_segment(
                h_start,
                gq,
                da_acc,
                dd_acc,
                dbias_acc,
                a_log2,
                bias,
                d_skip,
                u_rows,
                delta_rows,
                dy_rows,
                grad_rows,
                du_ptr,
                ddelta_ptr,
                b_rows,
                c_rows,
                bc_rows,
                db_ptr,
                dc_ptr,
                state_ok,
                states,
                zero2,
                seg_begin,
                length,
                HAS_D,
                HAS_BIAS,
                SUMMARY,
                ATOMIC_BC,
                False,
                T,
                CKPT,
                N_PAD,
                BLOCK_D,
            )
        if SUMMARY:
            _v3_store_states(carry_ptr, row, gq, states, n_state, N_PAD)
            tl.store(sums_ptr + row, dbias_acc)
        else:
            _v3_store_states(da_ptr, row, da_acc, states, n_state, N_PAD)
            if HAS_D:
                tl.store(dd_ptr + row, dd_acc)
            if HAS_BIAS:
                tl.store(dbias_ptr + row, dbias_acc)

    @triton.jit
    def _chunk_bwd_kernel(
        u_ptr,
        delta_ptr,
        a_ptr,
        b_ptr,
        c_ptr,
        d_ptr,
        bias_ptr,
        dy_ptr,
        start_ptr,
        carry_ptr,
        du_ptr,
        ddelta_ptr,
        da_ptr,
        db_ptr,
        dc_ptr,
        dd_ptr,
        dbias_ptr,
        dim,
        length,
        n_state,
        channels_per_group,
        n_groups,
        n_chunks,
        n_dblocks,
        n_bc_blocks,
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
        stride_dy_batch,
        stride_dy_dim,
        HAS_D: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        HAS_CARRY: tl.constexpr,
        ATOMIC_BC: tl.constexpr,
        N_PAD: tl.constexpr,
        BLOCK_D: tl.constexpr,
        SUB_BLOCKS: tl.constexpr,
        CHUNK: tl.constexpr,
    ):
        """One (SUB_BLOCKS x BLOCK_D channels, chunk, batch item): du, ddelta and partial dA, dD, dbias, dB, dC.

        Adjoint: g_t = dL/dh_t = C_t dy_t + exp(dt_{t+1} A) g_{t+1}. Then dC_t = sum_d h_t dy_t,
        dB_t = sum_d g_t dt_t u_t, du_t = dt_t sum_n g_t B_t + D dy_t, and with e_t = g_t exp(dt_t A) h_{t-1}
        (= g_t (h_t - dt_t u_t B_t), no shift, no division): ddt_t = u_t sum_n g_t B_t + sum_n A e_t,
        dA = sum_t dt_t e_t, ddelta = ddt sigmoid(delta + bias)."""
        pid_d, chunk, batch = _program_coords(n_dblocks, n_chunks)
        first = pid_d * (BLOCK_D * SUB_BLOCKS)
        group = first // channels_per_group
        states = tl.arange(0, N_PAD)
        state_ok = states < n_state
        positions = tl.arange(0, CHUNK)
        pos = chunk * CHUNK + positions
        pos_ok = pos < length
        # Position t+1 inside this chunk; the chunk's last position gets the later chunks through the carry.
        next_ok = (pos + 1 < length) & (positions < CHUNK - 1)
        bc_mask = state_ok[:, None] & pos_ok[None, :]
        b_tile = tl.load(
            b_ptr + batch * stride_b_batch + group * stride_b_group + states[:, None] * stride_b_state + pos[None, :],
            mask=bc_mask,
            other=0.0,
        ).to(tl.float32)
        c_tile = tl.load(
            c_ptr + batch * stride_c_batch + group * stride_c_group + states[:, None] * stride_c_state + pos[None, :],
            mask=bc_mask,
            other=0.0,
        ).to(tl.float32)
        db_acc = tl.zeros([N_PAD, CHUNK], dtype=tl.float32)
        dc_acc = tl.zeros([N_PAD, CHUNK], dtype=tl.float32)
        for sub in range(0, SUB_BLOCKS):
            chans = first + sub * BLOCK_D + tl.arange(0, BLOCK_D)
            a_mat = tl.load(a_ptr + chans[:, None] * n_state + states[None, :], mask=state_ok[None, :], other=0.0)
            a_mat = a_mat.to(tl.float32)
            a_log2 = a_mat * 1.4426950408889634
            u_rows = u_ptr + batch * stride_u_batch + chans[:, None] * stride_u_dim
            delta_rows = delta_ptr + batch * stride_delta_batch + chans[:, None] * stride_delta_dim
            dy_rows = dy_ptr + batch * stride_dy_batch + chans[:, None] * stride_dy_dim
            u = tl.load(u_rows + pos[None, :], mask=pos_ok[None, :], other=0.0).to(tl.float32)
            delta = tl.load(delta_rows + pos[None, :], mask=pos_ok[None, :], other=0.0).to(tl.float32)
            delta_next = tl.load(delta_rows + pos[None, :] + 1, mask=next_ok[None, :], other=0.0).to(tl.float32)
            dy = tl.load(dy_rows + pos[None, :], mask=pos_ok[None, :], other=0.0).to(tl.float32)
            if HAS_BIAS:
                bias = tl.load(bias_ptr + chans).to(tl.float32)
                delta += bias[:, None]
                delta_next += bias[:, None]
            dt = tl.where(pos_ok[None, :], _softplus(delta), 0.0)
            dt_next = tl.where(next_ok[None, :], _softplus(delta_next), 0.0)
            row = (batch * n_chunks + chunk) * dim + chans  # into (batch, n_chunks, dim[, N]) buffers

            # h_t from the saved chunk-start state.
            dt_u = dt * u
            decay = tl.exp2(dt[:, None, :] * a_log2[:, :, None])
            inputs = dt_u[:, None, :] * b_tile[None, :, :]
            decay_prod, h_local = tl.associative_scan((decay, inputs), axis=2, combine_fn=_linear_combine)
            h_all = h_local
            if HAS_CARRY:
                h_start = tl.load(
                    start_ptr + row[:, None] * n_state + states[None, :], mask=state_ok[None, :], other=0.0
                )
                h_all += decay_prod * h_start[:, :, None]
            dc_acc += tl.sum(h_all * dy[:, None, :], axis=0)

            # g_t, reverse scan; the later chunks enter through K = exp(dt A) g at the next chunk's first position.
            decay_next = tl.exp2(dt_next[:, None, :] * a_log2[:, :, None])
            out_grad = c_tile[None, :, :] * dy[:, None, :]
            decay_next_prod, g = tl.associative_scan(
                (decay_next, out_grad), axis=2, combine_fn=_linear_combine, reverse=True
            )
            if HAS_CARRY:
                k_in = tl.load(carry_ptr + row[:, None] * n_state + states[None, :], mask=state_ok[None, :], other=0.0)
                g += decay_next_prod * k_in[:, :, None]
            db_acc += tl.sum(g * dt_u[:, None, :], axis=0)

            g_b = tl.sum(g * b_tile[None, :, :], axis=1)  # sum_n g_t B_t
            decayed_prev = g * (h_all - inputs)  # e_t
            ddt = u * g_b + tl.sum(decayed_prev * a_mat[:, :, None], axis=1)
            tl.store(
                da_ptr + row[:, None] * n_state + states[None, :],
                tl.sum(decayed_prev * dt[:, None, :], axis=2),
                mask=state_ok[None, :],
            )
            du = dt * g_b
            if HAS_D:
                du += tl.load(d_ptr + chans).to(tl.float32)[:, None] * dy
                tl.store(dd_ptr + row, tl.sum(dy * u, axis=1))
            # softplus'(x) = sigmoid(x); masked positions have dy = 0, hence ddt = 0.
            ddelta = tl.where(delta > 20.0, ddt, ddt / (1.0 + tl.exp(-delta)))
            ddelta = tl.where(pos_ok[None, :], ddelta, 0.0)
            if HAS_BIAS:
                tl.store(dbias_ptr + row, tl.sum(ddelta, axis=1))
            grad_rows = (batch * dim + chans[:, None]) * length + pos[None, :]  # du, ddelta: contiguous
            tl.store(du_ptr + grad_rows, du.to(du_ptr.dtype.element_ty), mask=pos_ok[None, :])
            tl.store(ddelta_ptr + grad_rows, ddelta.to(ddelta_ptr.dtype.element_ty), mask=pos_ok[None, :])

        # dB, dC: (batch, G, n_bc_blocks, N, L) fp32 partials (n_bc_blocks = 1 with atomics).
        if ATOMIC_BC:
            bc_block = 0
        else:
            bc_block = (first % channels_per_group) // (BLOCK_D * SUB_BLOCKS)
        bc_rows = (((batch * n_groups + group) * n_bc_blocks + bc_block) * n_state + states[:, None]) * length
        if ATOMIC_BC:
            tl.atomic_add(db_ptr + bc_rows + pos[None, :], db_acc, mask=bc_mask, sem="relaxed")
            tl.atomic_add(dc_ptr + bc_rows + pos[None, :], dc_acc, mask=bc_mask, sem="relaxed")
        else:
            tl.store(db_ptr + bc_rows + pos[None, :], db_acc, mask=bc_mask)
            tl.store(dc_ptr + bc_rows + pos[None, :], dc_acc, mask=bc_mask)


def _block_d(channels_per_group: int, preferred: int) -> int:
    """Largest power of two <= preferred dividing the group size: a channel block must sit inside one group."""
    block = 1
    while block * 2 <= preferred and channels_per_group % (block * 2) == 0:
        block *= 2
    return block


def _next_pow2(value: int) -> int:
    return 1 << max(0, (value - 1).bit_length())


def _chunk_length(length: int, preferred: int) -> int:
    """Chunk length for a sequence: the preferred one, or the next power of two >= L (at least 16) for short ones."""
    return min(_next_pow2(preferred), max(16, _next_pow2(length)))


def _check_grid(programs: int) -> int:
    if programs >= 2**31:
        raise ValueError(f"triton_selective_scan: {programs} programs exceed the grid limit; use a smaller batch")
    return programs


def _chunk_summaries(
    delta: torch.Tensor,
    values: torch.Tensor,
    mat: torch.Tensor,
    a_fp32: torch.Tensor,
    delta_bias: torch.Tensor | None,
    chunk: int,
    prefix: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launches 1 and 2: the state entering every chunk, (batch, n_chunks, dim, N) fp32, and the chunks' dt totals.

    Forward (prefix=False): values = u, mat = B, the chunk-start states. Backward (prefix=True): values = dy, mat = C,
    K_c, the adjoint flowing into chunk c from the chunks after it."""
    batch, dim, length = delta.shape
    n_groups, n_state = mat.shape[1], a_fp32.shape[1]
    n_chunks = triton.cdiv(length, chunk)
    block_d = _block_d(dim // n_groups, SUM_BLOCK_D)
    block_t = min(_next_pow2(SUM_BLOCK_T), chunk)
    states = torch.empty((batch, n_chunks, dim, n_state), device=delta.device, dtype=torch.float32)
    sums = torch.empty((batch, n_chunks, dim), device=delta.device, dtype=torch.float32)
    n_dblocks = dim // block_d
    _chunk_summary_kernel[(_check_grid(n_dblocks * n_chunks * batch),)](
        delta,
        values,
        mat,
        a_fp32,
        delta_bias if delta_bias is not None else a_fp32,
        states,
        sums,
        dim,
        length,
        n_state,
        dim // n_groups,
        n_chunks,
        n_dblocks,
        delta.stride(0),
        delta.stride(1),
        values.stride(0),
        values.stride(1),
        mat.stride(0),
        mat.stride(1),
        mat.stride(2),
        HAS_BIAS=delta_bias is not None,
        PREFIX=prefix,
        N_PAD=_next_pow2(n_state),
        BLOCK_D=block_d,
        BLOCK_T=block_t,
        CHUNK=chunk,
        num_warps=SUM_WARPS,
    )
    n_blocks = triton.cdiv(dim * n_state, CARRY_BLOCK)
    _chunk_carry_kernel[(_check_grid(n_blocks * batch),)](
        states, sums, a_fp32, dim, n_state, n_chunks, n_blocks, REVERSE=prefix, BLOCK=CARRY_BLOCK, num_warps=CARRY_WARPS
    )
    return states, sums


def _forward(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    chunk: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """y (u's dtype) and the chunk-start states (None when L fits one chunk) for a power-of-two chunk length."""
    if FWD_KIND == "v3":
        return _forward_v3(u, delta, A, B, C, D, delta_bias, chunk)[:2]
    batch, dim, length = u.shape
    n_groups, n_state = B.shape[1], A.shape[1]
    per_group = dim // n_groups
    n_chunks = triton.cdiv(length, chunk)
    a_fp32 = A.float().contiguous()
    starts = None
    if n_chunks > 1:
        starts, _ = _chunk_summaries(delta, u, B, a_fp32, delta_bias, chunk, prefix=False)
    y = torch.empty((batch, dim, length), device=u.device, dtype=u.dtype)
    seq = FWD_KIND == "seq"
    if FWD_KIND not in ("seq", "tile"):
        raise ValueError(f"triton_scan.FWD_KIND must be 'v3', 'seq' or 'tile', got {FWD_KIND!r}")
    block_d = _block_d(per_group, FWD_BLOCK_D if seq else FWD_TILE_BLOCK_D)
    n_dblocks = dim // block_d
    _chunk_output_kernel[(_check_grid(n_dblocks * n_chunks * batch),)](
        u,
        delta,
        a_fp32,
        B,
        C,
        D if D is not None else a_fp32,
        delta_bias if delta_bias is not None else a_fp32,
        y,
        starts if starts is not None else a_fp32,  # never read without HAS_START
        dim,
        length,
        n_state,
        per_group,
        n_chunks,
        n_dblocks,
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
        HAS_D=D is not None,
        HAS_BIAS=delta_bias is not None,
        HAS_START=starts is not None,
        SEQ=seq,
        N_PAD=_next_pow2(n_state),
        BLOCK_D=block_d,
        BLOCK_T=min(_next_pow2(FWD_TILE_T), chunk),
        CHUNK=chunk,
        UNROLL=FWD_UNROLL,
        num_warps=FWD_WARPS if seq else FWD_TILE_WARPS,
    )
    return y, starts


def _v3_layout(per_group: int) -> tuple[int, int]:
    """(BLOCK_D, num_warps) of the version-3 forward: 32 * V3_WARPS threads, V3_N_SPLIT of them per channel."""
    block_d = _block_d(per_group, max(1, 32 * V3_WARPS // V3_N_SPLIT))
    return block_d, V3_WARPS


def _v3_chunk(batch: int, dim: int, length: int, per_group: int, multiple: int = 16) -> int:
    """Chunk length of the version-3 forward: V3_FWD_CHUNK, or (None) the whole sequence unless that leaves fewer
    than V3_MIN_WARPS warps, then the fewest chunks (multiples of `multiple` positions) that reach it; 0 = one chunk."""
    block_d, warps = _v3_layout(per_group)
    return _adaptive_chunk(V3_FWD_CHUNK, V3_MIN_WARPS, (dim // block_d) * batch * warps, length, multiple)


def _adaptive_chunk(fixed: int | None, min_warps: int, warps_per_chunk: int, length: int, multiple: int) -> int:
    """fixed (rounded up to a multiple), or the fewest chunks giving min_warps warps in all (at least 64 positions
    each), as a chunk length that is a multiple of `multiple`; 0 when the whole sequence is one chunk."""
    if fixed is not None:
        chunk = -(-fixed // multiple) * multiple
        return chunk if 0 < chunk < length else 0
    n_chunks = max(1, min(-(-min_warps // warps_per_chunk), length // 64))
    if n_chunks == 1:
        return 0
    chunk = -(-(-(-length // n_chunks)) // multiple) * multiple
    return chunk if chunk < length else 0


def _forward_v3(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    chunk: int,
    ckpt: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Version 3 forward: y, the chunk-start states (None for chunk 0 = one chunk) and, for ckpt > 0, the state
    entering every ckpt-th position, (batch, cdiv(L, ckpt), dim, N) fp32 (the version-3 backward's checkpoints; the
    chunk length must then be a multiple of ckpt). With chunks: a summary launch (every chunk but the last, from a
    zero start), v2's carry kernel, then the output launch from the starts."""
    batch, dim, length = u.shape
    n_groups, n_state = B.shape[1], A.shape[1]
    per_group = dim // n_groups
    n_chunks = 1 if chunk == 0 else triton.cdiv(length, chunk)
    if n_chunks == 1:
        chunk = 0
    a_fp32 = A.float().contiguous()
    block_d, warps = _v3_layout(per_group)
    n_dblocks = dim // block_d
    y = torch.empty((batch, dim, length), device=u.device, dtype=u.dtype)
    starts = None
    if n_chunks > 1:
        starts = torch.empty((batch, n_chunks, dim, n_state), device=u.device, dtype=torch.float32)
        sums = torch.zeros((batch, n_chunks, dim), device=u.device, dtype=torch.float32)  # last chunk's stays 0
    # Tiles need 16-byte aligned rows (Triton specialises integers divisible by 16); the chunk length is one too.
    aligned = all(all(st % 16 == 0 for st in t.stride()[:-1]) and t.data_ptr() % 16 == 0 for t in (u, delta, B, C))
    tiled = V3_TILED and aligned and length % 16 == 0 and chunk % 16 == 0
    common = dict(N_PAD=_next_pow2(n_state), BLOCK_D=block_d, T=V3_T, CHUNK=chunk, TILED=tiled, num_warps=warps)
    ckpts = None
    n_seg = 1
    if ckpt > 0:
        if ckpt % V3_T or chunk % ckpt:
            raise ValueError(
                f"triton_scan: checkpoint interval {ckpt} must divide the chunk {chunk}, V3_T must divide it"
            )
        n_seg = triton.cdiv(length, ckpt)
        ckpts = torch.empty((batch, n_seg, dim, n_state), device=u.device, dtype=torch.float32)
    args = [dim, length, n_state, per_group, n_chunks]
    strides = [u.stride(0), u.stride(1), delta.stride(0), delta.stride(1)]
    strides += [B.stride(0), B.stride(1), B.stride(2), C.stride(0), C.stride(1), C.stride(2)]
    d_arg = D if D is not None else a_fp32
    bias_arg = delta_bias if delta_bias is not None else a_fp32
    if n_chunks > 1:
        grid_chunks = n_chunks - 1  # the last chunk's end state is never used
        _v3_fwd_kernel[(_check_grid(n_dblocks * grid_chunks * batch),)](
            u,
            delta,
            a_fp32,
            B,
            C,
            d_arg,
            bias_arg,
            y,
            starts,
            sums,
            a_fp32,
            *args,
            grid_chunks,
            n_dblocks,
            n_seg,
            *strides,
            HAS_D=False,
            HAS_BIAS=delta_bias is not None,
            HAS_START=False,
            SUMMARY=True,
            CKPT=0,
            **common,
        )
        # In place: summaries in, chunk starts out (chunk n_chunks - 1's summary is unset and only feeds an unused
        # final state).
        n_blocks = triton.cdiv(dim * n_state, CARRY_BLOCK)
        _chunk_carry_kernel[(_check_grid(n_blocks * batch),)](
            starts,
            sums,
            a_fp32,
            dim,
            n_state,
            n_chunks,
            n_blocks,
            REVERSE=False,
            BLOCK=CARRY_BLOCK,
            num_warps=CARRY_WARPS,
        )
    _v3_fwd_kernel[(_check_grid(n_dblocks * n_chunks * batch),)](
        u,
        delta,
        a_fp32,
        B,
        C,
        d_arg,
        bias_arg,
        y,
        starts if starts is not None else a_fp32,
        a_fp32,
        ckpts if ckpts is not None else a_fp32,
        *args,
        n_chunks,
        n_dblocks,
        n_seg,
        *strides,
        HAS_D=D is not None,
        HAS_BIAS=delta_bias is not None,
        HAS_START=starts is not None,
        SUMMARY=False,
        CKPT=ckpt,
        **common,
    )
    return y, starts, ckpts


def _backward(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    dy: torch.Tensor,
    starts: torch.Tensor | None,
    chunk: int,
) -> tuple[torch.Tensor | None, ...]:
    """Launch the backward with the forward's chunk length; returns (du, ddelta, dA, dB, dC, dD, ddelta_bias)."""
    batch, dim, length = u.shape
    n_groups, n_state = B.shape[1], A.shape[1]
    per_group = dim // n_groups
    n_chunks = triton.cdiv(length, chunk)
    a_fp32 = A.float().contiguous()
    carry = None
    if n_chunks > 1:
        carry, _ = _chunk_summaries(delta, dy, C, a_fp32, delta_bias, chunk, prefix=True)
    if BWD_BC_REDUCE not in ("partial", "atomic"):
        raise ValueError(f"triton_scan.BWD_BC_REDUCE must be 'partial' or 'atomic', got {BWD_BC_REDUCE!r}")
    atomic = BWD_BC_REDUCE == "atomic"
    block_d = _block_d(per_group, BWD_BLOCK_D)
    per_program = _block_d(per_group, max(BWD_D_PER_PROGRAM, block_d))
    # Short sequences have few chunks: there, programs matter more than the (then small) dB/dC partials.
    while per_program > block_d and (dim // per_program) * n_chunks * batch < BWD_MIN_PROGRAMS:
        per_program //= 2
    n_dblocks = dim // per_program
    n_bc_blocks = 1 if atomic else per_group // per_program
    device, f32 = u.device, torch.float32
    du = torch.empty((batch, dim, length), device=device, dtype=u.dtype)
    ddelta = torch.empty((batch, dim, length), device=device, dtype=delta.dtype)
    # Per-program partials (written once each, summed below); atomics need a zeroed buffer.
    bc_shape = (batch, n_groups, n_bc_blocks, n_state, length)
    db = (torch.zeros if atomic else torch.empty)(bc_shape, device=device, dtype=f32)
    dc = (torch.zeros if atomic else torch.empty)(bc_shape, device=device, dtype=f32)
    da = torch.empty((batch, n_chunks, dim, n_state), device=device, dtype=f32)
    dd = torch.empty((batch, n_chunks, dim), device=device, dtype=f32) if D is not None else a_fp32
    dbias = torch.empty((batch, n_chunks, dim), device=device, dtype=f32) if delta_bias is not None else a_fp32
    _chunk_bwd_kernel[(_check_grid(n_dblocks * n_chunks * batch),)](
        u,
        delta,
        a_fp32,
        B,
        C,
        D if D is not None else a_fp32,
        delta_bias if delta_bias is not None else a_fp32,
        dy,
        starts if starts is not None else a_fp32,  # never read without HAS_CARRY
        carry if carry is not None else a_fp32,
        du,
        ddelta,
        da,
        db,
        dc,
        dd,
        dbias,
        dim,
        length,
        n_state,
        per_group,
        n_groups,
        n_chunks,
        n_dblocks,
        n_bc_blocks,
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
        dy.stride(0),
        dy.stride(1),
        HAS_D=D is not None,
        HAS_BIAS=delta_bias is not None,
        HAS_CARRY=carry is not None,
        ATOMIC_BC=atomic,
        N_PAD=_next_pow2(n_state),
        BLOCK_D=block_d,
        SUB_BLOCKS=per_program // block_d,
        CHUNK=chunk,
        num_warps=BWD_WARPS,
    )
    return (
        du,
        ddelta,
        da.sum((0, 1)).to(A.dtype),
        db.sum(2).to(B.dtype),
        dc.sum(2).to(C.dtype),
        None if D is None else dd.sum((0, 1)).to(D.dtype),
        None if delta_bias is None else dbias.sum((0, 1)).to(delta_bias.dtype),
    )


def _v3b_layout(per_group: int) -> tuple[int, int]:
    """(BLOCK_D, num_warps) of the version-3 backward: one thread per channel."""
    return _block_d(per_group, 32 * V3B_WARPS), V3B_WARPS


def _check_v3b_knobs() -> None:
    if V3B_CKPT not in (4, 8, 16) or V3B_CKPT % V3B_T or V3B_CKPT % V3_T:
        raise ValueError(
            f"triton_scan: V3B_CKPT ({V3B_CKPT}) must be 4, 8 or 16 and a multiple of V3B_T ({V3B_T}) and V3_T ({V3_T})"
        )


def _backward_v3(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    dy: torch.Tensor,
    ckpts: torch.Tensor,
) -> tuple[torch.Tensor | None, ...]:
    """Version 3 backward from the forward's checkpoints; returns (du, ddelta, dA, dB, dC, dD, ddelta_bias).

    With chunks: a summary launch of _v3_bwd_kernel (the adjoint each chunk but the first passes back, from a zero
    adjoint), v2's reverse carry kernel, then the gradient launch from the carried adjoints."""
    batch, dim, length = u.shape
    n_groups, n_state = B.shape[1], A.shape[1]
    per_group = dim // n_groups
    block_d, warps = _v3b_layout(per_group)
    n_dblocks = dim // block_d
    chunk = _adaptive_chunk(V3B_CHUNK, V3B_MIN_WARPS, n_dblocks * batch * warps, length, V3B_CKPT)
    n_chunks = 1 if chunk == 0 else triton.cdiv(length, chunk)
    chunk_len = length if chunk == 0 else chunk
    n_seg = triton.cdiv(length, V3B_CKPT)
    if BWD_BC_REDUCE not in ("partial", "atomic"):
        raise ValueError(f"triton_scan.BWD_BC_REDUCE must be 'partial' or 'atomic', got {BWD_BC_REDUCE!r}")
    atomic = BWD_BC_REDUCE == "atomic"
    n_bc_blocks = 1 if atomic else per_group // block_d
    device, f32 = u.device, torch.float32
    a_fp32 = A.float().contiguous()
    d_arg = D if D is not None else a_fp32
    bias_arg = delta_bias if delta_bias is not None else a_fp32
    du = torch.empty((batch, dim, length), device=device, dtype=u.dtype)
    ddelta = torch.empty((batch, dim, length), device=device, dtype=delta.dtype)
    bc_shape = (batch, n_groups, n_bc_blocks, n_state, length)
    db = (torch.zeros if atomic else torch.empty)(bc_shape, device=device, dtype=f32)
    dc = (torch.zeros if atomic else torch.empty)(bc_shape, device=device, dtype=f32)
    da = torch.empty((batch, n_chunks, dim, n_state), device=device, dtype=f32)
    dd = torch.empty((batch, n_chunks, dim), device=device, dtype=f32) if D is not None else a_fp32
    dbias = torch.empty((batch, n_chunks, dim), device=device, dtype=f32) if delta_bias is not None else a_fp32
    args = [dim, length, n_state, per_group, n_groups, n_chunks]
    strides = [u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), B.stride(0), B.stride(1), B.stride(2)]
    strides += [C.stride(0), C.stride(1), C.stride(2), dy.stride(0), dy.stride(1)]
    common = dict(
        HAS_D=D is not None,
        HAS_BIAS=delta_bias is not None,
        ATOMIC_BC=atomic,
        N_PAD=_next_pow2(n_state),
        BLOCK_D=block_d,
        T=V3B_T,
        CKPT=V3B_CKPT,
        num_warps=warps,
    )
    carry = None
    if n_chunks > 1:
        # Chunk 0's summary and the unused adjoint beyond the last chunk stay zero.
        carry = torch.zeros((batch, n_chunks, dim, n_state), device=device, dtype=f32)
        sums = torch.zeros((batch, n_chunks, dim), device=device, dtype=f32)
        _v3_bwd_kernel[(_check_grid(n_dblocks * (n_chunks - 1) * batch),)](
            u,
            delta,
            a_fp32,
            B,
            C,
            d_arg,
            bias_arg,
            dy,
            ckpts,
            carry,
            sums,
            du,
            ddelta,
            da,
            db,
            dc,
            dd,
            dbias,
            *args,
            n_chunks - 1,
            n_dblocks,
            n_bc_blocks,
            n_seg,
            chunk_len,
            *strides,
            HAS_CARRY=False,
            SUMMARY=True,
            **common,
        )
        n_blocks = triton.cdiv(dim * n_state, CARRY_BLOCK)
        _chunk_carry_kernel[(_check_grid(n_blocks * batch),)](
            carry,
            sums,
            a_fp32,
            dim,
            n_state,
            n_chunks,
            n_blocks,
            REVERSE=True,
            BLOCK=CARRY_BLOCK,
            num_warps=CARRY_WARPS,
        )
    _v3_bwd_kernel[(_check_grid(n_dblocks * n_chunks * batch),)](
        u,
        delta,
        a_fp32,
        B,
        C,
        d_arg,
        bias_arg,
        dy,
        ckpts,
        carry if carry is not None else a_fp32,
        a_fp32,
        du,
        ddelta,
        da,
        db,
        dc,
        dd,
        dbias,
        *args,
        n_chunks,
        n_dblocks,
        n_bc_blocks,
        n_seg,
        chunk_len,
        *strides,
        HAS_CARRY=carry is not None,
        SUMMARY=False,
        **common,
    )
    return (
        du,
        ddelta,
        da.sum((0, 1)).to(A.dtype),
        db.sum(2).to(B.dtype),
        dc.sum(2).to(C.dtype),
        None if D is None else dd.sum((0, 1)).to(D.dtype),
        None if delta_bias is None else dbias.sum((0, 1)).to(delta_bias.dtype),
    )


class TritonSelectiveScan(torch.autograd.Function):
    """Differentiable Triton selective scan; saves the inputs plus fp32 states: the version-3 forward's checkpoints
    (batch, L / V3B_CKPT, dim, N) or, for the version-2 backward, its (batch, n_chunks, dim, N) chunk starts."""

    @staticmethod
    def forward(ctx: Any, u, delta, A, B, C, D, delta_bias):  # type: ignore[override]
        if BWD_KIND not in ("v3", "v2"):
            raise ValueError(f"triton_scan.BWD_KIND must be 'v3' or 'v2', got {BWD_KIND!r}")
        ctx.kind = BWD_KIND
        if BWD_KIND == "v3":
            # Version 3 forward at its inference chunking (chunks a multiple of the checkpoint interval), plus the
            # checkpoints the version-3 backward starts from.
            _check_v3b_knobs()
            batch, dim, length = u.shape
            chunk = _v3_chunk(batch, dim, length, dim // B.shape[1], multiple=max(16, V3B_CKPT))
            y, _, saved = _forward_v3(u, delta, A, B, C, D, delta_bias, chunk, ckpt=V3B_CKPT)
            ctx.chunk = 0
        else:
            # The saved states are the backward's chunk starts, so the forward runs with the backward's chunk length.
            ctx.chunk = _chunk_length(u.shape[2], BWD_CHUNK)
            y, saved = _forward(u, delta, A, B, C, D, delta_bias, ctx.chunk)
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, saved)
        return y

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor):  # type: ignore[override]
        u, delta, A, B, C, D, delta_bias, saved = ctx.saved_tensors
        if ctx.kind == "v3":
            return _backward_v3(u, delta, A, B, C, D, delta_bias, last_dim_contiguous(dy), saved)
        return _backward(u, delta, A, B, C, D, delta_bias, last_dim_contiguous(dy), saved, ctx.chunk)


def triton_selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Selective scan with delta_softplus=True (mamba-ssm's ``selective_scan_fn`` without z), differentiable.

    Args:
        u, delta: (batch, dim, L), float32/bfloat16/float16 (last dim contiguous, else copied).
        A: (dim, N) real, negative for a decaying state (computed in float32).
        B, C: (batch, G, N, L) with channel d using group d // (dim / G), or (batch, N, L) (one group); any float dtype.
        D, delta_bias: (dim,) or None.

    Returns:
        y: (batch, dim, L) in u's dtype; the state and all arithmetic are float32 (float64 inputs are computed in
        float32 too). Gradients come back in each input's dtype.
    """
    if triton is None:
        raise RuntimeError("scripts/triton_scan.py: Triton is not installed; use the 'cuda' or 'torch' scan backend")
    check_scan_inputs(u, delta, A, B, C, D, delta_bias)
    B = B.unsqueeze(1) if B.dim() == 3 else B
    C = C.unsqueeze(1) if C.dim() == 3 else C
    u, delta, B, C = (last_dim_contiguous(t) for t in (u, delta, B, C))
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (u, delta, A, B, C, D, delta_bias)):
        return TritonSelectiveScan.apply(u, delta, A, B, C, D, delta_bias)
    if FWD_KIND == "v3":
        chunk = _v3_chunk(u.shape[0], u.shape[1], u.shape[2], u.shape[1] // B.shape[1])
    else:
        chunk = _chunk_length(u.shape[2], FWD_CHUNK)
    return _forward(u, delta, A, B, C, D, delta_bias, chunk)[0]
