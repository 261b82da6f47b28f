"""sftforge_varlen (and flash-attn varlen when installed) on a CUDA GPU: skipped without one.

The CPU tests prove device placement on `meta`; these run the real kernels: packed == unpacked on the GPU, the
per-layer path makes no host sync (CUDA's sync debug mode raises on one), generation equals sdpa.
SFTFORGE_VARLEN_TEST_DEVICE=cpu runs them on the CPU (to check the tests themselves; no sync check there)."""

from __future__ import annotations

import os
import random

import pytest
import torch

from sftforge.data.collate import FlatteningCollator
from sftforge.model.varlen import packed_attention_backend, varlen_sdpa_attention

_WANTED = os.environ.get("SFTFORGE_VARLEN_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else "")
pytestmark = pytest.mark.skipif(not _WANTED, reason="needs a CUDA GPU")
LENGTHS = [3, 200, 7, 150, 64, 180, 20]


def _device() -> torch.device:
    return torch.device(_WANTED)


def _model(sliding_window: int | None = None, attn: str = "sdpa"):
    import transformers

    config = transformers.MistralConfig(
        vocab_size=200, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, sliding_window=sliding_window, pad_token_id=0,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(
            config, attn_implementation=attn, dtype=torch.float32
        )
    return model.to(_device()).eval()


def _feats() -> list[dict]:
    rng = random.Random(0)
    return [{"input_ids": (ids := [rng.randint(3, 199) for _ in range(n)]), "labels": ids} for n in LENGTHS]


def _on_device(batch: dict) -> dict:
    def move(x):
        if isinstance(x, dict):
            return {k: move(v) for k, v in x.items()}
        if isinstance(x, (tuple, list)):
            return type(x)(move(v) for v in x)
        return x.to(_device()) if isinstance(x, torch.Tensor) else x

    return move(batch)


@pytest.mark.parametrize("window", [None, 32], ids=["causal", "sliding-window"])
def test_packed_logits_equal_unpacked_on_the_gpu(window):
    model = _model(window)
    feats = _feats()
    with torch.no_grad():
        alone = torch.cat(
            [model(input_ids=torch.tensor([f["input_ids"]], device=_device())).logits[0] for f in feats]
        )
        model.set_attn_implementation(packed_attention_backend("sdpa"))
        packed = model(**_on_device(FlatteningCollator()(feats))).logits[0]
    assert (packed - alone).abs().max() < 1e-4


def test_attention_layer_makes_no_host_sync():
    if _device().type != "cuda":
        pytest.skip("CUDA's sync debug mode is the check")
    batch = _on_device(FlatteningCollator()(_feats()))
    total = sum(LENGTHS)
    q, k, v = (torch.randn(1, h, total, 16, device=_device(), requires_grad=True) for h in (4, 2, 2))

    class Attention(torch.nn.Module):
        is_causal = True

    extra = {key: value for key, value in batch.items() if key not in ("input_ids", "labels", "position_ids")}
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for window in (None, 32):
            out, _ = varlen_sdpa_attention(Attention(), q, k, v, None, sliding_window=window, **extra)
            out.float().sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.shape == (1, total, 4, 16)


def test_greedy_generate_with_left_padding_equals_sdpa_on_the_gpu():
    model = _model(sliding_window=6)
    prompts = [[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15], [20, 21, 22, 23]]
    longest = max(map(len, prompts))
    ids = torch.tensor([[0] * (longest - len(p)) + p for p in prompts], device=_device())
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts], device=_device())

    def run():
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False,
                                 return_dict_in_generate=True, output_logits=True, pad_token_id=0)  # fmt: skip
        return out.sequences, torch.stack(out.logits)

    tokens, logits = run()
    model.set_attn_implementation(packed_attention_backend("sdpa"))
    got_tokens, got_logits = run()
    assert torch.equal(got_tokens, tokens) and (got_logits - logits).abs().max() < 1e-4


def test_flash_attention_varlen_packed_equals_unpacked():
    pytest.importorskip("flash_attn")
    if _device().type != "cuda":
        pytest.skip("flash-attn runs on CUDA only")
    model = _model(32, attn="flash_attention_2").to(torch.bfloat16)
    feats = _feats()
    with torch.no_grad():
        alone = torch.cat(
            [model(input_ids=torch.tensor([f["input_ids"]], device=_device())).logits[0] for f in feats]
        )
        packed = model(**_on_device(FlatteningCollator(bucket_layout=False)(feats))).logits[0]
    assert (packed.float() - alone.float()).abs().max() < 5e-2  # bf16
