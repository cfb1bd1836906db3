"""Checks on a create request beyond its shape: startup source, metadata labels, timeout,
volumes, platform, extensions; and on a metadata patch.

Each failure raises the `ApiError` with upstream's code and a message that says how to
fix it. Host paths are checked against `[storage] allowed_host_paths` after resolving
symlinks, so a link inside an allowed directory cannot lead outside it.
"""

from __future__ import annotations

import os
import posixpath
import re
import shlex

from opensandbox_emulator.runtimes.base import VolumeMount
from opensandbox_emulator.runtimes.egress.policy import EgressPolicy, PolicyError
from opensandbox_emulator.runtimes.failures import PathTooLong
from opensandbox_emulator.runtimes.filesystem import check_length
from opensandbox_emulator.server.errors import (
    InvalidMetadataLabel,
    InvalidParameter,
    NotImplementedHere,
    VolumeError,
)
from opensandbox_emulator.server.lifecycle.models import CreateSandboxRequest, VolumeSpec

# `\Z`, not `$`: `$` also matches before a trailing newline, which would let "a\n" through.
LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?\Z")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
MIN_TIMEOUT = 60
RESERVED_PREFIX = "opensandbox.io/"
PLATFORM_OS = ("linux", "windows")
PLATFORM_ARCH = ("amd64", "arm64")
RENEW_ON_ACCESS = "access.renew.extend.seconds"
DEFAULT_SNAPSHOT_ENTRYPOINT = ["tail", "-f", "/dev/null"]


def check_timeout(timeout: int | None, maximum: int) -> None:
    if timeout is not None and not MIN_TIMEOUT <= timeout <= maximum:
        raise InvalidParameter(f"timeout must be between {MIN_TIMEOUT} and {maximum} seconds "
                               f"(got {timeout}); leave it out for a sandbox that never "
                               "expires.")


def check_entrypoint(entrypoint: list[str]) -> None:
    if not entrypoint[0].strip():
        raise InvalidParameter("entrypoint[0] must name a program, for example "
                               "[\"tail\", \"-f\", \"/dev/null\"].")
    entrypoint_argv(entrypoint)


def entrypoint_argv(entrypoint: list[str]) -> list[str]:
    """The argv to run. As upstream does, a single element with spaces is a command line
    (`["python -m http.server"]`) and is split the way a POSIX shell would split it."""
    if len(entrypoint) != 1 or " " not in entrypoint[0]:
        return list(entrypoint)
    try:
        argv = shlex.split(entrypoint[0])
    except ValueError as error:
        raise InvalidParameter(f"entrypoint {entrypoint[0]!r} cannot be split into "
                               f"arguments ({error}); pass each argument as its own element."
                               ) from error
    if not argv or not argv[0]:
        raise InvalidParameter(f"entrypoint {entrypoint[0]!r} does not name a program.")
    return argv


def check_metadata(metadata: dict[str, str] | None) -> None:
    """Kubernetes label rules: `[prefix/]name` keys and short values of a safe charset."""
    for key, value in (metadata or {}).items():
        prefix, slash, name = key.rpartition("/")
        # With a '/', the prefix must be a non-empty DNS subdomain ("/a" is not a key).
        valid_key = (0 < len(name) <= 63 and LABEL_NAME.match(name) is not None and
                     (not slash or (0 < len(prefix) <= 253 and
                                    DNS_SUBDOMAIN.match(prefix) is not None)))
        if not valid_key:
            raise InvalidMetadataLabel(
                f"Metadata key '{key}' is not a valid Kubernetes label key: use up to 63 "
                "letters, digits, '-', '_' or '.', starting and ending with a letter or digit, "
                "optionally after a DNS-subdomain prefix and '/'.")
        if len(value) > 63 or not LABEL_NAME.match(value):
            raise InvalidMetadataLabel(
                f"Metadata value '{value}' is not a valid Kubernetes label value: use up to 63 "
                "letters, digits, '-', '_' or '.', starting and ending with a letter or digit.")


def check_metadata_patch(patch: dict[str, str | None]) -> None:
    """Upstream's order: a reserved key is refused (even to delete it), then each value
    set is checked as a label; keys being deleted are not checked."""
    for key in patch:
        if key.startswith(RESERVED_PREFIX):
            raise InvalidMetadataLabel(f"Metadata key '{key}' is reserved "
                                       f"({RESERVED_PREFIX} prefix).")
    check_metadata({k: v for k, v in patch.items() if v is not None})


def check_platform(request: CreateSandboxRequest) -> tuple[str, str] | None:
    """`(os, arch)` lower-cased, or None; upstream's two enums."""
    if request.platform is None:
        return None
    os_name, arch = request.platform.os.strip().lower(), request.platform.arch.strip().lower()
    if os_name not in PLATFORM_OS or arch not in PLATFORM_ARCH:
        raise InvalidParameter(f"platform {request.platform.os}/{request.platform.arch} is not "
                               f"supported: os must be one of {', '.join(PLATFORM_OS)} and "
                               f"arch one of {', '.join(PLATFORM_ARCH)}.")
    return os_name, arch


def check_extensions(extensions: dict[str, str] | None) -> None:
    for key, value in (extensions or {}).items():
        if key == "poolRef":
            raise InvalidParameter("extensions.poolRef (create from a pre-warmed pool) is a "
                                   "Kubernetes feature; this server has no pools. Leave it "
                                   "out.", code="SANDBOX::UNSUPPORTED_POOL_REF")
        if key == RENEW_ON_ACCESS and not (value.isascii() and value.isdigit() and
                                           300 <= int(value) <= 86400):
            raise InvalidParameter(f"extensions.{RENEW_ON_ACCESS} must be a whole number of "
                                   f"seconds from 300 to 86400 (got {value!r}).")


def renew_on_access_seconds(extensions: dict[str, str] | None) -> int | None:
    value = (extensions or {}).get(RENEW_ON_ACCESS)
    return int(value) if value is not None else None


def _under(path: str, prefix: str) -> bool:
    prefix = prefix.rstrip("/") or "/"
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def _check_sub_path(volume: VolumeSpec) -> str | None:
    sub = volume.sub_path
    if not sub:
        return None
    if sub.startswith("/") or ".." in sub.split("/"):
        raise VolumeError(f"Volume '{volume.name}': subPath '{sub}' must be a relative path "
                          "without '..' components.", code="VOLUME::INVALID_SUB_PATH")
    return sub


def _check_host_path(volume: VolumeSpec, sub: str | None, allowed: list[str]) -> str:
    assert volume.host is not None
    path = volume.host.path
    if "/.." in path or "//" in path or (path != "/" and path.endswith("/")) or \
            posixpath.normpath(path) != path:
        raise VolumeError(f"Volume '{volume.name}': host path '{path}' is not normalized; "
                          "write it without '..', '//' or a trailing '/'.",
                          code="VOLUME::INVALID_HOST_PATH")
    joined = posixpath.join(path, sub) if sub else path

    def refuse(shown: str) -> VolumeError:
        return VolumeError(f"Host path '{shown}' is not under any allowed prefix. Allowed "
                           f"prefixes: {allowed}. Add it to [storage] allowed_host_paths or "
                           "use a path under one of them.", code="VOLUME::HOST_PATH_NOT_ALLOWED")

    if allowed and not any(_under(joined, prefix) for prefix in allowed):
        raise refuse(joined)
    if not os.path.exists(joined):
        raise VolumeError(f"Volume '{volume.name}': host path '{joined}' does not exist on the "
                          "server; create it first.", code="VOLUME::HOST_PATH_NOT_FOUND")
    real = os.path.realpath(joined)
    if allowed and not any(_under(real, os.path.realpath(prefix)) for prefix in allowed):
        raise refuse(f"{joined}' (resolves to '{real}")
    if not os.path.isdir(real):
        raise VolumeError(f"Volume '{volume.name}': host path '{joined}' is not a directory.",
                          code="VOLUME::INVALID_HOST_PATH")
    return real


def check_volumes(volumes: list[VolumeSpec] | None, allowed: list[str]) -> list[VolumeMount]:
    """Validate the volumes and resolve host paths; pvc volumes are left to the runtime."""
    mounts: list[VolumeMount] = []
    names: set[str] = set()
    paths: set[str] = set()
    for volume in volumes or []:
        if volume.name in names:
            raise VolumeError(f"Volume name '{volume.name}' is used more than once; each volume "
                              "needs a unique name.", code="VOLUME::DUPLICATE_NAME")
        names.add(volume.name)
        mount_path = posixpath.normpath(volume.mount_path)
        if mount_path in paths:
            raise VolumeError(f"mountPath '{mount_path}' is used by more than one volume; mount "
                              "each volume at its own path.",
                              code="VOLUME::DUPLICATE_MOUNT_PATH")
        paths.add(mount_path)
        if mount_path == "/":
            raise VolumeError(f"Volume '{volume.name}': mountPath cannot be '/'.",
                              code="VOLUME::INVALID_MOUNT_PATH")
        try:
            check_length(mount_path)
        except PathTooLong as error:
            raise VolumeError(f"Volume '{volume.name}': mountPath is too long ({error.message}).",
                              code="VOLUME::INVALID_MOUNT_PATH") from error
        sub = _check_sub_path(volume)
        if volume.ossfs is not None:
            raise VolumeError(f"Volume '{volume.name}': the ossfs backend (Alibaba Cloud OSS) "
                              "is not supported by this server; use a host or pvc volume.",
                              code="VOLUME::UNSUPPORTED_BACKEND")
        if volume.host is not None:
            source = _check_host_path(volume, sub, allowed)
            mounts.append(VolumeMount(volume.name, "host", source, mount_path,
                                      volume.read_only, sub))
        else:
            pvc = volume.pvc
            assert pvc is not None
            mounts.append(VolumeMount(volume.name, "pvc", pvc.claim_name, mount_path,
                                      volume.read_only, sub,
                                      create_if_missing=pvc.create_if_not_exists,
                                      delete_with_sandbox=pvc.delete_on_sandbox_termination))
    return mounts


def check_source(request: CreateSandboxRequest) -> list[str]:
    """Where the sandbox starts from; returns its entrypoint as given (or the default)."""
    if request.template_id is not None:
        raise NotImplementedHere(
            "Sandboxes from templates (templateId) are not served by this server, nor by "
            "upstream's: create the sandbox from an image or from a snapshotId.")
    if (request.image is None) == (request.snapshot_id is None):
        raise InvalidParameter("Exactly one of image or snapshotId must be given: image to "
                               "start from a container image, snapshotId to restore a "
                               "snapshot.")
    if request.entrypoint is None:
        if request.image is not None:
            raise InvalidParameter("entrypoint is required with image, for example "
                                   "[\"tail\", \"-f\", \"/dev/null\"].")
        return list(DEFAULT_SNAPSHOT_ENTRYPOINT)
    check_entrypoint(request.entrypoint)
    return list(request.entrypoint)


def check_network_policy(request: CreateSandboxRequest) -> EgressPolicy | None:
    """The policy to enforce, read as upstream's sidecar reads it (`{}` is deny-all); None
    when the request has none (unrestricted egress)."""
    if request.network_policy is None:
        return None
    try:
        return EgressPolicy.from_document(
            request.network_policy.model_dump(by_alias=True, exclude_none=True))
    except PolicyError as error:
        raise InvalidParameter(f"networkPolicy: {error}") from None


def check_credential_proxy(request: CreateSandboxRequest) -> None:
    if request.credential_proxy is None or not request.credential_proxy.enabled:
        return
    if request.network_policy is None:
        raise InvalidParameter("credentialProxy.enabled requires networkPolicy.")
    raise NotImplementedHere(
        "credentialProxy.enabled (the Credential Vault's transparent MITM proxy, which "
        "injects credentials into HTTPS requests) is not run by this server; leave it out "
        "or set enabled to false (networkPolicy alone is enforced).")


def check_create(request: CreateSandboxRequest, *, max_timeout: int,
                 allowed_host_paths: list[str]) -> list[VolumeMount]:
    check_source(request)
    check_timeout(request.timeout, max_timeout)
    check_metadata(request.metadata)
    check_platform(request)
    check_extensions(request.extensions)
    check_credential_proxy(request)
    return check_volumes(request.volumes, allowed_host_paths)
