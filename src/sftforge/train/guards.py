"""Stop (or skip) an optimizer step whose loss or gradient norm is NaN/Inf — before the optimizer applies it.

The stock Trainer only repairs the *logged* loss (`logging_nan_inf_filter`) while the backward pass and the
optimizer step still run on the non-finite values (trl#6702): the weights are silently destroyed and the next
checkpoint saves them. `SFTTrainer` feeds this guard every micro-batch loss and decides once per optimizer step:

- the losses are kept as tensors on their device and judged together at the decision, so the guard costs one host
  sync per optimizer step, not one per micro-batch;
- with fp16 loss scaling (a GradScaler) an Inf gradient is expected from time to time: the scaler itself skips that
  step and lowers the scale, so only the loss is judged, never the gradient norm;
- under DeepSpeed the engine steps the optimizer inside the backward of the last micro-batch, so the decision is
  taken before that backward, on the losses alone (a gradient norm exists only after the step)."""

from __future__ import annotations

import math
from typing import Any

import torch

from sftforge.errors import SftforgeError


class NonFiniteError(SftforgeError):
    """Training stopped on a NaN/Inf; nothing was saved after the last good checkpoint."""

    exit_code = 3


def _as_tensor(value: Any) -> torch.Tensor | None:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return value.detach().float().reshape(())
    try:
        return torch.tensor(float(value))
    except (TypeError, ValueError):
        return None  # no value (e.g. no gradient norm computed): nothing to judge


class NonFiniteGuard:
    def __init__(self, policy: str = "stop", max_skipped_steps: int = 3) -> None:
        self.policy = policy
        self.max_skipped = max_skipped_steps
        self.skipped_in_a_row = 0
        self.skipped_total = 0
        self.skip_this_step = False
        self._losses: list[torch.Tensor] = []
        self._sources: list[str] = []

    def observe_sources(self, sources: list[str] | None) -> None:
        self._sources += sources or []

    def observe_loss(self, loss: Any) -> None:
        """Called for every micro-batch loss of the current optimizer step; never reads the value (no sync)."""
        tensor = _as_tensor(loss)
        if tensor is not None:
            self._losses.append(tensor)

    def observe_micro_batch(self, loss: Any, sources: list[str] | None) -> None:
        self.observe_sources(sources)
        self.observe_loss(loss)

    def before_optimizer_step(
        self,
        step: int,
        grad_norm: Any,
        rank: int = 0,
        *,
        judge_grad_norm: bool = True,
        applied_anyway: str | None = None,
    ) -> None:
        """Decide about optimizer step `step` (1-based); raises NonFiniteError to stop the run.

        judge_grad_norm=False: a loss scaler owns gradient overflow (fp16), or the norm does not exist yet
        (DeepSpeed, before its step). applied_anyway: why the step can no longer be held back (said when stopping
        instead of the claim that the weights are unchanged)."""
        problem = self._problem(grad_norm if judge_grad_norm else None)
        sources, self._sources, self._losses = self._sources, [], []
        self.skip_this_step = False
        if problem is None:
            self.skipped_in_a_row = 0
            return
        where = f"step {step} (rank {rank})"
        examples = ", ".join(sources[:20]) + (f", … ({len(sources)} in all)" if len(sources) > 20 else "")
        batch = f"Examples in this step's batch: {examples}." if sources else ""
        if self.policy == "skip" and applied_anyway is None and self.skipped_in_a_row < self.max_skipped:
            self.skipped_in_a_row += 1
            self.skipped_total += 1
            self.skip_this_step = True
            print(f"sftforge: {where}: {problem}; skipping this optimizer step "
                  f"({self.skipped_in_a_row} in a row, at most {self.max_skipped}). {batch}", flush=True)  # fmt: skip
            return
        if self.policy == "skip" and applied_anyway is None:
            head = f"{where}: {problem} — {self.skipped_in_a_row} steps in a row were non-finite before it"
        else:
            head = f"{where}: {problem}"
        if applied_anyway:
            state = (
                f"training stopped, but {applied_anyway}, so the weights in memory may already be damaged; "
                f"nothing was saved after the last good checkpoint."
            )
        else:
            state = (
                f"training stopped before the optimizer step, so the weights are still those of step {step - 1} "
                "and no checkpoint was written after the last good one."
            )
        raise NonFiniteError(
            f"{head}; {state} {batch}\n"
            "Common causes: a learning rate too high, fp16 overflow (use bf16 where the GPU has it), or a bad "
            "example. Resume from the last checkpoint with --resume_from_checkpoint auto after changing the cause; "
            "`nan_policy: skip` skips isolated bad steps instead."
        )

    def _problem(self, grad_norm: Any) -> str | None:
        """What is non-finite in this step, or None. One host sync for the losses and the norm together."""
        norm = _as_tensor(grad_norm)
        values = [*self._losses, *([norm] if norm is not None else [])]
        if not values:
            return None
        stacked = torch.stack([v.to(values[0].device) for v in values])
        if bool(torch.isfinite(stacked).all()):  # the one sync of the step
            return None
        numbers = stacked.tolist()  # only on the bad path: name the value
        for loss in numbers[: len(self._losses)]:
            if not math.isfinite(loss):
                return f"the loss is {loss}"
        return f"the gradient norm is {numbers[-1]}"
