"""`ExecdSandbox`: the execd state of one sandbox, and the hub that holds them all.

The access layer puts the `ExecdSandbox` a request is for into the ASGI scope; routes get
it with the `current_sandbox` dependency. Its `close` runs when the sandbox is deleted or
expires, so every command and interpreter of the sandbox stops with it.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import HTTPConnection

from opensandbox_emulator.runtimes.base import Runtime
from opensandbox_emulator.server.clock import Clock, IdGenerator
from opensandbox_emulator.server.config import ExecdSection
from opensandbox_emulator.server.execd.commands.budget import FinishedLogs

SCOPE_KEY = "opensandbox.execd"

Closer = Callable[[], Awaitable[None]]


class ExecdSandbox:
    """What execd keeps for one sandbox. Parts (commands, code contexts) register here
    lazily with `part()`, and their `close()` runs when the sandbox goes away."""

    def __init__(self, sandbox_id: str, runtime: Runtime, config: ExecdSection, clock: Clock,
                 ids: IdGenerator, *, finished_logs: FinishedLogs | None = None):
        self.sandbox_id = sandbox_id
        self.runtime = runtime
        self.config = config
        self.clock = clock
        self.ids = ids
        # The server-wide budget for finished commands' logs (the hub's), or one of its own.
        self.finished_logs = (finished_logs if finished_logs is not None
                              else FinishedLogs(config.finished_logs_budget_bytes))
        self.access_token = secrets.token_urlsafe(24) if config.access_token else None
        self._parts: dict[str, Any] = {}

    def part(self, name: str, factory: Callable[[ExecdSandbox], Any]) -> Any:
        """The sandbox's `name` part, made by `factory(self)` on first use."""
        if name not in self._parts:
            self._parts[name] = factory(self)
        return self._parts[name]

    async def close(self) -> None:
        parts, self._parts = self._parts, {}
        for part in parts.values():
            closer = getattr(part, "close", None)
            if closer is not None:
                await closer()


class ExecdHub:
    """The `ExecdSandbox` of every sandbox, made on first access."""

    def __init__(self, runtime: Runtime, config: ExecdSection, clock: Clock, ids: IdGenerator):
        self.runtime = runtime
        self.config = config
        self.clock = clock
        self.ids = ids
        self.finished_logs = FinishedLogs(config.finished_logs_budget_bytes)
        self._sandboxes: dict[str, ExecdSandbox] = {}

    def get(self, sandbox_id: str) -> ExecdSandbox:
        sandbox = self._sandboxes.get(sandbox_id)
        if sandbox is None:
            sandbox = ExecdSandbox(sandbox_id, self.runtime, self.config, self.clock, self.ids,
                                   finished_logs=self.finished_logs)
            self._sandboxes[sandbox_id] = sandbox
        return sandbox

    async def remove(self, sandbox_id: str) -> None:
        sandbox = self._sandboxes.pop(sandbox_id, None)
        if sandbox is not None:
            await sandbox.close()


async def current_sandbox(connection: HTTPConnection) -> ExecdSandbox:
    """FastAPI dependency: the sandbox this execd request was routed to. A coroutine, so
    FastAPI calls it on the event loop: a plain function would cost every request a trip
    through its thread pool."""
    sandbox = connection.scope.get(SCOPE_KEY)
    if not isinstance(sandbox, ExecdSandbox):
        raise RuntimeError("execd request reached the app without a sandbox in its scope")
    return sandbox
