"""Labels: which rendered characters are trained (the policy), their tokens, and the verification of every example.

Spans come from `spans.render_conversation`; the policy picks among them. The input ids are the tokenization of the
whole rendered text — what the model sees at inference, where the conversation so far is tokenized as one text —
and the labels follow the character spans onto those tokens: a token is trained when it produces trained
characters. A token may straddle the start of a trained span (whole-text tokenization decides, as at inference):
SentencePiece glues a word's leading space into "▁word", byte-level BPE merges "\n" + "\n"; such a token is
trained, and the characters it brings from before the span must be whitespace. Anything else that crosses a span
edge — a token holding text of the prompt, or running past the end of the span — refuses the row
(`mask_mismatch`). Labels never come from "token == pad/eos".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sftforge.data.conversation import Conversation
from sftforge.data.encoding import Cut, PieceEncoder
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
    full_length: int | None = (
        None  # truncated: the example's tokens before truncation (the length statistics)
    )

    @property
    def num_trained(self) -> int:
        return len(self.labels) - self.labels.count(IGNORE_INDEX)

    @property
    def untruncated_length(self) -> int:
        """Tokens of the whole example, as if max_length were unlimited."""
        return len(self.input_ids) if self.full_length is None else self.full_length


def trained_char_spans(
    conv: Conversation, rendered: RenderedConversation, options: MaskOptions
) -> list[tuple]:
    """The character ranges to train, after the policy and the per-message `train` flags."""
    text, turns = rendered.text, rendered.turns
    flagged_off = [i for i, m in enumerate(conv.messages) if m.train is False]
    if options.train_on == "all":
        spans = [(0, len(text))]
        for i in flagged_off:  # an explicit `train: false` / `loss_weight: 0` still wins
            span = _turn_or_content(i, turns, rendered.contents)
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
            if i not in rendered.contents:
                raise RowError("cannot_locate_message", f"turn {i} ({message.role}) is marked to train but the "
                               "template does not render its content verbatim")  # fmt: skip
            spans.append(rendered.contents[i])
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


def _tool_names(calls: list[dict] | None) -> list[str]:
    names = [(c.get("function") or c).get("name") for c in calls or []]
    return [str(n) for n in names if n]


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
    """Tokenize exactly what the template rendered (the whole text, no extra BOS) and train the tokens of `spans`."""
    out = tokenize_plans(tokenizer, [Plan(text, spans)])[0]
    if isinstance(out, RowError):
        raise out
    return out


@dataclass
class Plan:
    """What to tokenize for one example: the text, the character spans to train, and how they were found."""

    text: str
    spans: list[tuple[int, int]]
    method: str = ""
    verify: bool = True  # decode the trained tokens back and compare (not for plain pretraining text)
    append: tuple[int, ...] = ()  # token ids added after the text (eos after a pretraining document), trained


def _edges(spans: list[tuple[int, int]]) -> list[int]:
    return sorted({edge for span in spans for edge in span})


def tokenize_plans(
    tokenizer: Any, plans: list[Plan], encoder: PieceEncoder | None = None
) -> list[Tokenized | RowError]:
    """Tokenize many examples at once: every text goes to the tokenizer in one batch call (fast tokenizers encode a
    batch in parallel, and the per-call overhead is paid once), whole, so the ids are exactly
    `tokenizer(text, add_special_tokens=False)`; the span edges are then placed among its tokens
    (`PieceEncoder.locate`). A plan whose trained tokens do not decode back to its trained text gets the RowError
    instead of a Tokenized.

    Pass one `encoder` to successive calls to reuse what it encoded (see `encoding.PieceEncoder`)."""
    encoder = encoder or PieceEncoder(tokenizer)
    edges = [_edges(plan.spans) for plan in plans]
    located = encoder.locate([plan.text for plan in plans], edges)
    results: list[Tokenized | RowError] = []
    to_check: list[tuple[int, list[int], str]] = []  # (plan, its trained ids, the text they must decode to)
    for i, (plan, positions, (ids, cuts)) in enumerate(zip(plans, edges, located, strict=True)):
        try:
            labels, trained, expected = _labels(plan, ids, dict(zip(positions, cuts, strict=True)))
        except RowError as e:
            results.append(e)
            continue
        results.append(Tokenized(ids + list(plan.append), labels + list(plan.append), method=plan.method))
        if plan.verify:
            to_check.append((i, trained, expected))
    decoded = encoder.decode_runs([trained for _, trained, _ in to_check])
    for (i, _, expected), got in zip(to_check, decoded, strict=True):
        results[i] = _verify_decode(tokenizer, expected, got) or results[i]
    return results


def _labels(plan: Plan, ids: list[int], cuts: dict[int, Cut | None]) -> tuple[list[int], list[int], str]:
    """(labels, the trained ids, the text they must decode to): the tokens that produce characters of a span are
    trained. Raises RowError where a token crosses a span edge other than by whitespace before its start."""
    text = plan.text
    labels = [IGNORE_INDEX] * len(ids)
    trained: list[int] = []
    expected: list[str] = []
    for start, end in plan.spans:
        head, tail = cuts[start], cuts[end]
        if head is None or tail is None:
            raise RowError(
                "mask_mismatch",
                f"a token crosses the edge of the trained text at character {start if head is None else end}, and "
                "this tokenizer gives no offsets to say which; use its fast (Rust) version",
            )
        first, last = head.before, tail.after
        if plan.verify:
            _check_edges(text, start, end, head, tail)
        labels[first:last] = ids[first:last]
        trained += ids[first:last]
        expected.append(text[min(head.start, start) : end])
    return labels, trained, "".join(expected)


def _check_edges(text: str, start: int, end: int, head: Cut, tail: Cut) -> None:
    """What a token crossing a span edge may bring into training: whitespace before the span's start (the "▁" of
    SentencePiece's first word, a newline byte-level BPE merged), nothing else."""
    if head.start < start and text[head.start : start].strip():
        raise RowError(
            "mask_mismatch",
            f"a token crosses the start of the trained text: {text[head.start : head.end]!r} also holds "
            f"{text[head.start : start]!r} of the text before it, which must not be trained",
        )
    if tail.end > end:
        raise RowError(
            "mask_mismatch",
            f"a token crosses the end of the trained text: {text[tail.start : tail.end]!r} also holds "
            f"{text[end : tail.end]!r} of the text after it, which must not be trained",
        )


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
        check_turn_end(text, turn.end, i, info)
        missing = [
            n for n in _tool_names(conv.messages[i].tool_calls) if n not in text[turn.start : turn.end]
        ]
        if missing:
            raise RowError(
                "tool_calls_not_rendered",
                f"turn {i} (assistant): the chat template does not render its tool call(s) {missing}; training "
                "the turn would teach the model to answer without them. Use a template with tool support "
                "(e.g. chat_template: default) or drop tool rows",
            )
        content = conv.messages[i].content
        if content and not _holds_content(rendered, i, turn, content):
            raise RowError(
                "mask_mismatch", f"turn {i} (assistant): the trained span does not hold its content"
            )
    if rendered.placed_by_prefix_only and not any(
        m.train is True and m.role != "assistant" for m in conv.messages
    ):
        return  # trained spans are whole prefix-diff turns: no other message's content can lie inside
    for k, (start, end) in rendered.contents.items():
        message = conv.messages[k]
        if message.role == "assistant" or message.train is True or end <= start:
            continue
        if any(s < end and start < e for s, e in spans):
            raise RowError(
                "mask_mismatch",
                f"turn {k} ({message.role}): part of its content would be trained; refusing the row",
            )


def check_turn_end(text: str, end: int, i: int, info: TemplateInfo) -> None:
    """A trained turn ends with a token that generation stops on (<|im_end|>; Harmony: <|return|> after an answer,
    <|call|> after a tool call — not <|end|>, which the template writes after answers in history)."""
    if not info.end_of_turn:
        return  # no end-of-turn token: eos is appended after the turn
    stops = info.stop_tokens or info.end_of_turn
    if any(text.endswith(m, 0, end) for m in stops):
        return
    other = next((m for m in info.end_of_turn if text.endswith(m, 0, end)), None)
    if other is None:
        raise RowError("end_of_turn_missing", f"turn {i} (assistant): no end-of-turn token after it to train")
    raise RowError(
        "end_of_turn_missing",
        f"turn {i} (assistant): the template ends it with {other} here, but a generation ends with "
        f"{' or '.join(stops)}: it renders this turn differently once later turns follow. multi_turn: auto or "
        "split trains each such turn in its own example, rendered as inference sees it",
    )


def _holds_content(rendered: RenderedConversation, i: int, turn: Any, content: str) -> bool:
    """The turn's span holds its content: verbatim (cheap, and enough for most rows), else where the sentinel
    render located it (a template that splits or rewrites the content, e.g. inline <think> blocks)."""
    if rendered.placed_by_prefix_only and content.strip() in rendered.text[turn.start : turn.end]:
        return True
    located = rendered.contents.get(i)
    if located:
        return turn.start <= located[0] and located[1] <= turn.end
    return content.strip() in rendered.text[turn.start : turn.end]


def _verify_decode(tokenizer: Any, expected: str, got: str) -> RowError | None:
    """The trained tokens (decoded: `got`) must decode to exactly the trained text (content + end-of-turn, plus
    the whitespace a straddling first token brings), as the tokenizer normalizes text: NFC for most, "▁" for
    spaces in SentencePiece's legacy normalizer."""
    if got == expected or _normalize(tokenizer, got) == _normalize(tokenizer, expected):
        return None
    return RowError(
        "mask_mismatch",
        f"trained tokens decode to {got[:80]!r}… but the assistant turns read {expected[:80]!r}… "
        "(the tokenizer does not round-trip this text)",
    )


def _normalize(tokenizer: Any, text: str) -> str:
    """Apply the tokenizer's own normalizer (e.g. NFC) so decoded text compares equal to the source."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    normalizer = getattr(backend, "normalizer", None)
    return normalizer.normalize_str(text) if normalizer is not None else text


def plan_conversation(conv: Conversation, tokenizer: Any, info: TemplateInfo, options: MaskOptions) -> Plan:
    """Conversation → what to tokenize: rendered text + verified trained spans (RowError when it cannot be)."""
    if conv.format == "text":  # plain pretraining text: every token, then eos so documents end
        text = conv.meta["text"]
        eos = (tokenizer.eos_token_id,) if tokenizer.eos_token_id is not None else ()
        return Plan(text, [(0, len(text))], "text", verify=False, append=eos)
    return plan_rendered(conv, render_conversation(conv, tokenizer, info), tokenizer, info, options)


def plan_rendered(
    conv: Conversation,
    rendered: RenderedConversation,
    tokenizer: Any,
    info: TemplateInfo,
    options: MaskOptions,
) -> Plan:
    """`plan_conversation` from the whole conversation's render, already made."""
    spans = trained_char_spans(conv, rendered, options)
    if not spans:
        raise RowError("no_trainable_tokens", "no turn is marked for training under this policy")
    verify_spans(conv, rendered, spans, options, info)
    text = rendered.text
    if not info.end_of_turn and tokenizer.eos_token:
        # The template ends turns with no special token: append eos to each trained turn so the model learns to stop.
        ends = {t.end for t in rendered.turns.values()}
        text, spans = _insert_after(text, spans, ends, tokenizer.eos_token)
    return Plan(text, spans, "+".join(sorted(rendered.methods)))


def encode_conversation(
    conv: Conversation, tokenizer: Any, info: TemplateInfo, options: MaskOptions
) -> Tokenized:
    """Conversation → input_ids + labels (no truncation), verified."""
    out = tokenize_plans(tokenizer, [plan_conversation(conv, tokenizer, info, options)])[0]
    if isinstance(out, RowError):
        raise out
    return out
