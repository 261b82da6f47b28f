"""The one Trainer subclass. The loop, optimizer, schedulers, checkpointing and distribution are transformers'."""

from __future__ import annotations

import math
from typing import Any

from transformers import Trainer


class SFTTrainer(Trainer):
    """Adds perplexity next to every eval loss; everything else is the stock Trainer."""

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "eval_loss" in logs:
            logs["eval_perplexity"] = math.exp(
                min(logs["eval_loss"], 50.0)
            )  # cap: exp(50) already says "bad"
        super().log(logs, *args, **kwargs)
