"""Tool-call shapes learnt from real chat templates, and parsing generated text back into OpenAI tool_calls."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftforge.data.templates import TemplateInfo
from sftforge.serve.tool_calls import ToolCallFormat

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "chat_templates"


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.mark.needs_shared
@pytest.mark.parametrize(
    "name,expected",
    [("qwen2.5-instruct.jinja", ("<tool_call>", "</tool_call>")),
     ("trl/qwen3.jinja", ("<tool_call>", "</tool_call>")),  # not the empty <think></think> before it
     ("chatml.jinja", None)],
)  # fmt: skip
def test_the_call_shape_of_real_templates(tok, name, expected):
    if not SHARED.is_dir():
        pytest.skip(f"../shared is absent: real chat templates not found at {SHARED}")
    template = (SHARED / name).read_text(encoding="utf-8")
    fmt = ToolCallFormat.probe(tok, template, TemplateInfo.probe(tok, template).end_of_turn)
    if expected is None:
        assert not fmt.supports_tools
    else:
        assert fmt.supports_tools and (fmt.opener, fmt.closer) == expected


def test_parsing_calls_content_and_unknown_tools():
    fmt = ToolCallFormat(True, "<tool_call>", "</tool_call>")
    text = ('Let me look. <tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>\n'
            '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>')  # fmt: skip
    content, calls = fmt.parse(text, {"get_weather", "get_time"})
    assert content == "Let me look."
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Oslo"}
    assert calls[0]["id"] != calls[1]["id"] and calls[0]["type"] == "function"
    assert fmt.parse(text, {"get_weather"}) == (text, [])  # a tool that was not offered: left as text
    assert fmt.parse("<tool_call>{not json</tool_call>", {"x"}) == ("<tool_call>{not json</tool_call>", [])
    assert fmt.parse("plain answer", {"x"}) == ("plain answer", [])


def test_bare_json_calls_and_lists():
    fmt = ToolCallFormat(True, "", "")
    content, calls = fmt.parse(' {"name": "f", "parameters": {"a": 1}}', {"f"})
    assert content == "" and json.loads(calls[0]["function"]["arguments"]) == {"a": 1}
    listed = ToolCallFormat(True, "[TOOL_CALLS]", "")
    _, calls = listed.parse(
        '[TOOL_CALLS][{"name": "f", "arguments": {}}, {"name": "g", "arguments": "{}"}]', {"f", "g"}
    )
    assert [c["function"]["name"] for c in calls] == ["f", "g"] and calls[1]["function"]["arguments"] == "{}"
