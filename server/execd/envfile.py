"""The sandbox's env file (`EXECD_ENVS`): read afresh for every new process.

`commands.set_env` appends `KEY='value'` (or `KEY="…"` with escapes) lines to it, and the
SDK documents the file as quote-aware, so values are decoded: single quotes are literal,
double quotes decode `\\\\ \\" \\n \\r \\t`, and a bare value has `$NAME`/`${NAME}` expanded
from the sandbox's environment (unknown names become empty), as upstream expands every
value. Blank lines and `#` comments are skipped, a line without `=` is ignored, and the
last entry of a key wins. Upstream keeps the quotes; this is a documented deviation.

Who reads it: every `POST /command` (under the request's `envs`), every bash session run
and every PTY process when it starts, and a code context's interpreter when it starts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from opensandbox_emulator.runtimes.failures import RuntimeFailure
from opensandbox_emulator.server.execd.sandbox import ExecdSandbox

MAX_BYTES = 1024 * 1024  # a larger file is read this far
_VARIABLE = re.compile(r"\$(?:\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*|[0-9*#$@!?-]))")
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n", "r": "\r", "t": "\t"}


def expand(value: str, env: Mapping[str, str]) -> str:
    """`$NAME` and `${NAME}` from `env`; unknown names are empty (as Go's `os.ExpandEnv`)."""
    return _VARIABLE.sub(lambda m: env.get(m.group(1) or m.group(2) or "", ""), value)


def _decode_double_quoted(body: str) -> str:
    out = []
    index = 0
    while index < len(body):
        char = body[index]
        if char == "\\" and index + 1 < len(body) and body[index + 1] in _ESCAPES:
            out.append(_ESCAPES[body[index + 1]])
            index += 2
            continue
        out.append(char)
        index += 1
    return "".join(out)


def parse(text: str, env: Mapping[str, str]) -> dict[str, str]:
    entries: dict[str, str] = {}
    for raw in text.split("\n"):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, equals, value = line.partition("=")
        if not equals:
            continue
        if len(value) >= 2 and value[0] == value[-1] == "'":
            value = value[1:-1]
        elif len(value) >= 2 and value[0] == value[-1] == '"':
            value = _decode_double_quoted(value[1:-1])
        else:
            value = expand(value, env)
        entries[key] = value
    return entries


async def env_file_entries(sandbox: ExecdSandbox) -> dict[str, str]:
    """The entries of the sandbox's env file now; none when it is missing or unreadable
    (as upstream, which only logs that)."""
    runtime = sandbox.runtime
    try:
        fs = runtime.filesystem(sandbox.sandbox_id)
        path = runtime.env_file(sandbox.sandbox_id)
        # Most sandboxes' file is the empty one the runtime made: one test tells, with no
        # open, read and close (on Docker, each a trip through the sandbox's helper).
        if not await fs.has_content(path):
            return {}
        reader = await fs.open_read(path)
    except RuntimeFailure:
        return {}
    data = bytearray()
    try:
        if reader.info.size:
            async for chunk in reader.chunks(0, min(reader.info.size, MAX_BYTES)):
                data += chunk
    except RuntimeFailure:
        return {}
    finally:
        await reader.close()
    if not data:
        return {}
    return parse(data.decode(errors="replace"), runtime.environment(sandbox.sandbox_id))
