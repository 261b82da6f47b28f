"""Calling the tokenizer fast, with exactly the ids of the ordinary calls.

- `PieceEncoder.encode(texts)` == `[tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]`;
- `decode_many(tokenizer, seqs)` == `[tokenizer.decode(s, skip_special_tokens=False,
  clean_up_tokenization_spaces=False) for s in seqs]`.

Speed comes from three things, each exact:
1. One batch call into the Rust tokenizer (it encodes a batch in parallel, and without transformers' per-encoding
   conversion to Python dicts, which costs more than the tokenization itself), when the tokenizer class adds
   nothing to that call.
2. A memo of texts already encoded (shortening a long conversation by its first rounds leaves most pieces as
   they were).
3. Splitting at added tokens (<|im_start|>, <|im_end|>, …) and memoising what lies between: the tokenizer itself
   cuts its input at added tokens first and encodes the parts independently, so a system prompt or a tool list
   repeated in every row is encoded once. Used only where that holds exactly: added tokens that match the raw text
   as written (not normalized, no lstrip/rstrip/single_word), a pre-tokenizer and normalizer that treat every
   part alike wherever it sits, and a probe that agrees.
"""

from __future__ import annotations

import json
import re
from typing import Any

# Pre-tokenizers / normalizers that act on each part the same whatever precedes it (Metaspace with
# prepend_scheme "first" and the Prepend normalizer do not).
_PART_LOCAL_PRE = {"ByteLevel", "Split", "Digits", "Punctuation", "Whitespace", "WhitespaceSplit", "Sequence"}
_PART_LOCAL_NORM = {"NFC", "NFD", "NFKC", "NFKD", "Lowercase", "Replace", "Sequence"}
_PROBES = (
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n  Hi  there\n\n<|im_end|>\n",
    "[INST] <<SYS>>\nbe brief\n<</SYS>>\n\nQ? [/INST] A. </s><s>[INST] more [/INST]",
    "<|start_header_id|>user<|end_header_id|>\n\nx = 1;\t y<|eot_id|><think>\nhm\n</think>\n\n ok",
)


class PieceEncoder:
    """Encodes lists of texts; keeps what it has seen (use one per batch of rows, not forever)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.backend = plain_backend(tokenizer)
        self.split = _added_token_splitter(tokenizer, self.backend) if self.backend is not None else None
        self.memo: dict[str, list[int]] = {}

    def encode(self, texts: list[str]) -> list[list[int]]:
        new = [t for t in dict.fromkeys(texts) if t not in self.memo]
        if new:
            if self.split is None:
                self.memo.update(zip(new, self._raw(new), strict=True))
            else:
                self._encode_by_parts(new)
        return [self.memo[t] for t in texts]

    def _encode_by_parts(self, texts: list[str]) -> None:
        split, token_ids = self.split
        parts = {t: split(t) for t in texts}
        unseen = [
            p
            for p in dict.fromkeys(p for ps in parts.values() for p in ps)
            if p not in self.memo and p not in token_ids
        ]
        self.memo.update(zip(unseen, self._raw(unseen), strict=True))
        for text, pieces in parts.items():
            ids: list[int] = []
            for part in pieces:
                ids += token_ids[part] if part in token_ids else self.memo[part]
            self.memo[text] = ids

    def _raw(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        if self.backend is None:
            return self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [e.ids for e in self.backend.encode_batch_fast(texts, add_special_tokens=False)]


def decode_many(tokenizer: Any, sequences: list[list[int]]) -> list[str]:
    backend = plain_backend(tokenizer)
    if backend is None:
        return [
            tokenizer.decode(seq, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            for seq in sequences
        ]
    return backend.decode_batch(sequences, skip_special_tokens=False)


def overlappable(tokenizer: Any) -> bool:
    """Whether batches may be tokenized on a helper thread while the next is rendered: the Rust tokenizer is
    called directly (it releases the GIL) and nothing will change its settings meanwhile."""
    return plain_backend(tokenizer) is not None


def plain_backend(tokenizer: Any) -> Any:
    """The `tokenizers.Tokenizer` behind a fast tokenizer whose __call__/decode add nothing to it, in the state
    that transformers' own call would leave it (no truncation, no padding, special tokens recognised); else None."""
    try:
        from transformers.tokenization_utils_base import PreTrainedTokenizerBase
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:
        return None
    cls = type(tokenizer)
    if not (
        isinstance(tokenizer, TokenizersBackend)
        and cls.__call__ is PreTrainedTokenizerBase.__call__
        and cls._encode_plus is TokenizersBackend._encode_plus
        and cls.decode is PreTrainedTokenizerBase.decode
        and cls._decode is TokenizersBackend._decode
        and not hasattr(tokenizer, "_switch_to_input_mode")
    ):
        return None
    backend = tokenizer.backend_tokenizer
    if (
        backend.truncation is not None
        or backend.padding is not None
        or backend.encode_special_tokens != bool(tokenizer.split_special_tokens)
        or not hasattr(backend, "encode_batch_fast")
    ):
        return None
    return backend


def _added_token_splitter(tokenizer: Any, backend: Any) -> tuple[Any, dict[str, list[int]]] | None:
    """(text → its parts, added token text → [id]) when encoding part by part is exact; else None."""
    added = backend.get_added_tokens_decoder()
    if not added or any(t.normalized or t.lstrip or t.rstrip or t.single_word for t in added.values()):
        return None
    spec = json.loads(backend.to_str())
    if not (
        _types(spec.get("pre_tokenizer")) <= _PART_LOCAL_PRE
        and _types(spec.get("normalizer")) <= _PART_LOCAL_NORM
    ):
        return None
    if any(
        p.get("type") == "ByteLevel" and p.get("add_prefix_space") for p in _nodes(spec.get("pre_tokenizer"))
    ):
        return None
    token_ids = {t.content: [i] for i, t in added.items() if t.content}
    # Leftmost, then longest — the tokenizer's own matching of added tokens.
    pattern = re.compile("(" + "|".join(map(re.escape, sorted(token_ids, key=len, reverse=True))) + ")")

    def split(text: str) -> list[str]:
        return [part for part in pattern.split(text) if part]

    for probe in _PROBES:  # the proof by example that the conditions above are enough for this tokenizer
        whole = backend.encode(probe, add_special_tokens=False).ids
        by_parts = [i for part in split(probe) for i in (token_ids.get(part) or _encode(backend, part))]
        if whole != by_parts:
            return None
    return split, token_ids


def _encode(backend: Any, text: str) -> list[int]:
    return backend.encode(text, add_special_tokens=False).ids


def _nodes(node: Any) -> list[dict]:
    if not node:
        return []
    children = node.get("pretokenizers") or node.get("normalizers") or []
    return [node] + [n for child in children for n in _nodes(child)]


def _types(node: Any) -> set[str]:
    return {n.get("type", "") for n in _nodes(node)}
