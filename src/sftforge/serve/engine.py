"""The generation engine behind `sftforge serve`: a bounded queue and one worker thread that batches requests.

The worker runs the prompts of up to `max_batch_size` waiting requests through the model in one left-padded forward
pass, then decodes them together: one forward pass per token for the whole batch (the Hugging Face model with its
KV cache). Every request keeps its own sampling settings and seed. A request leaves the batch as soon as it ends
(end-of-turn token, stop string, token limit, or its client went away) and its rows leave the cache. Requests that
arrive meanwhile join the running batch at the next token (their prompts prefilled, then cache and mask
left-padded to one width) when the cache is a plain growing one; with sliding-window or other special caches they
wait for the next batch. Results go back through each request's `emit` callback, from the worker thread.
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
from sftforge.serve.virtual_tokens import VirtualTokens


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
    done: bool = False  # its final event was sent

    def cancel(self) -> None:
        self.cancelled.set()


class Engine:
    def __init__(self, loaded: LoadedModel, max_batch_size: int = 16, max_queue: int = 256):
        self.loaded = loaded
        self.model = loaded.model
        # prefix / prompt / P-tuning: the base model runs, the virtual tokens are added at prefill
        self.virtual = VirtualTokens(loaded.model) if loaded.kind == "prompt-learning" else None
        if self.virtual is not None:
            self.model = loaded.model.get_base_model()
        self.tokenizer = loaded.tokenizer
        self.stop_ids = set(loaded.stop_ids)
        accepted = inspect.signature(self.model.forward).parameters
        self.cache_arg = "cache" if "cache" in accepted else "past_key_values"  # renamed in transformers 5.x
        self.last_logits_only = {"logits_to_keep": 1} if "logits_to_keep" in accepted else {}
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.waiting: deque[Request] = deque()
        self.condition = threading.Condition()
        # What tests and /health read: requests decoding now, batches started, the most rows decoded together,
        # requests that joined a running batch, requests ended by reason ("stop", "length", "cancelled", …)
        self.running = 0
        self.batches = 0
        self.largest_batch = 0
        self.joined = 0
        self.finished: Counter[str] = Counter()
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
            batch = self._take(self.max_batch_size)
            if not batch:
                continue
            self.batches += 1
            in_flight = list(batch)
            try:
                self._generate(batch, in_flight)
            except Exception as e:  # a bug or an out-of-memory: fail these requests, keep serving
                for request in in_flight:
                    if not request.done:
                        request.done = True
                        self.finished["error"] += 1
                        request.emit(Event(finish_reason="error", error=f"{type(e).__name__}: {e}"))
            finally:
                self.running = 0

    def _take(self, room: int) -> list[Request]:
        """Up to `room` waiting requests; those cancelled while waiting are answered and skipped."""
        taken: list[Request] = []
        with self.condition:
            while self.waiting and len(taken) < room:
                request = self.waiting.popleft()
                if request.cancelled.is_set():
                    request.done = True
                    self.finished["cancelled"] += 1
                    request.emit(Event(finish_reason="cancelled"))
                else:
                    taken.append(request)
        return taken

    @torch.inference_mode()
    def _generate(self, batch: list[Request], in_flight: list[Request]) -> None:
        rows = self._prefill(batch)
        while True:
            chosen = self._advance(rows)
            if not len(rows):
                return  # the worker starts the next batch with whatever waits
            if self.waiting and len(rows) < self.max_batch_size and _joinable(rows):
                joining = self._take(self.max_batch_size - len(rows))
                if joining:  # continuous batching: they join at this token
                    in_flight += joining
                    self.joined += len(joining)
                    new = self._prefill(joining)
                    chosen = _merge(rows, chosen, new, self._advance(new))
            self.running = len(rows)
            self.largest_batch = max(self.largest_batch, len(rows))
            rows.mask = torch.cat([rows.mask, rows.mask.new_ones(len(rows), 1)], dim=-1)
            rows.last_position = rows.last_position + 1
            out = self.model(
                input_ids=chosen[:, None],
                attention_mask=rows.mask,
                position_ids=rows.last_position,
                use_cache=True,
                **{self.cache_arg: rows.cache},
            )
            rows.cache, rows.logits = self._cache(out), out.logits[:, -1]

    def _prefill(self, requests: list[Request]) -> _Rows:
        device = self.model.device
        ids, mask = _left_padded([r.prompt_ids for r in requests], self.tokenizer.pad_token_id, device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
        if self.virtual is not None:
            inputs, mask, positions = self.virtual.prefill(ids, mask, self.cache_arg)
        out = self.model(**inputs, use_cache=True, **self.last_logits_only)
        return _Rows(
            requests=list(requests),
            streams=[TextStream(self.tokenizer, r.params.stop, r.hold) for r in requests],
            generators=[seeded_generator(r.params.seed, device) for r in requests],
            counts=[0] * len(requests),
            cache=self._cache(out),
            mask=mask,
            last_position=positions[:, -1:],
            logits=out.logits[:, -1],
        )

    def _advance(self, rows: _Rows) -> torch.Tensor:
        """Choose each row's next token and hand it out; rows whose request ends leave (their cache rows too).
        Returns the tokens of the rows that go on."""
        chosen = next_tokens(rows.logits, [r.params for r in rows.requests], rows.generators)
        keep = []
        for row, token in enumerate(chosen.tolist()):  # one host read per token: the text has to be sent
            reason = self._step(rows, row, token)
            if reason is None:
                keep.append(row)
            else:
                self._finish(rows, row, reason)
        if len(keep) < len(rows):
            index = torch.tensor(keep, device=chosen.device, dtype=torch.long)
            rows.select(keep, index)
            chosen = chosen[index]
        return chosen

    def _step(self, rows: _Rows, row: int, token: int) -> str | None:
        """Take one token for a row; the reason its request ends, or None to go on."""
        request, stream = rows.requests[row], rows.streams[row]
        if request.cancelled.is_set():
            return "cancelled"
        if token in self.stop_ids and not request.params.ignore_eos:
            return "stop"
        rows.counts[row] += 1
        delta = stream.add(token)
        if delta:
            request.emit(Event(delta=delta))
        if stream.stopped:
            return "stop"
        if rows.counts[row] >= request.params.max_tokens:
            return "length"
        return None

    def _finish(self, rows: _Rows, row: int, reason: str) -> None:
        request, stream, tokens = rows.requests[row], rows.streams[row], rows.counts[row]
        request.done = True
        self.finished[reason] += 1
        self.generated_tokens += tokens
        rest = stream.finish()
        request.emit(Event(delta=rest, finish_reason=reason, text=stream.text, completion_tokens=tokens))

    def _cache(self, out: Any) -> Any:
        return getattr(out, "cache", None) or out.past_key_values


@dataclass
class _Rows:
    """The requests being decoded together, in the order of their rows in the KV cache."""

    requests: list[Request]
    streams: list[TextStream]
    generators: list[torch.Generator | None]
    counts: list[int]  # tokens generated per row
    cache: Any
    mask: torch.Tensor  # [rows, keys]: 0 on left padding
    last_position: torch.Tensor  # [rows, 1]
    logits: torch.Tensor  # [rows, vocab]: for the next token

    _PER_ROW = ("requests", "streams", "generators", "counts")

    def __len__(self) -> int:
        return len(self.requests)

    def select(self, keep: list[int], index: torch.Tensor) -> None:
        for name in self._PER_ROW:
            setattr(self, name, [getattr(self, name)[k] for k in keep])
        if keep:
            self.cache.batch_select_indices(index)
        self.mask, self.last_position, self.logits = (
            self.mask[index],
            self.last_position[index],
            self.logits[index],
        )


def _joinable(rows: _Rows) -> bool:
    """New rows can join when every cache layer is a plain growing one as long as the mask (no sliding window, no
    linear-attention state): left padding then lines the rows up. Otherwise they wait for the next batch."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(rows.cache, "layers", None)
    return bool(layers) and all(
        type(layer) is DynamicLayer
        and getattr(layer, "keys", None) is not None
        and layer.keys.shape[-2] == rows.mask.shape[1]
        for layer in layers
    )


def _merge(rows: _Rows, chosen: torch.Tensor, new: _Rows, new_chosen: torch.Tensor) -> torch.Tensor:
    """Append `new`'s rows to `rows` (cache and mask of the narrower side left-padded); the joint next tokens."""
    if not len(new):
        return chosen
    if not _joinable(new):  # cannot happen when `rows` is joinable (the same model made both caches)
        raise RuntimeError("cannot merge a cache that is not a plain growing one")
    width = max(rows.mask.shape[1], new.mask.shape[1])
    for mine, theirs in zip(rows.cache.layers, new.cache.layers, strict=True):
        mine.keys = torch.cat([_pad_left(mine.keys, width, -2), _pad_left(theirs.keys, width, -2)])
        mine.values = torch.cat([_pad_left(mine.values, width, -2), _pad_left(theirs.values, width, -2)])
    rows.mask = torch.cat([_pad_left(rows.mask, width, -1), _pad_left(new.mask, width, -1)])
    rows.last_position = torch.cat([rows.last_position, new.last_position])
    for name in _Rows._PER_ROW:
        setattr(rows, name, getattr(rows, name) + getattr(new, name))
    return torch.cat([chosen, new_chosen])


def _pad_left(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def _left_padded(prompts: list[list[int]], pad_id: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), longest), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, longest - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[row, longest - len(prompt) :] = 1
    return ids.to(device), mask.to(device)
