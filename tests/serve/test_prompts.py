"""The server's prompt is token for token what training sees before the trained answer (`sftforge inspect --json`),
for a byte-level BPE ChatML model and a Llama 2-style SentencePiece model, with system prompts, several turns,
typed content parts and tools."""

from __future__ import annotations

import io
import json

import pytest

from sftforge import inspect_data
from sftforge.serve.loading import load_for_inference
from sftforge.serve.prompts import PromptBuilder, PromptError

TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}  # fmt: skip
ROWS = {
    "plain": {"messages": [{"role": "user", "content": "Say sun 3 times"},
                           {"role": "assistant", "content": "sun sun sun"}]},
    "system_and_turns": {"messages": [{"role": "system", "content": "Be brief."},
                                      {"role": "user", "content": "Hi  there"},
                                      {"role": "assistant", "content": "Hello."},
                                      {"role": "user", "content": "你好，世界"},
                                      {"role": "assistant", "content": "世界你好。"}]},
    "typed_parts": {"messages": [{"role": "user", "content": [{"type": "text", "text": "Name a "},
                                                              {"type": "text", "text": "river"}]},
                                 {"role": "assistant", "content": "The Nile."}]},
    "tools": {"tools": [TOOL], "messages": [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
        {"role": "tool", "content": "{\"temp\": 3}"},
        {"role": "assistant", "content": "It is 3 degrees."}]},
}  # fmt: skip
MODELS = {"qwen2-bpe": ("qwen2", "bpe"), "llama-sentencepiece": ("llama", "sentencepiece")}


# Llama 2's chat template has no tools: the tools case runs on the ChatML model only
CASES = [(m, c) for m in MODELS for c in ROWS if not (c == "tools" and m != "qwen2-bpe")]


@pytest.mark.parametrize("model,case", CASES)
def test_prompt_ids_equal_inspects_ids_before_the_trained_answer(model, case, make_tiny_model, tmp_path):
    arch, tokenizer = MODELS[model]
    model_dir = make_tiny_model(arch, tokenizer=tokenizer)
    row = ROWS[case]
    data = tmp_path / "row.jsonl"
    data.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    out = io.StringIO()
    inspect_data.run(["--model_name_or_path", str(model_dir), "--train_data_path", str(data), "--json",
                      "--multi_turn", "whole", "--max_length", "1024"], stdout=out)  # fmt: skip
    (example,) = [json.loads(line) for line in out.getvalue().splitlines()]
    ids, labels = example["input_ids"], example["labels"]

    builder = PromptBuilder(load_for_inference(model_dir, device="cpu").tokenizer)
    prompt = builder.build(row["messages"][:-1], row.get("tools"))
    n = len(prompt.ids)
    assert ids[:n] == prompt.ids
    assert labels[n - 1] == -100 and labels[n] == ids[n]  # the trained answer starts right after the prompt
    assert all(label == ids[k] for k, label in enumerate(labels[n:], n) if label != -100)


def test_a_conversation_ending_with_the_assistant_and_tools_without_template_support(make_tiny_model):
    builder = PromptBuilder(
        load_for_inference(make_tiny_model("llama", tokenizer="sentencepiece"), device="cpu").tokenizer
    )
    with pytest.raises(PromptError, match="end with a user") as e:
        builder.build(ROWS["plain"]["messages"])
    assert e.value.param == "messages"
    with pytest.raises(PromptError, match="does not render tools") as e:
        builder.build(ROWS["plain"]["messages"][:1], [TOOL])
    assert e.value.param == "tools"
    assert builder.build(ROWS["plain"]["messages"][:1], [TOOL], tool_choice="none").ids  # tools switched off


def test_a_folder_that_is_not_a_model_is_a_config_error(tmp_path):
    from sftforge.errors import ConfigError

    with pytest.raises(ConfigError, match="neither a model"):
        load_for_inference(tmp_path, device="cpu")
