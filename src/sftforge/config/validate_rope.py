"""`rope_scaling`: a mapping transformers can apply as the model's rope_parameters, checked before any work.

The keys each kind needs beyond these (yarn's beta_fast, llama3's low_freq_factor, ...) are transformers' to check;
the model loader reports what it refuses with this key's name (model/context.py).
"""

from __future__ import annotations

from typing import Any

# The kinds that scale by `factor` (longrope scales by short_factor / long_factor lists instead)
FACTOR_TYPES = ("linear", "dynamic", "yarn", "llama3")
EXAMPLE = "{rope_type: linear, factor: 2.0}"


def rope_types() -> tuple[str, ...]:
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    return tuple(ROPE_INIT_FUNCTIONS)


def check_rope_scaling(model: dict[str, Any], problems: list[str]) -> None:
    scaling = model.get("rope_scaling")
    if scaling is None:
        return
    if isinstance(scaling, str):  # LLaMA-Factory writes the kind alone and derives the factor itself
        problems.append(
            f"rope_scaling: {scaling!r} names only the kind; write the mapping with its factor, e.g. {EXAMPLE} "
            "(factor = max_length / the model's max_position_embeddings)."
        )
        return
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind not in rope_types():
        problems.append(
            f"rope_scaling: rope_type {kind!r} is not one of {', '.join(rope_types())}; e.g. {EXAMPLE}."
        )
        return
    factor = scaling.get("factor")
    if kind in FACTOR_TYPES and (
        isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor < 1
    ):
        problems.append(
            f"rope_scaling: {kind} needs a factor of at least 1 (how many times the model's "
            f"max_position_embeddings to reach), got {factor!r}; e.g. {EXAMPLE}."
        )
