"""The non-finite guard inside real training: fp16 loss scaling (a real GradScaler, run on the CPU), and the rule
that nothing sftforge does per micro-batch reads a value off the device (a host sync that stalls a CUDA queue)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from accelerate.optimizer import patch_optimizer_step
from transformers import TrainerCallback

import sftforge
from sftforge.config import load_config
from sftforge.model.load import load_model
from sftforge.train.guards import NonFiniteError
from sftforge.train.run import build_trainer, prepare_tokenized_data

ROWS = [{"messages": [{"role": "user", "content": f"Count to {i}"},
                      {"role": "assistant", "content": " ".join(str(k) for k in range(i))}]} for i in range(3, 19)]  # fmt: skip


def _trainer(tmp_path: Path, model_dir: Path, *extra: str):
    data = tmp_path / "t.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    cfg = load_config(None, ["--model_name_or_path", str(model_dir), "--train_data_path", str(data),
                             "--output_dir", str(tmp_path / "out"), "--max_steps", "6", "--logging_steps", "1",
                             "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2",
                             "--learning_rate", "1e-3", "--save_strategy", "no", "--report_to", "none",
                             "--disable_tqdm", "true", *extra])  # fmt: skip
    bundle, prepared = prepare_tokenized_data(cfg)
    return build_trainer(cfg, bundle, prepared, load_model(cfg.model, False))


class LossScaling(TrainerCallback):
    """Turns the prepared accelerator and optimizer into fp16-style loss scaling with a real (CPU) GradScaler —
    what accelerate does for `fp16: true` on a GPU, minus the fp16 autocast, which the CPU cannot run."""

    def __init__(self, trainer: Any, init_scale: float) -> None:
        self.trainer, self.init_scale = trainer, init_scale
        self.scaler: torch.amp.GradScaler | None = None
        self.scales: list[float] = []
        self.changed: list[bool] = []
        self._before: dict[str, torch.Tensor] = {}

    def on_step_begin(self, args, state, control, **kwargs):
        if self.scaler is None:  # the optimizer exists once the Trainer prepared it (after on_train_begin)
            self.scaler = torch.amp.GradScaler("cpu", init_scale=self.init_scale, growth_interval=1000)
            accelerator, optimizer = self.trainer.accelerator, self.trainer.optimizer
            accelerator.scaler = optimizer.scaler = self.scaler
            accelerator.unscale_gradients = lambda optimizer=None: self.scaler.unscale_(
                self.trainer.optimizer.optimizer
            )
            optimizer._accelerate_step_called = False
            optimizer._optimizer_original_step_method = optimizer.optimizer.step
            optimizer._optimizer_patched_step_method = patch_optimizer_step(
                optimizer, optimizer.optimizer.step
            )
        self.scales.append(self.scaler.get_scale())

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self._before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.changed.append(any(not torch.equal(p, self._before[n]) for n, p in model.named_parameters()))


def _nan_loss_at(trainer: Any, step: int) -> None:
    def hook(module, inputs, output):
        if module.training and trainer.state.global_step + 1 == step:
            output.loss = output.loss * torch.tensor(float("nan"))
        return output

    trainer.model.register_forward_hook(hook)


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_loss_scale_overflow_is_the_scalers_business(tmp_path, tiny_model_dir, policy, capsys):
    """A scale of 2^127 makes the first scaled losses overflow: Inf gradients on purpose. The scaler skips those
    steps and halves the scale; the guard must neither stop the run (stop) nor break the scaler (skip: it used to
    skip the step without the scaler's update → "unscale_() has already been called")."""
    trainer = _trainer(tmp_path, tiny_model_dir, "--nan_policy", policy)
    scaling = LossScaling(trainer, init_scale=2.0**127)
    trainer.add_callback(scaling)
    trainer.train()
    assert trainer.state.global_step == 6
    # The first two scaled losses overflow: the scaler skips those steps (weights untouched) and halves the scale
    # each time; from then on the steps train.
    assert scaling.scales[:3] == [2.0**127, 2.0**126, 2.0**125]
    assert scaling.changed == [False, False, True, True, True, True]
    assert "skipping this optimizer step" not in capsys.readouterr().out


def test_nan_loss_under_loss_scaling_skip_then_trains_on(tmp_path, tiny_model_dir, capsys):
    trainer = _trainer(tmp_path, tiny_model_dir, "--nan_policy", "skip")
    scaling = LossScaling(trainer, init_scale=2.0**8)
    trainer.add_callback(scaling)
    _nan_loss_at(trainer, 3)
    trainer.train()
    assert trainer.state.global_step == 6
    assert "step 3 (rank 0): the loss is nan; skipping this optimizer step" in capsys.readouterr().out
    assert scaling.changed == [True, True, False, True, True, True]


def test_nan_loss_under_loss_scaling_stops_before_the_step(tmp_path, tiny_model_dir):
    trainer = _trainer(tmp_path, tiny_model_dir)
    scaling = LossScaling(trainer, init_scale=2.0**8)
    trainer.add_callback(scaling)
    _nan_loss_at(trainer, 3)
    with pytest.raises(NonFiniteError, match=r"step 3 \(rank 0\): the loss is nan; training stopped before"):
        trainer.train()
    assert scaling.changed == [True, True]  # step 3 never reached the optimizer


# ---------------------------------------------------------------- no host syncs per micro-batch

PACKAGE = str(Path(sftforge.__file__).resolve().parent)
TORCH = str(Path(torch.__file__).resolve().parent)
READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__")


def _caller_outside_torch() -> str:
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith(TORCH):
        frame = frame.f_back
    return frame.f_code.co_filename if frame is not None else ""


@pytest.mark.parametrize("extra", [(), ("--packing", "true", "--max_length", "64")], ids=["padded", "packed"])
def test_no_value_is_read_off_the_device_in_a_training_step(tmp_path, tiny_model_dir, monkeypatch, extra):
    """Every Tensor → Python read (`.item()`, `.tolist()`, `bool()`, `int()`, `float()`) made by sftforge code
    while a micro-batch trains is a host sync on a GPU. There must be none; the guard reads once per optimizer
    step, outside the micro-batch, and token counts are read when a log line needs them."""
    trainer = _trainer(tmp_path, tiny_model_dir, *extra)
    inside = [False]
    reads: list[str] = []

    def spy(name: str):
        original = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            if inside[0]:
                caller = _caller_outside_torch()
                if caller.startswith(PACKAGE):
                    reads.append(f"{name} from {caller}")
            return original(self, *args, **kwargs)

        return read

    for name in READS:
        monkeypatch.setattr(torch.Tensor, name, spy(name))
    step = type(trainer).training_step

    def training_step(self, *args, **kwargs):
        inside[0] = True
        try:
            return step(self, *args, **kwargs)
        finally:
            inside[0] = False

    monkeypatch.setattr(type(trainer), "training_step", training_step)
    trainer.train()
    assert trainer.state.global_step == 6
    assert reads == []
