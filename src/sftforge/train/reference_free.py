"""ORPO and SimPO (`pref_loss: orpo | simpo`): TRL's ORPOTrainer and CPOTrainer, which live in `trl.experimental`
(TRL warns once that their API may change), on sftforge's verified pairs. No reference model at all.

Imported only when a recipe asks for one of these losses, so DPO and KTO runs never load the experimental module.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from trl.experimental.cpo import CPOConfig, CPOTrainer
from trl.experimental.orpo import ORPOConfig, ORPOTrainer

from sftforge.config.pref_args import PreferenceArguments
from sftforge.config.schema import SFTTrainingKeys
from sftforge.train.preference import PreferenceMixin
from sftforge.train.trainer import SFTTrainer


@dataclasses.dataclass
class CPOTrainingArguments(SFTTrainingKeys, CPOConfig):
    """TRL's CPOConfig (SimPO is its loss_type simpo) with sftforge's own training keys."""


@dataclasses.dataclass
class ORPOTrainingArguments(SFTTrainingKeys, ORPOConfig):
    """TRL's ORPOConfig with sftforge's own training keys."""


def reference_free_arguments(values: dict[str, Any], pref: PreferenceArguments, max_length: int) -> Any:
    """TRL's config for ORPO or SimPO from the recipe's training values (+ beta and dropout already set)."""
    if pref.pref_loss == "orpo":  # beta is ORPO's λ, the weight of the odds-ratio term
        return ORPOTrainingArguments(**values, max_length=max_length)
    # SimPO is CPOTrainer's loss_type simpo; pref_ftx is CPO's NLL weight (0: pure SimPO)
    return CPOTrainingArguments(**values, max_length=max_length, loss_type="simpo", cpo_alpha=pref.pref_ftx,
                                simpo_gamma=pref.simpo_gamma, label_smoothing=pref.dpo_label_smoothing)  # fmt: skip


class _ReferenceFreeMixin(PreferenceMixin):
    """TRL's ORPOTrainer and CPOTrainer (SimPO) tokenize text rows one by one; here `tokenize_row` only lays out
    sftforge's verified pair as they expect it: the prompt's tokens, then each answer with the prompt's labels
    at -100."""

    def tokenize_row(self, feature: dict[str, Any], model: Any = None) -> dict[str, Any]:
        prompt = list(feature["prompt_ids"])
        out = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
        for side in ("chosen", "rejected"):
            answer = list(feature[f"{side}_ids"])
            out[f"{side}_input_ids"] = prompt + answer
            out[f"{side}_attention_mask"] = [1] * (len(prompt) + len(answer))
            out[f"{side}_labels"] = [-100] * len(prompt) + answer
        return out


class SftforgeORPOTrainer(_ReferenceFreeMixin, SFTTrainer, ORPOTrainer):
    def concatenated_forward(self, model: Any, batch: dict[str, Any]) -> tuple:
        """ORPO's NLL term on the chosen answers' tokens only, like every loss sftforge trains: TRL's takes the
        prompt's tokens too. Its per-answer mean log-probs (what the odds ratio uses) give it exactly."""
        out = super().concatenated_forward(model, batch)
        answer_tokens = (batch["chosen_labels"][:, 1:] != -100).sum(dim=-1)
        nll = -(out[0] * answer_tokens).sum() / answer_tokens.sum().clamp(min=1)
        return (*out[:4], nll, *out[5:])


class SftforgeCPOTrainer(_ReferenceFreeMixin, SFTTrainer, CPOTrainer):
    pass


def reference_free_trainer_class(loss: str) -> type:
    return SftforgeORPOTrainer if loss == "orpo" else SftforgeCPOTrainer
