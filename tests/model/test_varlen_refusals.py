"""What packed attention cannot compute is refused, never approximated: logit soft-capping (Gemma 2) and
attention sinks (gpt-oss) have no sdpa form. Refused when the run is configured (before any data work), and
again inside the attention function if they arrive anyway."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from sftforge.data.collate import FlatteningCollator
from sftforge.errors import ConfigError
from sftforge.model.varlen import packed_attention_backend

SMALL = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
             num_key_value_heads=2, head_dim=8)  # fmt: skip


def _gemma2() -> transformers.PreTrainedConfig:
    return transformers.Gemma2Config(**SMALL, attn_logit_softcapping=50.0, sliding_window=8)


def _gpt_oss() -> transformers.PreTrainedConfig:
    return transformers.GptOssConfig(**SMALL, num_local_experts=2, num_experts_per_tok=1, sliding_window=8)


def test_config_check_refuses_softcap_on_sdpa_but_not_on_flash_attention():
    from sftforge.model.varlen import check_packed_attention

    with pytest.raises(
        ConfigError, match=r"packing: true .*attn_logit_softcapping: 50.0.*packing: false"
    ) as e:
        check_packed_attention(_gemma2(), "sdpa")
    assert "flash-attn" in str(e.value)  # says what else works
    check_packed_attention(_gemma2(), "flash_attention_2")  # flash-attn's varlen kernel has soft-capping


@pytest.mark.parametrize("attn", ["sdpa", "eager", "flash_attention_2"])
def test_config_check_refuses_attention_sinks_on_every_backend(attn):
    """flash-attn 2 has no sinks either (transformers would drop them without a word)."""
    from sftforge.model.varlen import check_packed_attention

    with pytest.raises(ConfigError, match=r"packing: true .*gpt_oss.*attention sinks.*packing: false"):
        check_packed_attention(_gpt_oss(), attn)


def test_config_check_refuses_chunked_attention():
    from sftforge.model.varlen import check_packed_attention

    with pytest.raises(ConfigError, match="attention_chunk_size: 16"):
        check_packed_attention(transformers.Llama4TextConfig(attention_chunk_size=16), "sdpa")


@pytest.mark.parametrize(
    "config",
    [
        transformers.MistralConfig(sliding_window=4096),
        transformers.Qwen2Config(use_sliding_window=True, sliding_window=64),
        transformers.Gemma3TextConfig(),  # sliding window, no soft-capping
        transformers.LlamaConfig(),
        transformers.Qwen2MoeConfig(),
    ],
    ids=["mistral", "qwen2-sliding", "gemma3", "llama", "qwen2_moe"],
)
def test_config_check_accepts_what_packed_attention_computes_exactly(config):
    from sftforge.model.varlen import check_packed_attention

    check_packed_attention(config, "sdpa")


def test_training_refuses_before_reading_any_data(tmp_path):
    """The run stops at the model's config (a folder with only config.json: no tokenizer, no weights), so the
    refusal comes before the tokenizer load and the data preparation."""
    from sftforge.config import load_config
    from sftforge.train.run import run_training

    model_dir = tmp_path / "gemma2"
    _gemma2().save_pretrained(model_dir)
    data = tmp_path / "t.jsonl"
    data.write_text(
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
    )
    cfg = load_config(None, ["--model_name_or_path", str(model_dir), "--train_data_path", str(data),
                             "--output_dir", str(tmp_path / "out"), "--packing", "true"])  # fmt: skip
    with pytest.raises(ConfigError, match="packing: true .*soft-capping") as e:
        run_training(cfg)
    assert e.value.source == "packing"
    assert not (tmp_path / "out" / "sftforge_config.yaml").exists()


@pytest.mark.parametrize(
    ("make", "what"),
    [(_gemma2, "soft-capping"), (_gpt_oss, "sinks")],
    ids=["gemma2-softcap", "gpt_oss-sinks"],
)
def test_attention_function_refuses_them_if_they_arrive_anyway(make, what):
    model = transformers.AutoModelForCausalLM.from_config(make(), attn_implementation="eager").eval()
    model.set_attn_implementation(packed_attention_backend("eager"))
    batch = FlatteningCollator()(
        [{"input_ids": [3, 4, 5], "labels": [3, 4, 5]}, {"input_ids": [6, 7], "labels": [6, 7]}]
    )
    with pytest.raises(ValueError, match=rf"sftforge_varlen .*{what}.*packing: false"), torch.no_grad():
        model(**batch)
