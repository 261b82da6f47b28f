"""Packing: best-fit-decreasing bins of whole examples up to `max_length` tokens.

Samples keep their boundaries (`seq_lens`): the collator restarts position ids per sample and hands the attention
the sample boundaries, so packed samples never attend to each other (see `model/varlen.py`).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from itertools import chain
from typing import Any


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices grouped into bins whose total length ≤ capacity. Each item goes, longest first, into the bin it
    fills best (least space left); O(n log n) with a sorted list of (space left, bin)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (space left, bin index), sorted
    for i in order:
        need = lengths[i]
        if need > capacity:
            raise ValueError(f"example of {need} tokens does not fit max_length={capacity}")
        pos = bisect.bisect_left(free, (need, -1))
        if pos < len(free):
            space, b = free.pop(pos)
            bins[b].append(i)
            bisect.insort(free, (space - need, b))
        else:
            bins.append([i])
            bisect.insort(free, (capacity - need, len(bins) - 1))
    return bins


def pack_examples(features: Sequence[dict[str, Any]], capacity: int) -> list[dict[str, Any]]:
    """Feature dicts ({input_ids, labels}) → packed rows {input_ids, labels, seq_lens}."""
    bins = best_fit_decreasing([len(f["input_ids"]) for f in features], capacity)
    rows = []
    for members in bins:
        members.sort()  # keep the data order inside a bin: deterministic and easy to read
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
    rows.sort(key=lambda r: -len(r["input_ids"]))  # fullest bins first; the sampler shuffles anyway
    return rows


def packing_efficiency(rows: Sequence[dict[str, Any]], capacity: int) -> float:
    """Real tokens / (rows × capacity)."""
    return sum(len(r["input_ids"]) for r in rows) / max(1, len(rows) * capacity)
