"""Export helpers: loss plot, model card, generation eos ids."""

from __future__ import annotations

from types import SimpleNamespace

from sftforge.export.model_card import write_model_card
from sftforge.export.plot import plot_loss
from sftforge.export.save import generation_eos_ids


def test_plot_loss_writes_png_with_train_and_eval(tmp_path):
    history = [{"step": s, "loss": 3.0 / s} for s in range(1, 11)] + [{"step": 5, "eval_loss": 0.9}]
    path = plot_loss(history, tmp_path / "loss.png")
    assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_loss([{"step": 1, "train_runtime": 3.0}], tmp_path / "none.png") is None


def test_model_card_names_base_data_hparams_metrics(tmp_path):
    training = SimpleNamespace(output_dir=str(tmp_path / "run1"), num_train_epochs=2, max_steps=-1,
                               per_device_train_batch_size=8, gradient_accumulation_steps=2, learning_rate=1e-4,
                               lr_scheduler_type="cosine", warmup_steps=0.1, weight_decay=0.0, max_grad_norm=1.0,
                               bf16=False, fp16=False, seed=3)  # fmt: skip
    card = write_model_card(tmp_path / "README.md", "Qwen/Qwen2.5-0.5B", "Train: data.jsonl", training,
                            {"max_length": 512}, {"eval_loss": 1.23456})  # fmt: skip
    text = card.read_text()
    assert "base_model: Qwen/Qwen2.5-0.5B" in text and "Train: data.jsonl" in text
    assert "| gradient_accumulation_steps | 2 |" in text and "| max_length | 512 |" in text
    assert "| eval_loss | 1.235 |" in text


def test_generation_eos_ids_put_end_of_turn_first():
    tok = SimpleNamespace(eos_token_id=7)
    assert generation_eos_ids(tok, [3]) == [3, 7]
    assert generation_eos_ids(tok, [7]) == [7]
    assert generation_eos_ids(SimpleNamespace(eos_token_id=None), [3]) == [3]
