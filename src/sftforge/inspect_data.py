"""`sftforge inspect RECIPE.yaml [--num_examples N] [--json] [--key value ...]`: see exactly what will be trained.

Runs the same data path as `sftforge train` (no model is loaded): rendered examples with trained tokens
highlighted, and the dataset statistics, with the rows' length distribution and the max_length keeping 99% of
them (rows over max_length are a warning here, not the error training stops with). `--json` prints one
`{"input_ids": [...], "labels": [...]}` per training example, in order — what the trainer consumes — so anyone can
audit the masks with their own tools.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from typing import Any, TextIO

from sftforge.cli_help import command_parser, show_defaults, terminal_width, wrap_labelled
from sftforge.config import load_config
from sftforge.data.preview import highlight


def _description() -> str:
    width = terminal_width()
    return "\n".join(
        [
            "show exactly which tokens a recipe trains, and the dataset statistics",
            "",
            "positional arguments:",
            *wrap_labelled("RECIPE.yaml", _RECIPE_HELP, width, column=24),
            "",
            textwrap.fill(_OVERRIDES_HELP, width),
        ]
    )


_RECIPE_HELP = "a recipe as for `sftforge train` (optional: every key can also be given as --key value)"
_OVERRIDES_HELP = "Further --key value arguments override the recipe's keys, as for `sftforge train` (its --help lists them)."
_USAGE = (
    "%(prog)s [-h] [RECIPE.yaml] [--num_examples N] [--json]\n"
    "                        [--color {auto,always,never}] [--key value ...]"
)


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = command_parser("sftforge inspect", _description(), usage=_USAGE)
    parser.add_argument(
        "--num_examples", type=int, default=None, help="examples to show (default 3; all with --json)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per training example on stdout")
    parser.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="highlight trained tokens in colour",
    )
    show_defaults(parser)
    # The recipe is the first word when it is not a flag (as for `sftforge train`): a positional argparse argument
    # would swallow the value of the first override in `inspect --model_name_or_path M …`.
    recipe = argv[0] if argv and not argv[0].startswith("-") else None
    args, overrides = parser.parse_known_args(argv[1:] if recipe else argv)
    args.recipe = recipe
    return args, overrides


def run(argv: list[str], stdout: TextIO | None = None) -> int:
    stdout = stdout or sys.stdout  # looked up per call so redirections (and pytest's capture) apply
    args, overrides = parse_args(argv)  # first: --help and argument errors need no torch
    from sftforge.train.run import prepare_tokenized_data
    from sftforge.train.summary import data_summary_lines

    cfg = load_config(args.recipe, overrides)
    streamed = cfg.data.streaming  # a stream has no end to inspect: its first window, prepared as usual
    if streamed:
        cfg.data.streaming, cfg.data.max_samples = False, cfg.data.max_samples or cfg.data.streaming_buffer
    # A look at the data, not a run: too many rows over max_length is a warning line here (with the lengths that
    # would fit them), not the error `sftforge train` stops with
    limit, cfg.data.max_dropped_fraction = cfg.data.max_dropped_fraction, 1.0
    bundle, data = prepare_tokenized_data(cfg)
    cfg.data.max_dropped_fraction = limit
    # stage dpo: each pair is two stored examples (chosen, rejected) and is shown and counted as one
    per = 2 if cfg.data.stage == "dpo" else 1
    if args.json:
        _write_json(data.train, cfg.data.stage, args.num_examples, stdout)
        return 0
    colour = args.color == "always" or (args.color == "auto" and stdout.isatty())
    tokenizer = bundle.tokenizer
    shown = data.train[: per * (3 if args.num_examples is None else args.num_examples)]
    word = "scored" if cfg.data.stage in ("dpo", "kto") else "trained"
    for k, example in enumerate(shown):
        trained = sum(label != -100 for label in example.labels)
        name = f"pair {k // 2} · {example.source}" if per == 2 else f"example {k} · {example.source}"
        stdout.write(
            f"── {name} · {len(example.input_ids)} tokens, {trained} {word} "
            f"({100 * trained / max(1, len(example.input_ids)):.0f}%) " + "─" * 8 + "\n"
        )
        stdout.write(highlight(tokenizer, example.input_ids, example.labels, colour) + "\n\n")
    legend = "bold green" if colour else "[[double brackets]]"
    if word == "scored":
        stdout.write(
            f"The answer tokens the preference loss scores are shown in {legend}; the prompt is context.\n"
        )
    else:
        stdout.write(f"Trained tokens are shown in {legend}; everything else is context only.\n")
    note = (
        [f" streaming: the first {cfg.data.max_samples} rows (one streaming_buffer window)"]
        if streamed
        else []
    )
    stdout.write("\n".join(["─" * 72, *note, *data_summary_lines(cfg, data), "─" * 72]) + "\n")
    return 0


def _write_json(view: Any, stage: str, limit: int | None, stdout: TextIO) -> None:
    """One JSON object per training item as the trainer consumes it: `{"input_ids", "labels"}` per example, or TRL's
    `{"prompt_ids", "chosen_ids", "rejected_ids"}` per pair (stage dpo) / `{"prompt_ids", "completion_ids",
    "label"}` per rated answer (stage kto)."""
    if stage in ("dpo", "kto"):
        from sftforge.data.preference import kto_features, pair_features

        count = len(view) // 2 if stage == "dpo" else len(view)
        features = pair_features if stage == "dpo" else kto_features
        for i in range(count if limit is None else min(limit, count)):
            stdout.write(json.dumps(features(view, i)) + "\n")
        return
    for example in view if limit is None else view[:limit]:
        stdout.write(json.dumps(example.as_features()) + "\n")
