"""The data flow end to end: rows → Conversation → tokens + labels, with strict or lenient bad-row handling.

Returns plain lists of examples plus the statistics the start-up summary prints.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from tqdm.auto import tqdm

from sftforge.config.schema import DataArguments
from sftforge.data.cache import CacheStatus, Split, cache_root, fingerprint, load, store
from sftforge.data.encoding import overlappable
from sftforge.data.parallel import auto_processes, chunked, run_chunks
from sftforge.data.readers import SourceRow, iter_dataset_rows, iter_rows, resolve_key_files
from sftforge.data.rows import (  # re-exported: the pipeline's public names
    ALWAYS_FATAL,
    DROPPED_NOT_BAD,
    Example,
    TokenizeSpec,
    process_row,
    process_rows,
    tokenize_conversation,
    tokenize_row,
)
from sftforge.errors import DataError

__all__ = [
    "ALWAYS_FATAL",
    "CHUNK_ROWS",
    "DROPPED_NOT_BAD",
    "DataStats",
    "Example",
    "PreparedData",
    "TokenizeSpec",
    "bad_rows",
    "build_examples",
    "check_bad_rows",
    "prepare_data",
    "process_row",
    "process_rows",
    "split_holdout",
    "tokenize_conversation",
    "tokenize_row",
]


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
    # Rows split into one example per trained turn (`multi_turn`), by why (a turns.SPLIT_REASONS key); the
    # examples they gave; and their examples dropped for length (the row itself is kept), by reason.
    split_rows: Counter = field(default_factory=Counter)
    split_examples: int = 0
    split_dropped: Counter = field(default_factory=Counter)

    @property
    def trained_fraction(self) -> float:
        return self.trained_tokens / self.tokens if self.tokens else 0.0


@dataclass
class PreparedData:
    train: list[Example]
    eval: list[Example]
    train_stats: DataStats
    eval_stats: DataStats | None
    cache: CacheStatus | None = None  # what the tokenized cache did (None: not asked)
    seconds: float = 0.0  # wall time of the data stage, set by the caller that timed it
    blocks: Any = (
        None  # stage pt: the training blocks' BlockStats (corpus tokens, coverage), see data/pretrain.py
    )


def _rows_from_files(spec: Sequence[str], key: str) -> Iterator[SourceRow]:
    for path in resolve_key_files(list(spec), key):
        try:
            yield from iter_rows(path)
        except DataError as e:  # a whole file is unusable (empty, not JSON): say which key lists it
            raise DataError(f"{key}: {e}") from None


def _take(rows: Iterable[SourceRow], limit: int | None) -> Iterator[SourceRow]:
    for i, row in enumerate(rows):
        if limit is not None and i >= limit:
            return
        yield row


CHUNK_ROWS = 64  # rows rendered, then tokenized in one call (and one task when several processes work)


def build_examples(
    rows: Iterable[SourceRow],
    spec: TokenizeSpec,
    on_bad_rows: str,
    num_proc: int | None,
    desc: str,
    *,
    max_bad_fraction: float = 1.0,
    split: str = "",
) -> tuple[list[Example], DataStats]:
    """Rows → examples and their statistics. `on_bad_rows: error` stops at the first unusable row; `skip` drops
    and counts it, and stops after all rows when more than `max_bad_fraction` of them were unusable (1.0: never).
    `split` names the rows in that message ("train", "eval")."""
    stats = DataStats()
    examples: list[Example] = []
    first_bad: dict[str, str] = {}  # reason → the first such row's message, to show in the too-many-bad error
    if num_proc is None:
        num_proc, rows = auto_processes(rows)
    batches = run_chunks(
        process_rows, spec, chunked(rows, CHUNK_ROWS), num_proc, thread=overlappable(spec.tokenizer)
    )
    results = (result for batch in batches for result in batch)
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
                first_bad.setdefault(what, payload)
                continue
            pairs = [payload]
            if status == "split":
                pairs = payload.examples
                stats.split_rows[payload.reason] += 1
                stats.split_examples += len(pairs)
                stats.split_dropped.update(payload.dropped)
            stats.kept += 1
            stats.formats[what] += 1
            for example, tok in pairs:
                examples.append(example)
                stats.methods[tok.method] += 1
                stats.truncated += int(tok.truncated)
                stats.tokens += len(example.input_ids)
                stats.trained_tokens += len(example.labels) - example.labels.count(-100)
    finally:
        batches.close()
    if on_bad_rows == "skip":
        check_bad_rows(stats, max_bad_fraction, split, first_bad)
    return examples, stats


def bad_rows(stats: DataStats) -> Counter:
    """Rows dropped for a data mistake, by reason (length drops, `DROPPED_NOT_BAD`, are not mistakes)."""
    return Counter({r: n for r, n in stats.dropped.items() if r not in DROPPED_NOT_BAD})


def check_bad_rows(
    stats: DataStats, max_fraction: float, split: str = "", first: dict[str, str] | None = None
) -> None:
    """Raise DataError when more than `max_fraction` of the rows read were unusable: a wrong format, a wrong
    file or a broken export makes most rows bad, and training on the few left over would hide that."""
    bad = bad_rows(stats)
    n_bad = sum(bad.values())
    if not stats.rows or n_bad / stats.rows <= max_fraction:
        return
    counts = ", ".join(f"{r}: {n}" for r, n in bad.most_common())
    rows = f"{split} rows" if split else "rows"
    lines = [
        f"{n_bad} of {stats.rows} {rows} read ({n_bad / stats.rows:.1%}) are unusable, more than "
        f"max_bad_row_fraction={max_fraction:g} allows (on_bad_rows: skip). Dropped by reason: {counts}."
    ]
    lines += [f"  first {reason}: {message}" for reason, message in (first or {}).items()]
    lines.append(
        "So many bad rows usually means a wrong path or a format sftforge does not read: check a few rows "
        "(`sftforge inspect`) and fix the data, or raise max_bad_row_fraction (1.0 never stops) to train on "
        "the usable rows only."
    )
    raise DataError("\n".join(lines))


def prepare_data(data: DataArguments, spec: TokenizeSpec, seed: int) -> PreparedData:
    """Read, convert, tokenize and split — or load all that from the tokenized cache when nothing it depends on
    changed. An empty training set is always an error."""
    if not data.preprocessing_cache:
        prepared = _prepare_data(data, spec, seed)
        prepared.cache = CacheStatus("off")
        return prepared
    started = time.perf_counter()
    root = cache_root(data.cache_dir)
    key = fingerprint(data, spec, seed)
    found = load(root, key)
    if found is not None:
        prepared = _from_cache(*found, CacheStatus("hit", key, time.perf_counter() - started))
        if data.on_bad_rows == "skip":  # the threshold is no cache input: check the cached counts against it
            check_bad_rows(prepared.train_stats, data.max_bad_row_fraction, "train")
            if prepared.eval_stats is not None:
                check_bad_rows(prepared.eval_stats, data.max_bad_row_fraction, "eval")
        return prepared
    prepared = _prepare_data(data, spec, seed)
    try:
        store(root, key, *_to_cache(prepared))
        prepared.cache = CacheStatus("stored", key, note=str(root))
    except OSError as e:  # a read-only or full disk costs the next run time, not this one
        prepared.cache = CacheStatus("miss", key, note=f"cannot write {root}: {e.strerror or e}")
    except Exception as e:  # noqa: BLE001 — nor does anything else that goes wrong while storing
        prepared.cache = CacheStatus("miss", key, note=f"could not store: {type(e).__name__}: {e}")
    return prepared


def _to_cache(prepared: PreparedData) -> tuple[dict[str, Split], dict[str, Any]]:
    splits = {
        name: Split(
            [e.input_ids for e in examples], [e.labels for e in examples], [e.source for e in examples]
        )
        for name, examples in (("train", prepared.train), ("eval", prepared.eval))
    }
    stats = {"train": _plain_stats(prepared.train_stats), "eval": _plain_stats(prepared.eval_stats)}
    return splits, stats


def _plain_stats(stats: DataStats | None) -> dict[str, Any] | None:
    # Not dataclasses.asdict: it would rebuild each Counter from (key, count) pairs, counting the pairs.
    return None if stats is None else {f.name: getattr(stats, f.name) for f in fields(stats)}


_COUNTERS = ("formats", "dropped", "methods", "split_rows", "split_dropped")


def _from_cache(splits: dict[str, Split], stats: dict[str, Any], status: CacheStatus) -> PreparedData:
    def examples(name: str) -> list[Example]:
        split = splits[name]
        return [Example(*parts) for parts in zip(split.input_ids, split.labels, split.sources, strict=True)]

    def data_stats(doc: dict[str, Any] | None) -> DataStats | None:
        if doc is None:
            return None
        counters = {k: Counter(doc.get(k, {})) for k in _COUNTERS}
        return DataStats(**{**doc, **counters})

    train_stats = data_stats(stats["train"])
    assert train_stats is not None
    return PreparedData(examples("train"), examples("eval"), train_stats, data_stats(stats["eval"]), status)


def _prepare_data(data: DataArguments, spec: TokenizeSpec, seed: int) -> PreparedData:
    if data.train_data_path:
        train_rows: Iterable[SourceRow] = _rows_from_files(data.train_data_path, "train_data_path")
    else:
        train_rows = iter_dataset_rows(data.dataset_name, data.dataset_config, data.dataset_train_split)
    train, train_stats = build_examples(
        _take(train_rows, data.max_samples),
        spec,
        data.on_bad_rows,
        data.dataset_num_proc,
        "Tokenizing train",
        max_bad_fraction=data.max_bad_row_fraction,
        split="train",
    )
    if not train:
        reasons = ", ".join(f"{r}: {n}" for r, n in train_stats.dropped.most_common()) or "no rows were read"
        raise DataError(f"the training set is empty after preprocessing ({reasons}).")

    eval_examples: list[Example] = []
    eval_stats: DataStats | None = None
    eval_rows: Iterable[SourceRow] | None = None
    if data.eval_data_path:
        eval_rows = _rows_from_files(data.eval_data_path, "eval_data_path")
    elif data.dataset_name and data.dataset_test_split:
        eval_rows = iter_dataset_rows(data.dataset_name, data.dataset_config, data.dataset_test_split)
    if eval_rows is not None:
        eval_examples, eval_stats = build_examples(
            eval_rows,
            spec,
            data.on_bad_rows,
            data.dataset_num_proc,
            "Tokenizing eval",
            max_bad_fraction=data.max_bad_row_fraction,
            split="eval",
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
