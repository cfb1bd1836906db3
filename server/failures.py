"""Runtime failures as API errors: the one table.

Runtimes raise the classes of `runtimes.failures`, which carry facts and a sentence but no
status and no code. `FAILURES` gives each class its status and upstream code; `api_error`
looks a failure up along its class's MRO (as Starlette looks up exception handlers), so a
subclass without a row of its own is reported like its nearest ancestor that has one, and
anything else like `RuntimeFailure` itself. The code of a request an API cannot act on
differs per API (`SANDBOX::INVALID_PARAMETER` or `INVALID_REQUEST_BODY`); its row says
`INVALID_INPUT` and the API in hand fills it in.

Routes rewrap a failure only where upstream words that route's error differently; each
such place says so beside it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from opensandbox_emulator.runtimes.failures import (
    CrossMountMove,
    EgressFailed,
    EgressUnenforceable,
    EntrypointNotFound,
    FileBusy,
    FileExists,
    FileNotFound,
    HelperFailed,
    ImageUnavailable,
    InvalidArgument,
    IsADirectory,
    MountPathRefused,
    NetworkNotFound,
    NoNetworkAddress,
    NotADirectory,
    NotARegularFile,
    PathNotAccessible,
    PathReadOnly,
    PathTooLong,
    PauseFailed,
    PortUnreachable,
    QueryFailed,
    RemoveFailed,
    ResumeFailed,
    RuntimeFailure,
    SandboxMissing,
    SnapshotFailed,
    SnapshotInUse,
    SnapshotMissing,
    SpawnFailed,
    StartFailed,
    SubPathNotFound,
    SubPathOutside,
    SubPathUnsupported,
    TimedOut,
    Unavailable,
    UnknownGroup,
    UnknownUser,
    Unsupported,
    VolumeNotFound,
    VolumeQueryFailed,
    VolumesUnsupported,
)
from opensandbox_emulator.server.errors import Api, ApiError

INVALID_INPUT = "<the API's code for a request it cannot act on>"


def _refused_or_broken(failure: Any) -> int:
    """409 when the sandbox's state refused it (paused, stopped), else 500."""
    return 409 if failure.wrong_state else 500


@dataclass(frozen=True)
class Reply:
    status: int | Callable[[Any], int]
    code: str


FAILURES: dict[type[RuntimeFailure], Reply] = {
    RuntimeFailure: Reply(500, "RUNTIME_ERROR"),
    InvalidArgument: Reply(400, INVALID_INPUT),
    Unsupported: Reply(501, "RUNTIME_ERROR"),
    Unavailable: Reply(503, "DOCKER::UNAVAILABLE"),
    TimedOut: Reply(504, "DOCKER::HELPER_TIMEOUT"),
    HelperFailed: Reply(500, "DOCKER::HELPER_FAILED"),
    # sandboxes
    SandboxMissing: Reply(404, "DOCKER::SANDBOX_NOT_FOUND"),
    StartFailed: Reply(500, "DOCKER::SANDBOX_START_FAILED"),
    # Upstream's code, but the client's mistake: 400, not 500.
    EntrypointNotFound: Reply(400, "DOCKER::SANDBOX_START_FAILED"),
    ImageUnavailable: Reply(500, "DOCKER::SANDBOX_IMAGE_PULL_FAILED"),
    QueryFailed: Reply(500, "DOCKER::SANDBOX_QUERY_FAILED"),
    PauseFailed: Reply(_refused_or_broken, "DOCKER::SANDBOX_PAUSE_FAILED"),
    ResumeFailed: Reply(_refused_or_broken, "DOCKER::SANDBOX_RESUME_FAILED"),
    RemoveFailed: Reply(500, "DOCKER::SANDBOX_DELETE_FAILED"),
    NetworkNotFound: Reply(500, "DOCKER::NETWORK_NOT_FOUND"),
    EgressUnenforceable: Reply(501, "GENERAL::NOT_IMPLEMENTED"),
    EgressFailed: Reply(500, "SANDBOX::EGRESS_FAILED"),
    NoNetworkAddress: Reply(503, "DOCKER::NETWORK_MODE_ENDPOINT_UNAVAILABLE"),
    # snapshots
    SnapshotFailed: Reply(500, "SNAPSHOT::CREATE_FAILED"),
    SnapshotMissing: Reply(404, "SNAPSHOT::NOT_FOUND"),
    SnapshotInUse: Reply(409, "SNAPSHOT::DELETE_CONFLICT"),
    PortUnreachable: Reply(502, "GENERAL::UNKNOWN_ERROR"),
    # processes
    SpawnFailed: Reply(_refused_or_broken, "RUNTIME_ERROR"),
    # volumes
    VolumeNotFound: Reply(400, "VOLUME::PVC_NOT_FOUND"),
    VolumeQueryFailed: Reply(500, "VOLUME::PVC_INSPECT_FAILED"),
    VolumesUnsupported: Reply(400, "VOLUME::UNSUPPORTED"),
    SubPathNotFound: Reply(400, "VOLUME::PVC_SUBPATH_NOT_FOUND"),
    SubPathOutside: Reply(400, "VOLUME::INVALID_SUB_PATH"),
    SubPathUnsupported: Reply(400, "VOLUME::PVC_SUBPATH_UNSUPPORTED_DRIVER"),
    MountPathRefused: Reply(400, "VOLUME::INVALID_MOUNT_PATH"),
    # files
    FileNotFound: Reply(404, "FILE_NOT_FOUND"),
    IsADirectory: Reply(400, "FILE_IS_DIRECTORY"),
    NotADirectory: Reply(400, "NOT_A_DIRECTORY"),
    NotARegularFile: Reply(400, "INVALID_FILE"),
    FileExists: Reply(409, "FILE_ALREADY_EXISTS"),
    FileBusy: Reply(409, "FILE_BUSY"),
    PathTooLong: Reply(400, "FILE_PATH_TOO_LONG"),
    PathReadOnly: Reply(403, "FILE_READ_ONLY"),
    PathNotAccessible: Reply(403, "FILE_NOT_ACCESSIBLE"),
    CrossMountMove: Reply(400, "CROSS_MOUNT_MOVE"),
    UnknownUser: Reply(400, "UNKNOWN_USER"),
    UnknownGroup: Reply(400, "UNKNOWN_GROUP"),
}


def reply_for(failure: RuntimeFailure) -> Reply:
    for kind in type(failure).__mro__:
        reply = FAILURES.get(kind)
        if reply is not None:
            return reply
    return FAILURES[RuntimeFailure]


def api_error(failure: RuntimeFailure, api: Api, *, message: str | None = None) -> ApiError:
    """`failure` as `api` reports it; `message` replaces the failure's own sentence (for
    the routes whose wording upstream varies)."""
    reply = reply_for(failure)
    status = reply.status(failure) if callable(reply.status) else reply.status
    code = api.invalid_code if reply.code == INVALID_INPUT else reply.code
    return ApiError(failure.message if message is None else message, code=code,
                    status_code=status)
