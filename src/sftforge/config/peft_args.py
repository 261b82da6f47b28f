"""The `peft` section of a recipe: full fine-tuning, LoRA / DoRA, QLoRA (bitsandbytes), freezing, or peft's
prefix tuning, prompt tuning, P-tuning and IA3.

Names follow LLaMA-Factory (`finetuning_type`, `quantization_bit`, `freeze_trainable_layers`) and TRL / peft
(`use_peft`, `lora_r`, `lora_alpha`, `lora_dropout`, `lora_target_modules`, `use_dora`, `use_rslora`,
`modules_to_save`). The cross-key checks live in `config/validate_peft.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FINETUNING_TYPES = ("full", "lora", "qlora", "freeze", "prefix", "prompt", "ptuning", "ia3")
# peft's prompt-learning methods: trained virtual tokens in front of every sequence; nothing to merge into weights.
PROMPT_LEARNING_TYPES = ("prefix", "prompt", "ptuning")
# The keys each of the other peft methods reads (a key set for another method is an error).
METHOD_KEYS = {
    "prefix": ("num_virtual_tokens", "prefix_projection", "encoder_hidden_size"),
    "prompt": ("num_virtual_tokens", "prompt_tuning_init", "prompt_tuning_init_text"),
    "ptuning": ("num_virtual_tokens", "encoder_hidden_size", "encoder_reparameterization_type"),
    "ia3": ("ia3_target_modules", "ia3_feedforward_modules"),
}
LORA_KEYS = (
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
    "use_dora",
    "use_rslora",
    "modules_to_save",
    "merge_after_train",
)
BNB_4BIT_KEYS = (
    "bnb_4bit_quant_type",
    "bnb_4bit_compute_dtype",
    "bnb_4bit_use_double_quant",
    "bnb_4bit_quant_storage",
)


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


@dataclass
class PeftArguments:
    finetuning_type: str = field(
        default="full",
        metadata=_help(
            "What is trained: full (every weight), lora (LoRA/DoRA adapters via peft), qlora (LoRA on a "
            "bitsandbytes-quantized base; 4-bit unless quantization_bit says 8), freeze (only the last "
            "freeze_trainable_layers blocks), prefix (prefix tuning), prompt (prompt tuning), ptuning (P-tuning), "
            "ia3 (IA3 scaling vectors).",
            choices=FINETUNING_TYPES,
        ),
    )
    use_peft: bool = field(
        default=False, metadata=_help("TRL's switch: true is the same as finetuning_type: lora.")
    )
    lora_r: int = field(default=8, metadata=_help("LoRA rank r (adapter width)."))
    lora_alpha: int = field(
        default=16, metadata=_help("LoRA scaling alpha (the update is scaled by alpha/r, or alpha/sqrt(r)).")
    )
    lora_dropout: float = field(default=0.05, metadata=_help("Dropout on the LoRA input, in [0, 1)."))
    lora_target_modules: list[str] | str = field(
        default="all-linear",
        metadata=_help(
            "Modules that get adapters: all-linear (every linear layer but the LM head), a list of module "
            "names (q_proj,v_proj or [q_proj, v_proj]), or a regex matched against full module names."
        ),
    )
    use_dora: bool = field(
        default=False, metadata=_help("DoRA: weight-decomposed LoRA (magnitude + direction).")
    )
    use_rslora: bool = field(
        default=False, metadata=_help("rsLoRA: scale by alpha/sqrt(r) instead of alpha/r.")
    )
    modules_to_save: list[str] | None = field(
        default=None,
        metadata=_help(
            "Modules trained in full next to the adapters and saved with them (e.g. [embed_tokens, lm_head]). "
            "Added automatically when the tokenizer has tokens the embedding lacks."
        ),
    )
    quantization_bit: int | None = field(
        default=None,
        metadata=_help(
            "Load the base quantized with bitsandbytes: 4 or 8 (QLoRA). Needs bitsandbytes; a CUDA GPU on "
            "most installs (its CPU backend is probed at config time)."
        ),
    )
    bnb_4bit_quant_type: str = field(
        default="nf4", metadata=_help("4-bit data type: nf4 or fp4.", choices=("nf4", "fp4"))
    )
    bnb_4bit_compute_dtype: str = field(
        default="auto",
        metadata=_help(
            "dtype of the 4-bit matmuls: auto (bfloat16 with bf16, float16 with fp16, else float32), "
            "float32, bfloat16, float16.",
            choices=("auto", "float32", "bfloat16", "float16"),
        ),
    )
    bnb_4bit_use_double_quant: bool = field(
        default=True, metadata=_help("Quantize the 4-bit quantization constants too (saves ~0.4 bit/weight).")
    )
    bnb_4bit_quant_storage: str = field(
        default="uint8",
        metadata=_help(
            "dtype the packed 4-bit weights are stored in (bitsandbytes' quant_storage): uint8 (its default), or "
            "the dtype of the other weights (bfloat16, float16, float32) so FSDP / DeepSpeed ZeRO-3 can shard "
            "them with the rest of the model (QLoRA under FSDP uses bfloat16).",
            choices=("uint8", "float16", "bfloat16", "float32"),
        ),
    )
    freeze_trainable_layers: int = field(
        default=2,
        metadata=_help("finetuning_type freeze: train only the last N transformer blocks (all else frozen)."),
    )
    merge_after_train: bool = field(
        default=False,
        metadata=_help(
            "LoRA / IA3: after training, merge the adapter into the base and write OUTPUT_DIR/merged "
            "(the same verified merge as `sftforge merge`)."
        ),
    )
    # peft's other methods: prefix tuning, prompt tuning, P-tuning (prompt learning) and IA3 (see METHOD_KEYS).
    num_virtual_tokens: int = field(
        default=20,
        metadata=_help("prefix / prompt / ptuning: trained virtual tokens put in front of every sequence."),
    )
    prompt_tuning_init: str = field(
        default="random",
        metadata=_help(
            "prompt: how the virtual tokens start: random, or text (the embeddings of prompt_tuning_init_text).",
            choices=("random", "text"),
        ),
    )
    prompt_tuning_init_text: str | None = field(
        default=None,
        metadata=_help(
            "prompt with prompt_tuning_init: text — the text whose token embeddings start the prompt."
        ),
    )
    encoder_hidden_size: int | None = field(
        default=None,
        metadata=_help(
            "ptuning: hidden size of the prompt encoder (default: the model's hidden size); prefix with "
            "prefix_projection: hidden size of the projection MLP."
        ),
    )
    encoder_reparameterization_type: str = field(
        default="MLP",
        metadata=_help("ptuning: the prompt encoder, MLP or LSTM.", choices=("MLP", "LSTM")),
    )
    prefix_projection: bool = field(
        default=False,
        metadata=_help("prefix: train the prefix through a two-layer MLP (P-tuning v2 reparameterisation)."),
    )
    ia3_target_modules: list[str] | str | None = field(
        default=None,
        metadata=_help(
            "ia3: modules whose activations get a trained scaling vector; default: the model's k_proj, v_proj "
            "and down_proj linears (attention only on MoE models, whose experts are not nn.Linear)."
        ),
    )
    ia3_feedforward_modules: list[str] | str | None = field(
        default=None,
        metadata=_help(
            "ia3: which of ia3_target_modules are feed-forward (scaled at their input, not output); default: "
            "down_proj when targeted."
        ),
    )

    @property
    def is_lora(self) -> bool:
        return self.finetuning_type in ("lora", "qlora")

    @property
    def is_adapter(self) -> bool:
        """Trains a peft adapter saved as an adapter folder (LoRA, QLoRA, prefix, prompt, ptuning, IA3)."""
        return self.finetuning_type not in ("full", "freeze")
