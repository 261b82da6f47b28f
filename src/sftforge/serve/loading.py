"""Load what `sftforge train` wrote, for inference (`chat`, `serve`, `eval`): a full model folder, a merged folder,
or an adapter output folder (base + adapter: LoRA / IA3 merged in memory; prefix / prompt / P-tuning kept as a
peft model, whose generate() adds the virtual tokens), with the tokenizer, chat template and end-of-turn
tokens saved at training time, so prompts are rendered exactly as in training and generation stops where the
trained turns end."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftforge.errors import ConfigError


@dataclass
class LoadedModel:
    tokenizer: Any
    model: Any
    path: str
    kind: str  # "full" | "lora" (LoRA or IA3, merged in memory) | "prompt-learning" (prefix/prompt/ptuning, unmerged)
    base: str | None = None  # the base model of a LoRA folder
    stop_ids: list[int] = field(default_factory=list)  # generation ends on any of these (end-of-turn tokens)

    @property
    def max_context(self) -> int | None:
        """The model's context length, when its config says."""
        config = self.model.config
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = getattr(config, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return None


def load_for_inference(
    path: str | Path,
    base: str | None = None,
    trust_remote_code: bool = False,
    device: str | None = None,
    dtype: str = "auto",
    source: str = "model",
) -> LoadedModel:
    """`path` is a model folder, a LoRA output folder (its base is read from adapter_config.json unless `base`
    is given), or a hub id. The model is put in eval mode on `device` (CUDA when there is one)."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    where = Path(str(path))
    is_adapter = where.is_dir() and (where / "adapter_config.json").is_file()
    if where.is_dir() and not is_adapter and not (where / "config.json").is_file():
        raise ConfigError(
            f"{str(where)!r} holds neither a model (config.json) nor a LoRA adapter (adapter_config.json). "
            "Pass the output_dir of `sftforge train` (or a checkpoint-N folder inside it).",
            source=source,
        )
    torch_dtype = _dtype(dtype, device)
    if is_adapter:
        tokenizer, model, base = _load_lora(where, base, trust_remote_code, torch_dtype, source)
        kind = "prompt-learning" if hasattr(model, "peft_config") else "lora"
    else:
        tokenizer, model = _load_full(str(path), trust_remote_code, torch_dtype, source)
        kind, base = "full", None
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            f"{str(path)!r} has no chat template: train it with sftforge (the trained template is saved with the "
            "model) or add one to its tokenizer_config.json.",
            source=source,
        )
    if tokenizer.pad_token_id is None:  # batched generation pads; the pad never reaches the model's output
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.convert_ids_to_tokens(0)
    model = model.to(device).eval()
    return LoadedModel(tokenizer, model, str(path), kind, base, _stop_ids(where, model, tokenizer))


def _dtype(dtype: str, device: str) -> Any:
    import torch

    if (
        dtype == "auto"
    ):  # the checkpoint's own dtype on a GPU; float32 on the CPU (bf16 matmuls are slow there)
        return "auto" if device.startswith("cuda") else torch.float32
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"dtype: {dtype!r} is not one of auto, float32, bfloat16, float16.", source="dtype")
    return getattr(torch, dtype)


def _load_full(path: str, trust_remote_code: bool, dtype: Any, source: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot load {path!r}: {str(e).splitlines()[0]}", source=source) from None
    return tokenizer, model


def _load_lora(
    adapter_dir: Path, base: str | None, trust_remote_code: bool, dtype: Any, source: str
) -> tuple[Any, Any, str]:
    from transformers import AutoModelForCausalLM

    from sftforge.export.merge_inputs import UNMERGEABLE, attach_adapter, load_tokenizer
    from sftforge.model.peft import cache_named_for_peft

    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    base = base or config.get("base_model_name_or_path")
    if not base:
        raise ConfigError(
            f"{str(adapter_dir)!r} is a LoRA adapter whose adapter_config.json names no base model: pass --base.",
            source=source,
        )
    try:
        # The base in full precision, never quantized: the adapter is merged into it (as `sftforge merge` does)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"cannot load the base model {base!r} of the LoRA adapter in {str(adapter_dir)!r}: "
            f"{str(e).splitlines()[0]} Pass --base with the folder (or hub id) it was trained on.",
            source=source,
        ) from None
    tokenizer = load_tokenizer(adapter_dir, base, trust_remote_code)
    model = attach_adapter(model, adapter_dir, base)
    if config.get("peft_type") in UNMERGEABLE:
        # Virtual tokens cannot be merged into weights: the PeftModel stays, and its generate() puts them in front
        return tokenizer, cache_named_for_peft(model), base
    return tokenizer, model.merge_and_unload(), base


def _stop_ids(where: Path, model: Any, tokenizer: Any) -> list[int]:
    """The end-of-turn ids `sftforge train` saved in generation_config.json (the tokenizer's eos otherwise)."""
    from transformers import GenerationConfig

    config = model.generation_config
    if where.is_dir() and (where / "generation_config.json").is_file():
        config = GenerationConfig.from_pretrained(str(where))  # a LoRA folder's own, not the base's
    eos = config.eos_token_id if config is not None else None
    if eos is None:
        eos = tokenizer.eos_token_id
    ids = [eos] if isinstance(eos, int) else list(eos or [])
    return sorted(set(ids))
