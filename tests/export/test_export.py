"""Export helpers: loss plot, model card, generation eos ids."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

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


def test_model_card_lists_the_rows_dropped_by_reason(tmp_path):
    training = SimpleNamespace(output_dir=str(tmp_path / "run1"), num_train_epochs=1, max_steps=-1,
                               per_device_train_batch_size=8, gradient_accumulation_steps=1, learning_rate=1e-4,
                               lr_scheduler_type="cosine", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
                               bf16=False, fp16=False, seed=3)  # fmt: skip
    dropped = {"exceeds_max_length": 12, "bad_content_type": 2}
    text = write_model_card(
        tmp_path / "a.md", "base", "Data: d.jsonl", training, {}, {}, dropped=dropped
    ).read_text()
    table = "Rows dropped before training:\n\n| reason | rows |\n|---|---|\n| exceeds_max_length | 12 |\n"
    assert table + "| bad_content_type | 2 |\n" in text
    assert text.index("Data: d.jsonl") < text.index(table) < text.index("## Hyperparameters")
    none = write_model_card(
        tmp_path / "b.md", "base", "Data: d.jsonl", training, {}, {}, dropped={}
    ).read_text()
    assert "Rows dropped: none." in none


def test_generation_eos_ids_put_end_of_turn_first():
    tok = SimpleNamespace(eos_token_id=7)
    assert generation_eos_ids(tok, [3]) == [3, 7]
    assert generation_eos_ids(tok, [7]) == [7]
    assert generation_eos_ids(SimpleNamespace(eos_token_id=None), [3]) == [3]


@pytest.mark.slow
def test_full_fine_tuning_saves_in_the_checkpoints_dtype(tmp_path, make_tiny_model, capsys):
    """A bf16 checkpoint trains as fp32 master weights (torch_dtype: auto) and is saved as bf16 again, the size
    users expect; an explicit torch_dtype is saved as trained."""
    import json

    from safetensors import safe_open

    from sftforge.config import load_config
    from sftforge.train.run import run_training

    model = make_tiny_model("qwen2", dtype="bfloat16")
    data = tmp_path / "t.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Say {i}"}, {"role": "assistant", "content": str(i)}]}
            for i in range(8)]  # fmt: skip
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")

    def train(out: str, *extra: str) -> set[str]:
        run_training(load_config(None, ["--model_name_or_path", str(model), "--train_data_path", str(data),
                                        "--output_dir", str(tmp_path / out), "--max_steps", "2",
                                        "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true",
                                        *extra]))  # fmt: skip
        with safe_open(str(tmp_path / out / "model.safetensors"), "pt") as f:
            return {str(f.get_slice(k).get_dtype()) for k in f.keys()}  # noqa: SIM118

    assert train("auto") == {"BF16"}
    assert (
        "saved in bfloat16, the checkpoint's dtype (trained with fp32 master weights)"
        in capsys.readouterr().out
    )
    assert train("fp32", "--torch_dtype", "float32") == {"F32"}
