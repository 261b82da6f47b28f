"""sftforge_varlen on an accelerator, as far as a CPU can prove it: every tensor the backend makes lives on the
query's device, and a layer reads nothing back to the host.

The `meta` device stands in for CUDA: its tensors have no data, so any host read (`.tolist()`, `.item()`,
`bool(tensor)`) raises, and an op that mixes devices or a tensor made on the CPU is caught by a dispatch mode that
sees every op the backend runs (meta itself does not refuse CPU index tensors the way CUDA does)."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from sftforge.data.buckets import LAYOUT_KEY
from sftforge.data.collate import FlatteningCollator
from sftforge.model.varlen import varlen_sdpa_attention

LENGTHS = [3, 200, 7, 150, 64, 180, 20]  # several buckets


class DeviceAudit(TorchDispatchMode):
    """Records every op whose tensors are not all on `device`, except ops on host-only tensors (the boundaries a
    caller gave on the CPU may be read there)."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device, self.offenders = device, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        outputs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        on_host_only = inputs and all(t.device.type == "cpu" for t in inputs + outputs)
        if not on_host_only and any(t.device != self.device for t in inputs + outputs):
            self.offenders.append(
                (str(func), [str(t.device) for t in inputs], [str(t.device) for t in outputs])
            )
        return out


class _Attention(torch.nn.Module):
    is_causal = True


def _qkv(total: int, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # 4 query heads over 2 kv heads (GQA), head dim 8
    return (
        torch.empty(1, 4, total, 8, device=device),
        torch.empty(1, 2, total, 8, device=device),
        torch.empty(1, 2, total, 8, device=device),
    )


def _to(batch: dict, device: str) -> dict:
    """What the Trainer's `_prepare_inputs` does: tensors (also inside dicts/tuples) to the device, ints kept."""
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to(v, device) for v in batch)
    return batch.to(device) if isinstance(batch, torch.Tensor) else batch


@pytest.mark.parametrize("window", [None, 32], ids=["causal", "sliding-window"])
def test_precomputed_layout_runs_entirely_on_the_device_without_host_reads(window):
    feats = [{"input_ids": [5] * n, "labels": [5] * n} for n in LENGTHS]
    batch = _to(FlatteningCollator()(feats), "meta")
    q, k, v = _qkv(sum(LENGTHS), "meta")
    audit = DeviceAudit(torch.device("meta"))
    with audit:
        out, _ = varlen_sdpa_attention(
            _Attention(), q, k, v, None, sliding_window=window,
            cu_seq_lens_q=batch["cu_seq_lens_q"], cu_seq_lens_k=batch["cu_seq_lens_k"],
            max_length_q=batch["max_length_q"], max_length_k=batch["max_length_k"],
            **{LAYOUT_KEY: batch[LAYOUT_KEY]},
        )  # fmt: skip
    assert out.shape == (1, sum(LENGTHS), 4, 8) and out.device.type == "meta"
    assert audit.offenders == []


def test_boundaries_alone_build_the_layout_on_the_query_device():
    """Another collator's batch: only cu_seq_lens (here left on the CPU). The layout is made on the query's
    device, never on the CPU next to device q/k/v (the CUDA crash of issue 12)."""
    cu = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()], dtype=torch.int32)
    q, k, v = _qkv(sum(LENGTHS), "meta")
    audit = DeviceAudit(torch.device("meta"))
    with audit:
        out, _ = varlen_sdpa_attention(_Attention(), q, k, v, None, cu_seq_lens_q=cu, cu_seq_lens_k=cu)
    assert out.shape == (1, sum(LENGTHS), 4, 8)
    assert audit.offenders == []


def test_unpacked_sliding_window_call_stays_on_the_device():
    q, k, v = _qkv(40, "meta")
    audit = DeviceAudit(torch.device("meta"))
    with audit:
        out, _ = varlen_sdpa_attention(_Attention(), q, k, v, None, sliding_window=8)
    assert out.shape == (1, 40, 4, 8) and audit.offenders == []


def test_layout_is_built_once_per_forward_when_only_boundaries_are_given(monkeypatch):
    from sftforge.model import varlen

    built = []
    real = varlen.bucket_layout
    monkeypatch.setattr(
        varlen, "bucket_layout", lambda lengths, device: built.append(1) or real(lengths, device)
    )
    cu = torch.tensor([0, 5, 12], dtype=torch.int32)
    q, k, v = (torch.randn(1, 2, 12, 8) for _ in range(3))
    for _layer in range(3):
        varlen_sdpa_attention(_Attention(), q, k, v, None, cu_seq_lens_q=cu, cu_seq_lens_k=cu)
    assert built == [1]
    # With the collator's layout, none is built at all
    batch = FlatteningCollator()(
        [{"input_ids": [1] * 5, "labels": [1] * 5}, {"input_ids": [1] * 7, "labels": [1] * 7}]
    )
    varlen_sdpa_attention(
        _Attention(), q, k, v, None, cu_seq_lens_q=batch["cu_seq_lens_q"], **{LAYOUT_KEY: batch[LAYOUT_KEY]}
    )
    assert built == [1]


def test_whole_model_packed_forward_and_backward_on_meta(make_tiny_model):
    """End to end through a real model (embeddings, RoPE, mask creation, every layer, the loss, backward): with
    the collator's batch on the device, nothing is created elsewhere and nothing is read back to the host."""
    from transformers import AutoModelForCausalLM

    from sftforge.model.varlen import packed_attention_backend

    model = AutoModelForCausalLM.from_pretrained(make_tiny_model("llama"), attn_implementation="sdpa").train()
    model.set_attn_implementation(packed_attention_backend("sdpa"))
    model = torch.nn.Module.to(model, "meta")  # transformers' .to()/.train() would kernelize for the device
    feats = [{"input_ids": [5] * n, "labels": [5] * n} for n in LENGTHS]
    batch = _to(FlatteningCollator()(feats), "meta")
    audit = DeviceAudit(torch.device("meta"))
    with audit:
        loss = model(**batch).loss
        loss.backward()
    assert loss.device.type == "meta" and audit.offenders == []
