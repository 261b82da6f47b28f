"""Read data files into rows that remember where they came from.

Every row carries `source` (`file:line`) so that any later error can point the user at the exact place to fix.
Problems with a whole file (missing, empty, not JSON) raise `DataError`; problems with one row are returned as
`SourceRow.error` so the pipeline decides between strict (stop) and lenient (skip and count) mode.

Files are read in blocks (`BLOCK_BYTES`), never whole, so memory does not grow with the file: a problem found
part-way through a file raises when the reading gets there. `split_jsonl` and `iter_jsonl_range` let several
processes each read their own byte range of one large .jsonl file.
"""

from __future__ import annotations

import codecs
import csv
import glob
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

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


# How much of a file is read at a time: reading holds a few blocks (and the longest row), never the whole file.
BLOCK_BYTES = 1 << 20
_BOM = b"\xef\xbb\xbf"
_JSON_WS = re.compile(r"[ \t\n\r]*")  # the whitespace JSON allows between values
_NON_SPACE = re.compile(r"\S")  # what str.strip() keeps
_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # what str.splitlines() splits at
# A parse error this close to the end of the text read so far may only mean the value goes on in the next block.
_TRUNCATION_MARGIN = 32


def iter_rows(path: Path, text_key: str = "text", txt_documents: str = "line") -> Iterator[SourceRow]:
    """Yield the rows of one data file, each with its `source` (file:line, or file:row for parquet). A .txt file
    gives one {text_key: document} row per document (`txt_documents`: line, blank_line or file).

    Files are read in blocks, so memory does not grow with the file. A file found broken part-way (a JSON
    syntax error, bytes that are not UTF-8) raises `DataError` when the reading gets there, after the rows
    before it were yielded: whoever reads the rows stops with that error."""
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
    if _is_blank(path):
        raise _empty_file(path)
    if suffix == ".jsonl":
        yield from _iter_jsonl(path)
    elif suffix == ".json":
        yield from _iter_json(path)
    else:
        yield from _iter_csv(path)


def _empty_file(path: Path) -> DataError:
    return DataError(
        f"{path}: the file is empty (no rows); put data in it or remove it from the dataset list."
    )


def _is_blank(path: Path) -> bool:
    """Whether the file holds only ASCII whitespace (read until the first other byte: one block in practice)."""
    with open(path, "rb") as f:
        while block := f.read(1 << 16):
            if not block.isspace():
                return False
    return True


def _not_utf8(path: Path) -> DataError:
    """The error for a file that is not valid UTF-8, naming the line of the first bad byte (found by reading
    the file again: only this error path pays for it)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    with open(path, "rb") as f:
        block = f.read(BLOCK_BYTES)
        if block.startswith(_BOM):
            block = block[3:]
        while True:
            pending = decoder.getstate()[0]  # the start of a character cut by the previous block: no newline
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as e:
                line += (pending + block).count(b"\n", 0, e.start)
                return DataError(
                    f"{path}:{line}: the file is not valid UTF-8 ({e.reason}); re-save it as UTF-8."
                )
            if not block:
                break
            line += block.count(b"\n")
            block = f.read(BLOCK_BYTES)
    return DataError(f"{path}: the file is not valid UTF-8; re-save it as UTF-8.")  # changed while read


def _object_row(row: Any, source: str) -> SourceRow:
    """Rows must be JSON objects; anything else is reported per row rather than failing the whole file."""
    if isinstance(row, dict):
        return SourceRow(row, source)
    kinds = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}
    kind = "null" if row is None else kinds.get(type(row), f"a {type(row).__name__}")
    err = RowError("not_an_object", f'the row is {kind}, not a JSON object like {{"messages": [...]}}')
    return SourceRow(row, source, err)


# --- JSON Lines -------------------------------------------------------------------------------------------------


def _iter_jsonl(path: Path) -> Iterator[SourceRow]:
    with open(path, "rb") as f:
        yield from _jsonl_rows(str(path), f, None, 1)


def _jsonl_rows(name: str, f: BinaryIO, limit: int | None, first_line: int) -> Iterator[SourceRow]:
    for lineno, raw in _byte_lines(f, limit, first_line):
        row = jsonl_row(name, lineno, raw)
        if row is not None:
            yield row


def jsonl_lines(path: str | Path) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line) of a .jsonl file, unparsed (streaming skips other ranks' lines without parsing)."""
    with open(path, "rb") as f:
        yield from _byte_lines(f, None, 1)


def jsonl_row(name: str | Path, lineno: int, raw: bytes) -> SourceRow | None:
    """One line of a .jsonl file as a row (None for a blank line). Lines are decoded one by one so a single bad
    line (bad bytes, broken JSON) costs one row, not the file."""
    if lineno == 1 and raw.startswith(_BOM):  # a UTF-8 BOM written by some Windows editors
        raw = raw[3:]
    source = f"{name}:{lineno}"
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


def _byte_lines(f: BinaryIO, limit: int | None, lineno: int) -> Iterator[tuple[int, bytes]]:
    """(line number, line) for the lines of `f` from where it stands, `limit` bytes at most (None: to the end),
    numbered from `lineno`. Lines end at \\n, \\r or \\r\\n, as bytes.splitlines() splits them."""
    lineno -= 1
    tail: list[bytes] = []  # the line the last block ended in, in pieces (a long line spans many blocks)
    after_cr = False  # the last block ended with \r: a \n starting the next one ends no line of its own
    while limit is None or limit > 0:
        block = f.read(BLOCK_BYTES if limit is None else min(BLOCK_BYTES, limit))
        if not block:
            break
        if limit is not None:
            limit -= len(block)
        if after_cr:
            after_cr = False
            if block.startswith(b"\n"):
                block = block[1:]
        if b"\n" not in block and b"\r" not in block:
            tail.append(block)
            continue
        data = b"".join((*tail, block)) if tail else block
        lines = data.splitlines()
        last = data[-1]
        if last == 10 or last == 13:  # \n or \r: the last line is complete
            tail = []
            after_cr = last == 13
        else:
            tail = [lines.pop()]
        for raw in lines:
            lineno += 1
            yield lineno, raw
    if tail:
        yield lineno + 1, b"".join(tail)


def split_jsonl(path: str | Path, parts: int) -> list[tuple[int, int]]:
    """Cut a .jsonl file into `parts` byte ranges [start, end) of about equal size, each starting at a line start,
    together covering the file in order; a range is empty (start == end) when long lines leave it nothing. Each
    range's rows are `iter_jsonl_range(path, start, end)`: several processes can read one large file."""
    if parts < 1:
        raise ValueError(f"parts must be at least 1, not {parts}")
    path = Path(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        cuts = [0, *(_line_start(f, size * k // parts, size) for k in range(1, parts)), size]
    return list(zip(cuts, cuts[1:], strict=False))


def iter_jsonl_range(
    path: str | Path, start_byte: int, end_byte: int, first_line: int | None = None
) -> Iterator[SourceRow]:
    """The rows of a .jsonl file whose line starts in the byte range [start_byte, end_byte), with the same rows,
    sources and row errors as `iter_rows` gives for them: ranges that together cover the file give all its rows
    once. A line belongs to the range its first byte falls in. `first_line`: the number of the first line that
    starts in the range, when the caller knows it; None counts the lines before it (reading the file up to there).
    No empty-file check: a range may well hold no rows."""
    path = Path(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        start, end = _line_start(f, start_byte, size), _line_start(f, end_byte, size)
        if start >= end:
            return
        if first_line is None:
            first_line = _lines_before(f, start) + 1
        f.seek(start)
        yield from _jsonl_rows(str(path), f, end - start, first_line)


def _line_start(f: BinaryIO, pos: int, size: int) -> int:
    """The first line start at or after byte `pos` (the file size when no line starts there)."""
    if pos <= 0:
        return 0
    if pos >= size:
        return size
    at = pos - 1  # a line starts at pos when the byte before it ends a line
    f.seek(at)
    after_cr = False
    while True:
        block = f.read(1 << 16)
        if after_cr:  # the previous block ended with \r: it ended a line unless this \n goes with it
            return at + 1 if block.startswith(b"\n") else at
        if not block:
            return size
        lf, cr = block.find(b"\n"), block.find(b"\r")
        if lf >= 0 and (cr < 0 or lf < cr):
            return at + lf + 1
        if cr >= 0:
            if cr + 1 < len(block):
                return at + cr + (2 if block[cr + 1] == 10 else 1)
            after_cr = True
        at += len(block)


def _lines_before(f: BinaryIO, offset: int) -> int:
    """How many lines end before byte `offset` (a line start)."""
    return _lines_between(f, 0, offset)


def jsonl_first_lines(path: str | Path, ranges: list[tuple[int, int]]) -> list[int]:
    """The number of the first line of each range of `split_jsonl(path, …)` (ranges in order, covering the file),
    counted in one pass over the file — so that readers of the ranges need not each count from the start."""
    first, lines = [], 1
    with open(path, "rb") as f:
        for start, end in ranges:
            first.append(lines)
            lines += _lines_between(f, start, end)
    return first


def _lines_between(f: BinaryIO, start: int, offset: int) -> int:
    """How many lines end in bytes [start, offset) (both line starts)."""
    f.seek(start)
    count, left, after_cr = 0, offset - start, False
    while left > 0 and (block := f.read(min(BLOCK_BYTES, left))):
        left -= len(block)
        count += block.count(b"\n") + block.count(b"\r") - block.count(b"\r\n")
        if after_cr and block[0] == 10:  # a \r\n cut by the block boundary counted twice
            count -= 1
        after_cr = block[-1] == 13
    return count


# --- JSON -------------------------------------------------------------------------------------------------------


class _JsonText:
    """A window on a file's text for parsing JSON value by value: blocks are decoded when needed, text before
    `pos` (and `mark`, when set) is dropped when the next block comes, and positions in the window map back to
    the file's line and column."""

    def __init__(self, path: Path, f: BinaryIO) -> None:
        self.path, self.f = path, f
        self.utf8 = codecs.getincrementaldecoder("utf-8-sig")()
        self.json = json.JSONDecoder()
        self.buf = ""
        self.pos = 0
        self.mark: int | None = None
        self.eof = False
        self.line, self.col = 1, 1  # where buf[0] is in the file
        self._counted, self._counted_line = 0, 1  # line_of: buf[_counted] is on line _counted_line

    def more(self) -> int | None:
        """Read one more block; returns how many characters were dropped from the front (None at the end)."""
        if self.eof:
            return None
        block = self.f.read(BLOCK_BYTES)
        try:
            text = self.utf8.decode(block, final=not block)
        except UnicodeDecodeError:
            raise _not_utf8(self.path) from None
        self.eof = not block
        cut = self.pos if self.mark is None else min(self.pos, self.mark)
        if cut:
            newlines = self.buf.count("\n", 0, cut)
            if newlines:
                self.line += newlines
                self.col = cut - self.buf.rfind("\n", 0, cut)
            else:
                self.col += cut
            self.pos -= cut
            if self.mark is not None:
                self.mark -= cut
        self.buf = self.buf[cut:] + text
        self._counted, self._counted_line = 0, self.line
        return cut

    def peek(self) -> str:
        return self.buf[self.pos : self.pos + 1]

    def skip_ws(self) -> None:
        while True:
            self.pos = _JSON_WS.match(self.buf, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.buf) or self.more() is None:
                return

    def next_non_space(self) -> int:
        """The index of the first character at or after `pos` that str.strip() would keep; -1: none to the end."""
        k = self.pos
        while True:
            found = _NON_SPACE.search(self.buf, k)
            if found:
                return found.start()
            k = len(self.buf)
            cut = self.more()
            if cut is None:
                return -1
            k -= cut

    def value(self) -> Any:
        """Parse the JSON value at `pos` (reading on while it may go on in the next block) and move past it."""
        while True:
            try:
                value, end = self.json.raw_decode(self.buf, self.pos)
                # A value ending near the end of the window may go on (a number: 1 → 1.5e3): read on to be sure.
                if self.eof or end < len(self.buf) - _TRUNCATION_MARGIN:
                    self.pos = end
                    return value
            except json.JSONDecodeError as e:
                cut_short = (
                    e.msg.startswith("Unterminated string") or e.pos >= len(self.buf) - _TRUNCATION_MARGIN
                )
                if self.eof or not cut_short:
                    raise self.error(e.msg, e.pos) from None
            # Read on until the window doubles, so re-parsing a long value costs linear time overall.
            need = 2 * (len(self.buf) - self.pos) + 1
            while len(self.buf) - self.pos < need and self.more() is not None:
                pass

    def line_of(self, pos: int) -> int:
        """The line of buf[pos], counted on from the last call (positions must not go back between drops)."""
        self._counted_line += self.buf.count("\n", self._counted, pos)
        self._counted = pos
        return self._counted_line

    def where(self, pos: int) -> tuple[int, int]:
        """(line, column) of buf[pos] in the file, as json.JSONDecodeError counts them."""
        newlines = self.buf.count("\n", 0, pos)
        if newlines:
            return self.line + newlines, pos - self.buf.rfind("\n", 0, pos)
        return self.line, self.col + pos

    def error(self, msg: str, pos: int) -> DataError:
        line, col = self.where(pos)
        return _json_file_error(self.path, msg, line, col)

    def separator_error(self, item_end: int) -> DataError:
        """The error json.loads gives for what follows an array item up to `pos` (a missing comma, a comma before
        the closing bracket): it is the judge of the message, which differs between Python versions."""
        try:
            json.loads("[0" + self.buf[item_end : self.pos + 1])
        except json.JSONDecodeError as e:
            return self.error(e.msg, item_end + e.pos - 2)
        return DataError(f"{self.path}: invalid JSON; check the file with a JSON validator.")


def _iter_json(path: Path) -> Iterator[SourceRow]:
    with open(path, "rb") as f:
        text = _JsonText(path, f)
        text.skip_ws()
        first = text.pos  # where json.loads would start: after the whitespace JSON allows
        if first >= len(text.buf):
            raise _empty_file(path)
        if text.buf[first].isspace():  # other whitespace (form feed, ...): the first other character decides
            text.mark = first
            start = text.next_non_space()
            if start < 0:
                raise _empty_file(path)
            first, text.mark = text.mark, None
        else:
            start = first
        if text.buf[start] == "[":
            text.pos = start + 1
            yield from _json_array(path, text)
            return
        # A second BOM (the decoder removed one) starting the text: json.loads has its own message for it.
        if text.where(first) == (1, 1) and text.buf.startswith("\ufeff", first):
            raise text.error("Unexpected UTF-8 BOM (decode using utf-8-sig)", first)
        text.pos = text.mark = first
        line = text.line_of(first)
        value = text.value()
        text.skip_ws()
        if text.pos >= len(text.buf):
            yield _object_row(value, f"{path}:{line}")
            return
        # More data after the first value. One value per line: JSON Lines saved as .json (common); read it so.
        if not _first_line_is_json(text.buf[text.mark : text.pos + 1]):
            raise text.error("Extra data", text.pos)
    yield from _iter_jsonl(path)


def _first_line_is_json(text: str) -> bool:
    first = next(line for line in text.splitlines() if line.strip())
    try:
        json.loads(first)
    except json.JSONDecodeError:
        return False
    return True


def _json_array(path: Path, text: _JsonText) -> Iterator[SourceRow]:
    """Parse the array item by item so each row knows the line it starts on. A syntax error raises when the
    parsing gets there, after the rows before it were yielded."""
    name = str(path)
    text.skip_ws()
    index = 0
    if text.peek() == "]":
        text.pos += 1
    else:
        while True:
            line = text.line_of(text.pos)
            value = text.value()
            yield _object_row(value, f"{name}:{line} (item {index})")
            index += 1
            text.mark = text.pos  # the item's end: kept for separator_error
            text.skip_ws()
            sep = text.peek()
            if sep == ",":
                text.pos += 1
                text.skip_ws()
                if text.peek() != "]":
                    text.mark = None
                    continue
            elif sep == "]":
                text.pos += 1
                text.mark = None
                break
            raise text.separator_error(text.mark)
    # After the array: only whitespace. What str.strip() removes passes, as it always did.
    text.skip_ws()
    if text.pos < len(text.buf):
        text.mark = text.pos
        if text.next_non_space() >= 0:
            raise text.error("Extra data", text.mark)


def _json_file_error(path: Path, msg: str, line: int, col: int) -> DataError:
    return DataError(
        f"{path}:{line}:{col}: invalid JSON: {msg}. Fix the file (a .json file must hold "
        "one JSON array of objects or one object; use .jsonl for one object per line)."
    )


# --- CSV --------------------------------------------------------------------------------------------------------


def _iter_csv(path: Path) -> Iterator[SourceRow]:
    # newline="" keeps line breaks inside quoted cells intact, as the csv module requires.
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
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
        except UnicodeDecodeError:
            raise _not_utf8(path) from None


# --- parquet ----------------------------------------------------------------------------------------------------


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


# --- plain text -------------------------------------------------------------------------------------------------


def _iter_txt(path: Path, text_key: str, documents: str) -> Iterator[SourceRow]:
    """Documents of a plain text file: one per non-empty line, per blank-line-separated block, or the whole file;
    each row's source is the line its document starts on."""
    if documents == "file":  # one document: the file's text is the row anyway
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError:
            raise _not_utf8(path) from None
        if not text.strip():
            raise _empty_text(path)
        yield SourceRow({text_key: text}, f"{path}:1")
        return
    name = str(path)
    found = False
    block: list[str] = []
    start = 0
    for lineno, line in enumerate(_text_lines(path), start=1):
        if documents == "line":
            if line.strip():
                found = True
                yield SourceRow({text_key: line}, f"{name}:{lineno}")
            continue
        if line.strip():
            if not block:
                start = lineno
            block.append(line)
        elif block:
            found = True
            yield SourceRow({text_key: "\n".join(block)}, f"{name}:{start}")
            block = []
    if block:
        yield SourceRow({text_key: "\n".join(block)}, f"{name}:{start}")
    elif not found:  # no document: the file holds whitespace only
        raise _empty_text(path)


def _empty_text(path: Path) -> DataError:
    return DataError(
        f"{path}: the file is empty (no text); put text in it or remove it from the dataset list."
    )


def _text_lines(path: Path) -> Iterator[str]:
    """The lines of a UTF-8 text file without their line breaks, as str.splitlines() gives them."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    tail = ""  # the last line of what was read: it may go on (or be a \r whose \n comes next)
    with open(path, "rb") as f:
        while True:
            block = f.read(BLOCK_BYTES)
            try:
                text = tail + decoder.decode(block, final=not block)
            except UnicodeDecodeError:
                raise _not_utf8(path) from None
            if not block:
                yield from text.splitlines()
                return
            lines = text.splitlines(keepends=True)
            tail = lines.pop() if lines else ""
            for line in lines:
                yield line.rstrip(_LINE_BREAKS)
