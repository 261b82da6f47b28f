"""Fault injection for the reliability tests, from the outside: `SFTFORGE_FAULT=kind=value[,kind=value]` in the
environment of a real `sftforge train` process whose PYTHONPATH starts with this folder (see `fault_env`). Python
then imports `sitecustomize.py` from here at start-up, which patches sftforge as it is imported: the product code
holds no test hooks. Child processes (accelerate launch, torchrun) inherit both variables.

kinds:
  kill_at_step=N          SIGKILL right after optimizer step N (its checkpoint, if any, not yet written)
  kill_in_accumulation=N  SIGKILL inside step N's gradient-accumulation window (after its first micro-batch)
  kill_during_save=N:P    SIGKILL while checkpoint-N is being written, at phase P: after_model,
                          after_optimizer, before_marker
  enospc_during_save=N    the save of checkpoint-N fails with "No space left on device" after the model is written
  nan_loss_at_step=N      the model's loss in optimizer step N becomes NaN
  nan_loss_from_step=N    the model's loss in every optimizer step from N on becomes NaN
  inf_grad_at_step=N      one gradient of optimizer step N becomes Inf (the loss stays finite)
  slow_preprocessing=S    the local main process (LOCAL_RANK 0) spends S more seconds preparing the data
  count_engine_steps=1    print "sftforge-faults: engine steps: K" at exit (DeepSpeed engines: real steps taken)
  record_sources=PATH     append {"step": optimizer step, "rank", "sources": [...]} per trained micro-batch to PATH:
                          which examples a run trained on, step by step (not a fault: an observation)
"""

from __future__ import annotations

import atexit
import errno
import os
import signal
import time
from pathlib import Path
from typing import Any

ENV = "SFTFORGE_FAULT"
HERE = Path(__file__).resolve().parent


def fault_env(env: dict[str, str], spec: str | None) -> dict[str, str]:
    """`env` for a subprocess with the faults of `spec` installed (None: no faults, and no stale spec)."""
    env = dict(env)
    env.pop(ENV, None)
    if spec:
        env[ENV] = spec
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH")) if p)
    return env


def parse(spec: str) -> dict[str, str]:
    out = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        kind, _, value = part.partition("=")
        out[kind] = value
    return out


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------- patches, applied when sftforge.train.run loads


def patch_run_module(run: Any, faults: dict[str, str]) -> None:
    """Wrap the run's data preparation and trainer construction; patch the trainer class's save steps."""
    from sftforge.train import checkpoints
    from sftforge.train.trainer import SFTTrainer

    prepare, build = run.prepare_tokenized_data, run.build_trainer

    def prepare_tokenized_data(cfg: Any) -> Any:
        seconds = faults.get("slow_preprocessing")
        if seconds and os.environ.get("LOCAL_RANK", "0") == "0":
            time.sleep(float(seconds))
        return prepare(cfg)

    def build_trainer(*args: Any, **kwargs: Any) -> Any:
        trainer = build(*args, **kwargs)
        _install_on_trainer(trainer, faults)
        return trainer

    run.prepare_tokenized_data, run.build_trainer = prepare_tokenized_data, build_trainer

    save_model, save_optimizer, commit = (
        SFTTrainer.save_model,
        SFTTrainer._save_optimizer_and_scheduler,
        checkpoints.commit,
    )

    def patched_save_model(self: Any, output_dir: str | None = None, _internal_call: bool = False) -> None:
        save_model(self, output_dir, _internal_call)
        if _internal_call:
            _save_fault(self, faults, "after_model")

    def patched_save_optimizer(self: Any, output_dir: str) -> None:
        save_optimizer(self, output_dir)
        _save_fault(self, faults, "after_optimizer")

    def patched_commit(folder: Any, *args: Any, **kwargs: Any) -> Any:
        step = Path(folder).name.rpartition("-")[2]
        if faults.get("kill_during_save") == f"{step}:before_marker":
            _die()
        return commit(folder, *args, **kwargs)

    SFTTrainer.save_model = patched_save_model
    SFTTrainer._save_optimizer_and_scheduler = patched_save_optimizer
    checkpoints.commit = patched_commit


def _install_on_trainer(trainer: Any, faults: dict[str, str]) -> None:
    from transformers import TrainerCallback

    class StepFaults(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if faults.get("kill_at_step") == str(state.global_step):
                _die()

        def on_substep_end(self, args, state, control, **kwargs):
            if faults.get("kill_in_accumulation") == str(state.global_step + 1):
                _die()

        def on_step_begin(self, args, state, control, **kwargs):
            # The engine exists once the Trainer has prepared the model (after on_train_begin).
            if faults.get("count_engine_steps") and not getattr(trainer, "_fault_counting", False):
                trainer._fault_counting = True
                _count_engine_steps(trainer)

    trainer.add_callback(StepFaults())
    if faults.get("record_sources"):
        _record_sources(trainer, Path(faults["record_sources"]))
    if {"nan_loss_at_step", "nan_loss_from_step", "inf_grad_at_step"} & set(faults):
        _corrupt_model_outputs(trainer, faults)


def _record_sources(trainer: Any, path: Path) -> None:
    import json

    step = trainer.training_step

    def recorded(model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        step_no, rank = trainer.state.global_step + 1, trainer.args.process_index
        entry = json.dumps({"step": step_no, "rank": rank, "sources": inputs.get("sources")})
        with open(
            path, "a", encoding="utf-8"
        ) as f:  # closed per micro-batch: a SIGKILL keeps what was trained
            f.write(entry + "\n")
        return step(model, inputs, *args, **kwargs)

    trainer.training_step = recorded


def _save_fault(trainer: Any, faults: dict[str, str], phase: str) -> None:
    step = str(trainer.state.global_step)
    if faults.get("kill_during_save") == f"{step}:{phase}":
        _die()
    if faults.get("enospc_during_save") == step and phase == "after_model":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _corrupt_model_outputs(trainer: Any, faults: dict[str, str]) -> None:
    """A forward hook on the model: the loss the model returns becomes NaN (as if a bad batch or an overflow made
    it so), or one parameter's gradient becomes Inf — what the guard must see, wherever it looks."""
    import torch

    def hook(module: Any, inputs: Any, output: Any) -> Any:
        if not module.training:
            return output
        step = str(trainer.state.global_step + 1)
        from_step = faults.get("nan_loss_from_step")
        if faults.get("nan_loss_at_step") == step or (from_step and int(step) >= int(from_step)):
            output.loss = output.loss * torch.tensor(float("nan"))
        if faults.get("inf_grad_at_step") == step and not getattr(trainer, "_fault_inf_done", False):
            trainer._fault_inf_done = True  # one micro-batch of that step gets an Inf gradient, once
            param = next(p for p in module.parameters() if p.requires_grad)
            fired: list[int] = []
            param.register_hook(
                lambda g: g if fired else (fired.append(1), torch.full_like(g, float("inf")))[1]
            )
        return output

    trainer.model.register_forward_hook(hook)


def _count_engine_steps(trainer: Any) -> None:
    engine = getattr(trainer, "deepspeed", None) or getattr(trainer, "model_wrapped", None)
    step = getattr(engine, "step", None)
    if step is None:
        return
    taken = [0]

    def counted_step(*args: Any, **kwargs: Any) -> Any:
        taken[0] += 1
        return step(*args, **kwargs)

    engine.step = counted_step
    atexit.register(lambda: print(f"sftforge-faults: engine steps: {taken[0]}", flush=True))
