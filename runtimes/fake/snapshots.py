"""Snapshots of fake sandboxes: copies of their private root directories.

A snapshot is `<state_dir>/snapshots/<id>/`: `snapshot.json` (which sandbox, its name, when)
and `root/`, a copy of the sandbox's private root as the host sees it. Volumes and the
host's read-only system directories are mounts inside the sandbox only, so they are not in
it; neither are processes or memory. The copy is `cp -a --reflink=auto` (GNU coreutils):
ownership, modes, timestamps, hard links, extended attributes and special files as they
were, sharing blocks with the sandbox where the filesystem can (btrfs, XFS), a full copy
where it cannot (ext4). A restore copies the other way, onto the new sandbox's fresh root.

The record is written before the copy and marked complete after it, so a copy the server
never finished shows up after a restart as incomplete rather than as a good snapshot. With
a temporary state directory snapshots last as long as the server; with a configured
`[fake] state_dir` they outlive it and are found again at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from collections import defaultdict
from datetime import datetime

from opensandbox_emulator.runtimes.base import SnapshotSpec, StoredSnapshot
from opensandbox_emulator.runtimes.failures import SnapshotFailed, SnapshotMissing

RECORD = "snapshot.json"


class SnapshotStore:
    def __init__(self, state_dir: str):
        self.directory = os.path.join(state_dir, "snapshots")
        # One operation at a time per snapshot: a delete waits for a restore reading it.
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    def _path(self, snapshot_id: str, *parts: str) -> str:
        if not snapshot_id or "/" in snapshot_id or snapshot_id in (".", ".."):
            raise SnapshotMissing(snapshot_id)
        return os.path.join(self.directory, snapshot_id, *parts)

    async def stored(self) -> list[StoredSnapshot]:
        return await asyncio.to_thread(self._read_all)

    def _read_all(self) -> list[StoredSnapshot]:
        found = []
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        for name in names:
            try:
                with open(os.path.join(self.directory, name, RECORD), encoding="utf-8") as f:
                    record = json.load(f)
                spec = SnapshotSpec(snapshot_id=name, sandbox_id=str(record["sandboxId"]),
                                    name=record.get("name"),
                                    created_at=datetime.fromisoformat(record["createdAt"]))
            except (OSError, ValueError, KeyError, TypeError):
                continue
            found.append(StoredSnapshot(spec, complete=bool(record.get("complete"))))
        return found

    async def capture(self, root: str, spec: SnapshotSpec) -> None:
        """Copy `root` (a sandbox's private root on the host) into the snapshot."""
        async with self._locks[spec.snapshot_id]:
            target = self._path(spec.snapshot_id)
            await asyncio.to_thread(os.makedirs, target, exist_ok=True)
            await asyncio.to_thread(self._write_record, spec, False)
            files = self._path(spec.snapshot_id, "root")
            try:
                await copy_tree(root, files, spec.snapshot_id)
            except BaseException:
                # What was copied is useless: free it now; the record says "incomplete".
                await asyncio.to_thread(shutil.rmtree, files, True)
                raise
            await asyncio.to_thread(self._write_record, spec, True)

    def _write_record(self, spec: SnapshotSpec, complete: bool) -> None:
        record = {"sandboxId": spec.sandbox_id, "name": spec.name,
                  "createdAt": spec.created_at.isoformat(), "complete": complete}
        path = self._path(spec.snapshot_id, RECORD)
        with open(path + ".new", "w", encoding="utf-8") as handle:
            json.dump(record, handle)
        os.replace(path + ".new", path)

    async def restore(self, snapshot_id: str, root: str) -> None:
        """Copy the snapshot's files onto `root`, a new sandbox's private root."""
        async with self._locks[snapshot_id]:
            source = self._path(snapshot_id, "root")
            if not await asyncio.to_thread(os.path.isdir, source):
                raise SnapshotMissing(snapshot_id, f"Snapshot {snapshot_id} holds no files "
                                                   "(it was deleted, or never completed).")
            await copy_tree(source, root, snapshot_id)

    async def delete(self, snapshot_id: str) -> None:
        async with self._locks[snapshot_id]:
            await asyncio.to_thread(shutil.rmtree, self._path(snapshot_id), True)
        self._locks.pop(snapshot_id, None)


async def copy_tree(source: str, target: str, snapshot_id: str) -> None:
    """`cp -a --reflink=auto source/. target/`: everything, metadata and all, merged into
    `target` (made if missing). Raises `SnapshotFailed` with cp's own words."""
    await asyncio.to_thread(os.makedirs, target, exist_ok=True)
    process = await asyncio.create_subprocess_exec(
        "cp", "-a", "--reflink=auto", "--", source.rstrip("/") + "/.", target,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    try:
        _, errors = await process.communicate()
    except BaseException:  # cancelled (the server stops): no copy keeps running behind us
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    if process.returncode != 0:
        said = "; ".join(errors.decode(errors="replace").strip().splitlines()[:5])
        raise SnapshotFailed(snapshot_id, "Copying the sandbox's files failed: "
                             + (said or f"cp exited with status {process.returncode}"))
