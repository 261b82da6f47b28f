"""The one Trainer subclass. The loop, optimizer, schedulers, checkpoint contents and distribution are
transformers'; this adds what they lack: committed checkpoints, safe rotation, a non-finite guard, token counts."""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer
from transformers.trainer_pt_utils import nested_gather

from sftforge.data.streaming import POSITION_KEY
from sftforge.errors import SftforgeError
from sftforge.model.moe import silence_model_aux
from sftforge.train import checkpoints, streaming
from sftforge.train.guards import NonFiniteGuard
from sftforge.train.schedule import follow_current_schedule
from sftforge.train.token_counter import TokenCounter


class CheckpointSaveError(SftforgeError):
    exit_code = 1


class SFTTrainer(Trainer):
    """Counts the tokens of every trained micro-batch, guards every optimizer step against NaN/Inf, commits
    every checkpoint with a marker, and adds perplexity next to every eval loss."""

    def __init__(self, *args: Any, run_identity: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tokens = TokenCounter()  # training batches only: evaluation never passes through training_step
        self.run_identity = run_identity or {}  # recorded in each checkpoint's marker for the drift check
        self.guard = NonFiniteGuard(
            getattr(self.args, "nan_policy", "stop"), getattr(self.args, "max_skipped_steps", 3)
        )
        self.rotation_limit: int | None = self.args.save_total_limit
        self._in_training_step = False  # compute_loss is also called by evaluation: only training is guarded
        self._decided_before_backward = False  # DeepSpeed: this step was judged before its backward

    # Set by the run when it packs (reported with the preprocessing figures); preference trainers never pack
    packing_s: float = 0.0
    packing_fill: float | None = None
    reports_perplexity = True  # eval_perplexity next to eval_loss (a language-model loss)
    throughput: Any = None  # a ThroughputCallback, set by the run: adds tokens/s and MFU to training logs
    moe_aux: Any = None  # a model.moe.MoeAuxLoss, set by the run for MoE models with the router aux loss on
    moe_model = False  # an MoE model: its own per-forward aux addition is switched off while training
    stop_ids: list[int] = []  # end-of-turn ids (set by the run): eval_generation stops answers on them
    # The checkpoint train() resumes from (a streaming dataset restarts there), and with streaming the position
    # after the last trained batch (train/streaming.py)
    resumed_from: str | None = None
    stream_position: dict[str, int] | None = None

    # ------------------------------------------------------------------ sampling

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        # The stock length-grouped sampler measures every example by reading it; the token store's datasets
        # (data/train_sets.py) know their lengths already.
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        lengths = getattr(dataset, "lengths", None)
        if self.args.train_sampling_strategy == "group_by_length" and lengths is not None:
            from sftforge.data.train_sets import LengthGroupedIndexSampler

            return LengthGroupedIndexSampler(
                lengths, self.args.train_batch_size * self.args.gradient_accumulation_steps
            )
        return super()._get_train_sampler(train_dataset)

    # ------------------------------------------------------------------ training steps

    def train(self, *args: Any, **kwargs: Any) -> Any:
        # Rotation runs in _save_checkpoint, after the commit marker. The stock one would delete before the new
        # checkpoint is complete, and with save_total_limit=1 it deletes the newest checkpoint at the end of
        # training when another one is the best (transformers#25129, #11748).
        self.rotation_limit, self.args.save_total_limit = self.args.save_total_limit, None
        # MoE: the model would add coef × aux per forward (once per micro-batch); compute_loss adds it per step
        silenced = silence_model_aux(self.model) if self.moe_model else []
        self.resumed_from = kwargs.get("resume_from_checkpoint", args[0] if args else None)
        try:
            return super().train(*args, **kwargs)
        finally:
            self.args.save_total_limit = self.rotation_limit
            for module, value in silenced:
                module.router_aux_loss_coef = value

    def _load_optimizer_and_scheduler(self, checkpoint: Any) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        changed = follow_current_schedule(self.lr_scheduler)  # train/schedule.py: lr 0 after a longer resume
        if changed and self.is_world_process_zero():
            print(f"sftforge: resuming onto a changed schedule ({self.state.max_steps} steps now): learning rate "
                  f"{changed.now:.3g} at step {changed.step}, where the checkpoint's schedule had {changed.stored:.3g}",
                  flush=True)  # fmt: skip

    def _finalize_training(self, *args: Any, **kwargs: Any) -> Any:
        # train_loss = (every logged loss + the loss of the steps since the last log) / steps. A log averages
        # over the ranks first (each rank's loss is its share of the tokens of all ranks, scaled by the world
        # size), but the stock code adds the unlogged rest as this rank's own: with logging_steps > max_steps
        # the "mean" was rank 0's share alone (5.88 where the steps' mean was 6.40). Average it like a log.
        self._tr_loss = nested_gather(self._tr_loss, self.args.parallel_mode).mean()
        return super()._finalize_training(*args, **kwargs)

    def training_step(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        # Nothing here reads a value off the device: counts and losses stay tensors until a decision or a log
        # line needs them (one sync per optimizer step instead of one per micro-batch).
        self.guard.observe_sources(inputs.pop("sources", None))
        self.stream_position = inputs.pop(POSITION_KEY, self.stream_position)
        self.tokens.add(inputs)
        self._in_training_step = True
        try:
            loss = super().training_step(model, inputs, *args, **kwargs)
        finally:
            self._in_training_step = False
        # The stock loop adds this to the logged running loss: a skipped step's NaN must not poison that mean.
        return torch.nan_to_num(loss, nan=0.0, posinf=0.0, neginf=0.0)

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        aux = self.moe_aux if self._in_training_step else None
        if self.moe_model:  # evaluation: the LM loss only (eval_loss and perplexity compare across runs)
            inputs = {**inputs, "output_router_logits": aux is not None}
        result = super().compute_loss(
            model,
            inputs,
            return_outputs=return_outputs or aux is not None,
            num_items_in_batch=num_items_in_batch,
        )
        if aux is not None:
            loss, outputs = result
            # The LM loss is already a share of the step's mean (num_items_in_batch) or will be divided by the
            # micro-batch count by the stock loop; the aux term is the mean over the step's micro-batches either way.
            scaled = self.loss_is_scaled_for_ga
            if scaled is None:
                scaled = (
                    self.model_accepts_loss_kwargs and num_items_in_batch is not None
                ) or self.compute_loss_func is not None
            micro_batches = self.current_gradient_accumulation_steps if scaled else 1
            loss = loss + aux.term(outputs, inputs, micro_batches).to(loss.device)
            result = (loss, outputs) if return_outputs else loss
        if self._in_training_step:  # not for evaluation, which calls compute_loss too
            self.guard.observe_loss(result[0] if isinstance(result, tuple) else result)
            if self.is_deepspeed_enabled and self.accelerator.sync_gradients:
                # DeepSpeed steps the optimizer inside this micro-batch's backward: decide now, before it, on
                # the step's losses (its gradient norm exists only after the step).
                self.guard.before_optimizer_step(
                    self.state.global_step + 1, None, self.args.process_index, judge_grad_norm=False
                )
                self._decided_before_backward = True
        return result

    def get_train_dataloader(self) -> Any:
        if getattr(self.train_dataset, "streaming", False):  # shards by rank and tracks its position itself
            return streaming.train_dataloader(self)
        return super().get_train_dataloader()

    def prediction_step(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        inputs.pop("sources", None)
        return super().prediction_step(model, inputs, *args, **kwargs)

    def _get_grad_norm(self, model: Any, grad_norm: Any = None) -> Any:
        # The last thing the Trainer computes before optimizer.step(): the guard decides here.
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        step, rank = self.state.global_step + 1, self.args.process_index
        if self._decided_before_backward:
            # DeepSpeed: the losses were judged before its step; the norm can only be reported after it. With
            # fp16 its own loss scaler skips overflowing steps, so an Inf norm is no problem there.
            self._decided_before_backward = False
            self.guard.before_optimizer_step(
                step, grad_norm, rank, judge_grad_norm=not self.args.fp16,
                applied_anyway="DeepSpeed applies the optimizer step inside the backward pass",
            )  # fmt: skip
            return grad_norm
        self._guard_optimizer_step()
        # fp16 loss scaling produces Inf gradients on purpose now and then; the scaler skips those steps itself.
        self.guard.before_optimizer_step(
            step, grad_norm, rank, judge_grad_norm=self.accelerator.scaler is None
        )
        return grad_norm

    def _guard_optimizer_step(self) -> None:
        """Make the optimizer's step a no-op while the guard says to skip (nan_policy: skip)."""
        optimizer = self.optimizer
        if getattr(optimizer, "_sftforge_guarded", False):
            return
        step = optimizer.step

        # wraps: keeps the mark torch's lr scheduler put on the step it tracks (`_wrapped_by_lr_sched`); without it
        # every run warned that optimizer.step() "has been overridden after learning rate scheduler initialization"
        @functools.wraps(step)
        def guarded_step(*args: Any, **kwargs: Any) -> Any:
            if not self.guard.skip_this_step:
                return step(*args, **kwargs)
            scaler = self.accelerator.scaler
            if scaler is not None:
                # unscale_ already ran for this step (gradient clipping): the scaler must be told the step is
                # over, else the next step's unscale_ fails ("unscale_() has already been called").
                scaler.update()
            return None

        optimizer.step = guarded_step
        optimizer._sftforge_guarded = True

    # ------------------------------------------------------------------ checkpoints

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
        if self.args.should_save and checkpoints.remove_incomplete(folder):
            print(f"sftforge: removed {folder.name}, left incomplete by an interrupted save", flush=True)
        self.accelerator.wait_for_everyone()
        try:
            super()._save_checkpoint(model, trial)
            if self.stream_position is not None:  # every rank its own file, before the commit lists them
                streaming.save_state(
                    folder, self.stream_position, self.train_dataset.config, self.state.global_step
                )
            self.accelerator.wait_for_everyone()  # every rank's files (RNG states, ZeRO shards) are written
            if self.args.should_save:
                checkpoints.commit(folder, self.run_identity, self._data_position())
        except OSError as e:
            raise self._save_failed(folder, e) from None
        if self.args.should_save:
            for gone in checkpoints.rotate(
                folder.parent, self.rotation_limit, self.state.best_model_checkpoint
            ):
                print(f"sftforge: deleted {gone.name} (save_total_limit={self.rotation_limit})", flush=True)

    def _data_position(self) -> dict[str, Any]:
        args = self.args
        global_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        return {
            "global_step": self.state.global_step,
            "epoch": self.state.epoch,
            "samples_seen": self.state.global_step * global_batch,
            "skipped_non_finite_steps": self.guard.skipped_total,
            **({"stream": self.stream_position} if self.stream_position is not None else {}),  # rank 0's
        }

    def _save_failed(self, folder: Path, error: OSError) -> CheckpointSaveError:
        import shutil

        if self.args.should_save:
            shutil.rmtree(folder, ignore_errors=True)
        previous, _ = checkpoints.newest_complete(folder.parent)
        kept = (
            f"The newest complete checkpoint, {previous.name}, is intact."
            if previous
            else "There is no earlier complete checkpoint."
        )
        return CheckpointSaveError(
            f"saving {folder.name} failed: {error.strerror or error} ({error.filename or folder}). The partial "
            f"folder was removed. {kept} Free space or fix permissions in {folder.parent}, then continue with "
            "--resume_from_checkpoint auto."
        )

    # ------------------------------------------------------------------ logging

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if self.throughput is not None:
            self.throughput.annotate(logs)
        if self.moe_aux is not None and "loss" in logs:
            self.moe_aux.annotate(logs)
        if "eval_loss" in logs and getattr(self.args, "eval_generation", False) and self.eval_dataset:
            from sftforge.train.eval_generation import generation_eval_metrics

            # Every rank is here (evaluate logs on all of them): each answers its share, then they gather
            logs.update(generation_eval_metrics(self, list(self.eval_dataset), self.stop_ids))
        if "eval_loss" in logs and self.reports_perplexity:
            logs["eval_perplexity"] = math.exp(
                min(logs["eval_loss"], 50.0)
            )  # cap: exp(50) already says "bad"
        super().log(logs, *args, **kwargs)
