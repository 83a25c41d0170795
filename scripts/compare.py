"""Train and evaluate several networks under one recipe and tabulate them side by side (the model card's Table 1).

``python -m scripts.compare --networks unet,mamba_unet,swin_unet --out runs/table1 --dataset_dir /data/ACDC``
``python -m scripts.compare --networks mamba_unet --nproc_per_node 2 --out runs/table1 --dataset_dir /data/ACDC``
``python -m scripts.compare --table_only --out runs/table1``

For each network (a file ``configs/networks/<name>.json``) it runs, as a user would, in a subprocess:
``python -m monai.bundle run training`` with ``configs/train.json`` [+ ``--configs`` files] + the network file
(through ``torchrun`` with ``configs/multi_gpu_train.json`` when ``--nproc_per_node`` > 1), then ``run evaluating``
of the best checkpoint on the validation split (``configs/evaluate.json``). Every other argument (``--dataset_dir``,
``--amp true``, ``--max_iterations 1000``, ...) is passed to both commands unchanged.

Everything of a network stays in ``<out>/<network>/``: ``models/``, ``logs/`` (TensorBoard), ``eval/evaluation_val_*``
(the full report), ``train.log`` and ``eval.log`` (every command's output appended after a dated header, so a resumed
run keeps the logs of all its commands) and ``run.json`` (commands, wall times, iterations, img/s, best
validation Dice and its iteration). A network whose ``run.json`` says ``done`` is not run again, and an interrupted
training resumes from its ``latest.pt`` when the command is repeated. ``<out>/comparison.md`` and ``comparison.json``
are rebuilt from all ``run.json`` files after every network: the mean over RV/MYO/LV of the 8 report metrics, the
per-class Dice, where the best checkpoint was, the training time and img/s (iterations x batch / the trainer's own
time, validation included, start-up and data caching not; summed over all commands of a resumed run, from
``latest.pt``'s ``train_seconds``, so a run killed and resumed reports its whole cost). run.json also keeps each
command's wall time (``train_wall_s``, of the command that finished the training) and ``segments``.
A failing command stops the comparison with its exit status and the end of its log; finished networks are kept.
With ``--time_limit_s S`` (passed to ``run training``) a training that would pass S seconds stops cleanly after a
validation period: the comparison then exits with status 75 (run.json says ``interrupted``) and the same command
resumes it, so a long table can be filled in fixed-length slots.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import json
import logging
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser

from scripts.evaluation import CLASS_NAMES, METRICS, TABLE_HEADERS, atomic_write_bytes
from scripts.training import EXIT_RESUMABLE, TIME_LIMIT_STOP

logger = logging.getLogger(__name__)

BUNDLE_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = BUNDLE_ROOT / "configs"
NETWORKS_DIR = CONFIGS / "networks"
RECORD = "run.json"


class CommandFailed(RuntimeError):
    """A training or evaluation subprocess exited non-zero (``status``; 1 for a missing result); the message names its
    log, ``output`` is what that command wrote to it."""

    def __init__(self, message: str, status: int = 1, output: str = "") -> None:
        super().__init__(message, status, output)
        self.message, self.status, self.output = message, status, output

    def __str__(self) -> str:
        return self.message


class TrainingInterrupted(RuntimeError):
    """A training stopped by its ``--time_limit_s`` (exit EXIT_RESUMABLE): re-running the comparison resumes it."""


def available_networks() -> list[str]:
    """Network names the bundle has a config for (``configs/networks/<name>.json``)."""
    return sorted(path.stem for path in NETWORKS_DIR.glob("*.json"))


def bundle_command(mode: str, config_files: Sequence[Path], extra_args: Sequence[str], nproc: int = 1) -> list[str]:
    """``python -m monai.bundle run <mode>`` (under ``torchrun`` for nproc > 1) with the bundle's meta/logging files."""
    launcher = [sys.executable, "-m"]
    if nproc > 1:
        launcher += ["torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m"]
    return [
        *launcher, "monai.bundle", "run", mode,
        "--config_file", "[" + ",".join(f"'{path}'" for path in config_files) + "]",
        "--meta_file", str(CONFIGS / "metadata.json"),
        "--logging_file", str(CONFIGS / "logging.conf"),
        "--bundle_root", str(BUNDLE_ROOT),
        *extra_args,
    ]  # fmt: skip


def _run_logged(command: list[str], log_file: Path, what: str) -> float:
    """Run command with stdout+stderr appended to log_file (a resumed run keeps the log of every command, each after
    a dated header); return its wall time in s, or raise CommandFailed."""
    start = time.perf_counter()
    with open(log_file, "a") as log:
        offset = log.tell()
        log.write(f"=== {datetime.datetime.now().isoformat(timespec='seconds')}: {' '.join(command)}\n\n")
        log.flush()
        status = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=BUNDLE_ROOT).returncode
    wall = time.perf_counter() - start
    if status != 0:
        with open(log_file, errors="replace") as log:
            log.seek(offset)
            output = log.read()
        tail = "\n".join(output.splitlines()[-15:])
        raise CommandFailed(f"{what} failed (exit {status}); log {log_file}:\n{tail}", status, output)
    return wall


def _latest_state(models: Path) -> dict[str, Any]:
    """Iteration, best metric and its iteration, training time and segments from ``latest.pt`` ({} before the first
    validation period)."""
    path = models / "latest.pt"
    if not path.is_file():
        return {}
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    keys = ("iteration", "best_metric", "best_iteration", "train_seconds", "segments")
    return {key: state[key] for key in keys if key in state}


def _newest_report(eval_dir: Path) -> Path:
    reports = sorted(eval_dir.glob("evaluation_val_*/summary.json"), key=lambda p: p.stat().st_mtime)
    if not reports:
        raise CommandFailed(f"evaluation wrote no report under {eval_dir}")
    return reports[-1]


def _cli_overrides(extra_args: Sequence[str]) -> dict[str, Any]:
    """``--key value`` pairs as ``monai.bundle``'s command line reads them (Python literals, else strings)."""
    overrides = {}
    for flag, value in zip(extra_args[:-1], extra_args[1:]):
        if flag.startswith("--") and not value.startswith("--"):
            try:
                overrides[flag[2:]] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                overrides[flag[2:]] = value
    return overrides


def network_and_batch(config_files: Sequence[Path], extra_args: Sequence[str]) -> tuple[int, int]:
    """(trainable parameters of ``network_def``, global ``batch_size``) of the configs with the command-line overrides
    applied; the network is built on the CPU without pretrained weights."""
    parser = ConfigParser()
    parser.read_config([str(path) for path in config_files])
    parser.update({"bundle_root": str(BUNDLE_ROOT), **_cli_overrides(extra_args), "pretrained_path": None})
    network = parser.get_parsed_content("network_def")
    return sum(p.numel() for p in network.parameters() if p.requires_grad), int(parser.get_parsed_content("batch_size"))


def _write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())


def run_network(
    name: str, out: Path, extra_args: Sequence[str], config_files: Sequence[Path], nproc: int = 1
) -> dict[str, Any]:
    """Train and evaluate one network in ``out/name`` (skipped when its run.json says done); returns its record."""
    network_file = NETWORKS_DIR / f"{name}.json"
    if not network_file.is_file():
        raise ValueError(f"unknown network {name!r}: no {network_file} (available: {', '.join(available_networks())})")
    folder = out / name
    record_file = folder / RECORD
    earlier = json.loads(record_file.read_text()) if record_file.is_file() else {}
    if earlier.get("status") == "done":
        logger.info("%s: done already (%s), not run again", name, record_file)
        return earlier
    folder.mkdir(parents=True, exist_ok=True)
    paths = ["--ckpt_dir", str(folder / "models"), "--log_dir", str(folder / "logs")]
    paths += ["--output_dir", str(folder / "eval")]
    base = [CONFIGS / "train.json", *config_files, network_file]
    train_configs = base + ([CONFIGS / "multi_gpu_train.json"] if nproc > 1 else [])
    train_command = bundle_command("training", train_configs, [*extra_args, *paths], nproc)
    eval_command = bundle_command("evaluating", [*base, CONFIGS / "evaluate.json"], [*extra_args, *paths])
    record: dict[str, Any] = {
        "network": name,
        "status": "training",
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "processes": nproc,
        "train_command": train_command,
        "eval_command": eval_command,
    }
    _write_json(record_file, record)
    start_iteration = _latest_state(folder / "models").get("iteration", 0)
    logger.info("%s: training (log %s)", name, folder / "train.log")
    try:
        record["train_wall_s"] = _run_logged(train_command, folder / "train.log", f"training of {name}")
        state = _latest_state(folder / "models")
        record.update(state, status="evaluating", iterations_trained=state["iteration"] - start_iteration)
        if record["iterations_trained"] == 0 and earlier.get("iterations_trained"):
            # training had finished in an earlier invocation (whose evaluation failed): keep its measurement
            record.update({k: earlier[k] for k in ("train_wall_s", "iterations_trained")})
        _write_json(record_file, record)
        logger.info("%s: evaluating (log %s)", name, folder / "eval.log")
        record["eval_wall_s"] = _run_logged(eval_command, folder / "eval.log", f"evaluation of {name}")
    except CommandFailed as error:
        # under torchrun the launcher exits 1 when its workers exit EXIT_RESUMABLE: this command's log line tells
        interrupted = record["status"] == "training" and (
            error.status == EXIT_RESUMABLE or TIME_LIMIT_STOP in error.output
        )
        record["status"] = "interrupted" if interrupted else "failed"
        record.update(_latest_state(folder / "models"))
        _write_json(record_file, record)
        if interrupted:
            raise TrainingInterrupted(
                f"training of {name} stopped by its time limit at iteration {record.get('iteration', 0)}; "
                "run the same command again to resume it"
            ) from error
        raise
    report = _newest_report(folder / "eval")
    parameters, batch_size = network_and_batch(base, extra_args)
    record.update(status="done", report=str(report.relative_to(out)), parameters=parameters, batch_size=batch_size)
    # None for a checkpoint written before train_seconds existed
    seconds = record.get("train_seconds")
    record["train_img_per_s"] = record["iteration"] * batch_size / seconds if seconds else None
    _write_json(record_file, record)
    return record


def comparison_table(out: Path) -> tuple[str, list[dict[str, Any]]]:
    """Markdown table (and its rows) of every finished network under ``out``."""
    rows = []
    for record_file in sorted(out.glob(f"*/{RECORD}")):
        record = json.loads(record_file.read_text())
        if record.get("status") != "done":
            continue
        summary = json.loads((out / record["report"]).read_text())
        rows.append(
            {
                "network": record["network"],
                "parameters": record["parameters"],
                "mean": {metric: summary["mean"][metric]["mean"] for metric in METRICS},
                "dice_per_class": {c: summary["per_class"][c]["Dice"]["mean"] for c in CLASS_NAMES.values()},
                "units": summary["units"],
                "best_iteration": record.get("best_iteration"),
                "iterations": record.get("iteration"),
                "train_seconds": record.get("train_seconds"),
                "train_img_per_s": record["train_img_per_s"],
                "processes": record.get("processes", 1),
            }
        )
    units = sorted({row["units"] for row in rows})
    headers = ["network", "params"] + [TABLE_HEADERS[m] for m in METRICS]
    headers += ["Dice " + "/".join(CLASS_NAMES.values()), "best at it", "training time", "img/s", "processes"]
    lines = [
        f"Validation split, mean over cases of the mean over {'/'.join(CLASS_NAMES.values())}; "
        f"HD95/ASD in {' or '.join(units) or 'n/a'}. Training time: the trainer's, validation included, summed over "
        "the commands of a resumed run; img/s: iterations x batch / training time.",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "---|" * len(headers),
    ]
    for row in rows:
        cells = [row["network"], f"{row['parameters']:,}"]
        cells += [f"{row['mean'][m]:.4f}" for m in METRICS]
        cells.append(" / ".join(f"{v:.4f}" for v in row["dice_per_class"].values()))
        cells.append(f"{row['best_iteration']} of {row['iterations']}")
        if row["train_seconds"] is None:
            time_cell = img_per_s = "n/a"
        else:
            minutes, seconds = divmod(round(row["train_seconds"]), 60)
            time_cell, img_per_s = f"{minutes} min {seconds:02d} s", f"{row['train_img_per_s']:.1f}"
        cells += [time_cell, img_per_s, str(row["processes"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n", rows


def write_comparison(out: Path) -> str:
    table, rows = comparison_table(out)
    atomic_write_bytes(out / "comparison.md", table.encode())
    _write_json(out / "comparison.json", rows)
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", default="mamba_unet,unet,swin_unet", help="comma-separated configs/networks/*")
    parser.add_argument("--out", default="runs/compare", help="one folder per network plus comparison.md")
    parser.add_argument("--configs", nargs="*", default=[], help="config files between train.json and the network's")
    parser.add_argument("--nproc_per_node", type=int, default=1, help="GPUs per run (torchrun + multi_gpu_train)")
    parser.add_argument("--table_only", action="store_true", help="only rebuild comparison.md from finished runs")
    args, extra_args = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(message)s")
    out = Path(args.out).resolve()
    if not args.table_only:
        networks = [n.strip() for n in args.networks.split(",") if n.strip()]
        unknown = [n for n in networks if n not in available_networks()]
        if unknown or not networks:
            parser.error(f"unknown network(s) {unknown or networks}; available: {', '.join(available_networks())}")
        missing = [c for c in args.configs if not Path(c).is_file()]
        if missing:
            parser.error(f"config file(s) not found: {missing}")
        if args.nproc_per_node < 1:
            parser.error("--nproc_per_node must be >= 1")
        config_files = [Path(c).resolve() for c in args.configs]
        for name in networks:
            try:
                run_network(name, out, extra_args, config_files, args.nproc_per_node)
            except TrainingInterrupted as error:
                print(f"STOPPED: {error}", file=sys.stderr)
                return EXIT_RESUMABLE
            except CommandFailed as error:
                print(f"ERROR: {error}", file=sys.stderr)
                return 1
            finally:
                if out.is_dir():
                    write_comparison(out)
    if not out.is_dir():
        parser.error(f"--out {out} does not exist")
    print(write_comparison(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
