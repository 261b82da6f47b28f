"""`report_to` with the reporters the guides use, through the real CLI for 2 steps: TensorBoard into `logging_dir`
(which transformers 5 no longer reads), wandb offline, swanlab offline. Each needs its package (the dev extra
installs them); a missing one is a config error, tested in tests/config/test_guide_keys.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def train(tmp_path: Path, model: Path, *extra: str, **env_extra: str) -> subprocess.CompletedProcess:
    data = tmp_path / "train.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Say {w}"}, {"role": "assistant", "content": w}]}
            for w in ["sun", "moon", "star", "tree"] * 4]  # fmt: skip
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    env = dict(
        os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", **env_extra
    )
    env.pop("TENSORBOARD_LOGGING_DIR", None)
    cmd = [sys.executable, "-m", "sftforge", "train", "--model_name_or_path", str(model), "--train_data_path",
           str(data), "--output_dir", str(tmp_path / "out"), "--max_steps", "2", "--logging_steps", "1",
           "--per_device_train_batch_size", "4", "--save_strategy", "no", "--disable_tqdm", "true", *extra]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-4000:])
    return proc


def test_tensorboard_writes_into_logging_dir(tmp_path, tiny_model_dir):
    pytest.importorskip("tensorboard")
    proc = train(tmp_path, tiny_model_dir, "--report_to", "tensorboard", "--logging_dir", "tb")
    assert "decision     logging_dir: TensorBoard event files go to tb" in proc.stdout
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert events, sorted(p.name for p in tmp_path.iterdir())
    assert not (tmp_path / "out" / "runs").exists()  # not in the default place


def test_wandb_offline(tmp_path, tiny_model_dir):
    pytest.importorskip("wandb", reason="wandb is not installed (pip install -e '.[wandb]')")
    train(tmp_path, tiny_model_dir, "--report_to", "wandb", WANDB_MODE="offline", WANDB_DIR=str(tmp_path),
          WANDB_SILENT="true")  # fmt: skip
    runs = list((tmp_path / "wandb").glob("offline-run-*/*.wandb"))
    assert runs and b"train/loss" in runs[0].read_bytes()


def test_swanlab_offline(tmp_path, tiny_model_dir):
    pytest.importorskip("swanlab", reason="swanlab is not installed (pip install -e '.[swanlab]')")
    train(tmp_path, tiny_model_dir, "--report_to", "swanlab", SWANLAB_MODE="offline",
          SWANLAB_LOG_DIR=str(tmp_path / "swanlog"))  # fmt: skip
    # swanlab 0.10's get_run() raises where transformers' own callback expects None: sftforge uses swanlab's
    # transformers callback instead, and the losses reach the run file
    runs = list((tmp_path / "swanlog").glob("run-*/run-*.swanlab"))
    assert runs and b"train/loss" in runs[0].read_bytes()
