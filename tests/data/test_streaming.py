"""The streaming dataset: a window packs as best-fit-decreasing of its examples, a saved position restarts the
stream with exactly the remaining items, ranks read disjoint shares that cover every row, bad rows follow
on_bad_rows, and .jsonl rows keep the sources of the non-streaming reader."""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path
from typing import Any

import pytest

from sftforge.data.packing import best_fit_decreasing, pack_examples
from sftforge.data.pipeline import TokenizeSpec, build_examples
from sftforge.data.readers import iter_rows
from sftforge.data.streaming import (
    POSITION_KEY,
    PositionCollator,
    StreamConfig,
    StreamingDataset,
    StreamPosition,
    _materialise,
    file_rows,
)
from sftforge.errors import DataError

N_ROWS = 23  # not a multiple of the window or of the ranks: short last windows and uneven shares


@pytest.fixture(scope="module")
def spec(tiny_model_dir: Path) -> TokenizeSpec:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    return TokenizeSpec.build(tok, tok.chat_template, 128, truncation="right")


def chat(i: int) -> dict[str, Any]:
    answer = " ".join(["word"] * (1 + i % 7))  # varied lengths: packing has something to decide
    return {
        "messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": answer}]
    }


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "train.jsonl"
    lines = [json.dumps(chat(i)) for i in range(N_ROWS)]
    lines.insert(5, "")  # a blank line: no row, but line numbers go on
    path.write_text("\n".join(lines) + "\n")
    return path


def dataset(data: Path, spec: TokenizeSpec, **kwargs: Any) -> StreamingDataset:
    return StreamingDataset(lambda: file_rows([data]), spec, StreamConfig(**{"capacity": 128, **kwargs}))


def take(ds: StreamingDataset, n: int) -> list[dict[str, Any]]:
    return list(islice(iter(ds), n))


def sources(items: list[dict[str, Any]]) -> list[list[str]]:
    return [item["sources"] for item in items]


def test_jsonl_rows_keep_the_readers_sources(data: Path) -> None:
    streamed = [row.source for row in map(_materialise, file_rows([data]))]
    assert streamed == [row.source for row in iter_rows(data)]
    assert f"{data}:7" in streamed and f"{data}:6" not in streamed  # the blank line 6 is skipped


def test_a_window_packs_as_best_fit_decreasing_of_its_examples(data: Path, spec: TokenizeSpec) -> None:
    ds = dataset(data, spec, window=10, packing=True, shuffle=False)
    items = take(ds, 100)
    rows = list(iter_rows(data))
    examples, _ = build_examples(rows[:10], spec, "error", 1, "test")
    features = [{**e.as_features(), "sources": [e.source]} for e in examples]
    expected = pack_examples(features, 128)
    first = [i for i in items if i[POSITION_KEY]["window"] == 0 and i[POSITION_KEY]["epoch"] == 0]
    assert [(i["input_ids"], i["seq_lens"], i["sources"]) for i in first] == [
        (e["input_ids"], e["seq_lens"], e["sources"]) for e in expected
    ]
    bins = best_fit_decreasing([len(f["input_ids"]) for f in features], 128)
    assert sorted(len(b) for b in bins) == sorted(len(i["seq_lens"]) for i in first)
    assert len(first) < 10  # several examples share a row


@pytest.mark.parametrize("packing", [True, False])
def test_a_saved_position_restarts_with_exactly_the_remaining_items(
    data: Path, spec: TokenizeSpec, packing: bool
) -> None:
    straight = take(dataset(data, spec, window=4, packing=packing, seed=3), 60)  # > one pass: epoch 1 too
    assert max(i[POSITION_KEY]["epoch"] for i in straight) >= 1
    for cut in (1, 5, 11, 29):
        resumed = dataset(data, spec, window=4, packing=packing, seed=3)
        resumed.start = StreamPosition.from_dict(straight[cut - 1][POSITION_KEY])
        rest = take(resumed, len(straight) - cut)
        assert sources(rest) == sources(straight[cut:]), cut
        assert [i["input_ids"] for i in rest] == [i["input_ids"] for i in straight[cut:]]


def test_each_pass_covers_every_row_once_and_reshuffles_within_windows(
    data: Path, spec: TokenizeSpec
) -> None:
    items = take(dataset(data, spec, window=6, seed=1), 2 * N_ROWS)
    first, second = sources(items[:N_ROWS]), sources(items[N_ROWS:])
    assert sorted(first) == sorted(second) and len({s[0] for s in first}) == N_ROWS
    assert first != second  # the epoch is part of the window's seed
    in_order = take(dataset(data, spec, window=6, shuffle=False), N_ROWS)
    assert [s[0] for s in sources(in_order)] == [r.source for r in iter_rows(data)]


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_read_disjoint_shares_that_cover_every_row(
    data: Path, spec: TokenizeSpec, world_size: int
) -> None:
    shares = []
    for rank in range(world_size):
        share = (N_ROWS - rank + world_size - 1) // world_size  # rows i with i % world_size == rank
        items = take(dataset(data, spec, window=4, rank=rank, world_size=world_size), share)
        shares.append({s[0] for s in sources(items)})
        assert len(shares[-1]) == share
    assert set().union(*shares) == {r.source for r in iter_rows(data)}
    assert sum(map(len, shares)) == N_ROWS


def test_max_rows_limits_the_rows_of_all_ranks_together(data: Path, spec: TokenizeSpec) -> None:
    items = take(dataset(data, spec, window=4, shuffle=False, max_rows=5), 10)
    assert [s[0] for s in sources(items)] == [r.source for r in iter_rows(data)][:5] * 2


def test_bad_rows_stop_or_are_counted(tmp_path: Path, spec: TokenizeSpec) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join([json.dumps(chat(0)), "{broken", json.dumps(chat(1))]) + "\n")
    with pytest.raises(DataError, match=r"train.jsonl:2.*invalid_json"):
        take(dataset(path, spec, window=4), 1)
    lenient = dataset(path, spec, window=4, on_bad_rows="skip", shuffle=False)
    assert [s[0] for s in sources(take(lenient, 2))] == [f"{path}:1", f"{path}:3"]
    assert lenient.stats.dropped["invalid_json"] == 1 and lenient.stats.kept == 2
    strict_fraction = dataset(path, spec, window=4, on_bad_rows="skip", max_bad_fraction=0.1)
    with pytest.raises(DataError, match="max_bad_row_fraction"):
        take(strict_fraction, 1)


def test_data_without_a_usable_row_is_an_error_not_an_endless_loop(
    tmp_path: Path, spec: TokenizeSpec
) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text('{"nothing": 1}\n')
    with pytest.raises(DataError, match="no training example"):
        take(dataset(path, spec, on_bad_rows="skip"), 1)


def test_the_collator_passes_the_last_items_position(data: Path, spec: TokenizeSpec) -> None:
    from sftforge.data.collate import PaddingCollator

    items = take(dataset(data, spec, window=4), 3)
    batch = PositionCollator(PaddingCollator(0))(items)
    assert batch[POSITION_KEY] == items[-1][POSITION_KEY]
    assert batch["input_ids"].shape[0] == 3 and len(batch["sources"]) == 3
