"""`columns:` / `tags:`: rows with other key names read as the formats they are, with clear errors."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest

from sftforge.cli import main
from sftforge.config import load_config
from sftforge.data.columns import ColumnMap, apply_columns, compile_columns, suggest_columns
from sftforge.data.formats import detect_format, to_conversation
from sftforge.data.readers import SourceRow
from sftforge.data.rows import TokenizeSpec, process_rows
from sftforge.errors import ConfigError, RowError


def convert(row: dict[str, Any], columns: Any = None, tags: Any = None) -> Any:
    cmap = compile_columns(columns, tags)
    assert cmap is not None
    return to_conversation(apply_columns(row, cmap), "f.jsonl:1")


def roles_and_text(conv: Any) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in conv.messages]


def test_alpaca_with_other_keys() -> None:
    row = {"question": "2+2?", "answer": "4", "ctx": "math", "sys": "Be brief.", "id": 7}
    columns = {"prompt": "question", "query": "ctx", "response": "answer", "system": "sys"}
    conv = convert(row, columns)
    assert conv.format == "alpaca"
    assert roles_and_text(conv) == [("system", "Be brief."), ("user", "2+2?\nmath"), ("assistant", "4")]


def test_own_format_keys_as_names_and_history() -> None:
    row = {"q": "and 3+3?", "a": "6", "past": [["2+2?", "4"]]}
    conv = convert(row, {"instruction": "q", "output": "a", "history": "past"})
    assert roles_and_text(conv) == [
        ("user", "2+2?"),
        ("assistant", "4"),
        ("user", "and 3+3?"),
        ("assistant", "6"),
    ]


def test_prompt_with_completion_is_prompt_completion() -> None:
    conv = convert({"p": "Hi", "c": "Hello"}, {"prompt": "p", "completion": "c"})
    assert conv.format == "prompt_completion" and roles_and_text(conv) == [
        ("user", "Hi"),
        ("assistant", "Hello"),
    ]


def test_the_rows_own_format_keys_give_way_to_the_mapping() -> None:
    # The row also has `text` (and `messages`): without dropping them, detection would read another format.
    row = {"question": "Q", "answer": "A", "text": "not this", "messages": "nor this"}
    conv = convert(row, {"prompt": "question", "response": "answer"})
    assert conv.format == "alpaca" and roles_and_text(conv) == [("user", "Q"), ("assistant", "A")]
    assert row["text"] == "not this"  # the input row is left as it was


def test_missing_optional_companion_is_no_error() -> None:
    conv = convert(
        {"question": "Q", "answer": "A"}, {"prompt": "question", "response": "answer", "system": "sys"}
    )
    assert roles_and_text(conv) == [("user", "Q"), ("assistant", "A")]


def test_sharegpt_with_other_tags() -> None:
    row = {
        "dialog": [
            {"speaker": "narrator", "text": "You are a calculator."},
            {"speaker": "user1", "text": "2+2?", "loss_weight": 0},
            {"speaker": "bot1", "text": '{"name": "add", "arguments": {"a": 2, "b": 2}}', "kind": "call"},
            {"speaker": "result", "text": "4"},
            {"speaker": "bot", "text": "4"},
        ]
    }
    tags = {
        "role_tag": "speaker",
        "content_tag": "text",
        "user_tag": "user1",
        "function_tag": "bot1",
        "observation_tag": "result",
        "system_tag": "narrator",
    }
    conv = convert(row, {"messages": "dialog"}, tags)
    assert conv.format == "sharegpt"
    assert [m.role for m in conv.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert conv.messages[2].tool_calls[0]["function"]["name"] == "add"
    assert conv.messages[1].content == "2+2?" and conv.messages[4].content == "4"


def test_tags_alone_rename_roles_under_the_usual_key() -> None:
    row = {"conversations": [{"from": "me", "value": "Hi"}, {"from": "it", "value": "Hello"}]}
    conv = convert(row, tags={"user_tag": "me", "assistant_tag": "it"})
    assert conv.format == "sharegpt" and roles_and_text(conv) == [("user", "Hi"), ("assistant", "Hello")]


def test_a_role_tag_alone_keeps_the_sharegpt_value_key() -> None:
    row = {"conversations": [{"speaker": "human", "value": "Hi"}, {"speaker": "gpt", "value": "Hello"}]}
    conv = convert(row, tags={"role_tag": "speaker"})
    assert roles_and_text(conv) == [("user", "Hi"), ("assistant", "Hello")]


def test_openai_style_role_and_content_overrides() -> None:
    row = {"messages": [{"author": "human", "body": "Hi"}, {"author": "ai", "body": "Hello"}]}
    conv = convert(row, tags={"role": "author", "content": "body", "assistant_tag": "ai"})
    assert conv.format == "sharegpt" and roles_and_text(conv) == [("user", "Hi"), ("assistant", "Hello")]


def test_messages_under_another_key() -> None:
    row = {
        "chat": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
        "system": "S",
    }
    conv = convert(row, {"messages": "chat"})
    assert conv.format == "messages"
    assert roles_and_text(conv) == [("system", "S"), ("user", "Hi"), ("assistant", "Hello")]


def test_text_under_another_key() -> None:
    conv = convert({"body": "Once upon a time"}, {"text": "body"})
    assert conv.format == "text" and conv.meta["text"] == "Once upon a time"


def test_missing_column_names_the_key_the_setting_and_the_keys_present() -> None:
    cmap = compile_columns({"prompt": "question", "response": "answer"}, None)
    with pytest.raises(RowError) as e:
        apply_columns({"q": "Q", "answer": "A"}, cmap)
    assert e.value.reason == "missing_column"
    assert e.value.detail.startswith(
        "column `question` (columns.prompt) is missing from the row; keys present: ['q', 'answer']."
    )


def test_missing_role_tag_in_a_turn() -> None:
    cmap = compile_columns(None, {"role_tag": "speaker"})
    with pytest.raises(RowError, match=r"turn 1 has no `speaker` key \(tags.role_tag\)"):
        apply_columns(
            {"conversations": [{"speaker": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}, cmap
        )


def test_process_rows_reports_the_missing_column_with_file_and_line(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cmap = compile_columns({"prompt": "question", "response": "answer"}, None)
    spec = TokenizeSpec.build(tok, tok.chat_template, 256, columns=cmap)
    rows = [
        SourceRow({"question": "Q?", "answer": "A."}, "data.jsonl:1"),
        SourceRow({"q": "Q?"}, "data.jsonl:2"),
    ]
    ok, bad = process_rows(pickle.loads(pickle.dumps(spec)), rows)  # the spec travels to worker processes
    assert ok[0] == "ok" and ok[1] == "alpaca"
    assert bad[:2] == ("bad", "missing_column")
    assert bad[2].startswith(
        "data.jsonl:2: column `question` (columns.prompt) is missing from the row; keys present"
    )
    # without a mapping the spec is unchanged: the same row is not readable
    plain = process_rows(TokenizeSpec.build(tok, tok.chat_template, 256), rows[:1])[0]
    assert plain[:2] == ("bad", "unknown_format")


@pytest.mark.parametrize(
    ("columns", "tags", "message"),
    [
        ({"promt": "q", "response": "a"}, None, "columns.promt: unknown column name. Did you mean 'prompt'?"),
        ({"prompt": "q", "response": 3}, None, "columns.response: expected the name of a key in your rows"),
        ({"prompt": "q"}, None, "columns.prompt: nothing maps the answer; add response:"),
        ({"prompt": "q", "response": "a", "chosen": "c"}, None, "columns.chosen: preference data"),
        (
            {"prompt": "q", "instruction": "i", "response": "a"},
            None,
            "columns.instruction: prompt already maps",
        ),
        (
            {"messages": "m", "response": "a"},
            None,
            "columns: maps both a conversation (messages) and single-turn",
        ),
        (None, {"usr_tag": "me"}, "tags.usr_tag: unknown tag name. Did you mean 'user_tag'?"),
        (None, {"role": "a", "role_tag": "b"}, "tags.role_tag: role sets the same tag"),
        ("prompt=q", None, "columns: expected a mapping"),
    ],
)
def test_bad_config_names_the_key(columns: Any, tags: Any, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        compile_columns(columns, tags)
    assert any(p.startswith(message) for p in e.value.problems), e.value.problems


def test_no_mapping_compiles_to_none_and_a_map_pickles() -> None:
    assert compile_columns(None, None) is None and compile_columns({}, {}) is None
    cmap = compile_columns({"messages": "chat"}, {"user_tag": "me"})
    assert isinstance(cmap, ColumnMap) and pickle.loads(pickle.dumps(cmap)) == cmap


def test_unknown_format_suggests_columns_from_the_rows_keys() -> None:
    assert (
        suggest_columns({"id": 1, "question": "q", "answer": "a"})
        == "columns: {prompt: question, response: answer}"
    )
    assert (
        suggest_columns({"Problem": "q", "Solution": "a"}) == "columns: {prompt: Problem, response: Solution}"
    )
    assert suggest_columns({"dialog": [], "id": "x"}) == "columns: {messages: dialog}"
    with pytest.raises(RowError, match=r"e\.g\. `columns: \{prompt: question, response: answer\}`"):
        detect_format({"question": "q", "answer": "a"})


def test_config_errors_come_from_load_config(tmp_path: Path, data_file: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(
            None,
            [
                "--model_name_or_path",
                "m",
                "--train_data_path",
                str(data_file),
                "--columns",
                "{promt: q, response: a}",
            ],
        )
    assert any(p.startswith("columns.promt: unknown column name") for p in e.value.problems)


def test_columns_are_refused_with_stage_pt(data_file: Path) -> None:
    argv = ["--model_name_or_path", "m", "--train_data_path", str(data_file), "--stage", "pt"]
    with pytest.raises(ConfigError) as e:
        load_config(None, [*argv, "--columns", "{text: body}"])
    assert any(p.startswith("columns/tags: rename conversation keys") for p in e.value.problems)


def test_columns_enter_the_cache_key(tiny_model_dir: Path, data_file: Path) -> None:
    from transformers import AutoTokenizer

    from sftforge.config.schema import DataArguments
    from sftforge.data.cache import fingerprint

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    spec = TokenizeSpec.build(tok, tok.chat_template, 256)
    plain = DataArguments(train_data_path=[str(data_file)])
    mapped = DataArguments(train_data_path=[str(data_file)], columns={"messages": "chat"})
    tagged = DataArguments(train_data_path=[str(data_file)], tags={"user_tag": "me"})
    keys = {fingerprint(d, spec, 0) for d in (plain, mapped, tagged)}
    assert len(keys) == 3


def test_inspect_reads_other_keys_with_columns(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    data = tmp_path / "qa.jsonl"
    rows = [{"question": f"What is {i}+{i}?", "answer": f"It is {2 * i}."} for i in range(4)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"model_name_or_path: {tiny_model_dir}\ntrain_data_path: {data}\nmax_length: 64\n"
        f"output_dir: {tmp_path / 'out'}\ncolumns: {{prompt: question, response: answer}}\n"
    )
    assert main(["inspect", str(recipe), "--num_examples", "2"]) == 0
    text = capsys.readouterr().out
    assert "[[It is 0.<|im_end|>]]" in text and "What is 1+1?" in text
    assert "4 rows read, 4 kept; formats: alpaca 4" in text
