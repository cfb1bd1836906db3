"""The whole app in this process: `create_app` over a real fake runtime, driven with httpx.

No server process, no ports: requests go through `httpx.ASGITransport` into the same app
`python -m opensandbox_emulator` serves, with the same lifespan (the runtime starts, and
every sandbox is destroyed at the end). The clock and the ids are the test's own, so
times and ids in answers are known in advance and time passes only when the test says.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from opensandbox_emulator.runtimes import make_runtime
from opensandbox_emulator.runtimes.base import Runtime
from opensandbox_emulator.server.app import OpenSandboxServer, create_app
from opensandbox_emulator.server.config import Config
from tests.helpers.servers import EXECD_PORT, create_body

START = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


@dataclass
class SetClock:
    """A clock that stands still until the test moves it with `advance`."""

    start: datetime = START
    elapsed: float = 0.0

    def now(self) -> datetime:
        return self.start + timedelta(seconds=self.elapsed)

    def monotonic(self) -> float:
        return self.elapsed

    def advance(self, seconds: float) -> None:
        self.elapsed += seconds


@dataclass
class CountingIds:
    """Ids in upstream's shapes, numbered in the order they are handed out: sandboxes
    `00000000-0000-4000-8000-000000000001`…, commands and contexts 32 hex digits."""

    issued: list[str] = field(default_factory=list)

    def _next(self) -> int:
        return len(self.issued) + 1

    def sandbox_id(self) -> str:
        self.issued.append(f"00000000-0000-4000-8000-{self._next():012d}")
        return self.issued[-1]

    def command_id(self) -> str:
        self.issued.append(f"{self._next():032x}")
        return self.issued[-1]


@dataclass
class InProcess:
    """A running in-process app: `client` speaks to the lifecycle API (and, through the
    server proxy route, to each sandbox's execd: see `execd`)."""

    app: OpenSandboxServer
    client: httpx.AsyncClient
    runtime: Runtime
    clock: SetClock
    ids: CountingIds
    state_dir: Path

    def execd(self, sandbox_id: str) -> str:
        """The path prefix of a sandbox's execd API, through the server proxy."""
        return f"/sandboxes/{sandbox_id}/proxy/{EXECD_PORT}"

    async def new_sandbox(self, **overrides: Any) -> str:
        """A running sandbox made from `create_body(**overrides)`; the app destroys it at
        the end."""
        response = await self.client.post("/v1/sandboxes", json=create_body(**overrides))
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    async def upload(self, sandbox_id: str, path: str, data: bytes = b"",
                     **metadata: Any) -> httpx.Response:
        """`POST /files/upload` of one file to `path` in the sandbox; `metadata` adds
        `owner`, `group` or `mode` to the part that describes it."""
        described = json.dumps({"path": path, **metadata})
        return await self.client.post(f"{self.execd(sandbox_id)}/files/upload", files=[
            ("metadata", ("metadata", described, "application/json")),
            ("file", ("file", data, "application/octet-stream"))])


@asynccontextmanager
async def serve_in_process(workdir: Path, config: Config | None = None, *,
                           isolation: str = "auto") -> AsyncIterator[InProcess]:
    """The app of `create_app(config, runtime=…, clock=…, ids=…)`, its runtime's state in
    `workdir`, running (lifespan started) until the block ends."""
    state_dir = workdir / "state"
    runtime = make_runtime("fake", state_dir=str(state_dir),
                           volumes_root=str(workdir / "volumes"), isolation=isolation)
    clock, ids = SetClock(), CountingIds()
    app = create_app(config, runtime=runtime, clock=clock, ids=ids)
    transport = httpx.ASGITransport(app=app)
    async with app.lifecycle.router.lifespan_context(app.lifecycle), \
            httpx.AsyncClient(transport=transport, base_url="http://localhost",
                              timeout=60) as client:
        yield InProcess(app, client, runtime, clock, ids, state_dir)


async def eventually(check: Callable[[], Awaitable[Any]], what: str) -> Any:
    """Await `check` until it gives something truthy, and return that: `wait_for` for
    async checks (the deadline only stops a broken app from hanging the suite)."""
    deadline = anyio.current_time() + 30
    while True:
        result = await check()
        if result:
            return result
        if anyio.current_time() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        await anyio.sleep(0.05)
