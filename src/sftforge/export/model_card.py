"""README.md model card: what was trained, on what, how, and how well."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sftforge import __version__

_KEY_HPARAMS = (
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "weight_decay",
    "max_grad_norm",
    "bf16",
    "fp16",
    "seed",
)
_ADAPTER_HPARAMS = ("finetuning_type", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "use_dora",
                    "use_rslora", "modules_to_save", "quantization_bit")  # fmt: skip


_PREFERENCE_METRICS = (
    ("eval_preference_accuracy_before", "eval pairs: chosen preferred by the model, before training"),
    ("eval_preference_accuracy", "eval pairs: chosen preferred by the model, after training"),
    ("eval_rewards/accuracies", "eval rewards/accuracies (chosen reward > rejected reward)"),
    ("eval_rewards/margins", "eval rewards/margins"),
    ("eval_rewards/chosen", "eval rewards/chosen"),
    ("eval_rewards/rejected", "eval rewards/rejected"),
    ("eval_chosen_logp_before", "eval pairs: mean log-prob of the chosen answers, before"),
    ("eval_chosen_logp", "eval pairs: mean log-prob of the chosen answers, after"),
    ("rewards/accuracies_first", "training rewards/accuracies, first logged step"),
    ("rewards/accuracies_last", "training rewards/accuracies, last logged step"),
    ("rewards/margins_last", "training rewards/margins, last logged step"),
    ("rewards/chosen_last", "training rewards/chosen, last logged step"),
    ("rewards/rejected_last", "training rewards/rejected, last logged step"),
)


def _preference_lines(preference: dict[str, Any], metrics: dict[str, Any]) -> list[str]:
    """What was preferred over what, against which reference, and how far the model moved."""
    settings = ", ".join(f"{k} {v}" for k, v in preference.items())
    rows = [f"| {label} | {_fmt(metrics[k])} |" for k, label in _PREFERENCE_METRICS if k in metrics]
    return ["## Preference training", "", settings + ".", "", *(
        ["| metric | value |", "|---|---|", *rows, ""] if rows else [])]  # fmt: skip


def write_model_card(
    path: str | Path,
    base_model: str,
    data_desc: str,
    training: Any,
    extra: dict[str, Any],
    metrics: dict[str, Any],
    adapter: Any = None,
    intro: str | None = None,
    dropped: dict[str, int] | None = None,
    preference: dict[str, Any] | None = None,
) -> Path:
    """`adapter`: the run's PeftArguments when it trained an adapter (LoRA/DoRA, IA3, prefix/prompt/P-tuning: the
    folder is an adapter, not a model; the card says so and shows how to load, and where possible merge, it).
    `intro`: the first sentence, when the run was no supervised fine-tune (pretraining). `dropped`: the training
    rows left out, by reason (too long for max_length, unusable), so a reader knows what the model never saw.
    `preference`: stage dpo / kto's settings (loss, beta, reference); its metrics get a section of their own."""
    hp = {k: getattr(getattr(training, k), "value", getattr(training, k)) for k in _KEY_HPARAMS} | extra
    if adapter is not None:
        hp |= {k: getattr(adapter, k) for k in _adapter_hparams(adapter.finetuning_type)}
    lines = [
        "---",
        f"base_model: {base_model}",
        f"library_name: {'peft' if adapter is not None else 'transformers'}",
        f"tags: [sftforge, {preference['stage'] if preference else 'sft'}{_tag(adapter)}]",
        "---",
        "",
        f"# {Path(training.output_dir).name}",
        "",
        intro
        or f"Supervised fine-tune of `{base_model}` made with sftforge {__version__} (assistant-only loss).",
        "",
        *(_adapter_intro(base_model, adapter) if adapter is not None else []),
        "## Data",
        "",
        data_desc,
        "",
        *_dropped_lines(dropped),
        *(_preference_lines(preference, metrics) if preference else []),
        "## Hyperparameters",
        "",
        "| key | value |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in hp.items()],
        "",
        "## Results",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {k} | {_fmt(v)} |" for k, v in metrics.items()],
        "",
        "## Use",
        "",
        "```python",
        *(_load_lines(training.output_dir, base_model, adapter is not None)),
        *(_PROMPT_LEARNING_GENERATE if _prompt_learning(adapter) else []),
        'ids = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,',
        '                              return_tensors="pt", return_dict=True)',
        "print(tok.decode(model.generate(**ids, max_new_tokens=64)[0]))",
        "```",
        "",
        f"Or chat in a terminal: `sftforge chat {training.output_dir}`.",
        "",
    ]
    path = Path(path)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


_METHOD_NAMES = {"prefix": "prefix-tuning", "prompt": "prompt-tuning", "ptuning": "P-tuning", "ia3": "IA3"}
_PROMPT_LEARNING_GENERATE = [
    "# peft 0.21 with transformers 5.x: without this, generate() drops or repeats the virtual tokens",
    "from sftforge.model.peft import cache_named_for_peft",
    "cache_named_for_peft(model)",
]


def _adapter_hparams(kind: str) -> tuple[str, ...]:
    from sftforge.config.peft_args import METHOD_KEYS

    return ("finetuning_type", *METHOD_KEYS[kind]) if kind in METHOD_KEYS else _ADAPTER_HPARAMS


def _tag(adapter: Any) -> str:
    if adapter is None:
        return ""
    kind = adapter.finetuning_type
    return ", lora" if kind in ("lora", "qlora") else f", {_METHOD_NAMES.get(kind, kind).lower()}"


def _prompt_learning(adapter: Any) -> bool:
    from sftforge.config.peft_args import PROMPT_LEARNING_TYPES

    return adapter is not None and adapter.finetuning_type in PROMPT_LEARNING_TYPES


def _adapter_intro(base_model: str, adapter: Any) -> list[str]:
    if adapter.finetuning_type in _METHOD_NAMES:
        method = _METHOD_NAMES[adapter.finetuning_type]
        if _prompt_learning(adapter):
            return [
                f"**This folder is a {method} adapter of the base model `{base_model}`**, not a full model: load "
                "it on top of that base (peft). Its trained virtual tokens are inputs, not weight changes, so it "
                "cannot be merged; `sftforge chat <this folder>` and `sftforge serve <this folder>` run it.",
                "",
            ]
        return [
            f"**This folder is an {method} adapter of the base model `{base_model}`**, not a full model: load it "
            "on top of that base (peft), or merge it into a plain model folder with",
            f"`sftforge merge --base {base_model} --adapter <this folder> --output <merged folder>` "
            "(checked: merged logits equal base+adapter).",
            "",
        ]
    method = "DoRA" if adapter.use_dora else "LoRA"
    quant = (
        f" trained on the base quantized to {adapter.quantization_bit} bits (QLoRA)"
        if adapter.quantization_bit
        else ""
    )
    return [
        f"**This folder is a {method} adapter of the base model `{base_model}`**{quant}, not a full model: load it "
        "on top of that base (peft), or merge it into a plain model folder with",
        f"`sftforge merge --base {base_model} --adapter <this folder> --output <merged folder>` "
        "(checked: merged logits equal base+adapter).",
        "",
    ]


def _load_lines(output_dir: str, base_model: str, is_adapter: bool) -> list[str]:
    if not is_adapter:
        return [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            f'tok = AutoTokenizer.from_pretrained("{output_dir}")',
            f'model = AutoModelForCausalLM.from_pretrained("{output_dir}")',
        ]
    return [
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f'tok = AutoTokenizer.from_pretrained("{output_dir}")  # the trained chat template',
        f'base = AutoModelForCausalLM.from_pretrained("{base_model}")',
        f'model = PeftModel.from_pretrained(base, "{output_dir}")',
    ]


def _dropped_lines(dropped: dict[str, int] | None) -> list[str]:
    if dropped is None:
        return []
    if not dropped:
        return ["Rows dropped: none.", ""]
    return [
        "Rows dropped before training:",
        "",
        "| reason | rows |",
        "|---|---|",
        *[f"| {reason} | {n} |" for reason, n in dropped.items()],
        "",
    ]


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
