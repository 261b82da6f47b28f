"""Cross-field checks and device-aware defaults, run on the coerced values before any dataclass is built.

Problems are appended to `problems` (all reported together); decisions taken for the user are returned as notes for
the start-up summary, each with its reason.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from sftforge.config.loader import data_paths_missing
from sftforge.config.validate_mix import check_mixing
from sftforge.config.validate_peft import check_peft
from sftforge.config.validate_pref import check_preference
from sftforge.config.validate_pt import check_pretraining
from sftforge.config.validate_rope import check_rope_scaling
from sftforge.config.validate_stream import check_streaming
from sftforge.data.named_templates import chat_template_problem


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def deepspeed_requested(train: dict[str, Any]) -> bool:
    """`--deepspeed JSON`, or a DeepSpeed config under `accelerate launch` (it sets ACCELERATE_USE_DEEPSPEED)."""
    return bool(train.get("deepspeed")) or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"


def fsdp_requested(train: dict[str, Any]) -> bool:
    """`--fsdp …`, or an FSDP config under `accelerate launch` (it sets ACCELERATE_USE_FSDP)."""
    return bool(train.get("fsdp")) or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"


def cpu_supports_bf16() -> bool:
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported", "_is_arm_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def check_and_resolve(
    values: dict[str, dict[str, Any]], explicit: set[str], problems: list[str], auto: dict[str, Any]
) -> list[str]:
    """Validate, and fill device-dependent defaults. `auto` receives {key: value the user left} for each key
    resolved here, so the written config keeps "auto" and re-resolves on the machine that reads it.

    The recipe's own mistakes (`problems` from the loader: keys, types; then the checks below up to the device,
    and the peft section's) are reported before anything imports torch (seconds): the device-dependent checks
    run on a clean recipe."""
    model, data, train = values["model"], values["data"], values["training"]
    notes: list[str] = []
    for key in ("torch_dtype", "attn_implementation"):
        if model.get(key, "auto") == "auto":
            auto[key] = "auto"
    for key in ("bf16", "fp16", "use_cpu"):
        if key not in explicit:
            auto[key] = False
    if "ddp_backend" not in explicit:
        auto["ddp_backend"] = None
    notes += check_pretraining(values, explicit, problems)  # first: it sets eval_split_ratio and packing
    notes += check_mixing(values, explicit, problems)
    notes += check_preference(values, explicit, problems)
    _check_required(model, data, problems, named_data="dataset" in explicit)
    check_rope_scaling(model, problems)
    notes += _resolve_deepspeed_name(train, auto)
    _check_data(data, train, explicit, problems)
    notes += check_streaming(data, train, explicit, problems)
    if train.get("bf16") and train.get("fp16"):
        problems.append(
            "bf16 and fp16 are both true: choose one mixed precision (bf16 on Ampere or newer GPUs)."
        )
    if problems:  # the peft section's own mistakes too; the device is not asked (see the docstring)
        return notes + check_peft(values, explicit, None, problems, auto)
    on_gpu = cuda_available()
    before = len(problems)
    notes += _resolve_precision(train, explicit, on_gpu, problems, auto)
    from sftforge.config.precision import check_deepspeed_json, follow_recipe_in_accelerate
    from sftforge.config.reporting import check_report_to

    # The recipe's precision is settled: a DeepSpeed JSON and accelerate's environment must follow it
    if len(problems) == before:
        check_deepspeed_json(train, _precision_source(train, explicit, auto), problems)
        notes += follow_recipe_in_accelerate(train)
    notes += check_report_to(train, problems)
    if train.get("nan_policy") == "skip" and deepspeed_requested(train):
        problems.append(
            "nan_policy: skip cannot work under DeepSpeed: its engine applies the optimizer step inside the "
            "backward pass, so a step cannot be held back. Use nan_policy: stop (the default; it stops before "
            "that backward, on the step's losses) — with fp16, DeepSpeed's own loss scaler already skips "
            "overflowing steps."
        )
    if not on_gpu and "use_cpu" not in explicit:
        notes += _resolve_cpu_distribution(train, explicit, auto, problems)
    notes += _resolve_attention(model, on_gpu, problems)
    if train.get("use_liger_kernel") and not (on_gpu and importlib.util.find_spec("liger_kernel")):
        why = "no CUDA GPU" if not on_gpu else "liger-kernel is not installed (pip install -e '.[liger]')"
        problems.append(f"use_liger_kernel: Liger's Triton kernels need a CUDA GPU and liger-kernel ({why}).")
    # transformers 5 renamed gradient_checkpointing → activation_checkpointing; accept the familiar name quietly.
    for old, new in (
        ("gradient_checkpointing", "activation_checkpointing"),
        ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs"),
    ):
        if old in train:
            value = train.pop(old)
            if new in train and train[new] != value:
                problems.append(f"{old} and {new} are the same setting with different values; keep one.")
            train.setdefault(new, value)
    notes += check_peft(values, explicit, on_gpu, problems, auto)
    notes += _resolve_weights_dtype(values, on_gpu, problems)
    return notes


def _resolve_weights_dtype(values: dict[str, dict[str, Any]], on_gpu: bool, problems: list[str]) -> list[str]:
    """The dtype the weights load in. Full fine-tuning keeps fp32 master weights under mixed precision: autocast
    computes in bf16/fp16 while AdamW updates fp32 weights. Loaded in bf16 instead (the checkpoint's dtype), AdamW
    would update bf16 weights, and every update smaller than bf16's resolution (1/256 of the weight) is lost."""
    model, train = values["model"], values["training"]
    wanted = model.get("torch_dtype", "auto")
    full = values["peft"].get("finetuning_type", "full") in ("full", "freeze")
    mixed = "bf16" if train.get("bf16") else "fp16" if train.get("fp16") else None
    deepspeed = deepspeed_requested(train)
    if wanted == "auto" and not on_gpu:
        model["torch_dtype"] = "float32"
        return ["weights: float32 (CPU)"]
    if wanted == "auto" and full and mixed and not deepspeed:
        model["torch_dtype"] = "float32"
        return [
            f"weights: float32 — fp32 master weights for full fine-tuning ({mixed} autocast computes, AdamW updates "
            "fp32 weights; torch_dtype: bfloat16 asks for pure bf16, which loses small updates)"
        ]
    if wanted == "auto":
        why = (
            "DeepSpeed keeps fp32 master weights in its optimizer"
            if full and deepspeed
            else "the frozen base; peft keeps the adapters in fp32"
            if not full
            else "no mixed precision"
        )
        return [f"weights: the checkpoint's dtype ({why})"]
    if full and not deepspeed and wanted == "float16" and mixed == "fp16":
        problems.append(
            "torch_dtype: float16 with fp16 and full fine-tuning cannot train: the fp16 loss scaler refuses fp16 "
            "gradients. Leave torch_dtype: auto (fp32 master weights, fp16 autocast) or use bf16."
        )
        return []
    if full and not deepspeed and wanted in ("bfloat16", "float16"):
        return [
            f"weights: {wanted} (as asked): pure {wanted} training — AdamW updates {wanted} weights without fp32 "
            "master copies, so updates below their resolution are lost; torch_dtype: auto keeps fp32 masters"
        ]
    return [f"weights: {wanted} (as asked)"]


def _check_required(model: dict, data: dict, problems: list[str], named_data: bool = False) -> None:
    """named_data: LLaMA-Factory's `dataset:` names were given; when they gave no data, they said why already."""
    if not model.get("model_name_or_path") and not model.get("config_name"):
        problems.append(
            "model_name_or_path is required: a local model folder or a hub id "
            "(make one offline with `sftforge init-model DIR`), or config_name to train from scratch."
        )
    if named_data:
        return
    if not data.get("train_data_path") and not data.get("dataset_name") and not data.get("datasets"):
        problems.append(
            "no training data: set train_data_path (file, directory, glob or list), dataset_name or datasets."
        )


def _resolve_deepspeed_name(train: dict, auto: dict[str, Any]) -> list[str]:
    """`deepspeed: zero3`: a shipped DeepSpeed JSON by name (package data, so a wheel install has it too). The
    written config keeps the name. A file of that name in the current folder wins."""
    from sftforge.launch_configs import shipped_deepspeed_json

    name = train.get("deepspeed")
    if not isinstance(name, str) or Path(name).is_file() or (path := shipped_deepspeed_json(name)) is None:
        return []
    train["deepspeed"], auto["deepspeed"] = str(path), name
    return [f"deepspeed: {name} → {path} (shipped)"]


def _check_data(data: dict, train: dict, explicit: set[str], problems: list[str]) -> None:
    # chat_template: a shipped name (template: qwen), a .jinja file, tokenizer or default
    template_problem = chat_template_problem(data["chat_template"]) if data.get("chat_template") else None
    if template_problem:
        problems.append(template_problem)
    for key in ("train_data_path", "eval_data_path"):
        for missing in data_paths_missing(data.get(key)):
            problems.append(f"{key}: {missing!r} does not exist (checked relative to {_cwd()}).")
    ratio = data.get("eval_split_ratio", 0.0)
    if not 0.0 <= ratio < 1.0:
        problems.append(
            f"eval_split_ratio: {ratio} must be in [0, 1), e.g. 0.05 to hold out 5% for evaluation."
        )
    if data.get("max_length", 1024) < 8:
        problems.append(f"max_length: {data['max_length']} is too small; use at least a few hundred tokens.")
    ds = train.get("deepspeed")
    if isinstance(ds, str) and ds.endswith(".json") and not Path(ds).is_file():
        problems.append(
            f"deepspeed: {ds!r} does not exist (checked relative to {_cwd()}); the shipped ones go by name: "
            "zero2, zero3, zero3_offload (e.g. deepspeed: zero2). To edit one, `sftforge configs copy zero2` writes "
            "configs/deepspeed/zero2.json here."
        )
    if data.get("multi_turn") == "split" and data.get("train_on") == "all":
        problems.append(
            "multi_turn: split trains each assistant turn in its own example, but train_on: all trains every token "
            "of the conversation; with split every example would train the shared history again. Use multi_turn: "
            "auto or whole with train_on: all."
        )
    bad = data.get("max_bad_row_fraction", 0.1)
    if not 0.0 <= bad <= 1.0:
        problems.append(
            f"max_bad_row_fraction: {bad} must be in [0, 1] (0.1: stop when more than 10% of the rows are unusable; "
            "1: never stop)."
        )
    dropped = data.get("max_dropped_fraction", 0.05)
    if not 0.0 <= dropped <= 1.0:
        problems.append(
            f"max_dropped_fraction: {dropped} must be in [0, 1] (0.05: stop when more than 5% of the rows are "
            "longer than max_length; 1: never stop)."
        )
    if data.get("max_samples") == 0:  # LLaMA-Factory's guides: 0 = no limit
        data["max_samples"] = None
    if data.get("max_samples") is not None and data["max_samples"] < 1:
        problems.append("max_samples: must be at least 1, or 0 / unset to use every row.")
    procs = data.get("dataset_num_proc")
    if isinstance(procs, str) and procs.strip().lower() == "auto":
        data["dataset_num_proc"] = "auto"
    elif procs is not None and (isinstance(procs, str) or procs < 1):
        problems.append(
            f"dataset_num_proc: {procs!r} is not a process count; use a number of at least 1, or auto (every "
            "core for large data)."
        )
    has_eval = bool(data.get("eval_data_path") or ratio > 0 or data.get("dataset_test_split"))
    strategy = str(train.get("eval_strategy", "no"))
    if strategy != "no" and not has_eval:
        problems.append(
            f"eval_strategy is {strategy!r} but there is no evaluation data: set eval_data_path, "
            "eval_split_ratio or dataset_test_split, or eval_strategy: no."
        )
    if train.get("eval_generation") and not has_eval:
        problems.append(
            "eval_generation: true needs evaluation data: set eval_data_path, eval_split_ratio or "
            "dataset_test_split (or run `sftforge eval MODEL --data FILE` after training)."
        )
    for key in ("eval_generation_max_samples", "eval_max_new_tokens"):
        if key in train and train[key] < 1:
            problems.append(f"{key}: must be at least 1.")
    if has_eval and "eval_strategy" not in explicit:
        train["eval_strategy"] = "epoch"


_CPU_FP32 = "precision: fp32 — the recipe asks for {asked}, but there is no GPU"


def _resolve_precision(
    train: dict, explicit: set[str], on_gpu: bool, problems: list[str], auto: dict[str, Any]
) -> list[str]:
    bf16, fp16 = (
        train.get("bf16", False),
        train.get("fp16", False),
    )  # not both: check_and_resolve stops on that
    if "bf16" in explicit or "fp16" in explicit:
        if on_gpu:
            return [f"precision: {'bf16' if bf16 else 'fp16' if fp16 else 'fp32'} (as asked)"]
        if (bf16 or fp16) and "use_cpu" not in explicit:
            # A guide's recipe, written for GPUs, on a CPU-only machine: fp32, in this process and in every
            # launched one. The written config keeps what the recipe said, so a GPU machine reading it uses it.
            asked = "bf16" if bf16 else "fp16"
            auto[asked] = True
            train["bf16"] = train["fp16"] = False
            train.setdefault("use_cpu", True)
            why = (
                "bf16 autocast on CPU is several times slower than fp32, 7.8x measured; use_cpu: true with "
                "bf16: true forces it"
                if bf16
                else "fp16 mixed precision needs a CUDA GPU"
            )
            return [_CPU_FP32.format(asked=asked) + f" ({why})"]
        if fp16:
            problems.append("fp16: mixed precision fp16 needs a GPU; on CPU leave fp16 off (fp32).")
            return []
        if bf16 and not cpu_supports_bf16():
            problems.append("bf16: this CPU has no bf16 support (no AVX512-BF16/AMX); set bf16: false.")
            return []
        if bf16:
            train["use_cpu"] = True
            return [
                "precision: bf16 autocast on CPU (as asked; on most CPUs it is several times slower than fp32)"
            ]
        return ["precision: fp32 (as asked)"]
    if not on_gpu:
        train.setdefault("use_cpu", True)
        return [
            "precision: fp32 — no GPU; bf16 autocast on CPU is slower than fp32 "
            "(TRL's bf16 default made CPU SFT 7.8x slower here), so it stays off"
        ]
    import torch

    if torch.cuda.is_bf16_supported():
        train["bf16"] = True
        return ["precision: bf16 mixed precision — the GPU supports it"]
    train["fp16"] = True
    return ["precision: fp16 mixed precision — the GPU has no bf16"]


def _precision_source(train: dict, explicit: set[str], auto: dict[str, Any]) -> str:
    """Where the recipe's precision came from, for messages that name it."""
    bf16, fp16 = bool(train.get("bf16")), bool(train.get("fp16"))
    downgraded = [k for k in ("bf16", "fp16") if auto.get(k) is True]
    if downgraded:
        return f"{downgraded[0]}: true became fp32: no GPU"
    if bf16 or fp16:
        return f"{'bf16' if bf16 else 'fp16'}: true" + (
            "" if {"bf16", "fp16"} & explicit else ", chosen for this GPU"
        )
    return (
        "bf16: false, fp16: false" if {"bf16", "fp16"} & explicit else "bf16/fp16 unset: fp32 without a GPU"
    )


def _resolve_cpu_distribution(
    train: dict[str, Any], explicit: set[str], auto: dict[str, Any], problems: list[str]
) -> list[str]:
    """No GPU. `use_cpu` makes accelerate run several processes (torchrun, accelerate launch) as one gloo group;
    without it each process would train alone. DeepSpeed and FSDP are the exception: `use_cpu` makes accelerate
    drop their plugin (and silently train plain DDP), and without a backend it counts 1 process (DeepSpeed's
    "auto" train_batch_size goes wrong), so they get gloo instead."""
    sharded = "FSDP" if fsdp_requested(train) else "DeepSpeed" if deepspeed_requested(train) else None
    if sharded is None:
        train["use_cpu"] = True
        return []
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if sharded == "FSDP" and launched:
        from sftforge.launch import FSDP_NEEDS_GPU

        problems.append(FSDP_NEEDS_GPU)
        return []
    train.pop("use_cpu", None)
    if "ddp_backend" not in explicit:
        train["ddp_backend"] = "gloo"
    json_path = train.get("deepspeed")
    if isinstance(json_path, str) and Path(json_path).is_file() and launched:
        # transformers' own `--deepspeed` set-up asks accelerate for a GPU backend and ignores ddp_backend; the
        # same JSON through accelerate's DeepSpeed plugin (the `accelerate launch` path) takes gloo.
        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        os.environ["ACCELERATE_DEEPSPEED_CONFIG_FILE"] = str(Path(json_path).resolve())
        auto.setdefault("deepspeed", train.pop("deepspeed"))  # a shipped name stays the name
    return [f"distributed: {sharded} on CPU over gloo (no GPU)"] if launched else []


def _resolve_attention(model: dict, on_gpu: bool, problems: list[str]) -> list[str]:
    wanted = model.get("attn_implementation", "auto")
    has_flash = importlib.util.find_spec("flash_attn") is not None
    if wanted == "flash_attention_2" and not (on_gpu and has_flash):
        why = "no CUDA GPU" if not on_gpu else "the flash-attn package is not installed"
        problems.append(
            f"attn_implementation: flash_attention_2 needs a CUDA GPU and flash-attn ({why}); use sdpa."
        )
        return []
    if wanted != "auto":
        return [f"attention: {wanted} (as asked)"]
    if on_gpu and has_flash:
        model["attn_implementation"] = "flash_attention_2"
        return ["attention: flash_attention_2 — GPU with flash-attn installed"]
    model["attn_implementation"] = "sdpa"
    reason = "no GPU" if not on_gpu else "flash-attn not installed"
    return [f"attention: sdpa — {reason} (PyTorch scaled-dot-product attention)"]


def _cwd() -> str:
    import os

    return os.getcwd()
