"""A client of execd's PTY WebSocket for tests and the benchmark, on `websockets`' own
synchronous client: frames in, terminal output collected, control frames out."""

from __future__ import annotations

import json
import struct
import time
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect


class PtyClient:
    def __init__(self, url: str, *, additional_headers: dict[str, str] | None = None,
                 **query: Any):
        params = "&".join(f"{k}={v}" for k, v in query.items())
        self.ws: ClientConnection = connect(url + (f"?{params}" if params else ""),
                                            additional_headers=additional_headers,
                                            open_timeout=30, max_size=None, legacy=True)
        self.output = bytearray()  # 0x01 bytes (stdout in pipe mode)
        self.errors = bytearray()  # 0x02 bytes (pipe mode)
        self.replay: tuple[int, bytes] | None = None
        self.events: list[dict[str, Any]] = []
        self.closed: tuple[int, str] | None = None

    def _take(self, timeout: float) -> bool:
        """Read one frame; False when the connection is closed."""
        try:
            frame = self.ws.recv(timeout=timeout)
        except TimeoutError:
            return True
        except ConnectionClosed as closed:
            received = closed.rcvd
            self.closed = (received.code, received.reason) if received else (1006, "")
            return False
        if isinstance(frame, bytes):
            if frame[:1] == b"\x01":
                self.output += frame[1:]
            elif frame[:1] == b"\x02":
                self.errors += frame[1:]
            elif frame[:1] == b"\x03":
                self.replay = (struct.unpack(">q", frame[1:9])[0], frame[9:])
        else:
            self.events.append(json.loads(frame))
        return True

    def wait_for(self, needle: bytes, timeout: float = 20) -> bytes:
        """Read until the output holds `needle`; the output so far."""
        deadline = time.monotonic() + timeout
        while needle not in self.output:
            if time.monotonic() > deadline or not self._take(0.2):
                raise AssertionError(f"{needle!r} never came; output: {bytes(self.output)!r}, "
                                     f"events: {self.events}, closed: {self.closed}")
        return bytes(self.output)

    def wait_event(self, kind: str, timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event.get("type") == kind:
                    return event
            if time.monotonic() > deadline or not self._take(0.2):
                raise AssertionError(f"no {kind} event; events: {self.events}, output: "
                                     f"{bytes(self.output)!r}, closed: {self.closed}")

    def wait_closed(self, timeout: float = 20) -> tuple[int, str]:
        deadline = time.monotonic() + timeout
        while self._take(0.2):
            if time.monotonic() > deadline:
                raise AssertionError("the server never closed the connection")
        assert self.closed is not None
        return self.closed

    def type(self, data: bytes) -> None:
        self.ws.send(b"\x00" + data)

    def send(self, body: dict[str, Any]) -> None:
        self.ws.send(json.dumps(body))

    def close(self) -> None:
        self.ws.close()
