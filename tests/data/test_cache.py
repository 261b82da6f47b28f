"""Tokenized cache: an unchanged re-run tokenizes nothing; a change of any input misses; a damaged entry is never
trusted; `preprocessing_cache: false` bypasses it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import sftforge.data.cache as cache_mod
import sftforge.data.pipeline as pipeline
import sftforge.data.rows as rows_mod
import sftforge.data.store as store_mod
from sftforge.config.schema import DataArguments
from sftforge.data.cache import cache_root
from sftforge.data.encoding import PieceEncoder
from sftforge.data.masking import MaskOptions
from sftforge.data.pipeline import PreparedData, TokenizeSpec, prepare_data
from sftforge.data.templates import DEFAULT_CHAT_TEMPLATE
from sftforge.train.summary import data_summary_lines


@pytest.fixture(scope="module")
def tok(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def rows(n: int = 12) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        messages = [
            {"role": "user", "content": f"Question {i}: what is {i} + {i}? " + "Explain. " * (i % 4)},
            {"role": "assistant", "content": f"<think>\n{i} plus {i}.\n</think>\n\nIt is {2 * i}."},
        ]
        if i % 3 == 0:
            messages += [
                {"role": "user", "content": "And doubled?"},
                {"role": "assistant", "content": str(4 * i)},
            ]
        out.append({"messages": messages})
    return out


def write(path: Path, data: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in data), encoding="utf-8")
    return path


@pytest.fixture
def setup(tmp_path: Path, tok: Any) -> tuple[DataArguments, TokenizeSpec]:
    path = write(tmp_path / "train.jsonl", rows())
    data = DataArguments(train_data_path=[str(path)], max_length=4096, cache_dir=str(tmp_path / "cache"))
    return data, TokenizeSpec.build(tok, DEFAULT_CHAT_TEMPLATE, data.max_length)


class Counting:
    """Counts calls into the tokenizing stage (write_examples: every row passes through it)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.calls = 0
        real = pipeline.write_examples

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(pipeline, "write_examples", counted)


def forbid_tokenizing(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("tokenization ran although the cache should have answered")

    monkeypatch.setattr(pipeline, "write_examples", boom)
    for name in ("process_rows", "plan_conversation", "tokenize_plans", "tokenize_conversation"):
        monkeypatch.setattr(rows_mod, name, boom)
    monkeypatch.setattr(PieceEncoder, "encode", boom)


def same(a: PreparedData, b: PreparedData) -> None:
    for x, y in ((a.train, b.train), (a.eval, b.eval)):
        assert [(e.input_ids, e.labels, e.source) for e in x] == [
            (e.input_ids, e.labels, e.source) for e in y
        ]
    assert a.train_stats == b.train_stats and a.eval_stats == b.eval_stats


def snapshot(prepared: PreparedData) -> PreparedData:
    """The examples read out of the store into lists."""
    return replace(prepared, train=list(prepared.train), eval=list(prepared.eval))


def entries(data: DataArguments) -> list[Path]:
    root = cache_root(data.cache_dir)
    return sorted(p for p in root.iterdir() if not p.name.startswith(".")) if root.is_dir() else []


# ---------------------------------------------------------------- hit


def test_unchanged_rerun_loads_everything_and_tokenizes_nothing(
    setup: tuple[DataArguments, TokenizeSpec], monkeypatch: pytest.MonkeyPatch
) -> None:
    data, spec = setup
    first = prepare_data(data, spec, seed=0)
    assert first.cache is not None and first.cache.state == "stored"
    assert len(entries(data)) == 1 and len(first.train) == 12

    with monkeypatch.context() as m:
        forbid_tokenizing(m)
        second = prepare_data(data, spec, seed=0)
    assert second.cache is not None and second.cache.state == "hit" and second.cache.key == first.cache.key
    same(first, second)
    assert type(second.train[0].input_ids[0]) is int  # plain Python ints, as freshly tokenized
    assert second.train_stats.methods.most_common() == first.train_stats.methods.most_common()


def test_hit_keeps_the_held_out_split(setup: tuple[DataArguments, TokenizeSpec]) -> None:
    data, spec = setup
    data = replace(data, eval_split_ratio=0.25)
    first = prepare_data(data, spec, seed=3)
    second = prepare_data(data, spec, seed=3)
    assert second.cache is not None and second.cache.state == "hit" and len(second.eval) == 3
    same(first, second)


def test_split_rows_and_their_counts_come_back_from_the_cache(
    setup: tuple[DataArguments, TokenizeSpec], monkeypatch: pytest.MonkeyPatch
) -> None:
    data, spec = setup
    data, spec = replace(data, multi_turn="split"), replace(spec, multi_turn="split")
    first = prepare_data(data, spec, seed=0)
    stats = first.train_stats
    assert (stats.kept, stats.split_rows, stats.split_examples, len(first.train)) == (
        12,
        {"forced": 12},
        16,
        16,
    )
    assert first.train[0].source.endswith("train.jsonl:1#turn1")
    with monkeypatch.context() as m:
        forbid_tokenizing(m)
        second = prepare_data(data, spec, seed=0)
    assert second.cache is not None and second.cache.state == "hit"
    same(first, second)  # examples with their `#turnN` sources, and the split counts


def test_summary_reports_the_cache(setup: tuple[DataArguments, TokenizeSpec]) -> None:
    data, spec = setup

    class Cfg:
        pass

    cfg = Cfg()
    cfg.data = data  # type: ignore[attr-defined]
    stored = [line for line in data_summary_lines(cfg, prepare_data(data, spec, 0)) if "cache" in line]
    hit = [line for line in data_summary_lines(cfg, prepare_data(data, spec, 0)) if "cache" in line]
    assert stored[0].startswith(" cache        miss → stored (key ")
    assert hit[0].startswith(" cache        hit (key ") and "no tokenization" in hit[0]


# ---------------------------------------------------------------- miss on every input


def tokenizer_with_extra_token(tok: Any) -> Any:
    import copy

    other = copy.deepcopy(tok)
    other.add_tokens(["<extra_token>"])
    return other


def tokenizer_with_other_eos(tok: Any) -> Any:
    import copy

    other = copy.deepcopy(tok)
    other.eos_token = "<|endoftext|>"
    return other


CHANGES = {
    "data file content": lambda d, s, p: (d, s, write(p, rows()[:-1] + [rows(13)[-1]])),
    "tokenizer vocabulary": lambda d, s, p: (
        d,
        replace(s, tokenizer=tokenizer_with_extra_token(s.tokenizer)),
        p,
    ),
    "tokenizer special tokens": lambda d, s, p: (
        d,
        replace(s, tokenizer=tokenizer_with_other_eos(s.tokenizer)),
        p,
    ),
    "chat template": lambda d, s, p: (
        d,
        TokenizeSpec.build(s.tokenizer, DEFAULT_CHAT_TEMPLATE.replace("'\\n\\n'", "'\\n'"), s.max_length),
        p,
    ),
    "train_on": lambda d, s, p: (
        replace(d, train_on="last_assistant"),
        replace(s, options=MaskOptions(train_on="last_assistant")),
        p,
    ),
    "train_on_reasoning": lambda d, s, p: (
        replace(d, train_on_reasoning=False),
        replace(s, options=MaskOptions(train_on_reasoning=False)),
        p,
    ),
    "truncation": lambda d, s, p: (replace(d, truncation="right"), replace(s, truncation="right"), p),
    "multi_turn": lambda d, s, p: (replace(d, multi_turn="split"), replace(s, multi_turn="split"), p),
    # max_dropped_fraction: 1.0 — the rows 48 tokens drop are not what this test is about
    "max_length": lambda d, s, p: (
        replace(d, max_length=48, max_dropped_fraction=1.0),
        replace(s, max_length=48),
        p,
    ),
    "packing": lambda d, s, p: (replace(d, packing=True), s, p),
    "max_samples": lambda d, s, p: (replace(d, max_samples=5), s, p),
    "on_bad_rows": lambda d, s, p: (replace(d, on_bad_rows="skip"), s, p),
    "eval_split_ratio": lambda d, s, p: (replace(d, eval_split_ratio=0.25), s, p),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_any_change_of_an_input_misses(
    change: str, setup: tuple[DataArguments, TokenizeSpec], monkeypatch: pytest.MonkeyPatch
) -> None:
    data, spec = setup
    first = prepare_data(data, spec, seed=0)
    assert first.cache is not None and first.cache.state == "stored"

    new_data, new_spec, _ = CHANGES[change](data, spec, Path(data.train_data_path[0]))
    counting = Counting(monkeypatch)
    second = prepare_data(new_data, new_spec, seed=0)
    assert counting.calls == 1, "a changed input must be tokenized anew"
    assert second.cache is not None and second.cache.state == "stored"
    assert second.cache.key != first.cache.key
    assert len(entries(data)) == 2
    # ...and the fresh result is what an uncached run gives.
    same(second, prepare_data(replace(new_data, preprocessing_cache=False), new_spec, seed=0))


def test_the_seed_matters_only_with_a_held_out_split(setup: tuple[DataArguments, TokenizeSpec]) -> None:
    data, spec = setup
    prepare_data(data, spec, seed=0)
    assert (hit := prepare_data(data, spec, seed=1).cache) is not None and hit.state == "hit"
    split = replace(data, eval_split_ratio=0.25)
    a, b = prepare_data(split, spec, seed=0), prepare_data(split, spec, seed=1)
    assert a.cache is not None and b.cache is not None and a.cache.key != b.cache.key
    assert b.cache.state == "stored"


def test_a_changed_file_in_a_dataset_folder_misses(tmp_path: Path, tok: Any) -> None:
    folder = tmp_path / "ds"
    folder.mkdir()
    write(folder / "train.jsonl", rows())
    data = DataArguments(dataset_name=str(folder), cache_dir=str(tmp_path / "cache"))
    spec = TokenizeSpec.build(tok, DEFAULT_CHAT_TEMPLATE, data.max_length)
    assert (first := prepare_data(data, spec, 0).cache) is not None and first.state == "stored"
    assert (again := prepare_data(data, spec, 0).cache) is not None and again.state == "hit"
    write(folder / "train.jsonl", rows(13))
    assert (changed := prepare_data(data, spec, 0).cache) is not None and changed.state == "stored"


# ---------------------------------------------------------------- damaged entries are not trusted


def damage_truncate(entry: Path) -> None:
    path = entry / "train.ids"
    path.write_bytes(path.read_bytes()[:-40])


def damage_flip(entry: Path) -> None:
    # Same size, one label changed (a trained token becomes untrained or back): only the checksum can tell.
    path = entry / "train.trained"
    mask = bytearray(path.read_bytes())
    mask[-1] ^= 1
    path.write_bytes(bytes(mask))


def damage_no_meta(entry: Path) -> None:
    (entry / "meta.json").unlink()


def damage_bad_meta(entry: Path) -> None:
    (entry / "meta.json").write_text('{"format": 2, "key": ', encoding="utf-8")


def damage_missing_array(entry: Path) -> None:
    (entry / "train.offsets").unlink()


def damage_wrong_counts(entry: Path) -> None:
    doc = json.loads((entry / "meta.json").read_text(encoding="utf-8"))
    doc["splits"]["train"]["examples"] -= 1
    (entry / "meta.json").write_text(json.dumps(doc), encoding="utf-8")


def damage_source(entry: Path) -> None:
    path = entry / "train.src_blob"
    blob = path.read_bytes()
    path.write_bytes(b"X" + blob[1:])


def damage_sizes_and_digest(entry: Path) -> None:
    # A meta.json rewritten consistently (its own digest updated) but with wrong sizes: the store's shape check.
    doc = json.loads((entry / "meta.json").read_text(encoding="utf-8"))
    doc.pop("digest")
    doc["splits"]["train"]["examples"] += 1
    doc["digest"] = cache_mod._doc_digest(doc)
    (entry / "meta.json").write_text(json.dumps(doc), encoding="utf-8")


@pytest.mark.parametrize(
    "damage",
    [
        damage_truncate,
        damage_flip,
        damage_no_meta,
        damage_bad_meta,
        damage_missing_array,
        damage_wrong_counts,
        damage_source,
        damage_sizes_and_digest,
    ],
)
def test_a_damaged_entry_is_ignored_and_rebuilt(
    damage: Any, setup: tuple[DataArguments, TokenizeSpec], monkeypatch: pytest.MonkeyPatch
) -> None:
    data, spec = setup
    first = snapshot(prepare_data(data, spec, seed=0))  # its views map the entry's files, which get damaged
    [entry] = entries(data)
    damage(entry)

    counting = Counting(monkeypatch)
    rebuilt = prepare_data(data, spec, seed=0)
    assert counting.calls == 1 and rebuilt.cache is not None and rebuilt.cache.state == "stored"
    same(first, rebuilt)
    third = prepare_data(data, spec, seed=0)  # the rebuilt entry is whole again
    assert third.cache is not None and third.cache.state == "hit"
    same(first, third)


def test_a_run_killed_while_storing_leaves_no_entry(
    setup: tuple[DataArguments, TokenizeSpec], monkeypatch: pytest.MonkeyPatch
) -> None:
    data, spec = setup
    closed: list[Any] = []
    real_close = store_mod.StoreWriter.close

    def dies_after_the_train_split(writer: Any) -> Any:
        closed.append(real_close(writer))
        raise KeyboardInterrupt  # the run is killed with the store's files written but not committed

    with monkeypatch.context() as m:
        m.setattr(store_mod.StoreWriter, "close", dies_after_the_train_split)
        with pytest.raises(KeyboardInterrupt):
            prepare_data(data, spec, seed=0)
    root = cache_root(data.cache_dir)
    assert list(root.iterdir()) == []  # neither an entry nor the temporary folder
    assert (after := prepare_data(data, spec, seed=0).cache) is not None and after.state == "stored"


def test_a_leftover_temporary_folder_is_not_an_entry(setup: tuple[DataArguments, TokenizeSpec]) -> None:
    data, spec = setup
    first = prepare_data(data, spec, seed=0)
    [entry] = entries(data)
    entry.rename(entry.parent / f".{first.cache.key[:16]}-killed")  # type: ignore[union-attr]
    assert (again := prepare_data(data, spec, seed=0).cache) is not None and again.state == "stored"


# ---------------------------------------------------------------- off, and where it lives


def test_preprocessing_cache_false_bypasses_it(
    setup: tuple[DataArguments, TokenizeSpec], monkeypatch: pytest.MonkeyPatch
) -> None:
    data, spec = setup
    off = replace(data, preprocessing_cache=False)
    out = prepare_data(off, spec, seed=0)
    assert out.cache is not None and out.cache.state == "off" and entries(data) == []

    prepare_data(data, spec, seed=0)  # an entry exists now...
    counting = Counting(monkeypatch)
    again = prepare_data(off, spec, seed=0)  # ...and is still not used
    assert counting.calls == 1 and again.cache is not None and again.cache.state == "off"
    same(out, again)


def test_an_unwritable_cache_dir_costs_only_the_next_run(tmp_path: Path, tok: Any) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    path = write(tmp_path / "train.jsonl", rows())
    data = DataArguments(train_data_path=[str(path)], cache_dir=str(blocker / "cache"))
    out = prepare_data(data, TokenizeSpec.build(tok, DEFAULT_CHAT_TEMPLATE, data.max_length), seed=0)
    assert out.cache is not None and out.cache.state == "miss" and "cannot write" in out.cache.note
    assert len(out.train) == 12


def test_cache_dir_defaults_to_the_environment_then_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert cache_root(str(tmp_path / "given")) == tmp_path / "given"
    monkeypatch.setenv("SFTFORGE_CACHE", str(tmp_path / "env"))
    assert cache_root(None) == tmp_path / "env"
    monkeypatch.delenv("SFTFORGE_CACHE")
    assert cache_root(None) == Path("~/.cache/sftforge/tokenized").expanduser()
