"""The `pref` section of a recipe: preference training after SFT (`stage: dpo` or `stage: kto`).

Names follow LLaMA-Factory (`pref_loss`, `pref_beta`, `pref_ftx`, `simpo_gamma`, `dpo_label_smoothing`,
`kto_chosen_weight`, `kto_rejected_weight`, `ref_model`); TRL's names (`loss_type`, `beta`, `rpo_alpha`,
`cpo_alpha`, `label_smoothing`, `desirable_weight`, `undesirable_weight`, `precompute_ref_log_probs`) are aliases.
The trainers are TRL's (train/preference.py); the cross-key checks live in `config/validate_pref.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PREFERENCE_STAGES = ("dpo", "kto")
# TRL's DPOTrainer loss types (trl 1.x `DPOConfig.loss_type`): every one compares the policy with a reference.
DPO_LOSSES = (
    "sigmoid", "ipo", "hinge", "robust", "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "aot", "aot_unpaired",
    "apo_zero", "apo_down", "discopop", "sigmoid_norm",
)  # fmt: skip
# Reference-free losses, by TRL's ORPOTrainer and CPOTrainer (loss_type simpo): no reference model at all.
REFERENCE_FREE_LOSSES = ("orpo", "simpo")
KTO_LOSSES = ("kto", "apo_zero_unpaired")
PREF_LOSSES = DPO_LOSSES + REFERENCE_FREE_LOSSES + KTO_LOSSES


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


@dataclass
class PreferenceArguments:
    pref_loss: str | None = field(
        default=None,
        metadata=_help(
            "stage dpo: sigmoid (DPO, the default), ipo, hinge, robust, sigmoid_norm, … (TRL's DPO loss types), "
            "or the reference-free orpo and simpo. stage kto: kto (the default) or apo_zero_unpaired. "
            "Alias: loss_type.",
            choices=PREF_LOSSES,
        ),
    )
    pref_beta: float = field(
        default=0.1,
        metadata=_help(
            "How far the policy may move from the reference (DPO's β; ORPO's λ; SimPO's β). Alias: beta."
        ),
    )
    pref_ftx: float = field(
        default=0.0,
        metadata=_help(
            "Weight of an SFT loss on the chosen answers added to the preference loss (0: none). For simpo "
            "this is CPO's NLL weight. Aliases: rpo_alpha, cpo_alpha."
        ),
    )
    simpo_gamma: float = field(default=0.5, metadata=_help("pref_loss simpo: the target reward margin γ."))
    dpo_label_smoothing: float = field(
        default=0.0,
        metadata=_help(
            "pref_loss robust / exo_pair: the assumed probability that a preference label is flipped. "
            "Alias: label_smoothing."
        ),
    )
    ref_model: str | None = field(
        default=None,
        metadata=_help(
            "The reference model (a folder or Hub id). Default: the model being trained, as it is before the "
            "first step — a frozen copy for full fine-tuning, the base with the adapter switched off for "
            "LoRA/QLoRA (no second copy). Not used by orpo and simpo."
        ),
    )
    precompute_ref_log_probs: bool = field(
        default=False,
        metadata=_help(
            "Score every pair with the reference once before training and keep the log-probs with the "
            "tokenized data (the next run with the same data and reference reuses them); no reference model is "
            "held while training."
        ),
    )
    kto_chosen_weight: float = field(
        default=1.0,
        metadata=_help("stage kto: weight of the desirable examples' loss. Alias: desirable_weight."),
    )
    kto_rejected_weight: float = field(
        default=1.0,
        metadata=_help("stage kto: weight of the undesirable examples' loss. Alias: undesirable_weight."),
    )

    def loss(self, stage: str) -> str:
        """The loss this stage trains with: the one set, else the stage's default."""
        return self.pref_loss or ("kto" if stage == "kto" else "sigmoid")

    @property
    def reference_free(self) -> bool:
        return self.pref_loss in REFERENCE_FREE_LOSSES
