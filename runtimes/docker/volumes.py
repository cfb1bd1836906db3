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

from docker.types import Mount

from opensandbox_emulator.runtimes.base import RuntimeFailure, VolumeMount


@dataclass(frozen=True)
class NamedVolume:
    name: str
    driver: str
    mountpoint: str


def pvc_failure(message: str, code: str, status: int = 400) -> RuntimeFailure:
    return RuntimeFailure(message, code=code, status=status)


def sub_path_source(volume: NamedVolume, sub_path: str) -> str:
    """`<Mountpoint>/<subPath>`, refusing a driver without a host directory and a subPath
    that leaves the volume (checked on the engine's host paths when this process sees
    them; otherwise the engine itself refuses a missing source at create time)."""
    if volume.driver != "local":
        raise pvc_failure(f"Volume '{volume.name}' uses the '{volume.driver}' driver; a subPath "
                          "needs a 'local' volume, whose data is a directory on the host. Drop "
                          "the subPath or use a local volume.",
                          "VOLUME::PVC_SUBPATH_UNSUPPORTED_DRIVER")
    base = posixpath.normpath(volume.mountpoint)
    target = posixpath.normpath(posixpath.join(base, sub_path))
    if not (target == base or target.startswith(base + "/")):
        raise pvc_failure(f"subPath '{sub_path}' leaves volume '{volume.name}'.",
                          "VOLUME::INVALID_SUB_PATH")
    if os.path.isdir(base):  # this process sees the engine's host filesystem
        real_base = os.path.realpath(base)
        real = os.path.realpath(target)
        if not (real == real_base or real.startswith(real_base + "/")):
            raise pvc_failure(f"subPath '{sub_path}' leaves volume '{volume.name}' (through a "
                              "symbolic link).", "VOLUME::INVALID_SUB_PATH")
        if not os.path.isdir(real):
            raise pvc_failure(f"subPath '{sub_path}' does not exist in volume '{volume.name}'; "
                              "create that directory in the volume first.",
                              "VOLUME::PVC_SUBPATH_NOT_FOUND")
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
