"""Same gradient for any batching: loss = sum over trained tokens / trained tokens in the whole optimizer step.

bs8×ga1, bs4×ga2, bs1×ga8 and packed bs8 must give the same first-step gradient (fp32, ≤1e-5 relative) — the
peer bug class of transformers #34191, where each micro-batch was averaged on its own.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from sftforge.config import load_config
from sftforge.model.load import load_model
from sftforge.train.run import build_trainer, prepare_tokenized_data


class GradCapture(TrainerCallback):
    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] | None = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.grads is None:
            self.grads = {
                n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None
            }


def _rows() -> list[dict]:
    # Very different answer lengths, so per-micro-batch averaging would weight tokens differently.
    answers = [
        "ok",
        "a much longer answer " * 6,
        "yes",
        "two words",
        "x " * 20,
        "fine",
        "numbers 1 2 3 4",
        "z",
    ]
    return [{"messages": [{"role": "user", "content": f"Q{i}?"}, {"role": "assistant", "content": a}]}
            for i, a in enumerate(answers)]  # fmt: skip


def _first_step_grads(
    tmp_path: Path, model_dir: Path, *overrides: str, per_batch_mean: bool = False
) -> dict[str, torch.Tensor]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = tmp_path / "t.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in _rows()) + "\n")
    cfg = load_config(None, ["--model_name_or_path", str(model_dir), "--train_data_path", str(data),
                             "--output_dir", str(tmp_path / "out"), "--max_steps", "1", "--max_grad_norm", "0",
                             "--train_sampling_strategy", "sequential", "--report_to", "none",
                             "--save_strategy", "no", "--disable_tqdm", "true", *overrides])  # fmt: skip
    bundle, prepared = prepare_tokenized_data(cfg)
    trainer = build_trainer(cfg, bundle, prepared, load_model(cfg.model, False))
    if per_batch_mean:  # the peer bug: every micro-batch averaged on its own
        trainer.model_accepts_loss_kwargs = False
    capture = GradCapture()
    trainer.add_callback(capture)
    trainer.train()
    assert capture.grads
    return capture.grads


def _max_rel_diff(a: dict, b: dict) -> float:
    return max(((a[n] - b[n]).norm() / a[n].norm().clamp_min(1e-12)).item() for n in a)


@pytest.mark.parametrize(
    "variant",
    [
        ("--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2"),
        ("--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "8"),
        ("--per_device_train_batch_size", "8", "--packing", "true"),
        ("--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "4", "--packing", "true"),
    ],
    ids=["bs4xga2", "bs1xga8", "packed_bs8", "packed_bs2xga4"],
)
def test_gradient_is_the_same_for_any_batching(tmp_path, tiny_model_dir, variant):
    reference = _first_step_grads(tmp_path / "ref", tiny_model_dir, "--per_device_train_batch_size", "8")
    other = _first_step_grads(tmp_path / "other", tiny_model_dir, *variant)
    assert reference.keys() == other.keys()
    assert _max_rel_diff(reference, other) <= 1e-5


def test_the_check_detects_per_micro_batch_averaging(tmp_path, tiny_model_dir):
    reference = _first_step_grads(tmp_path / "ref", tiny_model_dir, "--per_device_train_batch_size", "8")
    buggy = _first_step_grads(tmp_path / "bug", tiny_model_dir, "--per_device_train_batch_size", "1",
                              "--gradient_accumulation_steps", "8", per_batch_mean=True)  # fmt: skip
    assert _max_rel_diff(reference, buggy) > 1e-2
