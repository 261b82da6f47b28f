"""Chat templates: which one to use (a .jinja file, the tokenizer's own, or our default) and how to render.

The template is the single source of truth for special tokens: we tokenize exactly what it renders.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2.exceptions import TemplateError

from sftforge.errors import ConfigError, RowError

# ChatML with tools, tool calls and reasoning, for tokenizers that ship no template (and for our tiny models).
# Every turn ends with <|im_end|>, the end-of-turn token that generation stops on.
DEFAULT_CHAT_TEMPLATE = (
    "{%- set ns = namespace(start=0) -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}{%- set ns.start = 1 -%}{%- endif -%}"
    "{%- if tools -%}"
    "{{ '<|im_start|>system\\n' }}"
    "{%- if ns.start == 1 -%}{{ messages[0]['content'] + '\\n\\n' }}{%- endif -%}"
    "{{ '# Tools\\nYou may call these functions:\\n' }}"
    "{%- for tool in tools -%}{{ tool | tojson + '\\n' }}{%- endfor -%}"
    '{{ \'Call one as <tool_call>{"name": ..., "arguments": ...}</tool_call>.<|im_end|>\\n\' }}'
    "{%- elif ns.start == 1 -%}"
    "{{ '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- for message in messages[ns.start:] -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{%- if message.get('reasoning_content') -%}"
    "{{ '<think>\\n' + message['reasoning_content'] + '\\n</think>\\n\\n' }}"
    "{%- endif -%}"
    "{{ message['content'] or '' }}"
    "{%- for call in message.get('tool_calls') or [] -%}"
    "{%- set fn = call['function'] if call.get('function') else call -%}"
    "{{ '<tool_call>{\"name\": ' + fn['name'] | tojson + ', \"arguments\": ' + fn['arguments'] | tojson + '}</tool_call>' }}"
    "{%- endfor -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') + '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)
DEFAULT_END_OF_TURN = "<|im_end|>"


def resolve_chat_template(spec: str | None, tokenizer: Any) -> tuple[str, str]:
    """Return (template_text, where_it_came_from).

    spec: a path to a .jinja file, or None / "tokenizer" for the tokenizer's own template, or "default".
    """
    if spec and spec not in ("tokenizer", "default"):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"chat_template: file {spec!r} does not exist. Give a path to a .jinja file, "
                "'tokenizer' (use the tokenizer's own) or 'default' (ChatML)."
            )
        return path.read_text(encoding="utf-8"), str(path)
    own = getattr(tokenizer, "chat_template", None)
    if spec != "default" and isinstance(own, str) and own.strip():
        return own, "tokenizer"
    return DEFAULT_CHAT_TEMPLATE, "default (ChatML)"


# ---------------------------------------------------------------- rendering and introspection

Render = Callable[[list[dict[str, Any]], bool], str]
_GENERATION_BLOCK = re.compile(r"\{%-?\s*generation\s*-?%\}")


def make_renderer(tokenizer: Any, template: str, tools: list[dict] | None) -> Render:
    """render(messages, add_generation_prompt) -> text; a template that refuses a conversation is a RowError."""

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


@dataclass(frozen=True)
class TemplateInfo:
    """What masking needs to know about a template, probed once by rendering a tiny conversation."""

    text: str
    end_of_turn: tuple[
        str, ...
    ]  # special token(s) emitted right after an assistant's content, e.g. <|im_end|>
    generation_prompt: str  # what add_generation_prompt appends, e.g. "<|im_start|>assistant\n"
    has_generation_markers: bool  # {% generation %} blocks (TRL-style training templates)
    supports_reasoning: bool  # the template reads `reasoning_content`

    @classmethod
    def probe(cls, tokenizer: Any, template: str) -> TemplateInfo:
        return cls(
            text=template,
            end_of_turn=tuple(end_of_turn_markers(tokenizer, template)),
            generation_prompt=generation_prompt(tokenizer, template),
            has_generation_markers=bool(_GENERATION_BLOCK.search(template)),
            supports_reasoning="reasoning_content" in template,
        )


def generation_prompt(tokenizer: Any, template: str) -> str:
    """The text add_generation_prompt adds after a user turn ("" when the template adds nothing)."""
    render = make_renderer(tokenizer, template, None)
    msgs = [{"role": "user", "content": "sftforge-probe"}]
    with_prompt, without = render(msgs, True), render(msgs, False)
    return with_prompt[len(without) :] if with_prompt.startswith(without) else ""


def end_of_turn_markers(tokenizer: Any, template: str) -> list[str]:
    """Special tokens the template emits right after an assistant's content (e.g. <|im_end|>, <|eot_id|>, </s>)."""
    probe = "sftforge-probe-4f1c"
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": probe}]
    text = make_renderer(tokenizer, template, None)(msgs, False)
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
