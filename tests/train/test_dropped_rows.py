"""`sftforge train` never loses rows silently: too many rows over max_length stop it with the lengths and a fix;
fewer show a warning line, and metrics.json and the model card record every dropped row by reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def run_train(tmp_path: Path, model: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    argv = [sys.executable, "-m", "sftforge", "train", "--model_name_or_path", str(model)]
    argv += ["--output_dir", str(tmp_path / "out"), "--max_steps", "1", "--save_strategy", "no"]
    argv += ["--per_device_train_batch_size", "4", *args]
    return subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_the_issues_run_stops_with_the_lengths_and_a_fix(
    tmp_path: Path, tiny_model_dir: Path, shared_data: Path
) -> None:
    # Reported: 200 Alpaca rows at max_length 64 lost nearly all of them, and training went on.
    data = shared_data / "alpaca_en_demo.json"
    proc = run_train(tmp_path, tiny_model_dir, "--train_data_path", str(data), "--max_length", "64",
                     "--max_samples", "200")  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    message = proc.stderr[proc.stderr.index("sftforge train: error:") :]
    head = message.splitlines()[0]
    dropped = int(head.split(" of 200 train rows read")[0].rsplit(" ", 1)[1])
    assert dropped > 10, head  # more than 5% of 200
    assert (
        f"{dropped} of 200 train rows read ({dropped / 200:.1%}) were dropped for being longer than " in head
    )
    assert "max_length=64 (truncation: turns; exceeds_max_length: " in head
    assert "Row lengths before truncation: p50 " in message and ", p99 " in message
    assert "set max_length: " in message and "set truncation: right" in message
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_a_few_long_rows_train_with_a_warning_and_are_recorded(tmp_path: Path, tiny_model_dir: Path) -> None:
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Question {i}?"},
                {"role": "assistant", "content": f"A {i}."},
            ]
        }
        for i in range(39)
    ]
    rows.append(
        {"messages": [{"role": "user", "content": "Story?"}, {"role": "assistant", "content": "word " * 200}]}
    )
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = run_train(tmp_path, tiny_model_dir, "--train_data_path", str(data), "--max_length", "64")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        " ⚠ dropped 1 of 40 train rows (2.5%) longer than max_length=64 (exceeds_max_length: 1), within "
        "max_dropped_fraction=0.05" in proc.stdout
    ), proc.stdout
    out = tmp_path / "out"
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["rows_read"], metrics["rows_kept"]) == (40, 39)
    assert metrics["rows_dropped"] == {"exceeds_max_length": 1}
    card = (out / "README.md").read_text()
    assert "| reason | rows |\n|---|---|\n| exceeds_max_length | 1 |" in card
