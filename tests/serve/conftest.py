"""Helpers for the server tests: a real uvicorn server on 127.0.0.1 in a thread, a model with varied greedy answers,
and a model wrapper that writes a scripted answer (for tool calls and stop strings)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from sftforge.serve.api import create_app
from sftforge.serve.engine import Engine
from sftforge.serve.loading import LoadedModel, load_for_inference


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    url: str
    engine: Engine

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"


@contextmanager
def serving(loaded: LoadedModel, api_key: str | None = None, **engine_kwargs: Any) -> Iterator[Server]:
    import uvicorn

    engine = Engine(loaded, **engine_kwargs)
    app = create_app(engine, "tiny", api_key=api_key, default_max_tokens=32)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield Server(f"http://127.0.0.1:{port}", engine)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        engine.close()


def varied(loaded: LoadedModel, seed: int = 0) -> LoadedModel:
    """The tiny model with larger random weights: an untrained tiny model answers every prompt with the same
    token, which would hide rows mixed up in a batch."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in loaded.model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    return loaded


@pytest.fixture(scope="module")
def tiny_loaded(tiny_model_dir: Path) -> LoadedModel:
    return varied(load_for_inference(tiny_model_dir, device="cpu"))


class Scripted(torch.nn.Module):
    """Wraps a causal LM; from the first generated token on, it forces the ids of `script` (then an end-of-turn
    id): a stand-in for a trained model whose answer the test knows."""

    def __init__(self, lm: Any, script: list[int], end: int, delay: float = 0.0):
        super().__init__()
        self.lm, self.script, self.end, self.delay = lm, script, end, delay
        self.config, self.generation_config = lm.config, lm.generation_config
        self.prompt_width = 0

    @property
    def device(self) -> torch.device:
        return self.lm.device

    def forward(self, input_ids, attention_mask, position_ids, use_cache, cache=None, logits_to_keep=0):  # noqa: ANN001
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      use_cache=use_cache, cache=cache, logits_to_keep=1)  # fmt: skip
        time.sleep(self.delay)  # a slow model: keeps the worker busy for as long as a test needs
        if cache is None:
            self.prompt_width = attention_mask.shape[1]
        step = attention_mask.shape[1] - self.prompt_width
        token = self.script[step] if step < len(self.script) else self.end
        forced = torch.full_like(out.logits[:, -1:], -1e9)
        forced[..., token] = 0.0
        out.logits = forced
        return out


def scripted(loaded: LoadedModel, answer: str, delay: float = 0.0) -> LoadedModel:
    tok = loaded.tokenizer
    script = tok(answer, add_special_tokens=False)["input_ids"]
    model = Scripted(loaded.model, script, loaded.stop_ids[0] if loaded.stop_ids else tok.eos_token_id, delay)
    return LoadedModel(tok, model, loaded.path, loaded.kind, loaded.base, loaded.stop_ids)
