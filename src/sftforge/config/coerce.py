"""Convert recipe and command-line values to the type a config field declares.

YAML gives typed values, the command line gives strings; both end up as the field's type, or a ValueError with
a human reason (`expected an integer, got 'abc'`) that the loader reports with the key.
"""

from __future__ import annotations

import enum
import functools
import json
import types
import typing
from typing import Any

import yaml


def scalar_from_text(text: str) -> Any:
    """A value inside a nested dict from the CLI: numbers, booleans, JSON/YAML lists and dicts."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


@functools.cache
def _type_hints(owner: type) -> dict[str, Any]:
    # Resolved once per class: the schema modules use `from __future__ import annotations` (string hints).
    return typing.get_type_hints(owner)


def field_type(owner: type, name: str) -> Any:
    """The declared type of field `name` of the dataclass `owner`, with string annotations resolved."""
    return _type_hints(owner).get(name, Any)


def coerce_value(value: Any, tp: Any, from_cli: bool) -> Any:
    """Convert `value` to `tp`, raising ValueError with a human reason."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        # `null` clears an optional key; `none` too, unless the key takes strings (report_to: none is a value).
        words = ("null",) if str in options else ("none", "null")
        if from_cli and isinstance(value, str) and value.lower() in words and type(None) in options:
            return None
        errors = []
        # Try the most specific types first so "3" becomes 3, not "3".
        order = sorted((o for o in options if o is not type(None)), key=lambda o: o is str)
        for option in order:
            try:
                return coerce_value(value, option, from_cli)
            except (ValueError, TypeError) as e:
                errors.append(str(e))
        raise ValueError(" or ".join(dict.fromkeys(errors)))
    if tp is Any:
        return scalar_from_text(value) if from_cli and isinstance(value, str) else value
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value).value if not isinstance(value, tp) else value.value
        except ValueError:
            raise ValueError(f"expected one of {[m.value for m in tp]}, got {value!r}") from None
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        raise ValueError(f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ValueError(f"expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ValueError(f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # also fixes YAML 1.1 reading `1e-4` as a string
            except ValueError:
                pass
        raise ValueError(f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"expected a string, got {value!r}")
    if origin is list or tp is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if isinstance(value, str):
            parsed = scalar_from_text(value) if from_cli else value
            value = parsed if isinstance(parsed, list) else [value]
        if not isinstance(value, list):
            value = [value]
        return [coerce_value(v, item_tp, from_cli) for v in value]
    if origin is dict or tp is dict:
        if isinstance(value, str) and from_cli:
            value = scalar_from_text(value)
        if isinstance(value, dict):
            return value
        raise ValueError(f"expected a mapping such as {{min_lr_rate: 0.1}}, got {value!r}")
    return value
