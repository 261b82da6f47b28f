"""Tiny models of real architectures with a BPE tokenizer trained here, for tests, the offline demo and benchmarks.

Everything is built locally and deterministically (same arguments -> same tokenizer.json and same weights), and
saved as an ordinary Hugging Face folder that `AutoModelForCausalLM` / `AutoTokenizer.from_pretrained` load with
no network and no remote code.

The default tokenizer uses exactly Qwen2's pipeline (NFC, Qwen2's split regex, byte-level BPE). That is deliberate:
for qwen2-family configs `AutoTokenizer` ignores the saved class and rebuilds the pipeline as `Qwen2Tokenizer`, so
any other pipeline would tokenize differently after a reload. Other architectures load it as-is
(`TokenizersBackend`), so they can also get a Llama 2-style SentencePiece tokenizer (`tokenizer="sentencepiece"`,
see `sentencepiece.py`) with Llama 2's chat template.

torch and transformers are imported inside functions so that importing this module (the CLI does, for `--arch`
choices) stays cheap.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftforge.data.templates import DEFAULT_CHAT_TEMPLATE, DEFAULT_END_OF_TURN
from sftforge.errors import ConfigError
from sftforge.testing.corpus import default_corpus
from sftforge.testing.sentencepiece import train_sentencepiece_tokenizer

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedConfig, PreTrainedTokenizerFast

PAD_TOKEN = "<|endoftext|>"
# "<|im_end|>": generation stops at the end of the assistant turn, as in Qwen2 instruct.
EOS_TOKEN = DEFAULT_END_OF_TURN
SPECIAL_TOKENS = (PAD_TOKEN, "<|im_start|>", EOS_TOKEN)  # ids 0, 1, 2
# Single tokens, but not "special": skip_special_tokens=True must keep them, as Qwen2/Qwen3 do.
EXTRA_TOKENS = ("<think>", "</think>", "<tool_call>", "</tool_call>")
# Qwen2's pre-tokenizer regex (see the module docstring for why we must use exactly this one).
QWEN2_SPLIT_REGEX = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS) + len(EXTRA_TOKENS)  # every byte must stay encodable


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------------------------


def _without_added_tokens(texts: Iterable[str], extra: tuple[str, ...] = ()) -> Iterator[str]:
    """Cut the special/added tokens out of the training text: they are atomic, so they must not shape merges."""
    pattern = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS + extra + EXTRA_TOKENS))
    for text in texts:
        for piece in pattern.split(text):
            if piece:
                yield piece


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 1024,
    chat_template: str = DEFAULT_CHAT_TEMPLATE,
    *,
    extra_special_tokens: Iterable[str] = (),
    model_max_length: int = 1024,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `texts`; `vocab_size` counts every token (a small corpus may give fewer).

    Special tokens: pad `<|endoftext|>` (id 0), `<|im_start|>` (1), eos `<|im_end|>` (2); no BOS, as in Qwen2;
    then `extra_special_tokens` (ids 3, 4, ...: markers another chat template writes).
    `<think>`, `</think>`, `<tool_call>`, `</tool_call>` are single non-special tokens (the last ids).
    Any UTF-8 text round-trips: decode(encode(t)) == NFC(t).
    """
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    extra = tuple(t for t in dict.fromkeys(extra_special_tokens) if t not in SPECIAL_TOKENS + EXTRA_TOKENS)
    specials = SPECIAL_TOKENS + extra
    if vocab_size < MIN_VOCAB_SIZE + len(extra):
        raise ConfigError(
            f"vocab_size={vocab_size} is too small: a byte-level tokenizer needs at least "
            f"{MIN_VOCAB_SIZE + len(extra)} (256 bytes + {len(specials) + len(EXTRA_TOKENS)} special/added tokens)."
        )
    backend = Tokenizer(models.BPE(fuse_unk=False, byte_fallback=False))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(EXTRA_TOKENS),  # the extra tokens are appended after training
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, seen in the corpus or not
        min_frequency=2,
        show_progress=False,
    )
    backend.train_from_iterator(_without_added_tokens(texts, extra), trainer=trainer)
    # Same meaning as the trainer's None, but spelled as Qwen2Tokenizer spells it, so a reload is identical.
    backend.model.continuing_subword_prefix = ""
    backend.model.end_of_word_suffix = ""
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in EXTRA_TOKENS])

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        # Qwen2Tokenizer (what AutoTokenizer rebuilds for qwen2 configs) defaults unk to <|endoftext|>; name it
        # here too so the tokenizer is the same before and after a reload. Byte-level BPE never emits it.
        unk_token=PAD_TOKEN,
        extra_special_tokens=[SPECIAL_TOKENS[1], EOS_TOKEN, *extra],  # as Qwen2.5's additional_special_tokens
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,  # cleanup would turn "a ." into "a." and break exact round trips
        padding_side="right",
    )
    tokenizer.chat_template = chat_template
    return tokenizer


# ---------------------------------------------------------------------------------------------------------------
# Architectures
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TinyDims:
    """What every architecture's config builder receives."""

    vocab_size: int
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128
    max_position_embeddings: int = 1024
    pad_token_id: int | None = 0
    eos_token_id: int = 2
    bos_token_id: int | None = None  # ChatML adds no BOS, so the config names none either

    def common(self) -> dict[str, Any]:
        return {
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "intermediate_size": self.intermediate_size,
            "max_position_embeddings": self.max_position_embeddings,
            "pad_token_id": self.pad_token_id,
            "eos_token_id": self.eos_token_id,
            "bos_token_id": self.bos_token_id,
        }

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def _qwen2(d: TinyDims) -> PreTrainedConfig:
    from transformers import Qwen2Config

    return Qwen2Config(**d.common(), tie_word_embeddings=True)  # tied like Qwen2.5-0.5B/1.5B


def _llama(d: TinyDims) -> PreTrainedConfig:
    from transformers import LlamaConfig

    return LlamaConfig(**d.common(), head_dim=d.head_dim, tie_word_embeddings=False)


def _mistral(d: TinyDims) -> PreTrainedConfig:
    from transformers import MistralConfig

    return MistralConfig(**d.common(), head_dim=d.head_dim, sliding_window=None, tie_word_embeddings=False)


def _qwen3(d: TinyDims) -> PreTrainedConfig:
    from transformers import Qwen3Config

    # head_dim defaults to 128 in Qwen3 (not hidden/heads), so it must be given.
    return Qwen3Config(**d.common(), head_dim=d.head_dim, tie_word_embeddings=True)


def _gemma(d: TinyDims) -> PreTrainedConfig:
    from transformers import GemmaConfig

    # Gemma (not Gemma2): no logit soft-capping or sliding window, so sdpa is exact. head_dim defaults to 256.
    return GemmaConfig(**d.common(), head_dim=d.head_dim, tie_word_embeddings=True)


def _qwen2_moe(d: TinyDims) -> PreTrainedConfig:
    from transformers import Qwen2MoeConfig

    return Qwen2MoeConfig(
        **d.common(),
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=max(d.intermediate_size // 2, 1),
        shared_expert_intermediate_size=d.intermediate_size,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        tie_word_embeddings=False,
    )


def _mixtral(d: TinyDims) -> PreTrainedConfig:
    from transformers import MixtralConfig

    return MixtralConfig(
        **d.common(),
        head_dim=d.head_dim,
        num_local_experts=4,
        num_experts_per_tok=2,
        sliding_window=None,
        tie_word_embeddings=False,
    )


# Short name -> config builder. "qwen2" is the default everywhere; the MoE ones are qwen2_moe and mixtral.
ARCHITECTURES: dict[str, Callable[[TinyDims], PreTrainedConfig]] = {
    "qwen2": _qwen2,
    "llama": _llama,
    "mistral": _mistral,
    "qwen3": _qwen3,
    "gemma": _gemma,
    "qwen2_moe": _qwen2_moe,
    "mixtral": _mixtral,
}


# ---------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------

# Tokenizer kinds: our byte-level BPE (ChatML, Qwen2's pipeline), or a Llama 2-style SentencePiece BPE (Llama 2's chat
# template) as transformers builds it (Metaspace) or as Llama 2 / Mistral v0.1's tokenizer.json holds it (legacy).
TOKENIZERS = ("bpe", "sentencepiece", "sentencepiece-legacy")
# AutoTokenizer rebuilds these architectures' tokenizers from the vocabulary with a byte-level pipeline.
_BYTE_LEVEL_ONLY = {"qwen2"}


def _train_tokenizer(kind: str, texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    if kind == "bpe":
        return train_bpe_tokenizer(texts, vocab_size=vocab_size)
    variant = "legacy" if kind == "sentencepiece-legacy" else "metaspace"
    return train_sentencepiece_tokenizer(texts, vocab_size=vocab_size, variant=variant)


def build_tiny_model(
    output_dir: str | Path,
    arch: str = "qwen2",
    texts: Iterable[str] | None = None,
    vocab_size: int = 1024,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    seed: int = 0,
    dtype: torch.dtype | str = "float32",
    tokenizer: str = "bpe",
) -> Path:
    """Train a tokenizer on `texts` (default: `default_corpus()`), build a randomly initialised `arch` model,
    and save both (safetensors, chat template, generation_config with the end-of-turn ids) to `output_dir`.

    `tokenizer`: "bpe" (byte-level, ChatML template, no BOS), or "sentencepiece" / "sentencepiece-legacy"
    (Llama 2-style, Llama 2's chat template, `<s>` written by the template; not for qwen2, see TOKENIZERS)."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    if arch not in ARCHITECTURES:
        raise ConfigError(f"arch {arch!r} is unknown. Choose one of: {', '.join(ARCHITECTURES)}.")
    if tokenizer not in TOKENIZERS:
        raise ConfigError(f"tokenizer {tokenizer!r} is unknown. Choose one of: {', '.join(TOKENIZERS)}.")
    if tokenizer != "bpe" and arch in _BYTE_LEVEL_ONLY:
        raise ConfigError(
            f"tokenizer {tokenizer!r} cannot go with arch {arch!r}: AutoTokenizer rebuilds {arch} tokenizers as "
            "byte-level ones, so the saved SentencePiece tokenizer would not come back. Use arch 'llama' or "
            "'mistral'."
        )
    if hidden_size % num_heads or num_heads % num_kv_heads:
        raise ConfigError(
            f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads}), "
            f"and num_heads by num_kv_heads ({num_kv_heads})."
        )
    torch_dtype = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if not isinstance(torch_dtype, torch.dtype):
        raise ConfigError(f"dtype {dtype!r} is not a torch dtype (e.g. 'float32', 'bfloat16').")

    tok = _train_tokenizer(tokenizer, default_corpus() if texts is None else texts, vocab_size)
    # SentencePiece: no pad token, as in Llama 2 (sftforge's loader picks <unk>, and so does generation here).
    pad_id, eos_id = tok.pad_token_id, tok.eos_token_id
    dims = TinyDims(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=tok.model_max_length,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        bos_token_id=tok.bos_token_id,
    )
    config = ARCHITECTURES[arch](dims)

    # Seed only around the init so the weights depend on the arguments, and restore the caller's RNG state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    model = model.to(torch_dtype)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id,
        # ChatML: end of turn first, then end of text; SentencePiece: </s> ends both.
        eos_token_id=[eos_id, pad_id] if pad_id is not None else [eos_id],
        pad_token_id=pad_id if pad_id is not None else tok.unk_token_id,
        do_sample=False,
    )

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out
