"""Crash safety through the real CLI in subprocesses: kill -9 at several points (also while a checkpoint is being
written), then `--resume_from_checkpoint auto`, must reproduce the uninterrupted run; damaged checkpoints are
skipped with a warning naming the file; rotation, drift refusal, a full disk and NaN/Inf steps.

Every scenario shares one recipe: 40 rows, batch 2 × gradient accumulation 2 → 10 optimizer steps per epoch,
30 steps (3 epochs), a checkpoint every 5 steps, fp32 on CPU, one thread."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sftforge_faults import fault_env

from sftforge.train.checkpoints import MARKER, problems

pytestmark = pytest.mark.slow

WORDS = ["sun", "moon", "star", "tree", "rock", "river", "hill", "lake", "sea", "sky"]
COMMON = ("--max_steps", "30", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2",
          "--learning_rate", "5e-3", "--logging_steps", "1", "--save_strategy", "steps", "--save_steps", "5",
          "--report_to", "none", "--seed", "0", "--max_length", "64", "--disable_tqdm", "true")  # fmt: skip
KILLED = -9


def run_train(model: Path, data: Path, out: Path, *extra: str, fault: str | None = None):
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    env = fault_env(env, fault)
    cmd = [sys.executable, "-m", "sftforge", "train", "--model_name_or_path", str(model),
           "--train_data_path", str(data), "--output_dir", str(out), *COMMON, *extra]  # fmt: skip
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def write_data(folder: Path) -> Path:
    path = folder / "train.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Say {w} {i} times"},
                          {"role": "assistant", "content": " ".join([w] * (1 + i % 4))}]}
            for i, w in enumerate(WORDS * 4)]  # fmt: skip
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def step_losses(out: Path) -> dict[int, float]:
    history = json.loads((out / "log_history.json").read_text())
    return {e["step"]: e["loss"] for e in history if "loss" in e}


def weights(folder: Path) -> dict[str, torch.Tensor]:
    name = (
        "adapter_model.safetensors"
        if (folder / "adapter_model.safetensors").is_file()
        else "model.safetensors"
    )
    return load_file(folder / name)


def assert_same_run(resumed: Path, straight: Path, from_step: int) -> None:
    a, b = step_losses(straight), step_losses(resumed)
    assert sorted(b) == list(range(1, 31))
    for step in range(from_step + 1, 31):  # the steps trained after the resume
        assert b[step] == pytest.approx(a[step], abs=1e-6), (step, a[step], b[step])
    wa, wb = weights(straight), weights(resumed)
    assert wa.keys() == wb.keys()
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= 1e-6


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def straight(tiny_model_dir, data, tmp_path_factory) -> Path:
    """The uninterrupted run every scenario is compared with (all its checkpoints kept)."""
    out = tmp_path_factory.mktemp("straight") / "out"
    ok(run_train(tiny_model_dir, data, out))
    return out


SCENARIOS = {
    # fault → the checkpoint the resume must start from
    "mid_epoch": ("kill_at_step=7", 5),
    "inside_accumulation_window": ("kill_in_accumulation=13", 10),
    "after_epoch_1": ("kill_at_step=23", 20),
    "during_save_after_model": ("kill_during_save=25:after_model", 20),
    "during_save_before_marker": ("kill_during_save=25:before_marker", 20),
}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_kill_then_resume_reproduces_the_uninterrupted_run(
    scenario, tiny_model_dir, data, straight, tmp_path
):
    fault, resume_step = SCENARIOS[scenario]
    out = tmp_path / "out"
    killed = run_train(tiny_model_dir, data, out, fault=fault)
    assert killed.returncode == KILLED, killed.stderr[-3000:]
    if "during_save" in scenario:
        assert (out / "checkpoint-25").is_dir() and not (out / "checkpoint-25" / MARKER).exists()
    resumed = ok(run_train(tiny_model_dir, data, out, "--resume_from_checkpoint", "auto"))
    assert f"resuming from {out / f'checkpoint-{resume_step}'}" in resumed.stdout
    if "during_save" in scenario:
        assert "not resuming from checkpoint-25" in resumed.stdout  # named, with the reason
        assert problems(out / "checkpoint-25") == []  # re-saved, complete this time
    assert_same_run(out, straight, resume_step)


@pytest.mark.parametrize("mode", ["lora", "packing"])
def test_kill_and_resume_with_lora_and_with_packing(mode, tiny_model_dir, data, tmp_path):
    extra = ("--finetuning_type", "lora", "--lora_r", "4") if mode == "lora" else ("--packing", "true")
    straight_out, out = tmp_path / "straight", tmp_path / "out"
    ok(run_train(tiny_model_dir, data, straight_out, *extra))
    assert run_train(tiny_model_dir, data, out, *extra, fault="kill_in_accumulation=18").returncode == KILLED
    ok(run_train(tiny_model_dir, data, out, *extra, "--resume_from_checkpoint", "auto"))
    assert_same_run(out, straight_out, 15)


def _truncate(f: Path) -> None:
    path = f / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])


CORRUPTIONS = {
    "truncated_safetensors": (_truncate, "model.safetensors is truncated"),
    "zeroed_optimizer": (lambda f: (f / "optimizer.pt").write_bytes(b""), "optimizer.pt is truncated"),
    "missing_marker": (lambda f: (f / MARKER).unlink(), f"{MARKER} is missing"),
    "corrupt_json": (lambda f: (f / "trainer_state.json").write_text("{oops"), "trainer_state.json is"),
}


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(
    kind, tiny_model_dir, data, straight, tmp_path
):
    out = tmp_path / "out"
    out.mkdir()
    for step in (25, 30):
        shutil.copytree(straight / f"checkpoint-{step}", out / f"checkpoint-{step}")
    damage, message = CORRUPTIONS[kind]
    damage(out / "checkpoint-30")
    proc = ok(run_train(tiny_model_dir, data, out, "--resume_from_checkpoint", "auto"))
    assert f"not resuming from checkpoint-30: {message}" in proc.stdout
    assert f"resuming from {out / 'checkpoint-25'}" in proc.stdout
    assert_same_run(out, straight, 25)


def test_an_explicit_damaged_checkpoint_is_refused_naming_the_file(tiny_model_dir, data, straight, tmp_path):
    folder = tmp_path / "checkpoint-30"
    shutil.copytree(straight / "checkpoint-30", folder)
    _truncate(folder)
    proc = run_train(tiny_model_dir, data, tmp_path / "out", "--resume_from_checkpoint", str(folder))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "model.safetensors is truncated" in proc.stderr


def test_starting_fresh_over_checkpoints_is_refused_with_the_resume_command(tiny_model_dir, data, straight):
    proc = run_train(tiny_model_dir, data, straight)
    assert proc.returncode == 2 and "--resume_from_checkpoint auto" in proc.stderr


def test_resume_with_changed_settings_is_refused_unless_ignored(tiny_model_dir, data, straight, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    shutil.copytree(straight / "checkpoint-25", out / "checkpoint-25")
    proc = run_train(tiny_model_dir, data, out, "--resume_from_checkpoint", "auto", "--seed", "1",
                     "--max_length", "48")  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "seed: checkpoint 0, now 1" in proc.stderr and "max_length: checkpoint 64, now 48" in proc.stderr
    proc = ok(run_train(tiny_model_dir, data, out, "--resume_from_checkpoint", "auto", "--seed", "1",
                        "--ignore_resume_mismatch", "true"))  # fmt: skip
    assert "resuming despite a changed seed" in proc.stdout


@pytest.mark.parametrize("limit", [1, 2, 3])
def test_rotation_keeps_the_newest_checkpoints(limit, tiny_model_dir, data, tmp_path):
    out = tmp_path / "out"
    ok(run_train(tiny_model_dir, data, out, "--save_total_limit", str(limit)))
    kept = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert kept == [5, 10, 15, 20, 25, 30][-limit:]
    assert all(problems(out / f"checkpoint-{s}") == [] for s in kept)


def test_rotation_with_limit_1_keeps_the_best_and_the_newest(tiny_model_dir, data, tmp_path):
    """transformers#25129: limit 1 + best-model tracking used to delete the newest checkpoint at the end."""
    out = tmp_path / "out"
    ok(run_train(tiny_model_dir, data, out, "--save_total_limit", "1", "--eval_split_ratio", "0.2",
                 "--eval_strategy", "steps", "--eval_steps", "5", "--load_best_model_at_end", "true",
                 "--metric_for_best_model", "loss", "--greater_is_better", "true"))  # fmt: skip
    # greater_is_better on a falling loss: the *first* checkpoint stays the best, so best ≠ newest
    kept = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert kept == [5, 30]


def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint(tiny_model_dir, data, tmp_path):
    out = tmp_path / "out"
    proc = run_train(tiny_model_dir, data, out, fault="enospc_during_save=20")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "saving checkpoint-20 failed: No space left on device" in proc.stderr
    assert "checkpoint-15, is intact" in proc.stderr
    assert not (out / "checkpoint-20").exists() and problems(out / "checkpoint-15") == []


def test_an_unwritable_output_dir_fails_before_training(tiny_model_dir, data, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = run_train(tiny_model_dir, data, blocker / "out")
    assert (
        proc.returncode == 2 and "output_dir: cannot write" in proc.stderr and "Traceback" not in proc.stderr
    )


@pytest.mark.parametrize("fault, what", [("nan_loss_at_step=12", "the loss is nan"),
                                         ("inf_grad_at_step=12", "the gradient norm is inf")])  # fmt: skip
def test_a_non_finite_step_stops_before_the_optimizer_step(fault, what, tiny_model_dir, data, tmp_path):
    out = tmp_path / "out"
    proc = run_train(tiny_model_dir, data, out, fault=fault)
    assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"step 12 (rank 0): {what}" in proc.stderr
    assert "train.jsonl:" in proc.stderr  # the step's examples, by file:line
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-10", "checkpoint-5"]
    assert problems(out / "checkpoint-10") == [] and not (out / "model.safetensors").exists()


def test_nan_policy_skip_skips_the_step_and_finishes(tiny_model_dir, data, tmp_path):
    out = tmp_path / "out"
    proc = ok(run_train(tiny_model_dir, data, out, "--nan_policy", "skip", fault="nan_loss_at_step=12"))
    assert "step 12 (rank 0): the loss is nan; skipping this optimizer step" in proc.stdout
    marker = json.loads((out / "checkpoint-15" / MARKER).read_text())
    assert marker["position"]["skipped_non_finite_steps"] == 1
    finite = weights(out)
    assert all(torch.isfinite(t).all() for t in finite.values())


def test_nan_policy_skip_stops_after_max_skipped_steps_in_a_row(tiny_model_dir, data, tmp_path):
    proc = run_train(tiny_model_dir, data, tmp_path / "out", "--nan_policy", "skip", "--max_skipped_steps", "2",
                     fault="nan_loss_from_step=12")  # fmt: skip
    assert proc.returncode == 3 and "step 14 (rank 0): the loss is nan" in proc.stderr
    assert "2 steps in a row were non-finite" in proc.stderr


def test_lora_runs_start_from_the_same_adapter_with_a_cold_or_a_warm_cache(tiny_model_dir, data, tmp_path):
    """The seed is set before the LoRA matrices are initialised: a rerun (here one that hits the preprocessing
    cache the first one filled) must train the same adapter — the killed run and its resume depend on it."""
    args = ("--finetuning_type", "lora", "--lora_r", "4", "--max_steps", "3", "--save_strategy", "no")
    cold, warm = tmp_path / "cold", tmp_path / "warm"
    assert "cache        miss" in ok(run_train(tiny_model_dir, data, cold, *args)).stdout
    assert "cache        hit" in ok(run_train(tiny_model_dir, data, warm, *args)).stdout
    a, b = weights(cold), weights(warm)
    assert all(torch.equal(a[k], b[k]) for k in a)
