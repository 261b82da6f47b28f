"""Help text for the sub-commands: every default shown, lines wrapped at word boundaries to the terminal."""

from __future__ import annotations

import argparse
import shutil
import textwrap


def terminal_width() -> int:
    """The terminal's width (COLUMNS wins), kept within what reads well."""
    return max(80, min(shutil.get_terminal_size((110, 24)).columns, 120))


def wrap_labelled(label: str, text: str, width: int, column: int) -> list[str]:
    """`label` then `text` from `column` on, wrapped at word boundaries (a long label gets a line of its own).
    A non-breaking space in `text` keeps its two words on one line."""
    lines = textwrap.wrap(text, width - column, break_long_words=False, break_on_hyphens=False) or [""]
    lines = [line.replace("\xa0", " ") for line in lines]
    label = f"  {label}"
    if len(label) >= column:
        return [label, *(" " * column + line for line in lines)]
    return [f"{label:<{column}}{lines[0]}".rstrip(), *(" " * column + line for line in lines[1:])]


def show_defaults(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Append `(default: X)` to each argument's help, unless the help already names its default or there is
    none to name (None, a flag's False). Unlike argparse.ArgumentDefaultsHelpFormatter it also covers arguments
    without a help text, and it never prints an environment-derived default the help only refers to."""
    for action in parser._actions:  # argparse keeps no public list of the arguments
        nothing = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if nothing or action.help == argparse.SUPPRESS:
            continue
        text = action.help or ""
        if "default" in text.lower():
            continue
        action.help = f"{text} (default: %(default)s)" if text else "default: %(default)s"
    return parser


def command_parser(prog: str, description: str, **kwargs) -> argparse.ArgumentParser:
    """A sub-command's parser: its description kept as written (wrapped by the caller, to keep its sections)."""
    return argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs
    )
