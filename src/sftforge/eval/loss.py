"""Loss and perplexity over the trained tokens, with training's labels (the model's own shift: token t+1 is
predicted from the tokens up to t)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sftforge.data.collate import PaddingCollator
from sftforge.data.masking import IGNORE_INDEX


@dataclass
class LossResult:
    loss: float  # mean cross-entropy per trained token, over the whole set
    perplexity: float  # exp(loss)
    trained_tokens: int


def masked_loss(
    model: Any, features: Sequence[dict[str, Any]], pad_token_id: int, batch_size: int = 8
) -> LossResult:
    """Sum of the per-token losses over every trained token of every example, divided by their number (not a
    mean of batch means, so the result does not depend on the batch size). Batches are padded on the right
    by training's own collator."""
    import torch

    collate = PaddingCollator(pad_token_id)
    total, count = 0.0, 0
    device = next(model.parameters()).device
    with torch.inference_mode():
        for i in range(0, len(features), batch_size):
            batch = collate(
                [{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features[i : i + batch_size]]
            )
            logits = model(
                input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
            ).logits
            # prompt / P-tuning adapters return logits for their virtual tokens too, in front: keep the input's
            logits = logits[:, -batch["input_ids"].shape[1] :]
            targets = batch["labels"][:, 1:].to(device)
            losses = torch.nn.functional.cross_entropy(
                logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="sum"
            )
            total += float(losses)
            count += int((targets != IGNORE_INDEX).sum())
    loss = total / count if count else float("nan")
    return LossResult(loss, math.exp(min(loss, 50.0)) if count else float("nan"), count)
