"""The batching engine: a batch answers exactly what each request answers alone (left padding, rows leaving the
batch at different steps), and a seed gives the same sample whatever shares the batch."""

from __future__ import annotations

import threading

import pytest

from sftforge.serve.engine import Engine, Event, QueueFull, Request
from sftforge.serve.loading import load_for_inference
from sftforge.serve.prompts import PromptBuilder
from sftforge.serve.sampling import SamplingParams

from .conftest import varied
from .test_api import greedy_reference

PROMPTS = [
    [{"role": "user", "content": "Say sun 3 times"}],
    [{"role": "system", "content": "Be brief and kind, always."}, {"role": "user", "content": "hi"}],
    [{"role": "user", "content": "你好，世界"}],
    [{"role": "user", "content": "Name a river in a long sentence with many words in it please"}],
]


def run_together(engine: Engine, jobs: list[tuple[list[int], SamplingParams]]) -> list[Event]:
    """Queue all jobs before the worker looks, so they run as one batch; the final events, in order."""
    finals: dict[int, Event] = {}
    all_done = threading.Event()

    def emit_for(k: int):  # noqa: ANN202
        def emit(event: Event) -> None:
            if event.finish_reason:
                finals[k] = event
                if len(finals) == len(jobs):
                    all_done.set()

        return emit

    with engine.condition:
        for k, (ids, params) in enumerate(jobs):
            engine.waiting.append(Request(ids, params, emit_for(k)))
        engine.condition.notify()
    assert all_done.wait(120)
    return [finals[k] for k in range(len(jobs))]


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_a_batch_answers_what_each_prompt_answers_alone(arch, make_tiny_model):
    loaded = varied(load_for_inference(make_tiny_model(arch), device="cpu"), seed=1)
    builder = PromptBuilder(loaded.tokenizer)
    engine = Engine(loaded, max_batch_size=8)
    try:
        limits = [12, 5, 9, 16]  # rows leave the batch at different steps
        jobs = [
            (builder.build(p).ids, SamplingParams(max_tokens=n, temperature=0))
            for p, n in zip(PROMPTS, limits, strict=True)
        ]
        finals = run_together(engine, jobs)
    finally:
        engine.close()
    assert engine.batches == 1 and engine.largest_batch == len(PROMPTS)
    answers = [f.text for f in finals]
    assert answers == [greedy_reference(loaded, p, n) for p, n in zip(PROMPTS, limits, strict=True)]
    assert len(set(answers)) > 1  # the model does answer differently: rows could not be mixed up unnoticed
    assert all(f.completion_tokens <= n for f, n in zip(finals, limits, strict=True))


def test_a_seeded_sample_does_not_depend_on_its_batch(tiny_model_dir):
    loaded = varied(load_for_inference(tiny_model_dir, device="cpu"), seed=2)
    builder = PromptBuilder(loaded.tokenizer)
    engine = Engine(loaded)
    try:
        seeded = (builder.build(PROMPTS[0]).ids, SamplingParams(max_tokens=10, temperature=1.0, seed=5))
        alone = run_together(engine, [seeded])[0].text
        crowd = [(builder.build(p).ids, SamplingParams(max_tokens=10, temperature=1.0)) for p in PROMPTS[1:]]
        together = run_together(engine, [*crowd, seeded])[-1].text
    finally:
        engine.close()
    assert alone == together


def test_a_full_queue_refuses_and_cancelled_requests_are_skipped(tiny_model_dir):
    loaded = load_for_inference(tiny_model_dir, device="cpu")
    engine = Engine(loaded, max_queue=1)
    events: list[Event] = []
    try:
        with engine.condition:  # the worker cannot take anything while this is held
            first = Request([1, 2, 3], SamplingParams(max_tokens=3), events.append)
            engine.waiting.append(first)
            with pytest.raises(QueueFull, match="queue holds 1"):
                engine.submit(Request([1, 2], SamplingParams(max_tokens=3), events.append))
            first.cancel()
            engine.condition.notify()
        deadline = threading.Event()
        while not events and not deadline.wait(0.05):
            pass
    finally:
        engine.close()
    assert [e.finish_reason for e in events] == ["cancelled"]
    assert engine.batches == 0
