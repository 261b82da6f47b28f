"""Fault injection for the reliability tests: `SFTFORGE_FAULT=kind=value[,kind=value]` in the environment of a
real `sftforge train` process. Never set in normal use; run.py installs these only when the variable is set.

kinds:
  kill_at_step=N          SIGKILL right after optimizer step N (its checkpoint, if any, not yet written)
  kill_in_accumulation=N  SIGKILL inside step N's gradient-accumulation window (after its first micro-batch)
  kill_during_save=N:P    SIGKILL while checkpoint-N is being written, at phase P: after_model,
                          after_optimizer, before_marker
  enospc_during_save=N    the save of checkpoint-N fails with "No space left on device" after the model is written
  nan_loss_at_step=N      the loss of optimizer step N becomes NaN
  nan_loss_from_step=N    the loss of every optimizer step from N on becomes NaN
  inf_grad_at_step=N      one gradient of optimizer step N becomes Inf (the loss stays finite)
  slow_preprocessing=S    the local main process (LOCAL_RANK 0) spends S more seconds preparing the data
"""

from __future__ import annotations

import errno
import os
import signal
import time
from typing import Any

from transformers import TrainerCallback

ENV = "SFTFORGE_FAULT"


def parse(spec: str) -> dict[str, str]:
    out = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        kind, _, value = part.partition("=")
        out[kind] = value
    return out


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class _StepFaults(TrainerCallback):
    def __init__(self, faults: dict[str, str]) -> None:
        self.faults = faults

    def on_step_end(self, args, state, control, **kwargs):
        if self.faults.get("kill_at_step") == str(state.global_step):
            _die()

    def on_substep_end(self, args, state, control, **kwargs):
        if self.faults.get("kill_in_accumulation") == str(state.global_step + 1):
            _die()


def delay_preprocessing(spec: str) -> None:
    seconds = parse(spec).get("slow_preprocessing")
    if seconds and os.environ.get("LOCAL_RANK", "0") == "0":
        time.sleep(float(seconds))


def install(trainer: Any, spec: str) -> None:
    faults = parse(spec)
    trainer.add_callback(_StepFaults(faults))
    trainer.fault_point = lambda phase: _save_fault(trainer, faults, phase)
    if {"nan_loss_at_step", "nan_loss_from_step", "inf_grad_at_step"} & set(faults):
        _corrupt_step(trainer, faults)


def _save_fault(trainer: Any, faults: dict[str, str], phase: str) -> None:
    step = str(trainer.state.global_step)
    if faults.get("kill_during_save") == f"{step}:{phase}":
        _die()
    if faults.get("enospc_during_save") == step and phase == "after_model":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _corrupt_step(trainer: Any, faults: dict[str, str]) -> None:
    import torch

    original = trainer.compute_loss

    def compute_loss(model, inputs, *args, **kwargs):
        result = original(model, inputs, *args, **kwargs)
        step = str(trainer.state.global_step + 1)
        from_step = faults.get("nan_loss_from_step")
        if faults.get("nan_loss_at_step") == step or (from_step and int(step) >= int(from_step)):
            loss = result[0] if isinstance(result, tuple) else result
            loss = loss * torch.tensor(float("nan"))
            return (loss, *result[1:]) if isinstance(result, tuple) else loss
        if faults.get("inf_grad_at_step") == step and not getattr(trainer, "_fault_inf_done", False):
            trainer._fault_inf_done = True  # one micro-batch of that step gets an Inf gradient, once
            param = next(p for p in model.parameters() if p.requires_grad)
            fired: list[int] = []
            param.register_hook(
                lambda g: g if fired else (fired.append(1), torch.full_like(g, float("inf")))[1]
            )
        return result

    trainer.compute_loss = compute_loss
