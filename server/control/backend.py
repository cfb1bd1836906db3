"""`EmulatorControl`: the state behind the control API, and what each of its calls does.

The HTTP routes and the request tap only translate to and from this object.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from opensandbox_emulator.runtimes.failures import SandboxMissing
from opensandbox_emulator.server.clock import rfc3339
from opensandbox_emulator.server.config import ControlSection
from opensandbox_emulator.server.control.clock import MovableClock
from opensandbox_emulator.server.control.faults import FaultBook
from opensandbox_emulator.server.control.journal import Journal
from opensandbox_emulator.server.errors import ApiError
from opensandbox_emulator.server.lifecycle.service import SandboxService
from opensandbox_emulator.server.lifecycle.snapshots import SnapshotService

log = logging.getLogger("opensandbox.control")

MAX_ADVANCE_SECONDS = 100 * 365 * 86400.0


class InvalidAdvance(ApiError):
    status_code = 400
    code = "EMULATOR::INVALID_CLOCK_ADVANCE"


class ResetIncomplete(ApiError):
    status_code = 500
    code = "EMULATOR::RESET_INCOMPLETE"


class EmulatorControl:
    def __init__(self, service: SandboxService, clock: MovableClock, config: ControlSection,
                 *, snapshots: SnapshotService | None = None):
        self.service = service
        self.snapshots = snapshots
        self.clock = clock
        self.journal = Journal(config.journal_size)
        self.faults = FaultBook()

    async def reset(self) -> dict[str, Any]:
        """Every sandbox destroyed (with its commands, code contexts and files), every
        snapshot deleted, the journal and the fault rules emptied, the clock back to real
        time."""
        sandbox_ids = self.service.sandbox_ids()
        results = await asyncio.gather(*(self.service.delete(sandbox_id)
                                         for sandbox_id in sandbox_ids),
                                       return_exceptions=True)
        snapshots = 0
        if self.snapshots is not None:
            snapshots = await self.snapshots.delete_all()
        self.service.forget_removed()
        self.faults.clear()
        self.journal.clear()
        self.clock.restore()
        failed = {sandbox_id: result for sandbox_id, result in zip(sandbox_ids, results,
                                                                   strict=True)
                  if isinstance(result, BaseException)
                  and not isinstance(result, SandboxMissing)}  # gone already: fine
        if failed:
            raise ResetIncomplete("Reset could not delete every sandbox: " + "; ".join(
                f"{sandbox_id}: {error}" for sandbox_id, error in failed.items()))
        log.info("reset: %d sandboxes deleted", len(sandbox_ids))
        return {"deletedSandboxes": len(sandbox_ids), "deletedSnapshots": snapshots}

    def clock_state(self) -> dict[str, Any]:
        return {"now": rfc3339(self.clock.now()), "offsetSeconds": self.clock.offset_seconds}

    async def advance(self, seconds: float) -> dict[str, Any]:
        """Move the clock forward; sandboxes whose expiry it passes are deleted before
        this returns, as the reaper would have done had the time really passed."""
        if not 0 <= seconds <= MAX_ADVANCE_SECONDS:
            raise InvalidAdvance(f"seconds must be between 0 and {MAX_ADVANCE_SECONDS:g} "
                                 f"(got {seconds:g}); the clock never moves back.")
        self.clock.advance(seconds)
        expired = await self.service.reap_expired()
        body = self.clock_state()
        body["expiredSandboxes"] = expired
        return body
