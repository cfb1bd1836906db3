"""What can go wrong in a runtime: small exception classes that carry the facts.

A runtime says *what* happened (this sandbox is missing, that path is read-only, a volume
does not exist) with the facts as attributes and a sentence for a person in `message`. It
never says how an API reports it: the server keeps one table (`server/failures.py`) from
these classes to a status and an upstream error code, looked up along each class's MRO,
so a new subclass is reported like its nearest listed ancestor until it gets a row.
"""

from __future__ import annotations


class RuntimeFailure(Exception):
    """Something the runtime could not do; `message` says what, for a person."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


# --- sandboxes -----------------------------------------------------------------------------


class SandboxMissing(RuntimeFailure):
    """No sandbox with this id (any more): never created, deleted, or removed behind the
    server's back."""

    def __init__(self, sandbox_id: str, message: str | None = None):
        super().__init__(message or f"Sandbox {sandbox_id} not found.")
        self.sandbox_id = sandbox_id


class StartFailed(RuntimeFailure):
    """The sandbox could not be created, or its main process could not start."""


class EntrypointNotFound(StartFailed):
    """The entrypoint names a program the sandbox does not have: the request's fault."""

    def __init__(self, program: str, message: str):
        super().__init__(message)
        self.program = program


class ImageUnavailable(RuntimeFailure):
    """The sandbox's image is not there and could not be pulled."""

    def __init__(self, image: str, message: str):
        super().__init__(message)
        self.image = image


class QueryFailed(RuntimeFailure):
    """Reading the state or the usage of a sandbox failed."""

    def __init__(self, sandbox_id: str, message: str):
        super().__init__(message)
        self.sandbox_id = sandbox_id


class PauseFailed(RuntimeFailure):
    """`wrong_state`: refused because of the sandbox's state (not running, already
    paused), rather than broken."""

    def __init__(self, sandbox_id: str, reason: str, *, wrong_state: bool = False):
        super().__init__(f"Pausing sandbox {sandbox_id} failed: {reason}")
        self.sandbox_id = sandbox_id
        self.wrong_state = wrong_state


class ResumeFailed(RuntimeFailure):
    """`wrong_state`: refused because of the sandbox's state (not paused)."""

    def __init__(self, sandbox_id: str, reason: str, *, wrong_state: bool = False):
        super().__init__(f"Resuming sandbox {sandbox_id} failed: {reason}")
        self.sandbox_id = sandbox_id
        self.wrong_state = wrong_state


class RemoveFailed(RuntimeFailure):
    def __init__(self, sandbox_id: str, reason: str):
        super().__init__(f"Removing sandbox {sandbox_id} failed: {reason}")
        self.sandbox_id = sandbox_id


class HelperFailed(RuntimeFailure):
    """A small operation the runtime runs inside the sandbox broke off."""

    def __init__(self, sandbox_id: str, message: str):
        super().__init__(message)
        self.sandbox_id = sandbox_id


class TimedOut(RuntimeFailure):
    """An operation inside the sandbox did not answer in time."""

    def __init__(self, seconds: float, message: str):
        super().__init__(message)
        self.seconds = seconds


# --- snapshots -----------------------------------------------------------------------------


class SnapshotFailed(RuntimeFailure):
    """A snapshot could not be taken."""

    def __init__(self, snapshot_id: str, message: str):
        super().__init__(message)
        self.snapshot_id = snapshot_id


class SnapshotMissing(RuntimeFailure):
    """The snapshot a sandbox is to start from is not there (any more)."""

    def __init__(self, snapshot_id: str, message: str | None = None):
        super().__init__(message or f"Snapshot {snapshot_id} not found.")
        self.snapshot_id = snapshot_id


class SnapshotInUse(RuntimeFailure):
    """The snapshot cannot be removed while something still uses it (a Docker image that
    containers run from)."""

    def __init__(self, snapshot_id: str, message: str):
        super().__init__(message)
        self.snapshot_id = snapshot_id


# --- processes -----------------------------------------------------------------------------


class SpawnFailed(RuntimeFailure):
    """The process could not start (a missing cwd or shell); the message names the cause.
    `wrong_state`: the sandbox cannot run anything now (paused, stopped)."""

    def __init__(self, message: str, *, wrong_state: bool = False):
        super().__init__(message)
        self.wrong_state = wrong_state


class ExecutableNotFound(SpawnFailed):
    """The program is not on the sandbox's PATH (execd then falls back from bash to sh).
    The message keeps Go's wording: `exec: "bash": executable file not found in $PATH`."""

    def __init__(self, program: str):
        super().__init__(f'exec: "{program}": executable file not found in $PATH')
        self.program = program


# --- what the runtime was asked ------------------------------------------------------------


class InvalidArgument(RuntimeFailure):
    """A value the runtime cannot act on (a resource limit, a mode, a move into itself);
    `field` names it where one field is to blame."""

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.field = field


class NulInArgument(InvalidArgument):
    """A path, argument or environment entry holds a NUL byte, which no system call takes."""

    def __init__(self, field: str):
        super().__init__(f"{field} must not contain a NUL byte (\\u0000)", field=field)


class BadEnvironmentName(InvalidArgument):
    """An environment variable name that is empty or holds `=` (the kernel would read
    `A=B=c` as `A` set to `B=c`)."""

    def __init__(self, name: str):
        super().__init__(f"environment variable name {name!r} is empty or contains '='",
                         field="env")
        self.name = name


class SymlinkLoop(InvalidArgument):
    def __init__(self, path: str):
        super().__init__(f"Too many levels of symbolic links in {path}.", field="path")
        self.path = path


class SymlinkRefused(InvalidArgument):
    """A directory listing asked to start at a symlink (upstream refuses to traverse it)."""

    def __init__(self, path: str):
        super().__init__(f"path is a symbolic link, refusing to traverse: {path}",
                         field="path")
        self.path = path


class Unsupported(RuntimeFailure):
    """This runtime does not do that at all."""


class Unavailable(RuntimeFailure):
    """Something the runtime needs is not there now (the Docker engine, runc)."""


class NoNetworkAddress(Unavailable):
    """The sandbox has no address on its network (it is not running, say)."""

    def __init__(self, sandbox_id: str, network: str):
        super().__init__(f"Sandbox {sandbox_id} has no address on Docker network '{network}'; "
                         "is it running?")
        self.sandbox_id = sandbox_id
        self.network = network


class PortUnreachable(RuntimeFailure):
    """Nothing accepts connections on that port of the sandbox."""

    def __init__(self, port: int, reason: str):
        super().__init__(f"Could not connect to port {port} inside the sandbox: {reason}. "
                         "Is a server listening on that port inside the sandbox?")
        self.port = port
        self.reason = reason


class EgressUnenforceable(Unsupported):
    """This server cannot enforce an egress policy on this sandbox; `reason` says why. A
    sandbox is never left running with a policy it does not enforce."""

    def __init__(self, reason: str):
        super().__init__(f"networkPolicy cannot be enforced here: {reason}. Create the "
                         "sandbox without networkPolicy, or see GET /health (egress) for "
                         "what this server can enforce.")
        self.reason = reason


class EgressFailed(RuntimeFailure):
    """Installing a sandbox's egress rules, or its DNS forwarder, failed."""


class NetworkNotFound(RuntimeFailure):
    def __init__(self, network: str, message: str):
        super().__init__(message)
        self.network = network


# --- volumes -------------------------------------------------------------------------------


class VolumeNotFound(RuntimeFailure):
    def __init__(self, name: str, message: str):
        super().__init__(message)
        self.name = name


class VolumeQueryFailed(RuntimeFailure):
    def __init__(self, name: str, message: str):
        super().__init__(message)
        self.name = name


class VolumesUnsupported(RuntimeFailure):
    """Volumes cannot be mounted here at all."""


class SubPathNotFound(RuntimeFailure):
    def __init__(self, sub_path: str | None, message: str):
        super().__init__(message)
        self.sub_path = sub_path


class SubPathOutside(RuntimeFailure):
    """The subPath leads out of its volume."""

    def __init__(self, sub_path: str, message: str):
        super().__init__(message)
        self.sub_path = sub_path


class SubPathUnsupported(RuntimeFailure):
    """The volume's driver keeps no directory a subPath could be taken from."""

    def __init__(self, driver: str, message: str):
        super().__init__(message)
        self.driver = driver


class MountPathRefused(RuntimeFailure):
    """A volume cannot be mounted where it was asked to be."""

    def __init__(self, mount_path: str, message: str):
        super().__init__(message)
        self.mount_path = mount_path


# --- files ---------------------------------------------------------------------------------


class FileFailure(RuntimeFailure):
    """An operation on `path` (as the sandbox names it) failed."""

    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path = path


class FileNotFound(FileFailure):
    def __init__(self, path: str, what: str = "file"):
        super().__init__(path, f"{what} not found: {path} (no such file or directory in the "
                               "sandbox)")


class IsADirectory(FileFailure):
    pass


class NotADirectory(FileFailure):
    pass


class NotARegularFile(FileFailure):
    def __init__(self, path: str):
        super().__init__(path, f"{path} is not a regular file")


class FileExists(FileFailure):
    pass


class FileBusy(FileFailure):
    """The path is a mount point, or it changed under us while being resolved."""


class PathTooLong(FileFailure):
    """The path, or one name in it, is longer than the kernel takes (`ENAMETOOLONG`: a
    name has at most 255 bytes, a whole path 4095)."""

    def __init__(self, path: str):
        shown = path if len(path) <= 200 else path[:100] + "…" + path[-60:]
        super().__init__(path, f"path too long: {shown} ({len(path.encode(errors='replace'))}"
                               " bytes; a name may have at most 255 bytes and a whole path "
                               "4095)")


class PathChanged(FileBusy):
    """A component of the path changed while it was being resolved (a sandbox process
    swapped a symlink for a file, say); retrying sees the new state."""

    def __init__(self, path: str):
        super().__init__(path, f"{path} changed while the server was resolving it (a sandbox "
                               "process replaced part of the path); retry the request")


class PathReadOnly(FileFailure):
    pass


class PathNotAccessible(FileFailure):
    pass


class MoveIntoItself(InvalidArgument):
    def __init__(self, source: str, target: str):
        super().__init__(f"cannot move {source} into itself ({target})", field="dest")
        self.source = source
        self.target = target


class CrossMountMove(FileFailure):
    """A move between two mounts of the sandbox, which rename cannot do."""

    def __init__(self, source: str, target: str, source_mount: str, target_mount: str):
        super().__init__(source, f"cannot move {source} to {target}: they are on different "
                                 f"mounts of the sandbox ({source_mount} and {target_mount}), "
                                 "and rename cannot cross mounts. Copy it instead (download "
                                 "and upload, or `cp -r` in a command).")
        self.target = target


class UnknownUser(RuntimeFailure):
    def __init__(self, name: str):
        super().__init__(f"user '{name}' does not exist in the sandbox (not in its "
                         "/etc/passwd); use an existing name such as root or nobody, or a "
                         "numeric uid.")
        self.name = name


class UnknownGroup(RuntimeFailure):
    def __init__(self, name: str):
        super().__init__(f"group '{name}' does not exist in the sandbox (not in its "
                         "/etc/group); use an existing name such as root or nogroup, or a "
                         "numeric gid.")
        self.name = name
