"""`sftforge train … --accelerate_config zero3 --num_processes 8`: run the same command under `accelerate launch`.

sftforge never starts processes or sets up communication itself. It builds the `accelerate launch` command line
(the config file, the process and machine flags) and runs it. Each launched process then runs
`python -m sftforge train` with the same recipe and overrides, minus the launch keys. Inside a launched process
(WORLD_SIZE is set by accelerate, torchrun or deepspeed) no second launch happens.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from sftforge.errors import ConfigError
from sftforge.launch_configs import NAMED, config_dirs

TEMP_PREFIX = "sftforge-launch-"
LAUNCH_KEYS = ("accelerate_config", "num_processes", "num_machines", "machine_rank", "main_process_ip",
               "main_process_port")  # fmt: skip
FSDP_NEEDS_GPU = (
    "FSDP needs GPUs: accelerate turns its FSDP plugin on only for GPU-type devices; on CPU the processes would "
    "train plain DDP (with use_cpu) or not in sync at all (without). PyTorch's fully_shard itself runs on CPU, but "
    "not through the Trainer. To try sharded training on CPU use DeepSpeed ZeRO-3: --accelerate_config zero3 "
    "(`sftforge configs` shows the file)."
)


def inside_launched_process() -> bool:
    return "WORLD_SIZE" in os.environ or "LOCAL_RANK" in os.environ


def resolve_accelerate_config(value: str) -> Path:
    """A path as given, or a shipped name (ddp, zero2, zero3, zero3_offload, fsdp2)."""
    path = Path(value).expanduser()
    if path.is_file():
        return path.resolve()
    for root in config_dirs():
        candidate = root / "accelerate" / f"{value}.yaml"
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigError(
        f"accelerate_config: {value!r} is neither a file nor one of the shipped configs ({', '.join(NAMED)}; "
        f"looked in {' and '.join(str(d / 'accelerate') for d in config_dirs())}). `sftforge configs` lists them.",
        "accelerate_config",
    )


def with_absolute_paths(config: Path, doc: dict[str, Any]) -> Path:
    """A copy of an accelerate config (`doc`, read from `config`) whose DeepSpeed JSON path is absolute, so the
    launch works from any folder. Relative JSON paths are looked up beside the config's `configs/` folder, then from
    the current folder."""
    ds = doc.get("deepspeed_config") or {}
    json_path = ds.get("deepspeed_config_file")
    if not json_path or Path(json_path).is_absolute():
        return config
    for base in (config.parent.parent.parent, Path.cwd()):
        if (base / json_path).is_file():
            ds["deepspeed_config_file"] = str((base / json_path).resolve())
            break
    else:
        raise ConfigError(
            f"accelerate_config: {config} names deepspeed_config_file {json_path!r}, which does not exist.",
            "accelerate_config",
        )
    out = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX)) / config.name
    out.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return out


def check_launch_keys(launch: Any) -> None:
    """The launch keys against each other, refused before any process starts: a process or node count without a
    launch config, and a multi-node setup that accelerate would reject or that would hang waiting for peers."""
    problems = []
    given = [k for k in LAUNCH_KEYS[1:] if getattr(launch, k) is not None]
    if given and not launch.accelerate_config:
        problems.append(
            f"{', '.join(given)} set without accelerate_config: name a launch config "
            "(--accelerate_config ddp|zero2|zero3|zero3_offload|fsdp2 or a file), or start sftforge with "
            "`accelerate launch` / `torchrun` yourself."
        )
    machines, rank = launch.num_machines, launch.machine_rank
    if machines is not None and machines < 1:
        problems.append(f"num_machines: {machines} must be at least 1.")
    elif machines and machines > 1:
        if rank is None or not 0 <= rank < machines:
            problems.append(
                f"machine_rank: {'missing' if rank is None else rank} — with num_machines: {machines} each machine "
                f"needs its own rank, 0 on the main machine and 1 … {machines - 1} on the others."
            )
        if not launch.main_process_ip:
            problems.append(
                f"main_process_ip: missing — with num_machines: {machines} every machine needs the address of the "
                "machine with machine_rank 0 (reachable from all of them)."
            )
        if launch.num_processes is None:
            problems.append(
                f"num_processes: missing — with num_machines: {machines} give the processes of all machines "
                f"together (e.g. {8 * machines} for {machines} machines of 8 GPUs); the config's own value counts "
                "all machines too, so 8 would leave half of each machine's GPUs idle."
            )
        elif launch.num_processes % machines:
            problems.append(
                f"num_processes: {launch.num_processes} counts the processes of all machines together and must "
                f"divide evenly over num_machines: {machines}."
            )
    elif rank:
        problems.append(
            f"machine_rank: {rank} needs num_machines (the number of machines, more than {rank})."
        )
    if problems:
        raise ConfigError(problems, "launch")


def strip_launch_overrides(argv: list[str]) -> list[str]:
    """The command line without the launch keys (`--key value` and `--key=value`)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg[2:].split("=", 1)[0] if arg.startswith("--") else None
        if name in LAUNCH_KEYS:
            skip = "=" not in arg
            continue
        out.append(arg)
    return out


def mixed_precision_of(training: Any) -> str:
    """The recipe decides the precision, not the launch config's `mixed_precision` line."""
    return "bf16" if training.bf16 else "fp16" if training.fp16 else "no"


def check_launchable(doc: dict[str, Any]) -> None:
    """Refuse here, once, what every launched process would refuse (no GPU for FSDP)."""
    if str(doc.get("distributed_type", "")).upper() == "FSDP":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(FSDP_NEEDS_GPU, "accelerate_config")


def check_deepspeed_precision(doc: dict[str, Any], mixed_precision: str) -> None:
    """The config's DeepSpeed JSON against the recipe's precision, refused here before any process starts (each
    process would refuse it too, config/precision.py)."""
    from sftforge.config.precision import deepspeed_precision_conflicts, read_deepspeed_json

    json_path = (doc.get("deepspeed_config") or {}).get("deepspeed_config_file")
    if not json_path:
        return
    ds, error = read_deepspeed_json(json_path)
    problems = [error] if error else []
    if ds is not None:
        why = f"the recipe's precision, passed as --mixed_precision {mixed_precision}"
        problems += deepspeed_precision_conflicts(ds, mixed_precision == "bf16", mixed_precision == "fp16",
                                                  json_path, why)  # fmt: skip
    if problems:
        raise ConfigError(problems, "accelerate_config")


def launch_command(launch: Any, train_argv: list[str], mixed_precision: str | None = None) -> list[str]:
    config = resolve_accelerate_config(launch.accelerate_config)
    doc: dict[str, Any] = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    check_launchable(doc)
    config = with_absolute_paths(config, doc)
    if mixed_precision:
        check_deepspeed_precision(doc, mixed_precision)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    if mixed_precision:
        cmd += ["--mixed_precision", mixed_precision]
    for key in LAUNCH_KEYS[1:]:
        value = getattr(launch, key)
        if value is not None:
            cmd += [f"--{key}", str(value)]
    return [*cmd, "-m", "sftforge", "train", *strip_launch_overrides(train_argv)]


def launch(launch_args: Any, train_argv: list[str], mixed_precision: str | None = None) -> int:
    cmd = launch_command(launch_args, train_argv, mixed_precision)
    print("sftforge: launching " + shlex.join(cmd), flush=True)
    config = Path(cmd[cmd.index("--config_file") + 1])
    try:
        return subprocess.call(cmd)
    finally:  # the copy with absolute paths lives as long as the run
        if config.parent.name.startswith(TEMP_PREFIX):
            shutil.rmtree(config.parent, ignore_errors=True)
