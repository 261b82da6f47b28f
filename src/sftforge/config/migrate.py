"""Other tools' keys whose meaning needs a translation, not only a new name (LLaMA-Factory, TRL).

Each switch turns the recipe's value into sftforge keys, or says why it cannot; the plain renames are in
`RENAMES` (merged into the loader's ALIASES). `check_migrated` normalises values after coercion.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sftforge.launch_configs import shipped_deepspeed_json

# Pure renames: the same setting under another tool's name.
RENAMES: dict[str, str] = {
    "enable_liger_kernel": "use_liger_kernel",  # LLaMA-Factory
    "buffer_size": "streaming_buffer",  # LLaMA-Factory: the streaming shuffle window
    "hf_hub_token": "hub_token",  # LLaMA-Factory
    "dataset_text_field": "text_column",  # TRL
    "chat_template_path": "chat_template",  # TRL
    # axolotl: the plain ones (its `datasets:` list and `adapter:` are its own formats)
    "base_model": "model_name_or_path",
    "sequence_len": "max_length",
    "micro_batch_size": "per_device_train_batch_size",
    "num_epochs": "num_train_epochs",
    "sample_packing": "packing",
    "val_set_size": "eval_split_ratio",
}

Switch = Callable[[str, Any, dict[str, Any], dict[str, Any], list[str]], None]


def _truthy(value: Any) -> bool | None:
    text = str(value).strip().lower()
    return True if text in ("true", "1", "yes") else False if text in ("false", "0", "no") else None


def _bool(key: str, value: Any, problems: list[str]) -> bool | None:
    flag = _truthy(value)
    if flag is None:
        problems.append(f"{key}: expected true or false, got {value!r}.")
    return flag


def _set(
    key: str, target: str, value: Any, out: dict[str, Any], raw: dict[str, Any], problems: list[str]
) -> None:
    """out[target] = value, unless the recipe sets `target` too (directly or through another key)."""
    if target in raw or target in out:
        current = raw.get(target, out.get(target))
        problems.append(
            f"{key}: means {target}: {value} here, and {target} is already set ({current}); keep one of the two."
        )
        return
    out[target] = value


def _on_sets(target: str, value: Any) -> Switch:
    """A true/false key whose `true` sets target: value (and whose `false` is the default: nothing)."""

    def switch(key: str, given: Any, out: dict[str, Any], raw: dict[str, Any], problems: list[str]) -> None:
        if _bool(key, given, problems):
            _set(key, target, value, out, raw, problems)

    return switch


def _off_sets(target: str, value: Any) -> Switch:
    """A true/false key whose `false` sets target: value (its `true` is sftforge's default)."""

    def switch(key: str, given: Any, out: dict[str, Any], raw: dict[str, Any], problems: list[str]) -> None:
        if _bool(key, given, problems) is False:
            _set(key, target, value, out, raw, problems)

    return switch


_FLASH_ATTN = {"auto": "auto", "fa2": "flash_attention_2", "sdpa": "sdpa", "disabled": "eager"}


def _flash_attn(key: str, value: Any, out: dict[str, Any], raw: dict[str, Any], problems: list[str]) -> None:
    """LLaMA-Factory's flash_attn: auto | fa2 | sdpa | disabled → attn_implementation."""
    target = _FLASH_ATTN.get(str(value).strip().lower())
    if target is None:
        problems.append(
            f"flash_attn: {value!r} is not one of {', '.join(_FLASH_ATTN)} (LLaMA-Factory's values)."
        )
        return
    _set(key, "attn_implementation", target, out, raw, problems)


def _quantization_method(
    key: str, value: Any, out: dict[str, Any], raw: dict[str, Any], problems: list[str]
) -> None:
    if str(value).strip().lower() not in ("bnb", "bitsandbytes"):
        problems.append(
            f"quantization_method: {value!r} is not supported; sftforge quantizes with bitsandbytes only "
            "(quantization_bit: 4 or 8)."
        )


def _additional_target(
    key: str, value: Any, out: dict[str, Any], raw: dict[str, Any], problems: list[str]
) -> None:
    """LLaMA-Factory's additional_target: 'embed_tokens,lm_head' → modules_to_save: [embed_tokens, lm_head]."""
    names = value.split(",") if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        problems.append(
            f"additional_target: expected module names such as embed_tokens,lm_head, got {value!r}."
        )
        return
    _set(key, "modules_to_save", [n.strip() for n in names if n.strip()], out, raw, problems)


def _packing_strategy(
    key: str, value: Any, out: dict[str, Any], raw: dict[str, Any], problems: list[str]
) -> None:
    """TRL's packing_strategy: bfd is how sftforge packs; wrapped cuts examples apart, which is pretraining."""
    if str(value).strip().lower() != "bfd":
        problems.append(
            f"packing_strategy: {value!r} is not supported; packing: true packs whole examples best-fit (TRL's "
            "bfd). Cutting examples into blocks (wrapped) is stage: pt."
        )


def _accepted(key: str, value: Any, out: dict[str, Any], raw: dict[str, Any], problems: list[str]) -> None:
    """A key whose every value already holds in sftforge (see SWITCHES for why)."""


SWITCHES: dict[str, Switch] = {
    # LLaMA-Factory
    "train_on_prompt": _on_sets("train_on", "all"),
    "mask_history": _on_sets("train_on", "last_assistant"),
    "neat_packing": _on_sets("packing", True),  # sftforge's packing never lets examples attend to each other
    "flash_attn": _flash_attn,
    "quantization_method": _quantization_method,
    "additional_target": _additional_target,
    # the tokenized cache is keyed by content (data, tokenizer, template, options): a change never reads stale rows
    "overwrite_cache": _accepted,
    # TRL: true is sftforge's default (the assistant turns / the completion are trained)
    "assistant_only_loss": _off_sets("train_on", "all"),
    "completion_only_loss": _off_sets("train_on", "all"),
    "packing_strategy": _packing_strategy,
}
# The section each switch's key belongs to (for "did you mean").
SWITCH_SECTIONS = {
    "train_on_prompt": "data",
    "mask_history": "data",
    "neat_packing": "data",
    "flash_attn": "model",
    "quantization_method": "peft",
    "additional_target": "peft",
    "overwrite_cache": "data",
    "assistant_only_loss": "data",
    "completion_only_loss": "data",
    "packing_strategy": "data",
}

_DEEPSPEED_NAME = re.compile(r"^(ds_)?z(ero)?_?([0-3])(_offload)?(_config)?$")


def check_migrated(values: dict[str, dict[str, Any]], problems: list[str]) -> None:
    """After coercion: `new_special_tokens: '<a>,<b>'` → a list; a DeepSpeed stage name where a JSON file goes."""
    model, train = values["model"], values["training"]
    tokens = model.get("new_special_tokens")
    if tokens is not None:
        parts = [t.strip() for item in tokens for t in str(item).split(",")]
        model["new_special_tokens"] = list(dict.fromkeys(t for t in parts if t)) or None
    ds = train.get("deepspeed")
    if isinstance(ds, str) and (Path(ds).is_file() or shipped_deepspeed_json(ds) is not None):
        return  # a file, or a shipped name (zero2, zero3, zero3_offload): validate resolves it
    match = _DEEPSPEED_NAME.match(str(ds).strip().lower()) if isinstance(ds, str) else None
    if match:
        stage = match.group(3)
        launch = f"zero{stage}" + ("_offload" if match.group(4) and stage == "3" else "")
        if stage in ("2", "3"):
            fix = (
                f"deepspeed: {launch} (the shipped JSON) or accelerate_config: {launch} (sftforge launches "
                f"through accelerate with DeepSpeed ZeRO-{stage})"
            )
        else:
            fix = "accelerate_config: ddp (ZeRO stages 0 and 1 shard little; plain DDP is the shipped choice)"
        problems.append(
            f"deepspeed: {ds!r} is a stage name sftforge does not ship; use {fix}, or a DeepSpeed JSON file."
        )
