"""Per-sample attention for packed (flattened) batches on any backend.

FlashAttention-2 has a varlen kernel that takes the sample boundaries (`cu_seq_lens_q/k`); transformers passes them
through when the batch carries them. sdpa and eager have no such kernel: the packed row would be one causal
sequence in which samples attend to earlier samples (measured here: logits differ by 0.68 from the unpacked run
with sdpa + restarted position ids alone). `sftforge_varlen` keeps samples apart with plain PyTorch sdpa and is
used automatically for packing on sdpa/eager:

- the samples are sorted by length and cut into buckets of similar length (`plan_buckets`);
- each bucket is gathered into a right-padded (samples × longest-in-bucket) batch and attended in one causal sdpa
  call. A real query at position t sees only keys ≤ t of its own sample, so the padding after a sample is never
  seen and no work is spent across samples; the bucketing keeps the padding work small (one grid for the whole
  batch cost 12% more fwd+bwd than the raw limit on alpaca, buckets 4%: benchmarks/RESULTS.md).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

VARLEN = "sftforge_varlen"

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


Bucket = tuple[torch.Tensor, int, int]  # (token index of every grid slot, samples, longest)


def _layout(cu: torch.Tensor) -> tuple[list[Bucket], torch.Tensor]:
    """For sample boundaries `cu`: per bucket, the token that fills each slot of its (samples × longest) grid
    (padding slots repeat the sample's first token: finite, never attended by a real query, gradient zero), and
    for every token its slot in the concatenated grids. Cached on the tensor: every layer reuses it."""
    cached = getattr(cu, "_sftforge_layout", None)
    if cached is not None:
        return cached
    starts = cu[:-1].tolist()
    lengths = (cu[1:] - cu[:-1]).tolist()
    buckets: list[Bucket] = []
    slot_of_token = torch.empty(int(cu[-1]), dtype=torch.long)
    base = 0
    for members in plan_buckets(lengths):
        longest = lengths[members[0]]
        gather = torch.empty(len(members) * longest, dtype=torch.long)
        for row, s in enumerate(members):
            start, n = starts[s], lengths[s]
            tokens = torch.arange(start, start + n)
            gather[row * longest : row * longest + n] = tokens
            gather[row * longest + n : (row + 1) * longest] = start
            slot_of_token[start : start + n] = torch.arange(base + row * longest, base + row * longest + n)
        buckets.append((gather, len(members), longest))
        base += len(members) * longest
    layout = (buckets, slot_of_token)
    cu._sftforge_layout = layout  # type: ignore[attr-defined]
    return layout


def _to_grid(x: torch.Tensor, bucket: Bucket) -> torch.Tensor:
    """(1, heads, total, dim) → (samples, heads, longest, dim) for one bucket."""
    gather, samples, longest = bucket
    heads, dim = x.shape[1], x.shape[3]
    return x[0].index_select(1, gather).view(heads, samples, longest, dim).transpose(0, 1)


def varlen_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """query (1, heads, total, dim), key/value (1, kv_heads, total, dim) → (1, total, heads, dim)."""
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:  # an unpacked call (e.g. generation after training): plain causal sdpa
        cu = torch.tensor([0, query.shape[2]], dtype=torch.int32)
    if query.shape[0] != 1:
        raise ValueError("sftforge_varlen expects a flattened batch of shape (1, total_tokens)")
    buckets, slot_of_token = _layout(cu)
    groups = query.shape[1] // key.shape[1]
    outputs = []
    for bucket in buckets:
        out = F.scaled_dot_product_attention(
            _to_grid(query, bucket),
            _to_grid(key, bucket),
            _to_grid(value, bucket),
            is_causal=True,
            scale=scaling,
            dropout_p=dropout if module.training else 0.0,
            enable_gqa=groups > 1,
        )  # (samples, heads, longest, dim)
        outputs.append(out.transpose(0, 1).reshape(out.shape[1], -1, out.shape[3]))
    grids = torch.cat(outputs, dim=1) if len(outputs) > 1 else outputs[0]
    return grids.index_select(1, slot_of_token).transpose(0, 1).unsqueeze(0).contiguous(), None


def register_varlen_attention() -> str:
    """Register once with transformers' attention and mask interfaces; returns the implementation name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register(VARLEN, varlen_sdpa_attention)
    AttentionMaskInterface.register(
        VARLEN, flash_attention_mask
    )  # no dense mask: boundaries come as cu_seq_lens
    return VARLEN


def packed_attention_backend(requested: str) -> str:
    """The backend to use for packed batches: FA2 keeps its own varlen kernel; sdpa/eager → sftforge_varlen."""
    if requested.startswith("flash_attention"):
        return requested
    return register_varlen_attention()
