"""execd's streamed events: the framing and the streaming response, shared by `POST /command`
and (later) `POST /code`.

Upstream calls it SSE but it is not: each event is one compact JSON object followed by a
blank line (`{...}\\n\\n`), with no `data:` prefix. Keys come in upstream's order (type,
text, execution_count, execution_time, timestamp, results, error); zero and empty values
are left out, except `timestamp` (Unix ms, always there) and the three keys of `error`
(`traceback` always a list, because the Python SDK 0.1.4 drops an event whose traceback is
null). Both SDKs split the body on newlines and parse each line as one JSON object, so a
text field must never hold a raw newline; JSON escaping sees to that.

`EventStreamResponse` sends a stream of events with upstream's headers, adds the keep-alive
`ping` (at once after the first event, `init`, then every 3 s), and stops reading its
source when the client goes away: the source decides what that means (a command keeps
running; only the stream ends). When the server stops, an open stream ends at once with
an `error` event (`ServerStopping`) as its terminal event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from opensandbox_emulator.server.clock import Clock, epoch_ms
from opensandbox_emulator.server.shutdown import MESSAGE as SHUTDOWN_MESSAGE
from opensandbox_emulator.server.shutdown import Shutdown, shutdown_of

PING_INTERVAL_SECONDS = 3.0

# The C string encoder behind `json.dumps(..., ensure_ascii=False)`: escapes quotes,
# backslashes and control characters, keeps other UTF-8 as it is (as Go does).
_encode_string = json.encoder.encode_basestring  # type: ignore[attr-defined]

STREAM_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"connection", b"keep-alive"),
    (b"x-accel-buffering", b"no"),
]


@dataclass(frozen=True, slots=True)
class EventError:
    """The `error` object of an event: all three keys are always sent."""

    ename: str
    evalue: str
    traceback: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class Event:
    type: str
    timestamp: int
    text: str = ""
    execution_count: int = 0
    execution_time: int = 0
    results: Mapping[str, Any] | None = None
    error: EventError | None = None

    def to_dict(self) -> dict[str, Any]:
        """The wire object, keys in upstream's order, zero and empty values left out."""
        body: dict[str, Any] = {"type": self.type}
        if self.text:
            body["text"] = self.text
        if self.execution_count:
            body["execution_count"] = self.execution_count
        if self.execution_time:
            body["execution_time"] = self.execution_time
        body["timestamp"] = self.timestamp
        if self.results:
            body["results"] = dict(self.results)
        if self.error is not None:
            body["error"] = {"ename": self.error.ename, "evalue": self.error.evalue,
                             "traceback": list(self.error.traceback)}
        return body

    def encode(self) -> bytes:
        """One frame: compact JSON and `\\n\\n`."""
        return encode_object(self.to_dict())


def encode_object(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def encode_text_events(event_type: str, texts: Iterable[bytes], timestamp: int) -> bytes:
    """Frames for many `stdout`/`stderr`-style events at once (the hot path of a command
    that prints a lot): `{"type":…,"text":…,"timestamp":…}\\n\\n` for each non-empty text.
    Bytes that are not UTF-8 become U+FFFD, as Go's encoder does."""
    lines = [text for text in texts if text]
    if not lines:
        return b""
    head = '{"type":' + _encode_string(event_type) + ',"text":'
    tail = f',"timestamp":{timestamp}}}\n\n'
    if not b"\n".join(lines).translate(None, _PLAIN_BYTES):
        # Plain ASCII with nothing to escape (most output): join the bytes as they are.
        open_quote, close_quote = (head + '"').encode(), ('"' + tail).encode()
        return open_quote + (close_quote + open_quote).join(lines) + close_quote
    return "".join(
        head + _encode_string(text.decode("utf-8", "replace")) + tail for text in lines
    ).encode()


def encode_text_lines(event_type: str, block: bytes, timestamp: int, *,
                      held: bytes = b"", end: int | None = None) -> bytes:
    """The frames of `encode_text_events(event_type, lines, timestamp)` for the lines of
    `held + block[:end]` (`end` defaults to the whole block), without joining the two
    first: one event per non-empty line. Plain ASCII lines ended by `\\n` (most output) are
    framed around the bytes as they are, with no bytes object per line; anything else
    takes the line-by-line way."""
    end = len(block) if end is None else end
    if not held and not end:
        return b""
    head = ('{"type":' + _encode_string(event_type) + ',"text":"').encode()
    tail = f'","timestamp":{timestamp}}}\n\n'.encode()
    framed = frame_plain_lines(head, tail, held, block, end)
    if framed is not None:
        return framed
    return encode_text_events(event_type, _joined(held, block, end).splitlines(), timestamp)


def _frame_plain_lines(head: bytes, tail: bytes, held: bytes, block: bytes,
                       end: int) -> bytes | None:
    """`head + line + tail` for each non-empty line of `held + block[:end]`, or None if
    a byte there needs escaping or is not ASCII: one `replace` over the whole text. The C
    extension `_framing` does the same without the joins and copies (see setup.py)."""
    text = _joined(held, block, end)
    if not text or text.translate(None, _PLAIN_BYTES):
        return None if text else b""
    text = _EMPTY_LINE.sub(b"\n", text).strip(b"\n")
    if not text:
        return b""
    return b"".join((head, text.replace(b"\n", tail + head), tail))


def _joined(held: bytes, block: bytes, end: int) -> bytes:
    """`held + block[:end]`, without a copy when it is the block as it is."""
    return held + block[:end] if held or end < len(block) else block


try:  # built by setup.py where a C compiler is at hand; optional, the same bytes
    from opensandbox_emulator.server.execd._framing import frame_plain_lines
except ImportError:  # pragma: no cover - depends on how the package was installed
    frame_plain_lines = _frame_plain_lines

# Bytes that neither JSON escaping nor UTF-8 decoding changes, plus the `\n` that ends
# lines (deleting them leaves exactly the bytes that need care).
_PLAIN_BYTES = bytes(b for b in range(0x20, 0x7F) if b not in b'"\\') + b"\n"
_EMPTY_LINE = re.compile(rb"\n\n+")


# --- the events execd sends --------------------------------------------------------------


def init_event(execution_id: str, timestamp: int) -> Event:
    return Event("init", timestamp, text=execution_id)


def ping_event(timestamp: int) -> Event:
    return Event("ping", timestamp, text="pong")


def complete_event(execution_time_ms: int, timestamp: int) -> Event:
    return Event("execution_complete", timestamp, execution_time=max(execution_time_ms, 0))


def error_event(ename: str, evalue: str, traceback: Sequence[str], timestamp: int) -> Event:
    return Event("error", timestamp, error=EventError(ename, evalue, tuple(traceback)))


STOPPING_ENAME = "ServerStopping"


def stopping_event(timestamp: int) -> Event:
    """The terminal event of a stream that the server's shutdown ends."""
    return error_event(STOPPING_ENAME, f"{SHUTDOWN_MESSAGE}: this stream ends before its "
                       "work did (the sandbox's processes stop with the server)", [], timestamp)


# --- the streaming response ----------------------------------------------------------------


StreamItem = Event | bytes | list[bytes]


class EventSource(Protocol):
    """What `EventStreamResponse` sends: events, already-encoded frames (`bytes`), or a
    list of encoded frames that go out as separate writes (large ones, not joined).

    `aclose()` is called exactly once when the stream ends for any reason (finished,
    client gone, server stopping), even if iteration never started, so the source can
    release what it holds. A source may also have an `ended` attribute that turns true
    once the item it just gave was its last: the stream then ends without asking for
    another."""

    def __aiter__(self) -> AsyncIterator[StreamItem]: ...

    async def aclose(self) -> None: ...


class EventStreamResponse(Response):
    """Streams an `EventSource` with upstream's headers and keep-alive pings.

    The first item must be the `init` event; a `ping` follows it at once and then every
    `ping_interval` seconds until the source ends. Headers go out before the first item,
    so a failure the caller can report as a plain HTTP error must be raised before this
    response is returned. The source is read one item at a time: a client that reads
    slowly slows the source down instead of growing a buffer here.
    """

    def __init__(self, source: EventSource, clock: Clock, *,
                 ping_interval: float = PING_INTERVAL_SECONDS):
        super().__init__(status_code=200)
        self.source = source
        self.clock = clock
        self.ping_interval = ping_interval
        self.raw_headers = list(STREAM_HEADERS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        streaming = asyncio.ensure_future(self._stream(send, shutdown_of(scope)))
        listening = asyncio.ensure_future(_wait_for_disconnect(receive))
        try:
            await asyncio.wait({streaming, listening}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (streaming, listening):
                task.cancel()
            await asyncio.gather(streaming, listening, return_exceptions=True)
            await self.source.aclose()
        if streaming.done() and not streaming.cancelled():
            error = streaming.exception()
            if error is not None and not isinstance(error, OSError):
                raise error

    async def _stream(self, send: Send, shutdown: Shutdown) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": self.raw_headers})
        loop = asyncio.get_running_loop()
        items = aiter(self.source)
        pending: asyncio.Future[Event | bytes] | None = None
        stopping = asyncio.ensure_future(shutdown.wait())
        next_ping: float | None = None  # None until `init` went out
        try:
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(anext(items))
                timeout = None if next_ping is None else max(next_ping - loop.time(), 0)
                done, _ = await asyncio.wait({pending, stopping}, timeout=timeout,
                                             return_when=asyncio.FIRST_COMPLETED)
                if stopping in done and pending not in done:
                    # The server is stopping: end the stream with a terminal event that
                    # says so, rather than have it cut off mid-way.
                    await self._send(send, stopping_event(epoch_ms(self.clock.now())))
                    break
                if not done:
                    await self._send(send, ping_event(epoch_ms(self.clock.now())))
                    next_ping = loop.time() + self.ping_interval
                    continue
                try:
                    item = pending.result()
                except StopAsyncIteration:
                    break
                finally:
                    pending = None
                if next_ping is None:
                    # `init` and the ping that follows it go out in one write.
                    await self._send(send, _encoded(item)
                                     + ping_event(epoch_ms(self.clock.now())).encode())
                    next_ping = loop.time() + self.ping_interval
                else:
                    await self._send(send, item)
                if getattr(self.source, "ended", False):
                    break
        finally:
            stopping.cancel()
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    async def _send(send: Send, item: StreamItem) -> None:
        for body in item if isinstance(item, list) else (_encoded(item),):
            if body:
                await send({"type": "http.response.body", "body": body, "more_body": True})


def _encoded(item: StreamItem) -> bytes:
    if isinstance(item, list):
        return b"".join(item)
    return item.encode() if isinstance(item, Event) else item


async def _wait_for_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
