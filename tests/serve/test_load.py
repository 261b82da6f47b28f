"""64 concurrent streaming clients on 127.0.0.1: bounded in time, no 5xx, every stream complete."""

from __future__ import annotations

import asyncio
import time

import openai
import pytest

from .conftest import serving

CLIENTS = 64
BOUND_S = 120  # measured 0.9 s on 2 cores (24 tokens each); the bound catches a stall, not a slowdown


@pytest.mark.slow
def test_64_concurrent_streams_all_complete(tiny_loaded):
    async def one(c: openai.AsyncOpenAI, k: int) -> tuple[str, str | None, int]:
        stream = await c.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": f"Say word {k} twice"}], max_tokens=24,
            temperature=0.7, seed=k, stream=True, stream_options={"include_usage": True},
        )  # fmt: skip
        text, reason, usage = "", None, -1
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                reason = chunk.choices[0].finish_reason or reason
            elif chunk.usage:
                usage = chunk.usage.completion_tokens
        return text, reason, usage

    async def all_clients(base_url: str) -> list:
        async with openai.AsyncOpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=BOUND_S) as c:
            return await asyncio.gather(*(one(c, k) for k in range(CLIENTS)), return_exceptions=True)

    with serving(tiny_loaded, max_batch_size=16) as server:
        started = time.perf_counter()
        results = asyncio.run(asyncio.wait_for(all_clients(server.base_url), BOUND_S))
        took = time.perf_counter() - started
        engine = server.engine
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors[:3]  # no 5xx, no 429, no dropped connection
    assert all(reason in ("stop", "length") for _, reason, _ in results)
    assert all(0 <= usage <= 24 for _, _, usage in results)  # the usage chunk came: the stream was complete
    assert sum(engine.finished.values()) == CLIENTS and set(engine.finished) <= {"stop", "length"}
    assert engine.largest_batch > 1  # requests shared forward passes
    print(f"{CLIENTS} streams in {took:.1f} s, {engine.batches} batches, largest {engine.largest_batch}")
