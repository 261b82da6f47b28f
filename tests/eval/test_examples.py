"""Evaluation items come from the examples training builds: prompt = what precedes the last trained turn,
token for token; reference = that turn's text."""

from __future__ import annotations

import io
import json

import pytest

from sftforge.eval.examples import (
    item_from_example,
    last_trained_run,
    prepare_eval_examples,
    trained_data_options,
)

CONVERSATIONS = [
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello there"}, {"role": "user", "content": "Name a river"},
                  {"role": "assistant", "content": "The Nile, 尼罗河"}]},
    {"messages": [{"role": "user", "content": "Reverse: cat moon"}, {"role": "assistant", "content": "moon cat"}]},
]  # fmt: skip


def test_last_trained_run():
    assert last_trained_run([-100, 5, 6, -100, 7, 8, -100]) == (4, 6)
    assert last_trained_run([-100, 5, 6]) == (1, 3)
    assert last_trained_run([-100, -100]) is None
    assert last_trained_run([]) is None


def test_item_strips_end_of_turn_and_needs_a_prompt(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    answer = tok.encode("moon cat", add_special_tokens=False)
    item = item_from_example([1, 2, 3, *answer, eot], [-100, -100, -100, *answer, eot], tok, [eot], "f:1")
    assert (item.prompt_ids, item.reference_ids, item.reference, item.source) == (
        [1, 2, 3],
        answer,
        "moon cat",
        "f:1",
    )
    assert item_from_example([1, 2], [1, 2], tok, [eot]) is None  # everything trained: no prompt
    assert item_from_example([1, 2], [-100, -100], tok, [eot]) is None


def _write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_examples_are_what_inspect_and_training_see(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from sftforge import inspect_data

    data = _write(tmp_path / "test.jsonl", CONVERSATIONS)
    bundle, examples, stats = prepare_eval_examples(str(tiny_model_dir), [str(data)], {"max_length": 256})
    out = io.StringIO()
    inspect_data.run(["--model_name_or_path", str(tiny_model_dir), "--train_data_path", str(data),
                      "--max_length", "256", "--json"], stdout=out)  # fmt: skip
    assert [e.as_features() for e in examples] == [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e.source for e in examples] == [f"{data}:1", f"{data}:2"]

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    for row, example in zip(CONVERSATIONS, examples, strict=True):
        item = item_from_example(example.input_ids, example.labels, bundle.tokenizer, bundle.end_of_turn_ids)
        # the prompt is exactly the rendered history plus the generation prompt
        expected = tok.apply_chat_template(row["messages"][:-1], add_generation_prompt=True, tokenize=False)
        assert tok.decode(item.prompt_ids, skip_special_tokens=False) == expected
        assert item.reference == row["messages"][-1]["content"]


@pytest.mark.parametrize(
    "row",
    [
        {"instruction": "Reverse", "input": "cat moon", "output": "moon cat"},
        {
            "conversations": [
                {"from": "human", "value": "Reverse: cat moon"},
                {"from": "gpt", "value": "moon cat"},
            ]
        },
        {"prompt": "Reverse: cat moon", "completion": "moon cat"},
    ],
    ids=["alpaca", "sharegpt", "prompt-completion"],
)
def test_every_training_format_gives_items(tiny_model_dir, tmp_path, row):
    data = _write(tmp_path / "test.jsonl", [row])
    bundle, examples, _ = prepare_eval_examples(str(tiny_model_dir), [str(data)], {})
    item = item_from_example(
        examples[0].input_ids, examples[0].labels, bundle.tokenizer, bundle.end_of_turn_ids
    )
    assert item.reference == "moon cat"


def test_max_samples_keeps_file_order(tiny_model_dir, tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(5)]  # fmt: skip
    data = _write(tmp_path / "test.jsonl", rows)
    _, examples, _ = prepare_eval_examples(str(tiny_model_dir), [str(data)], {}, max_samples=3)
    assert [e.source.rsplit(":", 1)[1] for e in examples] == ["1", "2", "3"]


def test_trained_data_options(tmp_path):
    assert trained_data_options(tmp_path) == {}
    (tmp_path / "sftforge_config.yaml").write_text(
        "model: {model_name_or_path: m}\ndata: {max_length: 64, train_on: all, truncation: right, packing: true}\n"
    )
    assert trained_data_options(tmp_path) == {
        "max_length": 64,
        "train_on": "all_assistant",
        "truncation": "right",
    }
