"""Offline report of the Triton scan's kernels as compiled for the H100 (sm_90): no GPU needed.

``python -m scripts.kernel_report [--kernel backward|forward] [--block_d 8] [--chunk 8] [--step 8] [--warps 1]
[--maxnreg N] [--rotate_states 0|1] [--prefetch 0|1]`` compiles one kernel of scripts/triton_scan.py with Triton's
NVIDIA backend for ``GPUTarget("cuda", 90, 32)`` at Mamba-UNet's stage-0 shape (N = 16, integer arguments
divisible by 16 as the launcher marks them for L = 3136) and prints its registers, stack (spills), shared memory, how
many one-program-per-block programs fit an SM, and the SASS instruction mix of each loop (``cuobjdump`` from the
Triton wheel). Device time is scarce: this is how the project checks a kernel change's registers and instruction counts
before a GPU call (docs/performance.md, versions 8 and after). The numbers are this machine's Triton version's code;
the GPU machine's Triton (3.6) may differ slightly (version 8's backward: 255 registers here with Triton 3.9, 249 in
ncu with Triton 3.6; ``PYTHONPATH=<a triton==3.6.0 install>`` compiles with that version instead).
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

from scripts import triton_scan

KERNELS = {"backward": "_scan_bwd_reg_kernel", "forward": "_scan_fwd_vec_kernel"}
# sm_90 limits that decide how many programs (one block each) are resident on an SM.
SM90_REGISTERS, SM90_MAX_WARPS, SM90_MAX_BLOCKS, REGISTER_GRANULE = 65536, 64, 32, 256
# Integer arguments the launcher passes divisible by 16 at stage 0 (Triton specialises on that, so the compiled code
# matches the GPU's only if they are marked the same way).
DIVISIBLE_INTS = ("dim", "u_channels", "length", "n_state", "channels_per_group")


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
    """The sm_90 cubin of triton_scan's ``kernel`` ("backward" or "forward") with the given constexprs."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if not triton_scan.triton_available():
        raise RuntimeError("scripts/kernel_report.py needs Triton")
    fn = getattr(triton_scan, KERNELS[kernel])
    if not hasattr(fn, "params"):  # TRITON_INTERPRET=1 made the kernels interpreter functions, which do not compile
        raise RuntimeError(
            "scripts/kernel_report.py: unset TRITON_INTERPRET (the interpreter's kernels do not compile)"
        )
    signature, attrs = {}, {}
    for index, (name, param) in enumerate(zip(fn.arg_names, fn.params)):
        if param.is_constexpr:
            signature[name] = "constexpr"
            continue
        signature[name] = ("*i32" if name == "order_ptr" else "*fp32") if name.endswith("_ptr") else "i32"
        if name.endswith("_ptr") or name in DIVISIBLE_INTS:
            attrs[(index,)] = [["tt.divisibility", 16]]
    missing = [name for name, kind in signature.items() if kind == "constexpr" and name not in constexprs]
    if missing:
        raise ValueError(f"scripts/kernel_report.py: {KERNELS[kernel]} needs constexprs {missing}")
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
    index_of = {address: i for i, (address, _) in enumerate(instructions)}
    loops = []
    for i, (address, text) in enumerate(instructions):
        branch = re.search(r"\bBRA\b.*?0x([0-9a-f]+)", text)
        if branch and int(branch.group(1), 16) <= address and int(branch.group(1), 16) in index_of:
            body = [t for _, t in instructions[index_of[int(branch.group(1), 16)] : i + 1]]
            if len(body) > 1:  # the trailing self-branch after EXIT is no loop
                opcodes = collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", t).split()[0].split(".")[0] for t in body)
                loops.append(Loop(len(body), opcodes))
    return KernelReport(registers, stack, shared, num_warps, loops)


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
    """Compile at the stage-0 shape (N = 16, D and delta_bias present, no orders) and report."""
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
    block_d = args.block_d or (triton_scan.BWD_BLOCK_D if backward else triton_scan.FWD_BLOCK_D)
    warps = args.warps or (triton_scan.BWD_WARPS if backward else triton_scan.FWD_WARPS)
    result = report(args.kernel, block_d, args.chunk, args.step, warps, args.maxnreg, args.rotate_states, args.prefetch)
    if args.json:
        fields = ("registers", "stack_bytes", "shared_bytes", "num_warps", "programs_per_sm")
        loops = [{"instructions": loop.instructions, "opcodes": dict(loop.opcodes)} for loop in result.loops]
        print(json.dumps({**{name: getattr(result, name) for name in fields}, "loops": loops}))
        return
    option = f"rotate_states {args.rotate_states}" if backward else f"prefetch {args.prefetch}"
    print(
        f"{KERNELS[args.kernel]} sm_90: BLOCK_D {block_d}, chunk {args.chunk}, step {args.step}, {warps} warp(s), "
        f"maxnreg {args.maxnreg}, {option}: {result.registers} registers, "
        f"{result.stack_bytes} B stack, {result.shared_bytes} B shared, {result.programs_per_sm} programs per SM"
    )
    for loop in result.loops:
        mix = ", ".join(f"{op} {n}" for op, n in loop.opcodes.most_common(12))
        print(f"loop: {loop.instructions} instructions ({mix})")


if __name__ == "__main__":
    main()
