"""What isolation costs with no server in the way, for the benchmarks to print beside it.

- `bare`: a plain `subprocess.run` on this host.
- `bubblewrap`: the same inside a fresh `bwrap` (namespaces, read-only /usr): what each
  command of a fake sandbox cost when every process was its own bubblewrap.
- `container`: a whole runc container with the fake runtime's own config (user, PID,
  mount, network, IPC, UTS and cgroup namespaces, capabilities, seccomp), started, run to
  its end and deleted: the floor of creating a sandbox with runc.
- `runc_exec`: `runc exec` of a command into a running sandbox: what each command would
  cost if commands were OCI execs instead of forks by the sandbox's init.
Each is None where the tool is missing or cannot run here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable

from opensandbox_emulator.runtimes.fake import oci, seccomp
from opensandbox_emulator.runtimes.fake.ids import server_id_map
from opensandbox_emulator.runtimes.fake.layout import RootSetup, SandboxLayout
from opensandbox_emulator.runtimes.fake.runc import runc, state_root

Action = Callable[[], None]


def bare(argv: list[str]) -> Action:
    def once() -> None:
        subprocess.run(argv, capture_output=True, check=True)

    return once


def bubblewrap(argv: list[str]) -> Action | None:
    program = shutil.which("bwrap")
    if program is None:
        return None
    command = [program, "--ro-bind", "/usr", "/usr", "--proc", "/proc", "--dev", "/dev",
               "--tmpfs", "/tmp", "--unshare-all", "--die-with-parent"]
    for name in ("bin", "lib", "lib64", "sbin"):
        path = f"/{name}"
        if os.path.islink(path):
            command += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            command += ["--ro-bind", path, path]
    command += ["--", *argv]
    try:
        subprocess.run(command, capture_output=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return bare(command)


class Container:
    """A bundle for bare `runc run` of `argv`, built the way the fake runtime builds a
    sandbox's (minus the init and the network helper)."""

    def __init__(self, argv: list[str]):
        self.program = runc()
        self.directory = tempfile.mkdtemp(prefix="bench-runc-")
        os.chmod(self.directory, 0o711)
        self.counter = 0
        ids = server_id_map()
        layout = SandboxLayout.build(os.path.join(self.directory, "root"), [],
                                     RootSetup(ids, "bench"))
        spec = oci.ContainerSpec(layout=layout, ids=ids, hostname="bench", argv=argv,
                                 env={"PATH": "/usr/bin:/bin"}, seccomp=seccomp.profile())
        with open(os.path.join(self.directory, "config.json"), "w") as handle:
            json.dump(oci.config(spec), handle)
        self.root = os.path.join(self.directory, "state")

    def run_once(self) -> None:
        assert self.program is not None
        self.counter += 1
        name = f"bench-{os.getpid()}-{self.counter}"
        subprocess.run([self.program, "--root", self.root, "run", "--bundle", self.directory,
                        name], capture_output=True, check=True, stdin=subprocess.DEVNULL)
        subprocess.run([self.program, "--root", self.root, "delete", "--force", name],
                       capture_output=True, check=False)

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def container(argv: list[str]) -> tuple[Action | None, Callable[[], None]]:
    """(one bare container run, cleanup); the action is None where runc cannot run here."""
    if runc() is None:
        return None, lambda: None
    made = Container(argv)
    try:
        made.run_once()
    except (OSError, subprocess.SubprocessError):
        made.close()
        return None, lambda: None
    return made.run_once, made.close


def runc_exec(server_pid: int, sandbox_id: str, argv: list[str]) -> Action | None:
    """`runc exec` into the container of `sandbox_id` of the server `server_pid`."""
    program = runc()
    if program is None:
        return None
    listing = subprocess.run([program, "--root", state_root(), "list", "--format", "json"],
                             capture_output=True, text=True).stdout
    for entry in json.loads(listing or "null") or []:
        if str(entry.get("id", "")).endswith(sandbox_id) and \
                str((entry.get("annotations") or {}).get(
                    "io.opensandbox.emulator.server", "")).startswith(f"{server_pid}:"):
            command = [program, "--root", state_root(), "exec", entry["id"], *argv]
            return bare(command)
    return None
