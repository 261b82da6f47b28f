"""`sftforge merge` inputs: check the adapter / output / base arguments and load them, with errors that say what
to pass instead (exit 2, no traceback)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from sftforge.errors import ConfigError


def check_adapter(adapter: str | Path) -> tuple[Path, dict[str, Any]]:
    path = Path(adapter)
    if not path.exists():
        raise ConfigError(
            f"--adapter: {str(path)!r} does not exist. Pass the output_dir of a LoRA run (the folder that holds "
            "adapter_config.json and adapter_model.safetensors).",
            source="merge",
        )
    config_file = path / "adapter_config.json"
    if not config_file.is_file():
        what = (
            "a full model (config.json), not a LoRA adapter: there is nothing to merge, load it directly"
            if (path / "config.json").is_file()
            else "no adapter_config.json"
        )
        raise ConfigError(
            f"--adapter: {str(path)!r} holds {what}. Pass the output_dir of a run with finetuning_type: lora, "
            "qlora or ia3 (or one of its checkpoint-N folders).",
            source="merge",
        )
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ConfigError(f"--adapter: {config_file} is not valid JSON ({e}).", source="merge") from None
    kind = config.get("peft_type")
    if kind in UNMERGEABLE:
        raise ConfigError(
            f"--adapter: {str(path)!r} holds a {UNMERGEABLE[kind]} adapter (peft_type {kind}), which cannot be "
            "merged: its trained virtual tokens are extra inputs in front of every sequence, not changes to the "
            f"weights. Use the adapter folder as it is: `sftforge chat {path}` or `sftforge serve {path}` "
            "(peft's PeftModel.from_pretrained in your own code). Methods that merge: lora, qlora, ia3.",
            source="merge",
        )
    return path, config


# peft types of the prompt-learning methods: nothing in the weights to merge into
UNMERGEABLE = {"PREFIX_TUNING": "prefix-tuning", "PROMPT_TUNING": "prompt-tuning", "P_TUNING": "P-tuning"}


def check_output(out: Path, adapter_dir: Path, overwrite: bool) -> Path:
    if out.resolve() == adapter_dir.resolve():
        raise ConfigError(
            "--output: it is the adapter folder; write the merged model to a new folder.", source="merge"
        )
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output: {str(out)!r} is a file; choose a folder path.", source="merge")
    if (out / "config.json").exists() and not overwrite:
        raise ConfigError(
            f"--output: {str(out)!r} already holds a model; choose a new folder or add --overwrite.",
            source="merge",
        )
    return out


def load_base_config(base: str, trust_remote_code: bool) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(base, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"--base: cannot load {base!r}: {str(e).splitlines()[0]} Pass the base model folder (or hub id) "
            "the adapter was trained on.",
            source="merge",
        ) from None


def resolve_dtype(dtype: str, base_config: Any) -> Any:
    import torch

    if dtype != "auto":
        return getattr(torch, dtype)
    saved = getattr(base_config, "dtype", None) or getattr(base_config, "torch_dtype", None)
    if isinstance(saved, str):
        saved = getattr(torch, saved, None)
    return saved if saved in (torch.float32, torch.bfloat16, torch.float16) else torch.float32


def training_quantization(adapter_dir: Path) -> int | None:
    """quantization_bit of the run that wrote the adapter, from its resolved sftforge config (if there)."""
    import yaml

    for path in (adapter_dir / "sftforge_config.yaml", adapter_dir.parent / "sftforge_config.yaml"):
        if path.is_file():
            try:
                return (
                    (yaml.safe_load(path.read_text(encoding="utf-8")) or {})
                    .get("peft", {})
                    .get("quantization_bit")
                )
            except (yaml.YAMLError, AttributeError):
                return None
    return None


def load_tokenizer(adapter_dir: Path, base: str, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    # The adapter folder's tokenizer carries the trained chat template and any added tokens.
    has_own = any((adapter_dir / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json"))
    return AutoTokenizer.from_pretrained(
        adapter_dir if has_own else base, trust_remote_code=trust_remote_code
    )


def load_base(base: str, trust_remote_code: bool, device: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            base, dtype=torch.float32, trust_remote_code=trust_remote_code, use_safetensors=None
        )
    except (OSError, ValueError) as e:
        raise ConfigError(f"--base: cannot load {base!r}: {str(e).splitlines()[0]}", source="merge") from None
    return model.to(device)


def attach_adapter(model: Any, adapter_dir: Path, base: str) -> Any:
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict

    trained_on = json.loads((adapter_dir / "adapter_config.json").read_text()).get("base_model_name_or_path")
    hint = f" (its adapter_config.json names {trained_on!r})" if trained_on else ""
    try:
        # peft probes a deprecated transformers attribute: not the user's concern
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*is_gradient_checkpointing")
            peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as e:
        detail = next(
            (ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), str(e).splitlines()[0]
        )
        raise ConfigError(
            f"the adapter in {str(adapter_dir)!r} does not fit the base {base!r}: {detail} Pass the base model "
            f"the adapter was trained on{hint}.",
            source="merge",
        ) from None
    saved = _adapter_keys(adapter_dir)
    loaded = set(get_peft_model_state_dict(peft_model))
    missing = sorted(k for k in saved if k not in loaded)
    if saved and missing:
        raise ConfigError(
            f"the adapter in {str(adapter_dir)!r} does not fit the base {base!r}: {len(missing)} of {len(saved)} "
            f"adapter tensors have no place in it (e.g. {missing[0]}). Pass the base model the adapter was "
            f"trained on{hint}.",
            source="merge",
        )
    return peft_model


def _adapter_keys(adapter_dir: Path) -> list[str]:
    from safetensors import safe_open

    path = adapter_dir / "adapter_model.safetensors"
    if not path.is_file():
        return []
    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())
