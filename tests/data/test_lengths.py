"""Rows dropped for max_length: counted at their full length, stopped over `max_dropped_fraction` with the length
percentiles and a fix, warned about under it — in one process, on several, from the cache, in a mix, streaming."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sftforge.config.schema import DataArguments
from sftforge.data.lengths import check_length_drops, distribution, drop_warning, percentile
from sftforge.data.pipeline import DataStats, TokenizeSpec, build_examples, prepare_data
from sftforge.data.readers import SourceRow
from sftforge.data.streaming import StreamConfig, StreamingDataset, file_rows
from sftforge.errors import DataError
from sftforge.train.summary import data_summary_lines

MAX_LENGTH = 64


@pytest.fixture(scope="module")
def tok(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def spec_of(tok: Any, truncation: str = "turns", max_length: int = MAX_LENGTH) -> TokenizeSpec:
    return TokenizeSpec.build(tok, tok.chat_template, max_length, truncation=truncation)


def chat(*turns: tuple[str, str]) -> dict[str, Any]:
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


def short(i: int) -> dict[str, Any]:
    return chat(("user", f"Question {i}?"), ("assistant", f"Answer {i}."))


def long(i: int) -> dict[str, Any]:
    return chat(("user", f"Tell a story {i}."), ("assistant", "word " * 100))


def full_length(tok: Any, row: dict[str, Any]) -> int:
    """The whole conversation's tokens, from the template itself (not sftforge's renderer)."""
    text = tok.apply_chat_template(row["messages"], tokenize=False)
    return len(tok(text, add_special_tokens=False)["input_ids"])


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def data_args(paths: list[Path], **kwargs: Any) -> DataArguments:
    return DataArguments(
        train_data_path=[str(p) for p in paths], max_length=MAX_LENGTH, preprocessing_cache=False, **kwargs
    )


# --- the statistics ---------------------------------------------------------------------------------------------


def test_percentiles_are_nearest_rank_over_rows() -> None:
    lengths = Counter({10: 50, 20: 40, 30: 9, 400: 1})
    assert [percentile(lengths, q) for q in (0.5, 0.9, 0.99, 1.0)] == [10, 20, 30, 400]
    assert distribution(lengths) == "p50 10, p90 20, p99 30, max 400 tokens"
    assert percentile(Counter(), 0.5) == 0


@pytest.mark.parametrize(
    "truncation, dropped",
    [("turns", {"exceeds_max_length": 1}), ("right", {}), ("drop", {"exceeds_max_length": 2})],
)
def test_every_row_is_counted_at_its_length_before_truncation(
    tok: Any, truncation: str, dropped: dict[str, int]
) -> None:
    # A long first round that `turns` drops (the row is kept, shortened), a long single round (dropped by `turns`
    # and `drop`, cut by `right`), a short row: whatever happens to them, each counts at its whole length.
    rounds = chat(("user", "Story?"), ("assistant", "word " * 100), ("user", "Short?"), ("assistant", "Yes."))
    rows = [short(1), long(2), rounds]
    assert all(full_length(tok, r) > MAX_LENGTH for r in rows[1:])
    sources = [SourceRow(r, f"f.jsonl:{i}") for i, r in enumerate(rows, 1)]
    _, stats = build_examples(sources, spec_of(tok, truncation), "error", None, "t")
    assert stats.lengths == Counter(full_length(tok, r) for r in rows)
    assert stats.dropped == dropped


def test_a_split_row_counts_at_its_longest_example_even_when_that_one_is_dropped(tok: Any) -> None:
    from sftforge.data.pipeline import process_row

    turns: list[tuple[str, str]] = []
    for k in range(
        3
    ):  # multi_turn: split makes one example per assistant turn, each with the turns before it
        turns += [("user", f"Question {k} " + "word " * (10 * k)), ("assistant", f"A{k}")]
    source = SourceRow(chat(*turns), "t.jsonl:1")
    build = lambda n: TokenizeSpec.build(tok, tok.chat_template, n, truncation="drop", multi_turn="split")  # noqa: E731
    status, _, whole = process_row(build(1 << 20), source)
    assert status == "split" and len(whole.examples) == 3
    longest = max(len(e.input_ids) for e, _ in whole.examples)
    assert whole.length == longest == full_length(tok, source.row)  # the last turn's example is the whole row
    status, _, cut = process_row(build(longest - 1), source)  # that example is dropped, the row is kept
    assert status == "split" and cut.dropped == {"exceeds_max_length": 1} and cut.length == longest


# --- the check: error over max_dropped_fraction, warning under it ------------------------------------------------


def test_too_many_rows_over_max_length_stop_with_the_percentiles_and_a_fix(tok: Any, tmp_path: Path) -> None:
    rows = [short(i) for i in range(18)] + [long(18), long(19)]  # 2 of 20 (10%) > the default 5%
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError) as err:
        prepare_data(data_args([path]), spec_of(tok), seed=0)
    message = str(err.value)
    lengths = Counter(full_length(tok, r) for r in rows)
    p99 = percentile(lengths, 0.99)
    assert p99 == max(
        full_length(tok, long(18)), full_length(tok, long(19))
    )  # the rows to keep are the long ones
    assert message.startswith(
        f"2 of 20 train rows read (10.0%) were dropped for being longer than max_length={MAX_LENGTH} "
        "(truncation: turns; exceeds_max_length: 2), more than max_dropped_fraction=0.05 allows."
    )
    assert f"Row lengths before truncation: {distribution(lengths)}." in message
    assert f"set max_length: {p99} (keeps 99% of the rows whole" in message
    assert "set truncation: right" in message and "raise max_dropped_fraction (1.0 never stops)" in message


def test_under_the_threshold_the_run_goes_on_and_the_summary_warns(tok: Any, tmp_path: Path) -> None:
    rows = [short(i) for i in range(39)] + [long(39)]  # 1 of 40 (2.5%)
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    args = data_args([path])
    data = prepare_data(args, spec_of(tok), seed=0)
    assert len(data.train) == 39
    lines = data_summary_lines(SimpleNamespace(data=args), data)
    lengths = Counter(full_length(tok, r) for r in rows)
    assert f" lengths      {distribution(lengths)} per row before truncation; max_length " in "\n".join(lines)
    assert (
        f" ⚠ dropped 1 of 40 train rows (2.5%) longer than max_length={MAX_LENGTH} (exceeds_max_length: 1), "
        f"within max_dropped_fraction=0.05; max_length {percentile(lengths, 0.99)} keeps 99% of the rows whole"
    ) in lines


def test_no_warning_when_nothing_was_dropped(tok: Any) -> None:
    _, stats = build_examples([SourceRow(short(1), "f:1")], spec_of(tok), "error", None, "t")
    assert drop_warning(stats, MAX_LENGTH, 0.05) is None and stats.lengths


def test_max_dropped_fraction_one_never_stops(tok: Any, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", [short(0), long(1), long(2)])
    data = prepare_data(data_args([path], max_dropped_fraction=1.0), spec_of(tok), seed=0)
    assert len(data.train) == 1 and data.train_stats.dropped == {"exceeds_max_length": 2}


def test_length_drops_stop_in_skip_mode_too_and_bad_rows_do_not_count(tok: Any) -> None:
    rows = [SourceRow(short(i), f"f:{i}") for i in range(10)] + [SourceRow({"nope": 1}, "f:10")]
    rows.append(SourceRow(long(11), "f:11"))  # 1 length drop of 12 rows (8.3%); the bad row is not one
    with pytest.raises(DataError, match=r"^1 of 12 rows read \(8\.3%\) were dropped for being longer"):
        build_examples(rows, spec_of(tok), "skip", None, "t", max_dropped_fraction=0.05)
    _, stats = build_examples(rows, spec_of(tok), "skip", None, "t", max_dropped_fraction=0.1)
    assert stats.dropped == {"exceeds_max_length": 1, "unknown_format": 1}


def test_the_eval_split_is_checked_too(tok: Any, tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", [short(i) for i in range(10)])
    evaluation = write_jsonl(tmp_path / "eval.jsonl", [short(0), long(1)])
    with pytest.raises(DataError, match=r"^1 of 2 eval rows read \(50\.0%\)"):
        prepare_data(data_args([train], eval_data_path=[str(evaluation)]), spec_of(tok), seed=0)


def test_truncation_right_is_not_suggested_when_it_is_already_on() -> None:
    stats = DataStats(rows=10, dropped=Counter({"no_trainable_tokens_after_truncation": 5}))
    stats.lengths = Counter({20: 5, 300: 5})
    with pytest.raises(DataError) as err:
        check_length_drops(stats, 0.05, 64, "right", "train")
    assert "set max_length: 300" in str(err.value) and "set truncation: right" not in str(err.value)


def test_under_one_percent_dropped_the_suggestion_keeps_every_row() -> None:
    stats = DataStats(rows=1000, dropped=Counter({"exceeds_max_length": 5}))
    stats.lengths = Counter({50: 995, 200: 5})  # p99 is 50, already within max_length
    with pytest.raises(DataError) as err:
        check_length_drops(stats, 0.001, 64, "turns", "train")
    assert "set max_length: 200 (keeps every row whole;" in str(err.value)
    assert drop_warning(stats, 64, 0.01, "train").endswith("; max_length 200 keeps every row whole")


# --- the same everywhere: the cache, several processes, a mix, streaming -----------------------------------------


def test_a_cache_hit_keeps_the_lengths_and_checks_them_against_todays_threshold(
    tok: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sftforge.data.pipeline as pipeline

    path = write_jsonl(tmp_path / "train.jsonl", [short(i) for i in range(9)] + [long(9)])
    cached = data_args([path], max_dropped_fraction=1.0, cache_dir=str(tmp_path / "cache"))
    cached.preprocessing_cache = True
    stored = prepare_data(cached, spec_of(tok), seed=0)
    hit = prepare_data(cached, spec_of(tok), seed=0)
    assert (stored.cache.state, hit.cache.state) == ("stored", "hit")
    assert hit.train_stats.lengths == stored.train_stats.lengths and len(stored.train_stats.lengths) > 1
    cached.max_dropped_fraction = 0.05  # no cache input: the same entry is hit, and checked against it
    monkeypatch.setattr(pipeline, "write_examples", lambda *a, **k: pytest.fail("tokenized again"))
    with pytest.raises(DataError, match=r"^1 of 10 train rows read \(10\.0%\)"):
        prepare_data(cached, spec_of(tok), seed=0)


def test_two_processes_count_the_same_lengths_as_one(
    tok: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sftforge.data.sharded as sharded

    rows = [long(i) if i % 9 == 0 else short(i) for i in range(120)]
    paths = [write_jsonl(tmp_path / "a.jsonl", rows[:70]), write_jsonl(tmp_path / "b.jsonl", rows[70:])]
    one = prepare_data(data_args(paths, dataset_num_proc=1, max_dropped_fraction=1.0), spec_of(tok), seed=0)
    calls: list[int] = []
    real = sharded.write_examples_sharded
    monkeypatch.setattr(sharded, "write_examples_sharded", lambda *a, **k: calls.append(1) or real(*a, **k))
    two = prepare_data(data_args(paths, dataset_num_proc=2, max_dropped_fraction=1.0), spec_of(tok), seed=0)
    assert calls == [1]  # the sharded path ran
    assert two.train_stats == one.train_stats
    assert one.train_stats.lengths == Counter(full_length(tok, r) for r in rows)
    with pytest.raises(DataError, match=r"^14 of 120 train rows read \(11\.7%\)"):  # and checks the total
        prepare_data(data_args(paths, dataset_num_proc=2), spec_of(tok), seed=0)


def test_a_mix_is_checked_once_over_all_its_sources(tok: Any, tmp_path: Path) -> None:
    mostly_long = write_jsonl(tmp_path / "a.jsonl", [short(0), long(1)])  # 50% of this source alone
    short_rows = write_jsonl(tmp_path / "b.jsonl", [short(i) for i in range(38)])
    args = DataArguments(
        datasets=[{"path": str(mostly_long)}, {"path": str(short_rows)}],
        max_length=MAX_LENGTH,
        preprocessing_cache=False,
    )
    data = prepare_data(args, spec_of(tok), seed=0)  # 1 of 40 (2.5%) over both
    assert data.train_stats.rows == 40 and sum(data.train_stats.lengths.values()) == 40
    args.datasets = [
        {"path": str(mostly_long)},
        {"path": str(write_jsonl(tmp_path / "c.jsonl", [short(1)] * 5))},
    ]
    with pytest.raises(DataError, match=r"^1 of 7 train rows read \(14\.3%\)"):
        prepare_data(args, spec_of(tok), seed=0)


def test_streaming_checks_the_rows_read_after_each_window(tok: Any, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", [short(0), long(1), short(2), short(3)])
    config = StreamConfig(window=4, capacity=MAX_LENGTH, max_dropped_fraction=0.05)
    stream = StreamingDataset(lambda: file_rows([path]), spec_of(tok), config)
    with pytest.raises(DataError, match=r"^1 of 4 train rows read \(25\.0%\)"):
        next(iter(stream))
    lenient = StreamingDataset(
        lambda: file_rows([path]), spec_of(tok), StreamConfig(window=4, capacity=MAX_LENGTH)
    )
    next(iter(lenient))
    assert lenient.stats.lengths[full_length(tok, long(1))] == 1
