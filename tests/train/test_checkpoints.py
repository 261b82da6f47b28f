"""Commit markers, validation, choosing the checkpoint to resume from, and rotation — on folders made by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftforge.train import checkpoints
from sftforge.train.checkpoints import MARKER, commit, newest_complete, problems, rotate, run_differences


def _safetensors(path: Path, n: int = 16) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}}).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(4 * n))


def make_checkpoint(out: Path, step: int, complete: bool = True) -> Path:
    folder = out / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    _safetensors(folder / "model.safetensors")
    (folder / "optimizer.pt").write_bytes(b"\x01" * 100)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if complete:
        commit(folder, {"seed": 1}, {"global_step": step})
    return folder


def test_a_committed_checkpoint_has_no_problems_and_records_every_file(tmp_path):
    folder = make_checkpoint(tmp_path, 10)
    assert problems(folder) == []
    doc = json.loads((folder / MARKER).read_text())
    assert set(doc["files"]) == {"model.safetensors", "optimizer.pt", "trainer_state.json"}
    assert doc["run"] == {"seed": 1} and doc["position"] == {"global_step": 10}
    assert not list(folder.glob(".*tmp"))


def _truncate_safetensors(f: Path) -> None:
    data = (f / "model.safetensors").read_bytes()
    (f / "model.safetensors").write_bytes(data[:-10])


def _zero_optimizer(f: Path) -> None:
    (f / "optimizer.pt").write_bytes(bytes(100))  # same size, zeroed


def _corrupt_json(f: Path) -> None:
    (f / "trainer_state.json").write_text('{"global_step": 1')


CORRUPTIONS = {
    "truncated_safetensors": (_truncate_safetensors, "model.safetensors is truncated"),
    "zeroed_optimizer": (_zero_optimizer, "optimizer.pt is corrupt"),
    "corrupt_json": (_corrupt_json, "trainer_state.json is"),
    "missing_marker": (lambda f: (f / MARKER).unlink(), f"{MARKER} is missing"),
    "missing_file": (lambda f: (f / "optimizer.pt").unlink(), "optimizer.pt is missing"),
    "unreadable_marker": (lambda f: (f / MARKER).write_text("{"), f"{MARKER} is unreadable"),
}


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_each_corruption_is_found_and_named(tmp_path, kind):
    folder = make_checkpoint(tmp_path, 10)
    damage, message = CORRUPTIONS[kind]
    damage(folder)
    found = problems(folder)
    assert len(found) == 1 and found[0].startswith(message), found


def test_large_files_are_checked_by_structure(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoints, "HASH_LIMIT_BYTES", 10)  # every file "large": no checksums recorded
    folder = make_checkpoint(tmp_path, 10)
    assert "sha256" not in json.loads((folder / MARKER).read_text())["files"]["model.safetensors"]
    assert problems(folder) == []
    _zero_optimizer(folder)
    assert problems(folder) == []  # same size, no checksum: this is what the size limit gives up
    state = folder / "trainer_state.json"
    state.write_text(state.read_text()[:-1] + " ")  # same size, invalid JSON
    assert problems(folder)[0].startswith("trainer_state.json is unreadable")


def test_newest_complete_skips_damaged_and_incomplete_newer_folders(tmp_path):
    make_checkpoint(tmp_path, 10)
    make_checkpoint(tmp_path, 20)
    _truncate_safetensors(make_checkpoint(tmp_path, 30))
    make_checkpoint(tmp_path, 40, complete=False)
    found, skipped = newest_complete(tmp_path)
    assert found == tmp_path / "checkpoint-20"
    assert [s.folder.name for s in skipped] == ["checkpoint-40", "checkpoint-30"]
    assert "model.safetensors is truncated" in skipped[1].describe()
    assert newest_complete(tmp_path / "nothing") == (None, [])


def test_checkpoints_sort_by_step_not_by_name(tmp_path):
    for step in (5, 10, 100):
        make_checkpoint(tmp_path, step)
    assert [f.name for f in checkpoints.checkpoint_folders(tmp_path)] == [
        "checkpoint-5",
        "checkpoint-10",
        "checkpoint-100",
    ]


@pytest.mark.parametrize("limit", [1, 2, 3])
def test_rotation_keeps_the_newest_complete_ones(tmp_path, limit):
    for step in (10, 20, 30, 40):
        make_checkpoint(tmp_path, step)
    rotate(tmp_path, limit, None)
    kept = [f.name for f in checkpoints.checkpoint_folders(tmp_path)]
    assert kept == [f"checkpoint-{s}" for s in (10, 20, 30, 40)][-limit:]


def test_rotation_keeps_the_best_beyond_the_limit(tmp_path):
    for step in (10, 20, 30):
        make_checkpoint(tmp_path, step)
    rotate(tmp_path, 1, str(tmp_path / "checkpoint-10"))
    assert [f.name for f in checkpoints.checkpoint_folders(tmp_path)] == ["checkpoint-10", "checkpoint-30"]


def test_rotation_never_counts_an_incomplete_newer_folder_as_the_newest(tmp_path):
    """limit 1 while checkpoint-30 is still being written: checkpoint-20 (the newest complete) must survive."""
    make_checkpoint(tmp_path, 10)
    make_checkpoint(tmp_path, 20)
    make_checkpoint(tmp_path, 30, complete=False)
    rotate(tmp_path, 1, None)
    assert [f.name for f in checkpoints.checkpoint_folders(tmp_path)] == ["checkpoint-20", "checkpoint-30"]


def test_rotation_removes_stale_partial_folders_only(tmp_path):
    make_checkpoint(tmp_path, 10, complete=False)  # a save killed long ago
    make_checkpoint(tmp_path, 20)
    rotate(tmp_path, None, None)  # no limit: complete ones all stay, the stale partial one goes
    assert [f.name for f in checkpoints.checkpoint_folders(tmp_path)] == ["checkpoint-20"]


def test_remove_incomplete_leaves_committed_folders_alone(tmp_path):
    done = make_checkpoint(tmp_path, 10)
    partial = make_checkpoint(tmp_path, 20, complete=False)
    assert not checkpoints.remove_incomplete(done) and done.is_dir()
    assert checkpoints.remove_incomplete(partial) and not partial.exists()


def test_run_differences_lists_each_changed_key():
    saved = {"seed": 1, "max_length": 512, "model": "a"}
    assert run_differences(saved, dict(saved)) == []
    assert run_differences(saved, {**saved, "seed": 2, "packing": True}) == [
        "packing: checkpoint None, now True",
        "seed: checkpoint 1, now 2",
    ]
