"""Write `training_args_snapshot.py`: transformers.TrainingArguments' fields as a plain dataclass.

`sftforge train --help` and config errors need every training key's name, type, default and help, but importing
transformers.TrainingArguments imports torch (seconds). The snapshot holds the same fields without importing
either; the real TrainingArguments is still what a run builds. After upgrading transformers, regenerate it:

    python src/sftforge/config/snapshot.py      (or python -m sftforge.config.snapshot)

(the file path form needs no import of sftforge.config, so it works even when the snapshot module is broken).

tests/config/test_snapshot.py fails while the snapshot differs from the installed transformers; until then
sftforge reads the real class (slower help, same answers): see schema.training_schema.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
import shutil
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any

SNAPSHOT_PATH = Path(__file__).with_name("training_args_snapshot.py")
SNAPSHOT_CLASS = "TrainingArgumentsSnapshot"
_PLAIN_TYPES = (bool, int, float, str, list, dict, type(None))


def type_text(tp: Any, named: dict[str, type] | None = None, detailed: bool = False) -> str:
    """Annotation source for a resolved type hint. Enums and other classes are collected into `named` (the
    snapshot defines stand-ins for them); `detailed` spells out enum members, for comparing two classes."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_text(a, named, detailed) for a in args)
    if origin is typing.Literal:
        return f"Literal[{', '.join(repr(a) for a in args)}]"
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(type_text(a, named, detailed) for a in args)}]"
    if tp is Any:
        return "Any"
    if tp is type(None):
        return "None"
    if tp in _PLAIN_TYPES:
        return tp.__name__
    if isinstance(tp, type):
        if named is not None and named.setdefault(tp.__name__, tp) is not tp:
            raise TypeError(f"two classes named {tp.__name__}: the snapshot can define only one")
        if detailed and issubclass(tp, enum.Enum):
            return f"{tp.__name__}({', '.join(f'{m.name}={m.value!r}' for m in tp)})"
        return tp.__name__
    raise TypeError(f"no snapshot form for the type {tp!r}: extend sftforge.config.snapshot.type_text")


def _plain_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return ("factory", f.default_factory.__name__)
    if isinstance(f.default, enum.Enum):
        return ("enum", type(f.default).__name__, f.default.value)
    return f.default


def _plain_metadata(metadata: typing.Mapping[str, Any]) -> dict[str, Any]:
    # `choices` may be a dict's keys() (log_level); the snapshot writes a tuple
    return {k: tuple(v) if k == "choices" else v for k, v in metadata.items()}


def describe(cls: type) -> list[tuple[str, str, Any, dict[str, Any]]]:
    """(name, type, default, metadata) of each init field, in order: equal for the snapshot and the live class."""
    hints = typing.get_type_hints(cls)
    return [
        (f.name, type_text(hints[f.name], detailed=True), _plain_default(f), _plain_metadata(f.metadata))
        for f in dataclasses.fields(cls)
        if f.init
    ]


def _literal(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a valid Python literal, in ruff's double quotes
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    if isinstance(value, (tuple, list)):
        items = ", ".join(_literal(v) for v in value)
        return f"({items},)" if len(value) == 1 else f"({items})"
    if isinstance(value, (bool, int, type(None))) or (isinstance(value, float) and value == value):
        return repr(value)
    raise TypeError(f"no snapshot form for the default {value!r}: extend sftforge.config.snapshot._literal")


def _field_source(f: dataclasses.Field, annotation: str) -> list[str]:
    if f.default_factory is not dataclasses.MISSING:
        if f.default_factory not in (list, dict):
            raise TypeError(f"{f.name}: no snapshot form for the default factory {f.default_factory!r}")
        default = f"default_factory={f.default_factory.__name__}"
    else:
        default = f"default={_literal(f.default)}"
    meta = [f"            {_literal(k)}: {_literal(v)}," for k, v in _plain_metadata(f.metadata).items()]
    return [
        f"    {f.name}: {annotation} = field(",
        f"        {default},",
        "        metadata={",
        *meta,
        "        },",
        "    )",
    ]


def _stand_in_source(cls: type) -> list[str]:
    if issubclass(cls, enum.Enum):
        lines = [f"class {cls.__name__}(str, enum.Enum):"]
        lines += [f"    {m.name} = {_literal(m.value)}" for m in cls]
        return [*lines, "", ""]
    # A class-typed key (ParallelismConfig) takes the recipe's value as is; the real class checks it later.
    doc = f'    """Stands in for {cls.__module__}.{cls.__qualname__}: the recipe value is passed as is."""'
    return [f"class {cls.__name__}:", doc, "", ""]


def render(cls: type, version: str) -> str:
    """The snapshot module's source for the dataclass `cls` (TrainingArguments) of transformers `version`."""
    hints = typing.get_type_hints(cls)
    named: dict[str, type] = {}
    fields = [f for f in dataclasses.fields(cls) if f.init]
    annotations = {f.name: type_text(hints[f.name], named) for f in fields}
    source = "\n".join(line for f in fields for line in _field_source(f, annotations[f.name]))
    used = set(re.findall(r"\w+", " ".join(annotations.values())))
    typing_names = [n for n in ("Any", "Literal") if n in used]
    head = [
        f'"""transformers {version} TrainingArguments fields, without importing transformers or torch.',
        "",
        "GENERATED by `python src/sftforge/config/snapshot.py`: do not edit; regenerate after upgrading transformers.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        *(["import enum"] if any(issubclass(c, enum.Enum) for c in named.values()) else []),
        "from dataclasses import dataclass, field",
        *([f"from typing import {', '.join(typing_names)}"] if typing_names else []),
        "",
        f"TRANSFORMERS_VERSION = {_literal(version)}",
        "",
        "",
    ]
    stand_ins = [line for name in sorted(named) for line in _stand_in_source(named[name])]
    return "\n".join([*head, *stand_ins, "@dataclass", f"class {SNAPSHOT_CLASS}:", source]) + "\n"


def _ruff_format(path: Path) -> None:
    """The project's formatter, when installed (the dev extra): `make lint` then passes on the new file."""
    beside = Path(sys.executable).with_name("ruff")
    ruff = str(beside) if beside.exists() else shutil.which("ruff")
    if ruff:
        subprocess.run([ruff, "format", "--quiet", str(path)], check=False)


def main() -> int:
    import logging

    logging.getLogger("bitsandbytes").setLevel(
        logging.ERROR
    )  # its import-time warning (see sftforge/__init__)
    import transformers

    SNAPSHOT_PATH.write_text(
        render(transformers.TrainingArguments, transformers.__version__), encoding="utf-8"
    )
    _ruff_format(SNAPSHOT_PATH)
    print(f"wrote {SNAPSHOT_PATH} (transformers {transformers.__version__})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
