"""bitsandbytes quantization of the base model for QLoRA (`quantization_bit: 4 | 8`).

The config checks (`config/validate_peft.py`) already made sure bitsandbytes is installed and, without a CUDA GPU,
that its CPU backend can train the requested setup; here we only build transformers' `BitsAndBytesConfig`.
"""

from __future__ import annotations

import os
from typing import Any

from sftforge.config.peft_args import PeftArguments


def quantization_config(peft_args: PeftArguments) -> Any | None:
    """A `transformers.BitsAndBytesConfig` for the recipe, or None when the base is not quantized."""
    if peft_args.quantization_bit is None:
        return None
    import torch
    from transformers import BitsAndBytesConfig

    if peft_args.quantization_bit == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = peft_args.bnb_4bit_compute_dtype
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=peft_args.bnb_4bit_quant_type,
        bnb_4bit_compute_dtype=getattr(torch, "float32" if compute == "auto" else compute),
        bnb_4bit_use_double_quant=peft_args.bnb_4bit_use_double_quant,
        bnb_4bit_quant_storage=getattr(torch, peft_args.bnb_4bit_quant_storage),
        # norms, embeddings and the LM head stay in the load dtype (transformers' default skip list)
    )


def quantized_device_map() -> dict[str, Any]:
    """bitsandbytes weights are quantized where they are loaded: each process loads onto its own GPU."""
    import torch

    if torch.cuda.is_available():
        return {"": int(os.environ.get("LOCAL_RANK", "0"))}
    return {"": "cpu"}


def is_quantized(model: Any) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))
