"""Generated ids → text deltas, safe to send as they come: never half a UTF-8 character, never part of a stop
string (the text is cut before it), never part of a marker that starts a tool call (the caller parses those)."""

from __future__ import annotations

from typing import Any


class TextStream:
    def __init__(self, tokenizer: Any, stop: list[str], hold: list[str] | None = None):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.hold = [h for h in (hold or []) if h]  # markers after which nothing more is streamed as text
        self.ids: list[int] = []
        self.text = ""  # everything decoded so far (up to a stop string)
        self.sent = 0  # characters of `text` already handed out
        self.stopped = False  # a stop string was found
        self.held = False  # a held marker was found: the rest is for the caller

    def add(self, token_id: int) -> str:
        """Append one id; the text that can be sent now ('' when nothing is safe yet)."""
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # a character split across tokens: wait for its other bytes
            return ""
        self.text = text
        return self._release(final=False)

    def finish(self) -> str:
        """The rest of the text at the end of the generation."""
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        if not self.stopped:
            for stop in self.stop:
                cut = self.text.find(stop)
                if cut >= 0:
                    self.text, self.stopped = self.text[:cut], True
        if not self.held:
            self.held = any(marker in self.text for marker in self.hold)
        if self.held:
            return ""
        end = len(self.text)
        if not (final or self.stopped):  # keep back what could still become a stop string or a marker
            end -= _longest_partial(self.text, [*self.stop, *self.hold])
        delta = self.text[self.sent : end]
        self.sent = max(self.sent, end)
        return delta


def _longest_partial(text: str, markers: list[str]) -> int:
    """Length of the longest end of `text` that is the beginning of a marker."""
    best = 0
    for marker in markers:
        for n in range(min(len(marker) - 1, len(text)), best, -1):
            if marker.startswith(text[-n:]):
                best = n
                break
    return best
