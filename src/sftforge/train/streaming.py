"""`streaming: true` in a run: the dataset, its DataLoader, and its position in checkpoints.

The DataLoader runs ahead of training (the Trainer fetches a whole accumulation window, prefetch may fetch more),
so the position saved is not the dataset's: every batch carries the position of its last item
(`data/streaming.POSITION_KEY`), SFTTrainer.training_step takes it out and keeps the last trained one, and each
rank writes it as `stream_state_rank{r}.json` into every checkpoint before the checkpoint is committed. A resumed
run starts its dataset there, and the Trainer's own batch skipping is off (ignore_data_skip, set by the config).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sftforge.config import SFTConfig
from sftforge.data.collate import FlatteningCollator, PaddingCollator
from sftforge.data.pipeline import DataStats, PreparedData, TokenizeSpec, build_examples
from sftforge.data.readers import SourceRow, iter_dataset_rows, iter_rows, resolve_key_files
from sftforge.data.streaming import (
    PositionCollator,
    StreamConfig,
    StreamingDataset,
    StreamPosition,
    row_source,
)
from sftforge.errors import ConfigError

STATE_FORMAT = 1


def state_name(rank: int) -> str:
    return f"stream_state_rank{rank}.json"


def prepare_streaming_data(cfg: SFTConfig, spec: TokenizeSpec) -> PreparedData:
    """Only the eval rows are prepared up front (whole, as without streaming); the training rows are read while
    training. No tokenized cache either way: the point is not to hold the corpus."""
    if cfg.data.stage == "pt":
        raise ConfigError(
            "streaming: stage pt is not streamed yet; set streaming: false for pretraining.", "streaming"
        )
    started = time.perf_counter()
    data = cfg.data
    eval_rows: Iterable[SourceRow] | None = None
    if data.eval_data_path:  # small: read whole, as without streaming
        paths = resolve_key_files(list(data.eval_data_path), "eval_data_path")
        eval_rows = (row for path in paths for row in iter_rows(path))
    elif data.dataset_name and data.dataset_test_split:
        eval_rows = iter_dataset_rows(data.dataset_name, data.dataset_config, data.dataset_test_split)
    evaluation, eval_stats = [], None
    if eval_rows is not None:
        evaluation, eval_stats = build_examples(
            eval_rows, spec, data.on_bad_rows, data.dataset_num_proc, "Tokenizing eval",
            max_bad_fraction=data.max_bad_row_fraction, max_dropped_fraction=data.max_dropped_fraction,
            split="eval",
        )  # fmt: skip
    prepared = PreparedData([], evaluation, DataStats(), eval_stats)
    prepared.seconds = time.perf_counter() - started
    return prepared


def streaming_train_data(
    cfg: SFTConfig, spec: TokenizeSpec, pad_token_id: int, data: PreparedData, model: Any
) -> tuple[StreamingDataset, PositionCollator]:
    """The training dataset (this rank's share) and its collator; `data.train_stats` becomes the dataset's live
    counts (this rank's rows read so far), so the end-of-run figures show what was read."""
    from sftforge.model.varlen import VARLEN, packed_attention_backend

    args = cfg.training
    config = StreamConfig(
        window=cfg.data.streaming_buffer,
        packing=cfg.data.packing,
        capacity=cfg.data.max_length,
        shuffle=args.train_sampling_strategy != "sequential",
        seed=args.seed,
        rank=args.process_index,
        world_size=args.world_size,
        max_rows=cfg.data.max_samples,
        on_bad_rows=cfg.data.on_bad_rows,
        max_bad_fraction=cfg.data.max_bad_row_fraction,
        max_dropped_fraction=cfg.data.max_dropped_fraction,
    )
    dataset = StreamingDataset(row_source(cfg.data), spec, config)
    data.train_stats = dataset.stats
    if cfg.data.packing:
        backend = packed_attention_backend(cfg.model.attn_implementation)
        model.set_attn_implementation(backend)
        inner: Any = FlatteningCollator(bucket_layout=backend == VARLEN)
    else:
        import torch

        inner = PaddingCollator(pad_token_id, 8 if torch.cuda.is_available() else None)
    return dataset, PositionCollator(inner)


def train_dataloader(trainer: Any) -> Any:
    """A plain DataLoader: the dataset shards by rank itself, so accelerate must neither shard it again
    (IterableDatasetShard) nor dispatch rank 0's batches (its default for iterable datasets); the Trainer moves
    each batch to the device itself (_prepare_inputs). No workers: the position must follow the trained batches."""
    from torch.utils.data import DataLoader

    dataset: StreamingDataset = trainer.train_dataset
    folder = getattr(trainer, "resumed_from", None)
    if folder:
        dataset.start = load_state(Path(folder), dataset.config, trainer.args.ignore_resume_mismatch)
    return DataLoader(
        dataset,
        batch_size=trainer._train_batch_size,
        collate_fn=trainer.data_collator,
        num_workers=0,
        pin_memory=trainer.args.dataloader_pin_memory,
    )


def save_state(folder: Path, position: dict[str, Any], config: StreamConfig, global_step: int) -> None:
    """This rank's trained position, written before the checkpoint's commit marker (which then lists it)."""
    folder.mkdir(parents=True, exist_ok=True)
    doc = {
        "format": STATE_FORMAT,
        "position": position,
        "rank": config.rank,
        "world_size": config.world_size,
        "streaming_buffer": config.window,
        "packing": config.packing,
        "global_step": global_step,
    }
    tmp = folder / f".{state_name(config.rank)}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / state_name(config.rank))


def load_state(folder: Path, config: StreamConfig, ignore_mismatch: bool = False) -> StreamPosition:
    """Where this rank's stream restarts. A checkpoint from another layout (processes, window) cannot say."""
    path = folder / state_name(config.rank)
    if not path.is_file():
        raise ConfigError(
            f"resume_from_checkpoint: {folder.name} has no {path.name}: it was not saved by a streaming run with "
            f"rank {config.rank} (of {config.world_size} processes), so the stream position is unknown. Resume "
            "with the settings of the interrupted run.",
            "resume_from_checkpoint",
        )
    doc = json.loads(path.read_text(encoding="utf-8"))
    changed = [
        f"{key}: checkpoint {doc.get(key)!r}, now {now!r}"
        for key, now in (
            ("world_size", config.world_size),
            ("streaming_buffer", config.window),
            ("packing", config.packing),
        )  # fmt: skip
        if doc.get(key) != now
    ]
    if changed and not ignore_mismatch:
        raise ConfigError(
            [f"resuming {folder.name}'s stream with a different layout — {line}" for line in changed]
            + ["the saved position means other rows then; restore the settings (or --ignore_resume_mismatch "
               "true to continue from the same window numbers anyway)"],
            "resume_from_checkpoint",
        )  # fmt: skip
    return StreamPosition.from_dict(doc["position"])
