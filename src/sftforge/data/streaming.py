"""Streaming: training rows read, tokenized and (optionally) packed while training, with an exact position.

The rows are cut into windows of `window` rows of this rank's share. A window is tokenized in one go (the same
`process_rows` as the non-streaming path), packed with best-fit-decreasing when asked, shuffled with a seed of
(seed, epoch, window) unless sequential, and emitted item by item. Everything about a window depends only on its
rows and that seed, so re-reading it gives the same items in the same order: a position (epoch, window, items of
that window already emitted) restarts the stream exactly, with no example repeated or skipped.

Ranks: global row i belongs to rank i % world_size, so ranks read disjoint shares and each tokenizes only its own
(other ranks' .jsonl lines are not even parsed). After the last row the stream starts again (epoch + 1) in the
same window order; only the shuffle inside each window changes with the epoch. It never ends: `max_steps` does.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import torch

from sftforge.data.encoding import overlappable
from sftforge.data.packing import pack_examples
from sftforge.data.parallel import chunked, run_chunks
from sftforge.data.pipeline import CHUNK_ROWS, DataStats, account, check_rows
from sftforge.data.readers import (
    SourceRow,
    iter_dataset_rows,
    iter_rows,
    jsonl_lines,
    jsonl_row,
    resolve_key_files,
)
from sftforge.data.rows import TokenizeSpec, process_rows
from sftforge.errors import DataError

POSITION_KEY = (
    "stream_position"  # the feature/batch key carrying an item's position (popped before the model)
)


@dataclass(frozen=True)
class StreamPosition:
    """Where the stream restarts: `emitted` items of window `window` (of this rank's share) of pass `epoch` done."""

    epoch: int = 0
    window: int = 0
    emitted: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> StreamPosition:
        return cls(int(doc["epoch"]), int(doc["window"]), int(doc["emitted"]))


@dataclass(frozen=True)
class _Line:
    """A .jsonl line not parsed yet: other ranks' lines and lines before a resume point are never parsed."""

    path: Path
    lineno: int
    raw: bytes


RowItem = SourceRow | _Line


def _materialise(item: RowItem) -> SourceRow | None:
    return jsonl_row(item.path, item.lineno, item.raw) if isinstance(item, _Line) else item


def file_rows(paths: Iterable[Path]) -> Iterator[RowItem]:
    """Rows of data files; .jsonl is read line by line (never whole), parquet in batches, .json/.csv whole."""
    for path in paths:
        if path.suffix.lower() != ".jsonl":
            yield from iter_rows(path)
            continue
        for lineno, raw in jsonl_lines(path):
            if raw.strip():  # blank lines are no rows (as in readers.iter_rows)
                yield _Line(path, lineno, raw)


def row_source(data: Any) -> Callable[[], Iterator[RowItem]]:
    """A function giving a fresh pass over the training rows of DataArguments `data` (files or a dataset)."""
    if data.train_data_path:
        paths = resolve_key_files(list(data.train_data_path), "train_data_path")
        return lambda: file_rows(paths)
    return lambda: iter_dataset_rows(data.dataset_name, data.dataset_config, data.dataset_train_split)


@dataclass
class StreamConfig:
    window: int = 1000  # rows of this rank's share per window
    packing: bool = False
    capacity: int = 1024  # max_length: the packed rows' size
    shuffle: bool = True  # within each window, seeded by (seed, epoch, window)
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    max_rows: int | None = None  # max_samples: only the first rows of the data (all ranks together)
    on_bad_rows: str = "error"
    max_bad_fraction: float = 1.0
    max_dropped_fraction: float = 1.0


class StreamingDataset(torch.utils.data.IterableDataset):
    """Feature dicts {input_ids, labels, sources, (seq_lens), stream_position} made while iterating. `start` is
    where the next iteration begins; `stats` counts what this rank has read so far (rows, kept, dropped…)."""

    streaming = True  # SFTTrainer builds its own DataLoader for such a dataset (no accelerate sharding)

    def __init__(
        self, rows: Callable[[], Iterator[RowItem]], spec: TokenizeSpec, config: StreamConfig
    ) -> None:
        super().__init__()
        self.rows, self.spec, self.config = rows, spec, config
        self.start = StreamPosition()
        self.stats = DataStats()
        self._first_bad: dict[str, str] = {}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        start = self.start
        epoch = start.epoch
        while True:
            resuming = epoch == start.epoch
            made = 0
            for index, rows in self._windows(start.window if resuming else 0):
                items = self.window_items(rows, epoch, index)
                made += len(items)
                skip = start.emitted if resuming and index == start.window else 0
                for i in range(skip, len(items)):
                    yield {**items[i], POSITION_KEY: StreamPosition(epoch, index, i + 1).as_dict()}
            if not made:
                where = (
                    f" from window {start.window} on (the resume point)" if resuming and start.window else ""
                )
                raise DataError(
                    f"streaming: no training example in rank {self.config.rank}'s share of the rows{where}: "
                    f"{self._describe_drops()}. Check the data (`sftforge inspect`); with several processes "
                    "every one needs rows."
                )
            epoch += 1

    def _windows(self, skip: int) -> Iterator[tuple[int, list[RowItem]]]:
        """(window index, its rows) of this rank's share, from window `skip` on (earlier rows unparsed)."""
        c = self.config
        rows: Iterable[RowItem] = self.rows()
        if c.max_rows is not None:
            rows = islice(rows, c.max_rows)
        mine = islice(rows, c.rank, None, c.world_size)
        mine = islice(mine, skip * c.window, None)
        for offset, chunk in enumerate(chunked(mine, c.window)):
            yield skip + offset, chunk

    def window_items(self, items: list[RowItem], epoch: int, index: int) -> list[dict[str, Any]]:
        """One window's rows → its emitted items, in their order (deterministic for the same rows)."""
        c = self.config
        rows = [row for row in map(_materialise, items) if row is not None]
        features = [
            {**example.as_features(), "sources": [example.source]} for example in self._examples(rows)
        ]
        if c.packing and features:
            features = pack_examples(features, c.capacity)
        if c.shuffle:
            random.Random(f"{c.seed}:{epoch}:{index}").shuffle(features)
        return features

    def _examples(self, rows: list[SourceRow]) -> Iterator[Any]:
        """As pipeline.build_examples, per window: bad rows stop the run (on_bad_rows: error) or are counted."""
        c, stats = self.config, self.stats
        batches = run_chunks(
            process_rows, self.spec, chunked(rows, CHUNK_ROWS), 1, thread=overlappable(self.spec.tokenizer)
        )
        try:
            yield from self._consume(result for batch in batches for result in batch)
        finally:
            batches.close()
        # On the rows read so far, after each window
        check_rows(stats, self.spec, c.on_bad_rows, c.max_bad_fraction, c.max_dropped_fraction, "train",
                   self._first_bad)  # fmt: skip

    def _consume(self, results: Iterable[tuple[str, str, Any]]) -> Iterator[Any]:
        for result in results:  # counted, and bad rows handled, exactly as without streaming
            made: list[Any] = []
            account(result, self.stats, self._first_bad, self.config.on_bad_rows, made.append)
            yield from made

    def _describe_drops(self) -> str:
        dropped = ", ".join(f"{r}: {n}" for r, n in self.stats.dropped.most_common())
        return (
            f"{self.stats.rows} rows read, dropped {dropped}" if dropped else f"{self.stats.rows} rows read"
        )


@dataclass
class PositionCollator:
    """Wraps a collator: the batch carries the position of its last item (items come in stream order), which
    SFTTrainer takes out before the model sees the batch and records once the batch is trained."""

    inner: Callable[[list[dict[str, Any]]], dict[str, Any]]

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.inner([{k: v for k, v in f.items() if k != POSITION_KEY} for f in features])
        if POSITION_KEY in features[-1]:  # the eval set, read whole, goes through this collator too
            batch[POSITION_KEY] = features[-1][POSITION_KEY]
        return batch
