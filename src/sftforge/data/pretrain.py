"""The pretraining data stage (`stage: pt`): rows → documents' token ids (+ eos) → blocks (data/blocks.py).

Reads the same sources as SFT (files, folders, globs, `datasets` names) plus .txt files, takes each row's
`text_column`, tokenizes the documents in batches and builds blocks of `max_length` (alias `block_size`) tokens —
or, with `pack: false`, one row per document cut at `max_length`. A held-out split (`eval_split_ratio`,
`validation_split_percentage`) is taken over documents, before the blocks, so no document is in both.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from sftforge.config.schema import DataArguments
from sftforge.data.blocks import BlockStats, BlockView
from sftforge.data.cache import (
    CacheStatus,
    cache_root,
    commit_entry,
    new_entry,
    open_entry,
    pretrain_fingerprint,
    scratch_folder,
)
from sftforge.data.formats import detect_format
from sftforge.data.pipeline import (
    DataStats,
    PreparedData,
    check_bad_rows,
    holdout_positions,
    stats_from_doc,
    stats_to_doc,
)
from sftforge.data.readers import SourceRow, iter_dataset_rows, iter_rows, resolve_key_files
from sftforge.data.store import ExampleView, StoreWriter, TokenStore
from sftforge.errors import DataError, RowError

TOKENIZE_BATCH = 512  # documents per tokenizer call
_DETECT_ROWS = 100
_CONVERSATION_FORMATS = {"messages", "conversations", "sharegpt", "alpaca", "prompt_completion"}


def resolve_stage(data: DataArguments, explicit: set[str]) -> str:
    """`stage: auto` → pt or sft from the training data (every file .txt, or the first rows hold documents and no
    conversations); sets `data.stage`, and for pt turns packing on unless the user set it. Returns the stage."""
    if data.stage != "auto":
        return data.stage
    data.stage = "pt" if _looks_like_documents(data) else "sft"
    if data.stage == "pt" and "packing" not in explicit:
        data.packing = True
    return data.stage


def _looks_like_documents(data: DataArguments) -> bool:
    try:
        if data.train_data_path:
            files = resolve_key_files(data.train_data_path, "train_data_path", text_files=True)
            if all(f.suffix.lower() == ".txt" for f in files):
                return True
        rows = _train_rows(data)
        seen = 0
        for row in rows:
            if seen >= _DETECT_ROWS:
                break
            seen += 1
            if row.error is not None or not isinstance(row.row, dict) or data.text_column not in row.row:
                return False
            try:
                if detect_format(row.row) in _CONVERSATION_FORMATS:
                    return False
            except RowError:
                pass  # no known conversation keys: a document under another column name
        return seen > 0
    except DataError:
        return False  # the data stage reports unreadable data with its own words


def _rows_from_files(spec: list[str], key: str, data: DataArguments) -> Iterator[SourceRow]:
    for path in resolve_key_files(spec, key, text_files=True):
        try:
            yield from iter_rows(path, data.text_column, data.txt_documents)
        except DataError as e:
            raise DataError(f"{key}: {e}") from None


def _train_rows(data: DataArguments) -> Iterator[SourceRow]:
    if data.train_data_path:
        return _rows_from_files(data.train_data_path, "train_data_path", data)
    return iter_dataset_rows(data.dataset_name, data.dataset_config, data.dataset_train_split)


def _take(rows: Iterable[SourceRow], limit: int | None) -> Iterator[SourceRow]:
    for i, row in enumerate(rows):
        if limit is not None and i >= limit:
            return
        yield row


def _document(row: SourceRow, column: str) -> str:
    if row.error is not None:
        raise row.error
    if not isinstance(row.row, dict):
        raise RowError("not_an_object", f"the row is not a JSON object with a {column!r} field")
    if column not in row.row:
        raise RowError(
            "no_text_column",
            f"the row has no {column!r} field (keys: {list(row.row)}); set text_column to the field holding the "
            "document",
        )
    text = row.row[column]
    if not isinstance(text, str):
        raise RowError("bad_text_type", f"{column!r} holds a {type(text).__name__}, not text")
    return text


def tokenize_documents(
    rows: Iterable[SourceRow], tokenizer: Any, data: DataArguments, desc: str
) -> tuple[list[list[int]], list[str], DataStats]:
    """Documents → token ids, each ending with eos (added when the tokenizer did not put it there), and their
    sources, as lists (small corpora, tests; training writes them to a token store with `write_documents`)."""
    docs: list[list[int]] = []
    sources: list[str] = []

    def keep(ids: list[int], source: str) -> None:
        docs.append(ids)
        sources.append(source)

    return docs, sources, write_documents(rows, tokenizer, data, desc, keep)


def write_documents(
    rows: Iterable[SourceRow],
    tokenizer: Any,
    data: DataArguments,
    desc: str,
    emit: Callable[[list[int], str], None],
) -> DataStats:
    """Tokenize documents in batches, handing each (ids ending with eos, source) to `emit` in data order. Bad rows
    follow on_bad_rows; empty documents are dropped and counted (not a mistake)."""
    eos = tokenizer.eos_token_id
    stats = DataStats()
    first_bad: dict[str, str] = {}
    texts: list[str] = []
    names: list[str] = []

    def flush() -> None:
        if not texts:
            return
        # add_special_tokens: what the tokenizer puts around a text by itself (Llama's BOS), as run_clm.py
        encoded = tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"]
        for ids, name in zip(encoded, names, strict=True):
            if eos is not None and (not ids or ids[-1] != eos):
                ids.append(eos)
            emit(ids, name)
        texts.clear()
        names.clear()

    for row in tqdm(rows, desc=desc, unit=" docs", mininterval=0.5, disable=None):
        stats.rows += 1
        try:
            text = _document(row, data.text_column)
        except RowError as e:
            if data.on_bad_rows == "error":
                raise DataError(
                    f"{row.source}: {e.detail} [{e.reason}]\n"
                    "Fix the row, or set `on_bad_rows: skip` to drop unusable rows and count them by reason."
                ) from None
            stats.dropped[e.reason] += 1
            first_bad.setdefault(e.reason, f"{row.source}: {e.detail}")
            continue
        if not text.strip():
            stats.dropped["empty_text"] += 1
            continue
        stats.kept += 1
        stats.formats["text"] += 1
        texts.append(text)
        names.append(row.source)
        if len(texts) >= TOKENIZE_BATCH:
            flush()
    flush()
    if data.on_bad_rows == "skip":
        check_bad_rows(stats, data.max_bad_row_fraction, desc.split()[-1].lower(), first_bad)
    return stats


def _fill_stats(stats: DataStats, blocks: BlockStats) -> None:
    stats.tokens = stats.trained_tokens = blocks.block_tokens
    stats.truncated = blocks.truncated


@dataclass
class Corpus:
    """The tokenized documents (each ending with eos), per split, in a token store: views of them, their
    statistics, and what the cache keeps about them."""

    docs: ExampleView
    stats: DataStats
    eval_docs: ExampleView | None = None  # None: no eval data given (a hold-out may still be taken)
    eval_stats: DataStats | None = None


def _write_corpus(folder: Path, data: DataArguments, tokenizer: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Tokenize the training (and eval) documents into a store in `folder`: (split sizes, statistics)."""
    splits: dict[str, Any] = {}
    meta: dict[str, Any] = {"eval": None, "has_eval": False}

    def write(split: str, rows: Iterable[SourceRow], desc: str) -> DataStats:
        writer = StoreWriter(folder, split)
        try:
            stats = write_documents(rows, tokenizer, data, desc, lambda ids, src: writer.add(ids, ids, src))
        except BaseException:
            writer.abort()
            raise
        splits[split] = writer.close()
        return stats

    stats = write("train", _take(_train_rows(data), data.max_samples), "Tokenizing train")
    if not splits["train"]["examples"]:
        reasons = ", ".join(f"{r}: {n}" for r, n in stats.dropped.most_common()) or "no rows were read"
        raise DataError(f"the training corpus is empty after reading ({reasons}).")
    meta["train"] = stats_to_doc(stats)
    eval_rows: Iterable[SourceRow] | None = None
    if data.eval_data_path:
        eval_rows = _rows_from_files(data.eval_data_path, "eval_data_path", data)
    elif data.dataset_name and data.dataset_test_split:
        eval_rows = iter_dataset_rows(data.dataset_name, data.dataset_config, data.dataset_test_split)
    if eval_rows is not None:
        meta["eval"], meta["has_eval"] = stats_to_doc(write("eval", eval_rows, "Tokenizing eval")), True
    return splits, meta


def _open_corpus(folder: Path, splits: dict[str, Any], meta: dict[str, Any]) -> Corpus:
    stats = stats_from_doc(meta["train"])
    assert stats is not None
    corpus = Corpus(ExampleView.of(TokenStore(folder, "train", splits["train"])), stats)
    if meta["has_eval"]:
        corpus.eval_docs = ExampleView.of(TokenStore(folder, "eval", splits["eval"]))
        corpus.eval_stats = stats_from_doc(meta["eval"])
    return corpus


def tokenize_corpus(data: DataArguments, tokenizer: Any) -> Corpus:
    """Read and tokenize the training (and eval) documents into a private store. An empty training corpus is an
    error."""
    folder = scratch_folder()
    return _open_corpus(folder, *_write_corpus(folder, data, tokenizer))


def cached_corpus(data: DataArguments, tokenizer: Any) -> tuple[Corpus, CacheStatus]:
    """`tokenize_corpus`, or its result from the tokenized cache when nothing it depends on changed (the cache of
    SFT examples, keyed by `cache.pretrain_fingerprint`). Documents are cached, not blocks: changing block_size or
    the block options needs no new tokenization."""
    if not data.preprocessing_cache:
        return tokenize_corpus(data, tokenizer), CacheStatus("off")
    started = time.perf_counter()
    root = cache_root(data.cache_dir)
    key = pretrain_fingerprint(data, tokenizer)
    found = open_entry(root, key)
    if found is not None:
        folder, doc = found
        corpus = _open_corpus(folder, doc["splits"], doc["meta"])
        if data.on_bad_rows == "skip":  # the threshold is no cache input: check the cached counts against it
            check_bad_rows(corpus.stats, data.max_bad_row_fraction, "train")
        return corpus, CacheStatus("hit", key, time.perf_counter() - started)
    try:
        tmp = new_entry(root, key)
    except OSError as e:  # a read-only or full disk costs the next run time, not this one
        return tokenize_corpus(data, tokenizer), CacheStatus(
            "miss", key, note=f"cannot write {root}: {e.strerror or e}"
        )
    try:
        splits, meta = _write_corpus(tmp, data, tokenizer)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        folder = commit_entry(tmp, root, key, splits, meta)
    except Exception as e:  # noqa: BLE001 — nor does anything else that goes wrong while storing
        shutil.rmtree(tmp, ignore_errors=True)
        status = CacheStatus("miss", key, note=f"could not store: {type(e).__name__}: {e}")
        return tokenize_corpus(data, tokenizer), status
    return _open_corpus(folder, splits, meta), CacheStatus("stored", key, note=str(root))


def _blocks(docs: ExampleView, data: DataArguments) -> BlockView:
    return BlockView(
        docs,
        data.max_length,
        packing=bool(data.packing),
        drop_last=data.drop_last_block,
        isolate=data.document_isolation,
    )


def prepare_pretrain_data(data: DataArguments, tokenizer: Any, seed: int) -> PreparedData:
    """Tokenize the documents (or load them from the cache), hold some out when asked, and lay the blocks over
    them (data/blocks.py `BlockView`: read from the store when the trainer asks)."""
    corpus, cache = cached_corpus(data, tokenizer)
    docs, train_stats = corpus.docs, corpus.stats
    eval_docs, eval_stats = corpus.eval_docs, corpus.eval_stats
    if eval_docs is None and data.eval_split_ratio > 0 and len(docs) > 1:
        kept, held = holdout_positions(len(docs), data.eval_split_ratio, seed)
        docs, eval_docs = docs.subset(kept), docs.subset(held)
    train = _blocks(docs, data)
    _fill_stats(train_stats, train.stats)
    evaluation: Any = []
    if eval_docs is not None and len(eval_docs):
        evaluation = _blocks(eval_docs, data)
        if eval_stats is not None:
            _fill_stats(eval_stats, evaluation.stats)
    if not len(train):
        raise DataError(
            f"no training block: the corpus has {train.stats.corpus_tokens} tokens, fewer than max_length="
            f"{data.max_length}, and drop_last_block drops the short block; lower max_length or keep the block."
        )
    return PreparedData(train, evaluation, train_stats, eval_stats, cache, blocks=train.stats)


def coverage_metrics(blocks: BlockStats) -> dict[str, Any]:
    """What metrics.json reports for stage pt."""
    return {
        "corpus_tokens": blocks.corpus_tokens,
        "block_tokens": blocks.block_tokens,
        "dropped_tokens": blocks.dropped_tokens,
        "corpus_coverage": round(blocks.coverage, 6),
        "documents": blocks.documents,
        "blocks": blocks.blocks,
    }


__all__ = [
    "coverage_metrics",
    "prepare_pretrain_data",
    "resolve_stage",
    "tokenize_documents",
]
