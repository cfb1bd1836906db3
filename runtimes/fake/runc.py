"""runc, Debian's (and Docker's) OCI runtime: starting, deleting and listing containers.

The server talks to runc's command line only. `run` starts a container detached, with one
end of the sandbox's control socket as its fd 3 (`--preserve-fds 1`) and the init's host
pid written to a file; `delete --force` kills what is left and removes runc's state and the
container's cgroups. Containers of every server on the host share one state directory; each
carries the pid and start time of the server that made it (annotations), so a server can
remove the ones whose server is gone (it crashed) without touching the others'.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

SERVER_ANNOTATION = "io.opensandbox.emulator.server"
RUN_SECONDS = 60.0


class RuncFailed(Exception):
    """runc refused or failed; the message is what it said."""


def runc() -> str | None:
    return shutil.which("runc")


def version(program: str) -> str:
    try:
        out = subprocess.run([program, "--version"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    first = out.splitlines()[0] if out else ""
    return first.replace("runc version", "").strip() or "unknown"


def state_root() -> str:
    """Where runc keeps container state: on tmpfs, per user."""
    if os.geteuid() == 0:
        return "/run/opensandbox-emulator/runc"
    base = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/opensandbox-emulator-{os.geteuid()}"
    return os.path.join(base, "opensandbox-emulator", "runc")


def process_start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat: tells a pid's process from a later one with its pid."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            raw = handle.read()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else None


def server_identity() -> str:
    return f"{os.getpid()}:{process_start_time(os.getpid())}"


def server_alive(identity: str) -> bool:
    """Whether the server `identity` (`server_identity()` of some process) still runs."""
    pid, _, started = identity.partition(":")
    return pid.isdigit() and process_start_time(int(pid)) == started


@dataclass
class Runc:
    program: str
    root: str

    def _environment(self) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
        if "XDG_RUNTIME_DIR" in os.environ:
            env["XDG_RUNTIME_DIR"] = os.environ["XDG_RUNTIME_DIR"]
        return env

    def _command(self, *args: str) -> list[str]:
        return [self.program, "--root", self.root, *args]

    def run_detached(self, bundle: str, container_id: str, control_fd: int, pid_file: str,
                     *, prefix: Sequence[str] = (), keep_fds: Sequence[int] = ()) -> int:
        """`runc run -d` (blocking: call it in a thread); returns the init's host pid.
        `prefix`: a program that execs runc after preparing its mount namespace (the
        idmapped-volume helper), which needs `keep_fds` kept open."""
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        # --no-new-keyring: a session keyring per container counts against the kernel's
        # key quota of the sandboxes' one host user (200 keys by default), which would cap
        # a server at 200 sandboxes; the seccomp filter refuses every keyring call anyway.
        argv = [*prefix, *self._command("run", "--detach", "--no-new-keyring",
                                        "--preserve-fds", "1", "--pid-file", pid_file,
                                        "--bundle", bundle, container_id)]
        error_r, error_w = os.pipe()
        actions = [(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                   (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
                   (os.POSIX_SPAWN_DUP2, error_w, 2),
                   (os.POSIX_SPAWN_DUP2, control_fd, 3)]
        # dup2 onto itself keeps a descriptor's number and clears close-on-exec.
        actions += [(os.POSIX_SPAWN_DUP2, fd, fd) for fd in keep_fds]
        try:
            pid = os.posix_spawn(argv[0], argv, self._environment(), file_actions=actions)
        finally:
            os.close(error_w)
        try:
            _, status = os.waitpid(pid, 0)
            os.set_blocking(error_r, False)
            try:
                said = os.read(error_r, 65536).decode(errors="replace")
            except BlockingIOError:
                said = ""
        finally:
            os.close(error_r)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuncFailed(_last_error(said) or f"runc exited with status {status}")
        try:
            with open(pid_file) as handle:
                return int(handle.read().strip())
        except (OSError, ValueError) as error:
            raise RuncFailed(f"runc did not write the container's pid: {error}") from error

    def delete(self, container_id: str) -> None:
        """`runc delete --force` (blocking); a container runc does not know is fine."""
        subprocess.run(self._command("delete", "--force", container_id),
                       env=self._environment(), stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60,
                       check=False)

    def forget(self, container_id: str, cgroup_directories: Sequence[str]) -> bool:
        """What `delete` does for a container whose processes are all gone (its cgroups and
        runc's state), without starting runc: a server that stops with a thousand sandboxes
        would otherwise start a thousand runc processes. False when anything is left to
        `delete` (blocking)."""
        for directory in sorted(cgroup_directories, key=len, reverse=True):
            try:
                os.rmdir(directory)
            except FileNotFoundError:
                continue
            except OSError:
                return False
        state = os.path.join(self.root, container_id)
        if "/" in container_id or not os.path.isfile(os.path.join(state, "state.json")):
            return False
        shutil.rmtree(state, ignore_errors=True)
        return not os.path.exists(state)

    def containers(self) -> list[dict[str, object]]:
        try:
            out = subprocess.run(self._command("list", "--format", "json"),
                                 env=self._environment(), capture_output=True, text=True,
                                 timeout=60).stdout
            listed = json.loads(out or "null") or []
        except (OSError, ValueError, subprocess.TimeoutExpired):
            return []
        return [c for c in listed if isinstance(c, dict)]

    async def remove_orphans(self) -> list[str]:
        """Delete the containers of servers that are gone; returns their ids."""
        removed = []
        for container in await asyncio.to_thread(self.containers):
            annotations = container.get("annotations") or {}
            owner = annotations.get(SERVER_ANNOTATION) if isinstance(annotations, dict) \
                else None
            if isinstance(owner, str) and not server_alive(owner):
                container_id = str(container.get("id"))
                await asyncio.to_thread(self.delete, container_id)
                removed.append(container_id)
        return removed


def _last_error(text: str) -> str:
    """runc's own message from its log lines (`level=error msg="…"`)."""
    messages = []
    for line in text.splitlines():
        if 'msg="' in line:
            messages.append(line.split('msg="', 1)[1].rsplit('"', 1)[0].replace('\\"', '"'))
        elif line.strip():
            messages.append(line.strip())
    return "; ".join(messages[-2:])
