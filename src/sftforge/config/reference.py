"""The argument reference printed by `sftforge train --help` (and mirrored in the README)."""

from __future__ import annotations

import dataclasses
import textwrap
from typing import Any

from sftforge.cli_help import terminal_width, wrap_labelled
from sftforge.config.loader import ALIASES
from sftforge.config.peft_args import PeftArguments
from sftforge.config.pref_args import PreferenceArguments
from sftforge.config.schema import SECTIONS, DataArguments, LaunchArguments, ModelArguments

# The TrainingArguments users reach for most; every other field works too.
COMMON_TRAINING_KEYS = (
    "output_dir",
    "overwrite_output_dir",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "weight_decay",
    "max_grad_norm",
    "warmup_steps",
    "lr_scheduler_type",
    "lr_scheduler_kwargs",
    "logging_steps",
    "logging_dir",
    "plot_loss",
    "eval_strategy",
    "eval_steps",
    "eval_generation",
    "eval_generation_max_samples",
    "eval_max_new_tokens",
    "save_strategy",
    "save_steps",
    "save_total_limit",
    "seed",
    "bf16",
    "fp16",
    "activation_checkpointing",
    "activation_checkpointing_kwargs",
    "report_to",
    "resume_from_checkpoint",
    "ignore_resume_mismatch",
    "nan_policy",
    "max_skipped_steps",
    "push_to_hub",
    "hub_model_id",
    "deepspeed",
    "ddp_timeout",
)


_KEY_COLUMN = 32  # "  --" + the key, padded: help text starts here
_RECIPE_HELP = "a YAML recipe of the keys below (optional: every key can also be given as --key value)"


def _default_text(f: dataclasses.Field) -> str:
    if f.default_factory is not dataclasses.MISSING:
        return repr(f.default_factory())
    return str(f.default) if f.default is not dataclasses.MISSING else "None"


def _entry(f: dataclasses.Field, width: int) -> list[str]:
    """`--key` and its whole help (never cut), wrapped at word boundaries under the help column."""
    text = " ".join(f.metadata.get("help", "").split()).replace("%%", "%")  # argparse-escaped (transformers)
    default = f"(default:\xa0{_default_text(f)})"  # kept on one line
    return wrap_labelled(f"--{f.name}", f"{text} {default}".strip(), width, _KEY_COLUMN)


def argument_reference(width: int | None = None) -> str:
    width = width or terminal_width()
    out = [
        "usage: sftforge train [RECIPE.yaml] [--key value | --key=value ...]",
        "",
        "positional arguments:",
        *wrap_labelled("RECIPE.yaml", _RECIPE_HELP, width, _KEY_COLUMN),
        "",
        "Keys are the same in a YAML recipe and on the command line (which wins).",
        "Nested values: --lr_scheduler_kwargs.min_lr_rate 0.1",
        "           or: --lr_scheduler_kwargs '{\"min_lr_rate\": 0.1}'",
        "",
    ]
    sections = (("model", ModelArguments), ("data", DataArguments), ("peft", PeftArguments),
                ("preference training (stage dpo / kto)", PreferenceArguments),
                ("launch (multi-process through accelerate launch)", LaunchArguments))  # fmt: skip
    for title, cls in sections:
        out.append(f"{title}:")
        for f in dataclasses.fields(cls):
            out += _entry(f, width)
        out.append("")
    fields: dict[str, Any] = {f.name: f for f in dataclasses.fields(SECTIONS["training"])}
    out.append("training (every transformers.TrainingArguments field works; the common ones):")
    for name in COMMON_TRAINING_KEYS:
        out += _entry(fields[name], width)
    out.append("")
    aliases = ", ".join(f"{a} → {c}" for a, c in ALIASES.items())
    aliases += (
        "; warmup_ratio → warmup_steps (a float < 1 is a ratio), gradient_checkpointing → "
        "activation_checkpointing, group_by_length → train_sampling_strategy; mixed_precision: bf16|fp16|no → "
        "bf16 / fp16, load_in_4bit / load_in_8bit: true → quantization_bit: 4 / 8; quantization_bit: 0 and "
        "max_samples: 0 mean off / every row."
    )
    # no break inside "old → new": non-breaking spaces there while wrapping
    lines = textwrap.wrap(
        "aliases: " + aliases.replace(" → ", "\xa0→\xa0"), width, subsequent_indent=" " * 9,
        break_long_words=False, break_on_hyphens=False,
    )  # fmt: skip
    out += [line.replace("\xa0", " ") for line in lines]
    out += _migration_lines(width)
    return "\n".join(out)


def _migration_lines(width: int) -> list[str]:
    from sftforge.config.migrate import SWITCHES
    from sftforge.data.named_templates import template_names

    items = [
        "dataset: a,b + dataset_dir (holds dataset_info.json: file_name | hf_hub_url, columns, tags, num_samples) "
        "→ train_data_path + columns / tags, or datasets: [...]; eval_dataset → eval_data_path",
        f"template: {' | '.join(template_names())} | a .jinja file",
        "stage: sft | pt | dpo | kto (pref_beta, pref_loss, pref_ftx, simpo_gamma, kto_*_weight); plot_loss; new_special_tokens: '<a>,<b>'; logging_dir; lora_rank; "
        "lora_target: q_proj,v_proj | all",
        "also understood: " + ", ".join(SWITCHES),
    ]
    out = ["", "from LLaMA-Factory / TRL recipes:"]
    for item in items:  # wrapped like the rest of the reference: nothing cut, nothing past the width
        out += textwrap.wrap(
            item, width, initial_indent="  ", subsequent_indent="    ", break_long_words=False
        )
    return out
