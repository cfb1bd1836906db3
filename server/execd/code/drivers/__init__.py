"""How each language's interpreter is started inside a sandbox, and how it is spoken to.

A driver is a small program in the language's own toolchain (`python_driver.py`,
`bash_driver.sh`, `node_driver.js`, `java_driver.java`, `go_driver.go`, kept here as
resource files and read at run time). The server hands its source to the sandbox's
interpreter on the command line (`python3 -c`, `bash -c`, `node -e`), so nothing is
installed into the sandbox, and the same start works on every runtime: the process is an
ordinary `Runtime.spawn`, inside the container on either runtime (the fake runtime's own,
or Docker's). Java and Go take no program on the command line: `launcher.sh` writes their
driver into a scratch directory of the context (removed with it) and starts it there.

Every driver speaks the same protocol (see `framing.py` and the drivers' own headers):
requests on stdin, the user's output untouched on stdout/stderr, the driver's messages as
marked lines among it. Only the request encoding and the end-of-cell report differ.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


@cache
def source(name: str) -> str:
    return (HERE / name).read_text(encoding="utf-8")


@dataclass(frozen=True)
class Failure:
    """An `error` for the cell: what the SDKs show as `execution.error`."""

    ename: str
    evalue: str
    traceback: tuple[str, ...] = ()


@dataclass(frozen=True)
class Driver:
    language: str
    tool: str  # the program that must be on the sandbox's PATH
    hint: str = ""  # how to get it, for the error when it is missing
    env: dict[str, str] = field(default_factory=dict)
    ready_timeout: float = 60.0  # seconds from start to the driver's `ready`

    def argv(self, token: str, cwd: str) -> list[str]:
        raise NotImplementedError

    def encode_run(self, seq: int, code: str) -> bytes:
        return _json_line({"op": "run", "seq": seq, "code": code})

    def encode_interrupt(self, seq: int) -> bytes:
        return _json_line({"op": "interrupt", "seq": seq})

    def completion_failures(self, done: dict[str, Any]) -> list[Failure]:
        """Errors the end-of-cell report itself implies (a shell's exit status)."""
        return []


class PythonDriver(Driver):
    def argv(self, token: str, cwd: str) -> list[str]:
        return [self.tool, "-c", source("python_driver.py"), token, cwd, "auto"]


class BashDriver(Driver):
    def argv(self, token: str, cwd: str) -> list[str]:
        return [self.tool, "--noprofile", "--norc", "-c", source("bash_driver.sh"),
                "opensandbox-bash", token, cwd]

    def encode_run(self, seq: int, code: str) -> bytes:
        # One line: backslashes doubled and newlines as `\n`, undone by `printf %b`.
        # A shell string cannot hold NUL, so NULs are dropped.
        escaped = code.replace("\0", "").replace("\\", "\\\\").replace("\n", "\\n")
        return f"R {seq} {escaped}\n".encode()

    def encode_interrupt(self, seq: int) -> bytes:
        return f"I {seq}\n".encode()

    def completion_failures(self, done: dict[str, Any]) -> list[Failure]:
        if done.get("interrupted"):
            return [INTERRUPTED]
        code = done.get("rc", 0)
        if isinstance(code, int) and code != 0:
            return [Failure("CommandExecError", str(code), (f"exit status {code}",))]
        return []


class NodeDriver(Driver):
    def argv(self, token: str, cwd: str) -> list[str]:
        return [self.tool, "-e", source("node_driver.js"), token, cwd, self.language]


class LaunchedDriver(Driver):
    """java and go: `launcher.sh` checks the tool and the working directory at once (a
    missing one is refused while the context is created) and says `starting` before the
    JVM or the Go build warms up; requests are lines with the code in base64."""

    def argv(self, token: str, cwd: str) -> list[str]:
        return ["/bin/sh", "-c", source("launcher.sh"), f"opensandbox-{self.language}", token,
                cwd, self.language, source(f"{self.language}_driver.{self.language}")]

    def encode_run(self, seq: int, code: str) -> bytes:
        encoded = base64.b64encode(code.encode("utf-8", "surrogatepass")).decode("ascii")
        return f"R {seq} {encoded}\n".encode()

    def encode_interrupt(self, seq: int) -> bytes:
        return f"I {seq}\n".encode()


INTERRUPTED = Failure("KeyboardInterrupt", "", ("KeyboardInterrupt",))

DRIVERS: dict[str, Driver] = {
    "python": PythonDriver("python", "python3", "use an image with Python 3 installed"),
    "bash": BashDriver("bash", "bash", "use an image with bash installed"),
    "javascript": NodeDriver("javascript", "node", "use an image with Node.js installed"),
    "typescript": NodeDriver("typescript", "node", "use an image with Node.js and the "
                             "typescript npm package, 5.x or 7.x (npm install -g typescript)"),
    "java": LaunchedDriver("java", "jshell", "use an image with a JDK 11 or newer (jshell)"),
    # A Go toolchain without a build cache builds the driver's packages first: give it time.
    "go": LaunchedDriver("go", "go", "use an image with Go 1.19 or newer", ready_timeout=300.0),
}

LANGUAGES = tuple(DRIVERS)


def _json_line(message: dict[str, Any]) -> bytes:
    return json.dumps(message, ensure_ascii=False).encode() + b"\n"
