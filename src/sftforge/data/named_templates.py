"""Chat templates shipped by name: `template: qwen` (LLaMA-Factory's names) or the file's own name.

The files live in data/chat_templates/ (their origin and licences: data/chat_templates/NOTICE). A name maps to a
file only where the file renders the format LLaMA-Factory's template of that name trains; for every other name the
model's own template (`template: tokenizer`, the default) or a .jinja file is the way, and the error says so.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

_FOLDER = Path(__file__).with_name("chat_templates")
# The sftforge default template (ChatML with tools and reasoning, data/templates.py) answers to "chatml" too.
CHATML = "chatml"

# name → file in _FOLDER. LLaMA-Factory's names first, then the files' own names.
NAMED_TEMPLATES: dict[str, str] = {
    "qwen": "qwen2_5.jinja",  # LLaMA-Factory's `qwen`: Qwen2 / Qwen2.5 (ChatML, Qwen's tool format)
    "qwen2_5": "qwen2_5.jinja",
    "qwen2.5": "qwen2_5.jinja",
    "qwen3": "qwen3.jinja",
    "llama3": "llama3.jinja",
    "llama2": "llama-2-chat.jinja",
    "llama-2-chat": "llama-2-chat.jinja",
    "mistral": "mistral-instruct.jinja",
    "mistral-instruct": "mistral-instruct.jinja",
    "gemma": "gemma-it.jinja",
    "gemma-it": "gemma-it.jinja",
    "gemma3": "gemma3.jinja",
    "phi": "phi-3.jinja",  # LLaMA-Factory's `phi` is Phi-3's format
    "phi3": "phi-3.jinja",
    "phi-3": "phi-3.jinja",
    "deepseek3": "deepseekv3.jinja",
    "deepseekv3": "deepseekv3.jinja",
    "alpaca": "alpaca.jinja",
    "vicuna": "vicuna.jinja",
    "zephyr": "zephyr.jinja",
}


def template_names() -> list[str]:
    """Every name `template:` accepts besides a path: 'tokenizer', 'default', 'chatml' and the shipped ones."""
    return ["tokenizer", "default", CHATML, *NAMED_TEMPLATES]


def is_template_name(spec: str) -> bool:
    return spec.lower() in NAMED_TEMPLATES or spec.lower() == CHATML


@cache
def named_template(spec: str) -> tuple[str, str] | None:
    """(template text, where it came from) for a shipped name, None for anything else (a path, 'tokenizer')."""
    file = NAMED_TEMPLATES.get(spec.lower())
    if file is None:
        return None
    return (_FOLDER / file).read_text(encoding="utf-8"), f"{spec} (shipped: {file})"


_TEMPLATE_SUFFIXES = (".jinja", ".jinja2", ".j2", ".tmpl", ".txt")  # a value ending so is a path, not a name


def chat_template_problem(spec: str) -> str | None:
    """Why `chat_template: spec` cannot be used (None when it can): checked at config time and at load time."""
    if spec in ("tokenizer", "default") or is_template_name(spec) or Path(spec).expanduser().is_file():
        return None
    if "/" in spec or os.sep in spec or spec.startswith("~") or spec.lower().endswith(_TEMPLATE_SUFFIXES):
        return (
            f"chat_template: file {spec!r} does not exist. Give a path to a .jinja file, a shipped name "
            "(qwen, llama3, ...), 'tokenizer' (use the tokenizer's own) or 'default' (ChatML)."
        )
    return _unknown_name_problem(spec)


# LLaMA-Factory names a guess would get wrong: their own explanation instead of "did you mean".
_NOT_SHIPPED = {
    "qwen3_nothink": "LLaMA-Factory's qwen3_nothink (Qwen3 without <think> blocks) is not shipped: Qwen3 "
    "Instruct-2507 models carry it as their own template (template: tokenizer, the default); `qwen3` is the "
    "hybrid thinking template, which writes an empty <think> block into the last answer",
}


def _unknown_name_problem(spec: str) -> str:
    """The message for a `template:` value that is neither a file nor a known name."""
    import difflib

    if spec.lower() in _NOT_SHIPPED:
        return f"chat_template: {_NOT_SHIPPED[spec.lower()]}."
    close = difflib.get_close_matches(spec.lower(), template_names(), n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return (
        f"chat_template: {spec!r} is neither a .jinja file nor a shipped template name.{hint} Names: "
        f"{', '.join(template_names())}. For another model family, use the model's own template (template: "
        "tokenizer, the default, when the tokenizer has one) or give the path of a .jinja file."
    )
