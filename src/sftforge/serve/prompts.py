"""OpenAI chat messages → prompt ids, exactly as training tokenized the same conversation.

The messages go through the training data path: the same parser (roles, typed content parts, tool calls,
`<think>` reasoning), the same renderer of the saved chat template, and whole-text tokenization without added
special tokens (the template writes them). So the prompt is token for token what `sftforge inspect` shows before
the trained answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sftforge.data.formats import parse_turns
from sftforge.data.spans import split_inline_reasoning
from sftforge.data.templates import TemplateInfo, make_renderer
from sftforge.data.tools import normalize_tools
from sftforge.errors import RowError
from sftforge.serve.tool_calls import ToolCallFormat


class PromptError(ValueError):
    """The request's messages or tools cannot be rendered; `param` names the request field."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


@dataclass
class Prompt:
    ids: list[int]
    text: str
    tool_names: set[str]


class PromptBuilder:
    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.template = tokenizer.chat_template
        self.info = TemplateInfo.probe(tokenizer, self.template)
        self.tools = ToolCallFormat.probe(tokenizer, self.template, self.info.end_of_turn)

    def build(self, messages: Any, tools: Any = None, tool_choice: Any = None, prefill: str = "") -> Prompt:
        """`prefill`: text the answer must start with (a tool call's opener when a call is required)."""
        try:
            parsed = parse_turns(messages, "messages")
        except RowError as e:
            raise PromptError(e.detail, "messages") from None
        try:
            schemas = normalize_tools(tools) if tool_choice != "none" else None
        except RowError as e:
            raise PromptError(e.detail, "tools") from None
        if parsed[-1].role == "assistant":
            raise PromptError(
                "the last message is an assistant turn: end with a user (or tool) message to get an answer.",
                "messages",
            )
        if schemas and not self.tools.supports_tools:
            raise PromptError(
                "this model's chat template does not render tools: it cannot be offered tools.", "tools"
            )
        turns = [m.to_template_dict() for m in parsed]
        if self.info.supports_reasoning:
            turns = split_inline_reasoning(turns)
        try:
            text = make_renderer(self.tokenizer, self.template, schemas)(turns, True) + prefill
        except RowError as e:
            raise PromptError(f"the chat template refuses these messages: {e.detail}", "messages") from None
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:  # e.g. a lone surrogate ("\ud800") in a JSON string
            raise PromptError(
                f"the messages hold text that is not valid Unicode: {e.reason}", "messages"
            ) from None
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        names = {s["function"]["name"] for s in schemas or [] if isinstance(s.get("function"), dict)}
        return Prompt(ids, text, names)
