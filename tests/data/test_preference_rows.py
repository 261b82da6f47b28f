"""Preference rows: every DPO/KTO row format becomes the same canonical objects; bad rows fail with a stable reason."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sftforge.data.conversation import Message
from sftforge.data.preference_rows import (
    KtoRow,
    PreferenceRow,
    is_kto_row,
    is_preference_row,
    to_kto_row,
    to_preference_row,
)
from sftforge.data.validate import validate_messages
from sftforge.errors import RowError

WEATHER = {
    "name": "get_weather",
    "description": "Weather",
    "parameters": {"type": "object", "properties": {}},
}
CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "北京"}}}


def pref_error(row: Any) -> RowError:
    with pytest.raises(RowError) as err:
        to_preference_row(row, "f.jsonl:1")
    return err.value


def kto_error(row: Any) -> RowError:
    with pytest.raises(RowError) as err:
        to_kto_row(row, "f.jsonl:1")
    return err.value


def assistant(content: str) -> dict[str, str]:
    return {"role": "assistant", "content": content}


def user(content: str) -> dict[str, str]:
    return {"role": "user", "content": content}


# --- preference formats ---------------------------------------------------------------------------------------


def test_trl_standard_explicit_prompt_with_system() -> None:
    row = {"prompt": "天空是什么颜色？", "chosen": "蓝色。", "rejected": "绿色。", "system": "用中文回答。"}
    pref = to_preference_row(row, "prefs.jsonl:3")
    assert pref == PreferenceRow(
        prompt=[Message("system", "用中文回答。"), Message("user", "天空是什么颜色？")],
        chosen=Message("assistant", "蓝色。"),
        rejected=Message("assistant", "绿色。"),
        tools=None,
        source="prefs.jsonl:3",
        format="pref_prompt_chosen_rejected",
    )


@pytest.mark.parametrize(
    "answer",
    [[assistant("Paris.")], assistant("Paris."), "Paris."],
    ids=["list_of_one", "message", "text"],
)
def test_trl_conversational_explicit_prompt_multi_turn(answer: Any) -> None:
    prompt = [
        {"role": "system", "content": "Be brief."},
        user("Capital of Italy?"),
        assistant("Rome."),
        user("And of France?"),
    ]
    row = {"prompt": prompt, "chosen": answer, "rejected": [assistant("Lyon.")]}
    pref = to_preference_row(row)
    assert [(m.role, m.content) for m in pref.prompt] == [
        ("system", "Be brief."),
        ("user", "Capital of Italy?"),
        ("assistant", "Rome."),
        ("user", "And of France?"),
    ]
    assert pref.chosen == Message("assistant", "Paris.")
    assert pref.rejected == Message("assistant", "Lyon.")


def test_trl_implicit_prompt_is_the_shared_prefix() -> None:
    shared = [user("2+2?"), assistant("4"), user("Times 3?")]
    row = {
        "chosen": [*shared, assistant("12")],
        "rejected": [*shared, assistant("7")],
        "system": "Math tutor.",
    }
    pref = to_preference_row(row)
    assert pref.format == "pref_implicit_prompt"
    assert [m.content for m in pref.prompt] == ["Math tutor.", "2+2?", "4", "Times 3?"]
    assert (pref.chosen.content, pref.rejected.content) == ("12", "7")


def test_llamafactory_sharegpt_pairwise_with_tools_and_function_call() -> None:
    row = {
        "conversations": [{"from": "human", "value": "北京天气怎么样？"}],
        "chosen": {
            "from": "function_call",
            "value": json.dumps({"name": "get_weather", "arguments": {"city": "北京"}}),
        },
        "rejected": {"from": "gpt", "value": "我不知道。"},
        "system": "你是助手。",
        "tools": json.dumps([WEATHER]),
    }
    pref = to_preference_row(row)
    assert pref.format == "pref_sharegpt"
    assert [(m.role, m.content) for m in pref.prompt] == [
        ("system", "你是助手。"),
        ("user", "北京天气怎么样？"),
    ]
    assert pref.chosen == Message("assistant", "", tool_calls=[CALL])
    assert pref.rejected == Message("assistant", "我不知道。")
    assert pref.tools == [{"type": "function", "function": WEATHER}]


def test_sharegpt_prompt_may_end_with_an_observation() -> None:
    row = {
        "conversations": [
            {"from": "human", "value": "Weather in Paris?"},
            {"from": "function_call", "value": '{"name": "get_weather", "arguments": {"city": "Paris"}}'},
            {"from": "observation", "value": '{"temp": 21}'},
        ],
        "chosen": {"from": "gpt", "value": "21 °C."},
        "rejected": {"from": "gpt", "value": "Cold."},
    }
    pref = to_preference_row(row)
    assert [m.role for m in pref.prompt] == ["user", "assistant", "tool"]


def test_messages_pairwise() -> None:
    row = {"messages": [user("hi")], "chosen": assistant("hello"), "rejected": assistant("go away")}
    pref = to_preference_row(row)
    assert pref.format == "pref_messages"
    assert pref.prompt == [Message("user", "hi")]


def test_alpaca_pairwise_with_system_and_history() -> None:
    row = {
        "instruction": "翻译成英文",
        "input": "你好",
        "chosen": "Hello",
        "rejected": "Goodbye",
        "system": "You translate.",
        "history": [["第一个问题", "第一个回答"]],
    }
    pref = to_preference_row(row)
    assert pref.format == "pref_alpaca"
    assert [(m.role, m.content) for m in pref.prompt] == [
        ("system", "You translate."),
        ("user", "第一个问题"),
        ("assistant", "第一个回答"),
        ("user", "翻译成英文\n你好"),
    ]
    assert (pref.chosen.content, pref.rejected.content) == ("Hello", "Goodbye")


def test_answers_keep_reasoning() -> None:
    chosen = {"role": "assistant", "content": "4", "reasoning_content": "2+2 is 4"}
    pref = to_preference_row({"prompt": "2+2?", "chosen": [chosen], "rejected": "5"})
    assert pref.chosen == Message("assistant", "4", reasoning="2+2 is 4")


def test_conversations_are_prompt_plus_answer() -> None:
    row = {"prompt": [user("q")], "chosen": "good", "rejected": "bad", "tools": [WEATHER]}
    pref = to_preference_row(row, "x.jsonl:9")
    for conv, answer in (
        (pref.chosen_conversation(), pref.chosen),
        (pref.rejected_conversation(), pref.rejected),
    ):
        assert conv.messages == [*pref.prompt, answer]
        assert (conv.tools, conv.source, conv.format) == (pref.tools, "x.jsonl:9", pref.format)
    pref.chosen_conversation().messages.append(Message("user", "more"))  # a fresh list: the row is untouched
    assert len(pref.chosen_conversation().messages) == 2


def test_detection() -> None:
    assert is_preference_row({"prompt": "q", "chosen": "a", "rejected": "b"})
    assert not is_preference_row({"prompt": "q", "chosen": "a"})
    assert not is_preference_row(["chosen", "rejected"])
    assert is_kto_row({"prompt": "q", "completion": "a", "label": True})
    assert is_kto_row({"messages": [], "kto_tag": False})
    assert is_kto_row({"messages": [], "label": False})  # LLaMA-Factory's kto_en_demo.json
    assert not is_kto_row({"text": "great film", "label": 1})  # a classification row, not KTO
    assert not is_kto_row({"prompt": "q", "completion": "a"})


# --- KTO formats -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "desirable"),
    [(True, True), (False, False), (1, True), (0, False), ("true", True), ("False", False)],
)
def test_trl_unpaired_labels(label: Any, desirable: bool) -> None:
    kto = to_kto_row({"prompt": "1+1?", "completion": "2", "label": label}, "k.jsonl:2")
    assert kto == KtoRow(
        prompt=[Message("user", "1+1?")],
        completion=Message("assistant", "2"),
        desirable=desirable,
        tools=None,
        source="k.jsonl:2",
        format="kto_unpaired",
    )


def test_trl_unpaired_conversational() -> None:
    row = {
        "prompt": [user("hi"), assistant("hello"), user("你好吗？")],
        "completion": [assistant("很好")],
        "label": False,
    }
    kto = to_kto_row(row)
    assert [m.content for m in kto.prompt] == ["hi", "hello", "你好吗？"]
    assert kto.completion == Message("assistant", "很好")
    assert kto.conversation().messages == [*kto.prompt, kto.completion]


def test_llamafactory_kto_tag_sharegpt_and_messages() -> None:
    sharegpt = {
        "conversations": [{"from": "human", "value": "写一首诗"}, {"from": "gpt", "value": "床前明月光"}],
        "kto_tag": True,
        "system": "你是诗人。",
    }
    kto = to_kto_row(sharegpt)
    assert (kto.format, kto.desirable) == ("kto_sharegpt", True)
    assert [m.role for m in kto.prompt] == ["system", "user"]
    assert kto.completion == Message("assistant", "床前明月光")
    messages = to_kto_row({"messages": [user("q"), assistant("a")], "kto_tag": "false"})
    assert (messages.format, messages.desirable, messages.completion.content) == ("kto_messages", False, "a")
    # kto_en_demo.json's raw rows carry the tag as `label` (dataset_info maps kto_tag: label)
    demo = to_kto_row({"messages": [user("q"), assistant("a")], "label": True})
    assert (demo.format, demo.desirable) == ("kto_messages", True)


def test_llamafactory_kto_alpaca() -> None:
    kto = to_kto_row({"instruction": "Say hi", "input": "", "output": "hi", "kto_tag": 0})
    assert (kto.format, kto.desirable, kto.prompt, kto.completion) == (
        "kto_alpaca",
        False,
        [Message("user", "Say hi")],
        Message("assistant", "hi"),
    )


# --- every produced conversation is one the SFT pipeline accepts ---------------------------------------------


VALID_PREF_ROWS = [
    {"prompt": "q", "chosen": "a", "rejected": "b", "system": "s"},
    {"prompt": [user("q")], "chosen": [assistant("a")], "rejected": assistant("b")},
    {"chosen": [user("q"), assistant("a")], "rejected": [user("q"), assistant("b")]},
    {
        "conversations": [{"from": "human", "value": "q"}],
        "chosen": {"from": "gpt", "value": "a"},
        "rejected": "b",
    },
    {"instruction": "q", "input": "x", "chosen": "a", "rejected": "b"},
]
VALID_KTO_ROWS = [
    {"prompt": "q", "completion": "a", "label": True},
    {"messages": [user("q"), assistant("a")], "kto_tag": False},
    {"instruction": "q", "output": "a", "kto_tag": True},
]


def test_every_produced_conversation_validates() -> None:
    prefs = [to_preference_row(r) for r in VALID_PREF_ROWS]
    convs = [p.chosen_conversation() for p in prefs] + [p.rejected_conversation() for p in prefs]
    convs += [to_kto_row(r).conversation() for r in VALID_KTO_ROWS]
    for conv in convs:
        validate_messages(conv.messages)  # raises on any structural problem
        assert conv.messages[-1].role == "assistant"
        assert conv.messages[-2].role in ("user", "tool")


# --- errors ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["chosen", "rejected"])
def test_missing_answer_names_the_key(key: str) -> None:
    row = {"prompt": "q", "chosen": "a", "rejected": "b"}
    row[key] = None
    err = pref_error(row)
    assert err.reason == "pref_missing_answer"
    assert f"no `{key}`" in err.detail


@pytest.mark.parametrize(
    ("answer", "shown"),
    [(user("a"), "`chosen` is a user turn"), ([{"from": "human", "value": "a"}], "`chosen` is a user turn")],
)
def test_answer_not_assistant(answer: Any, shown: str) -> None:
    err = pref_error({"prompt": "q", "chosen": answer, "rejected": "b"})
    assert err.reason == "pref_answer_not_assistant"
    assert shown in err.detail


def test_implicit_answer_not_assistant_names_the_turn() -> None:
    err = pref_error(
        {"chosen": [user("q"), assistant("a")], "rejected": [user("q"), assistant("b"), user("c")]}
    )
    assert err.reason == "pref_answer_not_assistant"
    assert "last turn of `rejected` (turn 2 (user, from `rejected`))" in err.detail


@pytest.mark.parametrize(
    ("answer", "shown"),
    [
        ("  ", "`rejected` (turn 0 (assistant, from `rejected`)) is empty"),
        ([], "`rejected` is an empty list"),
    ],
)
def test_empty_answer(answer: Any, shown: str) -> None:
    err = pref_error({"prompt": "q", "chosen": "a", "rejected": answer})
    assert err.reason == "pref_empty_answer"
    assert shown in err.detail


def test_multi_turn_answer_next_to_a_prompt() -> None:
    err = pref_error({"prompt": "q", "chosen": [assistant("a"), user("b"), assistant("c")], "rejected": "d"})
    assert err.reason == "pref_multi_turn_answer"
    assert "`chosen` holds 3 turns" in err.detail


def test_prompt_must_end_with_user_or_tool() -> None:
    err = pref_error({"prompt": [user("q"), assistant("half an answer")], "chosen": "a", "rejected": "b"})
    assert err.reason == "pref_prompt_end"
    assert "turn 1 (assistant, from `prompt`)" in err.detail


def test_implicit_prompt_needs_a_question() -> None:
    err = pref_error({"chosen": [assistant("a")], "rejected": [assistant("b")]})
    assert err.reason == "pref_prompt_end"
    assert "prompt is empty" in err.detail


def test_implicit_prompts_that_differ() -> None:
    chosen = [user("q"), assistant("a"), user("Times 3?"), assistant("x")]
    rejected = [user("q"), assistant("a"), user("Times 4?"), assistant("y")]
    err = pref_error({"chosen": chosen, "rejected": rejected})
    assert err.reason == "pref_prompt_mismatch"
    assert "message 2 differs" in err.detail and "'Times 3?'" in err.detail and "'Times 4?'" in err.detail


def test_implicit_prompts_of_different_length() -> None:
    err = pref_error(
        {"chosen": [user("q"), assistant("a")], "rejected": [user("p"), user("q"), assistant("b")]}
    )
    assert err.reason == "pref_prompt_mismatch"
    assert "`chosen` has 1 turn(s) before its answer and `rejected` has 2" in err.detail


def test_text_answers_without_prompt() -> None:
    err = pref_error({"chosen": "Q: hi A: hello", "rejected": "Q: hi A: go"})
    assert err.reason == "pref_missing_prompt"
    assert "give the question as `prompt`" in err.detail


@pytest.mark.parametrize(
    "rejected",
    ["Paris.", " Paris.\n", assistant("Paris."), [{"role": "assistant", "content": "Paris.", "train": True}]],
)
def test_identical_answers(rejected: Any) -> None:
    err = pref_error({"prompt": "Capital of France?", "chosen": "Paris.", "rejected": rejected})
    assert err.reason == "pref_identical_answers"
    assert "`chosen` and `rejected` are the same answer" in err.detail


def test_answers_differing_only_in_reasoning_are_a_pair() -> None:
    rejected = {"role": "assistant", "content": "4", "reasoning_content": "guess"}
    pref = to_preference_row({"prompt": "2+2?", "chosen": "4", "rejected": rejected})
    assert pref.rejected.reasoning == "guess"


@pytest.mark.parametrize(
    ("row", "reason", "shown"),
    [
        # formats.py's own refusals keep their reasons, and say which key the bad turn is in.
        (
            {"prompt": [{"role": "narrator", "content": "x"}], "chosen": "a", "rejected": "b"},
            "unknown_role",
            "in `prompt`: turn 0 has role 'narrator'",
        ),
        (
            {"prompt": "q", "chosen": {"from": "function_call", "value": "{oops"}, "rejected": "b"},
            "bad_tool_call",
            "in `chosen`: turn 0 (function_call): the value is not valid JSON",
        ),
        (
            {"prompt": "", "chosen": "a", "rejected": "b"},
            "empty_content",
            "turn 0 (user, from `prompt`) is empty",
        ),
        (
            {
                "prompt": [user("q"), {"role": "system", "content": "s"}, user("r")],
                "chosen": "a",
                "rejected": "b",
            },
            "misplaced_system",
            "turn 1 (system, from `prompt`) is a system turn but not the first",
        ),
        ({"prompt": 3, "chosen": "a", "rejected": "b"}, "bad_content_type", "`prompt` is a int"),
        ({"prompt": "q", "chosen": 3, "rejected": "b"}, "bad_content_type", "`chosen` is a int"),
        (
            {"prompt": "q", "chosen": "a", "rejected": "b", "tools": "{"},
            "bad_tools",
            "`tools` is not valid JSON",
        ),
        (
            {"prompt": "q", "chosen": "a", "rejected": "b", "images": ["x.png"]},
            "multimodal_not_supported",
            "`images`",
        ),
        ("not a row", "not_an_object", "the row is a str"),
    ],
)
def test_formats_refusals_are_reused(row: Any, reason: str, shown: str) -> None:
    err = pref_error(row)
    assert err.reason == reason
    assert shown in err.detail


@pytest.mark.parametrize("label", [2, 1.0, "yes", None, [True]])
def test_kto_bad_label(label: Any) -> None:
    err = kto_error({"prompt": "q", "completion": "a", "label": label})
    assert err.reason == "kto_bad_label"
    assert f"`label` is {label!r}" in err.detail


def test_kto_bad_tag_names_kto_tag() -> None:
    err = kto_error({"messages": [user("q"), assistant("a")], "kto_tag": "maybe"})
    assert err.reason == "kto_bad_label"
    assert "`kto_tag` is 'maybe'" in err.detail


def test_kto_missing_label() -> None:
    err = kto_error({"prompt": "q", "completion": "a"})
    assert err.reason == "kto_missing_label"
    assert "no `label` or `kto_tag`" in err.detail


def test_kto_conversation_must_end_with_assistant() -> None:
    err = kto_error({"conversations": [{"from": "human", "value": "q"}], "kto_tag": True})
    assert err.reason == "pref_answer_not_assistant"
    assert "last turn of `conversations` (turn 0 (user, from `conversations`))" in err.detail


def test_kto_empty_and_missing_pieces() -> None:
    assert kto_error({"prompt": "q", "completion": "", "label": True}).reason == "pref_empty_answer"
    assert kto_error({"completion": "a", "label": True}).reason == "pref_missing_prompt"
    assert kto_error({"kto_tag": True}).reason == "pref_missing_prompt"
    err = kto_error({"prompt": [user("q"), assistant("a")], "completion": "b", "label": True})
    assert err.reason == "pref_prompt_end"


def test_a_pair_read_as_sft_says_to_use_stage_dpo():
    from sftforge.data.formats import to_conversation

    with pytest.raises(RowError) as info:
        to_conversation({"prompt": "q", "chosen": "a", "rejected": "b"}, "f.jsonl:1")
    assert info.value.reason == "preference_row" and "stage: dpo" in info.value.detail
    for row in ({"prompt": "q", "completion": "a", "label": False},
                {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "kto_tag": False},
                {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "label": True}):  # fmt: skip
        with pytest.raises(RowError, match="stage: kto"):
            to_conversation(row, "f.jsonl:2")
