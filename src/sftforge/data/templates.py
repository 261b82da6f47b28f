"""Chat templates: which one to use (a .jinja file, the tokenizer's own, or our default) and how to render.

The template is the single source of truth for special tokens: we tokenize exactly what it renders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sftforge.errors import ConfigError

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
