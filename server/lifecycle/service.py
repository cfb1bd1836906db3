"""`SandboxService`: the lifecycle of sandboxes, over one runtime.

It keeps what the API needs beyond the runtime (creation time, expiry, the image as asked,
the user's metadata) and derives each sandbox's state from the runtime on every read, so a
main process that exits shows up as Terminated or Failed. A reaper task removes sandboxes
whose expiry has passed. Each sandbox's lifecycle events (created, paused, renewed, failed,
expired…) are kept for diagnostics, for a while after it is gone too (`journal.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from opensandbox_emulator.runtimes.base import Phase, Runtime, SandboxSpec, VolumeMount
from opensandbox_emulator.runtimes.failures import (
    RuntimeFailure,
    SandboxMissing,
    VolumeNotFound,
)
from opensandbox_emulator.server.clock import Clock, IdGenerator, rfc3339
from opensandbox_emulator.server.config import Config
from opensandbox_emulator.server.errors import (
    ApiError,
    InvalidExpiration,
    InvalidMetadataFormat,
    InvalidParameter,
    SandboxNotPaused,
    SandboxNotRunning,
)
from opensandbox_emulator.server.lifecycle.journal import Journal
from opensandbox_emulator.server.lifecycle.models import CreateSandboxRequest
from opensandbox_emulator.server.lifecycle.validation import (
    check_create,
    check_metadata_patch,
    check_network_policy,
    check_platform,
    check_source,
    entrypoint_argv,
    renew_on_access_seconds,
)

if TYPE_CHECKING:
    from opensandbox_emulator.server.lifecycle.snapshots import SnapshotService

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
EXIT_NOTE_BYTES = 4096  # of the entrypoint's output read to explain a 126 or 127 exit
# Renew-on-access renews a sandbox at most this often (upstream's default cooldown).
RENEW_ON_ACCESS_COOLDOWN = 60.0
REMOVED_KEPT = 500  # removed sandboxes whose lifecycle events diagnostics still show


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
    journal: Journal = field(default_factory=Journal)
    last_renewed_on_access: float | None = None
    exit_note: str | None = None  # why the entrypoint could not run, once read

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
        self.snapshots: SnapshotService | None = None  # wired by the app
        # Journals of sandboxes already removed, newest last, for diagnostics.
        self._removed: dict[str, tuple[Journal, datetime, str]] = {}

    # --- wiring ----------------------------------------------------------------------------

    def on_removing(self, listener: Listener) -> None:
        """Call `listener(sandbox_id)` before a sandbox is destroyed (delete or expiry)."""
        self._on_removing.append(listener)

    async def start(self) -> None:
        for spec in await self.runtime.start():
            created = spec.created_at or self.clock.now()
            record = self._records[spec.sandbox_id] = SandboxRecord(
                spec=spec, created_at=created, expires_at=spec.expires_at,
                metadata=dict(spec.metadata) or None, last_transition_at=created)
            record.journal.add(created, "Created", "SANDBOX_CREATED",
                               f"Sandbox created from {_source(spec)}.")
            record.journal.add(self.clock.now(), "Adopted", "SERVER_RESTARTED",
                               "The server started again and took this sandbox back.")
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
                    note = await self._exit_note(record, status.exit_code)
                    current = SandboxState("Failed", "CONTAINER_EXITED_ERROR",
                                           "Sandbox container exited with code "
                                           f"{status.exit_code}{note}.")
        if current.state != record.last_state:
            record.last_state = current.state
            record.last_transition_at = changed_at or self.clock.now()
            if current.state in ("Terminated", "Failed"):
                record.journal.add(record.last_transition_at, current.state, current.reason,
                                   current.message)
        return current

    async def _exit_note(self, record: SandboxRecord, exit_code: int | None) -> str:
        """For an entrypoint that could not be run at all (126, 127: not found, not
        executable), the last line it or its shell printed, which says which and why."""
        if exit_code not in (126, 127):
            return ""
        if record.exit_note is None:
            record.exit_note = ""
            with contextlib.suppress(RuntimeFailure):
                output = await self.runtime.entrypoint_output(record.id, EXIT_NOTE_BYTES)
                said = [line.strip() for line in output.data.decode(errors="replace")
                        .splitlines() if line.strip()]
                if said:
                    record.exit_note = ": " + said[-1][:300].rstrip(".")
        return record.exit_note

    async def describe(self, sandbox_id: str, *, with_image: bool = True) -> dict[str, Any]:
        """The sandbox as the API shows it (`Sandbox`, or `CreateSandboxResponse`)."""
        record = self._record(sandbox_id)
        state = await self.state(sandbox_id)
        body: dict[str, Any] = {"id": record.id}
        if with_image and record.spec.snapshot_id is not None:
            body["snapshotId"] = record.spec.snapshot_id
        elif with_image:
            body["image"] = {"uri": record.spec.image}
        if record.spec.platform is not None:
            body["platform"] = {"os": record.spec.platform[0], "arch": record.spec.platform[1]}
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
        try:
            wanted_meta = parse_qsl(metadata or "", keep_blank_values=True,
                                    strict_parsing=bool(metadata))
        except ValueError as error:
            raise InvalidMetadataFormat(
                f"metadata filter {metadata!r} is not a query string of key=value pairs "
                "joined by '&' (percent-encode '&', '=' and '%' inside keys and values): "
                f"{error}") from error
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
        network_policy = check_network_policy(request)
        if network_policy is not None:
            self.runtime.require_egress()
        entrypoint = check_source(request)
        if request.snapshot_id is not None:
            assert self.snapshots is not None
            self.snapshots.require_ready(request.snapshot_id)
        owned = await self._named_volumes(volumes)
        now = self.clock.now()
        expires = now + timedelta(seconds=request.timeout) if request.timeout else None
        auth = request.image.auth if request.image else None
        spec = SandboxSpec(
            sandbox_id=self.ids.sandbox_id(), image=request.image.uri if request.image else "",
            entrypoint=entrypoint_argv(entrypoint),
            env={k: v for k, v in (request.env or {}).items() if v is not None},
            resource_limits=dict(request.resource_limits), volumes=volumes,
            metadata=dict(request.metadata or {}), created_at=now, expires_at=expires,
            image_auth=(auth.username or "", auth.password or "") if auth else None,
            snapshot_id=request.snapshot_id, platform=check_platform(request),
            owned_volumes=owned, extensions=dict(request.extensions or {}),
            secure_access_token=secrets.token_urlsafe(24) if request.secure_access else None,
            network_policy=network_policy, egress_token=secrets.token_urlsafe(24))
        record = SandboxRecord(spec=spec, created_at=now, expires_at=expires,
                               metadata=request.metadata, transition=PENDING,
                               last_state="Pending", last_transition_at=now)
        self._records[spec.sandbox_id] = record
        try:
            await self.runtime.create(spec)
        except BaseException:
            self._records.pop(spec.sandbox_id, None)
            await self._remove_volumes(owned)
            raise
        record.transition = None
        self._moved(record, RUNNING)
        record.journal.add(now, "Created", "SANDBOX_CREATED",
                           f"Sandbox created from {_source(spec)}"
                           + (f", expiring at {rfc3339(expires)}." if expires else
                              ", with no expiry."))
        self._wake.set()
        log.info("created sandbox %s (%s)", spec.sandbox_id, " ".join(spec.entrypoint))
        body = await self.describe(spec.sandbox_id, with_image=False)
        body["entrypoint"] = entrypoint  # echoed as sent; GET shows the argv
        return body

    async def _named_volumes(self, volumes: list[VolumeMount]) -> list[str]:
        """Check every `pvc` volume, making those missing that may be made; returns the
        ones made that go with the sandbox (`deleteOnSandboxTermination`)."""
        owned: list[str] = []
        try:
            for volume in volumes:
                if volume.kind != "pvc":
                    continue
                try:
                    await self.runtime.resolve_named_volume(volume.source, volume.sub_path)
                except VolumeNotFound:
                    if not volume.create_if_missing:
                        raise
                    await self.runtime.create_named_volume(volume.source, volume.sub_path)
                    log.info("created named volume %s", volume.source)
                    if volume.delete_with_sandbox:
                        owned.append(volume.source)
                    await self.runtime.resolve_named_volume(volume.source, volume.sub_path)
        except BaseException:
            await self._remove_volumes(owned)
            raise
        return owned

    async def _remove_volumes(self, names: list[str] | tuple[str, ...]) -> None:
        for name in names:
            try:
                await self.runtime.remove_named_volume(name)
            except RuntimeFailure as error:
                log.warning("removing named volume %s: %s", name, error.message)

    async def patch_metadata(self, sandbox_id: str,
                             patch: dict[str, str | None]) -> dict[str, Any]:
        """JSON Merge Patch on the flat metadata map: a string sets a key, null removes it."""
        record = self._record(sandbox_id)
        check_metadata_patch(patch)
        merged = dict(record.metadata or {})
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        if patch:
            record.metadata = merged or None
            record.spec = replace(record.spec, metadata=merged)
            await self.runtime.set_metadata(sandbox_id, merged)
        return await self.describe(sandbox_id)

    async def delete(self, sandbox_id: str, *, expired: bool = False) -> None:
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
        await self._remove_volumes(tuple(record.spec.owned_volumes))
        now = self.clock.now()
        if expired:
            record.journal.add(now, "Expired", "TTL_EXPIRY",
                               f"The sandbox's expiry ({rfc3339(record.expires_at or now)}) "
                               "passed; it was removed.")
        else:
            record.journal.add(now, "Deleted", "USER_DELETE", "The sandbox was deleted.")
        self._keep_removed(sandbox_id, record, now)
        log.info("%s sandbox %s", "expired" if expired else "deleted", sandbox_id)

    # --- diagnostics ---------------------------------------------------------------------

    def _keep_removed(self, sandbox_id: str, record: SandboxRecord, when: datetime) -> None:
        self._removed.pop(sandbox_id, None)
        self._removed[sandbox_id] = (record.journal, when, record.last_state)
        while len(self._removed) > REMOVED_KEPT:
            self._removed.pop(next(iter(self._removed)))

    def journal(self, sandbox_id: str) -> tuple[Journal, datetime | None]:
        """The sandbox's lifecycle events, and when it was removed (None while it lives).
        A sandbox removed long enough ago is `SandboxMissing`, like one never made."""
        record = self._records.get(sandbox_id)
        if record is not None:
            return record.journal, None
        kept = self._removed.get(sandbox_id)
        if kept is None:
            raise SandboxMissing(sandbox_id)
        return kept[0], kept[1]

    def forget_removed(self) -> None:
        """Drop the lifecycle events kept of removed sandboxes (a reset of the server)."""
        self._removed.clear()

    def record_event(self, sandbox_id: str, kind: str, reason: str, message: str) -> None:
        record = self._records.get(sandbox_id)
        if record is not None:
            record.journal.add(self.clock.now(), kind, reason, message)

    # --- reaching a sandbox ----------------------------------------------------------------

    def secure_access_token(self, sandbox_id: str) -> str | None:
        return self._record(sandbox_id).spec.secure_access_token

    def egress_token(self, sandbox_id: str) -> str | None:
        """What callers of the sandbox's egress API (port 18080) send as
        OPENSANDBOX-EGRESS-AUTH (None for a sandbox adopted from before egress tokens)."""
        return self._record(sandbox_id).spec.egress_token

    async def accessed(self, sandbox_id: str) -> None:
        """Renew-on-access (`extensions["access.renew.extend.seconds"]`): a request through
        the gateway or the proxy moves the expiry to now + that many seconds, if later, at
        most once a minute."""
        record = self._records.get(sandbox_id)
        if record is None or record.expires_at is None:
            return
        seconds = renew_on_access_seconds(dict(record.spec.extensions))
        if seconds is None:
            return
        now = self.clock.monotonic()
        last = record.last_renewed_on_access
        if last is not None and now - last < RENEW_ON_ACCESS_COOLDOWN:
            return
        record.last_renewed_on_access = now
        wanted = self.clock.now() + timedelta(seconds=seconds)
        if wanted > record.expires_at:
            record.expires_at = wanted
            await self.runtime.set_expiry(sandbox_id, wanted)
            record.journal.add(self.clock.now(), "Renewed", "ACCESS_RENEWAL",
                               f"Renewed on access until {rfc3339(wanted)}.")
            self._wake.set()

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
            record.journal.add(self.clock.now(), "Paused", "USER_PAUSE",
                               "The sandbox was paused.")
        finally:
            record.transition = None

    async def settled_state(self, sandbox_id: str) -> SandboxState:
        """The state once a pause still under way (Docker's takes a few ms) is done: a
        client that got the pause's 202 may act on a Paused sandbox at once, as upstream
        (whose pause is synchronous) allows."""
        record = self._record(sandbox_id)
        if record.transition is PAUSING and record.tasks:
            await asyncio.wait(set(record.tasks))
        return await self.state(sandbox_id)

    async def resume(self, sandbox_id: str) -> None:
        record = self._record(sandbox_id)
        state = await self.settled_state(sandbox_id)
        if state is not PAUSED:
            raise SandboxNotPaused(state.state)
        await self.runtime.resume(sandbox_id)
        self._moved(record, RUNNING)
        record.journal.add(self.clock.now(), "Resumed", "USER_RESUME",
                           "The sandbox was resumed.")

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
        record.journal.add(self.clock.now(), "Renewed", "USER_RENEW",
                           f"Expiry moved to {rfc3339(when)}.")
        self._wake.set()
        return {"expiresAt": rfc3339(when)}

    # --- expiry ------------------------------------------------------------------------

    async def reap_expired(self) -> list[str]:
        """Delete every sandbox whose expiry has passed; returns their ids."""
        now = self.clock.now()
        expired = [r.id for r in self._records.values()
                   if r.expires_at is not None and r.expires_at <= now
                   and r.transition is not STOPPING]
        for sandbox_id in expired:
            log.info("sandbox %s expired", sandbox_id)
            with contextlib.suppress(ApiError, RuntimeFailure):
                await self.delete(sandbox_id, expired=True)
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


def _source(spec: SandboxSpec) -> str:
    if spec.snapshot_id is not None:
        return f"snapshot {spec.snapshot_id}"
    return f"image {spec.image}"
