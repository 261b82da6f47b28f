"""Mixing several training sources (`datasets:`): the sources' config, and the plan of which example trains when.

`parse_mix_sources` validates the recipe's list once (ConfigError with keys like `datasets[2].weight`).
`plan_mixture` is pure over per-source arrays of trained-token counts (the examples themselves stay in the
memory-mapped store): it returns the global order as two int arrays, `source` and `index`, plus report figures.

Order of work per source: size it (max_samples / epochs / max_tokens → its pool, repeats allowed), then mix the
pools (concat: each pool whole; interleave_*: shares by weight of examples or of trained tokens, drawn from the
pool in a seeded order). Every random choice comes from `np.random.default_rng((seed, source id))`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sftforge.config.loader import ALIASES, data_paths_missing
from sftforge.errors import ConfigError, DataError

STRATEGIES = ("concat", "interleave_under", "interleave_over")
MIX_BY = ("examples", "tokens")
SOURCE_KEYS = (
    "path",
    "dataset_name",
    "dataset_config",
    "split",
    "name",
    "weight",
    "max_samples",
    "epochs",
    "max_tokens",
    "columns",
    "tags",
)
# Names a source may also be written with: the top-level keys' (and their ALIASES'), and LLaMA-Factory's
# dataset_info.json entry keys, so an entry can be copied over.
_SOURCE_ALIASES = {
    "train_data_path": "path",
    "dataset_train_split": "split",
    "file_name": "path",
    "hf_hub_url": "dataset_name",
    "subset": "dataset_config",
    "num_samples": "max_samples",
    "probability": "weight",
}
_SIZES = ("max_samples", "epochs", "max_tokens")


@dataclass(frozen=True)
class MixSource:
    """One source of `datasets:`, validated. At most one of max_samples / epochs / max_tokens is set."""

    name: str
    path: tuple[str, ...] | None = None
    dataset_name: str | None = None
    dataset_config: str | None = None
    split: str = "train"
    weight: float | None = None
    max_samples: int | None = None
    epochs: float | None = None
    max_tokens: int | None = None
    columns: dict[str, str] | None = field(default=None, compare=False)
    tags: dict[str, str] | None = field(default=None, compare=False)


def parse_mix_sources(
    raw: Any,
    interleave_probs: list[float] | str | None = None,
    *,
    columns: dict[str, str] | None = None,
    tags: dict[str, str] | None = None,
    check_paths: bool = True,
) -> list[MixSource]:
    """The recipe's `datasets:` list → MixSources, or ConfigError listing every problem. `interleave_probs` (a
    list or LLaMA-Factory's "0.7,0.3") gives the weights in order; top-level `columns`/`tags` apply to the sources
    that set none of their own."""
    problems: list[str] = []
    if not isinstance(raw, list) or not raw:
        raise ConfigError(
            f"datasets: expected a non-empty list of sources, each a mapping like {{path: a.jsonl, weight: 0.7}}, "
            f"got {raw!r}."
        )
    sources = [_parse_source(item, i, columns, tags, check_paths, problems) for i, item in enumerate(raw)]
    weights = _weights(sources, interleave_probs, problems)
    if problems:
        raise ConfigError(problems)
    ok = [s for s in sources if s is not None]
    if weights is not None:
        ok = [_with_weight(s, w) for s, w in zip(ok, weights, strict=True)]
    return ok


def _with_weight(source: MixSource, weight: float) -> MixSource:
    return dataclasses.replace(source, weight=weight)


def _parse_source(
    item: Any,
    i: int,
    columns: dict[str, str] | None,
    tags: dict[str, str] | None,
    check_paths: bool,
    problems: list[str],
) -> MixSource | None:
    where = f"datasets[{i}]"
    if not isinstance(item, dict):
        problems.append(f"{where}: expected a mapping like {{path: a.jsonl, weight: 0.7}}, got {item!r}.")
        return None
    before = len(problems)
    values: dict[str, Any] = {}
    for key, value in item.items():
        name = _SOURCE_ALIASES.get(ALIASES.get(key, key), ALIASES.get(key, key))
        if name == "formatting":  # LLaMA-Factory's alpaca/sharegpt/openai: sftforge detects it per row
            continue
        if name not in SOURCE_KEYS:
            close = difflib.get_close_matches(str(key), SOURCE_KEYS, n=1, cutoff=0.6)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            problems.append(f"{where}.{key}: unknown key.{hint} A source takes: {', '.join(SOURCE_KEYS)}.")
            continue
        if name in values:
            problems.append(f"{where}.{key}: sets {name} a second time; keep one.")
            continue
        values[name] = value
    path = _paths(values.get("path"), f"{where}.path", check_paths, problems)
    hub = values.get("dataset_name")
    if (path is None) == (hub is None):
        problems.append(
            f"{where}: give exactly one of path (a file, folder, glob or list) or dataset_name (a hub name or a "
            "save_to_disk folder)."
        )
    if hub is not None and not isinstance(hub, str):
        problems.append(f"{where}.dataset_name: expected a string, got {hub!r}.")
    for key in ("dataset_config", "split", "name"):
        if key in values and not isinstance(values[key], str):
            problems.append(f"{where}.{key}: expected a string, got {values[key]!r}.")
    weight = _number(values.get("weight"), f"{where}.weight", float, problems)
    sizes = {k: values[k] for k in _SIZES if values.get(k) is not None}
    if len(sizes) > 1:
        problems.append(
            f"{where}: {' and '.join(sizes)} both size the source (max_samples: a count, epochs: passes over it, "
            "max_tokens: a trained-token budget); keep one."
        )
    max_samples = _number(values.get("max_samples"), f"{where}.max_samples", int, problems)
    epochs = _number(values.get("epochs"), f"{where}.epochs", float, problems)
    max_tokens = _number(values.get("max_tokens"), f"{where}.max_tokens", int, problems)
    own_columns, own_tags = values.get("columns"), values.get("tags")
    if own_columns is None and own_tags is None:
        own_columns, own_tags, prefix = columns, tags, ""
    else:
        prefix = f"{where}."
    from sftforge.data.columns import compile_columns

    try:
        compile_columns(own_columns, own_tags, where=prefix)
    except ConfigError as e:
        problems.extend(e.problems if prefix else [])  # top-level columns/tags are checked at their own key
    if len(problems) > before:
        return None
    name = values.get("name") or (_path_name(path) if path else _hub_name(hub, values))
    return MixSource(
        name=name,
        path=path,
        dataset_name=hub,
        dataset_config=values.get("dataset_config"),
        split=values.get("split", "train"),
        weight=weight,
        max_samples=max_samples,
        epochs=epochs,
        max_tokens=max_tokens,
        columns=own_columns,
        tags=own_tags,
    )


def _paths(value: Any, key: str, check: bool, problems: list[str]) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(p, str) and p for p in items):
        problems.append(f"{key}: expected a file, folder or glob, or a list of them, got {value!r}.")
        return None
    for missing in data_paths_missing(items) if check else []:
        problems.append(f"{key}: {missing!r} does not exist (checked relative to the working directory).")
    return tuple(items)


def _number(value: Any, key: str, kind: type, problems: list[str]) -> Any:
    if value is None:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind is int and ok and float(value).is_integer():
        value = int(value)
    elif kind is int:
        ok = False
    if not ok or value <= 0:
        what = "a whole number" if kind is int else "a number"
        problems.append(
            f"{key}: {value!r} must be {what} above 0 (remove the key to leave the source as it is)."
        )
        return None
    return kind(value)


def _path_name(path: tuple[str, ...]) -> str:
    return path[0] if len(path) == 1 else f"{path[0]} (+{len(path) - 1} more)"


def _hub_name(hub: Any, values: dict[str, Any]) -> str:
    config = f"/{values['dataset_config']}" if values.get("dataset_config") else ""
    split = values.get("split", "train")
    return f"{hub}{config}" + ("" if split == "train" else f":{split}")


def _weights(
    sources: list[MixSource | None], probs: list[float] | str | None, problems: list[str]
) -> list[float] | None:
    """Weights from interleave_probs, checked against the sources' own (all or none must have one)."""
    given = [s is not None and s.weight is not None for s in sources]
    if any(given) and not all(given) and all(s is not None for s in sources):
        missing = [i for i, g in enumerate(given) if not g]
        problems.append(
            f"datasets[{missing[0]}].weight: some sources have a weight and this one has none; give every "
            "source a weight, or none (then mix_strategy: concat uses each source as sized)."
        )
    if probs is None:
        return None
    if any(given):
        problems.append("interleave_probs: the sources have their own weight too; keep one of the two.")
        return None
    values = _parse_probs(probs, problems)
    if values is None:
        return None
    if len(values) != len(sources):
        problems.append(
            f"interleave_probs: {len(values)} value(s) for {len(sources)} source(s) in datasets; give one per "
            "source, in order."
        )
        return None
    return values


def _parse_probs(probs: list[float] | str, problems: list[str]) -> list[float] | None:
    parts = probs.split(",") if isinstance(probs, str) else probs
    out: list[float] = []
    for k, part in enumerate(parts):
        try:
            value = float(part.strip() if isinstance(part, str) else part)
        except (TypeError, ValueError):
            problems.append(f"interleave_probs: item {k} ({part!r}) is not a number; write e.g. 0.7,0.3.")
            return None
        if not (math.isfinite(value) and value > 0):
            problems.append(f"interleave_probs: item {k} ({value:g}) must be above 0.")
            return None
        out.append(value)
    return out


def resolve_strategy(strategy: str, sources: list[MixSource]) -> str:
    """`auto` → concat without weights, interleave_under with them; concat with weights is refused."""
    weighted = any(s.weight is not None for s in sources)
    if strategy == "auto":
        return "interleave_under" if weighted else "concat"
    if strategy not in STRATEGIES:
        raise ConfigError(f"mix_strategy: {strategy!r} is not one of auto, {', '.join(STRATEGIES)}.")
    if strategy == "concat" and weighted:
        raise ConfigError(
            "mix_strategy: concat takes every source as sized (max_samples / epochs / max_tokens) and ignores "
            "weights; use interleave_under or interleave_over with weights, or remove them."
        )
    return strategy


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
    return any(getattr(src, key) is not None for key in _SIZES)


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
