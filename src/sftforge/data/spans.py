"""Where each message landed in the rendered conversation — for any Jinja chat template.

The whole conversation is rendered once (that text is what gets tokenized). Three methods locate each assistant
turn inside it, tried in this order per turn:

1. `{% generation %}` markers, when the template has them (TRL-style training templates).
2. Prefix diff: `messages[:i]` + generation prompt renders a prefix of the full text, and `messages[:i+1]` renders
   the prefix plus turn i. Exact, and works whenever the template is prefix-preserving up to turn i.
3. Sentinels: every message's content is wrapped in unique private-use markers and rendered again; where the
   markers land (after removing them the text must equal the real render) gives each content's position. Turn i
   then starts after the generation-prompt text that precedes its content and ends at the first end-of-turn token
   after it. This handles templates that rewrite earlier turns (Qwen3 drops old <think> blocks) or move the system
   prompt into the first user turn (Llama 2, Mistral, Gemma).

A turn that no method can place is refused with the reason. Content positions also serve verification: no token of
a system, user or tool message may be trained.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sftforge.data.conversation import Conversation
from sftforge.data.templates import Render, TemplateInfo, make_renderer
from sftforge.errors import RowError

_OPEN, _CLOSE, _END = "\ue000", "\ue002", "\ue001"
_MARK = re.compile(f"([{_OPEN}{_CLOSE}])(\\d+){_END}")
_THINK_END = "</think>"


@dataclass
class TurnSpan:
    index: int  # message index
    start: int  # first character the model produces (after the turn header / generation prompt)
    end: int  # just after the end-of-turn token ("" when the template has none)
    body_start: int  # where the answer proper starts, after any reasoning block
    method: str  # "markers" | "prefix" | "sentinel"


@dataclass
class RenderedConversation:
    text: str
    turns: dict[int, TurnSpan]  # assistant message index → its span
    # Message index → content span, from the sentinel render: made on first use, because rows whose turns the
    # prefix diff placed need it only for `train_on: all` or per-message train flags (one render in three saved).
    locate: Callable[[], dict[int, tuple[int, int]]] | None = None
    _contents: dict[int, tuple[int, int]] | None = field(default=None, repr=False)

    @property
    def contents(self) -> dict[int, tuple[int, int]]:
        if self._contents is None:
            self._contents = self.locate() if self.locate is not None else {}
        return self._contents

    @property
    def placed_by_prefix_only(self) -> bool:
        """Every turn placed by the prefix diff: then each trained turn lies after the exact render of all
        earlier messages and before any later one, so no other message's content can be inside it."""
        return all(t.method == "prefix" for t in self.turns.values())

    @property
    def methods(self) -> set[str]:
        return {t.method for t in self.turns.values()}


def split_inline_reasoning(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`<think>…</think>` at the start of an assistant content → `reasoning_content`, for templates that read
    that field: they split the content the same way themselves, so the render is unchanged, but the content
    no longer hides the reasoning from the sentinel method."""
    out = []
    for m in messages:
        content = m.get("content")
        if m.get("role") == "assistant" and isinstance(content, str) and _THINK_END in content:
            head, _, rest = content.partition(_THINK_END)
            if head.lstrip().startswith("<think>") and not m.get("reasoning_content"):
                m = {
                    **m,
                    "reasoning_content": head.lstrip()[len("<think>") :].strip("\n"),
                    "content": rest.lstrip("\n"),
                }
        out.append(m)
    return out


def render_conversation(conv: Conversation, tokenizer: Any, info: TemplateInfo) -> RenderedConversation:
    messages = conv.template_messages()
    if info.supports_reasoning:
        messages = split_inline_reasoning(messages)
    render = make_renderer(tokenizer, info.text, conv.tools)
    text = render(messages, False)
    rendered = RenderedConversation(text, {}, lambda: locate_contents(messages, render, text))
    assistants = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if assistants and assistants[0] == 0:
        raise RowError(
            "assistant_first", "the conversation starts with an assistant turn; add the user turn it answers"
        )
    marked = _marker_spans(messages, tokenizer, info, conv.tools, text, assistants)
    turns: dict[int, TurnSpan] = {}
    for i in assistants:
        span = (
            marked.get(i)
            or _prefix_span(messages, render, text, i, info)
            or _sentinel_span(text, rendered.contents, i, info)
        )
        if span is None:
            raise RowError(
                "template_rewrites_earlier_turns",
                f"turn {i} (assistant): the template renders it differently once later turns follow, and its "
                "content could not be located by markers either (the template transforms the content)",
            )
        turns[i] = span
    rendered.turns = turns
    return rendered


# ---------------------------------------------------------------- content positions (sentinels)


def locate_contents(messages: list[dict[str, Any]], render: Render, text: str) -> dict[int, tuple[int, int]]:
    """Message index → (start, end) of its content in `text`; {} when the template does not render contents
    verbatim (both as given and stripped, for templates that `| trim`)."""
    for strip in (False, True):
        marked = [dict(m) for m in messages]  # only top-level `content` changes: a shallow copy is enough
        for k, m in enumerate(marked):
            content = m.get("content")
            if isinstance(content, str) and content:
                body = content.strip() if strip else content
                m["content"] = f"{_OPEN}{k}{_END}{body}{_CLOSE}{k}{_END}"
        try:
            rendered = render(marked, False)
        except RowError:
            return {}
        spans = _strip_markers(rendered, text)
        if spans is not None:
            return spans
    return {}


def _strip_markers(rendered: str, expected: str) -> dict[int, tuple[int, int]] | None:
    pieces: list[str] = []
    opened: dict[int, int] = {}
    spans: dict[int, tuple[int, int]] = {}
    length, last = 0, 0
    for match in _MARK.finditer(rendered):
        pieces.append(rendered[last : match.start()])
        length += match.start() - last
        last = match.end()
        kind, k = match.group(1), int(match.group(2))
        if kind == _OPEN:
            if k in opened or k in spans:
                return None  # the template rendered a content twice
            opened[k] = length
        else:
            if k not in opened:
                return None
            spans[k] = (opened.pop(k), length)
    pieces.append(rendered[last:])
    if opened or "".join(pieces) != expected:
        return None
    return spans


# ---------------------------------------------------------------- the three ways to place a turn


def _marker_spans(
    messages: list[dict[str, Any]],
    tokenizer: Any,
    info: TemplateInfo,
    tools: list[dict] | None,
    text: str,
    assistants: list[int],
) -> dict[int, TurnSpan]:
    if not info.has_generation_markers:
        return {}
    from transformers.utils.chat_template_utils import render_jinja_template

    try:
        rendered, indices = render_jinja_template(
            conversations=[messages],
            tools=tools,
            chat_template=info.text,
            return_assistant_tokens_mask=True,
            **tokenizer.special_tokens_map,
        )
    except Exception:  # noqa: BLE001 — any failure here just means: use the other methods
        return {}
    blocks = [b for b in indices[0] if b[1] > b[0]]
    if rendered[0] != text or len(blocks) != len(assistants):
        return {}  # markers don't map one block per assistant turn: don't guess
    return {
        i: TurnSpan(i, start, end, _body_start(text, start, end), "markers")
        for i, (start, end) in zip(assistants, blocks, strict=True)
    }


def _prefix_span(
    messages: list[dict[str, Any]], render: Render, text: str, i: int, info: TemplateInfo
) -> TurnSpan | None:
    prefix = render(messages[:i], True)
    # The last message's "upto" render is the full render, already done.
    upto = text if i + 1 == len(messages) else render(messages[: i + 1], False)
    if not (upto.startswith(prefix) and text.startswith(upto)):
        return None
    start = len(prefix)
    end = _cut_after_end_of_turn(upto, start, len(upto), info.end_of_turn)
    return TurnSpan(i, start, end, _body_start(text, start, end), "prefix")


def _sentinel_span(
    text: str, contents: dict[int, tuple[int, int]], i: int, info: TemplateInfo
) -> TurnSpan | None:
    if not contents:
        return None
    before = [span[1] for k, span in contents.items() if k < i]
    after = [span[0] for k, span in contents.items() if k > i]
    low, high = max(before, default=0), min(after, default=len(text))
    prompt = info.generation_prompt
    if i in contents:
        content_start, content_end = contents[i]
        header = text.rfind(prompt, low, content_start) if prompt else -1
        start = header + len(prompt) if header != -1 else content_start
        search_from = content_end
    else:  # empty content (a tool-call-only turn): the turn starts right after its header
        header = text.find(prompt, low, high) if prompt else -1
        if header == -1:
            return None
        start = search_from = header + len(prompt)
    if info.end_of_turn:
        hits = [(text.find(m, search_from, high), m) for m in info.end_of_turn]
        hits = [(pos, m) for pos, m in hits if pos != -1]
        if not hits:
            return None
        pos, marker = min(hits)
        end = pos + len(marker)
    else:
        end = _cut_after_end_of_turn(text, start, search_from, ())
    return TurnSpan(i, start, end, _body_start(text, start, end), "sentinel")


def _cut_after_end_of_turn(text: str, start: int, end: int, end_markers: tuple[str, ...] | list[str]) -> int:
    """End of the trained region: just after the last end-of-turn marker inside [start, end). Whatever trails it
    (ChatML's "\\n") belongs to the next turn."""
    best = -1
    for marker in end_markers:
        pos = text.rfind(marker, start, end)
        if pos != -1:
            best = max(best, pos + len(marker))
    if best != -1:
        return best
    # A template with no end-of-turn token: up to the content's last non-space character.
    while end > start and text[end - 1].isspace():
        end -= 1
    return end


def _body_start(text: str, start: int, end: int) -> int:
    """Where the answer starts inside a turn: after a reasoning block (`</think>` + whitespace) if there is one."""
    think_end = text.rfind(_THINK_END, start, end)
    if think_end == -1:
        return start
    pos = think_end + len(_THINK_END)
    while pos < end and text[pos] in " \n":
        pos += 1
    return pos
