"""Shared fixtures. The real datasets live in ../shared (beside the repo in CI); tests that need them skip
with that reason only when ../shared is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "fixtures" / "data"
SHARED_TEMPLATES = SHARED / "fixtures" / "chat_templates"


@pytest.fixture(autouse=True)
def _private_tokenized_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every test gets its own preprocessing cache (subprocesses inherit the variable), so no test reads another
    test's entry or the user's ~/.cache."""
    monkeypatch.setenv("SFTFORGE_CACHE", str(tmp_path_factory.mktemp("sftforge-cache")))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"../shared is absent: real fixture datasets not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def make_tiny_model(tmp_path_factory: pytest.TempPathFactory):
    """Factory: `make_tiny_model(arch="qwen2", **build_tiny_model_kwargs) -> Path`, built once per session for
    each distinct set of arguments. Treat the folder as read-only: other tests share it."""
    from sftforge.testing import build_tiny_model

    built: dict[tuple, Path] = {}

    def make(arch: str = "qwen2", **kwargs) -> Path:
        # Lists (e.g. texts) become tuples so the arguments can key the cache.
        key = (arch, *sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items()))
        if key not in built:
            out = tmp_path_factory.mktemp(f"tiny-{arch}")
            built[key] = build_tiny_model(out, arch=arch, **kwargs)
        return built[key]

    return make


@pytest.fixture(scope="session")
def tiny_model_dir(make_tiny_model) -> Path:
    """The default tiny model (qwen2, byte-level BPE of 1024 tokens, ChatML template), built once per session."""
    return make_tiny_model("qwen2")


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    """A one-row chat file, for tests that need any valid training data."""
    path = tmp_path / "train.jsonl"
    path.write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
    )
    return path
