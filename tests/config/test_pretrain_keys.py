"""Config keys of pretraining and training from scratch: aliases from run_clm.py, defaults, and errors that name
the key and say what to do."""

from __future__ import annotations

import json

import pytest

from sftforge.config import load_config
from sftforge.config.validate_pt import config_only_folder, parse_overrides
from sftforge.errors import ConfigError


@pytest.fixture
def data(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text('{"text": "hello"}\n')
    return str(f)


def _load(*args: str):
    return load_config(None, list(args))


def test_run_clm_aliases_and_pt_defaults(data, tmp_path):
    cfg = _load("--model_name_or_path", "m", "--train_files", data, "--validation_files", data,
                "--stage", "pt", "--block_size", "512", "--tokenizer_name", "tok", "--output_dir", str(tmp_path / "o"))  # fmt: skip
    assert cfg.data.max_length == 512 and cfg.data.eval_data_path == [data]
    assert cfg.model.tokenizer_name_or_path == "tok"
    assert cfg.data.packing is True  # stage pt concatenates documents into blocks by default
    assert any("stage: pt" in n for n in cfg.notes)


def test_pack_false_and_validation_split_percentage(data, tmp_path):
    cfg = _load("--model_name_or_path", "m", "--train_data_path", data, "--stage", "pt", "--pack", "false",
                "--validation_split_percentage", "5", "--output_dir", str(tmp_path / "o"))  # fmt: skip
    assert cfg.data.packing is False and cfg.data.eval_split_ratio == pytest.approx(0.05)
    assert cfg.training.eval_strategy == "epoch"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--stage", "pt", "--validation_split_percentage", "5", "--eval_split_ratio", "0.1"), "keep one"),
        (("--stage", "pt", "--validation_split_percentage", "120"), r"validation_split_percentage: 120"),
        (("--document_isolation", "true"), "document_isolation: applies to pretraining only; set stage: pt"),
        (("--stage", "pt", "--pack", "false", "--document_isolation", "true"), "remove document_isolation"),
        (
            (
                "--stage",
                "pretrain",
            ),
            "stage: 'pretrain' is not one of sft, pt, auto",
        ),
        (("--config_overrides", "n_layer=2"), "config_overrides: applies to a model built from config_name"),
        (("--block_size", "64", "--max_length", "64"), "keep only one"),
    ],
)
def test_errors_name_the_key(data, args, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        _load(
            "--model_name_or_path", "m", "--train_data_path", data, "--output_dir", str(tmp_path / "o"), *args
        )


def test_from_scratch_keys(data, tmp_path):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    cfg = _load("--config_name", str(conf), "--config_overrides", "num_hidden_layers=1,hidden_size=32",
                "--tokenizer_name", "tok", "--train_data_path", data, "--output_dir", str(tmp_path / "o"))  # fmt: skip
    assert cfg.model.config_name == str(conf) and cfg.model.model_name_or_path is None
    with pytest.raises(ConfigError, match="config_name and model_name_or_path are both set"):
        _load("--config_name", str(conf), "--model_name_or_path", "m", "--train_data_path", data)
    with pytest.raises(ConfigError, match="config_overrides: 'hidden_size' is not key=value"):
        _load("--config_name", str(conf), "--config_overrides", "hidden_size", "--train_data_path", data)
    with pytest.raises(ConfigError, match="or config_name to train from scratch"):
        _load("--train_data_path", data)


def test_config_only_folder_is_read_as_config_name(data, tmp_path):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    assert config_only_folder(str(conf))
    cfg = _load(
        "--model_name_or_path", str(conf), "--train_data_path", data, "--output_dir", str(tmp_path / "o")
    )
    assert cfg.model.config_name == str(conf) and cfg.model.model_name_or_path is None
    assert any("no weights" in n and "config_name" in n for n in cfg.notes)
    (conf / "model.safetensors").write_bytes(b"")
    assert not config_only_folder(str(conf))


def test_parse_overrides():
    assert parse_overrides("a=1, b=x,") == {"a": "1", "b": "x"}
    with pytest.raises(ValueError, match="'c' is not key=value"):
        parse_overrides("a=1,c")


@pytest.mark.parametrize("stage", ["sft", "pt"])
def test_written_config_reloads_the_same(data, tmp_path, stage):
    from sftforge.config import config_to_dict, dump_config

    cfg = _load("--model_name_or_path", "m", "--train_data_path", data, "--stage", stage,
                "--validation_split_percentage", "10", "--output_dir", str(tmp_path / "o"))  # fmt: skip
    path = dump_config(cfg, tmp_path / "resolved.yaml")
    assert config_to_dict(load_config(path)) == config_to_dict(cfg)


def test_pt_only_defaults_match_the_schema():
    import dataclasses

    from sftforge.config.schema import DataArguments
    from sftforge.config.validate_pt import _DEFAULTS, PT_ONLY_KEYS

    fields = {f.name: f.default for f in dataclasses.fields(DataArguments)}
    assert {k: fields[k] for k in PT_ONLY_KEYS} == _DEFAULTS
