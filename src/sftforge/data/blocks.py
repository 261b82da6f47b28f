"""Pretraining blocks: documents' token ids → one eos-joined stream → blocks of `block_size` tokens.

The run_clm.py recipe (`group_texts`), with what it lacks: every token lands in exactly one block (the last, shorter
block is kept unless asked to drop it), and documents may be isolated inside a block. Labels are the input ids:
every token of a block is trained (the model's shift makes each one the target of the token before it).

With `isolate`, a block also records where its documents start and end (`seq_lens`, the documents' pieces in
order); the flattening collator then restarts position ids per piece and the packed attention keeps pieces from
attending to each other, exactly as packed SFT samples (data/packing.py, model/varlen.py). A document cut at a
block's end continues at position 0 of the next block.

Pure: plain lists in, plain lists out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Block:
    """One training row. Looks like `rows.Example` to the trainer (`as_features`, `source`)."""

    input_ids: list[int]
    labels: list[int]
    source: str  # the first document's file:line, and how many more documents the block holds
    seq_lens: list[int] | None = None  # with isolation: the lengths of the document pieces, in order

    def as_features(self) -> dict[str, Any]:
        features: dict[str, Any] = {"input_ids": self.input_ids, "labels": self.labels}
        if self.seq_lens is not None:
            features["seq_lens"] = self.seq_lens
        return features


@dataclass
class BlockStats:
    documents: int = 0
    corpus_tokens: int = 0  # every token of every document, eos included
    block_tokens: int = 0  # the tokens in blocks, all of them trained
    dropped_tokens: int = (
        0  # the last partial block (drop_last) or the cut-off tails (per-document truncation)
    )
    truncated: int = 0  # documents cut at block_size (per-document mode)
    lengths: list[int] = field(default_factory=list)

    @property
    def coverage(self) -> float:
        return self.block_tokens / self.corpus_tokens if self.corpus_tokens else 0.0


def _source(first: str, documents: int) -> str:
    return first if documents <= 1 else f"{first} (+{documents - 1} more)"


def build_blocks(
    documents: Iterable[Sequence[int]],
    block_size: int,
    *,
    drop_last: bool = False,
    isolate: bool = False,
    sources: Iterable[str] | None = None,
) -> tuple[list[Block], BlockStats]:
    """Concatenate `documents` (each already ending with eos) and cut the stream into blocks of `block_size`.
    Only the last block may be shorter; `drop_last` drops it instead."""
    if block_size < 1:
        raise ValueError(f"block_size must be at least 1, got {block_size}")
    stats = BlockStats()
    blocks: list[Block] = []
    ids: list[int] = []
    pieces: list[int] = []
    first, in_block = "", 0

    def emit() -> None:
        nonlocal ids, pieces, in_block
        blocks.append(Block(ids, list(ids), _source(first, in_block), pieces if isolate else None))
        ids, pieces, in_block = [], [], 0

    names = iter(sources) if sources is not None else None
    for index, doc in enumerate(documents):
        name = next(names) if names is not None else f"document {index}"
        stats.documents += 1
        stats.corpus_tokens += len(doc)
        pos = 0
        while pos < len(doc):
            if not ids:
                first = name
            take = min(block_size - len(ids), len(doc) - pos)
            ids.extend(doc[pos : pos + take])
            pieces.append(take)
            in_block += 1
            pos += take
            if len(ids) == block_size:
                emit()
    if ids:
        if drop_last:
            stats.dropped_tokens += len(ids)
        else:
            emit()
    stats.block_tokens = sum(len(b.input_ids) for b in blocks)
    stats.lengths = [len(b.input_ids) for b in blocks]
    return blocks, stats


def truncate_documents(
    documents: Iterable[Sequence[int]], max_length: int, sources: Iterable[str] | None = None
) -> tuple[list[Block], BlockStats]:
    """`pack: false`: one row per document, cut at `max_length` (the tail is not trained; counted)."""
    stats = BlockStats()
    rows: list[Block] = []
    names = iter(sources) if sources is not None else None
    for index, doc in enumerate(documents):
        name = next(names) if names is not None else f"document {index}"
        stats.documents += 1
        stats.corpus_tokens += len(doc)
        kept = list(doc[:max_length])
        if len(doc) > max_length:
            stats.truncated += 1
            stats.dropped_tokens += len(doc) - max_length
        if kept:
            rows.append(Block(kept, list(kept), name))
    stats.block_tokens = sum(len(r.input_ids) for r in rows)
    stats.lengths = [len(r.input_ids) for r in rows]
    return rows, stats
