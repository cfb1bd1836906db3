"""Which Python runs a sandbox's init, and what the sandbox must see of it.

The init (`sandbox_init.py`) is a standard-library Python program, written into every
private root as `/opt/opensandbox/init.py` (owned by the host's root and read-only to the
sandbox: it is read once, at start). It runs on a Python the sandbox sees anyway when there
is one: the server's own base interpreter when it lives under `/usr` (Debian's, the official
Docker images'), else the system's `python3` under `/usr`. Otherwise (a pyenv build, say,
with no system Python) the server's interpreter is bound read-only at
`/opt/opensandbox/python`, where Python finds its standard library from the executable's
own location; a shared build also gets `LD_LIBRARY_PATH` for `libpython`. That environment
is the init's own: the processes it starts get only the environment the server gives them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field

from opensandbox_emulator.runtimes.fake import sandbox_init
from opensandbox_emulator.runtimes.fake.layout import Mount

INSIDE = "/opt/opensandbox"
INIT_INSIDE = f"{INSIDE}/init.py"
PYTHON_INSIDE = f"{INSIDE}/python"
VISIBLE_PREFIXES = ("/usr/",)  # host directories every sandbox sees read-only
OLDEST = (3, 8)


@dataclass(frozen=True)
class InitProgram:
    """How to start the init: argv before the socket's descriptor number, the init's own
    environment, the script (a host path) and what to mount for the interpreter."""

    argv: list[str]
    env: dict[str, str]
    script: str
    mounts: list[Mount] = field(default_factory=list)

    def command(self, fd: int) -> list[str]:
        return [*self.argv, str(fd)]


def base_interpreter() -> str:
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def init_script() -> str:
    return os.path.realpath(sandbox_init.__file__)


def _usable(python: str) -> bool:
    try:
        out = subprocess.run([python, "-I", "-S", "-c",
                              "import sys; print(sys.version_info[0], sys.version_info[1])"],
                             capture_output=True, text=True, timeout=10).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        return False
    return len(out) == 2 and (int(out[0]), int(out[1])) >= OLDEST


def for_sandbox() -> InitProgram:
    """The init as a sandbox with its own mount table starts it (blocking: it may try
    the system's Python once)."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    python = base_interpreter()
    if python.startswith(VISIBLE_PREFIXES):
        return InitProgram([python, "-I", "-S", INIT_INSIDE], env, init_script())
    for name in ("python3",):
        system = shutil.which(name, path="/usr/bin:/usr/local/bin")
        if system and os.path.realpath(system).startswith(VISIBLE_PREFIXES) \
                and _usable(system):
            return InitProgram([os.path.realpath(system), "-I", "-S", INIT_INSIDE], env,
                               init_script())
    prefix = os.path.realpath(sys.base_prefix)
    relative = os.path.relpath(python, prefix)
    if relative.startswith(".."):
        raise RuntimeError(f"cannot tell where the Python at {python} is installed "
                           f"(it is not under {prefix})")
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        env["LD_LIBRARY_PATH"] = f"{PYTHON_INSIDE}/lib"
    return InitProgram([f"{PYTHON_INSIDE}/{relative}", "-I", "-S", INIT_INSIDE], env,
                       init_script(), [Mount(PYTHON_INSIDE, prefix, read_only=True)])


def on_host() -> InitProgram:
    """The init as an ordinary host process (no isolation)."""
    return InitProgram([base_interpreter(), "-I", "-S", init_script()],
                       {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"},
                       init_script())
