"""`datasets:` mixing: the sources' config checks, and the plan's shares, sizes and determinism."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sftforge.config import load_config
from sftforge.data.mixing import MixPlan, MixSource, mix_report, parse_mix_sources, plan_mixture
from sftforge.errors import ConfigError, DataError


def src(name: str, **kwargs: Any) -> MixSource:
    return MixSource(name=name, path=(f"{name}.jsonl",), **kwargs)


def tokens(n: int, mean: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 2 * mean, size=n)


def picked(plan: MixPlan, s: int) -> np.ndarray:
    return plan.index[plan.source == s]


def shares(plan: MixPlan, arrays: list[np.ndarray], by: str) -> np.ndarray:
    amount = [
        float(len(picked(plan, s))) if by == "examples" else float(arrays[s][picked(plan, s)].sum())
        for s in range(len(arrays))
    ]
    return np.array(amount) / sum(amount)


# ---------------------------------------------------------------- shares


@pytest.mark.parametrize("strategy", ["interleave_under", "interleave_over"])
@pytest.mark.parametrize("by", ["examples", "tokens"])
def test_weights_hold_within_one_percent(strategy: str, by: str) -> None:
    # Source sizes and answer lengths differ on purpose: the shares must come from the weights only.
    arrays = [tokens(10_000, 50, 1), tokens(6_000, 400, 2), tokens(3_000, 150, 3)]
    weights = [0.5, 0.3, 0.2]
    sources = [src(f"s{i}", weight=w) for i, w in enumerate(weights)]
    plan = plan_mixture(arrays, sources, strategy, by, seed=0)
    assert len(plan) >= 10_000
    assert np.allclose(shares(plan, arrays, by), weights, atol=0.01)
    figures = [f.share for f in plan.figures]
    if by == "tokens":
        assert np.allclose(figures, weights, atol=0.01)


def test_interleave_under_never_repeats_and_one_source_is_used_up() -> None:
    arrays = [tokens(1_000, 10, 1), tokens(5_000, 10, 2)]
    plan = plan_mixture(arrays, [src("a", weight=1), src("b", weight=1)], "interleave_under", "examples", 0)
    for s in range(2):
        assert len(np.unique(picked(plan, s))) == len(picked(plan, s))
    assert [f.examples for f in plan.figures] == [1_000, 1_000]
    assert [f.repeats for f in plan.figures] == [0, 0]


def test_interleave_over_covers_every_example() -> None:
    arrays = [tokens(300, 10, 1), tokens(5_000, 10, 2), tokens(1_234, 90, 3)]
    sources = [src("a", weight=2), src("b", weight=1), src("c", weight=1)]
    for by in ("examples", "tokens"):
        plan = plan_mixture(arrays, sources, "interleave_over", by, seed=3)
        for s, arr in enumerate(arrays):
            assert set(picked(plan, s).tolist()) == set(range(len(arr)))
    assert plan.figures[0].repeats > 0  # the small, heavy source is upsampled


def test_no_weights_interleave_equally_and_auto_means_concat() -> None:
    arrays = [tokens(100, 5, 1), tokens(300, 5, 2)]
    plan = plan_mixture(arrays, [src("a"), src("b")], "auto", "examples", 0)
    assert plan.strategy == "concat"
    assert plan.source.tolist() == [0] * 100 + [1] * 300
    assert plan.index.tolist() == list(range(100)) + list(range(300))
    weighted = plan_mixture(arrays, [src("a", weight=1), src("b", weight=3)], "auto", "examples", 0)
    assert weighted.strategy == "interleave_under" and [f.examples for f in weighted.figures] == [100, 300]


def test_the_order_spreads_the_sources_evenly() -> None:
    arrays = [tokens(3_000, 5, 1), tokens(1_000, 5, 2)]
    plan = plan_mixture(arrays, [src("a", weight=3), src("b", weight=1)], "interleave_under", "examples", 0)
    for prefix in (40, 400, 2_000):
        assert abs(np.mean(plan.source[:prefix] == 1) - 0.25) <= 1 / prefix + 1e-9


# ---------------------------------------------------------------- determinism


def test_the_same_seed_gives_the_same_plan_and_another_seed_another() -> None:
    arrays = [tokens(2_000, 30, 1), tokens(700, 90, 2)]
    sources = [src("a", weight=0.7, max_samples=1_500), src("b", weight=0.3, epochs=1.5)]
    one, two = (plan_mixture(arrays, sources, "interleave_over", "tokens", seed=42) for _ in range(2))
    assert np.array_equal(one.source, two.source) and np.array_equal(one.index, two.index)
    other = plan_mixture(arrays, sources, "interleave_over", "tokens", seed=43)
    assert not np.array_equal(one.index, other.index)


# ---------------------------------------------------------------- sizing one source


def test_epochs_two_and_a_half() -> None:
    plan = plan_mixture([tokens(1_000, 5, 1)], [src("a", epochs=2.5)], "concat", "examples", 0)
    counts = np.bincount(plan.index, minlength=1_000)
    assert len(plan) == 2_500 and counts.min() == 2 and counts.max() == 3 and (counts == 3).sum() == 500
    assert plan.figures[0].distinct == 1_000 and plan.figures[0].repeats == 1_500


def test_max_samples_down_and_up() -> None:
    arrays = [tokens(1_000, 5, 1)]
    down = plan_mixture(arrays, [src("a", max_samples=100)], "concat", "examples", 0)
    assert len(down) == 100 and len(np.unique(down.index)) == 100
    assert not np.array_equal(np.sort(down.index), np.arange(100))  # a random subset, not the first rows
    up = plan_mixture(arrays, [src("a", max_samples=2_300)], "concat", "examples", 0)
    counts = np.bincount(up.index, minlength=1_000)
    assert len(up) == 2_300 and counts.min() == 2 and (counts == 3).sum() == 300


@pytest.mark.parametrize("budget", [5_000, 123_456])
def test_max_tokens_is_a_trained_token_budget(budget: int) -> None:
    arr = tokens(1_000, 50, 1)  # ~50k trained tokens: the second budget repeats the source
    plan = plan_mixture([arr], [src("a", max_tokens=budget)], "concat", "examples", 0)
    taken = arr[plan.index]
    assert taken.sum() >= budget and taken[:-1].sum() < budget  # stops at the example that reaches it
    assert plan.figures[0].trained_tokens == taken.sum()
    assert (plan.figures[0].repeats > 0) == (budget > arr.sum())


def test_an_empty_source_is_an_error_naming_it() -> None:
    with pytest.raises(DataError, match=r"datasets\[1\] \(b\): no usable examples"):
        plan_mixture(
            [tokens(10, 5, 1), np.array([], dtype=int)], [src("a"), src("b")], "concat", "examples", 0
        )


def test_a_source_sized_to_nothing_is_an_error() -> None:
    with pytest.raises(DataError, match=r"datasets\[0\]\.epochs: 0\.01 of 10 examples leaves none"):
        plan_mixture([tokens(10, 5, 1)], [src("a", epochs=0.01)], "concat", "examples", 0)


def test_report_lines() -> None:
    arrays = [np.full(100, 10), np.full(50, 20)]
    plan = plan_mixture(arrays, [src("a", weight=1), src("b", weight=3)], "interleave_over", "tokens", 0)
    lines = mix_report(plan)
    assert lines[0] == "data mix: interleave_over by tokens — 250 examples, 4,000 trained tokens"
    assert lines[1] == "  a: 100 of 100 examples (100 distinct), 1,000 trained tokens (25.0%)"
    assert lines[2] == "  b: 150 of 50 examples (50 distinct, 100 repeats), 3,000 trained tokens (75.0%)"


# ---------------------------------------------------------------- config


@pytest.fixture
def files(tmp_path: Path) -> list[str]:
    out = []
    for name in ("a", "b", "c"):
        path = tmp_path / f"{name}.jsonl"
        path.write_text(
            '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
        )
        out.append(str(path))
    return out


def problems_of(raw: Any, probs: Any = None) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_mix_sources(raw, probs)
    return e.value.problems


@pytest.mark.parametrize(
    ("edit", "probs", "message"),
    [
        ({2: {"weight": -1}}, None, "datasets[2].weight: -1 must be a number above 0"),
        (
            {1: {"epochs": 2, "max_samples": 10}},
            None,
            "datasets[1]: max_samples and epochs both size the source",
        ),
        ({0: {"wieght": 1}}, None, "datasets[0].wieght: unknown key. Did you mean 'weight'?"),
        ({1: {"max_samples": 2.5}}, None, "datasets[1].max_samples: 2.5 must be a whole number above 0"),
        ({0: {"weight": 1}}, None, "datasets[1].weight: some sources have a weight and this one has none"),
        ({}, [0.5, 0.5], "interleave_probs: 2 value(s) for 3 source(s) in datasets"),
        ({}, "0.5,x,1", "interleave_probs: item 1 ('x') is not a number"),
        (
            {0: {"weight": 1}, 1: {"weight": 1}, 2: {"weight": 1}},
            "1,1,1",
            "interleave_probs: the sources have",
        ),
        ({1: {"path": "nowhere.jsonl"}}, None, "datasets[1].path: 'nowhere.jsonl' does not exist"),
        ({1: {"dataset_name": "org/ds"}}, None, "datasets[1]: give exactly one of path"),
        (
            {2: {"columns": {"promt": "q", "response": "a"}}},
            None,
            "datasets[2].columns.promt: unknown column name",
        ),
    ],
)
def test_bad_sources_name_the_exact_key(files: list[str], edit: dict, probs: Any, message: str) -> None:
    raw = [{"path": p, **edit.get(i, {})} for i, p in enumerate(files)]
    found = problems_of(raw, probs)
    assert any(p.startswith(message) for p in found), found


def test_sources_parse_with_aliases_and_probs(files: list[str]) -> None:
    raw = [
        {"path": files[0], "epochs": 2, "name": "chat"},
        {"file_name": [files[1], files[2]], "num_samples": 5},
        {
            "dataset_name": "org/ds",
            "subset": "en",
            "split": "test",
            "max_tokens": 1000,
            "formatting": "sharegpt",
        },
    ]
    sources = parse_mix_sources(raw, "0.5, 0.3,0.2", columns={"messages": "chat"})
    assert [s.name for s in sources] == ["chat", f"{files[1]} (+1 more)", "org/ds/en:test"]
    assert [s.weight for s in sources] == [0.5, 0.3, 0.2]
    assert sources[1].path == (files[1], files[2]) and sources[1].max_samples == 5
    assert sources[2].dataset_config == "en" and sources[2].max_tokens == 1000
    assert sources[0].columns == {"messages": "chat"}  # the top-level mapping, for sources without their own


def recipe(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(f"model_name_or_path: m\noutput_dir: {tmp_path / 'out'}\n" + body)
    return path


def test_plain_paths_are_sources(tmp_path: Path, files: list[str]) -> None:
    cfg = load_config(recipe(tmp_path, f"datasets: [{files[0]}, {files[1]}]\n"))
    assert cfg.data.datasets == files[:2]
    assert [s.path for s in parse_mix_sources(cfg.data.datasets)] == [(files[0],), (files[1],)]
    assert "data mix: 2 sources, concat by examples" in cfg.notes


def test_load_config_accepts_datasets(tmp_path: Path, files: list[str]) -> None:
    body = (
        f"datasets:\n  - path: {files[0]}\n  - path: {files[1]}\ninterleave_probs: 0.7,0.3\nmix_by: tokens\n"
    )
    cfg = load_config(recipe(tmp_path, body))
    assert cfg.data.interleave_probs == [0.7, 0.3] and cfg.data.mix_by == "tokens"
    assert "data mix: 2 sources, interleave_under by tokens" in cfg.notes


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("datasets:\n  - path: {a}\ntrain_data_path: {a}\n", "datasets: replaces train_data_path"),
        (
            "datasets:\n  - path: {a}\n    weight: 1\nmix_strategy: concat\n",
            "mix_strategy: concat takes every",
        ),
        ("train_data_path: {a}\ninterleave_probs: [0.5]\n", "interleave_probs: weighs the sources"),
        ("train_data_path: {a}\nmix_strategy: interleave_over\n", "mix_strategy: applies to the sources"),
        ("datasets: []\n", "datasets: expected a non-empty list of sources"),
        ("datasets:\n  - path: {a}\nmix_by: bytes\n", "mix_by: 'bytes' is not one of examples, tokens"),
        ("datasets:\n  - path: {a}\nstreaming: true\nmax_steps: 5\n", "datasets: a mix of several sources"),
    ],
)
def test_load_config_reports_mixing_mistakes(
    tmp_path: Path, files: list[str], body: str, message: str
) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(recipe(tmp_path, body.format(a=files[0])))
    assert any(p.startswith(message) for p in e.value.problems), e.value.problems


def test_a_sized_source_drawn_in_part_repeats_nothing_it_need_not() -> None:
    # b's pool holds 1,500 items (epochs 1.5) but the mix takes 500 of them: those are 500 distinct examples.
    arrays = [tokens(500, 5, 1), tokens(1_000, 5, 2)]
    sources = [src("a", weight=1), src("b", weight=1, epochs=1.5)]
    plan = plan_mixture(arrays, sources, "interleave_under", "examples", 0)
    assert plan.figures[1].examples == 500 and plan.figures[1].repeats == 0


def test_the_written_config_loads_again(tmp_path: Path, files: list[str]) -> None:
    from sftforge.config import dump_config

    body = (
        f"datasets:\n  - path: {files[0]}\n    epochs: 2\n  - path: {files[1]}\ninterleave_probs: 0.7,0.3\n"
    )
    cfg = load_config(recipe(tmp_path, body))
    again = load_config(dump_config(cfg, tmp_path / "resolved.yaml"))
    assert again.data.datasets == cfg.data.datasets and again.data.interleave_probs == [0.7, 0.3]
