""" "Did you mean" for an unknown recipe key, kept within the key's concept.

A plain closest-spelling match points across concepts (`lora_rank` → `local_rank`, `dataset` → `data_seed`). So the
key's concept is read first — the recipe section it was written under, else its first word (`lora_*` is peft,
`dataset*` is data) — and only names of that concept are suggested. A key of no known concept may get any name but
a curated false friend.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping

# A key's first word → its concept (a config section). Words shared by several concepts are left out.
_CONCEPT_WORDS: dict[str, str] = {
    **dict.fromkeys(
        (
            "lora",
            "peft",
            "adapter",
            "adapters",
            "bnb",
            "quant",
            "quantization",
            "dora",
            "rslora",
            "freeze",
            "ia3",
            "prefix",
            "prompt",
            "num_virtual",
            "finetuning",
            "modules",
        ),
        "peft",
    ),
    **dict.fromkeys(
        (
            "data",
            "dataset",
            "datasets",
            "columns",
            "column",
            "tags",
            "template",
            "chat",
            "mix",
            "interleave",
            "stream",
            "streaming",
            "packing",
            "pack",
            "truncation",
            "txt",
            "text",
            "stage",
            "cutoff",
            "train_data",
            "eval_data",
            "multi",
            "max_samples",
        ),
        "data",
    ),
    **dict.fromkeys(("model", "tokenizer", "attn", "config", "router", "trust", "torch"), "model"),
    **dict.fromkeys(("num_processes", "num_machines", "machine", "main", "accelerate"), "launch"),
}
# Suggestions that look close but never mean what the key's author wanted: name → first words of such keys.
_FALSE_FRIENDS: dict[str, tuple[str, ...]] = {
    "local_rank": ("lora", "rank", "r"),
    "data_seed": ("dataset", "datasets"),
    "block_size": ("batch",),  # stage pt's name of max_length, not a batch size
}


def concept_of(key: str) -> str | None:
    """The section a key's first word belongs to (`lora_rnk` → peft), or None."""
    words = key.lower().split("_")
    for n in (2, 1):  # two-word stems first (train_data_path, num_virtual_tokens)
        concept = _CONCEPT_WORDS.get("_".join(words[:n]))
        if concept:
            return concept
    return None


def suggest_key(key: str, names: Mapping[str, str], section: str | None = None) -> str | None:
    """The valid name closest to `key`, within its concept; None when there is none.

    names: every valid name (fields and aliases) → the section it belongs to. section: the recipe section the key was
    written under (`peft:`), which outranks the key's first word."""
    concept = section or concept_of(key)
    candidates = [name for name, owner in names.items() if _allowed(key, name, owner, concept)]
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    return close[0] if close else None


def _allowed(key: str, name: str, owner: str, concept: str | None) -> bool:
    first = key.lower().split("_")[0]
    if first in _FALSE_FRIENDS.get(name, ()):
        return False
    if concept is None:
        return True
    return owner == concept or concept_of(name) == concept  # an alias spelled in the key's concept counts too


def section_names(sections: Mapping[str, Iterable[str]], aliases: Mapping[str, str]) -> dict[str, str]:
    """{name: section} over the sections' field names and the aliases (an alias belongs to its target's section)."""
    out = {name: section for section, fields in sections.items() for name in fields}
    for alias, target in aliases.items():
        if target in out:
            out.setdefault(alias, out[target])
    return out
