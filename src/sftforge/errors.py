"""User-facing errors: each carries a message that says what is wrong, where, and how to fix it.

The CLI prints these without a traceback and exits with `exit_code` (2 = the user's input is wrong).
"""

from __future__ import annotations


class SftforgeError(Exception):
    """Base class for mistakes the user can fix (bad config, bad data). Printed without a traceback."""

    exit_code = 2


class ConfigError(SftforgeError):
    """The recipe or the command line is wrong. `problems` lists every problem found, one line each."""

    def __init__(self, problems: list[str] | str, source: str = "config"):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        head = (
            f"{len(self.problems)} problem(s) in {source}:"
            if len(self.problems) > 1
            else f"Problem in {source}:"
        )
        super().__init__(head + "\n" + "\n".join(f"  - {p}" for p in self.problems))


class DataError(SftforgeError):
    """The data cannot be used: a missing file, an unusable row in strict mode, an empty training set."""


class RowError(ValueError):
    """One row cannot be used. Raised by the pure data stages; the pipeline adds the row's `file:line`.

    `reason` is a short stable code used to count skipped rows (e.g. "no_assistant_turn");
    `detail` is the human explanation; `length`, for a row refused for its length, its tokens before truncation
    (what the length statistics count).
    """

    def __init__(self, reason: str, detail: str, length: int | None = None):
        self.reason = reason
        self.detail = detail
        self.length = length
        super().__init__(f"{detail} [{reason}]")

    def __reduce__(self):  # picklable across worker processes (dataset_num_proc > 1)
        return (type(self), (self.reason, self.detail, self.length))
