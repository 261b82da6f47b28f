"""metrics.json's train_loss is the mean of the per-step losses with 2 processes, also when no step was logged
(logging_steps > max_steps): each rank's loss is its share of the tokens of both ranks, so only their mean is the
step's loss, and the Trainer used rank 0's share for the steps after the last log.

Two real 2-process runs (torchrun, gloo on CPU) of the same 6 steps: one logs every step, one never."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
# Answers of 1 to 7 words: the two ranks' batches hold different numbers of trained tokens
ROWS = [{"messages": [{"role": "user", "content": f"Say {w} {i} times"},
                      {"role": "assistant", "content": " ".join([w] * (1 + i % 7))}]}
        for i, w in enumerate(["sun", "moon", "star", "tree", "rock", "river", "hill", "lake"] * 3)]  # fmt: skip


def _port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def train_two_processes(model: Path, data: Path, out: Path, logging_steps: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               MASTER_ADDR="127.0.0.1")  # fmt: skip
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", _port(),
           "-m", "sftforge", "train", "--model_name_or_path", str(model), "--train_data_path", str(data),
           "--output_dir", str(out), "--max_steps", "6", "--per_device_train_batch_size", "2",
           "--logging_steps", str(logging_steps), "--learning_rate", "5e-3", "--save_strategy", "no",
           "--report_to", "none", "--seed", "0", "--max_length", "64", "--torch_dtype", "float32"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-5000:])
    return json.loads((out / "metrics.json").read_text())


def test_mean_train_loss_of_two_processes_with_no_step_logged(tiny_model_dir, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    every_step = train_two_processes(tiny_model_dir, data, tmp_path / "every", logging_steps=1)
    history = json.loads((tmp_path / "every" / "log_history.json").read_text())
    losses = [e["loss"] for e in history if "loss" in e]
    assert len(losses) == 6
    mean = sum(losses) / len(losses)
    assert every_step["train_loss"] == pytest.approx(mean, abs=1e-5)

    never = train_two_processes(tiny_model_dir, data, tmp_path / "never", logging_steps=100)
    assert not any("loss" in e for e in json.loads((tmp_path / "never" / "log_history.json").read_text()))
    assert never["train_loss"] == pytest.approx(mean, abs=1e-5)
