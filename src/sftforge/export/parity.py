"""The merge checks: run the same chat-template prompts through two models and compare logits, greedy tokens and
(for the saved folder) every tensor bit for bit."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

TOLERANCE = 1e-4  # float32 max-abs logit difference; real merges measure ~1e-6
NEW_TOKENS = 16
DEFAULT_PROMPTS = (
    "Hello! Who are you?",
    "Explain in two sentences why the sky is blue.",
    "Write a haiku about the sea.",
    "What is 17 times 23?",
)


def generation_config(adapter_dir: Path, base: str, tokenizer: Any) -> Any:
    """Greedy, NEW_TOKENS long, stopping at the run's end-of-turn ids (its generation_config) when it has one."""
    from transformers import GenerationConfig

    saved = None
    for source in (adapter_dir, base):
        try:
            saved = GenerationConfig.from_pretrained(source)
            break
        except (OSError, ValueError):
            continue
    config = saved or GenerationConfig()
    if config.eos_token_id is None:
        config.eos_token_id = tokenizer.eos_token_id
    if config.pad_token_id is None:
        config.pad_token_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else config.eos_token_id
        )
    return config


def _greedy(config: Any) -> Any:
    import copy

    greedy = copy.deepcopy(config)
    greedy.do_sample, greedy.num_beams, greedy.max_new_tokens = False, 1, NEW_TOKENS
    greedy.temperature = greedy.top_p = greedy.top_k = None  # silence "sampling flags without sampling"
    return greedy


def prompt_inputs(tokenizer: Any, prompts: list[str], device: str) -> list[dict[str, Any]]:
    """Each prompt as the model sees it at inference: rendered with the chat template, one sequence, no padding."""
    out = []
    for text in prompts:
        if getattr(tokenizer, "chat_template", None):
            enc = tokenizer.apply_chat_template(
                [{"role": "user", "content": text}],
                add_generation_prompt=True,
                return_tensors="pt",
                return_dict=True,
            )
        else:
            enc = tokenizer(text, return_tensors="pt")
        out.append({k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")})
    return out


def run_prompts(model: Any, inputs: list[dict[str, Any]], gen_config: Any) -> dict[str, Any]:
    greedy = _greedy(gen_config)
    logits, tokens = [], []
    for enc in inputs:
        logits.append(model(**enc).logits.float().cpu())
        generated = model.generate(**enc, generation_config=greedy)
        tokens.append(generated[0, enc["input_ids"].shape[1] :].tolist())
    return {"logits": logits, "tokens": tokens}


def max_abs(a: dict[str, Any], b: dict[str, Any]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a["logits"], b["logits"], strict=True))


def print_parity(name: str, diff: float, greedy_match: bool, prompts: int) -> None:
    mark = "ok" if diff <= TOLERANCE and greedy_match else "FAILED"
    print(
        f" {name:<12} merged vs base+adapter (float32): max |Δlogits| = {diff:.3g} (limit {TOLERANCE:g}) on "
        f"{prompts} chat-template prompts; greedy {NEW_TOKENS}-token generations "
        f"{'identical' if greedy_match else 'DIFFER'} — {mark}",
        flush=True,
    )


def print_saved(report: dict[str, Any], key: str, prompts: int) -> None:
    tensors = (
        "every tensor identical to the merged model"
        if report["saved_tensors_identical"]
        else (f"{len(report['saved_tensors_differing'])}+ tensors DIFFER from the merged model")
    )
    diff, same = report[f"{key}_max_abs_logit_diff"], report[f"{key}_greedy_match"]
    if key == "saved":
        ok = report["saved_tensors_identical"] and diff <= TOLERANCE and same
        logits = f"max |Δlogits| vs base+adapter = {diff:.3g} (limit {TOLERANCE:g}); greedy {'identical' if same else 'DIFFER'}"
    else:
        ok = report["saved_tensors_identical"]
        logits = (f"in {report['dtype']}: max |Δlogits| vs base+adapter (float32) = {diff:.3g} from rounding "
                  f"(reported, not checked); greedy {'identical' if same else 'differs'}")  # fmt: skip
    print(f" saved        reloaded folder: {tensors}; {logits} — {'ok' if ok else 'FAILED'}", flush=True)


def fingerprints(model: Any) -> dict[str, str]:
    """sha256 of every state-dict tensor's bytes (with its dtype and shape): equal iff bit-identical."""
    import torch

    out = {}
    for name, tensor in model.state_dict().items():
        raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
        out[name] = f"{tensor.dtype}{tuple(tensor.shape)}:{hashlib.sha256(raw.data).hexdigest()}"
    return out


def differing_tensors(expected: dict[str, str], actual: dict[str, str]) -> list[str]:
    """Names whose reloaded tensor is not bit-identical to the merged model's (or is missing on either side)."""
    return sorted(set(expected) ^ set(actual)) + [
        k for k in sorted(set(expected) & set(actual)) if expected[k] != actual[k]
    ]
