"""`sftforge train-tokenizer --data … --vocab_size 6400 --out DIR`: a byte-level BPE tokenizer for training from
scratch, saved as a Hugging Face tokenizer folder that `tokenizer_name_or_path` (alias `tokenizer_name`) loads.

The tokenizer is `tiny.train_bpe_tokenizer`'s (Qwen2's pre-tokenizer, every byte encodable, no BOS) with the
special tokens of the chat template: ChatML's `<|endoftext|>` (pad, id 0), `<|im_start|>` (1), `<|im_end|>` (eos,
2) by default — MiniMind's 6400-token tokenizer has exactly these three first — plus any `<|…|>` marker a
`.jinja` template of your own writes. Wired into the CLI by `cli.py` through `add_arguments` and `run`.
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Iterator
from pathlib import Path

from sftforge.errors import ConfigError, DataError
from sftforge.testing.init_model_cmd import json_strings

CHAT_TEMPLATES = ("chatml",)
_MARKER = re.compile(r"<\|[A-Za-z0-9_]+\|>")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        nargs="+",
        required=True,
        metavar="PATH",
        help="training text: .txt (one document per line), .jsonl/.json/.parquet/.csv files, folders or globs",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write the tokenizer to")
    parser.add_argument(
        "--vocab_size", type=int, default=6400, help="tokens in all, special tokens included (MiniMind: 6400)"
    )
    parser.add_argument(
        "--chat_template",
        default="chatml",
        help="chatml (default), or a .jinja file: its <|…|> markers become special tokens too",
    )
    parser.add_argument(
        "--text_column",
        default="text",
        help="the column holding the text in .jsonl/.json/.parquet/.csv rows; rows without it give all their "
        "string values (e.g. conversations)",
    )
    parser.add_argument(
        "--txt_documents", choices=("line", "blank_line", "file"), default="line", help="how .txt files split"
    )
    parser.add_argument(
        "--max_documents",
        type=int,
        default=None,
        help="train on at most this many documents (the first ones)",
    )
    parser.add_argument(
        "--model_max_length", type=int, default=2048, help="saved as the tokenizer's model_max_length"
    )


def iter_texts(paths: list[str], text_column: str, txt_documents: str) -> Iterator[str]:
    """The texts of the data files (the readers of `sftforge train`, .txt included)."""
    from sftforge.data.readers import iter_rows, resolve_key_files

    for path in resolve_key_files(paths, "--data", text_files=True):
        for row in iter_rows(path, text_column, txt_documents):
            if row.error is not None or not isinstance(row.row, dict):
                continue  # the tokenizer needs text, not perfect rows
            value = row.row.get(text_column)
            if isinstance(value, str):
                yield value
            else:
                yield from json_strings(row.row)


def template_of(spec: str) -> tuple[str, list[str]]:
    """(chat template text, extra special tokens) for `--chat_template`."""
    from sftforge.data.templates import DEFAULT_CHAT_TEMPLATE

    if spec == "chatml":
        return DEFAULT_CHAT_TEMPLATE, []
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"--chat_template: {spec!r} is neither one of {', '.join(CHAT_TEMPLATES)} nor a .jinja file."
        )
    text = path.read_text(encoding="utf-8")
    return text, list(dict.fromkeys(_MARKER.findall(text)))


def run(args: argparse.Namespace) -> int:
    from sftforge.testing.tiny import train_bpe_tokenizer

    template, extra = template_of(args.chat_template)
    texts = iter_texts(args.data, args.text_column, args.txt_documents)
    if args.max_documents is not None:
        texts = (t for i, t in zip(range(args.max_documents), texts, strict=False))
    seen = {"documents": 0, "chars": 0}

    def counted() -> Iterator[str]:
        for text in texts:
            seen["documents"] += 1
            seen["chars"] += len(text)
            yield text

    started = time.perf_counter()
    tokenizer = train_bpe_tokenizer(
        counted(),
        vocab_size=args.vocab_size,
        chat_template=template,
        extra_special_tokens=extra,
        model_max_length=args.model_max_length,
    )
    if not seen["documents"]:
        raise DataError(
            f"--data: no text found in {', '.join(args.data)}; the tokenizer needs something to learn."
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out)
    specials = ", ".join(f"{t} ({tokenizer.convert_tokens_to_ids(t)})" for t in tokenizer.all_special_tokens)
    print(
        f"train-tokenizer: byte-level BPE, {len(tokenizer)} tokens (asked {args.vocab_size}) from "
        f"{seen['documents']:,} documents ({seen['chars']:,} characters) in {time.perf_counter() - started:.1f} s; "
        f"special: {specials}; eos {tokenizer.eos_token}; saved to {out}\n"
        f"use it: sftforge train --stage pt --config_name CONFIG --tokenizer_name {out} ...",
        flush=True,
    )
    return 0
