"""Where a model or dataset comes from: a local folder, or a Hugging Face Hub id.

A name that looks like a path but is missing is reported as a missing folder, with the close names beside it,
instead of being sent to the Hub (whose "Repo id must be ..." hides the typo). A Hub id that is not in the local
cache is checked once before anything loads: offline (HF_HUB_OFFLINE=1) or without network it fails at once with
what to do, instead of the retries transformers and datasets spend on each file.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import threading
from pathlib import Path
from typing import Any

from sftforge.errors import ConfigError

# Hugging Face repo ids: `name` or `namespace/name` (huggingface_hub's validate_repo_id).
_HUB_ID = re.compile(r"^(?:[\w.\-]+/)?[\w.\-]+$")
_PROBE_SECONDS = 10.0  # one metadata request; DNS that never answers must not hold the run either
_TRUE = ("1", "true", "yes", "on")


def looks_local(name: str) -> bool:
    """A path rather than a hub id: ./x, ../x, /x, ~/x, a\\b, three parts, or org/name where ./org is a folder."""
    if name in (".", "..") or name.startswith(("./", "../", "/", "~", ".\\", "..\\")):
        return True
    if os.sep != "/" and os.sep in name:
        return True
    if "/" not in name:
        return False
    if not _HUB_ID.match(name) or "--" in name or ".." in name:
        return True
    return Path(name.split("/")[0]).is_dir()  # the first part exists here: a path with a typo further on


def missing_local_problem(name: str, key: str) -> str | None:
    """`key: cannot load 'x': folder not found ...` for a local-looking name that does not exist; else None."""
    path = Path(name).expanduser()
    if path.exists() or not looks_local(name):
        return None
    guess = _close_path(path)
    hint = f" Did you mean {guess!r}?" if guess else _what_is_there(path)
    what = (
        "file or folder" if "dataset" in key or "config_name" in key else "folder"
    )  # data and configs: files too
    return f"{key}: cannot load {name!r}: {what} not found (checked {str(path.absolute())!r}).{hint}"


def _first_missing(path: Path) -> tuple[Path, str, tuple[str, ...]]:
    """(the deepest existing folder, the first missing part, the parts after it)."""
    parts = path.parts[1:] if path.is_absolute() else path.parts
    current = Path(path.anchor) if path.is_absolute() else Path(".")
    for i, part in enumerate(parts):
        if not (current / part).exists():
            return current, part, parts[i + 1 :]
        current = current / part
    return current, "", ()


def _entries(folder: Path) -> list[str]:
    try:
        return sorted(e.name for e in folder.iterdir() if not e.name.startswith("."))
    except OSError:
        return []


def _close_path(path: Path) -> str | None:
    """The path with its first missing part replaced by the closest name in that folder, or None."""
    folder, missing, rest = _first_missing(path)
    close = difflib.get_close_matches(missing, _entries(folder), n=1, cutoff=0.6) if missing else []
    return str(folder.joinpath(close[0], *rest)) if close else None


def _what_is_there(path: Path) -> str:
    folder, missing, _ = _first_missing(path)
    entries = _entries(folder)
    if not missing:
        return ""
    shown = ", ".join(entries[:8]) + (", ..." if len(entries) > 8 else "")
    return f" {str(folder)!r} has no {missing!r}" + (
        f"; it holds: {shown}." if entries else " (it is empty)."
    )


# ---------------------------------------------------------------- before loading


def check_run_sources(model: Any, data: Any) -> None:
    """Every model / tokenizer / config / dataset name of a run (ModelArguments, DataArguments), checked before
    any work starts; the loaders check their own name again (a cached verdict for Hub ids)."""
    names = [(getattr(model, k), k) for k in ("tokenizer_name_or_path", "model_name_or_path", "config_name")]
    names.append((data.dataset_name, "dataset_name"))
    names += [(s.get("dataset_name"), f"datasets[{i}].dataset_name") for i, s in enumerate(data.datasets or [])
              if isinstance(s, dict)]  # fmt: skip
    for name, key in names:
        if isinstance(name, str) and name:
            kind = "dataset" if key.startswith(("dataset_name", "datasets")) else "model"
            check_source(
                name, key, repo_type=kind, revision=model.model_revision if kind == "model" else None
            )


def check_source(name: str, key: str, repo_type: str = "model", revision: str | None = None) -> None:
    """Before loading `name`: ConfigError for a missing local folder, or for a Hub id that cannot be fetched now
    (offline, no network, not on the Hub). Local folders and Hub ids in the local cache pass at once."""
    problem = missing_local_problem(name, key)
    if problem:
        raise ConfigError(problem, source=key)
    if Path(name).expanduser().exists() or not _HUB_ID.match(name):
        return  # a local file, or something the loader will explain itself
    _check_hub(name, key, repo_type, revision)


@functools.cache  # once per id and process (the tokenizer and the model name the same one); failures raise
def _check_hub(name: str, key: str, repo_type: str, revision: str | None) -> None:
    if _in_local_cache(name, repo_type):
        return  # transformers / datasets load it from the cache (or fetch what is missing)
    download = (
        f"`hf download {name}{' --repo-type dataset' if repo_type == 'dataset' else ''} --local-dir DIR`"
    )
    local = _close_local(name)
    if offline(repo_type):
        raise ConfigError(
            f"{key}: {name!r} is not a local folder, and the Hugging Face Hub is off (HF_HUB_OFFLINE=1) and it is "
            f"not in the local cache ({_hub_cache()}).{local} Download it on a machine with network ({download}), "
            f"copy DIR here and set {key}: DIR; or unset HF_HUB_OFFLINE.",
            source=key,
        )
    reason = _probe(name, repo_type, revision)
    if reason is None:
        return
    if reason.startswith("!"):  # the Hub answered: the id (or revision) is wrong
        raise ConfigError(f"{key}: {name!r}: {reason[1:]}{local}", source=key)
    raise ConfigError(
        f"{key}: {name!r} is not a local folder, and the Hugging Face Hub ({_endpoint()}) cannot be reached to "
        f"download it ({reason}).{local} Without network: download it where there is network ({download}), copy "
        f"DIR here and set {key}: DIR, or set HF_HUB_OFFLINE=1 to use the local Hub cache. Behind a proxy: set "
        "HTTPS_PROXY; through a mirror: set HF_ENDPOINT.",
        source=key,
    )


def offline(repo_type: str = "model") -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE; HF_DATASETS_OFFLINE for datasets), read now, not at import."""
    names = ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"] + (
        ["HF_DATASETS_OFFLINE"] if repo_type == "dataset" else []
    )
    return any(os.environ.get(n, "").strip().lower() in _TRUE for n in names)


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or "https://huggingface.co"


def _hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser()
    return home / "hub"


def _in_local_cache(name: str, repo_type: str) -> bool:
    """A snapshot in the Hub cache (models--org--name), or for datasets a `datasets` cache folder (org___name)."""
    folder = _hub_cache() / f"{repo_type}s--{name.replace('/', '--')}" / "snapshots"
    if folder.is_dir() and any(folder.iterdir()):
        return True
    if repo_type != "dataset":
        return False
    home = Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser()
    datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE", home / "datasets")).expanduser()
    wanted = name.replace("/", "___").lower()
    return any(entry.lower() == wanted for entry in _entries(datasets_cache))


def _close_local(name: str) -> str:
    guess = _close_path(Path(name))
    return f" A local folder has a close name: {guess!r}." if guess and Path(guess).exists() else ""


def _probe(name: str, repo_type: str, revision: str | None) -> str | None:
    """Ask the Hub for the repo's metadata once, without retries. None: it is there (or the Hub had a passing
    problem the loader may ride out); '!why': the Hub says the id is wrong; else why the Hub cannot be reached."""
    result: list[str | None] = []

    def ask() -> None:
        result.append(_ask_hub(name, repo_type, revision))

    worker = threading.Thread(target=ask, daemon=True)  # daemon: a hung DNS lookup cannot hold the exit
    worker.start()
    worker.join(_PROBE_SECONDS + 1)
    return result[0] if result else f"no answer within {_PROBE_SECONDS:.0f} s"


def _ask_hub(name: str, repo_type: str, revision: str | None) -> str | None:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        HfApi(endpoint=_endpoint()).repo_info(
            name, repo_type=repo_type, revision=revision, timeout=_PROBE_SECONDS
        )
    except GatedRepoError:
        return (
            f"!a gated repo: accept its licence on {_endpoint()}/{'datasets/' if repo_type == 'dataset' else ''}"
            f"{name} and log in (`hf auth login`, or set HF_TOKEN)."
        )
    except RevisionNotFoundError:
        return f"!revision {revision!r} not found on the Hub; check model_revision."
    except RepositoryNotFoundError:
        return (
            f"!not a local folder, and no {repo_type} of that name on the Hugging Face Hub: check the spelling; a "
            "private repo needs `hf auth login` (or HF_TOKEN)."
        )
    except HfHubHTTPError:
        return None  # e.g. 5xx or rate limiting: not a verdict on the id; the loader retries
    except Exception as e:  # noqa: BLE001 - connection errors of httpx / requests / socket
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no connection'}"
    return None
