"""A resumed run's learning rate follows this run's schedule (train/schedule.py): a run continued with a larger
max_steps used to train and log its first resumed step with the old schedule's final lr, 0."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import get_scheduler

from sftforge.config import load_config
from sftforge.train.run import run_training
from sftforge.train.schedule import follow_current_schedule

ROWS = [{"messages": [{"role": "user", "content": f"Count to {i}"},
                      {"role": "assistant", "content": " ".join(str(k) for k in range(i))}]} for i in range(3, 19)]  # fmt: skip


def _schedule(total: int, kind: str = "linear", warmup: int = 0):
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1e-3)
    return optimizer, get_scheduler(kind, optimizer, num_warmup_steps=warmup, num_training_steps=total)


def _train(optimizer, scheduler, steps: int) -> None:
    for _ in range(steps):
        optimizer.step()
        scheduler.step()


@pytest.mark.parametrize("kind,warmup", [("linear", 0), ("cosine", 2)])
def test_a_longer_schedule_takes_over_at_the_stored_position(kind, warmup):
    old_opt, old = _schedule(6, kind, warmup)
    _train(old_opt, old, 6)  # the finished run: its lr has reached 0
    straight_opt, straight = _schedule(9, kind, warmup)
    _train(straight_opt, straight, 6)  # what the 9-step run has at step 7
    new_opt, new = _schedule(9, kind, warmup)
    new_opt.load_state_dict(old_opt.state_dict())
    new.load_state_dict(old.state_dict())
    assert new_opt.param_groups[0]["lr"] == 0.0
    changed = follow_current_schedule(new)
    expected = straight.get_last_lr()[0]
    assert changed is not None and changed.step == 7 and changed.stored == 0.0
    assert changed.now == pytest.approx(expected) and new_opt.param_groups[0]["lr"] == pytest.approx(expected)
    _train(new_opt, new, 1)
    _train(straight_opt, straight, 1)
    assert new.get_last_lr()[0] == pytest.approx(straight.get_last_lr()[0])  # and stays on the curve


def test_an_unchanged_schedule_is_left_as_stored():
    opt, scheduler = _schedule(6)
    _train(opt, scheduler, 3)
    before = (scheduler.get_last_lr()[0], scheduler.last_epoch, opt.param_groups[0]["lr"])
    assert follow_current_schedule(scheduler) is None
    assert (scheduler.get_last_lr()[0], scheduler.last_epoch, opt.param_groups[0]["lr"]) == before


def test_other_schedulers_are_left_alone():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
    assert follow_current_schedule(plateau) is None and opt.param_groups[0]["lr"] == 1.0


def _cfg(tmp_path: Path, model_dir: Path, out: Path, max_steps: int, *extra: str):
    data = tmp_path / "t.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    return load_config(None, ["--model_name_or_path", str(model_dir), "--train_data_path", str(data),
                              "--output_dir", str(out), "--max_steps", str(max_steps), "--logging_steps", "1",
                              "--per_device_train_batch_size", "2", "--save_strategy", "steps", "--save_steps", "3",
                              "--report_to", "none", "--disable_tqdm", "true", *extra])  # fmt: skip


def _lrs(out: Path) -> dict[int, float]:
    history = json.loads((out / "log_history.json").read_text())
    return {e["step"]: e["learning_rate"] for e in history if "learning_rate" in e}


def test_a_run_continued_with_more_steps_logs_the_longer_runs_lr(tmp_path, tiny_model_dir, capsys):
    straight, out = tmp_path / "straight", tmp_path / "out"
    run_training(_cfg(tmp_path, tiny_model_dir, straight, 9))
    run_training(_cfg(tmp_path, tiny_model_dir, out, 6))
    for folder in out.glob("checkpoint-*"):  # keep only the finished run's last checkpoint
        if folder.name != "checkpoint-6":
            shutil.rmtree(folder)
    capsys.readouterr()
    run_training(_cfg(tmp_path, tiny_model_dir, out, 9, "--resume_from_checkpoint", "auto"))
    resumed, expected = _lrs(out), _lrs(straight)
    assert resumed[7] > 0  # it was 0: the 6-step schedule's value after its last step
    assert all(resumed[s] == pytest.approx(expected[s]) for s in range(7, 10))
    said = f"resuming onto a changed schedule (9 steps now): learning rate {expected[7]:.3g} at step 7"
    assert said in capsys.readouterr().out
