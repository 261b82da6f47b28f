"""Running a batch function over chunks of rows, in order, in one of three ways.

- in this process, one chunk after another;
- in this process with a helper thread: the tokenizer's Rust code releases the GIL, so one chunk's tokenization
  overlaps the next chunk's rendering (Python) — no start-up cost, which suits small and medium datasets;
- in a pool of processes (spawned: each re-imports the library, a few seconds), which pays off on large datasets.

Results come back in input order whatever the way, so the output never depends on it.
"""

from __future__ import annotations

import os
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import chain, islice
from multiprocessing import get_context
from typing import Any

# `dataset_num_proc: auto` (or null) starts processes only for a split at least this long: below it, spawning
# (~5 s of imports per worker) costs more than it saves.
AUTO_PROCESSES_MIN_ROWS = 50_000


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def auto_processes(rows: Iterable[Any]) -> tuple[int, Iterator[Any]]:
    """How many processes `dataset_num_proc: auto` means for these rows — every usable core for a large split,
    else this one — and the rows again (the first AUTO_PROCESSES_MIN_ROWS are read ahead to decide)."""
    it = iter(rows)
    head = list(islice(it, AUTO_PROCESSES_MIN_ROWS))
    cores = usable_cores()
    many = len(head) == AUTO_PROCESSES_MIN_ROWS and cores > 1
    return (cores if many else 1), chain(head, it)


def resolve_processes(num_proc: int | str | None, rows: Iterable[Any]) -> tuple[int, Iterable[Any]]:
    """`dataset_num_proc` → a process count (and the rows, unchanged): `auto`/None decide by size."""
    if num_proc is None or num_proc == "auto":
        return auto_processes(rows)
    return max(1, int(num_proc)), rows


def chunked(rows: Iterable[Any], size: int) -> Iterator[list[Any]]:
    it = iter(rows)
    while chunk := list(islice(it, size)):
        yield chunk


def run_chunks(
    fn: Callable[[Any, list], list], spec: Any, chunks: Iterable[list], processes: int, thread: bool
) -> Iterator[list]:
    """fn(spec, chunk) for every chunk, yielded in order. `fn` must be a module-level function (picklable)."""
    if processes > 1:
        yield from _in_processes(fn, spec, chunks, processes)
    elif thread:
        yield from _with_thread(fn, spec, chunks)
    else:
        for chunk in chunks:
            yield fn(spec, chunk)


def _with_thread(fn: Callable, spec: Any, chunks: Iterable[list]) -> Iterator[list]:
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(2, thread_name_prefix="sftforge-data") as pool:
        try:
            for chunk in chunks:
                pending.append(pool.submit(fn, spec, chunk))
                if len(pending) > 2:  # read ahead a little, not the whole dataset
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


_WORKER: tuple[Callable, Any] | None = None


def _init_worker(fn: Callable, spec: Any) -> None:
    global _WORKER  # the spec (tokenizer included) travels once per worker, not once per task
    _WORKER = (fn, spec)


def _work(chunk: list) -> list:
    assert _WORKER is not None
    fn, spec = _WORKER
    return fn(spec, chunk)


def _in_processes(fn: Callable, spec: Any, chunks: Iterable[list], processes: int) -> Iterator[list]:
    """A process pool that fails instead of hanging: if workers cannot start (e.g. a script without an
    `if __name__ == "__main__":` guard, which spawned workers re-run), the rest is done here, with a warning."""
    pending: deque[tuple[list, Future]] = deque()
    it = iter(chunks)
    with ProcessPoolExecutor(processes, get_context("spawn"), _init_worker, (fn, spec)) as pool:
        try:
            for chunk in it:
                pending.append((chunk, pool.submit(_work, chunk)))
                while len(pending) > 2 * processes or (pending and pending[0][1].done()):
                    yield pending[0][1].result()
                    pending.popleft()
            while pending:
                yield pending[0][1].result()
                pending.popleft()
            return
        except BrokenProcessPool:
            warnings.warn(
                "preprocessing workers could not run (is the script's entry point under "
                "`if __name__ == '__main__':`?); continuing in this process",
                RuntimeWarning,
                stacklevel=2,
            )
        finally:
            for _, future in pending:
                future.cancel()
    for chunk in chain([c for c, _ in pending], it):  # from the first chunk not yet delivered, in order
        yield fn(spec, chunk)
