"""Recipe loading: YAML + CLI overrides, aliases, nested values, every problem reported at once."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sftforge.config import config_to_dict, dump_config, load_config, parse_overrides
from sftforge.errors import ConfigError


def write_recipe(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_yaml_and_cli_overrides_with_same_names(tmp_path, data_file):
    recipe = write_recipe(
        tmp_path,
        f"model_name_or_path: m\ntrain_data_path: {data_file}\nlearning_rate: 1e-4\n"
        "num_train_epochs: 3\nlr_scheduler_type: cosine_with_min_lr\nlr_scheduler_kwargs: {min_lr_rate: 0.1}\n",
    )
    cfg = load_config(recipe, ["--learning_rate", "2e-5", "--num_train_epochs=1", "--max_steps", "7"])
    assert cfg.training.learning_rate == pytest.approx(2e-5)
    assert cfg.training.num_train_epochs == 1.0
    assert cfg.training.max_steps == 7
    assert cfg.training.lr_scheduler_type.value == "cosine_with_min_lr"
    assert cfg.training.lr_scheduler_kwargs == {"min_lr_rate": 0.1}
    assert cfg.data.train_data_path == [str(data_file)]


def test_yaml_reads_1e_minus_4_as_number(tmp_path, data_file):
    # PyYAML (YAML 1.1) reads `1e-4` as a string; the loader must still give a float.
    recipe = write_recipe(
        tmp_path, f"model_name_or_path: m\ntrain_data_path: {data_file}\nlearning_rate: 1e-4\n"
    )
    assert load_config(recipe).training.learning_rate == pytest.approx(1e-4)


def test_nested_values_from_cli_dotted_and_json(data_file):
    base = ["--model_name_or_path", "m", "--train_data_path", str(data_file)]
    dotted = load_config(None, [*base, "--lr_scheduler_kwargs.min_lr_rate", "0.2"])
    assert dotted.training.lr_scheduler_kwargs == {"min_lr_rate": 0.2}
    as_json = load_config(None, [*base, "--lr_scheduler_kwargs", '{"min_lr_rate": 0.3}'])
    assert as_json.training.lr_scheduler_kwargs == {"min_lr_rate": 0.3}
    ckpt = load_config(
        None, [*base, "--gradient_checkpointing", "--gradient_checkpointing_kwargs.use_reentrant", "false"]
    )
    assert ckpt.training.activation_checkpointing is True
    assert ckpt.training.activation_checkpointing_kwargs == {"use_reentrant": False}


def test_aliases(data_file):
    cfg = load_config(
        None,
        [
            "--model_name_or_path", "m",
            "--train_files", str(data_file),
            "--max_seq_length", "256",
            "--evaluation_strategy", "epoch",
            "--eval_split_ratio", "0.1",
            "--preprocessing_num_workers", "2",
            "--warmup_ratio", "0.1",
        ],
    )  # fmt: skip
    assert cfg.data.max_length == 256
    assert cfg.data.train_data_path == [str(data_file)]
    assert cfg.training.eval_strategy.value == "epoch"
    assert cfg.data.dataset_num_proc == 2
    assert cfg.training.warmup_steps == pytest.approx(0.1)
    assert (
        load_config(
            None, ["--model_name_or_path", "m", "--train_files", str(data_file), "--model_max_length", "64"]
        ).data.max_length
        == 64
    )


def test_every_problem_reported_together_with_suggestion(tmp_path, data_file):
    recipe = write_recipe(
        tmp_path,
        f"model_name_or_path: m\ntrain_data_path: {data_file}\nlearnig_rate: 1e-4\nnum_train_epochs: abc\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(recipe, ["--bf16", "--fp16", "--eval_data_path", str(tmp_path / "missing.json")])
    text = str(info.value)
    assert "unknown key 'learnig_rate'. Did you mean 'learning_rate'?" in text
    assert "num_train_epochs: expected a number, got 'abc'" in text
    assert "bf16 and fp16 are both true" in text
    assert "missing.json" in text and "does not exist" in text
    assert len(info.value.problems) == 4


def test_alias_and_canonical_together_is_a_contradiction(data_file):
    with pytest.raises(ConfigError, match="sets the same thing"):
        load_config(
            None,
            [
                "--model_name_or_path",
                "m",
                "--train_data_path",
                str(data_file),
                "--max_length",
                "10",
                "--max_seq_length",
                "20",
            ],
        )


def test_missing_model_and_data():
    with pytest.raises(ConfigError) as info:
        load_config(None, [])
    assert "model_name_or_path is required" in str(info.value)
    assert "no training data" in str(info.value)


def test_choices_and_bool_checked(data_file):
    with pytest.raises(ConfigError) as info:
        load_config(
            None,
            [
                "--model_name_or_path",
                "m",
                "--train_data_path",
                str(data_file),
                "--torch_dtype",
                "float8",
                "--trust_remote_code",
                "maybe",
            ],
        )
    assert "torch_dtype: 'float8' is not one of" in str(info.value)
    assert "trust_remote_code: expected true or false, got 'maybe'" in str(info.value)


def test_eval_strategy_without_eval_data(data_file):
    with pytest.raises(ConfigError, match="no evaluation data"):
        load_config(
            None,
            ["--model_name_or_path", "m", "--train_data_path", str(data_file), "--eval_strategy", "steps"],
        )


def test_cpu_defaults_are_fp32_and_sdpa_with_reasons(data_file):
    cfg = load_config(None, ["--model_name_or_path", "m", "--train_data_path", str(data_file)])
    assert cfg.training.bf16 is False and cfg.training.fp16 is False
    assert cfg.model.attn_implementation == "sdpa"
    assert any("precision: fp32" in n and "slower" in n for n in cfg.notes)
    assert any(n.startswith("attention: sdpa") for n in cfg.notes)


def test_fp16_on_cpu_is_refused_when_use_cpu_insists(data_file):
    # without use_cpu a guide's fp16 becomes fp32 with a decision line (tests/config/test_guide_keys.py)
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        load_config(None, ["--model_name_or_path", "m", "--train_data_path", str(data_file), "--fp16",
                           "--use_cpu", "true"])  # fmt: skip


def test_bf16_on_cpu_without_support_is_refused(data_file, monkeypatch):
    import sftforge.config.validate as validate

    monkeypatch.setattr(validate, "cpu_supports_bf16", lambda: False)
    with pytest.raises(ConfigError, match="this CPU has no bf16 support"):
        load_config(None, ["--model_name_or_path", "m", "--train_data_path", str(data_file), "--bf16", "true",
                           "--use_cpu", "true"])  # fmt: skip


def test_flash_attention_without_gpu_is_refused(data_file):
    with pytest.raises(ConfigError, match="flash_attention_2 needs a CUDA GPU"):
        load_config(
            None,
            [
                "--model_name_or_path",
                "m",
                "--train_data_path",
                str(data_file),
                "--attn_implementation",
                "flash_attention_2",
            ],
        )


def test_resolved_config_round_trips(tmp_path, data_file):
    cfg = load_config(
        None,
        [
            "--model_name_or_path",
            "m",
            "--train_data_path",
            str(data_file),
            "--learning_rate",
            "3e-4",
            "--lr_scheduler_type",
            "cosine_with_min_lr",
            "--lr_scheduler_kwargs.min_lr_rate",
            "0.1",
            "--gradient_checkpointing",
            "--output_dir",
            str(tmp_path / "out"),
            "--report_to",
            "tensorboard",
        ],
    )
    path = dump_config(cfg, tmp_path / "out" / "sftforge_config.yaml")
    assert "hub_token" not in path.read_text()
    again = load_config(path)
    assert config_to_dict(again) == config_to_dict(cfg)
    assert yaml.safe_load(path.read_text())["training"]["learning_rate"] == pytest.approx(3e-4)


def test_parse_overrides_forms():
    assert parse_overrides(["--a", "1", "--b=2", "--flag", "--c.d", "0.5"]) == {
        "a": "1",
        "b": "2",
        "flag": "true",
        "c": {"d": 0.5},
    }
    with pytest.raises(ConfigError, match="unexpected argument 'oops'"):
        parse_overrides(["oops"])


def test_yaml_syntax_error_names_line(tmp_path):
    recipe = write_recipe(tmp_path, "model_name_or_path: m\nlearning_rate: [1e-4\n")
    with pytest.raises(ConfigError, match=r"recipe.yaml:\d+:\d+: invalid YAML"):
        load_config(recipe)


def test_sections_are_flattened(tmp_path, data_file):
    recipe = write_recipe(
        tmp_path,
        f"model:\n  model_name_or_path: m\ndata:\n  train_data_path: {data_file}\ntraining:\n  seed: 7\n",
    )
    cfg = load_config(recipe)
    assert cfg.model.model_name_or_path == "m" and cfg.training.seed == 7


def test_dump_keeps_device_choices_auto_so_gpu_machines_re_resolve(tmp_path, data_file):
    cfg = load_config(None, ["--model_name_or_path", "m", "--train_data_path", str(data_file)])
    assert cfg.model.torch_dtype == "float32"  # resolved for this CPU run...
    dumped = config_to_dict(cfg)
    assert dumped["model"]["torch_dtype"] == "auto"  # ...but written as the user left it
    assert dumped["model"]["attn_implementation"] == "auto"
    assert "use_cpu" not in dumped["training"] and "bf16" not in dumped["training"]
    explicit = load_config(None, ["--model_name_or_path", "m", "--train_data_path", str(data_file),
                                  "--torch_dtype", "bfloat16"])  # fmt: skip
    assert config_to_dict(explicit)["model"]["torch_dtype"] == "bfloat16"


def test_old_and_new_checkpointing_names_conflict(data_file):
    with pytest.raises(ConfigError, match="same setting with different values"):
        load_config(
            None,
            [
                "--model_name_or_path",
                "m",
                "--train_data_path",
                str(data_file),
                "--gradient_checkpointing",
                "true",
                "--activation_checkpointing",
                "false",
            ],
        )


def test_report_to_none_from_cli_stays_the_string_none(data_file):
    cfg = load_config(
        None, ["--model_name_or_path", "m", "--train_data_path", str(data_file), "--report_to", "none"]
    )
    assert cfg.training.report_to in ("none", ["none"], [])
    cleared = load_config(None, ["--model_name_or_path", "m", "--train_data_path", str(data_file),
                                 "--max_samples", "none"])  # fmt: skip
    assert cleared.data.max_samples is None


def test_multi_turn_is_a_choice_and_split_excludes_train_on_all(data_file):
    base = ["--model_name_or_path", "m", "--train_data_path", str(data_file)]
    assert load_config(None, base).data.multi_turn == "auto"
    assert load_config(None, [*base, "--multi_turn", "split"]).data.multi_turn == "split"
    with pytest.raises(ConfigError) as info:
        load_config(None, [*base, "--multi_turn", "sometimes"])
    assert "multi_turn: 'sometimes' is not one of" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_config(None, [*base, "--multi_turn", "split", "--train_on", "all"])
    assert "multi_turn: split trains each assistant turn in its own example, but train_on: all" in str(
        info.value
    )
    assert load_config(None, [*base, "--multi_turn", "auto", "--train_on", "all"]).data.train_on == "all"
