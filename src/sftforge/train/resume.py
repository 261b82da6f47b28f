"""Which checkpoint a run continues from, and whether it may: `resume_from_checkpoint` resolved and checked
before any work starts, so a wrong resume fails in a second, not after preprocessing."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from sftforge.config import SFTConfig
from sftforge.errors import ConfigError
from sftforge.train import checkpoints

AUTO = {"auto", "true", "yes", "1"}
OFF = {"", "false", "no", "0", "none"}


def run_identity(cfg: SFTConfig, world_size: int) -> dict[str, Any]:
    """What a resumed run must share with the interrupted one (recorded in every checkpoint's marker)."""
    from sftforge.data.cache import data_digest

    model = cfg.model.model_name_or_path or cfg.model.config_name or ""
    local = Path(model).expanduser()
    args = cfg.training
    return {
        "model": str(local.resolve()) if local.exists() else model,
        "data": data_digest(cfg.data),
        "max_length": cfg.data.max_length,
        "packing": bool(cfg.data.packing),
        "seed": args.seed,
        "global_batch_size": args.per_device_train_batch_size * args.gradient_accumulation_steps * world_size,
        "finetuning_type": cfg.peft.finetuning_type,
        # streaming: the window size decides which rows a saved position means (absent otherwise: old markers match)
        **({"streaming_buffer": cfg.data.streaming_buffer} if getattr(cfg.data, "streaming", False) else {}),
        **(
            {"config_overrides": overrides}
            if (overrides := getattr(cfg.model, "config_overrides", None))
            else {}
        ),
    }


def resolve_resume(cfg: SFTConfig, out: Path, identity: dict[str, Any]) -> str | None:
    """The checkpoint folder to resume from, or None to start fresh. Raises ConfigError for an unusable request."""
    value = cfg.training.resume_from_checkpoint
    text = str(value).strip() if value is not None else ""
    if text.lower() in OFF:
        if cfg.training.overwrite_output_dir and _is_main_process():
            _clear_old_checkpoints(out)
        return None
    if text.lower() in AUTO:
        found, skipped = checkpoints.newest_complete(out)
        for s in skipped:
            _say(f"warning: not resuming from {s.describe()}")
        if found is None:
            if skipped:
                raise ConfigError(
                    f"resume_from_checkpoint: auto found no complete checkpoint in {str(out)!r}: every "
                    f"checkpoint folder is incomplete or damaged (listed above). Starting over needs "
                    "--overwrite_output_dir true (it deletes them).",
                    "resume_from_checkpoint",
                )
            _say(f"no checkpoint in {out} yet: starting from the beginning")
            return None
        folder = found
    else:
        folder = Path(text).expanduser()
        if not folder.is_dir():
            raise ConfigError(
                f"resume_from_checkpoint: {text!r} is not a folder. Give a checkpoint-N folder, or 'auto' for "
                "the newest complete one in output_dir.",
                "resume_from_checkpoint",
            )
        found_problems = checkpoints.problems(folder)
        if found_problems:
            raise ConfigError(
                [f"resume_from_checkpoint: {folder} cannot be resumed: {p}" for p in found_problems]
                + ["use an earlier checkpoint, or 'auto' to take the newest complete one"],
                "resume_from_checkpoint",
            )
    _check_drift(folder, identity, cfg.training.ignore_resume_mismatch)
    _say(f"resuming from {folder}")
    return str(folder)


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _say(text: str) -> None:
    if _is_main_process():
        print(f"sftforge: {text}", flush=True)


def _check_drift(folder: Path, identity: dict[str, Any], ignore: bool) -> None:
    saved = checkpoints.read_marker(folder).get("run") or {}
    differences = checkpoints.run_differences(saved, identity)
    if not differences:
        return
    if ignore:
        for line in differences:
            print(
                f"sftforge: warning: resuming despite a changed {line} (ignore_resume_mismatch)", flush=True
            )
        return
    raise ConfigError(
        [f"resuming {folder.name} with a different run — {line}" for line in differences]
        + [
            "restore the original settings, or pass --ignore_resume_mismatch true to continue anyway (the data "
            "order and position then no longer match the interrupted run)"
        ],
        "resume_from_checkpoint",
    )


def _clear_old_checkpoints(out: Path) -> None:
    """overwrite_output_dir without resuming: a previous run's checkpoints must not be resumed or rotated later."""
    for folder in checkpoints.checkpoint_folders(out):
        shutil.rmtree(folder, ignore_errors=True)
        print(f"sftforge: deleted {folder.name} of the previous run (overwrite_output_dir)", flush=True)
