"""metrics.json's eval metrics come from one evaluation of the saved weights (train/final_eval.py); the real run
with eval_strategy steps is in test_train_output.py."""

from __future__ import annotations

from types import SimpleNamespace

from sftforge.train.final_eval import final_eval_metrics, saved_weights_step

HISTORY = [
    {"loss": 7.0, "step": 2},
    {"eval_loss": 6.9, "eval_perplexity": 992.3, "eval_runtime": 0.1, "epoch": 0.5, "step": 2},
    {"loss": 6.8, "step": 4},
    {"eval_loss": 6.7, "eval_perplexity": 812.4, "eval_runtime": 0.1, "epoch": 1.0, "step": 4},
    {"train_loss": 6.9, "train_runtime": 1.0, "step": 4},
]


def _trainer(history, global_step=4, best=None, load_best=False):
    calls = []
    trainer = SimpleNamespace(
        state=SimpleNamespace(log_history=history, global_step=global_step, best_model_checkpoint=best),
        args=SimpleNamespace(load_best_model_at_end=load_best),
        evaluate=lambda: calls.append(1) or {"eval_loss": 1.0},
    )
    return trainer, calls


def test_the_loops_evaluation_of_the_last_step_is_reused():
    trainer, calls = _trainer(HISTORY)
    assert final_eval_metrics(trainer) == {"eval_loss": 6.7, "eval_perplexity": 812.4, "eval_runtime": 0.1}
    assert calls == []


def test_evaluated_when_the_loop_did_not_evaluate_the_last_step():
    trainer, calls = _trainer(HISTORY[:3] + HISTORY[4:])  # eval_strategy epoch ending mid-epoch, or "no"
    assert final_eval_metrics(trainer) == {"eval_loss": 1.0} and calls == [1]


def test_the_best_checkpoints_evaluation_when_it_was_loaded_at_the_end():
    trainer, calls = _trainer(HISTORY, best="/out/checkpoint-2", load_best=True)
    assert saved_weights_step(trainer) == 2
    assert final_eval_metrics(trainer)["eval_loss"] == 6.9 and calls == []
    trainer, _ = _trainer(HISTORY, best="/out/checkpoint-2", load_best=False)  # tracked, not loaded
    assert saved_weights_step(trainer) == 4
