"""Masked loss equals the model's own loss; batched left-padded generation equals one prompt at a time."""

from __future__ import annotations

import math

import pytest
import torch

from sftforge.eval.generate import cut_at_stop, generate_batched, left_padded
from sftforge.eval.loss import masked_loss


@pytest.fixture(scope="module")
def model_and_features(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    features = []
    for n in (7, 12, 9):
        ids = torch.randint(5, 500, (n,), generator=g).tolist()
        features.append({"input_ids": ids, "labels": [-100] * (n // 2) + ids[n // 2 :]})
    return model, features


def test_loss_is_the_token_mean_whatever_the_batch_size(model_and_features):
    model, features = model_and_features
    total = count = 0.0
    for f in features:  # the model's own shifted loss, one example at a time, weighted by its trained tokens
        out = model(input_ids=torch.tensor([f["input_ids"]]), labels=torch.tensor([f["labels"]]))
        n = sum(label != -100 for label in f["labels"][1:])
        total, count = total + out.loss.item() * n, count + n
    for batch_size in (1, 2, 3):
        result = masked_loss(model, features, pad_token_id=0, batch_size=batch_size)
        assert result.trained_tokens == count
        assert result.loss == pytest.approx(total / count, rel=1e-5)
        assert result.perplexity == pytest.approx(math.exp(total / count), rel=1e-5)


def test_left_padding_and_stop_cut():
    ids, mask = left_padded([[1, 2, 3], [4]], pad_token_id=0)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert cut_at_stop([5, 6, 9, 7], [9, 8]).ids == [5, 6]
    assert cut_at_stop([5, 6, 9, 7], [9, 8]).finished
    assert not cut_at_stop([5, 6], [9]).finished


def test_batched_generation_equals_one_at_a_time(model_and_features):
    model, features = model_and_features
    prompts = [f["input_ids"] for f in features]
    batched = generate_batched(model, prompts, stop_ids=[3], pad_token_id=0, max_new_tokens=6, batch_size=3,
                               progress=False)  # fmt: skip
    single = [generate_batched(model, [p], [3], 0, 6, 1, progress=False)[0] for p in prompts]
    assert [g.ids for g in batched] == [g.ids for g in single]
    assert all(len(g.ids) <= 6 for g in batched)
