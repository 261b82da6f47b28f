"""The generation engine behind `sftforge serve`: a bounded queue and one worker thread that batches requests.

The worker takes up to `max_batch_size` waiting requests, runs their prompts through the model in one left-padded
forward pass, then decodes them together, one forward pass per token for the whole batch (the Hugging Face model
with its KV cache). Every request keeps its own sampling settings and seed. A request leaves the batch as soon as
it ends (end-of-turn token, stop string, token limit, or its client went away) and its rows are dropped from the
cache. Requests that arrive meanwhile wait for the next batch (static batching; for continuous batching on a GPU
use `--engine vllm`). Results go back through each request's `emit` callback, from the worker thread.
"""

from __future__ import annotations

import inspect
import threading
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from sftforge.serve.loading import LoadedModel
from sftforge.serve.sampling import SamplingParams, next_tokens, seeded_generator
from sftforge.serve.text_stream import TextStream


class QueueFull(RuntimeError):
    """More requests wait than the queue holds."""


@dataclass
class Event:
    """What the worker reports: text deltas while generating, then one final event (`finish_reason` set)."""

    delta: str = ""
    finish_reason: str | None = None  # "stop" | "length" | "cancelled" | "error"
    text: str = ""  # the whole answer (final event only)
    completion_tokens: int = 0
    error: str | None = None


@dataclass
class Request:
    prompt_ids: list[int]
    params: SamplingParams
    emit: Callable[[Event], None]
    hold: list[str] = field(default_factory=list)  # markers after which text is kept back (tool calls)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


class Engine:
    def __init__(self, loaded: LoadedModel, max_batch_size: int = 16, max_queue: int = 256):
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.stop_ids = set(loaded.stop_ids)
        accepted = inspect.signature(self.model.forward).parameters
        self.cache_arg = "cache" if "cache" in accepted else "past_key_values"  # renamed in transformers 5.x
        self.last_logits_only = {"logits_to_keep": 1} if "logits_to_keep" in accepted else {}
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.waiting: deque[Request] = deque()
        self.condition = threading.Condition()
        self.running = 0  # requests in the batch being generated
        self.batches = 0  # batches run so far (tests read it to see requests share forward passes)
        self.largest_batch = 0
        self.finished: Counter[str] = (
            Counter()
        )  # requests ended, by reason ("stop", "length", "cancelled", …)
        self.generated_tokens = 0
        self.closed = False
        self.worker = threading.Thread(target=self._work, name="sftforge-engine", daemon=True)
        self.worker.start()

    def submit(self, request: Request) -> None:
        with self.condition:
            if len(self.waiting) >= self.max_queue:
                raise QueueFull(
                    f"{len(self.waiting)} requests are waiting (the queue holds {self.max_queue})"
                )
            self.waiting.append(request)
            self.condition.notify()

    def close(self) -> None:
        with self.condition:
            self.closed = True
            self.condition.notify()
        self.worker.join(timeout=10)

    @property
    def queued(self) -> int:
        return len(self.waiting)

    def _work(self) -> None:
        while True:
            with self.condition:
                while not self.waiting and not self.closed:
                    self.condition.wait()
                if self.closed:
                    return
                batch = []
                while self.waiting and len(batch) < self.max_batch_size:
                    request = self.waiting.popleft()
                    if request.cancelled.is_set():
                        self.finished["cancelled"] += 1
                        request.emit(Event(finish_reason="cancelled"))
                    else:
                        batch.append(request)
                self.running = len(batch)
            if not batch:
                continue
            self.batches += 1
            self.largest_batch = max(self.largest_batch, len(batch))
            try:
                self._generate(batch)
            except Exception as e:  # a bug or an out-of-memory: fail these requests, keep serving
                for request in batch:
                    self.finished["error"] += 1
                    request.emit(Event(finish_reason="error", error=f"{type(e).__name__}: {e}"))
            finally:
                self.running = 0

    @torch.inference_mode()
    def _generate(self, batch: list[Request]) -> None:
        device = self.model.device
        ids, mask = _left_padded([r.prompt_ids for r in batch], self.tokenizer.pad_token_id, device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **self.last_logits_only,
        )
        cache, logits = self._cache(out), out.logits[:, -1]
        last_position = positions[:, -1:]
        streams = [TextStream(self.tokenizer, r.params.stop, r.hold) for r in batch]
        generators = [seeded_generator(r.params.seed, device) for r in batch]
        counts = [0] * len(batch)
        active = list(range(len(batch)))  # batch indices still generating, in cache row order
        while active:
            chosen = next_tokens(logits, [batch[i].params for i in active], [generators[i] for i in active])
            keep = []
            for row, (i, token) in enumerate(zip(active, chosen.tolist(), strict=True)):
                reason = self._step(batch[i], streams[i], token, counts, i)
                if reason is None:
                    keep.append(row)
                else:
                    self._finish(batch[i], streams[i], counts[i], reason)
            if not keep:
                return
            if len(keep) < len(active):  # drop finished rows from the cache and the batch
                rows = torch.tensor(keep, device=device)
                cache.batch_select_indices(rows)
                chosen, mask, last_position = chosen[rows], mask[rows], last_position[rows]
                active = [active[row] for row in keep]
            mask = torch.cat([mask, mask.new_ones(len(active), 1)], dim=-1)
            last_position = last_position + 1
            out = self.model(
                input_ids=chosen[:, None],
                attention_mask=mask,
                position_ids=last_position,
                use_cache=True,
                **{self.cache_arg: cache},
            )
            cache, logits = self._cache(out), out.logits[:, -1]

    def _cache(self, out: Any) -> Any:
        return getattr(out, "cache", None) or out.past_key_values

    def _step(
        self, request: Request, stream: TextStream, token: int, counts: list[int], i: int
    ) -> str | None:
        """Take one token for a request; the reason it ends, or None to go on."""
        if request.cancelled.is_set():
            return "cancelled"
        if token in self.stop_ids and not request.params.ignore_eos:
            return "stop"
        counts[i] += 1
        delta = stream.add(token)
        if delta:
            request.emit(Event(delta=delta))
        if stream.stopped:
            return "stop"
        if counts[i] >= request.params.max_tokens:
            return "length"
        return None

    def _finish(self, request: Request, stream: TextStream, tokens: int, reason: str) -> None:
        self.finished[reason] += 1
        self.generated_tokens += tokens
        rest = stream.finish()
        request.emit(Event(delta=rest, finish_reason=reason, text=stream.text, completion_tokens=tokens))


def _left_padded(prompts: list[list[int]], pad_id: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), longest), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, longest - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[row, longest - len(prompt) :] = 1
    return ids.to(device), mask.to(device)
