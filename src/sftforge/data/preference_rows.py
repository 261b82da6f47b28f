"""Convert raw preference (DPO) and unpaired (KTO) rows to canonical objects.

Accepted: TRL's prompt/chosen/rejected (text or messages), TRL's implicit prompt (chosen/rejected are whole
conversations sharing a prefix), LLaMA-Factory's pairwise ShareGPT/messages and alpaca rows, TRL's unpaired
prompt/completion/label and LLaMA-Factory's `kto_tag` rows. Turns are parsed by formats.py, so roles, tool calls,
reasoning and media are handled exactly as for SFT; every problem raises RowError naming the key and turn.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sftforge.data.conversation import Conversation, Message
from sftforge.data.formats import (  # is_*_row: detected with the other row shapes, re-exported here
    alpaca_turns,
    is_kto_row,
    is_preference_row,
    parse_turn,
    parse_turns,
    refuse_media,
    with_row_system,
)
from sftforge.data.tools import normalize_tools
from sftforge.data.validate import turn_label, validate_messages
from sftforge.errors import RowError

__all__ = ["KtoRow", "PreferenceRow", "is_kto_row", "is_preference_row", "to_kto_row", "to_preference_row"]

_PROMPT_END_ROLES = ("user", "tool")
_TRUE_LABELS = (True, 1, "true")
_FALSE_LABELS = (False, 0, "false")


@dataclass
class PreferenceRow:
    """One DPO example: a prompt and two assistant answers to it, the chosen one better than the rejected one."""

    prompt: list[Message]  # every turn before the answer; the last one is a user or tool turn
    chosen: Message  # role assistant
    rejected: Message  # role assistant
    tools: list[dict[str, Any]] | None
    source: str  # file:line
    format: str  # e.g. "pref_prompt_chosen_rejected", "pref_implicit_prompt", "pref_sharegpt"

    def chosen_conversation(self) -> Conversation:
        return Conversation([*self.prompt, self.chosen], self.tools, self.source, self.format)

    def rejected_conversation(self) -> Conversation:
        return Conversation([*self.prompt, self.rejected], self.tools, self.source, self.format)


@dataclass
class KtoRow:
    """One KTO example: a prompt, one assistant completion and whether that completion is desirable."""

    prompt: list[Message]
    completion: Message  # role assistant
    desirable: bool
    tools: list[dict[str, Any]] | None
    source: str
    format: str  # "kto_unpaired", "kto_messages", "kto_sharegpt" or "kto_alpaca"

    def conversation(self) -> Conversation:
        return Conversation([*self.prompt, self.completion], self.tools, self.source, self.format)


# A turn with the label that error messages use for it, e.g. "turn 1 (user, from `prompt`)".
_Turns = list[tuple[Message, str]]


# ---------------------------------------------------------------------------------------------------------------
# Preference (DPO) rows


def to_preference_row(row: Any, source: str = "") -> PreferenceRow:
    """Convert one raw pairwise row (raises RowError if it cannot be used)."""
    _check_object(row)
    refuse_media(row)
    for key in ("chosen", "rejected"):
        if row.get(key) is None:
            raise RowError(
                "pref_missing_answer",
                f"the row has no `{key}` (keys found: {list(row)}); a preference row needs both `chosen` and "
                "`rejected` answers to the same prompt",
            )
    if _prompt_key(row) is None:
        prompt, chosen, rejected = _implicit_prompt(row)
        fmt = "pref_implicit_prompt"
    else:
        prompt, fmt = _explicit_prompt(row)
        chosen, rejected = _answer(row["chosen"], "chosen"), _answer(row["rejected"], "rejected")
    _check_prompt_end(prompt)
    for answer in (chosen, rejected):
        validate_messages([m for m, _ in prompt] + [answer[0]], [label for _, label in prompt] + [answer[1]])
    if _same_answer(chosen[0], rejected[0]):
        raise RowError(
            "pref_identical_answers",
            "`chosen` and `rejected` are the same answer, so the pair teaches nothing; fix or drop the row",
        )
    return PreferenceRow(
        prompt=[m for m, _ in prompt],
        chosen=chosen[0],
        rejected=rejected[0],
        tools=normalize_tools(row.get("tools")),
        source=source,
        format=fmt,
    )


def _explicit_prompt(row: dict[str, Any]) -> tuple[_Turns, str]:
    key = _prompt_key(row)
    if key == "instruction":
        return _alpaca_prompt(row), "pref_alpaca"
    fmt = {"prompt": "pref_prompt_chosen_rejected", "messages": "pref_messages"}.get(key, "pref_sharegpt")
    return _system_first(row, _prompt_turns(row[key], key)), fmt


def _implicit_prompt(row: dict[str, Any]) -> tuple[_Turns, tuple[Message, str], tuple[Message, str]]:
    """TRL's implicit prompt: `chosen` and `rejected` are whole conversations that differ only in the last turn."""
    if not isinstance(row["chosen"], list) or not isinstance(row["rejected"], list):
        raise RowError(
            "pref_missing_prompt",
            f"the row has no prompt (keys found: {list(row)}); give the question as `prompt` (or `messages`, "
            "`conversations`, `instruction`), or make `chosen` and `rejected` whole conversations ending in "
            "their answers",
        )
    chosen, rejected = _labelled(row["chosen"], "chosen"), _labelled(row["rejected"], "rejected")
    for key, turns in (("chosen", chosen), ("rejected", rejected)):
        last = turns[-1][0]
        if last.role != "assistant":
            raise RowError(
                "pref_answer_not_assistant",
                f"the last turn of `{key}` ({turns[-1][1]}) is a {last.role} turn; with no `prompt`, `chosen` "
                "and `rejected` must each end with the assistant answer",
            )
    if len(chosen) != len(rejected):
        raise RowError(
            "pref_prompt_mismatch",
            f"`chosen` has {len(chosen) - 1} turn(s) before its answer and `rejected` has {len(rejected) - 1}; "
            "without a `prompt` both must repeat the same prompt and differ only in their last assistant turn",
        )
    for i, ((a, _), (b, _)) in enumerate(zip(chosen[:-1], rejected[:-1], strict=True)):
        if a != b:
            raise RowError(
                "pref_prompt_mismatch",
                f"message {i} differs between `chosen` ({a.role}: {_clip(a.content)!r}) and `rejected` "
                f"({b.role}: {_clip(b.content)!r}); without a `prompt` both must repeat the same prompt and "
                "differ only in their last assistant turn",
            )
    return (
        _system_first(row, chosen[:-1]),
        _non_empty(chosen[-1], "chosen"),
        _non_empty(rejected[-1], "rejected"),
    )


# ---------------------------------------------------------------------------------------------------------------
# KTO rows


def to_kto_row(row: Any, source: str = "") -> KtoRow:
    """Convert one raw unpaired row with a desirable/undesirable label (raises RowError if it cannot be used)."""
    _check_object(row)
    refuse_media(row)
    desirable = _kto_label(row)
    if "completion" in row:
        if row.get("prompt") is None:
            raise RowError(
                "pref_missing_prompt",
                f"the row has `completion` but no `prompt` (keys found: {list(row)}); give the question as `prompt`",
            )
        prompt, fmt = _system_first(row, _prompt_turns(row["prompt"], "prompt")), "kto_unpaired"
        completion = _answer(row["completion"], "completion")
    else:
        turns, fmt, key = _kto_turns(row)
        if turns[-1][0].role != "assistant":
            raise RowError(
                "pref_answer_not_assistant",
                f"the last turn of `{key}` ({turns[-1][1]}) is a {turns[-1][0].role} turn; a KTO row ends with "
                "the assistant completion that `kto_tag` judges",
            )
        prompt, completion = turns[:-1], _non_empty(turns[-1], key)
    _check_prompt_end(prompt)
    validate_messages(
        [m for m, _ in prompt] + [completion[0]], [label for _, label in prompt] + [completion[1]]
    )
    return KtoRow(
        prompt=[m for m, _ in prompt],
        completion=completion[0],
        desirable=desirable,
        tools=normalize_tools(row.get("tools")),
        source=source,
        format=fmt,
    )


def _kto_turns(row: dict[str, Any]) -> tuple[_Turns, str, str]:
    """LLaMA-Factory KTO rows: a whole conversation (or alpaca fields) whose last turn is the completion."""
    if "messages" in row or "conversations" in row:
        key = "messages" if "messages" in row else "conversations"
        fmt = "kto_messages" if key == "messages" else "kto_sharegpt"
        return _system_first(row, _labelled(row[key], key)), fmt, key
    if "instruction" in row:
        messages, labels = alpaca_turns(row)
        return list(zip(messages, labels, strict=True)), "kto_alpaca", "output"
    raise RowError(
        "pref_missing_prompt",
        f"the row has `kto_tag` but no conversation (keys found: {list(row)}); give the turns as `messages` or "
        "`conversations` ending with the assistant completion, or use prompt/completion/label",
    )


def _kto_label(row: dict[str, Any]) -> bool:
    key = "label" if "label" in row else "kto_tag"
    if key not in row:
        raise RowError(
            "kto_missing_label",
            f"the row has no `label` or `kto_tag` (keys found: {list(row)}); KTO needs to know whether the "
            "completion is desirable (true) or not (false)",
        )
    value = row[key]
    value = value.strip().lower() if isinstance(value, str) else value
    # `type(...)` guards keep 1.0 or None out: only booleans, 0/1 and the words true/false are unambiguous.
    if type(value) in (bool, int, str) and value in _TRUE_LABELS:
        return True
    if type(value) in (bool, int, str) and value in _FALSE_LABELS:
        return False
    raise RowError(
        "kto_bad_label", f'`{key}` is {row[key]!r}; expected true or false (1/0 and "true"/"false" also work)'
    )


# ---------------------------------------------------------------------------------------------------------------
# Shared pieces


def _check_object(row: Any) -> None:
    if not isinstance(row, dict):
        raise RowError("not_an_object", f"the row is a {type(row).__name__}, not a JSON object")


def _prompt_key(row: dict[str, Any]) -> str | None:
    return next((k for k in ("prompt", "messages", "conversations", "instruction") if k in row), None)


def _prompt_turns(value: Any, key: str) -> _Turns:
    """A prompt given as text (one user turn) or as a list of turns."""
    if isinstance(value, str):
        return [(Message("user", value), turn_label(0, "user", f"`{key}`"))]
    if isinstance(value, list):
        return _labelled(value, key)
    raise RowError(
        "bad_content_type", f"`{key}` is a {type(value).__name__}; expected a string or a list of turns"
    )


def _labelled(turns: Any, key: str) -> _Turns:
    with _within(key):
        messages = parse_turns(turns, key)
    return [(m, turn_label(i, m.role, f"`{key}`")) for i, m in enumerate(messages)]


def _alpaca_prompt(row: dict[str, Any]) -> _Turns:
    # alpaca_turns also builds the `output` answer turn (empty here: pairwise rows have none); drop it.
    messages, labels = alpaca_turns(row)
    return list(zip(messages[:-1], labels[:-1], strict=True))


def _system_first(row: dict[str, Any], turns: _Turns) -> _Turns:
    """A row-level `system` field becomes the first turn, as in SFT rows (formats.with_row_system)."""
    messages = with_row_system(row, [m for m, _ in turns])
    if len(messages) == len(turns):
        return turns
    return [(messages[0], turn_label(0, "system", "`system`")), *turns]


def _answer(value: Any, key: str) -> tuple[Message, str]:
    """A chosen/rejected/completion answer: text, one message object, or a list holding one message."""
    label = turn_label(0, "assistant", f"`{key}`")
    if isinstance(value, str):
        return _non_empty((Message("assistant", value), label), key)
    if isinstance(value, dict):
        with _within(key):
            msg = parse_turn(value, 0)
        turn = (msg, turn_label(0, msg.role, f"`{key}`"))
    elif isinstance(value, list):
        if not value:
            raise RowError("pref_empty_answer", f"`{key}` is an empty list; give the assistant answer")
        turns = _labelled(value, key)
        if len(turns) > 1:
            raise RowError(
                "pref_multi_turn_answer",
                f"`{key}` holds {len(turns)} turns; next to a prompt it must be the single assistant answer, so "
                "move the earlier turns into the prompt",
            )
        turn = turns[0]
    else:
        raise RowError(
            "bad_content_type",
            f"`{key}` is a {type(value).__name__}; expected text, an assistant message or a list with one",
        )
    if turn[0].role != "assistant":
        raise RowError(
            "pref_answer_not_assistant",
            f"`{key}` is a {turn[0].role} turn; the answer must be an assistant turn "
            "(role `assistant`, or ShareGPT `from: gpt` / `function_call`)",
        )
    return _non_empty(turn, key)


def _non_empty(turn: tuple[Message, str], key: str) -> tuple[Message, str]:
    msg = turn[0]
    if not msg.content.strip() and not msg.tool_calls and not (msg.reasoning and msg.reasoning.strip()):
        raise RowError(
            "pref_empty_answer", f"`{key}` ({turn[1]}) is empty; give it the answer text or tool calls"
        )
    return turn


def _check_prompt_end(prompt: _Turns) -> None:
    if not prompt:  # only reachable with implicit prompts: `chosen` is a lone assistant turn
        raise RowError(
            "pref_prompt_end",
            "the prompt is empty: `chosen` and `rejected` hold only their answers; put the question before them "
            "or give it as `prompt`",
        )
    last, label = prompt[-1]
    if last.role not in _PROMPT_END_ROLES:
        raise RowError(
            "pref_prompt_end",
            f"the prompt ends with {label}; it must end with a user (or tool) turn that the answer replies to: "
            "remove the trailing turn or move it into the answers",
        )


def _same_answer(a: Message, b: Message) -> bool:
    # Compare what the template renders (not the `train` flag); surrounding whitespace carries no preference.
    da, db = a.to_template_dict(), b.to_template_dict()
    da["content"], db["content"] = a.content.strip(), b.content.strip()
    return da == db


@contextmanager
def _within(key: str) -> Iterator[None]:
    """Prefix errors raised while parsing `key` with its name, as formats.py's turn errors name only the index."""
    try:
        yield
    except RowError as e:
        if f"`{key}`" in e.detail:
            raise
        raise RowError(e.reason, f"in `{key}`: {e.detail}", e.length) from e


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
