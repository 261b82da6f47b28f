"""`sftforge <command>`: one sub-command per user task."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from sftforge import __version__
from sftforge.errors import SftforgeError

COMMANDS = {
    "train": "fine-tune a model from a YAML recipe (+ --key value overrides)",
    "inspect": "show exactly which tokens a recipe trains, and the dataset statistics",
    "init-model": "build a tiny model of a real architecture offline (for tests and try-outs)",
    "train-tokenizer": "train a byte-level BPE tokenizer on your text (for training from scratch)",
    "chat": "chat with a model folder in the terminal",
    "serve": "an OpenAI-compatible API and a web chat page for a model folder (127.0.0.1 by default)",
    "merge": "merge a LoRA or IA3 adapter into its base, verified (logits and greedy tokens), as a plain model folder",
    "demo": "the offline demo: tiny model, shipped data, before/after answers and score",
    "eval": "loss, perplexity and generation metrics (exact match, ROUGE-L, BLEU) on held-out data; base vs tuned",
    "plan": "per-GPU memory per strategy (DDP, ZeRO, FSDP2) from the model config; recommends a setup",
    "configs": "the shipped launch configs (accelerate, DeepSpeed): list them, or copy one to edit",
}


def _usage() -> str:
    from sftforge.cli_help import terminal_width, wrap_labelled

    lines = [
        "usage: sftforge [-h] [-V] COMMAND [ARGS ...]",
        "",
        f"sftforge {__version__} — supervised fine-tuning on the Hugging Face stack",
        "",
        "commands:",
    ]
    for name, text in COMMANDS.items():
        lines += wrap_labelled(name, text, terminal_width(), column=19)
    lines += ["", "`sftforge COMMAND --help` for details."]
    return "\n".join(lines)


def _parser(
    command: str, add_arguments: Callable[[argparse.ArgumentParser], None]
) -> argparse.ArgumentParser:
    """The sub-command's parser, its help showing every default."""
    import textwrap

    from sftforge.cli_help import command_parser, show_defaults, terminal_width

    parser = command_parser(f"sftforge {command}", textwrap.fill(COMMANDS[command], terminal_width()))
    add_arguments(parser)
    return show_defaults(parser)


def _train(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        from sftforge.config.reference import argument_reference

        print(argument_reference())
        return 0
    recipe = argv[0] if argv and not argv[0].startswith("--") else None
    overrides = argv[1:] if recipe else argv
    from sftforge.config import load_config
    from sftforge.launch import check_launch_keys, inside_launched_process, launch, mixed_precision_of

    cfg = load_config(recipe, overrides)  # first: a recipe's mistakes are reported without importing torch
    if not inside_launched_process():  # inside one, the launch keys were used (and dropped) by the launcher
        check_launch_keys(cfg.launch)
    if cfg.launch.dry_run:
        from sftforge.train.dry_run import dry_run

        return dry_run(cfg, argv)
    if cfg.launch.accelerate_config and not inside_launched_process():
        return launch(cfg.launch, argv, mixed_precision_of(cfg.training))
    from sftforge.config.reporting import prepare_reporters
    from sftforge.train.run import run_training

    prepare_reporters(cfg.training)  # before the Trainer creates the reporters' callbacks
    run_training(cfg)
    from sftforge.train.shutdown import leave_distributed

    leave_distributed(0)  # in a multi-process run: exits here (see train/shutdown.py)
    return 0


def _inspect(argv: list[str]) -> int:
    from sftforge import inspect_data

    return inspect_data.run(argv)


def _init_model(argv: list[str]) -> int:
    from sftforge.testing import init_model_cmd

    parser = _parser("init-model", init_model_cmd.add_arguments)
    return init_model_cmd.run(parser.parse_args(argv))


def _train_tokenizer(argv: list[str]) -> int:
    from sftforge.testing import train_tokenizer_cmd

    parser = _parser("train-tokenizer", train_tokenizer_cmd.add_arguments)
    return train_tokenizer_cmd.run(parser.parse_args(argv))


def _chat(argv: list[str]) -> int:
    from sftforge.serve import chat

    parser = _parser("chat", chat.add_arguments)
    return chat.run(parser.parse_args(argv))


def _serve(argv: list[str]) -> int:
    from sftforge.serve import command

    parser = _parser("serve", command.add_arguments)
    return command.run(parser.parse_args(argv))


def _merge(argv: list[str]) -> int:
    from sftforge.export import merge

    parser = _parser("merge", merge.add_arguments)
    return merge.run(parser.parse_args(argv))


def _demo(argv: list[str]) -> int:
    from sftforge import demo

    parser = _parser("demo", demo.add_arguments)
    return demo.run(parser.parse_args(argv))


def _eval(argv: list[str]) -> int:
    from sftforge.eval import command

    parser = _parser("eval", command.add_arguments)
    return command.run(parser.parse_args(argv))


def _plan(argv: list[str]) -> int:
    from sftforge.plan import command

    parser = _parser("plan", command.add_arguments)
    return command.run(parser.parse_args(argv))


def _configs(argv: list[str]) -> int:
    from sftforge import configs_cmd

    parser = argparse.ArgumentParser(prog="sftforge configs", description=COMMANDS["configs"])
    configs_cmd.add_arguments(parser)
    return configs_cmd.run(parser.parse_args(argv))


HANDLERS = {
    "train": _train,
    "inspect": _inspect,
    "init-model": _init_model,
    "train-tokenizer": _train_tokenizer,
    "chat": _chat,
    "serve": _serve,
    "merge": _merge,
    "demo": _demo,
    "eval": _eval,
    "plan": _plan,
    "configs": _configs,
}


def _without_local_rank(argv: list[str]) -> list[str]:
    """The `deepspeed` launcher puts `--local_rank=N` before the command; the rank is in LOCAL_RANK as well."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            os.environ.setdefault("LOCAL_RANK", arg)
            skip = False
        elif arg == "--local_rank":
            skip = True
        elif arg.startswith("--local_rank="):
            os.environ.setdefault("LOCAL_RANK", arg.split("=", 1)[1])
        else:
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = _without_local_rank(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(__version__)
        return 0
    handler = HANDLERS.get(argv[0])
    if handler is None:
        import difflib

        close = difflib.get_close_matches(argv[0], list(HANDLERS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        print(f"sftforge: unknown command {argv[0]!r}.{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # we parallelise ourselves; avoids fork warnings
    try:
        return handler(argv[1:])
    except SftforgeError as e:
        print(f"sftforge {argv[0]}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
