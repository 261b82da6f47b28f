"""Streaming text: never half a character, never part of a stop string, nothing after a tool-call marker."""

from __future__ import annotations

import pytest

from sftforge.serve.text_stream import TextStream


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def stream_all(stream: TextStream, ids: list[int]) -> list[str]:
    return [stream.add(i) for i in ids] + [stream.finish()]


def test_the_deltas_add_up_to_the_decoded_text_and_hold_no_broken_characters(tok):
    text = "你好，世界! Ünïcödé ok"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(text) // 2  # byte-level pieces: characters span several tokens
    deltas = stream_all(TextStream(tok, []), ids)
    assert "".join(deltas) == text
    assert not any("\ufffd" in d for d in deltas)


def test_a_stop_string_cuts_the_text_and_is_never_partly_sent(tok):
    ids = tok("alpha beta gamma delta", add_special_tokens=False)["input_ids"]
    stream = TextStream(tok, ["a gam", "zzz"])
    deltas = []
    for i in ids:
        deltas.append(stream.add(i))
        if stream.stopped:
            break
    deltas.append(stream.finish())
    assert "".join(deltas) == "alpha bet" and stream.stopped
    assert stream.text == "alpha bet"


def test_text_after_a_held_marker_is_kept_for_the_caller(tok):
    ids = tok('Sure. <tool_call>{"name": "f"}</tool_call>', add_special_tokens=False)["input_ids"]
    stream = TextStream(tok, [], hold=["<tool_call>"])
    sent = "".join(stream_all(stream, ids))
    assert sent == "Sure. "
    assert stream.held and stream.text.endswith("</tool_call>")


def test_a_cut_off_character_is_in_the_final_text(tok):
    ids = tok("好", add_special_tokens=False)["input_ids"]
    if len(ids) < 2:
        ids = tok("😀", add_special_tokens=False)["input_ids"]
    assert len(ids) >= 2
    stream = TextStream(tok, [])
    assert stream.add(ids[0]) == ""  # half a character: nothing sent yet
    assert stream.finish() == tok.decode(ids[:1])  # the generation ended there: the text is what was decoded
