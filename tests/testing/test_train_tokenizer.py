"""`sftforge train-tokenizer`: a byte-level BPE with the chat template's special tokens, saved as a folder that
AutoTokenizer (and `tokenizer_name`) loads."""

from __future__ import annotations

import json

import pytest

from sftforge.cli import main

TEXTS = [f"The river number {i} runs past the hill, and the lake {i % 5} is calm today." for i in range(200)]


def test_train_tokenizer_chatml(tmp_path, capsys):
    data = tmp_path / "corpus.txt"
    data.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    rows = tmp_path / "more.jsonl"
    rows.write_text(json.dumps({"text": "你好，世界"}) + "\n", encoding="utf-8")
    out = tmp_path / "tok"
    assert (
        main(["train-tokenizer", "--data", str(data), str(rows), "--vocab_size", "400", "--out", str(out)])
        == 0
    )
    assert "201 documents" in capsys.readouterr().out

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>" and len(tok) <= 400
    text = "The river number 7 runs past 你好"
    assert tok.decode(tok(text)["input_ids"]) == text
    rendered = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert rendered == "<|im_start|>user\nhi<|im_end|>\n"


def test_train_tokenizer_jinja_markers_become_special(tmp_path):
    data = tmp_path / "corpus.txt"
    data.write_text("\n".join(TEXTS), encoding="utf-8")
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}<|start|>{{ m['content'] }}<|end|>{% endfor %}")
    out = tmp_path / "tok"
    assert main(["train-tokenizer", "--data", str(data), "--vocab_size", "400", "--out", str(out),
                 "--chat_template", str(template)]) == 0  # fmt: skip

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    assert tok.convert_tokens_to_ids(["<|start|>", "<|end|>"]) == [3, 4]
    assert len(tok("<|start|>x<|end|>")["input_ids"]) == 3


def test_train_tokenizer_errors(tmp_path, capsys):
    assert main(["train-tokenizer", "--data", str(tmp_path / "none.txt"), "--out", str(tmp_path / "o")]) != 0
    assert "--data" in capsys.readouterr().err
    data = tmp_path / "c.txt"
    data.write_text("hello\n")
    with pytest.raises(SystemExit):
        main(["train-tokenizer", "--data", str(data)])  # --out is required
    assert main(["train-tokenizer", "--data", str(data), "--out", str(tmp_path / "o"),
                 "--chat_template", "llama9"]) != 0  # fmt: skip
    assert "chatml" in capsys.readouterr().err
