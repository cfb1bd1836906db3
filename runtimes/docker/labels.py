"""What a sandbox container carries in its labels, and how a sandbox is rebuilt from them.

Upstream's labels stay: `opensandbox.io/id`, `opensandbox.io/expires-at` (ISO 8601) and the
user's metadata as plain labels (so `docker ps --filter label=team=ai` works). We add the
few things needed to rebuild the sandbox exactly after a restart: which labels are the
user's (`opensandbox.io/metadata`, JSON, so an image's own labels never leak into `GET`),
the image as asked, the entrypoint, the creation time, and the server instance that owns
the container.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from opensandbox_emulator.runtimes.base import SandboxSpec
from opensandbox_emulator.runtimes.egress.policy import EgressPolicy, PolicyError

PREFIX = "opensandbox.io/"
ID = PREFIX + "id"
EXPIRES_AT = PREFIX + "expires-at"
INSTANCE = PREFIX + "instance"
METADATA = PREFIX + "metadata"
IMAGE = PREFIX + "image"
ENTRYPOINT = PREFIX + "entrypoint"
CREATED_AT = PREFIX + "created-at"
SNAPSHOT_ID = PREFIX + "snapshot-id"  # the snapshot a sandbox was restored from
OWNED_VOLUMES = PREFIX + "volume-managed-by"  # JSON list: volumes removed with the sandbox
EXTENSIONS = PREFIX + "extensions"
SECURE_ACCESS_TOKEN = PREFIX + "secure-access-token"
PLATFORM_OS = PREFIX + "platform-os"
PLATFORM_ARCH = PREFIX + "platform-arch"
EGRESS_POLICY = PREFIX + "egress-policy"  # the networkPolicy it was created with (JSON)
EGRESS_TOKEN = PREFIX + "egress-auth-token"  # upstream's label for the egress API's token


def container_name(sandbox_id: str) -> str:
    return f"sandbox-{sandbox_id}"


def make_labels(spec: SandboxSpec, instance: str) -> dict[str, str]:
    labels = {key: value for key, value in spec.metadata.items()
              if not key.startswith(PREFIX)}
    labels.update({
        ID: spec.sandbox_id,
        INSTANCE: instance,
        METADATA: json.dumps(dict(spec.metadata), separators=(",", ":")),
        IMAGE: spec.image,
        ENTRYPOINT: json.dumps(list(spec.entrypoint), separators=(",", ":")),
    })
    if spec.created_at is not None:
        labels[CREATED_AT] = spec.created_at.astimezone(UTC).isoformat()
    # Set even when empty: a container made from a snapshot image would otherwise inherit
    # the source's value from the image.
    labels[EXPIRES_AT] = spec.expires_at.astimezone(UTC).isoformat() if spec.expires_at else ""
    labels[SNAPSHOT_ID] = spec.snapshot_id or ""
    labels[OWNED_VOLUMES] = json.dumps(list(spec.owned_volumes)) if spec.owned_volumes else ""
    labels[PLATFORM_OS], labels[PLATFORM_ARCH] = spec.platform or ("", "")
    labels[EXTENSIONS] = json.dumps(dict(spec.extensions)) if spec.extensions else ""
    labels[SECURE_ACCESS_TOKEN] = spec.secure_access_token or ""
    labels[EGRESS_POLICY] = (json.dumps(spec.network_policy.document(), separators=(",", ":"))
                             if spec.network_policy is not None else "")
    labels[EGRESS_TOKEN] = spec.egress_token or ""
    return labels


def parse_time(text: str | None) -> datetime | None:
    """An ISO 8601 time from a label or from Docker (which gives nanoseconds and `Z`)."""
    if not text or text.startswith("0001-01-01"):
        return None
    text = text.replace("Z", "+00:00")
    head, dot, rest = text.partition(".")
    if dot:  # Python takes at most 6 fraction digits
        digits = len(rest) - len(rest.lstrip("0123456789"))
        rest = rest[:min(digits, 6)] + rest[digits:]
        text = f"{head}.{rest}"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def spec_from_container(attrs: Mapping[str, Any],
                        expiry_override: datetime | None = None) -> SandboxSpec:
    """The `SandboxSpec` a container was created from (as far as the server needs it)."""
    config = attrs.get("Config") or {}
    labels: dict[str, str] = dict(config.get("Labels") or {})
    try:
        metadata = json.loads(labels.get(METADATA, "{}"))
    except ValueError:
        metadata = {}
    try:
        entrypoint = json.loads(labels[ENTRYPOINT])
    except (KeyError, ValueError):
        entrypoint = list(config.get("Entrypoint") or []) + list(config.get("Cmd") or [])
    created = parse_time(labels.get(CREATED_AT)) or parse_time(attrs.get("Created"))
    expires = expiry_override or parse_time(labels.get(EXPIRES_AT))
    env = dict(item.split("=", 1) for item in config.get("Env") or [] if "=" in item)
    try:
        owned = [str(name) for name in json.loads(labels.get(OWNED_VOLUMES) or "[]")]
    except (ValueError, TypeError):
        owned = []
    platform = (labels.get(PLATFORM_OS, ""), labels.get(PLATFORM_ARCH, ""))
    try:
        extensions = {str(k): str(v) for k, v in json.loads(labels.get(EXTENSIONS) or "{}").items()}
    except (ValueError, AttributeError):
        extensions = {}
    network_policy = None
    if labels.get(EGRESS_POLICY):
        try:
            network_policy = EgressPolicy.from_document(json.loads(labels[EGRESS_POLICY]))
        except (ValueError, PolicyError):
            network_policy = EgressPolicy.from_document(None)  # unreadable: the strictest
    return SandboxSpec(sandbox_id=labels[ID], image=labels.get(IMAGE) or config.get("Image", ""),
                       entrypoint=entrypoint, env=env, metadata=metadata, created_at=created,
                       expires_at=expires, snapshot_id=labels.get(SNAPSHOT_ID) or None,
                       platform=platform if all(platform) else None, owned_volumes=owned,
                       extensions=extensions,
                       secure_access_token=labels.get(SECURE_ACCESS_TOKEN) or None,
                       network_policy=network_policy,
                       egress_token=labels.get(EGRESS_TOKEN) or None)
