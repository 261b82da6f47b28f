"""Training progress as one readable line per log step, instead of transformers' printed dict of quoted strings.

    step 20/100 | loss 1.2345 | lr 2.00e-05 | grad_norm 0.812 | tok/s 12,345 | eta 0:03:10 | epoch 0.40
    eval step 20/100 | loss 1.3012 | perplexity 3.67 | 1.2 s

transformers prints logs from PrinterCallback (disable_tqdm) or ProgressCallback (a tqdm bar that writes the dict
above it). Both are replaced: the lines always come from LogLines; the bar stays only where it helps, on a
terminal (and disable_tqdm false). Redirected to a file or a pipe, a bar is only carriage returns and escape codes.
"""

from __future__ import annotations

import sys
import time
from datetime import timedelta
from typing import Any

from transformers import PrinterCallback, ProgressCallback, TrainerCallback

# Keys a line shows in a place and format of its own (the rest follow as `key value`), or never: total_flos is a
# running count, the end-of-training summary has its own screen (train/summary.py).
_TRAIN_KEYS = ("loss", "learning_rate", "grad_norm", "tokens_per_s", "epoch")
_EVAL_SKIP = (
    "eval_loss",
    "eval_perplexity",
    "eval_runtime",
    "eval_samples_per_second",
    "eval_steps_per_second",
)
# TRL's preference trainers also log these per step; they stay in log_history.json and TensorBoard, the line
# keeps to the loss, the rewards and the answers' log-probs
_HIDDEN = ("total_flos", "entropy", "num_tokens", "logits/chosen", "logits/rejected", "mean_token_accuracy")


def format_eta(seconds: float | None) -> str:
    return "?" if seconds is None else str(timedelta(seconds=max(0, round(seconds))))


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _extras(logs: dict[str, Any], shown: tuple[str, ...]) -> list[str]:
    return [f"{k} {_number(v)}" for k, v in logs.items() if k not in shown and k not in _HIDDEN]


def train_line(logs: dict[str, Any], step: int, max_steps: int, eta_s: float | None) -> str:
    parts = [f"step {step}/{max_steps}", f"loss {logs['loss']:.4f}"]
    if "learning_rate" in logs:
        parts.append(f"lr {logs['learning_rate']:.2e}")
    if logs.get("grad_norm") is not None:
        parts.append(f"grad_norm {logs['grad_norm']:.4g}")
    if "tokens_per_s" in logs:
        parts.append(f"tok/s {logs['tokens_per_s']:,.0f}")
    parts.append(f"eta {format_eta(eta_s)}")
    if "epoch" in logs:
        parts.append(f"epoch {logs['epoch']:.2f}")
    return " | ".join(parts + _extras(logs, _TRAIN_KEYS))


def eval_line(logs: dict[str, Any], step: int, max_steps: int) -> str:
    parts = [f"eval step {step}/{max_steps}", f"loss {logs['eval_loss']:.4f}"]
    if "eval_perplexity" in logs:
        parts.append(f"perplexity {logs['eval_perplexity']:.4g}")
    others = {
        k.removeprefix("eval_"): v for k, v in logs.items() if k.startswith("eval_") and k not in _EVAL_SKIP
    }
    parts += [f"{k} {_number(v)}" for k, v in others.items() if k not in _HIDDEN]
    if "eval_runtime" in logs:
        parts.append(f"{logs['eval_runtime']:.2f} s")
    return " | ".join(parts)


def format_log(logs: dict[str, Any], step: int, max_steps: int, eta_s: float | None = None) -> str | None:
    """The line for one Trainer log, or None for the end-of-training metrics (the final summary shows them)."""
    if "train_runtime" in logs:
        return None
    if "loss" in logs:
        return train_line(logs, step, max_steps, eta_s)
    if "eval_loss" in logs:
        return eval_line(logs, step, max_steps)
    extras = _extras(logs, ("epoch",))
    return " | ".join([f"step {step}/{max_steps}", *extras]) if extras else None


class LogLines(TrainerCallback):
    """Prints `format_log`'s line for every log, on the main process. The ETA is this run's time per step (a
    resumed run counts from where it resumed) times the steps left; evaluations and saves are part of that time."""

    def __init__(self, above_bar: bool = False) -> None:
        self.above_bar = above_bar  # a tqdm bar is drawn: lines go above it, not through it
        self._started: tuple[float, int] | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._started = (time.monotonic(), state.global_step)

    def eta(self, step: int, max_steps: int) -> float | None:
        if self._started is None or step <= self._started[1]:
            return None
        per_step = (time.monotonic() - self._started[0]) / (step - self._started[1])
        return per_step * max(max_steps - step, 0)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        line = format_log(
            logs, state.global_step, state.max_steps, self.eta(state.global_step, state.max_steps)
        )
        if line is None:
            return
        if self.above_bar:
            from tqdm.auto import tqdm

            tqdm.write(line, file=sys.stdout)
            sys.stdout.flush()
        else:
            print(line, flush=True)


class ProgressBar(ProgressCallback):
    """transformers' tqdm bars for training and evaluation, without the dict it writes above them on every log."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        return


def library_bars_only_on_a_terminal(terminal: bool | None = None) -> None:
    """transformers' own bars (loading weights, writing model shards; huggingface_hub's downloads with them) go
    to stderr like the Trainer's: off a terminal they are carriage returns in a log file."""
    if terminal is None:
        terminal = sys.stderr.isatty()
    if not terminal:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def use_log_lines(trainer: Any, terminal: bool | None = None) -> None:
    """Replace the Trainer's log printing with LogLines; keep a progress bar only on a terminal (tqdm draws on
    stderr) and when disable_tqdm is off."""
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if terminal is None:
        terminal = sys.stderr.isatty()
    bar = bool(terminal and not trainer.args.disable_tqdm)
    if bar:
        trainer.add_callback(ProgressBar())
    trainer.add_callback(LogLines(above_bar=bar))
