"""Rows of a `datasets` dataset: a `save_to_disk` folder, a local file or folder, or a Hugging Face Hub name.

Local files and folders go through the file readers (`readers.iter_rows`), so their rows keep `file:line`
sources; rows loaded with the `datasets` library are named `name[split]#index`. `datasets` is imported only
when such a dataset is used.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftforge.errors import DataError

if TYPE_CHECKING:
    from sftforge.data.readers import SourceRow


def iter_dataset_rows(
    name: str, config: str | None, split: str, revision: str | None = None
) -> Iterator[SourceRow]:
    """Yield rows of a `datasets` dataset; local folders and files are read with `iter_rows` (file:line sources)."""
    # Imported here, not at the top: readers re-exports this function, so a top-level import would be circular.
    from sftforge.data.readers import iter_rows, resolve_data_files

    local = Path(name).expanduser()
    if local.is_dir() and _is_saved_dataset(local):
        yield from _iter_saved(local, name, split)
        return
    if local.exists():
        files = resolve_data_files(local)
        if local.is_dir():
            files = _files_of_split(files, local, split)
        for path in files:
            yield from iter_rows(path)
        return
    from sftforge.config.sources import check_source

    check_source(name, "dataset_name", repo_type="dataset", revision=revision)  # offline / no network: now
    import datasets

    try:
        ds = datasets.load_dataset(name, config, split=split, revision=revision)
    except (datasets.exceptions.DatasetNotFoundError, FileNotFoundError) as e:
        raise DataError(
            f"{name}: not a local path and not found on the Hugging Face Hub ({e}); check the name, "
            "your network and, for gated datasets, `hf auth login`."
        ) from e
    yield from _iter_hf(ds, name, split)


# File-name words that mark a split, as in Hub repos (`data/train-00000-of-00001.parquet`, `dev.jsonl`).
_SPLIT_WORDS = {
    "train": ("train", "training"),
    "test": ("test", "testing", "eval", "evaluation"),
    "validation": ("validation", "valid", "val", "dev"),
}


def _split_of(word_source: str) -> str | None:
    words = set(re.split(r"[^a-z]+", word_source.lower()))
    return next((split for split, names in _SPLIT_WORDS.items() if words.intersection(names)), None)


def _files_of_split(files: list[Path], root: Path, split: str) -> list[Path]:
    """Keep the requested split's files when a folder holds several splits side by side.

    Without this, a downloaded Hub folder with train and test files would train on both and evaluate on the
    training data. A folder whose files name at most one split is read whole.
    """
    by_split: dict[str, list[Path]] = {}
    for f in files:
        found = _split_of(str(f.relative_to(root)))
        if found:
            by_split.setdefault(found, []).append(f)
    if len(by_split) < 2:
        return files
    wanted = _split_of(split) or split
    if wanted not in by_split:
        raise DataError(
            f"{root}: no files for split '{split}'; the file names show splits: "
            f"{', '.join(sorted(by_split, key=list(_SPLIT_WORDS).index))}. Set the split to one of them."
        )
    return by_split[wanted]


def _is_saved_dataset(path: Path) -> bool:
    """Folders written by `save_to_disk`: a Dataset has state.json, a DatasetDict has dataset_dict.json."""
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _iter_saved(path: Path, name: str, split: str) -> Iterator[SourceRow]:
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(
                f"{name}: no split '{split}'; available splits: {', '.join(ds)}. Set the split to one "
                "of them."
            )
        ds = ds[split]
    yield from _iter_hf(ds, name, split)


def _iter_hf(ds: Any, name: str, split: str) -> Iterator[SourceRow]:
    from sftforge.data.readers import _object_row  # see iter_dataset_rows for why this import is local

    for i, row in enumerate(ds):
        yield _object_row(row, f"{name}[{split}]#{i}")
