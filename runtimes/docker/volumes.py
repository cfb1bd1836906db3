"""Sandbox volumes as Docker mounts.

A `host` volume arrives already checked and resolved by the server (allowlist, existence,
symlinks) and becomes a bind mount of that directory. A `pvc` volume is a Docker named
volume that must already exist: without a subPath it is mounted as a volume; with one, the
volume's mountpoint plus the subPath is bind-mounted, which only a `local`-driver volume
has. Bind mounts use the `Mounts` API (not `Binds`), so the engine refuses a source that does
not exist instead of silently creating an empty directory.

Paths in bind mounts are paths on the engine's host. When the server itself runs in a
container, mount the allowed host directories into it at the same paths (the compose file
does), so that what the server checks is what the engine mounts.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass

from docker.errors import APIError, NotFound
from docker.types import Mount

from opensandbox_emulator.runtimes.base import VolumeMount
from opensandbox_emulator.runtimes.docker.engine import Engine, explain
from opensandbox_emulator.runtimes.failures import (
    SubPathNotFound,
    SubPathOutside,
    SubPathUnsupported,
    VolumeNotFound,
    VolumeQueryFailed,
)


@dataclass(frozen=True)
class NamedVolume:
    name: str
    driver: str
    mountpoint: str


async def named_volume(engine: Engine, claim_name: str) -> NamedVolume:
    """The Docker volume a `pvc` volume names; it must exist."""
    try:
        volume = await engine.call(engine.client.volumes.get, claim_name)
    except NotFound as error:
        raise VolumeNotFound(claim_name, f"Docker volume '{claim_name}' does not exist; "
                             f"create it first (docker volume create {claim_name}).") \
            from error
    except APIError as error:
        raise VolumeQueryFailed(claim_name, f"Inspecting Docker volume '{claim_name}' "
                                f"failed: {explain(error)}") from error
    attrs = volume.attrs
    return NamedVolume(claim_name, attrs.get("Driver", ""), attrs.get("Mountpoint", ""))


def sub_path_source(volume: NamedVolume, sub_path: str) -> str:
    """`<Mountpoint>/<subPath>`, refusing a driver without a host directory and a subPath
    that leaves the volume (checked on the engine's host paths when this process sees
    them; otherwise the engine itself refuses a missing source at create time)."""
    if volume.driver != "local":
        raise SubPathUnsupported(
            volume.driver, f"Volume '{volume.name}' uses the '{volume.driver}' driver; a "
            "subPath needs a 'local' volume, whose data is a directory on the host. Drop the "
            "subPath or use a local volume.")
    base = posixpath.normpath(volume.mountpoint)
    target = posixpath.normpath(posixpath.join(base, sub_path))
    if not (target == base or target.startswith(base + "/")):
        raise SubPathOutside(sub_path, f"subPath '{sub_path}' leaves volume '{volume.name}'.")
    if os.path.isdir(base):  # this process sees the engine's host filesystem
        real_base = os.path.realpath(base)
        real = os.path.realpath(target)
        if not (real == real_base or real.startswith(real_base + "/")):
            raise SubPathOutside(sub_path, f"subPath '{sub_path}' leaves volume '{volume.name}' "
                                           "(through a symbolic link).")
        if not os.path.isdir(real):
            raise SubPathNotFound(sub_path, f"subPath '{sub_path}' does not exist in volume "
                                            f"'{volume.name}'; create that directory in the "
                                            "volume first.")
        return real
    return target


def to_mount(volume: VolumeMount, named: NamedVolume | None) -> Mount:
    if volume.kind == "host":
        return Mount(target=volume.mount_path, source=volume.source, type="bind",
                     read_only=volume.read_only)
    assert named is not None
    if volume.sub_path:
        return Mount(target=volume.mount_path, source=sub_path_source(named, volume.sub_path),
                     type="bind", read_only=volume.read_only)
    return Mount(target=volume.mount_path, source=named.name, type="volume",
                 read_only=volume.read_only)


MANAGED_BY = "opensandbox.io/volume-managed-by"


async def create_volume(engine: Engine, claim_name: str, sub_path: str | None) -> None:
    """`docker volume create` for `pvc.createIfNotExists`, labelled as this server's (so it
    is the only kind `remove_volume` removes); with a subPath, that directory is made in it
    when this process sees the volume's directory."""
    try:
        volume = await engine.call(engine.client.volumes.create, claim_name,
                                   labels={MANAGED_BY: "server"})
    except APIError as error:
        raise VolumeQueryFailed(claim_name, f"Creating Docker volume '{claim_name}' failed: "
                                f"{explain(error)}") from error
    mountpoint = (volume.attrs or {}).get("Mountpoint", "")
    if sub_path and mountpoint and os.path.isdir(mountpoint):
        target = os.path.realpath(os.path.join(mountpoint, sub_path))
        if target.startswith(os.path.realpath(mountpoint) + "/"):
            os.makedirs(target, exist_ok=True)


async def remove_volume(engine: Engine, claim_name: str) -> None:
    """Remove a volume this server created; any other volume is left alone."""
    try:
        volume = await engine.call(engine.client.volumes.get, claim_name)
        if (volume.attrs.get("Labels") or {}).get(MANAGED_BY) != "server":
            return
        await engine.call(volume.remove)
    except NotFound:
        return
    except APIError as error:
        raise VolumeQueryFailed(claim_name, f"Removing Docker volume '{claim_name}' failed: "
                                f"{explain(error)}") from error
