"""Real (non-pad) and total tokens of the batches the model actually trained on.

Counted in `SFTTrainer.training_step`, in the main process, once per trained micro-batch — not in the collator,
which runs inside DataLoader workers (`dataloader_num_workers ≥ 1`: the main process would see nothing) and one
batch ahead of training (prefetch: a `max_steps` run would count a batch it never trained on)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch


def batch_token_counts(batch: Mapping[str, Any]) -> tuple[int, int, int]:
    """(real tokens, tokens handed to the model, Σ len² over samples) of one collated batch.

    Flattened batches carry the sample boundaries (`cu_seq_lens_q`); padded ones an `attention_mask`."""
    cu = batch.get("cu_seq_lens_q")
    if cu is not None:
        lengths = (cu[1:] - cu[:-1]).long()
        total = int(batch["input_ids"].numel())
    elif batch.get("attention_mask") is not None:
        mask = batch["attention_mask"]
        lengths = mask.sum(dim=-1).long()
        total = int(mask.numel())
    else:
        ids = batch["input_ids"]
        lengths = torch.full((ids.shape[0],), ids.shape[-1], dtype=torch.long)
        total = int(ids.numel())
    return int(lengths.sum()), total, int((lengths * lengths).sum())


@dataclass
class TokenCounter:
    real_tokens: int = 0
    total_tokens: int = 0
    sum_sq_lengths: int = 0  # Σ len² over samples: attention FLOPs for MFU

    def add(self, batch: Mapping[str, Any]) -> None:
        real, total, sum_sq = batch_token_counts(batch)
        self.real_tokens += real
        self.total_tokens += total
        self.sum_sq_lengths += sum_sq

    @property
    def real_fraction(self) -> float:
        return self.real_tokens / self.total_tokens if self.total_tokens else 0.0
