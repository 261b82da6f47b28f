"""One row, or a batch of rows → examples: convert, render, find spans, tokenize, verify, fit to max_length.

`process_row` is the unit every path agrees with; `process_rows` gives the same answer for many rows at once,
rendering them one by one but tokenizing (and verifying) them in one batch call. `tokenize_row` is the one-row
reference (`multi_turn` may split a row into one example per trained turn, see `turns.py`), and
`tokenize_conversation` the one-conversation-one-example reference, used by notebooks and tests.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from sftforge.data.columns import ColumnMap, apply_columns
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
from sftforge.data.turns import SPLIT_TURN, Split, plan_row, plan_turn, split_units
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
    multi_turn: str = "auto"  # one of turns.MULTI_TURN
    columns: ColumnMap | None = None  # `columns:` / `tags:` renaming (None: rows are read as they are)
    preference: str = ""  # "dpo": rows are pairs, "kto": unpaired rated answers (data/preference.py); "": SFT

    @classmethod
    def build(cls, tokenizer: Any, template: str, max_length: int, **kwargs: Any) -> TokenizeSpec:
        return cls(tokenizer, TemplateInfo.probe(tokenizer, template), max_length, **kwargs)


@dataclass
class SplitRow:
    """What a row split into one example per trained turn gave (`process_rows` status "split")."""

    reason: str  # a turns.SPLIT_REASONS key
    examples: list[tuple[Example, Tokenized]]
    dropped: Counter = field(default_factory=Counter)  # its examples dropped for length, by reason
    length: int = 0  # the row's length: its longest example's tokens before truncation


@dataclass(frozen=True)
class Dropped:
    """A row dropped for its length (`process_rows` status "drop"): the message, and the row's tokens before
    truncation, which the length statistics count (they are the long tail a better max_length would keep)."""

    message: str
    length: int | None


@dataclass
class RowExamples:
    """A row's examples: one (whole) or one per trained turn (`split`, with the turn each one trains)."""

    examples: list[Tokenized]
    split: Split | None = None
    turns: list[int] = field(default_factory=list)  # with `split`: the row's index of each example's turn
    dropped: Counter = field(default_factory=Counter)  # with `split`: examples dropped for length, by reason
    length: int = 0  # the longest example's tokens before truncation, dropped ones included


# encode(conv, mode): "row" decides (a Tokenized for one whole example, or a Split), "whole" encodes a conversation
# as one example, "turn" encodes a split example (only its last turn trained).
Encode = Callable[[Conversation, str], Any]


def process_row(spec: TokenizeSpec, source_row: SourceRow) -> tuple[str, str, Any]:
    """One row → ("ok", format, (Example, Tokenized)), ("split", format, SplitRow), ("drop", reason, Dropped) or
    ("bad" | "fatal", reason, message). Pure."""
    return process_rows(spec, [source_row])[0]


def process_rows(spec: TokenizeSpec, rows: Sequence[SourceRow]) -> list[tuple[str, str, Any]]:
    """`process_row` for many rows at once, with the same result for each.

    Each row runs through the same `row_examples` as `tokenize_row`, but its `encode` only looks up encodings made
    in batches: a conversation not encoded yet stops the row's run and is queued; the queue is rendered one by one
    and then tokenized (and its trained tokens decoded back) in one batch call; the stopped rows then run again
    from the start over what is known now. A long example thus asks for its conversation, then for it minus its
    first round, and so on — exactly the encodings the one-row path makes, in the same order."""
    if spec.preference:  # pairs or rated answers: their own conversion (data/preference.py)
        from sftforge.data.preference import process_preference_rows

        return process_preference_rows(spec, rows)
    results: list[Any] = [None] * len(rows)
    waiting: list[tuple[int, Conversation]] = []
    for index, source_row in enumerate(rows):
        try:
            if source_row.error is not None:
                raise source_row.error
            row = source_row.row if spec.columns is None else apply_columns(source_row.row, spec.columns)
            waiting.append((index, to_conversation(row, source=source_row.source)))
        except RowError as e:
            results[index] = row_failure(e, source_row)
    known: dict[tuple, Any] = {}
    encoder = PieceEncoder(spec.tokenizer)  # remembers what this batch encoded
    asked = dict.fromkeys(range(len(rows)), 0)
    while waiting:
        wanted: list[tuple[int, Conversation, str]] = []
        still: list[tuple[int, Conversation]] = []
        for index, conv in waiting:
            try:
                if asked[index] > _most_encodes(conv):  # more encodings than the row can need: not replaying
                    out = tokenize_row(conv, spec)  # as expected; answer the one-row way
                else:
                    out = row_examples(spec, conv, partial(_lookup, known, index))
            except _NotEncoded as missing:
                asked[index] += 1
                wanted.append((index, missing.conv, missing.mode))
                still.append((index, conv))
                continue
            except RowError as e:
                results[index] = row_failure(e, rows[index])
                continue
            results[index] = _success(conv, out, rows[index].source)
        _encode_many(spec, wanted, known, encoder)
        waiting = still
    return results


def _most_encodes(conv: Conversation) -> int:
    # The decision, then per example (one, or one per assistant turn) its encode and one per round it may drop.
    assistants = sum(m.role == "assistant" for m in conv.messages)
    return 1 + max(1, assistants) * (len(conv.messages) + 1)


def _success(conv: Conversation, out: RowExamples, source: str) -> tuple[str, str, Any]:
    if out.split is None:
        tok = out.examples[0]
        return "ok", conv.format, (Example(tok.input_ids, tok.labels, source), tok)
    pairs = [
        (Example(tok.input_ids, tok.labels, f"{source}#turn{turn}"), tok)
        for tok, turn in zip(out.examples, out.turns, strict=True)
    ]
    return "split", conv.format, SplitRow(out.split.reason, pairs, out.dropped, out.length)


def row_examples(spec: TokenizeSpec, conv: Conversation, encode: Encode) -> RowExamples:
    """A row's examples under `spec.multi_turn`, each fitted to max_length. A split row keeps the examples that
    fit (the others are counted as dropped for length); any other refusal of one of its turns refuses the row."""
    decision = encode(conv, "row")
    if not isinstance(decision, Split):  # one example: the whole conversation (or shortened forms of it)
        whole = partial(_whole, decision, conv, encode)
        tok = fit_to_length(conv, whole, spec.max_length, spec.truncation)
        return RowExamples([tok], length=tok.untruncated_length)
    out = RowExamples([], decision)
    last_drop: RowError | None = None
    for unit in split_units(conv, decision):
        try:
            tok = fit_to_length(unit, partial(encode, mode="turn"), spec.max_length, spec.truncation)
        except RowError as e:
            if e.reason not in DROPPED_NOT_BAD:
                raise
            out.dropped[e.reason] += 1
            out.length = max(out.length, e.length or 0)
            last_drop = e
            continue
        out.examples.append(tok)
        out.turns.append(unit.meta[SPLIT_TURN])
        out.length = max(out.length, tok.untruncated_length)
    if not out.examples:
        assert last_drop is not None  # counted at the row's length, not at its last turn's
        raise RowError(last_drop.reason, last_drop.detail, out.length)
    return out


def _whole(decided: Tokenized, row: Conversation, encode: Encode, conv: Conversation) -> Tokenized:
    return decided if conv is row else encode(conv, "whole")


def tokenize_row(conv: Conversation, spec: TokenizeSpec) -> RowExamples:
    """The one-row reference: `row_examples` with every encoding made when asked (no batching)."""

    def encode(c: Conversation, mode: str) -> Any:
        plan = _plan(spec, c, mode)
        return plan if isinstance(plan, Split) else _tokenized(spec, plan)

    return row_examples(spec, conv, encode)


def _plan(spec: TokenizeSpec, conv: Conversation, mode: str) -> Plan | Split:
    tokenizer, info, options = spec.tokenizer, spec.template, spec.options
    if mode == "row":
        return plan_row(conv, tokenizer, info, options, spec.multi_turn)
    if mode == "turn":
        return plan_turn(conv, tokenizer, info, options)
    return plan_conversation(conv, tokenizer, info, options)


def _tokenized(spec: TokenizeSpec, plan: Plan) -> Tokenized:
    out = tokenize_plans(spec.tokenizer, [plan])[0]
    if isinstance(out, RowError):
        raise out
    return out


class _NotEncoded(Exception):  # noqa: N818 — a signal, not an error: `conv` has to be encoded first
    def __init__(self, conv: Conversation, mode: str):
        self.conv = conv
        self.mode = mode


def _key(index: int, conv: Conversation, mode: str) -> tuple:
    # Row, mode, and which of its messages: shortened conversations reuse the row's Message objects (alive meanwhile).
    return (index, mode, *map(id, conv.messages))


def _lookup(known: dict, index: int, conv: Conversation, mode: str) -> Any:
    hit = known.get(_key(index, conv, mode))
    if hit is None:
        raise _NotEncoded(conv, mode)
    if isinstance(hit, tuple):
        raise RowError(*hit)
    return hit


def _encode_many(
    spec: TokenizeSpec, convs: list[tuple[int, Conversation, str]], known: dict, encoder: PieceEncoder
) -> None:
    """The encodings asked for, with one tokenizer call for all; results (or errors) go into `known`."""
    plans: list[tuple[tuple, Plan]] = []
    for index, conv, mode in convs:
        key = _key(index, conv, mode)
        try:
            plan = _plan(spec, conv, mode)
        except RowError as e:
            known[key] = (e.reason, e.detail)
            continue
        if isinstance(plan, Split):
            known[key] = plan
        else:
            plans.append((key, plan))
    tokenized = tokenize_plans(spec.tokenizer, [plan for _, plan in plans], encoder)
    for (key, _), out in zip(plans, tokenized, strict=True):
        known[key] = (out.reason, out.detail) if isinstance(out, RowError) else out


def row_failure(error: RowError, source_row: SourceRow) -> tuple[str, str, Any]:
    reason = error.reason
    message = f"{source_row.source}: {error.detail}"
    if reason in DROPPED_NOT_BAD:
        return "drop", reason, Dropped(message, error.length)
    return "fatal" if reason in ALWAYS_FATAL else "bad", reason, message


def tokenize_conversation(
    conv: Conversation,
    tokenizer: Any,
    template: str | TemplateInfo,
    max_length: int = 1 << 30,
    options: MaskOptions | None = None,
    truncation: str = "turns",
) -> Tokenized:
    """One conversation → one example's input_ids + labels, the whole conversation's render as training sees it
    with `multi_turn: whole` (convenience for notebooks and tests; `tokenize_row` applies `multi_turn`)."""
    info = template if isinstance(template, TemplateInfo) else TemplateInfo.probe(tokenizer, template)
    opts = options or MaskOptions()
    return fit_to_length(
        conv, lambda c: encode_conversation(c, tokenizer, info, opts), max_length, truncation
    )
