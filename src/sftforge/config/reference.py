"""The argument reference printed by `sftforge train --help` (and mirrored in the README)."""

from __future__ import annotations

import dataclasses

from sftforge.config.loader import ALIASES
from sftforge.config.peft_args import PeftArguments
from sftforge.config.schema import DataArguments, LaunchArguments, ModelArguments, SFTTrainingArguments

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


def _first_sentence(text: str) -> str:
    text = " ".join(text.split()).replace("%%", "%")  # argparse-escaped help strings from transformers
    return text if len(text) < 140 else text[:137] + "..."


def argument_reference() -> str:
    out = [
        "usage: sftforge train [RECIPE.yaml] [--key value | --key=value ...]",
        "",
        "Keys are the same in the YAML recipe and on the command line; the command line wins.",
        "Nested values: --lr_scheduler_kwargs '{\"min_lr_rate\": 0.1}' or --lr_scheduler_kwargs.min_lr_rate 0.1",
        "",
    ]
    sections = (("model", ModelArguments), ("data", DataArguments), ("peft", PeftArguments),
                ("launch (multi-process through accelerate launch)", LaunchArguments))  # fmt: skip
    for title, cls in sections:
        out.append(f"{title}:")
        for f in dataclasses.fields(cls):
            out.append(
                f"  --{f.name:<28} {_first_sentence(f.metadata.get('help', ''))} (default: {f.default})"
            )
        out.append("")
    fields = {f.name: f for f in dataclasses.fields(SFTTrainingArguments)}
    out.append("training (every transformers.TrainingArguments field works; the common ones):")
    for name in COMMON_TRAINING_KEYS:
        f = fields[name]
        default = f.default if f.default is not dataclasses.MISSING else None
        out.append(f"  --{name:<28} {_first_sentence(f.metadata.get('help', ''))} (default: {default})")
    out.append("")
    out.append("aliases: " + ", ".join(f"{a} → {c}" for a, c in ALIASES.items()))
    out.append(
        "         warmup_ratio → warmup_steps (a float < 1 is a ratio), gradient_checkpointing → "
        "activation_checkpointing, group_by_length → train_sampling_strategy"
    )
    out.append(
        "         mixed_precision: bf16|fp16|no → bf16 / fp16, load_in_4bit / load_in_8bit: true → "
        "quantization_bit: 4 / 8; quantization_bit: 0 and max_samples: 0 mean off / every row"
    )
    out += _migration_lines()
    return "\n".join(out)


def _migration_lines() -> list[str]:
    from sftforge.config.migrate import SWITCHES
    from sftforge.data.named_templates import template_names

    return [
        "",
        "from LLaMA-Factory / TRL recipes:",
        "  dataset: a,b + dataset_dir (holds dataset_info.json: file_name | hf_hub_url, columns, tags, num_samples) "
        "→ train_data_path + columns / tags, or datasets: [...]; eval_dataset → eval_data_path",
        f"  template: {' | '.join(template_names())} | a .jinja file",
        "  stage: sft | pt; plot_loss; new_special_tokens: '<a>,<b>'; logging_dir; lora_rank; lora_target: q_proj,v_proj | all",
        "  also understood: " + ", ".join(SWITCHES),
    ]
