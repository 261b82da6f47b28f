"""Read data files into rows that remember where they came from.

Every row carries `source` (`file:line`) so that any later error can point the user at the exact place to fix.
Problems with a whole file (missing, empty, not JSON) raise `DataError`; problems with one row are returned as
`SourceRow.error` so the pipeline decides between strict (stop) and lenient (skip and count) mode.
"""

from __future__ import annotations

import csv
import glob
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Re-exported: `datasets` datasets (save_to_disk folders, local paths, Hub names) are read in hub.py.
from sftforge.data.hub import iter_dataset_rows as iter_dataset_rows
from sftforge.errors import DataError, RowError

SUPPORTED_EXTENSIONS = (".json", ".jsonl", ".parquet", ".csv")
# Plain text documents, read for pretraining only (stage: pt): in a folder of SFT data a LICENSE.txt is no data.
TEXT_EXTENSIONS = (".txt",)
TXT_DOCUMENTS = ("line", "blank_line", "file")
_GLOB_CHARS = set("*?[")


@dataclass
class SourceRow:
    """One raw row. `error` is set instead of raising so lenient mode can skip the row and count the reason."""

    row: Any
    source: str
    error: RowError | None = None


# ---------------------------------------------------------------------------------------------------------------
# Finding the files


def resolve_data_files(spec: str | Path | Iterable[str | Path], text_files: bool = False) -> list[Path]:
    """Expand a file, a directory (recursively), a glob pattern, or a list of these into sorted data files.
    `text_files`: .txt files are data too (pretraining)."""
    if isinstance(spec, (str, Path)):
        specs: list[str | Path] = [spec]
    else:
        specs = list(spec)
        if not specs:
            raise DataError(
                "No data files given: set the dataset path to a file, a directory or a glob pattern."
            )
    files: list[Path] = []
    for one in specs:
        for path in _resolve_one(one, text_files):
            if path not in files:  # a file named twice (e.g. a dir and a glob inside it) is read once
                files.append(path)
    return files


def resolve_key_files(
    spec: str | Path | Iterable[str | Path], key: str, text_files: bool = False
) -> list[Path]:
    """`resolve_data_files` for the config key `key` (e.g. train_data_path): its errors start with the key, so
    the user knows which setting names the missing file or the folder without data."""
    try:
        return resolve_data_files(spec, text_files)
    except DataError as e:
        raise DataError(f"{key}: {e}") from None


def _resolve_one(spec: str | Path, text_files: bool = False) -> list[Path]:
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_file():
        _check_extension(path, text_files)
        return [path]
    if path.is_dir():
        found = sorted(
            p
            for p in path.rglob("*")
            if p.is_file()
            and _supported(p, text_files)
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if not found:
            raise DataError(f"{path}: the directory holds no data file; {_expected(text_files)}.")
        return found
    if _GLOB_CHARS & set(text):
        matches = sorted(Path(m) for m in glob.glob(str(path), recursive=True) if Path(m).is_file())
        if not matches:
            raise DataError(f"{text}: no file matches this pattern; check the path and the pattern.")
        found = [p for p in matches if _supported(p, text_files)]
        if not found:
            raise DataError(
                f"{text}: {len(matches)} file(s) match, but none is a data file; {_expected(text_files)}."
            )
        return found
    raise DataError(
        f"{path}: no such file or directory; check the dataset path (relative paths start at {Path.cwd()})."
    )


def _supported(path: Path, text_files: bool = False) -> bool:
    suffix = path.suffix.lower()
    return suffix in SUPPORTED_EXTENSIONS or (text_files and suffix in TEXT_EXTENSIONS)


def _expected(text_files: bool = False) -> str:
    names = SUPPORTED_EXTENSIONS + (TEXT_EXTENSIONS if text_files else ())
    return "supported extensions are " + ", ".join(names)


def _check_extension(path: Path, text_files: bool = False) -> None:
    if not _supported(path, text_files):
        also = "" if text_files or path.suffix.lower() not in TEXT_EXTENSIONS else " (.txt: with stage: pt)"
        raise DataError(
            f"{path}: unsupported file type '{path.suffix}'; {_expected(text_files)}{also}. Convert the file "
            "or rename it."
        )


# ---------------------------------------------------------------------------------------------------------------
# Reading one file


def iter_rows(path: Path, text_key: str = "text", txt_documents: str = "line") -> Iterator[SourceRow]:
    """Yield the rows of one data file, each with its `source` (file:line, or file:row for parquet). A .txt file
    gives one {text_key: document} row per document (`txt_documents`: line, blank_line or file)."""
    path = Path(path)
    _check_extension(path, text_files=True)
    if not path.is_file():
        raise DataError(f"{path}: no such file; check the dataset path.")
    suffix = path.suffix.lower()
    if suffix in TEXT_EXTENSIONS:
        yield from _iter_txt(path, text_key, txt_documents)
        return
    if suffix == ".parquet":
        yield from _iter_parquet(path)
        return
    data = path.read_bytes()
    if not data.strip():
        raise DataError(
            f"{path}: the file is empty (no rows); put data in it or remove it from the dataset list."
        )
    if suffix == ".jsonl":
        yield from _iter_jsonl(path, data)
    elif suffix == ".json":
        yield from _iter_json(path, data)
    else:
        yield from _iter_csv(path, data)


def _object_row(row: Any, source: str) -> SourceRow:
    """Rows must be JSON objects; anything else is reported per row rather than failing the whole file."""
    if isinstance(row, dict):
        return SourceRow(row, source)
    kinds = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}
    kind = "null" if row is None else kinds.get(type(row), f"a {type(row).__name__}")
    err = RowError("not_an_object", f'the row is {kind}, not a JSON object like {{"messages": [...]}}')
    return SourceRow(row, source, err)


def _iter_jsonl(path: Path, data: bytes) -> Iterator[SourceRow]:
    for lineno, raw in enumerate(data.splitlines(), start=1):
        row = jsonl_row(path, lineno, raw)
        if row is not None:
            yield row


def jsonl_row(path: Path, lineno: int, raw: bytes) -> SourceRow | None:
    """One line of a .jsonl file as a row (None for a blank line). Lines are decoded one by one so a single bad
    line (bad bytes, broken JSON) costs one row, not the file; streaming (data/streaming.py) calls this per line."""
    if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 BOM written by some Windows editors
        raw = raw[3:]
    source = f"{path}:{lineno}"
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        detail = f"the line is not valid UTF-8 (byte {e.start + 1}: {e.reason}); re-save the file as UTF-8"
        return SourceRow(None, source, RowError("not_utf8", detail))
    if not line.strip():
        return None
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        return SourceRow(None, source, RowError("invalid_json", f"invalid JSON at column {e.colno}: {e.msg}"))
    return _object_row(row, source)


def _decode_whole(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(
            f"{path}:{line}: the file is not valid UTF-8 ({e.reason}); re-save it as UTF-8."
        ) from e


def _iter_json(path: Path, data: bytes) -> Iterator[SourceRow]:
    text = _decode_whole(path, data)
    if not text.strip():
        raise DataError(
            f"{path}: the file is empty (no rows); put data in it or remove it from the dataset list."
        )
    decoder = json.JSONDecoder()
    start = len(text) - len(text.lstrip())
    if text[start] == "[":
        yield from _iter_json_array(path, text, start, decoder)
        return
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data" and _first_line_is_json(text):
            # One value per line in a .json file: JSON Lines saved as .json (common), so read it as such.
            yield from _iter_jsonl(path, data)
            return
        raise _json_file_error(path, e) from e
    yield _object_row(value, f"{path}:{_line_of(text, start)}")


def _first_line_is_json(text: str) -> bool:
    first = next(line for line in text.splitlines() if line.strip())
    try:
        json.loads(first)
    except json.JSONDecodeError:
        return False
    return True


def _iter_json_array(path: Path, text: str, start: int, decoder: json.JSONDecoder) -> Iterator[SourceRow]:
    """Parse the array element by element so each row knows the line it starts on."""
    rows: list[SourceRow] = []
    pos, line, counted = start + 1, 1, 0
    try:
        pos = _skip_ws(text, pos)
        if text[pos : pos + 1] != "]":
            while True:
                value, end = decoder.raw_decode(text, pos)
                line += text.count("\n", counted, pos)  # count incrementally: O(file size) overall
                counted = pos
                rows.append(_object_row(value, f"{path}:{line} (item {len(rows)})"))
                pos = _skip_ws(text, end)
                sep = text[pos : pos + 1]
                if sep == "]":
                    break
                if sep != ",":
                    raise ValueError
                pos = _skip_ws(text, pos + 1)
        if text[pos + 1 :].strip():
            raise ValueError
    except (json.JSONDecodeError, ValueError):
        # The scan only knows *that* it failed; json.loads gives the standard reason with line and column.
        try:
            json.loads(text)
        except json.JSONDecodeError as e:
            raise _json_file_error(path, e) from e
        raise DataError(f"{path}: invalid JSON; check the file with a JSON validator.") from None
    # Rows are collected first so a syntax error at the end fails before any row is used.
    yield from rows


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _json_file_error(path: Path, e: json.JSONDecodeError) -> DataError:
    return DataError(
        f"{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}. Fix the file (a .json file must hold "
        "one JSON array of objects or one object; use .jsonl for one object per line)."
    )


def _iter_csv(path: Path, data: bytes) -> Iterator[SourceRow]:
    text = _decode_whole(path, data)
    # newline="" keeps line breaks inside quoted cells intact, as the csv module requires.
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
        last_line = reader.line_num
        for values in reader:
            # A row starts right after the previous one ended; quoted cells may span several lines.
            start, last_line = last_line + 1, reader.line_num
            if not values:
                continue
            source = f"{path}:{start}"
            if len(values) > len(header):
                detail = f"the row has {len(values)} cells but the header has {len(header)}; quote cells holding commas"
                yield SourceRow(None, source, RowError("bad_csv_row", detail))
                continue
            # Missing trailing cells read as "" like empty ones: a CSV cannot tell them apart anyway.
            yield SourceRow(
                dict(zip(header, values + [""] * (len(header) - len(values)), strict=True)), source
            )
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: cannot parse the CSV: {e}.") from e


def _iter_parquet(path: Path) -> Iterator[SourceRow]:
    import pyarrow.parquet as pq  # imported here: only parquet users pay for it

    try:
        table = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a corrupt or non-parquet file
        raise DataError(
            f"{path}: cannot read the parquet file ({e}); check that it is a valid parquet file."
        ) from e
    index = 0
    # to_pylist yields plain Python lists/dicts (no numpy), so rows look like JSON rows to every later stage.
    for batch in table.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            yield SourceRow(row, f"{path}:row {index}")
            index += 1


def _iter_txt(path: Path, text_key: str, documents: str) -> Iterator[SourceRow]:
    """Documents of a plain text file: one per non-empty line, per blank-line-separated block, or the whole file;
    each row's source is the line its document starts on."""
    text = _decode_whole(path, path.read_bytes())
    if not text.strip():
        raise DataError(
            f"{path}: the file is empty (no text); put text in it or remove it from the dataset list."
        )
    if documents == "file":
        yield SourceRow({text_key: text}, f"{path}:1")
        return
    block: list[str] = []
    start = 0
    for lineno, line in enumerate(text.splitlines(), start=1):
        if documents == "line":
            if line.strip():
                yield SourceRow({text_key: line}, f"{path}:{lineno}")
            continue
        if line.strip():
            if not block:
                start = lineno
            block.append(line)
        elif block:
            yield SourceRow({text_key: "\n".join(block)}, f"{path}:{start}")
            block = []
    if block:
        yield SourceRow({text_key: "\n".join(block)}, f"{path}:{start}")
