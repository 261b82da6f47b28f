"""The non-finite guard's decisions, step by step."""

from __future__ import annotations

import math

import pytest
import torch

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


def test_observing_a_micro_batch_reads_nothing_off_the_device():
    """Losses and token counts on the `meta` device have no values: any read (a host sync on a GPU) would raise.
    Observing micro-batches must work on them; only the once-per-step decision reads."""
    from sftforge.train.token_counter import TokenCounter

    guard, counter = NonFiniteGuard(), TokenCounter()
    for _ in range(4):
        guard.observe_micro_batch(torch.tensor(2.0, device="meta"), ["a.jsonl:1"])
        counter.add({"input_ids": torch.ones(2, 8, dtype=torch.long, device="meta"),
                     "attention_mask": torch.ones(2, 8, dtype=torch.long, device="meta")})  # fmt: skip
    assert counter.total_tokens == 64  # shapes are known on the host
    with pytest.raises(RuntimeError, match="meta"):  # the decision does read (once per optimizer step)
        guard.before_optimizer_step(1, None)


def test_a_scaler_owns_gradient_overflow_but_not_a_bad_loss():
    guard = NonFiniteGuard("stop")
    guard.observe_loss(torch.tensor(3.0))
    guard.before_optimizer_step(1, torch.tensor(math.inf), judge_grad_norm=False)  # fp16 overflow: no stop
    guard.observe_loss(torch.tensor(math.nan))
    with pytest.raises(NonFiniteError, match="the loss is nan"):
        guard.before_optimizer_step(2, torch.tensor(1.0), judge_grad_norm=False)


def test_a_step_already_applied_is_never_called_unchanged():
    """DeepSpeed steps inside backward: a non-finite norm seen afterwards stops the run, saying so — not the
    claim that the weights are still those of the previous step — and skip cannot apply."""
    guard = NonFiniteGuard("skip")
    with pytest.raises(NonFiniteError) as e:
        guard.before_optimizer_step(4, math.inf, applied_anyway="DeepSpeed applies the step inside backward")
    text = str(e.value)
    assert "may already be damaged" in text and "still those of step" not in text and guard.skipped_total == 0
