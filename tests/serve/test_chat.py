"""`sftforge chat`: renders with the model's own template, streams, handles /reset and /exit."""

from __future__ import annotations

import argparse
import io

import pytest

from sftforge.serve import chat
from sftforge.serve.chat import generate_reply, load_for_chat


def _args(model) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    chat.add_arguments(parser)
    return parser.parse_args([str(model), "--max_new_tokens", "5", "--system", "Be brief."])


def test_chat_session_streams_and_resets(tiny_model_dir):
    stdin = io.StringIO("hello\n/reset\nagain\n/exit\nnever read\n")
    stdout = io.StringIO()
    assert chat.run(_args(tiny_model_dir), stdin=stdin, stdout=stdout) == 0
    text = stdout.getvalue()
    assert text.count("model> ") == 2  # two questions answered; the line after /exit is never read
    assert "(history cleared)" in text


def test_streamed_reply_equals_plain_generation(tiny_model_dir):
    tokenizer, model = load_for_chat(str(tiny_model_dir))
    messages = [{"role": "user", "content": "Tell me about the moon"}]
    sink = io.StringIO()
    streamed = generate_reply(tokenizer, model, messages, max_new_tokens=6, stream=sink)
    plain = generate_reply(tokenizer, model, messages, max_new_tokens=6)
    assert streamed == plain == sink.getvalue()


def test_missing_model_is_a_clear_error(tmp_path):
    from sftforge.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot load"):
        load_for_chat(str(tmp_path / "nope"))
