"""The one canonical type every input format is converted to, and every later stage consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant", "tool")


@dataclass
class Message:
    """One turn. `content` is plain text; structured parts live in their own fields so templates render them."""

    role: str  # one of ROLES
    content: str = ""
    # Chain-of-thought text, passed to the template as `reasoning_content` (Qwen3 / DeepSeek style).
    reasoning: str | None = None
    # OpenAI-style tool calls: [{"type": "function", "function": {"name": str, "arguments": dict | str}}]
    tool_calls: list[dict[str, Any]] | None = None
    # For role == "tool": the name of the tool whose result this is (optional).
    name: str | None = None
    # Per-message training switch from the data (`loss_weight: 0/1`, `train: false`). None = follow the policy.
    train: bool | None = None

    def to_template_dict(self) -> dict[str, Any]:
        """The dict a Hugging Face chat template expects for this message."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.reasoning is not None:
            out["reasoning_content"] = self.reasoning
        if self.tool_calls:
            out["tool_calls"] = self.tool_calls
        if self.name is not None:
            out["name"] = self.name
        return out


@dataclass
class Conversation:
    """A training example. `source` is where it came from (`file:line`), used in every error message."""

    messages: list[Message]
    tools: list[dict[str, Any]] | None = None
    source: str = ""
    format: str = ""  # the detected input format, e.g. "messages", "sharegpt", "alpaca"
    meta: dict[str, Any] = field(default_factory=dict)

    def template_messages(self) -> list[dict[str, Any]]:
        return [m.to_template_dict() for m in self.messages]
