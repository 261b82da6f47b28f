"""One-screen summaries at the start and the end of a run."""

from __future__ import annotations

import math
import os
import shlex
from pathlib import Path
from typing import Any

from sftforge.model.peft import count_parameters


def _steps(num_examples: int, args: Any, world_size: int | None = None) -> tuple[int, int]:
    world = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * world
    if args.max_steps and args.max_steps > 0:
        return per_step, args.max_steps
    batches = math.ceil(num_examples / (args.per_device_train_batch_size * world))
    return per_step, math.ceil(batches / args.gradient_accumulation_steps) * math.ceil(args.num_train_epochs)


def split_decision(stats: Any, multi_turn: str) -> list[str]:
    """The `decision` line for rows split into one example per trained turn (none when no row was)."""
    from sftforge.data.turns import SPLIT_REASONS

    rows = sum(stats.split_rows.values())
    if not rows:
        return []
    reasons = stats.split_rows.most_common()
    why = "; ".join(SPLIT_REASONS.get(r, r) + (f": {n} rows" if len(reasons) > 1 else "") for r, n in reasons)
    line = (
        f" decision     multi_turn {multi_turn}: {rows} of {stats.kept} rows split into {stats.split_examples} "
        f"examples, one per trained assistant turn, each rendered exactly as inference sees it ({why})"
    )
    if stats.split_dropped:
        line += "; of their examples dropped: " + ", ".join(
            f"{k}: {v}" for k, v in stats.split_dropped.most_common()
        )
    return [line]


def data_summary_lines(cfg: Any, data: Any) -> list[str]:
    """The data part of the start-up summary; `sftforge inspect` prints the same lines."""
    if getattr(data, "blocks", None) is not None:
        return pretrain_summary_lines(cfg, data)
    if getattr(cfg.data, "streaming", False):
        return streaming_summary_lines(cfg, data)
    stats = data.train_stats
    dropped = ", ".join(f"{k}: {v}" for k, v in stats.dropped.most_common()) or "none"
    if getattr(cfg.data, "stage", "sft") in ("dpo", "kto"):
        return preference_summary_lines(cfg, data, dropped)
    return [
        *split_decision(stats, cfg.data.multi_turn),
        f" data         {stats.rows} rows read, {stats.kept} kept; formats: "
        + ", ".join(f"{k} {v}" for k, v in stats.formats.most_common()),
        *[
            f" {'mix' if i == 0 else '':<12} {line}"
            for i, line in enumerate(getattr(data, "mix", None) or [])
        ],
        f" dropped      {dropped}",
        *length_lines(cfg, data),
        " masks        spans found by "
        + ", ".join(f"{k} {v}" for k, v in stats.methods.most_common())
        + f"; policy {cfg.data.train_on}, reasoning {'trained' if cfg.data.train_on_reasoning else 'not trained'}"
        + "; every example verified",
        f" tokens       {stats.tokens} total, {stats.trained_tokens} trained "
        f"({100 * stats.trained_fraction:.1f}%), {stats.truncated} examples truncated to {cfg.data.max_length} "
        f"(truncation: {cfg.data.truncation})",
        f" split        {len(data.train)} train / {len(data.eval)} eval examples",
        *cache_lines(data),
    ]


def preference_summary_lines(cfg: Any, data: Any, dropped: str) -> list[str]:
    """stage dpo / kto: rows → pairs (or rated answers); what is scored; the split in pairs."""
    stats, stage = data.train_stats, cfg.data.stage
    unit = "pairs" if stage == "dpo" else "rated answers"
    per = 2 if stage == "dpo" else 1
    return [
        f" data         {stats.rows} rows read, {stats.kept} kept; formats: "
        + ", ".join(f"{k} {v}" for k, v in stats.formats.most_common()),
        f" dropped      {dropped}",
        *length_lines(cfg, data),
        " scored       each answer's tokens and its end-of-turn token, found by "
        + ", ".join(f"{k} {v}" for k, v in stats.methods.most_common())
        + "; the prompt as the chat template renders it for generation; every example verified",
        f" tokens       {stats.tokens} total, {stats.trained_tokens} scored ({100 * stats.trained_fraction:.1f}%); "
        f"rows longer than {cfg.data.max_length} tokens are dropped, never cut",
        f" split        {len(data.train) // per} train / {len(data.eval) // per} eval {unit}",
        *cache_lines(data),
    ]


def cache_lines(data: Any) -> list[str]:
    """What the tokenized-data cache did (hit, stored, off), when it was asked."""
    cache = getattr(data, "cache", None)
    return [f" cache        {cache.describe()}"] if cache is not None else []


def length_lines(cfg: Any, data: Any) -> list[str]:
    """The rows' length distribution, and a warning per split that lost rows to max_length."""
    from sftforge.data.lengths import drop_warning, length_drops, lengths_line

    d = cfg.data
    line = lengths_line(data.train_stats)
    lines = [f" lengths      {line}"] if line else []
    for split, stats in (("train", data.train_stats), ("eval", getattr(data, "eval_stats", None))):
        if stats is not None and length_drops(stats):
            lines.append(f" {drop_warning(stats, d.max_length, d.max_dropped_fraction, split)}")
    return lines


def streaming_summary_lines(cfg: Any, data: Any) -> list[str]:
    """streaming: the training rows are read while training, so there are no counts up front."""
    d = cfg.data
    order = (
        "in order" if cfg.training.train_sampling_strategy == "sequential" else "shuffled within each window"
    )
    return [
        f" data         streaming: training rows read, tokenized{' and packed' if d.packing else ''} while "
        f"training, {d.streaming_buffer} rows per window, {order}; counts unknown up front",
        f" split        streaming train / {len(data.eval)} eval examples",
    ]


def pretrain_summary_lines(cfg: Any, data: Any) -> list[str]:
    """stage pt: documents read, tokens in the corpus and in blocks (the coverage), block layout."""
    stats, blocks, d = data.train_stats, data.blocks, cfg.data
    dropped = ", ".join(f"{k}: {v}" for k, v in stats.dropped.most_common()) or "none"
    if d.packing:
        layout = (
            f"{len(data.train)} blocks of {d.max_length} tokens (documents + eos concatenated; last block "
            f"{'dropped' if d.drop_last_block else 'kept'}; "
            + (
                "documents isolated)"
                if d.document_isolation
                else "documents attend across boundaries, as run_clm)"
            )
        )
    else:
        layout = f"{len(data.train)} documents, each cut at {d.max_length} tokens ({blocks.truncated} cut; pack: false)"
    return [
        f" data         stage pt: {stats.rows} rows read, {blocks.documents} documents (column {d.text_column!r}); "
        f"dropped {dropped}",
        f" tokens       {blocks.corpus_tokens} in the corpus, {blocks.block_tokens} trained per epoch "
        f"({100 * blocks.coverage:.2f}% coverage, every block token is a label)",
        f" blocks       {layout}",
        f" split        {len(data.train)} train / {len(data.eval)} eval rows",
        *cache_lines(data),
    ]


def print_startup_summary(
    cfg: Any, bundle: Any, data: Any, model: Any, train_rows: Any, world_size: int | None = None
) -> None:
    """`world_size`: the processes of the run (a dry run's launch); default: this process's WORLD_SIZE."""
    args = cfg.training
    streaming = getattr(cfg.data, "streaming", False)  # no length: max_steps counts
    effective, total_steps = _steps(0 if streaming else len(train_rows), args, world_size)
    trainable, params = count_parameters(model)  # peft's count under LoRA (4-bit weights: two per byte)
    lines = [
        "─" * 72,
        f" sftforge train → {args.output_dir}",
        f" model        {model_label(cfg)}  ({params / 1e6:.2f}M params, {trainable / 1e6:.2f}M trainable)",
        *[f" decision     {note}" for note in cfg.notes + bundle.notes],
        *data_summary_lines(cfg, data),
        *([] if streaming else _packing_lines(cfg, data, train_rows, model)),
        f" batch        {args.per_device_train_batch_size} per device × {args.gradient_accumulation_steps} "
        f"accumulation = {effective} effective; {total_steps} optimizer steps",
        "─" * 72,
    ]
    print("\n".join(lines), flush=True)


def model_label(cfg: Any) -> str:
    """The model line's name: the loaded weights, or the config a random init was built from."""
    m = cfg.model
    if m.model_name_or_path:
        return str(m.model_name_or_path)
    overrides = f" + {m.config_overrides}" if m.config_overrides else ""
    return f"{m.config_name}{overrides} — random init (seed {cfg.training.seed}), no weights loaded"


def _packing_lines(cfg: Any, data: Any, rows: Any, model: Any) -> list[str]:
    if getattr(cfg.data, "stage", "sft") == "pt":
        if cfg.data.packing and cfg.data.document_isolation:
            return [f" batching     padding-free, documents isolated by {model.config._attn_implementation}"]
        return [" batching     full blocks (only the last may be padded)" if cfg.data.packing else
                " batching     padded to the longest document in each batch"]  # fmt: skip
    if cfg.data.stage in ("dpo", "kto"):
        return [f" batching     {_preference_batching(cfg)}"]
    if not cfg.data.packing:
        return [
            f" batching     padded to the longest in each batch; {cfg.training.train_sampling_strategy} sampling"
        ]
    from sftforge.data.packing import packing_efficiency

    fill = (
        rows.fill(cfg.data.max_length)
        if hasattr(rows, "fill")
        else packing_efficiency(rows, cfg.data.max_length)
    )
    return [
        f" packing      {len(rows)} rows of ≤{cfg.data.max_length} tokens from {len(data.train)} examples "
        f"({100 * fill:.1f}% full); padding-free batches, samples "
        f"isolated by {model.config._attn_implementation}"
    ]


def _preference_batching(cfg: Any) -> str:
    pref, stage = cfg.pref, cfg.data.stage
    loss = pref.loss(stage)
    what = "chosen and rejected of each pair in one padded batch" if stage == "dpo" else "padded batches"
    return (
        f"{what}; TRL {'KTO' if stage == 'kto' else 'DPO'}Trainer, loss {loss}, beta {pref.pref_beta:g}"
        + (f", + {pref.pref_ftx:g} × SFT loss on the chosen" if pref.pref_ftx and stage == "dpo" else "")
    )


def preference_lines(metrics: dict[str, Any]) -> list[str]:
    """stage dpo / kto: how the rewards moved, and on the eval pairs the model's own preference before → after."""
    lines = []
    moved = [f"{name} {metrics[f'rewards/{key}_first']:.4g} → {metrics[f'rewards/{key}_last']:.4g}"
             for key, name in (("accuracies", "accuracy"), ("margins", "margin")) if f"rewards/{key}_last" in metrics]  # fmt: skip
    if moved:  # KTO logs margins but no accuracy
        lines.append(f" rewards      {', '.join(moved)} (training batches)")
    if "eval_preference_accuracy" in metrics:
        start = metrics.get("eval_preference_accuracy_before")
        lines.append(
            " eval pairs   chosen preferred by the model in "
            + (f"{start:.3f} → " if start is not None else "")
            + f"{metrics['eval_preference_accuracy']:.3f} of pairs"
            + (
                f"; reward accuracy {metrics['eval_rewards/accuracies']:.3f}"
                if "eval_rewards/accuracies" in metrics
                else ""
            )
        )
    return lines


def print_final_summary(metrics: dict[str, Any], out: Path, tensorboard: Path | None = None) -> None:
    def get(key: str) -> str:
        value = metrics.get(key)
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = [
        "─" * 72,
        f" done in {metrics.get('wall_time_s', 0):.1f} s — "
        + (
            f"train loss {get('train_loss_first')} → {get('train_loss_last')}"
            if metrics.get("train_loss_last")
            else f"mean train loss {get('train_loss')}"
        )
        + (
            f"; eval loss {get('eval_loss')}"
            + (f", perplexity {get('eval_perplexity')}" if "eval_perplexity" in metrics else "")
            if "eval_loss" in metrics
            else ""
        ),
        *preference_lines(metrics),
        f" {get('train_samples_per_second')} samples/s; model folder: {out}",
        f" chat with it: sftforge chat {out}",
        *([f" loss curves: tensorboard --logdir {shlex.quote(str(tensorboard))}"] if tensorboard else []),
        "─" * 72,
    ]
    print("\n".join(lines), flush=True)
