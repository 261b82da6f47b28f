"""The recipes from popular guides (recipes/guides/*.yaml), as written: each one's header gives the commands a user
types, each loads as is, and each trains for 2 steps on CPU through the real CLI with only the model (a tiny one
of the architecture its header builds), the output folder and the step count overridden."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sftforge.config import load_config

REPO = Path(__file__).resolve().parents[2]
GUIDES = REPO / "recipes" / "guides"
RECIPES = sorted(p.name for p in GUIDES.glob("*.yaml"))
TRAIN_LINE = re.compile(r"^#\s+sftforge train (recipes/guides/\S+\.yaml)(.*)$", re.M)
INIT_LINE = re.compile(r"^#\s+sftforge init-model (\S+) --arch (\S+)", re.M)


def recipe_keys(name: str) -> dict:
    return yaml.safe_load((GUIDES / name).read_text(encoding="utf-8"))


def arch_of(name: str) -> str | None:
    """The architecture of the tiny model the recipe's header builds (the folder its model_name_or_path or
    config_name names); None when the model is another guide recipe's output (built by its train line)."""
    keys = recipe_keys(name)
    model = keys.get("model_name_or_path") or keys.get("config_name")
    text = (GUIDES / name).read_text(encoding="utf-8")
    for folder, arch in INIT_LINE.findall(text):
        if folder == model:
            return arch
    for other, _ in TRAIN_LINE.findall(text):
        if other != f"recipes/guides/{name}" and recipe_keys(Path(other).name).get("output_dir") == model:
            return None
    raise AssertionError(
        f"{name}: no header line builds {model} (sftforge init-model or another guide recipe)"
    )


def needs_shared(name: str) -> bool:
    return "../shared/" in (GUIDES / name).read_text(encoding="utf-8")


def test_there_is_a_recipe_per_guide():
    assert {"full_sft_zero3.yaml", "open_r1_sft.yaml", "trl_qlora_alpaca.yaml", "minimind_sft.yaml"} <= set(
        RECIPES
    )


@pytest.mark.parametrize("name", RECIPES)
def test_each_recipe_says_how_to_run_it_and_loads_as_written(name, monkeypatch, shared_data_if_needed):
    text = (GUIDES / name).read_text(encoding="utf-8")
    assert f"sftforge train recipes/guides/{name}" in text  # the launch line a user types
    arch_of(name)  # and the line that builds the model it points at
    shared_data_if_needed(name)
    monkeypatch.chdir(REPO)  # the recipes' paths are relative to the repository, as in the header's commands
    cfg = load_config(GUIDES / name)
    assert cfg.training.output_dir.startswith("outputs/guides/")


@pytest.fixture
def shared_data_if_needed(request):
    def check(name: str) -> None:
        if needs_shared(name):
            request.getfixturevalue("shared_data")  # skips, with the reason, when ../shared is absent

    return check


# ---------------------------------------------------------------- 2-step runs through the real CLI


def _port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def run_recipe(
    name: str, model: Path, out: Path, *extra: str, timeout: int = 900
) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               MASTER_ADDR="127.0.0.1")  # fmt: skip
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "ACCELERATE_MIXED_PRECISION"):
        env.pop(key, None)
    model_arg = ["--model_name_or_path", str(model)] if model else []
    cmd = [sys.executable, "-m", "sftforge", "train", f"recipes/guides/{name}", *model_arg,
           "--output_dir", str(out), "--max_steps", "2", "--logging_steps", "1", "--disable_tqdm", "true", *extra]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (" ".join(cmd), proc.stdout[-3000:], proc.stderr[-5000:])
    return proc


def losses(out: Path) -> list[float]:
    return [e["loss"] for e in json.loads((out / "log_history.json").read_text()) if "loss" in e]


def launch_args(name: str) -> list[str]:
    """The launch flags of the header's train line (e.g. --accelerate_config zero3 --num_processes 2)."""
    match = TRAIN_LINE.search((GUIDES / name).read_text(encoding="utf-8"))
    assert match, name
    return match.group(2).split()


@pytest.mark.slow
def test_full_sft_zero3_two_processes(make_tiny_model, tmp_path):
    pytest.importorskip("deepspeed", reason="the `deepspeed` extra is not installed")
    name = "full_sft_zero3.yaml"
    flags = launch_args(name)
    assert flags == ["--accelerate_config", "zero3", "--num_processes", "2"]
    out = tmp_path / "out"
    proc = run_recipe(name, make_tiny_model(arch_of(name)), out, *flags, "--main_process_port", _port())
    # the guide's bf16, on this CPU-only machine: fp32 in the launching process and in both launched ones
    assert "--mixed_precision no" in proc.stdout
    assert "decision     precision: fp32 — the recipe asks for bf16, but there is no GPU" in proc.stdout
    assert "distributed: DeepSpeed on CPU over gloo" in proc.stdout
    assert len(losses(out)) == 2 and (out / "model.safetensors").is_file()
    written = yaml.safe_load((out / "sftforge_config.yaml").read_text())
    assert written["training"]["bf16"] is True  # a GPU machine re-reading it trains in bf16


@pytest.mark.slow
def test_full_sft_zero3_started_by_hand_with_the_shipped_accelerate_config(make_tiny_model, tmp_path):
    """The header's `accelerate launch --config_file configs/accelerate/zero3.yaml …` line: the config file says
    mixed_precision: bf16, which accelerate's DeepSpeed plugin used to refuse in every process (with a JSON), and
    which would have been bf16 on this CPU."""
    pytest.importorskip("deepspeed", reason="the `deepspeed` extra is not installed")
    name = "full_sft_zero3.yaml"
    header = " ".join((GUIDES / name).read_text().replace("\\\n#", " ").split())
    by_hand = (
        "accelerate launch --config_file configs/accelerate/zero3.yaml --num_processes 2 -m sftforge train"
    )
    assert f"{by_hand} recipes/guides/{name}" in header
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               MASTER_ADDR="127.0.0.1")  # fmt: skip
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "ACCELERATE_MIXED_PRECISION"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "configs/accelerate/zero3.yaml",
           "--num_processes", "2", "--main_process_port", _port(), "-m", "sftforge", "train",
           f"recipes/guides/{name}", "--model_name_or_path", str(make_tiny_model(arch_of(name))),
           "--output_dir", str(out), "--max_steps", "2", "--logging_steps", "1", "--disable_tqdm", "true"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-5000:])
    assert "the accelerate config's mixed_precision is left to the recipe" in proc.stdout
    assert "precision: fp32 from the recipe, not the accelerate config's mixed_precision: bf16" in proc.stdout
    assert len(losses(out)) == 2 and (out / "model.safetensors").is_file()


# open-r1's SFT recipe keys (recipes/<model>/sft/config_demo.yaml, TRL's SFTConfig / ModelConfig names)
OPEN_R1_KEYS = [
    "model_name_or_path",
    "model_revision",
    "torch_dtype",
    "attn_implementation",
    "dataset_name",
    "dataset_num_proc",
    "bf16",
    "do_eval",
    "eval_strategy",
    "gradient_accumulation_steps",
    "gradient_checkpointing",
    "gradient_checkpointing_kwargs",
    "hub_model_id",
    "hub_strategy",
    "learning_rate",
    "log_level",
    "logging_steps",
    "logging_strategy",
    "lr_scheduler_type",
    "lr_scheduler_kwargs",
    "packing",
    "max_length",
    "max_steps",
    "num_train_epochs",
    "output_dir",
    "overwrite_output_dir",
    "per_device_eval_batch_size",
    "per_device_train_batch_size",
    "push_to_hub",
    "report_to",
    "save_strategy",
    "save_total_limit",
    "seed",
    "use_liger_kernel",
    "warmup_ratio",
]


def test_the_open_r1_recipe_has_every_key_of_open_r1s():
    keys = recipe_keys("open_r1_sft.yaml")
    assert set(OPEN_R1_KEYS) <= set(keys), set(OPEN_R1_KEYS) - set(keys)
    assert keys["gradient_checkpointing_kwargs"] == {"use_reentrant": False}
    assert keys["lr_scheduler_kwargs"] == {"min_lr_rate": 0.1}


@pytest.mark.slow
def test_open_r1_sft_as_written(make_tiny_model, tmp_path):
    name = "open_r1_sft.yaml"
    out = tmp_path / "out"
    # As the header's offline line: the tiny model's 1024 positions, not Qwen2.5's 32768 (refused past them)
    proc = run_recipe(name, make_tiny_model(arch_of(name)), out, "--max_length", "1024")
    assert "decision     precision: fp32 — the recipe asks for bf16, but there is no GPU" in proc.stdout
    assert "packing" in proc.stdout and len(losses(out)) == 2
    written = yaml.safe_load((out / "sftforge_config.yaml").read_text())
    assert written["training"]["lr_scheduler_kwargs"] == {"min_lr_rate": 0.1}
    assert written["training"]["hub_model_id"] == "Qwen2.5-1.5B-Open-R1-Distill"
    assert written["data"]["dataset_name"] == "examples/demo/train.jsonl"
    assert written["training"]["activation_checkpointing_kwargs"] == {"use_reentrant": False}


@pytest.mark.slow
def test_trl_qlora_alpaca_with_merge(make_tiny_model, tmp_path, shared_data):
    pytest.importorskip("bitsandbytes")
    from sftforge.config.validate_peft import quantized_cpu_problem

    why = quantized_cpu_problem(4, "nf4", True, "float32", False)
    if why:
        pytest.skip(f"bitsandbytes' CPU backend cannot train 4-bit here: {why}")
    name = "trl_qlora_alpaca.yaml"
    out = tmp_path / "out"
    proc = run_recipe(name, make_tiny_model(arch_of(name)), out, "--max_samples", "64")
    assert "QLoRA (4-bit base, bitsandbytes) r=16 alpha=32" in proc.stdout
    assert "q_proj,k_proj,v_proj,o_proj" in proc.stdout
    assert (out / "adapter_config.json").is_file() and (out / "merged" / "config.json").is_file()
    assert len(losses(out)) == 2


@pytest.mark.slow
def test_minimind_sft_with_moe_aux_loss(make_tiny_model, tmp_path):
    name = "minimind_sft.yaml"
    out = tmp_path / "out"
    proc = run_recipe(name, make_tiny_model(arch_of(name)), out)
    assert "formats: conversations 204" in proc.stdout
    assert "decision     precision: fp32 — the recipe asks for bf16, but there is no GPU" in proc.stdout
    assert "router_aux_loss_coef" in proc.stdout  # the MoE aux-loss decision line names the recipe's key
    assert len(losses(out)) == 2
    written = yaml.safe_load((out / "sftforge_config.yaml").read_text())
    assert written["model"]["router_aux_loss_coef"] == 0.01
    assert written["training"]["max_grad_norm"] == 1.0
    assert written["training"]["lr_scheduler_kwargs"] == {"min_lr_rate": 0.1}


@pytest.mark.slow
def test_pretrain_from_config_then_lora_sft(make_tiny_model, tmp_path, shared_data):
    tiny = make_tiny_model(arch_of("pretrain_from_config.yaml"))
    pretrained = tmp_path / "pretrain"
    proc = run_recipe("pretrain_from_config.yaml", None, pretrained, "--config_name", str(tiny),
                      "--tokenizer_name", str(tiny))  # fmt: skip
    assert "init: random weights" in proc.stdout and len(losses(pretrained)) == 2
    assert (pretrained / "config.json").is_file()
    # step 2 reads step 1's output_dir: here the test's folder instead of outputs/guides/pretrain
    assert arch_of("pretrain_then_lora_sft.yaml") is None
    out = tmp_path / "sft"
    proc = run_recipe("pretrain_then_lora_sft.yaml", pretrained, out)
    assert "LoRA r=8" in proc.stdout and "on all-linear" in proc.stdout
    assert (out / "adapter_config.json").is_file() and (out / "merged" / "config.json").is_file()
    assert len(losses(out)) == 2
