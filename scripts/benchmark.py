"""Training and inference speed of the bundle's networks on the current device.

``python -m scripts.benchmark [--networks mamba_unet,unet,swin_unet] [--batch 24] [--size 224] [--steps N]
[--amp bf16|none] [--compile [--compile_mode MODE]] [--pipeline_iters N] [--dataset_dir DIR]
[--triton_cross_scan pair|index|gather] [--cross_scan_impl gather|views|auto|triton] [--tile NAME[@L]=VALUE ...]
[--profile N]``
prints, per network (the scan backend follows ``MAMBA_UNET_SCAN``; on ``triton``, ``--triton_cross_scan`` sets how
SS2D feeds the four directions to the kernel, see mamba_unet.TRITON_CROSS_SCAN; ``--cross_scan_impl`` how the
gathered directions are copied, see mamba_unet.CROSS_SCAN_IMPL):

- training img/s and ms/step: forward + DiceCE loss + backward + SGD step on a batch already on the device, each step
  timed with CUDA events (wall clock on CPU) after warm-up; the median step;
- inference img/s (eval mode, no grad, same batch), median;
- peak memory of the training steps (``torch.cuda.max_memory_allocated``; n/a on CPU);
- for Mamba-UNet, the time of its selective scans alone for one step: the scan calls of one training step are recorded
  (their real inputs), then replayed forward only and forward + backward;
- full-pipeline training img/s: configs/train.json's CacheDataset / DataLoader / augmentation / SupervisedTrainer on the
  phantom (or ``--dataset_dir``, SSL4MIS layout) for ``--pipeline_iters`` iterations, timed after the first 10%;
  then one validation pass gives the validation Dice of that short run (a check that bf16/compile train the same);
- with ``--profile N``: where the time of a training step and of an inference batch goes, from ``torch.profiler``
  over N more of each: the device's busy time per step (the union of its kernels' intervals) against the timed step,
  kernels per step, the time per kind of kernel (KERNEL_CATEGORIES: scan, matmul, conv, norm, ...) and the longest
  kernels. Busy well below the step means launch or host gaps (CUDA graphs, fewer kernels); busy near it means the
  kernels themselves. On CPU the operators' self times stand in for kernels.

A table of all of it comes last. UNet and Swin-UNet are imported lazily and skipped with a note when absent.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.autograd import DeviceType

from scripts.networks import mamba_unet
from scripts.networks.mamba_unet import CROSS_SCAN_IMPLS, TRITON_CROSS_SCAN_MODES
from scripts.selective_scan import SCAN_ENV_VAR

BUNDLE_ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 4

# name -> (module, class); constructed with in_channels=1, out_channels=NUM_CLASSES.
NETWORKS = {
    "mamba_unet": ("scripts.networks.mamba_unet", "MambaUNet"),
    "unet": ("scripts.networks.unet", "UNet"),
    "swin_unet": ("scripts.networks.swin_unet", "SwinUNet"),
    "umamba_bot": ("scripts.networks.umamba", "UMambaBot"),
    "umamba_enc": ("scripts.networks.umamba", "UMambaEnc"),
}
# Kernel (CPU: operator) name fragments -> kind, first match wins: "scan" first, since our Triton scan kernels would
# otherwise count as elementwise; everything unmatched (fused elementwise, reductions, copies) is "other".
KERNEL_CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("scan", ("selective_scan", "selectivescan", "_scan_fwd", "_scan_bwd")),
    ("memcpy/memset", ("memcpy", "memset")),
    ("matmul", ("gemm", "cutlass", "xmma", "cublas", "matmul", "aten::mm", "aten::bmm", "aten::addmm")),
    ("conv", ("conv", "cudnn", "dgrad", "wgrad")),
    ("norm", ("layer_norm", "layernorm", "batch_norm", "batchnorm", "group_norm", "instance_norm")),
    ("gather/scatter", ("gather", "scatter", "index")),
    ("softmax/attention", ("softmax", "attention", "fmha", "flash")),
)
OTHER_KERNELS = "other"
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's modes
COLUMNS = [
    "network",
    "train img/s",
    "ms/step",
    "infer img/s",
    "peak GiB",
    "scan fwd ms",
    "scan fwd+bwd ms",
    "pipeline img/s",
    "val Dice",
]


@dataclass
class KernelProfile:
    """The device work of ``steps`` profiled steps, per step: kernels on a GPU, operators' self times on CPU."""

    steps: int
    busy_ms: float  # union of the kernels' intervals (on CPU: sum of self times), per step
    count: float  # kernels (operators) per step
    categories: dict[str, tuple[float, float]]  # kind -> (ms per step, count per step), longest first
    top: list[tuple[str, float, float]]  # (name, ms per step, count per step), longest first


@dataclass
class Result:
    """One network's measurements; None = not measured, ``note`` says why."""

    network: str
    train_ms: float | None = None
    infer_ms: float | None = None
    peak_gib: float | None = None
    scan_fwd_ms: float | None = None
    scan_fwd_bwd_ms: float | None = None
    pipeline_img_s: float | None = None
    val_dice: float | None = None
    profiles: dict[str, KernelProfile] = field(default_factory=dict)  # "train" / "infer", with --profile
    notes: list[str] = field(default_factory=list)

    def row(self, batch: int) -> list[str]:
        def fmt(value: float | None, digits: int = 1) -> str:
            return "n/a" if value is None else f"{value:,.{digits}f}"

        return [
            self.network,
            fmt(None if self.train_ms is None else 1000.0 * batch / self.train_ms),
            fmt(self.train_ms),
            fmt(None if self.infer_ms is None else 1000.0 * batch / self.infer_ms),
            fmt(self.peak_gib, 2),
            fmt(self.scan_fwd_ms),
            fmt(self.scan_fwd_bwd_ms),
            fmt(self.pipeline_img_s),
            fmt(self.val_dice, 4),
        ]


def tile_setting(text: str) -> tuple[str, int | None, int | None]:
    """argparse type of ``--tile``: triton_scan.parse_tile with its message as the usage error."""
    from scripts import triton_scan  # imports without Triton

    try:
        return triton_scan.parse_tile(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_tile_argument(parser: argparse.ArgumentParser) -> None:
    """``--tile NAME=VALUE`` / ``NAME@L=VALUE`` (repeatable): a Triton scan tile constant for this run."""
    parser.add_argument(
        "--tile",
        action="append",
        type=tile_setting,
        default=[],
        metavar="NAME[@L]=VALUE",
        help="set a Triton scan tile constant (scripts/triton_scan.py TILE_SETTINGS) for this run, module-wide or with"
        " @L for scans of length L only; VALUE an integer or None (e.g. BWD_MAXNREG=224, BWD_BLOCK_D@3136=4); the"
        " form scripts.benchmark_scan --sweep prints for its winners",
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m scripts.benchmark", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--networks", default="mamba_unet,unet,swin_unet", help="comma-separated: " + ",".join(NETWORKS)
    )
    parser.add_argument("--batch", type=int, default=24)
    parser.add_argument("--size", type=int, default=224, help="square input size in pixels")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (after --warmup steps)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--amp", choices=("bf16", "none"), default="none", help="bf16 autocast around the step")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network")
    parser.add_argument(
        "--compile_mode",
        choices=COMPILE_MODES,
        default="default",
        help="torch.compile's mode with --compile (train.json's compile_mode); reduce-overhead adds CUDA graphs",
    )
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matmuls and convolutions")
    parser.add_argument("--pipeline_iters", type=int, default=300, help="full-pipeline iterations; 0 skips it")
    parser.add_argument("--dataset_dir", default=None, help="SSL4MIS ACDC folder; default: the synthetic phantom")
    parser.add_argument("--num_workers", type=int, default=4, help="pipeline DataLoader/CacheDataset workers")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument(
        "--profile", type=int, default=0, help="torch.profiler over N more training and inference steps; 0: none"
    )
    parser.add_argument(
        "--triton_cross_scan",
        choices=TRITON_CROSS_SCAN_MODES,
        default=None,
        help="on the Triton scan (MAMBA_UNET_SCAN=triton): SS2D's cross-scan mode; default mamba_unet.TRITON_CROSS_SCAN",
    )
    parser.add_argument(
        "--cross_scan_impl",
        choices=CROSS_SCAN_IMPLS,
        default=None,
        help="how the gathered cross-scan copies the directions; default mamba_unet.CROSS_SCAN_IMPL",
    )
    add_tile_argument(parser)
    args = parser.parse_args(argv)
    args.networks = [name.strip() for name in args.networks.split(",") if name.strip()]
    unknown = [name for name in args.networks if name not in NETWORKS]
    if unknown:
        parser.error(f"unknown network(s) {unknown}; choose from {list(NETWORKS)}")
    if min(args.batch, args.size, args.steps) < 1 or min(args.warmup, args.pipeline_iters, args.profile) < 0:
        parser.error("--batch, --size and --steps must be >= 1; --warmup, --pipeline_iters and --profile >= 0")
    return args


def network_class(name: str) -> type[torch.nn.Module]:
    """The network's class; ImportError/AttributeError when its module is not (yet) in the bundle."""
    module_name, class_name = NETWORKS[name]
    return getattr(importlib.import_module(module_name), class_name)


def build_network(name: str, size: int) -> torch.nn.Module:
    """The network for 1-channel inputs of size x size (fixed-size networks get ``img_size`` / ``input_size``)."""
    cls = network_class(name)
    kwargs = {"in_channels": 1, "out_channels": NUM_CLASSES}
    parameters = inspect.signature(cls).parameters
    if "img_size" in parameters:
        kwargs["img_size"] = size
    if "input_size" in parameters:
        kwargs["input_size"] = (size, size)
    return cls(**kwargs)


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


class Timer:
    """Times one region: CUDA events on a GPU (no host sync inside the region), perf_counter on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    @contextlib.contextmanager
    def __call__(self, times: list[float]) -> Iterator[None]:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            start_s = time.perf_counter()
            yield
            times.append(1000.0 * (time.perf_counter() - start_s))


def median_ms(run: Callable[[], None], timer: Timer, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        run()
    times: list[float] = []
    for _ in range(steps):
        with timer(times):
            run()
    return statistics.median(times)


def make_loss() -> torch.nn.Module:
    """configs/train.json's loss (DiceCE), so the benchmark step is the training step."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(BUNDLE_ROOT / "configs" / "train.json")
    return parser.get_parsed_content("loss")


@contextlib.contextmanager
def recording_scans(calls: list[tuple[Callable, tuple, dict]]) -> Iterator[None]:
    """Record every selective-scan call of Mamba-UNet's SS2D (function, detached inputs) while inside."""

    def wrap(original: Callable) -> Callable:
        def recorder(*args, **kwargs):
            detached = tuple(a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args)
            kw = {k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
            calls.append((original, detached, kw))
            return original(*args, **kwargs)

        return recorder

    # mamba_kernel_scan: the CUDA op in versions that kept it in mamba_unet.py; selective_scan: every backend's
    # gathered path; triton_selective_scan: the fused cross-scan path on the Triton backend.
    names = [
        name for name in ("mamba_kernel_scan", "selective_scan", "triton_selective_scan") if hasattr(mamba_unet, name)
    ]
    originals = {name: getattr(mamba_unet, name) for name in names}
    for name, function in originals.items():
        setattr(mamba_unet, name, wrap(function))
    try:
        yield
    finally:
        for name, function in originals.items():
            setattr(mamba_unet, name, function)


def time_scans(calls: list[tuple[Callable, tuple, dict]], timer: Timer, steps: int, warmup: int) -> tuple[float, float]:
    """(forward ms, forward+backward ms) of the recorded scan calls replayed back to back: one training step's scans."""

    def forward() -> None:
        with torch.no_grad():
            for function, args, kwargs in calls:
                function(*args, **kwargs)

    grads_inputs = [
        (
            function,
            tuple(a.requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args),
            kwargs,
        )
        for function, args, kwargs in calls
    ]

    def forward_backward() -> None:
        for function, args, kwargs in grads_inputs:
            out = function(*args, **kwargs)
            out.backward(torch.ones_like(out))

    return median_ms(forward, timer, steps, warmup), median_ms(forward_backward, timer, steps, warmup)


def kernel_category(name: str) -> str:
    """The KERNEL_CATEGORIES kind of a kernel or operator name (case-insensitive), else OTHER_KERNELS."""
    lowered = name.lower()
    for category, fragments in KERNEL_CATEGORIES:
        if any(fragment in lowered for fragment in fragments):
            return category
    return OTHER_KERNELS


def summarise_kernels(activities: Sequence[tuple[str, float, float]], steps: int, top_k: int = 12) -> KernelProfile:
    """Per-step totals of (name, start us, end us) device activities recorded over ``steps`` steps.

    Busy time is the union of the intervals (kernels of several streams may overlap), the per-kind and per-kernel
    times are plain sums (so they can add up to more than busy when kernels overlap)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    busy_us, covered_until = 0.0, float("-inf")
    for _, start, end in sorted(activities, key=lambda activity: activity[1]):
        if end > covered_until:
            busy_us += end - max(start, covered_until)
            covered_until = end
    by_name: dict[str, list[float]] = {}
    for name, start, end in activities:
        entry = by_name.setdefault(name, [0.0, 0])
        entry[0] += end - start
        entry[1] += 1
    by_category: dict[str, list[float]] = {}
    for name, (total_us, calls) in by_name.items():
        entry = by_category.setdefault(kernel_category(name), [0.0, 0])
        entry[0] += total_us
        entry[1] += calls
    per_step = 1000.0 * steps  # us over all steps -> ms per step

    def ranked(table: dict[str, list[float]]) -> list[tuple[str, float, float]]:
        rows = [(key, total_us / per_step, calls / steps) for key, (total_us, calls) in table.items()]
        return sorted(rows, key=lambda row: row[1], reverse=True)

    return KernelProfile(
        steps=steps,
        busy_ms=busy_us / per_step,
        count=len(activities) / steps,
        categories={key: (ms, calls) for key, ms, calls in ranked(by_category)},
        top=ranked(by_name)[:top_k],
    )


def profile_kernels(run: Callable[[], None], device: torch.device, steps: int) -> KernelProfile:
    """``run`` ``steps`` times (already warmed up) under torch.profiler; its device kernels (CPU: operators)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
        torch.cuda.synchronize(device)
    with torch.profiler.profile(activities=activities) as profiler:
        for _ in range(steps):
            run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    if device.type == "cuda":
        recorded = [
            (event.name, event.time_range.start, event.time_range.end)
            for event in profiler.events()
            if event.device_type == DeviceType.CUDA
        ]
    else:  # operators' self times laid end to end (they have no device interval of their own)
        recorded, clock = [], 0.0
        for average in profiler.key_averages():
            per_call = average.self_cpu_time_total / max(average.count, 1)
            for _ in range(average.count):
                recorded.append((average.key, clock, clock + per_call))
                clock += per_call
    return summarise_kernels(recorded, steps)


def format_profile(name: str, what: str, profile: KernelProfile, step_ms: float | None, device: torch.device) -> str:
    """A profile as a headline (busy against the timed step) and two Markdown tables: per kind, longest kernels."""
    unit = "kernels" if device.type == "cuda" else "operators (self CPU time)"
    headline = f"{name} {what} profile over {profile.steps} steps, {unit}: {profile.busy_ms:,.2f} ms busy per step"
    if step_ms:
        headline += f" of the {step_ms:,.2f} ms timed step ({100.0 * profile.busy_ms / step_ms:.0f}% busy)"
    lines = [headline + f", {profile.count:,.0f} {unit.split(' ')[0]} per step", ""]
    lines += ["| kind | ms/step | % of busy | calls/step |", "|---|---|---|---|"]
    for category, (ms, calls) in profile.categories.items():
        share = 100.0 * ms / profile.busy_ms if profile.busy_ms else 0.0
        lines.append(f"| {category} | {ms:,.2f} | {share:.1f} | {calls:,.1f} |")
    lines += ["", "| longest | ms/step | calls/step |", "|---|---|---|"]
    for kernel, ms, calls in profile.top:
        shown = kernel if len(kernel) <= 90 else kernel[:87] + "..."
        lines.append(f"| `{shown.replace('|', '/')}` | {ms:,.2f} | {calls:,.1f} |")
    return "\n".join(lines)


def benchmark_steps(name: str, args: argparse.Namespace, device: torch.device, result: Result) -> None:
    """Training step, inference and scan timings on synthetic data already on the device."""
    torch.manual_seed(0)
    network = build_network(name, args.size).to(device)
    model = torch.compile(network, mode=args.compile_mode) if args.compile else network
    loss_function = make_loss()
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    images = torch.rand(args.batch, 1, args.size, args.size, device=device)
    labels = torch.randint(0, NUM_CLASSES, (args.batch, 1, args.size, args.size), device=device).float()
    timer = Timer(device)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, args.amp):
            loss = loss_function(model(images), labels)
        loss.backward()
        optimizer.step()

    model.train()
    if device.type == "cuda":
        train_step()  # compile / cudnn autotune outside the peak-memory window
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    result.train_ms = median_ms(train_step, timer, args.steps, args.warmup)
    if device.type == "cuda":
        result.peak_gib = torch.cuda.max_memory_allocated(device) / 2**30
    if args.profile:
        result.profiles["train"] = profile_kernels(train_step, device, args.profile)

    if name == "mamba_unet":
        calls: list[tuple[Callable, tuple, dict]] = []
        with recording_scans(calls):
            # Eager network: the compiled graph calls the op directly, past the module attribute recorded here.
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, args.amp):
                loss_function(network(images), labels).backward()
        optimizer.zero_grad(set_to_none=True)
        result.scan_fwd_ms, result.scan_fwd_bwd_ms = time_scans(calls, timer, args.steps, args.warmup)
        result.notes.append(f"{len(calls)} scan calls per step")
        del calls

    model.eval()

    def infer() -> None:
        with torch.inference_mode(), autocast(device, args.amp):
            model(images)

    result.infer_ms = median_ms(infer, timer, args.steps, args.warmup)
    if args.profile:
        result.profiles["infer"] = profile_kernels(infer, device, args.profile)


def benchmark_pipeline(name: str, args: argparse.Namespace, device: torch.device, result: Result, work: Path) -> None:
    """configs/train.json end to end (minus checkpointing/logging) for --pipeline_iters iterations, then one validation."""
    from ignite.engine import Events
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(BUNDLE_ROOT / "configs" / "train.json")
    module_name, class_name = NETWORKS[name]
    overrides = {
        "bundle_root": str(BUNDLE_ROOT),
        "data_source": "ssl4mis" if args.dataset_dir else "phantom",
        "dataset_dir": args.dataset_dir or str(work / "phantom"),
        "ckpt_dir": str(work / "models"),
        "log_dir": str(work / "logs"),
        "batch_size": args.batch,
        "patch_size": [args.size, args.size],
        "max_iterations": args.pipeline_iters,
        "val_interval": args.pipeline_iters,
        "num_workers": args.num_workers,
        "amp": args.amp == "bf16",
        "device": f"$torch.device('{device}')",
        "network_def": {"_target_": f"{module_name}.{class_name}", "in_channels": 1, "out_channels": "@num_classes"},
        "train#trainer#compile": args.compile,
        "compile_mode": args.compile_mode,
    }
    for key, value in overrides.items():
        parser[key] = value
    # Throughput only: keep the LR schedule, drop validation/checkpoint/logging handlers (validation runs once, after).
    parser["train#handlers"] = [h for h in parser["train#handlers"] if h.get("_target_") == "LrScheduleHandler"]
    parser.parse()
    parser.get_parsed_content("initialize")  # set_determinism(seed)
    trainer = parser.get_parsed_content("train#trainer")
    if args.amp == "bf16":
        trainer.amp_kwargs = {"dtype": torch.bfloat16}  # SupervisedTrainer's amp is float16 autocast by default
    start_iteration = max(1, args.pipeline_iters // 10)
    marks: dict[str, float] = {}

    def mark(key: str) -> Callable:
        def handler(_engine) -> None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            marks[key] = time.perf_counter()

        return handler

    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=start_iteration), mark("start"))
    trainer.add_event_handler(Events.COMPLETED, mark("end"))
    trainer.run()
    timed = trainer.state.iteration - start_iteration
    if timed > 0:
        result.pipeline_img_s = timed * args.batch / (marks["end"] - marks["start"])
    evaluator = parser.get_parsed_content("validate#evaluator")
    if args.amp == "bf16":
        evaluator.amp_kwargs = {"dtype": torch.bfloat16}
    evaluator.run()
    result.val_dice = float(evaluator.state.metrics["val_mean_dice"])


def format_table(results: Sequence[Result], batch: int) -> str:
    rows = [COLUMNS] + [r.row(batch) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[Result]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if args.triton_cross_scan is not None:
        mamba_unet.TRITON_CROSS_SCAN = args.triton_cross_scan
    if args.cross_scan_impl is not None:
        mamba_unet.CROSS_SCAN_IMPL = args.cross_scan_impl
    if args.tile:
        from scripts import triton_scan

        for setting in args.tile:
            triton_scan.set_tile(*setting)
        print(f"Triton scan tiles: {triton_scan.tile_config()}", flush=True)
    describe = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"device {describe}, torch {torch.__version__}, batch {args.batch}, {args.size}x{args.size}, amp {args.amp}, "
        f"compile {args.compile} ({args.compile_mode}), tf32 {args.tf32}, {args.steps} timed steps after "
        f"{args.warmup}, scan {os.environ.get(SCAN_ENV_VAR, 'auto')} (cross-scan on Triton: "
        f"{mamba_unet.TRITON_CROSS_SCAN}; copies: {mamba_unet.CROSS_SCAN_IMPL})",
        flush=True,
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="benchmark_") as work:
        for name in args.networks:
            result = Result(name)
            results.append(result)
            try:
                network_class(name)
            except (ImportError, AttributeError) as err:
                result.notes.append(f"skipped: {NETWORKS[name][0]}.{NETWORKS[name][1]} not available ({err})")
                print(f"{name}: {result.notes[-1]}", flush=True)
                continue
            try:
                benchmark_steps(name, args, device, result)
                print(f"{name}: steps {result.row(args.batch)} {'; '.join(result.notes)}", flush=True)
                if args.pipeline_iters:
                    benchmark_pipeline(name, args, device, result, Path(work))
                    print(f"{name}: pipeline {result.row(args.batch)[-2:]} (img/s, val Dice)", flush=True)
            except Exception as err:  # one network failing (e.g. a fixed-size one at --size 64) must not stop the rest
                logging.exception("%s failed", name)
                result.notes.append(f"failed: {type(err).__name__}: {str(err)[:200]}")
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print()
    print(format_table(results, args.batch))
    for result in results:
        if result.notes:
            print(f"{result.network}: {'; '.join(result.notes)}")
    for result in results:
        for what, profile in result.profiles.items():
            step_ms = result.train_ms if what == "train" else result.infer_ms
            print()
            print(format_profile(result.network, f"{what} step", profile, step_ms, device))
    return results


if __name__ == "__main__":
    main()
