"""Renewed expiry times, kept in a small JSON file beside the server.

A container's labels cannot change after it is created, and upstream's way round that
(rewriting the label) is not possible with the Docker API. The `expires-at` label keeps
the expiry the sandbox was created with; each renewal is written here, keyed by sandbox id,
and at start-up a renewal overrides the label. Losing this file only ever brings back the
creation-time expiry of renewed sandboxes, so keep `[docker] state_dir` on a volume when
the server itself runs in a container (the compose file does).
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from datetime import UTC, datetime

from opensandbox_emulator.runtimes.docker.labels import parse_time


def default_state_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                            "state")
    return os.path.join(base, "opensandbox-emulator")


class ExpiryStore:
    """`{sandbox_id: ISO time | null}` for one server instance; null means "never"."""

    def __init__(self, state_dir: str, instance: str):
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in instance)
        self.path = os.path.join(state_dir, f"docker-{safe}-expiry.json")
        self._entries: dict[str, str | None] = {}
        self._lock = asyncio.Lock()

    async def load(self) -> None:
        self._entries = await asyncio.to_thread(self._read)

    def _read(self) -> dict[str, str | None]:
        try:
            with open(self.path, encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError):
            return {}
        return {str(k): (str(v) if v is not None else None) for k, v in data.items()}

    def get(self, sandbox_id: str) -> tuple[bool, datetime | None]:
        """(whether a renewal is recorded, the renewed time or None for "never")."""
        if sandbox_id not in self._entries:
            return False, None
        return True, parse_time(self._entries[sandbox_id])

    async def set(self, sandbox_id: str, expires_at: datetime | None) -> None:
        async with self._lock:
            self._entries[sandbox_id] = (expires_at.astimezone(UTC).isoformat()
                                         if expires_at is not None else None)
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

    def _write(self, entries: dict[str, str | None]) -> None:
        directory = os.path.dirname(self.path)
        os.makedirs(directory, exist_ok=True)
        handle, temp = tempfile.mkstemp(prefix=".expiry-", dir=directory)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                json.dump(entries, out, indent=1, sort_keys=True)
            os.replace(temp, self.path)
        except BaseException:
            if os.path.exists(temp):
                os.unlink(temp)
            raise
