"""Offline report of the bundle's Triton kernels as compiled for the H100 (sm_90): no GPU needed.

``python -m scripts.kernel_report [--kernel backward|forward|cross_scan|cross_merge] [--block_d 8] [--chunk 8]
[--step 8] [--warps 1] [--maxnreg N] [--rotate_states 0|1] [--prefetch 0|1]`` compiles one kernel of
scripts/triton_scan.py (the scan's backward or forward) or of scripts/triton_cross_scan.py (SS2D's tiled cross-scan
or merge, bf16 in as under autocast, the map channels-last) with Triton's NVIDIA backend for
``GPUTarget("cuda", 90, 32)`` at Mamba-UNet's stage-0 shape (N = 16, integer arguments divisible by 16 as the launcher
marks them for L = 3136) and prints its registers, stack (spills), shared memory, how many one-program-per-block
programs fit an SM, the SASS instruction mix of each loop (``cuobjdump`` from the Triton wheel) and the whole
kernel's memory accesses by width. Device time is scarce: this is how the project checks a kernel change's registers
and instruction counts before a GPU call (docs/performance.md, versions 8 and after). The numbers are this
machine's Triton version's code; the GPU machine's Triton (3.6) may differ slightly (version 8's backward: 255
registers here with Triton 3.9, 249 in ncu with Triton 3.6; ``PYTHONPATH=<a triton==3.6.0 install>`` compiles with
that version instead).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field

from scripts import triton_cross_scan, triton_scan

KERNELS = {
    "backward": (triton_scan, "_scan_bwd_reg_kernel"),
    "forward": (triton_scan, "_scan_fwd_vec_kernel"),
    "cross_scan": (triton_cross_scan, "_cross_scan_kernel"),
    "cross_merge": (triton_cross_scan, "_cross_merge_kernel"),
}
LAYOUT_KERNELS = ("cross_scan", "cross_merge")  # triton_cross_scan's: no scan tiles, the module's own
# Pointer types where not fp32: the orders, and the layout kernels' bf16 maps under autocast (the merge sums in fp32).
POINTER_TYPES = {"order_ptr": "*i32", "x_ptr": "*bf16", "y_ptr": "*bf16"}
POINTER_TYPES_BY_KERNEL = {"cross_scan": {"out_ptr": "*bf16"}}
# Integer arguments equal to 1 at stage 0, which Triton's launcher turns into constants: the channels-last map's
# channel stride.
ONE_INTS = ("stride_x_dim",)
# sm_90 limits that decide how many programs (one block each) are resident on an SM.
SM90_REGISTERS, SM90_MAX_WARPS, SM90_MAX_BLOCKS, REGISTER_GRANULE = 65536, 64, 32, 256
# Integer arguments the launcher passes divisible by 16 at stage 0 (Triton specialises on that, so the compiled code
# matches the GPU's only if they are marked the same way).
DIVISIBLE_INTS = ("dim", "u_channels", "length", "n_state", "channels_per_group")
DIVISIBLE_INTS += ("stride_x_batch", "stride_x_row", "stride_x_col")


@dataclass
class Loop:
    """One loop of the SASS (a backward branch): its instruction count and opcode mix."""

    instructions: int
    opcodes: collections.Counter = field(default_factory=collections.Counter)


@dataclass
class KernelReport:
    registers: int
    stack_bytes: int
    shared_bytes: int
    num_warps: int
    loops: list[Loop]
    whole: Loop = field(default_factory=lambda: Loop(0))  # every instruction of the kernel

    @property
    def programs_per_sm(self) -> int:
        """Resident programs per SM (one block of num_warps warps each) as registers and warps allow."""
        per_warp = -(-self.registers * 32 // REGISTER_GRANULE) * REGISTER_GRANULE
        by_registers = SM90_REGISTERS // (per_warp * self.num_warps)
        return min(SM90_MAX_BLOCKS, SM90_MAX_WARPS // self.num_warps, by_registers)


def cuobjdump_path() -> str:
    """The cuobjdump that ships with Triton's NVIDIA backend (beside the ptxas the compile needs); RuntimeError if
    either is missing."""
    import triton

    bin_dir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    for tool in ("ptxas", "cuobjdump"):
        if not os.path.exists(os.path.join(bin_dir, tool)):
            raise RuntimeError(f"scripts/kernel_report.py: no {tool} in {bin_dir} (Triton without its NVIDIA backend)")
    return os.path.join(bin_dir, "cuobjdump")


def compile_kernel(kernel: str, constexprs: dict[str, int | bool], num_warps: int, maxnreg: int | None = None) -> bytes:
    """The sm_90 cubin of ``kernel`` (a key of KERNELS) with the given constexprs."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if not triton_scan.triton_available():
        raise RuntimeError("scripts/kernel_report.py needs Triton")
    module, name = KERNELS[kernel]
    fn = getattr(module, name)
    if not hasattr(fn, "params"):  # TRITON_INTERPRET=1 made the kernels interpreter functions, which do not compile
        raise RuntimeError(
            "scripts/kernel_report.py: unset TRITON_INTERPRET (the interpreter's kernels do not compile)"
        )
    signature, attrs = {}, {}
    pointer_types = {**POINTER_TYPES, **POINTER_TYPES_BY_KERNEL.get(kernel, {})}
    for index, (arg, param) in enumerate(zip(fn.arg_names, fn.params)):
        if param.is_constexpr or arg in ONE_INTS:
            signature[arg] = "constexpr"
            if arg in ONE_INTS:
                constexprs = {**constexprs, arg: 1}
            continue
        signature[arg] = pointer_types.get(arg, "*fp32") if arg.endswith("_ptr") else "i32"
        if arg.endswith("_ptr") or arg in DIVISIBLE_INTS:
            attrs[(index,)] = [["tt.divisibility", 16]]
    missing = [arg for arg, kind in signature.items() if kind == "constexpr" and arg not in constexprs]
    if missing:
        raise ValueError(f"scripts/kernel_report.py: {name} needs constexprs {missing}")
    # fp fusion on, as Triton 3.6 on the GPU machine compiles by default (FMA contraction changes the instruction mix)
    options = {"num_warps": num_warps, "enable_fp_fusion": True, **({} if maxnreg is None else {"maxnreg": maxnreg})}
    compiled = triton.compile(
        ASTSource(
            fn, signature, {name: constexprs[name] for name, kind in signature.items() if kind == "constexpr"}, attrs
        ),
        target=GPUTarget("cuda", 90, 32),
        options=options,
    )
    return compiled.asm["cubin"]


def sass_report(cubin: bytes, num_warps: int) -> KernelReport:
    """Registers, stack and shared memory (``cuobjdump -res-usage``) and the loops of the SASS."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        tool = cuobjdump_path()
        usage = subprocess.run([tool, "-res-usage", path], capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([tool, "-sass", path], capture_output=True, text=True, check=True).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+)", usage)
    if found is None:
        raise RuntimeError(f"scripts/kernel_report.py: no resource line in cuobjdump's output: {usage[:200]!r}")
    registers, stack, shared = (int(g) for g in found.groups())
    instructions = [(int(m.group(1), 16), m.group(2)) for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)]
    whole = collections.Counter(_opcode(t, keep_width=True) for _, t in instructions)
    index_of = {address: i for i, (address, _) in enumerate(instructions)}
    loops = []
    for i, (address, text) in enumerate(instructions):
        branch = re.search(r"\bBRA\b.*?0x([0-9a-f]+)", text)
        if branch and int(branch.group(1), 16) <= address and int(branch.group(1), 16) in index_of:
            body = [t for _, t in instructions[index_of[int(branch.group(1), 16)] : i + 1]]
            if len(body) > 1:  # the trailing self-branch after EXIT is no loop
                loops.append(Loop(len(body), collections.Counter(_opcode(t) for t in body)))
    return KernelReport(registers, stack, shared, num_warps, loops, Loop(len(instructions), whole))


def _opcode(instruction: str, keep_width: bool = False) -> str:
    """SASS opcode without its predicate (and without its modifiers, or with only a memory access's width: LDG.128,
    STG.U16, ...; "E" and cache hints dropped)."""
    parts = re.sub(r"^@!?U?P\w+\s+", "", instruction).split()[0].split(".")
    if keep_width and parts[0] in ("LDG", "STG", "LDS", "STS", "REDG", "RED"):
        widths = [p for p in parts[1:] if re.fullmatch(r"(U|S)?(8|16|32|64|128)", p)]
        return ".".join(parts[:1] + widths)
    return parts[0]


def report(
    kernel: str,
    block_d: int,
    chunk: int,
    step: int,
    num_warps: int,
    maxnreg: int | None = None,
    rotate_states: int = triton_scan.BWD_ROTATE_STATES,
    prefetch: int = triton_scan.FWD_PREFETCH,
) -> KernelReport:
    """Compile at the stage-0 shape (N = 16, D and delta_bias present, no orders; the layout kernels with the
    launcher's tiles for a 56 x 56 map of 192 channels) and report."""
    if kernel in LAYOUT_KERNELS:
        tiles = {"TD": triton_cross_scan.TILE_CHANNELS, "TS": triton_cross_scan.TILE_PIXELS}
        extra = {"ACC_FP64": False} if kernel == "cross_merge" else {}
        cubin = compile_kernel(kernel, {**tiles, **extra}, num_warps, maxnreg)
        return sass_report(cubin, num_warps)
    constexprs: dict[str, int | bool] = {"HAS_D": True, "HAS_BIAS": True, "REORDER": False, "N_PAD": 16}
    constexprs.update(BLOCK_D=block_d, BLOCK_L=chunk)
    if kernel == "backward":
        constexprs.update(REDUCE_BC=True, T=step, ROTATE_STATES=bool(rotate_states))
    else:
        constexprs.update(SAVE_STATE=True, PREFETCH=bool(prefetch))
    return sass_report(compile_kernel(kernel, constexprs, num_warps, maxnreg), num_warps)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", choices=tuple(KERNELS), default="backward")
    parser.add_argument("--block_d", type=int, default=None, help="channels per program (default: the module's)")
    parser.add_argument("--chunk", type=int, default=triton_scan.BWD_CHUNK, help="saved-state spacing")
    parser.add_argument("--step", type=int, default=triton_scan.BWD_STEP, help="backward positions per step")
    parser.add_argument("--warps", type=int, default=None)
    parser.add_argument("--maxnreg", type=int, default=None)
    parser.add_argument(
        "--rotate_states",
        type=int,
        choices=(0, 1),
        default=triton_scan.BWD_ROTATE_STATES,
        help="backward: the pair-rotated state index (triton_scan.BWD_ROTATE_STATES)",
    )
    parser.add_argument(
        "--prefetch",
        type=int,
        choices=(0, 1),
        default=triton_scan.FWD_PREFETCH,
        help="forward: load the next step's tiles ahead (triton_scan.FWD_PREFETCH)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the text lines")
    args = parser.parse_args(argv)
    backward = args.kernel == "backward"
    layout = args.kernel in LAYOUT_KERNELS
    block_d = args.block_d or (triton_scan.BWD_BLOCK_D if backward else triton_scan.FWD_BLOCK_D)
    default_warps = (
        triton_cross_scan.NUM_WARPS if layout else (triton_scan.BWD_WARPS if backward else triton_scan.FWD_WARPS)
    )
    warps = args.warps or default_warps
    result = report(args.kernel, block_d, args.chunk, args.step, warps, args.maxnreg, args.rotate_states, args.prefetch)
    if args.json:
        fields = ("registers", "stack_bytes", "shared_bytes", "num_warps", "programs_per_sm")
        loops = [{"instructions": loop.instructions, "opcodes": dict(loop.opcodes)} for loop in result.loops]
        whole = {"instructions": result.whole.instructions, "opcodes": dict(result.whole.opcodes)}
        print(json.dumps({**{name: getattr(result, name) for name in fields}, "loops": loops, "whole": whole}))
        return
    if layout:
        setting = f"tiles {triton_cross_scan.TILE_CHANNELS} x {triton_cross_scan.TILE_PIXELS}^2"
    else:
        option = f"rotate_states {args.rotate_states}" if backward else f"prefetch {args.prefetch}"
        setting = f"BLOCK_D {block_d}, chunk {args.chunk}, step {args.step}, {option}"
    print(
        f"{KERNELS[args.kernel][1]} sm_90: {setting}, {warps} warp(s), maxnreg {args.maxnreg}: {result.registers} "
        f"registers, {result.stack_bytes} B stack, {result.shared_bytes} B shared, {result.programs_per_sm} programs "
        "per SM"
    )
    for loop in result.loops:
        mix = ", ".join(f"{op} {n}" for op, n in loop.opcodes.most_common(12))
        print(f"loop: {loop.instructions} instructions ({mix})")
    memory = sorted(
        (op, n) for op, n in result.whole.opcodes.items() if op.split(".")[0] in ("LDG", "STG", "LDS", "STS")
    )
    print(f"kernel: {result.whole.instructions} instructions; memory " + ", ".join(f"{op} {n}" for op, n in memory))


if __name__ == "__main__":
    main()
