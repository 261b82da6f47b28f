"""One typed config tree: YAML recipe + CLI overrides → validated `SFTConfig`."""

from sftforge.config.loader import (
    ALIASES,
    SFTConfig,
    config_to_dict,
    dump_config,
    load_config,
    parse_overrides,
)
from sftforge.config.schema import DataArguments, ModelArguments, SFTTrainingArguments

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
