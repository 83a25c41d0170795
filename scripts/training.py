"""Training-loop glue the configs call: iteration schedule, resumable checkpoints, progress bar, output folders.

Everything else in the training workflow is stock MONAI / Ignite (SupervisedTrainer, SupervisedEvaluator,
ValidationHandler, LrScheduleHandler, StatsHandler, TensorBoardStatsHandler).
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from monai.handlers import from_engine

logger = logging.getLogger(__name__)

LATEST_CHECKPOINT = "latest.pt"
BEST_MODEL = "model.pt"
LOSS_OF_OUTPUT = from_engine(["loss"], first=True)  # SupervisedTrainer's output (decollated dicts) -> loss


def validation_periods(max_iterations: int, val_interval: int) -> int:
    """Number of trainer 'epochs' when one epoch is one validation period of `val_interval` iterations.

    The paper trains for a number of iterations and validates every 200 of them; expressing a validation period as an
    Ignite epoch (with `epoch_length=val_interval`) keeps MONAI's epoch-level ValidationHandler and checkpointing.
    """
    if max_iterations <= 0 or val_interval <= 0:
        raise ValueError(f"max_iterations ({max_iterations}) and val_interval ({val_interval}) must be positive.")
    if max_iterations % val_interval:
        raise ValueError(
            f"max_iterations ({max_iterations}) must be a multiple of val_interval ({val_interval}): training runs in "
            "whole validation periods. Change one of them (e.g. --val_interval 100)."
        )
    return max_iterations // val_interval


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save through a temporary file in the same folder and os.replace, so a kill never leaves a truncated file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a checkpoint should be readable like any other output
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def per_rank_batch_size(global_batch_size: int, world_size: int) -> int:
    """Batch per process so that the global batch stays the recipe's (24 = 2 x 12 on two GPUs)."""
    if global_batch_size % world_size:
        raise ValueError(
            f"--batch_size {global_batch_size} is the global batch and must be divisible by the {world_size} processes."
        )
    return global_batch_size // world_size


def is_main_process() -> bool:
    """True outside torch.distributed and on rank 0: only one process writes checkpoints."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def unwrap(network: torch.nn.Module) -> torch.nn.Module:
    """The bare module behind DistributedDataParallel / DataParallel / torch.compile, for plain state dicts."""
    network = getattr(network, "module", network)
    return getattr(network, "_orig_mod", network)


class ResumableCheckpoint:
    """Keeps `latest.pt` (everything needed to resume) and `model.pt` (best weights by the key metric) in `ckpt_dir`.

    Hand-written instead of MONAI's CheckpointSaver/CheckpointLoader because those (MONAI 1.6.1) write non-atomically
    (`atomic=False`), delete the previous checkpoint before writing the next one, and forget the best metric when a
    run is resumed, so a killed-and-restarted run could overwrite a better `model.pt` or load a truncated file.

    - trainer STARTED: if `resume` and `latest.pt` exists, restore network, optimizer, LR scheduler, trainer position
      (iteration/epoch), the best metric so far and the training time so far.
    - validator COMPLETED: if the key metric improved, write the network's plain state dict to `model.pt`
      (loadable by MONAI's CheckpointLoader and the Model Zoo tools).
    - trainer EPOCH_COMPLETED (one validation period): write `latest.pt`. Attach this handler after the
      ValidationHandler so the best metric of that period is already known.
    - trainer COMPLETED: log the whole run's training time.

    `train_seconds` in `latest.pt` is the trainer's wall time (validation included, start-up excluded) summed over every
    command that contributed saved periods, so a run resumed after a kill still reports its true cost; the time of a
    period interrupted before its save is not counted (that work is redone). `segments` counts those commands.
    """

    def __init__(
        self,
        ckpt_dir: str,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        lr_scheduler: Any,
        validator: Engine | None = None,
        key_metric: str = "val_mean_dice",
        resume: bool = True,
    ) -> None:
        self.ckpt_dir = Path(ckpt_dir)
        self.network = network
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.validator = validator
        self.key_metric = key_metric
        self.resume = resume
        self.best_metric = -math.inf
        self.best_iteration = -1
        self.train_seconds = 0.0  # of the saved periods, over all segments (commands) of this run
        self.segments = 0
        self._segment_start = time.perf_counter()
        self._seconds_before = 0.0  # train_seconds when this segment started
        self._trainer: Engine | None = None

    @property
    def latest_path(self) -> Path:
        return self.ckpt_dir / LATEST_CHECKPOINT

    @property
    def best_path(self) -> Path:
        return self.ckpt_dir / BEST_MODEL

    def attach(self, trainer: Engine) -> None:
        self._trainer = trainer
        trainer.add_event_handler(Events.STARTED, self._maybe_resume)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self._save_latest)
        trainer.add_event_handler(Events.COMPLETED, self._log_total)
        if self.validator is not None:
            self.validator.add_event_handler(Events.COMPLETED, self._maybe_save_best)

    def _maybe_resume(self, trainer: Engine) -> None:
        self._segment_start = time.perf_counter()
        self.segments += 1
        if not (self.resume and self.latest_path.exists()):
            return
        try:
            state = torch.load(self.latest_path, map_location="cpu", weights_only=True)
            unwrap(self.network).load_state_dict(state["network"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        except Exception as e:
            raise RuntimeError(
                f"{self.latest_path}: cannot resume from this checkpoint ({type(e).__name__}: {e}). "
                "Move it away to start a new run, or point --ckpt_dir elsewhere."
            ) from e
        iteration, epoch = int(state["iteration"]), int(state["epoch"])
        if epoch > trainer.state.max_epochs:
            raise RuntimeError(
                f"{self.latest_path}: the checkpoint is at validation period {epoch}, beyond this run's "
                f"{trainer.state.max_epochs} periods. Increase --max_iterations or use another --ckpt_dir."
            )
        trainer.state.iteration, trainer.state.epoch = iteration, epoch
        self.best_metric, self.best_iteration = float(state["best_metric"]), int(state["best_iteration"])
        # checkpoints written before these keys existed: unknown earlier time counts as 0, one earlier segment
        self._seconds_before = self.train_seconds = float(state.get("train_seconds", 0.0))
        self.segments = int(state.get("segments", 1)) + 1
        if "rng" in state:
            torch.set_rng_state(state["rng"])
        logger.info(
            f"Resumed from {self.latest_path} at iteration {iteration} "
            f"(best {self.key_metric} {self.best_metric:.4f} at iteration {self.best_iteration}; "
            f"{self.train_seconds:.1f} s of training so far, segment {self.segments})."
        )

    def _maybe_save_best(self, validator: Engine) -> None:
        # every rank tracks the best metric (the validation metrics are all-reduced); only rank 0 writes
        metric = validator.state.metrics.get(self.key_metric)
        if metric is None or not math.isfinite(float(metric)):
            return
        iteration = self._trainer.state.iteration if self._trainer is not None else -1
        if float(metric) > self.best_metric:
            self.best_metric, self.best_iteration = float(metric), iteration
            if not is_main_process():
                return
            atomic_torch_save(unwrap(self.network).state_dict(), self.best_path)
            logger.info(f"New best {self.key_metric} {metric:.4f} at iteration {iteration}: saved {self.best_path}")

    def _save_latest(self, trainer: Engine) -> None:
        self.train_seconds = self._seconds_before + time.perf_counter() - self._segment_start
        if not is_main_process():
            return
        state = {
            "network": unwrap(self.network).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "iteration": trainer.state.iteration,
            "epoch": trainer.state.epoch,
            "best_metric": self.best_metric,
            "best_iteration": self.best_iteration,
            "rng": torch.get_rng_state(),
            "train_seconds": self.train_seconds,
            "segments": self.segments,
        }
        atomic_torch_save(state, self.latest_path)

    def _log_total(self, trainer: Engine) -> None:
        logger.info(
            f"Training finished at iteration {trainer.state.iteration}: {self.train_seconds:.1f} s of training "
            f"(validation included) in {self.segments} segment(s); best {self.key_metric} {self.best_metric:.4f} "
            f"at iteration {self.best_iteration}."
        )


# Exit status of `run training` when the time limit stopped it: EX_TEMPFAIL ("try again"), so a job script can tell
# "re-run to resume" from success (0) and from failure (1).
EXIT_RESUMABLE = 75
# torchrun reports a worker's exit 75 as its own failure (exit 1): callers recognise the stop by this log line
TIME_LIMIT_STOP = "Time limit: stopping at iteration"
_LOADED_AT = time.monotonic()  # the bundle imports this module first thing: ~ the start of `run training`


class TimeLimit:
    """Ends training cleanly before a wall-time limit (a SLURM allocation, a 10-minute GPU slot), right after a save.

    At the end of each validation period (attach after ResumableCheckpoint, which has just written `latest.pt`): if the
    time since the bundle started plus one more period (the last one's length + 10%; the last, not the longest, so a
    first period slowed by torch.compile or cuDNN warm-up does not end the run early) would pass `seconds`, the
    trainer stops without firing COMPLETED. Nothing is lost (a `timeout` kill would discard the partial period) and
    re-running the same command resumes; `exit_if_stopped_early` then makes the command exit with EXIT_RESUMABLE.
    Under DDP the ranks agree (max over ranks) so that none waits for the others. `seconds=None` (train.json's
    default) disables it.
    """

    def __init__(
        self, seconds: float | None, clock: Callable[[], float] = time.monotonic, started: float | None = None
    ):
        if seconds is not None and seconds <= 0:
            raise ValueError(f"time_limit_s must be positive or null, got {seconds}.")
        self.seconds = seconds
        self.clock = clock
        self.started = _LOADED_AT if started is None else started
        self._period_start = self.started

    def attach(self, trainer: Engine) -> None:
        if self.seconds is None:
            return
        trainer.add_event_handler(Events.EPOCH_STARTED, self._start_period)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self._check)

    def _start_period(self, trainer: Engine) -> None:
        self._period_start = self.clock()

    def _check(self, trainer: Engine) -> None:
        now = self.clock()
        next_period = 1.1 * (now - self._period_start)
        stop = now - self.started + next_period > self.seconds
        if idist.get_world_size() > 1:
            stop = bool(idist.all_reduce(int(stop), op="MAX"))
        if stop and trainer.state.epoch < trainer.state.max_epochs:
            trainer.state.stopped_by_time_limit = True
            if is_main_process():
                self._log_stop(trainer, now, next_period)
            trainer.terminate(skip_completed=True)

    def _log_stop(self, trainer: Engine, now: float, next_period: float) -> None:
        logger.info(
            f"{TIME_LIMIT_STOP} {trainer.state.iteration} of "
            f"{trainer.state.max_epochs * trainer.state.epoch_length} after {now - self.started:.0f} s of "
            f"{self.seconds:.0f} s (the next validation period would take ~{next_period:.0f} s); latest.pt is "
            "saved, re-run the same command to resume."
        )


def exit_if_stopped_early(trainer: Engine) -> None:
    """After `trainer.run()` in the config's run list: exit with EXIT_RESUMABLE when TimeLimit stopped the run.

    Under DDP the ranks leave together (a barrier first): torchrun terminates the other workers as soon as one exits,
    which must not cut rank 0 short of its log line."""
    if getattr(trainer.state, "stopped_by_time_limit", False):
        if idist.get_world_size() > 1:
            idist.barrier()
        raise SystemExit(EXIT_RESUMABLE)


class NonFiniteLossError(RuntimeError):
    """Training diverged: the loss (or, after an update, a network weight) became NaN or infinite."""


class StopOnNonFiniteLoss:
    """Stops training with ``NonFiniteLossError`` at the first NaN/inf loss, before a diverged state is checkpointed.

    Hand-written instead of Ignite's ``TerminateOnNan``: that one ends the run normally (``COMPLETED`` fires, exit
    code 0, only a warning in the log), so a scheduler or script would take a diverged run for a finished one.

    - trainer ITERATION_COMPLETED: the loss (``output_transform(engine.state.output)``) must be finite.
    - and at the last iteration of each validation period (``iteration % epoch_length == 0``): every network weight
      must be finite. An update from a finite loss with infinite gradients poisons the weights one iteration before
      the loss shows it; checking then, before the validation (iteration- or epoch-level) can save ``model.pt`` and
      before ``ResumableCheckpoint`` writes ``latest.pt``, keeps such weights out of both. List this handler first in
      the trainer's handlers so that it runs before them.

    The error names the iteration and the last good checkpoint (``ckpt_dir/latest.pt``, left untouched): raising
    from inside the iteration skips every later save, so re-running the same command resumes from that checkpoint.
    """

    def __init__(
        self, ckpt_dir: str, network: torch.nn.Module | None = None, output_transform: Callable = LOSS_OF_OUTPUT
    ) -> None:
        self.ckpt_dir = Path(ckpt_dir)
        self.network = network
        self.output_transform = output_transform

    def attach(self, trainer: Engine) -> None:
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self._check)

    def _check(self, trainer: Engine) -> None:
        loss = self.output_transform(trainer.state.output)
        value = float(loss.detach().float().mean()) if isinstance(loss, torch.Tensor) else float(loss)
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"training loss is {value} at iteration {trainer.state.iteration}: training stopped. "
                f"{self._kept_checkpoint()} Lower the learning rate or switch off amp, then re-run."
            )
        period_end = trainer.state.epoch_length is None or trainer.state.iteration % trainer.state.epoch_length == 0
        if self.network is not None and period_end:
            self._check_weights(trainer)

    def _check_weights(self, trainer: Engine) -> None:
        bad = [name for name, p in unwrap(self.network).named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            raise NonFiniteLossError(
                f"network weights became non-finite by iteration {trainer.state.iteration} ({len(bad)} tensors, e.g. "
                f"{bad[0]}) although every loss was finite (infinite gradients?): training stopped before saving. "
                f"{self._kept_checkpoint()} Lower the learning rate or switch off amp, then re-run."
            )

    def _kept_checkpoint(self) -> str:
        path = self.ckpt_dir / LATEST_CHECKPOINT
        if not path.exists():
            return f"No checkpoint was saved yet ({path} is written at the end of each validation period)."
        try:  # mmap: only the iteration is needed, not the weights
            iteration = int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["iteration"])
        except Exception:
            return f"The last checkpoint {path} was not overwritten."
        return (
            f"The last good checkpoint {path} (iteration {iteration}) is kept; re-running the same command resumes "
            "from it."
        )


class ProgressBar:
    """Ignite's tqdm progress bar as a MONAI-style handler (MONAI calls `attach(engine)` with the engine only)."""

    def __init__(self, output_transform: Callable = lambda output: None, persist: bool = False) -> None:
        self.output_transform = output_transform
        self.persist = persist

    def attach(self, engine: Engine) -> None:
        from ignite.handlers import ProgressBar as IgniteProgressBar

        def _transform(output: Any) -> Any:
            value = self.output_transform(output)
            return None if value is None else {"loss": float(value)}

        IgniteProgressBar(persist=self.persist).attach(engine, output_transform=_transform)


def timestamped_dir(base: str | os.PathLike, name: str) -> str:
    """A folder path `base/name_YYYYmmdd-HHMMSS` that does not exist yet (suffix _2, _3, ... when taken)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate = Path(base) / f"{name}_{stamp}"
    n = 2
    while candidate.exists():
        candidate = Path(base) / f"{name}_{stamp}_{n}"
        n += 1
    return str(candidate)
