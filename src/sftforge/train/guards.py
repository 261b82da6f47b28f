"""Stop (or skip) an optimizer step whose loss or gradient norm is NaN/Inf — before the optimizer applies it.

The stock Trainer only repairs the *logged* loss (`logging_nan_inf_filter`) while the backward pass and the
optimizer step still run on the non-finite values (trl#6702): the weights are silently destroyed and the next
checkpoint saves them. `SFTTrainer` feeds this guard every micro-batch loss and the step's gradient norm, which
the Trainer computes right before `optimizer.step()`."""

from __future__ import annotations

import math
from typing import Any

from sftforge.errors import SftforgeError


class NonFiniteError(SftforgeError):
    """Training stopped on a NaN/Inf; nothing was saved after the last good checkpoint."""

    exit_code = 3


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return True  # no value (e.g. no gradient norm computed): nothing to judge


class NonFiniteGuard:
    def __init__(self, policy: str = "stop", max_skipped_steps: int = 3) -> None:
        self.policy = policy
        self.max_skipped = max_skipped_steps
        self.skipped_in_a_row = 0
        self.skipped_total = 0
        self.skip_this_step = False
        self._bad_losses: list[float] = []
        self._sources: list[str] = []

    def observe_micro_batch(self, loss: Any, sources: list[str] | None) -> None:
        """Called for every micro-batch of the current optimizer step."""
        self._sources += sources or []
        if not _finite(loss):
            self._bad_losses.append(float(loss))

    def before_optimizer_step(self, step: int, grad_norm: Any, rank: int = 0) -> None:
        """Decide about optimizer step `step` (1-based); raises NonFiniteError to stop the run."""
        problem = None
        if self._bad_losses:
            problem = f"the loss is {self._bad_losses[0]}"
        elif not _finite(grad_norm):
            problem = f"the gradient norm is {float(grad_norm)}"
        sources, self._sources, self._bad_losses = self._sources, [], []
        self.skip_this_step = False
        if problem is None:
            self.skipped_in_a_row = 0
            return
        where = f"step {step} (rank {rank})"
        examples = ", ".join(sources[:20]) + (f", … ({len(sources)} in all)" if len(sources) > 20 else "")
        batch = f"Examples in this step's batch: {examples}." if sources else ""
        if self.policy == "skip" and self.skipped_in_a_row < self.max_skipped:
            self.skipped_in_a_row += 1
            self.skipped_total += 1
            self.skip_this_step = True
            print(f"sftforge: {where}: {problem}; skipping this optimizer step "
                  f"({self.skipped_in_a_row} in a row, at most {self.max_skipped}). {batch}", flush=True)  # fmt: skip
            return
        if self.policy == "skip":
            head = f"{where}: {problem} — {self.skipped_in_a_row} steps in a row were non-finite before it"
        else:
            head = f"{where}: {problem}"
        raise NonFiniteError(
            f"{head}; training stopped before the optimizer step, so the weights are still those of step "
            f"{step - 1} and no checkpoint was written after the last good one. {batch}\n"
            "Common causes: a learning rate too high, fp16 overflow (use bf16 where the GPU has it), or a bad "
            "example. Resume from the last checkpoint with --resume_from_checkpoint auto after changing the cause; "
            "`nan_policy: skip` skips isolated bad steps instead."
        )
