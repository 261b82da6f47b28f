"""Readers: every row knows its file:line, bad rows are reported per row, bad files fail with a clear DataError."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftforge.data.readers import (
    SUPPORTED_EXTENSIONS,
    SourceRow,
    iter_dataset_rows,
    iter_rows,
    resolve_data_files,
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
