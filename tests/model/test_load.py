"""Tokenizer and model loading: chat template choice, end-of-turn detection, safe pad token, use_cache."""

from __future__ import annotations

import pytest

from sftforge.config.schema import DataArguments, ModelArguments
from sftforge.data.templates import DEFAULT_CHAT_TEMPLATE
from sftforge.errors import ConfigError
from sftforge.model.load import _ensure_pad_token, load_model, load_tokenizer


def test_tokenizer_bundle_uses_own_template_and_finds_end_of_turn(tiny_model_dir):
    bundle = load_tokenizer(ModelArguments(model_name_or_path=str(tiny_model_dir)), DataArguments())
    assert bundle.template_source == "tokenizer"
    assert bundle.end_of_turn == ["<|im_end|>"]
    assert bundle.end_of_turn_ids == [bundle.tokenizer.convert_tokens_to_ids("<|im_end|>")]


def test_template_from_jinja_file_is_stored_on_the_tokenizer(tiny_model_dir, tmp_path):
    path = tmp_path / "t.jinja"
    path.write_text(DEFAULT_CHAT_TEMPLATE.replace("# Tools", "# Functions"))
    bundle = load_tokenizer(ModelArguments(model_name_or_path=str(tiny_model_dir)),
                            DataArguments(chat_template=str(path)))  # fmt: skip
    assert bundle.template_source == str(path)
    assert "# Functions" in bundle.tokenizer.chat_template


def test_missing_template_file_is_a_config_error(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="chat_template: file"):
        load_tokenizer(ModelArguments(model_name_or_path=str(tiny_model_dir)),
                       DataArguments(chat_template=str(tmp_path / "none.jinja")))  # fmt: skip


def test_pad_fallback_never_picks_the_end_of_turn_token(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.pad_token = None
    notes = _ensure_pad_token(tok, ["<|im_end|>"])
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token != "<|im_end|>"
    assert "tokenizer had none" in notes[0]


def test_unloadable_model_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot load"):
        load_tokenizer(ModelArguments(model_name_or_path=str(tmp_path / "nope")), DataArguments())


def test_use_cache_off_with_checkpointing_and_dtype(tiny_model_dir):
    args = ModelArguments(
        model_name_or_path=str(tiny_model_dir), torch_dtype="bfloat16", attn_implementation="sdpa"
    )
    model = load_model(args, gradient_checkpointing=True)
    assert model.config.use_cache is False
    assert next(model.parameters()).dtype.__str__() == "torch.bfloat16"
    assert load_model(ModelArguments(model_name_or_path=str(tiny_model_dir), torch_dtype="float32",
                                     attn_implementation="eager"), False).config.use_cache is not False  # fmt: skip


# ---------------------------------------------------------------- migrating recipes (issue 16)


def test_new_special_tokens_are_added_as_special_and_noted(tiny_model_dir):
    before = load_tokenizer(ModelArguments(model_name_or_path=str(tiny_model_dir)), DataArguments()).tokenizer
    bundle = load_tokenizer(
        ModelArguments(model_name_or_path=str(tiny_model_dir), new_special_tokens=["<obs>", "<|im_end|>"]),
        DataArguments(),
    )
    tok = bundle.tokenizer
    assert len(tok) == len(before) + 1  # <|im_end|> was already there
    assert tok("a<obs>b")["input_ids"].count(tok.convert_tokens_to_ids("<obs>")) == 1  # never split
    assert tok.decode(tok("a<obs>b")["input_ids"], skip_special_tokens=True) == "ab"
    assert (
        "new special tokens: 1 added (<obs>, <|im_end|>); 1 already in the vocabulary, now special"
        in bundle.notes
    )


def test_named_template_is_used_and_a_different_own_template_is_noted(tiny_model_dir):
    model = ModelArguments(model_name_or_path=str(tiny_model_dir))
    qwen = load_tokenizer(model, DataArguments(chat_template="qwen"))
    assert qwen.template_source == "qwen (shipped: qwen2_5.jinja)"
    assert "You are Qwen, created by Alibaba Cloud" in qwen.tokenizer.chat_template
    assert qwen.end_of_turn == ["<|im_end|>"]
    # the tiny model's own template is sftforge's ChatML, which writes no default system prompt
    assert qwen.notes[0].endswith(
        "the tokenizer's own template renders differently (template: tokenizer uses it)"
    )
    chatml = load_tokenizer(model, DataArguments(chat_template="chatml"))
    assert chatml.template_source == "chatml (sftforge's default ChatML)"
    assert (
        chatml.notes[0] == "chat template: chatml (sftforge's default ChatML)"
    )  # renders as its own: no note


def test_missing_model_folder_is_named_before_transformers_tries_the_hub(tmp_path):
    (tmp_path / "tiny-model").mkdir()
    with pytest.raises(ConfigError) as info:
        load_tokenizer(ModelArguments(model_name_or_path=str(tmp_path / "tiny-modl")), DataArguments())
    assert f"Did you mean {str(tmp_path / 'tiny-model')!r}?" in str(info.value)
    assert "Repo id" not in str(info.value)
