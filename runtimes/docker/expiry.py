"""What changed about a sandbox after its container was made, kept in small JSON files
beside the server: renewed expiry times and patched metadata.

A container's labels cannot change after it is created, and upstream's way round that
(rewriting the label) is not possible with the Docker API. The labels keep what the
sandbox was created with; each renewal or metadata patch is written here, keyed by sandbox
id, and at start-up it overrides the label. Losing these files only ever brings back the
creation-time values, so keep `[docker] state_dir` on a volume when the server itself runs
in a container (the compose file does).
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from datetime import UTC, datetime
from typing import Any

from opensandbox_emulator.runtimes.docker.labels import parse_time


def default_state_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                            "state")
    return os.path.join(base, "opensandbox-emulator")


class SandboxStateFile:
    """`{sandbox_id: JSON value}` for one server instance, in `docker-<instance>-<kind>.json`."""

    kind = "state"

    def __init__(self, state_dir: str, instance: str):
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in instance)
        self.path = os.path.join(state_dir, f"docker-{safe}-{self.kind}.json")
        self._entries: dict[str, Any] = {}
        self._lock = asyncio.Lock()

    async def load(self) -> None:
        self._entries = await asyncio.to_thread(self._read)

    def _read(self) -> dict[str, Any]:
        try:
            with open(self.path, encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError):
            return {}
        return {str(k): v for k, v in data.items()} if isinstance(data, dict) else {}

    async def _put(self, sandbox_id: str, value: Any) -> None:
        async with self._lock:
            self._entries[sandbox_id] = value
            await asyncio.to_thread(self._write, dict(self._entries))

    async def forget(self, sandbox_ids: set[str] | None = None, *,
                     keep_only: set[str] | None = None) -> None:
        """Drop the given ids, or every id not in `keep_only`; writes only on a change."""
        async with self._lock:
            before = len(self._entries)
            if sandbox_ids is not None:
                for sandbox_id in sandbox_ids:
                    self._entries.pop(sandbox_id, None)
            if keep_only is not None:
                self._entries = {k: v for k, v in self._entries.items() if k in keep_only}
            if len(self._entries) != before:
                await asyncio.to_thread(self._write, dict(self._entries))

    def _write(self, entries: dict[str, Any]) -> None:
        directory = os.path.dirname(self.path)
        os.makedirs(directory, exist_ok=True)
        handle, temp = tempfile.mkstemp(prefix=f".{self.kind}-", dir=directory)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                json.dump(entries, out, indent=1, sort_keys=True)
            os.replace(temp, self.path)
        except BaseException:
            if os.path.exists(temp):
                os.unlink(temp)
            raise


class ExpiryStore(SandboxStateFile):
    """`{sandbox_id: ISO time | null}`; null means "never"."""

    kind = "expiry"

    def get(self, sandbox_id: str) -> tuple[bool, datetime | None]:
        """(whether a renewal is recorded, the renewed time or None for "never")."""
        if sandbox_id not in self._entries:
            return False, None
        value = self._entries[sandbox_id]
        return True, parse_time(str(value)) if value is not None else None

    async def set(self, sandbox_id: str, expires_at: datetime | None) -> None:
        await self._put(sandbox_id, expires_at.astimezone(UTC).isoformat()
                        if expires_at is not None else None)


class MetadataStore(SandboxStateFile):
    """`{sandbox_id: {key: value}}`: the metadata of sandboxes patched since creation."""

    kind = "metadata"

    def get(self, sandbox_id: str) -> dict[str, str] | None:
        value = self._entries.get(sandbox_id)
        return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else None

    async def set(self, sandbox_id: str, metadata: dict[str, str]) -> None:
        await self._put(sandbox_id, dict(metadata))
