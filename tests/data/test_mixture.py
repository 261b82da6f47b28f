"""`datasets:` through the real data stage: each source in its own cached store, mixed by index, reported."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from sftforge.cli import main
from sftforge.config import load_config
from sftforge.train.run import prepare_tokenized_data
from sftforge.train.summary import data_summary_lines


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, str]:
    chat = [
        {
            "messages": [
                {"role": "user", "content": f"chat {i}?"},
                {"role": "assistant", "content": f"yes {i}"},
            ]
        }
        for i in range(40)
    ]
    # Another file layout, read through `columns`
    qa = [{"question": f"q{i}: what is {i}+1?", "answer": f"{i + 1}"} for i in range(120)]
    return {"chat": write_jsonl(tmp_path / "chat.jsonl", chat), "qa": write_jsonl(tmp_path / "qa.jsonl", qa)}


def config(tmp_path: Path, model: Path, body: str) -> Any:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"model_name_or_path: {model}\noutput_dir: {tmp_path / 'out'}\ncache_dir: {tmp_path / 'cache'}\n"
        f"max_length: 256\n{body}",
        encoding="utf-8",
    )
    return load_config(recipe)


def mix_body(s: dict[str, str], extra: str = "") -> str:
    return (
        f"datasets:\n  - path: {s['chat']}\n    weight: 0.75\n"
        f"  - path: {s['qa']}\n    weight: 0.25\n    columns: {{prompt: question, response: answer}}\n{extra}"
    )


def test_a_weighted_mix_trains_the_planned_shares_from_each_sources_store(
    tmp_path: Path, tiny_model_dir: Path, sources: dict[str, str]
) -> None:
    cfg = config(tmp_path, tiny_model_dir, mix_body(sources, "mix_strategy: interleave_over\n"))
    _, data = prepare_tokenized_data(cfg)
    counts = Counter(Path(e.source.split(":")[0]).stem for e in data.train)
    # interleave_over: every example of each source at least once, 3 chat for every qa example
    assert counts["qa"] == 120 and counts["chat"] == 360
    assert len({e.source for e in data.train if "chat" in e.source}) == 40
    # An example of the mix is the source's own example, token for token (read from that source's store)
    (tmp_path / "one").mkdir()
    single = config(tmp_path / "one", tiny_model_dir, f"train_data_path: {sources['chat']}\n")
    _, alone = prepare_tokenized_data(single)
    by_source = {e.source: (e.input_ids, e.labels) for e in alone.train}
    for e in data.train:
        if e.source in by_source:
            assert (e.input_ids, e.labels) == by_source[e.source]
    # The column-mapped rows became Alpaca examples with trained answers
    qa = next(e for e in data.train if "qa.jsonl" in e.source)
    assert any(label != -100 for label in qa.labels)
    lines = "\n".join(data_summary_lines(cfg, data))
    assert "data mix: interleave_over by examples — 480 examples" in lines
    assert f"{sources['chat']}: 360 of 40 examples (40 distinct, 320 repeats)" in lines
    assert data.train_stats.trained_tokens == int(data.train.trained_counts.sum())


def test_each_source_has_its_own_cache_entry_and_a_held_out_split_never_overlaps(
    tmp_path: Path, tiny_model_dir: Path, sources: dict[str, str]
) -> None:
    cfg = config(tmp_path, tiny_model_dir, mix_body(sources, "eval_split_ratio: 0.1\n"))
    _, first = prepare_tokenized_data(cfg)
    assert first.cache is not None and first.cache.state == "stored"
    assert len([p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]) == 2
    trained = {e.source for e in first.train}
    held = {e.source for e in first.eval}
    assert held and not trained & held  # held out before the mix: no example in both
    _, again = prepare_tokenized_data(
        config(tmp_path, tiny_model_dir, mix_body(sources, "eval_split_ratio: 0.1\n"))
    )
    assert again.cache is not None and again.cache.state == "hit"
    assert [e.source for e in again.train] == [e.source for e in first.train]


def test_sftforge_train_with_datasets_prints_the_mix(
    tmp_path: Path, tiny_model_dir: Path, sources: dict[str, str], capsys: pytest.CaptureFixture
) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"model_name_or_path: {tiny_model_dir}\noutput_dir: {tmp_path / 'out'}\ncache_dir: {tmp_path / 'c'}\n"
        f"max_length: 128\nmax_steps: 2\nper_device_train_batch_size: 4\nsave_strategy: 'no'\nreport_to: none\n"
        + mix_body(sources, "mix_by: tokens\n").replace("0.75", "0.5").replace("0.25", "0.5"),
        encoding="utf-8",
    )
    assert main(["train", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "data mix: interleave_under by tokens" in out
    shares = [
        float(line.rsplit("(", 1)[1].rstrip("%)")) for line in out.splitlines() if "trained tokens (" in line
    ]
    assert len(shares) == 2 and all(abs(s - 50.0) < 2.0 for s in shares)
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["global_step"] == 2
    card = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")
    assert "data mix: interleave_under by tokens" in card and sources["qa"] in card
