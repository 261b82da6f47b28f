"""Chat templates: which one to use (a .jinja file, the tokenizer's own, or our default) and how to render.

The template is the single source of truth for special tokens: we tokenize exactly what it renders.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from sftforge.data.named_templates import CHATML, chat_template_problem, named_template
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

    spec: a path to a .jinja file, a shipped name (`qwen`, `llama3`, ...: data/named_templates.py), None /
    "tokenizer" for the tokenizer's own template, or "default" (ChatML; also "chatml").
    """
    if spec and spec.lower() == CHATML:
        return DEFAULT_CHAT_TEMPLATE, "chatml (sftforge's default ChatML)"
    named = named_template(spec) if spec else None
    if named is not None:
        return named
    if spec and spec not in ("tokenizer", "default"):
        problem = chat_template_problem(spec)
        if problem:
            raise ConfigError(problem)
        path = Path(spec).expanduser()
        return path.read_text(encoding="utf-8"), str(path)
    own = getattr(tokenizer, "chat_template", None)
    if spec != "default" and isinstance(own, str) and own.strip():
        return own, "tokenizer"
    return DEFAULT_CHAT_TEMPLATE, "default (ChatML)"


# ---------------------------------------------------------------- rendering and introspection

Render = Callable[[list[dict[str, Any]], bool], str]
_GENERATION_BLOCK = re.compile(r"\{%-?\s*generation\s*-?%\}")


def make_renderer(tokenizer: Any, template: str, tools: list[dict] | None) -> Render:
    """render(messages, add_generation_prompt) -> text; a template that refuses a conversation is a RowError.

    Tool-call arguments are dicts (the transformers convention); a template that joins them as strings (the OpenAI
    convention, e.g. DeepSeek-V3's) fails on a dict, so on a refusal the render is retried with JSON-string
    arguments, and the choice is kept for the rest of the conversation."""
    return _retrying_with_string_arguments(_fast_renderer(tokenizer, template, tools))


def _retrying_with_string_arguments(base: Render) -> Render:
    stringify = False

    def render(messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        nonlocal stringify
        if stringify:
            return base(_string_arguments(messages), add_generation_prompt)
        try:
            return base(messages, add_generation_prompt)
        except RowError:
            if not any(isinstance(_arguments(c), dict) for m in messages for c in m.get("tool_calls") or []):
                raise
            text = base(_string_arguments(messages), add_generation_prompt)
            stringify = True
            return text

    return render


def _arguments(call: dict[str, Any]) -> Any:
    return (call.get("function") or call).get("arguments")


def _string_arguments(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for m in messages:
        calls = m.get("tool_calls")
        if calls:
            fixed = []
            for call in calls:
                fn = call.get("function") or call
                if isinstance(fn.get("arguments"), dict):
                    fn = {**fn, "arguments": json.dumps(fn["arguments"], ensure_ascii=False)}
                fixed.append({**call, "function": fn} if call.get("function") else fn)
            m = {**m, "tool_calls": fixed}
        out.append(m)
    return out


def _fast_renderer(tokenizer: Any, template: str, tools: list[dict] | None) -> Render:
    """The renderer proper (see make_renderer).

    The text is byte-identical to `tokenizer.apply_chat_template(..., tokenize=False)`: the same compiled template
    with the same variables (the tokenizer's special tokens, tools, documents=None), the messages prepared the same
    way (None fields dropped, plain JSON types, reasoning aliases) — but each message is prepared once per
    conversation instead of once per render, which matters because masking renders every prefix of it."""
    compiled = _compiled(template)
    if compiled is None or (tools is not None and not all(isinstance(t, dict) for t in tools)):
        return _apply_chat_template_renderer(tokenizer, template, tools)
    try:  # private helpers of transformers: if a release renames them, use the public (slower) path
        from transformers.utils.chat_template_utils import _alias_reasoning_fields, _plain_template_data
    except ImportError:
        return _apply_chat_template_renderer(tokenizer, template, tools)

    variables = _plain_template_data(dict(tokenizer.special_tokens_map))
    plain_tools = _plain_template_data(tools)
    prepared: dict[int, tuple[dict, dict]] = {}  # id(message) → (message, as the template sees it)

    def prepare(message: dict[str, Any]) -> dict[str, Any]:
        hit = prepared.get(id(message))
        if hit is None or hit[0] is not message:
            plain = _plain_template_data({k: v for k, v in message.items() if v is not None})
            hit = prepared[id(message)] = (message, _alias_reasoning_fields([plain])[0])
        return hit[1]

    def render(messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        try:
            if not messages:
                raise ValueError(
                    "Cannot apply chat template to an empty conversation. Provide at least one message."
                )
            return compiled.render(
                messages=[prepare(m) for m in messages],
                tools=plain_tools,
                documents=None,
                add_generation_prompt=add_generation_prompt,
                **variables,
            )
        except _REFUSALS as e:
            raise RowError("template_error", f"the chat template refused this conversation: {e}") from None

    return render


def _reference_renderer(tokenizer: Any, template: str, tools: list[dict] | None) -> Render:
    """make_renderer through `apply_chat_template` itself (the definition the fast renderer must match)."""
    return _retrying_with_string_arguments(_apply_chat_template_renderer(tokenizer, template, tools))


def _apply_chat_template_renderer(tokenizer: Any, template: str, tools: list[dict] | None) -> Render:

    def render(messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        try:
            return tokenizer.apply_chat_template(
                messages,
                tools=tools,
                chat_template=template,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
            )
        except _REFUSALS as e:
            # The template itself refused (raise_exception) or broke on this conversation's shape.
            raise RowError("template_error", f"the chat template refused this conversation: {e}") from None

    return render


_REFUSALS = (TemplateError, ValueError, TypeError, KeyError)


@lru_cache(maxsize=32)
def _compiled(template: str) -> Any:
    """transformers' compiled template (same sandbox, filters, globals and extensions), in an environment that
    remembers its attribute-safety answers; None if this transformers lacks the helper or the template is broken
    (apply_chat_template then reports it the usual way)."""
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template
    except ImportError:
        return None
    try:
        compiled = _compile_jinja_template(template)
    except Exception:  # noqa: BLE001
        return None
    if type(compiled.environment) is not ImmutableSandboxedEnvironment:
        return compiled
    env = compiled.environment.overlay()  # a copy: transformers' own environment stays as it is
    env.__class__ = _RememberingSandbox
    return env.from_string(template)


class _RememberingSandbox(ImmutableSandboxedEnvironment):
    """The sandbox's verdict on `obj.attr` depends only on type(obj) and attr (jinja2's `is_internal_attribute` and
    `modifies_known_mutable` test isinstance and the name), so it is asked once per pair instead of once per
    access — a quarter of the render time of a typical template. Same verdicts, same security."""

    _verdicts: ClassVar[dict[tuple[type, str], bool]] = {}

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        key = (type(obj), attr)
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = self._verdicts[key] = super().is_safe_attribute(obj, attr, value)
        return verdict


@dataclass(frozen=True)
class TemplateInfo:
    """What masking needs to know about a template, probed once by rendering tiny conversations."""

    text: str
    # Every special token the template writes right after an assistant turn, in any situation: first the one after
    # a final answer that is the last message (e.g. <|im_end|>), then others (Harmony: <|end|> after an answer in
    # history, <|call|> after a tool call). Empty: the template ends turns with no special token.
    end_of_turn: tuple[str, ...]
    generation_prompt: str  # what add_generation_prompt appends, e.g. "<|im_start|>assistant\n"
    has_generation_markers: bool  # {% generation %} blocks (TRL-style training templates)
    supports_reasoning: bool  # the template reads `reasoning_content`
    # The end-of-turn tokens that end a generation: those after the last message when it is a final answer or a tool
    # call. Harmony's <|end|> is not one: the model writes it after its analysis and then goes on with the answer.
    stop_tokens: tuple[str, ...] = ()

    @classmethod
    def probe(cls, tokenizer: Any, template: str) -> TemplateInfo:
        terminators = turn_terminators(tokenizer, template)
        return cls(
            text=template,
            end_of_turn=terminators.all,
            generation_prompt=generation_prompt(tokenizer, template),
            has_generation_markers=bool(_GENERATION_BLOCK.search(template)),
            supports_reasoning="reasoning_content" in template,
            stop_tokens=terminators.stops,
        )


def generation_prompt(tokenizer: Any, template: str) -> str:
    """The text add_generation_prompt adds after a user turn ("" when the template adds nothing)."""
    render = make_renderer(tokenizer, template, None)
    msgs = [{"role": "user", "content": "sftforge-probe"}]
    with_prompt, without = render(msgs, True), render(msgs, False)
    # The part after what both renders share: some templates (TRL's phi3) end a prompt-less render with eos.
    return with_prompt[len(os.path.commonprefix([with_prompt, without])) :]


_PROBE = "sftforge-probe-4f1c"
_PROBE_ARGUMENT = "sftforge-probe-call-7b3e"
_PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": "sftforge_probe",
        "description": "A probe.",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
    },
}
_PROBE_CALL = {
    "type": "function",
    "function": {"name": "sftforge_probe", "arguments": {"q": _PROBE_ARGUMENT}},
}


@dataclass(frozen=True)
class Terminators:
    all: tuple[str, ...]  # TemplateInfo.end_of_turn
    stops: tuple[str, ...]  # TemplateInfo.stop_tokens


def turn_terminators(tokenizer: Any, template: str) -> Terminators:
    """What the template really writes after an assistant turn, in each situation masking meets: a final answer
    that is the last message (what the model emits to stop), the same answer with a user turn after it (history),
    and a tool call that is the last message. ChatML writes <|im_end|> in all three; Harmony writes <|return|>,
    <|end|> and <|call|>. A template that does not render tool calls (or refuses them) adds nothing for that probe."""
    user = {"role": "user", "content": "hi"}
    answer = {"role": "assistant", "content": _PROBE}
    last = _first_special_after(tokenizer, template, [user, answer], None, _PROBE)
    if last is None:  # no end-of-turn token at all: sftforge appends eos after trained turns
        return Terminators((), ())
    history = _first_special_after(
        tokenizer, template, [user, answer, {"role": "user", "content": "again"}], None, _PROBE
    )
    call = {"role": "assistant", "content": "", "tool_calls": [_PROBE_CALL]}
    tool_call = _first_special_after(tokenizer, template, [user, call], [_PROBE_TOOL], _PROBE_ARGUMENT)
    return Terminators(
        tuple(dict.fromkeys(t for t in (last, history, tool_call) if t)),
        tuple(dict.fromkeys(t for t in (last, tool_call) if t)),
    )


def _first_special_after(
    tokenizer: Any, template: str, messages: list[dict[str, Any]], tools: list[dict] | None, anchor: str
) -> str | None:
    try:
        text = make_renderer(tokenizer, template, tools)(messages, False)
    except RowError:
        return None  # the template refuses this shape (e.g. tool calls): nothing to learn from it
    if anchor not in text:
        return None
    found = _special_run(tokenizer, text[text.rfind(anchor) + len(anchor) :])
    return found[0] if found else None


def end_of_turn_markers(tokenizer: Any, template: str) -> list[str]:
    """Special tokens the template emits right after an assistant's content (e.g. <|im_end|>, <|eot_id|>, </s>)
    when that answer is the last message; see `turn_terminators` for the other situations."""
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _PROBE}]
    text = make_renderer(tokenizer, template, None)(msgs, False)
    return _special_run(tokenizer, text[text.rfind(_PROBE) + len(_PROBE) :])[:1]


def _special_run(tokenizer: Any, tail: str) -> list[str]:
    """The first run of special tokens in `tail` (text before it is skipped)."""
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
    return found


def _added_special(tokenizer: Any) -> set[str]:
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return {tok.content for tok in decoder.values() if getattr(tok, "special", False)}
