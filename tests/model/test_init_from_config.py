"""Training from scratch: `config_name` (+ `config_overrides`) builds a seeded random model sized to the tokenizer."""

from __future__ import annotations

import json

import pytest
import torch

from sftforge.config.schema import DataArguments, ModelArguments
from sftforge.errors import ConfigError
from sftforge.model.load import load_model, load_tokenizer

CONFIG = {"model_type": "qwen2", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
          "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 99}  # fmt: skip


@pytest.fixture
def config_dir(tmp_path, tiny_model_dir):
    """A config-only folder with a tokenizer next to it (no weights)."""
    from transformers import AutoTokenizer

    folder = tmp_path / "scratch"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(CONFIG))
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    return folder


def _build(config_dir, overrides=None, seed=0):
    args = ModelArguments(config_name=str(config_dir), config_overrides=overrides, torch_dtype="float32",
                          attn_implementation="sdpa")  # fmt: skip
    bundle = load_tokenizer(args, DataArguments())  # the tokenizer falls back to the config folder
    torch.manual_seed(seed)
    return load_model(args, False, tokenizer=bundle.tokenizer), bundle.tokenizer


def test_random_init_is_seeded_and_sized_to_the_tokenizer(config_dir):
    model, tok = _build(config_dir)
    again, _ = _build(config_dir)
    other, _ = _build(config_dir, seed=1)
    assert model.config.vocab_size == len(tok) != CONFIG["vocab_size"]
    assert model.config.eos_token_id == tok.eos_token_id and model.config.pad_token_id == tok.pad_token_id
    first = model.get_input_embeddings().weight
    assert torch.equal(first, again.get_input_embeddings().weight)
    assert not torch.equal(first, other.get_input_embeddings().weight)


def test_config_overrides(config_dir):
    model, _ = _build(config_dir, "num_hidden_layers=2,hidden_size=48")
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 48
    with pytest.raises(ConfigError, match="config_overrides: .*n_layer"):
        _build(config_dir, "n_layer=2")
