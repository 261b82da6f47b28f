"""One typed config tree: YAML recipe + CLI overrides → validated `SFTConfig`."""

from sftforge.config.loader import (
    ALIASES,
    SFTConfig,
    config_to_dict,
    dump_config,
    load_config,
    parse_overrides,
)
from sftforge.config.schema import DataArguments, ModelArguments

__all__ = [
    "ALIASES",
    "DataArguments",
    "ModelArguments",
    "SFTConfig",
    "SFTTrainingArguments",
    "config_to_dict",
    "dump_config",
    "load_config",
    "parse_overrides",
]


def __getattr__(name: str) -> type:
    # Imported on first use: the real training arguments import torch (seconds), help and config errors do not.
    if name == "SFTTrainingArguments":
        from sftforge.config.training_args import SFTTrainingArguments

        return SFTTrainingArguments
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
