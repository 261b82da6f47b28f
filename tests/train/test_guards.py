"""The non-finite guard's decisions, step by step."""

from __future__ import annotations

import math

import pytest

from sftforge.train.guards import NonFiniteError, NonFiniteGuard


def _step(guard: NonFiniteGuard, step: int, losses: list[float], grad_norm: float, sources=None) -> None:
    for loss in losses:
        guard.observe_micro_batch(loss, sources)
    guard.before_optimizer_step(step, grad_norm)


def test_finite_steps_pass():
    guard = NonFiniteGuard()
    for step in range(1, 4):
        _step(guard, step, [1.0, 2.0], 0.5)
    assert not guard.skip_this_step and guard.skipped_total == 0


@pytest.mark.parametrize("loss, grad_norm, what", [(math.nan, 1.0, "the loss is nan"),
                                                   (1.0, math.inf, "the gradient norm is inf")])  # fmt: skip
def test_stop_names_the_step_the_problem_and_the_examples(loss, grad_norm, what):
    guard = NonFiniteGuard("stop")
    _step(guard, 1, [1.0], 1.0, ["a.jsonl:1"])
    with pytest.raises(NonFiniteError) as e:
        _step(guard, 2, [1.0, loss], grad_norm, ["a.jsonl:7", "a.jsonl:9"])
    text = str(e.value)
    assert "step 2 (rank 0)" in text and what in text
    assert "a.jsonl:7, a.jsonl:9" in text and "a.jsonl:1" not in text  # only this step's batch
    assert "still those of step 1" in text and e.value.exit_code == 3


def test_skip_skips_then_stops_after_max_in_a_row():
    guard = NonFiniteGuard("skip", max_skipped_steps=2)
    _step(guard, 1, [math.nan], 1.0)
    assert guard.skip_this_step
    _step(guard, 2, [1.0], 1.0)  # a good step resets the run of skips
    assert not guard.skip_this_step and guard.skipped_in_a_row == 0
    _step(guard, 3, [1.0], math.nan)
    _step(guard, 4, [1.0], math.nan)
    assert guard.skipped_in_a_row == 2 and guard.skipped_total == 3
    with pytest.raises(NonFiniteError, match="2 steps in a row were non-finite"):
        _step(guard, 5, [math.inf], 1.0)


def test_no_grad_norm_is_not_a_problem():
    guard = NonFiniteGuard()
    _step(guard, 1, [1.0], None)
    assert not guard.skip_this_step
