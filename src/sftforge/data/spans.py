"""Where each message landed in the rendered conversation — for any Jinja chat template.

The whole conversation is rendered once (that text is what gets tokenized). Three methods locate each assistant
turn inside it, tried in this order per turn:

1. `{% generation %}` markers, when the template has them (TRL-style training templates).
2. Prefix diff: `messages[:i]` + generation prompt renders a prefix of the full text, and `messages[:i+1]` renders
   the prefix plus turn i. Exact, and works whenever the template is prefix-preserving up to turn i.
3. Sentinels: every message's content (and reasoning) is wrapped in unique private-use markers and rendered again;
   where the markers land (after removing them the text must equal the real render) gives each one's position.
   Turn i then starts after the generation-prompt text that precedes its reasoning or content and ends at the
   first end-of-turn token after them (and after its tool calls). This handles templates that rewrite earlier
   turns (Qwen3 drops old <think> blocks) or move the system prompt into the first user turn (Llama 2, Mistral,
   Gemma).

A turn that no method can place is refused with the reason. Content positions also serve verification: no token of
a system, user or tool message may be trained.

`render_last_turn` renders turn i as the last message, after exactly the prompt inference sends: what a turn looks
like when the model generates it, for `multi_turn` (turns.py) to compare with the whole render, or to train alone.
"""

from __future__ import annotations

import os
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
class Located:
    """Where each message's content and reasoning landed in one render ({} for what could not be located)."""

    contents: dict[int, tuple[int, int]] = field(default_factory=dict)
    reasonings: dict[int, tuple[int, int]] = field(default_factory=dict)

    def before(self, i: int) -> int:
        """The end of the last located part of a message before message i (0 when none)."""
        ends = [end for parts in (self.contents, self.reasonings) for k, (_, end) in parts.items() if k < i]
        return max(ends, default=0)

    def own_start(self, i: int) -> int | None:
        """Where message i's first located part (reasoning or content) starts."""
        starts = [parts[i][0] for parts in (self.contents, self.reasonings) if i in parts]
        return min(starts, default=None)


@dataclass
class RenderedConversation:
    text: str
    turns: dict[int, TurnSpan]  # assistant message index → its span
    # Message index → content span, from the sentinel render: made on first use, because rows whose turns the
    # prefix diff placed need it only for `train_on: all` or per-message train flags (one render in three saved).
    locate: Callable[[], Located] | None = None
    _located: Located | None = field(default=None, repr=False)
    # Turn index → (render of the messages before it + generation prompt, render up to it): the prefix diff's
    # renders, kept so that checking a turn against what inference renders costs no second render.
    prefix_renders: dict[int, tuple[str, str]] = field(default_factory=dict, repr=False)
    messages: list[dict[str, Any]] = field(default_factory=list, repr=False)  # as the template got them
    render: Render | None = field(default=None, repr=False)

    @property
    def located(self) -> Located:
        if self._located is None:
            self._located = self.locate() if self.locate is not None else Located()
        return self._located

    @property
    def contents(self) -> dict[int, tuple[int, int]]:
        return self.located.contents

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
    messages = template_messages(conv, info)
    render = make_renderer(tokenizer, info.text, conv.tools)
    text = render(messages, False)
    rendered = RenderedConversation(text, {}, lambda: locate_parts(messages, render, text))
    rendered.messages, rendered.render = messages, render
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
            or _prefix_span(messages, render, text, i, info, rendered.prefix_renders)
            or _sentinel_span(text, rendered.located, i, info, messages[i])
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


@dataclass
class LastTurn:
    """Turn i rendered as the last message — what inference sees and produces. `prompt` is what inference sends
    (the messages before turn i + the generation prompt); the completion, what the model writes after it through
    its end-of-turn token, lies at [start, end) of `upto`, the render of the messages up to and including turn i."""

    prompt: str
    upto: str
    start: int
    end: int
    body_start: int  # in `upto`: where the answer starts, after the reasoning
    method: str  # "prefix": `upto` starts with the prompt; "sentinel": the turn was located in `upto`
    located: Located | None = None  # the parts located in `upto` (sentinel only)

    @property
    def completion(self) -> str:
        return self.upto[self.start : self.end]


def render_last_turn(
    messages: list[dict[str, Any]],
    render: Render,
    info: TemplateInfo,
    i: int,
    renders: tuple[str, str] | None = None,
    located: Located | None = None,
) -> LastTurn | None:
    """Turn i as the last message (None when it cannot be located). `renders`: (prompt, upto), and `located`: the
    parts located in `upto`, when already made."""
    prompt, upto = renders or (render(messages[:i], True), render(messages[: i + 1], False))
    if upto.startswith(prompt):
        start, method, located = len(prompt), "prefix", None
    else:
        # The template renders the history differently without the generation prompt (whitespace, or a rewrite
        # of earlier turns once this one follows): find where turn i starts in `upto` by its parts.
        located = located or locate_parts(messages[: i + 1], render, upto)
        found = _completion_start(prompt, upto, located, i, info.generation_prompt)
        if found is None:
            return None
        start, method = found, "sentinel"
    end = _cut_after_end_of_turn(upto, start, len(upto), info.end_of_turn)
    return LastTurn(
        prompt, upto, start, end, answer_start(upto, start, end, messages[i], info), method, located
    )


def _completion_start(prompt: str, upto: str, located: Located, i: int, generation_prompt: str) -> int | None:
    if not located.contents:
        return None  # nothing anchors the turn: refuse rather than guess
    low = located.before(i)
    own = located.own_start(i)
    if own is not None:  # at the generation prompt before its first part, else at that part
        header = upto.rfind(generation_prompt, low, own) if generation_prompt else -1
        return header + len(generation_prompt) if header != -1 else own
    header = upto.find(generation_prompt, low) if generation_prompt else -1
    if header != -1:
        return header + len(generation_prompt)
    # No text of its own and no generation prompt in the render (DeepSeek-V3's prompt ends with "<think>\n", its
    # rendered turns never hold it): the turn starts where the render stops agreeing with the prompt — never inside
    # a marker both happen to begin alike ("<think>" vs "<｜tool▁calls▁begin｜>" share their "<").
    return max(low, _marker_boundary(upto, len(os.path.commonprefix([prompt, upto]))))


def _marker_boundary(text: str, pos: int) -> int:
    """`pos`, moved back to the start of a `<…>` / `[…]` marker it falls inside (an unclosed bracket before it)."""
    for opening, closing in (("<", ">"), ("[", "]")):
        start = text.rfind(opening, 0, pos)
        if start != -1 and text.find(closing, start, pos) == -1:
            pos = min(pos, start)
    return pos


# ---------------------------------------------------------------- content positions (sentinels)


def template_messages(conv: Conversation, info: TemplateInfo) -> list[dict[str, Any]]:
    """The messages as the template gets them (inline `<think>` split off where the template reads reasoning)."""
    messages = conv.template_messages()
    return split_inline_reasoning(messages) if info.supports_reasoning else messages


def locate_contents(messages: list[dict[str, Any]], render: Render, text: str) -> dict[int, tuple[int, int]]:
    """Message index → (start, end) of its content in `text`; {} when the template does not render contents
    verbatim (both as given and stripped, for templates that `| trim`)."""
    return locate_parts(messages, render, text).contents


def locate_parts(
    messages: list[dict[str, Any]], render: Render, text: str, add_generation_prompt: bool = False
) -> Located:
    """Where each message's content (and reasoning, when the template renders it verbatim) lies in `text`, the
    render of `messages` (with the generation prompt when `add_generation_prompt`). Contents are tried as given
    and stripped (templates that `| trim`); reasoning is left unmarked when marking it breaks the match."""
    with_reasoning = [True, False] if any(m.get("reasoning_content") for m in messages) else [False]
    for reasoning in with_reasoning:
        for strip in (False, True):
            marked = [dict(m) for m in messages]  # only top-level fields change: a shallow copy is enough
            for k, m in enumerate(marked):
                content = m.get("content")
                if isinstance(content, str) and content:
                    m["content"] = _wrap(k, content.strip() if strip else content)
                thought = m.get("reasoning_content")
                if reasoning and isinstance(thought, str) and thought:
                    m["reasoning_content"] = _wrap(len(messages) + k, thought.strip() if strip else thought)
            try:
                rendered = render(marked, add_generation_prompt)
            except RowError:
                return Located()
            spans = _strip_markers(rendered, text)
            if spans is not None:
                n = len(messages)
                return Located(
                    {k: v for k, v in spans.items() if k < n}, {k - n: v for k, v in spans.items() if k >= n}
                )
    return Located()


def _wrap(k: int, body: str) -> str:
    return f"{_OPEN}{k}{_END}{body}{_CLOSE}{k}{_END}"


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
    messages: list[dict[str, Any]],
    render: Render,
    text: str,
    i: int,
    info: TemplateInfo,
    renders: dict[int, tuple[str, str]] | None = None,
) -> TurnSpan | None:
    prefix = render(messages[:i], True)
    # The last message's "upto" render is the full render, already done.
    upto = text if i + 1 == len(messages) else render(messages[: i + 1], False)
    if renders is not None:
        renders[i] = (prefix, upto)
    if not (upto.startswith(prefix) and text.startswith(upto)):
        return None
    start = len(prefix)
    end = _cut_after_end_of_turn(upto, start, len(upto), info.end_of_turn)
    return TurnSpan(i, start, end, answer_start(text, start, end, messages[i], info), "prefix")


def _sentinel_span(
    text: str, located: Located, i: int, info: TemplateInfo, message: dict[str, Any]
) -> TurnSpan | None:
    contents = located.contents
    if not contents:
        return None
    after = [span[0] for parts in (contents, located.reasonings) for k, span in parts.items() if k > i]
    low, high = located.before(i), min(after, default=len(text))
    prompt = info.generation_prompt
    own = located.own_start(i)
    if own is not None:
        # The turn opens at the generation prompt before its first part (its reasoning, when rendered).
        header = text.rfind(prompt, low, own) if prompt else -1
        start = header + len(prompt) if header != -1 else own
        search_from = max(parts[i][1] for parts in (contents, located.reasonings) if i in parts)
    else:  # empty content (a tool-call-only turn): the turn starts right after its header
        header = text.find(prompt, low, high) if prompt else -1
        if header == -1:
            return None
        start = search_from = header + len(prompt)
    search_from = _after_tool_calls(text, search_from, high, message)
    if info.end_of_turn:
        hits = [(text.find(m, search_from, high), m) for m in info.end_of_turn]
        hits = [(pos, m) for pos, m in hits if pos != -1]
        if not hits:
            return None
        pos, marker = min(hits)
        end = pos + len(marker)
    else:
        end = _cut_after_end_of_turn(text, start, search_from, ())
    return TurnSpan(i, start, end, answer_start(text, start, end, message, info), "sentinel")


def _after_tool_calls(text: str, pos: int, high: int, message: dict[str, Any]) -> int:
    """Past the turn's rendered tool calls (each found by its name, in order): the turn's end-of-turn token comes
    after them, not after an analysis message before them (Harmony ends that one with <|end|>)."""
    for call in message.get("tool_calls") or []:
        name = str((call.get("function") or call).get("name") or "")
        at = text.find(name, pos, high) if name else -1
        if at != -1:
            pos = at + len(name)
    return pos


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


def answer_start(text: str, start: int, end: int, message: dict[str, Any], info: TemplateInfo) -> int:
    """Where the answer proper starts inside a turn [start, end): after its reasoning block. That is after
    `</think>` + whitespace (Qwen3, DeepSeek, ChatML with reasoning), or — for a template that writes reasoning as
    a message of its own (Harmony's analysis channel) — after the generation prompt that opens the next message."""
    body = _body_start(text, start, end)
    thought = (message.get("reasoning_content") or "").strip()
    at = text.find(thought, start, end) if thought else -1
    prompt = info.generation_prompt
    if at == -1 or not prompt:
        return body
    after = at + len(thought)
    content = (message.get("content") or "").strip()
    content_at = text.find(content, after, end) if content else end
    header = text.find(prompt, after, content_at if content_at != -1 else end)
    return max(body, header + len(prompt)) if header != -1 else body


def _body_start(text: str, start: int, end: int) -> int:
    """Where the answer starts inside a turn: after a reasoning block (`</think>` + whitespace) if there is one."""
    think_end = text.rfind(_THINK_END, start, end)
    if think_end == -1:
        return start
    pos = think_end + len(_THINK_END)
    while pos < end and text[pos] in " \n":
        pos += 1
    return pos
