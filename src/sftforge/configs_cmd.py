"""`sftforge configs`: the shipped launch configs, and `sftforge configs copy NAME [DEST]` to edit one.

Wired into the CLI by `cli.py` through `add_arguments` and `run`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sftforge.launch import resolve_accelerate_config
from sftforge.launch_configs import NAMED, copy_config, shipped


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="{list,copy}")
    sub.add_parser("list", help="names, purposes and files (the default)")
    copy = sub.add_parser(
        "copy",
        help="copy a config (and its DeepSpeed JSON) into DEST/configs/ for editing",
        description="Copies configs/accelerate/NAME.yaml (and configs/deepspeed/NAME.json for DeepSpeed) into "
        "DEST/configs/, the shipped layout. Run from DEST, `--accelerate_config NAME` then uses your copy.",
    )
    copy.add_argument("name", choices=NAMED, metavar="NAME", help=", ".join(NAMED))
    copy.add_argument(
        "dest", nargs="?", default=".", metavar="DEST", help="project folder (default: the current one)"
    )
    copy.add_argument("--force", action="store_true", help="overwrite an existing copy")


def list_lines() -> list[str]:
    """One block per name: purpose, the file `--accelerate_config NAME` uses here, and its DeepSpeed JSON."""
    lines = ["launch configs (sftforge train RECIPE --accelerate_config NAME --num_processes N):", ""]
    for name in NAMED:
        config = shipped(name)
        used = resolve_accelerate_config(name)
        lines.append(f"  {name:<14} {config.purpose}")
        lines.append(f"  {'':<14} {used}" + ("" if used == config.accelerate.resolve() else "  (your copy)"))
        if config.deepspeed is not None:
            lines.append(f"  {'':<14} {config.deepspeed}  (also: --deepspeed {name})")
    lines += [
        "",
        "edit one: sftforge configs copy NAME [DEST]  (writes DEST/configs/..., used when run from DEST)",
    ]
    return lines


def run(args: argparse.Namespace) -> int:
    if args.action == "copy":
        written = copy_config(args.name, Path(args.dest), args.force)
        for path in written:
            print(f"wrote {path}")
        print(
            f"from {Path(args.dest).resolve()}, `--accelerate_config {args.name}` now uses your copy "
            f"(or pass its path: --accelerate_config {written[0]})"
        )
        return 0
    print("\n".join(list_lines()))
    return 0
