"""`sftforge inspect`: highlighted examples, stats, and --json that equals what the trainer consumes."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

from sftforge import inspect_data
from sftforge.cli import main
from sftforge.config import load_config
from sftforge.data.collate import PaddingCollator

ROWS = [
    {
        "messages": [
            {"role": "user", "content": f"Question {i}?"},
            {"role": "assistant", "content": f"Answer {i}."},
        ]
    }
    for i in range(10)
] + [{"instruction": "Say hi", "input": "", "output": "hi"}]


@pytest.fixture
def recipe(tmp_path: Path, tiny_model_dir: Path) -> Path:
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    path = tmp_path / "recipe.yaml"
    path.write_text(
        f"model_name_or_path: {tiny_model_dir}\ntrain_data_path: {data}\nmax_length: 64\n"
        f"output_dir: {tmp_path / 'out'}\nper_device_train_batch_size: 4\n"
    )
    return path


def test_brackets_when_not_a_tty_and_stats(recipe: Path) -> None:
    out = io.StringIO()
    assert inspect_data.run([str(recipe), "--num_examples", "2"], stdout=out) == 0
    text = out.getvalue()
    assert "[[Answer 0.<|im_end|>]]" in text and "[[Answer 1.<|im_end|>]]" in text
    assert "Question 0?" in text and "[[Question" not in text
    assert "11 rows read, 11 kept; formats: messages 10, alpaca 1" in text
    assert "spans found by prefix 11" in text
    assert "\x1b[" not in text


def test_colour_on_a_terminal(recipe: Path) -> None:
    out = io.StringIO()
    inspect_data.run([str(recipe), "--num_examples", "1", "--color", "always"], stdout=out)
    assert "\x1b[1;32mAnswer 0.<|im_end|>\x1b[0m" in out.getvalue()


def test_overrides_apply(recipe: Path) -> None:
    out = io.StringIO()
    inspect_data.run([str(recipe), "--num_examples", "1", "--train_on", "all"], stdout=out)
    assert out.getvalue().startswith("── example 0") and "[[<|im_start|>user\nQuestion 0?" in out.getvalue()


def test_json_is_exactly_what_the_trainer_consumes(recipe: Path, capsys) -> None:
    from sftforge.model.load import load_model
    from sftforge.train.run import build_trainer, prepare_tokenized_data

    assert main(["inspect", str(recipe), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == len(ROWS) and set(rows[0]) == {"input_ids", "labels"}

    # Build the real trainer from the same recipe, iterating in order, and compare batch for batch.
    cfg = load_config(recipe, ["--train_sampling_strategy", "sequential"])
    bundle, data = prepare_tokenized_data(cfg)
    trainer = build_trainer(cfg, bundle, data, load_model(cfg.model, False))
    collate = PaddingCollator(bundle.tokenizer.pad_token_id)
    batches = list(trainer.get_train_dataloader())
    assert len(batches) == 3
    for k, batch in enumerate(batches):
        expected = collate(rows[4 * k : 4 * k + 4])
        for key in ("input_ids", "labels", "attention_mask"):
            assert torch.equal(batch[key], expected[key]), (k, key)


def test_bad_recipe_is_a_clear_error(tmp_path: Path, capsys) -> None:
    assert main(["inspect", "--model_name_or_path", "m", "--train_data_path", str(tmp_path / "x.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_no_recipe_all_keys_as_overrides(recipe: Path, tiny_model_dir: Path) -> None:
    data = recipe.parent / "train.jsonl"
    out = io.StringIO()
    argv = [
        "--model_name_or_path",
        str(tiny_model_dir),
        "--train_data_path",
        str(data),
        "--num_examples",
        "1",
    ]
    assert inspect_data.run(argv, stdout=out) == 0
    assert "[[Answer 0.<|im_end|>]]" in out.getvalue()


def test_bad_policy_names_the_key(recipe: Path, capsys) -> None:
    assert main(["inspect", str(recipe), "--train_on", "everything"]) == 2
    assert (
        "train_on: 'everything' is not one of all_assistant, last_assistant, all" in capsys.readouterr().err
    )


def test_split_rows_are_shown_with_their_turn_and_reported(recipe: Path) -> None:
    out = io.StringIO()
    assert inspect_data.run([str(recipe), "--num_examples", "1", "--multi_turn", "split"], stdout=out) == 0
    text = out.getvalue()
    assert "train.jsonl:1#turn1 ·" in text.splitlines()[0]
    assert (
        " decision     multi_turn split: 11 of 11 rows split into 11 examples, one per trained assistant turn"
        in text
    )
    assert "(as multi_turn: split asks)" in text  # why


def test_lengths_are_shown_and_too_many_long_rows_are_a_warning_not_the_training_error(
    recipe: Path, tiny_model_dir: Path
) -> None:
    from collections import Counter

    from transformers import AutoTokenizer

    from sftforge.data.lengths import distribution, percentile

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    data = recipe.parent / "train.jsonl"
    long = {
        "messages": [{"role": "user", "content": "Story?"}, {"role": "assistant", "content": "word " * 100}]
    }
    data.write_text(data.read_text() + json.dumps(long) + "\n")  # 1 of 12 rows (8.3%) over max_length 64
    alpaca = {"messages": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}]}
    lengths = Counter(
        len(
            tok(tok.apply_chat_template(r["messages"], tokenize=False), add_special_tokens=False)["input_ids"]
        )
        for r in [*ROWS[:10], alpaca, long]
    )
    out = io.StringIO()
    assert inspect_data.run([str(recipe), "--num_examples", "0"], stdout=out) == 0
    lines = out.getvalue().splitlines()
    assert (
        f" lengths      {distribution(lengths)} per row before truncation; max_length {percentile(lengths, 0.99)} "
        "keeps 99% of rows whole"
    ) in lines
    warning = next(line for line in lines if "⚠ dropped" in line)
    assert warning.startswith(
        " ⚠ dropped 1 of 12 train rows (8.3%) longer than max_length=64 (exceeds_max_length: 1), more than "
        "max_dropped_fraction=0.05: `sftforge train` stops"
    )


def test_preference_pairs_show_the_scored_answers_and_json_is_trls_features(
    tmp_path: Path, tiny_model_dir: Path
):
    """stage dpo: each pair's chosen and rejected sequences with only the answer marked; --json gives the
    {prompt_ids, chosen_ids, rejected_ids} the DPO trainer reads, one line per pair."""
    data = tmp_path / "pairs.jsonl"
    pairs = [
        {"prompt": f"Question {i}?", "chosen": f"Right {i}.", "rejected": f"Wrong {i}."} for i in range(4)
    ]
    data.write_text("\n".join(json.dumps(r) for r in pairs) + "\n")
    args = ["--model_name_or_path", str(tiny_model_dir), "--train_data_path", str(data), "--stage", "dpo",
            "--output_dir", str(tmp_path / "out")]  # fmt: skip
    out = io.StringIO()
    assert inspect_data.run([*args, "--num_examples", "1"], stdout=out) == 0
    text = out.getvalue()
    assert f"── pair 0 · {data}:1#chosen" in text and f"── pair 0 · {data}:1#rejected" in text
    assert "[[Right 0.<|im_end|>]]" in text and "[[Wrong 0.<|im_end|>]]" in text
    assert "[[Question" not in text and "split        4 train / 0 eval pairs" in text
    out = io.StringIO()
    assert inspect_data.run([*args, "--json"], stdout=out) == 0
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 4 and set(lines[0]) == {"prompt_ids", "chosen_ids", "rejected_ids"}
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert tok.decode(lines[2]["chosen_ids"]) == "Right 2.<|im_end|>"
    assert tok.decode(lines[2]["prompt_ids"]).endswith("Question 2?<|im_end|>\n<|im_start|>assistant\n")
