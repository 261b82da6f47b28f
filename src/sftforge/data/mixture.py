"""`datasets:` — several training sets, each tokenized into its own cached token store, mixed by index.

Each source is prepared exactly as a single training set would be (its own reader options, column mapping and
cache entry, so adding a source never re-tokenizes the others); its held-out share, if any, is taken before the
mix so that no example is both trained and evaluated. data/mixing.py plans which examples train, in which order
and how often; the result is one `ExampleView` over all the sources' stores, so nothing is copied.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

import numpy as np

from sftforge.data.cache import CacheStatus
from sftforge.data.columns import compile_columns
from sftforge.data.lengths import check_length_drops
from sftforge.data.mixing import mix_report, plan_mixture, resolve_strategy
from sftforge.data.pipeline import (
    DataStats,
    PreparedData,
    TokenizeSpec,
    holdout_positions,
    merge_stats,
    prepare_data,
)
from sftforge.data.store import ExampleView


def prepare_mixture(data: Any, spec: TokenizeSpec, seed: int) -> PreparedData:
    from sftforge.data.mix_sources import parse_mix_sources

    sources = parse_mix_sources(data.datasets, data.interleave_probs, columns=data.columns, tags=data.tags)
    parts: list[PreparedData] = []
    train_views: list[ExampleView] = []
    held_views: list[ExampleView] = []
    for i, src in enumerate(sources):
        one = replace(
            data,
            datasets=None,
            interleave_probs=None,
            mix_strategy="auto",
            train_data_path=list(src.path) if src.path else None,
            dataset_name=src.dataset_name,
            dataset_config=src.dataset_config,
            dataset_train_split=src.split,
            dataset_test_split=None,
            eval_data_path=None,
            eval_split_ratio=0.0,
            max_samples=None,
            columns=src.columns,
            tags=src.tags,
            max_dropped_fraction=1.0,  # checked once over all the sources, below
        )
        cmap = compile_columns(src.columns, src.tags, where=f"datasets[{i}].")
        part = prepare_data(one, replace(spec, columns=cmap), seed)
        view = part.train
        if data.eval_split_ratio > 0 and not data.eval_data_path and len(view) > 1:
            kept, held = holdout_positions(len(view), data.eval_split_ratio, seed + i)
            held_views.append(view.subset(held))
            view = view.subset(kept)
        parts.append(part)
        train_views.append(view)
    stats = DataStats()
    for part in parts:
        merge_stats(stats, part.train_stats)
    check_length_drops(stats, data.max_dropped_fraction, spec.max_length, spec.truncation, "train")
    strategy = resolve_strategy(data.mix_strategy, sources)
    plan = plan_mixture([v.trained_counts for v in train_views], sources, strategy, data.mix_by, seed)
    train = pick(train_views, plan.source, plan.index)
    evaluation = ExampleView.empty()
    eval_stats: DataStats | None = None
    if data.eval_data_path:
        held_out = prepare_data(
            replace(data, datasets=None, train_data_path=list(data.eval_data_path), eval_data_path=None,
                    eval_split_ratio=0.0, max_samples=None),
            spec,
            seed,
        )  # fmt: skip
        evaluation, eval_stats = held_out.train, held_out.train_stats
    elif held_views:
        evaluation = concatenate(held_views)
    stats.tokens = int(train.lengths.sum())  # what the mix trains per epoch, repeats included
    stats.trained_tokens = int(train.trained_counts.sum())
    prepared = PreparedData(train, evaluation, stats, eval_stats, cache=_cache_status(parts))
    prepared.mix = mix_report(plan)
    return prepared


def pick(views: list[ExampleView], source: np.ndarray, index: np.ndarray) -> ExampleView:
    """One view of example `index[k]` of `views[source[k]]`, for every k, over all the views' stores."""
    stores: list[Any] = []
    which = np.empty(len(index), dtype=np.int16)
    positions = np.empty(len(index), dtype=np.int64)
    for s, view in enumerate(views):
        mask = source == s
        chosen = np.asarray(index[mask], dtype=np.int64)
        which[mask] = view.which[chosen] + len(stores)
        positions[mask] = view.index[chosen]
        stores.extend(view.stores)
    return ExampleView(stores, which, positions)


def concatenate(views: list[ExampleView]) -> ExampleView:
    source = np.concatenate([np.full(len(v), s, dtype=np.int32) for s, v in enumerate(views)])
    index = np.concatenate([np.arange(len(v), dtype=np.int64) for v in views])
    return pick(views, source, index)


def _cache_status(parts: list[PreparedData]) -> CacheStatus:
    states = [p.cache.state if p.cache else "off" for p in parts]
    counts = Counter(states)
    if set(states) == {"off"}:
        return CacheStatus("off")
    state = "hit" if set(states) == {"hit"} else "stored" if "miss" not in states else "miss"
    seconds = sum(p.cache.seconds for p in parts if p.cache)
    note = ", ".join(f"{n} source(s) {s}" for s, n in counts.items())
    status = CacheStatus(state, parts[0].cache.key if parts[0].cache else "", seconds, note)
    return status
