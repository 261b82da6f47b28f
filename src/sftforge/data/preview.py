"""Show what is trained: the rendered example with trained tokens highlighted (colour on a terminal, [[brackets]]
otherwise). Runs of trained and untrained tokens are decoded separately, so each run reads as the text it came from."""

from __future__ import annotations

from typing import Any

from sftforge.data.masking import IGNORE_INDEX

COLOUR_ON, COLOUR_OFF = "\x1b[1;32m", "\x1b[0m"  # bold green for trained text
BRACKET_ON, BRACKET_OFF = "[[", "]]"


def token_runs(labels: list[int]) -> list[tuple[int, int, bool]]:
    """Maximal runs of trained / untrained positions: (start, end, trained)."""
    runs: list[tuple[int, int, bool]] = []
    for k, label in enumerate(labels):
        trained = label != IGNORE_INDEX
        if runs and runs[-1][2] == trained:
            runs[-1] = (runs[-1][0], k + 1, trained)
        else:
            runs.append((k, k + 1, trained))
    return runs


def highlight(tokenizer: Any, input_ids: list[int], labels: list[int], colour: bool) -> str:
    on, off = (COLOUR_ON, COLOUR_OFF) if colour else (BRACKET_ON, BRACKET_OFF)
    parts = []
    for start, end, trained in token_runs(labels):
        text = tokenizer.decode(
            input_ids[start:end], skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
        parts.append(f"{on}{text}{off}" if trained else text)
    return "".join(parts)
