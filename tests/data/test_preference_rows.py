"""Preference rows in TRL's and LLaMA-Factory's formats → prompt + answers, and the errors that name the problem."""

from __future__ import annotations

import pytest

from sftforge.data.preference_rows import to_kto_row, to_preference_row
from sftforge.errors import RowError

U, A = "user", "assistant"


def turns(messages):
    return [(m.role, m.content) for m in messages]


@pytest.mark.parametrize(
    ("row", "fmt", "prompt"),
    [
        ({"prompt": "hi", "chosen": "good", "rejected": "bad"}, "pref_prompt_chosen_rejected", [(U, "hi")]),
        (
            {"prompt": [{"role": "system", "content": "s"}, {"role": U, "content": "q"}, {"role": A, "content": "x"},
                        {"role": U, "content": "q2"}],
             "chosen": [{"role": A, "content": "good"}], "rejected": [{"role": A, "content": "bad"}]},
            "pref_prompt_chosen_rejected", [("system", "s"), (U, "q"), (A, "x"), (U, "q2")],
        ),
        (
            {"chosen": [{"role": U, "content": "q"}, {"role": A, "content": "good"}],
             "rejected": [{"role": U, "content": "q"}, {"role": A, "content": "bad"}]},
            "pref_implicit_prompt", [(U, "q")],
        ),
        (
            {"conversations": [{"from": "human", "value": "你好吗"}], "chosen": {"from": "gpt", "value": "good"},
             "rejected": {"from": "gpt", "value": "bad"}, "system": "系统"},
            "pref_sharegpt", [("system", "系统"), (U, "你好吗")],
        ),
        (
            {"messages": [{"role": U, "content": "q"}], "chosen": {"role": A, "content": "good"},
             "rejected": {"role": A, "content": "bad"}},
            "pref_messages", [(U, "q")],
        ),
        ({"instruction": "do", "input": "x", "chosen": "good", "rejected": "bad"}, "pref_alpaca", [(U, "do\nx")]),
    ],
    ids=["trl_strings", "trl_multi_turn", "trl_implicit", "sharegpt_zh", "messages", "alpaca"],
)  # fmt: skip
def test_pair_formats(row, fmt, prompt):
    pair = to_preference_row(row, "f.jsonl:3")
    assert pair.format == fmt and turns(pair.prompt) == prompt
    assert (pair.chosen.role, pair.chosen.content) == (A, "good") and pair.rejected.content == "bad"
    assert turns(pair.chosen_conversation().messages) == [*prompt, (A, "good")]
    assert turns(pair.rejected_conversation().messages) == [*prompt, (A, "bad")]
    assert pair.chosen_conversation().source == "f.jsonl:3"


def test_sharegpt_pairs_keep_tool_calls_and_tools():
    row = {"conversations": [{"from": "human", "value": "weather?"}],
           "chosen": {"from": "function_call", "value": '{"name": "get_weather", "arguments": {"city": "Oslo"}}'},
           "rejected": {"from": "gpt", "value": "no idea"},
           "tools": '[{"name": "get_weather", "description": "w", "parameters": {"type": "object"}}]'}  # fmt: skip
    pair = to_preference_row(row)
    assert pair.chosen.tool_calls[0]["function"]["name"] == "get_weather" and pair.tools


@pytest.mark.parametrize(
    ("row", "reason", "words"),
    [
        ({"prompt": "hi", "chosen": "a"}, "pref_missing_answer", "no `rejected` answer"),
        ({"prompt": "hi", "chosen": "same", "rejected": "same"}, "pref_identical_answers", "the same answer"),
        (
            {"chosen": [{"role": U, "content": "q"}, {"role": A, "content": "a"}],
             "rejected": [{"role": U, "content": "Q"}, {"role": A, "content": "b"}]},
            "pref_prompt_mismatch", "(turn 0)",
        ),
        ({"chosen": "a", "rejected": "b"}, "pref_missing_prompt", "has no `prompt`"),
        ({"prompt": "hi", "chosen": "", "rejected": "b"}, "pref_missing_answer", "no `chosen` answer"),
        (
            {"messages": [{"role": U, "content": "q"}], "chosen": [{"role": A, "content": "a"}, {"role": A, "content": "b"}],
             "rejected": "c"},
            "pref_answer_not_assistant", "`chosen` must be one assistant turn",
        ),
        (
            {"messages": [{"role": U, "content": "q"}], "chosen": {"role": U, "content": "a"}, "rejected": "c"},
            "no_assistant_turn", "no assistant turn",  # SFT's own check of the row, first
        ),
        (
            {"prompt": [{"role": "system", "content": "s"}], "chosen": "a", "rejected": "b"},
            "pref_prompt_end", "ends with system",
        ),
    ],
)  # fmt: skip
def test_pair_errors_name_the_problem(row, reason, words):
    with pytest.raises(RowError) as info:
        to_preference_row(row, "f.jsonl:9")
    assert info.value.reason == reason and words in info.value.detail, info.value.detail


def test_kto_rows():
    trl = to_kto_row({"prompt": "q", "completion": "a", "label": True})
    assert trl.desirable and turns(trl.conversation().messages) == [(U, "q"), (A, "a")]
    lf = to_kto_row(
        {"messages": [{"role": U, "content": "q"}, {"role": A, "content": "a"}], "kto_tag": "false"}
    )
    assert not lf.desirable and lf.completion.content == "a"
    with pytest.raises(RowError, match="kto_bad_label"):
        to_kto_row({"prompt": "q", "completion": "a", "label": "maybe"})
    with pytest.raises(RowError, match="kto_missing_label"):
        to_kto_row({"prompt": "q", "completion": "a"})


def test_a_pair_read_as_sft_says_to_use_stage_dpo():
    from sftforge.data.formats import to_conversation

    with pytest.raises(RowError) as info:
        to_conversation({"prompt": "q", "chosen": "a", "rejected": "b"}, "f.jsonl:1")
    assert info.value.reason == "preference_row" and "stage: dpo" in info.value.detail
    for row in ({"prompt": "q", "completion": "a", "label": False},
                {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "kto_tag": False}):  # fmt: skip
        with pytest.raises(RowError, match="stage: kto"):
            to_conversation(row, "f.jsonl:2")
