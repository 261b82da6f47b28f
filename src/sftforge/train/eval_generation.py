"""`eval_generation: true`: at each evaluation, answer the last trained turn of the first
`eval_generation_max_samples` eval examples greedily and add `sftforge eval`'s generation metrics to the
evaluation logs (eval_exact_match, eval_rouge_l, eval_bleu, …).

Several processes: every rank answers its own share (padded to the same number of prompts, so that DeepSpeed
ZeRO-3, which needs every rank in every forward, runs the same number of generate steps everywhere), the
answers are gathered, and every rank computes the same scores. Nothing waits on one rank alone."""

from __future__ import annotations

from typing import Any

from sftforge.eval.examples import decode, items_from_features
from sftforge.eval.generate import generate_batched
from sftforge.eval.metrics import generation_metrics, length_stats


def shard(n: int, rank: int, world: int) -> list[int]:
    """Indices rank answers: rank, rank+world, …, padded with its first index (answered, then ignored) so that
    every rank has ceil(n / world) of them."""
    mine = list(range(rank, n, world))
    per_rank = -(-n // world)
    return mine + [mine[0] if mine else 0] * (per_rank - len(mine))


def generation_eval_metrics(
    trainer: Any, features: list[dict[str, Any]], stop_ids: list[int], prefix: str = "eval"
) -> dict[str, float]:
    """The metrics for `trainer`'s model on `features` (eval examples: input_ids + labels)."""
    args = trainer.args
    tokenizer = trainer.processing_class
    items = items_from_features(features[: args.eval_generation_max_samples], tokenizer, stop_ids)
    if not items:
        return {}
    world, rank = args.world_size, args.process_index
    indices = shard(len(items), rank, world)
    model = trainer.accelerator.unwrap_model(trainer.model)
    was_training, use_cache = model.training, getattr(model.config, "use_cache", None)
    model.eval()
    model.config.use_cache = True
    try:
        answers = generate_batched(
            model,
            [items[i].prompt_ids for i in indices],
            stop_ids,
            tokenizer.pad_token_id,
            args.eval_max_new_tokens,
            args.per_device_eval_batch_size,
            desc="Generating (eval)",
            progress=trainer.is_world_process_zero(),
            synced_gpus=world > 1 and trainer.is_deepspeed_enabled,
        )
    finally:
        model.config.use_cache = use_cache
        model.train(was_training)
    mine = [(i, a.ids, a.finished) for i, a in zip(indices, answers, strict=True)]
    if world > 1:
        from accelerate.utils import gather_object

        mine = gather_object(mine)
    answered = {i: (ids, finished) for i, ids, finished in mine}  # padding repeats an index: kept once
    order = sorted(answered)
    predictions = [decode(tokenizer, answered[i][0]) for i in order]
    metrics = generation_metrics(predictions, [items[i].reference for i in order])
    metrics.update(
        length_stats([len(answered[i][0]) for i in order], [len(items[i].reference_ids) for i in order])
    )
    metrics["unfinished"] = sum(not answered[i][1] for i in order) / len(order)
    metrics["generated"] = len(order)
    return {f"{prefix}_{k}": v for k, v in metrics.items()}
