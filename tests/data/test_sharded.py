"""Preprocessing on several cores, each worker reading its own share of the files: the same examples, order,
statistics and errors as one process."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import sftforge.data.sharded as sharded
from sftforge.config.schema import DataArguments
from sftforge.data.pipeline import PreparedData, TokenizeSpec, prepare_data
from sftforge.data.templates import DEFAULT_CHAT_TEMPLATE
from sftforge.errors import DataError


@pytest.fixture(scope="module")
def spec(tiny_model_dir: Path) -> TokenizeSpec:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    return TokenizeSpec.build(tok, DEFAULT_CHAT_TEMPLATE, 256, truncation="right")


def row(i: int) -> dict[str, Any]:
    if i % 3 == 0:
        return {"instruction": f"Add {i} and {i}.", "input": "", "output": f"{2 * i}"}
    return {
        "messages": [
            {"role": "user", "content": f"问题 {i}: " + "why? " * (i % 7)},
            {"role": "assistant", "content": f"Because {i}. " * (1 + i % 5)},
        ]
    }


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    big = write_jsonl(tmp_path / "a.jsonl", [row(i) for i in range(1_500)])
    small = tmp_path / "b.json"
    small.write_text(json.dumps([row(i) for i in range(1_500, 1_600)]), encoding="utf-8")
    return [big, small]


def data_args(files: list[Path], **kwargs: Any) -> DataArguments:
    return DataArguments(train_data_path=[str(f) for f in files], preprocessing_cache=False, **kwargs)


def plain(prepared: PreparedData) -> tuple[list[Any], Any]:
    return [(e.input_ids, e.labels, e.source) for e in prepared.train], prepared.train_stats


@pytest.fixture
def small_ranges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sharded, "RANGE_BYTES", 20_000)  # the test file is cut into ~10 ranges


@pytest.mark.slow
def test_two_workers_give_exactly_what_one_process_gives(
    files: list[Path], spec: TokenizeSpec, small_ranges: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    shares = sharded.plan_shares(files, 2)
    assert len([s for s in shares if s.start is not None]) >= 6 and shares[-1].path == files[1]
    one = prepare_data(data_args(files, dataset_num_proc=1), spec, seed=0)
    calls: list[int] = []
    real = sharded.write_examples_sharded
    monkeypatch.setattr(sharded, "write_examples_sharded", lambda *a, **k: calls.append(1) or real(*a, **k))
    two = prepare_data(data_args(files, dataset_num_proc=2), spec, seed=0)
    assert calls == [1]  # the sharded path ran
    assert plain(two) == plain(one)
    assert len(two.train) > 1_000


@pytest.mark.slow
def test_the_first_bad_row_in_data_order_stops_the_run(
    tmp_path: Path, spec: TokenizeSpec, small_ranges: None
) -> None:
    rows: list[Any] = [row(i) for i in range(1_500)]
    rows[700] = {"messages": [{"role": "user", "content": "no answer"}]}
    rows[1_200] = {"messages": []}  # a later bad row, in a later share
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as sequential:
        prepare_data(data_args([path], dataset_num_proc=1), spec, seed=0)
    with pytest.raises(DataError) as parallel:
        prepare_data(data_args([path], dataset_num_proc=2), spec, seed=0)
    assert str(parallel.value) == str(sequential.value)
    assert "bad.jsonl:701" in str(parallel.value)
    # Skipping: the same counts by reason, the same threshold check
    skip = {"on_bad_rows": "skip", "max_bad_row_fraction": 0.5}
    a = prepare_data(data_args([path], dataset_num_proc=1, **skip), spec, seed=0)
    b = prepare_data(data_args([path], dataset_num_proc=2, **skip), spec, seed=0)
    assert plain(a) == plain(b) and sum(b.train_stats.dropped.values()) == 2


@pytest.mark.slow
def test_a_broken_file_names_its_key(tmp_path: Path, files: list[Path], spec: TokenizeSpec) -> None:
    broken = tmp_path / "c.json"  # rows are read before the syntax error comes
    good = ", ".join(json.dumps(row(i)) for i in range(50))
    broken.write_text(f'[{good},\n{{"instruction": ', encoding="utf-8")
    with pytest.raises(DataError) as sequential:
        prepare_data(data_args([*files, broken], dataset_num_proc=1), spec, seed=0)
    with pytest.raises(DataError, match=r"^train_data_path: .*c\.json:2:\d+: invalid JSON") as parallel:
        prepare_data(data_args([*files, broken], dataset_num_proc=2), spec, seed=0)
    assert str(parallel.value) == str(sequential.value)


def test_auto_starts_workers_only_for_large_local_data(
    files: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sharded, "usable_cores", lambda: 8)
    assert sharded.shard_processes("auto", files, None) == 0  # a few hundred KB: not worth starting processes
    monkeypatch.setattr(sharded, "AUTO_MIN_BYTES", 1)
    assert sharded.shard_processes("auto", files, None) == 8
    assert sharded.shard_processes(None, files, None) == 8
    assert sharded.shard_processes("auto", files, 100) == 0  # the first N rows: read in order
    assert sharded.shard_processes(3, files, None) == 3 and sharded.shard_processes(1, files, None) == 0
    monkeypatch.setattr(sharded, "usable_cores", lambda: 1)
    assert sharded.shard_processes("auto", files, None) == 0


def test_dataset_num_proc_accepts_auto_and_refuses_words(tmp_path: Path, files: list[Path]) -> None:
    from sftforge.config import load_config
    from sftforge.errors import ConfigError

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model_name_or_path: m\ntrain_data_path: {files[0]}\ndataset_num_proc: auto\n")
    assert load_config(recipe).data.dataset_num_proc == "auto"
    assert load_config(recipe, ["--dataset_num_proc", "3"]).data.dataset_num_proc == 3
    with pytest.raises(ConfigError, match="dataset_num_proc: 'many' is not a process count"):
        load_config(recipe, ["--dataset_num_proc", "many"])
    assert replace(DataArguments()).dataset_num_proc == "auto"


NO_MAIN_GUARD = """
import sys
import sftforge.data.sharded as sharded
from transformers import AutoTokenizer
from sftforge.config.schema import DataArguments
from sftforge.data.pipeline import TokenizeSpec, prepare_data
from sftforge.data.templates import DEFAULT_CHAT_TEMPLATE

sharded.RANGE_BYTES = 20_000
tok = AutoTokenizer.from_pretrained(sys.argv[1])
spec = TokenizeSpec.build(tok, DEFAULT_CHAT_TEMPLATE, 256, truncation="right")
data = DataArguments(train_data_path=[sys.argv[2]], preprocessing_cache=False, dataset_num_proc=2)
print("EXAMPLES", len(prepare_data(data, spec, seed=0).train), flush=True)
"""


@pytest.mark.slow
def test_a_script_without_a_main_guard_falls_back_to_one_process(
    tmp_path: Path, files: list[Path], tiny_model_dir: Path
) -> None:
    """Spawned workers re-run a script's top level; without `if __name__ == "__main__":` they cannot start. The
    run goes on in this process with a warning instead of hanging or failing."""
    import subprocess
    import sys

    script = tmp_path / "train_script.py"
    script.write_text(NO_MAIN_GUARD)
    proc = subprocess.run(
        [sys.executable, str(script), str(tiny_model_dir), str(files[0])],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "preprocessing workers could not run" in proc.stderr
    assert proc.stdout.count("EXAMPLES") == 1 and "EXAMPLES 1500" in proc.stdout


def test_a_worker_starts_without_torch(spec: TokenizeSpec, tmp_path: Path) -> None:
    """Every worker imports the preprocessing code and unpickles the tokenizer: that must not pull in torch or the
    training config (transformers' TrainingArguments), which cost a worker ~4 s of CPU before its first row."""
    import pickle
    import subprocess
    import sys

    (tmp_path / "spec.pkl").write_bytes(pickle.dumps(spec))
    probe = (
        "import pickle, sys, sftforge.data.sharded\n"
        f"pickle.loads(open({str(tmp_path / 'spec.pkl')!r}, 'rb').read())\n"
        "print(sorted(m for m in ('torch', 'sftforge.config.schema', 'peft') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
