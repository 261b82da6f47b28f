"""The one Trainer subclass. The loop, optimizer, schedulers, checkpointing and distribution are transformers'."""

from __future__ import annotations

import math
from typing import Any

from transformers import Trainer

from sftforge.train.token_counter import TokenCounter


class SFTTrainer(Trainer):
    """Counts the tokens of every trained micro-batch and adds perplexity next to every eval loss; everything else
    is the stock Trainer."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tokens = TokenCounter()  # training batches only: evaluation never passes through training_step

    throughput: Any = None  # a ThroughputCallback, set by the run: adds tokens/s and MFU to training logs

    def training_step(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        self.tokens.add(inputs)
        return super().training_step(model, inputs, *args, **kwargs)

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if self.throughput is not None:
            self.throughput.annotate(logs)
        if "eval_loss" in logs:
            logs["eval_perplexity"] = math.exp(
                min(logs["eval_loss"], 50.0)
            )  # cap: exp(50) already says "bad"
        super().log(logs, *args, **kwargs)
