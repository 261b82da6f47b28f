"""End-to-end: a recipe written for LLaMA-Factory (the shape of its examples/train_lora/*_lora_sft.yaml) trains as
it is with `sftforge train`: dataset + dataset_dir (dataset_info.json with columns), template by name, stage,
lora_rank, lora_target (a comma string, or all), new_special_tokens, plot_loss, logging_dir, cutoff_len,
warmup_ratio, overwrite_cache, a GPU's bf16 on CPU."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

RECIPE = """\
### model
model_name_or_path: {model}
trust_remote_code: true
new_special_tokens: "<tool>,</tool>"

### method
stage: sft
do_train: true
finetuning_type: lora
lora_rank: 4
lora_target: {target}

### dataset
dataset: qa
dataset_dir: {data}
template: qwen
cutoff_len: 256
max_samples: 16
overwrite_cache: true
preprocessing_num_workers: 1

### output
output_dir: {out}
logging_steps: 1
save_steps: 500
plot_loss: {plot}
overwrite_output_dir: true
report_to: {report}
logging_dir: {tb}

### train
per_device_train_batch_size: 4
gradient_accumulation_steps: 1
learning_rate: 1.0e-3
max_steps: 3
lr_scheduler_type: cosine
warmup_ratio: 0.1
bf16: true
ddp_timeout: 180000000
"""


def write_dataset(folder: Path) -> None:
    folder.mkdir()
    rows = [
        {"q": f"What is {w}?", "a": f"<tool>{w}</tool> is a word."}
        for w in ["sun", "moon", "star", "tree"] * 4
    ]
    (folder / "qa.json").write_text(json.dumps(rows))
    registry = {"qa": {"file_name": "qa.json", "columns": {"prompt": "q", "response": "a"}}}
    (folder / "dataset_info.json").write_text(json.dumps(registry))


@pytest.mark.parametrize(("target", "plot"), [("q_proj,v_proj", "true"), ("all", "false")])
def test_llama_factory_lora_recipe_trains_as_written(tmp_path, tiny_model_dir, target, plot):
    from transformers import AutoTokenizer

    write_dataset(tmp_path / "data")
    report = "tensorboard" if importlib.util.find_spec("tensorboard") and plot == "true" else "none"
    out = tmp_path / "out"
    recipe = tmp_path / "llama3_lora_sft.yaml"
    recipe.write_text(RECIPE.format(model=tiny_model_dir, target=target, data=tmp_path / "data", out=out,
                                    plot=plot, report=report, tb=tmp_path / "tb"))  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "sftforge", "train", str(recipe)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-4000:])

    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["r"] == 4
    targets = {name.rsplit(".", 1)[-1] for name in adapter["target_modules"]}  # all-linear lists full names
    linear = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert targets == ({"q_proj", "v_proj"} if target != "all" else linear)
    # the new tokens: special, single ids, saved with the tokenizer; their embedding rows trained and saved
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("<tool>x</tool>")["input_ids"]
    assert tok.convert_tokens_to_ids("<tool>") in ids and tok.convert_tokens_to_ids("</tool>") in ids
    assert "<tool>" in tok.all_special_tokens
    weights = load_file(out / "adapter_model.safetensors")
    embedding = next(v for k, v in weights.items() if "embed_tokens" in k)
    assert embedding.shape[0] == len(tok)
    assert "new special tokens: 2 added (<tool>, </tool>)" in proc.stdout
    assert "16 rows read, 16 kept" in proc.stdout  # the columns of dataset_info.json mapped every row
    # the named template is the one saved
    assert "You are Qwen, created by Alibaba Cloud" in (out / "chat_template.jinja").read_text()
    assert (out / "loss.png").is_file() is (plot == "true")
    if report == "tensorboard":
        assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    config = (out / "sftforge_config.yaml").read_text()
    assert f"- {tmp_path / 'data' / 'qa.json'}" in config and "prompt: q" in config
