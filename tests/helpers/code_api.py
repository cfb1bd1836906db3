"""Raw HTTP against execd's `/code` routes: a cell's whole stream, one in the background,
and the parts of a stream the tests look at. Every stream is checked against upstream's
framing (`frames.split_frames`)."""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx

from tests.helpers.frames import split_frames


def stream(base: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """POST /code and read the whole stream (which must be a 200 event stream)."""
    with httpx.Client(timeout=300) as client, \
            client.stream("POST", f"{base}/code", json=body) as response:
        raw = b"".join(response.iter_raw())
    assert response.status_code == 200, raw
    assert response.headers["content-type"] == "text/event-stream"
    return split_frames(raw)


def run(base: str, code: str, context_id: str | None = None,
        language: str | None = "python") -> list[dict[str, Any]]:
    context: dict[str, Any] = {}
    if context_id:
        context["id"] = context_id
    if language:
        context["language"] = language
    body: dict[str, Any] = {"code": code}
    if context:
        body["context"] = context
    return [e for e in stream(base, body) if e["type"] != "ping"]


def create(base: str, language: str = "python", **extra: Any) -> str:
    response = httpx.post(f"{base}/code/context", json={"language": language, **extra},
                          timeout=120)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["language"] == language
    return str(body["id"])


def stdout(events: list[dict[str, Any]]) -> str:
    return "".join(e["text"] for e in events if e["type"] == "stdout")


def stderr(events: list[dict[str, Any]]) -> str:
    return "".join(e["text"] for e in events if e["type"] == "stderr")


def results(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e["results"] for e in events if e["type"] == "result"]


def error_of(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    errors = [e["error"] for e in events if e["type"] == "error"]
    return errors[-1] if errors else None


def expect_error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"code", "message"} and body["code"] == code, body
    return str(body["message"])


class Background:
    """A `POST /code` stream read on a thread, for tests that act while a cell runs. It
    returns once the headers arrived: the cell was then handed to the interpreter."""

    def __init__(self, base: str, body: dict[str, Any]):
        self.events: list[dict[str, Any]] = []
        self.raw = b""
        self.status: int | None = None
        self.started = threading.Event()
        self.first = threading.Event()  # the init event was read
        self.thread = threading.Thread(target=self._read, args=(base, body), daemon=True)
        self.thread.start()
        assert self.started.wait(60), "the run never started"
        assert self.status == 200

    def _read(self, base: str, body: dict[str, Any]) -> None:
        with httpx.Client(timeout=300) as client, \
                client.stream("POST", f"{base}/code", json=body) as response:
            self.status = response.status_code
            self.started.set()
            buffer = b""
            for chunk in response.iter_raw():
                self.raw += chunk
                buffer += chunk
                while b"\n\n" in buffer:
                    frame, buffer = buffer.split(b"\n\n", 1)
                    self.events.append(json.loads(frame))
                    self.first.set()

    def init_text(self) -> str:
        assert self.first.wait(60), "no init event"
        return str(self.events[0]["text"])

    def join(self) -> list[dict[str, Any]]:
        self.thread.join(60)
        assert not self.thread.is_alive(), "the stream did not end"
        split_frames(self.raw)
        return [e for e in self.events if e["type"] != "ping"]
