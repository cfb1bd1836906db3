"""Working directories as upstream's execd reads them: `~`, `$NAME` and `${NAME}` expanded
(an undefined variable is an error), relative paths made absolute against `/`."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping

_VARIABLE = re.compile(r"\$(?:\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


class UndefinedVariable(ValueError):
    pass


def expand_path(path: str, env: Mapping[str, str], home: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or ""
        if name not in env:
            raise UndefinedVariable(f"environment variable {name!r} is not defined in the "
                                    f"sandbox (in {path!r})")
        return env[name]

    if path == "~" or path.startswith("~/"):
        path = home.rstrip("/") + path[1:]
    path = _VARIABLE.sub(value, path)
    return posixpath.normpath("/" + path.lstrip("/")) if path else "/"
