"""What one bash session run executes, and how its output is read back.

Each run is a fresh `bash --noprofile --norc` whose script (1) applies the session's
remembered changes to the environment (`export K='v'`, `unset K`), (2) dumps the exported
environment it now has, (3) `cd`s to the session's directory, (4) runs the user's text as
it is, then (5) dumps the exported environment again and prints the working directory and
the user's exit code. The dumps and the marker lines are taken out of the output; every
other line is the user's. Marker lines carry a random token per run, so no output can
pass for one.

Values come back through `export -p` and are decoded as upstream decodes them (Go's
`strconv.Unquote`, else the quotes trimmed), so a value holding `$` or a backquote gains a
backslash, and a multi-line value keeps its first line, exactly as a program sees on
upstream.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

NOT_PERSISTED = frozenset({"PS1", "PS2", "PS3", "PS4", "PROMPT_COMMAND"})
MAX_VALUE = 8 * 1024  # longer values are not carried to the next run (as upstream)
_GO_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
               "\\": "\\", '"': '"'}


def valid_name(name: str) -> bool:
    return bool(name) and (name[0].isascii() and (name[0].isalpha() or name[0] == "_")) and all(
        c.isascii() and (c.isalnum() or c == "_") for c in name)


def shell_quote(value: str) -> str:
    return "'" + value.replace("'", "'\"'\"'") + "'"


@dataclass(frozen=True)
class Markers:
    """The marker lines of one run."""

    token: str

    @classmethod
    def new(cls) -> Markers:
        return cls(secrets.token_hex(8))

    @property
    def start(self) -> str:
        return f"__OSB_{self.token}_START__"

    @property
    def body(self) -> str:
        return f"__OSB_{self.token}_BODY__"

    @property
    def env(self) -> str:
        return f"__OSB_{self.token}_ENV__"

    @property
    def pwd(self) -> str:
        return f"__OSB_{self.token}_PWD__:"

    @property
    def exit(self) -> str:
        return f"__OSB_{self.token}_EXIT__:"


def build_script(command: str, changes: Mapping[str, str | None], cwd: str | None,
                 markers: Markers) -> str:
    lines = []
    for name in sorted(changes):
        value = changes[name]
        if not valid_name(name) or name in NOT_PERSISTED:
            continue
        if value is None:
            lines.append(f"unset {name}")
        elif len(value) <= MAX_VALUE:
            lines.append(f"export {name}={shell_quote(value)}")
    lines.append(f"printf '%s\\n' {markers.start}; export -p; printf '%s\\n' {markers.body}")
    if cwd:
        lines.append(f"cd {shell_quote(cwd)}")
    lines.append(command if command.endswith("\n") else command + "\n")
    lines.append("__USER_EXIT_CODE__=$?")
    lines.append(f"printf '\\n%s\\n' {markers.env}; export -p")
    lines.append(f"printf '%s%s\\n' '{markers.pwd}' \"$(pwd)\"")
    lines.append(f"printf '%s%s\\n' '{markers.exit}' \"$__USER_EXIT_CODE__\"")
    lines.append('exit "$__USER_EXIT_CODE__"')
    return "\n".join(lines) + "\n"


def go_unquote(raw: str) -> str | None:
    """Go's `strconv.Unquote` for a double-quoted string; None where Go fails."""
    if len(raw) < 2 or raw[0] != '"' or raw[-1] != '"' or "\n" in raw:
        return None
    body, out, index = raw[1:-1], [], 0
    while index < len(body):
        char = body[index]
        if char == '"':
            return None
        if char != "\\":
            out.append(char)
            index += 1
            continue
        if index + 1 >= len(body):
            return None
        code = body[index + 1]
        if code in _GO_ESCAPES:
            out.append(_GO_ESCAPES[code])
            index += 2
        elif code in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[code]
            digits = body[index + 2:index + 2 + width]
            if len(digits) != width or any(c not in "0123456789abcdefABCDEF" for c in digits):
                return None
            out.append(chr(int(digits, 16)))
            index += 2 + width
        elif code in "01234567":
            digits = body[index + 1:index + 4]
            if len(digits) != 3 or any(c not in "01234567" for c in digits) or \
                    int(digits, 8) > 255:
                return None
            out.append(chr(int(digits, 8)))
            index += 4
        else:
            return None
    return "".join(out)


def parse_export_dump(lines: Iterable[str]) -> dict[str, str]:
    """`declare -x NAME="value"` lines as upstream reads them."""
    env: dict[str, str] = {}
    for line in lines:
        if not line.startswith("declare -x "):
            continue
        rest = line[len("declare -x "):].strip()
        name, equals, raw = rest.partition("=")
        value = ""
        if equals:
            unquoted = go_unquote(raw)
            value = unquoted if unquoted is not None else raw.strip('"')
        if valid_name(name) and name not in NOT_PERSISTED and len(value) <= MAX_VALUE:
            env[name] = value
    return env


def changes_between(before: Mapping[str, str], after: Mapping[str, str]) -> dict[str, str | None]:
    """What a run changed: new or changed values, and None for what it unset."""
    changed: dict[str, str | None] = {k: v for k, v in after.items() if before.get(k) != v}
    changed.update({k: None for k in before if k not in after})
    return changed
