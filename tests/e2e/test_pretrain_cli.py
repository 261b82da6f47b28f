"""End-to-end pretraining through the real `sftforge train` CLI: a tokenizer from `sftforge train-tokenizer`, a
randomly initialised model from recipes/pretrain_tiny.yaml's config, the shipped c4 sample cut into blocks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "pretrain_tiny.yaml"


def run_cli(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "sftforge", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


@pytest.fixture(scope="module")
def c4(shared_data) -> Path:
    return shared_data / "c4_demo.jsonl"


@pytest.fixture(scope="module")
def tokenizer_dir(c4, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pt-tokenizer")
    result = run_cli(
        "train-tokenizer", "--data", str(c4), "--vocab_size", "2048", "--out", str(out), cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    return out


def _train(tmp_path: Path, tokenizer_dir: Path, c4: Path, *overrides: str) -> tuple[dict, str]:
    out = tmp_path / "model"
    result = run_cli("train", str(RECIPE), "--tokenizer_name", str(tokenizer_dir), "--train_data_path", str(c4),
                     "--output_dir", str(out), "--validation_split_percentage", "0", *overrides, cwd=REPO)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text()), result.stdout


def test_pretrain_from_scratch_small_blocks(tmp_path, tokenizer_dir, c4):
    metrics, stdout = _train(tmp_path, tokenizer_dir, c4, "--block_size", "128", "--max_samples", "60",
                             "--per_device_train_batch_size", "16", "--logging_steps", "2")  # fmt: skip
    assert metrics["corpus_coverage"] == 1.0 and metrics["block_tokens"] == metrics["corpus_tokens"]
    assert metrics["trained_tokens_per_epoch"] == metrics["corpus_tokens"] and metrics["documents"] == 60
    assert metrics["seen_tokens"] == metrics["corpus_tokens"]  # the token counter saw every block token once
    assert metrics["init"] == "random" and metrics["train_loss_last"] < metrics["train_loss_first"]
    assert "random init (seed 0)" in stdout and "100.00% coverage" in stdout

    from transformers import AutoModelForCausalLM

    assert "Pretrained from scratch" in (tmp_path / "model" / "README.md").read_text()  # the model card
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert model.config.vocab_size == 2048 and model.config.num_hidden_layers == 2


def test_pretrain_with_document_isolation(tmp_path, tokenizer_dir, c4):
    metrics, stdout = _train(tmp_path, tokenizer_dir, c4, "--block_size", "64", "--max_samples", "20",
                             "--document_isolation", "true", "--max_steps", "4", "--logging_steps", "1")  # fmt: skip
    assert metrics["corpus_coverage"] == 1.0 and "documents isolated" in stdout


def test_c4_block_512_acceptance(tmp_path, tokenizer_dir, c4):
    """The issue's acceptance figure: ≥ 99% of the c4 sample's tokens trained in one epoch at block_size 512, and
    the loss falls."""
    metrics, _ = _train(tmp_path, tokenizer_dir, c4, "--block_size", "512")
    assert metrics["corpus_coverage"] >= 0.99 and metrics["seen_tokens"] >= 0.99 * metrics["corpus_tokens"]
    assert metrics["train_loss_last"] < metrics["train_loss_first"] - 0.5, metrics  # 7.53 → 6.48 measured
    print(json.dumps({k: metrics[k] for k in ("corpus_tokens", "block_tokens", "corpus_coverage", "seen_tokens",
                                              "train_loss_first", "train_loss_last", "train_s")}))  # fmt: skip


def test_config_only_folder_and_stage_auto(tmp_path, tokenizer_dir, c4):
    """A model folder with a config.json and a tokenizer but no weights, given as model_name_or_path, trains from
    scratch (read as config_name); `stage: auto` sees documents in c4 and pretrains."""
    import shutil

    folder = tmp_path / "scratch"
    shutil.copytree(tokenizer_dir, folder)
    shutil.copy(REPO / "recipes" / "pretrain_tiny.config.json", folder / "config.json")
    out = tmp_path / "model"
    result = run_cli("train", "--model_name_or_path", str(folder), "--train_data_path", str(c4), "--stage", "auto",
                     "--block_size", "64", "--max_samples", "10", "--max_steps", "2", "--save_strategy", "no",
                     "--output_dir", str(out), cwd=REPO)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "has a config.json but no weights, so it is read as config_name" in result.stdout
    assert "stage: auto → pt (the rows are plain documents)" in result.stdout
    assert "stage pt: 10 rows read" in result.stdout
    assert json.loads((out / "metrics.json").read_text())["init"] == "random"
