"""Labels: which rendered characters are trained (the policy), their tokens, and the verification of every example.

Spans come from `spans.render_conversation`; the policy picks among them; the text is tokenized piece by piece at
the span edges so no token straddles a prompt/answer boundary (and answer tokens are the ones the model produces at
inference, where the prompt ends at the generation prompt). Labels never come from "token == pad/eos".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sftforge.data.conversation import Conversation
from sftforge.data.spans import RenderedConversation, render_conversation
from sftforge.data.templates import TemplateInfo
from sftforge.errors import RowError

IGNORE_INDEX = -100
TRAIN_ON = ("all_assistant", "last_assistant", "all")


@dataclass(frozen=True)
class MaskOptions:
    train_on: str = "all_assistant"  # one of TRAIN_ON
    train_on_reasoning: bool = True  # False: a turn's <think> block is context, only the answer is trained


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False
    method: str = ""  # how the spans were found: markers / prefix / sentinel (joined when mixed)

    @property
    def num_trained(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def trained_char_spans(
    conv: Conversation, rendered: RenderedConversation, options: MaskOptions
) -> list[tuple]:
    """The character ranges to train, after the policy and the per-message `train` flags."""
    text, turns, contents = rendered.text, rendered.turns, rendered.contents
    flagged_off = [i for i, m in enumerate(conv.messages) if m.train is False]
    if options.train_on == "all":
        spans = [(0, len(text))]
        for i in flagged_off:  # an explicit `train: false` / `loss_weight: 0` still wins
            span = _turn_or_content(i, turns, contents)
            if span is None:
                raise RowError(
                    "cannot_locate_message", f"turn {i} is marked not to train but cannot be located"
                )
            spans = _subtract(spans, span)
        return spans
    chosen = [i for i in turns if conv.messages[i].train is not False]
    if options.train_on == "last_assistant":
        last = max(turns, default=None)
        chosen = [last] if last is not None and conv.messages[last].train is not False else []
    spans = []
    for i in chosen:
        turn = turns[i]
        start = turn.start if options.train_on_reasoning else turn.body_start
        spans.append((start, turn.end))
    for i, message in enumerate(conv.messages):  # `loss_weight: 1` / `train: true` on a non-assistant message
        if message.role != "assistant" and message.train is True:
            if i not in contents:
                raise RowError("cannot_locate_message", f"turn {i} ({message.role}) is marked to train but the "
                               "template does not render its content verbatim")  # fmt: skip
            spans.append(contents[i])
    return _merge(spans)


def _insert_after(text: str, spans: list[tuple], ends: set[int], insert: str) -> tuple[str, list[tuple]]:
    """Insert `insert` at the end of every span that ends a turn, shifting later spans."""
    out_spans, pieces, shift, cursor = [], [], 0, 0
    for start, end in spans:
        grow = len(insert) if end in ends else 0
        pieces += [text[cursor:end], insert if grow else ""]
        cursor = end
        out_spans.append((start + shift, end + shift + grow))
        shift += grow
    pieces.append(text[cursor:])
    return "".join(pieces), out_spans


def _turn_or_content(i: int, turns: dict, contents: dict) -> tuple[int, int] | None:
    if i in turns:
        return turns[i].start, turns[i].end
    return contents.get(i)


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in sorted(s for s in spans if s[1] > s[0]):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _subtract(spans: list[tuple[int, int]], cut: tuple[int, int]) -> list[tuple[int, int]]:
    out = []
    for start, end in spans:
        out += [(start, min(end, cut[0])), (max(start, cut[1]), end)]
    return _merge(out)


def tokenize_with_spans(tokenizer: Any, text: str, spans: list[tuple[int, int]]) -> Tokenized:
    """Tokenize exactly what the template rendered (no extra BOS), piece by piece at the span edges."""
    pieces: list[tuple[str, bool]] = []
    cursor = 0
    for start, end in spans:
        pieces += [(text[cursor:start], False), (text[start:end], True)]
        cursor = end
    pieces.append((text[cursor:], False))
    pieces = [(piece, trained) for piece, trained in pieces if piece]
    encoded = tokenizer([piece for piece, _ in pieces], add_special_tokens=False)["input_ids"]
    input_ids: list[int] = []
    labels: list[int] = []
    for (_, trained), ids in zip(pieces, encoded, strict=True):
        input_ids += ids
        labels += ids if trained else [IGNORE_INDEX] * len(ids)
    _verify_decode(tokenizer, text, spans, input_ids, labels)
    return Tokenized(input_ids, labels)


def verify_spans(
    conv: Conversation,
    rendered: RenderedConversation,
    spans: list[tuple],
    options: MaskOptions,
    info: TemplateInfo,
) -> None:
    """Every trained assistant turn holds its content and ends with the end-of-turn token; no content of a message
    that must not be trained lies inside a trained span."""
    if options.train_on == "all":
        return  # everything but explicitly excluded messages is trained by definition
    text = rendered.text
    for i, turn in rendered.turns.items():
        if not any(s <= turn.body_start and turn.end <= e for s, e in spans):
            continue  # not trained under this policy
        if info.end_of_turn and not any(text.endswith(m, 0, turn.end) for m in info.end_of_turn):
            raise RowError(
                "end_of_turn_missing", f"turn {i} (assistant): no end-of-turn token after it to train"
            )
        content = conv.messages[i].content
        located = rendered.contents.get(i)
        inside = (
            (turn.start <= located[0] and located[1] <= turn.end)
            if located
            else content.strip() in text[turn.start : turn.end]
        )
        if content and not inside:
            raise RowError(
                "mask_mismatch", f"turn {i} (assistant): the trained span does not hold its content"
            )
    for k, (start, end) in rendered.contents.items():
        message = conv.messages[k]
        if message.role == "assistant" or message.train is True or end <= start:
            continue
        if any(s < end and start < e for s, e in spans):
            raise RowError(
                "mask_mismatch",
                f"turn {k} ({message.role}): part of its content would be trained; refusing the row",
            )


def _verify_decode(tokenizer: Any, text: str, spans: list, input_ids: list[int], labels: list[int]) -> None:
    """The trained tokens must decode to exactly the trained text (content + end-of-turn)."""
    trained = [t for t, label in zip(input_ids, labels, strict=True) if label != IGNORE_INDEX]
    expected = _normalize(tokenizer, "".join(text[s:e] for s, e in spans))
    got = tokenizer.decode(trained, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    if got != expected:
        raise RowError(
            "mask_mismatch",
            f"trained tokens decode to {got[:80]!r}… but the assistant turns read {expected[:80]!r}… "
            "(the tokenizer does not round-trip this text)",
        )


def _normalize(tokenizer: Any, text: str) -> str:
    """Apply the tokenizer's own normalizer (e.g. NFC) so decoded text compares equal to the source."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    normalizer = getattr(backend, "normalizer", None)
    return normalizer.normalize_str(text) if normalizer is not None else text


def encode_conversation(
    conv: Conversation, tokenizer: Any, info: TemplateInfo, options: MaskOptions
) -> Tokenized:
    """Conversation → input_ids + labels (no truncation), verified."""
    if conv.format == "text":  # plain pretraining text: every token, then eos so documents end
        ids = list(tokenizer(conv.meta["text"], add_special_tokens=False)["input_ids"])
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
        return Tokenized(ids, list(ids), method="text")
    rendered = render_conversation(conv, tokenizer, info)
    spans = trained_char_spans(conv, rendered, options)
    if not spans:
        raise RowError("no_trainable_tokens", "no turn is marked for training under this policy")
    verify_spans(conv, rendered, spans, options, info)
    text = rendered.text
    if not info.end_of_turn and tokenizer.eos_token:
        # The template ends turns with no special token: append eos to each trained turn so the model learns to stop.
        ends = {t.end for t in rendered.turns.values()}
        text, spans = _insert_after(text, spans, ends, tokenizer.eos_token)
    out = tokenize_with_spans(tokenizer, text, spans)
    out.method = "+".join(sorted(rendered.methods))
    return out
