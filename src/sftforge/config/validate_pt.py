"""Checks for pretraining and training from scratch: `stage: pt`, its data keys, `config_name`/`config_overrides`.

Run first by `check_and_resolve`, because it turns `validation_split_percentage` into `eval_split_ratio` and
turns packing on for stage pt before the generic checks read them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PT_ONLY_KEYS = ("txt_documents", "drop_last_block", "document_isolation")
_DEFAULTS = {"txt_documents": "line", "drop_last_block": False, "document_isolation": False}  # DataArguments'
# Files that hold a model's weights; a folder with a config.json and none of these is a config only.
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.index.json", "*.gguf", "*.h5", "*.msgpack")


def config_only_folder(name: str) -> bool:
    """A local folder with a config.json but no weights (e.g. a config written for training from scratch)."""
    path = Path(name).expanduser()
    if not (path.is_dir() and (path / "config.json").is_file()):
        return False
    return not any(next(path.glob(pattern), None) for pattern in WEIGHT_PATTERNS)


def parse_overrides(text: str) -> dict[str, str]:
    """'a=1,b=x' → {'a': '1', 'b': 'x'} (values stay text: the config's own types convert them, as run_clm.py's
    `update_from_string`). Raises ValueError naming the bad part."""
    out: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, eq, value = part.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise ValueError(f"{part!r} is not key=value")
        out[key.strip()] = value.strip()
    return out


def check_pretraining(
    values: dict[str, dict[str, Any]], explicit: set[str], problems: list[str]
) -> list[str]:
    model, data = values["model"], values["data"]
    notes: list[str] = []
    notes += _check_from_scratch(model, problems)
    pct = data.pop("validation_split_percentage", None)
    if pct is not None:
        if "eval_split_ratio" in explicit:
            problems.append(
                "validation_split_percentage and eval_split_ratio set the same hold-out (percent and fraction); "
                "keep one."
            )
        elif not 0.0 <= pct < 100.0:
            problems.append(
                f"validation_split_percentage: {pct} must be in [0, 100), e.g. 5 to hold out 5% of the rows."
            )
        else:
            data["eval_split_ratio"] = pct / 100.0
    stage = data.get("stage", "sft")
    if stage == "sft":
        for key in PT_ONLY_KEYS:
            # A written-back config lists every data key with its default: only a value that does something counts
            if key in explicit and data.get(key, _DEFAULTS[key]) != _DEFAULTS[key]:
                problems.append(
                    f"{key}: applies to pretraining only; set stage: pt (or auto), or remove {key}."
                )
        return notes
    if stage == "pt" and "packing" not in explicit:
        data["packing"] = True  # the point of pt: documents concatenated into full blocks
    if stage == "pt" and data.get("document_isolation") and not data.get("packing"):
        problems.append(
            "document_isolation: with pack: false every example is one document already; remove "
            "document_isolation or use pack: true (documents concatenated into blocks)."
        )
    if stage == "pt":
        how = (
            "each document alone, cut at max_length (pack: false)"
            if not data.get("packing")
            else "documents + eos concatenated into blocks of max_length"
            + (", each attending only to its own document" if data.get("document_isolation") else "")
        )
        notes.append(f"stage: pt — {how}; every token trained")
    return notes


def _check_from_scratch(model: dict[str, Any], problems: list[str]) -> list[str]:
    name = model.get("model_name_or_path")
    notes: list[str] = []
    if name and not model.get("config_name") and config_only_folder(name):
        # Chosen over refusing: the folder says what to build, and nothing else could be meant by it.
        model["config_name"] = model.pop("model_name_or_path")
        notes.append(
            f"model: {name} has a config.json but no weights, so it is read as config_name: a randomly "
            "initialised model is built from it"
        )
    config_name = model.get("config_name")
    if config_name and model.get("model_name_or_path"):
        problems.append(
            "config_name and model_name_or_path are both set: config_name builds a randomly initialised model from "
            "a config (training from scratch), model_name_or_path loads trained weights. Keep one (the tokenizer "
            "goes in tokenizer_name_or_path)."
        )
    if config_name:
        local = Path(config_name).expanduser()
        if local.is_dir() and not (local / "config.json").is_file():
            problems.append(f"config_name: {config_name!r} is a folder without a config.json.")
        elif not local.exists() and (config_name.startswith((".", "/", "~")) or config_name.count("/") > 1):
            problems.append(
                f"config_name: {config_name!r} does not exist (a folder with a config.json or a hub id)."
            )
    overrides = model.get("config_overrides")
    if overrides and not config_name:
        problems.append(
            "config_overrides: applies to a model built from config_name (training from scratch); set config_name, "
            "or remove config_overrides."
        )
    elif overrides:
        try:
            parse_overrides(overrides)
        except ValueError as e:
            problems.append(
                f"config_overrides: {e}; write comma-separated pairs like 'num_hidden_layers=4,hidden_size=256'."
            )
    return notes
