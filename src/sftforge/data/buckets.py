"""The bucket layout of a flattened batch, for per-sample attention without a varlen kernel (model/varlen.py).

The samples of a batch are sorted by length and cut into buckets of similar length; each bucket becomes a
right-padded (samples × longest) grid attended in one causal sdpa call. The layout is two index tensors (which
token fills each grid slot; which slot holds each token) and the grid shapes as Python ints. It is built here,
from the Python lengths the collator already has, on the CPU and inside the DataLoader workers: the attention
then runs with no host sync and no per-layer rebuild (the Trainer moves the tensors to the device with the rest
of the batch).
"""

from __future__ import annotations

from typing import Any

import torch

LAYOUT_KEY = (
    "sftforge_varlen_layout"  # the batch key: transformers passes unknown model kwargs down to attention
)

# Cost model for `plan_buckets`, in units of one (query, key) pair of attention work: every extra sdpa call costs
# about as much as BUCKET_CALL_COST pairs (Python + kernel launch, forward and backward; tuned on the 2-core CPU
# with the benchmark model), and each padded row of length m costs m² + LINEAR_COST·m (the gathers and the output).
BUCKET_CALL_COST = 20_000
LINEAR_COST = 64


def plan_buckets(lengths: list[int]) -> list[list[int]]:
    """Group samples (indices into `lengths`) into buckets that minimise padded attention work + per-call cost.

    Sorted by length, the optimal buckets are contiguous runs, so an O(n²) dynamic programme finds them exactly
    (n = samples in one batch: tens)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    longest = [lengths[i] for i in order]
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: cheapest cost for the j longest samples
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):
            m = longest[i]  # the bucket order[i:j] pads to its first (longest) sample
            cost = best[i] + BUCKET_CALL_COST + (j - i) * (m * m + LINEAR_COST * m)
            if cost < best[j]:
                best[j], cut[j] = cost, i
    buckets: list[list[int]] = []
    j = n
    while j > 0:
        buckets.append(order[cut[j] : j])
        j = cut[j]
    return buckets[::-1]


def bucket_layout(lengths: list[int], device: torch.device | str | None = None) -> dict[str, Any]:
    """The layout for samples of `lengths` laid end to end (the flattened row):

    - `gather` (slots,): the token that fills each slot of the concatenated grids. A padding slot repeats its
      sample's first token: finite, never attended by a real query (causal), so its gradient is zero;
    - `slot_of_token` (tokens,): where each token sits in the concatenated grids;
    - `shapes`: (samples, longest) of each grid, in order, as Python ints (no device read needed to use them).
    """
    starts = [0] * len(lengths)
    for i in range(1, len(lengths)):
        starts[i] = starts[i - 1] + lengths[i - 1]
    gather: list[int] = []
    slot_of_token = [0] * sum(lengths)
    shapes: list[tuple[int, int]] = []
    for members in plan_buckets(lengths):
        longest = lengths[members[0]]
        for s in members:
            start, n = starts[s], lengths[s]
            slot_of_token[start : start + n] = range(len(gather), len(gather) + n)
            gather += range(start, start + n)
            gather += [start] * (longest - n)
        shapes.append((len(members), longest))
    return {
        "gather": torch.tensor(gather, dtype=torch.long, device=device),
        "slot_of_token": torch.tensor(slot_of_token, dtype=torch.long, device=device),
        "shapes": tuple(shapes),
    }
