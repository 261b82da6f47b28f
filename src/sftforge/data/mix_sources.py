"""The sources of `datasets:` (several training sets mixed into one), validated once with exact keys.

`parse_mix_sources` turns the recipe's list into `MixSource`s or a ConfigError naming `datasets[2].weight` and the
like; `resolve_strategy` settles `mix_strategy: auto`. The plan itself is data/mixing.py's.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from typing import Any

from sftforge.config.loader import ALIASES, data_paths_missing
from sftforge.errors import ConfigError

STRATEGIES = ("concat", "interleave_under", "interleave_over")
MIX_BY = ("examples", "tokens")
SOURCE_KEYS = (
    "path",
    "dataset_name",
    "dataset_config",
    "split",
    "name",
    "weight",
    "max_samples",
    "epochs",
    "max_tokens",
    "columns",
    "tags",
)
# Names a source may also be written with: the top-level keys' (and their ALIASES'), and LLaMA-Factory's
# dataset_info.json entry keys, so an entry can be copied over.
_SOURCE_ALIASES = {
    "train_data_path": "path",
    "dataset_train_split": "split",
    "file_name": "path",
    "hf_hub_url": "dataset_name",
    "subset": "dataset_config",
    "num_samples": "max_samples",
    "probability": "weight",
}
SIZES = ("max_samples", "epochs", "max_tokens")


@dataclass(frozen=True)
class MixSource:
    """One source of `datasets:`, validated. At most one of max_samples / epochs / max_tokens is set."""

    name: str
    path: tuple[str, ...] | None = None
    dataset_name: str | None = None
    dataset_config: str | None = None
    split: str = "train"
    weight: float | None = None
    max_samples: int | None = None
    epochs: float | None = None
    max_tokens: int | None = None
    columns: dict[str, str] | None = field(default=None, compare=False)
    tags: dict[str, str] | None = field(default=None, compare=False)


def parse_mix_sources(
    raw: Any,
    interleave_probs: list[float] | str | None = None,
    *,
    columns: dict[str, str] | None = None,
    tags: dict[str, str] | None = None,
    check_paths: bool = True,
) -> list[MixSource]:
    """The recipe's `datasets:` list → MixSources, or ConfigError listing every problem. `interleave_probs` (a
    list or LLaMA-Factory's "0.7,0.3") gives the weights in order; top-level `columns`/`tags` apply to the sources
    that set none of their own."""
    problems: list[str] = []
    if not isinstance(raw, list) or not raw:
        raise ConfigError(
            f"datasets: expected a non-empty list of sources, each a mapping like {{path: a.jsonl, weight: 0.7}}, "
            f"got {raw!r}."
        )
    sources = [_parse_source(item, i, columns, tags, check_paths, problems) for i, item in enumerate(raw)]
    weights = _weights(sources, interleave_probs, problems)
    if problems:
        raise ConfigError(problems)
    ok = [s for s in sources if s is not None]
    if weights is not None:
        ok = [_with_weight(s, w) for s, w in zip(ok, weights, strict=True)]
    return ok


def _with_weight(source: MixSource, weight: float) -> MixSource:
    return dataclasses.replace(source, weight=weight)


def _parse_source(
    item: Any,
    i: int,
    columns: dict[str, str] | None,
    tags: dict[str, str] | None,
    check_paths: bool,
    problems: list[str],
) -> MixSource | None:
    where = f"datasets[{i}]"
    if isinstance(item, str):  # `datasets: [a.jsonl, b.jsonl]`: each source as it is
        item = {"path": item}
    if not isinstance(item, dict):
        problems.append(f"{where}: expected a mapping like {{path: a.jsonl, weight: 0.7}}, got {item!r}.")
        return None
    before = len(problems)
    values: dict[str, Any] = {}
    for key, value in item.items():
        name = _SOURCE_ALIASES.get(ALIASES.get(key, key), ALIASES.get(key, key))
        if name == "formatting":  # LLaMA-Factory's alpaca/sharegpt/openai: sftforge detects it per row
            continue
        if name not in SOURCE_KEYS:
            close = difflib.get_close_matches(str(key), SOURCE_KEYS, n=1, cutoff=0.6)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            problems.append(f"{where}.{key}: unknown key.{hint} A source takes: {', '.join(SOURCE_KEYS)}.")
            continue
        if name in values:
            problems.append(f"{where}.{key}: sets {name} a second time; keep one.")
            continue
        values[name] = value
    path = _paths(values.get("path"), f"{where}.path", check_paths, problems)
    hub = values.get("dataset_name")
    if ("path" in values) == ("dataset_name" in values):
        problems.append(
            f"{where}: give exactly one of path (a file, folder, glob or list) or dataset_name (a hub name or a "
            "save_to_disk folder)."
        )
    if hub is not None and not isinstance(hub, str):
        problems.append(f"{where}.dataset_name: expected a string, got {hub!r}.")
    for key in ("dataset_config", "split", "name"):
        if key in values and not isinstance(values[key], str):
            problems.append(f"{where}.{key}: expected a string, got {values[key]!r}.")
    weight = _number(values.get("weight"), f"{where}.weight", float, problems)
    sizes = {k: values[k] for k in SIZES if values.get(k) is not None}
    if len(sizes) > 1:
        problems.append(
            f"{where}: {' and '.join(sizes)} both size the source (max_samples: a count, epochs: passes over it, "
            "max_tokens: a trained-token budget); keep one."
        )
    max_samples = _number(values.get("max_samples"), f"{where}.max_samples", int, problems)
    epochs = _number(values.get("epochs"), f"{where}.epochs", float, problems)
    max_tokens = _number(values.get("max_tokens"), f"{where}.max_tokens", int, problems)
    own_columns, own_tags = values.get("columns"), values.get("tags")
    if own_columns is None and own_tags is None:
        own_columns, own_tags, prefix = columns, tags, ""
    else:
        prefix = f"{where}."
    from sftforge.data.columns import compile_columns

    try:
        compile_columns(own_columns, own_tags, where=prefix)
    except ConfigError as e:
        problems.extend(e.problems if prefix else [])  # top-level columns/tags are checked at their own key
    if len(problems) > before:
        return None
    name = values.get("name") or (_path_name(path) if path else _hub_name(hub, values))
    return MixSource(
        name=name,
        path=path,
        dataset_name=hub,
        dataset_config=values.get("dataset_config"),
        split=values.get("split", "train"),
        weight=weight,
        max_samples=max_samples,
        epochs=epochs,
        max_tokens=max_tokens,
        columns=own_columns,
        tags=own_tags,
    )


def _paths(value: Any, key: str, check: bool, problems: list[str]) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(p, str) and p for p in items):
        problems.append(f"{key}: expected a file, folder or glob, or a list of them, got {value!r}.")
        return None
    for missing in data_paths_missing(items) if check else []:
        problems.append(f"{key}: {missing!r} does not exist (checked relative to the working directory).")
    return tuple(items)


def _number(value: Any, key: str, kind: type, problems: list[str]) -> Any:
    if value is None:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind is int and ok and float(value).is_integer():
        value = int(value)
    elif kind is int:
        ok = False
    if not ok or value <= 0:
        what = "a whole number" if kind is int else "a number"
        fix = (
            "its share, e.g. 0.7; leave a source out by removing it"
            if key.endswith(".weight")
            else "remove the key to take the source as it is"
        )
        problems.append(f"{key}: {value!r} must be {what} above 0 ({fix}).")
        return None
    return kind(value)


def _path_name(path: tuple[str, ...]) -> str:
    return path[0] if len(path) == 1 else f"{path[0]} (+{len(path) - 1} more)"


def _hub_name(hub: Any, values: dict[str, Any]) -> str:
    config = f"/{values['dataset_config']}" if values.get("dataset_config") else ""
    split = values.get("split", "train")
    return f"{hub}{config}" + ("" if split == "train" else f":{split}")


def _weights(
    sources: list[MixSource | None], probs: list[float] | str | None, problems: list[str]
) -> list[float] | None:
    """Weights from interleave_probs, checked against the sources' own (all or none must have one)."""
    given = [s is not None and s.weight is not None for s in sources]
    if any(given) and not all(given) and all(s is not None for s in sources):
        missing = [i for i, g in enumerate(given) if not g]
        problems.append(
            f"datasets[{missing[0]}].weight: some sources have a weight and this one has none; give every "
            "source a weight, or none (then mix_strategy: concat uses each source as sized)."
        )
    if probs is None:
        return None
    if any(given):
        problems.append("interleave_probs: the sources have their own weight too; keep one of the two.")
        return None
    values = _parse_probs(probs, problems)
    if values is None:
        return None
    if len(values) != len(sources):
        problems.append(
            f"interleave_probs: {len(values)} value(s) for {len(sources)} source(s) in datasets; give one per "
            "source, in order."
        )
        return None
    return values


def _parse_probs(probs: list[float] | str, problems: list[str]) -> list[float] | None:
    parts = probs.split(",") if isinstance(probs, str) else probs
    out: list[float] = []
    for k, part in enumerate(parts):
        try:
            value = float(part.strip() if isinstance(part, str) else part)
        except (TypeError, ValueError):
            problems.append(f"interleave_probs: item {k} ({part!r}) is not a number; write e.g. 0.7,0.3.")
            return None
        if not (math.isfinite(value) and value > 0):
            problems.append(f"interleave_probs: item {k} ({value:g}) must be above 0.")
            return None
        out.append(value)
    return out


def resolve_strategy(strategy: str, sources: list[MixSource]) -> str:
    """`auto` → concat without weights, interleave_under with them; concat with weights is refused."""
    weighted = any(s.weight is not None for s in sources)
    if strategy == "auto":
        return "interleave_under" if weighted else "concat"
    if strategy not in STRATEGIES:
        raise ConfigError(f"mix_strategy: {strategy!r} is not one of auto, {', '.join(STRATEGIES)}.")
    if strategy == "concat" and weighted:
        raise ConfigError(
            "mix_strategy: concat takes every source as sized (max_samples / epochs / max_tokens) and ignores "
            "weights; use interleave_under or interleave_over with weights, or remove them."
        )
    return strategy
