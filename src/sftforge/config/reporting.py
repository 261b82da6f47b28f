"""`report_to`: every named reporter must be installed (and known to transformers) before data and model load,
and `logging_dir`, which transformers 5 dropped, still says where TensorBoard writes.

Without this check a missing package fails only when the Trainer is built, after the data is tokenized and the
model is loaded (minutes on a real run), or inside every launched process.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

# reporter → (modules any one of which makes it work, how to install it)
_PACKAGES: dict[str, tuple[tuple[str, ...], str]] = {
    "tensorboard": (
        ("tensorboard", "tensorboardX"),
        "pip install -e '.[tensorboard]' (or pip install tensorboard)",
    ),
    "wandb": (("wandb",), "pip install -e '.[wandb]' (or pip install wandb)"),
    "swanlab": (("swanlab",), "pip install -e '.[swanlab]' (or pip install swanlab)"),
    "mlflow": (("mlflow",), "pip install mlflow"),
    "comet_ml": (("comet_ml",), "pip install comet_ml"),
    "neptune": (("neptune",), "pip install neptune"),
    "trackio": (("trackio",), "pip install trackio"),
    "clearml": (("clearml",), "pip install clearml"),
    "dvclive": (("dvclive",), "pip install dvclive"),
    "codecarbon": (("codecarbon",), "pip install codecarbon"),
    "dagshub": (("dagshub",), "pip install dagshub"),
}


def reporters(report_to: Any) -> list[str]:
    """The reporter names of a `report_to` value (a name, a list, 'none' or 'all' → as given)."""
    if report_to is None:
        return []
    names = [report_to] if isinstance(report_to, str) else list(report_to)
    return [str(n).strip() for n in names if str(n).strip() and str(n).strip() != "none"]


def _known() -> list[str]:
    try:
        from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

        return list(INTEGRATION_TO_CALLBACK)
    except Exception:  # an unusual transformers build: leave the name check to the Trainer
        return []


def check_report_to(train: dict[str, Any], problems: list[str]) -> list[str]:
    """Problems for unknown or uninstalled reporters; notes for the start-up summary."""
    names = reporters(train.get("report_to", "none"))
    notes: list[str] = []
    known = _known()
    for name in names:
        if name == "all":
            continue
        if known and name not in known:
            problems.append(
                f"report_to: {name!r} is not a reporter transformers knows ({', '.join(known)}, all, none)."
            )
            continue
        modules, install = _PACKAGES.get(name, ((), ""))
        if modules and not any(importlib.util.find_spec(m) for m in modules):
            problems.append(
                f"report_to: {name} needs the {modules[0]} package, which is not installed: {install}; "
                "or report_to: none."
            )
    if "swanlab" in names and not os.environ.get("SWANLAB_MODE") and not os.environ.get("SWANLAB_API_KEY"):
        notes.append(
            "swanlab: cloud mode needs `swanlab login` (or SWANLAB_API_KEY); without either and without a terminal "
            "it stops at the first step. SWANLAB_MODE=offline logs to ./swanlog without an account"
        )
    logging_dir = train.get("logging_dir")
    if logging_dir:
        uses_tb = "tensorboard" in names or "all" in names
        notes.append(
            f"logging_dir: TensorBoard event files go to {logging_dir}"
            if uses_tb
            else f"logging_dir: {logging_dir} is only used by TensorBoard (report_to: tensorboard), which is off"
        )
    return notes


def tensorboard_logdir(args: Any) -> Path | None:
    """The folder to point `tensorboard --logdir` at, or None when TensorBoard reporting is off: logging_dir
    (or TENSORBOARD_LOGGING_DIR set by hand), else OUTPUT_DIR/runs, where transformers writes each run into a dated
    subfolder (so a resumed run shows beside the one it continues)."""
    names = reporters(getattr(args, "report_to", None))
    on = "tensorboard" in names or ("all" in names and importlib.util.find_spec("tensorboard") is not None)
    if not on:
        return None
    folder = getattr(args, "logging_dir", None) or os.environ.get("TENSORBOARD_LOGGING_DIR")
    if folder:
        return Path(folder).expanduser()
    return Path(args.output_dir) / "runs"


def prepare_reporters(args: Any) -> None:
    """Before the Trainer is built (it creates the reporters' callbacks): TensorBoard's folder, and a SwanLab
    callback that works with the installed swanlab."""
    apply_logging_dir(args)
    if "swanlab" in reporters(getattr(args, "report_to", None)):
        use_swanlabs_own_callback()


def apply_logging_dir(args: Any) -> None:
    """transformers 5's TensorBoardCallback reads its folder from TENSORBOARD_LOGGING_DIR when it is created
    (with the Trainer), not from the arguments: set it from the recipe's `logging_dir`."""
    folder = getattr(args, "logging_dir", None)
    if folder:
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(Path(folder).expanduser().resolve())


def use_swanlabs_own_callback() -> bool:
    """transformers' SwanLabCallback asks `swanlab.get_run() is None` before starting a run; swanlab 0.10 raises
    there instead ("No active Run"), so `report_to: swanlab` would fail at the first step. swanlab ships a
    transformers callback written for its current API: use that one for the "swanlab" reporter. True if swapped."""
    try:
        import swanlab
        from swanlab.integration.transformers import SwanLabCallback
        from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK
    except Exception:  # an older swanlab without the integration: transformers' own callback fits it
        return False
    if not hasattr(swanlab, "has_run"):  # before 0.10: get_run() returns None, as transformers expects
        return False
    INTEGRATION_TO_CALLBACK["swanlab"] = SwanLabCallback
    return True
