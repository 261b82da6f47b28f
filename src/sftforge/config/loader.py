"""Recipe loading: YAML file + command-line overrides → one validated `SFTConfig`.

Every problem (unknown key, wrong type, contradiction, missing file) is collected and reported together, before any
model loads, naming the key and suggesting the closest valid name.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from sftforge.config.coerce import coerce_value, field_type, scalar_from_text
from sftforge.config.dataset_info import KEYS as DATASET_INFO_KEYS
from sftforge.config.dataset_info import expand_named_datasets
from sftforge.config.foreign_keys import explain_key, explain_value
from sftforge.config.migrate import RENAMES, SWITCH_SECTIONS, SWITCHES, check_migrated
from sftforge.config.peft_args import PeftArguments
from sftforge.config.pref_args import PreferenceArguments
from sftforge.config.schema import SECTIONS, DataArguments, LaunchArguments, ModelArguments
from sftforge.config.suggest import section_names, suggest_key
from sftforge.errors import ConfigError

if TYPE_CHECKING:  # the real class imports torch: loaded once the recipe is valid (load_config)
    from sftforge.config.training_args import SFTTrainingArguments

# Familiar names from TRL / LLaMA-Factory / older transformers → our canonical names.
ALIASES: dict[str, str] = {
    "model_max_length": "max_length",
    "max_seq_length": "max_length",
    "cutoff_len": "max_length",
    "evaluation_strategy": "eval_strategy",
    "train_files": "train_data_path",
    "train_file": "train_data_path",
    "eval_files": "eval_data_path",
    "eval_file": "eval_data_path",
    "preprocessing_num_workers": "dataset_num_proc",
    "dtype": "torch_dtype",
    "template": "chat_template",
    "val_size": "eval_split_ratio",
}
# MoE router aux loss (LLaMA-Factory's moe_aux_loss_coef, DeepSeek's aux_loss_alpha)
ALIASES.update({"aux_loss_alpha": "router_aux_loss_coef", "moe_aux_loss_coef": "router_aux_loss_coef"})
# Keys transformers 5 removed; we translate them so old recipes keep working.
_WARMUP_RATIO = "warmup_ratio"  # → warmup_steps as a float < 1 (transformers 5 reads that as a ratio)
_GROUP_BY_LENGTH = "group_by_length"  # → train_sampling_strategy: group_by_length
# Pretraining names from transformers' run_clm.py / LLaMA-Factory (stage: pt); block_size is max_length there.
ALIASES.update(
    {
        "block_size": "max_length",
        "validation_file": "eval_data_path",
        "validation_files": "eval_data_path",
        "tokenizer_name": "tokenizer_name_or_path",
        "dataset_config_name": "dataset_config",
        "pack": "packing",
    }
)
# Guides' LoRA names: LLaMA-Factory's lora_rank / lora_target (q_proj,v_proj or all), TRL's ModelConfig.
ALIASES.update(
    {
        "lora_rank": "lora_r",
        "lora_target": "lora_target_modules",
        "lora_modules_to_save": "modules_to_save",
        "use_bnb_nested_quant": "bnb_4bit_use_double_quant",
    }
)
# Preference training: TRL's DPOConfig / KTOConfig / CPOConfig names → LLaMA-Factory's (the `pref` section)
ALIASES.update(
    {
        "beta": "pref_beta",
        "loss_type": "pref_loss",
        "rpo_alpha": "pref_ftx",
        "cpo_alpha": "pref_ftx",
        "label_smoothing": "dpo_label_smoothing",
        "desirable_weight": "kto_chosen_weight",
        "undesirable_weight": "kto_rejected_weight",
    }
)
ALIASES.update(RENAMES)  # other tools' names for the same settings (config/migrate.py)

# Training fields never written back (secrets, per-process values).
# gradient_checkpointing* mirror activation_checkpointing* in transformers 5: dump the canonical pair only.
_NOT_DUMPED = {"hub_token", "local_rank", "gradient_checkpointing", "gradient_checkpointing_kwargs"}


@dataclass
class SFTConfig:
    model: ModelArguments
    data: DataArguments
    training: SFTTrainingArguments
    explicit: set[str] = field(default_factory=set)  # keys the user set (file or CLI), after aliasing
    # Decisions taken for the user, shown in the start-up summary.
    notes: list[str] = field(default_factory=list)
    # Device-dependent keys the user left to us: key → the value they left ("auto" / unset).
    auto_resolved: dict[str, Any] = field(default_factory=dict)
    recipe_path: str | None = None
    peft: PeftArguments = field(default_factory=PeftArguments)  # full fine-tuning unless the recipe says
    launch: LaunchArguments = field(default_factory=LaunchArguments)  # how to start the processes (launch.py)
    pref: PreferenceArguments = field(default_factory=PreferenceArguments)  # stage dpo / kto only


def _field_table() -> dict[str, tuple[str, dataclasses.Field]]:
    table: dict[str, tuple[str, dataclasses.Field]] = {}
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            if f.init:
                table[f.name] = (section, f)
    return table


FIELDS = _field_table()


# ---------------------------------------------------------------- reading


def read_recipe(path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe. Sections `model:`, `data:`, `training:` are flattened; flat keys are the norm."""
    return _read_recipe_sections(path)[0]


def _read_recipe_sections(path: str | Path) -> tuple[dict[str, Any], dict[str, str]]:
    """read_recipe, and the section each key was written under (for "did you mean" within that section)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"recipe file {str(p)!r} does not exist. Pass the path of a YAML recipe.", source=str(p)
        )
    try:
        loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark else str(p)
        raise ConfigError(f"{where}: invalid YAML: {getattr(e, 'problem', e)}", source=str(p)) from None
    if loaded is None:
        return {}, {}
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"{p}: a recipe must be a mapping of key: value, got {type(loaded).__name__}.", str(p)
        )
    flat: dict[str, Any] = {}
    sections: dict[str, str] = {}
    for key, value in loaded.items():
        if key in SECTIONS and isinstance(value, dict):
            flat.update(value)
            sections.update(dict.fromkeys(value, key))
        else:
            flat[key] = value
    return flat, sections


def parse_overrides(argv: list[str]) -> dict[str, Any]:
    """`--key value`, `--key=value`, a bare `--flag` (true), dotted `--lr_scheduler_kwargs.min_lr_rate 0.1`.

    Values stay strings here; `coerce_value` converts them with the target field's type.
    """
    out: dict[str, Any] = {}
    problems: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith("--") or token == "--":
            problems.append(f"unexpected argument {token!r}: overrides look like --key value or --key=value.")
            i += 1
            continue
        key, eq, value = token[2:].partition("=")
        if not eq:
            if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value = argv[i + 1]
                i += 1
            else:
                value = "true"
        key = key.replace("-", "_")
        if "." in key:
            head, *rest = key.split(".")
            node = out.setdefault(head, {})
            if not isinstance(node, dict):
                problems.append(f"--{key}: {head} was already given a plain value.")
            else:
                for part in rest[:-1]:
                    node = node.setdefault(part, {})
                node[rest[-1]] = scalar_from_text(value)
        else:
            out[key] = value
        i += 1
    if problems:
        raise ConfigError(problems, source="command line")
    return out


# ---------------------------------------------------------------- building


def _unknown_key(key: str, section: str | None) -> str:
    """The problem line for an unknown key: another tool's key explained, else the closest name of its concept."""
    foreign = explain_key(key)
    if foreign:
        return foreign
    close = suggest_key(key, _known_names(), section)
    return f"unknown key {key!r}." + (
        f" Did you mean {close!r}?" if close else " Run `sftforge train --help` for the valid keys."
    )


@functools.cache
def _known_names() -> dict[str, str]:
    """Every name a recipe may use → its section."""
    names = section_names(
        {name: [f.name for f in dataclasses.fields(cls)] for name, cls in SECTIONS.items()}, ALIASES
    )
    extra = {_WARMUP_RATIO: "training", _GROUP_BY_LENGTH: "training", "mixed_precision": "training"}
    extra |= {
        "load_in_4bit": "peft",
        "load_in_8bit": "peft",
        **SWITCH_SECTIONS,
        **dict.fromkeys(DATASET_INFO_KEYS, "data"),
    }
    return {**extra, **names}


def _apply_aliases(raw: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _GUIDE_SWITCHES:
            _GUIDE_SWITCHES[key](key, value, out, raw, problems)
            continue
        target = ALIASES.get(key, key)
        if key == _WARMUP_RATIO:
            target = "warmup_steps"
        if key == _GROUP_BY_LENGTH:
            target, value = "train_sampling_strategy", "group_by_length" if _truthy(value) else "random"
        if target in out:
            problems.append(f"{key}: it sets the same thing as another key ({target}); keep only one.")
            continue
        out[target] = value
    return out


# accelerate's name (guides put it in recipes): bf16 / fp16 / no → the bf16 and fp16 flags
# (YAML 1.1 reads a bare `no` as false.)
_MIXED_PRECISION = {
    "bf16": (True, False),
    "fp16": (False, True),
    "no": (False, False),
    "false": (False, False),
}


def _apply_mixed_precision(
    key: str, value: Any, out: dict[str, Any], raw: dict[str, Any], problems: list[str]
) -> None:
    flags = _MIXED_PRECISION.get(str(value).lower())
    if flags is None:
        problems.append(f"mixed_precision: {value!r} is not one of bf16, fp16, no.")
        return
    given = [k for k in ("bf16", "fp16") if k in raw]
    if given:
        problems.append(
            f"mixed_precision and {' and '.join(given)} set the same thing; keep only one "
            f"(mixed_precision: {value} is bf16: {str(flags[0]).lower()}, fp16: {str(flags[1]).lower()})."
        )
        return
    out["bf16"], out["fp16"] = flags


def _apply_load_in_bits(
    key: str, value: Any, out: dict[str, Any], raw: dict[str, Any], problems: list[str]
) -> None:
    """TRL's `load_in_4bit` / `load_in_8bit: true` → `quantization_bit: 4 / 8` (false: not quantized)."""
    text = str(value).lower()
    if text not in ("true", "false", "1", "0", "yes", "no"):
        problems.append(f"{key}: expected true or false, got {value!r}")
        return
    if text in ("false", "0", "no"):
        return
    others = [
        k for k in ("load_in_4bit", "load_in_8bit") if k != key and str(raw.get(k)).lower() in ("true", "1")
    ]
    others += ["quantization_bit"] if "quantization_bit" in raw else []
    if others:
        problems.append(f"{key} and {others[0]} both say how to quantize the base; keep only one.")
        return
    out["quantization_bit"] = 4 if key == "load_in_4bit" else 8


_GUIDE_SWITCHES = {
    "mixed_precision": _apply_mixed_precision,
    "load_in_4bit": _apply_load_in_bits,
    "load_in_8bit": _apply_load_in_bits,
    **SWITCHES,  # LLaMA-Factory / TRL keys that translate into sftforge's (config/migrate.py)
}


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() in ("true", "1", "yes"))


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(recipe: str | Path | None, overrides: list[str] | None = None) -> SFTConfig:
    """Read, merge, coerce and validate. Raises ConfigError listing every problem found."""
    file_values, written_under = _read_recipe_sections(recipe) if recipe else ({}, {})
    cli_values = parse_overrides(overrides or [])
    problems: list[str] = []
    file_values = _apply_aliases(file_values, problems)
    cli_values = _apply_aliases(cli_values, problems)
    values = _merge(file_values, cli_values)
    given = set(values)  # what the user set, before LLaMA-Factory's `dataset` names become data keys
    values = expand_named_datasets(values, problems)

    per_section: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for key, value in values.items():
        if key not in FIELDS:
            problems.append(_unknown_key(key, written_under.get(key)))
            continue
        section, f = FIELDS[key]
        try:
            hint = field_type(SECTIONS[section], key)
            per_section[section][key] = coerce_value(value, hint, from_cli=key in cli_values)
        except ValueError as e:
            problems.append(f"{key}: {e}")
            continue
        choices = f.metadata.get("choices")
        if choices and per_section[section][key] not in choices:
            problems.append(
                explain_value(key, value) or f"{key}: {value!r} is not one of {', '.join(choices)}."
            )
    check_migrated(per_section, problems)

    from sftforge.config.validate import check_and_resolve  # local: validate imports torch lazily

    auto: dict[str, Any] = {}
    notes = check_and_resolve(per_section, set(values) | given, problems, auto)
    if problems:
        raise ConfigError(problems, source=str(recipe) if recipe else "command line")

    from sftforge.config.training_args import SFTTrainingArguments  # imports torch: the recipe is valid now

    _training_defaults()  # see its docstring
    model = ModelArguments(**per_section["model"])
    data = DataArguments(**per_section["data"])
    try:
        training = SFTTrainingArguments(**per_section["training"])
    except (ValueError, TypeError) as e:
        # TrainingArguments' own checks: relay their words, they name the argument.
        raise ConfigError(str(e).strip(), source=str(recipe) if recipe else "command line") from None
    return SFTConfig(
        model,
        data,
        training,
        explicit=set(values) | given,
        notes=notes,
        auto_resolved=auto,
        recipe_path=str(recipe or ""),
        peft=PeftArguments(**per_section["peft"]),
        launch=LaunchArguments(**per_section["launch"]),
        pref=PreferenceArguments(**per_section["pref"]),
    )


# ---------------------------------------------------------------- writing


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@functools.cache
def _training_defaults() -> dict[str, Any]:
    """Default training values, computed once. Building a TrainingArguments resets accelerate's global state, so
    this must not happen while a Trainer exists: load_config warms the cache before any Trainer is made. It is
    built as a single process: in a launched one it would otherwise start the process group with the default
    `ddp_timeout` instead of the recipe's (the recipe's TrainingArguments would then reuse that group)."""
    from sftforge.config.training_args import SFTTrainingArguments

    hidden = {k: os.environ.pop(k) for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK") if k in os.environ}
    try:
        defaults = SFTTrainingArguments()
    finally:
        os.environ.update(hidden)
    return {
        f.name: _plain(getattr(defaults, f.name)) for f in dataclasses.fields(SFTTrainingArguments) if f.init
    }


def config_to_dict(cfg: SFTConfig) -> dict[str, dict[str, Any]]:
    """Sections with every model/data field, and the training fields that differ from the defaults."""
    out: dict[str, dict[str, Any]] = {
        "model": {f.name: _plain(getattr(cfg.model, f.name)) for f in dataclasses.fields(cfg.model)},
        "data": {f.name: _plain(getattr(cfg.data, f.name)) for f in dataclasses.fields(cfg.data)},
        # peft: the method plus what differs from the defaults (LoRA keys next to `full` would be an error on reload)
        "peft": {
            f.name: _plain(getattr(cfg.peft, f.name))
            for f in dataclasses.fields(cfg.peft)
            if f.name == "finetuning_type" or f.name in cfg.explicit or getattr(cfg.peft, f.name) != f.default
        },
        "training": {},
    }
    if cfg.data.stage in ("dpo", "kto"):  # the preference keys matter (and are accepted) only there
        out["pref"] = {f.name: _plain(getattr(cfg.pref, f.name)) for f in dataclasses.fields(cfg.pref)}
    defaults = _training_defaults()
    for f in dataclasses.fields(cfg.training):
        if not f.init or f.name in _NOT_DUMPED:
            continue
        value = _plain(getattr(cfg.training, f.name))
        if f.name in cfg.explicit or value != defaults[f.name] or f.name == "output_dir":
            out["training"][f.name] = value
    # Device-dependent choices stay "auto" so the file re-resolves on the machine that reads it (CPU → GPU).
    for key, original in cfg.auto_resolved.items():
        section = FIELDS[key][0]
        if section == "training" and original in (None, False):  # a device default: let the reader decide
            out["training"].pop(key, None)
        else:  # what the user wrote (model "auto" keys, a DeepSpeed JSON routed through accelerate on CPU)
            out[section][key] = original
    return out


def dump_config(cfg: SFTConfig, path: str | Path) -> Path:
    """Write the resolved config as a recipe that `sftforge train` accepts as is."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "# Resolved sftforge config: feed it back with `sftforge train " + str(path) + "`\n"
    path.write_text(
        header + yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True), "utf-8"
    )
    return path


def data_paths_missing(spec: list[str] | None) -> list[str]:
    """Paths (or globs) in a data list that match nothing on disk."""
    missing = []
    for item in spec or []:
        if any(ch in item for ch in "*?[") and glob.glob(item, recursive=True):
            continue
        if not Path(item).expanduser().exists():
            missing.append(item)
    return missing
