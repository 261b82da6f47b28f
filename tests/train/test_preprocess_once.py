"""Data preparation once per machine: the local main process first, the others after it, waiting on the
launcher's store (the real 2-process run is in tests/distributed/)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from sftforge.errors import DataError
from sftforge.train import preprocess_once


class FakeStore:
    """The part of torch's TCPStore used: set, get, and wait (which fails if the key never comes)."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}

    def set(self, key: str, value: bytes) -> None:
        self.values[key] = value

    def get(self, key: str) -> bytes:
        return self.values[key]

    def wait(self, keys: list[str], timeout: timedelta) -> None:
        if not all(k in self.values for k in keys):
            raise TimeoutError(keys)


@pytest.fixture
def store(monkeypatch) -> FakeStore:
    fake = FakeStore()
    monkeypatch.setattr(preprocess_once, "_store", lambda: fake)
    monkeypatch.setenv("GROUP_RANK", "0")
    return fake


def test_one_process_just_prepares(monkeypatch):
    monkeypatch.setattr(preprocess_once, "_store", lambda: None)
    assert preprocess_once.run_once_per_machine(lambda: 7) == 7


def test_the_local_main_prepares_then_tells_the_others(store, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert preprocess_once.run_once_per_machine(lambda: "data") == "data"
    assert list(store.values.values()) == [preprocess_once.DONE]
    monkeypatch.setenv(
        "LOCAL_RANK", "1"
    )  # another process of the same machine, later: prepares from the cache
    assert preprocess_once.run_once_per_machine(lambda: "cached") == "cached"


def test_the_others_wait_for_the_local_main(store, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    calls = []
    with pytest.raises(TimeoutError):  # nothing reported yet: a real store would block here
        preprocess_once.run_once_per_machine(lambda: calls.append(1))
    assert calls == []


def test_a_failure_of_the_local_main_stops_the_others_with_a_pointer(store, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")

    def broken():
        raise DataError("train.jsonl:3: invalid JSON")

    with pytest.raises(DataError, match="invalid JSON"):
        preprocess_once.run_once_per_machine(broken)
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(DataError, match="main process of this machine could not prepare the data"):
        preprocess_once.run_once_per_machine(lambda: "never")


def test_each_machine_has_its_own_key(store, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")
    preprocess_once.run_once_per_machine(lambda: None)
    monkeypatch.setenv("GROUP_RANK", "1")  # machine 1's processes wait for machine 1's main, not machine 0's
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(TimeoutError):
        preprocess_once.run_once_per_machine(lambda: None)
