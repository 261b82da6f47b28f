"""Per-sample attention for packed (flattened) batches on any backend, and the same attention as sdpa elsewhere.

FlashAttention-2 has a varlen kernel that takes the sample boundaries (`cu_seq_lens_q/k`); transformers passes them
through when the batch carries them. sdpa and eager have no such kernel: the packed row would be one causal
sequence in which samples attend to earlier samples (measured here: logits differ by 0.68 from the unpacked run
with sdpa + restarted position ids alone). `sftforge_varlen` keeps samples apart with plain PyTorch sdpa and is
used automatically for packing on sdpa/eager (on a CPU, or a GPU without flash-attn):

- the samples are sorted by length and cut into buckets of similar length (data/buckets.py);
- each bucket is gathered into a right-padded (samples × longest) batch and attended in one causal sdpa call
  (a banded causal mask where the model has a sliding window shorter than the bucket). A real query at position
  t sees only keys ≤ t of its own sample, so the padding after a sample is never seen and no work is spent
  across samples; the bucketing keeps the padding work small (one grid for the whole batch cost 12% more
  fwd+bwd than the raw limit on alpaca, buckets 4%: benchmarks/RESULTS.md).

The layout comes precomputed in the batch (`FlatteningCollator`), so a layer does only device work: no host sync,
no rebuild, every tensor on the query's device. Given only `cu_seq_lens_q` (another collator), the layout is
built once per forward on the query's device (one host sync: the lengths are read to plan the buckets).

Outside packed training (no `cu_seq_lens_q`: generation with a KV cache, a padded eval batch) the result is what
the model's own sdpa attention computes: the mask function is transformers' sdpa mask except in the one case
where packed training needs none (no padding, no cache offset), where this function applies causality, the
sliding window and any packed position ids itself.

Logit soft-capping (Gemma 2) and attention sinks (gpt-oss) cannot be expressed with sdpa: they are refused when
the run is configured (`check_packed_attention`) and again here if they arrive anyway.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
import torch.nn.functional as F

from sftforge.data.buckets import LAYOUT_KEY, bucket_layout, plan_buckets
from sftforge.errors import ConfigError

__all__ = [
    "VARLEN",
    "check_packed_attention",
    "check_packing_supported",
    "packed_attention_backend",
    "plan_buckets",
    "register_varlen_attention",
    "varlen_sdpa_attention",
]

VARLEN = "sftforge_varlen"

Layout = dict[
    str, Any
]  # {"gather": (slots,), "slot_of_token": (tokens,), "shapes": ((samples, longest), ...)}


# ---------------------------------------------------------------------------------------------------------------
# The attention function
# ---------------------------------------------------------------------------------------------------------------


def varlen_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    s_aux: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """query (batch, heads, q_len, dim), key/value (batch, kv_heads, k_len, dim) → (batch, q_len, heads, dim)."""
    _refuse_what_sdpa_cannot_do(softcap, s_aux)
    is_causal = kwargs.get("is_causal")
    causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    cu = kwargs.get("cu_seq_lens_q")
    if cu is not None:
        if query.shape[0] != 1 or not causal:
            raise ValueError(
                f"{VARLEN} expects a causal, flattened batch of shape (1, tokens) with cu_seq_lens"
            )
        layout = kwargs.get(LAYOUT_KEY) or _layout_from_boundaries(cu, query.device)
        return _bucketed(query, key, value, layout, scaling, dropout, sliding_window), None
    if attention_mask is None and query.shape[2] == key.shape[2] and causal:
        # Our mask function returned None: no padding and no cache offset. Packed position ids (another
        # collator, without cu_seq_lens) still keep their samples apart; the window is applied here.
        cu = _boundaries_from_positions(kwargs.get("position_ids"), query)
        if cu is not None:
            layout = _layout_from_boundaries(cu, query.device)
            return _bucketed(query, key, value, layout, scaling, dropout, sliding_window), None
        out = _causal_sdpa(query, key, value, scaling, dropout, sliding_window)
        return out.transpose(1, 2).contiguous(), None
    # A real mask (padding, cache offset, window) or a single decode query: exactly transformers' sdpa
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)


def _refuse_what_sdpa_cannot_do(softcap: float | None, s_aux: torch.Tensor | None) -> None:
    """sdpa has no soft-capping and no sinks: computing without them would train a different model."""
    if softcap is not None:
        what, alternative = "attention logit soft-capping", " (or flash-attn on a GPU: it has soft-capping)"
    elif s_aux is not None:
        what, alternative = "attention sinks", ""
    else:
        return
    raise ValueError(
        f"{VARLEN} (attention over PyTorch sdpa, used for packing) cannot apply {what}, which this model uses: "
        f"train it with packing: false{alternative}."
    )


def _bucketed(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    layout: Layout,
    scaling: float | None,
    dropout: float,
    window: int | None,
) -> torch.Tensor:
    """(1, heads, tokens, dim) q/k/v → (1, tokens, heads, dim): one causal sdpa call per bucket grid."""
    gather, slot_of_token = layout["gather"], layout["slot_of_token"]
    # (tokens, heads, dim) rows: after the projections q/k/v are token-major in memory, so these are row gathers
    q, k, v = (x[0].transpose(0, 1).index_select(0, gather) for x in (query, key, value))
    outputs, base = [], 0
    for samples, longest in _shapes(layout):
        n = samples * longest
        grid = [
            t[base : base + n].view(samples, longest, t.shape[1], t.shape[2]).transpose(1, 2)
            for t in (q, k, v)
        ]
        out = _causal_sdpa(*grid, scaling, dropout, window)  # (samples, heads, longest, dim)
        outputs.append(out.transpose(1, 2).reshape(n, out.shape[1], out.shape[3]))
        base += n
    slots = torch.cat(outputs) if len(outputs) > 1 else outputs[0]
    return slots.index_select(0, slot_of_token).unsqueeze(0)


def _shapes(layout: Layout) -> list[tuple[int, int]]:
    """The grid shapes; their tuples may come back as lists (pin_memory, a DataLoader worker's pickling)."""
    return [(int(s), int(m)) for s, m in layout["shapes"]]


def _causal_sdpa(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scaling: float | None,
    dropout: float,
    window: int | None,
) -> torch.Tensor:
    """Causal attention of equal-length q/k/v (batch, heads, len, dim), within `window` keys if it is shorter."""
    length, groups = query.shape[2], query.shape[1] // key.shape[1]
    if window is None or length <= window:
        return F.scaled_dot_product_attention(
            query, key, value, is_causal=True, scale=scaling, dropout_p=dropout, enable_gqa=groups > 1
        )
    # transformers' sliding window: key j is seen by query i when i - window < j <= i (FlashAttention's
    # window_size=(window - 1, 0) on the causal side)
    pos = torch.arange(length, device=query.device)
    distance = pos[:, None] - pos[None, :]
    band = (distance >= 0) & (distance < window)
    if groups > 1:  # with a mask, CUDA's sdpa kernels do not take enable_gqa (it would fall back to math)
        key, value = (x.repeat_interleave(groups, dim=1) for x in (key, value))
    return F.scaled_dot_product_attention(query, key, value, attn_mask=band, scale=scaling, dropout_p=dropout)


def _layout_from_boundaries(cu: torch.Tensor, device: torch.device) -> Layout:
    """The layout for sample boundaries `cu`, built on `device` once per forward: cached on the tensor, which
    every layer (and a checkpointed layer's recomputation) receives. Costs one host sync to read the lengths."""
    cache: dict[torch.device, Layout] = cu.__dict__.setdefault("_sftforge_layouts", {})
    if device not in cache:
        cache[device] = bucket_layout((cu[1:] - cu[:-1]).tolist(), device)
    return cache[device]


def _boundaries_from_positions(position_ids: torch.Tensor | None, query: torch.Tensor) -> torch.Tensor | None:
    """Sample boundaries of a flattened row whose position ids restart (a new sample wherever a position is not
    the previous one + 1, as transformers detects packing), or None for one plain sequence. Cached on the
    position ids tensor, which every layer receives: one host sync per forward."""
    if position_ids is None or position_ids.dim() != 2 or query.shape[0] != 1:
        return None
    if position_ids.shape != (1, query.shape[2]):
        return None
    if "_sftforge_cu" not in position_ids.__dict__:
        pos = position_ids[0]
        starts = torch.nonzero(pos[1:] != pos[:-1] + 1).flatten() + 1
        cu = None
        if starts.numel():
            edges = torch.tensor([0, pos.numel()], dtype=starts.dtype, device=starts.device)
            cu = torch.cat([edges[:1], starts, edges[1:]])
        position_ids.__dict__["_sftforge_cu"] = cu
    return position_ids.__dict__["_sftforge_cu"]


# ---------------------------------------------------------------------------------------------------------------
# The mask function
# ---------------------------------------------------------------------------------------------------------------


def varlen_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int | torch.Tensor = 0,
    kv_offset: int = 0,
    attention_mask: torch.Tensor | None = None,
    **kwargs: Any,
) -> torch.Tensor | None:
    """transformers' sdpa mask, except with no padding and no cache offset (packed training, a plain forward):
    then None, as a dense (tokens × tokens) packed-sequence mask would cost O(n²) memory for what the attention
    function does from the boundaries. Extra mask patterns (`use_vmap`: e.g. image tokens) always get a mask."""
    plain = attention_mask is None and not kwargs.get("use_vmap", False)
    if plain and q_length == kv_length and isinstance(q_offset, int) and q_offset == 0 and kv_offset == 0:
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(
        batch_size, q_length, kv_length, q_offset, kv_offset, attention_mask=attention_mask, **kwargs
    )


def register_varlen_attention() -> str:
    """Register once with transformers' attention and mask interfaces; returns the implementation name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(VARLEN, varlen_sdpa_attention)
    AttentionMaskInterface.register(VARLEN, varlen_mask)
    return VARLEN


def packed_attention_backend(requested: str) -> str:
    """The backend to use for packed batches: FA2 keeps its own varlen kernel; sdpa/eager → sftforge_varlen."""
    if requested.startswith("flash_attention"):
        return requested
    return register_varlen_attention()


# ---------------------------------------------------------------------------------------------------------------
# What packing cannot do, refused when the run is configured
# ---------------------------------------------------------------------------------------------------------------


def check_packed_attention(model_config: Any, attn_implementation: str) -> None:
    """Raise a ConfigError when packed training would compute a different attention than the model computes
    unpacked (and at inference): logit soft-capping and attention sinks have no sdpa form, chunked attention
    has no packed form here. Sliding windows are computed exactly (flash-attn and sftforge_varlen)."""
    config = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    on_flash = attn_implementation.startswith("flash_attention")
    problems = []
    softcap = getattr(config, "attn_logit_softcapping", None)
    if softcap is not None and not on_flash:
        problems.append(f"attention logit soft-capping (attn_logit_softcapping: {softcap})")
    if _has_attention_sinks(getattr(config, "model_type", "")):
        problems.append("attention sinks (learned per-head sink logits)")
    if getattr(config, "attention_chunk_size", None):
        problems.append(f"chunked attention (attention_chunk_size: {config.attention_chunk_size})")
    if problems:
        only_softcap = len(problems) == 1 and softcap is not None
        fix = "set packing: false" + (
            " (or use flash-attn on a GPU: it has soft-capping)" if only_softcap else ""
        )
        raise ConfigError(
            f"packing: true would train {config.model_type} with a different attention than it uses unpacked and "
            f"at inference: packed attention ({attn_implementation}) cannot apply its "
            f"{' and '.join(problems)}. Please {fix}.",
            source="packing",
        )


def _has_attention_sinks(model_type: str) -> bool:
    """Whether transformers' modeling code for `model_type` passes learned sinks (`s_aux`) to its attention
    function (gpt-oss and a few others). Read from the source, without importing it: a config-time check."""
    if not model_type:
        return False
    from transformers.models.auto.configuration_auto import model_type_to_module_name

    module = model_type_to_module_name(model_type)
    try:
        spec = importlib.util.find_spec(f"transformers.models.{module}.modeling_{module}")
    except ImportError:
        return False
    if spec is None or spec.origin is None:
        return False
    with open(spec.origin, encoding="utf-8") as f:
        return "s_aux=" in f.read()


def check_packing_supported(model_args: Any) -> None:
    """`check_packed_attention` for the run's model, read with AutoConfig (no weights): called before the data
    is prepared. A config that cannot be read is left to the model load, which reports it."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(
            model_args.model_name_or_path or model_args.config_name,
            revision=model_args.model_revision,
            trust_remote_code=model_args.trust_remote_code,
        )
    except (OSError, ValueError):
        return
    check_packed_attention(config, model_args.attn_implementation)
