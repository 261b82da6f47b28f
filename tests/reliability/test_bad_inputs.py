"""Reliability: the real `sftforge train` CLI, in a subprocess, on a corpus of broken inputs.

Strict mode (`on_bad_rows: error`, the default): every broken input ends the run with exit code 2 and ONE message
that names the place to fix (`file:line: `, or the config key when a whole file or folder is unusable) and the
reason — never a Python traceback. Lenient mode (`on_bad_rows: skip`): a file mixing good rows with one row of each
kind of mistake trains, with the dropped rows counted by reason; a file with more than `max_bad_row_fraction` of
its rows unusable stops with exit code 2.

Each case is one subprocess (~6-8 s of imports), so the corpus is kept to one row per kind of mistake.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

SHARED_TEMPLATES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "chat_templates"
STRICT_HINT = "Fix the row, or set `on_bad_rows: skip`"


def good(i: int) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": f"Is {i} an even number?"},
            {"role": "assistant", "content": "yes" if i % 2 == 0 else "no"},
        ]
    }


def turns(*pairs: tuple[str, Any]) -> dict[str, Any]:
    return {"messages": [{"role": role, "content": content} for role, content in pairs]}


LONG_ANSWER = turns(("user", "Count."), ("assistant", " ".join(str(n) for n in range(400))))

# One row per kind of data mistake: (raw line written to the .jsonl, reason code, what the message says).
BAD = {
    "invalid_json": ('{"messages": [{"role": "user", "content": "hi"}', "invalid JSON at column"),
    "not_an_object": ("[1, 2, 3]", "the row is a list, not a JSON object"),
    "not_utf8": (b'{"messages": "caf\xe9"}', "the line is not valid UTF-8"),
    "empty_messages": ({"messages": []}, "`messages` is an empty list"),
    "unknown_role": (
        turns(("user", "hi"), ("critic", "meh"), ("assistant", "ok")),
        "turn 1 has role 'critic'",
    ),
    "no_assistant_turn": (
        turns(("system", "Be brief."), ("user", "Anyone?")),
        "the conversation has no assistant turn",
    ),
    "assistant_first": (
        turns(("assistant", "I speak first."), ("user", "ok")),
        "the conversation starts with an assistant turn",
    ),
    "bad_content_type": (
        turns(("user", "What is 6 x 7?"), ("assistant", 42)),
        "turn 1 (assistant) has content of type int",
    ),
}
IMAGE_PART = turns(
    ("user", [{"type": "image_url", "image_url": {"url": "http://x/cat.png"}}]), ("assistant", "A cat.")
)


def write_jsonl(path: Path, lines: list[Any]) -> Path:
    """Each item is a row (dumped as JSON), or a str/bytes written as the raw line."""
    raw = [
        line if isinstance(line, bytes) else (line if isinstance(line, str) else json.dumps(line)).encode()
        for line in lines
    ]
    path.write_bytes(b"\n".join(raw) + b"\n")
    return path


def run_train(tmp_path: Path, model: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    argv = [sys.executable, "-m", "sftforge", "train", "--model_name_or_path", str(model)]
    argv += ["--output_dir", str(tmp_path / "out"), "--max_steps", "1", "--save_strategy", "no"]
    argv += ["--per_device_train_batch_size", "4", "--max_length", "128", *args]
    return subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def assert_one_clean_error(proc: subprocess.CompletedProcess, *expected: str) -> str:
    """Exit code 2, exactly one `error:` message holding every expected piece, no traceback; returns it."""
    err = proc.stderr
    assert proc.returncode == 2, f"exit {proc.returncode}\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    assert err.count("sftforge train: error:") == 1, err[-3000:]
    assert not re.search(r"\w(Error|Exception)\b", err), err[-3000:]  # no exception class leaks out
    message = err[err.index("sftforge train: error:") :]
    for piece in expected:
        assert piece in message, f"{piece!r} not in:\n{message}"
    return message


# --- strict mode: one message per broken input ------------------------------------------------------------------


@dataclass
class Case:
    """`make(tmp_path)` writes the input and returns (train_data_path, extra CLI args, expected message pieces)."""

    make: Callable[[Path], tuple[Path, list[str], list[str]]]
    row_error: bool = True  # a per-row mistake: the message offers on_bad_rows: skip


def _row_case(reason: str) -> Case:
    line, detail = BAD[reason]

    def make(tmp: Path) -> tuple[Path, list[str], list[str]]:
        path = write_jsonl(tmp / "train.jsonl", [good(1), line, good(3)])
        return path, [], [f"{path}:2: {detail}", f"[{reason}]"]

    return Case(make)


def _empty_file(tmp: Path) -> tuple[Path, list[str], list[str]]:
    path = tmp / "train.jsonl"
    path.write_text("")
    return path, [], [f"train_data_path: {path}: the file is empty (no rows)"]


def _missing_file(tmp: Path) -> tuple[Path, list[str], list[str]]:
    path = tmp / "nope.jsonl"
    return path, [], [f"train_data_path: '{path}' does not exist"]


def _folder_without_data(tmp: Path) -> tuple[Path, list[str], list[str]]:
    folder = tmp / "data"
    folder.mkdir()
    (folder / "README.txt").write_text("the data is elsewhere")
    return folder, [], [f"train_data_path: {folder}: the directory holds no data file", ".jsonl"]


def _template_refuses(tmp: Path) -> tuple[Path, list[str], list[str]]:
    source = SHARED_TEMPLATES / "chatml.jinja"
    if not source.is_file():
        pytest.skip(f"../shared is absent: fixture chat template not found at {source}")
    template = tmp / "strict-chatml.jinja"  # the fixture's indentation stripped, as its authors advise
    template.write_text(source.read_text(encoding="utf-8").replace("    ", "").replace("\n", ""))
    path = write_jsonl(tmp / "train.jsonl", [good(1), BAD["assistant_first"][0], good(3)])
    return (
        path,
        ["--chat_template", str(template)],
        [
            f"{path}:2: the chat template refused this conversation",
            "roles must alternate",
            "[template_error]",
        ],
    )


def _too_long(tmp: Path) -> tuple[Path, list[str], list[str]]:
    path = write_jsonl(tmp / "train.jsonl", [good(1), LONG_ANSWER, good(3)])
    expected = [
        f"{path}:2: ",
        "is longer than max_length=128 (truncation: error)",
        "raise max_length",
        "[too_long]",
    ]
    return path, ["--truncation", "error"], expected


CASES = {
    "empty_file": Case(_empty_file, row_error=False),
    "missing_file": Case(_missing_file, row_error=False),
    "folder_without_data": Case(_folder_without_data, row_error=False),
    **{reason: _row_case(reason) for reason in BAD if reason != "assistant_first"},
    "template_refuses_assistant_first": Case(_template_refuses),
    "too_long_with_truncation_error": Case(_too_long, row_error=False),  # fatal whatever on_bad_rows says
}


@pytest.mark.parametrize("name", list(CASES))
def test_strict_mode_stops_with_one_clear_message(name: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    case = CASES[name]
    path, extra, expected = case.make(tmp_path)
    proc = run_train(tmp_path, tiny_model_dir, "--train_data_path", str(path), *extra)
    message = assert_one_clean_error(proc, *expected)
    assert (STRICT_HINT in message) == case.row_error, message
    assert not (tmp_path / "out" / "model.safetensors").exists()


# --- lenient mode -----------------------------------------------------------------------------------------------


def test_skip_mode_counts_each_reason_and_trains(tmp_path: Path, tiny_model_dir: Path) -> None:
    bad_lines = [line for line, _ in BAD.values()] + [IMAGE_PART]  # 9 bad rows: bad_content_type twice
    lines = [good(i) for i in range(100)]
    for k, line in enumerate([*bad_lines, LONG_ANSWER]):  # spread through the file
        lines.insert(5 + 11 * k, line)
    path = write_jsonl(tmp_path / "train.jsonl", lines)
    proc = run_train(tmp_path, tiny_model_dir, "--train_data_path", str(path), "--on_bad_rows", "skip")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    # 9 bad of 110 read (8.2%) is under the default max_bad_row_fraction=0.1; the row too long for max_length
    # is dropped too but is no data mistake (truncation: turns never cuts inside the last answer).
    assert " data         110 rows read, 100 kept; formats: messages 100" in proc.stdout, proc.stdout
    dropped = next(line for line in proc.stdout.splitlines() if line.startswith(" dropped "))
    counts = dict(item.split(": ") for item in dropped.split(None, 1)[1].split(", "))
    assert counts == {**{reason: "1" for reason in BAD}, "bad_content_type": "2", "exceeds_max_length": "1"}
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["global_step"] == 1


def test_skip_mode_stops_when_too_many_rows_are_bad(tmp_path: Path, tiny_model_dir: Path) -> None:
    # A wrong format for part of the data: 2 of 10 rows unusable is more than the default 10%.
    wrong_format = {"question": "Is 2 even?", "answer": "yes"}
    lines = [
        good(1),
        good(2),
        wrong_format,
        good(4),
        good(5),
        BAD["invalid_json"][0],
        *map(good, range(7, 11)),
    ]
    path = write_jsonl(tmp_path / "train.jsonl", lines)
    proc = run_train(tmp_path, tiny_model_dir, "--train_data_path", str(path), "--on_bad_rows", "skip")
    assert_one_clean_error(
        proc,
        "2 of 10 train rows read (20.0%) are unusable, more than max_bad_row_fraction=0.1 allows",
        "Dropped by reason: ",
        "unknown_format: 1",
        "invalid_json: 1",
        f"first unknown_format: {path}:3: cannot tell the format",
        f"first invalid_json: {path}:6: invalid JSON",
        "fix the data",
        "raise max_bad_row_fraction",
    )
