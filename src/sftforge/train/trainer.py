"""The one Trainer subclass. The loop, optimizer, schedulers, checkpointing and distribution are transformers'."""

from __future__ import annotations

import copy
import math
from typing import Any

from transformers import Trainer


class SFTTrainer(Trainer):
    """Adds perplexity next to every eval loss, and keeps evaluation batches out of the training token counts;
    everything else is the stock Trainer."""

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        train_collator = self.data_collator
        self.data_collator = copy.copy(
            train_collator
        )  # eval batches count on a copy, not as training throughput
        try:
            return super().evaluate(*args, **kwargs)
        finally:
            self.data_collator = train_collator

    throughput: Any = None  # a ThroughputCallback, set by the run: adds tokens/s and MFU to training logs

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if self.throughput is not None:
            self.throughput.annotate(logs)
        if "eval_loss" in logs:
            logs["eval_perplexity"] = math.exp(
                min(logs["eval_loss"], 50.0)
            )  # cap: exp(50) already says "bad"
        super().log(logs, *args, **kwargs)
