"""The Llama 2-style SentencePiece tokenizer: the real pipeline in both variants, byte fallback, determinism, and a
tiny llama/mistral folder that AutoTokenizer reloads to the very same tokenization."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sftforge.errors import ConfigError
from sftforge.testing import (
    LLAMA2_CHAT_TEMPLATE,
    build_tiny_model,
    default_corpus,
    init_model_cmd,
    train_sentencepiece_tokenizer,
)
from sftforge.testing.sentencepiece import BYTE_TOKENS

VARIANTS = ("legacy", "metaspace")
KINDS = {"legacy": "sentencepiece-legacy", "metaspace": "sentencepiece"}
TEXTS = [
    "Hello, world! It's 3.14 -- isn't it?",
    "你好，世界！今天天气很好。我们一起学习机器学习吧。",
    "emoji 😀🤗👍🏽 and flags 🇫🇷, math ∑∫√ and ünïcödé café",
    "line one\nline two\r\n\n\n  indented\ttab\t\tend\n",
    "   leading spaces and trailing spaces   ",
    "",
]
CONVERSATION = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "1 + 1 等于几？"},
    {"role": "assistant", "content": "1 + 1 = 2. 👍🏽"},
    {"role": "user", "content": "And 2 + 2?"},
    {"role": "assistant", "content": "It is 4."},
]


@pytest.fixture(scope="module", params=VARIANTS)
def variant(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def sp(variant: str):
    return train_sentencepiece_tokenizer(default_corpus(), variant=variant)


def tokens(tok, text: str) -> list[str]:
    return tok.convert_ids_to_tokens(tok(text, add_special_tokens=False)["input_ids"])


def test_pipeline_is_llama2s(sp, variant: str) -> None:
    spec = json.loads(sp.backend_tokenizer.to_str())
    assert spec["model"]["type"] == "BPE" and spec["model"]["byte_fallback"] and spec["model"]["fuse_unk"]
    assert [t["content"] for t in spec["added_tokens"]] == ["<unk>", "<s>", "</s>"]
    assert sp.convert_tokens_to_ids(["<unk>", "<s>", "</s>", *BYTE_TOKENS]) == list(range(259))
    assert (sp.unk_token, sp.bos_token, sp.eos_token, sp.pad_token) == ("<unk>", "<s>", "</s>", None)
    if variant == "legacy":
        assert [n["type"] for n in spec["normalizer"]["normalizers"]] == ["Prepend", "Replace"]
        assert spec["pre_tokenizer"] is None
    else:
        assert spec["normalizer"] is None
        meta = spec["pre_tokenizer"]
        assert (meta["type"], meta["prepend_scheme"], meta["split"]) == ("Metaspace", "first", False)
    assert [d["type"] for d in spec["decoder"]["decoders"]] == ["Replace", "ByteFallback", "Fuse", "Strip"]
    assert sp("Hi")["input_ids"][0] == sp.bos_token_id  # a plain call prepends <s>, as Llama 2's does
    assert sp.chat_template == LLAMA2_CHAT_TEMPLATE


def test_words_carry_their_space_and_rare_characters_fall_back_to_bytes(sp, variant: str) -> None:
    assert tokens(sp, "the answer") == ["▁the", "▁answer"]  # pieces start at a word, with its "▁"
    assert tokens(sp, "\n") == ["▁", "<0x0A>"]  # newline is a byte token, as in Llama 2
    emoji = tokens(sp, "x👋🏽")
    assert emoji[-8:] == ["<0xF0>", "<0x9F>", "<0x91>", "<0x8B>", "<0xF0>", "<0x9F>", "<0x8F>", "<0xBD>"]
    assert "<unk>" not in tokens(sp, "".join(TEXTS))  # byte fallback: nothing is unknown
    # The variants differ after a special token: legacy gives every stretch its own "▁".
    after = tokens(sp, "<s>[INST]")
    assert after[:2] == (["<s>", "▁"] if variant == "legacy" else ["<s>", "<0x5B>"])


@pytest.mark.parametrize("text", TEXTS)
def test_plain_text_round_trips(sp, variant: str, text: str) -> None:
    decoded = sp.decode(sp(text, add_special_tokens=False)["input_ids"])
    if variant == "metaspace" and text.startswith(" "):
        # As with Llama 2 loaded by transformers: no "▁" is prepended to a text that starts with a space, and the
        # decoder strips one leading space anyway.
        assert decoded == text[1:]
    else:
        assert decoded == text


def test_training_is_deterministic(sp, variant: str) -> None:
    again = train_sentencepiece_tokenizer(default_corpus(), variant=variant)
    assert again.backend_tokenizer.to_str() == sp.backend_tokenizer.to_str()


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ConfigError, match="variant 'bpe' is unknown"):
        train_sentencepiece_tokenizer(["x"], variant="bpe")
    with pytest.raises(ConfigError, match="too small"):
        train_sentencepiece_tokenizer(["x"], vocab_size=100)


# ---------------------------------------------------------------------------------------------------------------
# Tiny models with it
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "mistral"])
def test_tiny_model_reloads_to_the_same_tokenization(arch: str, variant: str, sp, make_tiny_model) -> None:
    path = make_tiny_model(arch, tokenizer=KINDS[variant])
    tok = AutoTokenizer.from_pretrained(path)
    assert json.loads(tok.backend_tokenizer.to_str()) == json.loads((path / "tokenizer.json").read_text())
    assert json.loads(tok.backend_tokenizer.to_str()) == json.loads(sp.backend_tokenizer.to_str())
    for text in [*TEXTS, *default_corpus()[::11]]:
        assert tok(text)["input_ids"] == sp(text)["input_ids"]
    rendered = tok.apply_chat_template(CONVERSATION, tokenize=False)
    assert rendered.startswith("<s>[INST] <<SYS>>\nAnswer briefly.\n<</SYS>>\n\n1 + 1 等于几？ [/INST] 1 + 1")
    assert rendered.count("<s>") == 2 and rendered.endswith(" It is 4. </s>")

    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.model_type == arch and model.config.vocab_size == len(tok) == 1024
    assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == (1, 2, None)
    assert model.generation_config.eos_token_id == [2] and model.generation_config.pad_token_id == 0
    ids = tok.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True, return_tensors="pt")[
        "input_ids"
    ]
    assert torch.isfinite(model(input_ids=ids, labels=ids).loss)


def test_a_llama_tokenizer_class_would_be_rebuilt(tmp_path: Path, make_tiny_model) -> None:
    """Why the folder names `TokenizersBackend`: transformers 5 builds `LlamaTokenizer` for a llama config from
    the vocabulary with its own (Metaspace) pipeline, ignoring the legacy normalizer in tokenizer.json."""
    path = make_tiny_model("llama", tokenizer="sentencepiece-legacy")
    assert json.loads((path / "tokenizer_config.json").read_text())["tokenizer_class"] == "TokenizersBackend"
    relabelled = tmp_path / "relabelled"
    shutil.copytree(path, relabelled)
    config = json.loads((relabelled / "tokenizer_config.json").read_text())
    (relabelled / "tokenizer_config.json").write_text(
        json.dumps({**config, "tokenizer_class": "LlamaTokenizer"})
    )
    ours, rebuilt = AutoTokenizer.from_pretrained(path), AutoTokenizer.from_pretrained(relabelled)
    assert type(rebuilt).__name__ == "LlamaTokenizer"
    text = "<s>[INST] hi [/INST]"
    assert (
        ours(text, add_special_tokens=False)["input_ids"]
        != rebuilt(text, add_special_tokens=False)["input_ids"]
    )


def test_sentencepiece_is_refused_where_autotokenizer_would_replace_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="rebuilds qwen2 tokenizers"):
        build_tiny_model(tmp_path, arch="qwen2", tokenizer="sentencepiece")
    with pytest.raises(ConfigError, match="tokenizer 'wordpiece' is unknown"):
        build_tiny_model(tmp_path, arch="llama", tokenizer="wordpiece")


def test_init_model_builds_a_sentencepiece_llama(tmp_path: Path, capsys) -> None:
    parser = init_model_cmd.argparse.ArgumentParser()
    init_model_cmd.add_arguments(parser)
    out = tmp_path / "m"
    args = parser.parse_args(
        [str(out), "--arch", "mistral", "--tokenizer", "sentencepiece", "--vocab_size", "400"]
    )
    assert init_model_cmd.run(args) == 0
    assert "init-model: mistral (sentencepiece tokenizer), " in capsys.readouterr().out
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.convert_ids_to_tokens([0, 1, 2, 3]) == ["<unk>", "<s>", "</s>", "<0x00>"]
    assert len(tok) <= 400 and tok.chat_template == LLAMA2_CHAT_TEMPLATE
    assert parser.parse_args(["x"]).tokenizer == "bpe"
