"""One row, or a batch of rows → examples: convert, render, find spans, tokenize, verify, fit to max_length.

`process_row` is the unit every path agrees with; `process_rows` gives the same answer for many rows at once,
rendering them one by one but tokenizing (and verifying) them in one batch call. `tokenize_conversation` is the
one-conversation reference, used by notebooks and tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from sftforge.data.conversation import Conversation
from sftforge.data.encoding import PieceEncoder
from sftforge.data.formats import to_conversation
from sftforge.data.masking import (
    MaskOptions,
    Plan,
    Tokenized,
    encode_conversation,
    plan_conversation,
    tokenize_plans,
)
from sftforge.data.readers import SourceRow
from sftforge.data.templates import TemplateInfo
from sftforge.data.truncation import fit_to_length
from sftforge.errors import RowError


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    source: str

    def as_features(self) -> dict[str, list[int]]:
        return {"input_ids": self.input_ids, "labels": self.labels}


# Length problems are not data mistakes: such examples are dropped and counted in every on_bad_rows mode...
DROPPED_NOT_BAD = frozenset({"no_trainable_tokens_after_truncation", "exceeds_max_length"})
# ...except with `truncation: error`, which stops the run whatever on_bad_rows says.
ALWAYS_FATAL = frozenset({"too_long"})


@dataclass(frozen=True)
class TokenizeSpec:
    """Everything a worker process needs to turn one row into an example (picklable)."""

    tokenizer: Any
    template: TemplateInfo
    max_length: int
    options: MaskOptions = MaskOptions()  # noqa: RUF009 — frozen, so one shared default is safe
    truncation: str = "turns"

    @classmethod
    def build(cls, tokenizer: Any, template: str, max_length: int, **kwargs: Any) -> TokenizeSpec:
        return cls(tokenizer, TemplateInfo.probe(tokenizer, template), max_length, **kwargs)


def process_row(spec: TokenizeSpec, source_row: SourceRow) -> tuple[str, str, Any]:
    """One row → ("ok", format, (Example, Tokenized)) or ("bad" | "drop" | "fatal", reason, message). Pure."""
    return process_rows(spec, [source_row])[0]


def process_rows(spec: TokenizeSpec, rows: Sequence[SourceRow]) -> list[tuple[str, str, Any]]:
    """`process_row` for many rows at once, with the same result for each.

    Each row runs through the same `fit_to_length` as `tokenize_conversation`, but its `encode` only looks up
    encodings made in batches: a conversation not encoded yet stops the row's run and is queued; the queue is
    rendered one by one and then tokenized (and its trained tokens decoded back) in one batch call; the stopped
    rows then run again from the start over what is known now. A long example thus asks for its conversation, then
    for it minus its first round, and so on — exactly the encodings the one-row path makes, in the same order."""
    results: list[Any] = [None] * len(rows)
    waiting: list[tuple[int, Conversation]] = []
    for index, source_row in enumerate(rows):
        try:
            if source_row.error is not None:
                raise source_row.error
            waiting.append((index, to_conversation(source_row.row, source=source_row.source)))
        except RowError as e:
            results[index] = _failure(e, source_row)
    known: dict[tuple[int, ...], Tokenized | tuple[str, str]] = {}
    encoder = PieceEncoder(spec.tokenizer)  # remembers what this batch encoded
    asked = dict.fromkeys(range(len(rows)), 0)
    while waiting:
        wanted: list[tuple[int, Conversation]] = []
        still: list[tuple[int, Conversation]] = []
        for index, conv in waiting:
            try:
                if asked[index] > len(conv.messages) + 1:  # more encodings than rounds to drop: not replaying
                    tok = _one_row(spec, conv)  # as expected; answer the one-row way
                else:
                    tok = fit_to_length(
                        conv, partial(_lookup, known, index), spec.max_length, spec.truncation
                    )
            except _NotEncoded as missing:
                asked[index] += 1
                wanted.append((index, missing.conv))
                still.append((index, conv))
                continue
            except RowError as e:
                results[index] = _failure(e, rows[index])
                continue
            results[index] = (
                "ok",
                conv.format,
                (Example(tok.input_ids, tok.labels, rows[index].source), tok),
            )
        _encode_many(spec, wanted, known, encoder)
        waiting = still
    return results


def _one_row(spec: TokenizeSpec, conv: Conversation) -> Tokenized:
    return tokenize_conversation(
        conv, spec.tokenizer, spec.template, spec.max_length, spec.options, spec.truncation
    )


class _NotEncoded(Exception):  # noqa: N818 — a signal, not an error: `conv` has to be encoded first
    def __init__(self, conv: Conversation):
        self.conv = conv


def _key(index: int, conv: Conversation) -> tuple[int, ...]:
    # Row, and which of its messages: shortened conversations reuse the row's Message objects (alive meanwhile).
    return (index, *map(id, conv.messages))


def _lookup(known: dict, index: int, conv: Conversation) -> Tokenized:
    hit = known.get(_key(index, conv))
    if hit is None:
        raise _NotEncoded(conv)
    if isinstance(hit, tuple):
        raise RowError(*hit)
    return hit


def _encode_many(
    spec: TokenizeSpec, convs: list[tuple[int, Conversation]], known: dict, encoder: PieceEncoder
) -> None:
    """encode_conversation for each, with one tokenizer call for all; results (or errors) go into `known`."""
    plans: list[tuple[tuple, Plan]] = []
    for index, conv in convs:
        try:
            plans.append(
                (_key(index, conv), plan_conversation(conv, spec.tokenizer, spec.template, spec.options))
            )
        except RowError as e:
            known[_key(index, conv)] = (e.reason, e.detail)
    tokenized = tokenize_plans(spec.tokenizer, [plan for _, plan in plans], encoder)
    for (key, _), out in zip(plans, tokenized, strict=True):
        known[key] = (out.reason, out.detail) if isinstance(out, RowError) else out


def _failure(error: RowError, source_row: SourceRow) -> tuple[str, str, str]:
    reason = error.reason
    status = "drop" if reason in DROPPED_NOT_BAD else "fatal" if reason in ALWAYS_FATAL else "bad"
    return status, reason, f"{source_row.source}: {error.detail}"


def tokenize_conversation(
    conv: Conversation,
    tokenizer: Any,
    template: str | TemplateInfo,
    max_length: int = 1 << 30,
    options: MaskOptions | None = None,
    truncation: str = "turns",
) -> Tokenized:
    """One conversation → input_ids + labels, as training sees it (convenience for notebooks and tests)."""
    info = template if isinstance(template, TemplateInfo) else TemplateInfo.probe(tokenizer, template)
    opts = options or MaskOptions()
    return fit_to_length(
        conv, lambda c: encode_conversation(c, tokenizer, info, opts), max_length, truncation
    )
