"""End-to-end: `sftforge init-model --tokenizer sentencepiece` and `sftforge train` on it with a Llama 2 chat
template, as real CLI subprocesses; what was trained (`sftforge inspect --json`) is what inference sees: the saved
folder's prompt ids are a prefix of the trained ids, training starts right after them and ends with `</s>`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SHARED_TEMPLATES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "chat_templates"
CONVERSATIONS = [
    [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": f"What is {a} + {b}?"},
        {"role": "assistant", "content": f"{a} + {b} = {a + b}."},
        {"role": "user", "content": "用中文说一遍 🙂"},
        {"role": "assistant", "content": f"{a} 加 {b} 等于 {a + b}。👍🏽"},
    ]
    for a, b in [(1, 2), (3, 4), (12, 30), (7, 8), (100, 5), (9, 9), (21, 21), (6, 60)]
]


def run_cli(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "sftforge", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


@pytest.mark.parametrize("template", ["own", "llama-2-chat.jinja"])
@pytest.mark.parametrize("kind", ["sentencepiece", "sentencepiece-legacy"])
def test_train_on_a_sentencepiece_llama(tmp_path: Path, kind: str, template: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if template != "own" and not SHARED_TEMPLATES.is_dir():
        pytest.skip(f"../shared is absent: {SHARED_TEMPLATES}")
    base = tmp_path / "base"
    proc = run_cli("init-model", str(base), "--arch", "llama", "--tokenizer", kind, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"messages": c}) + "\n" for c in CONVERSATIONS * 4))
    recipe = tmp_path / "recipe.yaml"
    lines = [f"model_name_or_path: {base}", f"train_data_path: {data}", "max_length: 256", "max_steps: 4",
             "per_device_train_batch_size: 8", "save_strategy: \"no\"", "logging_steps: 1", "seed: 0"]  # fmt: skip
    if template != "own":  # the fixture file, used as it is
        lines.append(f"chat_template: {SHARED_TEMPLATES / template}")
    recipe.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    proc = run_cli("train", str(recipe), f"--output_dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dropped      none" in proc.stdout, proc.stdout  # no row refused
    inspected = run_cli("inspect", str(recipe), "--json", cwd=tmp_path)
    assert inspected.returncode == 0, inspected.stderr[-3000:]
    examples = [json.loads(line) for line in inspected.stdout.splitlines() if line.startswith("{")]
    assert len(examples) == len(CONVERSATIONS) * 4

    tok = AutoTokenizer.from_pretrained(out)  # the saved folder: tokenizer and chat template as trained
    assert tok.backend_tokenizer.to_str() == AutoTokenizer.from_pretrained(base).backend_tokenizer.to_str()
    assert AutoModelForCausalLM.from_pretrained(out).config.model_type == "llama"
    for example, messages in zip(examples, CONVERSATIONS * 4, strict=True):
        ids, labels = example["input_ids"], example["labels"]
        rendered = tok.apply_chat_template(messages, tokenize=False)
        assert (
            ids == tok(rendered, add_special_tokens=False)["input_ids"]
        )  # the whole text, as inference sees it
        trained = [k for k, label in enumerate(labels) if label != -100]
        assert [ids[k] for k in trained] == [labels[k] for k in trained]
        for last in (2, 4):  # each assistant turn: its prompt's ids lead the trained ids, training follows
            prompt = tok.apply_chat_template(messages[:last], add_generation_prompt=True, return_dict=False)
            assert ids[: len(prompt)] == list(prompt)
            after = [k for k in trained if k >= len(prompt)]
            end = next(k for k in after if ids[k] == tok.eos_token_id)
            assert after[0] == len(prompt) or not tok.decode(ids[len(prompt) : after[0]]).strip()
            turn = tok.decode(ids[after[0] : end + 1])
            assert turn.strip().removesuffix("</s>").strip() == messages[last]["content"]
        assert tok.bos_token_id not in [ids[k] for k in trained] and ids.count(tok.bos_token_id) == 2
