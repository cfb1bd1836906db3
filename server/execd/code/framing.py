"""Telling an interpreter's own messages apart from what the user's code prints.

A context's interpreter (see `drivers/`) shares its stdout and stderr with the code it runs.
The user's output passes through untouched; the driver's messages are whole lines
`\\x1e<token>|<json>\\n`, where the token is random per interpreter, so no ordinary output can
be mistaken for one. `FrameParser` splits one pipe back into text (decoded as UTF-8,
incrementally, so a character split across reads stays whole) and message objects, in the
order they were written.
"""

from __future__ import annotations

import codecs
import json
import logging
from typing import Any

log = logging.getLogger("opensandbox.execd.code")

MARK_START = b"\x1e"


def marker(token: str) -> bytes:
    return MARK_START + token.encode("ascii") + b"|"


class FrameParser:
    def __init__(self, token: str):
        self.mark = marker(token)
        self._buffer = bytearray()
        self._in_message = False  # the buffer starts with a marker whose line is incomplete
        self._scanned = 0  # how far the buffer was searched for that line's end
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def feed(self, data: bytes) -> list[str | dict[str, Any]]:
        """Text and messages found in `data` (plus what earlier calls held back)."""
        items: list[str | dict[str, Any]] = []
        buffer = self._buffer
        buffer += data
        while buffer:
            if self._in_message:
                end = buffer.find(b"\n", max(self._scanned, len(self.mark)))
                if end < 0:
                    self._scanned = len(buffer)
                    break
                payload = bytes(buffer[len(self.mark):end])
                del buffer[:end + 1]
                self._in_message = False
                self._scanned = 0
                message = _parse(payload)
                if message is not None:
                    items.append(message)
                continue
            start = buffer.find(self.mark)
            if start < 0:
                keep = self._possible_marker_start(buffer)
                self._text(items, buffer, len(buffer) - keep)
                break
            self._text(items, buffer, start)
            self._in_message = True
        return items

    def finish(self) -> str:
        """At end of stream: whatever text is still held back."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        self._in_message = False
        return self._decoder.decode(rest, final=True)

    def _text(self, items: list[str | dict[str, Any]], buffer: bytearray, size: int) -> None:
        if size <= 0:
            return
        text = self._decoder.decode(bytes(buffer[:size]))
        del buffer[:size]
        if text:
            if items and isinstance(items[-1], str):
                items[-1] += text
            else:
                items.append(text)

    def _possible_marker_start(self, buffer: bytearray) -> int:
        """How many bytes at the end of `buffer` could be the start of a marker."""
        start = buffer.rfind(MARK_START, max(0, len(buffer) - len(self.mark) + 1))
        if start >= 0 and self.mark.startswith(bytes(buffer[start:])):
            return len(buffer) - start
        return 0


def _parse(payload: bytes) -> dict[str, Any] | None:
    try:
        message = json.loads(payload)
    except ValueError:
        log.warning("dropping a malformed interpreter message: %r", payload[:200])
        return None
    return message if isinstance(message, dict) else None
