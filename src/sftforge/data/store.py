"""The token store: tokenized examples in flat, memory-mapped files, written once and read by every process.

One split of examples is four arrays in a folder, named `<split>.<kind>`:

- `ids`       int32, every example's token ids one after another;
- `trained`   uint8, 1 where the token is trained (its label is the token itself), 0 where the label is -100;
- `offsets`   int64, example i is `ids[offsets[i]:offsets[i+1]]` (one more entry than examples);
- `counts`    int32, the trained tokens of each example (mixing, summaries: no pass over `trained` needed);
- `src_blob` / `src_offsets`: the examples' `file:line` sources as UTF-8 bytes + int64 offsets.

Nothing is loaded whole: the arrays are opened with `np.memmap`, so ranks and DataLoader workers share the
operating system's page cache instead of each holding a copy, and a process's memory grows only with the lengths
array (4 bytes per example) and the pages it actually reads. `ExampleView` is a list-like view of some of a store's
examples (a held-out split, a mixture, a repeat) by index; packing works on its lengths only (data/packing.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from sftforge.data.masking import IGNORE_INDEX
from sftforge.data.rows import Example

KINDS = ("ids", "trained", "offsets", "counts", "src_blob", "src_offsets")
_DTYPES = {
    "ids": np.int32,
    "trained": np.uint8,
    "offsets": np.int64,
    "counts": np.int32,
    "src_blob": np.uint8,
    "src_offsets": np.int64,
}
_FLUSH_TOKENS = 1 << 18  # buffered tokens per write: bounded memory (~20 MB of Python lists) while writing
_COPY_BYTES = 1 << 24  # block size when appending another split's files (a multiple of every item size)


class StoreWriter:
    """Appends examples to one split's files; `close()` finishes them and returns the split's sizes."""

    def __init__(self, folder: Path, split: str) -> None:
        self.folder, self.split = Path(folder), split
        self.folder.mkdir(parents=True, exist_ok=True)
        self._files = {kind: open(self.path(kind), "wb") for kind in KINDS}  # noqa: SIM115 — closed in close()
        self._hashes = {kind: hashlib.sha256() for kind in KINDS}  # as written: no second pass over the files
        # The buffer: the examples' own token and label lists, until `_FLUSH_TOKENS` tokens are waiting
        self._ids: list[Sequence[int]] = []
        self._labels: list[Sequence[int]] = []
        self._lengths: list[int] = []
        self._sources: list[bytes] = []
        self._buffered = 0
        self.examples = 0
        self.tokens = 0
        self._source_bytes = 0
        self._write("offsets", np.zeros(1, dtype=np.int64))
        self._write("src_offsets", np.zeros(1, dtype=np.int64))

    def path(self, kind: str) -> Path:
        return self.folder / f"{self.split}.{kind}"

    def add(self, input_ids: Sequence[int], labels: Sequence[int], source: str) -> None:
        """Buffer one example; its tokens are converted and checked with the rest of the buffer, in bulk
        (per-example numpy conversions cost more than the whole write)."""
        if len(input_ids) != len(labels):
            raise ValueError(f"{source}: {len(input_ids)} token ids but {len(labels)} labels")
        self._ids.append(input_ids)
        self._labels.append(labels)
        self._lengths.append(len(input_ids))
        self._sources.append(source.encode("utf-8", "surrogatepass"))
        self._buffered += len(input_ids)
        if self._buffered >= _FLUSH_TOKENS:
            self._flush()

    def _write(self, kind: str, array: np.ndarray) -> None:
        raw = np.ascontiguousarray(array, dtype=_DTYPES[kind]).tobytes()
        self._files[kind].write(raw)
        self._hashes[kind].update(raw)

    def _flush(self) -> None:
        if not self._lengths:
            return
        n = self._buffered
        ids = np.fromiter(chain.from_iterable(self._ids), dtype=np.int64, count=n)
        labels = np.fromiter(chain.from_iterable(self._labels), dtype=np.int64, count=n)
        trained = labels != IGNORE_INDEX
        # The store keeps a mask, not labels: a label is either -100 or the token itself everywhere in sftforge
        wrong = np.flatnonzero(trained & (labels != ids))
        local_ends = np.cumsum(np.asarray(self._lengths, dtype=np.int64))
        if len(wrong):
            source = self._sources[int(np.searchsorted(local_ends, wrong[0], side="right"))].decode(
                "utf-8", "surrogatepass"
            )
            raise ValueError(f"{source}: a label differs from its token id; the token store cannot keep it")
        if len(ids) and (ids.min() < np.iinfo(np.int32).min or ids.max() > np.iinfo(np.int32).max):
            raise ValueError("a token id does not fit the store's int32 ids")
        self._write("ids", ids)
        self._write("trained", trained)
        trained_before = np.concatenate([[0], np.cumsum(trained, dtype=np.int64)])
        self._write("counts", trained_before[local_ends] - trained_before[local_ends - self._lengths])
        self._write("offsets", self.tokens + local_ends)
        blob = b"".join(self._sources)
        self._write("src_blob", np.frombuffer(blob, dtype=np.uint8))
        self._write(
            "src_offsets",
            self._source_bytes + np.cumsum(np.fromiter(map(len, self._sources), dtype=np.int64)),
        )
        self.examples += len(self._lengths)
        self.tokens += n
        self._source_bytes += len(blob)
        self._ids, self._labels, self._lengths, self._sources = [], [], [], []
        self._buffered = 0

    def append_split(self, folder: Path, split: str) -> None:
        """Append all examples of a finished split in another folder (a worker's shard). Its files are copied
        in blocks with plain reads, not mapped: a copied gigabyte must not count in this process's memory."""
        self._flush()
        counts = {"examples": 0, "tokens": 0, "source_bytes": 0}
        for kind, field in (
            ("ids", "tokens"),
            ("trained", None),
            ("counts", "examples"),
            ("src_blob", "source_bytes"),
        ):
            size = np.dtype(_DTYPES[kind]).itemsize
            with open(Path(folder) / f"{split}.{kind}", "rb") as f:
                while block := f.read(_COPY_BYTES):
                    self._files[kind].write(block)
                    self._hashes[kind].update(block)
                    if field:
                        counts[field] += len(block) // size
        for kind, base in (("offsets", self.tokens), ("src_offsets", self._source_bytes)):
            with open(Path(folder) / f"{split}.{kind}", "rb") as f:
                f.seek(8)  # the leading 0: this writer's own last offset stands for it
                while block := f.read(_COPY_BYTES):
                    self._write(kind, np.frombuffer(block, dtype=np.int64) + base)
        self.examples += counts["examples"]
        self.tokens += counts["tokens"]
        self._source_bytes += counts["source_bytes"]

    def close(self) -> dict[str, Any]:
        """Finish the files; returns the split's sizes and the SHA-256 of each file (the cache's meta.json)."""
        self._flush()
        for f in self._files.values():
            f.close()
        return {
            "examples": self.examples,
            "tokens": self.tokens,
            "checksums": {self.path(k).name: h.hexdigest() for k, h in self._hashes.items()},
        }

    def abort(self) -> None:
        for f in self._files.values():
            f.close()


def write_split(folder: Path, split: str, examples: Sequence[Example]) -> dict[str, Any]:
    """A whole list of examples as one split (small sets, tests)."""
    writer = StoreWriter(folder, split)
    for e in examples:
        writer.add(e.input_ids, e.labels, e.source)
    return writer.close()


class TokenStore:
    """One split of a store, memory-mapped read-only."""

    def __init__(self, folder: Path, split: str, sizes: dict[str, Any] | None = None) -> None:
        self.folder, self.split = Path(folder), split
        arrays = {kind: self._map(kind) for kind in KINDS}
        self.ids, self.trained, self.offsets = arrays["ids"], arrays["trained"], arrays["offsets"]
        self.counts, self._blob, self._src_offsets = (
            arrays["counts"],
            arrays["src_blob"],
            arrays["src_offsets"],
        )
        n = len(self.offsets) - 1
        consistent = (
            n >= 0
            and len(self.counts) == n
            and len(self._src_offsets) == n + 1
            and len(self.trained) == len(self.ids)
            and int(self.offsets[0]) == 0
            and int(self.offsets[-1]) == len(self.ids)
            and int(self._src_offsets[-1]) == len(self._blob)
        )
        if sizes is not None:
            consistent = consistent and sizes.get("examples") == n and sizes.get("tokens") == len(self.ids)
        if not consistent:
            raise ValueError(f"{self.folder}: the {split} arrays do not fit together (a damaged store)")
        self.lengths = np.diff(self.offsets).astype(np.int32)  # the one per-example array held in memory

    # Pickled (a spawned DataLoader worker) as its folder, and mapped again there: never as a copy of the arrays
    def __getstate__(self) -> dict[str, Any]:
        return {"folder": self.folder, "split": self.split}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["folder"], state["split"])  # type: ignore[misc]

    def _map(self, kind: str) -> np.ndarray:
        path = self.folder / f"{self.split}.{kind}"
        if path.stat().st_size == 0:  # np.memmap refuses empty files
            return np.zeros(0, dtype=_DTYPES[kind])
        return np.memmap(path, dtype=_DTYPES[kind], mode="r")

    def __len__(self) -> int:
        return len(self.lengths)

    def token_ids(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i] : self.offsets[i + 1]]

    def labels(self, i: int) -> np.ndarray:
        a, b = self.offsets[i], self.offsets[i + 1]
        ids = self.ids[a:b].astype(np.int64)
        ids[self.trained[a:b] == 0] = IGNORE_INDEX
        return ids

    def source(self, i: int) -> str:
        raw = self._blob[self._src_offsets[i] : self._src_offsets[i + 1]].tobytes()
        return raw.decode("utf-8", "surrogatepass")

    def example(self, i: int) -> Example:
        return Example(self.token_ids(i).tolist(), self.labels(i).tolist(), self.source(i))


class ExampleView(Sequence[Example]):
    """Examples of one or more stores, picked by index (order, repeats and subsets without copying tokens).
    Reads like the list of `Example`s it stands for."""

    def __init__(self, stores: Sequence[TokenStore], which: np.ndarray, index: np.ndarray) -> None:
        self.stores = list(stores)
        self.which = np.asarray(which, dtype=np.int16)
        self.index = np.asarray(index, dtype=np.int64)
        self._lengths: np.ndarray | None = None

    @classmethod
    def of(cls, store: TokenStore) -> ExampleView:
        return cls([store], np.zeros(len(store), dtype=np.int16), np.arange(len(store), dtype=np.int64))

    @classmethod
    def empty(cls) -> ExampleView:
        return cls([], np.zeros(0, dtype=np.int16), np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return self.subset(np.arange(len(self))[i])
        i = int(i)
        if i < 0:
            i += len(self)
        return self.stores[self.which[i]].example(int(self.index[i]))

    def __iter__(self) -> Iterator[Example]:
        for i in range(len(self)):
            yield self[i]

    # Lists of examples can be joined and compared: a view is one too (reading every example: small sets only)
    def __add__(self, other: Sequence[Example]) -> list[Example]:
        return [*self, *other]

    def __radd__(self, other: Sequence[Example]) -> list[Example]:
        return [*other, *self]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str) or len(other) != len(self):
            return NotImplemented if not isinstance(other, Sequence) else False
        return all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]  # mutable-looking like a list

    def subset(self, positions: np.ndarray) -> ExampleView:
        positions = np.asarray(positions, dtype=np.int64)
        return ExampleView(self.stores, self.which[positions], self.index[positions])

    def _gather(self, per_store: Sequence[np.ndarray]) -> np.ndarray:
        if len(self.stores) == 1:
            return per_store[0][self.index]
        out = np.empty(len(self), dtype=per_store[0].dtype if per_store else np.int32)
        for s, values in enumerate(per_store):
            mask = self.which == s
            out[mask] = values[self.index[mask]]
        return out

    @property
    def lengths(self) -> np.ndarray:
        if self._lengths is None:
            self._lengths = self._gather([s.lengths for s in self.stores])
        return self._lengths

    @property
    def trained_counts(self) -> np.ndarray:
        return self._gather([s.counts for s in self.stores])

    def token_ids(self, i: int) -> np.ndarray:
        return self.stores[self.which[i]].token_ids(int(self.index[i]))

    def labels(self, i: int) -> np.ndarray:
        return self.stores[self.which[i]].labels(int(self.index[i]))

    def source(self, i: int) -> str:
        return self.stores[self.which[i]].source(int(self.index[i]))

    def features(self, i: int, sources: bool = False) -> dict[str, Any]:
        feature: dict[str, Any] = {"input_ids": self.token_ids(i).tolist(), "labels": self.labels(i).tolist()}
        if sources:
            feature["sources"] = [self.source(i)]
        return feature
