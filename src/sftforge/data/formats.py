"""Detect a row's format and convert it to the canonical Conversation.

Supported: OpenAI `messages`, `conversations` with role/content (MiniMind), ShareGPT `conversations` with
from/value (LLaMA-Factory, incl. function_call/observation), alpaca, prompt/completion and plain `text`.
Every problem raises RowError with a stable reason code and a detail naming the turn, so lenient mode can count
and strict mode can point at the exact place to fix.
"""

from __future__ import annotations

from typing import Any

from sftforge.data.columns import suggest_columns
from sftforge.data.conversation import Conversation, Message
from sftforge.data.tools import (
    FUNCTION_CALL_ROLE,
    calls_from_value,
    normalize_tool_call,
    normalize_tools,
    turn_tool_calls,
)
from sftforge.data.validate import turn_label, validate_messages
from sftforge.errors import RowError

FORMATS = ("messages", "conversations", "sharegpt", "alpaca", "prompt_completion", "text")

# Names other datasets use for the four canonical roles (ShareGPT, Gemini, legacy OpenAI, Llama 3 ipython).
ROLE_ALIASES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "tool": "tool",
    "function": "tool",
    "observation": "tool",
    "ipython": "tool",
}
_TEXT_KEYS = ("text", "value")
# Media keys of multimodal rows (LLaMA-Factory's images/videos/audios, and the singular forms): no format reads
# them, so such a row would train on its text alone, with "<image>" placeholders pointing at nothing.
MEDIA_KEYS = ("images", "videos", "audios", "image", "video", "audio")
_REASONING_KEYS = ("text", "value", "reasoning", "thinking")


def is_preference_row(row: Any) -> bool:
    """A DPO pair: a chosen and a rejected answer (data/preference_rows.py reads it)."""
    return isinstance(row, dict) and "chosen" in row and "rejected" in row


def is_kto_row(row: Any) -> bool:
    """TRL's prompt/completion/label, or LLaMA-Factory's turns with `kto_tag` (its kto_en_demo names it `label`)."""
    if not isinstance(row, dict):
        return False
    labelled_turns = "label" in row and any(k in row for k in ("completion", "messages", "conversations"))
    return "kto_tag" in row or labelled_turns


def detect_format(row: Any) -> str:
    """Name the row's format from its keys (one of FORMATS)."""
    if not isinstance(row, dict):
        raise RowError("not_an_object", f"the row is a {type(row).__name__}, not a JSON object")
    if "messages" in row:
        return "messages"
    if "conversations" in row:
        turns = row["conversations"]
        first = next((t for t in turns if isinstance(t, dict)), None) if isinstance(turns, list) else None
        return "sharegpt" if first is not None and "from" in first else "conversations"
    if "instruction" in row and "output" in row:
        return "alpaca"
    if "prompt" in row and "completion" in row:
        return "prompt_completion"
    if "text" in row:
        return "text"
    if is_preference_row(row):
        # not "unknown": the column suggestion would map the rejected answer to the response and train it
        raise RowError(
            "preference_row",
            "the row is a preference pair (chosen/rejected), not a conversation to imitate; train it with "
            "stage: dpo (see README, Preference training)",
        )
    raise RowError(
        "unknown_format",
        f"cannot tell the format: keys found {list(row)}; expected one of: "
        "messages, conversations, instruction/input/output, prompt/completion, text; if your rows name them "
        f"differently, map your keys in the recipe, e.g. `{suggest_columns(row)}`",
    )


def to_conversation(row: Any, source: str = "") -> Conversation:
    """Convert one raw row to a validated Conversation (raises RowError if it cannot be used)."""
    fmt = detect_format(row)
    refuse_media(row)
    if is_kto_row(row) and ("kto_tag" in row or isinstance(row["label"], bool)):
        # a rated answer: trained as SFT, the undesirable ones would be imitated too (a text `label` may be a
        # category of an SFT row)
        raise RowError(
            "preference_row",
            "the row is a rated answer for KTO (`kto_tag` / a true-false `label`), not a conversation to imitate; "
            "train it with stage: kto (see README, Preference training)",
        )
    if fmt == "text":
        return Conversation(messages=[], source=source, format=fmt, meta={"text": _text_row(row)})
    if fmt == "alpaca":
        messages, labels = alpaca_turns(row)
    elif fmt == "prompt_completion":
        messages, labels = _prompt_completion(row)
    else:
        key = "messages" if fmt == "messages" else "conversations"
        messages, labels = parse_turns(row[key], key), None
    validate_messages(messages, labels)
    if fmt != "alpaca":  # alpaca reads its `system` field itself
        messages = with_row_system(row, messages)
    return Conversation(messages=messages, tools=normalize_tools(row.get("tools")), source=source, format=fmt)


def refuse_media(row: dict[str, Any]) -> None:
    media = [key for key in MEDIA_KEYS if row.get(key) not in (None, "", [], {})]
    if media:
        raise RowError(
            "multimodal_not_supported",
            f"the row carries {' and '.join(f'`{k}`' for k in media)}, which sftforge cannot train: it trains text "
            "models, and the text alone would teach answers about media the model never sees. Remove the key (or "
            "leave it empty) in text-only rows, or train this data with a multimodal trainer",
        )


# ---------------------------------------------------------------------------------------------------------------
# Turns (messages / conversations / sharegpt, and list-valued prompt/completion)


def parse_turns(turns: Any, key: str) -> list[Message]:
    """Convert a list of role/content or from/value dicts; `key` names the field in error messages."""
    if not isinstance(turns, list):
        raise RowError("bad_content_type", f"`{key}` must be a list of turns, got a {type(turns).__name__}")
    if not turns:
        raise RowError("empty_messages", f"`{key}` is an empty list: the conversation has no turns")
    return [parse_turn(turn, i) for i, turn in enumerate(turns)]


def parse_turn(turn: Any, i: int) -> Message:
    if not isinstance(turn, dict):
        raise RowError(
            "bad_content_type", f"turn {i} is a {type(turn).__name__}, not an object with role and content"
        )
    raw_role = turn.get("role", turn.get("from"))
    content = turn["content"] if "content" in turn else turn.get("value")
    if not isinstance(raw_role, str):
        raise RowError(
            "unknown_role", f"turn {i} has no role; give each turn a `role` (or ShareGPT `from`) key"
        )
    if raw_role.strip().lower() == FUNCTION_CALL_ROLE:
        msg = Message("assistant", "", tool_calls=calls_from_value(content, i))
    else:
        role = ROLE_ALIASES.get(raw_role.strip().lower())
        if role is None:
            expected = ", ".join([*ROLE_ALIASES, FUNCTION_CALL_ROLE])
            raise RowError("unknown_role", f"turn {i} has role {raw_role!r}; expected one of: {expected}")
        text, reasoning, calls = _parse_content(content, turn_label(i, role))
        msg = Message(role, text, reasoning=_turn_reasoning(turn, reasoning, i, role))
        calls += turn_tool_calls(turn, turn_label(i, role))
        msg.tool_calls = calls or None
        if role == "tool" and isinstance(turn.get("name"), str):
            msg.name = turn["name"]
    msg.train = _train_flag(turn, turn_label(i, msg.role))
    return msg


def _parse_content(content: Any, label: str) -> tuple[str, str | None, list[dict[str, Any]]]:
    """Split content into (text, reasoning, tool calls); typed parts are concatenated per kind."""
    if content is None:  # allowed: an assistant turn that only calls tools; validation catches the rest
        return "", None, []
    if isinstance(content, str):
        return content, None, []
    if not isinstance(content, list):
        raise RowError(
            "bad_content_type",
            f"{label} has content of type {type(content).__name__}; expected a string, null or a list of parts",
        )
    texts: list[str] = []
    reasoning: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        if isinstance(part, str):
            texts.append(part)
            continue
        if not isinstance(part, dict):
            raise RowError("bad_content_type", f"{label} part {j} is a {type(part).__name__}, not an object")
        kind = part.get("type", "text")
        if kind == "text":
            texts.append(_part_text(part, _TEXT_KEYS, label, j))
        elif kind in ("reasoning", "thinking"):
            reasoning.append(_part_text(part, _REASONING_KEYS, label, j))
        elif kind == "tool_call":
            calls.append(_call_from_part(part, f"{label} part {j}"))
        else:
            raise RowError(
                "bad_content_type",
                f"{label} part {j} has type {kind!r}; supported part types: text, reasoning, thinking, tool_call "
                "(this trainer is text-only)",
            )
    return "".join(texts), "".join(reasoning) if reasoning else None, calls


def _part_text(part: dict[str, Any], keys: tuple[str, ...], label: str, j: int) -> str:
    for key in keys:
        if isinstance(part.get(key), str):
            return part[key]
    raise RowError(
        "bad_content_type", f"{label} part {j} ({part.get('type')}) has no text in any of {list(keys)}"
    )


def _call_from_part(part: dict[str, Any], where: str) -> dict[str, Any]:
    if "function" in part or "name" in part:
        return normalize_tool_call(part, where)
    for key in _TEXT_KEYS:  # the call serialised as JSON text, as LLaMA-Factory v1 data does
        if key in part:
            return normalize_tool_call(part[key], where)
    raise RowError("bad_tool_call", f"{where}: the tool_call part has no name/arguments, function or value")


def _turn_reasoning(turn: dict[str, Any], from_parts: str | None, i: int, role: str) -> str | None:
    """`reasoning_content` (Qwen3/DeepSeek), `thinking` or `reasoning` fields, else the reasoning parts."""
    for key in ("reasoning_content", "thinking", "reasoning"):
        value = turn.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise RowError("bad_content_type", f"{turn_label(i, role)} has a non-text `{key}` field")
        return value
    return from_parts


def _train_flag(turn: dict[str, Any], label: str) -> bool | None:
    """Per-turn training switch: `train: bool` or LLaMA-Factory's `loss_weight` (0 = do not train)."""
    if turn.get("train") is not None:
        if not isinstance(turn["train"], bool):
            raise RowError(
                "bad_train_flag", f"{label} has `train` = {turn['train']!r}; expected true or false"
            )
        return turn["train"]
    weight = turn.get("loss_weight")
    if weight is None:
        return None
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise RowError(
            "bad_train_flag", f"{label} has `loss_weight` = {weight!r}; expected a number like 0 or 1"
        )
    return weight > 0


# ---------------------------------------------------------------------------------------------------------------
# Single-turn formats


def _field_text(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RowError(
            "bad_content_type", f"the `{key}` field is a {type(value).__name__}; expected a string"
        )
    return value


def alpaca_turns(row: dict[str, Any]) -> tuple[list[Message], list[str]]:
    turns: list[tuple[Message, str]] = []
    system = _field_text(row, "system")
    if system.strip():
        turns.append((Message("system", system), "`system`"))
    history = row.get("history") or []
    if not isinstance(history, list):
        raise RowError("bad_content_type", "the `history` field must be a list of [question, answer] pairs")
    for k, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise RowError(
                "bad_content_type", f"`history` item {k} must be a [question, answer] pair of strings"
            )
        turns.append((Message("user", pair[0]), f"`history[{k}][0]`"))
        turns.append((Message("assistant", pair[1]), f"`history[{k}][1]`"))
    instruction, extra = _field_text(row, "instruction"), _field_text(row, "input")
    if instruction.strip() and extra.strip():
        user = instruction + "\n" + extra
    else:
        user = instruction if instruction.strip() else extra
    turns.append((Message("user", user), "`instruction`/`input`"))
    turns.append((Message("assistant", _field_text(row, "output")), "`output`"))
    return [m for m, _ in turns], [turn_label(i, m.role, origin) for i, (m, origin) in enumerate(turns)]


def _prompt_completion(row: dict[str, Any]) -> tuple[list[Message], list[str]]:
    """TRL style: prompt/completion are strings, or lists of messages (conversational)."""
    messages: list[Message] = []
    origins: list[str] = []
    for key, role in (("prompt", "user"), ("completion", "assistant")):
        value = row[key]
        if isinstance(value, str):
            part = [Message(role, value)]
        elif isinstance(value, list):
            part = parse_turns(value, key)
        else:
            raise RowError(
                "bad_content_type", f"`{key}` is a {type(value).__name__}; expected a string or messages"
            )
        messages += part
        origins += [f"`{key}`"] * len(part)
    return messages, [
        turn_label(i, m.role, o) for i, (m, o) in enumerate(zip(messages, origins, strict=True))
    ]


def _text_row(row: dict[str, Any]) -> str:
    text = _field_text(row, "text")
    if not text.strip():
        raise RowError("empty_content", "the `text` field is empty; there is nothing to train on")
    return text


def with_row_system(row: dict[str, Any], messages: list[Message]) -> list[Message]:
    """A row-level `system` field (ShareGPT/LLaMA-Factory) becomes the first turn unless one already exists."""
    system = _field_text(row, "system")
    if not system.strip() or any(m.role == "system" for m in messages):
        return messages
    return [Message("system", system), *messages]
