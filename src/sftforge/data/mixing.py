"""Mixing several training sources (`datasets:`): the plan of which example trains when.

`plan_mixture` is pure over per-source arrays of trained-token counts (the examples themselves stay in the
memory-mapped store): it returns the global order as two int arrays, `source` and `index`, plus report figures.
The sources' config and its checks are data/mix_sources.py's (re-exported here).

Order of work per source: size it (max_samples / epochs / max_tokens → its pool, repeats allowed), then mix the
pools (concat: each pool whole; interleave_*: shares by weight of examples or of trained tokens, drawn from the
pool in a seeded order). Every random choice comes from `np.random.default_rng((seed, source id))`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sftforge.data.mix_sources import (
    MIX_BY,
    SIZES,
    SOURCE_KEYS,
    STRATEGIES,
    MixSource,
    parse_mix_sources,
    resolve_strategy,
)
from sftforge.errors import ConfigError, DataError

__all__ = [
    "MIX_BY",
    "SOURCE_KEYS",
    "STRATEGIES",
    "MixPlan",
    "MixSource",
    "SourceFigures",
    "mix_report",
    "parse_mix_sources",
    "plan_mixture",
    "resolve_strategy",
]


# ---------------------------------------------------------------------------------------------------------------
# The plan


@dataclass
class SourceFigures:
    """What one source gives the mix, for the start-up summary."""

    name: str
    available: int  # usable examples in the source
    examples: int  # examples in the plan (repeats counted)
    distinct: int
    trained_tokens: int
    share: float  # of all trained tokens in the plan

    @property
    def repeats(self) -> int:
        return self.examples - self.distinct


@dataclass
class MixPlan:
    """The global training order: example `index[k]` of source `source[k]` is the k-th one."""

    source: np.ndarray
    index: np.ndarray
    figures: list[SourceFigures]
    strategy: str
    by: str

    def __len__(self) -> int:
        return len(self.index)


def plan_mixture(
    trained_tokens: list[np.ndarray], sources: list[MixSource], strategy: str, by: str, seed: int
) -> MixPlan:
    """The mix of the sources' examples (`trained_tokens[s][i]`: trained tokens of example i of source s). Pure and
    deterministic for `seed`. `strategy` may be "auto" (see `resolve_strategy`)."""
    if len(trained_tokens) != len(sources):
        raise ValueError(f"{len(trained_tokens)} token arrays for {len(sources)} sources")
    if by not in MIX_BY:
        raise ConfigError(f"mix_by: {by!r} is not one of {', '.join(MIX_BY)}.")
    strategy = resolve_strategy(strategy, sources)
    tokens = [np.asarray(t, dtype=np.int64) for t in trained_tokens]
    rngs = [np.random.default_rng((seed % 2**63, s)) for s in range(len(sources))]
    for s, (src, tok) in enumerate(zip(sources, tokens, strict=True)):
        if len(tok) == 0:
            raise DataError(f"datasets[{s}] ({src.name}): no usable examples; check its path and format.")
        if src.max_tokens is not None and tok.sum() == 0:
            raise DataError(f"datasets[{s}] ({src.name}): max_tokens needs trained tokens, and it has none.")
    pools = [_size(src, tok, rng) for src, tok, rng in zip(sources, tokens, rngs, strict=True)]
    for s, (src, pool) in enumerate(zip(sources, pools, strict=True)):
        if len(pool) == 0:  # epochs so small that none of its examples is left
            raise DataError(
                f"datasets[{s}].epochs: {src.epochs:g} of {len(tokens[s]):,} examples leaves none; raise it or "
                "remove the source."
            )
    if strategy == "concat":
        chosen = pools
        order_source = np.concatenate([np.full(len(p), s, dtype=np.int32) for s, p in enumerate(pools)])
        order_index = np.concatenate(pools)
    else:
        chosen = _interleave_counts(pools, tokens, sources, rngs, strategy, by)
        order_source, order_index = _spread(chosen)
    return MixPlan(order_source, order_index, _figures(chosen, tokens, sources), strategy, by)


def _passes(pool: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` items of `pool` in a seeded order: whole shuffled passes, then a seeded part of one more."""
    full, rest = divmod(n, len(pool))
    parts = [rng.permuted(np.tile(pool, (full, 1)), axis=1).ravel()] if full else []
    if rest:
        parts.append(rng.permutation(pool)[:rest])
    return np.concatenate(parts) if parts else pool[:0]


def _size(src: MixSource, tok: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The source's pool: every example once, or as max_samples / epochs / max_tokens say."""
    every = np.arange(len(tok), dtype=np.int64)
    if src.max_samples is not None:
        return _passes(every, src.max_samples, rng)
    if src.epochs is not None:  # 2.5: every example twice, then a seeded half
        return _passes(every, round(src.epochs * len(tok)), rng)
    if src.max_tokens is not None:
        return _until(every, tok, src.max_tokens, rng.permutation(every), rng, nearest=False)
    return every


def _until(
    pool: np.ndarray, q: np.ndarray, target: float, first: np.ndarray, rng: np.random.Generator, nearest: bool
) -> np.ndarray:
    """`first` (the pool in a seeded order), then more shuffled passes over the pool, until their quantity `q`
    reaches `target`: up to the item that reaches it, or (`nearest`) to whichever end is closer to it. Only the
    items returned are generated (a few passes of millions of examples stay cheap)."""
    total = float(q[pool].sum())
    full = int(target // total)
    rest = target - full * total
    whole = [first] if full else []
    if full > 1:
        whole.append(rng.permuted(np.tile(pool, (full - 1, 1)), axis=1).ravel())
    last = first if not full else rng.permutation(pool)
    cum = np.concatenate([[0], np.cumsum(q[last])])
    j = min(int(np.searchsorted(cum, rest - 1e-9)), len(last))  # the fewest items whose total reaches `rest`
    if nearest and j > 0 and rest - cum[j - 1] < cum[j] - rest:
        j -= 1
    return np.concatenate([*whole, last[:j]])


def _interleave_counts(
    pools: list[np.ndarray],
    tokens: list[np.ndarray],
    sources: list[MixSource],
    rngs: list[np.random.Generator],
    strategy: str,
    by: str,
) -> list[np.ndarray]:
    """Each source's draw so its share of the quantity (examples or trained tokens) matches its weight."""
    weights = np.array([s.weight if s.weight is not None else 1.0 for s in sources], dtype=np.float64)
    weights = weights / weights.sum()
    qs = [np.ones(len(t), dtype=np.int64) if by == "examples" else t for t in tokens]
    have = np.array([float(q[p].sum()) for q, p in zip(qs, pools, strict=True)])
    if np.any(have == 0):
        s = int(np.argmin(have))
        raise DataError(f"datasets[{s}] ({sources[s].name}): no trained tokens to share by (mix_by: tokens).")
    # under: the largest total no pool runs out of; over: the smallest total that uses up every pool
    total = float((have / weights).min() if strategy == "interleave_under" else (have / weights).max())
    out = []
    for src, pool, q, w, rng, h in zip(sources, pools, qs, weights, rngs, have, strict=True):
        # A sized pool is in a seeded order already, its first pass distinct: draw it as it is, so a prefix
        # repeats nothing it need not; an unsized one (every example, in file order) is shuffled first.
        first = pool if _sized(src) else rng.permutation(pool)
        target = w * total
        if strategy == "interleave_under" and target >= h * (1 - 1e-12):
            out.append(first)  # this source sets the total: all of it, once
            continue
        drawn = _until(pool, q, target, first, rng, nearest=True)
        if strategy == "interleave_over" and len(drawn) < len(pool):
            drawn = first  # rounding must not leave an example out
        out.append(drawn)
    return out


def _sized(src: MixSource) -> bool:
    return any(getattr(src, key) is not None for key in SIZES)


def _spread(chosen: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Interleave evenly: item k of a source of n items sits at (k + offset) / n, so every prefix of the order
    holds the sources in their shares (a run stopped early trained the mix it asked for)."""
    count = len(chosen)
    keys = [(np.arange(len(c)) + (s + 1) / (count + 1)) / max(1, len(c)) for s, c in enumerate(chosen)]
    order = np.argsort(np.concatenate(keys), kind="stable")
    source = np.concatenate([np.full(len(c), s, dtype=np.int32) for s, c in enumerate(chosen)])
    return source[order], np.concatenate(chosen)[order]


def _figures(
    chosen: list[np.ndarray], tokens: list[np.ndarray], sources: list[MixSource]
) -> list[SourceFigures]:
    trained = [int(t[c].sum()) for c, t in zip(chosen, tokens, strict=True)]
    all_tokens = sum(trained)
    return [
        SourceFigures(
            name=src.name,
            available=len(tok),
            examples=len(c),
            distinct=int(np.count_nonzero(np.bincount(c, minlength=len(tok)))),
            trained_tokens=n,
            share=n / all_tokens if all_tokens else 0.0,
        )
        for src, tok, c, n in zip(sources, tokens, chosen, trained, strict=True)
    ]


def mix_report(plan: MixPlan) -> list[str]:
    """Lines for the start-up summary: the strategy, then per source its examples, repeats and token share."""
    total = sum(f.trained_tokens for f in plan.figures)
    lines = [f"data mix: {plan.strategy} by {plan.by} — {len(plan):,} examples, {total:,} trained tokens"]
    for f in plan.figures:
        repeats = f", {f.repeats:,} repeats" if f.repeats else ""
        lines.append(
            f"  {f.name}: {f.examples:,} of {f.available:,} examples ({f.distinct:,} distinct{repeats}), "
            f"{f.trained_tokens:,} trained tokens ({100 * f.share:.1f}%)"
        )
    return lines
