"""Preference rows in the formats people have → a prompt and its answers (pure; RowError names the problem).

Pairs (`stage: dpo`):
- TRL, explicit prompt: `{"prompt", "chosen", "rejected"}`, each a string or a list of messages (the prompt may
  hold several turns; each answer is one assistant message);
- TRL, implicit prompt: `{"chosen": [conversation], "rejected": [conversation]}`, the shared turns are the prompt;
- LLaMA-Factory ShareGPT / OpenAI: `{"conversations" | "messages": [...], "chosen": turn, "rejected": turn}`
  (+ `system`, `tools`);
- LLaMA-Factory Alpaca: `{"instruction", "input", "chosen", "rejected"}` (+ `system`, `history`).
Rated answers (`stage: kto`): TRL's `{"prompt", "completion", "label"}`, or LLaMA-Factory's
`{"messages" | "conversations": [... answer], "kto_tag"}`.

Each side is turned into the SFT row it would be and read by `formats.to_conversation`, so roles, tool calls,
reasoning, typed content and every check of SFT rows apply to preference rows unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sftforge.data.conversation import Conversation, Message
from sftforge.data.formats import to_conversation
from sftforge.errors import RowError

_PROMPT_ENDS = ("user", "tool")
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


@dataclass
class PreferenceRow:
    prompt: list[Message]  # every turn before the answer; the last one is a user or tool turn
    chosen: Message  # an assistant turn
    rejected: Message
    tools: list[dict[str, Any]] | None
    source: str
    format: str

    def chosen_conversation(self) -> Conversation:
        return Conversation([*self.prompt, self.chosen], self.tools, self.source, self.format)

    def rejected_conversation(self) -> Conversation:
        return Conversation([*self.prompt, self.rejected], self.tools, self.source, self.format)


@dataclass
class KtoRow:
    prompt: list[Message]
    completion: Message
    desirable: bool
    tools: list[dict[str, Any]] | None
    source: str
    format: str

    def conversation(self) -> Conversation:
        return Conversation([*self.prompt, self.completion], self.tools, self.source, self.format)


def to_preference_row(row: Any, source: str = "") -> PreferenceRow:
    if not isinstance(row, dict):
        raise RowError("not_an_object", f"the row is a {type(row).__name__}, not a JSON object")
    missing = [k for k in ("chosen", "rejected") if row.get(k) in (None, "", [], {})]
    if missing:
        raise RowError(
            "pref_missing_answer",
            f"no `{'` or `'.join(missing)}` answer: stage dpo reads pairs {{prompt, chosen, rejected}} (TRL) or "
            "{conversations, chosen, rejected} (LLaMA-Factory); use stage sft for plain conversations",
        )
    fmt, sides = _pair_sides(row)
    chosen, rejected = (
        _split(to_conversation(side, source), key)
        for key, side in zip(("chosen", "rejected"), sides, strict=True)
    )
    if _turns(chosen[0]) != _turns(rejected[0]):
        at = next(i for i, (a, b) in enumerate(zip(chosen[0], rejected[0], strict=True)) if _turn(a) != _turn(b)) \
            if len(chosen[0]) == len(rejected[0]) else min(len(chosen[0]), len(rejected[0]))  # fmt: skip
        raise RowError(
            "pref_prompt_mismatch",
            f"`chosen` and `rejected` differ before their last turn (turn {at}): a pair compares two answers to "
            "one prompt; make every turn but the answer the same in both",
        )
    if _turn(chosen[1]) == _turn(rejected[1]):
        raise RowError(
            "pref_identical_answers", "`chosen` and `rejected` are the same answer: the pair teaches nothing"
        )
    conv = to_conversation(sides[0], source)
    return PreferenceRow(chosen[0], chosen[1], rejected[1], conv.tools, source, fmt)


def to_kto_row(row: Any, source: str = "") -> KtoRow:
    if not isinstance(row, dict):
        raise RowError("not_an_object", f"the row is a {type(row).__name__}, not a JSON object")
    key = "label" if "label" in row else "kto_tag" if "kto_tag" in row else None
    if key is None:
        raise RowError(
            "kto_missing_label",
            "no `label` (TRL) or `kto_tag` (LLaMA-Factory): stage kto reads answers rated true (desirable) or "
            "false (undesirable)",
        )
    desirable = _boolean(row[key], key)
    rest = {k: v for k, v in row.items() if k not in ("label", "kto_tag")}
    fmt = "kto_prompt_completion" if "completion" in rest else "kto_conversation"
    conv = to_conversation(rest, source)
    prompt, answer = _split(conv, "completion" if "completion" in rest else "the last turn")
    return KtoRow(prompt, answer, desirable, conv.tools, source, fmt)


def _pair_sides(row: dict[str, Any]) -> tuple[str, tuple[dict[str, Any], dict[str, Any]]]:
    """(format, the SFT row of each side) of a preference row."""
    extra = {k: row[k] for k in ("system", "tools") if k in row}
    if "instruction" in row or "input" in row:  # LLaMA-Factory alpaca pairwise
        base = {k: row[k] for k in ("instruction", "input", "system", "history") if k in row}
        return "pref_alpaca", tuple({**base, "output": _text(row[k], k)} for k in ("chosen", "rejected"))  # type: ignore[return-value]
    for key in ("conversations", "messages"):  # LLaMA-Factory sharegpt / openai pairwise
        if key in row:
            turns = row[key]
            if not isinstance(turns, list):
                raise RowError(
                    "bad_content_type", f"`{key}` must be a list of turns, got a {type(turns).__name__}"
                )
            sharegpt = any(isinstance(t, dict) and "from" in t for t in turns)
            sides = tuple(
                {**extra, key: [*turns, *_answer_turns(row[k], k, sharegpt)]} for k in ("chosen", "rejected")
            )
            return ("pref_sharegpt" if sharegpt else "pref_messages"), sides  # type: ignore[return-value]
    if "prompt" in row:  # TRL explicit prompt: strings or messages
        prompt = row["prompt"]
        sides = tuple(
            {**extra, "prompt": prompt, "completion": _as_completion(row[k], k)}
            for k in ("chosen", "rejected")
        )
        return "pref_prompt_chosen_rejected", sides  # type: ignore[return-value]
    for k in ("chosen", "rejected"):  # TRL implicit prompt: two whole conversations
        if not isinstance(row[k], list):
            raise RowError(
                "pref_missing_prompt",
                f"`{k}` is a {type(row[k]).__name__} and the row has no `prompt`: give a `prompt`, or make `chosen` "
                "and `rejected` whole conversations (lists of messages) sharing every turn but the answer",
            )
    return "pref_implicit_prompt", (
        {**extra, "messages": row["chosen"]},
        {**extra, "messages": row["rejected"]},
    )


def _answer_turns(answer: Any, key: str, sharegpt: bool) -> list[Any]:
    if isinstance(answer, str):
        return [{"from": "gpt", "value": answer} if sharegpt else {"role": "assistant", "content": answer}]
    if isinstance(answer, dict):
        return [answer]
    if isinstance(answer, list) and len(answer) == 1:
        return answer
    raise RowError(
        "pref_answer_not_assistant",
        f"`{key}` must be one assistant turn (an object or a string), got {answer!r:.60}",
    )


def _as_completion(answer: Any, key: str) -> Any:
    if isinstance(answer, (str, list)):
        return answer
    if isinstance(answer, dict):
        return [answer]
    raise RowError("bad_content_type", f"`{key}` is a {type(answer).__name__}; expected a string or messages")


def _text(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise RowError("bad_content_type", f"`{key}` is a {type(value).__name__}; expected a string")
    return value


def _split(conv: Conversation, key: str) -> tuple[list[Message], Message]:
    """(prompt turns, the answer) of a conversation whose last turn is the answer."""
    *prompt, answer = conv.messages
    if answer.role != "assistant":
        raise RowError(
            "pref_answer_not_assistant", f"`{key}` ends with a {answer.role} turn, not an assistant answer"
        )
    if not (answer.content.strip() or answer.tool_calls or (answer.reasoning or "").strip()):
        raise RowError("pref_empty_answer", f"`{key}`'s answer is empty: there is nothing to prefer")
    if not prompt or prompt[-1].role not in _PROMPT_ENDS:
        last = prompt[-1].role if prompt else "nothing"
        raise RowError(
            "pref_prompt_end",
            f"the prompt before `{key}` ends with {last}; it must end with a user (or tool) turn that the answer "
            "replies to",
        )
    return prompt, answer


def _turn(m: Message) -> tuple:
    return (m.role, m.content, m.reasoning, repr(m.tool_calls), m.name)


def _turns(messages: list[Message]) -> list[tuple]:
    return [_turn(m) for m in messages]


def _boolean(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise RowError("kto_bad_label", f"`{key}` is {value!r}; expected true (desirable) or false (undesirable)")
