"""`SandboxService`: the lifecycle of sandboxes, over one runtime.

It keeps what the API needs beyond the runtime (creation time, expiry, the image as asked,
the user's metadata) and derives each sandbox's state from the runtime on every read, so a
main process that exits shows up as Terminated or Failed. A reaper task removes sandboxes
whose expiry has passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

from opensandbox_emulator.runtimes.base import Phase, Runtime, SandboxSpec
from opensandbox_emulator.runtimes.failures import RuntimeFailure, SandboxMissing
from opensandbox_emulator.server.clock import Clock, IdGenerator, rfc3339
from opensandbox_emulator.server.config import Config
from opensandbox_emulator.server.errors import (
    ApiError,
    InvalidExpiration,
    InvalidParameter,
    SandboxNotPaused,
    SandboxNotRunning,
)
from opensandbox_emulator.server.lifecycle.models import CreateSandboxRequest
from opensandbox_emulator.server.lifecycle.validation import check_create, entrypoint_argv

log = logging.getLogger("opensandbox.lifecycle")

Listener = Callable[[str], Awaitable[None]]


@dataclass(frozen=True)
class SandboxState:
    state: str
    reason: str
    message: str


RUNNING = SandboxState("Running", "CONTAINER_RUNNING", "Sandbox container is running.")
PAUSED = SandboxState("Paused", "CONTAINER_PAUSED", "Sandbox container is paused.")
PENDING = SandboxState("Pending", "CONTAINER_STARTING", "Sandbox container is starting.")
PAUSING = SandboxState("Pausing", "CONTAINER_PAUSING", "Sandbox container is pausing.")
STOPPING = SandboxState("Stopping", "CONTAINER_STOPPING", "Sandbox container is stopping.")
UNKNOWN = SandboxState("Unknown", "CONTAINER_STATE_UNKNOWN", "Sandbox state is unknown.")


@dataclass
class SandboxRecord:
    spec: SandboxSpec
    created_at: datetime
    expires_at: datetime | None
    metadata: dict[str, str] | None
    transition: SandboxState | None = None
    last_state: str = "Pending"
    last_transition_at: datetime | None = None
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    @property
    def id(self) -> str:
        return self.spec.sandbox_id


class SandboxService:
    def __init__(self, runtime: Runtime, config: Config, clock: Clock, ids: IdGenerator):
        self.runtime = runtime
        self.config = config
        self.clock = clock
        self.ids = ids
        self._records: dict[str, SandboxRecord] = {}
        self._on_removing: list[Listener] = []
        self._reaper: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    # --- wiring ----------------------------------------------------------------------------

    def on_removing(self, listener: Listener) -> None:
        """Call `listener(sandbox_id)` before a sandbox is destroyed (delete or expiry)."""
        self._on_removing.append(listener)

    async def start(self) -> None:
        for spec in await self.runtime.start():
            created = spec.created_at or self.clock.now()
            self._records[spec.sandbox_id] = SandboxRecord(
                spec=spec, created_at=created, expires_at=spec.expires_at,
                metadata=dict(spec.metadata) or None, last_transition_at=created)
        self._reaper = asyncio.create_task(self._reap_forever(), name="sandbox-reaper")

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        count = len(self._records)
        for sandbox_id in list(self._records):
            await self._notify_removing(sandbox_id)
        await self.runtime.close()
        self._records.clear()
        log.info("stopped: the runtime released its %d sandbox(es)", count)

    # --- reading ---------------------------------------------------------------------------

    def _record(self, sandbox_id: str) -> SandboxRecord:
        record = self._records.get(sandbox_id)
        if record is None:
            raise SandboxMissing(sandbox_id)
        return record

    def _moved(self, record: SandboxRecord, state: SandboxState) -> None:
        """Note a transition we caused, at the moment it happened (not when first read)."""
        if state.state != record.last_state:
            record.last_state = state.state
            record.last_transition_at = self.clock.now()

    def exists(self, sandbox_id: str) -> bool:
        return sandbox_id in self._records

    def sandbox_ids(self) -> list[str]:
        return list(self._records)

    async def state(self, sandbox_id: str) -> SandboxState:
        record = self._record(sandbox_id)
        changed_at = None
        if record.transition is not None:
            current = record.transition
        else:
            status = await self.runtime.inspect(sandbox_id)
            current = {Phase.RUNNING: RUNNING, Phase.PAUSED: PAUSED,
                       Phase.STARTING: PENDING}.get(status.phase, UNKNOWN)
            if status.phase is Phase.EXITED:
                changed_at = status.finished_at
                if status.exit_code == 0:
                    current = SandboxState("Terminated", "CONTAINER_EXITED",
                                           "Sandbox container exited successfully.")
                else:
                    current = SandboxState("Failed", "CONTAINER_EXITED_ERROR",
                                           "Sandbox container exited with code "
                                           f"{status.exit_code}.")
        if current.state != record.last_state:
            record.last_state = current.state
            record.last_transition_at = changed_at or self.clock.now()
        return current

    async def describe(self, sandbox_id: str, *, with_image: bool = True) -> dict[str, Any]:
        """The sandbox as the API shows it (`Sandbox`, or `CreateSandboxResponse`)."""
        record = self._record(sandbox_id)
        state = await self.state(sandbox_id)
        body: dict[str, Any] = {"id": record.id}
        if with_image:
            body["image"] = {"uri": record.spec.image}
        body["status"] = {"state": state.state, "reason": state.reason,
                          "message": state.message,
                          "lastTransitionAt": rfc3339(record.last_transition_at or
                                                      record.created_at)}
        if record.metadata is not None:
            body["metadata"] = record.metadata
        body["entrypoint"] = list(record.spec.entrypoint)
        if record.expires_at is not None:
            body["expiresAt"] = rfc3339(record.expires_at)
        body["createdAt"] = rfc3339(record.created_at)
        return body

    async def list(self, *, states: list[str], metadata: str | None, page: int,
                   page_size: int) -> dict[str, Any]:
        wanted_states = {s.lower() for s in states if s}
        wanted_meta = parse_qsl(metadata or "", keep_blank_values=False)
        matches = []
        for record in sorted(self._records.values(), key=lambda r: r.created_at, reverse=True):
            if any((record.metadata or {}).get(k) != v for k, v in wanted_meta):
                continue
            try:
                state = await self.state(record.id)
            except SandboxMissing:
                continue
            if wanted_states and state.state.lower() not in wanted_states:
                continue
            matches.append(record.id)
        total = len(matches)
        pages = math.ceil(total / page_size) if total else 0
        chosen = matches[(page - 1) * page_size: page * page_size]
        items = []
        for sandbox_id in chosen:
            with contextlib.suppress(SandboxMissing):
                items.append(await self.describe(sandbox_id))
        return {"items": items,
                "pagination": {"page": page, "pageSize": page_size, "totalItems": total,
                               "totalPages": pages, "hasNextPage": page < pages}}

    # --- changing --------------------------------------------------------------------------

    async def create(self, request: CreateSandboxRequest) -> dict[str, Any]:
        volumes = check_create(request, max_timeout=self.config.server.max_sandbox_timeout_seconds,
                               allowed_host_paths=self.config.storage.allowed_host_paths)
        for volume in volumes:
            if volume.kind == "pvc":
                await self.runtime.resolve_named_volume(volume.source, volume.sub_path)
        now = self.clock.now()
        expires = now + timedelta(seconds=request.timeout) if request.timeout else None
        auth = request.image.auth
        spec = SandboxSpec(
            sandbox_id=self.ids.sandbox_id(), image=request.image.uri,
            entrypoint=entrypoint_argv(request.entrypoint),
            env={k: v for k, v in (request.env or {}).items() if v is not None},
            resource_limits=dict(request.resource_limits), volumes=volumes,
            metadata=dict(request.metadata or {}), created_at=now, expires_at=expires,
            image_auth=(auth.username or "", auth.password or "") if auth else None)
        record = SandboxRecord(spec=spec, created_at=now, expires_at=expires,
                               metadata=request.metadata, transition=PENDING,
                               last_state="Pending", last_transition_at=now)
        self._records[spec.sandbox_id] = record
        try:
            await self.runtime.create(spec)
        except BaseException:
            self._records.pop(spec.sandbox_id, None)
            raise
        record.transition = None
        self._moved(record, RUNNING)
        self._wake.set()
        log.info("created sandbox %s (%s)", spec.sandbox_id, " ".join(spec.entrypoint))
        body = await self.describe(spec.sandbox_id, with_image=False)
        body["entrypoint"] = list(request.entrypoint)  # echoed as sent; GET shows the argv
        return body

    async def delete(self, sandbox_id: str) -> None:
        record = self._record(sandbox_id)
        record.transition = STOPPING
        await self._notify_removing(sandbox_id)
        try:
            await self.runtime.destroy(sandbox_id)
        except SandboxMissing:
            pass
        except RuntimeFailure:
            record.transition = None
            raise
        self._records.pop(sandbox_id, None)
        for task in record.tasks:
            task.cancel()
        log.info("deleted sandbox %s", sandbox_id)

    async def _notify_removing(self, sandbox_id: str) -> None:
        for listener in self._on_removing:
            try:
                await listener(sandbox_id)
            except Exception:
                log.exception("cleanup of sandbox %s failed", sandbox_id)

    async def pause(self, sandbox_id: str) -> None:
        record = self._record(sandbox_id)
        state = await self.state(sandbox_id)
        if state is not RUNNING:
            raise SandboxNotRunning(state.state)
        record.transition = PAUSING
        self._moved(record, PAUSING)
        task = asyncio.create_task(self._finish_pause(record))
        record.tasks.add(task)
        task.add_done_callback(record.tasks.discard)

    async def _finish_pause(self, record: SandboxRecord) -> None:
        try:
            await self.runtime.pause(record.id)
        except RuntimeFailure:
            log.exception("pausing sandbox %s failed", record.id)
        else:
            self._moved(record, PAUSED)
        finally:
            record.transition = None

    async def resume(self, sandbox_id: str) -> None:
        record = self._record(sandbox_id)
        if record.transition is PAUSING and record.tasks:
            # A pause still under way (Docker's takes a few ms): a client that got the
            # pause's 202 may resume at once, as upstream (whose pause is synchronous) allows.
            await asyncio.wait(set(record.tasks))
        state = await self.state(sandbox_id)
        if state is not PAUSED:
            raise SandboxNotPaused(state.state)
        await self.runtime.resume(sandbox_id)
        self._moved(self._record(sandbox_id), RUNNING)

    async def renew(self, sandbox_id: str, expires_at: str) -> dict[str, str]:
        record = self._record(sandbox_id)
        try:
            when = datetime.fromisoformat(expires_at.replace("Z", "+00:00"))
        except ValueError as error:
            raise InvalidParameter(f"expiresAt '{expires_at}' is not an RFC 3339 time, for "
                                   "example 2030-01-01T00:00:00Z.") from error
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        when = when.astimezone(UTC)
        now = self.clock.now()
        if when <= now:
            raise InvalidExpiration(f"New expiration time must be in the future (got "
                                    f"{rfc3339(when)}, now is {rfc3339(now)}).")
        longest = self.config.server.max_sandbox_timeout_seconds
        latest = now + timedelta(seconds=longest)
        if when > latest:
            # The cap of create's `timeout`, so that renewing cannot outlive it.
            raise InvalidExpiration(f"expiresAt {rfc3339(when)} is more than {longest} seconds "
                                    "([server] max_sandbox_timeout_seconds) from now; the "
                                    f"latest allowed now is {rfc3339(latest)}.")
        record.expires_at = when
        await self.runtime.set_expiry(sandbox_id, when)
        self._wake.set()
        return {"expiresAt": rfc3339(when)}

    # --- expiry ------------------------------------------------------------------------

    async def reap_expired(self) -> list[str]:
        """Delete every sandbox whose expiry has passed; returns their ids."""
        now = self.clock.now()
        expired = [r.id for r in self._records.values()
                   if r.expires_at is not None and r.expires_at <= now]
        for sandbox_id in expired:
            log.info("sandbox %s expired", sandbox_id)
            with contextlib.suppress(ApiError, RuntimeFailure):
                await self.delete(sandbox_id)
        return expired

    async def _reap_forever(self) -> None:
        while True:
            try:
                await self.reap_expired()
            except Exception:
                log.exception("reaper failed")
            upcoming = [r.expires_at for r in self._records.values() if r.expires_at]
            delay = 1.0
            if upcoming:
                delay = min(delay, max((min(upcoming) - self.clock.now()).total_seconds(), 0.01))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
