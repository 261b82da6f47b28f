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


# (first prompt, joiners): the joiners narrower than the running rows, then wider (the running cache is padded)
ORDERS = {"joiners_padded": (3, (0, 2)), "running_padded": (0, (3, 1))}


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_requests_arriving_mid_generation_join_the_batch_and_answer_as_alone(arch, order, make_tiny_model):
    first_prompt, joiners = ORDERS[order]
    loaded = varied(load_for_inference(make_tiny_model(arch), device="cpu"), seed=3)
    builder = PromptBuilder(loaded.tokenizer)
    engine = Engine(loaded, max_batch_size=8)
    finals: dict[int, Event] = {}
    started, all_done = threading.Event(), threading.Event()
    limits = [40, 12, 7]

    def emit_for(k: int):  # noqa: ANN202
        def emit(event: Event) -> None:
            started.set()
            if event.finish_reason:
                finals[k] = event
                if len(finals) == len(limits):
                    all_done.set()

        return emit

    try:
        first = builder.build(PROMPTS[first_prompt]).ids
        engine.submit(Request(first, SamplingParams(max_tokens=limits[0], temperature=0), emit_for(0)))
        assert started.wait(60)
        for k, prompt in ((1, PROMPTS[joiners[0]]), (2, PROMPTS[joiners[1]])):
            engine.submit(Request(builder.build(prompt).ids, SamplingParams(max_tokens=limits[k], temperature=0),
                                  emit_for(k)))  # fmt: skip
        assert all_done.wait(120)
    finally:
        engine.close()
    assert engine.batches == 1 and engine.joined == 2 and engine.largest_batch == 3
    prompts = [PROMPTS[first_prompt], PROMPTS[joiners[0]], PROMPTS[joiners[1]]]
    assert [finals[k].text for k in range(3)] == [
        greedy_reference(loaded, p, n) for p, n in zip(prompts, limits, strict=True)
    ]


def test_with_a_sliding_window_cache_late_requests_wait_for_the_next_batch(make_tiny_model, tmp_path):
    import json
    import shutil

    folder = tmp_path / "mistral-window"
    shutil.copytree(make_tiny_model("mistral"), folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(sliding_window=6, layer_types=None)
    (folder / "config.json").write_text(json.dumps(config))
    loaded = varied(load_for_inference(folder, device="cpu"), seed=4)
    assert loaded.model.config.sliding_window == 6
    builder = PromptBuilder(loaded.tokenizer)
    engine = Engine(loaded)
    finals: dict[int, Event] = {}
    started, all_done = threading.Event(), threading.Event()

    def emit_for(k: int):  # noqa: ANN202
        def emit(event: Event) -> None:
            started.set()
            if event.finish_reason:
                finals[k] = event
                if len(finals) == 2:
                    all_done.set()

        return emit

    try:
        long = SamplingParams(
            30, temperature=0, ignore_eos=True
        )  # surely still running when the next one comes
        engine.submit(Request(builder.build(PROMPTS[3]).ids, long, emit_for(0)))
        assert started.wait(60)
        engine.submit(Request(builder.build(PROMPTS[0]).ids, SamplingParams(10, temperature=0), emit_for(1)))
        assert all_done.wait(120)
    finally:
        engine.close()
    assert engine.joined == 0 and engine.batches == 2  # it waited: a windowed cache cannot be left-padded
    assert finals[0].text == greedy_reference(loaded, PROMPTS[3], 30, stop=False)
    assert finals[1].text == greedy_reference(loaded, PROMPTS[0], 10)


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
