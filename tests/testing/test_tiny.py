"""Tiny models: every architecture builds, reloads offline with the Auto classes, trains and generates; the
tokenizer round-trips any text and survives the reload unchanged; builds are deterministic."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from sftforge.errors import ConfigError, DataError
from sftforge.testing import (
    ARCHITECTURES,
    EOS_TOKEN,
    EXTRA_TOKENS,
    PAD_TOKEN,
    SPECIAL_TOKENS,
    build_tiny_model,
    default_corpus,
    init_model_cmd,
    train_bpe_tokenizer,
)

SRC = Path(__file__).resolve().parents[2] / "src"
MOE_ARCHS = {"qwen2_moe", "mixtral"}
ROUND_TRIP = [
    "Hello, world! It's 3.14 -- isn't it?",
    "你好，世界！今天天气很好。我们一起学习机器学习吧。",
    "emoji 😀🤗👍🏽 and flags 🇫🇷, math ∑∫√ and ünïcödé café",
    "line one\nline two\r\n\n\n  indented\ttab\t\tend\n",
    "   leading spaces and trailing spaces   ",
    " a . b , c 's 're  --  (x) [y] {z}",
    "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n<think>\nhm\n</think>\n\nhi<|im_end|>\n",
    '<tool_call>{"name": "get_weather", "arguments": {"city": "北京"}}</tool_call>',
    "",
    "\u00a0non-breaking\u3000ideographic space\u200bzero-width",
]
CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "1 + 1 等于几？"},
    {"role": "assistant", "content": "1 + 1 = 2."},
]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(default_corpus())


# ---------------------------------------------------------------------------------------------------------------
# Every architecture
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_arch_builds_loads_trains_and_generates(arch: str, make_tiny_model) -> None:
    path = make_tiny_model(arch)
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)

    assert model.config.model_type == arch
    assert model.config._attn_implementation == "sdpa"
    assert tok.is_fast
    assert model.config.vocab_size == len(tok) == 1024
    # ~130k (tied) to ~335k (MoE) parameters: embeddings are 1024 x 64 = 65,536 each.
    assert 100_000 < model.num_parameters() < 400_000

    im_end = tok.convert_tokens_to_ids(EOS_TOKEN)
    pad = tok.convert_tokens_to_ids(PAD_TOKEN)
    assert model.config.eos_token_id == im_end == tok.eos_token_id
    assert model.config.pad_token_id == pad == tok.pad_token_id
    assert model.config.bos_token_id is None and tok.bos_token is None
    assert model.generation_config.eos_token_id == [im_end, pad]
    assert model.generation_config.pad_token_id == pad

    batch = tok.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True, return_tensors="pt")
    ids = batch["input_ids"]
    out = model(input_ids=ids, labels=ids)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

    prompt = tok.apply_chat_template(
        CONVERSATION[:2], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        generated = model.generate(**prompt, max_new_tokens=5, min_new_tokens=5)
    assert generated.shape == (1, prompt["input_ids"].shape[1] + 5)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_reloaded_tokenizer_is_the_trained_one(arch: str, make_tiny_model, tokenizer) -> None:
    """AutoTokenizer rebuilds qwen2 tokenizers as Qwen2Tokenizer; whatever class comes back must tokenize the same."""
    path = make_tiny_model(arch)
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.get_vocab() == tokenizer.get_vocab()
    assert tok.added_tokens_decoder == tokenizer.added_tokens_decoder
    assert tok.special_tokens_map == tokenizer.special_tokens_map
    assert tok.chat_template == tokenizer.chat_template
    assert tok.model_max_length == 1024
    saved = json.loads((path / "tokenizer.json").read_text(encoding="utf-8"))
    loaded = json.loads(tok.backend_tokenizer.to_str())
    assert loaded == saved
    for text in default_corpus()[::7] + ROUND_TRIP:
        assert tok.encode(text) == tokenizer.encode(text)


@pytest.mark.parametrize("arch", sorted(MOE_ARCHS))
def test_moe_router_aux_loss(arch: str, make_tiny_model) -> None:
    model = AutoModelForCausalLM.from_pretrained(make_tiny_model(arch))
    ids = torch.arange(3, 35).reshape(2, 16)
    out = model(input_ids=ids, labels=ids, output_router_logits=True)
    assert torch.isfinite(out.aux_loss) and out.aux_loss > 0


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_round_trip(text: str, tokenizer, tiny_model_dir: Path) -> None:
    reloaded = AutoTokenizer.from_pretrained(tiny_model_dir)
    for tok in (tokenizer, reloaded):
        ids = tok.encode(text, add_special_tokens=True)
        assert tok.decode(ids, skip_special_tokens=False) == text


def test_round_trip_normalises_to_nfc(tokenizer) -> None:
    decomposed = "cafe\u0301 n\u0303"  # NFC like Qwen2: combining marks are composed
    assert tokenizer.decode(tokenizer.encode(decomposed)) == unicodedata.normalize("NFC", decomposed)


def test_special_and_added_tokens_are_single_tokens(tokenizer) -> None:
    for i, token in enumerate(SPECIAL_TOKENS):
        assert tokenizer.encode(token) == [i]
        # Never split, nor merged with its neighbours.
        assert tokenizer.encode(f"x{token}y") == [*tokenizer.encode("x"), i, *tokenizer.encode("y")]
    for token in EXTRA_TOKENS:
        token_id = tokenizer.convert_tokens_to_ids(token)
        assert tokenizer.encode(token) == [token_id]
        assert tokenizer.encode(f"a{token}b") == [*tokenizer.encode("a"), token_id, *tokenizer.encode("b")]
    assert (tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token) == (EOS_TOKEN, PAD_TOKEN, None)
    # Turn markers are special (dropped by skip_special_tokens); reasoning/tool markers are kept, as in Qwen3.
    text = "<|im_start|>assistant\n<think>x</think><tool_call>{}</tool_call><|im_end|>"
    assert tokenizer.decode(tokenizer.encode(text), skip_special_tokens=True) == (
        "assistant\n<think>x</think><tool_call>{}</tool_call>"
    )
    assert tokenizer.encode("hello") == tokenizer("hello")["input_ids"]  # no BOS/EOS added


def test_chat_template_renders_chatml(tiny_model_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = tok.apply_chat_template(CONVERSATION, tokenize=False)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n1 + 1 等于几？<|im_end|>\n"
        "<|im_start|>assistant\n1 + 1 = 2.<|im_end|>\n"
    )
    ids = tok.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True)["input_ids"]
    assert ids == tok.encode(text)
    im_end = tok.encode(EOS_TOKEN)
    assert len(im_end) == 1
    assert im_end[0] == GenerationConfig.from_pretrained(tiny_model_dir).eos_token_id[0]
    assert ids.count(im_end[0]) == 3
    assert (tiny_model_dir / "chat_template.jinja").is_file()


def test_vocab_size_counts_every_token(tokenizer) -> None:
    assert len(tokenizer) == 1024
    assert tokenizer.convert_ids_to_tokens(list(range(1020, 1024))) == list(EXTRA_TOKENS)
    small = train_bpe_tokenizer(["just a few words", "just a few words"], vocab_size=512)
    assert len(small) < 512  # a tiny corpus stops early: vocab_size is an upper bound
    # Every byte is in the alphabet, so even text unlike the corpus round-trips.
    assert small.decode(small.encode("anything 你好 😀")) == "anything 你好 😀"


def test_custom_chat_template_is_stored() -> None:
    tok = train_bpe_tokenizer(
        ["hello world"] * 3, vocab_size=300, chat_template="{{ messages[0]['content'] }}"
    )
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "hi"


def test_vocab_too_small_is_refused() -> None:
    with pytest.raises(ConfigError, match="vocab_size=100 is too small"):
        train_bpe_tokenizer(["x"], vocab_size=100)


# ---------------------------------------------------------------------------------------------------------------
# build_tiny_model
# ---------------------------------------------------------------------------------------------------------------


def test_builds_are_deterministic(tmp_path: Path, tiny_model_dir: Path) -> None:
    again = build_tiny_model(tmp_path / "again")
    assert (again / "tokenizer.json").read_bytes() == (tiny_model_dir / "tokenizer.json").read_bytes()
    assert (again / "config.json").read_bytes() == (tiny_model_dir / "config.json").read_bytes()
    a, b = _weights(again), _weights(tiny_model_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    other = _weights(build_tiny_model(tmp_path / "seed1", seed=1))
    assert any(not torch.equal(a[k], other[k]) for k in a)


def test_build_is_deterministic_across_processes_and_offline(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A fresh interpreter (other hash seed, hub offline) builds and loads the very same model."""
    script = (
        "import sys; from sftforge.testing import build_tiny_model\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "p = build_tiny_model(sys.argv[1])\n"
        "AutoModelForCausalLM.from_pretrained(p); AutoTokenizer.from_pretrained(p)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC), "PYTHONHASHSEED": "123", "HF_HUB_OFFLINE": "1"}
    env["TRANSFORMERS_OFFLINE"] = "1"
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "sub")], env=env, check=True, timeout=120)
    sub = tmp_path / "sub"
    assert (sub / "tokenizer.json").read_bytes() == (tiny_model_dir / "tokenizer.json").read_bytes()
    a, b = _weights(sub), _weights(tiny_model_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_build_leaves_global_rng_alone(tmp_path: Path) -> None:
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    build_tiny_model(tmp_path / "m", vocab_size=300, texts=["some text", "some more text"])
    assert torch.equal(torch.get_rng_state(), state)


def test_build_options(tmp_path: Path) -> None:
    path = build_tiny_model(
        tmp_path / "m",
        arch="llama",
        texts=["custom corpus line", "另一行文本"] * 5,
        vocab_size=300,
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        intermediate_size=48,
        dtype=torch.bfloat16,
    )
    model = AutoModelForCausalLM.from_pretrained(path, dtype="auto")
    assert model.dtype == torch.bfloat16
    c = model.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads) == (32, 1, 2, 1)
    assert c.vocab_size == len(AutoTokenizer.from_pretrained(path)) <= 300


def test_build_refuses_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="arch 'gpt5' is unknown"):
        build_tiny_model(tmp_path, arch="gpt5")
    with pytest.raises(ConfigError, match="divisible"):
        build_tiny_model(tmp_path, num_heads=3)
    with pytest.raises(ConfigError, match="not a torch dtype"):
        build_tiny_model(tmp_path, dtype="float33")


def test_default_corpus_is_stable_and_mixed() -> None:
    corpus = default_corpus()
    assert corpus == default_corpus()
    assert len(corpus) > 500
    joined = "".join(corpus)
    assert any("\u4e00" <= ch <= "\u9fff" for ch in joined)  # Chinese
    assert "<tool_call>" in joined and "<think>" in joined and "<|im_start|>" in joined


# ---------------------------------------------------------------------------------------------------------------
# sftforge init-model
# ---------------------------------------------------------------------------------------------------------------


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    init_model_cmd.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_init_model_command(tmp_path: Path, capsys) -> None:
    (tmp_path / "a.txt").write_text("plain text line\n\nanother line 中文\n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text(
        json.dumps({"messages": [{"role": "user", "content": "hi there"}], "n": 3}) + "\n\n", encoding="utf-8"
    )
    (tmp_path / "c.json").write_text(
        json.dumps([{"text": "json text"}, ["nested", {"x": "deep"}]]), encoding="utf-8"
    )
    corpus = [str(tmp_path / n) for n in ("a.txt", "b.jsonl", "c.json")]
    assert init_model_cmd.read_corpus(corpus) == [
        "plain text line",
        "another line 中文",
        "user",
        "hi there",
        "json text",
        "nested",
        "deep",
    ]

    out = tmp_path / "model"
    args = _parse(
        str(out), "--arch", "qwen3", "--corpus", *corpus, "--vocab_size", "300", "--hidden_size", "32"
    )
    assert init_model_cmd.run(args) == 0
    line = capsys.readouterr().out.strip()
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.model_type == "qwen3" and model.config.hidden_size == 32
    assert line == (
        f"init-model: qwen3, {model.num_parameters():,} parameters, vocab {model.config.vocab_size}, saved to {out}"
    )


def test_init_model_default_corpus_param_count(tmp_path: Path, capsys) -> None:
    for arch in ("qwen2", "mixtral"):  # tied and untied embeddings
        assert init_model_cmd.run(_parse(str(tmp_path / arch), "--arch", arch)) == 0
        n = AutoModelForCausalLM.from_pretrained(tmp_path / arch).num_parameters()
        assert f"{arch}, {n:,} parameters, vocab 1024," in capsys.readouterr().out


def test_init_model_bad_corpus(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        init_model_cmd.run(_parse(str(tmp_path / "m"), "--corpus", str(tmp_path / "missing.txt")))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{not json\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: invalid JSON"):
        init_model_cmd.read_corpus([str(bad)])
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataError, match="no text found"):
        init_model_cmd.read_corpus([str(empty)])
    assert not (tmp_path / "m").exists()


def test_init_model_arch_choices() -> None:
    with pytest.raises(SystemExit):
        _parse("out", "--arch", "gpt5")
    assert _parse("out").arch == "qwen2"
