"""Files that well-known images carry and programs rely on, for the runtimes that run no
image. The fake runtime runs the host's system whatever image a sandbox names, so what an
SDK expects to find in its documented image is offered to every fake sandbox, read-only:

* `code_interpreter/`: the code-interpreter image's entrypoint and version switcher, at
  both paths upstream has used (`/opt/opensandbox/` before, `/opt/code-interpreter/` now).
  Started as the entrypoint, the script selects the toolchains the version variables ask
  for, where this system has them, and makes `127.0.0.1:$JUPYTER_PORT` accept connections,
  which is what the code-interpreter SDK's readiness check probes.

On Docker the image's own files are used; these are never installed there.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
CODE_INTERPRETER = HERE / "code_interpreter"

# Where the code-interpreter image keeps its scripts: the newest layout, then the one
# before it (still what opensandbox-code-interpreter 0.1.x documents).
CODE_INTERPRETER_DIRS = ("/opt/code-interpreter", "/opt/opensandbox")
CODE_INTERPRETER_FILES = ("code-interpreter.sh", "code-interpreter-env.sh")


def offered_files() -> dict[str, str]:
    """Every file the fake runtime offers its sandboxes: sandbox path -> this package's file."""
    return {f"{directory}/{name}": str(CODE_INTERPRETER / name)
            for directory in CODE_INTERPRETER_DIRS for name in CODE_INTERPRETER_FILES}
