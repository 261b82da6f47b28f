"""Preference training (`stage: dpo | kto`) on TRL's own trainers, with sftforge's data and safety around them.

The loss, the reference model's handling and the metrics (rewards/chosen, rewards/rejected, rewards/margins,
rewards/accuracies) are TRL's: `DPOTrainer` and `KTOTrainer` (ORPO and SimPO: train/reference_free.py),
configured from the recipe. What sftforge adds is what it adds to SFT, by the same `SFTTrainer` mixed in: the pairs are rendered by the chat template and verified
(data/preference.py) instead of re-tokenized by TRL, checkpoints are committed and rotated safely, a NaN step is
caught, and tokens are counted.

The reference is the model before its first step: a frozen copy (full fine-tuning; under DeepSpeed, loaded again),
the base with the adapter switched off (a fresh LoRA adapter: no second copy), the model at `ref_model`, or none
while training when its log-probs are precomputed — TRL then caches them next to the tokenized pairs (data cache), so the next run with the
same data and reference reads them back.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
import warnings
from pathlib import Path
from typing import Any

from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer

from sftforge.config.pref_args import PreferenceArguments
from sftforge.config.schema import SFTTrainingKeys
from sftforge.data.preference import kto_features, pair_features
from sftforge.train.log_lines import use_log_lines
from sftforge.train.trainer import SFTTrainer

# TRL's metrics that say how preference training goes, in the order the summary and the model card list them
PREFERENCE_METRICS = ("rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected")


# ---------------------------------------------------------------- the data, as TRL's tokenized datasets


def preference_datasets(data: Any, stage: str) -> tuple[Any, Any]:
    """The training and eval sets as `datasets.Dataset`s of TRL's tokenized features, memory-mapped Arrow files
    written once next to the token store they come from (a cache hit reuses them)."""
    train = _as_dataset(data.train, stage)
    evaluation = _as_dataset(data.eval, stage) if len(data.eval) else None
    return train, evaluation


def _as_dataset(view: Any, stage: str) -> Any:
    from datasets import Dataset

    count = len(view) // 2 if stage == "dpo" else len(view)
    features = pair_features if stage == "dpo" else kto_features
    path = _arrow_path(view, stage)
    if not path.exists():
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        _write_arrow(tmp, (features(view, i) for i in range(count)), stage)
        os.replace(tmp, path)  # atomic: a concurrent or interrupted writer never leaves half a file
    return Dataset.from_file(str(path))


def _arrow_path(view: Any, stage: str) -> Path:
    """One file per store and subset of its examples (the held-out split is a subset)."""
    digest = hashlib.sha256(view.which.tobytes() + view.index.tobytes()).hexdigest()[:16]
    store = view.stores[0]
    return Path(store.folder) / f"{store.split}.{stage}-{digest}.arrow"


def _write_arrow(path: Path, rows: Any, stage: str) -> None:
    from datasets import Features, List, Value
    from datasets.arrow_writer import ArrowWriter

    ids = List(Value("int32"))
    if stage == "dpo":
        features = Features({"prompt_ids": ids, "chosen_ids": ids, "rejected_ids": ids})
    else:
        features = Features({"prompt_ids": ids, "completion_ids": ids, "label": Value("bool")})
    with ArrowWriter(path=str(path), features=features) as writer:
        for row in rows:
            writer.write(row)
        writer.finalize()


# ---------------------------------------------------------------- arguments


@dataclasses.dataclass
class DPOTrainingArguments(SFTTrainingKeys, DPOConfig):
    """TRL's DPOConfig with sftforge's own training keys (nan_policy, ...); a module-level class, so the
    training_args.bin each checkpoint holds can be read back."""


@dataclasses.dataclass
class KTOTrainingArguments(SFTTrainingKeys, KTOConfig):
    """TRL's KTOConfig with sftforge's own training keys."""


def trl_arguments(training: Any, pref: PreferenceArguments, stage: str, max_length: int = 1024) -> Any:
    """The recipe's training arguments as TRL's config for the stage: every TrainingArguments value as
    resolved, plus the preference keys under TRL's names."""
    loss = pref.loss(stage)
    values = {f.name: getattr(training, f.name) for f in dataclasses.fields(training) if f.init}
    values.update(beta=pref.pref_beta, disable_dropout=True)
    if pref.reference_free:  # ORPO / SimPO: TRL's experimental trainers (train/reference_free.py)
        from sftforge.train.reference_free import reference_free_arguments

        return reference_free_arguments(values, pref, max_length)
    # sftforge's pairs are whole (never cut) and verified: no truncation, no re-tokenizing
    values.update(precompute_ref_log_probs=pref.precompute_ref_log_probs, max_length=None)
    if stage == "kto":
        values.update(
            loss_type=loss,
            desirable_weight=pref.kto_chosen_weight,
            undesirable_weight=pref.kto_rejected_weight,
        )
        # KTO's KL term pairs each example with its neighbour's answer in a fixed-order batch
        values["train_sampling_strategy"] = "sequential"
    else:
        losses, weights = [loss], [1.0]
        if pref.pref_ftx > 0:  # an SFT term on the chosen answers (LLaMA-Factory's pref_ftx, TRL's RPO)
            losses.append("sft")
            weights.append(pref.pref_ftx)
        values.update(loss_type=losses, loss_weights=weights, label_smoothing=pref.dpo_label_smoothing)
    return (KTOTrainingArguments if stage == "kto" else DPOTrainingArguments)(**values)


# ---------------------------------------------------------------- the reference


def frozen_reference(model: Any) -> Any:
    """A copy of the model as it is now, frozen: the reference for full fine-tuning."""
    ref = copy.deepcopy(model)
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


# ---------------------------------------------------------------- the trainers


class PreferenceMixin:
    """What sftforge changes in TRL's preference trainers."""

    reports_perplexity = False  # exp(DPO loss) is no perplexity

    def _prepare_dataset(self, dataset: Any, *args: Any, **kwargs: Any) -> Any:
        return dataset  # tokenized and verified by sftforge (data/preference.py); TRL must not re-tokenize

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        return None  # sftforge writes the model card once, at the end (export/model_card.py)

    def _drop_reference_adapter(self) -> None:
        """TRL copies a PEFT model's adapter as "ref" to score the reference. sftforge's LoRA adapters always start
        fresh (B = 0: they change nothing yet), so the base with the adapter switched off is the same reference,
        without the copy. Other adapter kinds (prefix, prompt tuning, IA3) do change the model at the start: their
        copy stays."""
        model = self.accelerator.unwrap_model(self.model)
        peft_config = getattr(model, "peft_config", {})
        if "ref" in peft_config and _is_lora(peft_config["ref"]):
            model.delete_adapter("ref")
            model.set_adapter("default")


def _is_lora(config: Any) -> bool:
    from peft import LoraConfig

    return isinstance(config, LoraConfig)


class SftforgeDPOTrainer(PreferenceMixin, SFTTrainer, DPOTrainer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._drop_reference_adapter()


class SftforgeKTOTrainer(PreferenceMixin, SFTTrainer, KTOTrainer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._drop_reference_adapter()

    def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, name: str) -> Any:
        """KTO's one data step that is not tokenizing: the mismatched answers its KL term is estimated from
        (each example's prompt with the previous example's answer, within a batch), as TRL makes them."""
        if not self.calculate_KL:
            return dataset

        def rotate(batch: dict[str, list]) -> dict[str, list]:
            answers = batch["completion_ids"]
            return {**batch, "KL_completion_ids": [answers[-1], *answers[:-1]]}

        return dataset.map(rotate, batched=True, batch_size=args.per_device_train_batch_size)


def build_preference_trainer(cfg: Any, bundle: Any, data: Any, model: Any, ref_model: Any = None) -> Any:
    stage = cfg.data.stage
    # TRL switches activation checkpointing off around each reference forward through an API transformers 5
    # deprecated: a notice per step that the user can do nothing about
    warnings.filterwarnings("ignore", category=FutureWarning, message=".*is_gradient_checkpointing")
    train, evaluation = preference_datasets(data, stage)
    loss = cfg.pref.loss(stage)
    args = trl_arguments(cfg.training, cfg.pref, stage, cfg.data.max_length)
    kwargs: dict[str, Any] = {"model": model, "args": args, "train_dataset": train, "eval_dataset": evaluation,
                              "processing_class": bundle.tokenizer}  # fmt: skip
    if cfg.pref.reference_free:
        from sftforge.train.reference_free import reference_free_trainer_class

        cls: type = reference_free_trainer_class(loss)
    else:
        cls = SftforgeKTOTrainer if stage == "kto" else SftforgeDPOTrainer
        kwargs["ref_model"] = ref_model
    trainer = cls(**kwargs)
    use_log_lines(trainer)  # one readable line per log step (train/log_lines.py)
    return trainer


def pair_log_probs(trainer: Any, dataset: Any) -> tuple[Any, Any]:
    """Every pair's summed log-prob of its chosen and of its rejected answer under the model being trained (the
    adapter on), each rank scoring its share of `dataset`, gathered: what the policy itself prefers."""
    import torch
    from torch.utils.data import DataLoader
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    pairs = dataset.select_columns(["prompt_ids", "chosen_ids", "rejected_ids"])
    collate = DataCollatorForPreference(pad_token_id=trainer.processing_class.pad_token_id)
    loader = trainer.accelerator.prepare(
        DataLoader(pairs, batch_size=trainer.args.per_device_eval_batch_size, collate_fn=collate)
    )
    model = trainer.model
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    try:
        for batch in loader:
            ids, mask = batch["input_ids"], batch["completion_mask"][:, 1:]
            with torch.no_grad(), trainer.compute_loss_context_manager():
                logits = model(input_ids=ids, attention_mask=batch["attention_mask"], use_cache=False).logits
            # the log-prob of each next token; only the answers' tokens count
            logps = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
            c, r = (logps * mask).sum(dim=1).chunk(2, dim=0)
            c, r = trainer.accelerator.gather_for_metrics((c, r))
            chosen.append(c.cpu())
            rejected.append(r.cpu())
    finally:
        model.train(was_training)
    return torch.cat(chosen), torch.cat(rejected)


def preference_eval(trainer: Any, dataset: Any, suffix: str = "") -> dict[str, float]:
    """On the eval pairs: the share whose chosen answer the model finds more likely than the rejected one (ties
    count as wrong) — before training the starting model's own taste, ~0.5 when the data teaches something new —
    and the mean log-prob of the chosen and of the rejected answers."""
    chosen, rejected = pair_log_probs(trainer, dataset)
    if not len(chosen):
        return {}
    return {
        f"eval_preference_accuracy{suffix}": float((chosen > rejected).float().mean()),
        f"eval_chosen_logp{suffix}": float(chosen.mean()),
        f"eval_rejected_logp{suffix}": float(rejected.mean()),
    }


def preference_metrics(log_history: list[dict[str, Any]]) -> dict[str, Any]:
    """The first and last logged training value of each preference metric (`rewards/accuracies_first`, ...)."""
    out: dict[str, Any] = {}
    for key in PREFERENCE_METRICS:
        values = [e[key] for e in log_history if key in e]
        if values:
            out[f"{key}_first"], out[f"{key}_last"] = values[0], values[-1]
    return out
