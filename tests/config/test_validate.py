"""Device-dependent decisions for processes started by a launcher on a machine without a GPU: which accelerate set-up
each gets (the wrong one trains every process alone, or drops the DeepSpeed/FSDP plugin without a word)."""

from __future__ import annotations

import json
import os

import pytest

from sftforge.config.validate import check_and_resolve

LAUNCH_ENV = (
    "WORLD_SIZE",
    "ACCELERATE_USE_DEEPSPEED",
    "ACCELERATE_USE_FSDP",
    "ACCELERATE_DEEPSPEED_CONFIG_FILE",
)


@pytest.fixture
def launched(monkeypatch):
    """As inside a process that torchrun / accelerate launch started; restores the environment afterwards."""
    for key in LAUNCH_ENV:  # set first, so that the code's own writes are undone after the test too
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr("sftforge.config.validate.cuda_available", lambda: False)
    return monkeypatch


def resolve(training: dict, tmp_path) -> tuple[dict, list[str], list[str], dict]:
    data = tmp_path / "d.jsonl"
    data.write_text('{"messages": []}\n')
    values = {"model": {"model_name_or_path": str(tmp_path)}, "data": {"train_data_path": [str(data)]},
              "training": dict(training), "peft": {}, "launch": {}}  # fmt: skip
    problems: list[str] = []
    auto: dict = {}
    notes = check_and_resolve(values, {"model_name_or_path", "train_data_path", *training}, problems, auto)
    return values["training"], problems, notes, auto


def test_plain_processes_on_cpu_join_one_gloo_group(launched, tmp_path):
    train, problems, _, _ = resolve({"bf16": False}, tmp_path)  # precision given: use_cpu must still be set
    assert problems == [] and train["use_cpu"] is True


def test_deepspeed_under_accelerate_on_cpu_keeps_the_plugin_and_uses_gloo(launched, tmp_path):
    launched.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    train, problems, notes, _ = resolve({}, tmp_path)
    assert problems == [] and "use_cpu" not in train and train["ddp_backend"] == "gloo"
    assert "distributed: DeepSpeed on CPU over gloo (no GPU)" in notes


def test_a_deepspeed_json_on_cpu_goes_through_accelerates_plugin_and_is_kept_for_the_written_recipe(
    launched, tmp_path
):
    ds = tmp_path / "zero2.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    train, problems, _, auto = resolve({"deepspeed": str(ds)}, tmp_path)
    assert problems == [] and "deepspeed" not in train and auto["deepspeed"] == str(ds)
    assert os.environ["ACCELERATE_USE_DEEPSPEED"] == "true"
    assert os.environ["ACCELERATE_DEEPSPEED_CONFIG_FILE"] == str(ds.resolve())


def test_fsdp_on_cpu_is_refused_with_the_reason_and_the_alternative(launched, tmp_path):
    launched.setenv("ACCELERATE_USE_FSDP", "true")
    _, problems, _, _ = resolve({}, tmp_path)
    assert (
        len(problems) == 1 and "FSDP needs GPUs" in problems[0] and "--accelerate_config zero3" in problems[0]
    )


def test_one_process_without_a_launcher_is_untouched_by_the_fsdp_check(launched, tmp_path):
    launched.setenv("WORLD_SIZE", "1")
    launched.setenv("ACCELERATE_USE_FSDP", "true")
    train, problems, _, _ = resolve({}, tmp_path)
    assert problems == [] and train["ddp_backend"] == "gloo"


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_max_bad_row_fraction_outside_0_1_is_refused(value, tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    data = tmp_path / "d.jsonl"
    data.write_text('{"messages": []}\n')
    values = {"model": {"model_name_or_path": str(tmp_path)},
              "data": {"train_data_path": [str(data)], "max_bad_row_fraction": value},
              "training": {}, "peft": {}, "launch": {}}  # fmt: skip
    problems: list[str] = []
    check_and_resolve(values, {"max_bad_row_fraction"}, problems, {})
    assert len(problems) == 1 and problems[0].startswith(f"max_bad_row_fraction: {value} must be in [0, 1]")


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_max_dropped_fraction_outside_0_1_is_refused(value, tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    data = tmp_path / "d.jsonl"
    data.write_text('{"messages": []}\n')
    values = {"model": {"model_name_or_path": str(tmp_path)},
              "data": {"train_data_path": [str(data)], "max_dropped_fraction": value},
              "training": {}, "peft": {}, "launch": {}}  # fmt: skip
    problems: list[str] = []
    check_and_resolve(values, {"max_dropped_fraction"}, problems, {})
    assert len(problems) == 1 and problems[0].startswith(f"max_dropped_fraction: {value} must be in [0, 1]")


def test_a_missing_deepspeed_json_names_the_key_and_the_shipped_files(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    _, problems, _, _ = resolve({"deepspeed": "configs/deepspeed/zero9.json"}, tmp_path)
    assert len(problems) == 1
    assert problems[0].startswith("deepspeed: 'configs/deepspeed/zero9.json' does not exist")
    assert "configs/deepspeed/zero2.json" in problems[0]


def test_nan_policy_skip_is_refused_under_deepspeed(launched, tmp_path):
    """DeepSpeed applies the optimizer step inside backward: a step cannot be skipped, and saying it was would be
    false."""
    launched.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    _, problems, _, _ = resolve({"nan_policy": "skip"}, tmp_path)
    assert len(problems) == 1 and problems[0].startswith("nan_policy: skip cannot work under DeepSpeed")
    _, problems, _, _ = resolve({"nan_policy": "stop"}, tmp_path)
    assert problems == []


def _weights(
    tmp_path, monkeypatch, gpu: bool, training: dict, model: dict | None = None, peft: dict | None = None
):
    monkeypatch.setattr("sftforge.config.validate.cuda_available", lambda: gpu)
    data = tmp_path / "d.jsonl"
    data.write_text('{"messages": []}\n')
    values = {"model": {"model_name_or_path": str(tmp_path), **(model or {})},
              "data": {"train_data_path": [str(data)]}, "training": dict(training), "peft": dict(peft or {}),
              "launch": {}}  # fmt: skip
    problems: list[str] = []
    explicit = {"model_name_or_path", "train_data_path", *training, *(model or {}), *(peft or {})}
    notes = check_and_resolve(values, explicit, problems, {})
    return values["model"].get("torch_dtype", "auto"), [n for n in notes if n.startswith("weights")], problems


def test_full_fine_tuning_on_a_gpu_keeps_fp32_master_weights(tmp_path, monkeypatch):
    """torch_dtype: auto used to load the checkpoint's bf16 weights on a GPU, so AdamW ran on bf16 parameters
    under a bf16 autocast that changed nothing: no fp32 master weights, small updates lost."""
    for key in LAUNCH_ENV:
        monkeypatch.delenv(key, raising=False)
    dtype, notes, problems = _weights(tmp_path, monkeypatch, True, {"bf16": True})
    assert dtype == "float32" and problems == [] and "fp32 master weights" in notes[0]
    dtype, notes, _ = _weights(
        tmp_path, monkeypatch, True, {"bf16": True}, peft={"finetuning_type": "freeze"}
    )
    assert dtype == "float32"
    # LoRA: the base is frozen, its dtype stays the checkpoint's; peft keeps the adapters in fp32
    dtype, notes, _ = _weights(tmp_path, monkeypatch, True, {"bf16": True}, peft={"finetuning_type": "lora"})
    assert dtype == "auto" and "adapters in fp32" in notes[0]
    # pure bf16 only when asked, and said so
    dtype, notes, _ = _weights(tmp_path, monkeypatch, True, {"bf16": True}, model={"torch_dtype": "bfloat16"})
    assert dtype == "bfloat16" and "pure bfloat16" in notes[0]
    _, _, problems = _weights(tmp_path, monkeypatch, True, {"fp16": True}, model={"torch_dtype": "float16"})
    assert problems and problems[0].startswith("torch_dtype: float16 with fp16 and full fine-tuning")
    dtype, notes, _ = _weights(tmp_path, monkeypatch, False, {})
    assert dtype == "float32" and notes == ["weights: float32 (CPU)"]


def test_deepspeed_keeps_its_own_fp32_master_weights(tmp_path, monkeypatch):
    for key in LAUNCH_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    dtype, notes, _ = _weights(tmp_path, monkeypatch, True, {"bf16": True})
    assert dtype == "auto" and "DeepSpeed keeps fp32 master weights" in notes[0]


def test_the_recipes_own_mistakes_are_reported_before_the_device_is_asked(monkeypatch, tmp_path):
    """Asking for a GPU imports torch (seconds): a recipe with mistakes must answer without it."""

    def no_device_check() -> bool:
        raise AssertionError("the device was asked although the recipe has mistakes")

    monkeypatch.setattr("sftforge.config.validate.cuda_available", no_device_check)
    values = {"model": {}, "data": {"train_data_path": [str(tmp_path / "missing.jsonl")]},
              "training": {"bf16": True, "fp16": True}, "peft": {}, "launch": {}}  # fmt: skip
    problems = ["unknown key 'learning_rat'. Did you mean 'learning_rate'?"]  # as the loader found
    check_and_resolve(values, {"train_data_path", "learning_rat", "bf16", "fp16"}, problems, {})
    assert problems[1].startswith("model_name_or_path is required") and "does not exist" in problems[2]
    assert problems[3].startswith("bf16 and fp16 are both true") and len(problems) == 4
