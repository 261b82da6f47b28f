"""Structural checks on a converted conversation, with a stable reason code per problem.

The codes (`RowError.reason`) are what lenient mode counts when it skips rows; each detail names the turn index
(0-based) and role, so the user can find the turn in the file that `source` points at.
"""

from __future__ import annotations

from sftforge.data.conversation import ROLES, Conversation, Message
from sftforge.errors import RowError


def turn_label(index: int, role: str, origin: str | None = None) -> str:
    """How a turn is named in error messages, e.g. `turn 2 (assistant)` or `turn 1 (user, from `prompt`)`."""
    return f"turn {index} ({role}, from {origin})" if origin else f"turn {index} ({role})"


def validate_messages(messages: list[Message], labels: list[str] | None = None) -> None:
    """Raise RowError if the turns cannot make a training example.

    `labels` optionally names each turn better than `turn_label` does, e.g. which alpaca field it came from.
    """
    if not messages:
        raise RowError(
            "empty_messages", "the conversation has no turns; add at least a user and an assistant turn"
        )
    for i, msg in enumerate(messages):
        label = labels[i] if labels else turn_label(i, msg.role)
        if msg.role not in ROLES:
            raise RowError(
                "unknown_role", f"{label} has role {msg.role!r}; expected one of: {', '.join(ROLES)}"
            )
        if msg.role == "system" and i != 0:
            # Chat templates render the system prompt only at the start; a later one would be silently dropped.
            raise RowError(
                "misplaced_system", f"{label} is a system turn but not the first; move it to the start"
            )
        if not isinstance(msg.content, str):
            raise RowError(
                "bad_content_type", f"{label} has content of type {type(msg.content).__name__}, not text"
            )
        if msg.role in ("user", "system") and not msg.content.strip():
            raise RowError("empty_content", f"{label} is empty; give it some text or remove the turn")
        if (
            msg.role == "assistant"
            and not msg.content.strip()
            and not msg.tool_calls
            and not _has_text(msg.reasoning)
        ):
            raise RowError(
                "empty_content",
                f"{label} is empty (no content, tool_calls or reasoning); there is nothing to train",
            )
    if not any(m.role == "assistant" for m in messages):
        roles = ", ".join(dict.fromkeys(m.role for m in messages))
        raise RowError(
            "no_assistant_turn",
            f"the conversation has no assistant turn (roles found: {roles}), so there is nothing to train on",
        )


def validate_conversation(conv: Conversation) -> Conversation:
    """Check a Conversation built elsewhere; plain-text (pretraining) rows have no turns to check."""
    if conv.format != "text":
        validate_messages(conv.messages)
    return conv


def _has_text(value: str | None) -> bool:
    return bool(value and value.strip())
