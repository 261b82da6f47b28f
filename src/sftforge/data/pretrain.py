"""The pretraining data stage (`stage: pt`): rows → documents' token ids (+ eos) → blocks (data/blocks.py).

Reads the same sources as SFT (files, folders, globs, `datasets` names) plus .txt files, takes each row's
`text_column`, tokenizes the documents in batches and builds blocks of `max_length` (alias `block_size`) tokens —
or, with `pack: false`, one row per document cut at `max_length`. A held-out split (`eval_split_ratio`,
`validation_split_percentage`) is taken over documents, before the blocks, so no document is in both.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any

from tqdm.auto import tqdm

from sftforge.config.schema import DataArguments
from sftforge.data.blocks import BlockStats, build_blocks, truncate_documents
from sftforge.data.cache import CacheStatus, Split, cache_root, load, pretrain_fingerprint, store
from sftforge.data.formats import detect_format
from sftforge.data.pipeline import DataStats, PreparedData, check_bad_rows
from sftforge.data.readers import SourceRow, iter_dataset_rows, iter_rows, resolve_key_files
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
    sources. Bad rows follow on_bad_rows; empty documents are dropped and counted (not a mistake)."""
    eos = tokenizer.eos_token_id
    stats = DataStats()
    docs: list[list[int]] = []
    sources: list[str] = []
    first_bad: dict[str, str] = {}
    texts: list[str] = []
    names: list[str] = []

    def flush() -> None:
        if not texts:
            return
        # add_special_tokens: what the tokenizer puts around a text by itself (Llama's BOS), as run_clm.py
        encoded = tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"]
        for ids in encoded:
            if eos is not None and (not ids or ids[-1] != eos):
                ids.append(eos)
            docs.append(ids)
        sources.extend(names)
        texts.clear()
        names.clear()

    for row in tqdm(rows, desc=desc, unit=" docs", mininterval=0.5):
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
    return docs, sources, stats


def _to_rows(docs: list[list[int]], sources: list[str], data: DataArguments) -> tuple[list[Any], BlockStats]:
    if data.packing:
        return build_blocks(
            docs,
            data.max_length,
            drop_last=data.drop_last_block,
            isolate=data.document_isolation,
            sources=sources,
        )
    return truncate_documents(docs, data.max_length, sources)


def _fill_stats(stats: DataStats, blocks: BlockStats) -> None:
    stats.tokens = stats.trained_tokens = blocks.block_tokens
    stats.truncated = blocks.truncated


@dataclass
class Corpus:
    """The tokenized documents (each ending with eos) and their sources, per split: what the cache keeps."""

    docs: list[list[int]]
    sources: list[str]
    stats: DataStats
    eval_docs: list[list[int]] | None = None  # None: no eval data given (a hold-out may still be taken)
    eval_sources: list[str] = field(default_factory=list)
    eval_stats: DataStats | None = None


def tokenize_corpus(data: DataArguments, tokenizer: Any) -> Corpus:
    """Read and tokenize the training (and eval) documents. An empty training corpus is an error."""
    docs, sources, stats = tokenize_documents(
        _take(_train_rows(data), data.max_samples), tokenizer, data, "Tokenizing train"
    )
    if not docs:
        reasons = ", ".join(f"{r}: {n}" for r, n in stats.dropped.most_common()) or "no rows were read"
        raise DataError(f"the training corpus is empty after reading ({reasons}).")
    corpus = Corpus(docs, sources, stats)
    eval_rows: Iterable[SourceRow] | None = None
    if data.eval_data_path:
        eval_rows = _rows_from_files(data.eval_data_path, "eval_data_path", data)
    elif data.dataset_name and data.dataset_test_split:
        eval_rows = iter_dataset_rows(data.dataset_name, data.dataset_config, data.dataset_test_split)
    if eval_rows is not None:
        corpus.eval_docs, corpus.eval_sources, corpus.eval_stats = tokenize_documents(
            eval_rows, tokenizer, data, "Tokenizing eval"
        )
    return corpus


def cached_corpus(data: DataArguments, tokenizer: Any) -> tuple[Corpus, CacheStatus]:
    """`tokenize_corpus`, or its result from the tokenized cache when nothing it depends on changed (the cache of
    SFT examples, keyed by `cache.pretrain_fingerprint`). Documents are cached, not blocks: changing block_size or
    the block options needs no new tokenization."""
    if not data.preprocessing_cache:
        return tokenize_corpus(data, tokenizer), CacheStatus("off")
    started = time.perf_counter()
    root = cache_root(data.cache_dir)
    key = pretrain_fingerprint(data, tokenizer)
    found = load(root, key)
    if found is not None:
        splits, meta = found
        train, held = splits["train"], splits["eval"]
        corpus = Corpus(train.input_ids, train.sources, _stats(meta["train"]))
        if meta["has_eval"]:
            corpus.eval_docs, corpus.eval_sources, corpus.eval_stats = (
                held.input_ids,
                held.sources,
                _stats(meta["eval"]),
            )
        if data.on_bad_rows == "skip":  # the threshold is no cache input: check the cached counts against it
            check_bad_rows(corpus.stats, data.max_bad_row_fraction, "train")
        return corpus, CacheStatus("hit", key, time.perf_counter() - started)
    corpus = tokenize_corpus(data, tokenizer)
    eval_docs = corpus.eval_docs or []
    splits = {
        "train": Split(
            corpus.docs, corpus.docs, corpus.sources
        ),  # labels = ids: the cache's layout wants both
        "eval": Split(eval_docs, eval_docs, corpus.eval_sources),
    }
    meta = {
        "train": _plain(corpus.stats),
        "eval": _plain(corpus.eval_stats),
        "has_eval": corpus.eval_docs is not None,
    }
    try:
        store(root, key, splits, meta)
        status = CacheStatus("stored", key, note=str(root))
    except OSError as e:  # a read-only or full disk costs the next run time, not this one
        status = CacheStatus("miss", key, note=f"cannot write {root}: {e.strerror or e}")
    except Exception as e:  # noqa: BLE001 — nor does anything else that goes wrong while storing
        status = CacheStatus("miss", key, note=f"could not store: {type(e).__name__}: {e}")
    return corpus, status


_COUNTERS = ("formats", "dropped", "methods", "split_rows", "split_dropped")


def _plain(stats: DataStats | None) -> dict[str, Any] | None:
    return None if stats is None else {f.name: getattr(stats, f.name) for f in fields(stats)}


def _stats(doc: dict[str, Any] | None) -> DataStats | None:
    if doc is None:
        return None
    return DataStats(**{**doc, **{k: Counter(doc.get(k, {})) for k in _COUNTERS}})


def prepare_pretrain_data(data: DataArguments, tokenizer: Any, seed: int) -> PreparedData:
    """Tokenize the documents (or load them from the cache), hold some out when asked, and build the blocks."""
    corpus, cache = cached_corpus(data, tokenizer)
    docs, sources, train_stats = corpus.docs, corpus.sources, corpus.stats
    eval_docs, eval_sources, eval_stats = corpus.eval_docs or [], corpus.eval_sources, corpus.eval_stats
    if corpus.eval_docs is None and data.eval_split_ratio > 0 and len(docs) > 1:
        held = _holdout(len(docs), data.eval_split_ratio, seed)
        eval_docs = [docs[i] for i in sorted(held)]
        eval_sources = [sources[i] for i in sorted(held)]
        docs = [d for i, d in enumerate(docs) if i not in held]
        sources = [s for i, s in enumerate(sources) if i not in held]
    train, blocks = _to_rows(docs, sources, data)
    _fill_stats(train_stats, blocks)
    evaluation: list[Any] = []
    if eval_docs:
        evaluation, eval_blocks = _to_rows(eval_docs, eval_sources, data)
        if eval_stats is not None:
            _fill_stats(eval_stats, eval_blocks)
    if not train:
        raise DataError(
            f"no training block: the corpus has {blocks.corpus_tokens} tokens, fewer than max_length="
            f"{data.max_length}, and drop_last_block drops the short block; lower max_length or keep the block."
        )
    return PreparedData(train, evaluation, train_stats, eval_stats, cache, blocks=blocks)


def _holdout(n: int, ratio: float, seed: int) -> set[int]:
    """Deterministic shuffle-split over documents, at least one on each side (as pipeline.split_holdout)."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_eval = min(max(1, round(n * ratio)), n - 1)
    return set(order[:n_eval])


def coverage_metrics(blocks: BlockStats) -> dict[str, Any]:
    """What metrics.json reports for stage pt."""
    return {
        "corpus_tokens": blocks.corpus_tokens,
        "block_tokens": blocks.block_tokens,
        "dropped_tokens": blocks.dropped_tokens,
        "corpus_coverage": round(blocks.coverage, 6),
        "documents": blocks.documents,
        "blocks": len(blocks.lengths),
    }


__all__ = [
    "coverage_metrics",
    "prepare_pretrain_data",
    "resolve_stage",
    "tokenize_documents",
]
