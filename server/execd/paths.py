"""Working directories as upstream's execd reads them: `~`, `$NAME` and `${NAME}` expanded
from the sandbox's environment (an undefined variable is an error), relative paths made
absolute against `/`; created (`mkdir -p`) for a new bash or PTY session, checked to be an
existing directory for a session run."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping

from opensandbox_emulator.runtimes.failures import RuntimeFailure
from opensandbox_emulator.runtimes.filesystem import ChangeOwnership, FileType
from opensandbox_emulator.server.execd.sandbox import ExecdSandbox

_VARIABLE = re.compile(r"\$(?:\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


class BadWorkingDirectory(ValueError):
    """The directory cannot be used; the message says why."""


def expand_path(path: str, env: Mapping[str, str], home: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or ""
        if name not in env:
            raise BadWorkingDirectory(f"environment variable {name!r} is not defined in the "
                                      f"sandbox (in {path!r})")
        return env[name]

    if path == "~" or path.startswith("~/"):
        path = home.rstrip("/") + path[1:]
    path = _VARIABLE.sub(value, path)
    return posixpath.normpath("/" + path.lstrip("/")) if path else "/"


async def working_directory(sandbox: ExecdSandbox, path: str, *, create: bool) -> str:
    """`path` expanded; with `create` made if missing, otherwise it must be a directory
    already. Raises `BadWorkingDirectory`."""
    env = sandbox.runtime.environment(sandbox.sandbox_id)
    expanded = expand_path(path, env, env.get("HOME") or "/root")
    fs = sandbox.runtime.filesystem(sandbox.sandbox_id)
    try:
        if create:
            await fs.make_dirs(expanded, ChangeOwnership())
        elif (await fs.stat(expanded)).type is not FileType.DIRECTORY:
            raise BadWorkingDirectory(f"{path!r} is not a directory")
    except RuntimeFailure as error:
        raise BadWorkingDirectory(f"{path!r}: {error.message}") from error
    return expanded
