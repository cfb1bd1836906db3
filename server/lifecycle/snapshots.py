"""`SnapshotService`: snapshots of sandboxes, over the runtime that stores them.

A snapshot is taken in the background: `create` answers at once with `Creating` and a task
has the runtime capture the sandbox's files (at most two at a time, as upstream's worker
pool), after which the snapshot is `Ready`, or `Failed` with the runtime's reason. The
runtime keeps the data (and enough to find it again after a restart); this service keeps
the states upstream reports. A snapshot outlives its sandbox; deleting it frees its storage.

Sources: upstream takes a snapshot only of a `Running` sandbox; here a `Paused` one may be
snapshotted too (its files are as still as they will ever be), see the README.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from opensandbox_emulator.runtimes.base import Runtime, SnapshotSpec
from opensandbox_emulator.runtimes.failures import RuntimeFailure, SandboxMissing
from opensandbox_emulator.server.clock import Clock, rfc3339
from opensandbox_emulator.server.errors import (
    SnapshotBusy,
    SnapshotNotFound,
    SnapshotNotReady,
    SnapshotSourceState,
)
from opensandbox_emulator.server.lifecycle.service import SandboxService, SandboxState

log = logging.getLogger("opensandbox.snapshots")

CAPTURE_WORKERS = 2
SNAPSHOT_SOURCE_STATES = ("Running", "Paused")


# A snapshot's status is the same three facts as a sandbox's: a state, a reason, a message.
SnapshotStatus = SandboxState

ACCEPTED = SnapshotStatus("Creating", "snapshot_accepted", "Snapshot creation accepted.")
READY = SnapshotStatus("Ready", "snapshot_runtime_ready", "Snapshot created successfully.")
RECOVERED = SnapshotStatus("Ready", "snapshot_recovery_ready",
                           "Snapshot found again after a server restart.")
INCOMPLETE = SnapshotStatus("Failed", "snapshot_recovery_failed",
                            "The server stopped before this snapshot was complete; delete it.")
DELETING = SnapshotStatus("Deleting", "snapshot_delete_requested",
                          "Snapshot deletion requested.")


@dataclass
class SnapshotRecord:
    spec: SnapshotSpec
    status: SnapshotStatus
    changed_at: datetime
    task: asyncio.Task[None] | None = None

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.spec.snapshot_id, "sandboxId": self.spec.sandbox_id}
        if self.spec.name is not None:
            body["name"] = self.spec.name
        body["status"] = {"state": self.status.state, "reason": self.status.reason,
                          "message": self.status.message,
                          "lastTransitionAt": rfc3339(self.changed_at)}
        body["createdAt"] = rfc3339(self.spec.created_at)
        return body


class SnapshotService:
    def __init__(self, runtime: Runtime, sandboxes: SandboxService, clock: Clock):
        self.runtime = runtime
        self.sandboxes = sandboxes
        self.clock = clock
        self._records: dict[str, SnapshotRecord] = {}
        self._workers = asyncio.Semaphore(CAPTURE_WORKERS)
        sandboxes.snapshots = self

    async def start(self) -> None:
        """Take back the snapshots the runtime holds (after a restart)."""
        for stored in await self.runtime.stored_snapshots():
            status = RECOVERED if stored.complete else INCOMPLETE
            self._records[stored.spec.snapshot_id] = SnapshotRecord(
                stored.spec, status, self.clock.now())

    async def close(self) -> None:
        """Stop captures under way (the runtime then holds them as incomplete)."""
        await self._stop_captures()
        self._records.clear()

    # --- reading -------------------------------------------------------------------------

    def _record(self, snapshot_id: str) -> SnapshotRecord:
        record = self._records.get(snapshot_id)
        if record is None:
            raise SnapshotNotFound(snapshot_id)
        return record

    def get(self, snapshot_id: str) -> dict[str, Any]:
        return self._record(snapshot_id).body()

    def require_ready(self, snapshot_id: str) -> None:
        """For a restore: the snapshot exists and is `Ready`."""
        record = self._record(snapshot_id)
        if record.status.state != "Ready":
            raise SnapshotNotReady(f"Snapshot {snapshot_id} is {record.status.state}, not "
                                   "Ready; wait for it (GET /v1/snapshots/{id}) or use "
                                   "another.")

    def list(self, *, sandbox_id: str | None, states: list[str], name: str | None,
             page: int, page_size: int) -> dict[str, Any]:
        """Newest first; `state` matches exactly (`Ready`), as upstream."""
        chosen = [r for r in self._records.values()
                  if (sandbox_id is None or r.spec.sandbox_id == sandbox_id)
                  and (not states or r.status.state in states)
                  and (name is None or r.spec.name == name)]
        chosen.sort(key=lambda r: (r.spec.created_at, r.spec.snapshot_id), reverse=True)
        total = len(chosen)
        pages = math.ceil(total / page_size) if total else 0
        items = [r.body() for r in chosen[(page - 1) * page_size: page * page_size]]
        return {"items": items,
                "pagination": {"page": page, "pageSize": page_size, "totalItems": total,
                               "totalPages": pages, "hasNextPage": page < pages}}

    # --- changing ------------------------------------------------------------------------

    async def create(self, sandbox_id: str, name: str | None) -> dict[str, Any]:
        state = await self.sandboxes.settled_state(sandbox_id)  # SandboxMissing: 404
        if state.state not in SNAPSHOT_SOURCE_STATES:
            raise SnapshotSourceState(
                f"Sandbox {sandbox_id} is {state.state}; a snapshot can be taken of a Running "
                "or Paused sandbox only.")
        spec = SnapshotSpec(snapshot_id=str(uuid.uuid4()), sandbox_id=sandbox_id, name=name,
                            created_at=self.clock.now())
        record = SnapshotRecord(spec, ACCEPTED, spec.created_at)
        self._records[spec.snapshot_id] = record
        body = record.body()
        record.task = asyncio.create_task(self._capture(record),
                                          name=f"snapshot-{spec.snapshot_id}")
        return body

    async def _capture(self, record: SnapshotRecord) -> None:
        spec = record.spec
        try:
            async with self._workers:
                await self.runtime.capture_snapshot(spec.sandbox_id, spec)
        except SandboxMissing:
            self._settle(record, SnapshotStatus(
                "Failed", "snapshot_runtime_failed",
                f"Sandbox {spec.sandbox_id} went away before its snapshot was taken."))
        except RuntimeFailure as error:
            self._settle(record, SnapshotStatus("Failed", "snapshot_runtime_failed",
                                                error.message))
        except Exception as error:  # a bug: report it on the snapshot, not in a lost task
            log.exception("snapshot %s failed", spec.snapshot_id)
            self._settle(record, SnapshotStatus("Failed", "snapshot_runtime_failed",
                                                f"{type(error).__name__}: {error}"))
        else:
            self._settle(record, READY)
            self.sandboxes.record_event(spec.sandbox_id, "Snapshotted", "SNAPSHOT_READY",
                                        f"Snapshot {spec.snapshot_id} taken.")
        finally:
            record.task = None

    def _settle(self, record: SnapshotRecord, status: SnapshotStatus) -> None:
        record.status = status
        record.changed_at = self.clock.now()
        log.info("snapshot %s is %s (%s)", record.spec.snapshot_id, status.state,
                 status.message)

    async def delete(self, snapshot_id: str) -> None:
        record = self._record(snapshot_id)
        if record.status.state == "Creating":
            raise SnapshotBusy(f"Snapshot {snapshot_id} is still being created; delete it "
                               "once it is Ready or Failed.")
        previous = record.status
        self._settle(record, DELETING)
        try:
            await self.runtime.delete_snapshot(snapshot_id)
        except BaseException:
            # Nothing was removed (a Docker image still in use, say): it stays as it was.
            if self._records.get(snapshot_id) is record:
                self._settle(record, previous)
            raise
        self._records.pop(snapshot_id, None)

    async def delete_all(self) -> int:
        """Every snapshot gone, captures under way stopped first (a reset of the server);
        returns how many there were."""
        await self._stop_captures()
        count = len(self._records)
        for snapshot_id in list(self._records):
            with contextlib.suppress(RuntimeFailure):
                await self.runtime.delete_snapshot(snapshot_id)
            self._records.pop(snapshot_id, None)
        return count

    async def _stop_captures(self) -> None:
        tasks = [r.task for r in self._records.values() if r.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

