"""Rows dropped for their length: the length distribution, the `max_dropped_fraction` check, the warning line.

A row's length is its tokens before any truncation (a row split into one example per trained turn: its longest
example). DataStats keeps them as a Counter length → rows, so shards of one split and the sources of a mix add up
to exactly what one process reading everything would count.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from sftforge.data.rows import DROPPED_NOT_BAD
from sftforge.errors import DataError

PERCENTILES = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
KEEP = 0.99  # the share of rows the suggested max_length keeps whole


def percentile(lengths: Counter, q: float) -> int:
    """Nearest rank: the smallest length L with at least `q` of the rows no longer than L (0 without rows)."""
    total = sum(lengths.values())
    if not total:
        return 0
    need, seen = max(1, math.ceil(q * total)), 0
    for length in sorted(lengths):
        seen += lengths[length]
        if seen >= need:
            return int(length)
    return int(max(lengths))


def distribution(lengths: Counter) -> str:
    """ "p50 120, p90 340, p99 610, max 1400 tokens"."""
    parts = [f"{name} {percentile(lengths, q)}" for name, q in PERCENTILES]
    return ", ".join([*parts, f"max {max(lengths) if lengths else 0}"]) + " tokens"


def length_drops(stats: Any) -> Counter:
    """Rows dropped for their length, by reason (`DROPPED_NOT_BAD`)."""
    return Counter({r: n for r, n in stats.dropped.items() if r in DROPPED_NOT_BAD and n})


def lengths_line(stats: Any) -> str | None:
    """The start-up summary's (and `sftforge inspect`'s) length line; None when no row got that far."""
    if not stats.lengths:
        return None
    keep = percentile(stats.lengths, KEEP)
    return (
        f"{distribution(stats.lengths)} per row before truncation; max_length {keep} keeps "
        f"{KEEP:.0%} of rows whole"
    )


def suggested_max_length(lengths: Counter, max_length: int) -> tuple[int, str]:
    """The max_length to suggest after drops, and what it keeps: the one keeping 99% of the rows whole, or, when
    fewer than 1% were dropped (that one is no larger than max_length), the longest row."""
    keep = percentile(lengths, KEEP)
    if keep > max_length or not lengths:
        return keep, f"{KEEP:.0%} of the rows"
    return max(lengths), "every row"


def drop_warning(stats: Any, max_length: int, max_fraction: float, split: str = "") -> str | None:
    """A visible line about the rows dropped for length (None: none were). Over `max_fraction` (only seen where
    the check was lifted, `sftforge inspect`) it says that training stops."""
    drops = length_drops(stats)
    n = sum(drops.values())
    if not n or not stats.rows:
        return None
    rows = f"{split} rows" if split else "rows"
    share = n / stats.rows
    limit = (
        f"more than max_dropped_fraction={max_fraction:g}: `sftforge train` stops"
        if share > max_fraction
        else f"within max_dropped_fraction={max_fraction:g}"
    )
    keep, kept = suggested_max_length(stats.lengths, max_length)
    return (
        f"⚠ dropped {n} of {stats.rows} {rows} ({share:.1%}) longer than max_length={max_length} "
        f"({_counts(drops)}), {limit}; max_length {keep} keeps {kept} whole"
    )


def check_length_drops(
    stats: Any, max_fraction: float, max_length: int, truncation: str, split: str = ""
) -> None:
    """Raise DataError when more than `max_fraction` of the rows read were dropped for their length: a
    max_length far below the data's lengths silently trains on the short rows only, a biased subset."""
    drops = length_drops(stats)
    n = sum(drops.values())
    if not stats.rows or n / stats.rows <= max_fraction:
        return
    rows = f"{split} rows" if split else "rows"
    keep, kept = suggested_max_length(stats.lengths, max_length)
    fixes = [f"set max_length: {keep} (keeps {kept} whole; memory grows with it)"]
    if truncation != "right":
        fixes.append("set truncation: right (cuts long rows at max_length and trains their start)")
    fixes.append("raise max_dropped_fraction (1.0 never stops) to train on the rows that fit")
    raise DataError(
        f"{n} of {stats.rows} {rows} read ({n / stats.rows:.1%}) were dropped for being longer than "
        f"max_length={max_length} (truncation: {truncation}; {_counts(drops)}), more than "
        f"max_dropped_fraction={max_fraction:g} allows.\n"
        f"Row lengths before truncation: {distribution(stats.lengths)}.\n"
        "Training on the rows that fit would quietly leave the long ones out of what the model learns. "
        f"Fix: {'; or '.join(fixes)}."
    )


def _counts(counter: Counter) -> str:
    return ", ".join(f"{r}: {n}" for r, n in counter.most_common())
