"""Batched greedy generation from token-id prompts: left padding, stop on any end-of-turn id, a progress bar on
stderr."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class Generated:
    ids: list[int]  # the answer's tokens, without the stop token
    finished: bool  # ended on a stop id (False: ran into max_new_tokens)


def left_padded(prompts: Sequence[Sequence[int]], pad_token_id: int) -> tuple[Any, Any]:
    """(input_ids, attention_mask) with every prompt aligned on the right edge, where generation continues."""
    import torch

    longest = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), longest), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        if prompt:
            input_ids[row, longest - len(prompt) :] = torch.as_tensor(list(prompt), dtype=torch.long)
            attention_mask[row, longest - len(prompt) :] = 1
    return input_ids, attention_mask


def cut_at_stop(ids: Sequence[int], stop_ids: Sequence[int]) -> Generated:
    stops = set(stop_ids)
    for i, token in enumerate(ids):
        if token in stops:
            return Generated(list(ids[:i]), True)
    return Generated(list(ids), False)


def generate_batched(
    model: Any,
    prompts: Sequence[Sequence[int]],
    stop_ids: Sequence[int],
    pad_token_id: int,
    max_new_tokens: int = 128,
    batch_size: int = 16,
    desc: str = "Generating",
    progress: bool = True,
    synced_gpus: bool = False,
) -> list[Generated]:
    """Greedy answers, in the order of `prompts`. Prompts are batched by length (less padding); a bar counts the
    prompts done. `synced_gpus`: every process must call this with the same number of batches (DeepSpeed ZeRO-3
    needs all ranks in each forward)."""
    import torch
    from tqdm.auto import tqdm

    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    device = next(model.parameters()).device
    results: dict[int, Generated] = {}
    bar = tqdm(total=len(prompts), desc=desc, unit=" prompts", disable=not progress, mininterval=0.5)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            input_ids, attention_mask = left_padded([prompts[i] for i in chunk], pad_token_id)
            out = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=list(stop_ids) or None,
                pad_token_id=pad_token_id,
                synced_gpus=synced_gpus,
                use_cache=True,  # training may have saved use_cache: false
                # greedy: unset the sampling knobs a generation_config.json may carry (no warnings about them)
                temperature=None,
                top_p=None,
                top_k=None,
            )
            for i, row in zip(chunk, out[:, input_ids.shape[1] :].tolist(), strict=True):
                results[i] = cut_at_stop(row, stop_ids)
            bar.update(len(chunk))
    bar.close()
    return [results[i] for i in range(len(prompts))]
