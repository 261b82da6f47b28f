"""The launch configs sftforge ships (accelerate YAMLs and the DeepSpeed JSONs they name): where they are, what each
is for, and copies for editing.

They are package data (src/sftforge/configs/), so a wheel install has them; a source checkout also reaches them as
`configs/` at the repository root (a link to the same folder). A `configs/` folder in the current directory comes
first: that is where `sftforge configs copy` puts a copy, so an edited copy is what the name then means.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from pathlib import Path

import yaml

from sftforge.errors import ConfigError

# name -> what it is for (one line, shown by `sftforge configs`)
PURPOSES = {
    "ddp": "plain data parallel: every GPU holds the whole model",
    "zero2": "DeepSpeed ZeRO-2: gradients and optimizer states sharded",
    "zero3": "DeepSpeed ZeRO-3: weights sharded too, the model loads sharded",
    "zero3_offload": "ZeRO-3 with the weights and optimizer states in CPU RAM (slowest, least GPU memory)",
    "fsdp2": "PyTorch FSDP2 (fully_shard): weights, gradients and optimizer states sharded; GPUs only",
}
NAMED = tuple(PURPOSES)


def shipped_dir() -> Path:
    """The package's own configs folder (inside site-packages for a wheel install)."""
    return Path(str(importlib.resources.files("sftforge") / "configs"))


def config_dirs() -> list[Path]:
    """Where a name is looked up, in order: ./configs (a user's copy), then the shipped folder."""
    return list(dict.fromkeys([Path.cwd() / "configs", shipped_dir()]))  # once when they are the same


@dataclass(frozen=True)
class ShippedConfig:
    name: str
    accelerate: Path  # configs/accelerate/NAME.yaml
    deepspeed: Path | None  # the DeepSpeed JSON it names, if any

    @property
    def purpose(self) -> str:
        return PURPOSES[self.name]


def deepspeed_json_of(doc: dict) -> str | None:
    """The `deepspeed_config_file` an accelerate config names (relative paths are relative to a `configs/`
    folder's parent, as in the shipped files)."""
    return (doc.get("deepspeed_config") or {}).get("deepspeed_config_file")


def shipped(name: str) -> ShippedConfig:
    if name not in PURPOSES:
        raise ConfigError(
            f"{name!r} is not a shipped launch config; the shipped ones are {', '.join(NAMED)} "
            "(`sftforge configs` lists them).",
            "accelerate_config",
        )
    root = shipped_dir()
    accelerate = root / "accelerate" / f"{name}.yaml"
    json_path = deepspeed_json_of(yaml.safe_load(accelerate.read_text(encoding="utf-8")) or {})
    return ShippedConfig(name, accelerate, root.parent / json_path if json_path else None)


def shipped_deepspeed_json(name: str) -> Path | None:
    """`deepspeed: zero3` (a name, not a file): the shipped DeepSpeed JSON of that name, if there is one."""
    path = shipped_dir() / "deepspeed" / f"{name}.json"
    return path if path.is_file() else None


def copy_config(name: str, dest: Path, force: bool = False) -> list[Path]:
    """Copy NAME's accelerate YAML (and its DeepSpeed JSON) into DEST/configs/, in the shipped layout, so the
    YAML's relative JSON path, `--accelerate_config NAME` run from DEST, and the README's `configs/...` command
    lines all reach the copy. Refuses to overwrite unless `force`."""
    config = shipped(name)
    pairs = [(config.accelerate, dest / "configs" / "accelerate" / config.accelerate.name)]
    if config.deepspeed is not None:
        pairs.append((config.deepspeed, dest / "configs" / "deepspeed" / config.deepspeed.name))
    existing = [str(target) for _, target in pairs if target.exists()]
    if existing and not force:
        raise ConfigError(
            f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; edit it, or pass --force "
            "to replace it with the shipped version.",
            source="command line",
        )
    for source, target in pairs:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
    return [target for _, target in pairs]
