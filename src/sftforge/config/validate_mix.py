"""Checks for other key names (`columns`, `tags`) and several mixed sources (`datasets`, `mix_strategy`,
`interleave_probs`, `mix_by`). The rules themselves live with the code that applies them (data/columns.py,
data/mix_sources.py: import-light), so config time and run time cannot disagree."""

from __future__ import annotations

from typing import Any

from sftforge.errors import ConfigError

_MIX_DEFAULTS = {"mix_strategy": "auto", "mix_by": "examples"}  # DataArguments'


def check_mixing(values: dict[str, dict[str, Any]], explicit: set[str], problems: list[str]) -> list[str]:
    from sftforge.data.columns import compile_columns

    data = values["data"]
    try:
        compile_columns(data.get("columns"), data.get("tags"), preference=data.get("stage") in ("dpo", "kto"))
    except ConfigError as e:
        problems.extend(e.problems)
    if data.get("stage") == "pt" and (data.get("columns") or data.get("tags")):
        problems.append(
            "columns/tags: rename conversation keys (stage: sft); with stage: pt the document's key is text_column."
        )
    raw = data.get("datasets")
    if raw is None:
        if data.get("interleave_probs") is not None:
            problems.append(
                "interleave_probs: weighs the sources listed under `datasets:`, and there is none; list the "
                "sources under datasets (each {path: …}) or remove interleave_probs."
            )
        for key, default in _MIX_DEFAULTS.items():
            if key in explicit and data.get(key, default) != default:
                problems.append(f"{key}: applies to the sources under `datasets:`; add them or remove {key}.")
        return []
    for key in ("train_data_path", "dataset_name", "max_samples"):
        if data.get(key) is not None:
            what = "max_samples per source" if key == "max_samples" else "each source's path or dataset_name"
            problems.append(f"datasets: replaces {key}; keep one (with datasets, set {what}).")
    from sftforge.data.mix_sources import parse_mix_sources, resolve_strategy

    if data.get("stage", "sft") != "sft":
        problems.append("datasets: mixing applies to stage: sft for now; use train_data_path for stage pt.")
    try:
        sources = parse_mix_sources(
            raw, data.get("interleave_probs"), columns=data.get("columns"), tags=data.get("tags")
        )
        strategy = resolve_strategy(data.get("mix_strategy", "auto"), sources)
    except ConfigError as e:
        problems.extend(e.problems)
        return []
    if data.get("interleave_probs") is not None:  # written back as the list it was read as
        data["interleave_probs"] = [s.weight for s in sources]
    by = data.get("mix_by", "examples")
    return [f"data mix: {len(sources)} sources, {strategy} by {by}"]
