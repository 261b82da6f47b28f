"""`sftforge eval` through the CLI on tiny models: files, table, --base, LoRA folders, errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from sftforge import cli

ROWS = [{"messages": [{"role": "user", "content": f"Reverse: {a} {b}"}, {"role": "assistant", "content": f"{b} {a}"}]}
        for a, b in [("cat", "moon"), ("sun", "tree"), ("rock", "hill"), ("lake", "star")]]  # fmt: skip
METRICS = {"examples", "loss", "perplexity", "trained_tokens", "generated", "exact_match", "rouge_l", "bleu",
           "pred_tokens_mean", "ref_tokens_mean", "length_ratio", "unfinished"}  # fmt: skip


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_eval_writes_files_and_prints_the_table(tiny_model_dir, data, tmp_path, capsys):
    out = tmp_path / "ev"
    code = cli.main(["eval", str(tiny_model_dir), "--data", str(data), "--output_dir", str(out),
                     "--max_new_tokens", "3", "--batch_size", "3"])  # fmt: skip
    assert code == 0
    doc = json.loads((out / "eval.json").read_text())
    assert set(doc["metrics"]) == {"tuned"} and set(doc["metrics"]["tuned"]) == METRICS
    assert doc["metrics"]["tuned"]["examples"] == 4
    rows = _lines(out / "predictions.jsonl")
    assert [r["reference"] for r in rows] == [r["messages"][-1]["content"] for r in ROWS]
    assert set(rows[0]) == {"source", "prompt", "reference", "prediction"}
    assert rows[0]["prompt"].endswith("<|im_start|>assistant\n")
    printed = capsys.readouterr().out
    assert "perplexity" in printed and "ROUGE-L" in printed and "BLEU-4" in printed


def test_base_without_chat_template_gets_the_tuned_template(tiny_model_dir, data, tmp_path, capsys):
    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    (base / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((base / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (base / "tokenizer_config.json").write_text(json.dumps(config))
    out = tmp_path / "ev"
    assert cli.main(["eval", str(tiny_model_dir), "--data", str(data), "--base", str(base), "--output_dir",
                     str(out), "--max_new_tokens", "2"]) == 0  # fmt: skip
    doc = json.loads((out / "eval.json").read_text())
    assert set(doc["metrics"]) == {"base", "tuned"}
    assert doc["metrics"]["base"]["loss"] == pytest.approx(doc["metrics"]["tuned"]["loss"])  # same weights
    assert "tuned model's template" in doc["notes"]["base"][0]
    assert all("base_prediction" in r for r in _lines(out / "predictions.jsonl"))
    header = capsys.readouterr().out.splitlines()
    assert any(line.split() == ["metric", "base", "tuned"] for line in header)


def test_missing_data_file_is_exit_2(tiny_model_dir, tmp_path, capsys):
    assert cli.main(["eval", str(tiny_model_dir), "--data", str(tmp_path / "nope.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "--data" in err and "nope.jsonl" in err and "does not exist" in err


def test_folder_that_is_not_a_model_is_exit_2(data, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli.main(["eval", str(tmp_path / "empty"), "--data", str(data)]) == 2
    assert "holds neither a model" in capsys.readouterr().err


@pytest.mark.slow
def test_lora_run_with_eval_generation_then_eval_matches_trainer_loss(make_tiny_model, data, tmp_path):
    """One LoRA training run with eval_generation (its logs carry the generation metrics), then `sftforge eval`
    on the LoRA folder (merged in memory) as a real subprocess: the same eval loss as the Trainer's."""
    from sftforge.config import load_config
    from sftforge.train.run import run_training

    base = make_tiny_model("qwen2")
    out = tmp_path / "lora"
    cfg = load_config(None, ["--model_name_or_path", str(base), "--train_data_path", str(data),
                             "--eval_data_path", str(data), "--output_dir", str(out), "--finetuning_type", "lora",
                             "--max_steps", "4", "--per_device_train_batch_size", "4",
                             "--per_device_eval_batch_size", "8", "--learning_rate", "5e-2", "--eval_strategy",
                             "steps", "--eval_steps", "2", "--eval_generation", "true", "--eval_max_new_tokens",
                             "4", "--save_strategy", "no", "--report_to", "none", "--seed", "0"])  # fmt: skip
    metrics = run_training(cfg)
    evals = [e for e in json.loads((out / "log_history.json").read_text()) if "eval_loss" in e]
    assert len(evals) >= 2
    for entry in evals:
        for key in (
            "eval_exact_match",
            "eval_rouge_l",
            "eval_bleu",
            "eval_pred_tokens_mean",
            "eval_unfinished",
        ):
            assert 0.0 <= entry[key] <= 4.0, key
        assert entry["eval_generated"] == 4
    assert "eval_bleu" in metrics
    assert (out / "adapter_config.json").is_file()

    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "sftforge", "eval", str(out), "--data", str(data), "--base",
                           str(base), "--max_new_tokens", "4"], env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Generating (tuned)" in proc.stderr  # the progress bar is on stderr
    doc = json.loads((out / "eval" / "eval.json").read_text())
    # one eval batch holds all 4 examples, so the Trainer's mean of batch means is the token mean too
    assert doc["metrics"]["tuned"]["loss"] == pytest.approx(metrics["eval_loss"], rel=1e-4)
    assert doc["metrics"]["tuned"]["exact_match"] == pytest.approx(evals[-1]["eval_exact_match"])
    assert doc["metrics"]["base"]["loss"] != pytest.approx(doc["metrics"]["tuned"]["loss"])
