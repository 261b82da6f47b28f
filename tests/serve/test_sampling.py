"""Per-row sampling: greedy rows, nucleus filtering by hand, and per-request seeds."""

from __future__ import annotations

import torch

from sftforge.serve.sampling import SamplingParams, next_tokens, seeded_generator, top_p_filter


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.05, 0.15, 0.3, 0.5]])
    kept = top_p_filter(probs, torch.tensor([0.75, 0.9]))
    # row 0: 0.5 + 0.3 reaches 0.75 → {0, 1}; row 1: 0.5 + 0.3 + 0.15 reaches 0.9 → {1, 2, 3}
    assert torch.allclose(kept[0], torch.tensor([0.625, 0.375, 0.0, 0.0]))
    assert torch.allclose(kept[1], torch.tensor([0.0, 0.15, 0.3, 0.5]) / 0.95)


def test_top_p_always_keeps_the_most_likely_token():
    kept = top_p_filter(torch.tensor([[0.9, 0.1]]), torch.tensor([0.01]))
    assert kept.tolist() == [[1.0, 0.0]]


def test_greedy_rows_take_the_argmax_and_seeded_rows_repeat():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    params = [SamplingParams(5, temperature=0), SamplingParams(5, temperature=1.0, seed=3),
              SamplingParams(5, temperature=0.8, top_p=0.5, seed=4)]  # fmt: skip

    def draw() -> list[int]:
        gens = [seeded_generator(p.seed, logits.device) for p in params]
        return next_tokens(logits, params, gens).tolist()

    first, second = draw(), draw()
    assert first == second
    assert first[0] == logits[0].argmax().item()


def test_a_temperature_near_zero_gives_the_argmax():
    logits = torch.tensor([[1.0, 3.0, 2.0]])
    out = next_tokens(
        logits, [SamplingParams(1, temperature=1e-4, seed=0)], [seeded_generator(0, logits.device)]
    )
    assert out.tolist() == [1]
