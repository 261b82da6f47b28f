"""Kernel and GPU switches as far as a CPU can check them, and the throughput / MFU log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftforge.config import load_config
from sftforge.errors import ConfigError
from sftforge.train.callbacks import ThroughputCallback, dense_params, step_flops
from sftforge.train.run import run_training

ROWS = [{"messages": [{"role": "user", "content": f"Count to {i}"},
                      {"role": "assistant", "content": " ".join(str(k) for k in range(i))}]} for i in range(3, 19)]  # fmt: skip


def _cfg(tmp_path: Path, model_dir: Path, *extra: str):
    data = tmp_path / "t.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    return load_config(None, ["--model_name_or_path", str(model_dir), "--train_data_path", str(data),
                              "--output_dir", str(tmp_path / "out"), "--max_steps", "4", "--logging_steps", "2",
                              "--per_device_train_batch_size", "4", "--save_strategy", "no",
                              "--disable_tqdm", "true", *extra])  # fmt: skip


@pytest.mark.parametrize(
    "extra",
    [
        ("--gradient_checkpointing", "true", "--packing", "true"),
        ("--neftune_noise_alpha", "5"),
        ("--packing", "true", "--attn_implementation", "eager"),
    ],
    ids=["checkpointing+packing", "neftune", "packing+eager"],
)
def test_switch_trains_on_cpu(tmp_path, tiny_model_dir, extra):
    metrics = run_training(_cfg(tmp_path, tiny_model_dir, *extra))
    assert metrics["train_loss"] > 0 and metrics["global_step"] == 4
    history = json.loads((tmp_path / "out" / "log_history.json").read_text())
    logged = [e for e in history if "loss" in e]
    assert logged and all(e["tokens_per_s"] > 0 for e in logged)
    assert all("mfu" not in e for e in logged)  # no peak FLOPs known on a CPU
    if "--packing" in extra:
        assert metrics["real_token_fraction"] == 1.0


def test_liger_needs_a_gpu(tmp_path, tiny_model_dir):
    with pytest.raises(ConfigError, match="use_liger_kernel: Liger's Triton kernels need a CUDA GPU"):
        _cfg(tmp_path, tiny_model_dir, "--use_liger_kernel", "true")


def test_step_flops_formula():
    # 6·N·T for the weights + 6·L·d·Σlen² for causal attention
    assert (
        step_flops(params=1000, layers=2, hidden=8, tokens=10, sum_sq_lengths=50)
        == 6 * 1000 * 10 + 6 * 2 * 8 * 50
    )


def test_mfu_logged_when_a_peak_is_known(monkeypatch, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from sftforge.data.collate import FlatteningCollator
    from sftforge.train.token_counter import TokenCounter

    monkeypatch.setenv("SFTFORGE_PEAK_TFLOPS", "1")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokens = TokenCounter()
    callback = ThroughputCallback(tokens, model)
    assert callback.params == dense_params(model) < sum(p.numel() for p in model.parameters())
    callback.on_train_begin(None, None, None)
    tokens.add(FlatteningCollator()([{"input_ids": list(range(3, 40)), "labels": list(range(3, 40))}]))
    logs = {"loss": 1.0}
    callback.annotate(logs)
    assert logs["tokens_per_s"] > 0 and 0 < logs["mfu"] < 1


@pytest.mark.parametrize(
    "extra",
    [(), ("--packing", "true", "--max_length", "64", "--per_device_train_batch_size", "1")],
    ids=["padding", "packing"],
)
def test_token_metrics_count_trained_batches_only_also_with_workers(tmp_path, tiny_model_dir, extra):
    """Tokens are counted where the batch is trained: not in a DataLoader worker (where they were lost) and not
    for the batch prefetched after the last of `max_steps` (which was counted though never trained on)."""
    from sftforge.train.run import build_trainer, prepare_tokenized_data
    from sftforge.train.token_counter import batch_token_counts

    cfg = _cfg(tmp_path, tiny_model_dir, "--dataloader_num_workers", "1", "--max_steps", "2", *extra)
    metrics = run_training(cfg)
    assert metrics["global_step"] == 2
    # The same two batches, from the same seeded sampler, counted directly.
    bundle, data = prepare_tokenized_data(cfg)
    from transformers import AutoModelForCausalLM

    trainer = build_trainer(cfg, bundle, data, AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    batches = [b for _, b in zip(range(2), trainer.get_train_dataloader(), strict=False)]
    assert len(batches) == 2  # one epoch holds more than max_steps batches
    real = sum(int(batch_token_counts(b)[0]) for b in batches)
    total = sum(batch_token_counts(b)[1] for b in batches)
    assert metrics["seen_tokens"] == real > 0
    assert metrics["real_token_fraction"] == round(real / total, 4)
    if extra:
        assert 0 < metrics["packing_fill"] <= 1
    else:
        assert "packing_fill" not in metrics
