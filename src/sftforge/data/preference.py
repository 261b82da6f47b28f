"""Preference rows → verified token sequences, the same way SFT makes its examples.

A pair (`stage: dpo`) becomes two examples in the token store, one after the other: the prompt rendered by the
chat template followed by the chosen answer, then the same prompt followed by the rejected answer. Each answer's
tokens are found and verified exactly as an SFT assistant turn is (rendered spans, decoded back to their text), so
what DPO scores is the answer plus its end-of-turn token, nothing of the prompt and nothing after the turn.
An unpaired row (`stage: kto`) becomes one example.

The trainer reads prompt / answer token lists back from the store (`pair_features`, `kto_features`): the prompt
is every token before the first scored one. The store keeps which answer an example holds in its source
(`file:line#chosen`), so nothing about the store's format changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sftforge.data.columns import apply_columns
from sftforge.data.conversation import Conversation
from sftforge.data.masking import IGNORE_INDEX, MaskOptions, Tokenized, plan_conversation, tokenize_plans
from sftforge.data.preference_rows import to_kto_row, to_preference_row
from sftforge.data.readers import SourceRow
from sftforge.data.rows import Example, TokenizeSpec, row_failure
from sftforge.errors import RowError

CHOSEN, REJECTED = "#chosen", "#rejected"  # pair members, in this order in the store
DESIRABLE, UNDESIRABLE = "#desirable", "#undesirable"  # KTO examples


@dataclass
class PairRow:
    """What a preference row gave (`process_rows` status "pair"): its chosen and rejected examples."""

    examples: list[tuple[Example, Tokenized]]
    length: int  # the longer of the two sequences, in tokens


def process_preference_rows(spec: TokenizeSpec, rows: Sequence[SourceRow]) -> list[tuple[str, str, Any]]:
    """Each row → ("pair", format, PairRow) for stage dpo, ("ok", format, (Example, Tokenized)) for stage kto,
    ("drop", reason, Dropped) when too long, or ("bad" | "fatal", reason, message). Pure."""
    return [_process(spec, row) for row in rows]


def _process(spec: TokenizeSpec, source_row: SourceRow) -> tuple[str, str, Any]:
    try:
        if source_row.error is not None:
            raise source_row.error
        row = source_row.row if spec.columns is None else apply_columns(source_row.row, spec.columns)
        source = source_row.source
        if spec.preference == "kto":
            kto = to_kto_row(row, source=source)
            (tok,) = _encode(spec, [kto.conversation()])
            tag = DESIRABLE if kto.desirable else UNDESIRABLE
            return "ok", kto.format, (Example(tok.input_ids, tok.labels, source + tag), tok)
        pair = to_preference_row(row, source=source)
        chosen, rejected = _encode(spec, [pair.chosen_conversation(), pair.rejected_conversation()])
        _check_same_prompt(chosen, rejected)
        examples = [(Example(chosen.input_ids, chosen.labels, source + CHOSEN), chosen),
                    (Example(rejected.input_ids, rejected.labels, source + REJECTED), rejected)]  # fmt: skip
        return "pair", pair.format, PairRow(examples, max(len(chosen.input_ids), len(rejected.input_ids)))
    except RowError as e:
        return row_failure(e, source_row)


def _encode(spec: TokenizeSpec, convs: list[Conversation]) -> list[Tokenized]:
    """Render and tokenize each conversation with only its final answer scored; refuse sequences longer than
    max_length (a cut answer would be scored on a different text than the one preferred)."""
    options = MaskOptions(train_on="last_assistant", train_on_reasoning=spec.options.train_on_reasoning)
    plans = [plan_conversation(c, spec.tokenizer, spec.template, options) for c in convs]
    out = []
    for tok in tokenize_plans(spec.tokenizer, plans):
        if isinstance(tok, RowError):
            raise tok
        out.append(_answer_at_the_end(tok))
    longest = max(len(t.input_ids) for t in out)
    if longest > spec.max_length:
        if spec.truncation == "error":
            raise RowError("too_long", f"{longest} tokens > max_length={spec.max_length} (truncation: error)")
        raise RowError(
            "exceeds_max_length",
            f"{longest} tokens > max_length={spec.max_length} (preference rows are dropped, never cut)",
            longest,
        )
    return out


def _answer_at_the_end(tok: Tokenized) -> Tokenized:
    """The sequence up to the answer's last scored token: what follows the answer's end-of-turn (a newline some
    templates write after it) is not part of the answer. The scored tokens must be one run: TRL scores the
    completion as one block after the prompt."""
    labels = np.asarray(tok.labels)
    scored = np.flatnonzero(labels != IGNORE_INDEX)
    if not len(scored):
        raise RowError("no_trainable_tokens", "the answer has no tokens to score (empty after rendering)")
    first, last = int(scored[0]), int(scored[-1])
    if last - first + 1 != len(scored):
        raise RowError(
            "pref_answer_not_contiguous",
            "the chat template puts unscored tokens inside the answer (e.g. a reasoning block with "
            "train_on_reasoning: false); preference training scores the answer as one block. Set "
            "train_on_reasoning: true or remove the reasoning from the answers.",
        )
    end = last + 1
    return Tokenized(tok.input_ids[:end], tok.labels[:end], tok.truncated, tok.method, tok.full_length)


def _check_same_prompt(chosen: Tokenized, rejected: Tokenized) -> None:
    prompt_c, _ = split_at_answer(np.asarray(chosen.input_ids), np.asarray(chosen.labels))
    prompt_r, _ = split_at_answer(np.asarray(rejected.input_ids), np.asarray(rejected.labels))
    if prompt_c != prompt_r:
        raise RowError(
            "pref_prompt_tokens_differ",
            "the prompt's tokens differ before the chosen and the rejected answer (the chat template renders the "
            "prompt differently depending on the answer); the pair cannot be compared",
        )


# ---------------------------------------------------------------- reading back for the trainer


def split_at_answer(ids: np.ndarray, labels: np.ndarray) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) of one example: the answer starts at its first scored token."""
    start = int(np.argmax(labels != IGNORE_INDEX))
    ids = ids.tolist()
    return ids[:start], ids[start:]


def pair_features(view: Any, pair: int) -> dict[str, Any]:
    """Pair `pair` of a view whose examples are chosen, rejected, chosen, ... → TRL's DPO features."""
    prompt, chosen = split_at_answer(view.token_ids(2 * pair), view.labels(2 * pair))
    _, rejected = split_at_answer(view.token_ids(2 * pair + 1), view.labels(2 * pair + 1))
    return {"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected}


def kto_features(view: Any, i: int) -> dict[str, Any]:
    """Example `i` of a KTO view → TRL's KTO features (the label is kept in the example's source)."""
    prompt, completion = split_at_answer(view.token_ids(i), view.labels(i))
    return {"prompt_ids": prompt, "completion_ids": completion, "label": view.source(i).endswith(DESIRABLE)}


def pair_positions(pairs: np.ndarray) -> np.ndarray:
    """Pair indices → the positions of their examples in the store (chosen, rejected for each)."""
    pairs = np.asarray(pairs, dtype=np.int64)
    return np.stack([2 * pairs, 2 * pairs + 1], axis=1).reshape(-1)
