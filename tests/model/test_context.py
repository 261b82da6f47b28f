"""max_length against the model's max_position_embeddings, and `rope_scaling` reaching the loaded model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftforge.config.schema import ModelArguments
from sftforge.errors import ConfigError
from sftforge.model.context import check_context_length
from sftforge.model.load import load_model

LINEAR = {"rope_type": "linear", "factor": 2.0}


def model_args(path: Path, **kwargs: object) -> ModelArguments:
    # "auto" is resolved by the config loader, which these direct calls skip
    return ModelArguments(model_name_or_path=str(path), attn_implementation="sdpa", **kwargs)


def limit_of(path: Path) -> int:
    return json.loads((path / "config.json").read_text())["max_position_embeddings"]


def test_max_length_within_the_model_says_nothing(tiny_model_dir: Path) -> None:
    assert check_context_length(model_args(tiny_model_dir), limit_of(tiny_model_dir)) == []


def test_past_the_model_without_rope_scaling_is_an_error_naming_max_length(tiny_model_dir: Path) -> None:
    limit = limit_of(tiny_model_dir)
    with pytest.raises(ConfigError) as err:
        check_context_length(model_args(tiny_model_dir), 2 * limit + 1)
    text = str(err.value)
    assert err.value.source == "max_length"
    assert f"max_length: {2 * limit + 1} is more than the model's max_position_embeddings ({limit})" in text
    assert f"Use max_length: {limit} or less" in text and "{rope_type: yarn, factor: 3.0}" in text


def test_past_the_model_with_the_recipes_rope_scaling_is_a_warning(tiny_model_dir: Path) -> None:
    limit = limit_of(tiny_model_dir)
    notes = check_context_length(model_args(tiny_model_dir, rope_scaling=LINEAR), 2 * limit)
    assert notes == [
        f"⚠ max_length {2 * limit} > the model's max_position_embeddings {limit}: positions past it rely on "
        "the recipe's RoPE scaling (linear, factor 2); check the results at long lengths"
    ]


def test_past_the_model_with_its_own_rope_scaling_is_a_warning(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = json.loads((tiny_model_dir / "config.json").read_text())
    config["rope_scaling"] = {
        "rope_type": "yarn",
        "factor": 4.0,
    }  # as Qwen2.5's model cards tell users to add
    (tmp_path / "config.json").write_text(json.dumps(config))
    notes = check_context_length(model_args(tmp_path), 2 * config["max_position_embeddings"])
    assert len(notes) == 1 and "the model's RoPE scaling (yarn, factor 4)" in notes[0]


def test_train_refuses_before_reading_any_data(tiny_model_dir: Path, tmp_path: Path) -> None:
    from sftforge.config import load_config
    from sftforge.train.run import run_training

    missing = tmp_path / "never-read.jsonl"
    missing.write_text("not json at all\n")  # a data error would show if the data were read first
    cfg = load_config(None, ["--model_name_or_path", str(tiny_model_dir), "--train_data_path", str(missing),
                             "--output_dir", str(tmp_path / "out"), "--max_length", str(4 * limit_of(tiny_model_dir))])  # fmt: skip
    with pytest.raises(ConfigError, match="is more than the model's max_position_embeddings"):
        run_training(cfg)


def test_rope_scaling_reaches_the_loaded_model_and_its_saved_config(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    import torch
    from transformers import AutoConfig

    plain = load_model(model_args(tiny_model_dir), False)
    scaled = load_model(model_args(tiny_model_dir, rope_scaling=LINEAR), False)
    params = scaled.config.rope_parameters
    assert params["rope_type"] == "linear" and params["factor"] == 2.0
    assert params["rope_theta"] == plain.config.rope_parameters["rope_theta"]  # the model's own base is kept
    # The rotary embedding was built from it: linear scaling halves every frequency
    torch.testing.assert_close(scaled.model.rotary_emb.inv_freq, plain.model.rotary_emb.inv_freq / 2)
    assert scaled.config._attn_implementation == plain.config._attn_implementation
    scaled.config.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).rope_parameters["rope_type"] == "linear"


def test_rope_scaling_reaches_a_model_built_from_a_config(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    args = ModelArguments(
        config_name=str(tiny_model_dir / "config.json"), attn_implementation="sdpa", rope_scaling=LINEAR
    )
    model = load_model(args, False, tokenizer=AutoTokenizer.from_pretrained(tiny_model_dir))
    assert model.config.rope_parameters["rope_type"] == "linear"


def test_a_mapping_transformers_refuses_is_a_config_error_naming_the_key(tiny_model_dir: Path) -> None:
    args = model_args(
        tiny_model_dir, rope_scaling={"rope_type": "llama3", "factor": 2.0}
    )  # no low_freq_factor
    with pytest.raises(ConfigError, match=r"rope_scaling: Missing required keys .*low_freq_factor"):
        load_model(args, False)
