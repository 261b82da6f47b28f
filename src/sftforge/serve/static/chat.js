// sftforge web chat: plain JavaScript, no build step, no external requests.
// Talks to this server's OpenAI-compatible API: GET /v1/models, POST /v1/chat/completions (stream: true).
"use strict";

(function () {
  // ---------------------------------------------------------------------------------------------------------
  // Safe Markdown: ALL HTML is escaped first; only then is a small Markdown subset turned into tags this code
  // writes itself. Model output can never add its own elements, attributes or javascript: links.

  const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

  function escapeHtml(text) {
    return String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);
  }

  // Placeholders for already-rendered inline pieces; \u0000 is stripped from the input so it cannot forge one.
  function renderInline(escaped) {
    const held = [];
    const hold = (html) => "\u0000" + (held.push(html) - 1) + "\u0000";
    let s = escaped;
    // Inline code first: nothing inside it is formatted.
    s = s.replace(/(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/g, (m, ticks, code) => hold("<code>" + code.trim() + "</code>"));
    // Links only for http(s) URLs. The text is already escaped, so the URL cannot contain " < > or '.
    s = s.replace(/\[([^\]\n]+)\]\((https?:\/\/[^\s)]+)\)/gi, (m, label, url) =>
      hold('<a href="' + url + '" target="_blank" rel="noopener noreferrer">' + label + "</a>"));
    s = s.replace(/\*\*(?=\S)([\s\S]*?\S)\*\*/g, "<strong>$1</strong>");
    s = s.replace(/(^|[^_\w])__(?=\S)([\s\S]*?\S)__(?![_\w])/g, "$1<strong>$2</strong>"); // not inside words
    s = s.replace(/(^|[^*\w])\*(?=\S)([^*]*?\S)\*(?![*\w])/g, "$1<em>$2</em>");
    s = s.replace(/(^|[^_\w])_(?=\S)([^_]*?\S)_(?![_\w])/g, "$1<em>$2</em>");
    // Placeholders may nest (a link label with inline code): resolve until none is left.
    for (let i = 0; i < 3 && s.indexOf("\u0000") >= 0; i++) {
      s = s.replace(/\u0000(\d+)\u0000/g, (m, n) => held[Number(n)]);
    }
    return s;
  }

  const FENCE = /^\s{0,3}(`{3,}|~{3,})\s*([\w+#.-]*)[^`]*$/;
  const HEADING = /^\s{0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$/; // "# C#" keeps its #; "## Title ##" loses the closing ##
  const BULLET = /^\s{0,3}[-*+]\s+(.*)$/;
  const NUMBERED = /^\s{0,3}(\d{1,9})[.)]\s+(.*)$/;

  function renderMarkdown(source) {
    const lines = escapeHtml(String(source).replace(/\u0000/g, "").replace(/\r\n?/g, "\n")).split("\n");
    const out = [];
    let para = [];
    let list = null; // {tag, items: []}

    const flushPara = () => {
      if (para.length) out.push("<p>" + para.map(renderInline).join("<br>") + "</p>");
      para = [];
    };
    const flushList = () => {
      if (list) {
        const start = list.tag === "ol" && list.start !== 1 ? ' start="' + list.start + '"' : "";
        out.push("<" + list.tag + start + ">" + list.items.map((it) => "<li>" + renderInline(it) + "</li>").join("") +
          "</" + list.tag + ">");
      }
      list = null;
    };
    const flush = () => { flushPara(); flushList(); };

    for (let i = 0; i < lines.length; i++) {
      const line = lines[i];
      const fence = FENCE.exec(line);
      if (fence) {
        flush();
        const marker = fence[1];
        const code = [];
        i++;
        // An unclosed fence (still streaming) runs to the end of the text.
        while (i < lines.length && !(lines[i].trim().startsWith(marker) && /^[`~]+$/.test(lines[i].trim()))) {
          code.push(lines[i]);
          i++;
        }
        const lang = fence[2] ? ' class="language-' + fence[2] + '"' : "";
        out.push("<pre><code" + lang + ">" + code.join("\n") + "</code></pre>");
        continue;
      }
      if (!line.trim()) { flush(); continue; }
      const heading = HEADING.exec(line);
      if (heading) {
        flush();
        const level = heading[1].length;
        out.push("<h" + level + ">" + renderInline(heading[2]) + "</h" + level + ">");
        continue;
      }
      const bullet = BULLET.exec(line);
      const numbered = bullet ? null : NUMBERED.exec(line);
      if (bullet || numbered) {
        flushPara();
        const tag = bullet ? "ul" : "ol";
        if (!list || list.tag !== tag) {
          flushList();
          list = { tag: tag, items: [], start: numbered ? parseInt(numbered[1], 10) : 1 };
        }
        list.items.push(bullet ? bullet[1] : numbered[2]);
        continue;
      }
      if (list && /^\s+\S/.test(line)) { // an indented continuation of the last list item
        list.items[list.items.length - 1] += " " + line.trim();
        continue;
      }
      flushList();
      para.push(line);
    }
    flush();
    return out.join("\n");
  }

  // ---------------------------------------------------------------------------------------------------------
  // Server-Sent Events: reads `data:` lines from a fetch body, across arbitrary chunk boundaries.

  async function readSSE(body, onData) {
    const reader = body.getReader();
    const decoder = new TextDecoder("utf-8");
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = done ? "" : lines.pop(); // the last piece may be an incomplete line
      const batch = [];
      for (const line of lines) {
        if (!line.startsWith("data:")) continue; // comments (": ping"), event:, id:, blank separators
        const data = line.slice(5).replace(/^ /, "");
        if (data === "[DONE]") { onData(batch, true); return; }
        batch.push(data);
      }
      if (batch.length) onData(batch, false);
      if (done) return;
    }
  }

  // ---------------------------------------------------------------------------------------------------------
  // The page.

  const $ = (id) => document.getElementById(id);
  const store = {
    get(key, fallback) { try { const v = localStorage.getItem(key); return v === null ? fallback : v; } catch (e) { return fallback; } },
    set(key, value) { try { if (value === "" || value === null) localStorage.removeItem(key); else localStorage.setItem(key, value); } catch (e) { /* private mode */ } },
  };

  const state = { history: [], model: null, controller: null, busy: false };

  function headers() {
    const h = { "Content-Type": "application/json" };
    const key = $("api-key").value.trim();
    if (key) h["Authorization"] = "Bearer " + key;
    return h;
  }

  async function errorMessage(response) {
    let text = "";
    try { text = await response.text(); } catch (e) { /* ignore */ }
    try {
      const body = JSON.parse(text);
      if (body && body.error && body.error.message) return body.error.message;
      if (body && body.detail) return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    } catch (e) { /* not JSON */ }
    return "HTTP " + response.status + (text ? ": " + text.slice(0, 300) : "");
  }

  async function loadModel() {
    const el = $("model-name");
    try {
      const response = await fetch("/v1/models", { headers: headers() });
      if (!response.ok) {
        el.textContent = response.status === 401 ? "API key needed (settings)" : await errorMessage(response);
        el.classList.add("error");
        state.model = null;
        return;
      }
      const body = await response.json();
      const first = body && body.data && body.data[0];
      state.model = first ? first.id : null;
      el.textContent = state.model || "(no model)";
      el.title = state.model || "";
      el.classList.remove("error");
    } catch (e) {
      el.textContent = "server unreachable";
      el.classList.add("error");
    }
  }

  function scrolledToBottom() {
    const m = $("messages");
    return m.scrollHeight - m.scrollTop - m.clientHeight < 40;
  }

  function scrollDown(force) {
    const m = $("messages");
    if (force || scrolledToBottom()) m.scrollTop = m.scrollHeight;
  }

  function addMessage(role, text) {
    $("empty").hidden = true;
    const row = document.createElement("div");
    row.className = "msg " + role;
    const body = document.createElement("div");
    body.className = "msg-body";
    if (role === "user") body.textContent = text; // shown exactly as typed
    else body.innerHTML = renderMarkdown(text); // escaped, then the Markdown subset
    row.appendChild(body);
    $("messages").appendChild(row);
    scrollDown(true);
    return row;
  }

  function addNote(row, text, cls) {
    const note = document.createElement("div");
    note.className = cls || "note";
    note.textContent = text;
    row.appendChild(note);
    return note;
  }

  function setBusy(busy) {
    state.busy = busy;
    $("send").hidden = busy;
    $("stop").hidden = !busy;
    $("send").disabled = busy;
  }

  async function send() {
    const input = $("input");
    const text = input.value;
    if (state.busy || !text.trim()) return;
    if (!state.model) await loadModel();
    input.value = "";
    autoGrow();

    const userRow = addMessage("user", text);
    const messages = [];
    const system = $("system").value.trim();
    if (system) messages.push({ role: "system", content: system });
    messages.push(...state.history, { role: "user", content: text });

    const temperature = parseFloat($("temperature").value);
    const maxTokens = parseInt($("max-tokens").value, 10);
    const request = { messages: messages, stream: true };
    if (state.model) request.model = state.model;
    if (!Number.isNaN(temperature)) request.temperature = temperature;
    if (!Number.isNaN(maxTokens) && maxTokens > 0) request.max_tokens = maxTokens;
    const seed = parseInt($("seed").value, 10);
    if (!Number.isNaN(seed)) request.seed = seed;

    const controller = new AbortController();
    state.controller = controller;
    setBusy(true);
    const row = addMessage("assistant", "");
    row.classList.add("streaming");
    const body = row.querySelector(".msg-body");
    let answer = "";
    let failure = null;
    let finished = false;
    let stopped = false;
    try {
      const response = await fetch("/v1/chat/completions", {
        method: "POST", headers: headers(), body: JSON.stringify(request), signal: controller.signal,
      });
      if (!response.ok) {
        failure = await errorMessage(response);
        if (response.status === 401) loadModel();
      } else {
        await readSSE(response.body, (batch, done) => {
          for (const data of batch) {
            let chunk;
            try { chunk = JSON.parse(data); } catch (e) { continue; }
            if (chunk.error) { failure = chunk.error.message || JSON.stringify(chunk.error); continue; }
            const choice = chunk.choices && chunk.choices[0];
            const piece = choice && choice.delta && choice.delta.content;
            if (piece) answer += piece;
          }
          if (done) finished = true;
          const follow = scrolledToBottom();
          body.innerHTML = renderMarkdown(answer);
          scrollDown(follow);
        });
        finished = true;
      }
    } catch (e) {
      if (e.name === "AbortError") stopped = true;
      else failure = "Request failed: " + (e.message || e);
    } finally {
      row.classList.remove("streaming");
      if (state.controller === controller) state.controller = null;
      setBusy(false);
    }

    if (!answer && (failure || stopped)) {
      // The turn did not happen: keep it on screen but out of the history, and give the text back.
      row.classList.add("error-row");
      body.remove();
      addNote(row, failure || "(stopped before any text)", failure ? "error" : "note");
      userRow.classList.add("failed");
      if (!input.value) input.value = text;
      autoGrow();
    } else {
      if (stopped) addNote(row, "(stopped)");
      if (failure) addNote(row, failure, "error");
      state.history.push({ role: "user", content: text }, { role: "assistant", content: answer });
    }
    row.dataset.done = finished ? "true" : "stopped";
    scrollDown(false);
    input.focus();
  }

  function stop() {
    if (state.controller) state.controller.abort();
  }

  function newChat() {
    stop();
    state.history = [];
    const m = $("messages");
    for (const row of Array.from(m.querySelectorAll(".msg"))) row.remove();
    $("empty").hidden = false;
    $("input").value = "";
    autoGrow();
    $("input").focus();
  }

  function autoGrow() {
    const input = $("input");
    input.style.height = "auto";
    input.style.height = Math.min(input.scrollHeight + 2, 200) + "px";
  }

  function init() {
    // Settings persist in this browser only.
    const fields = [["system", "sftforge.system"], ["temperature", "sftforge.temperature"],
      ["max-tokens", "sftforge.max_tokens"], ["seed", "sftforge.seed"], ["api-key", "sftforge.api_key"]];
    for (const [id, key] of fields) {
      const el = $(id);
      el.value = store.get(key, el.value);
      el.addEventListener("change", () => store.set(key, el.value));
    }
    const showTemperature = () => { $("temperature-value").textContent = $("temperature").value; };
    $("temperature").addEventListener("input", showTemperature);
    showTemperature();
    $("api-key").addEventListener("change", loadModel);

    $("composer").addEventListener("submit", (e) => { e.preventDefault(); send(); });
    $("input").addEventListener("keydown", (e) => {
      // Enter sends; Shift+Enter is a new line; Enter that confirms an IME candidate (Chinese input) does not send.
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
        e.preventDefault();
        send();
      }
    });
    $("input").addEventListener("input", autoGrow);
    $("stop").addEventListener("click", stop);
    $("new-chat").addEventListener("click", newChat);
    $("toggle-settings").addEventListener("click", () => {
      const open = $("settings").classList.toggle("open");
      $("toggle-settings").setAttribute("aria-expanded", String(open));
    });
    loadModel();
    $("input").focus();
  }

  // For tests and the curious (the browser console): the pure pieces of this page.
  window.sftforgeChat = { escapeHtml: escapeHtml, renderMarkdown: renderMarkdown, readSSE: readSSE, state: state };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
