"""Tool calls in generated text → OpenAI `tool_calls`, in whatever shape the model's own chat template writes them.

The shape is learnt from the template itself: it renders an assistant turn that calls a probe tool, and the text
around the call's JSON is the call's opener and closer (Qwen/Hermes: `<tool_call>` … `</tool_call>`; Mistral:
`[TOOL_CALLS]` before a JSON list; Llama 3.1: nothing, the JSON alone). A model trained with that template writes
its calls the same way.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from sftforge.data.templates import make_renderer
from sftforge.errors import RowError

_NAME = "sftforge_probe_tool"
_ARGUMENT = "sftforge-probe-argument"
_TOOL = {
    "type": "function",
    "function": {
        "name": _NAME,
        "description": "A probe.",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
    },
}
_ARGUMENT_KEYS = ("arguments", "parameters")


@dataclass(frozen=True)
class ToolCallFormat:
    supports_tools: bool  # the template renders a tool list
    opener: str  # text before a call's JSON ("" when the JSON stands alone)
    closer: str  # text after it

    @classmethod
    def probe(cls, tokenizer: Any, template: str, end_of_turn: tuple[str, ...]) -> ToolCallFormat:
        render = make_renderer(tokenizer, template, [_TOOL])
        user = [{"role": "user", "content": "sftforge-probe"}]
        try:
            with_tools = render(user, True)
            supports = _NAME in with_tools
            prompt = with_tools
            call = {"type": "function", "function": {"name": _NAME, "arguments": {"q": _ARGUMENT}}}
            full = render([*user, {"role": "assistant", "content": "", "tool_calls": [call]}], False)
        except RowError:
            return cls(supports_tools=False, opener="", closer="")
        if not supports or not full.startswith(prompt) or _ARGUMENT not in full:
            return cls(supports_tools=supports, opener="", closer="")
        turn = full[len(prompt) :]
        start, end = _enclosing_json(turn, turn.index(_NAME))
        closer = turn[end:]
        for marker in end_of_turn:  # the closer ends where the turn's end-of-turn token starts
            if marker and marker in closer:
                closer = closer[: closer.index(marker)]
        return cls(supports_tools=True, opener=turn[:start].strip(), closer=closer.strip())

    def parse(self, text: str, tool_names: set[str]) -> tuple[str, list[dict[str, Any]]]:
        """(content, tool_calls) of a generated answer; calls of tools not offered stay in the content."""
        if self.opener:
            head, *segments = text.split(self.opener)
            calls = [call for segment in segments for call in _calls_in(segment, tool_names)]
            return (head.strip(), calls) if calls else (text, [])
        calls = _calls_in(text.strip(), tool_names)
        return ("", calls) if calls else (text, [])


def _enclosing_json(text: str, inside: int) -> tuple[int, int]:
    """Start and end of the JSON value (object or list) around position `inside`."""
    decoder = json.JSONDecoder()
    for start in range(inside, -1, -1):
        if text[start] in "{[":
            try:
                _, end = decoder.raw_decode(text, start)
            except ValueError:
                continue
            if end > inside:
                return start, end
    return inside, inside


def _calls_in(segment: str, tool_names: set[str]) -> list[dict[str, Any]]:
    segment = segment.lstrip()
    try:
        value, _ = json.JSONDecoder().raw_decode(segment)
    except ValueError:
        return []
    items = value if isinstance(value, list) else [value]
    calls = []
    for item in items:
        if not isinstance(item, dict):
            return []
        fn = item.get("function") if isinstance(item.get("function"), dict) else item
        name = fn.get("name")
        if name not in tool_names:
            return []
        arguments = next((fn[k] for k in _ARGUMENT_KEYS if k in fn), {})
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments, ensure_ascii=False)
        calls.append(
            {
                "id": f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }
        )
    return calls
