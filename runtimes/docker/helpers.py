"""Small operations inside a container (stat, mkdir, mv, kill…), fast.

Each operation is a few lines of POSIX shell (`OPERATIONS`), written for the common subset
of busybox and GNU tools, so any image with a `/bin/sh` works and nothing is installed.
Starting an exec costs the engine some 30-50 ms (runc enters the container each time), so
they are not started one per operation: each sandbox gets an *agent*, one long-lived
`/bin/sh` exec'd as root that reads requests from its stdin and answers on its stdout and
stderr. An operation then costs about a millisecond plus the tools it runs, which is what
lets an upload of hundreds of files finish in seconds.

Protocol: one request per line, `<nonce> <op> <args…>` with every argument shell-quoted
(`eval "set -- …"` in the agent, so nothing is spliced into code); a `write` request is
followed by exactly the number of bytes it names, which `head -c` takes off the same stdin
(and which are drained even when the file cannot be written). The agent runs the
operation in a subshell with its own stdout and stderr, then writes a newline and
`@@end <nonce> <status>` to stdout and a newline and `@@end <nonce>` to stderr. The random
nonce makes the end marker impossible to forge from a file's content. An argument holding a
newline (which `read` cannot carry) goes through a one-off exec instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shlex
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from opensandbox_emulator.runtimes.docker.engine import RawStream, frames

OPERATIONS = r"""
FMT='%f %s %u %g %Y %Z [%y] [%z] %n'
ids() { echo "@@passwd"; cat /etc/passwd 2>/dev/null; echo "@@group"; cat /etc/group 2>/dev/null; }
gone() { [ ! -e "$1" ] && [ ! -L "$1" ]; }
apply() {
  if [ "$2" != -1 ] && [ "$3" != -1 ]; then chown "$2:$3" "$1" || return 1
  elif [ "$2" != -1 ]; then chown "$2" "$1" || return 1
  elif [ "$3" != -1 ]; then chown ":$3" "$1" || return 1; fi
  if [ -n "$4" ]; then chmod "$4" "$1" || return 1; fi
}
resolve() {
  # $1 as the sandbox resolves it: symlinks and .. component by component, a missing tail
  # kept as written; $2=1 follows a final symlink too.
  rest=${1#/} out= hops=0
  while [ -n "$rest" ]; do
    case "$rest" in */*) c=${rest%%/*}; rest=${rest#*/} ;; *) c=$rest; rest= ;; esac
    case "$c" in ''|.) continue ;; ..) out=${out%/*}; continue ;; esac
    if [ -L "$out/$c" ] && { [ -n "$rest" ] || [ "$2" = 1 ]; }; then
      hops=$((hops + 1))
      if [ "$hops" -gt 40 ]; then echo "$1: Too many levels of symbolic links" >&2; return 1; fi
      t=$(readlink "$out/$c")
      case "$t" in /*) out= ;; esac
      rest=${t#/}${rest:+/$rest}
    else
      out=$out/$c
    fi
  done
  printf '%s\n' "${out:-/}"
}
main() {
op=$1; shift
case "$op" in
true) ;;
kill) kill "-$1" "-$2" 2>/dev/null || true ;;
mounts) cat /proc/self/mounts ;;
ids) ids ;;
have) command -v "$1" >/dev/null 2>&1 ;;
nonempty) [ -f "$1" ] && [ -s "$1" ] ;;
resolve) f=$1; shift; for p in "$@"; do resolve "$p" "$f" || exit 1; done ;;
stat)
  real=$(resolve "$1" "$2") || exit 1
  stat -c "$FMT" "$real" || exit 1
  echo "@@real"; echo "$real"; ids ;;
search)
  if gone "$1"; then echo "$1: No such file or directory" >&2; exit 1; fi
  find "$1" \( -path /proc -o -path /sys -o -path /dev \) -prune -o ! -type d \
    -exec stat -c "$FMT" {} + 2>/dev/null
  ids ;;
list)
  find "$1" -mindepth 1 -maxdepth "$2" \( -path /proc -o -path /sys -o -path /dev \) -prune \
    -o -exec stat -c "$FMT" {} + || exit 1
  ids ;;
read) head -c "$2" "$1" ;;
prepare)
  d=$(dirname "$1")
  if [ -e "$d" ] && [ ! -d "$d" ]; then echo "$d: Not a directory" >&2; exit 1; fi
  mkdir -p "$d" || exit 1
  if [ -d "$1" ]; then echo "$1: Is a directory" >&2; exit 1; fi
  : > "$d/$2" || exit 1
  echo "@@existing"; if [ -e "$1" ]; then stat -c '%a %u %g' "$1"; fi
  if [ "$3" = 1 ]; then ids; fi ;;
write) head -c "$2" | ( cat > "$1" || { cat > /dev/null; exit 1; } ) ;;
commit)
  if [ -d "$2" ] && [ ! -L "$2" ]; then rm -f "$1"; echo "$2: Is a directory" >&2; exit 1; fi
  if [ "$(stat -c %s "$1" 2>/dev/null)" != "$6" ]; then
    rm -f "$1"; echo "OSB:short $2: the file did not arrive whole" >&2; exit 1
  fi
  apply "$1" "$3" "$4" "$5" || { rm -f "$1"; exit 1; }
  mv -f "$1" "$2" ;;
discard) rm -f "$1" ;;
mkdir)
  if [ -e "$1" ] && [ ! -d "$1" ]; then echo "$1: Not a directory" >&2; exit 1; fi
  if [ ! -d "$1" ]; then mkdir -p "$1" || exit 1; fi
  apply "$1" "$2" "$3" "$4" ;;
rmfile)
  if [ -d "$1" ] && [ ! -L "$1" ]; then echo "$1: Is a directory" >&2; exit 1; fi
  rm -f "$1" ;;
rmtree) rm -rf "$1" ;;
mv)
  if gone "$1"; then echo "OSB:nosource" >&2; exit 1; fi
  if ! gone "$2"; then echo "OSB:exists" >&2; exit 1; fi
  mkdir -p "$(dirname "$2")" || exit 1
  mv "$1" "$2" ;;
chown)
  if gone "$1"; then echo "$1: No such file or directory" >&2; exit 1; fi
  apply "$1" "$2" "$3" "$4" ;;
*) echo "unknown operation $op" >&2; exit 2 ;;
esac
}
"""

AGENT = "unset OPENSANDBOX_AGENT\n" + OPERATIONS + r"""
while IFS= read -r line; do
  nonce=${line%% *}
  eval "set -- ${line#* }"
  if [ "$1" = write ]; then ( main "$@" ); else ( main "$@" ) </dev/null; fi
  rc=$?
  printf '\n@@end %s %s\n' "$nonce" "$rc"
  printf '\n@@end %s\n' "$nonce" >&2
done
"""

ONE_SHOT = OPERATIONS + '\nmain "$@"\n'


def agent_can_carry(args: list[str]) -> bool:
    """An agent request is one line: no argument may hold a newline (or a NUL)."""
    return not any("\n" in arg or "\0" in arg for arg in args)


def one_shot_argv(args: list[str]) -> list[str]:
    return ["/bin/sh", "-c", ONE_SHOT, "opensandbox-helper", *args]


# The script travels in the environment, so that the agent shows in the sandbox's `ps` as
# one short line instead of a page of shell.
AGENT_ARGV = ["/bin/sh", "-c", 'eval "$OPENSANDBOX_AGENT"', "opensandbox-agent"]
AGENT_ENV = {"OPENSANDBOX_AGENT": AGENT}


@dataclass
class HelperResult:
    exit_code: int
    stdout: bytes
    stderr: bytes


class AgentGone(Exception):
    """The agent's exec ended (the container stopped, paused by hand, was removed)."""


class Agent:
    """One agent exec: requests go in on stdin, answers are read from the framed stream."""

    def __init__(self, stream: RawStream, write: Callable[[bytes], Awaitable[None]]):
        self._stream = stream
        self._write = write
        self._out = bytearray()
        self._err = bytearray()
        self._changed = asyncio.Event()
        self.alive = True
        self._reader = asyncio.create_task(self._read(), name="docker-agent-output")

    async def _read(self) -> None:
        try:
            async for kind, payload in frames(self._stream):
                (self._err if kind == 2 else self._out).extend(payload)
                self._changed.set()
        except Exception:
            return
        finally:
            self.alive = False
            self._changed.set()

    @staticmethod
    def _take(buffer: bytearray, marker: bytes) -> tuple[bytes, bytes] | None:
        """(what came before `marker`, the rest of its line), removing both."""
        index = buffer.find(marker)
        if index < 0:
            return None
        end = buffer.find(b"\n", index + len(marker))
        if end < 0:
            return None
        before = bytes(buffer[:index])
        tail = bytes(buffer[index + len(marker):end])
        del buffer[:end + 1]
        return before, tail

    async def call(self, args: list[str], payload: bytes = b"") -> HelperResult:
        if not self.alive:
            raise AgentGone()
        nonce = secrets.token_hex(8)
        line = nonce + " " + " ".join(shlex.quote(arg) for arg in args) + "\n"
        await self._write(line.encode() + payload)
        out_marker = f"\n@@end {nonce} ".encode()
        err_marker = f"\n@@end {nonce}".encode()
        out: tuple[bytes, bytes] | None = None
        err: tuple[bytes, bytes] | None = None
        while out is None or err is None:
            if out is None:
                out = self._take(self._out, out_marker)
            if err is None:
                err = self._take(self._err, err_marker)
            if out is not None and err is not None:
                break
            if not self.alive:
                raise AgentGone()
            self._changed.clear()
            await self._changed.wait()
        return HelperResult(int(out[1] or b"1"), out[0], err[0])

    async def close(self) -> None:
        self.alive = False
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader
        with contextlib.suppress(Exception):
            await self._stream.close()


class AgentPool:
    """A sandbox's agents: one per concurrent operation, up to `size`; idle ones are kept."""

    def __init__(self, start: Callable[[], Awaitable[Agent]], size: int = 3):
        self._start = start
        self._idle: list[Agent] = []
        self._slots = asyncio.Semaphore(size)
        self._all: set[Agent] = set()

    async def call(self, args: list[str], payload: bytes = b"") -> HelperResult:
        async with self._slots:
            agent = None
            while self._idle:
                candidate = self._idle.pop()
                if candidate.alive:
                    agent = candidate
                    break
                self._all.discard(candidate)
            if agent is None:
                agent = await self._start()
                self._all.add(agent)
            try:
                result = await agent.call(args, payload)
            except BaseException:
                # A cancelled or broken call leaves the agent mid-answer: never reuse it.
                self._all.discard(agent)
                await agent.close()
                raise
            self._idle.append(agent)
            return result

    async def close(self) -> None:
        agents, self._all, self._idle = self._all, set(), []
        for agent in agents:
            await agent.close()
