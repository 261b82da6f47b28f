"""The eval metrics written to metrics.json: those of the weights being saved, evaluated once.

eval_strategy steps (or epoch, when the run ends at an epoch's end) already evaluates the last step inside the
training loop; evaluating again afterwards repeats the same numbers at the cost of a second pass over the eval
set (and of every eval_generation answer)."""

from __future__ import annotations

import re
from typing import Any


def saved_weights_step(trainer: Any) -> int:
    """The step whose weights training ends with: the last one, or the best checkpoint's when
    load_best_model_at_end loaded it."""
    best = trainer.state.best_model_checkpoint
    if trainer.args.load_best_model_at_end and best:
        found = re.search(r"checkpoint-(\d+)$", str(best).rstrip("/\\"))
        if found:
            return int(found.group(1))
    return trainer.state.global_step


def logged_eval(log_history: list[dict[str, Any]], step: int) -> dict[str, Any] | None:
    """The eval_* metrics the training loop logged at `step`, if it evaluated there."""
    for entry in reversed(log_history):
        if "eval_loss" in entry and entry.get("step") == step:
            return {k: v for k, v in entry.items() if k.startswith("eval_")}
    return None


def final_eval_metrics(trainer: Any) -> dict[str, Any]:
    """Every rank decides alike (each holds the same log history), so evaluate()'s collectives stay matched."""
    logged = logged_eval(trainer.state.log_history, saved_weights_step(trainer))
    return logged if logged is not None else trainer.evaluate()
