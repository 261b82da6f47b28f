"""Keys and values from other tools' recipes (LLaMA-Factory, TRL) that sftforge does not take, each with what to do
instead: a recipe brought over gets an explanation, not a "did you mean" that points at an unrelated key."""

from __future__ import annotations

from typing import Any

_PREFERENCE = (
    "reward models and PPO (LLaMA-Factory's stage rm/ppo, TRL's reward trainer) are not supported; sftforge trains "
    "stage: sft (conversations), pt (plain text), and the preference stages dpo (pairs: DPO, IPO, ORPO, SimPO, …) "
    "and kto"
)
_MULTIMODAL = "sftforge trains text-only models; image, video and audio inputs are not supported"
_OTHER_HUBS = (
    "only the Hugging Face Hub is supported; download the model or data and give its local folder (model_name_or_path"
    " / train_data_path)"
)
_EXPORT = (
    "export is its own command: `sftforge merge --base BASE --adapter OUTPUT_DIR --output DIR` merges a LoRA adapter "
    "into a plain model folder; push_to_hub + hub_model_id upload the trained model"
)
_OPTIMIZERS = (
    "GaLore, APOLLO and BAdam are not supported; to save memory use finetuning_type: lora / qlora / freeze, or "
    "DeepSpeed ZeRO (accelerate_config: zero2 | zero3 | zero3_offload)"
)
_MODEL_TRICKS = "this model modification is not supported by sftforge"

# key → why it is not taken and what to use instead.
FOREIGN_KEYS: dict[str, str] = {
    # --- LLaMA-Factory
    "use_unsloth": "Unsloth's kernels are not used by sftforge; use_liger_kernel: true gives fused kernels on a "
    "CUDA GPU, and packing: true trains padding-free",
    "use_unsloth_gc": "Unsloth's checkpoint offloading is not used by sftforge; activation_checkpointing: true "
    "recomputes activations instead of storing them",
    "booster": "set the attention backend with attn_implementation (sdpa, flash_attention_2) and Liger's kernels "
    "with use_liger_kernel",
    "tokenized_path": "sftforge caches tokenized data by content on its own (cache_dir, preprocessing_cache): the "
    "next run with the same data, tokenizer and options reuses it",
    "adapter_name_or_path": "training on from an existing adapter is not supported; merge it into its base first "
    "(`sftforge merge`) and set model_name_or_path to the merged folder",
    "create_new_adapter": "training on from an existing adapter is not supported; merge it into its base first "
    "(`sftforge merge`) and set model_name_or_path to the merged folder",
    "resize_vocab": "not needed: the embedding grows on its own when the tokenizer has more tokens "
    "(new_special_tokens)",
    "enable_thinking": "not needed: reasoning is rendered from the data (reasoning_content or <think> in the answer); "
    "train_on_reasoning: false trains the answers only",
    "default_system": "not a key in sftforge: put the system turn in the data, or use a chat template that writes "
    "the default system prompt you want",
    "freeze_trainable_modules": "sftforge's finetuning_type: freeze trains the last freeze_trainable_layers blocks",
    "freeze_extra_modules": "sftforge's finetuning_type: freeze trains the last freeze_trainable_layers blocks",
    "loraplus_lr_ratio": "LoRA+ is not supported; lora_alpha and learning_rate set the adapter's update size",
    "pissa_init": "PiSSA initialisation is not supported; LoRA adapters start from peft's default",
    "compute_accuracy": "evaluation reports loss and perplexity; eval_generation: true adds exact match, ROUGE-L "
    "and BLEU of generated answers",
    "predict_with_generate": "use eval_generation: true (answers the eval examples and scores them) or "
    "`sftforge eval`",
    "shift_attn": _MODEL_TRICKS,
    "mixture_of_depths": _MODEL_TRICKS,
    "use_llama_pro": _MODEL_TRICKS,
    "upcast_layernorm": _MODEL_TRICKS,
    "upcast_lmhead_output": _MODEL_TRICKS,
    "use_galore": _OPTIMIZERS,
    "use_apollo": _OPTIMIZERS,
    "use_badam": _OPTIMIZERS,
    "use_modelscope_hub": _OTHER_HUBS,
    "use_openmind_hub": _OTHER_HUBS,
    "export_dir": _EXPORT,
    "export_size": _EXPORT,
    "export_quantization_bit": _EXPORT,
    "export_hub_model_id": _EXPORT,
    "image_max_pixels": _MULTIMODAL,
    "video_max_pixels": _MULTIMODAL,
    "freeze_vision_tower": _MULTIMODAL,
    "freeze_multi_modal_projector": _MULTIMODAL,
    # --- TRL
    "padding_free": "padding-free training is packing: true (whole examples packed into rows of max_length, never "
    "attending to each other)",
    "activation_offloading": "not supported; activation_checkpointing: true recomputes activations instead",
    "model_init_kwargs": "use the model keys instead: torch_dtype, attn_implementation, trust_remote_code, "
    "model_revision",
    "lora_task_type": "not needed: adapters are always trained for causal language modelling",
    "eos_token": "not needed: the end-of-turn token comes from the chat template and is always trained",
    "dataset_kwargs": "not needed: sftforge reads the data itself (train_data_path, columns, tags)",
}
for _key in (
    "reward_model", "reward_model_type", "reward_model_adapters", "ppo_buffer_size", "ppo_epochs",
    "ppo_score_norm", "ppo_target", "ppo_whiten_rewards",
):  # fmt: skip
    FOREIGN_KEYS[_key] = _PREFERENCE
FOREIGN_KEYS.update(
    {
        "pref_bco_weight": "the BCO term is not offered; pref_loss: bco_pair trains TRL's paired BCO loss",
        "ref_model_adapters": "the reference is a model folder (ref_model); merge the adapter into it first "
        "(`sftforge merge`)",
        "ref_model_quantization_bit": "the reference model is loaded like the trained one (same dtype and "
        "quantization)",
        "max_prompt_length": "not needed: prompts are never cut; a pair longer than max_length is dropped and "
        "counted (max_dropped_fraction stops the run when too many are)",
        "max_completion_length": "not needed: answers are never cut; a pair longer than max_length is dropped and "
        "counted",
    }
)
for _prefix, _why in (("galore_", _OPTIMIZERS), ("apollo_", _OPTIMIZERS), ("badam_", _OPTIMIZERS)):
    FOREIGN_KEYS.update(
        {f"{_prefix}{n}": _why for n in ("rank", "target", "update_interval", "scale", "mode")}
    )

# key → {value → why}: values other tools take that sftforge does not.
FOREIGN_VALUES: dict[str, dict[str, str]] = {
    "stage": {v: f"LLaMA-Factory's stage: {v} is not supported: {_PREFERENCE}" for v in ("rm", "ppo")},
    "finetuning_type": {
        "oft": "LLaMA-Factory's finetuning_type: oft (orthogonal fine-tuning) is not supported; use lora, qlora, "
        "freeze or full"
    },
}


def explain_key(key: str) -> str | None:
    """Why `key` (from another tool) is not taken, and what to use; None for keys not known to be foreign."""
    why = FOREIGN_KEYS.get(key)
    return f"{key}: not an sftforge key: {why}." if why else None


def explain_value(key: str, value: Any) -> str | None:
    """Why `key: value` (from another tool) is refused; None when the value is not a known foreign one."""
    why = FOREIGN_VALUES.get(key, {}).get(str(value).strip().lower())
    return f"{key}: {why}." if why else None
