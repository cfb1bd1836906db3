"""Processes of a container on a pseudo-terminal: an exec with a TTY.

The engine allocates the terminal (the exec's process leads its own session with it as its
controlling terminal) and sends what it shows as one raw stream, not multiplexed; writes to
the connection are typed input, and `exec resize` sets its size. A tiny `/bin/sh` wrapper
checks the working directory and the program first, then prints one line on the terminal,
`OSB:pid <pid>` (or `OSB:nocwd` / `OSB:noexec`), before it `exec`s the command, so the group
to signal is known; the pump takes that line out of the output. The exit status comes from
`exec inspect`, as for an exec without the in-band exit line.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from opensandbox_emulator.runtimes.base import TerminalSize
from opensandbox_emulator.runtimes.docker.engine import RawStream
from opensandbox_emulator.runtimes.docker.processes import MARKER, OutputPump

# $1 = working directory ("" keeps the container's), then argv.
WRAPPER = r"""
if [ -n "$1" ] && ! cd -- "$1" 2>/dev/null; then echo "OSB:nocwd"; exit 127; fi
shift
case "$1" in
  */*) [ -f "$1" ] && [ -x "$1" ] ;;
  *) command -v -- "$1" >/dev/null 2>&1 ;;
esac || { echo "OSB:noexec"; exit 127; }
echo "OSB:pid $$"
exec "$@"
"""
HANDSHAKE_LIMIT = 4096


def wrap(argv: list[str], cwd: str | None) -> list[str]:
    return ["/bin/sh", "-c", WRAPPER, "opensandbox-tty", cwd or "", *argv]


class TerminalPump(OutputPump):
    """Reads the exec's raw stream into a bounded buffer; its first line is the wrapper's.
    No frames and no in-band exit line: `ExecProcess` polls the exec for the status."""

    def __init__(self, stream: RawStream):
        super().__init__(stream, merged=True, tag="")

    async def _run(self) -> None:
        pending = b""
        try:
            while data := await self.stream.read(64 * 1024):
                if not self.handshake.done():
                    pending += data
                    at = pending.find(MARKER)
                    end = pending.find(b"\n", at)
                    if at < 0 or end < 0:
                        if len(pending) > HANDSHAKE_LIMIT:
                            self.handshake.set_result("eof " + pending.decode(errors="replace"))
                        continue
                    line = pending[at + len(MARKER):end].rstrip(b"\r")
                    self.handshake.set_result(line.decode(errors="replace"))
                    data = pending[end + 1:]
                    if not data:
                        continue
                await self.stdout.feed(data)
        except asyncio.CancelledError:
            raise
        except Exception:  # a broken connection ends the output like EOF
            pass
        finally:
            await self._ended(pending)


class ExecTerminal:
    """`ProcessTerminal` of an exec: resize through the engine; close drops the stream."""

    def __init__(self, resize: Callable[[TerminalSize], Awaitable[None]], pump: TerminalPump):
        self._resize = resize
        self._pump = pump

    async def resize(self, size: TerminalSize) -> None:
        await self._resize(size)

    async def close(self) -> None:
        await self._pump.close()
