"""Where TensorBoard writes, for the final summary's `tensorboard --logdir` line."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from sftforge.config.reporting import tensorboard_logdir
from sftforge.train.summary import print_final_summary


def _args(report_to, logging_dir=None):
    return SimpleNamespace(report_to=report_to, logging_dir=logging_dir, output_dir="outputs/run")


def test_tensorboard_logdir(monkeypatch):
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    assert tensorboard_logdir(_args("none")) is None
    assert tensorboard_logdir(_args(["wandb"])) is None
    assert tensorboard_logdir(_args(["tensorboard"])) == Path("outputs/run/runs")  # dated runs inside
    assert tensorboard_logdir(_args("tensorboard", "tb")) == Path("tb")
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", "/logs/tb")  # set by hand, without logging_dir
    assert tensorboard_logdir(_args(["tensorboard"])) == Path("/logs/tb")


def test_the_final_summary_names_the_command_only_with_tensorboard(capsys):
    metrics = {"wall_time_s": 1.0, "train_loss": 6.9, "train_samples_per_second": 3.0}
    print_final_summary(metrics, Path("out"), Path("my runs"))
    assert " loss curves: tensorboard --logdir 'my runs'\n" in capsys.readouterr().out
    print_final_summary(metrics, Path("out"))
    assert "tensorboard" not in capsys.readouterr().out
