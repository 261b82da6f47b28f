"""The web chat page of `sftforge serve`, in a real headless Chromium against the real server and a tiny model.

The browser is the OS's Chromium (Debian package `chromium`), installed by `make test` through
.ci/install-browser; Playwright only drives it (no `playwright install`, no browser download)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("SFTFORGE_CHROMIUM", "/usr/bin/chromium"))
INSTALL_SCRIPT = REPO / ".ci" / "install-browser"
INSTALL_LOG = REPO / "outputs" / "browser-install.log"
ARTIFACTS = REPO / "outputs" / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root in a container
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # A closed network: no update checks, no component downloads, no sync, nothing the test did not ask for.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
]
CHINESE = "你好，世界"
# Draws a character and an unassigned one (always the missing-glyph box) in the page's font: same pixels = no font.
GLYPHS_DIFFER = """ch => {
    const font = '32px ' + getComputedStyle(document.body).fontFamily;
    const draw = (text) => {
        const c = document.createElement('canvas');
        c.width = c.height = 48;
        const g = c.getContext('2d');
        g.font = font;
        g.fillText(text, 4, 36);
        return Array.from(g.getImageData(0, 0, 48, 48).data).join(',');
    };
    return draw(ch) !== draw('\\u0378');
}"""

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("web_page")]


def _chromium() -> str:
    """The system Chromium; installs it with the same script as `make test` when missing (quick when present)."""
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        subprocess.run(["bash", str(INSTALL_SCRIPT)], cwd=REPO, timeout=900, check=False)
    if CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK):
        return str(CHROMIUM)
    reason = INSTALL_LOG.read_text().strip() if INSTALL_LOG.is_file() else "the install script gave no reason"
    pytest.skip(f"no Chromium at {CHROMIUM} and apt-get could not install it: {reason}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model_dir: Path, log: Path, *extra: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        cmd = [sys.executable, "-m", "sftforge", "serve", str(model_dir), "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), *extra]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"sftforge serve exited with {self.proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise AssertionError(f"sftforge serve did not answer /health within 180 s:\n{log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def complete(self, request: dict, headers: dict | None = None) -> str:
        """The API's own streamed answer to `request`: the deltas joined."""
        text = []
        with httpx.stream(
            "POST", self.url + "/v1/chat/completions", json=request, headers=headers, timeout=120
        ) as response:
            assert response.status_code == 200, response.read()
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                choice = json.loads(data)["choices"][0]
                text.append(choice["delta"].get("content") or "")
        return "".join(text)


@pytest.fixture(scope="module")
def chromium_path() -> str:
    return _chromium()


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    srv = Server(tiny_model_dir, tmp_path_factory.mktemp("serve") / "serve.log")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser(chromium_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Page:
    """One fresh browser context (own localStorage) on the chat page, recording every request it makes."""

    def __init__(self, browser, url: str, width: int = 1100, height: int = 760) -> None:
        self.context = browser.new_context(viewport={"width": width, "height": height}, locale="zh-CN")
        self.page = self.context.new_page()
        self.requests: list[str] = []
        self.chat_bodies: list[dict] = []
        self.errors: list[str] = []
        self.page.on("request", self._on_request)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.set_default_timeout(60_000)
        self.page.goto(url + "/")
        self.page.wait_for_function("() => window.sftforgeChat !== undefined")

    def _on_request(self, request) -> None:
        self.requests.append(request.url)
        if request.url.endswith("/v1/chat/completions") and request.method == "POST":
            self.chat_bodies.append(json.loads(request.post_data))

    def wait_model_name(self) -> str:
        self.page.wait_for_function(
            "() => !document.getElementById('model-name').textContent.includes('loading')"
        )
        return self.page.text_content("#model-name")

    def settings(
        self, temperature: float, max_tokens: int, system: str = "", seed: int | None = None
    ) -> None:
        self.page.fill("#system", system)
        self.page.fill("#seed", "" if seed is None else str(seed))
        self.page.eval_on_selector(
            "#temperature",
            "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }",
            str(temperature),
        )
        self.page.fill("#max-tokens", str(max_tokens))

    def send(self, text: str) -> None:
        self.page.fill("#input", text)
        self.page.click("#send")

    def n_answers(self) -> int:
        return self.page.locator(".msg.assistant").count()

    def wait_answer(self, n: int, timeout_ms: int = 120_000) -> str:
        """Waits until the n-th answer (1-based) has ended; returns how it ended ('true' or 'stopped')."""
        self.page.wait_for_function(
            "n => { const r = document.querySelectorAll('.msg.assistant'); return r.length >= n && r[n-1].dataset.done; }",
            arg=n,
            timeout=timeout_ms,
        )
        return self.page.evaluate("n => document.querySelectorAll('.msg.assistant')[n-1].dataset.done", n)

    def history(self) -> list[dict]:
        return self.page.evaluate("() => window.sftforgeChat.state.history")

    def observe_answer_lengths(self) -> None:
        """Records the last answer's text length at every DOM change: proof that it was drawn piece by piece."""
        self.page.evaluate(
            """() => {
                window.__lengths = [];
                const box = document.getElementById('messages');
                new MutationObserver(() => {
                    const rows = box.querySelectorAll('.msg.assistant .msg-body');
                    if (rows.length) window.__lengths.push(rows[rows.length - 1].textContent.length);
                }).observe(box, {childList: true, subtree: true, characterData: true});
            }"""
        )

    def pace_chat_streams(self, ms: int = 15) -> None:
        """Hands the page the server's chat stream one SSE event per read, `ms` apart, as a slow network would.

        The page draws once per read of the response body. The tiny model writes its whole answer in a few
        milliseconds, so on a loaded machine the browser may deliver every event in one read and the answer
        appears at once, however the page behaves. Pacing the same bytes makes "drawn piece by piece" a
        property of the page alone (the server's own streaming is tested against the API in test_api.py)."""
        self.page.evaluate(
            """ms => {
                const original = window.fetch;
                window.fetch = async (input, init) => {
                    const response = await original(input, init);
                    const url = typeof input === 'string' ? input : input.url;
                    if (!url.endsWith('/v1/chat/completions') || !response.ok || !response.body) return response;
                    const reader = response.body.getReader();
                    const encoder = new TextEncoder(), decoder = new TextDecoder();
                    let buffer = '';
                    const paced = new ReadableStream({
                        async pull(controller) {
                            for (;;) {
                                const cut = buffer.indexOf('\\n\\n');
                                if (cut !== -1) {
                                    const event = buffer.slice(0, cut + 2);
                                    buffer = buffer.slice(cut + 2);
                                    await new Promise(resolve => setTimeout(resolve, ms));
                                    controller.enqueue(encoder.encode(event));
                                    return;
                                }
                                const { value, done } = await reader.read();
                                if (done) {
                                    if (buffer) controller.enqueue(encoder.encode(buffer));
                                    controller.close();
                                    return;
                                }
                                buffer += decoder.decode(value, { stream: true });
                            }
                        },
                        cancel(reason) { return reader.cancel(reason); },
                    });
                    return new Response(paced, { status: response.status, headers: response.headers });
                };
            }""",
            ms,
        )

    def answer_lengths(self) -> list[int]:
        return self.page.evaluate("() => window.__lengths")

    def foreign_requests(self) -> list[str]:
        return [
            u
            for u in self.requests
            if urlsplit(u).scheme not in ("data", "blob") and urlsplit(u).hostname != "127.0.0.1"
        ]

    def screenshot(self, path: Path, **kwargs) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(path), **kwargs)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def chat_page(browser, server):
    pages: list[Page] = []

    def open_page(url: str | None = None, **kwargs) -> Page:
        pages.append(Page(browser, url or server.url, **kwargs))
        return pages[-1]

    yield open_page
    for p in pages:
        assert p.errors == [], f"JavaScript errors on the page: {p.errors}"
        assert p.foreign_requests() == [], "the page must only talk to its own server (offline)"
        p.close()


def test_conversation_streams_matches_the_api_and_shows_chinese(chat_page, server, tmp_path):
    page = chat_page()
    model_id = httpx.get(server.url + "/v1/models", timeout=10).json()["data"][0]["id"]
    assert page.wait_model_name() == model_id

    # Sampled with a seed, which is as reproducible as greedy decoding: the tiny model's greedy answer is
    # nothing but newlines, which would show no text at all.
    page.settings(temperature=0.8, max_tokens=48, system="You are a helpful assistant.", seed=1234)
    page.observe_answer_lengths()
    page.pace_chat_streams()
    page.send("Write a short poem about the sea.")
    assert page.wait_answer(1) == "true"

    # It streamed: the answer was drawn at several lengths before its last one.
    lengths = [n for n in page.answer_lengths() if n > 0]
    assert len(set(lengths)) >= 2, f"the answer appeared in one piece, not streamed: {lengths}"

    # The page sent the system prompt, the settings and the message; the seed makes its answer the API's.
    first = page.chat_bodies[0]
    assert first["stream"] is True and first["temperature"] == 0.8 and first["max_tokens"] == 48
    assert first["seed"] == 1234
    assert first["model"] == model_id
    assert first["messages"] == [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Write a short poem about the sea."},
    ]
    answer = page.history()[1]["content"]
    assert answer.strip(), f"no visible answer: {answer!r}"
    assert answer == server.complete(first)
    # What is shown is exactly the safe rendering of that text.
    shown = page.page.inner_html(".msg.assistant .msg-body")
    assert shown == page.page.evaluate("t => window.sftforgeChat.renderMarkdown(t)", answer)

    # Second turn, in Chinese: the whole history goes with it.
    page.send(CHINESE)
    assert page.wait_answer(2) == "true"
    second = page.chat_bodies[1]
    assert second["messages"] == [
        *first["messages"],
        {"role": "assistant", "content": answer},
        {"role": "user", "content": CHINESE},
    ]
    assert page.history()[3]["content"] == server.complete(second)
    user_rows = page.page.locator(".msg.user .msg-body").all_text_contents()
    assert user_rows == ["Write a short poem about the sea.", CHINESE]
    assert CHINESE in page.page.inner_text("#messages")

    # The CJK text is drawn with a real CJK font, not as missing-glyph boxes.
    assert page.page.evaluate(GLYPHS_DIFFER, "你"), "Chinese characters are drawn as missing-glyph boxes"

    page.screenshot(tmp_path / "web-chat.png")
    page.screenshot(ARTIFACTS / "web-chat.png")
    narrow = chat_page(width=390, height=760)
    narrow.wait_model_name()
    assert not narrow.page.is_visible("#settings")  # folded away on a phone, behind the menu button
    narrow.page.click("#toggle-settings")
    assert narrow.page.is_visible("#settings") and narrow.page.is_visible("#system")
    narrow.screenshot(tmp_path / "web-chat-narrow.png")
    narrow.screenshot(ARTIFACTS / "web-chat-narrow.png")
    assert narrow.page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")


def test_stop_then_new_chat(chat_page, server):
    page = chat_page()
    page.wait_model_name()
    # Seed 1 runs this prompt to the full 1000 tokens; that takes the tiny model under a second, too short for
    # a click from outside the page to land reliably, so the page presses Stop itself on the first text drawn.
    page.settings(temperature=1.0, max_tokens=1000, seed=1)
    page.page.evaluate(
        """() => {
            window.__stopSeen = null;
            const box = document.getElementById('messages');
            const observer = new MutationObserver(() => {
                const body = box.querySelector('.msg.assistant .msg-body');
                if (body && body.textContent.length > 0) {
                    observer.disconnect();
                    window.__stopSeen = !document.getElementById('stop').hidden;
                    document.getElementById('stop').click();
                }
            });
            observer.observe(box, {childList: true, subtree: true, characterData: true});
        }"""
    )
    page.send("Tell me a very long story.")
    assert page.wait_answer(1) == "stopped"
    assert page.page.evaluate("() => window.__stopSeen") is True  # Stop was shown while it streamed
    assert page.page.locator(".msg.assistant .note").inner_text() == "(stopped)"
    assert page.page.is_visible("#send") and not page.page.is_visible("#stop")
    partial = page.history()[1]["content"]
    shown = page.page.inner_html(".msg.assistant .msg-body")
    time.sleep(1.0)
    assert page.history()[1]["content"] == partial  # nothing arrives after Stop
    assert page.page.inner_html(".msg.assistant .msg-body") == shown
    full = server.complete(page.chat_bodies[0])
    assert partial and full.startswith(partial) and len(partial) < len(full) // 2, (len(partial), len(full))

    # The server is free again (it stopped generating for the closed connection) and answers the next turn.
    page.settings(temperature=0, max_tokens=8)
    page.send("And now a short one.")
    assert page.wait_answer(2, timeout_ms=60_000) == "true"
    assert len(page.chat_bodies[1]["messages"]) == 3  # user, the stopped (partial) answer, user

    page.page.click("#new-chat")
    assert page.page.locator(".msg").count() == 0
    assert page.page.is_visible("#empty")
    assert page.history() == []
    page.send("Hello again.")
    assert page.wait_answer(1) == "true"
    assert page.chat_bodies[-1]["messages"] == [{"role": "user", "content": "Hello again."}]


XSS = [
    "<img src=x onerror=window.__xss=1>",
    "<script>window.__xss=1</script>",
    '<iframe src="javascript:window.__xss=1"></iframe>',
    "<svg onload=window.__xss=1><circle/></svg>",
    "[click](javascript:window.__xss=1)",
    "[click](JaVaScRiPt:window.__xss=1)",
    '[x](http://a.example/"onmouseover="window.__xss=1)',
    '[x](https://a.example/" onclick="window.__xss=1)',
    "**<b onmouseover=window.__xss=1>bold</b>**",
    "`<img src=x onerror=window.__xss=1>`",
    "```html\n<script>window.__xss=1</script>\n```",
    '```"><img src=x onerror=window.__xss=1>\ncode\n```',
    "# <img src=x onerror=window.__xss=1>",
    "- <a href=javascript:window.__xss=1>list</a>",
    "1. <style>body{display:none}</style>",
    "&lt;img src=x onerror=window.__xss=1&gt;",
    "\u0000" + "0\u0000<img src=x onerror=window.__xss=1>",
    "<a href='javascript:window.__xss=1'>x</a> <form action=javascript:1><button>go</button></form>",
    "[ok](https://example.com/a?b=1&c=<2>) *it* **bold** `code`",
]


def test_markdown_renderer_never_injects_html(chat_page):
    page = chat_page()
    found = page.page.evaluate(
        """cases => cases.map(src => {
            const box = document.createElement('div');
            box.innerHTML = window.sftforgeChat.renderMarkdown(src);
            document.body.appendChild(box);
            const allowed = new Set(['P', 'BR', 'STRONG', 'EM', 'CODE', 'PRE', 'UL', 'OL', 'LI', 'A',
                                     'H1', 'H2', 'H3', 'H4', 'H5', 'H6']);
            const bad = [];
            for (const el of box.querySelectorAll('*')) {
                if (!allowed.has(el.tagName)) bad.push('tag ' + el.tagName);
                for (const a of el.attributes) {
                    if (a.name.startsWith('on')) bad.push('handler ' + a.name);
                    if (!['href', 'class', 'rel', 'target', 'start'].includes(a.name)) bad.push('attr ' + a.name);
                    if (/javascript:/i.test(a.value)) bad.push('javascript: in ' + a.name);
                }
                if (el.tagName === 'A') {
                    if (!/^https?:\\/\\//i.test(el.getAttribute('href'))) bad.push('href ' + el.getAttribute('href'));
                    if (el.rel !== 'noopener noreferrer') bad.push('rel ' + el.rel);
                }
            }
            const text = box.textContent;
            box.remove();
            return {src, bad, text};
        })""",
        XSS,
    )
    for case in found:
        assert case["bad"] == [], case
    # The would-be tags are shown as text, not dropped.
    assert "<img src=x onerror=window.__xss=1>" in found[0]["text"]
    assert "<script>window.__xss=1</script>" in found[10]["text"]
    page.page.wait_for_timeout(300)  # any onerror/onload would have fired by now
    assert page.page.evaluate("() => window.__xss") is None

    # The subset itself works.
    html = page.page.evaluate(
        "s => window.sftforgeChat.renderMarkdown(s)",
        "# Title\n## C# ##\n\nSome **bold**, *italic* and `x < y`.\n\n```python\nif a < b:\n    pass\n```\n"
        "- one\n- two\n\n1. first\n2. second\n\nsee [docs](https://example.com/?a=1&b=2)\nnext line",
    )
    assert "<h1>Title</h1>\n<h2>C#</h2>" in html
    assert "<strong>bold</strong>" in html and "<em>italic</em>" in html and "<code>x &lt; y</code>" in html
    assert '<pre><code class="language-python">if a &lt; b:\n    pass</code></pre>' in html
    assert "<ul><li>one</li><li>two</li></ul>" in html and "<ol><li>first</li><li>second</li></ol>" in html
    assert (
        '<a href="https://example.com/?a=1&amp;b=2" target="_blank" rel="noopener noreferrer">docs</a><br>next line'
        in html
    )


def test_model_output_and_user_text_are_shown_as_text(chat_page, server):
    """End to end through the streaming path: a hostile 'model' (the route answers for the server) and a user
    who types HTML. Chunks split in the middle of lines, of JSON and of a multi-byte character."""
    page = chat_page()
    page.wait_model_name()
    evil = "Hi <img src=x onerror=window.__xss=1> 世界 [x](javascript:window.__xss=1) **ok**"
    events = [
        json.dumps(
            {
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {"content": evil[i : i + 7]}}],
            }
        )
        for i in range(0, len(evil), 7)
    ]
    body = ("".join(f"data: {e}\n\n" for e in events) + "data: [DONE]\n\n").encode()
    page.page.evaluate(
        """body => {
            // Split the SSE bytes at awkward places, inside lines and inside UTF-8 characters.
            const bytes = new Uint8Array(body);
            const parts = [];
            for (let i = 0; i < bytes.length; i += 5) parts.push(bytes.slice(i, i + 5));
            window.__splitStream = () => new ReadableStream({
                start(c) { for (const p of parts) c.enqueue(p); c.close(); }
            });
        }""",
        list(body),
    )
    got = page.page.evaluate(
        """async () => {
            const out = [];
            await window.sftforgeChat.readSSE(window.__splitStream(), (batch, done) => out.push(...batch));
            return out;
        }"""
    )
    assert got == events

    page.page.route(
        "**/v1/chat/completions",
        lambda route: route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=body),
    )
    page.send("<script>window.__xss=1</script> 你好")
    assert page.wait_answer(1) == "true"
    assert page.page.inner_text(".msg.user .msg-body") == "<script>window.__xss=1</script> 你好"
    assert page.history()[1]["content"] == evil
    assert page.page.locator("#messages img, #messages script, #messages a").count() == 0
    assert "<img src=x onerror=window.__xss=1>" in page.page.inner_text(".msg.assistant .msg-body")
    page.page.wait_for_timeout(300)
    assert page.page.evaluate("() => window.__xss") is None


def test_api_key_and_server_errors_inline(chat_page, tiny_model_dir, tmp_path):
    """A server started with --api_key: the page says a key is needed, shows the server's error message inline,
    and works once the key is entered (kept in localStorage)."""
    srv = Server(tiny_model_dir, tmp_path / "serve-key.log", "--api_key", "sekrit-key")
    try:
        page = chat_page(srv.url)
        assert "API key" in page.wait_model_name()
        page.settings(temperature=0, max_tokens=6)
        page.send("hello")
        page.wait_answer(1)
        error = page.page.inner_text(".msg.assistant .error")
        unauthorized = httpx.post(srv.url + "/v1/chat/completions", json=page.chat_bodies[0], timeout=30)
        assert unauthorized.status_code == 401
        assert error == unauthorized.json()["error"]["message"]
        assert page.history() == []  # the failed turn is not part of the conversation
        assert page.page.input_value("#input") == "hello"  # given back to resend

        page.page.fill("#api-key", "sekrit-key")
        page.page.dispatch_event("#api-key", "change")
        model_id = httpx.get(
            srv.url + "/v1/models", headers={"Authorization": "Bearer sekrit-key"}, timeout=10
        ).json()["data"][0]["id"]
        page.page.wait_for_function(
            "id => document.getElementById('model-name').textContent === id", arg=model_id
        )
        page.page.click("#send")
        assert page.wait_answer(2) == "true"
        assert page.history()[0] == {"role": "user", "content": "hello"}
        assert page.page.evaluate("() => localStorage.getItem('sftforge.api_key')") == "sekrit-key"

        # A request the server rejects (here: a nonsense max_tokens slipped past the page): its message, inline.
        page.page.route(
            "**/v1/chat/completions",
            lambda route: route.continue_(post_data=json.dumps({**page.chat_bodies[-1], "max_tokens": -5})),
        )
        page.send("again")
        page.wait_answer(3)
        rejected = httpx.post(
            srv.url + "/v1/chat/completions",
            json={**page.chat_bodies[-1], "max_tokens": -5},
            headers={"Authorization": "Bearer sekrit-key"},
            timeout=30,
        )
        assert 400 <= rejected.status_code < 500
        assert page.page.inner_text(".msg.assistant:last-child .error") == rejected.json()["error"]["message"]
    finally:
        srv.stop()
