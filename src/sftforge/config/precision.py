"""Precision that several places could decide: the recipe (bf16 / fp16), an accelerate config's `mixed_precision`
and a DeepSpeed JSON's `bf16` / `fp16` sections. The recipe decides; the others must agree or say `auto`.

Guides are written for GPUs: their `bf16: true` on a CPU-only machine becomes fp32 with a `decision` line (in the
launching process and in every launched one, each resolving the same recipe), and an accelerate config's
`mixed_precision: bf16` (ACCELERATE_MIXED_PRECISION in launched processes) follows the recipe. A DeepSpeed JSON that
sets `"enabled": true/false` against the recipe is refused at config time, before any model loads, instead of
failing in transformers' DeepSpeed set-up inside every process.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

_SECTIONS = {"bf16": ("bf16", "bfloat16"), "fp16": ("fp16",)}  # DeepSpeed also reads "bfloat16"


def precision_name(bf16: bool, fp16: bool) -> str:
    return "bf16" if bf16 else "fp16" if fp16 else "fp32"


def read_deepspeed_json(spec: Any) -> tuple[dict[str, Any] | None, str | None]:
    """(the JSON as a dict, None) or (None, a reason); a dict (a recipe's inline `deepspeed:` mapping) as is."""
    if isinstance(spec, dict):
        return spec, None
    path = Path(str(spec)).expanduser()
    if not path.is_file():
        return None, None  # reported elsewhere (a missing file), or not a path at all
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return None, f"deepspeed: {path} is not valid JSON ({e})."
    return (doc, None) if isinstance(doc, dict) else (None, f"deepspeed: {path} must hold a JSON object.")


def deepspeed_precision_conflicts(
    doc: dict[str, Any], bf16: bool, fp16: bool, where: str, why: str
) -> list[str]:
    """One problem per `bf16`/`fp16` section whose explicit `enabled` contradicts the recipe ("auto" never does)."""
    problems = []
    recipe = {"bf16": bf16, "fp16": fp16}
    for key, names in _SECTIONS.items():
        for name in names:
            section = doc.get(name)
            if not isinstance(section, dict) or section.get("enabled", "auto") == "auto":
                continue
            enabled = section["enabled"]
            if isinstance(enabled, str):
                enabled = enabled.strip().lower() in ("true", "1", "yes")
            if bool(enabled) != recipe[key]:
                problems.append(
                    f"deepspeed: {where} sets {name}.enabled: {str(bool(enabled)).lower()}, but the recipe trains in "
                    f'{precision_name(bf16, fp16)} ({why}). Make them agree: "enabled": "auto" in the JSON lets '
                    "the recipe decide (as configs/deepspeed/*.json do), or change bf16/fp16 in the recipe."
                )
    return problems


def check_deepspeed_json(train: dict[str, Any], why: str, problems: list[str]) -> None:
    """The recipe's `deepspeed` JSON, or the one accelerate passes to launched processes, against the recipe's
    resolved precision (`why` says where that came from, e.g. "bf16: true")."""
    spec = train.get("deepspeed")
    if not spec and os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        spec = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE") or None
    if not spec:
        return
    doc, error = read_deepspeed_json(spec)
    if error:
        problems.append(error)
    if doc is None:
        return
    where = "the inline deepspeed config" if isinstance(spec, dict) else str(spec)
    problems += deepspeed_precision_conflicts(
        doc, bool(train.get("bf16")), bool(train.get("fp16")), where, why
    )


def follow_recipe_in_accelerate(train: dict[str, Any]) -> list[str]:
    """In a process `accelerate launch` started, ACCELERATE_MIXED_PRECISION holds the config file's
    `mixed_precision` (the shipped ones say bf16). transformers uses it whenever bf16 and fp16 are both off, so
    a recipe's fp32 (e.g. on a CPU) would silently become bf16 — or fail inside DeepSpeed. The recipe decides.

    With a DeepSpeed JSON, accelerate also refuses a config file's `mixed_precision` outright in every process
    ("the following accelerate config variables will be ignored: [... 'mixed_precision']"; ACCELERATE_CONFIG_DS_FIELDS
    lists it) unless `--mixed_precision` was given on the command line: the JSON's "auto" takes the recipe's value,
    so that line is dropped from the list too."""
    notes = []
    fields = os.environ.get("ACCELERATE_CONFIG_DS_FIELDS")
    if fields is not None and "mixed_precision" in fields.split(","):
        os.environ["ACCELERATE_CONFIG_DS_FIELDS"] = ",".join(
            f for f in fields.split(",") if f != "mixed_precision"
        )
        notes.append(
            "precision: the accelerate config's mixed_precision is left to the recipe (the DeepSpeed JSON's "
            '"auto" takes the recipe\'s bf16/fp16)'
        )
    env = os.environ.get("ACCELERATE_MIXED_PRECISION")
    wanted = {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}[
        precision_name(bool(train.get("bf16")), bool(train.get("fp16")))
    ]
    if env is None or env == wanted:
        return notes
    os.environ["ACCELERATE_MIXED_PRECISION"] = wanted
    name = "fp32" if wanted == "no" else wanted
    return [*notes, f"precision: {name} from the recipe, not the accelerate config's mixed_precision: {env}"]
