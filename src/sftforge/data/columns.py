"""Column mapping: rows whose keys have other names → the keys the format readers (formats.py) know.

`columns:` uses LLaMA-Factory's `dataset_info.json` names (prompt, query, response, system, history, messages,
tools) or sftforge's own format keys (instruction, input, output, conversations, prompt + completion, text), each
mapped to the user's key: `columns: {prompt: question, response: answer}` reads `{"question", "answer"}` rows as
Alpaca. `tags:` renames ShareGPT / OpenAI turn keys and role values (`role_tag: speaker, user_tag: user1`).

`compile_columns` validates the config once (ConfigError naming the key); `apply_columns` is the pure per-row
rewrite run before `to_conversation` (RowError when a mapped key is missing from the row).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sftforge.errors import ConfigError, RowError

# LLaMA-Factory's column names → sftforge's key (None: the conversation's turns, placed by `_turns_out`).
LF_COLUMNS: dict[str, str | None] = {
    "prompt": "instruction",  # "prompt" is prompt/completion's key instead when `completion` is mapped too
    "query": "input",
    "response": "output",
    "system": "system",
    "history": "history",
    "messages": None,
    "tools": "tools",
}
OWN_COLUMNS: dict[str, str | None] = {
    "instruction": "instruction",
    "input": "input",
    "output": "output",
    "conversations": None,
    "completion": "completion",
    "text": "text",
}
COLUMN_NAMES = (*LF_COLUMNS, *OWN_COLUMNS)
# Keys that decide the format (formats.detect_format): a mapping that targets one drops the row's others.
_FORMAT_KEYS = frozenset(
    {"messages", "conversations", "instruction", "output", "prompt", "completion", "text"}
)
# Companion keys: a row without them simply has none (LLaMA-Factory, reading through `datasets`, sees null).
_OPTIONAL = frozenset({"input", "system", "history", "tools"})
# Not SFT / not text: a clear refusal instead of "unknown".
_REFUSED = {
    "chosen": "preference data (chosen/rejected/kto_tag) trains with stage: dpo (or kto); stage sft trains `response`",
    "rejected": "preference data (chosen/rejected/kto_tag) trains with stage: dpo (or kto); stage sft trains `response`",
    "kto_tag": "preference data (chosen/rejected/kto_tag) trains with stage: dpo (or kto); stage sft trains `response`",
    "images": "sftforge trains text only (no images/videos/audios columns)",
    "videos": "sftforge trains text only (no images/videos/audios columns)",
    "audios": "sftforge trains text only (no images/videos/audios columns)",
}

_PREFERENCE_COLUMNS = ("chosen", "rejected", "kto_tag")  # stage dpo / kto (data/preference_rows.py)

# LLaMA-Factory's tag names → the canonical role the value stands for (formats.ROLE_ALIASES / function_call).
ROLE_TAGS = {
    "user_tag": "user",
    "assistant_tag": "assistant",
    "observation_tag": "observation",
    "function_tag": "function_call",
    "system_tag": "system",
}
TAG_NAMES = ("role_tag", "content_tag", *ROLE_TAGS)
_TAG_ALIASES = {"role": "role_tag", "content": "content_tag"}  # OpenAI-style names for the two key tags


@dataclass(frozen=True)
class ColumnMap:
    """A validated `columns:` + `tags:` (tuples only: it travels to worker processes inside TokenizeSpec)."""

    fields: tuple[
        tuple[str, str, str], ...
    ] = ()  # (sftforge key, the user's key, config name) per mapped field
    turns: tuple[str, str] | None = None  # (the user's key, config name) holding the turns, when mapped
    role_tag: str | None = None  # None: "from" when the turn has it, else "role"
    content_tag: str | None = None  # None: "value" with "from", else "content"
    roles: tuple[tuple[str, str], ...] = ()  # the user's role value → canonical role
    tagged: bool = False  # tags given: rewrite the turns even without a `messages` column

    @property
    def main(self) -> bool:
        """Whether the mapping names the row's format (then the row's own format keys are ignored)."""
        return self.turns is not None or any(t in _FORMAT_KEYS for t, _, _ in self.fields)


def compile_columns(
    columns: Mapping[str, Any] | None,
    tags: Mapping[str, Any] | None,
    where: str = "",
    preference: bool = False,
) -> ColumnMap | None:
    """Validate `columns` / `tags` (ConfigError listing every problem, keys prefixed by `where`, e.g.
    "datasets[1]."); None when neither is given, so the default path stays untouched. `preference` (stage dpo /
    kto): LLaMA-Factory's `chosen`, `rejected` and `kto_tag` columns are read too."""
    if not columns and not tags:
        return None
    problems: list[str] = []
    fields, turns = _compile_fields(columns or {}, where, problems, preference)
    role_tag, content_tag, roles = _compile_tags(tags or {}, where, problems)
    if problems:
        raise ConfigError(problems)
    return ColumnMap(tuple(fields), turns, role_tag, content_tag, tuple(roles.items()), bool(tags))


def _closest(name: str, allowed: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def _check_mapping(raw: Any, key: str, problems: list[str]) -> bool:
    if isinstance(raw, Mapping):
        return True
    problems.append(f"{key}: expected a mapping such as {{prompt: question, response: answer}}, got {raw!r}.")
    return False


def _user_key(value: Any, key: str, problems: list[str]) -> str | None:
    if isinstance(value, str) and value.strip():
        return value
    problems.append(f"{key}: expected the name of a key in your rows (a non-empty string), got {value!r}.")
    return None


def _compile_fields(
    columns: Any, where: str, problems: list[str], preference: bool = False
) -> tuple[list[tuple[str, str, str]], tuple[str, str] | None]:
    fields: list[tuple[str, str, str]] = []
    turns: tuple[str, str] | None = None
    if not _check_mapping(columns, f"{where}columns", problems):
        return fields, turns
    targets: dict[str, str] = {}  # sftforge key → config name, to catch two names for one key
    for name, value in columns.items():
        key = f"{where}columns.{name}"
        if name in _PREFERENCE_COLUMNS and preference:
            user = _user_key(value, key, problems)
            if user is not None:
                fields.append((name, user, name))
            continue
        if name in _REFUSED:
            problems.append(f"{key}: {_REFUSED[name]}.")
            continue
        if name not in COLUMN_NAMES:
            problems.append(
                f"{key}: unknown column name.{_closest(str(name), COLUMN_NAMES)} Allowed: "
                f"{', '.join(COLUMN_NAMES)} (LLaMA-Factory's dataset_info.json names or sftforge's format keys)."
            )
            continue
        user = _user_key(value, key, problems)
        if user is None:
            continue
        target = {**LF_COLUMNS, **OWN_COLUMNS}[name]
        if name == "prompt" and "completion" in columns:
            target = "prompt"
        target = target or "<turns>"
        if target in targets:
            problems.append(f"{key}: {targets[target]} already maps the same field; keep one of the two.")
            continue
        targets[target] = name
        if target == "<turns>":
            turns = (user, name)
        else:
            fields.append((target, user, name))
    if not (preference and {"chosen", "kto_tag"} & set(columns)):  # a pair's answers are chosen and rejected
        _check_shape(targets, where, problems)
    return fields, turns


def _check_shape(targets: dict[str, str], where: str, problems: list[str]) -> None:
    """Mixed or half formats would only fail row by row later; say so once, at config time."""
    if "<turns>" in targets and targets.keys() & {"instruction", "output", "prompt", "completion", "text"}:
        problems.append(
            f"{where}columns: maps both a conversation ({targets['<turns>']}) and single-turn fields; a row is "
            "either a list of turns or an instruction/answer pair: keep one kind."
        )
    missing = {
        "instruction": ("output", "the answer", "response"),
        "output": ("instruction", "the question", "prompt"),
    }
    missing["prompt"] = ("completion", "the completion", "completion")
    for one, (other, what, name) in missing.items():
        if one in targets and other not in targets and "<turns>" not in targets:
            problems.append(
                f"{where}columns.{targets[one]}: nothing maps {what}; add {name}: <the key of your rows that "
                "holds it>."
            )


def _compile_tags(
    tags: Any, where: str, problems: list[str]
) -> tuple[str | None, str | None, dict[str, str]]:
    role_tag = content_tag = None
    roles: dict[str, str] = {}
    if not _check_mapping(tags, f"{where}tags", problems):
        return role_tag, content_tag, roles
    seen: dict[str, str] = {}
    for name, value in tags.items():
        key = f"{where}tags.{name}"
        canonical = _TAG_ALIASES.get(name, name)
        if canonical not in TAG_NAMES:
            problems.append(
                f"{key}: unknown tag name.{_closest(str(name), (*TAG_NAMES, *_TAG_ALIASES))} Allowed: "
                f"{', '.join(TAG_NAMES)} (role and content are accepted for role_tag and content_tag)."
            )
            continue
        if canonical in seen:
            problems.append(f"{key}: {seen[canonical]} sets the same tag; keep one of the two.")
            continue
        seen[canonical] = name
        user = _user_key(value, key, problems)
        if user is None:
            continue
        if canonical == "role_tag":
            role_tag = user
        elif canonical == "content_tag":
            content_tag = user
        else:
            roles[user] = ROLE_TAGS[canonical]
    return role_tag, content_tag, roles


# ---------------------------------------------------------------------------------------------------------------
# Per row


def _missing(user: str, name: str, row: Mapping[str, Any], section: str = "columns") -> RowError:
    return RowError(
        "missing_column",
        f"column `{user}` ({section}.{name}) is missing from the row; keys present: {list(row)}. "
        f"Fix `{section}:` in the recipe, or the row.",
    )


def apply_columns(row: Any, cmap: ColumnMap) -> Any:
    """The row with its keys renamed as `cmap` says (a new dict; `row` is not changed). Pure."""
    if not isinstance(row, dict):
        return row  # detect_format explains what a row must be
    out = {k: v for k, v in row.items() if not (cmap.main and k in _FORMAT_KEYS)}
    for target, user, name in cmap.fields:
        value = row.get(user)
        if value is not None:
            out[target] = value
        elif target in _OPTIONAL:
            out.pop(target, None)  # this row has no such field: not the row's own same-named key either
        else:
            raise _missing(user, name, row)
    if cmap.turns is not None or cmap.tagged:
        _turns_out(row, out, cmap)
    return out


def _turns_out(row: dict[str, Any], out: dict[str, Any], cmap: ColumnMap) -> None:
    if cmap.turns is not None:
        user, name = cmap.turns
        if row.get(user) is None:
            raise _missing(user, name, row)
    else:  # tags only: the turns sit under the usual keys (LLaMA-Factory's default is `conversations`)
        user = next((k for k in ("conversations", "messages") if k in row), None)
        if user is None:
            return  # a single-turn row: the tags have nothing to rename
    turns = row[user]
    out.pop(user, None)
    if not isinstance(turns, list):
        out["messages"] = turns  # parse_turns says what the turns must be
        return
    if cmap.role_tag is not None:
        sharegpt = cmap.role_tag != "role"
    else:
        sharegpt = any(isinstance(t, dict) and "from" in t for t in turns[:1])
    if cmap.tagged:
        roles = dict(cmap.roles)
        turns = [_turn(t, i, cmap, sharegpt, roles) for i, t in enumerate(turns)]
    out["conversations" if sharegpt else "messages"] = turns


def _turn(turn: Any, i: int, cmap: ColumnMap, sharegpt: bool, roles: dict[str, str]) -> Any:
    if not isinstance(turn, dict):
        return turn  # parse_turns names the turn
    role_key = cmap.role_tag or ("from" if "from" in turn else "role")
    content_key = cmap.content_tag or _content_key(turn, role_key)
    if role_key not in turn:
        raise RowError(
            "missing_column",
            f"turn {i} has no `{role_key}` key (tags.role_tag); its keys: {list(turn)}. Set tags.role_tag to "
            "the key naming the speaker.",
        )
    if content_key not in turn and cmap.content_tag is not None and "tool_calls" not in turn:
        raise RowError(
            "missing_column",
            f"turn {i} has no `{content_key}` key (tags.content_tag); its keys: {list(turn)}. Set "
            "tags.content_tag to the key holding the text.",
        )
    role = turn[role_key]
    role = roles.get(role, role) if isinstance(role, str) else role
    new = {
        k: v for k, v in turn.items() if k not in (role_key, content_key, "role", "content", "from", "value")
    }
    new["from" if sharegpt else "role"] = role
    new["value" if sharegpt else "content"] = turn.get(content_key)
    return new


def _content_key(turn: dict[str, Any], role_key: str) -> str:
    """No content_tag: ShareGPT's `value` beside `from`, else `content`, whichever of the two the turn has."""
    first, other = ("value", "content") if role_key == "from" else ("content", "value")
    return other if first not in turn and other in turn else first


# ---------------------------------------------------------------------------------------------------------------
# The hint for rows whose format cannot be told

_PROMPT_HINTS = ("question", "prompt", "query", "instruction", "input", "user", "problem", "q")
_RESPONSE_HINTS = (
    "answer",
    "response",
    "output",
    "completion",
    "reply",
    "target",
    "solution",
    "assistant",
    "a",
)


def suggest_columns(row: Mapping[str, Any]) -> str:
    """A `columns:` line built from the row's own keys, for the "cannot tell the format" message."""
    lists = [k for k, v in row.items() if isinstance(v, list)]
    texts = [k for k, v in row.items() if isinstance(v, str)]
    if lists and len(texts) < 2:
        return f"columns: {{messages: {lists[0]}}}"
    prompt = _hinted(texts, _PROMPT_HINTS) or (texts[0] if texts else "QUESTION_KEY")
    rest = [k for k in texts if k != prompt]
    response = _hinted(rest, _RESPONSE_HINTS) or (rest[-1] if rest else "ANSWER_KEY")
    return f"columns: {{prompt: {prompt}, response: {response}}}"


def _hinted(keys: list[str], hints: tuple[str, ...]) -> str | None:
    for hint in hints:
        for key in keys:
            if key.lower() == hint or (len(hint) > 2 and hint in key.lower()):
                return key
    return None
