"""Crash-safe checkpoints on top of the Hugging Face Trainer's own.

The Trainer writes `checkpoint-N/` file by file straight into its final folder, so a crash leaves a folder that
looks like a checkpoint (transformers#27820, #35782). Here a checkpoint counts only when its commit marker
`sftforge_complete.json` exists. The marker is written last, after every other file has been fsynced. It lists
each file with its size and SHA-256, the run identity used by the drift check, and the data position.

- `commit` writes the marker (atomically: temp file, fsync, rename, fsync of the folder).
- `problems` says what is wrong with a folder: no marker, a missing file, a truncated or altered one, JSON that
  does not parse. An empty list means the folder is complete.
- `newest_complete` picks the checkpoint to resume from and reports every newer one it skipped, with the reason.
- `rotate` applies `save_total_limit` after a commit. It never deletes the newest complete checkpoint or the best
  one, and it removes only folders older than the newest complete one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MARKER = "sftforge_complete.json"
_FORMAT = 1
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Files above this size are checked by size and structure only: hashing a 100 GB optimizer state on every resume
# costs minutes. Below it (every test, and the model of most LoRA runs) the full SHA-256 is compared.
HASH_LIMIT_BYTES = 2 << 30


def checkpoint_step(path: Path) -> int | None:
    match = _CHECKPOINT.match(path.name)
    return int(match.group(1)) if match else None


def checkpoint_folders(output_dir: Path) -> list[Path]:
    """checkpoint-N folders, oldest (lowest N) first."""
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=lambda p: checkpoint_step(p) or 0)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(folder: Path, run: dict[str, Any], position: dict[str, Any]) -> None:
    """Mark `folder` complete: fsync every file, then write the marker atomically, then fsync the folder."""
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MARKER):
        _fsync(path)
        size = path.stat().st_size
        entry: dict[str, Any] = {"size": size}
        if size <= HASH_LIMIT_BYTES:
            entry["sha256"] = _sha256(path)
        files[path.relative_to(folder).as_posix()] = entry
    doc = {"format": _FORMAT, "files": files, "run": run, "position": position}
    tmp = folder / f".{MARKER}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / MARKER)
    _fsync(folder)


def read_marker(folder: Path) -> dict[str, Any]:
    """The marker's content; raises ValueError with the reason when it is missing or unreadable."""
    path = folder / MARKER
    if not path.is_file():
        raise ValueError(f"{MARKER} is missing (the save did not finish)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{MARKER} is unreadable ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT or not isinstance(doc.get("files"), dict):
        raise ValueError(f"{MARKER} is not a sftforge checkpoint marker of format {_FORMAT}")
    return doc


def problems(folder: Path) -> list[str]:
    """Everything that makes `folder` unusable for resuming, each naming the file; [] when it is complete."""
    try:
        doc = read_marker(folder)
    except ValueError as e:
        return [str(e)]
    found: list[str] = []
    for name, expected in doc["files"].items():
        path = folder / name
        if not path.is_file():
            found.append(f"{name} is missing")
            continue
        size = path.stat().st_size
        if size != expected["size"]:
            found.append(f"{name} is truncated or altered ({size:,} bytes, {expected['size']:,} when saved)")
            continue
        if "sha256" in expected and _sha256(path) != expected["sha256"]:
            found.append(f"{name} is corrupt (its checksum differs from the one recorded when it was saved)")
            continue
        found += _structure_problems(path, name)
    return found


def _structure_problems(path: Path, name: str) -> list[str]:
    """Cheap checks for the files too large to hash: JSON parses, a safetensors header parses and fits."""
    try:
        if path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".safetensors":
            with open(path, "rb") as f:
                header_len = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(header_len))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
            if 8 + header_len + end > path.stat().st_size:
                return [f"{name} is truncated (its header describes more data than the file holds)"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return [f"{name} is unreadable ({type(e).__name__}: {e})"]
    return []


@dataclass
class Skipped:
    folder: Path
    reasons: list[str]

    def describe(self) -> str:
        return f"{self.folder.name}: " + "; ".join(self.reasons)


def newest_complete(output_dir: Path) -> tuple[Path | None, list[Skipped]]:
    """The newest complete checkpoint in output_dir, and the newer folders skipped on the way (with reasons)."""
    skipped: list[Skipped] = []
    for folder in reversed(checkpoint_folders(output_dir)):
        reasons = problems(folder)
        if not reasons:
            return folder, skipped
        skipped.append(Skipped(folder, reasons))
    return None, skipped


def remove_incomplete(folder: Path) -> bool:
    """Delete a checkpoint folder that never committed (a save killed half-way), before saving into it again."""
    if folder.is_dir() and not (folder / MARKER).is_file():
        shutil.rmtree(folder, ignore_errors=True)
        return True
    return False


def rotate(output_dir: Path, limit: int | None, best: str | None) -> list[Path]:
    """Apply save_total_limit after a commit; returns what was deleted.

    Kept: the newest complete checkpoint and the best one, always, even when that means more than `limit`
    folders; then the newest complete ones up to `limit`. Incomplete folders older than the newest complete
    one are leftovers of killed saves and go; newer incomplete ones (a save in progress elsewhere) stay."""
    folders = checkpoint_folders(output_dir)
    complete = [f for f in folders if (f / MARKER).is_file()]
    if not complete:
        return []
    newest = complete[-1]
    newest_step = checkpoint_step(newest) or 0
    best_path = Path(best).resolve() if best else None
    keep = {newest.resolve()} | ({best_path} if best_path else set())
    if limit and limit > 0:
        for folder in reversed(complete):
            if len(keep) >= limit:
                break
            keep.add(folder.resolve())
    deleted = []
    for folder in folders:
        resolved = folder.resolve()
        if resolved in keep:
            continue
        stale_partial = folder not in complete and (checkpoint_step(folder) or 0) < newest_step
        if (folder in complete and limit and limit > 0) or stale_partial:
            shutil.rmtree(folder, ignore_errors=True)
            deleted.append(folder)
    return deleted


def run_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Lines `key: checkpoint X, now Y` for every identity key that changed."""
    return [
        f"{key}: checkpoint {saved.get(key)!r}, now {current.get(key)!r}"
        for key in sorted(set(saved) | set(current))
        if saved.get(key) != current.get(key)
    ]
