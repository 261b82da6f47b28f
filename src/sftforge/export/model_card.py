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


def write_model_card(
    path: str | Path,
    base_model: str,
    data_desc: str,
    training: Any,
    extra: dict[str, Any],
    metrics: dict[str, Any],
) -> Path:
    hp = {k: getattr(getattr(training, k), "value", getattr(training, k)) for k in _KEY_HPARAMS} | extra
    lines = [
        "---",
        f"base_model: {base_model}",
        "library_name: transformers",
        "tags: [sftforge, sft]",
        "---",
        "",
        f"# {Path(training.output_dir).name}",
        "",
        f"Supervised fine-tune of `{base_model}` made with sftforge {__version__} (assistant-only loss).",
        "",
        "## Data",
        "",
        data_desc,
        "",
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
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f'tok = AutoTokenizer.from_pretrained("{training.output_dir}")',
        f'model = AutoModelForCausalLM.from_pretrained("{training.output_dir}")',
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


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
