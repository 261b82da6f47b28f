"""Packing: best-fit-decreasing bins of whole examples up to `max_length` tokens.

Samples keep their boundaries (`seq_lens`): the collator restarts position ids per sample and hands the attention
the sample boundaries, so packed samples never attend to each other (see `model/varlen.py`).

Packing works on the examples' lengths only: `pack_lengths` returns which examples go in which row as two index
arrays, and the training dataset (data/train_sets.py) reads a row's tokens from the token store when it is asked
for it. No token list is copied to pack.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np


@dataclass
class PackedRows:
    """Row r holds the examples `members[starts[r]:starts[r + 1]]` (in data order); rows fullest first."""

    members: np.ndarray  # int64 example positions
    starts: np.ndarray  # int64, one more than rows
    totals: np.ndarray  # int64 tokens per row

    def __len__(self) -> int:
        return len(self.totals)

    def row(self, r: int) -> np.ndarray:
        return self.members[self.starts[r] : self.starts[r + 1]]

    def fill(self, capacity: int) -> float:
        """Real tokens / (rows × capacity)."""
        return float(self.totals.sum()) / max(1, len(self) * capacity)


def _assign_bins(lengths: np.ndarray, capacity: int) -> tuple[np.ndarray, int]:
    """Bin number of every item. Items go, longest first (ties in data order), into the bin with the least space
    left that holds them (ties: the oldest bin), else into a new bin. Bins are found through the distinct amounts
    of space left (at most capacity + 1 of them, kept sorted), each with a heap of its bins: O(n log capacity)."""
    order = np.argsort(-lengths, kind="stable")
    too_long = int(lengths.max()) if len(lengths) else 0
    if too_long > capacity:
        raise ValueError(f"example of {too_long} tokens does not fit max_length={capacity}")
    assign = np.empty(len(lengths), dtype=np.int64)
    spaces: list[int] = []  # distinct space-left values that some bin has, sorted
    by_space: dict[int, list[int]] = {}  # space left → heap of bin numbers
    bins = 0
    for i, need in zip(order.tolist(), lengths[order].tolist(), strict=True):
        pos = bisect.bisect_left(spaces, need)
        if pos < len(spaces):
            space = spaces[pos]
            heap = by_space[space]
            b = heapq.heappop(heap)
            if not heap:
                del spaces[pos], by_space[space]
        else:
            b, space = bins, capacity
            bins += 1
        assign[i] = b
        left = space - need
        heap = by_space.get(left)
        if heap is None:
            by_space[left] = [b]
            bisect.insort(spaces, left)
        else:
            heapq.heappush(heap, b)
    return assign, bins


def pack_lengths(lengths: Sequence[int] | np.ndarray, capacity: int) -> PackedRows:
    """Best-fit-decreasing rows of ≤ capacity tokens over examples of these lengths; examples keep their data
    order inside a row, and rows are sorted fullest first (ties: the order the bins were opened in)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    assign, bins = _assign_bins(lengths, capacity)
    totals = np.bincount(assign, weights=lengths, minlength=bins).astype(np.int64)
    rank = np.empty(bins, dtype=np.int64)
    rank[np.argsort(-totals, kind="stable")] = np.arange(bins)
    members = np.lexsort((np.arange(len(lengths)), rank[assign]))  # by row rank, then data order
    counts = np.bincount(rank[assign], minlength=bins)
    starts = np.zeros(bins + 1, dtype=np.int64)
    np.cumsum(counts, out=starts[1:])
    return PackedRows(members.astype(np.int64), starts, np.sort(totals)[::-1].copy())


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices grouped into bins whose total length ≤ capacity, in the order the bins were opened (each bin's
    members in placement order: longest first)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    assign, bins = _assign_bins(lengths, capacity)
    grouped: list[list[int]] = [[] for _ in range(bins)]
    for i in np.argsort(-lengths, kind="stable").tolist():
        grouped[assign[i]].append(i)
    return grouped


def pack_examples(features: Sequence[dict[str, Any]], capacity: int) -> list[dict[str, Any]]:
    """Feature dicts ({input_ids, labels}) → packed rows {input_ids, labels, seq_lens} (small, in-memory sets)."""
    packed = pack_lengths([len(f["input_ids"]) for f in features], capacity)
    rows = []
    for r in range(len(packed)):
        members = packed.row(r).tolist()
        rows.append(
            {
                "input_ids": list(chain.from_iterable(features[i]["input_ids"] for i in members)),
                "labels": list(chain.from_iterable(features[i]["labels"] for i in members)),
                "seq_lens": [len(features[i]["input_ids"]) for i in members],
                **(
                    {"sources": [s for i in members for s in features[i]["sources"]]}
                    if "sources" in features[members[0]]
                    else {}
                ),
            }
        )
    return rows


def packing_efficiency(rows: Sequence[dict[str, Any]], capacity: int) -> float:
    """Real tokens / (rows × capacity)."""
    return sum(len(r["input_ids"]) for r in rows) / max(1, len(rows) * capacity)
