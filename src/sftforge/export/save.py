"""Write a Hugging Face folder any tool can load: weights (safetensors), tokenizer + chat template, and a
generation_config whose eos_token_id holds every end-of-turn id, so generation stops where training taught it."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def generation_eos_ids(tokenizer: Any, end_of_turn_ids: list[int]) -> list[int]:
    ids = list(end_of_turn_ids)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def restore_checkpoint_dtype(trainer: Any, model_args: Any, dtype_was_auto: bool) -> str | None:
    """Full fine-tuning with `torch_dtype: auto` trains fp32 weights (fp32 masters, config/validate.py) even when
    the checkpoint is bf16/fp16; the saved folder goes back to the checkpoint's dtype, the size users expect (the
    accumulated updates survive; only the final rounding is bf16's). Returns a note for the log, or None when
    nothing changes (LoRA saves adapters; DeepSpeed/FSDP save their own gathered weights)."""
    import torch
    from transformers import AutoConfig

    model = trainer.model
    if (
        not dtype_was_auto
        or trainer.is_deepspeed_enabled
        or trainer.is_fsdp_enabled
        or hasattr(model, "peft_config")
        or not model_args.model_name_or_path  # from scratch (config_name): no checkpoint dtype to go back to
    ):
        return None
    if next(model.parameters()).dtype != torch.float32:
        return None
    config = AutoConfig.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        trust_remote_code=model_args.trust_remote_code,
    )
    saved = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    saved = getattr(torch, saved, None) if isinstance(saved, str) else saved
    if saved not in (torch.bfloat16, torch.float16):
        return None
    model.to(saved)
    name = str(saved).removeprefix("torch.")
    return f"saved in {name}, the checkpoint's dtype (trained with fp32 master weights)"


def save_model_folder(
    trainer: Any, tokenizer: Any, end_of_turn_ids: list[int], output_dir: str | Path
) -> Path:
    from transformers import GenerationConfig

    output_dir = Path(output_dir)
    model = trainer.model
    model.config.use_cache = True  # was off for training with checkpointing; inference wants it
    eos = generation_eos_ids(tokenizer, end_of_turn_ids)
    gen = getattr(model, "generation_config", None) or GenerationConfig()
    gen.eos_token_id = eos if len(eos) > 1 else eos[0]
    if tokenizer.pad_token_id is not None:
        gen.pad_token_id = tokenizer.pad_token_id
    model.generation_config = gen
    trainer.save_model(str(output_dir))  # safetensors, gathered correctly under DeepSpeed/FSDP by the Trainer
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(output_dir))
        gen.save_pretrained(str(output_dir))
    return output_dir
