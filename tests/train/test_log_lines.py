"""One readable line per log step (train/log_lines.py): the format, the ETA, who prints, and which of
transformers' printers are replaced."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from transformers import PrinterCallback, ProgressCallback, TrainerControl, TrainerState

from sftforge.train import log_lines
from sftforge.train.log_lines import LogLines, ProgressBar, format_eta, format_log, use_log_lines

TRAIN = {
    "loss": 6.931234,
    "grad_norm": 1.23456,
    "learning_rate": 2e-05,
    "tokens_per_s": 12345.6,
    "epoch": 0.5,
}


def test_train_line_has_every_field_in_order():
    line = format_log(TRAIN, step=2, max_steps=4, eta_s=70.4)
    assert (
        line
        == "step 2/4 | loss 6.9312 | lr 2.00e-05 | grad_norm 1.235 | tok/s 12,346 | eta 0:01:10 | epoch 0.50"
    )


def test_train_line_keeps_other_metrics_and_drops_total_flos():
    logs = {**TRAIN, "mfu": 0.3125, "aux_loss": 0.01, "total_flos": 1e12}
    line = format_log(logs, step=2, max_steps=4, eta_s=None)
    assert line is not None and line.endswith("| eta ? | epoch 0.50 | mfu 0.3125 | aux_loss 0.01")


def test_eval_line_and_final_metrics():
    logs = {"eval_loss": 6.9, "eval_perplexity": 992.27, "eval_runtime": 0.123, "eval_samples_per_second": 80.0,
            "eval_steps_per_second": 8.0, "eval_exact_match": 0.25, "epoch": 1.0}  # fmt: skip
    assert (
        format_log(logs, 4, 4) == "eval step 4/4 | loss 6.9000 | perplexity 992.3 | exact_match 0.25 | 0.12 s"
    )
    final = {"train_runtime": 3.2, "train_samples_per_second": 5.0, "train_loss": 6.9, "epoch": 1.0}
    assert format_log(final, 4, 4) is None  # the final summary shows these


def test_eta_formats_hours():
    assert format_eta(3 * 3600 + 62.6) == "3:01:03" and format_eta(None) == "?"


def _state(step: int, max_steps: int = 10, rank0: bool = True) -> TrainerState:
    state = TrainerState(global_step=step, max_steps=max_steps)
    state.is_world_process_zero = rank0
    return state


def test_eta_is_this_runs_time_per_step_times_the_steps_left(monkeypatch, capsys):
    """A run resumed at step 4 that took 10 s for its first 2 steps has 4 of 10 steps left: 20 s."""
    clock = iter([100.0, 110.0])
    monkeypatch.setattr(log_lines.time, "monotonic", lambda: next(clock))
    cb = LogLines()
    cb.on_train_begin(None, _state(4), TrainerControl())
    cb.on_log(None, _state(6), TrainerControl(), logs={"loss": 1.0})
    assert capsys.readouterr().out == "step 6/10 | loss 1.0000 | eta 0:00:20\n"


def test_only_the_main_process_prints(capsys):
    LogLines().on_log(None, _state(1, rank0=False), TrainerControl(), logs=dict(TRAIN))
    assert capsys.readouterr().out == ""


def _trainer(disable_tqdm: bool) -> SimpleNamespace:
    callbacks = [PrinterCallback() if disable_tqdm else ProgressCallback()]

    def remove_callback(cls):
        callbacks[:] = [c for c in callbacks if not isinstance(c, cls)]

    return SimpleNamespace(args=SimpleNamespace(disable_tqdm=disable_tqdm), callbacks=callbacks,
                           remove_callback=remove_callback, add_callback=callbacks.append)  # fmt: skip


@pytest.mark.parametrize(
    "terminal,disable_tqdm,bar", [(True, False, True), (False, False, False), (True, True, False)]
)
def test_a_bar_only_on_a_terminal_and_never_the_printed_dict(terminal, disable_tqdm, bar):
    trainer = _trainer(disable_tqdm)
    use_log_lines(trainer, terminal=terminal)
    kinds = [type(c) for c in trainer.callbacks]
    assert PrinterCallback not in kinds and ProgressCallback not in kinds
    assert (ProgressBar in kinds) is bar
    lines = [c for c in trainer.callbacks if isinstance(c, LogLines)]
    assert len(lines) == 1 and lines[0].above_bar is bar


def test_the_bar_writes_no_dict(capsys):
    bar = ProgressBar()
    bar.training_bar = SimpleNamespace(write=print)
    bar.on_log(None, _state(1), TrainerControl(), logs=dict(TRAIN))
    assert capsys.readouterr().out == ""
