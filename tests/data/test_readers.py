"""Readers: every row knows its file:line, bad rows are reported per row, bad files fail with a clear DataError."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from sftforge.data import readers
from sftforge.data.readers import (
    SUPPORTED_EXTENSIONS,
    SourceRow,
    iter_dataset_rows,
    iter_jsonl_range,
    iter_rows,
    resolve_data_files,
    split_jsonl,
)
from sftforge.errors import DataError

ROW = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# --- resolve_data_files ---------------------------------------------------------------------------------------


def test_resolve_single_file(tmp_path: Path) -> None:
    f = write(tmp_path / "a.jsonl", "{}\n")
    assert resolve_data_files(f) == [f]
    assert resolve_data_files(str(f)) == [f]


def test_resolve_directory_is_recursive_sorted_and_skips_other_files(tmp_path: Path) -> None:
    b = write(tmp_path / "b.json", "[]")
    a = write(tmp_path / "sub" / "a.csv", "x\n1\n")
    c = write(tmp_path / "a.parquet", b"")
    write(tmp_path / "README.md", "not data")
    write(tmp_path / ".cache" / "x.json", "[]")  # hidden folders (caches, checkpoints) are not data
    assert resolve_data_files(tmp_path) == sorted([a, b, c])


def test_resolve_glob_and_list_dedupes(tmp_path: Path) -> None:
    a = write(tmp_path / "part-1.jsonl", "{}\n")
    b = write(tmp_path / "part-2.jsonl", "{}\n")
    write(tmp_path / "other.json", "[]")
    assert resolve_data_files(str(tmp_path / "part-*.jsonl")) == [a, b]
    assert resolve_data_files([b, str(tmp_path / "part-*.jsonl")]) == [b, a]


def test_resolve_missing_path_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match=r"nope\.jsonl: no such file or directory; check the dataset path"):
        resolve_data_files(missing)


def test_resolve_directory_without_data_lists_extensions(tmp_path: Path) -> None:
    write(tmp_path / "notes.txt", "x")
    with pytest.raises(DataError, match="holds no data file") as err:
        resolve_data_files(tmp_path)
    assert all(ext in str(err.value) for ext in SUPPORTED_EXTENSIONS)


def test_resolve_glob_without_data_lists_extensions(tmp_path: Path) -> None:
    write(tmp_path / "a.txt", "x")
    with pytest.raises(DataError, match=r"1 file\(s\) match, but none is a data file.*\.jsonl"):
        resolve_data_files(str(tmp_path / "*"))
    with pytest.raises(DataError, match="no file matches this pattern"):
        resolve_data_files(str(tmp_path / "*.parquet"))


def test_resolve_unsupported_extension(tmp_path: Path) -> None:
    f = write(tmp_path / "data.txt", "x")
    with pytest.raises(DataError, match=r"unsupported file type '\.txt'"):
        resolve_data_files(f)


def test_resolve_empty_list() -> None:
    with pytest.raises(DataError, match="No data files given"):
        resolve_data_files([])


# --- JSONL ----------------------------------------------------------------------------------------------------


def test_jsonl_rows_have_line_numbers_and_blank_lines_are_skipped(tmp_path: Path) -> None:
    f = write(tmp_path / "d.jsonl", json.dumps(ROW) + "\n\n" + json.dumps({"text": "x"}) + "\n")
    rows = list(iter_rows(f))
    assert rows == [SourceRow(ROW, f"{f}:1"), SourceRow({"text": "x"}, f"{f}:3")]


def test_jsonl_invalid_json_is_a_row_error_naming_the_line(tmp_path: Path) -> None:
    f = write(tmp_path / "d.jsonl", '{"text": "a"}\n{"text": "b"}\n{"text": "c",}\n{"text": "d"}\n')
    rows = list(iter_rows(f))
    assert [r.source for r in rows] == [f"{f}:{i}" for i in (1, 2, 3, 4)]
    bad = rows[2]
    assert bad.row is None and bad.error is not None
    assert bad.error.reason == "invalid_json"
    assert "column 14" in bad.error.detail and "Expecting property name" in bad.error.detail
    assert rows[3].row == {"text": "d"} and rows[3].error is None


def test_jsonl_non_utf8_line_is_a_row_error(tmp_path: Path) -> None:
    f = write(tmp_path / "d.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    rows = list(iter_rows(f))
    assert rows[0].error is None
    assert rows[1].source == f"{f}:2" and rows[1].error is not None
    assert rows[1].error.reason == "not_utf8"
    assert "byte 14" in rows[1].error.detail


def test_jsonl_utf8_bom_is_ignored(tmp_path: Path) -> None:
    f = write(tmp_path / "d.jsonl", b'\xef\xbb\xbf{"text": "x"}\n')
    assert list(iter_rows(f)) == [SourceRow({"text": "x"}, f"{f}:1")]


@pytest.mark.parametrize(
    ("line", "kind"),
    [("42", "a number"), ("[1, 2]", "a list"), ('"s"', "a string"), ("true", "a boolean"), ("null", "null")],
)
def test_jsonl_non_object_row(tmp_path: Path, line: str, kind: str) -> None:
    f = write(tmp_path / "d.jsonl", line + "\n")
    [row] = list(iter_rows(f))
    assert row.error is not None and row.error.reason == "not_an_object"
    assert f"the row is {kind}, not a JSON object" in row.error.detail


@pytest.mark.parametrize("name", ["d.jsonl", "d.json", "d.csv"])
@pytest.mark.parametrize("content", ["", " \n\n\t"])
def test_empty_file_is_a_data_error(tmp_path: Path, name: str, content: str) -> None:
    f = write(tmp_path / name, content)
    with pytest.raises(DataError, match=r"d\.\w+: the file is empty"):
        list(iter_rows(f))


def test_iter_rows_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        list(iter_rows(tmp_path / "gone.jsonl"))


# --- JSON -----------------------------------------------------------------------------------------------------


def test_json_array_rows_know_start_line_and_index(tmp_path: Path) -> None:
    text = '[\n  {"text": "a"},\n  {\n    "text": "b"\n  }, {"text": "c"}\n]\n'
    f = write(tmp_path / "d.json", text)
    assert [r.source for r in iter_rows(f)] == [f"{f}:2 (item 0)", f"{f}:3 (item 1)", f"{f}:5 (item 2)"]
    assert [r.row["text"] for r in iter_rows(f)] == ["a", "b", "c"]


def test_json_array_non_object_item(tmp_path: Path) -> None:
    f = write(tmp_path / "d.json", '[{"text": "a"},\n 7]')
    rows = list(iter_rows(f))
    assert rows[0].error is None
    assert rows[1].source == f"{f}:2 (item 1)"
    assert rows[1].error is not None and rows[1].error.reason == "not_an_object"


def test_json_empty_array_has_no_rows(tmp_path: Path) -> None:
    assert list(iter_rows(write(tmp_path / "d.json", " [ ] "))) == []


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('[\n  {"text": "a"},\n  {"text": "b",}\n]', r":3:16: invalid JSON: Expecting property name"),
        ('[\n  {"text": "a"}\n  {"text": "b"}\n]', r":3:3: invalid JSON: Expecting ',' delimiter"),
        ('[\n  {"text": "a"}', r":2:16: invalid JSON: Expecting ',' delimiter"),
        ('[{"text": "a"}] x', r":1:17: invalid JSON: Extra data"),
        ('{"text": "a"', r":1:13: invalid JSON"),
    ],
)
def test_json_invalid_file_names_line_and_column(tmp_path: Path, text: str, where: str) -> None:
    f = write(tmp_path / "d.json", text)
    with pytest.raises(DataError, match=r"d\.json" + where):
        list(iter_rows(f))


def test_json_single_object_is_one_row(tmp_path: Path) -> None:
    f = write(tmp_path / "d.json", "\n\n" + json.dumps(ROW, indent=2))
    assert list(iter_rows(f)) == [SourceRow(ROW, f"{f}:3")]


def test_json_file_holding_json_lines_is_read_as_jsonl(tmp_path: Path) -> None:
    f = write(tmp_path / "d.json", '{"text": "a"}\n{"text": "b"}\n')
    assert list(iter_rows(f)) == [SourceRow({"text": "a"}, f"{f}:1"), SourceRow({"text": "b"}, f"{f}:2")]


def test_json_non_utf8_file(tmp_path: Path) -> None:
    f = write(tmp_path / "d.json", b'[\n{"text": "caf\xe9"}]')
    with pytest.raises(DataError, match=r"d\.json:2: the file is not valid UTF-8"):
        list(iter_rows(f))


def test_json_second_bom_is_named(tmp_path: Path) -> None:
    f = write(tmp_path / "d.json", b"\xef\xbb\xbf\xef\xbb\xbf{}")
    with pytest.raises(DataError, match=r"d\.json:1:1: invalid JSON: Unexpected UTF-8 BOM"):
        list(iter_rows(f))


# Tiny blocks cut every value, string, escape, number and line break of these files somewhere.
@pytest.mark.parametrize("block", [1, 2, 3, 7, 64])
def test_json_read_in_blocks_gives_the_same_rows(
    tmp_path: Path, block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = [
        {"text": "a"},
        -1.5e3,
        {"t": "caf\u00e9 😀 中文", "n": [1, 2.25, None]},
        123456789,
        "s",
        {},
    ]
    text = (
        "\ufeff[\r\n"
        + ",\n  ".join(json.dumps(i, ensure_ascii=k % 2 == 0) for k, i in enumerate(items))
        + "\n]\n"
    )
    f = write(tmp_path / "d.json", text)
    whole = list(iter_rows(f))
    monkeypatch.setattr(readers, "BLOCK_BYTES", block)
    assert [(r.row, r.source) for r in iter_rows(f)] == [(r.row, r.source) for r in whole]
    assert [r.row for r in whole] == items
    assert [r.source for r in whole][:3] == [f"{f}:2 (item 0)", f"{f}:3 (item 1)", f"{f}:4 (item 2)"]
    # single objects, numbers and the JSON Lines fallback too
    for text, rows in [
        ("\n  -12.5e1 ", [(-125.0, f"{f}:2")]),
        (json.dumps(ROW, indent=2), [(ROW, f"{f}:1")]),
        ('{"text": "a"}\r\n\r\n{"text": "b"}', [({"text": "a"}, f"{f}:1"), ({"text": "b"}, f"{f}:3")]),
    ]:
        write(f, text)
        assert [(r.row, r.source) for r in iter_rows(f)] == rows


@pytest.mark.parametrize("block", [1, 5, 1 << 20])
@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('[\n  {"text": "a"},\n  {"text": "b",}\n]', r":3:16: invalid JSON: Expecting property name"),
        ('[\n  {"text": "a"}\n  {"text": "b"}\n]', r":3:3: invalid JSON: Expecting ',' delimiter"),
        ('[\n  {"text": "a"},\n  ]', r":3:3: invalid JSON: (Expecting value|Illegal trailing comma)"),
        ('[\n  {"text": "a"},\n  {"text": "b\n"}]', r":3:14: invalid JSON: Invalid control character"),
        ('[\n  {"text": "a"}', r":2:16: invalid JSON: Expecting ',' delimiter"),
        ('[{"text": "a"}] x', r":1:17: invalid JSON: Extra data"),
        ('{"text": "a"} x', r":1:15: invalid JSON: Extra data"),
    ],
)
def test_json_errors_are_the_same_in_blocks(
    tmp_path: Path, block: int, text: str, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(readers, "BLOCK_BYTES", block)
    f = write(tmp_path / "d.json", text)
    with pytest.raises(DataError, match=r"d\.json" + where):
        list(iter_rows(f))


def test_json_array_error_after_rows_is_raised_after_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows before a syntax error far into the file are yielded (nothing holds the file); the error follows."""
    monkeypatch.setattr(readers, "BLOCK_BYTES", 64)
    f = write(tmp_path / "d.json", "[\n" + '{"text": "a"},\n' * 50 + '{"text": "b"}\n{"text": "c"}]')
    rows = iter_rows(f)
    assert [next(rows).source for _ in range(3)] == [f"{f}:{i} (item {i - 2})" for i in (2, 3, 4)]
    with pytest.raises(DataError, match=r"d\.json:53:1: invalid JSON: Expecting ',' delimiter"):
        list(rows)


def test_json_non_utf8_file_names_the_line_of_the_bad_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(readers, "BLOCK_BYTES", 4)
    f = write(tmp_path / "d.json", b'\xef\xbb\xbf[\n{"text": "a"},\n{"text": "\xe4\xb8"}]')
    with pytest.raises(
        DataError, match=r"d\.json:3: the file is not valid UTF-8 \(invalid continuation byte\)"
    ):
        list(iter_rows(f))


# --- CSV and parquet ------------------------------------------------------------------------------------------


def test_csv_rows_are_strings_with_line_numbers(tmp_path: Path) -> None:
    text = 'instruction,input,output\nAdd,"1, 2",3\n\nSay\n"hi",,"line one\nline two"\nshort\n'
    f = write(tmp_path / "d.csv", text)
    rows = list(iter_rows(f))
    assert rows == [
        SourceRow({"instruction": "Add", "input": "1, 2", "output": "3"}, f"{f}:2"),
        SourceRow({"instruction": "Say", "input": "", "output": ""}, f"{f}:4"),
        SourceRow({"instruction": "hi", "input": "", "output": "line one\nline two"}, f"{f}:5"),
        SourceRow({"instruction": "short", "input": "", "output": ""}, f"{f}:7"),
    ]


def test_csv_row_with_too_many_cells(tmp_path: Path) -> None:
    f = write(tmp_path / "d.csv", "prompt,completion\na,b\na,b,c\n")
    rows = list(iter_rows(f))
    assert rows[1].source == f"{f}:3"
    assert rows[1].error is not None and rows[1].error.reason == "bad_csv_row"
    assert "3 cells but the header has 2" in rows[1].error.detail


def test_parquet_rows_are_plain_python(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    f = tmp_path / "d.parquet"
    pd.DataFrame(
        {
            "messages": [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]] * 2,
            "score": [1, 2],
            "tags": [["a", "b"], []],
        }
    ).to_parquet(f)
    rows = list(iter_rows(f))
    assert [r.source for r in rows] == [f"{f}:row 0", f"{f}:row 1"]
    first = rows[0].row
    assert first["messages"] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    # plain types, not numpy: downstream code does isinstance(x, list) / json.dumps
    assert type(first["messages"]) is list and type(first["tags"]) is list and type(first["score"]) is int
    json.dumps(first)


def test_corrupt_parquet(tmp_path: Path) -> None:
    f = write(tmp_path / "d.parquet", b"not parquet at all")
    with pytest.raises(DataError, match="cannot read the parquet file"):
        list(iter_rows(f))


def test_csv_and_txt_read_in_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    csv_text = '\ufeffinstruction,output\r\nAdd,"1,\r\n2"\r\n\r\nSay,hi\r\n'
    txt_text = "\ufeffone\r\ntwo\r\n\r\n\rthree\u2028four\n\n"
    c, t = write(tmp_path / "d.csv", csv_text), write(tmp_path / "d.txt", txt_text)
    wanted = {
        (c, "line"): [
            ({"instruction": "Add", "output": "1,\r\n2"}, f"{c}:2"),
            ({"instruction": "Say", "output": "hi"}, f"{c}:5"),
        ],
        (t, "line"): [
            ({"text": w}, f"{t}:{n}") for w, n in [("one", 1), ("two", 2), ("three", 5), ("four", 6)]
        ],
        (t, "blank_line"): [({"text": "one\ntwo"}, f"{t}:1"), ({"text": "three\nfour"}, f"{t}:5")],
        (t, "file"): [({"text": txt_text[1:]}, f"{t}:1")],
    }
    for block in (1, 2, 3, 1 << 20):
        monkeypatch.setattr(readers, "BLOCK_BYTES", block)
        for (path, documents), rows in wanted.items():
            assert [(r.row, r.source) for r in iter_rows(path, txt_documents=documents)] == rows


@pytest.mark.parametrize("name", ["d.csv", "d.txt"])
def test_csv_and_txt_non_utf8_names_the_line(tmp_path: Path, name: str) -> None:
    f = write(tmp_path / name, b"a,b\n1,2\ncaf\xe9,3\n")
    with pytest.raises(DataError, match=r"d\.\w+:3: the file is not valid UTF-8"):
        list(iter_rows(f))


def test_txt_blank_file_is_a_data_error(tmp_path: Path) -> None:
    f = write(tmp_path / "d.txt", " \n\u2028\n")
    for documents in ("line", "blank_line", "file"):
        with pytest.raises(DataError, match=r"d\.txt: the file is empty \(no text\)"):
            list(iter_rows(f, txt_documents=documents))


# --- byte ranges of one .jsonl file -----------------------------------------------------------------------------

JSONL_CASES = {
    "plain": b'{"text": "a"}\n{"text": "b"}\n{"text": "c"}\n',
    "bom_crlf_blank_no_final_newline": b'\xef\xbb\xbf{"text": "a"}\r\n\r\n{"text": "b"}\r\n  \r\n{"text": "c"}\r\n{"text": "d"}',
    "cr_only_and_bad_rows": b'{"text": "a"}\r{"text": \r\r7\r{"text": "caf\xe9"}\n\n{"text": "e"}\r',
    "long_lines": b"\n".join(json.dumps({"text": "x" * n}).encode() for n in (300, 1, 900, 5, 40)),
}


@pytest.mark.parametrize("case", list(JSONL_CASES))
def test_jsonl_ranges_together_give_the_file_rows(
    tmp_path: Path, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = write(tmp_path / "d.jsonl", JSONL_CASES[case])

    def key(rows: list[SourceRow]) -> list[tuple]:
        return [(r.row, r.source, r.error and (r.error.reason, r.error.detail)) for r in rows]

    whole = key(list(iter_rows(f)))
    assert len(whole) >= 3
    size = f.stat().st_size
    for block in (3, 1 << 20):
        monkeypatch.setattr(readers, "BLOCK_BYTES", block)
        assert key(list(iter_rows(f))) == whole
        for parts in (1, 2, 3, 5, 16, size + 3):
            ranges = split_jsonl(f, parts)
            assert len(ranges) == parts and ranges[0][0] == 0 and ranges[-1][1] == size
            assert all(a <= b == c for (a, b), (c, _) in zip(ranges, ranges[1:], strict=False))
            assert key([r for a, b in ranges for r in iter_jsonl_range(f, a, b)]) == whole
    # Any cut works: a line belongs to the range its first byte is in (cuts inside \r\n, the BOM, a row).
    for step in (1, 7):
        cuts = [*range(0, size, step), size]
        assert (
            key([r for a, b in zip(cuts, cuts[1:], strict=False) for r in iter_jsonl_range(f, a, b)]) == whole
        )


def test_jsonl_range_takes_the_first_line_number(tmp_path: Path) -> None:
    f = write(tmp_path / "d.jsonl", b'{"text": "a"}\n{"text": "b"}\n{"text": "c"}\n')
    [(_, mid), (start, end)] = split_jsonl(f, 2)
    assert [r.source for r in iter_jsonl_range(f, start, end, first_line=3)] == [f"{f}:3"]
    assert [r.source for r in iter_jsonl_range(f, start, end)] == [f"{f}:3"]
    assert list(iter_jsonl_range(f, end, end)) == [] and list(iter_jsonl_range(f, 1, 5)) == []


# --- memory -----------------------------------------------------------------------------------------------------


def big_rows(n: int) -> list[dict]:
    return [{"instruction": f"Question {i}?", "output": "answer " * 20 + str(i)} for i in range(n)]


@pytest.mark.parametrize("name", ["d.jsonl", "d.json", "d.csv"])
def test_reading_a_large_file_takes_memory_of_a_block_not_the_file(tmp_path: Path, name: str) -> None:
    rows = big_rows(2_000)
    f = tmp_path / name
    if name.endswith(".csv"):
        body = "".join(f"{r['instruction']},{r['output']}\n" for r in rows)
        chunk = body.encode()
        head = b"instruction,output\n"
    elif name.endswith(".jsonl"):
        chunk, head = "".join(json.dumps(r) + "\n" for r in rows).encode(), b""
    else:
        chunk, head = ("".join(json.dumps(r) + ",\n" for r in rows)).encode(), b"["
    with open(f, "wb") as out:  # ~30 MB
        out.write(head)
        for _ in range((30 << 20) // len(chunk)):
            out.write(chunk)
        if name.endswith(".json"):
            out.write(json.dumps(rows[0]).encode() + b"]")
    size = f.stat().st_size
    tracemalloc.start()
    try:
        count = sum(1 for _ in iter_rows(f))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count > 100_000
    assert peak < size / 5, f"peak {peak / 2**20:.1f} MiB reading {size / 2**20:.1f} MiB"


# --- datasets -------------------------------------------------------------------------------------------------


def test_dataset_saved_to_disk(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list([{"text": "a"}, {"text": "b"}]),
            "test": datasets.Dataset.from_list([{"text": "c"}]),
        }
    )
    folder = tmp_path / "saved"
    dd.save_to_disk(str(folder))
    rows = list(iter_dataset_rows(str(folder), None, "train"))
    assert rows == [
        SourceRow({"text": "a"}, f"{folder}[train]#0"),
        SourceRow({"text": "b"}, f"{folder}[train]#1"),
    ]
    with pytest.raises(DataError, match=r"no split 'validation'; available splits: train, test"):
        list(iter_dataset_rows(str(folder), None, "validation"))


def test_single_dataset_saved_to_disk(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "one"
    datasets.Dataset.from_list([{"text": "a"}]).save_to_disk(str(folder))
    assert list(iter_dataset_rows(str(folder), None, "train")) == [
        SourceRow({"text": "a"}, f"{folder}[train]#0")
    ]


def test_dataset_local_folder_uses_file_readers(tmp_path: Path) -> None:
    f = write(tmp_path / "data" / "a.jsonl", '{"text": "x"}\n')
    assert list(iter_dataset_rows(str(tmp_path / "data"), None, "train")) == [
        SourceRow({"text": "x"}, f"{f}:1")
    ]
    assert list(iter_dataset_rows(str(f), None, "train")) == [SourceRow({"text": "x"}, f"{f}:1")]


def test_dataset_local_folder_with_splits_reads_only_the_requested_split(tmp_path: Path) -> None:
    train = write(tmp_path / "data" / "train-00000-of-00001.jsonl", '{"text": "t"}\n')
    write(tmp_path / "data" / "test-00000-of-00001.jsonl", '{"text": "e"}\n')
    dev = write(tmp_path / "data" / "dev.jsonl", '{"text": "d"}\n')
    assert [r.source for r in iter_dataset_rows(str(tmp_path), None, "train")] == [f"{train}:1"]
    assert [r.source for r in iter_dataset_rows(str(tmp_path), None, "validation")] == [f"{dev}:1"]
    with pytest.raises(
        DataError, match=r"no files for split 'extra'; the file names show splits: train, test, validation\."
    ):
        list(iter_dataset_rows(str(tmp_path), None, "extra"))


# --- real data ------------------------------------------------------------------------------------------------


@pytest.mark.needs_shared
def test_real_files_read_without_row_errors(shared_data: Path) -> None:
    counts = {}
    for path in resolve_data_files(shared_data):
        rows = list(iter_rows(path))
        assert all(r.error is None for r in rows), path
        counts[path.name] = len(rows)
    assert counts == {
        "alpaca_en_demo.json": 999,
        "alpaca_zh_demo.json": 1000,
        "c4_demo.jsonl": 300,
        "glaive_toolcall_en_demo.json": 300,
        "v1_sft_demo.jsonl": 500,
    }


@pytest.mark.needs_shared
def test_real_json_array_sources_point_at_the_element(shared_data: Path) -> None:
    path = shared_data / "alpaca_en_demo.json"
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = list(iter_rows(path))
    for r in (rows[0], rows[500], rows[-1]):
        line = int(r.source.split(":")[-1].split(" ")[0])
        assert lines[line - 1].strip() == "{"
        assert (
            lines[line].strip() == f'"instruction": {json.dumps(r.row["instruction"], ensure_ascii=False)},'
        )
    assert rows[-1].source.endswith(" (item 998)")


def test_first_lines_of_the_ranges_are_counted_in_one_pass(tmp_path):
    from sftforge.data.readers import iter_jsonl_range, jsonl_first_lines, split_jsonl

    path = tmp_path / "mixed.jsonl"
    lines = [f'{{"i": {i}}}' for i in range(200)]
    ends = ["\n", "\r\n", "\r", "\n\n"]
    path.write_bytes("".join(line + ends[i % 4] for i, line in enumerate(lines)).encode())
    whole = [(r.source, r.row) for r in iter_rows(path)]
    for parts in (1, 2, 7, 33):
        ranges = split_jsonl(path, parts)
        firsts = jsonl_first_lines(path, ranges)
        got = [
            (r.source, r.row)
            for (a, b), n in zip(ranges, firsts, strict=True)
            for r in iter_jsonl_range(path, a, b, n)
        ]
        assert got == whole
