"""Library notices dropped by their exact text (sftforge/notices.py), every other message of the same logger kept."""

from __future__ import annotations

import logging

import pytest

import sftforge  # noqa: F401  (installs the filters)
from sftforge.notices import DROPPED, silence_library_notices


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("name", list(DROPPED))
def test_only_the_exact_notice_is_dropped(name):
    logger, seen = logging.getLogger(name), Collect()
    logger.addHandler(seen)  # on the library's logger itself: DeepSpeed's does not propagate
    try:
        logger.warning(DROPPED[name][0])
        logger.warning("a real problem: %s", "disk full")
    finally:
        logger.removeHandler(seen)
    assert seen.messages == ["a real problem: disk full"]


def test_installing_twice_adds_no_second_filter():
    silence_library_notices()
    silence_library_notices()
    assert all(len(logging.getLogger(name).filters) == 1 for name in DROPPED)
