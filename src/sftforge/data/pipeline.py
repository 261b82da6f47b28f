"""The data flow end to end: rows → Conversation → tokens + labels, with strict or lenient bad-row handling.

Returns plain lists of examples plus the statistics the start-up summary prints.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from multiprocessing import get_context
from typing import Any

from tqdm.auto import tqdm

from sftforge.config.schema import DataArguments
from sftforge.data.conversation import Conversation
from sftforge.data.formats import to_conversation
from sftforge.data.masking import MaskOptions, Tokenized, encode_conversation
from sftforge.data.readers import SourceRow, iter_dataset_rows, iter_rows, resolve_data_files
from sftforge.data.templates import TemplateInfo
from sftforge.data.truncation import fit_to_length
from sftforge.errors import DataError, RowError


@dataclass
class DataStats:
    rows: int = 0
    kept: int = 0
    formats: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)  # reason → count
    methods: Counter = field(default_factory=Counter)  # how spans were found → count
    truncated: int = 0
    tokens: int = 0
    trained_tokens: int = 0

    @property
    def trained_fraction(self) -> float:
        return self.trained_tokens / self.tokens if self.tokens else 0.0


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    source: str

    def as_features(self) -> dict[str, list[int]]:
        return {"input_ids": self.input_ids, "labels": self.labels}


@dataclass
class PreparedData:
    train: list[Example]
    eval: list[Example]
    train_stats: DataStats
    eval_stats: DataStats | None


# Length problems are not data mistakes: such examples are dropped and counted in every on_bad_rows mode...
DROPPED_NOT_BAD = frozenset({"no_trainable_tokens_after_truncation", "exceeds_max_length"})
# ...except with `truncation: error`, which stops the run whatever on_bad_rows says.
ALWAYS_FATAL = frozenset({"too_long"})


@dataclass(frozen=True)
class TokenizeSpec:
    """Everything a worker process needs to turn one row into an example (picklable)."""

    tokenizer: Any
    template: TemplateInfo
    max_length: int
    options: MaskOptions = MaskOptions()  # noqa: RUF009 — frozen, so one shared default is safe
    truncation: str = "turns"

    @classmethod
    def build(cls, tokenizer: Any, template: str, max_length: int, **kwargs: Any) -> TokenizeSpec:
        return cls(tokenizer, TemplateInfo.probe(tokenizer, template), max_length, **kwargs)


def process_row(spec: TokenizeSpec, source_row: SourceRow) -> tuple[str, str, Any]:
    """One row → ("ok", format, (Example, Tokenized)) or ("bad" | "drop" | "fatal", reason, message). Pure."""
    try:
        if source_row.error is not None:
            raise source_row.error
        conv = to_conversation(source_row.row, source=source_row.source)

        def encode(c: Conversation) -> Tokenized:
            return encode_conversation(c, spec.tokenizer, spec.template, spec.options)

        tok = fit_to_length(conv, encode, spec.max_length, spec.truncation)
    except RowError as e:
        status = "drop" if e.reason in DROPPED_NOT_BAD else "fatal" if e.reason in ALWAYS_FATAL else "bad"
        return status, e.reason, f"{source_row.source}: {e.detail}"
    return "ok", conv.format, (Example(tok.input_ids, tok.labels, source_row.source), tok)


def _rows_from_files(spec: Sequence[str]) -> Iterator[SourceRow]:
    for path in resolve_data_files(list(spec)):
        yield from iter_rows(path)


def _take(rows: Iterable[SourceRow], limit: int | None) -> Iterator[SourceRow]:
    for i, row in enumerate(rows):
        if limit is not None and i >= limit:
            return
        yield row


def build_examples(
    rows: Iterable[SourceRow], spec: TokenizeSpec, on_bad_rows: str, num_proc: int | None, desc: str
) -> tuple[list[Example], DataStats]:
    stats = DataStats()
    examples: list[Example] = []
    worker = partial(process_row, spec)
    if num_proc and num_proc > 1:
        pool = get_context("spawn").Pool(num_proc)
        results: Iterable = pool.imap(worker, rows, chunksize=64)
    else:
        pool, results = None, map(worker, rows)
    try:
        for status, what, payload in tqdm(results, desc=desc, unit=" rows", mininterval=0.5):
            stats.rows += 1
            if status == "drop":
                stats.dropped[what] += 1
                continue
            if status == "fatal":
                raise DataError(f"{payload} [{what}]")
            if status == "bad":
                if on_bad_rows == "error":
                    raise DataError(
                        f"{payload} [{what}]\n"
                        "Fix the row, or set `on_bad_rows: skip` to drop unusable rows and count them by reason."
                    )
                stats.dropped[what] += 1
                continue
            example, tok = payload
            examples.append(example)
            stats.kept += 1
            stats.formats[what] += 1
            stats.methods[tok.method] += 1
            stats.truncated += int(tok.truncated)
            stats.tokens += len(example.input_ids)
            stats.trained_tokens += sum(label != -100 for label in example.labels)
    finally:
        if pool is not None:
            pool.terminate()
    return examples, stats


def prepare_data(data: DataArguments, spec: TokenizeSpec, seed: int) -> PreparedData:
    """Read, convert, tokenize and split. An empty training set is always an error."""
    if data.train_data_path:
        train_rows: Iterable[SourceRow] = _rows_from_files(data.train_data_path)
    else:
        train_rows = iter_dataset_rows(data.dataset_name, data.dataset_config, data.dataset_train_split)
    train, train_stats = build_examples(
        _take(train_rows, data.max_samples), spec, data.on_bad_rows, data.dataset_num_proc, "Tokenizing train"
    )
    if not train:
        reasons = ", ".join(f"{r}: {n}" for r, n in train_stats.dropped.most_common()) or "no rows were read"
        raise DataError(f"the training set is empty after preprocessing ({reasons}).")

    eval_examples: list[Example] = []
    eval_stats: DataStats | None = None
    eval_rows: Iterable[SourceRow] | None = None
    if data.eval_data_path:
        eval_rows = _rows_from_files(data.eval_data_path)
    elif data.dataset_name and data.dataset_test_split:
        eval_rows = iter_dataset_rows(data.dataset_name, data.dataset_config, data.dataset_test_split)
    if eval_rows is not None:
        eval_examples, eval_stats = build_examples(
            eval_rows, spec, data.on_bad_rows, data.dataset_num_proc, "Tokenizing eval"
        )
    elif data.eval_split_ratio > 0:
        train, eval_examples = split_holdout(train, data.eval_split_ratio, seed)
    return PreparedData(train, eval_examples, train_stats, eval_stats)


def split_holdout(examples: list[Example], ratio: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Deterministic shuffle-split; at least one example on each side."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = min(max(1, round(len(examples) * ratio)), len(examples) - 1)
    if n_eval <= 0:
        return examples, []
    held = set(order[:n_eval])
    return [e for i, e in enumerate(examples) if i not in held], [examples[i] for i in sorted(held)]


def tokenize_conversation(
    conv: Conversation,
    tokenizer: Any,
    template: str | TemplateInfo,
    max_length: int = 1 << 30,
    options: MaskOptions | None = None,
    truncation: str = "turns",
) -> Tokenized:
    """One conversation → input_ids + labels, as training sees it (convenience for notebooks and tests)."""
    info = template if isinstance(template, TemplateInfo) else TemplateInfo.probe(tokenizer, template)
    opts = options or MaskOptions()
    return fit_to_length(
        conv, lambda c: encode_conversation(c, tokenizer, info, opts), max_length, truncation
    )
