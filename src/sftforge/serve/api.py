"""The OpenAI-compatible HTTP API of `sftforge serve` (FastAPI), and the web chat page at `/`.

Every error, including a malformed body, is answered in OpenAI's schema with a 4xx status: a client mistake never
becomes a 500. A streaming client that goes away cancels its generation.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from sftforge.serve.engine import Engine, Event, QueueFull
from sftforge.serve.engine import Request as EngineRequest
from sftforge.serve.prompts import Prompt, PromptBuilder, PromptError
from sftforge.serve.protocol import APIError, ChatCompletionRequest
from sftforge.serve.sampling import SamplingParams

STATIC = resources.files("sftforge.serve") / "static"
DISCONNECT_POLL_S = 0.5  # how often a non-streaming request checks that its client is still there


def create_app(
    engine: Engine,
    model_name: str,
    api_key: str | None = None,
    default_max_tokens: int = 512,
    builder: PromptBuilder | None = None,
) -> FastAPI:
    app = FastAPI(title="sftforge", docs_url=None, redoc_url=None)
    builder = builder or PromptBuilder(engine.tokenizer)
    created = int(time.time())
    context = engine.loaded.max_context

    _add_error_handlers(app)

    @app.middleware("http")
    async def check_api_key(request: Request, call_next: Any) -> Any:
        needs_key = api_key and request.url.path.startswith("/v1/")
        if needs_key and not secrets.compare_digest(
            request.headers.get("authorization", "").encode(), f"Bearer {api_key}".encode()
        ):
            err = APIError(
                401,
                "Incorrect or missing API key: send it as `Authorization: Bearer KEY` "
                "(the key sftforge serve was started with --api_key).",
                code="invalid_api_key",
            )
            return JSONResponse(err.body(), status_code=401)
        return await call_next(request)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_name, "queued": engine.queued, "running": engine.running}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {"id": model_name, "object": "model", "created": created, "owned_by": "sftforge"}
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(http: Request) -> Any:
        body = _parse_body(await http.body())
        prompt, params, prefill = _prepare(body, builder, context, default_max_tokens)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()
        hold = [builder.tools.opener] if prompt.tool_names and builder.tools.opener else []
        job = EngineRequest(
            prompt.ids, params, lambda e: loop.call_soon_threadsafe(events.put_nowait, e), hold=hold
        )
        try:
            engine.submit(job)
        except QueueFull as e:
            raise APIError(
                429, f"the server is busy: {e}. Retry shortly.", "requests", code="rate_limit_exceeded"
            ) from None
        answer = _Answer(f"chatcmpl-{job.id}", model_name, len(prompt.ids), prompt, builder, prefill)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                _stream(answer, events, job, include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        final = await _wait(events, job, http)
        return answer.completion(final)

    @app.get("/", include_in_schema=False)
    async def page() -> Any:
        index = STATIC / "index.html"
        if not index.is_file():
            raise APIError(
                404, "the web chat page is not installed with this copy of sftforge.", code="not_found"
            )
        return FileResponse(str(index))

    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    return app


def _parse_body(raw: bytes) -> ChatCompletionRequest:
    """The JSON body, whatever Content-Type the client sent (curl -d sends a form type)."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise APIError(400, f"the request body is a JSON {type(data).__name__}; send an object.")
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        param = ".".join(str(p) for p in first.get("loc", ())) or None
        raise APIError(400, f"{param or 'body'}: {first.get('msg', 'invalid value')}", param=param) from None


def _prepare(
    body: ChatCompletionRequest, builder: PromptBuilder, context: int | None, default_max_tokens: int
) -> tuple[Prompt, SamplingParams, str]:
    if body.n != 1:
        raise APIError(400, "only n=1 is supported: send one request per answer.", param="n")
    tools, prefill = body.tools, ""
    choice = body.tool_choice
    if isinstance(choice, dict):  # {"type": "function", "function": {"name": ...}}: only that tool, called
        name = (choice.get("function") or {}).get("name")
        tools = [t for t in tools or [] if (t.get("function") or {}).get("name") == name]
        if not tools:
            raise APIError(400, f"tool_choice names {name!r}, which is not in `tools`.", param="tool_choice")
    if (choice == "required" or isinstance(choice, dict)) and tools:
        if not builder.tools.opener:
            raise APIError(
                400,
                "tool_choice 'required' or a named function needs a chat template that marks tool calls; "
                "this one writes bare JSON. Use tool_choice 'auto'.",
                param="tool_choice",
            )
        prefill = builder.tools.opener
    if choice is not None and not tools and choice != "none":
        raise APIError(400, "tool_choice is set but `tools` is empty.", param="tool_choice")
    try:
        prompt = builder.build(body.messages, tools, choice, prefill)
    except PromptError as e:
        raise APIError(400, str(e), param=e.param) from None
    limit = body.token_limit
    if context is not None:
        room = context - len(prompt.ids)
        if room <= 0:
            raise APIError(
                400,
                f"the prompt is {len(prompt.ids)} tokens; this model's context is {context} tokens. "
                "Shorten the messages.",
                param="messages",
                code="context_length_exceeded",
            )
        if limit is not None and limit > room:
            raise APIError(
                400,
                f"max_tokens {limit} + the prompt's {len(prompt.ids)} tokens exceed this model's context of "
                f"{context} tokens: ask for at most {room}.",
                param="max_tokens",
                code="context_length_exceeded",
            )
        limit = limit or min(default_max_tokens, room)
    params = SamplingParams(
        max_tokens=limit or default_max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        stop=body.stop_list,
        ignore_eos=body.ignore_eos,
    )
    return prompt, params, prefill


class _Answer:
    """Builds the OpenAI response objects of one request."""

    def __init__(
        self, id: str, model: str, prompt_tokens: int, prompt: Prompt, builder: PromptBuilder, prefill: str
    ):  # noqa: A002
        self.id, self.model, self.prompt_tokens = id, model, prompt_tokens
        self.prompt, self.builder, self.prefill = prompt, builder, prefill
        self.created = int(time.time())

    def parse(self, final: Event) -> tuple[str | None, list[dict[str, Any]], str]:
        if final.finish_reason == "error":
            raise APIError(500, f"generation failed: {final.error}", "server_error")
        content, calls = final.text, []
        if self.prompt.tool_names:
            content, calls = self.builder.tools.parse(self.prefill + final.text, self.prompt.tool_names)
        reason = "tool_calls" if calls else ("length" if final.finish_reason == "length" else "stop")
        return (content or None) if calls else content, calls, reason

    def usage(self, final: Event) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": final.completion_tokens,
            "total_tokens": self.prompt_tokens + final.completion_tokens,
        }

    def completion(self, final: Event) -> dict[str, Any]:
        content, calls, reason = self.parse(final)
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = calls
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": reason, "logprobs": None}],
            "usage": self.usage(final),
        }

    def chunk(self, delta: dict[str, Any], reason: str | None = None) -> str:
        body = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}],
        }
        return _sse(body)

    def usage_chunk(self, final: Event) -> str:
        body = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": self.usage(final),
        }
        return _sse(body)


def _sse(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


async def _stream(
    answer: _Answer, events: asyncio.Queue[Event], job: EngineRequest, include_usage: bool
) -> AsyncIterator[str]:
    finished = False
    try:
        yield answer.chunk({"role": "assistant", "content": ""})
        while True:
            event = await events.get()
            if event.delta and not answer.prefill:
                yield answer.chunk({"content": event.delta})
            if event.finish_reason is None:
                continue
            finished = True
            try:
                _, calls, reason = answer.parse(event)
            except APIError as e:  # the stream has started: the error goes in the stream
                yield _sse(e.body())
                break
            if calls:
                delta = {"tool_calls": [{"index": k, **call} for k, call in enumerate(calls)]}
                yield answer.chunk(delta)
            yield answer.chunk({}, reason)
            if include_usage:
                yield answer.usage_chunk(event)
            break
        yield "data: [DONE]\n\n"
    finally:
        if not finished:  # the client went away (the response task was cancelled): stop generating
            job.cancel()


async def _wait(events: asyncio.Queue[Event], job: EngineRequest, http: Request) -> Event:
    try:
        while True:
            try:
                event = await asyncio.wait_for(events.get(), DISCONNECT_POLL_S)
            except asyncio.TimeoutError:
                if await http.is_disconnected():
                    job.cancel()
                    return Event(finish_reason="cancelled")
                continue
            if event.finish_reason is not None:
                return event
    except asyncio.CancelledError:
        job.cancel()
        raise


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(_: Request, e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        if first.get("type") == "json_invalid":
            message, param = f"the request body is not valid JSON: {first.get('msg', '')}", None
        else:
            loc = [str(p) for p in first.get("loc", []) if p != "body"]
            param = ".".join(loc) or None
            message = f"{param or 'body'}: {first.get('msg', 'invalid value')}"
        return JSONResponse(APIError(400, message, param=param).body(), status_code=400)

    @app.exception_handler(Exception)
    async def unexpected(
        _: Request, e: Exception
    ) -> JSONResponse:  # a bug: still answered in OpenAI's schema
        err = APIError(500, f"internal error: {type(e).__name__}: {e}", "server_error")
        return JSONResponse(err.body(), status_code=500)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return JSONResponse(
            APIError(e.status_code, str(e.detail), code=code).body(), status_code=e.status_code
        )
