"""LLaMA-Factory's dataset registry: `dataset: a,b` + `dataset_dir` (holding `dataset_info.json`) → sftforge's data keys.

Each entry {file_name | hf_hub_url, subset, split, num_samples, formatting, columns, tags} becomes a source: one
name sets train_data_path (or dataset_name) with `columns` / `tags`; several names become `datasets:` mixture
entries (mix_strategy and interleave_probs keep their LLaMA-Factory meaning). `eval_dataset` names give
eval_data_path. Paths are resolved against dataset_dir, as LLaMA-Factory does; the registry is read once, at
config time, so every problem is reported with the recipe's other problems.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

REGISTRY = "dataset_info.json"
DEFAULT_DIR = "data"  # LLaMA-Factory's default dataset_dir
KEYS = ("dataset", "dataset_dir", "eval_dataset")
_ENTRY_KEYS = {
    "file_name", "hf_hub_url", "subset", "split", "num_samples", "formatting", "columns", "tags", "ranking",
}  # fmt: skip
_RANKING = (
    "a preference dataset (chosen/rejected answers): train it with stage: dpo (stage: kto for rows with a "
    "kto_tag), not stage: {stage}"
)
_FORMATTINGS = ("alpaca", "sharegpt", "openai")  # sftforge detects the format of each row itself
_UNSUPPORTED = {
    "ms_hub_url": "ModelScope is not supported; download the data and give file_name",
    "om_hub_url": "Modelers is not supported; download the data and give file_name",
    "script_url": "dataset loading scripts are not supported; give file_name or hf_hub_url",
    "cloud_file_name": "cloud storage is not supported; download the file and give file_name",
    "folder": "a sub-folder of a hub dataset is not supported; download it and give file_name",
}


def expand_named_datasets(values: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    """Replace `dataset` / `dataset_dir` / `eval_dataset` in the recipe's values by the keys they stand for."""
    if not any(k in values for k in KEYS):
        return values
    out = {k: v for k, v in values.items() if k not in KEYS}
    if "dataset" not in values and "eval_dataset" not in values:
        problems.append("dataset_dir: names the folder of dataset_info.json for `dataset`, which is not set.")
        return out
    folder = Path(str(values.get("dataset_dir") or DEFAULT_DIR)).expanduser()
    online = str(values.get("dataset_dir", "")).upper() == "ONLINE"  # LLaMA-Factory: names are hub ids
    registry = {} if online else _read_registry(folder, problems)
    if registry is None:
        return out
    stage = str(values.get("stage", "sft")).lower()
    pretraining = stage == "pt"
    if stage not in ("dpo", "kto"):  # LLaMA-Factory marks pairwise data with `ranking: true`
        for name in _names(values.get("dataset", []), "dataset", []):
            if isinstance(registry.get(name), dict) and registry[name].get("ranking"):
                problems.append(
                    f"dataset: {name!r} ({folder / REGISTRY}): ranking: {_RANKING.format(stage=stage)}."
                )
    if "dataset" in values:
        sources = _sources(values["dataset"], "dataset", registry, folder, online, problems)
        if sources:
            _train_keys(sources, out, pretraining, problems)
    if "eval_dataset" in values:
        sources = _sources(values["eval_dataset"], "eval_dataset", registry, folder, online, problems)
        if sources:
            _eval_keys(sources, out, pretraining, problems)
    return out


def _read_registry(folder: Path, problems: list[str]) -> dict[str, Any] | None:
    path = folder / REGISTRY
    if not path.is_file():
        problems.append(
            f"dataset: names are looked up in {path} (LLaMA-Factory's registry; dataset_dir: {folder}), which does "
            "not exist. Set dataset_dir to the folder holding dataset_info.json, or give the files with "
            "train_data_path."
        )
        return None
    try:
        registry = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        problems.append(f"{path}: not valid JSON ({e}).")
        return None
    if not isinstance(registry, dict):
        problems.append(f"{path}: expected a mapping of dataset name → entry, got {type(registry).__name__}.")
        return None
    return registry


def _names(value: Any, key: str, problems: list[str]) -> list[str]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(n, str) for n in items):
        problems.append(
            f"{key}: expected dataset names, e.g. alpaca_en_demo,identity or a list, got {value!r}."
        )
        return []
    names = [n.strip() for n in items if n.strip()]
    if not names:
        problems.append(f"{key}: empty; name at least one dataset of dataset_info.json.")
    return names


def _sources(
    value: Any, key: str, registry: dict[str, Any], folder: Path, online: bool, problems: list[str]
) -> list[dict[str, Any]]:
    """Each named entry as a `datasets:` source (path or dataset_name, ...); [] when any is unusable."""
    sources = []
    before = len(problems)
    for name in _names(value, key, problems):
        if online:
            sources.append({"name": name, "dataset_name": name})
            continue
        entry = registry.get(name)
        if entry is None:
            close = difflib.get_close_matches(name, list(registry), n=1, cutoff=0.6)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            known = ", ".join(list(registry)[:12]) + (", ..." if len(registry) > 12 else "")
            problems.append(
                f"{key}: {name!r} is not in {folder / REGISTRY}.{hint} Registered: {known or 'none'}."
            )
            continue
        source = _source(name, entry, key, folder, problems)
        if source is not None:
            sources.append(source)
    return sources if len(problems) == before else []


def _source(name: str, entry: Any, key: str, folder: Path, problems: list[str]) -> dict[str, Any] | None:
    where = f"{key}: {name!r} ({folder / REGISTRY})"
    if not isinstance(entry, dict):
        problems.append(f'{where}: expected an entry like {{"file_name": "data.json"}}, got {entry!r}.')
        return None
    before = len(problems)
    for field_name, why in _UNSUPPORTED.items():
        if entry.get(field_name) and not (field_name.endswith("hub_url") and "hf_hub_url" in entry):
            problems.append(f"{where}: {field_name}: {why}.")
    for field_name in entry.keys() - _ENTRY_KEYS - _UNSUPPORTED.keys():
        problems.append(
            f"{where}: unknown entry key {field_name!r}; sftforge reads {', '.join(sorted(_ENTRY_KEYS))}."
        )
    formatting = str(entry.get("formatting", "alpaca")).lower()
    if formatting not in _FORMATTINGS:
        problems.append(f"{where}: formatting: {formatting!r} is not one of {', '.join(_FORMATTINGS)}.")
    if ("file_name" in entry) == ("hf_hub_url" in entry):
        problems.append(
            f"{where}: give exactly one of file_name (a file or folder in dataset_dir) or hf_hub_url."
        )
    if len(problems) > before:
        return None
    source: dict[str, Any] = {"name": name}
    if "file_name" in entry:
        path = folder / str(entry["file_name"])  # an absolute file_name stays as it is
        if not path.exists():
            problems.append(f"{where}: file_name {str(path)!r} does not exist.")
            return None
        source["path"] = str(path)
    else:
        source["dataset_name"] = entry["hf_hub_url"]
        source.update({k: entry[k] for k in ("subset", "split") if k in entry})
    source.update({k: entry[k] for k in ("columns", "tags", "num_samples") if entry.get(k)})
    return source


def _train_keys(
    sources: list[dict[str, Any]], out: dict[str, Any], pretraining: bool, problems: list[str]
) -> None:
    taken = [k for k in ("train_data_path", "dataset_name", "datasets") if k in out]
    if taken:
        problems.append(f"dataset and {taken[0]} both name the training data; keep one.")
        return
    if pretraining:
        _pretraining_keys(sources, out, "train_data_path", problems)
    elif len(sources) == 1:
        _single_source(sources[0], out, problems)
    else:  # a mixture; LLaMA-Factory's max_samples caps each dataset
        cap = out.pop("max_samples", None)
        if cap is not None and _smallest(cap) is None and str(cap).strip() != "0":
            problems.append(f"max_samples: expected a whole number of rows per dataset, got {cap!r}.")
        entries = []
        for s in sources:
            entry = {k: v for k, v in s.items() if k != "num_samples"}
            size = _smallest(s.get("num_samples"), cap)
            if size is not None:
                entry["max_samples"] = size
            entries.append(entry)
        out["datasets"] = entries


def _single_source(source: dict[str, Any], out: dict[str, Any], problems: list[str]) -> None:
    for key in ("columns", "tags"):
        if key in source and key in out:
            problems.append(
                f"dataset: {source['name']!r} has its own {key} in dataset_info.json; remove {key} here."
            )
            return
        if key in source:
            out[key] = source[key]
    if "path" in source:
        out["train_data_path"] = [source["path"]]
    else:
        out["dataset_name"] = source["dataset_name"]
        if "subset" in source:
            out["dataset_config"] = source["subset"]
        if "split" in source:
            out["dataset_train_split"] = source["split"]
    size = _smallest(source.get("num_samples"), out.get("max_samples"))
    if size is not None:
        out["max_samples"] = size


def _pretraining_keys(
    sources: list[dict[str, Any]], out: dict[str, Any], key: str, problems: list[str]
) -> None:
    """stage: pt: files holding documents; LLaMA-Factory names the document's key with columns: {prompt: KEY}."""
    columns = set()
    for s in sources:
        mapping = dict(s.get("columns") or {})
        extra = set(mapping) - {"prompt"}
        if "path" not in s or extra or s.get("tags"):
            why = "hub datasets: download them" if "path" not in s else f"columns {sorted(extra)} or tags"
            problems.append(
                f"{key}: {s['name']!r}: stage: pt reads documents from files with columns {{prompt: KEY}} at most "
                f"(not {why})."
            )
            return
        columns.add(mapping.get("prompt", "text"))
    if len(columns) > 1:
        problems.append(
            f"{key}: the datasets name different document keys ({', '.join(sorted(columns))}); use one."
        )
        return
    text_column = columns.pop()
    if out.get("text_column", text_column) != text_column:
        problems.append(
            f"text_column: {out['text_column']!r}, but dataset_info.json says {text_column!r}; keep one."
        )
        return
    out[key] = [s["path"] for s in sources]
    if text_column != "text":
        out["text_column"] = text_column


def _eval_keys(
    sources: list[dict[str, Any]], out: dict[str, Any], pretraining: bool, problems: list[str]
) -> None:
    if "eval_data_path" in out:
        problems.append("eval_dataset and eval_data_path both name the evaluation data; keep one.")
        return
    if pretraining:
        _pretraining_keys(sources, out, "eval_data_path", problems)
        return
    for s in sources:
        if "path" not in s:
            problems.append(
                f"eval_dataset: {s['name']!r} is a hub dataset; evaluation data comes from files (eval_data_path) "
                "or from the training dataset's split (dataset_test_split)."
            )
            return
        for key in ("columns", "tags"):
            if s.get(key) != out.get(key):
                problems.append(
                    f"eval_dataset: {s['name']!r} has other {key} than the training data ({s.get(key)} vs "
                    f"{out.get(key)}); evaluation rows are read with the training data's {key}."
                )
                return
    out["eval_data_path"] = [s["path"] for s in sources]


def _smallest(*sizes: Any) -> int | None:
    """The smallest positive size given (num_samples, max_samples: numbers, or text from the command line)."""
    given = []
    for size in sizes:
        try:
            value = int(str(size)) if not isinstance(size, bool) and size is not None else 0
        except ValueError:
            continue  # not a count: the key's own check reports it
        if value > 0:
            given.append(value)
    return min(given) if given else None
