"""Packed rows: per-sample isolation on sdpa/eager via sftforge_varlen, and packed loss == unpacked loss."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sftforge.data.collate import FlatteningCollator, PaddingCollator
from sftforge.data.masking import IGNORE_INDEX
from sftforge.data.packing import pack_examples
from sftforge.model.varlen import packed_attention_backend

ARCHS = ["qwen2", "llama", "gemma", "qwen3", "mixtral"]


def _features(vocab: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    feats = []
    for n in [17, 30, 9, 44, 60, 12, 25]:
        ids = [rng.randint(3, vocab - 1) for _ in range(n)]
        feats.append({"input_ids": ids, "labels": [IGNORE_INDEX] * (n // 3) + ids[n // 3 :]})
    return feats


def _model(path: Path, attn: str):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa", dtype=torch.float32).eval()
    model.set_attn_implementation(packed_attention_backend(attn))
    return model


def _per_sample_losses(model, batch) -> list[torch.Tensor]:
    logits = model(**batch).logits[0]
    labels = batch["labels"][0]
    bounds = batch["cu_seq_lens_q"].tolist()
    return [
        F.cross_entropy(logits[s : e - 1], labels[s + 1 : e], ignore_index=IGNORE_INDEX, reduction="sum")
        for s, e in zip(bounds[:-1], bounds[1:], strict=True)
    ]


@pytest.mark.parametrize("arch", ARCHS)
def test_packed_per_example_loss_equals_unpacked(arch, make_tiny_model):
    path = make_tiny_model(arch)
    model = _model(path, "sdpa")
    feats = _features(model.config.vocab_size)
    with torch.no_grad():
        unpacked = [
            model(**PaddingCollator(0)([f])).loss * sum(x != -100 for x in f["labels"][1:]) for f in feats
        ]
        rows = pack_examples(feats, 64)
        assert len(rows) < len(feats)  # really packed
        order = [i for r in rows for i in _members(r, feats)]
        packed = _per_sample_losses(model, FlatteningCollator()(rows))
    for k, i in enumerate(order):
        assert torch.allclose(packed[k], unpacked[i], rtol=1e-4), (arch, i, packed[k], unpacked[i])


def _members(row: dict, feats: list[dict]) -> list[int]:
    """Which features (by index) a packed row holds, in order."""
    out, offset = [], 0
    for n in row["seq_lens"]:
        chunk = row["input_ids"][offset : offset + n]
        out.append(next(i for i, f in enumerate(feats) if f["input_ids"] == chunk))
        offset += n
    return out


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_changing_one_sample_does_not_change_another(attn, tiny_model_dir):
    model = _model(tiny_model_dir, attn)
    feats = _features(model.config.vocab_size)
    row = pack_examples(feats[:3], 256)
    assert len(row) == 1 and len(row[0]["seq_lens"]) == 3
    changed = [dict(f) for f in feats[:3]]
    changed[0] = {"input_ids": [5] * len(feats[0]["input_ids"]), "labels": feats[0]["labels"]}
    with torch.no_grad():
        a = model(**FlatteningCollator()(row)).logits[0]
        b = model(**FlatteningCollator()(pack_examples(changed, 256))).logits[0]
    first = row[0]["seq_lens"][0]
    # The packed order is data order inside a bin: sample 0 first. Its logits change; the others' do not.
    assert not torch.allclose(a[:first], b[:first])
    assert torch.equal(a[first:], b[first:])


def test_plain_sdpa_without_isolation_would_leak(tiny_model_dir):
    """The reason sftforge_varlen exists: position ids alone do not isolate samples under sdpa."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").eval()
    feats = _features(model.config.vocab_size)[:2]
    batch = FlatteningCollator()(feats)
    with torch.no_grad():
        leaky = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        alone = model(input_ids=torch.tensor([feats[1]["input_ids"]])).logits[0]
    assert not torch.allclose(leaky[len(feats[0]["input_ids"]) :], alone, atol=1e-3)


def test_varlen_backend_keeps_flash_attention():
    assert packed_attention_backend("flash_attention_2") == "flash_attention_2"
    assert packed_attention_backend("sdpa") == packed_attention_backend("eager") == "sftforge_varlen"


def test_plan_buckets_covers_every_sample_once_and_groups_similar_lengths():
    from sftforge.model.varlen import plan_buckets

    assert plan_buckets([100] * 6) == [[0, 1, 2, 3, 4, 5]]  # equal lengths: one call, no padding
    lengths = [500, 12, 497, 9, 250, 260, 15]
    buckets = plan_buckets(lengths)
    assert sorted(i for b in buckets for i in b) == list(range(len(lengths)))
    assert len(buckets) > 1
    assert [0, 2] in buckets and [5, 4] in buckets  # the long pair and the middle pair are bucketed apart
    for b in buckets:  # each bucket is a run of the length-sorted order: longest first
        assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)


def test_multi_bucket_batch_matches_unpacked_logits_and_gradients(tiny_model_dir):
    """Lengths far apart force several sdpa calls; logits and parameter gradients still equal the unpacked run
    (padding slots must contribute no gradient)."""
    from sftforge.model.varlen import plan_buckets

    model = _model(tiny_model_dir, "sdpa")
    rng = random.Random(1)
    lengths = [3, 200, 7, 150, 64, 180, 20]
    feats = [{"input_ids": (ids := [rng.randint(3, 199) for _ in range(n)]), "labels": ids} for n in lengths]
    assert len(plan_buckets(lengths)) >= 3
    batch = FlatteningCollator()(feats)
    logits = model(**batch).logits[0]
    packed_loss = sum(_per_sample_losses(model, batch))
    packed_loss.backward()
    packed_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    offset, unpacked_loss = 0, 0.0
    for f, n in zip(feats, lengths, strict=True):
        alone = model(input_ids=torch.tensor([f["input_ids"]])).logits[0]
        assert torch.allclose(logits[offset : offset + n], alone, atol=1e-5)
        ids = torch.tensor(f["input_ids"])
        unpacked_loss = unpacked_loss + F.cross_entropy(alone[:-1], ids[1:], reduction="sum")
        offset += n
    unpacked_loss.backward()
    assert torch.allclose(packed_loss, unpacked_loss, rtol=1e-5)
    for name, p in model.named_parameters():
        scale = p.grad.abs().max()
        assert (packed_grads[name] - p.grad).abs().max() <= 1e-5 * scale, name  # fp32 summation order


# ------------------------------------------------------------------ the collator's layout reaches every layer


@pytest.mark.parametrize("arch", [*ARCHS, "qwen2_moe"])
def test_collators_layout_reaches_every_layer_and_equals_the_boundaries_only_path(
    arch, make_tiny_model, monkeypatch
):
    """transformers passes the batch's extra key down to the attention of every layer (MoE too), so no layer
    rebuilds the layout; the result equals the path that builds it from cu_seq_lens alone."""
    from sftforge.data.buckets import LAYOUT_KEY
    from sftforge.model import varlen

    model = _model(make_tiny_model(arch), "sdpa")
    feats = _features(model.config.vocab_size)
    batch = FlatteningCollator()(feats)
    with torch.no_grad():
        boundaries_only = model(**{k: v for k, v in batch.items() if k != LAYOUT_KEY}).logits

    def rebuilt(*args):
        raise AssertionError("the layout was rebuilt in the model although the batch carries it")

    monkeypatch.setattr(varlen, "_layout_from_boundaries", rebuilt)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, boundaries_only)


def test_layout_reaches_the_attention_through_lora_and_gradient_checkpointing(tiny_model_dir, monkeypatch):
    from peft import LoraConfig, get_peft_model

    from sftforge.model import varlen

    model = _model(tiny_model_dir, "sdpa").train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    seen = []
    real = varlen._bucketed
    monkeypatch.setattr(
        varlen, "_bucketed", lambda q, k, v, layout, *a: seen.append(layout) or real(q, k, v, layout, *a)
    )
    monkeypatch.setattr(varlen, "_layout_from_boundaries", lambda *a: pytest.fail("layout rebuilt"))
    batch = FlatteningCollator()(_features(model.config.vocab_size))
    model(**batch).loss.backward()
    layers = model.config.num_hidden_layers
    assert len(seen) == 2 * layers  # forward + the checkpointed recomputation, all with the collator's layout
    assert all(layout is seen[0] for layout in seen)
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_" in n)


def test_packed_position_ids_without_boundaries_still_keep_samples_apart(tiny_model_dir):
    """Another collator may flatten with restarting position ids only (no cu_seq_lens): still isolated."""
    model = _model(tiny_model_dir, "sdpa")
    feats = _features(model.config.vocab_size)[:3]
    batch = FlatteningCollator()(feats)
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        alone = torch.cat([model(input_ids=torch.tensor([f["input_ids"]])).logits[0] for f in feats])
    assert (packed - alone).abs().max() < 1e-5


# ------------------------------------------------------------------ sliding window


def _sliding(arch: str):
    import transformers

    common = dict(vocab_size=200, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=8, sliding_window=8)  # fmt: skip
    config = {
        "mistral": lambda: transformers.MistralConfig(**common),
        # layer 0 full attention, layer 1 sliding (layer_types from max_window_layers)
        "qwen2-sliding": lambda: transformers.Qwen2Config(
            **common, use_sliding_window=True, max_window_layers=1
        ),
    }[arch]()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(
            config, attn_implementation="sdpa", dtype=torch.float32
        )
    return model.eval()


@pytest.mark.parametrize("arch", ["mistral", "qwen2-sliding"])
def test_packed_sliding_window_matches_the_unpacked_models_attention(arch):
    """Samples longer and shorter than the window, in several buckets: per-sample logits and parameter gradients
    equal the unpacked model's own (sdpa, sliding-window mask) forward."""
    from sftforge.model.varlen import plan_buckets

    model = _sliding(arch)
    rng = random.Random(2)
    lengths = [3, 200, 7, 150, 12, 180, 20]
    assert len(plan_buckets(lengths)) >= 2 and max(lengths) > model.config.sliding_window
    feats = [{"input_ids": (ids := [rng.randint(3, 199) for _ in range(n)]), "labels": ids} for n in lengths]
    unpacked, unpacked_loss = [], 0.0
    for f in feats:
        alone = model(input_ids=torch.tensor([f["input_ids"]])).logits[0]
        unpacked.append(alone)
        ids = torch.tensor(f["input_ids"])
        unpacked_loss = unpacked_loss + F.cross_entropy(alone[:-1], ids[1:], reduction="sum")
    unpacked_loss.backward()
    unpacked_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_attn_implementation(packed_attention_backend("sdpa"))
    batch = FlatteningCollator()(feats)
    packed = model(**batch).logits[0]
    assert (packed - torch.cat(unpacked)).abs().max() < 1e-5
    sum(_per_sample_losses(model, batch)).backward()
    for name, p in model.named_parameters():
        assert (unpacked_grads[name] - p.grad).abs().max() <= 1e-5 * p.grad.abs().max(), name
