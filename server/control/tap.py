"""`ControlTap`: the ASGI layer in front of both listeners that writes the journal and
applies fault rules, so both see every door (Lifecycle API, gateway, proxy route) alike.

Requests for the control API itself pass untouched: they are neither journaled nor
faulted, so a rule can never lock a test out of `/_emulator/reset`.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from opensandbox_emulator.server.control.backend import EmulatorControl
from opensandbox_emulator.server.control.faults import FaultRule
from opensandbox_emulator.server.control.journal import JournalEntry
from opensandbox_emulator.server.control.requests import RequestView, is_control, view_of
from opensandbox_emulator.server.errors import send_error

log = logging.getLogger("opensandbox.control")

CREATE_PATHS = ("/sandboxes", "/v1/sandboxes")
MAX_CREATE_BODY = 64 * 1024

# Set in the task of a request whose stream a fault cut: uvicorn then reports that the app
# "returned without completing response", which here is the point, not a bug.
_cut_by_fault: contextvars.ContextVar[bool] = contextvars.ContextVar("cut_by_fault",
                                                                     default=False)


class StreamCut(ConnectionResetError):
    """Raised into the app's `send` where a fault cuts the stream: to the app it looks
    like a client that went away, so it stops streaming (a command keeps running)."""


class ControlTap:
    def __init__(self, app: ASGIApp, control: EmulatorControl, gateway_port: int):
        self.app = app
        self.control = control
        self.gateway_port = gateway_port
        _quiet_uvicorn_about_cuts()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or is_control(scope, self.gateway_port):
            await self.app(scope, receive, send)
            return
        view = view_of(scope, self.gateway_port)
        method = scope.get("method", "GET")
        entry = self.control.journal.begin(
            time=self.control.clock.now(), method=method, view=view,
            query=scope.get("query_string", b"").decode("latin-1"))
        recorder = _Recorder(send, entry, watch_create=(view.via == "lifecycle"
                                                        and method == "POST"
                                                        and view.path in CREATE_PATHS))
        started = self.control.clock.base.monotonic()
        rule = self.control.faults.take(method, view)
        try:
            if rule is None:
                await self.app(scope, receive, recorder)
            else:
                entry.fault = rule.id
                await self._with_fault(rule, view, scope, receive, recorder)
        finally:
            entry.status = recorder.status
            entry.duration_ms = round((self.control.clock.base.monotonic() - started) * 1000, 3)
            recorder.note_created()

    async def _with_fault(self, rule: FaultRule, view: RequestView, scope: Scope,
                          receive: Receive, send: Send) -> None:
        log.info("fault rule %d acts on %s %s (sandbox %s)", rule.id, scope.get("method"),
                 view.path, view.sandbox_id)
        if rule.delay_seconds:
            await asyncio.sleep(rule.delay_seconds)
        error = rule.error()
        if error is not None:
            await send_error(scope, send, error)
        elif rule.cut_after_events is not None and scope["type"] == "http":
            cutter = _Cutter(send, rule.cut_after_events)
            try:
                await self.app(scope, receive, cutter)
            except StreamCut:
                pass  # an app that does not take it for a client gone (a plain response)
            if cutter.cut:
                # Here, not in the cutter: a streaming response sends from a task of its
                # own, whose context uvicorn's log call does not see.
                _cut_by_fault.set(True)
        else:
            await self.app(scope, receive, send)


class _Recorder:
    """Passes messages on, noting the status (and a create's new sandbox id)."""

    def __init__(self, send: Send, entry: JournalEntry, *, watch_create: bool):
        self.send = send
        self.entry = entry
        self.status: int | None = None
        self.watch_create = watch_create
        self.body = bytearray()

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind in ("http.response.start", "websocket.http.response.start"):
            self.status = int(message["status"])
        elif kind == "websocket.accept":
            self.status = 101
        elif (kind == "http.response.body" and self.watch_create
              and len(self.body) < MAX_CREATE_BODY):
            self.body += message.get("body", b"")
        await self.send(message)

    def note_created(self) -> None:
        if not (self.watch_create and self.status == 202):
            return
        try:
            created: Any = json.loads(bytes(self.body))
        except ValueError:
            return
        if isinstance(created, dict) and isinstance(created.get("id"), str):
            self.entry.sandbox_id = created["id"]


class _Cutter:
    """Passes the response on until `events` whole events (`…\\n\\n` frames) went out,
    then stops it: the connection closes with the body unfinished."""

    def __init__(self, send: Send, events: int):
        self.send = send
        self.left = events
        self.cut = False

    async def __call__(self, message: Message) -> None:
        if self.cut:
            raise StreamCut("cut by an emulator fault")
        if message["type"] != "http.response.body":
            await self.send(message)
            return
        body: bytes = message.get("body", b"")
        end = 0
        while self.left > 0:
            found = body.find(b"\n\n", end)
            if found < 0:
                break
            end = found + 2
            self.left -= 1
        if self.left > 0:
            await self.send(message)
            return
        if end:
            await self.send({"type": "http.response.body", "body": body[:end],
                             "more_body": True})
        self.cut = True
        raise StreamCut("cut by an emulator fault")


class _QuietCuts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (_cut_by_fault.get()
                    and "returned without completing response" in record.getMessage())


def _quiet_uvicorn_about_cuts() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietCuts) for f in logger.filters):
        logger.addFilter(_QuietCuts())
