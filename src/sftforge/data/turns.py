"""One example per trained assistant turn, for chat templates that render earlier turns differently (`multi_turn`).

Many templates rewrite a turn once later turns follow: Qwen3 drops the <think> block of earlier turns, gpt-oss
(Harmony) drops their analysis and ends them with <|end|> instead of the <|return|> the model stops on. Trained as
the whole conversation renders it, such a turn teaches the model an output it never produces at inference.

- `whole`: one example per row, the whole conversation's render, as before `multi_turn` existed: a turn that cannot
  be placed and verified in it (e.g. one that ends with a token generation never stops on) refuses the row, but a
  turn shown differently from how it is generated (Qwen3's earlier turns without their <think>) is trained as shown.
- `split`: one example per trained assistant turn i: `render(messages[:i], add_generation_prompt=True)` — exactly
  what inference sends — then what the template renders for turn i as the last message; only that turn is trained.
  Where the template keeps the history as it is (most do), the example is exactly `render(messages[:i+1])`.
- `auto` (default): per row, whole when every trained turn reads in the whole render exactly as the model generates
  it at that point, else split. `train_on: all` (every token trained) and plain text rows are never split.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from sftforge.data.conversation import Conversation
from sftforge.data.masking import (
    MaskOptions,
    Plan,
    _insert_after,
    _merge,
    check_turn_end,
    plan_conversation,
    plan_rendered,
)
from sftforge.data.spans import (
    LastTurn,
    RenderedConversation,
    locate_parts,
    render_conversation,
    render_last_turn,
    template_messages,
)
from sftforge.data.templates import TemplateInfo, make_renderer
from sftforge.errors import RowError

MULTI_TURN = ("auto", "split", "whole")
SPLIT_TURN = (
    "split_turn"  # Conversation.meta key of a split example: the row's index of its trained (last) turn
)

# Why a row was split (DataStats.split_rows keys) → what the start-up summary says.
SPLIT_REASONS = {
    "rewritten": "the chat template renders earlier turns differently once later turns follow (drops their "
    "reasoning, ends them with another token, …), so the whole conversation would not train them as generated",
    "forced": "as multi_turn: split asks",
}
# Refusals of the whole render that splitting can cure: the turn reads differently once later turns follow.
_SPLIT_CURES = frozenset({"template_rewrites_earlier_turns", "end_of_turn_missing", "mask_mismatch"})


@dataclass(frozen=True)
class Split:
    """The decision to split a row: why (a SPLIT_REASONS key), and its trained turns, one example each."""

    reason: str
    turns: tuple[int, ...]


def trained_turns(conv: Conversation, options: MaskOptions) -> list[int]:
    """The assistant turns trained under the policy and the per-message switches."""
    assistants = [i for i, m in enumerate(conv.messages) if m.role == "assistant"]
    if options.train_on == "last_assistant":
        assistants = assistants[-1:]
    return [i for i in assistants if conv.messages[i].train is not False]


def plan_row(
    conv: Conversation, tokenizer: Any, info: TemplateInfo, options: MaskOptions, multi_turn: str
) -> Plan | Split:
    """A whole row: its Plan (one example), or the decision to split it (see the module docstring)."""
    if conv.format == "text" or multi_turn == "whole" or options.train_on == "all":
        return plan_conversation(conv, tokenizer, info, options)
    if multi_turn == "split":
        return _split(conv, options, "forced")
    try:
        rendered = render_conversation(conv, tokenizer, info)
        plan = plan_rendered(conv, rendered, tokenizer, info, options)
    except RowError as e:
        if e.reason not in _SPLIT_CURES:
            raise
        return _split(conv, options, "rewritten")
    if any(not _as_generated(rendered, info, i) for i in trained_turns(conv, options)):
        return _split(conv, options, "rewritten")
    return plan


def split_units(conv: Conversation, split: Split) -> list[Conversation]:
    """One conversation per trained turn: the messages up to it, marked so that only its last turn is trained."""
    return [
        replace(conv, messages=conv.messages[: i + 1], meta={**conv.meta, SPLIT_TURN: i}) for i in split.turns
    ]


def _split(conv: Conversation, options: MaskOptions, reason: str) -> Split:
    turns = trained_turns(conv, options)
    if not turns:
        raise RowError("no_trainable_tokens", "no turn is marked for training under this policy")
    for k in range(turns[-1] + 1, len(conv.messages)):
        if conv.messages[k].train is True:
            raise RowError(
                "cannot_locate_message",
                f"turn {k} ({conv.messages[k].role}) is marked to train, but no trained assistant turn follows "
                "it: split examples end at an assistant turn (set multi_turn: whole to train it)",
            )
    return Split(reason, tuple(turns))


def _as_generated(rendered: RenderedConversation, info: TemplateInfo, i: int) -> bool:
    """Turn i reads in the whole render exactly as the model writes it when generating after the messages
    before it (the same text, through the same end-of-turn token)."""
    turn = rendered.turns[i]
    if turn.method == "prefix":
        return True  # placed as exactly that completion
    messages, render, text = rendered.messages, rendered.render, rendered.text
    assert render is not None
    renders = rendered.prefix_renders.get(i)
    if renders is None:  # placed by {% generation %} markers: the prefix diff was not tried
        upto = text if i + 1 == len(messages) else render(messages[: i + 1], False)
        renders = (render(messages[:i], True), upto)
        if upto.startswith(renders[0]) and text.startswith(upto):
            return True
    located = rendered.located if renders[1] == text else None
    last = render_last_turn(messages, render, info, i, renders, located)
    return last is not None and last.completion == text[turn.start : turn.end]


def plan_turn(conv: Conversation, tokenizer: Any, info: TemplateInfo, options: MaskOptions) -> Plan:
    """A split example: only the conversation's last message (an assistant turn) is trained, rendered after
    exactly the prompt inference sends for the messages before it."""
    messages = template_messages(conv, info)
    i = len(messages) - 1
    row_index = conv.meta.get(SPLIT_TURN, i)
    render = make_renderer(tokenizer, info.text, conv.tools)
    last = render_last_turn(messages, render, info, i)
    if last is None:
        raise RowError(
            "template_rewrites_earlier_turns",
            f"turn {row_index} (assistant): it cannot be located in the render of the conversation up to it, "
            "and its content could not be located by markers either (the template transforms the content)",
        )
    _verify_turn(conv, last, info, row_index)
    shift = len(last.prompt) - last.start  # `upto` positions → example positions
    text = last.prompt + last.upto[last.start :]
    begin = last.start if options.train_on_reasoning else last.body_start
    spans = [(begin + shift, last.end + shift)]
    flagged = _flagged_context(conv, options)
    if flagged:
        contents = locate_parts(messages[:i], render, last.prompt, add_generation_prompt=True).contents
        for k in flagged:
            if k not in contents:
                raise RowError("cannot_locate_message", f"turn {k} ({conv.messages[k].role}) is marked to train "
                               "but the template does not render its content verbatim")  # fmt: skip
            spans.append(contents[k])
    spans = _merge(spans)
    if (
        not info.end_of_turn and tokenizer.eos_token
    ):  # as for whole rows: eos after the turn, so it learns to stop
        text, spans = _insert_after(text, spans, {last.end + shift}, tokenizer.eos_token)
    return Plan(text, spans, last.method)


def _flagged_context(conv: Conversation, options: MaskOptions) -> list[int]:
    """Non-assistant messages marked `train: true` that this example trains: those after the previous trained
    assistant turn (each such message is trained once, in the first example that shows it)."""
    out = []
    for k in range(len(conv.messages) - 2, -1, -1):
        message = conv.messages[k]
        if message.role == "assistant":
            if options.train_on != "last_assistant" and message.train is not False:
                break
        elif message.train is True:
            out.append(k)
    return sorted(out)


def _verify_turn(conv: Conversation, last: LastTurn, info: TemplateInfo, row_index: int) -> None:
    """The trained completion ends with a token generation stops on, holds the turn's content and tool calls, and
    no other message's text."""
    label = f"turn {row_index} (assistant)"
    check_turn_end(last.upto, last.end, row_index, info)
    message = conv.messages[-1]
    completion = last.completion
    names = [str((c.get("function") or c).get("name")) for c in message.tool_calls or []]
    missing = [n for n in names if n not in completion]
    if missing:
        raise RowError(
            "tool_calls_not_rendered",
            f"{label}: the chat template does not render its tool call(s) {missing}; training the turn would "
            "teach the model to answer without them. Use a template with tool support (e.g. chat_template: "
            "default) or drop tool rows",
        )
    located = last.located
    content = message.content.strip()
    if content and content not in completion:
        at = located.contents.get(len(conv.messages) - 1) if located else None
        if at is None or not (last.start <= at[0] and at[1] <= last.end):
            raise RowError("mask_mismatch", f"{label}: the trained span does not hold its content")
    if located is None:
        return  # the completion follows the exact prompt, which holds every earlier message
    for parts in (located.contents, located.reasonings):
        for k, (start, end) in parts.items():
            if k != len(conv.messages) - 1 and end > start and start < last.end and last.start < end:
                raise RowError(
                    "mask_mismatch",
                    f"turn {k} ({conv.messages[k].role}): part of it would be trained with {label}; refusing the row",
                )
