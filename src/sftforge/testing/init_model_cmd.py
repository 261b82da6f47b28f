"""`sftforge init-model OUTPUT_DIR`: build a tiny randomly initialised model + locally trained tokenizer.

Wired into the CLI by `cli.py` through `add_arguments` and `run`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sftforge.errors import DataError
from sftforge.testing.tiny import ARCHITECTURES, TOKENIZERS, build_tiny_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", help="folder to write the model and tokenizer to")
    parser.add_argument("--arch", choices=list(ARCHITECTURES), default="qwen2", help="model architecture")
    parser.add_argument(
        "--corpus",
        nargs="+",
        metavar="FILE",
        default=None,
        help="text files (one text per line), or .json/.jsonl files whose string values are used, to train "
        "the tokenizer on (default: a built-in English/Chinese corpus)",
    )
    parser.add_argument(
        "--vocab_size", type=int, default=1024, help="tokenizer size, special tokens included"
    )
    parser.add_argument(
        "--tokenizer",
        choices=list(TOKENIZERS),
        default="bpe",
        help="bpe: byte-level BPE with a ChatML template (Qwen2-style); sentencepiece: Llama 2-style SentencePiece "
        "BPE with byte fallback and Llama 2's chat template (Metaspace pipeline, as transformers builds it); "
        "sentencepiece-legacy: the same with the legacy normalizer of Llama 2's tokenizer.json. "
        "SentencePiece needs an arch other than qwen2",
    )
    parser.add_argument("--hidden_size", type=int, default=64)
    parser.add_argument("--num_layers", type=int, default=2)
    parser.add_argument("--num_heads", type=int, default=4)
    parser.add_argument("--num_kv_heads", type=int, default=2)
    parser.add_argument("--intermediate_size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0, help="seed for the weights (same seed, same model)")


def json_strings(value: Any) -> Iterator[str]:
    """Every string value inside a JSON document, depth first (dict keys are field names, not text)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from json_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from json_strings(item)


def read_corpus(paths: list[str]) -> list[str]:
    """Texts from plain text files (one per non-empty line) and the string values of .json/.jsonl files."""
    texts: list[str] = []
    for name in paths:
        path = Path(name).expanduser()
        if not path.is_file():
            raise DataError(f"--corpus: file {name!r} does not exist. Give text, .json or .jsonl files.")
        try:
            raw = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(
                f"--corpus: {name} is not UTF-8 text ({exc.reason} at byte {exc.start})."
            ) from exc
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            for lineno, line in enumerate(raw.splitlines(), start=1):
                if line.strip():
                    texts.extend(json_strings(_parse_json(line, f"{name}:{lineno}")))
        elif suffix == ".json":
            texts.extend(json_strings(_parse_json(raw, name)))
        else:
            texts.extend(line for line in raw.splitlines() if line.strip())
    if not texts:
        raise DataError(
            f"--corpus: no text found in {', '.join(paths)}; the tokenizer needs something to learn."
        )
    return texts


def _parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno}).") from exc


def run(args: argparse.Namespace) -> int:
    texts = read_corpus(args.corpus) if args.corpus else None
    path = build_tiny_model(
        args.output_dir,
        arch=args.arch,
        texts=texts,
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
        num_kv_heads=args.num_kv_heads,
        intermediate_size=args.intermediate_size,
        seed=args.seed,
        tokenizer=args.tokenizer,
    )
    # Read the sizes back from the saved folder: that is what a user will load.
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    n_params = _count_parameters(path, tied=bool(config.get("tie_word_embeddings")))
    kind = "" if args.tokenizer == "bpe" else f" ({args.tokenizer} tokenizer)"
    print(
        f"init-model: {args.arch}{kind}, {n_params:,} parameters, vocab {config['vocab_size']}, saved to {path}"
    )
    return 0


def _count_parameters(path: Path, tied: bool) -> int:
    """Parameters in the saved safetensors; a tied lm_head is stored once (or not at all) and counted once."""
    from safetensors import safe_open

    total = 0
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            if tied and key == "lm_head.weight":
                continue
            numel = 1
            for dim in f.get_slice(key).get_shape():
                numel *= dim
            total += numel
    return total
