"""Assistant-only labels: find the characters each assistant turn produced, map them to tokens, verify.

Method (template-agnostic, no `{% generation %}` markers needed): for assistant turn i, the template renders
`messages[:i]` + generation prompt as a prefix P and `messages[:i+1]` as U; the turn's text is U[len(P):], cut after
its end-of-turn token (whatever trails it, like ChatML's "\\n", is the next turn's business). This needs the template
to be prefix-preserving; one that is not is refused per example with a reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from jinja2.exceptions import TemplateError

from sftforge.data.conversation import Conversation
from sftforge.errors import RowError

IGNORE_INDEX = -100

Render = Callable[[list[dict[str, Any]], bool], str]


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    @property
    def num_trained(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def make_renderer(tokenizer: Any, template: str, tools: list[dict] | None) -> Render:
    def render(messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        try:
            return tokenizer.apply_chat_template(
                messages,
                tools=tools,
                chat_template=template,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
            )
        except (TemplateError, ValueError, TypeError, KeyError) as e:
            # The template itself refused (raise_exception) or broke on this conversation's shape.
            raise RowError("template_error", f"the chat template refused this conversation: {e}") from None

    return render


def _cut_after_end_of_turn(text: str, start: int, end: int, end_markers: Sequence[str]) -> int:
    """End of the trained region: just after the last end-of-turn marker inside [start, end)."""
    best = -1
    for marker in end_markers:
        pos = text.rfind(marker, start, end)
        if pos != -1:
            best = max(best, pos + len(marker))
    if best != -1:
        return best
    # A template with no end-of-turn token: train up to the content's last non-space character.
    while end > start and text[end - 1].isspace():
        end -= 1
    return end


def assistant_char_spans(conv: Conversation, render: Render, end_markers: Sequence[str]) -> tuple[str, list]:
    """Render the whole conversation and return (text, [(start, end), ...]) for each trained assistant turn."""
    messages = conv.template_messages()
    full = render(messages, False)
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(conv.messages):
        if message.role != "assistant" or message.train is False:
            continue
        if i == 0:
            raise RowError(
                "assistant_first",
                "the conversation starts with an assistant turn; add the user turn it answers",
            )
        prefix = render(messages[:i], True)
        upto = render(messages[: i + 1], False)
        if not upto.startswith(prefix) or not full.startswith(upto):
            raise RowError(
                "template_not_prefix_preserving",
                f"the chat template renders turn {i} (assistant) differently once later turns are added, "
                "so its tokens cannot be located",
            )
        start, end = len(prefix), _cut_after_end_of_turn(upto, len(prefix), len(upto), end_markers)
        if end > start:
            spans.append((start, end))
    return full, spans


def tokenize_with_spans(tokenizer: Any, text: str, spans: list[tuple[int, int]]) -> Tokenized:
    """Tokenize exactly what the template rendered (no extra BOS), piece by piece at the span edges.

    Cutting at turn edges means no token ever straddles a prompt/answer boundary, and the answer's tokens are the
    ones the model produces at inference, where the prompt ends at the generation prompt.
    """
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
    _verify(tokenizer, text, spans, input_ids, labels)
    return Tokenized(input_ids, labels)


def _verify(tokenizer: Any, text: str, spans: list, input_ids: list[int], labels: list[int]) -> None:
    """The trained tokens must decode to exactly the assistant turns' text (content + end-of-turn)."""
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


def tokenize_conversation(
    conv: Conversation, tokenizer: Any, template: str, end_markers: Sequence[str], max_length: int
) -> Tokenized:
    """Conversation → input_ids + assistant-only labels, right-truncated to max_length."""
    if conv.format == "text":
        ids = tokenizer(conv.meta["text"], add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            ids = ids + [tokenizer.eos_token_id]
        out = Tokenized(list(ids), list(ids))
    else:
        text, spans = assistant_char_spans(conv, make_renderer(tokenizer, template, conv.tools), end_markers)
        if not spans:
            raise RowError("no_trainable_tokens", "no assistant turn is marked for training")
        out = tokenize_with_spans(tokenizer, text, spans)
    if len(out.input_ids) > max_length:
        out = Tokenized(out.input_ids[:max_length], out.labels[:max_length], truncated=True)
        if out.num_trained == 0:
            raise RowError(
                "no_trainable_tokens_after_truncation",
                f"longer than max_length={max_length} and no assistant token is left after truncation",
            )
    return out


def end_of_turn_markers(tokenizer: Any, template: str) -> list[str]:
    """Special tokens the template emits right after an assistant's content (e.g. <|im_end|>, <|eot_id|>, </s>)."""
    probe = "sftforge-probe-4f1c"
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": probe}]
    text = tokenizer.apply_chat_template(msgs, chat_template=template, tokenize=False)
    tail = text[text.rfind(probe) + len(probe) :]
    specials = sorted(set(tokenizer.all_special_tokens) | _added_special(tokenizer), key=len, reverse=True)
    found: list[str] = []
    pos = 0
    while pos < len(tail):
        for tok in specials:
            if tok and tail.startswith(tok, pos):
                found.append(tok)
                pos += len(tok)
                break
        else:
            if found:  # the first special run after the content is the end-of-turn
                break
            pos += 1
    return found[:1] if found else []


def _added_special(tokenizer: Any) -> set[str]:
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return {tok.content for tok in decoder.values() if getattr(tok, "special", False)}
