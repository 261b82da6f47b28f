"""`sftforge serve` throughput and latency: one stream, then N concurrent streams, on the real server.

    python benchmarks/serve_bench.py MODEL_DIR [--concurrency 16] [--max_tokens 128] [--rounds 3]

Starts `sftforge serve MODEL_DIR` on a free 127.0.0.1 port, sends the demo's held-out prompts through the `openai`
client with `ignore_eos` (every answer is exactly max_tokens long, so runs compare), and reports tokens/s of one
stream, aggregate tokens/s of N concurrent streams, and time to first token (p50/p99). Appends a table to
benchmarks/SERVE_RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai

REPO = Path(__file__).resolve().parents[1]
PROMPTS = REPO / "examples" / "demo" / "test.jsonl"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prompts() -> list[list[dict]]:
    rows = [json.loads(line) for line in PROMPTS.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [row["messages"][:-1] for row in rows]


async def one_stream(
    client: openai.AsyncOpenAI, messages: list[dict], max_tokens: int
) -> tuple[float, float, int]:
    """(time to first token, total time, completion tokens) of one streamed request."""
    started = time.perf_counter()
    first = None
    tokens = 0
    stream = await client.chat.completions.create(
        model="m", messages=messages, max_tokens=max_tokens, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    )  # fmt: skip
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and first is None:
            first = time.perf_counter() - started
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    total = time.perf_counter() - started
    return (first if first is not None else total), total, tokens


async def measure(base_url: str, concurrency: int, rounds: int, max_tokens: int) -> dict:
    pool = prompts()
    async with openai.AsyncOpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=600) as client:
        await one_stream(client, pool[0], 8)  # warm-up
        singles = [await one_stream(client, pool[k], max_tokens) for k in range(rounds)]
        ttft, walls, total_tokens = [], 0.0, 0
        for r in range(rounds):
            started = time.perf_counter()
            batch = [pool[(r * concurrency + k) % len(pool)] for k in range(concurrency)]
            results = await asyncio.gather(*(one_stream(client, m, max_tokens) for m in batch))
            walls += time.perf_counter() - started
            ttft += [first for first, _, _ in results]
            total_tokens += sum(tokens for _, _, tokens in results)
    return {
        "single_tokens_per_s": statistics.median(t / total for _, total, t in singles),
        "single_ttft_ms": statistics.median(first for first, _, _ in singles) * 1000,
        "concurrent_tokens_per_s": total_tokens / walls,
        "ttft_p50_ms": _percentile(ttft, 50) * 1000,
        "ttft_p99_ms": _percentile(ttft, 99) * 1000,
        "samples": len(ttft),
    }


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max_tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max_batch_size", type=int, default=16)
    args = parser.parse_args()
    port = free_port()
    cmd = [sys.executable, "-m", "sftforge", "serve", args.model, "--port", str(port),
           "--max_batch_size", str(args.max_batch_size)]  # fmt: skip
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                if server.poll() is not None or time.time() > deadline:
                    raise SystemExit("the server did not start") from None
                time.sleep(0.3)
        result = asyncio.run(
            measure(f"http://127.0.0.1:{port}/v1", args.concurrency, args.rounds, args.max_tokens)
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
    lines = [
        f"## {time.strftime('%Y-%m-%d')} · {args.model} · {os.cpu_count()} CPU cores ({platform.machine()}), "
        f"max_tokens {args.max_tokens} (ignore_eos), max_batch_size {args.max_batch_size}",
        "",
        "| measure | value |",
        "|---|---|",
        f"| one stream: tokens/s | {result['single_tokens_per_s']:.1f} |",
        f"| one stream: time to first token | {result['single_ttft_ms']:.0f} ms |",
        f"| {args.concurrency} concurrent streams: tokens/s (all streams) | {result['concurrent_tokens_per_s']:.1f} |",
        f"| {args.concurrency} concurrent streams: time to first token p50 / p99 | "
        f"{result['ttft_p50_ms']:.0f} / {result['ttft_p99_ms']:.0f} ms ({result['samples']} requests) |",
        "",
    ]
    print("\n".join(lines))
    with (REPO / "benchmarks" / "SERVE_RESULTS.md").open("a", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
