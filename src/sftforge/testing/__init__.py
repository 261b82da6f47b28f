"""Tiny models and tokenizers built locally (no network): `sftforge init-model`, `sftforge train-tokenizer`, the
offline demo, benchmarks and tests. Helpers only tests use live under tests/support/."""

from sftforge.testing.corpus import default_corpus
from sftforge.testing.sentencepiece import LLAMA2_CHAT_TEMPLATE, train_sentencepiece_tokenizer
from sftforge.testing.tiny import (
    ARCHITECTURES,
    EOS_TOKEN,
    EXTRA_TOKENS,
    PAD_TOKEN,
    SPECIAL_TOKENS,
    TOKENIZERS,
    TinyDims,
    build_tiny_model,
    train_bpe_tokenizer,
)

__all__ = [
    "ARCHITECTURES",
    "EOS_TOKEN",
    "EXTRA_TOKENS",
    "LLAMA2_CHAT_TEMPLATE",
    "PAD_TOKEN",
    "SPECIAL_TOKENS",
    "TOKENIZERS",
    "TinyDims",
    "build_tiny_model",
    "default_corpus",
    "train_bpe_tokenizer",
    "train_sentencepiece_tokenizer",
]
