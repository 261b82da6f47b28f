"""Formats: each input format becomes the same Conversation; each unusable row fails with a stable reason code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sftforge.data.conversation import Conversation, Message
from sftforge.data.formats import detect_format, normalize_tools, to_conversation
from sftforge.data.readers import iter_rows
from sftforge.data.validate import validate_conversation
from sftforge.errors import RowError

USER = {"role": "user", "content": "hi"}
ASSISTANT = {"role": "assistant", "content": "hello"}
WEATHER = {
    "name": "get_weather",
    "description": "Weather",
    "parameters": {"type": "object", "properties": {}},
}


def row_error(row: Any) -> RowError:
    with pytest.raises(RowError) as err:
        to_conversation(row, "f.jsonl:1")
    return err.value


def roles(conv: Conversation) -> list[str]:
    return [m.role for m in conv.messages]


# --- detection ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "fmt"),
    [
        ({"messages": [USER, ASSISTANT]}, "messages"),
        ({"conversations": [USER, ASSISTANT]}, "conversations"),
        ({"conversations": [{"from": "human", "value": "hi"}]}, "sharegpt"),
        ({"instruction": "a", "input": "", "output": "b"}, "alpaca"),
        ({"prompt": "a", "completion": "b"}, "prompt_completion"),
        ({"text": "plain"}, "text"),
    ],
)
def test_detect_format(row: dict[str, Any], fmt: str) -> None:
    assert detect_format(row) == fmt


def test_unknown_format_lists_keys_and_formats() -> None:
    err = row_error({"question": "q", "answer": "a"})
    assert err.reason == "unknown_format"
    assert err.detail == (
        "cannot tell the format: keys found ['question', 'answer']; expected one of: "
        "messages, conversations, instruction/input/output, prompt/completion, text; if your rows name them "
        "differently, map your keys in the recipe, e.g. `columns: {prompt: question, response: answer}`"
    )


@pytest.mark.parametrize("row", [[USER], 3, "text", None])
def test_not_an_object(row: Any) -> None:
    assert row_error(row).reason == "not_an_object"


# --- messages ---------------------------------------------------------------------------------------------------


def test_messages_basic_sets_source_and_format() -> None:
    conv = to_conversation({"messages": [{"role": "system", "content": "sys"}, USER, ASSISTANT]}, "a.jsonl:7")
    assert conv.format == "messages" and conv.source == "a.jsonl:7" and conv.tools is None
    assert conv.messages == [Message("system", "sys"), Message("user", "hi"), Message("assistant", "hello")]


def test_typed_text_parts_are_concatenated() -> None:
    row = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "Hello "}, {"type": "text", "value": "there"}],
            },
            {"role": "assistant", "content": [{"type": "text", "value": "Hi"}]},
        ]
    }
    conv = to_conversation(row)
    assert [m.content for m in conv.messages] == ["Hello there", "Hi"]


def test_reasoning_parts_and_fields() -> None:
    row = {
        "messages": [
            USER,
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "let me "},
                    {"type": "reasoning", "value": "think"},
                ]
                + [{"type": "text", "text": "42"}],
            },
            USER,
            {"role": "assistant", "content": "7", "reasoning_content": "count"},
            USER,
            {"role": "assistant", "content": "8", "thinking": "add one"},
        ]
    }
    conv = to_conversation(row)
    assert [(m.content, m.reasoning) for m in conv.messages[1::2]] == [
        ("42", "let me think"),
        ("7", "count"),
        ("8", "add one"),
    ]
    assert conv.messages[1].to_template_dict()["reasoning_content"] == "let me think"


def test_assistant_with_only_reasoning_is_allowed() -> None:
    conv = to_conversation(
        {"messages": [USER, {"role": "assistant", "content": "", "reasoning_content": "hmm"}]}
    )
    assert conv.messages[1].reasoning == "hmm"


def test_openai_tool_calls_arguments_string_is_parsed() -> None:
    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    row = {
        "messages": [
            USER,
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "content": "sunny", "name": "get_weather", "tool_call_id": "c1"},
            ASSISTANT,
        ],
        "tools": [{"type": "function", "function": WEATHER}],
    }
    conv = to_conversation(row)
    assert conv.messages[1] == Message(
        "assistant",
        "",
        tool_calls=[
            {
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                "id": "c1",
            }
        ],
    )
    assert conv.messages[2] == Message("tool", "sunny", name="get_weather")
    assert conv.tools == [{"type": "function", "function": WEATHER}]


def test_arguments_that_are_not_json_stay_a_string() -> None:
    call = {"function": {"name": "run", "arguments": "ls -la"}}
    conv = to_conversation({"messages": [USER, {"role": "assistant", "tool_calls": [call]}]})
    assert conv.messages[1].tool_calls == [
        {"type": "function", "function": {"name": "run", "arguments": "ls -la"}}
    ]


@pytest.mark.parametrize(
    "part",
    [
        {"type": "tool_call", "name": "get_weather", "arguments": {"city": "Paris"}},
        {"type": "tool_call", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"type": "tool_call", "value": '{"name": "get_weather", "arguments": {"city": "Paris"}}'},
        {"type": "tool_call", "text": '{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}'},
    ],
)
def test_tool_call_parts(part: dict[str, Any]) -> None:
    conv = to_conversation({"messages": [USER, {"role": "assistant", "content": [part]}]})
    assert conv.messages[1].content == ""
    assert conv.messages[1].tool_calls == [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    ]


def test_loss_weight_and_train_flags() -> None:
    row = {
        "messages": [
            {**USER, "loss_weight": 0.0},
            {**ASSISTANT, "loss_weight": 1.0},
            {**USER, "train": True},
            {**ASSISTANT, "train": False},
            USER,
            ASSISTANT,
        ]
    }
    assert [m.train for m in to_conversation(row).messages] == [False, True, True, False, None, None]


def test_bad_loss_weight() -> None:
    err = row_error({"messages": [USER, {**ASSISTANT, "loss_weight": "1"}]})
    assert err.reason == "bad_train_flag" and "turn 1 (assistant)" in err.detail


@pytest.mark.parametrize(
    ("alias", "role"),
    [
        ("human", "user"),
        ("gpt", "assistant"),
        ("model", "assistant"),
        ("bot", "assistant"),
        ("Assistant", "assistant"),
    ]
    + [("function", "tool"), ("observation", "tool"), ("ipython", "tool")],
)
def test_role_aliases(alias: str, role: str) -> None:
    turns = [
        USER,
        {"role": "assistant", "tool_calls": [{"name": "f"}]},
        {"role": "tool", "content": "r"},
        ASSISTANT,
    ]
    at = {"user": 0, "assistant": 3, "tool": 2}[role]
    turns[at] = {**turns[at], "role": alias}
    conv = to_conversation({"messages": turns})
    assert roles(conv) == ["user", "assistant", "tool", "assistant"]


def test_row_level_system_is_prepended_once() -> None:
    conv = to_conversation({"system": "Be brief.", "messages": [USER, ASSISTANT]})
    assert conv.messages[0] == Message("system", "Be brief.")
    conv = to_conversation(
        {"system": "ignored", "messages": [{"role": "system", "content": "own"}, USER, ASSISTANT]}
    )
    assert roles(conv) == ["system", "user", "assistant"] and conv.messages[0].content == "own"


# --- conversations (role/content) and ShareGPT --------------------------------------------------------------------


def test_conversations_role_content() -> None:
    conv = to_conversation({"conversations": [USER, ASSISTANT], "system": "sys"})
    assert conv.format == "conversations"
    assert roles(conv) == ["system", "user", "assistant"]


def test_sharegpt_with_function_call_and_observation() -> None:
    row = {
        "system": "You can call tools.",
        "conversations": [
            {"from": "human", "value": "Weather in Paris?"},
            {"from": "function_call", "value": '{"name": "get_weather", "arguments": {"city": "Paris"}}'},
            {"from": "observation", "value": '{"temp": 20}'},
            {"from": "gpt", "value": "It is 20 degrees."},
        ],
        "tools": json.dumps([WEATHER]),
    }
    conv = to_conversation(row, "g.json:2 (item 0)")
    assert conv.format == "sharegpt"
    assert conv.messages == [
        Message("system", "You can call tools."),
        Message("user", "Weather in Paris?"),
        Message(
            "assistant",
            "",
            tool_calls=[
                {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
            ],
        ),
        Message("tool", '{"temp": 20}'),
        Message("assistant", "It is 20 degrees."),
    ]
    assert conv.tools == [{"type": "function", "function": WEATHER}]


def test_sharegpt_parallel_function_calls() -> None:
    value = json.dumps([{"name": "a", "arguments": {}}, {"name": "b", "arguments": {"x": 1}}])
    conv = to_conversation(
        {"conversations": [{"from": "human", "value": "go"}, {"from": "function_call", "value": value}]}
    )
    assert [c["function"]["name"] for c in conv.messages[1].tool_calls or []] == ["a", "b"]


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        ("{not json", "turn 1 (function_call): the value is not valid JSON (Expecting property name"),
        ('{"arguments": {}}', "turn 1 (function_call): the tool call has no `name`"),
        ("[]", "turn 1 (function_call): the value is an empty list of calls"),
        ('{"name": "f", "arguments": [1]}', "`arguments` of 'f' must be an object or a JSON string"),
    ],
)
def test_bad_tool_call(value: str, detail: str) -> None:
    err = row_error(
        {"conversations": [{"from": "human", "value": "x"}, {"from": "function_call", "value": value}]}
    )
    assert err.reason == "bad_tool_call"
    assert detail in err.detail


def test_unknown_role_names_turn_and_role() -> None:
    err = row_error({"conversations": [{"from": "human", "value": "x"}, {"from": "xyz", "value": "y"}]})
    assert err.reason == "unknown_role"
    assert err.detail.startswith(
        "turn 1 has role 'xyz'; expected one of: system, user, human, assistant, gpt"
    )
    listed = err.detail.split("expected one of: ")[1].split(", ")
    assert len(listed) == len(set(listed))  # each accepted role named once
    assert "function_call" in err.detail


def test_turn_without_role() -> None:
    err = row_error({"messages": [{"content": "x"}, ASSISTANT]})
    assert err.reason == "unknown_role" and "turn 0 has no role" in err.detail


# --- tools ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, "", "  ", "[]", []])
def test_no_tools(value: Any) -> None:
    assert normalize_tools(value) is None


def test_bare_function_schema_is_wrapped() -> None:
    assert normalize_tools(WEATHER) == [{"type": "function", "function": WEATHER}]
    assert normalize_tools(json.dumps([{"type": "function", "function": WEATHER}])) == [
        {"type": "function", "function": WEATHER}
    ]


@pytest.mark.parametrize(
    ("tools", "detail"),
    [
        ("[{", "`tools` is not valid JSON"),
        ("42", "`tools` is a int"),
        ([{"description": "no name"}], "`tools` item 0 is not a function schema with a `name`"),
        (["get_weather"], "`tools` item 0 is not a function schema"),
    ],
)
def test_bad_tools(tools: Any, detail: str) -> None:
    err = row_error({"messages": [USER, ASSISTANT], "tools": tools})
    assert err.reason == "bad_tools" and detail in err.detail


# --- alpaca, prompt/completion, text ----------------------------------------------------------------------------


def test_alpaca_instruction_and_input() -> None:
    conv = to_conversation({"instruction": "Translate", "input": "bonjour", "output": "hello"})
    assert conv.format == "alpaca"
    assert conv.messages == [Message("user", "Translate\nbonjour"), Message("assistant", "hello")]


@pytest.mark.parametrize(
    ("instruction", "inp", "user"),
    [("Do it", "", "Do it"), ("Do it", "   ", "Do it"), ("", "only input", "only input")],
)
def test_alpaca_user_turn(instruction: str, inp: str, user: str) -> None:
    conv = to_conversation({"instruction": instruction, "input": inp, "output": "ok"})
    assert conv.messages[0] == Message("user", user)


def test_alpaca_system_and_history() -> None:
    row = {
        "system": "sys",
        "history": [["q1", "a1"], ["q2", "a2"]],
        "instruction": "q3",
        "output": "a3",
    }
    conv = to_conversation(row)
    assert [(m.role, m.content) for m in conv.messages] == [
        ("system", "sys"),
        ("user", "q1"),
        ("assistant", "a1"),
        ("user", "q2"),
        ("assistant", "a2"),
        ("user", "q3"),
        ("assistant", "a3"),
    ]


def test_alpaca_bad_history() -> None:
    err = row_error({"instruction": "q", "output": "a", "history": [["only one"]]})
    assert err.reason == "bad_content_type" and "`history` item 0" in err.detail


def test_alpaca_empty_output_names_the_field() -> None:
    err = row_error({"instruction": "q", "input": "", "output": " "})
    assert err.reason == "empty_content"
    assert err.detail.startswith("turn 1 (assistant, from `output`) is empty")


def test_alpaca_non_string_output() -> None:
    err = row_error({"instruction": "q", "output": ["a", "b"]})
    assert err.reason == "bad_content_type" and "the `output` field is a list" in err.detail


def test_prompt_completion_strings() -> None:
    conv = to_conversation({"prompt": "2+2?", "completion": "4"})
    assert conv.format == "prompt_completion"
    assert conv.messages == [Message("user", "2+2?"), Message("assistant", "4")]


def test_prompt_completion_conversational() -> None:
    row = {"prompt": [{"role": "system", "content": "s"}, USER], "completion": [ASSISTANT]}
    assert roles(to_conversation(row)) == ["system", "user", "assistant"]


def test_prompt_completion_empty_completion_names_field() -> None:
    err = row_error({"prompt": "q", "completion": ""})
    assert err.reason == "empty_content" and "turn 1 (assistant, from `completion`)" in err.detail


def test_text_row() -> None:
    conv = to_conversation({"text": "Once upon a time"}, "c4.jsonl:3")
    assert conv == Conversation(
        messages=[], source="c4.jsonl:3", format="text", meta={"text": "Once upon a time"}
    )


def test_empty_text() -> None:
    assert row_error({"text": "  \n"}).reason == "empty_content"


# --- validation error codes -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "reason", "detail"),
    [
        ({"messages": []}, "empty_messages", "`messages` is an empty list"),
        ({"conversations": []}, "empty_messages", "`conversations` is an empty list"),
        (
            {"messages": [{"role": "user", "content": "  "}, ASSISTANT]},
            "empty_content",
            "turn 0 (user) is empty",
        ),
        (
            {"messages": [{"role": "system", "content": ""}, USER, ASSISTANT]},
            "empty_content",
            "turn 0 (system) is empty",
        ),
        (
            {"messages": [USER, {"role": "assistant", "content": None}]},
            "empty_content",
            "turn 1 (assistant) is empty (no content, tool_calls or reasoning)",
        ),
        (
            {"messages": [USER]},
            "no_assistant_turn",
            "the conversation has no assistant turn (roles found: user)",
        ),
        (
            {"messages": [USER, {"role": "system", "content": "late"}, ASSISTANT]},
            "misplaced_system",
            "turn 1 (system) is a system turn but not the first",
        ),
        (
            {"messages": [USER, {"role": "assistant", "content": 5}]},
            "bad_content_type",
            "turn 1 (assistant) has content of type int",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}, ASSISTANT]},
            "bad_content_type",
            "turn 0 (user) part 0 has type 'image_url'",
        ),
        (
            {"messages": [USER, {"role": "assistant", "content": {"text": "x"}}]},
            "bad_content_type",
            "of type dict",
        ),
        ({"messages": "hi"}, "bad_content_type", "`messages` must be a list of turns, got a str"),
        ({"messages": [USER, "hello"]}, "bad_content_type", "turn 1 is a str, not an object"),
    ],
)
def test_validation_errors(row: dict[str, Any], reason: str, detail: str) -> None:
    err = row_error(row)
    assert err.reason == reason
    assert detail in err.detail


def test_validate_conversation_checks_prebuilt_conversations() -> None:
    with pytest.raises(RowError) as err:
        validate_conversation(
            Conversation([Message("user", "q"), Message("critic", "x"), Message("assistant", "a")])
        )
    assert err.value.reason == "unknown_role" and "turn 1 (critic)" in err.value.detail
    text = Conversation([], format="text", meta={"text": "x"})
    assert validate_conversation(text) is text


# --- real data ----------------------------------------------------------------------------------------------------


def convert_all(path: Path) -> list[Conversation]:
    out = []
    for src in iter_rows(path):
        assert src.error is None, src.source
        out.append(to_conversation(src.row, src.source))
    return out


@pytest.mark.needs_shared
@pytest.mark.parametrize("name", ["alpaca_en_demo.json", "alpaca_zh_demo.json"])
def test_real_alpaca(shared_data: Path, name: str) -> None:
    convs = convert_all(shared_data / name)
    assert {c.format for c in convs} == {"alpaca"}
    assert all(roles(c) == ["user", "assistant"] for c in convs)
    raw = json.loads((shared_data / name).read_text(encoding="utf-8"))
    assert convs[0].messages[1].content == raw[0]["output"]
    assert convs[0].source == f"{shared_data / name}:2 (item 0)"


@pytest.mark.needs_shared
def test_real_glaive_toolcalls(shared_data: Path) -> None:
    convs = convert_all(shared_data / "glaive_toolcall_en_demo.json")
    assert len(convs) == 300 and {c.format for c in convs} == {"sharegpt"}
    calls = [m for c in convs for m in c.messages if m.tool_calls]
    assert len(calls) == 211  # one per function_call turn in the file
    for m in calls:
        assert m.role == "assistant" and m.content == ""
        assert all(isinstance(tc["function"]["arguments"], dict) for tc in m.tool_calls or [])
    assert sum(m.role == "tool" for c in convs for m in c.messages) == 211  # observation turns
    # rows with tools="[]" have no tools; the others a list of wrapped function schemas
    with_tools = [c for c in convs if c.tools]
    assert 0 < len(with_tools) < 300
    assert all(t["type"] == "function" and t["function"]["name"] for c in with_tools for t in c.tools or [])
    first = convs[0]
    assert first.messages[3].tool_calls == [
        {
            "type": "function",
            "function": {
                "name": "search_recipes",
                "arguments": {"ingredients": ["chicken", "bell peppers", "rice"]},
            },
        }
    ]
    assert first.messages[4].role == "tool" and first.messages[4].content.startswith('{"recipes": ')


@pytest.mark.needs_shared
def test_real_v1_typed_parts_and_loss_weight(shared_data: Path) -> None:
    convs = convert_all(shared_data / "v1_sft_demo.jsonl")
    assert len(convs) == 500 and {c.format for c in convs} == {"messages"}
    assert all(m.train is False for c in convs for m in c.messages if m.role == "user")
    assert all(m.train is True for c in convs for m in c.messages if m.role == "assistant")
    assert convs[0].messages[0].content == "hi"
    assert convs[0].messages[1].content.startswith("Hello! I am {{name}}")


@pytest.mark.needs_shared
def test_real_c4_is_text(shared_data: Path) -> None:
    convs = convert_all(shared_data / "c4_demo.jsonl")
    assert len(convs) == 300
    assert all(c.format == "text" and c.messages == [] and c.meta["text"].strip() for c in convs)
