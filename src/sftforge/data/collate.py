"""Padded batches: pad to the longest example in the batch (optionally to a multiple of 8 for tensor cores)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sftforge.data import buckets
from sftforge.data.masking import IGNORE_INDEX


@dataclass
class PaddingCollator:
    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            longest = (longest + m - 1) // m * m
        batch = len(features)
        input_ids = torch.full((batch, longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch, longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((batch, longest), dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            input_ids[row, :n] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            labels[row, :n] = torch.as_tensor(f["labels"], dtype=torch.long)
            attention_mask[row, :n] = 1
        return {
            "input_ids": input_ids,
            "labels": labels,
            "attention_mask": attention_mask,
            **_sources(features),
        }


@dataclass
class FlatteningCollator:
    """Padding-free batches: every sample of the batch (packed rows carry `seq_lens`) goes into one row of shape
    (1, total_tokens) with position ids restarting per sample and the boundaries as `cu_seq_lens_q/k`, which
    FlashAttention-2's varlen kernel and `sftforge_varlen` use to keep samples apart. With `bucket_layout` (for
    `sftforge_varlen`), the batch also carries the attention's bucket layout (data/buckets.py), built here once
    per batch so that the attention layers neither rebuild it nor wait on the device.

    The first label of every sample is ignored: in a flat row it would be "predicted" from the previous sample's
    last token; unpacked, it is never predicted at all — so packed and unpacked losses are the same."""

    bucket_layout: bool = True

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        lengths: list[int] = []
        for f in features:
            offset = 0
            for n in f.get("seq_lens") or [len(f["input_ids"])]:
                ids += f["input_ids"][offset : offset + n]
                sample_labels = list(f["labels"][offset : offset + n])
                sample_labels[0] = IGNORE_INDEX
                labels += sample_labels
                positions += range(n)
                lengths.append(n)
                offset += n
        cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
        cu[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int32), dim=0)
        longest = max(lengths)
        batch: dict[str, Any] = {
            "input_ids": torch.tensor([ids], dtype=torch.long),
            "labels": torch.tensor([labels], dtype=torch.long),
            "position_ids": torch.tensor([positions], dtype=torch.long),
            "cu_seq_lens_q": cu,
            "cu_seq_lens_k": cu,
            "max_length_q": longest,
            "max_length_k": longest,
            **_sources(features),
        }
        if self.bucket_layout:
            batch[buckets.LAYOUT_KEY] = buckets.bucket_layout(lengths)
        return batch


def _sources(features: list[dict[str, Any]]) -> dict[str, list[str]]:
    """The examples' `file:line` ids, when the features carry them: SFTTrainer takes them out of the batch before
    the model sees it and names them if the step's loss turns out NaN/Inf."""
    if "sources" not in features[0]:
        return {}
    return {"sources": [s for f in features for s in f["sources"]]}
