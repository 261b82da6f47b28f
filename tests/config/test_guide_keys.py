"""Argument names and values the popular guides use (LLaMA-Factory, TRL, open-r1, accelerate) mean what the
guides mean: logging_dir, low_cpu_mem_usage, quantization_bit: 0, max_samples: 0, bnb_4bit_quant_storage,
lora_target, lora_rank, load_in_4bit, mixed_precision; a GPU guide's bf16 on a CPU-only machine; DeepSpeed JSONs
whose precision contradicts the recipe; reporters that are not installed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sftforge.cli import main
from sftforge.config import config_to_dict, load_config
from sftforge.errors import ConfigError


@pytest.fixture
def base(data_file: Path) -> list[str]:
    return ["--model_name_or_path", "m", "--train_data_path", str(data_file)]


def recipe(tmp_path: Path, data_file: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(f"model_name_or_path: m\ntrain_data_path: {data_file}\n{text}")
    return path


# ---------------------------------------------------------------- logging_dir, low_cpu_mem_usage, max_samples


def test_logging_dir_is_where_tensorboard_writes(base, tmp_path, monkeypatch):
    from sftforge.config.reporting import apply_logging_dir

    # setenv (not delenv) so that monkeypatch restores the variable's absence afterwards: apply_logging_dir sets it,
    # and a leftover value would send later runs' TensorBoard files of this test worker elsewhere
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", "placeholder")
    cfg = load_config(None, [*base, "--logging_dir", "tb-logs", "--report_to", "tensorboard"])
    assert cfg.training.logging_dir == "tb-logs"
    assert "logging_dir: TensorBoard event files go to tb-logs" in cfg.notes
    monkeypatch.chdir(tmp_path)
    apply_logging_dir(cfg.training)  # transformers 5's TensorBoardCallback reads this, not the arguments
    import os

    assert os.environ["TENSORBOARD_LOGGING_DIR"] == str(tmp_path / "tb-logs")
    off = load_config(None, [*base, "--logging_dir", "tb-logs"])
    assert any("only used by TensorBoard" in n for n in off.notes)


def test_low_cpu_mem_usage_is_accepted_either_way(base):
    assert load_config(None, [*base, "--low_cpu_mem_usage", "true"]).model.low_cpu_mem_usage is True
    assert load_config(None, [*base, "--low_cpu_mem_usage", "false"]).model.low_cpu_mem_usage is False


def test_max_samples_0_means_every_row(base):
    assert load_config(None, [*base, "--max_samples", "0"]).data.max_samples is None
    assert load_config(None, [*base, "--max_samples", "5"]).data.max_samples == 5
    with pytest.raises(ConfigError, match="max_samples: must be at least 1, or 0"):
        load_config(None, [*base, "--max_samples", "-1"])


# ---------------------------------------------------------------- LoRA / quantization names


def test_quantization_bit_0_means_not_quantized(base):
    full = load_config(None, [*base, "--quantization_bit", "0"])
    assert full.peft.quantization_bit is None and full.peft.finetuning_type == "full"
    lora = load_config(None, [*base, "--finetuning_type", "lora", "--quantization_bit", "0"])
    assert lora.peft.quantization_bit is None and not any("QLoRA" in n for n in lora.notes)
    with pytest.raises(ConfigError, match="quantization_bit: 0 means no quantization"):
        load_config(None, [*base, "--finetuning_type", "qlora", "--quantization_bit", "0"])


def test_llama_factory_lora_target_and_lora_rank(base, tmp_path, data_file):
    cfg = load_config(
        recipe(tmp_path, data_file, "finetuning_type: lora\nlora_rank: 32\nlora_target: q_proj,v_proj\n")
    )
    assert cfg.peft.lora_r == 32 and cfg.peft.lora_target_modules == ["q_proj", "v_proj"]
    every = load_config(None, [*base, "--finetuning_type", "lora", "--lora_target", "all"])
    assert every.peft.lora_target_modules == "all-linear"
    with pytest.raises(ConfigError, match="lora_rank: it sets the same thing as another key"):
        load_config(None, [*base, "--finetuning_type", "lora", "--lora_r", "8", "--lora_rank", "16"])


def test_trl_load_in_4bit_is_quantization_bit_4(tmp_path, data_file):
    pytest.importorskip("bitsandbytes")
    cfg = load_config(
        recipe(tmp_path, data_file, "use_peft: true\nload_in_4bit: true\nuse_bnb_nested_quant: false\n")
    )
    assert cfg.peft.quantization_bit == 4 and cfg.peft.finetuning_type == "lora"
    assert cfg.peft.bnb_4bit_use_double_quant is False
    plain = load_config(recipe(tmp_path, data_file, "use_peft: true\nload_in_4bit: false\n"))
    assert plain.peft.quantization_bit is None
    with pytest.raises(ConfigError, match="load_in_4bit and quantization_bit both say how to quantize"):
        load_config(recipe(tmp_path, data_file, "use_peft: true\nload_in_4bit: true\nquantization_bit: 8\n"))


def test_bnb_4bit_quant_storage_reaches_bitsandbytes_config(base):
    import torch

    from sftforge.config.peft_args import PeftArguments
    from sftforge.model.quant import quantization_config

    assert quantization_config(PeftArguments(quantization_bit=4)).bnb_4bit_quant_storage == torch.uint8
    config = quantization_config(PeftArguments(quantization_bit=4, bnb_4bit_quant_storage="bfloat16"))
    assert config.bnb_4bit_quant_storage == torch.bfloat16
    with pytest.raises(ConfigError, match="bnb_4bit_quant_storage: only used with 4-bit"):
        load_config(None, [*base, "--finetuning_type", "lora", "--bnb_4bit_quant_storage", "bfloat16"])
    with pytest.raises(ConfigError, match="bnb_4bit_quant_storage: 'int3' is not one of"):
        load_config(None, [*base, "--bnb_4bit_quant_storage", "int3"])


def test_quant_storage_is_part_of_the_cpu_probe():
    pytest.importorskip("bitsandbytes")
    from sftforge.config.validate_peft import quantized_cpu_problem

    if quantized_cpu_problem(4, "nf4", True, "float32", False) is not None:
        pytest.skip("bitsandbytes' CPU backend cannot train 4-bit here")
    # the probe runs the storage dtype asked for (a fresh cache entry): it works or names why not
    result = quantized_cpu_problem(4, "nf4", True, "float32", False, "bfloat16")
    assert result is None or isinstance(result, str)


# ---------------------------------------------------------------- precision: guides are written for GPUs


def test_a_guides_bf16_on_a_cpu_only_machine_becomes_fp32_with_a_decision(tmp_path, data_file):
    cfg = load_config(recipe(tmp_path, data_file, "bf16: true\n"))
    assert cfg.training.bf16 is False and cfg.training.fp16 is False and cfg.training.use_cpu is True
    assert any(
        n.startswith("precision: fp32 — the recipe asks for bf16, but there is no GPU") for n in cfg.notes
    )
    # the written recipe keeps what the user wrote: a GPU machine reading it trains in bf16
    assert config_to_dict(cfg)["training"]["bf16"] is True


@pytest.mark.parametrize("value, asked", [("bf16", "bf16"), ("fp16", "fp16")])
def test_accelerates_mixed_precision_key_on_cpu(tmp_path, data_file, value, asked):
    cfg = load_config(recipe(tmp_path, data_file, f"mixed_precision: {value}\n"))
    assert cfg.training.bf16 is False and cfg.training.fp16 is False
    assert any(f"the recipe asks for {asked}, but there is no GPU" in n for n in cfg.notes)


def test_mixed_precision_no_and_its_conflicts(tmp_path, data_file, base):
    cfg = load_config(recipe(tmp_path, data_file, "mixed_precision: no\n"))  # YAML reads `no` as false
    assert cfg.training.bf16 is False and cfg.training.fp16 is False
    with pytest.raises(ConfigError, match="mixed_precision and bf16 set the same thing"):
        load_config(recipe(tmp_path, data_file, "mixed_precision: bf16\nbf16: true\n"))
    with pytest.raises(ConfigError, match="mixed_precision: 'fp8' is not one of bf16, fp16, no"):
        load_config(None, [*base, "--mixed_precision", "fp8"])


def test_use_cpu_with_bf16_still_forces_cpu_bf16_autocast(base, monkeypatch):
    import sftforge.config.validate as validate

    monkeypatch.setattr(validate, "cpu_supports_bf16", lambda: True)
    cfg = load_config(None, [*base, "--use_cpu", "true", "--bf16", "true"])
    assert cfg.training.bf16 is True
    assert any("bf16 autocast on CPU (as asked" in n for n in cfg.notes)


def resolve_on_gpu(training: dict, tmp_path: Path, monkeypatch) -> tuple[dict, list[str], list[str]]:
    """check_and_resolve as on a GPU machine (a TrainingArguments with bf16 cannot be built on this CPU)."""
    from sftforge.config.validate import check_and_resolve

    monkeypatch.setattr("sftforge.config.validate.cuda_available", lambda: True)
    data = tmp_path / "d.jsonl"
    data.write_text('{"messages": []}\n')
    values = {"model": {"model_name_or_path": str(tmp_path)}, "data": {"train_data_path": [str(data)]},
              "training": dict(training), "peft": {}, "launch": {}}  # fmt: skip
    problems: list[str] = []
    notes = check_and_resolve(values, {"model_name_or_path", "train_data_path", *training}, problems, {})
    return values["training"], problems, notes


def test_on_a_gpu_the_guides_bf16_is_kept(tmp_path, monkeypatch):
    train, problems, notes = resolve_on_gpu({"bf16": True}, tmp_path, monkeypatch)
    assert problems == [] and train["bf16"] is True and "precision: bf16 (as asked)" in notes


def test_an_accelerate_configs_bf16_follows_the_recipe_in_launched_processes(base, monkeypatch):
    """`accelerate launch --config_file configs/accelerate/zero3.yaml` (mixed_precision: bf16) on a CPU: each
    process gets ACCELERATE_MIXED_PRECISION=bf16, which transformers would use whenever the recipe's bf16/fp16
    are off. The recipe decides."""
    import os

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    cfg = load_config(None, [*base, "--bf16", "true"])
    assert os.environ["ACCELERATE_MIXED_PRECISION"] == "no"
    assert "precision: fp32 from the recipe, not the accelerate config's mixed_precision: bf16" in cfg.notes
    assert cfg.training.mixed_precision == "no"


def test_a_deepspeed_accelerate_configs_mixed_precision_is_not_refused_by_accelerate(base, monkeypatch):
    """`accelerate launch --config_file configs/accelerate/zero3.yaml` by hand: accelerate lists the file's
    mixed_precision in ACCELERATE_CONFIG_DS_FIELDS, and its DeepSpeed plugin then refuses to start in every
    process ("will be ignored") although the JSON says "auto". The recipe decides, so it is taken off the list."""
    import os

    monkeypatch.setenv("ACCELERATE_CONFIG_DS_FIELDS", "deepspeed_config_file,zero3_init_flag,mixed_precision")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    cfg = load_config(None, base)
    assert os.environ["ACCELERATE_CONFIG_DS_FIELDS"] == "deepspeed_config_file,zero3_init_flag"
    assert any("mixed_precision is left to the recipe" in n for n in cfg.notes)


# ---------------------------------------------------------------- DeepSpeed JSON vs the recipe


def ds_json(tmp_path: Path, **sections: object) -> Path:
    path = tmp_path / "ds.json"
    doc = {"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": "auto"}
    doc.update({k: {"enabled": v} for k, v in sections.items()})
    path.write_text(json.dumps(doc))
    return path


def test_a_deepspeed_json_contradicting_the_recipe_fails_at_config_time(tmp_path, monkeypatch):
    path = ds_json(tmp_path, bf16=True)
    _, problems, _ = resolve_on_gpu({"fp16": True, "deepspeed": str(path)}, tmp_path, monkeypatch)
    assert problems == [
        f"deepspeed: {path} sets bf16.enabled: true, but the recipe trains in fp16 (fp16: true). Make them agree: "
        '"enabled": "auto" in the JSON lets the recipe decide (as configs/deepspeed/*.json do), or change '
        "bf16/fp16 in the recipe."
    ]
    _, problems, _ = resolve_on_gpu({"bf16": True, "deepspeed": str(ds_json(tmp_path, fp16=True))}, tmp_path,
                                    monkeypatch)  # fmt: skip
    assert (
        len(problems) == 1
        and "sets fp16.enabled: true, but the recipe trains in bf16 (bf16: true)" in problems[0]
    )
    # left to the GPU (bf16 chosen automatically) and the JSON says fp16: named as such
    monkeypatch.setattr("torch.cuda.is_bf16_supported", lambda *a, **k: True)
    _, problems, _ = resolve_on_gpu({"deepspeed": str(ds_json(tmp_path, fp16=True))}, tmp_path, monkeypatch)
    assert len(problems) == 1 and "the recipe trains in bf16 (bf16: true, chosen for this GPU)" in problems[0]
    # "auto" (the shipped files) and agreeing values are fine; so is an inline mapping
    for ds in (str(ds_json(tmp_path, bf16="auto", fp16="auto")), str(ds_json(tmp_path, bf16=True)),
               {"bf16": {"enabled": True}}):  # fmt: skip
        _, problems, _ = resolve_on_gpu({"bf16": True, "deepspeed": ds}, tmp_path, monkeypatch)
        assert problems == [], ds


def test_on_cpu_a_json_forcing_bf16_names_the_fp32_decision(base, tmp_path):
    with pytest.raises(
        ConfigError, match=r"bf16.enabled: true, but the recipe trains in fp32 \(bf16: true became"
    ):
        load_config(None, [*base, "--bf16", "true", "--deepspeed", str(ds_json(tmp_path, bf16=True))])


def test_the_launching_process_checks_the_json_before_any_process_starts(tmp_path, monkeypatch):
    from sftforge.config.schema import LaunchArguments
    from sftforge.launch import launch_command

    config = tmp_path / "mine.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "distributed_type": "DEEPSPEED",
                "deepspeed_config": {"deepspeed_config_file": str(ds_json(tmp_path, bf16=True))},
            }
        )
    )
    with pytest.raises(ConfigError, match="sets bf16.enabled: true, but the recipe trains in fp32"):
        launch_command(LaunchArguments(str(config)), ["r.yaml"], "no")
    assert "--mixed_precision" in launch_command(LaunchArguments(str(config)), ["r.yaml"], "bf16")


# ---------------------------------------------------------------- report_to


def test_a_reporter_that_is_not_installed_is_a_config_error_before_anything_loads(data_file, capsys):
    # comet_ml is not a dependency of anything here; the model "m" does not exist, so reaching the model load
    # would give another error
    code = main(["train", "--model_name_or_path", "m", "--train_data_path", str(data_file),
                 "--report_to", "comet_ml"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert (
        "report_to: comet_ml needs the comet_ml package, which is not installed: pip install comet_ml" in err
    )


def test_an_unknown_reporter_lists_the_known_ones(base):
    with pytest.raises(ConfigError, match="report_to: 'tensorbord' is not a reporter transformers knows"):
        load_config(None, [*base, "--report_to", "tensorbord"])


def test_missing_wandb_or_swanlab_says_which_extra(base, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in ("wandb", "swanlab") else real(name, *a)
    )
    with pytest.raises(ConfigError) as info:
        load_config(None, [*base, "--report_to", '["wandb", "swanlab"]'])
    text = str(info.value)
    assert "pip install -e '.[wandb]'" in text and "pip install -e '.[swanlab]'" in text


def test_swanlab_0_10_gets_swanlabs_own_transformers_callback(monkeypatch):
    swanlab = pytest.importorskip("swanlab")
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    from sftforge.config.reporting import use_swanlabs_own_callback

    monkeypatch.setitem(
        INTEGRATION_TO_CALLBACK, "swanlab", INTEGRATION_TO_CALLBACK["swanlab"]
    )  # restored after
    swapped = use_swanlabs_own_callback()
    assert swapped == hasattr(swanlab, "has_run")
    if swapped:
        assert INTEGRATION_TO_CALLBACK["swanlab"].__module__ == "swanlab.integration.transformers"
