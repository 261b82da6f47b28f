"""Evaluation items from the examples training builds: the same reader, formats, chat template, masks and
truncation (`prepare_data` + `tokenize_spec`), so the loss uses training's masks and each generation prompt is,
token for token, what training put before the last trained turn."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sftforge.data.masking import IGNORE_INDEX

# The data options of a training run that decide tokens and masks; read from the model's sftforge_config.yaml
DATA_OPTIONS = ("max_length", "train_on", "train_on_reasoning", "multi_turn", "truncation")


@dataclass
class EvalItem:
    prompt_ids: list[int]  # input_ids before the last trained run
    reference_ids: list[int]  # the last trained run without its end-of-turn token(s)
    reference: str  # reference_ids decoded
    source: str  # file:line of the row


def last_trained_run(labels: Sequence[int]) -> tuple[int, int] | None:
    """[start, end) of the last run of trained labels (labels != -100); None when nothing is trained."""
    end = len(labels)
    while end > 0 and labels[end - 1] == IGNORE_INDEX:
        end -= 1
    if end == 0:
        return None
    start = end
    while start > 0 and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return start, end


def decode(tokenizer: Any, ids: Sequence[int]) -> str:
    """How references and predictions are both turned into text for the metrics."""
    return tokenizer.decode(list(ids), skip_special_tokens=True).strip()


def item_from_example(
    input_ids: Sequence[int], labels: Sequence[int], tokenizer: Any, end_ids: Sequence[int], source: str = ""
) -> EvalItem | None:
    """The prompt is everything before the last trained run; the reference is that run minus the trailing
    end-of-turn ids (generation stops on them, so a prediction never contains them). None: nothing trained,
    or no prompt before the trained run."""
    run = last_trained_run(labels)
    if run is None:
        return None
    start, end = run
    if start == 0:  # nothing before the trained run (e.g. plain text): no prompt to answer
        return None
    reference = list(input_ids[start:end])
    while reference and reference[-1] in end_ids:
        reference.pop()
    return EvalItem(list(input_ids[:start]), reference, decode(tokenizer, reference), source)


def items_from_features(
    features: Sequence[dict[str, Any]], tokenizer: Any, end_ids: Sequence[int]
) -> list[EvalItem]:
    """Items from `{"input_ids", "labels"}` dicts (the Trainer's eval dataset) or Example-like objects."""
    items = []
    for f in features:
        ids, labels = (f["input_ids"], f["labels"]) if isinstance(f, dict) else (f.input_ids, f.labels)
        item = item_from_example(ids, labels, tokenizer, end_ids, getattr(f, "source", ""))
        if item is not None:
            items.append(item)
    return items


def trained_data_options(model_dir: str | Path) -> dict[str, Any]:
    """The data options the model was trained with (from its sftforge_config.yaml), so evaluation tokenizes
    and masks the same way. {} for a folder sftforge did not write. train_on: all (inputs trained too) is
    replaced by all_assistant: evaluation measures the assistant tokens."""
    path = Path(model_dir) / "sftforge_config.yaml"
    if not path.is_file():
        return {}
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        return {}
    data = doc.get("data", doc) if isinstance(doc, dict) else {}
    options = {k: data[k] for k in DATA_OPTIONS if isinstance(data, dict) and data.get(k) is not None}
    if options.get("train_on") == "all":
        options["train_on"] = "all_assistant"
    return options


def data_overrides(
    tokenizer_dir: str, data: Sequence[str], options: dict[str, Any], chat_template: str | None = None
) -> list[str]:
    """Command-line overrides for `load_config`: every row of `data` becomes one (unshuffled) training row."""
    argv = ["--model_name_or_path", tokenizer_dir, "--train_data_path", _as_list(data)]
    argv += ["--eval_split_ratio", "0", "--preprocessing_cache", "false", "--report_to", "none"]
    # Evaluation lists its rows dropped for length as notes instead of stopping
    argv += ["--max_dropped_fraction", "1.0"]
    if chat_template:
        argv += ["--chat_template", chat_template]
    for key, value in options.items():
        argv += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    return argv


def _as_list(data: Sequence[str]) -> str:
    import json

    return json.dumps(list(data))


def prepare_eval_examples(
    tokenizer_dir: str,
    data: Sequence[str],
    options: dict[str, Any],
    max_samples: int | None = None,
    chat_template: str | None = None,
) -> tuple[Any, list[Any], Any]:
    """(TokenizerBundle, examples, DataStats) — the rows of `data` tokenized exactly as `sftforge train` does
    with these data options, in file order, none held out."""
    from sftforge.config import load_config
    from sftforge.train.run import prepare_tokenized_data

    argv = data_overrides(tokenizer_dir, data, options, chat_template)
    if max_samples:
        argv += ["--max_samples", str(max_samples)]
    cfg = load_config(None, argv)
    bundle, prepared = prepare_tokenized_data(cfg)
    return bundle, prepared.train, prepared.train_stats
