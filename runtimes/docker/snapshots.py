"""Snapshots of Docker sandboxes: `docker commit` into labelled local images.

A snapshot is the image `opensandbox-snapshots:<snapshot id>`, committed from the sandbox's
container (the engine pauses a running container for the commit and leaves a paused one
as it is). It holds the container's writable filesystem; named volumes and bind mounts are
not part of a commit, and neither are processes or memory. The image carries its snapshot
in labels (which sandbox, its name, when, and the server instance), so a restarted server
finds its snapshots again, as it adopts its containers.

A commit bakes the container's configuration into the image, and a container made from it
inherits that. So the commit overrides what belongs to the source sandbox rather than to
its image: each environment variable the sandbox was given goes back to the image's own
value (or empty), and each label of ours or of the user's is emptied. A sandbox restored
from the snapshot then takes its environment and metadata from its own request only.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from docker.errors import APIError, ImageNotFound, NotFound

from opensandbox_emulator.runtimes.base import SnapshotSpec, StoredSnapshot
from opensandbox_emulator.runtimes.docker import labels
from opensandbox_emulator.runtimes.docker.engine import Engine, explain, wrong_state
from opensandbox_emulator.runtimes.failures import (
    SandboxMissing,
    SnapshotFailed,
    SnapshotInUse,
    SnapshotMissing,
)

REPOSITORY = "opensandbox-snapshots"
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
SNAPSHOT_OF = labels.PREFIX + "snapshot-of"
SNAPSHOT_NAME = labels.PREFIX + "snapshot-name"
SNAPSHOT_CREATED_AT = labels.PREFIX + "snapshot-created-at"


def image_of(snapshot_id: str) -> str:
    return f"{REPOSITORY}:{snapshot_id}"


def _quoted(value: str) -> str:
    """A Dockerfile word in double quotes: `\\`, `"` and `$` escaped, so nothing expands."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    return f'"{escaped}"'


def _split(env: list[str] | None) -> dict[str, str]:
    return dict(item.split("=", 1) if "=" in item else (item, "") for item in env or [])


async def commit(engine: Engine, sandbox_id: str, spec: SnapshotSpec, instance: str) -> None:
    api = engine.api
    name = labels.container_name(sandbox_id)
    try:
        container = await engine.call(api.inspect_container, name)
    except NotFound as error:
        raise SandboxMissing(sandbox_id) from error
    config = container.get("Config") or {}
    try:
        image = await engine.call(api.inspect_image, container.get("Image", ""))
        base = image.get("Config") or {}
    except APIError:
        base = {}
    base_env = _split(base.get("Env"))
    env = {key: base_env.get(key, "") for key in _split(config.get("Env"))}
    base_labels = base.get("Labels") or {}
    image_labels = {key: "" for key in config.get("Labels") or {} if key not in base_labels}
    image_labels.update({
        labels.INSTANCE: instance,
        SNAPSHOT_OF: spec.sandbox_id,
        SNAPSHOT_NAME: spec.name or "",
        SNAPSHOT_CREATED_AT: spec.created_at.astimezone(UTC).isoformat(),
    })
    # As Dockerfile instructions (`changes`), which the engine applies to a copy of the
    # container's config: values set this way replace the source's (a `conf` object would
    # instead be merged with it, key by key).
    changes = []
    settable = {k: v for k, v in env.items() if ENV_NAME.match(k)}
    if settable:
        changes.append("ENV " + " ".join(f"{k}={_quoted(v)}" for k, v in settable.items()))
    changes.append("LABEL " + " ".join(f"{_quoted(k)}={_quoted(v)}"
                                       for k, v in image_labels.items()))
    try:
        await engine.call(api.commit, name, repository=REPOSITORY, tag=spec.snapshot_id,
                          changes=changes, pause=True)
    except NotFound as error:
        raise SandboxMissing(sandbox_id) from error
    except APIError as error:
        raise SnapshotFailed(spec.snapshot_id, f"docker commit of sandbox {sandbox_id} "
                                               f"failed: {explain(error)}") from error


async def stored(engine: Engine, instance: str) -> list[StoredSnapshot]:
    images = await engine.call(engine.api.images, filters={
        "label": [SNAPSHOT_OF, f"{labels.INSTANCE}={instance}"], "reference": REPOSITORY})
    found = []
    for image in images:
        marks: dict[str, Any] = image.get("Labels") or {}
        for tag in image.get("RepoTags") or []:
            repository, _, snapshot_id = tag.rpartition(":")
            if repository != REPOSITORY or not marks.get(SNAPSHOT_OF):
                continue
            created = labels.parse_time(marks.get(SNAPSHOT_CREATED_AT)) or \
                datetime.fromtimestamp(int(image.get("Created") or 0), UTC)
            found.append(StoredSnapshot(SnapshotSpec(
                snapshot_id=snapshot_id, sandbox_id=marks[SNAPSHOT_OF],
                name=marks.get(SNAPSHOT_NAME) or None, created_at=created)))
    return found


async def require(engine: Engine, snapshot_id: str) -> str:
    """The image a sandbox restored from `snapshot_id` runs; `SnapshotMissing` if gone."""
    reference = image_of(snapshot_id)
    try:
        await engine.call(engine.api.inspect_image, reference)
    except (ImageNotFound, NotFound) as error:
        raise SnapshotMissing(snapshot_id, f"Snapshot {snapshot_id} has no image "
                                           f"({reference}) on the Docker engine any more.") \
            from error
    return reference


async def remove(engine: Engine, snapshot_id: str) -> None:
    reference = image_of(snapshot_id)
    try:
        await engine.call(engine.api.remove_image, reference)
    except (ImageNotFound, NotFound):
        return
    except APIError as error:
        if not wrong_state(error):
            raise SnapshotFailed(snapshot_id, f"Removing the image {reference} failed: "
                                              f"{explain(error)}") from error
        users = await engine.call(engine.api.containers, all=True,
                                  filters={"ancestor": reference})
        names = ", ".join(sorted(c["Names"][0].lstrip("/") for c in users)) or "a container"
        raise SnapshotInUse(snapshot_id, f"Snapshot {snapshot_id} is the image of {names}; "
                                         "delete the sandboxes restored from it first.") \
            from error
