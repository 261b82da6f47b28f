"""Real (non-pad) and total tokens of the batches the model actually trained on.

Counted in `SFTTrainer.training_step`, in the main process, once per trained micro-batch — not in the collator,
which runs inside DataLoader workers (`dataloader_num_workers ≥ 1`: the main process would see nothing) and one
batch ahead of training (prefetch: a `max_steps` run would count a batch it never trained on).

The counts stay tensors on the batch's device and are summed there: turning them into Python numbers per
micro-batch would wait for the GPU each time (a host sync that stalls the CUDA queue). They are read, once, when a
log line or the final metrics ask for them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def batch_token_counts(batch: Mapping[str, Any]) -> tuple[torch.Tensor, int, torch.Tensor]:
    """(real tokens, tokens handed to the model, Σ len² over samples) of one collated batch; the first and last
    are 0-dim int64 tensors on the batch's device (no host sync), the middle one a shape, known on the host.

    Flattened batches carry the sample boundaries (`cu_seq_lens_q`); padded ones an `attention_mask`."""
    cu = batch.get("cu_seq_lens_q")
    if cu is not None:
        lengths = (cu[1:] - cu[:-1]).long()
        total = batch["input_ids"].numel()
    elif batch.get("chosen_attention_mask") is not None:  # ORPO / SimPO: a pair's two answers, padded apart
        masks = (batch["chosen_attention_mask"], batch["rejected_attention_mask"])
        lengths = torch.cat([m.sum(dim=-1, dtype=torch.long) for m in masks])
        total = sum(m.numel() for m in masks)
    elif batch.get("attention_mask") is not None:
        mask = batch["attention_mask"]
        lengths = mask.sum(dim=-1, dtype=torch.long)
        total = mask.numel()
    else:
        ids = batch["input_ids"]
        lengths = torch.full((ids.shape[0],), ids.shape[-1], dtype=torch.long, device=ids.device)
        total = ids.numel()
    return lengths.sum(), total, (lengths * lengths).sum()


class TokenCounter:
    """Running totals over the trained micro-batches. `add` never syncs; the properties do (read them per log)."""

    def __init__(self) -> None:
        self._real: torch.Tensor | int = 0
        self._sum_sq: torch.Tensor | int = 0
        self.total_tokens = 0  # shapes only: a host number already

    def add(self, batch: Mapping[str, Any]) -> None:
        real, total, sum_sq = batch_token_counts(batch)
        self._real = self._real + real
        self._sum_sq = self._sum_sq + sum_sq
        self.total_tokens += total

    @property
    def real_tokens(self) -> int:
        return int(self._real)

    @property
    def sum_sq_lengths(self) -> int:  # Σ len² over samples: attention FLOPs for MFU
        return int(self._sum_sq)

    @property
    def real_fraction(self) -> float:
        return self.real_tokens / self.total_tokens if self.total_tokens else 0.0
