"""Choosing each row's next token in a batch where every request has its own temperature, top_p and seed."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False  # go on past end-of-turn tokens (benchmarks measure a fixed length)


def seeded_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    """A request's own random stream: the same seed gives the same answer whatever else shares the batch."""
    if seed is None:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def next_tokens(
    logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]
) -> torch.Tensor:
    """logits [rows, vocab] → the next token of each row [rows] (on the logits' device)."""
    logits = logits.float()
    chosen = logits.argmax(dim=-1)
    sampled = [i for i, p in enumerate(params) if p.temperature > 0]
    if not sampled:
        return chosen
    index = torch.tensor(sampled, device=logits.device)
    temperature = torch.tensor([params[i].temperature for i in sampled], device=logits.device)
    top_p = torch.tensor([params[i].top_p for i in sampled], device=logits.device)
    probs = top_p_filter(torch.softmax(logits[index] / temperature[:, None], dim=-1), top_p)
    picks = []
    for row, i in enumerate(sampled):  # torch.multinomial takes one generator per call
        picks.append(torch.multinomial(probs[row], 1, generator=generators[i]))
    chosen[index] = torch.cat(picks)
    return chosen


def top_p_filter(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Keep each row's smallest set of most likely tokens whose probability reaches top_p (nucleus sampling);
    the most likely token always stays."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    before = sorted_probs.cumsum(dim=-1) - sorted_probs  # probability mass ahead of each token
    drop_sorted = before >= top_p[:, None]
    drop_sorted[:, 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    kept = probs.masked_fill(drop, 0.0)
    return kept / kept.sum(dim=-1, keepdim=True)
