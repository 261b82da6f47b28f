"""`sftforge eval MODEL_DIR --data test.jsonl [--base BASE_DIR]`: loss and perplexity with training's masks,
greedy answers to the last trained turn scored by exact match, ROUGE-L and BLEU; base vs tuned side by side.
Writes eval.json and predictions.jsonl."""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftforge.errors import ConfigError, DataError

METRIC_ROWS = (  # (key, label, format)
    ("examples", "examples", "{:d}"),
    ("loss", "loss (assistant tokens)", "{:.4f}"),
    ("perplexity", "perplexity", "{:.3f}"),
    ("exact_match", "exact match", "{:.1%}"),
    ("rouge_l", "ROUGE-L", "{:.1%}"),
    ("bleu", "BLEU-4", "{:.1%}"),
    ("pred_tokens_mean", "answer tokens (mean)", "{:.1f}"),
    ("ref_tokens_mean", "reference tokens (mean)", "{:.1f}"),
    ("length_ratio", "length ratio", "{:.2f}"),
    ("unfinished", "hit max_new_tokens", "{:.1%}"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="the output_dir of `sftforge train` (full, merged or LoRA folder)")
    parser.add_argument("--data", nargs="+", required=True,
                        help="evaluation data: files (.json/.jsonl/.parquet/.csv), directories or globs, in any "
                             "format `sftforge train` reads")  # fmt: skip
    parser.add_argument("--base", help="a base model folder to compare with, side by side (also the base of a "
                                       "LoRA folder whose adapter_config.json points elsewhere)")  # fmt: skip
    parser.add_argument("--output_dir", help="where eval.json and predictions.jsonl go (default: MODEL/eval)")
    parser.add_argument("--max_samples", type=int, help="evaluate at most this many rows (default: all)")
    parser.add_argument("--max_new_tokens", type=int, default=128, help="answer length limit (default 128)")
    parser.add_argument("--batch_size", type=int, default=16, help="examples per forward/generate batch")
    parser.add_argument("--max_length", type=int,
                        help="maximum tokens per example (default: the model's training max_length, else 1024)")  # fmt: skip
    parser.add_argument("--no_generation", action="store_true", help="loss and perplexity only")
    parser.add_argument("--dtype", default="auto", help="auto (float32 on CPU), float32, bfloat16, float16")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 … (default: cuda when there is one)")
    parser.add_argument("--trust_remote_code", action="store_true", help="run code shipped with a hub model")


@dataclass
class ModelEval:
    """One model's results: metrics, and per example (keyed by source) its prompt, reference and prediction."""

    metrics: dict[str, Any]
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    out = Path(args.output_dir) if args.output_dir else _default_output_dir(args.model)
    options = _options(args)
    tuned = evaluate_model(args, args.model, options, base=args.base, label="tuned")
    base = None
    if args.base:
        with _with_template(args.base, tuned.template) as (base_path, note):
            base = evaluate_model(args, base_path, options, label="base", extra_stops=note and tuned.stop_ids)
            if note:
                base.result.notes.append(note)
    results = {"tuned": tuned.result, **({"base": base.result} if base else {})}
    write_outputs(out, args, results)
    for name, result in results.items():
        for note in result.notes:
            print(f"sftforge eval: {name}: {note}", flush=True)
    print(format_table({k: v.metrics for k, v in results.items()}))
    print(f"\nwrote {out / 'eval.json'} and {out / 'predictions.jsonl'}")
    return 0


def _check_args(args: argparse.Namespace) -> None:
    from sftforge.config.loader import data_paths_missing

    missing = data_paths_missing(args.data)
    if missing:
        raise DataError(
            f"--data: {', '.join(map(repr, missing))} does not exist (checked relative to {Path.cwd()}). Give "
            "a .json/.jsonl/.parquet/.csv file, a directory or a glob."
        )
    for name in ("max_samples", "max_new_tokens", "batch_size", "max_length"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name}: must be at least 1 (got {value}).", source="sftforge eval")


def _default_output_dir(model: str) -> Path:
    return Path(model) / "eval" if Path(model).is_dir() else Path("outputs") / "eval"


def _options(args: argparse.Namespace) -> dict[str, Any]:
    from sftforge.eval.examples import trained_data_options

    options = trained_data_options(args.model)  # the tuned model's: the base is scored on the same examples
    if args.max_length:
        options["max_length"] = args.max_length
    return options


@dataclass
class _Evaluated:
    result: ModelEval
    template: str  # the chat template the examples were rendered with
    stop_ids: list[int]


def evaluate_model(
    args: argparse.Namespace,
    path: str,
    options: dict[str, Any],
    base: str | None = None,
    label: str = "model",
    extra_stops: list[int] | None = None,
) -> _Evaluated:
    from sftforge.eval.examples import decode, items_from_features, prepare_eval_examples
    from sftforge.eval.generate import generate_batched
    from sftforge.eval.loss import masked_loss
    from sftforge.eval.metrics import generation_metrics, length_stats
    from sftforge.serve.loading import load_for_inference

    loaded = load_for_inference(path, base=base, trust_remote_code=args.trust_remote_code, device=args.device,
                                dtype=args.dtype, source=f"sftforge eval ({label})")  # fmt: skip
    bundle, examples, stats = prepare_eval_examples(path, args.data, options, args.max_samples)
    tokenizer = bundle.tokenizer
    pad_id = loaded.tokenizer.pad_token_id
    stop_ids = sorted(set(loaded.stop_ids) | set(extra_stops or []))
    notes = [f"{n} example(s) dropped: {r}" for r, n in stats.dropped.items()]
    loss = masked_loss(loaded.model, [e.as_features() for e in examples], pad_id, args.batch_size)
    metrics: dict[str, Any] = {
        "examples": len(examples),
        "loss": loss.loss,
        "perplexity": loss.perplexity,
        "trained_tokens": loss.trained_tokens,
    }
    items = items_from_features(examples, tokenizer, sorted(set(bundle.end_of_turn_ids) | set(stop_ids)))
    rows: dict[str, dict[str, Any]] = {}
    keys = _keys([i.source for i in items])
    if not args.no_generation and items:
        answers = generate_batched(loaded.model, [i.prompt_ids for i in items], stop_ids, pad_id,
                                   args.max_new_tokens, args.batch_size, desc=f"Generating ({label})")  # fmt: skip
        predictions = [decode(tokenizer, a.ids) for a in answers]
        references = [i.reference for i in items]
        metrics["generated"] = len(items)
        metrics.update(generation_metrics(predictions, references))
        metrics.update(length_stats([len(a.ids) for a in answers], [len(i.reference_ids) for i in items]))
        metrics["unfinished"] = sum(not a.finished for a in answers) / len(answers)
        for key, item, prediction in zip(keys, items, predictions, strict=True):
            prompt = tokenizer.decode(item.prompt_ids, skip_special_tokens=False)
            rows[key] = {"source": item.source, "prompt": prompt, "reference": item.reference,
                         "prediction": prediction}  # fmt: skip
    result = ModelEval(metrics, rows, notes)
    template = tokenizer.chat_template
    del loaded
    gc.collect()
    return _Evaluated(result, template, stop_ids)


def _keys(sources: list[str]) -> list[str]:
    """file:line, plus #k for the k-th example of a row split into several (multi_turn)."""
    seen: Counter = Counter()
    keys = []
    for source in sources:
        keys.append(f"{source}#{seen[source]}" if seen[source] else source)
        seen[source] += 1
    return keys


class _with_template:
    """The base folder as is when its tokenizer has a chat template; else a temporary copy (symlinks) with the
    tuned model's template, so the base sees the same prompts. Yields (path, note or None)."""

    def __init__(self, base: str, template: str) -> None:
        self.base, self.template = base, template
        self.tmp: str | None = None

    def __enter__(self) -> tuple[str, str | None]:
        if _has_chat_template(self.base):
            return self.base, None
        src = Path(self.base)
        if not src.is_dir():
            raise ConfigError(
                f"--base {self.base!r} has no chat template; give a local folder.", "sftforge eval"
            )
        self.tmp = tempfile.mkdtemp(prefix="sftforge-eval-base-")
        for item in src.iterdir():
            if item.name != "chat_template.jinja":
                (Path(self.tmp) / item.name).symlink_to(item.resolve())
        (Path(self.tmp) / "chat_template.jinja").write_text(self.template, encoding="utf-8")
        return self.tmp, "the base has no chat template: its prompts use the tuned model's template"

    def __exit__(self, *exc: object) -> None:
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _has_chat_template(path: str) -> bool:
    from transformers import AutoTokenizer

    try:
        return bool(getattr(AutoTokenizer.from_pretrained(path), "chat_template", None))
    except (OSError, ValueError):
        return True  # let the loader report why it cannot load


def write_outputs(out: Path, args: argparse.Namespace, results: dict[str, ModelEval]) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        doc = {
            "model": str(args.model),
            "base": args.base,
            "data": list(args.data),
            "max_new_tokens": args.max_new_tokens,
            "metrics": {name: r.metrics for name, r in results.items()},
            "notes": {name: r.notes for name, r in results.items() if r.notes},
        }
        (out / "eval.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False), encoding="utf-8")
        tuned, base = results["tuned"].rows, results["base"].rows if "base" in results else None
        with (out / "predictions.jsonl").open("w", encoding="utf-8") as f:
            for key, row in tuned.items():
                if base is not None:
                    row = {**row, "base_prediction": base.get(key, {}).get("prediction")}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    except OSError as e:
        raise ConfigError(
            f"--output_dir: cannot write to {str(out)!r} ({e.strerror}).", "sftforge eval"
        ) from None


def format_table(metrics: dict[str, dict[str, Any]]) -> str:
    """One column per model (base first), one row per metric present in any of them."""
    names = [n for n in ("base", "tuned") if n in metrics]
    lines = [f"{'metric':<26}" + "".join(f"{n:>12}" for n in names)]
    lines.append("-" * len(lines[0]))
    for key, label, fmt in METRIC_ROWS:
        if not any(key in metrics[n] for n in names):
            continue
        cells = [fmt.format(metrics[n][key]) if key in metrics[n] else "—" for n in names]
        lines.append(f"{label:<26}" + "".join(f"{c:>12}" for c in cells))
    return "\n".join(lines)
