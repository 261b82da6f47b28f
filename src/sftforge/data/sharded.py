"""Preprocessing on every core: each worker process reads, renders, masks and tokenizes its own share of the files
and writes its own token-store shard; the main process only adds the shards up, in order.

A large .jsonl file is cut into byte ranges at line starts (readers.split_jsonl), other files are one share each.
Nothing about a row travels between processes — neither the row nor its tokens — so the work scales with the
cores instead of stalling on the main process, and the result (examples, order, statistics, errors) is the same
as reading in one process: shares are added in file and range order, and with `on_bad_rows: error` the first bad
row in that order is the one reported.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from sftforge.data.parallel import chunked, run_chunks, usable_cores
from sftforge.data.pipeline import CHUNK_ROWS, DataStats, account, check_rows, merge_stats
from sftforge.data.readers import iter_jsonl_range, iter_rows, jsonl_first_lines, split_jsonl
from sftforge.data.rows import TokenizeSpec, process_rows
from sftforge.data.store import StoreWriter
from sftforge.errors import DataError

RANGE_BYTES = 8 << 20  # a .jsonl file is cut into ranges of about this size (at most 8 per process)...
AUTO_MIN_BYTES = 32 << 20  # ...and `dataset_num_proc: auto` starts processes for this much data (~30k rows)
SHARE_THREAD = False  # a worker per core already keeps the cores busy: no tokenizer thread on top


@dataclass(frozen=True)
class Share:
    path: Path
    start: int | None = None  # byte range of a .jsonl file; None: the whole file
    end: int | None = None
    first_line: int | None = None  # the number of the range's first line


@dataclass
class ShareResult:
    stats: DataStats
    first_bad: dict[str, str] = field(default_factory=dict)
    error: str | None = None  # the DataError that stopped this share


def shard_processes(num_proc: int | str | None, paths: list[Path], max_samples: int | None) -> int:
    """Processes for the sharded path: 0 when it does not apply (one process asked, a row limit — the first N
    rows are a sequential notion — or, for `auto`, too little data to repay starting processes)."""
    if max_samples is not None or not paths:
        return 0
    if num_proc is None or num_proc == "auto":
        size = sum(p.stat().st_size for p in paths)
        cores = usable_cores()
        return cores if cores > 1 and size >= AUTO_MIN_BYTES else 0
    return int(num_proc) if int(num_proc) > 1 else 0


def plan_shares(paths: list[Path], processes: int) -> list[Share]:
    shares: list[Share] = []
    for path in paths:
        size = path.stat().st_size
        if path.suffix.lower() != ".jsonl" or size < 2 * RANGE_BYTES:
            shares.append(Share(path))  # read whole by one worker (with iter_rows' whole-file checks)
            continue
        # Several shares per process: the last ones to finish are short, so no core idles long at the end
        ranges = [
            (a, b) for a, b in split_jsonl(path, min(8 * processes, max(2, size // RANGE_BYTES))) if b > a
        ]
        shares += [
            Share(path, a, b, n) for (a, b), n in zip(ranges, jsonl_first_lines(path, ranges), strict=True)
        ]
    return shares


_WORKER: tuple[TokenizeSpec, str, str] | None = None


def _init(spec: TokenizeSpec, on_bad_rows: str, key: str) -> None:
    global _WORKER  # the spec (tokenizer included) travels once per worker, not once per share
    _WORKER = (spec, on_bad_rows, key)


def _rows(share: Share, key: str) -> Iterator[Any]:
    rows = (
        iter_rows(share.path)
        if share.start is None
        else iter_jsonl_range(share.path, share.start, share.end or 0, share.first_line)
    )
    try:
        yield from rows
    except (
        DataError
    ) as e:  # a whole file is unusable (empty, broken JSON): say which key lists it, as in one process
        raise DataError(f"{key}: {e}") from None


def write_share(share: Share, folder: str) -> ShareResult:
    """In a worker: one share's rows → a store shard in `folder` (split "shard")."""
    assert _WORKER is not None
    spec, on_bad_rows, key = _WORKER
    result = ShareResult(DataStats())
    writer = StoreWriter(Path(folder), "shard")

    def emit(e: Any) -> None:
        writer.add(e.input_ids, e.labels, e.source)

    batches = run_chunks(process_rows, spec, chunked(_rows(share, key), CHUNK_ROWS), 1, SHARE_THREAD)
    try:
        for batch in batches:
            for row in batch:
                account(row, result.stats, result.first_bad, on_bad_rows, emit)
    except DataError as e:
        result.error = str(e)
    finally:
        batches.close()
        writer.close()
    return result


def write_examples_sharded(
    paths: list[Path],
    key: str,
    spec: TokenizeSpec,
    on_bad_rows: str,
    processes: int,
    desc: str,
    writer: StoreWriter,
    *,
    max_bad_fraction: float = 1.0,
    max_dropped_fraction: float = 1.0,
    split: str = "",
) -> DataStats | None:
    """The examples of `paths`, made by `processes` workers, appended to `writer` in data order; their statistics.
    None when the workers could not start (nothing was written: the caller goes on in this process)."""
    shares = plan_shares(paths, processes)
    scratch = writer.folder / f".shards-{writer.split}"
    stats = DataStats()
    first_bad: dict[str, str] = {}
    ctx = get_context("spawn")
    progress = tqdm(desc=desc, unit=" rows", mininterval=0.5, disable=None)
    try:
        with ProcessPoolExecutor(processes, ctx, _init, (spec, on_bad_rows, key)) as pool:
            futures: list[Future] = [
                pool.submit(write_share, share, str(scratch / f"{i:05d}")) for i, share in enumerate(shares)
            ]
            try:
                for i, future in enumerate(futures):
                    result = future.result()
                    folder = scratch / f"{i:05d}"
                    if result.error is not None:
                        raise DataError(result.error)
                    writer.append_split(folder, "shard")
                    shutil.rmtree(folder, ignore_errors=True)
                    merge_stats(stats, result.stats)
                    for reason, message in result.first_bad.items():
                        first_bad.setdefault(reason, message)
                    progress.update(result.stats.rows)
            finally:
                for future in futures:
                    future.cancel()
    except BrokenProcessPool:
        if stats.rows:
            raise
        warnings.warn(
            "preprocessing workers could not run (is the script's entry point under "
            "`if __name__ == '__main__':`?); continuing in this process",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    finally:
        progress.close()
        shutil.rmtree(scratch, ignore_errors=True)
    check_rows(stats, spec, on_bad_rows, max_bad_fraction, max_dropped_fraction, split, first_bad)
    return stats
