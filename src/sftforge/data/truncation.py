"""Fitting an example into `max_length`.

- `turns` (default): drop whole earliest rounds (a user turn and what answers it), keeping the system prompt and
  tools; never cut inside the last trained answer — an example whose final round alone is too long is dropped.
- `right`: cut tokens at max_length.
- `drop`: drop every example longer than max_length.
- `error`: stop with the example's file:line.

Examples left with zero trained tokens are dropped and counted, never trained on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from sftforge.data.conversation import Conversation
from sftforge.data.masking import Tokenized
from sftforge.errors import RowError

TRUNCATION_MODES = ("turns", "right", "drop", "error")
Encode = Callable[[Conversation], Tokenized]


def fit_to_length(conv: Conversation, encode: Encode, max_length: int, mode: str) -> Tokenized:
    out = encode(conv)
    if len(out.input_ids) <= max_length:
        return out
    length = len(out.input_ids)
    if mode == "error":
        raise RowError(
            "too_long",
            f"{length} tokens is longer than max_length={max_length} (truncation: error); shorten the row, "
            "raise max_length, or choose truncation: turns, right or drop",
            length,
        )
    if mode == "drop":
        raise RowError(
            "exceeds_max_length", f"{length} tokens > max_length={max_length} (truncation: drop)", length
        )
    if mode == "right":
        cut = Tokenized(
            out.input_ids[:max_length],
            out.labels[:max_length],
            truncated=True,
            method=out.method,
            full_length=length,
        )
        if cut.num_trained == 0:
            raise RowError(
                "no_trainable_tokens_after_truncation",
                f"{length} tokens > max_length={max_length} and no trained token is left after cutting",
                length,
            )
        return cut
    return _drop_earliest_rounds(conv, encode, max_length, length)


def rounds(conv: Conversation) -> tuple[list, list[list]]:
    """(leading system messages, rounds): each round starts at a user message and runs to the next one."""
    head, groups = [], []
    for message in conv.messages:
        if message.role == "system" and not groups:
            head.append(message)
        elif message.role == "user" or not groups:
            groups.append([message])
        else:
            groups[-1].append(message)
    return head, groups


def _drop_earliest_rounds(conv: Conversation, encode: Encode, max_length: int, length: int) -> Tokenized:
    head, groups = rounds(conv)
    # Drop as few rounds as possible: the smallest k whose remainder fits.
    for k in range(1, len(groups)):
        shorter = replace(conv, messages=head + [m for g in groups[k:] for m in g])
        try:
            out = encode(shorter)
        except RowError as e:
            if e.reason == "no_trainable_tokens":
                break  # the remaining rounds have nothing to train
            raise
        if len(out.input_ids) <= max_length:
            out.truncated, out.full_length = True, length
            return out
    raise RowError(
        "exceeds_max_length",
        f"{length} tokens > max_length={max_length}, and even its last round alone does not fit "
        "(truncation: turns never cuts inside the last trained answer); raise max_length or use truncation: right",
        length,
    )
