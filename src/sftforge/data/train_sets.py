"""What the Trainer iterates: examples or packed rows, read from the token store when asked for.

Both are map-style datasets with a `lengths` array, so the length-grouped sampler needs no pass over the data, and
both hold only index arrays: DataLoader workers (forked) share the memory-mapped store instead of copying lists.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch.utils.data import Dataset, Sampler

from sftforge.data.packing import PackedRows
from sftforge.data.store import ExampleView


class ExampleDataset(Dataset):
    """One training row per example (an `ExampleView`) or pretraining block (a `blocks.BlockView`):
    {input_ids, labels} (+ `sources`: its `file:line`; + `seq_lens`: a block's documents)."""

    def __init__(self, view: Any, sources: bool = True) -> None:
        self.view, self.with_sources = view, sources

    def __len__(self) -> int:
        return len(self.view)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if hasattr(self.view, "features"):
            return self.view.features(int(i), self.with_sources)
        example = self.view[int(i)]  # a plain list of examples (streaming's eval set)
        features = dict(example.as_features())
        if self.with_sources:
            features["sources"] = [example.source]
        return features

    @property
    def lengths(self) -> np.ndarray:
        if hasattr(self.view, "lengths"):
            return self.view.lengths
        return np.fromiter((len(e.input_ids) for e in self.view), dtype=np.int64, count=len(self.view))


class PackedDataset(Dataset):
    """One training row per packed bin: its examples' tokens one after another, `seq_lens` the boundaries."""

    def __init__(self, view: ExampleView, rows: PackedRows, sources: bool = True) -> None:
        self.view, self.rows, self.with_sources = view, rows, sources

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, r: int) -> dict[str, Any]:
        members = self.rows.row(int(r)).tolist()
        ids = np.concatenate([self.view.token_ids(i) for i in members])
        labels = np.concatenate([self.view.labels(i) for i in members])
        row: dict[str, Any] = {
            "input_ids": ids.tolist(),
            "labels": labels.tolist(),
            "seq_lens": [int(self.view.lengths[i]) for i in members],
        }
        if self.with_sources:
            row["sources"] = [self.view.source(i) for i in members]
        return row

    @property
    def lengths(self) -> np.ndarray:
        return self.rows.totals

    def fill(self, capacity: int) -> float:
        return self.rows.fill(capacity)


def length_grouped_order(lengths: np.ndarray, batch_size: int, generator: Any = None) -> np.ndarray:
    """transformers' `get_length_grouped_indices` on an array: the same order for the same random state (one
    `torch.randperm`), without its Python lists (a million examples would cost ~100 MB per epoch there)."""
    import torch

    n = len(lengths)
    mult = min(n // (batch_size * 4), 50) or 1
    order = torch.randperm(n, generator=generator).numpy()
    size = mult * batch_size
    maxima = []
    for start in range(0, n, size):
        mega = order[start : start + size]
        order[start : start + size] = mega[np.argsort(-lengths[mega], kind="stable")]  # stable, like sorted()
        maxima.append(lengths[order[start]])
    if maxima:  # the longest example first, so that an out-of-memory happens at once
        first = int(np.argmax(maxima)) * size
        order[0], order[first] = order[first], order[0]
    return order


class LengthGroupedIndexSampler(Sampler):
    """`group_by_length` sampling over a dataset's `lengths` array (see `length_grouped_order`)."""

    def __init__(self, lengths: np.ndarray, batch_size: int, generator: Any = None) -> None:
        self.lengths, self.batch_size, self.generator = np.asarray(lengths), batch_size, generator

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Any:
        for i in length_grouped_order(self.lengths, self.batch_size, self.generator):
            yield int(i)
