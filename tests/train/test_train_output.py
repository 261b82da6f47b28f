"""What `sftforge train` prints, through the real CLI with its output captured (not a terminal, as in a log file or
CI): one readable line per log step, no progress-bar escape codes, no library notices, the last step evaluated
once, and the TensorBoard command in the final summary. One 4-step run with an eval every 2 steps serves all."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROWS = [{"messages": [{"role": "user", "content": f"Say {w} {i} times"},
                      {"role": "assistant", "content": " ".join([w] * (1 + i % 4))}]}
        for i, w in enumerate(["sun", "moon", "star", "tree", "rock", "river", "hill", "lake", "sea", "sky"] * 4)]  # fmt: skip
TRAIN_LINE = re.compile(
    r"^step (\d)/4 \| loss \d+\.\d{4} \| lr \d\.\d\de-\d\d \| grad_norm [\d.]+ \| tok/s [\d,]+ \| eta \d+:\d\d:\d\d"
    r" \| epoch [\d.]+$"
)
EVAL_LINE = re.compile(r"^eval step (\d)/4 \| loss \d+\.\d{4} \| perplexity [\d.]+ \| [\d.]+ s$")
# Printed on every run before: DeepSpeed's accelerator detection (CPU), bitsandbytes' kernel check via `kernels`
# (offline), torch's lr-scheduler warning about the guard's optimizer.step wrapper
REPORT_TO = "tensorboard" if importlib.util.find_spec("tensorboard") else "none"  # the dev extra has it
NOTICES = (
    "Setting accelerator to CPU",
    "Skipping publisher trust check",
    "lr_scheduler.step()",
    "optimizer.step()",
)


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    folder = tmp_path_factory.mktemp("output")
    data = folder / "train.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    out = folder / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    env.pop("TENSORBOARD_LOGGING_DIR", None)
    cmd = [sys.executable, "-m", "sftforge", "train", "--model_name_or_path", str(tiny_model_dir),
           "--train_data_path", str(data), "--output_dir", str(out), "--max_steps", "4", "--logging_steps", "2",
           "--per_device_train_batch_size", "2", "--eval_split_ratio", "0.2", "--eval_strategy", "steps",
           "--eval_steps", "2", "--save_strategy", "no", "--report_to", REPORT_TO]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=folder, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-4000:])
    return proc, out


def test_one_readable_line_per_log_step_and_no_bar_noise(run):
    proc, _ = run
    lines = proc.stdout.splitlines()
    assert [m.group(1) for line in lines if (m := TRAIN_LINE.match(line))] == ["2", "4"], proc.stdout
    assert [m.group(1) for line in lines if (m := EVAL_LINE.match(line))] == ["2", "4"], proc.stdout
    assert "{'loss'" not in proc.stdout and "'eval_loss'" not in proc.stdout
    for stream in (proc.stdout, proc.stderr):  # the Trainer's, transformers' and sftforge's own bars: none
        assert "\x1b[" not in stream and "\r" not in stream, stream[-2000:]


def test_no_library_notices(run):
    proc, _ = run
    for notice in NOTICES:
        assert notice not in proc.stdout and notice not in proc.stderr, notice


def test_the_last_step_is_evaluated_once(run):
    _, out = run
    history = json.loads((out / "log_history.json").read_text())
    evaluated = [e["step"] for e in history if "eval_loss" in e]
    assert evaluated == [2, 4]
    metrics = json.loads((out / "metrics.json").read_text())
    last = next(e for e in reversed(history) if "eval_loss" in e)
    assert metrics["eval_loss"] == last["eval_loss"] and metrics["eval_perplexity"] == last["eval_perplexity"]


def test_the_final_summary_prints_the_tensorboard_command(run):
    pytest.importorskip("tensorboard")
    proc, out = run
    assert f" loss curves: tensorboard --logdir {out / 'runs'}\n" in proc.stdout
    assert list((out / "runs").glob("*/events.out.tfevents.*"))
