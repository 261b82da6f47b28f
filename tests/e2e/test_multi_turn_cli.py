"""End-to-end: `sftforge train` on gpt-oss-style (Harmony) reasoning + tool-call conversations — rows the template
rewrites are split and trained, and the saved generation_config stops on every token a generation ends with."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

HARMONY = Path(__file__).resolve().parents[1] / "fixtures" / "chat_templates" / "harmony.jinja"
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def rows() -> list[dict]:
    out = []
    for i, city in enumerate(["Paris", "Rome", "Oslo", "Lima"] * 2):
        call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": city}}}
        messages = [
            {"role": "user", "content": f"Hello number {i}."},
            {"role": "assistant", "content": "Hello!", "reasoning_content": "A greeting."},
            {"role": "user", "content": f"Weather in {city}?"},
            {"role": "assistant", "content": "", "tool_calls": [call], "reasoning_content": "Use the tool."},
            {"role": "tool", "content": '{"sky": "sunny"}'},
            {"role": "assistant", "content": f"Sunny in {city}.", "reasoning_content": "The tool says so."},
        ]
        out.append({"messages": messages, "tools": [TOOL]})
    return out


@pytest.fixture(scope="module")
def harmony_model(tmp_path_factory: pytest.TempPathFactory, make_tiny_model) -> Path:
    """The tiny model with the gptoss family tokenizer (embeddings resized to its tokens)."""
    from tokenizer_families import family_tokenizer
    from transformers import AutoModelForCausalLM

    tok = copy.deepcopy(family_tokenizer("gptoss"))
    model = AutoModelForCausalLM.from_pretrained(make_tiny_model("qwen2"))
    model.resize_token_embeddings(len(tok))
    model.config.eos_token_id, model.config.pad_token_id = tok.eos_token_id, tok.pad_token_id
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = (
        tok.eos_token_id,
        tok.pad_token_id,
    )
    out = tmp_path_factory.mktemp("tiny-gptoss")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_train_splits_rewritten_rows_and_saves_every_stop_token(tmp_path: Path, harmony_model: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows()))
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sftforge",
            "train",
            "--model_name_or_path",
            str(harmony_model),
            "--train_data_path",
            str(data),
            "--chat_template",
            str(HARMONY),
            "--output_dir",
            str(out),
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "4",
            "--save_strategy",
            "no",
            "--max_length",
            "512",
        ],  # fmt: skip
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Harmony ends earlier answers with <|end|> and drops their analysis: every row becomes one example per turn
    assert "decision     multi_turn auto: 8 of 8 rows split into 24 examples" in proc.stdout
    assert (
        "end-of-turn: <|return|>, <|end|>, <|call|> (always trained); generation stops on <|return|>, <|call|>"
        in (proc.stdout)
    )
    assert "split        24 train / 0 eval examples" in proc.stdout

    from transformers import AutoTokenizer, GenerationConfig

    tok = AutoTokenizer.from_pretrained(out)
    generation = GenerationConfig.from_pretrained(out)
    # A generation ends with <|return|> (an answer) or <|call|> (a tool call); not with <|end|>, after which the
    # model goes on (analysis <|end|>, then <|start|>assistant and the answer).
    assert generation.eos_token_id == tok.convert_tokens_to_ids(["<|return|>", "<|call|>"])
    assert "<|end|>" not in tok.convert_ids_to_tokens(generation.eos_token_id)
    assert (out / "chat_template.jinja").read_text(encoding="utf-8") == HARMONY.read_text(encoding="utf-8")
