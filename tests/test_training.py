"""scripts.training: schedule arithmetic, atomic saves, resumable checkpoints, unique output folders."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine, Events

from scripts.training import (
    EXIT_RESUMABLE,
    ResumableCheckpoint,
    TimeLimit,
    atomic_torch_save,
    exit_if_stopped_early,
    timestamped_dir,
    validation_periods,
)


def test_validation_periods():
    assert validation_periods(10000, 200) == 50
    with pytest.raises(ValueError, match="multiple of val_interval"):
        validation_periods(250, 200)
    with pytest.raises(ValueError, match="positive"):
        validation_periods(0, 200)


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_torch_save({"a": torch.ones(2)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_torch_save({"a": Unpicklable()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"], "a temporary file was left behind"


def _tiny_training(ckpt_dir, metrics, max_epochs, resume=True, time_limit=None, clock=None):
    """A 2-iterations-per-epoch trainer whose 'validator' reports the next value of `metrics` each epoch; `time_limit`
    (a TimeLimit) is attached after the checkpoint handler, as in train.json; each iteration adds 5 s to `clock[0]`."""
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=100, power=0.9)

    def step(engine, batch):
        opt.zero_grad()
        loss = net(batch).pow(2).mean()
        loss.backward()
        opt.step()
        sched.step()
        if clock is not None:
            clock[0] += 5.0
        return loss.item()

    trainer, validator = Engine(step), Engine(lambda e, b: None)
    values = iter(metrics)

    @validator.on(Events.COMPLETED)
    def _metric(engine):
        engine.state.metrics["val_mean_dice"] = next(values)

    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: validator.run([0]))
    ckpt = ResumableCheckpoint(str(ckpt_dir), net, opt, sched, validator, resume=resume)
    ckpt.attach(trainer)
    if time_limit is not None:
        time_limit.attach(trainer)
    trainer.run([torch.randn(4, 3) for _ in range(2)], max_epochs=max_epochs)
    return net, opt, sched, trainer, ckpt


def test_resume_restores_everything_and_keeps_the_best_model(tmp_path):
    net, opt, sched, trainer, ckpt = _tiny_training(tmp_path, [0.5, 0.9, 0.7], max_epochs=3)
    best_weights = torch.load(tmp_path / "model.pt", weights_only=True)
    assert ckpt.best_metric == 0.9 and ckpt.best_iteration == 4

    # a new process re-running with a longer schedule: the later metric 0.8 < 0.9 must not replace model.pt
    net2, opt2, sched2, trainer2, ckpt2 = _tiny_training(tmp_path, [0.8], max_epochs=4)
    assert trainer2.state.iteration == 8 and ckpt2.best_metric == 0.9
    for k, v in torch.load(tmp_path / "model.pt", weights_only=True).items():
        assert torch.equal(v, best_weights[k])
    latest = torch.load(tmp_path / "latest.pt", weights_only=True)
    assert latest["iteration"] == 8 and latest["lr_scheduler"]["last_epoch"] == 8
    assert sched2.last_epoch == 8 and opt2.state_dict()["state"], "optimizer momentum was not restored"


def test_training_time_adds_up_over_resumed_segments(tmp_path, monkeypatch):
    import itertools

    import scripts.training

    ticks = itertools.count()  # a clock that advances 1 s each time it is read (segment start and each save)
    monkeypatch.setattr(scripts.training.time, "perf_counter", lambda: float(next(ticks)))
    *_, ckpt = _tiny_training(tmp_path, [0.5, 0.9, 0.7], max_epochs=3)
    assert ckpt.train_seconds == 3.0 and ckpt.segments == 1
    latest = torch.load(tmp_path / "latest.pt", weights_only=True)
    assert latest["train_seconds"] == 3.0 and latest["segments"] == 1

    *_, ckpt2 = _tiny_training(tmp_path, [0.8, 0.6], max_epochs=5)  # resumed: 2 more periods, 2 more seconds
    latest = torch.load(tmp_path / "latest.pt", weights_only=True)
    assert ckpt2.train_seconds == latest["train_seconds"] == 5.0 and latest["segments"] == ckpt2.segments == 2

    # a checkpoint from before these keys existed resumes with its time unknown (0) and one earlier segment
    del latest["train_seconds"], latest["segments"]
    torch.save(latest, tmp_path / "latest.pt")
    *_, ckpt3 = _tiny_training(tmp_path, [0.4], max_epochs=6)
    assert ckpt3.train_seconds == 1.0 and ckpt3.segments == 2


def test_time_limit_stops_right_after_a_save_and_the_rerun_finishes(tmp_path):
    now = [0.0]  # a validation period "takes" 10 s
    limit = TimeLimit(35.0, clock=lambda: now[0], started=0.0)
    *_, trainer, ckpt = _tiny_training(tmp_path, [0.5, 0.6, 0.7, 0.8, 0.9], max_epochs=5, time_limit=limit, clock=now)
    # after period 3 (t = 30 s) the next period (10 s) would end past 35 s: stop there, latest.pt at iteration 6
    assert trainer.state.iteration == 6 and trainer.state.stopped_by_time_limit
    assert torch.load(tmp_path / "latest.pt", weights_only=True)["iteration"] == 6
    with pytest.raises(SystemExit) as stopped:
        exit_if_stopped_early(trainer)
    assert stopped.value.code == EXIT_RESUMABLE

    *_, trainer2, ckpt2 = _tiny_training(tmp_path, [0.4, 0.3], max_epochs=5, time_limit=TimeLimit(None))
    assert trainer2.state.iteration == 10 and ckpt2.best_metric == 0.7
    exit_if_stopped_early(trainer2)  # finished: no exit
    with pytest.raises(ValueError, match="positive or null"):
        TimeLimit(0)


def test_resume_refuses_a_corrupt_checkpoint(tmp_path):
    (tmp_path / "latest.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="cannot resume"):
        _tiny_training(tmp_path, [0.5], max_epochs=1)


def test_timestamped_dir_never_reuses_a_folder(tmp_path):
    first = timestamped_dir(tmp_path, "evaluation")
    (tmp_path / first).mkdir()
    second = timestamped_dir(tmp_path, "evaluation")
    assert first != second and not (tmp_path / second).exists()


def test_per_rank_batch_size_keeps_the_global_batch():
    from scripts.training import per_rank_batch_size

    assert per_rank_batch_size(24, 2) == 12
    with pytest.raises(ValueError, match="divisible by the 5 processes"):
        per_rank_batch_size(24, 5)
