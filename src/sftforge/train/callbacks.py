"""Trainer callbacks: throughput (real tokens/s) on every log line, and MFU on GPUs.

MFU = achieved FLOPs / peak FLOPs, with achieved FLOPs per optimizer step = 6·N·tokens (dense weights, forward +
backward) + 6·L·d·Σ len² (causal attention scores and values over each sample, forward + backward; the causal half
of the 12·L·d·len² for full attention). N excludes the embedding table (a lookup, not a matmul). The peak is the
GPU's dense bf16/fp16 tensor-core rate (table below, or `SFTFORGE_PEAK_TFLOPS`). On CPU no MFU is logged.
"""

from __future__ import annotations

import os
import time
from typing import Any

from transformers import TrainerCallback

from sftforge.model.sizes import full_numel

# Dense (no sparsity) bf16/fp16 tensor-core peak, TFLOP/s, by a substring of torch.cuda.get_device_name().
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0,
               "RTX 4090": 165.0, "RTX 3090": 71.0, "V100": 125.0, "T4": 65.0}  # fmt: skip


def peak_flops() -> float | None:
    if os.environ.get("SFTFORGE_PEAK_TFLOPS"):
        return float(os.environ["SFTFORGE_PEAK_TFLOPS"]) * 1e12
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((tf * 1e12 for key, tf in PEAK_TFLOPS.items() if key in name), None)


def dense_params(model: Any) -> int:
    embedding = model.get_input_embeddings()
    skip = {id(p) for p in embedding.parameters()} if embedding is not None else set()
    return sum(full_numel(p) for p in model.parameters() if id(p) not in skip)


def step_flops(params: int, layers: int, hidden: int, tokens: int, sum_sq_lengths: int) -> float:
    return 6.0 * params * tokens + 6.0 * layers * hidden * sum_sq_lengths


class ThroughputCallback(TrainerCallback):
    """Adds `tokens_per_s` (real tokens, pads excluded) and, on a GPU with a known peak, `mfu` to the logs.

    The Trainer stores a copy of each log before callbacks see it, so `SFTTrainer.log` calls `annotate` itself;
    the callback part only marks the start of training."""

    def __init__(self, counter: Any, model: Any, world_size: int = 1) -> None:
        self.counter = counter  # a TokenCounter: real tokens and Σ len² of the trained batches
        self.params = dense_params(model)
        config = model.config
        self.layers = getattr(config, "num_hidden_layers", 0)
        self.hidden = getattr(config, "hidden_size", 0)
        self.peak = peak_flops()
        self.world = world_size
        self._mark: tuple[float, int, int] | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._mark = (time.perf_counter(), self.counter.real_tokens, self.counter.sum_sq_lengths)

    def annotate(self, logs: dict[str, float]) -> None:
        if self._mark is None or "loss" not in logs:
            return
        now, tokens, squares = time.perf_counter(), self.counter.real_tokens, self.counter.sum_sq_lengths
        seconds = now - self._mark[0]
        new_tokens, new_squares = tokens - self._mark[1], squares - self._mark[2]
        self._mark = (now, tokens, squares)
        if seconds <= 0 or new_tokens <= 0:
            return
        logs["tokens_per_s"] = round(new_tokens * self.world / seconds, 1)
        if self.peak:
            flops = step_flops(self.params, self.layers, self.hidden, new_tokens, new_squares) * self.world
            logs["mfu"] = round(flops / seconds / (self.peak * self.world), 4)
