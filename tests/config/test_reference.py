"""`sftforge train --help`: every key with its whole help and default, wrapped at word boundaries."""

from __future__ import annotations

import dataclasses

import pytest

from sftforge.config import reference
from sftforge.config.peft_args import PeftArguments
from sftforge.config.schema import SECTIONS, DataArguments, LaunchArguments, ModelArguments

COLUMN = 32


def _entries(text: str) -> dict[str, str]:
    """`--key` → its help, the wrapped lines joined again."""
    entries: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if line.startswith("  --"):
            key, _, first = line[4:].partition(" ")
            entries[key] = first.strip()
        elif key and line.startswith(" " * COLUMN) and line.strip():
            entries[key] = f"{entries[key]} {line.strip()}".strip()
        else:
            key = None
    return entries


@pytest.mark.parametrize("width", [80, 110])
def test_every_key_shows_its_whole_help_and_default(width):
    entries = _entries(reference.argument_reference(width))
    fields = [
        f
        for cls in (ModelArguments, DataArguments, PeftArguments, LaunchArguments)
        for f in dataclasses.fields(cls)
    ]
    training = {f.name: f for f in dataclasses.fields(SECTIONS["training"])}
    fields += [training[name] for name in reference.COMMON_TRAINING_KEYS]
    for f in fields:
        help_text = " ".join(f.metadata["help"].split()).replace("%%", "%")
        assert entries[f.name].startswith(help_text + " (default: "), f.name  # never cut, e.g. with "..."
        assert entries[f.name].endswith(")")
    assert "(default: 1024)" in entries["max_length"]
    assert "(default: outputs/sft)" in entries["output_dir"]


@pytest.mark.parametrize("width", [80, 110])
def test_lines_fit_the_width_and_end_at_word_boundaries(width):
    text = reference.argument_reference(width)
    for line in text.splitlines():
        # only a single unbreakable word (a long URL) may run past the width
        assert len(line) <= width or len(line.strip().split()) == 1, line
    assert "max_seq_length → max_length" in text  # an alias is never split over two lines
    assert "usage: sftforge train [RECIPE.yaml]" in text and "  RECIPE.yaml " in text
