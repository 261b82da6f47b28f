"""The data flow end to end: rows → Conversation → tokens + labels, with strict or lenient bad-row handling.

Training writes the examples into a memory-mapped token store (data/store.py), cached by fingerprint, as they are
made; what comes back are views over it that read like lists of examples, plus the statistics the start-up summary
prints.
"""

from __future__ import annotations

import random
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from sftforge.data.cache import (
    CacheStatus,
    cache_root,
    commit_entry,
    fingerprint,
    new_entry,
    open_entry,
    scratch_folder,
)
from sftforge.data.encoding import overlappable
from sftforge.data.lengths import check_length_drops
from sftforge.data.parallel import chunked, resolve_processes, run_chunks
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
from sftforge.data.store import ExampleView, StoreWriter, TokenStore
from sftforge.errors import DataError

if TYPE_CHECKING:  # the config pulls in transformers' TrainingArguments (torch): not in preprocessing workers
    from sftforge.config.schema import DataArguments

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
    "check_rows",
    "prepare_data",
    "process_row",
    "process_rows",
    "holdout_positions",
    "split_holdout",
    "write_examples",
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
    # Rows by length in tokens before truncation (kept and dropped for length; data/lengths.py)
    lengths: Counter = field(default_factory=Counter)

    @property
    def trained_fraction(self) -> float:
        return self.trained_tokens / self.tokens if self.tokens else 0.0


@dataclass
class PreparedData:
    # SFT: views over the token store (data/store.py) that read like lists of Examples; pretraining: blocks
    train: Sequence[Any]
    eval: Sequence[Any]
    train_stats: DataStats
    eval_stats: DataStats | None
    cache: CacheStatus | None = None  # what the tokenized cache did (None: not asked)
    seconds: float = 0.0  # wall time of the data stage, set by the caller that timed it
    blocks: Any = (
        None  # stage pt: the training blocks' BlockStats (corpus tokens, coverage), see data/pretrain.py
    )
    mix: list[str] = field(default_factory=list)  # `datasets:`: the mix report lines (data/mixture.py)


def _rows_from_files(spec: Sequence[str | Path], key: str) -> Iterator[SourceRow]:
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
    num_proc: int | str | None,
    desc: str,
    *,
    max_bad_fraction: float = 1.0,
    max_dropped_fraction: float = 1.0,
    split: str = "",
) -> tuple[list[Example], DataStats]:
    """Rows → a list of examples and their statistics (small sets, tests; training writes a token store with
    `write_examples`). `on_bad_rows: error` stops at the first unusable row; `skip` drops and counts it, and stops
    after all rows when more than `max_bad_fraction` of them were unusable (1.0: never). Rows too long for
    max_length stop it, in either mode, when more than `max_dropped_fraction` of them were dropped. `split`
    names the rows in those messages ("train", "eval")."""
    examples: list[Example] = []
    stats = write_examples(
        rows,
        spec,
        on_bad_rows,
        num_proc,
        desc,
        examples.append,
        max_bad_fraction=max_bad_fraction,
        max_dropped_fraction=max_dropped_fraction,
        split=split,
    )
    return examples, stats


def write_examples(
    rows: Iterable[SourceRow],
    spec: TokenizeSpec,
    on_bad_rows: str,
    num_proc: int | str | None,
    desc: str,
    emit: Callable[[Example], None],
    *,
    max_bad_fraction: float = 1.0,
    max_dropped_fraction: float = 1.0,
    split: str = "",
) -> DataStats:
    """`build_examples`, handing each example to `emit` (e.g. a token store's writer) as soon as it is made, in
    data order, so nothing grows with the dataset."""
    stats = DataStats()
    first_bad: dict[str, str] = {}  # reason → the first such row's message, to show in the too-many-bad error
    processes, rows = resolve_processes(num_proc, rows)
    batches = run_chunks(
        process_rows, spec, chunked(rows, CHUNK_ROWS), processes, thread=overlappable(spec.tokenizer)
    )
    results = (result for batch in batches for result in batch)
    try:
        for result in tqdm(results, desc=desc, unit=" rows", mininterval=0.5, disable=None):
            account(result, stats, first_bad, on_bad_rows, emit)
    finally:
        batches.close()
    check_rows(stats, spec, on_bad_rows, max_bad_fraction, max_dropped_fraction, split, first_bad)
    return stats


def check_rows(
    stats: DataStats,
    spec: TokenizeSpec,
    on_bad_rows: str,
    max_bad_fraction: float,
    max_dropped_fraction: float,
    split: str = "",
    first_bad: dict[str, str] | None = None,
) -> None:
    """The checks over all the rows of a split: too many unusable rows (`on_bad_rows: skip`), then too many
    dropped for their length (any mode)."""
    if on_bad_rows == "skip":
        check_bad_rows(stats, max_bad_fraction, split, first_bad)
    check_length_drops(stats, max_dropped_fraction, spec.max_length, spec.truncation, split)


def account(
    result: tuple[str, str, Any],
    stats: DataStats,
    first_bad: dict[str, str],
    on_bad_rows: str,
    emit: Callable[[Example], None],
) -> None:
    """One row's `process_rows` result: count it, hand its examples to `emit`, or raise DataError (a fatal row,
    or a bad one under `on_bad_rows: error`)."""
    status, what, payload = result
    stats.rows += 1
    if status == "drop":
        stats.dropped[what] += 1
        if payload.length is not None:
            stats.lengths[payload.length] += 1
        return
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
        return
    pairs = [payload]
    if status == "pair":  # a preference row: its chosen and rejected examples, kept or dropped together
        pairs = payload.examples
        stats.lengths[payload.length] += 1
    elif status == "split":
        pairs = payload.examples
        stats.split_rows[payload.reason] += 1
        stats.split_examples += len(pairs)
        stats.split_dropped.update(payload.dropped)
        stats.lengths[payload.length] += 1
    else:
        stats.lengths[payload[1].untruncated_length] += 1
    stats.kept += 1
    stats.formats[what] += 1
    for example, tok in pairs:
        emit(example)
        stats.methods[tok.method] += 1
        stats.truncated += int(tok.truncated)
        stats.tokens += len(example.input_ids)
        stats.trained_tokens += len(example.labels) - example.labels.count(-100)


def merge_stats(total: DataStats, part: DataStats) -> None:
    """Add `part`'s counts to `total` (shards of one split, sources of a mix)."""
    for name, value in vars(part).items():
        if isinstance(value, Counter):
            getattr(total, name).update(value)
        else:
            setattr(total, name, getattr(total, name) + value)


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
    """Read, convert and tokenize into a token store — or open the stored one from the cache when nothing it
    depends on changed — then take the held-out split. An empty training set is always an error. Several sources
    (`datasets:`) are prepared one by one and mixed (data/mixture.py)."""
    if getattr(data, "datasets", None):
        from sftforge.data.mixture import prepare_mixture

        return prepare_mixture(data, spec, seed)
    if not data.preprocessing_cache:
        folder = scratch_folder()
        prepared = _open(folder, _tokenize_into(folder, data, spec), data, seed)
        prepared.cache = CacheStatus("off")
        return prepared
    started = time.perf_counter()
    root = cache_root(data.cache_dir)
    key = fingerprint(data, spec, seed)
    found = open_entry(root, key)
    if found is not None:
        folder, doc = found
        prepared = _open(folder, _stats_from(doc), data, seed)
        prepared.cache = CacheStatus("hit", key, time.perf_counter() - started)
        # The thresholds are no cache inputs: check the cached counts against them
        for split, stats in (("train", prepared.train_stats), ("eval", prepared.eval_stats)):
            if stats is not None:
                check_rows(stats, spec, data.on_bad_rows, data.max_bad_row_fraction, data.max_dropped_fraction,
                           split)  # fmt: skip
        return prepared
    try:
        tmp = new_entry(root, key)
    except OSError as e:  # a read-only or full disk costs the next run time, not this one
        return _uncached(
            data, spec, seed, CacheStatus("miss", key, note=f"cannot write {root}: {e.strerror or e}")
        )
    try:
        written = _tokenize_into(tmp, data, spec)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        folder = commit_entry(tmp, root, key, written.splits, _stats_doc(written))
        status = CacheStatus("stored", key, note=str(root))
    except Exception as e:  # noqa: BLE001 — nor does anything else that goes wrong while storing
        shutil.rmtree(tmp, ignore_errors=True)
        return _uncached(
            data, spec, seed, CacheStatus("miss", key, note=f"could not store: {type(e).__name__}: {e}")
        )
    prepared = _open(folder, written, data, seed)
    prepared.cache = status
    return prepared


def _uncached(data: DataArguments, spec: TokenizeSpec, seed: int, status: CacheStatus) -> PreparedData:
    folder = scratch_folder()
    prepared = _open(folder, _tokenize_into(folder, data, spec), data, seed)
    prepared.cache = status
    return prepared


@dataclass
class _Written:
    """What tokenizing wrote into a store folder: per split its sizes and checksums, and the statistics."""

    splits: dict[str, dict[str, Any]]
    train_stats: DataStats
    eval_stats: DataStats | None


def _stats_doc(written: _Written) -> dict[str, Any]:
    return {"train": stats_to_doc(written.train_stats), "eval": stats_to_doc(written.eval_stats)}


def stats_to_doc(stats: DataStats | None) -> dict[str, Any] | None:
    # Not dataclasses.asdict: it would rebuild each Counter from (key, count) pairs, counting the pairs.
    return None if stats is None else {f.name: getattr(stats, f.name) for f in fields(stats)}


_COUNTERS = ("formats", "dropped", "methods", "split_rows", "split_dropped", "lengths")
_INT_KEYED = ("lengths",)  # JSON (the cache's meta.json) writes every key as a string


def stats_from_doc(doc: dict[str, Any] | None) -> DataStats | None:
    if doc is None:
        return None
    counters = {k: Counter(doc.get(k, {})) for k in _COUNTERS}
    for k in _INT_KEYED:
        counters[k] = Counter({int(key): n for key, n in counters[k].items()})
    return DataStats(**{**doc, **counters})


def _stats_from(doc: dict[str, Any]) -> _Written:
    train = stats_from_doc(doc["meta"]["train"])
    assert train is not None
    return _Written(doc["splits"], train, stats_from_doc(doc["meta"]["eval"]))


def _tokenize_into(folder: Path, data: DataArguments, spec: TokenizeSpec) -> _Written:
    """Tokenize the training (and eval) rows into a token store in `folder`, example by example."""
    splits: dict[str, dict[str, Any]] = {}
    if data.train_data_path:
        paths = resolve_key_files(data.train_data_path, "train_data_path")
        train_stats = _write_files(folder, "train", paths, "train_data_path", data, spec, splits)
    else:
        rows = iter_dataset_rows(data.dataset_name, data.dataset_config, data.dataset_train_split)
        train_stats = _write_split(folder, "train", _take(rows, data.max_samples), data, spec, splits)
    if not splits["train"]["examples"]:
        reasons = ", ".join(f"{r}: {n}" for r, n in train_stats.dropped.most_common()) or "no rows were read"
        raise DataError(f"the training set is empty after preprocessing ({reasons}).")
    eval_stats: DataStats | None = None
    if data.eval_data_path:
        paths = resolve_key_files(data.eval_data_path, "eval_data_path")
        eval_stats = _write_files(
            folder, "eval", paths, "eval_data_path", replace(data, max_samples=None), spec, splits
        )
    elif data.dataset_name and data.dataset_test_split:
        rows = iter_dataset_rows(data.dataset_name, data.dataset_config, data.dataset_test_split)
        eval_stats = _write_split(folder, "eval", rows, data, spec, splits)
    return _Written(splits, train_stats, eval_stats)


def _write_files(
    folder: Path,
    split: str,
    paths: list[Path],
    key: str,
    data: DataArguments,
    spec: TokenizeSpec,
    splits: dict[str, dict[str, Any]],
) -> DataStats:
    """Local files: on several cores, each worker reading its own share (data/sharded.py), when that pays."""
    from sftforge.data.sharded import shard_processes, write_examples_sharded

    processes = shard_processes(data.dataset_num_proc, paths, data.max_samples)
    if processes > 1:
        writer = StoreWriter(folder, split)
        try:
            stats = write_examples_sharded(
                paths, key, spec, data.on_bad_rows, processes, f"Tokenizing {split}", writer,
                max_bad_fraction=data.max_bad_row_fraction, max_dropped_fraction=data.max_dropped_fraction,
                split=split,
            )  # fmt: skip
        except BaseException:
            writer.abort()
            raise
        if stats is not None:
            splits[split] = writer.close()
            return stats
        writer.abort()
    rows = _take(_rows_from_files(paths, key), data.max_samples)
    one = replace(data, dataset_num_proc=1) if processes > 1 else data  # the workers could not start
    return _write_split(folder, split, rows, one, spec, splits)


def _write_split(
    folder: Path,
    split: str,
    rows: Iterable[SourceRow],
    data: DataArguments,
    spec: TokenizeSpec,
    splits: dict[str, dict[str, Any]],
) -> DataStats:
    writer = StoreWriter(folder, split)
    try:
        stats = write_examples(
            rows,
            spec,
            data.on_bad_rows,
            data.dataset_num_proc,
            f"Tokenizing {split}",
            lambda e: writer.add(e.input_ids, e.labels, e.source),
            max_bad_fraction=data.max_bad_row_fraction,
            max_dropped_fraction=data.max_dropped_fraction,
            split=split,
        )
    except BaseException:
        writer.abort()
        raise
    splits[split] = writer.close()
    return stats


def _open(folder: Path, written: _Written, data: DataArguments, seed: int) -> PreparedData:
    """The training and eval views over a written store (the held-out split is taken here, by index)."""
    train = ExampleView.of(TokenStore(folder, "train", written.splits["train"]))
    evaluation = ExampleView.empty()
    if "eval" in written.splits:
        evaluation = ExampleView.of(TokenStore(folder, "eval", written.splits["eval"]))
    elif data.eval_split_ratio > 0 and getattr(data, "stage", "") == "dpo":  # hold out whole pairs
        from sftforge.data.preference import pair_positions

        kept, held = holdout_positions(len(train) // 2, data.eval_split_ratio, seed)
        train, evaluation = train.subset(pair_positions(kept)), train.subset(pair_positions(held))
    elif data.eval_split_ratio > 0:
        kept, held = holdout_positions(len(train), data.eval_split_ratio, seed)
        train, evaluation = train.subset(kept), train.subset(held)
    return PreparedData(train, evaluation, written.train_stats, written.eval_stats)


def holdout_positions(n: int, ratio: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic shuffle-split of n positions: (kept, held out), both in data order; at least one on each
    side when n > 1."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_eval = min(max(1, round(n * ratio)), n - 1)
    if n_eval <= 0:
        return np.arange(n, dtype=np.int64), np.zeros(0, dtype=np.int64)
    held = np.sort(np.asarray(order[:n_eval], dtype=np.int64))
    kept = np.ones(n, dtype=bool)
    kept[held] = False
    return np.flatnonzero(kept).astype(np.int64), held


def split_holdout(examples: list[Example], ratio: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Deterministic shuffle-split of a list; at least one example on each side."""
    kept, held = holdout_positions(len(examples), ratio, seed)
    return [examples[i] for i in kept.tolist()], [examples[i] for i in held.tolist()]
