"""Checks of the `peft` section (called from `check_and_resolve`): contradictions, ranges, and whether
bitsandbytes can run the requested quantization on this machine — all before any model loads.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from typing import Any

from sftforge.config.peft_args import BNB_4BIT_KEYS, LORA_KEYS, METHOD_KEYS, PROMPT_LEARNING_TYPES

_NAME_LIST = re.compile(r"^[\w.\-]+(,\s*[\w.\-]+)*$")  # q_proj or q_proj,v_proj — anything else is a regex
_INSTALL_BNB = "pip install -e '.[bitsandbytes]' (bitsandbytes>=0.48; its CPU backend needs a recent release)"


def normalise_target_modules(value: Any) -> list[str] | str:
    """'all-linear' / 'all' → 'all-linear'; 'q_proj,v_proj' → a list; any other string stays a regex; lists stay."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        value = value[0]
    if isinstance(value, str):
        text = value.strip()
        if text in ("all-linear", "all"):
            return "all-linear"
        if _NAME_LIST.match(text):
            return [part.strip() for part in text.split(",")]
        return text
    return list(value)


def check_peft(
    values: dict[str, dict[str, Any]],
    explicit: set[str],
    on_gpu: bool | None,
    problems: list[str],
    auto: dict[str, Any],
) -> list[str]:
    """Validate and resolve the peft section in place; return notes for the start-up summary. `on_gpu` None: not
    asked (the recipe has other mistakes), so the CPU probe of bitsandbytes is skipped."""
    peft, train = values["peft"], values["training"]
    notes: list[str] = []
    before = len(problems)
    kind = peft.get("finetuning_type", "full")
    if peft.get("use_peft"):
        if "finetuning_type" in explicit and kind not in ("lora", "qlora"):
            problems.append(
                f"use_peft: true asks for LoRA but finetuning_type is {kind!r}; keep only one of the two."
            )
        elif kind == "full":
            kind = peft["finetuning_type"] = "lora"
    bits = peft.get("quantization_bit")
    if bits == 0:  # LLaMA-Factory's guides write `quantization_bit: 0` for "not quantized"
        if kind == "qlora":
            problems.append(
                "quantization_bit: 0 means no quantization, but finetuning_type: qlora quantizes the base; use "
                "quantization_bit: 4 (or 8), or finetuning_type: lora."
            )
        bits = peft["quantization_bit"] = None
    if kind == "qlora" and bits is None:
        bits = peft["quantization_bit"] = 4
    if bits is not None and bits not in (4, 8):
        problems.append(f"quantization_bit: {bits} is not supported; use 4 (QLoRA, nf4) or 8.")
    if bits is not None and kind not in ("lora", "qlora"):
        problems.append(
            f"quantization_bit: a quantized base cannot be trained with finetuning_type: {kind}; use "
            "finetuning_type: qlora (LoRA adapters on the quantized base), or drop quantization_bit."
        )
    lora_set = [k for k in LORA_KEYS if k in explicit and peft.get(k) not in (None, False)]
    if kind == "ia3":  # IA3 merges like LoRA
        lora_set = [k for k in lora_set if k != "merge_after_train"]
    if kind not in ("lora", "qlora") and lora_set:
        problems.append(
            f"{', '.join(lora_set)}: LoRA settings have no effect with finetuning_type: {kind}; set "
            "finetuning_type: lora (or qlora), or remove them."
        )
    notes += _check_other_methods(values, explicit, kind, problems)
    if "freeze_trainable_layers" in explicit and kind != "freeze":
        problems.append(
            f"freeze_trainable_layers: only used with finetuning_type: freeze (it is {kind!r}); remove it."
        )
    bnb_set = [k for k in BNB_4BIT_KEYS if k in explicit]
    if bnb_set and bits != 4:
        problems.append(
            f"{', '.join(bnb_set)}: only used with 4-bit quantization (quantization_bit: 4 or finetuning_type: "
            "qlora); remove them or quantize in 4 bits."
        )
    _check_ranges(peft, problems)
    if "lora_target_modules" in peft:
        peft["lora_target_modules"] = normalise_target_modules(peft["lora_target_modules"])
    if kind in ("lora", "qlora"):  # freeze: the model stage says which blocks train
        notes.append(_lora_note(peft, bits))
    if bits == 4 and peft.get("bnb_4bit_compute_dtype", "auto") == "auto":
        auto["bnb_4bit_compute_dtype"] = (
            "auto"  # written back as auto: re-resolved with the reader's precision
        )
        peft["bnb_4bit_compute_dtype"] = (
            "bfloat16" if train.get("bf16") else "float16" if train.get("fp16") else "float32"
        )
    if bits in (4, 8) and len(problems) == before:  # probe only a coherent peft setup
        notes += _check_bitsandbytes(peft, bits, on_gpu, problems)
    return notes


def _check_other_methods(
    values: dict[str, dict[str, Any]], explicit: set[str], kind: str, problems: list[str]
) -> list[str]:
    """prefix / prompt / ptuning / ia3: their keys, and what prompt learning cannot do."""
    peft, data, train = values["peft"], values["data"], values["training"]
    own = METHOD_KEYS.get(kind, ())
    every = dict.fromkeys(k for keys in METHOD_KEYS.values() for k in keys)
    for key in (k for k in every if k in explicit and k not in own):
        users = " or ".join(m for m, keys in METHOD_KEYS.items() if key in keys)
        problems.append(
            f"{key}: only used with finetuning_type: {users} (it is {kind!r}); remove it or change finetuning_type."
        )
    if kind not in METHOD_KEYS:
        return []
    if peft.get("num_virtual_tokens", 20) < 1:
        problems.append(
            f"num_virtual_tokens: {peft['num_virtual_tokens']} must be at least 1 (8 to 32 is usual)."
        )
    if kind == "prompt":
        text = peft.get("prompt_tuning_init_text")
        if text and "prompt_tuning_init" not in explicit:
            peft["prompt_tuning_init"] = "text"  # giving the text says how to start
        if peft.get("prompt_tuning_init") == "text" and not text:
            problems.append(
                "prompt_tuning_init: text needs prompt_tuning_init_text (the text whose embeddings start the "
                "virtual tokens), e.g. 'Answer the question helpfully.'; or use prompt_tuning_init: random."
            )
    for key in ("ia3_target_modules", "ia3_feedforward_modules"):
        if peft.get(key) is not None:
            peft[key] = normalise_target_modules(peft[key])
    if kind not in PROMPT_LEARNING_TYPES:
        return []
    if data.get("packing"):
        problems.append(
            f"packing: true cannot be used with finetuning_type: {kind}: the virtual tokens go in front of each "
            "sequence, and a packed row holds several samples (only the first would see them, the others would "
            "train on another model). Set packing: false."
        )
    if peft.get("merge_after_train"):
        problems.append(
            f"merge_after_train: a {kind} adapter cannot be merged into the weights (its virtual tokens are "
            "inputs, not weight updates); serve or chat the adapter folder itself, or remove merge_after_train."
        )
    if kind == "prefix" and (train.get("activation_checkpointing") or train.get("gradient_checkpointing")):
        problems.append(
            "activation_checkpointing: peft's prefix tuning does not work with it (its prefix is a KV cache, which "
            "checkpointed blocks do not take); set activation_checkpointing: false, or use finetuning_type: "
            "ptuning or prompt."
        )
    return [
        f"{kind}: the adapter cannot be merged (`sftforge merge` refuses it); `sftforge chat OUTPUT_DIR` and `sftforge "
        "serve OUTPUT_DIR` run it unmerged"
    ]


def _check_ranges(peft: dict[str, Any], problems: list[str]) -> None:
    if peft.get("lora_r", 8) < 1:
        problems.append(f"lora_r: {peft['lora_r']} must be at least 1 (8 to 64 is usual).")
    if peft.get("lora_alpha", 16) <= 0:
        problems.append(f"lora_alpha: {peft['lora_alpha']} must be positive (often 2 × lora_r).")
    if not 0.0 <= peft.get("lora_dropout", 0.05) < 1.0:
        problems.append(f"lora_dropout: {peft['lora_dropout']} must be in [0, 1).")
    if peft.get("freeze_trainable_layers", 2) < 1:
        problems.append(
            f"freeze_trainable_layers: {peft['freeze_trainable_layers']} must be at least 1 (the last N blocks)."
        )
    target = peft.get("lora_target_modules")
    if isinstance(target, list) and not target:
        problems.append("lora_target_modules: empty; use all-linear or name the modules (q_proj,v_proj).")


def _lora_note(peft: dict[str, Any], bits: int | None) -> str:
    method = "DoRA" if peft.get("use_dora") else "LoRA"
    if bits:
        method = f"Q{method} ({bits}-bit base, bitsandbytes)"
    target = normalise_target_modules(peft.get("lora_target_modules", "all-linear"))
    target_text = ",".join(target) if isinstance(target, list) else target
    scale = "rsLoRA scaling" if peft.get("use_rslora") else "alpha/r scaling"
    return (
        f"fine-tuning: {method} r={peft.get('lora_r', 8)} alpha={peft.get('lora_alpha', 16)} "
        f"dropout={peft.get('lora_dropout', 0.05)} on {target_text} ({scale}); the base stays frozen"
    )


def _check_bitsandbytes(
    peft: dict[str, Any], bits: int, on_gpu: bool | None, problems: list[str]
) -> list[str]:
    if importlib.util.find_spec("bitsandbytes") is None:
        problems.append(
            f"quantization_bit: {bits}-bit loading needs bitsandbytes, which is not installed: {_INSTALL_BNB}."
        )
        return []
    if on_gpu is not False:  # a GPU, or not asked: no CPU probe
        return []
    why = quantized_cpu_problem(
        bits,
        peft.get("bnb_4bit_quant_type", "nf4"),
        bool(peft.get("bnb_4bit_use_double_quant", True)),
        peft.get("bnb_4bit_compute_dtype", "float32") if bits == 4 else "float32",  # 8-bit: unused
        bool(peft.get("use_dora")),
        peft.get("bnb_4bit_quant_storage", "uint8") if bits == 4 else "uint8",
    )
    if why:
        setup = f"{bits}-bit" + (f" {peft.get('bnb_4bit_quant_type', 'nf4')}" if bits == 4 else "")
        setup += " with DoRA" if peft.get("use_dora") else " with LoRA"
        problems.append(
            f"quantization_bit: {setup} needs a CUDA GPU here: there is none, and bitsandbytes' CPU backend "
            f"failed a two-step training probe of this setup ({why}). Run on a CUDA GPU"
            + (", use quantization_bit: 4" if bits == 8 else "")
            + ", or train without quantization (finetuning_type: lora)."
        )
        return []
    return [
        f"quantization: bitsandbytes {bits}-bit on CPU (its CPU backend passed a training probe; slow — "
        "meant for trying recipes, use a CUDA GPU for real runs)"
    ]


@functools.cache
def quantized_cpu_problem(
    bits: int,
    quant_type: str,
    double_quant: bool,
    compute_dtype: str,
    use_dora: bool,
    quant_storage: str = "uint8",
) -> str | None:
    """Train a one-layer quantized LoRA model for two steps on CPU; None if it works, else the reason."""
    try:
        import bitsandbytes as bnb
        import torch
        from peft import LoraConfig, get_peft_model
    except Exception as e:  # a broken install fails in many ways; report it, whatever it is
        return f"cannot import it: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            dense = torch.nn.Linear(64, 64, bias=False)
            if bits == 4:
                layer = bnb.nn.Linear4bit(
                    64, 64, bias=False, compute_dtype=getattr(torch, compute_dtype), quant_type=quant_type,
                    compress_statistics=double_quant, quant_storage=getattr(torch, quant_storage),
                )  # fmt: skip
                layer.weight = bnb.nn.Params4bit(
                    dense.weight.data,
                    requires_grad=False,
                    quant_type=quant_type,
                    compress_statistics=double_quant,
                    quant_storage=getattr(torch, quant_storage),
                )
            else:
                layer = bnb.nn.Linear8bitLt(64, 64, bias=False, has_fp16_weights=False)
                layer.weight = bnb.nn.Int8Params(
                    dense.weight.data, requires_grad=False, has_fp16_weights=False
                )
            net = torch.nn.Sequential()
            net.add_module("proj", layer.to("cpu"))  # .to() quantizes
            model = get_peft_model(
                net, LoraConfig(r=4, lora_alpha=8, target_modules=["proj"], use_dora=use_dora)
            )
            params = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.SGD(params, lr=0.1)
            for _ in range(2):
                loss = model(torch.randn(2, 64)).float().pow(2).mean()
                loss.backward()
                if not torch.isfinite(loss) or any(p.grad is None for p in params):
                    return "no finite loss or gradient"
                optimizer.step()
                optimizer.zero_grad()
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else ""
        return f"{type(e).__name__}: {first}"[:200]
    return None
