"""Data preparation once per machine when several processes train: the local main process tokenizes and fills the
cache, the others then load it.

Not `TrainingArguments.main_process_first`: that one makes the other ranks wait in a collective barrier, which
fails after `ddp_timeout` (30 min by default; NCCL or gloo) while rank 0 still tokenizes a large dataset. Here
they wait on a key in the launcher's rendezvous store (the TCPStore that torchrun, accelerate and deepspeed set
up) with a timeout of its own. The key carries the outcome: when the main process fails (a data error), the others
stop at once with a pointer to its message instead of waiting.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TypeVar

from sftforge.errors import DataError

T = TypeVar("T")
WAIT = timedelta(hours=24)  # the data stage of a very large dataset; a dead main process ends the job anyway
DONE, FAILED = b"done", b"failed"


def _store():  # noqa: ANN202 - torch's Store type is private
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    from torch.distributed.distributed_c10d import _get_default_store

    return _get_default_store()


def _key() -> str:
    # One key per machine (torchrun and accelerate set GROUP_RANK, the node's rank; other launchers NODE_RANK);
    # restarts of an elastic job get a new run id.
    node = os.environ.get("GROUP_RANK") or os.environ.get("NODE_RANK") or "0"
    return f"sftforge/preprocessed/{os.environ.get('TORCHELASTIC_RUN_ID', '')}/{node}"


def run_once_per_machine(prepare: Callable[[], T], wait: timedelta = WAIT) -> T:
    """`prepare()` in the local main process first, then in the others (which find its cache)."""
    store = _store()
    if store is None:
        return prepare()
    key = _key()
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        with _report(store, key):
            return prepare()
    store.wait([key], wait)
    if store.get(key) == FAILED:
        raise DataError(
            "the main process of this machine could not prepare the data; its error message above says why."
        )
    return prepare()


@contextmanager
def _report(store, key: str) -> Iterator[None]:  # noqa: ANN001
    try:
        yield
    except BaseException:
        store.set(key, FAILED)
        raise
    store.set(key, DONE)
