"""The example recipes (examples/recipes/*.yaml): each one passes `--dry_run` — every config check, the launch,
the data, the chat template, the model built from its config — with only what needs a GPU box swapped: the model
(the offline tiny one instead of the hub id), the data (a small local file instead of the hub dataset) and
output_dir. Everything else is checked as written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sftforge.cli import main
from sftforge.config import load_config
from sftforge.errors import ConfigError
from sftforge.launch import check_launch_keys, resolve_accelerate_config
from sftforge.train.dry_run import dry_run

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "recipes"
RECIPES = sorted(p.name for p in EXAMPLES.glob("*.yaml"))
HUB_DATA_KEYS = ("dataset_name", "dataset_config", "dataset_train_split", "dataset_test_split")
# What each recipe is for, as its dry-run summary shows it.
SHOWS = {
    "lora.yaml": [" decision     fine-tuning: LoRA r=16 alpha=32 dropout=0.05 on all-linear"],
    "dora.yaml": [" decision     fine-tuning: DoRA r=16"],
    "qlora.yaml": [
        " decision     fine-tuning: QLoRA (4-bit base, bitsandbytes) r=16",
        " decision     dry run: parameters counted unquantized; the run loads the base in 4-bit",
    ],
    "packing.yaml": [" packing      "],
    "zero3_multi_gpu.yaml": [" launch       ", "--num_processes 8 -m sftforge train"],
    "multi_node.yaml": [
        " launch       ",
        "--num_processes 16 --num_machines 2 --machine_rank 0 --main_process_ip 10.0.0.1 --main_process_port 29500",
    ],
    "pretrain.yaml": [" data         stage pt: ", " blocks       "],
}


def test_the_recipes_of_the_issue_are_there():
    assert set(RECIPES) == set(SHOWS)


@pytest.mark.parametrize("name", RECIPES)
def test_each_recipe_names_a_real_model_and_how_to_check_and_run_it(name):
    text = (EXAMPLES / name).read_text(encoding="utf-8")
    assert f"sftforge train examples/recipes/{name} --dry_run" in text
    assert yaml.safe_load(text)["model_name_or_path"].startswith("Qwen/Qwen2.5-")


@pytest.fixture(scope="module")
def local_data(tmp_path_factory) -> dict[str, Path]:
    """64 conversations of the shipped demo data, and 64 plain documents made of them (stage pt)."""
    folder = tmp_path_factory.mktemp("recipe-data")
    rows = (REPO / "examples/demo/train.jsonl").read_text(encoding="utf-8").splitlines()[:64]
    (folder / "chat.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    docs = [" ".join(m["content"] for m in json.loads(r)["messages"]) for r in rows]
    (folder / "docs.jsonl").write_text(
        "".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8"
    )
    return {"sft": folder / "chat.jsonl", "pt": folder / "docs.jsonl"}


def localised(name: str, folder: Path, model: Path, data: dict[str, Path]) -> Path:
    """The recipe with the offline model, local data, a private output_dir and at most the tiny model's context
    length; every other key as written."""
    keys = yaml.safe_load((EXAMPLES / name).read_text(encoding="utf-8"))
    for key in HUB_DATA_KEYS:
        keys.pop(key, None)
    keys["model_name_or_path"] = str(model)
    keys["train_data_path"] = str(data["pt" if keys.get("stage") == "pt" else "sft"])
    keys["output_dir"] = str(folder / "out")
    # The recipes' context lengths are Qwen2.5's; the tiny model has fewer positions, and a run past them is
    # refused (model/context.py): cap the length at the tiny model's own, the one other key that must change
    limit = json.loads((model / "config.json").read_text(encoding="utf-8"))["max_position_embeddings"]
    for key in ("max_length", "block_size"):
        if key in keys and keys[key] > limit:
            keys[key] = limit
    path = folder / name
    path.write_text(yaml.safe_dump(keys, sort_keys=False), encoding="utf-8")
    return path


@pytest.mark.parametrize("name", RECIPES)
def test_each_recipe_passes_its_dry_run(name, tmp_path, tiny_model_dir, local_data, capsys):
    path = localised(name, tmp_path, tiny_model_dir, local_data)
    cfg = load_config(path)
    check_launch_keys(cfg.launch)
    assert dry_run(cfg, [str(path)]) == 0
    printed = capsys.readouterr().out
    for shown in SHOWS[name]:
        assert shown in printed
    assert "sftforge train: dry run passed" in printed
    assert not (tmp_path / "out").exists()


def test_the_multi_node_recipe_refuses_a_rank_beyond_its_machines(tmp_path, tiny_model_dir, local_data):
    path = localised("multi_node.yaml", tmp_path, tiny_model_dir, local_data)
    with pytest.raises(
        ConfigError, match=r"machine_rank: 2 — with num_machines: 2 each machine needs its own rank"
    ):
        check_launch_keys(load_config(path, ["--machine_rank", "2"]).launch)


def test_qlora_without_a_working_bitsandbytes_backend_is_refused_by_name(
    tmp_path, tiny_model_dir, local_data, monkeypatch
):
    """This CPU's bitsandbytes passes the 4-bit probe (the dry run above); where it does not, the recipe stops at the
    config check with the reason and the ways out — not at model load, not silently."""
    monkeypatch.setattr("sftforge.config.validate.cuda_available", lambda: False)
    monkeypatch.setattr(
        "sftforge.config.validate_peft.quantized_cpu_problem", lambda *a: "NotImplementedError: x"
    )
    path = localised("qlora.yaml", tmp_path, tiny_model_dir, local_data)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert e.value.problems == [
        "quantization_bit: 4-bit nf4 with LoRA needs a CUDA GPU here: there is none, and bitsandbytes' CPU backend "
        "failed a two-step training probe of this setup (NotImplementedError: x). Run on a CUDA GPU, or train "
        "without quantization (finetuning_type: lora)."
    ]


def test_the_zero3_recipe_through_the_cli(tmp_path, tiny_model_dir, local_data, capsys, monkeypatch):
    """What a user types: the recipe path and --dry_run; the launch it would start names the shipped zero3 file."""
    monkeypatch.setattr("sftforge.launch.subprocess.call", lambda cmd: pytest.fail(f"launched {cmd}"))
    path = localised("zero3_multi_gpu.yaml", tmp_path, tiny_model_dir, local_data)
    assert main(["train", str(path), "--dry_run"]) == 0
    printed = capsys.readouterr().out
    assert " launch       " in printed and f"--config_file {resolve_accelerate_config('zero3')} " in printed
    assert f"-m sftforge train {path}\n" in printed
