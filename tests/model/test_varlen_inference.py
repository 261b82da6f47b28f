"""sftforge_varlen outside packed training (no cu_seq_lens): generation with a KV cache, chunked prefill, left
padding, a padded eval batch. It must compute what the model's own sdpa attention computes (issue 12: one
decode step attended to key 0 only)."""

from __future__ import annotations

import pytest
import torch

from sftforge.data.collate import PaddingCollator
from sftforge.model.varlen import packed_attention_backend

VOCAB = 96


def _tiny(arch: str, **extra):
    import transformers

    config_class = {
        "qwen2": transformers.Qwen2Config,
        "llama": transformers.LlamaConfig,
        "mistral": transformers.MistralConfig,
        "gemma3_text": transformers.Gemma3TextConfig,
    }[arch]
    config = config_class(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, pad_token_id=0, bos_token_id=None, eos_token_id=None, **extra,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(
            config, attn_implementation="sdpa", dtype=torch.float32
        )
    model.generation_config.pad_token_id = 0
    return model.eval()


# A window of 6 is shorter than the prompts: the sliding layers really slide.
MODELS = {
    "qwen2": {},
    "llama": {},
    "mistral-window": {"sliding_window": 6},
    "gemma3-window": {"sliding_window": 6},  # alternating sliding and full layers
}


def _model(name: str):
    arch = {"mistral-window": "mistral", "gemma3-window": "gemma3_text"}.get(name, name)
    return _tiny(arch, **MODELS[name])


def _both(model, run):
    """`run(model)` under sdpa, then under sftforge_varlen."""
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        expected = run(model)
    model.set_attn_implementation(packed_attention_backend("sdpa"))
    with torch.no_grad():
        got = run(model)
    return expected, got


def _ids(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, VOCAB, (1, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", MODELS)
def test_decode_step_and_chunked_prefill_match_sdpa(name):
    model = _model(name)
    ids = _ids(15)

    def run(m):
        prefill = m(input_ids=ids[:, :8], use_cache=True)
        chunk = m(input_ids=ids[:, 8:14], cache=prefill.past_key_values, use_cache=True)  # 6 queries, 14 keys
        step = m(input_ids=ids[:, 14:], cache=chunk.past_key_values, use_cache=True)  # one query
        return torch.cat([prefill.logits, chunk.logits, step.logits], dim=1)

    expected, got = _both(model, run)
    assert (got - expected).abs().max() < 1e-5, (got - expected).abs().max()


@pytest.mark.parametrize("name", MODELS)
def test_greedy_generate_with_left_padding_matches_sdpa(name):
    model = _model(name)
    prompts = [_ids(11, 1)[0].tolist(), _ids(4, 2)[0].tolist()]
    longest = max(map(len, prompts))
    input_ids = torch.tensor([[0] * (longest - len(p)) + p for p in prompts])  # left padding
    attention_mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts])

    def run(m):
        out = m.generate(
            input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=10, do_sample=False,
            return_dict_in_generate=True, output_logits=True,
        )  # fmt: skip
        return out.sequences, torch.stack(out.logits)

    (tokens, logits), (got_tokens, got_logits) = _both(model, run)
    assert torch.equal(got_tokens, tokens)
    assert (got_logits - logits).abs().max() < 1e-5


def test_greedy_generate_of_one_prompt_matches_sdpa():
    model = _model("qwen2")
    ids = _ids(9, 3)

    def run(m):
        out = m.generate(
            input_ids=ids,
            max_new_tokens=12,
            do_sample=False,
            return_dict_in_generate=True,
            output_logits=True,
        )
        return out.sequences, torch.stack(out.logits)

    (tokens, logits), (got_tokens, got_logits) = _both(model, run)
    assert torch.equal(got_tokens, tokens) and (got_logits - logits).abs().max() < 1e-5


@pytest.mark.parametrize("name", ["qwen2", "mistral-window"])
def test_padded_eval_batch_matches_sdpa(name):
    """An unpacked eval batch (PaddingCollator: right padding, attention_mask): same logits and loss."""
    model = _model(name)
    feats = [{"input_ids": (ids := _ids(n, n)[0].tolist()), "labels": ids} for n in (13, 5, 9)]
    batch = PaddingCollator(0)(feats)

    def run(m):
        out = m(**batch)
        return out.logits * batch["attention_mask"][..., None], out.loss

    (logits, loss), (got_logits, got_loss) = _both(model, run)
    assert (got_logits - logits).abs().max() < 1e-5 and torch.allclose(got_loss, loss)
