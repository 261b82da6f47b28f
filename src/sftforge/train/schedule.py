"""A resumed run's learning rate follows this run's schedule, not the one the checkpoint was saved under.

The checkpoint stores the optimizer's current lr and the scheduler's position. When the schedule changed since (a
run continued with a larger max_steps or more epochs), the stored lr belongs to the old one: a run that had
decayed to 0 trained its first resumed step with lr 0 (and logged learning_rate 0), then jumped onto the new curve.
transformers' schedules are LambdaLR (lr = base lr × f(step), f rebuilt for this run), so the lr of the step about
to be trained is recomputed from f at the stored position; with an unchanged schedule that is the stored value.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from torch.optim.lr_scheduler import LambdaLR


class Realigned(NamedTuple):
    step: int  # the optimizer step about to be trained (1-based, as logged)
    stored: float  # the checkpoint's lr (first parameter group)
    now: float  # this run's schedule's lr


def follow_current_schedule(scheduler: Any) -> Realigned | None:
    """Set the optimizer's lr from this run's schedule at the resumed position. Returns what changed (first
    parameter group) when the lr differs from the stored one, else None. Other scheduler kinds (ReduceLROnPlateau, DeepSpeed's
    own) carry their state in the checkpoint and are left alone."""
    inner = getattr(scheduler, "scheduler", scheduler)  # accelerate's AcceleratedScheduler wraps one
    if not isinstance(inner, LambdaLR):
        return None
    stored = float(inner.get_last_lr()[0])
    # step() recomputes lr = base × f(last_epoch + 1) for every group; one position back lands on the stored
    # position itself. _step_count (only used for a warning about the first step) moves by one, nothing else.
    inner.last_epoch -= 1
    inner.step()
    now = float(inner.get_last_lr()[0])
    if abs(now - stored) <= 1e-12 * max(abs(stored), 1.0):
        return None
    return Realigned(inner.last_epoch + 1, stored, now)
