"""Tiny models and tokenizers built locally (no network), for tests, the offline demo and benchmarks."""

from sftforge.testing.corpus import default_corpus
from sftforge.testing.tiny import (
    ARCHITECTURES,
    EOS_TOKEN,
    EXTRA_TOKENS,
    PAD_TOKEN,
    SPECIAL_TOKENS,
    TinyDims,
    build_tiny_model,
    train_bpe_tokenizer,
)

__all__ = [
    "ARCHITECTURES",
    "EOS_TOKEN",
    "EXTRA_TOKENS",
    "PAD_TOKEN",
    "SPECIAL_TOKENS",
    "TinyDims",
    "build_tiny_model",
    "default_corpus",
    "train_bpe_tokenizer",
]
