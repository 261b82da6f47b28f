"""Calling the tokenizer fast, with exactly the ids of the ordinary calls, and placing characters among them.

- `PieceEncoder.encode(texts)` == `[tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]`;
- `PieceEncoder.locate(texts, positions)`: those ids, and for each given character position a `Cut` saying which
  tokens lie wholly before it and which cross it — what the token offsets
  (`return_offsets_mapping`) say, mostly found without asking for them;
- `decode_many(tokenizer, seqs)` == `[tokenizer.decode(s, skip_special_tokens=False,
  clean_up_tokenization_spaces=False) for s in seqs]`; `PieceEncoder.decode_runs` decodes token runs as they read
  inside a longer text (no leading space dropped by the decoder).

Speed comes from four things, each exact:
1. One batch call into the Rust tokenizer (it encodes a batch in parallel, and without transformers' per-encoding
   conversion to Python dicts, which costs more than the tokenization itself), when the tokenizer class adds
   nothing to that call.
2. A memo of texts already encoded (shortening a long conversation by its first rounds leaves most parts as
   they were).
3. Splitting at added tokens (<|im_start|>, <|im_end|>, …) and memoising what lies between: the tokenizer itself
   cuts its input at added tokens first and encodes the parts independently, so a system prompt or a tool list
   repeated in every row is encoded once. Used only where that holds exactly: added tokens that match the raw text
   as written (not normalized, no lstrip/rstrip/single_word), a pre-tokenizer and normalizer that treat every
   part alike wherever it sits, and a probe that agrees.
4. Placing a position inside a part without offsets (which cost a second, slower tokenizer call): where the ids of
   the part's text up to the position (memoised: mostly a template's few characters after a special token, like
   "assistant\\n") are the first ids of the whole part, those tokens spell exactly that text — token strings
   concatenate to the normalized text, and the part-local pipelines above normalize a prefix to a prefix — so no
   token crosses the position. Only where that fails (a token crosses it), where the prefix is longer than the rest
   of the part (encoding it would cost more than offsets), or without the split are offsets asked for. Masking
   decodes every trained run back and compares it with its text, so a pipeline that broke this would refuse rows,
   not mistrain them.
"""

from __future__ import annotations

import json
import re
from bisect import bisect_left, bisect_right
from typing import Any, NamedTuple

# Pre-tokenizers / normalizers that act on each part the same whatever precedes it (Metaspace with
# prepend_scheme "first" does not; Prepend runs on every part between added tokens, like the tokenizer does).
_PART_LOCAL_PRE = {"ByteLevel", "Split", "Digits", "Punctuation", "Whitespace", "WhitespaceSplit", "Sequence"}
_PART_LOCAL_NORM = {"NFC", "NFD", "NFKC", "NFKD", "Lowercase", "Replace", "Prepend", "Sequence"}
_PROBES = (
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n  Hi  there\n\n<|im_end|>\n",
    "[INST] <<SYS>>\nbe brief\n<</SYS>>\n\nQ? [/INST] A. </s><s>[INST] more [/INST]",
    "<|start_header_id|>user<|end_header_id|>\n\nx = 1;\t y<|eot_id|><think>\nhm\n</think>\n\n ok",
)
_ANCHORS = ("a", "x", "0", "A", "Z", "!")  # a token that decodes to itself, put before runs (see decode_runs)


class Cut(NamedTuple):
    """Where a character position falls among a text's tokens."""

    before: int  # tokens that end at or before it
    after: int  # tokens that start before it: more than `before` when tokens cross the position
    start: int  # first character of the crossing tokens (the position itself when none crosses)
    end: int  # character after them

    def shifted(self, tokens: int, chars: int) -> Cut:
        return Cut(self.before + tokens, self.after + tokens, self.start + chars, self.end + chars)


class PieceEncoder:
    """Encodes lists of texts; keeps what it has seen (use one per batch of rows, not forever)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.backend = plain_backend(tokenizer)
        self.split = _added_token_splitter(tokenizer, self.backend) if self.backend is not None else None
        self.memo: dict[str, list[int]] = {}
        self.parts: dict[str, list[str]] = {}  # text → its parts, when split
        self.cuts: dict[tuple[str, int], Cut | None] = {}  # (part, position in it) → its Cut
        self.anchor = _decode_anchor(tokenizer)

    def encode(self, texts: list[str]) -> list[list[int]]:
        new = [t for t in dict.fromkeys(texts) if t not in self.memo]
        if new:
            if self.split is None:
                self.memo.update(zip(new, self._raw(new), strict=True))
            else:
                self._encode_by_parts(new)
        return [self.memo[t] for t in texts]

    def locate(
        self, texts: list[str], positions: list[list[int]]
    ) -> list[tuple[list[int], list[Cut | None]]]:
        """Each text's ids (== `encode`) and, for each of its positions, the Cut there — None where it cannot be
        found (a token crosses it and this tokenizer gives no offsets)."""
        self.encode(texts)
        layouts = [self._layout(t) for t in texts]
        inner: dict[str, set[int]] = {}  # part → positions strictly inside it, still to place
        for layout, wanted in zip(layouts, positions, strict=True):
            for pos in wanted:
                k, rel = layout.find(pos)
                if rel and (layout.parts[k], rel) not in self.cuts:
                    inner.setdefault(layout.parts[k], set()).add(rel)
        self._place(inner)
        return [
            (layout.ids, [layout.cut(pos, self.cuts) for pos in wanted])
            for layout, wanted in zip(layouts, positions, strict=True)
        ]

    def decode_runs(self, sequences: list[list[int]]) -> list[str]:
        """Decode each sequence as it reads inside a longer text: decoders such as Llama 2's strip the first
        leading space of what they decode, so a run starting with "▁word" would lose its space; decoded after an
        anchor token (a letter that decodes to itself), it keeps it."""
        if self.anchor is None:
            return decode_many(self.tokenizer, sequences)
        anchor_id, anchor = self.anchor
        out = decode_many(self.tokenizer, [[anchor_id, *seq] for seq in sequences])
        for i, text in enumerate(out):
            # Never seen: the anchor merged with what follows. Decode that run plainly.
            out[i] = (
                text[len(anchor) :]
                if text.startswith(anchor)
                else decode_many(self.tokenizer, [sequences[i]])[0]
            )
        return out

    # -- parts and cuts --------------------------------------------------------------------------------------------

    def _layout(self, text: str) -> _Layout:
        if self.split is None:
            ids = self.memo[text]
            return _Layout([text], [len(ids)], ids) if text else _Layout([], [], ids)
        split, added = self.split
        parts = self.parts[text] if text in self.parts else split(text)
        return _Layout(parts, [len(added.get(part) or self.memo[part]) for part in parts], self.memo[text])

    def _place(self, inner: dict[str, set[int]]) -> None:
        """Cuts for positions inside parts: by probing where that is exact and worth it, else by offsets."""
        added = self.split[1] if self.split is not None else {}
        probed: list[tuple[str, int]] = []
        need_offsets: dict[str, None] = {}  # parts to ask offsets for, in order
        for part, rels in inner.items():
            if part in added:  # inside an added token: it crosses the position
                self.cuts.update({(part, rel): Cut(0, 1, 0, len(part)) for rel in rels})
            elif self.split is not None and all(self._worth_probing(part, rel) for rel in rels):
                probed += [(part, rel) for rel in rels]
            else:
                need_offsets[part] = None
        heads = self.encode([part[:rel] for part, rel in probed])
        for (part, rel), head in zip(probed, heads, strict=True):
            if self.memo[part][: len(head)] == head:
                self.cuts[part, rel] = Cut(len(head), len(head), rel, rel)
            else:  # a token crosses the position: only offsets say which
                need_offsets[part] = None
        for part, offsets in zip(need_offsets, self._offsets(list(need_offsets)), strict=True):
            if offsets is None:
                self.cuts.update({(part, rel): self._cut_without_offsets(part, rel) for rel in inner[part]})
            else:
                self.cuts.update({(part, rel): cut for rel, cut in _cuts(offsets, inner[part]).items()})

    def _worth_probing(self, part: str, rel: int) -> bool:
        head = part[:rel]
        return head in self.memo or len(head) <= len(part) - len(head)

    def _cut_without_offsets(self, part: str, rel: int) -> Cut | None:
        """A tokenizer without offsets (a slow one): the position is placed only when the ids of the text up to it
        start the whole part's ids, as above; None when a token crosses it."""
        head = self.encode([part[:rel]])[0]
        return Cut(len(head), len(head), rel, rel) if self.memo[part][: len(head)] == head else None

    def _offsets(self, texts: list[str]) -> list[list[tuple[int, int]] | None]:
        if not texts:
            return []
        if self.backend is not None:
            return [e.offsets for e in self.backend.encode_batch(texts, add_special_tokens=False)]
        try:
            out = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
            return [list(map(tuple, o)) for o in out["offset_mapping"]]
        except (NotImplementedError, KeyError, ValueError, TypeError):
            return [None] * len(texts)  # a tokenizer without offsets

    # -- encoding --------------------------------------------------------------------------------------------------

    def _encode_by_parts(self, texts: list[str]) -> None:
        split, token_ids = self.split
        parts = {t: split(t) for t in texts}
        self.parts.update(parts)
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


class _Layout:
    """A text as its parts (split at added tokens, or the whole text), with where each starts."""

    def __init__(self, parts: list[str], sizes: list[int], ids: list[int]):
        self.parts = parts
        self.ids = ids
        self.starts: list[int] = []  # character where each part starts
        self.firsts: list[int] = []  # index of each part's first token
        chars = tokens = 0
        for part, size in zip(parts, sizes, strict=True):
            self.starts.append(chars)
            self.firsts.append(tokens)
            chars += len(part)
            tokens += size
        self.length = chars

    def find(self, pos: int) -> tuple[int, int]:
        """(part index, position inside it); (len(parts), 0) at the very end."""
        if pos >= self.length:
            return len(self.parts), 0
        k = bisect_right(self.starts, pos) - 1
        return k, pos - self.starts[k]

    def cut(self, pos: int, known: dict[tuple[str, int], Cut | None]) -> Cut | None:
        k, rel = self.find(pos)
        if k == len(self.parts):
            return Cut(len(self.ids), len(self.ids), pos, pos)
        if rel == 0:  # at a part boundary: nothing crosses it
            return Cut(self.firsts[k], self.firsts[k], pos, pos)
        local = known[self.parts[k], rel]
        return None if local is None else local.shifted(self.firsts[k], self.starts[k])


def _cuts(offsets: list[tuple[int, int]], positions: set[int]) -> dict[int, Cut]:
    """The Cut at each position from token offsets (character ranges into the text; a byte-fallback or byte-level
    token of a multi-byte character spans the whole character, a prepended "▁" the character it is glued to)."""
    starts = [a for a, _ in offsets]
    ends = [b for _, b in offsets]
    ordered = starts == sorted(starts) and ends == sorted(ends)  # always, for the tokenizers we know
    out = {}
    for pos in positions:
        if ordered:
            before, after = bisect_right(ends, pos), bisect_left(starts, pos)
        else:
            before, after = sum(b <= pos for b in ends), sum(a < pos for a in starts)
        after = max(after, before)  # an empty token at `pos` lies before it
        crossing = offsets[before:after]
        out[pos] = (
            Cut(before, after, min(a for a, _ in crossing), max(b for _, b in crossing))
            if crossing
            else Cut(before, after, pos, pos)
        )
    return out


def _decode_anchor(tokenizer: Any) -> tuple[int, str] | None:
    """A token that decodes to its own text, alone and repeated (so nothing is stripped or spaced around it)."""
    try:
        for text in _ANCHORS:
            token_id = tokenizer.convert_tokens_to_ids(text)
            if not isinstance(token_id, int) or token_id == tokenizer.unk_token_id:
                continue
            once, twice = decode_many(tokenizer, [[token_id], [token_id, token_id]])
            if once == text and twice == text + text:
                return token_id, text
    except Exception:  # noqa: BLE001 — an exotic tokenizer: decode runs plainly, as before
        return None
    return None


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
    # Only these two components, not the whole tokenizer.json (vocabulary and merges: milliseconds per encoder).
    pre_tokenizer, normalizer = _state(backend.pre_tokenizer), _state(backend.normalizer)
    if not (_types(pre_tokenizer) <= _PART_LOCAL_PRE and _types(normalizer) <= _PART_LOCAL_NORM):
        return None
    if any(p.get("type") == "ByteLevel" and p.get("add_prefix_space") for p in _nodes(pre_tokenizer)):
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


def _state(component: Any) -> dict | None:
    return json.loads(component.__getstate__()) if component is not None else None


def _encode(backend: Any, text: str) -> list[int]:
    return backend.encode(text, add_special_tokens=False).ids


def _nodes(node: Any) -> list[dict]:
    if not node:
        return []
    children = node.get("pretokenizers") or node.get("normalizers") or []
    return [node] + [n for child in children for n in _nodes(child)]


def _types(node: Any) -> set[str]:
    return {n.get("type", "") for n in _nodes(node)}
