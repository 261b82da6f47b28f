"""`sftforge serve`'s API driven with the official `openai` client on a real server at 127.0.0.1."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest
import torch

from sftforge.serve.loading import LoadedModel

from .conftest import scripted, serving

HELLO = [{"role": "user", "content": "Say sun 3 times"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def client(server, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=kw.pop("api_key", "none"), max_retries=0, **kw)


def greedy_reference(
    loaded: LoadedModel, messages: list[dict], max_new_tokens: int, stop: bool = True
) -> str:
    """What transformers' own generate() answers, greedy, stopping at the saved end-of-turn ids (or not)."""
    tok = loaded.tokenizer
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    out = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                do_sample=False, eos_token_id=loaded.stop_ids if stop else [], pad_token_id=tok.pad_token_id)  # fmt: skip
    new = [t for t in out[0, ids.shape[1] :].tolist() if t not in loaded.stop_ids]
    return tok.decode(new, skip_special_tokens=True)


def test_models_health_and_a_greedy_completion_equal_to_generate(tiny_loaded):
    with serving(tiny_loaded) as server:
        c = client(server)
        assert [m.id for m in c.models.list().data] == ["tiny"]
        assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
        reply = c.chat.completions.create(model="tiny", messages=HELLO, max_tokens=12, temperature=0)
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == greedy_reference(tiny_loaded, HELLO, 12)
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens <= 12
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_streaming_gives_the_same_text_in_chunks_then_usage(tiny_loaded):
    with serving(tiny_loaded) as server:
        c = client(server)
        whole = c.chat.completions.create(model="tiny", messages=HELLO, max_tokens=16, temperature=0)
        chunks = list(c.chat.completions.create(model="tiny", messages=HELLO, max_tokens=16, temperature=0,
                                                stream=True, stream_options={"include_usage": True}))  # fmt: skip
    deltas = [ch.choices[0].delta.content or "" for ch in chunks if ch.choices]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert sum(1 for d in deltas if d) >= 2  # it streamed, not one block
    assert "".join(deltas) == whole.choices[0].message.content
    finals = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_typed_content_parts_and_a_system_prompt_render_like_plain_strings(tiny_loaded):
    typed = [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
             {"role": "user", "content": [{"type": "text", "text": "Say sun "}, {"type": "text", "text": "3 times"}]}]  # fmt: skip
    plain = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say sun 3 times"}]
    with serving(tiny_loaded) as server:
        c = client(server)
        a = c.chat.completions.create(model="tiny", messages=typed, max_tokens=8, temperature=0)
        b = c.chat.completions.create(model="tiny", messages=plain, max_tokens=8, temperature=0)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage.prompt_tokens == b.usage.prompt_tokens


def test_seed_makes_sampling_repeatable(tiny_loaded):
    with serving(tiny_loaded) as server:
        c = client(server)
        runs = [c.chat.completions.create(model="tiny", messages=HELLO, max_tokens=12, temperature=1.0,
                                          top_p=0.9, seed=s).choices[0].message.content for s in (7, 7, 8)]  # fmt: skip
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_stop_strings_cut_the_answer(tiny_loaded):
    with serving(scripted(tiny_loaded, "alpha beta gamma delta")) as server:
        c = client(server)
        reply = c.chat.completions.create(model="tiny", messages=HELLO, stop=[" gam"], temperature=0)
        streamed = c.chat.completions.create(
            model="tiny", messages=HELLO, stop=" gam", temperature=0, stream=True
        )
        text = "".join(ch.choices[0].delta.content or "" for ch in streamed if ch.choices)
    assert reply.choices[0].message.content == "alpha beta"
    assert reply.choices[0].finish_reason == "stop"
    assert text == "alpha beta"  # the partial stop string was never sent


def test_ignore_eos_generates_max_tokens(tiny_loaded):
    with serving(scripted(tiny_loaded, "alpha")) as server:  # then an end-of-turn id, again and again
        c = client(server)
        plain = c.chat.completions.create(model="tiny", messages=HELLO, max_tokens=6)
        fixed = c.chat.completions.create(
            model="tiny", messages=HELLO, max_tokens=6, extra_body={"ignore_eos": True}
        )
    assert plain.choices[0].finish_reason == "stop" and plain.choices[0].message.content == "alpha"
    assert fixed.choices[0].finish_reason == "length" and fixed.usage.completion_tokens == 6


def test_a_tool_call_comes_back_as_tool_calls(tiny_loaded):
    call = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    with serving(scripted(tiny_loaded, call)) as server:
        c = client(server)
        reply = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Weather in Paris?"}],
                                          tools=[WEATHER], temperature=0)  # fmt: skip
        chunks = list(c.chat.completions.create(model="tiny", tools=[WEATHER], temperature=0, stream=True,
                                                messages=[{"role": "user", "content": "Weather in Paris?"}]))  # fmt: skip
    message = reply.choices[0].message
    assert reply.choices[0].finish_reason == "tool_calls"
    assert message.content is None
    (tc,) = message.tool_calls
    assert tc.type == "function" and tc.function.name == "get_weather"
    assert json.loads(tc.function.arguments) == {"city": "Paris"}
    assert not any(
        ch.choices[0].delta.content for ch in chunks if ch.choices
    )  # the call's text is not streamed
    streamed_calls = [tc for ch in chunks if ch.choices for tc in ch.choices[0].delta.tool_calls or []]
    assert [c.function.name for c in streamed_calls] == ["get_weather"]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_the_tool_result_turn_renders_and_the_answer_is_plain_text(tiny_loaded):
    history = [{"role": "user", "content": "Weather in Paris?"},
               {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'}]  # fmt: skip
    with serving(scripted(tiny_loaded, "It is 21 degrees.")) as server:
        reply = client(server).chat.completions.create(model="tiny", messages=history, tools=[WEATHER])
    assert reply.choices[0].message.content == "It is 21 degrees."
    assert reply.choices[0].finish_reason == "stop" and not reply.choices[0].message.tool_calls


def test_tool_choice_required_makes_the_model_call_a_tool(tiny_loaded):
    # The scripted model writes only the call's JSON: the server put the opener in the prompt itself
    body = '{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
    with serving(scripted(tiny_loaded, body)) as server:
        reply = client(server).chat.completions.create(
            model="tiny", messages=HELLO, tools=[WEATHER], tool_choice="required"
        )
    assert reply.choices[0].finish_reason == "tool_calls"
    assert json.loads(reply.choices[0].message.tool_calls[0].function.arguments) == {"city": "Oslo"}


BAD = [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, "messages"),
    ({"messages": [{"content": "no role"}]}, "messages"),
    ({"messages": HELLO, "temperature": 3}, "temperature"),
    ({"messages": HELLO, "top_p": 0}, "top_p"),
    ({"messages": HELLO, "max_tokens": 0}, "max_tokens"),
    ({"messages": HELLO, "max_tokens": "ten"}, "max_tokens"),
    ({"messages": HELLO, "n": 2}, "n"),
    ({"messages": HELLO, "seed": 2**70}, "seed"),
    ({"messages": [{"role": "user", "content": "lone \ud800 surrogate"}]}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages"),
    ({"messages": HELLO, "tools": [5]}, "tools.0"),
    ({"messages": HELLO, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"messages": HELLO, "max_tokens": 100000}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "word " * 3000}]}, "messages"),
    ({"messages": HELLO, "tools": [{"type": "function"}]}, "tools"),
    ({"messages": HELLO, "tool_choice": "required"}, "tool_choice"),
    ({"messages": HELLO, "tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
     "tool_choice"),
]  # fmt: skip


def test_bad_requests_are_400_in_openais_error_schema(tiny_loaded):
    with serving(tiny_loaded) as server:
        url = f"{server.url}/v1/chat/completions"
        # json.dumps escapes a lone surrogate (valid JSON); httpx's json= would refuse to encode it
        answers = [(httpx.post(url, content=json.dumps(body), timeout=30), param) for body, param in BAD]
        raw = [
            httpx.post(url, content=text, timeout=30) for text in (b"{bad json", b"[1, 2]", b"\xff\xfe", b"")
        ]
        with pytest.raises(openai.BadRequestError) as e:
            client(server).chat.completions.create(
                model="tiny", messages=[{"role": "wizard", "content": "x"}]
            )
        gone = httpx.get(f"{server.url}/v1/nothing-here", timeout=30)
    for response, param in answers:
        assert response.status_code == 400, (param, response.text)
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
        assert error["type"] == "invalid_request_error" and error["param"] == param, error
    assert [r.status_code for r in raw] == [400, 400, 400, 400]
    assert all(r.json()["error"]["message"] for r in raw)
    assert "wizard" in e.value.message
    assert gone.status_code == 404 and "error" in gone.json()
    too_long = [r.json()["error"] for r, _ in answers if "context" in r.json()["error"]["message"]]
    assert len(too_long) == 2  # the over-long prompt, and max_tokens past the context
    assert all(e["code"] == "context_length_exceeded" for e in too_long)


def test_api_key_is_required_when_set(tiny_loaded):
    with serving(tiny_loaded, api_key="s3cret") as server:
        with pytest.raises(openai.AuthenticationError) as e:
            client(server, api_key="wrong").models.list()
        ok = client(server, api_key="s3cret").models.list()
        unicode_header = httpx.get(
            f"{server.base_url}/models", headers={"Authorization": "Bearer ключ".encode()}
        )
        health = httpx.get(f"{server.url}/health")
    assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
    assert ok.data[0].id == "tiny"
    assert unicode_header.status_code == 401
    assert health.status_code == 200  # liveness checks need no key


def test_a_full_queue_answers_429(tiny_loaded):
    import concurrent.futures as cf

    def wait_for(condition) -> None:  # noqa: ANN001
        deadline = time.time() + 30
        while not condition():
            assert time.time() < deadline
            time.sleep(0.02)

    endless = scripted(tiny_loaded, " sun" * 2000, delay=0.02)  # never ends by itself within max_tokens
    # A batch of 1: the others cannot join the running batch, they queue
    with serving(endless, max_batch_size=1, max_queue=2) as server:
        url = f"{server.url}/v1/chat/completions"
        short = {"messages": HELLO, "max_tokens": 4}
        pool = cf.ThreadPoolExecutor(4)
        # A long streamed answer keeps the worker busy while the others arrive
        with httpx.stream("POST", url, json={**short, "max_tokens": 900, "stream": True}, timeout=60) as long:
            lines = long.iter_lines()  # kept: a discarded line iterator closes the response
            next(lines)
            wait_for(lambda: server.engine.running == 1)
            queued = [pool.submit(httpx.post, url, json=short, timeout=60) for _ in range(2)]
            wait_for(lambda: server.engine.queued == 2)
            busy = httpx.post(url, json=short, timeout=60)
        done = [f.result() for f in queued]  # the long stream was closed: they run now
    assert busy.status_code == 429 and busy.json()["error"]["code"] == "rate_limit_exceeded"
    assert [r.status_code for r in done] == [200, 200]
    assert server.engine.finished == {"cancelled": 1, "length": 2}


def test_a_client_that_disconnects_mid_stream_stops_its_generation(tiny_loaded):
    with serving(scripted(tiny_loaded, " sun" * 2000, delay=0.02)) as server:
        body = {"messages": HELLO, "max_tokens": 900, "stream": True}
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=60) as response:
            lines = response.iter_lines()
            got = [next(lines) for _ in range(6)]  # a few chunks, then hang up
        assert any(line.startswith("data: ") for line in got)
        deadline = time.time() + 30
        while not server.engine.finished and time.time() < deadline:
            time.sleep(0.05)
        assert dict(server.engine.finished) == {"cancelled": 1}
        assert server.engine.generated_tokens < 900  # it stopped early, because the client left
        reply = client(server).chat.completions.create(model="tiny", messages=HELLO, max_tokens=4)
    assert reply.choices[0].message.content is not None  # and the server goes on serving
