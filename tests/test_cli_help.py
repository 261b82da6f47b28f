"""Sub-command help shows each default once, and only defaults worth naming."""

from __future__ import annotations

import argparse

from sftforge.cli_help import show_defaults, wrap_labelled


def _help(parser: argparse.ArgumentParser) -> str:
    return " ".join(show_defaults(parser).format_help().split())


def test_defaults_are_shown_once_and_only_when_there_is_one():
    parser = argparse.ArgumentParser(prog="p")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    parser.add_argument("--seed", type=int, default=0)  # no help text, and a falsy default: still shown
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--base", default=None, help="base model")
    parser.add_argument("--trust_remote_code", action="store_true", help="run hub code")
    parser.add_argument("--key", default="s3cret", help="API key (default: $KEY; none = no key)")
    text = _help(parser)
    assert "port to listen on (default: 8000)" in text
    assert "--seed SEED default: 0" in text
    assert "0 = greedy (default: 0.0)" in text
    assert "base model" in text and "default: None" not in text
    assert "run hub code" in text and "default: False" not in text
    assert "s3cret" not in text and text.count("default") == 4  # the key's own words name its default


def test_wrap_labelled_keeps_words_whole_under_the_column():
    text = "merge a LoRA adapter into its base, verified, as a plain model folder"
    lines = wrap_labelled("merge", text, 40, 12)
    assert lines[0].startswith("  merge     ") and all(len(line) <= 40 for line in lines)
    assert all(line.startswith(" " * 12) for line in lines[1:])
    assert " ".join(lines).split() == ["merge", *text.split()]  # every word, whole, in order
    assert wrap_labelled("a_very_long_label", "text", 40, 12) == ["  a_very_long_label", " " * 12 + "text"]
