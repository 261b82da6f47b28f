"""Model and dataset names: a local-looking path that is missing says so (with the close names beside it) instead
of a Hub error; a Hub id offline or without network fails at once, with what to do."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sftforge.config import load_config, sources
from sftforge.config.sources import check_source, looks_local, missing_local_problem
from sftforge.errors import ConfigError


@pytest.fixture(autouse=True)
def _fresh_probe_cache():
    sources._check_hub.cache_clear()  # the Hub verdict is cached per process; each test sets its own world
    yield
    sources._check_hub.cache_clear()


@pytest.fixture
def empty_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    return cache


@pytest.mark.parametrize(
    ("name", "local"),
    [("./models/x", True), ("../x", True), ("/abs/x", True), ("~/x", True), ("a/b/c", True),
     ("Qwen/Qwen2.5-0.5B", False), ("gpt2", False), ("org/na--me", True)],
)  # fmt: skip
def test_looks_local(name, local):
    assert looks_local(name) is local


def test_org_slash_name_is_local_when_its_first_part_is_a_folder_here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert not looks_local("models/qwen")
    (tmp_path / "models").mkdir()
    assert looks_local("models/qwen")


def test_missing_folder_suggests_the_close_name(tmp_path, monkeypatch):
    (tmp_path / "models" / "qwen2.5-0.5b").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    problem = missing_local_problem("./models/qwen2.5-0.5", "model_name_or_path")
    assert problem.startswith("model_name_or_path: cannot load './models/qwen2.5-0.5': folder not found")
    assert problem.endswith(f"Did you mean {str(Path('models/qwen2.5-0.5b'))!r}?")
    typo_above = missing_local_problem("./modles/qwen2.5-0.5b", "model_name_or_path")
    assert typo_above.endswith(f"Did you mean {str(Path('models/qwen2.5-0.5b'))!r}?")
    nothing_close = missing_local_problem("./models/llama", "model_name_or_path")
    assert nothing_close.endswith("'models' has no 'llama'; it holds: qwen2.5-0.5b.")
    assert missing_local_problem("./models", "model_name_or_path") is None
    assert missing_local_problem("org/name", "model_name_or_path") is None  # a hub id: the Hub decides


def test_a_run_checks_every_name_before_any_work(tmp_path, data_file):
    from sftforge.config.sources import check_run_sources

    cfg = load_config(
        None, ["--model_name_or_path", str(tmp_path / "nope"), "--train_data_path", str(data_file)]
    )
    with pytest.raises(
        ConfigError
    ) as info:  # the recipe loads (the folder may be built later); the run stops
        check_run_sources(cfg.model, cfg.data)
    assert f"model_name_or_path: cannot load {str(tmp_path / 'nope')!r}: folder not found" in str(info.value)
    assert "Repo id" not in str(info.value)
    cfg = load_config(None, ["--model_name_or_path", str(tmp_path), "--dataset_name", "./no-data"])
    with pytest.raises(ConfigError, match="dataset_name: cannot load './no-data': file or folder not found"):
        check_run_sources(cfg.model, cfg.data)


def test_hub_id_offline_fails_at_once_with_the_way_out(empty_hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        check_source("fake-org/fake-model", "model_name_or_path")
    assert time.perf_counter() - started < 1.0
    text = str(info.value)
    assert "the Hugging Face Hub is off (HF_HUB_OFFLINE=1)" in text and str(empty_hub_cache) in text
    assert (
        "`hf download fake-org/fake-model --local-dir DIR`" in text and "set model_name_or_path: DIR" in text
    )


def test_hub_id_in_the_local_cache_passes_offline(empty_hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (empty_hub_cache / "models--org--cached" / "snapshots" / "abc123").mkdir(parents=True)
    check_source("org/cached", "model_name_or_path")  # transformers reads it from the cache


def test_unreachable_hub_fails_at_once(empty_hub_cache, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv(
        "HF_ENDPOINT", "http://127.0.0.1:9"
    )  # the discard port: connection refused, no network
    started = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        check_source("fake-org/fake-model", "tokenizer_name_or_path")
    assert time.perf_counter() - started < 5.0
    text = str(info.value)
    assert "the Hugging Face Hub (http://127.0.0.1:9) cannot be reached" in text
    assert "set tokenizer_name_or_path: DIR" in text and "HF_HUB_OFFLINE=1" in text


def test_dataset_name_offline_fails_at_once(empty_hub_cache, monkeypatch):
    from sftforge.data.hub import iter_dataset_rows

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="--repo-type dataset --local-dir DIR") as info:
        next(iter_dataset_rows("fake-org/fake-data", None, "train"))
    assert time.perf_counter() - started < 1.0
    assert "dataset_name: 'fake-org/fake-data' is not a local folder" in str(info.value)
    # a datasets-cache folder of that name counts as cached: `datasets` loads it offline itself
    (Path(empty_hub_cache).parent / "datasets-cache" / "fake-org___fake-data").mkdir(parents=True)
    check_source("fake-org/fake-data", "dataset_name", repo_type="dataset")
