"""`sftforge plan --model NAME_OR_DIR`: per-GPU memory of a fine-tuning run under each distributed strategy,
from the model config alone (no weights are read), and the cheapest setup that fits.

Wired into the CLI by `cli.py` through `add_arguments` and `run`.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from sftforge.errors import ConfigError
from sftforge.plan.memory import (
    CUDA_CONTEXT_GIB,
    FINETUNING_TYPES,
    GIB,
    HEADROOM_FRACTION,
    PRECISIONS,
    STRATEGIES,
    Plan,
    PlanInputs,
    Row,
    make_plan,
    peft_alternatives,
    suggestions,
)
from sftforge.plan.shape import shape_from_config

# Machines of this many GPUs are assumed when --num_gpus needs several (the launch line's --num_machines).
GPUS_PER_MACHINE = 8
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, metavar="NAME_OR_DIR", help="local model folder (or config.json) or hub id"
    )
    parser.add_argument("--num_gpus", type=int, default=1, help="GPUs the run is spread over (default: 1)")
    parser.add_argument(
        "--gpu_memory_gb",
        type=float,
        default=80.0,
        help="memory of one GPU in GiB (default: 80, an H100/A100)",
    )
    parser.add_argument("--max_length", type=int, default=1024, help="tokens per example (default: 1024)")
    parser.add_argument("--per_device_train_batch_size", type=int, default=1, help="micro-batch (default: 1)")
    parser.add_argument(
        "--finetuning_type", choices=FINETUNING_TYPES, default="full", help="what is trained (default: full)"
    )
    parser.add_argument("--lora_r", type=int, default=8, help="LoRA rank (lora/qlora; default: 8)")
    parser.add_argument(
        "--lora_dropout",
        type=float,
        default=0.05,
        help="LoRA dropout; > 0 adds a masked input copy per adapter",
    )
    parser.add_argument(
        "--precision",
        choices=list(PRECISIONS),
        default="mixed",
        help="mixed: bf16 + fp32 AdamW master (2+2+12 bytes per trained parameter); fp32: 4+4+8",
    )
    parser.add_argument("--trust_remote_code", action="store_true", help="for configs with custom code")


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or name.endswith(".json") or not _HUB_ID.match(name)


def load_model_config(name: str, trust_remote_code: bool = False) -> dict[str, Any]:
    """The model's config as a plain dict (`AutoConfig`, so class defaults are filled in). A hub id needs
    network or the Hugging Face cache; only config.json is fetched."""
    path = Path(name).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        raise ConfigError(
            f"--model: folder {name!r} has no config.json (is it a Hugging Face model folder?)",
            source="command line",
        )
    if not path.exists() and _looks_like_path(name):
        raise ConfigError(
            f"--model: {name!r} does not exist (checked relative to {Path.cwd()}).", source="command line"
        )
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(
            str(path) if path.exists() else name, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"--model: cannot read the config of {name!r}: {first} "
            "(a hub id needs network or the model in the Hugging Face cache; a folder needs config.json)",
            source="command line",
        ) from None
    return config.to_dict()


def _unit(plan: Plan) -> tuple[str, float]:
    return ("GiB", GIB) if max(r.total for r in plan.rows) >= GIB else ("MiB", 1024**2)


def format_table(plan: Plan) -> list[str]:
    unit, scale = _unit(plan)
    fmt = "{:<21}" + "{:>10}" * 7 + "  {}"
    head = ("params", "grads", "optim", "activ.", "logits", "total", "+headroom", "fits")
    lines = [fmt.format(f"per GPU ({unit})", *head)]
    for r in plan.rows:
        if not r.applies:
            lines.append(fmt.format(r.label, *("-",) * 7, "n/a"))
            continue
        nums = (r.params, r.grads, r.optim, r.activations, r.logits, r.total, r.need)
        extra = f"  (CPU RAM {r.cpu / GIB:.1f} GiB)" if r.cpu else ""
        lines.append(
            fmt.format(r.label, *(f"{x / scale:.2f}" for x in nums), ("yes" if r.fits else "no") + extra)
        )
    return lines


def launch_lines(row: Row, num_gpus: int) -> list[str]:
    """The command for a row: the strategy is the name of the shipped launch config (`sftforge configs`)."""
    if row.strategy == "ddp" and num_gpus == 1:
        return ["sftforge train recipe.yaml"]
    line = f"sftforge train recipe.yaml --accelerate_config {row.strategy} --num_processes {num_gpus}"
    if num_gpus <= GPUS_PER_MACHINE:
        return [line]
    if num_gpus % GPUS_PER_MACHINE:
        return [line, "(several machines: add --num_machines, --machine_rank and --main_process_ip)"]
    machines = num_gpus // GPUS_PER_MACHINE
    return [
        f"{line} --num_machines {machines} --machine_rank RANK --main_process_ip HOST",
        f"(on each of {machines} machines of {GPUS_PER_MACHINE} GPUs: RANK 0 … {machines - 1}, HOST the address "
        "of the machine with RANK 0)",
    ]


def recipe_lines(plan: Plan, row: Row) -> list[str]:
    i = plan.inputs
    keys = []
    if i.finetuning_type != "full":
        keys += [
            f"finetuning_type: {i.finetuning_type}",
            f"lora_r: {i.lora_r}",
            f"lora_dropout: {i.lora_dropout:g}",
        ]
    keys += [
        f"max_length: {i.max_length}",
        f"per_device_train_batch_size: {i.batch_size}",
        f"gradient_checkpointing: {'true' if row.checkpointing else 'false'}",
    ]
    lines = [
        "  recipe.yaml:",
        *(f"    {k}" for k in keys),
        "  launch:",
        *(f"    {line}" for line in launch_lines(row, i.num_gpus)),
    ]
    if row.strategy == "fsdp2":
        lines.append("    (or --accelerate_config zero3: DeepSpeed ZeRO-3, same estimate)")
    if row.cpu:
        lines.append(
            f"  needs ~{row.cpu / GIB:.1f} GiB of CPU RAM for the offloaded states (all ranks together)"
        )
    return lines


def setup_line(plan: Plan, row: Row) -> str:
    ckpt = "with" if row.checkpointing else "without"
    return (
        f"{STRATEGIES[row.strategy][0]} {ckpt} gradient checkpointing "
        f"(~{row.need / GIB:.1f} of {plan.inputs.gpu_memory_gib:g} GiB per GPU with headroom)"
    )


def alternative_lines(plan: Plan) -> list[str]:
    """Full fine-tuning that needs CPU offload (or does not fit): the LoRA and QLoRA setups that fit the GPUs."""
    alternatives = peft_alternatives(plan)
    if not alternatives:
        return []
    why = (
        "does not fit"
        if plan.recommended is None
        else "fits only with CPU offload (the slowest setup: weights and optimizer states cross PCIe every step)"
    )
    lines = ["", f"full fine-tuning {why}; these fit on the GPUs alone:"]
    for alt in alternatives:
        rec = alt.recommended
        assert rec is not None  # peft_alternatives keeps plans that fit
        lines.append(f"{alt.inputs.finetuning_type} r={alt.inputs.lora_r}: {setup_line(alt, rec)}")
        lines += recipe_lines(alt, rec)
    return lines


def format_plan(plan: Plan, model_name: str) -> str:
    s, i, st = plan.shape, plan.inputs, plan.states
    p = PRECISIONS[i.precision]
    tied = "tied" if s.tie_word_embeddings else "untied"
    moe = f", MoE {s.num_experts} experts (top-{s.experts_per_token})" if s.num_experts else ""
    what = "full fine-tuning" if i.finetuning_type == "full" else f"{i.finetuning_type} r={i.lora_r}"
    lines = [
        f"sftforge plan: {model_name} ({s.model_type or 'unknown type'}): {st.total_params:,} parameters, "
        f"{tied} embeddings{moe}",
        f"  {what}: {st.trainable_params:,} trained; AdamW {p.weight}+{p.grad}+{p.optim} bytes per trained "
        f"parameter ({i.precision})"
        + (
            "; DDP/FSDP2 rows: fp32 weights in the model, 4+4+8 (+2 for autocast's bf16 copies under DDP)"
            if i.finetuning_type == "full" and i.precision == "mixed"
            else ""
        ),
        f"  {i.num_gpus} GPU(s) x {i.gpu_memory_gib:g} GiB; max_length {i.max_length} x "
        f"per_device_train_batch_size {i.batch_size} = {i.max_length * i.batch_size:,} tokens per micro-batch",
        "",
        *format_table(plan),
        "",
    ]
    rec = plan.recommended
    if rec is not None:
        lines.append(f"recommended: {setup_line(plan, rec)}")
        lines += recipe_lines(plan, rec)
    else:
        lines.append(
            f"nothing fits in {i.gpu_memory_gib:g} GiB per GPU. What would help (one change at a time):"
        )
        found = suggestions(plan.shape, i)
        lines += [f"  - {x}" for x in found] or [
            "  - nothing tried here fits: a larger GPU, or several changes"
        ]
    lines += alternative_lines(plan)
    lines.append("")
    lines += [f"note: {n}" for n in plan.notes]
    lines.append(
        f"estimates: headroom = {HEADROOM_FRACTION:.0%} + {CUDA_CONTEXT_GIB:g} GiB (CUDA context, fragmentation); "
        "every row padded to max_length; formulas and limits in docs/memory_planner.md"
    )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    inputs = PlanInputs(
        num_gpus=args.num_gpus,
        gpu_memory_gib=args.gpu_memory_gb,
        max_length=args.max_length,
        batch_size=args.per_device_train_batch_size,
        finetuning_type=args.finetuning_type,
        lora_r=args.lora_r,
        lora_dropout=args.lora_dropout,
        precision=args.precision,
    )
    inputs.check()  # cheap mistakes first, before transformers is imported
    shape = shape_from_config(load_model_config(args.model, args.trust_remote_code))
    print(format_plan(make_plan(shape, inputs), args.model))
    return 0
