"""Checks for preference training (`stage: dpo | kto`) and the `pref` section's keys."""

from __future__ import annotations

import dataclasses
from typing import Any

from sftforge.config.pref_args import KTO_LOSSES, PREFERENCE_STAGES, PreferenceArguments

PREF_KEYS = tuple(f.name for f in dataclasses.fields(PreferenceArguments))


def check_preference(values: dict[str, dict[str, Any]], explicit: set[str], problems: list[str]) -> list[str]:
    data, pref, train = values["data"], values.get("pref", {}), values["training"]
    stage = data.get("stage", "sft")
    if stage not in PREFERENCE_STAGES:
        for key in sorted(explicit & set(PREF_KEYS)):
            problems.append(
                f"{key}: applies to preference training only; set stage: dpo (or kto), or remove {key}."
            )
        return []
    notes: list[str] = []
    loss = pref.get("pref_loss") or ("kto" if stage == "kto" else "sigmoid")
    if stage == "kto" and loss not in KTO_LOSSES:
        problems.append(f"pref_loss: {loss} is a paired loss; stage kto trains {' or '.join(KTO_LOSSES)}.")
    if stage == "dpo" and loss in KTO_LOSSES:
        problems.append(f"pref_loss: {loss} trains unpaired rows; set stage: kto for it.")
    reference_free = loss in ("orpo", "simpo")
    for key in ("ref_model", "precompute_ref_log_probs"):
        if reference_free and pref.get(key):
            problems.append(f"{key}: pref_loss {loss} uses no reference model; remove {key}.")
    if pref.get("pref_beta", 0.1) <= 0:
        problems.append(f"pref_beta: {pref['pref_beta']} must be > 0 (0.1 is the usual DPO value).")
    if pref.get("pref_ftx", 0.0) < 0:
        problems.append(f"pref_ftx: {pref['pref_ftx']} must be ≥ 0 (0 adds no SFT loss).")
    if loss == "exo_pair" and not pref.get("dpo_label_smoothing"):
        problems.append(
            "dpo_label_smoothing: pref_loss exo_pair needs a value > 0 (the EXO paper uses 1e-3)."
        )
    for key, why in (
        ("packing", "TRL's preference trainers pad each pair; packing is for stage sft and pt"),
        ("streaming", "pairs are tokenized before training (and cached); streaming is for stage sft"),
    ):
        if data.get(key):
            problems.append(f"{key}: not with stage {stage}: {why}.")
    if train.get("eval_generation"):
        problems.append(
            f"eval_generation: not with stage {stage}; its eval reports the preference metrics "
            "(eval_rewards/accuracies, margins) instead."
        )
    if stage == "kto" and loss == "kto":
        # KTO's KL term is estimated from each batch's other answers (TRL's KTOTrainer refuses a batch of 1)
        if int(train.get("per_device_train_batch_size", 8)) < 2:
            problems.append(
                "per_device_train_batch_size: stage kto needs at least 2 per device: KTO estimates its KL term "
                "from the other answers of each batch (use gradient_accumulation_steps for a larger effective batch)."
            )
        notes.append(
            "sampling: sequential (KTO pairs each prompt with its neighbour's answer for the KL term)"
        )
    for key in ("train_on", "multi_turn"):
        if key in explicit:
            notes.append(f"{key}: not used by stage {stage} (the final answer is what is scored)")
    return notes
