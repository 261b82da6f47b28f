"""Tiny models and tokenizers built locally (no network), for tests, the offline demo and benchmarks."""

from sftforge.testing.corpus import default_corpus
from sftforge.testing.families import (
    EDGE_CASES,
    FAMILIES,
    OWN_TEMPLATE_FAMILY,
    TEMPLATE_FAMILY,
    FamilySpec,
    family_tokenizer,
)
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
    "EDGE_CASES",
    "EOS_TOKEN",
    "EXTRA_TOKENS",
    "FAMILIES",
    "LLAMA2_CHAT_TEMPLATE",
    "OWN_TEMPLATE_FAMILY",
    "PAD_TOKEN",
    "SPECIAL_TOKENS",
    "TEMPLATE_FAMILY",
    "TOKENIZERS",
    "FamilySpec",
    "TinyDims",
    "build_tiny_model",
    "default_corpus",
    "family_tokenizer",
    "train_bpe_tokenizer",
    "train_sentencepiece_tokenizer",
]
