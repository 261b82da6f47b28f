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
