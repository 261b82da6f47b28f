"""End-to-end: the real `sftforge train` CLI in a subprocess, on a tiny model, for every input format."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

QUESTIONS = [
    f"Is {w} a word number {i}?"
    for i, w in enumerate(["sun", "moon", "star", "tree", "rock", "river", "hill", "lake"] * 4)
]
ANSWER = "yes it is"


def _rows(fmt: str) -> list[dict]:
    rows = []
    for i, q in enumerate(QUESTIONS):
        if fmt == "messages":
            rows.append(
                {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": ANSWER}]}
            )
        elif fmt == "conversations":
            rows.append(
                {"conversations": [{"role": "user", "content": q}, {"role": "assistant", "content": ANSWER}]}
            )
        elif fmt == "sharegpt":
            turns = [{"from": "human", "value": q}, {"from": "gpt", "value": ANSWER}]
            row: dict = {"conversations": turns, "system": "Answer briefly."}
            if i % 4 == 0:  # some rows call a tool first, as in glaive
                call = {"name": "lookup", "arguments": {"word": q.split()[1]}}
                turns[1:1] = [{"from": "function_call", "value": json.dumps(call)},
                              {"from": "observation", "value": '{"found": true}'}]  # fmt: skip
                row["tools"] = json.dumps([{"name": "lookup", "description": "find a word",
                                            "parameters": {"type": "object", "properties": {}}}])  # fmt: skip
            rows.append(row)
        elif fmt == "alpaca":
            rows.append({"instruction": q, "input": "", "output": ANSWER})
        elif fmt == "prompt_completion":
            rows.append({"prompt": q, "completion": ANSWER})
    return rows


def run_cli(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "sftforge", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


RECIPE = """\
max_length: 256
num_train_epochs: 1
max_steps: 30
per_device_train_batch_size: 8
learning_rate: 5.0e-3
logging_steps: 5
save_strategy: "no"
seed: 0
"""


@pytest.mark.parametrize("fmt", ["messages", "conversations", "sharegpt", "alpaca", "prompt_completion"])
def test_train_each_format(fmt, tmp_path, tiny_model_dir):
    data = tmp_path / ("train.jsonl" if fmt != "alpaca" else "train.json")
    rows = _rows(fmt)
    if fmt == "alpaca":
        data.write_text(json.dumps(rows, indent=1))
    else:
        data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE + f"model_name_or_path: {tiny_model_dir}\n")
    out = tmp_path / "out"
    proc = run_cli("train", str(recipe), "--train_data_path", str(data), f"--output_dir={out}",
                   "--eval_split_ratio", "0.125", "--lr_scheduler_type", "cosine_with_min_lr",
                   "--lr_scheduler_kwargs.min_lr_rate", "0.1", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"formats: {fmt} " in proc.stdout  # the start-up summary reports the detected format

    # loss decreases
    history = json.loads((out / "log_history.json").read_text())
    losses = [e["loss"] for e in history if "loss" in e]
    assert len(losses) >= 4 and losses[-1] < 0.5 * losses[0], losses
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval_loss"] < 2.0 and metrics["eval_perplexity"] > 1.0
    for name in ("loss.png", "README.md", "sftforge_config.yaml", "model.safetensors", "chat_template.jinja"):
        assert (out / name).is_file(), name

    # the folder reloads with plain transformers, and greedy generation stops at the end-of-turn token
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.use_cache is True
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    gen_eos = model.generation_config.eos_token_id
    assert eot in (gen_eos if isinstance(gen_eos, list) else [gen_eos])
    enc = tok.apply_chat_template([{"role": "user", "content": "Is lake a word number 99?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)  # fmt: skip
    new = model.generate(**enc, max_new_tokens=20, do_sample=False)[0, enc["input_ids"].shape[1] :].tolist()
    assert new[-1] == eot and len(new) < 20, tok.decode(new)
    assert tok.decode(new, skip_special_tokens=True) == ANSWER

    # the resolved config round-trips through the loader
    from sftforge.config import config_to_dict, load_config

    saved = yaml.safe_load((out / "sftforge_config.yaml").read_text())
    assert saved["data"]["train_data_path"] == [str(data)]
    assert saved["training"]["lr_scheduler_kwargs"] == {"min_lr_rate": 0.1}
    reloaded = load_config(out / "sftforge_config.yaml")
    assert config_to_dict(reloaded) == saved


def test_resolved_config_feeds_back_into_train(tmp_path, tiny_model_dir):
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in _rows("messages")) + "\n")
    first = tmp_path / "first"
    proc = run_cli("train", "--model_name_or_path", str(tiny_model_dir), "--train_data_path", str(data),
                   "--output_dir", str(first), "--max_steps", "2", "--save_strategy", "no",
                   "--report_to", "tensorboard", "--logging_steps", "1", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list(first.glob("runs/*/events.out.tfevents.*")), "report_to: tensorboard wrote no event file"
    second = tmp_path / "second"
    proc = run_cli("train", str(first / "sftforge_config.yaml"), "--output_dir", str(second), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = yaml.safe_load((first / "sftforge_config.yaml").read_text())
    b = yaml.safe_load((second / "sftforge_config.yaml").read_text())
    a["training"].pop("output_dir"), b["training"].pop("output_dir")
    assert a == b


def test_refuses_to_overwrite_a_trained_model(tmp_path, tiny_model_dir):
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in _rows("messages")) + "\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")
    proc = run_cli("train", "--model_name_or_path", str(tiny_model_dir), "--train_data_path", str(data),
                   "--output_dir", str(out), cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2
    assert "already holds a trained model" in proc.stderr and "--overwrite_output_dir" in proc.stderr
    assert "Traceback" not in proc.stderr
