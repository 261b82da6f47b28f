"""Pretraining blocks: documents' token ids → one eos-joined stream → blocks of `block_size` tokens.

The run_clm.py recipe (`group_texts`), with what it lacks: every token lands in exactly one block (the last, shorter
block is kept unless asked to drop it), and documents may be isolated inside a block. Labels are the input ids:
every token of a block is trained (the model's shift makes each one the target of the token before it).

With `isolate`, a block also records where its documents start and end (`seq_lens`, the documents' pieces in
order); the flattening collator then restarts position ids per piece and the packed attention keeps pieces from
attending to each other, exactly as packed SFT samples (data/packing.py, model/varlen.py). A document cut at a
block's end continues at position 0 of the next block.

`build_blocks` and `truncate_documents` are pure (plain lists in and out); training uses `BlockView`, the same
blocks read from the documents' token store (data/store.py) on demand.
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
    lengths: list[int] = field(default_factory=list)  # build_blocks / truncate_documents only

    @property
    def blocks(self) -> int:
        return self._blocks if self._blocks is not None else len(self.lengths)

    _blocks: int | None = None  # BlockView's count (it keeps no per-block list)

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


class BlockView(Sequence[Block]):
    """`build_blocks` (packing) or `truncate_documents` over documents held in a token store, without copying
    them: block i is read from the documents it spans when asked for. Holds two arrays: the documents' end
    positions in the concatenated stream (or their cut lengths), nothing per token."""

    def __init__(
        self, docs: Any, block_size: int, *, packing: bool, drop_last: bool = False, isolate: bool = False
    ) -> None:
        import numpy as np

        self.docs, self.block_size, self.packing, self.isolate = docs, block_size, packing, isolate
        lengths = np.asarray(docs.lengths, dtype=np.int64)
        self.stats = BlockStats(documents=len(lengths), corpus_tokens=int(lengths.sum()))
        self._ends = np.cumsum(lengths)
        if packing:
            total = self.stats.corpus_tokens
            full, rest = divmod(total, block_size)
            keep_rest = rest > 0 and not drop_last
            self._count = full + int(keep_rest)
            self.stats.dropped_tokens = rest if rest and drop_last else 0
            self.lengths = np.full(self._count, block_size, dtype=np.int64)
            if keep_rest:
                self.lengths[-1] = rest
        else:
            self._rows = np.flatnonzero(lengths > 0)  # documents end with eos: never empty in practice
            self.lengths = np.minimum(lengths[self._rows], block_size)
            self.stats.truncated = int((lengths > block_size).sum())
            self.stats.dropped_tokens = int(np.maximum(lengths - block_size, 0).sum())
            self._count = len(self._rows)
        self.stats.block_tokens = int(self.lengths.sum())
        self.stats._blocks = self._count

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = int(i) + (len(self) if int(i) < 0 else 0)
        if not 0 <= i < len(self):
            raise IndexError(i)
        ids, pieces, first, count = self._read(i)
        return Block(ids, list(ids), _source(first, count), pieces if self.packing and self.isolate else None)

    def _read(self, i: int) -> tuple[list[int], list[int], str, int]:
        import numpy as np

        if not self.packing:
            d = int(self._rows[i])
            return self.docs.token_ids(d)[: self.block_size].tolist(), [], self.docs.source(d), 1
        start = i * self.block_size
        end = start + int(self.lengths[i])
        d = int(np.searchsorted(self._ends, start, side="right"))
        parts, pieces, first = [], [], self.docs.source(d)
        while start < end:
            doc_start = int(self._ends[d]) - int(self.docs.lengths[d])
            take_from, take_to = start - doc_start, min(end, int(self._ends[d])) - doc_start
            parts.append(self.docs.token_ids(d)[take_from:take_to])
            pieces.append(take_to - take_from)
            start += take_to - take_from
            d += 1
        return np.concatenate(parts).tolist(), pieces, first, len(pieces)

    def features(self, i: int, sources: bool = False) -> dict[str, Any]:
        block = self[i]
        features = block.as_features()
        if sources:
            features["sources"] = [block.source]
        return features
