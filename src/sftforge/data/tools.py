"""Tool calls and tool schemas in the one shape every chat template expects.

A call becomes `{"type": "function", "function": {"name", "arguments"}}` whether it came as an OpenAI
`tool_calls` item, a legacy `function_call`, a ShareGPT `function_call` turn or JSON text; row-level tool
schemas become an OpenAI `{"type": "function", "function": ...}` list. Problems raise RowError naming the turn.
"""

from __future__ import annotations

import json
from typing import Any

from sftforge.errors import RowError

# ShareGPT's assistant turn whose value is the JSON of the call(s): it has no text of its own.
FUNCTION_CALL_ROLE = "function_call"


def turn_tool_calls(turn: dict[str, Any], label: str) -> list[dict[str, Any]]:
    """A turn's `tool_calls` list (or legacy OpenAI `function_call`), each call normalised."""
    calls = turn.get("tool_calls")
    if calls is None and isinstance(turn.get("function_call"), dict):  # legacy OpenAI single call
        calls = [turn["function_call"]]
    if calls is None:
        return []
    if not isinstance(calls, list):
        raise RowError(
            "bad_tool_call", f"{label} has `tool_calls` of type {type(calls).__name__}; expected a list"
        )
    return [normalize_tool_call(call, f"{label} tool call {k}") for k, call in enumerate(calls)]


def calls_from_value(value: Any, i: int) -> list[dict[str, Any]]:
    """A ShareGPT function_call value: the JSON of one call `{"name", "arguments"}` or of a list of calls."""
    label = f"turn {i} ({FUNCTION_CALL_ROLE})"
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise RowError(
                "bad_tool_call",
                f"{label}: the value is not valid JSON ({e.msg} at column {e.colno}); "
                'expected {"name": ..., "arguments": {...}}',
            ) from e
    calls = value if isinstance(value, list) else [value]
    if not calls:
        raise RowError("bad_tool_call", f"{label}: the value is an empty list of calls")
    return [normalize_tool_call(call, label) for call in calls]


def normalize_tool_call(call: Any, where: str) -> dict[str, Any]:
    """Return `{"type": "function", "function": {"name", "arguments"}}`, arguments parsed to a dict if JSON.

    Templates render arguments with `| tojson`; a JSON string left as a string would be quoted twice.
    """
    if isinstance(call, str):
        try:
            call = json.loads(call)
        except json.JSONDecodeError as e:
            raise RowError("bad_tool_call", f"{where}: the tool call is not valid JSON ({e.msg})") from e
    if not isinstance(call, dict):
        raise RowError(
            "bad_tool_call", f"{where}: a tool call must be an object, got a {type(call).__name__}"
        )
    fn = call["function"] if isinstance(call.get("function"), dict) else call
    name = fn.get("name")
    if not isinstance(name, str) or not name.strip():
        raise RowError("bad_tool_call", f"{where}: the tool call has no `name`")
    args = fn.get("arguments", fn.get("parameters"))
    if args is None:
        args = {}
    elif isinstance(args, str):
        try:
            parsed = json.loads(args)
        except json.JSONDecodeError:
            parsed = None
        args = parsed if isinstance(parsed, dict) else args
    elif not isinstance(args, dict):
        raise RowError(
            "bad_tool_call", f"{where}: `arguments` of {name!r} must be an object or a JSON string"
        )
    out: dict[str, Any] = {"type": "function", "function": {"name": name, "arguments": args}}
    if isinstance(call.get("id"), str):  # some templates (Mistral) render the call id
        out["id"] = call["id"]
    return out


def normalize_tools(value: Any) -> list[dict[str, Any]] | None:
    """Row-level tool schemas (a list, or a JSON string of one as in glaive) → OpenAI `{"type": "function"}` list."""
    if value is None:
        return None
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise RowError(
                "bad_tools",
                f"`tools` is not valid JSON ({e.msg} at column {e.colno}); expected a JSON list of function schemas",
            ) from e
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise RowError(
            "bad_tools", f"`tools` is a {type(value).__name__}; expected a list of function schemas"
        )
    tools = []
    for j, tool in enumerate(value):
        fn = (
            tool.get("function")
            if isinstance(tool, dict) and isinstance(tool.get("function"), dict)
            else tool
        )
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise RowError("bad_tools", f"`tools` item {j} is not a function schema with a `name`")
        tools.append({"type": "function", "function": fn})
    return tools or None
