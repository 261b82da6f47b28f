"""`sftforge train RECIPE --dry_run`: every check a run makes before its first step, then the start-up summary, and
exit — no weights read, nothing trained, no process launched, nothing written to output_dir.

What runs, in the order a real run meets it: the launch (config file, node keys, DeepSpeed JSON against the
recipe's precision), output_dir and resume, the tokenizer and chat template, the data (read and tokenized; the
tokenized cache then serves the real run), and the model built from its config on the meta device with the
recipe's fine-tuning applied (LoRA target modules, vocabulary resize, MoE keys) — so the parameter counts are the
run's.
"""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path
from typing import Any

import yaml

from sftforge.config import SFTConfig
from sftforge.errors import ConfigError

DRY_RUN_VALUES = ("true", "false", "1", "0", "yes", "no")


def without_dry_run(argv: list[str]) -> list[str]:
    """The command line a real run would use: `--dry_run`, `--dry_run=X` and `--dry_run X` removed."""
    out: list[str] = []
    skip = False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg.split("=", 1)[0] == "--dry_run":
            nxt = argv[i + 1] if i + 1 < len(argv) else ""
            skip = "=" not in arg and nxt.lower() in DRY_RUN_VALUES
            continue
        out.append(arg)
    return out


def launch_plan(cfg: SFTConfig, argv: list[str]) -> tuple[str | None, int]:
    """The `accelerate launch` command the run would start (checked as the launch checks it) and the number of
    processes; (None, 1) for a single-process run."""
    from sftforge.launch import (
        inside_launched_process,
        launch_command,
        mixed_precision_of,
        resolve_accelerate_config,
    )

    if not cfg.launch.accelerate_config or inside_launched_process():
        return None, int(os.environ.get("WORLD_SIZE", "1"))
    cmd = launch_command(cfg.launch, without_dry_run(argv), mixed_precision_of(cfg.training))
    at = cmd.index("--config_file") + 1
    copy = Path(cmd[at])
    config = resolve_accelerate_config(cfg.launch.accelerate_config)
    if copy != config:  # a temporary copy with absolute paths: name the real file, and leave nothing behind
        shutil.rmtree(copy.parent, ignore_errors=True)
        cmd[at] = str(config)
    doc = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    return shlex.join(cmd), int(cfg.launch.num_processes or doc.get("num_processes") or 1)


def check_output_dir_unwritten(cfg: SFTConfig) -> Path:
    """output_dir as the run checks it, without creating it: a finished model there, or no write permission on
    the folder it would be created in."""
    from sftforge.train.run import refuse_finished_output_dir

    out = refuse_finished_output_dir(cfg)
    existing = out.absolute()
    while not existing.exists():
        existing = existing.parent
    if not os.access(existing, os.W_OK):
        raise ConfigError(
            f"output_dir: cannot write to {str(out)!r} ({existing} is not writable for this user).",
            "output_dir",
        )
    return out


def meta_model(cfg: SFTConfig, tokenizer: Any) -> Any:
    """The run's model built from its config on the meta device: every module and parameter shape, no memory and
    no weights read."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from sftforge.model.load import init_from_config

    m = cfg.model
    with torch.device("meta"):
        if m.config_name:
            return init_from_config(m, tokenizer, torch.float32)
        try:
            config = AutoConfig.from_pretrained(
                m.model_name_or_path, revision=m.model_revision, trust_remote_code=m.trust_remote_code
            )
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"model_name_or_path: cannot load {m.model_name_or_path!r}: {str(e).splitlines()[0]}",
                source="model",
            ) from None
        return AutoModelForCausalLM.from_config(
            config, attn_implementation=m.attn_implementation, trust_remote_code=m.trust_remote_code
        )


def summary_rows(cfg: SFTConfig, data: Any) -> Any:
    """What the Trainer would iterate, for the summary's counts: packed rows (SFT with packing), pairs (stage dpo:
    two stored examples each) or examples."""
    from sftforge.data.packing import pack_lengths
    from sftforge.data.train_sets import PackedDataset

    if cfg.data.stage != "pt" and cfg.data.packing and not cfg.data.streaming:
        return PackedDataset(data.train, pack_lengths(data.train.lengths, cfg.data.max_length))
    if cfg.data.stage == "dpo":
        return range(len(data.train) // 2)
    return data.train


def model_as_trained(cfg: SFTConfig, bundle: Any) -> Any:
    """The meta-device model turned into what the run trains (LoRA, freeze, ...; a vocabulary resize; the MoE
    keys; packed attention), with the run's notes: the mistakes only the model reveals surface here."""
    from sftforge.model.moe import configure_aux_loss
    from sftforge.model.peft import apply_finetuning
    from sftforge.model.varlen import packed_attention_backend
    from sftforge.train.run import uses_packed_attention

    ckpt = bool(cfg.training.activation_checkpointing)
    model, notes = apply_finetuning(meta_model(cfg, bundle.tokenizer), cfg.peft, bundle.tokenizer, ckpt)
    _, moe_note = configure_aux_loss(model, cfg.model, cfg.explicit)
    if uses_packed_attention(cfg):
        model.set_attn_implementation(packed_attention_backend(cfg.model.attn_implementation))
    if cfg.peft.quantization_bit:
        notes.append(
            f"dry run: parameters counted unquantized; the run loads the base in {cfg.peft.quantization_bit}-bit"
        )
    cfg.notes.extend([*notes, *([moe_note] if moe_note else [])])
    if cfg.data.stage in ("dpo", "kto"):
        from sftforge.train.run import reference_plan

        cfg.notes.append(reference_plan(cfg)[1])
    return model


def dry_run(cfg: SFTConfig, argv: list[str]) -> int:
    from sftforge.train.resume import OFF, resolve_resume, run_identity
    from sftforge.train.run import check_before_data, prepare_tokenized_data
    from sftforge.train.summary import print_startup_summary

    command, processes = launch_plan(cfg, argv)
    out = check_output_dir_unwritten(cfg)
    check_before_data(cfg)  # as run_training does
    if str(cfg.training.resume_from_checkpoint or "").strip().lower() not in OFF:  # read-only when resuming
        resolve_resume(cfg, out, run_identity(cfg, processes))
    bundle, data = prepare_tokenized_data(cfg)
    model = model_as_trained(cfg, bundle)
    print_startup_summary(cfg, bundle, data, model, summary_rows(cfg, data), world_size=processes)
    lines = [
        " dry run      nothing trained, nothing written to output_dir (the tokenized data is cached for the run); "
        "the model was built from its config, no weights read"
    ]
    if command:
        lines.append(f" launch       {command}")
    print(
        "\n".join([*lines, "sftforge train: dry run passed — run it without --dry_run to train."]), flush=True
    )
    return 0
