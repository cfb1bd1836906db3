"""Everything that runs inside a sandbox's container goes through an exec.

`open_exec` starts one and returns its raw stream. On top of it: `spawn_process` starts a
sandbox process (wrapped as `processes.py` describes, or on a terminal as `terminal.py`
does), `run_helper` runs one helper
operation (`helpers.py`) through the sandbox's agents, and `signal_group` signals a
process group through a helper.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Mapping
from typing import Any

from docker.errors import APIError, NotFound

from opensandbox_emulator.runtimes.base import SandboxProcess, SpawnRequest, TerminalSize
from opensandbox_emulator.runtimes.docker import terminal
from opensandbox_emulator.runtimes.docker.engine import (
    Engine,
    ExecStartError,
    RawStream,
    explain,
    frames,
    wrong_state,
)
from opensandbox_emulator.runtimes.docker.helpers import (
    AGENT_ARGV,
    AGENT_ENV,
    Agent,
    AgentGone,
    AgentPool,
    HelperResult,
    agent_can_carry,
    one_shot_argv,
)
from opensandbox_emulator.runtimes.docker.processes import (
    ExecProcess,
    OutputPump,
    spawn_failure,
    wrap,
)
from opensandbox_emulator.runtimes.docker.sandbox import DockerSandbox, inspect_container
from opensandbox_emulator.runtimes.failures import (
    HelperFailed,
    RuntimeFailure,
    SandboxMissing,
    SpawnFailed,
    TimedOut,
)

log = logging.getLogger("opensandbox.runtime.docker")

HANDSHAKE_TIMEOUT = 30.0
HELPER_TIME_LIMIT = 120.0


async def open_exec(engine: Engine, sandbox: DockerSandbox, argv: list[str], *,
                    user: str = "", environment: Mapping[str, str] | None = None,
                    stdin: bool = False, tty: bool = False) -> tuple[str, RawStream]:
    """Start `argv` in the container; its exec id and raw stream (framed; with `tty`, the
    terminal's bytes as they are)."""
    try:
        exec_id = await engine.create_exec(sandbox.container, argv, user=user,
                                           environment=dict(environment or {}),
                                           stdin=stdin, tty=tty)
    except NotFound as error:
        raise SandboxMissing(sandbox.sandbox_id) from error
    except APIError as error:
        raise SpawnFailed(f"the sandbox cannot run commands now: {explain(error)}",
                          wrong_state=wrong_state(error)) from error
    try:
        return exec_id, await engine.attach_exec(exec_id, tty=tty)
    except (ExecStartError, OSError) as error:
        raise SpawnFailed(f"the sandbox cannot run commands now: {error}",
                          wrong_state=isinstance(error, ExecStartError) and error.wrong_state
                          ) from error


# --- sandbox processes -------------------------------------------------------------------


async def spawn_process(engine: Engine, sandbox: DockerSandbox, request: SpawnRequest
                        ) -> SandboxProcess:
    if not request.argv:
        raise SpawnFailed("empty command")
    user = ""
    if request.uid is not None or request.gid is not None:
        uid = request.uid if request.uid is not None else 0
        gid = request.gid if request.gid is not None else uid
        user = f"{uid}:{gid}"
    if request.terminal is not None:
        return await _spawn_on_terminal(engine, sandbox, request, user)
    program = request.argv[0]
    cacheable = "/" not in program and "PATH" not in request.env
    missing = sandbox.missing_programs
    if cacheable and program in missing:
        if (await run_helper(engine, sandbox, ["have", program])).exit_code != 0:
            raise spawn_failure("noexec", program, request.cwd)
        missing.discard(program)
    tag = secrets.token_hex(8)
    exec_id, stream = await open_exec(
        engine, sandbox, wrap(list(request.argv), request.cwd, request.merge_stderr, tag),
        user=user, environment=request.env, stdin=request.stdin)
    pump = OutputPump(stream, merged=request.merge_stderr, tag=tag)
    handshake = await _handshake(pump)
    if not handshake.startswith("pid "):
        await pump.close()
        if handshake == "noexec" and cacheable:
            missing.add(program)
        raise spawn_failure(handshake, program, request.cwd)
    words = handshake.split()
    return _track(engine, sandbox, exec_id, pump, int(words[1]), stdin=request.stdin,
                  piped="piped" in words[2:])


async def _spawn_on_terminal(engine: Engine, sandbox: DockerSandbox, request: SpawnRequest,
                             user: str) -> SandboxProcess:
    """An exec with a TTY (`terminal.py`), resized through the engine."""
    assert request.terminal is not None
    exec_id, stream = await open_exec(
        engine, sandbox, terminal.wrap(list(request.argv), request.cwd), user=user,
        environment=request.env, stdin=True, tty=True)
    pump = terminal.TerminalPump(stream)

    async def resize(size: TerminalSize) -> None:
        with contextlib.suppress(APIError):
            await engine.call(engine.api.exec_resize, exec_id, height=size.rows,
                              width=size.cols)

    await resize(request.terminal)
    handshake = await _handshake(pump)
    if not handshake.startswith("pid "):
        await pump.close()
        raise spawn_failure(handshake, request.argv[0], request.cwd)
    process = _track(engine, sandbox, exec_id, pump, int(handshake.split()[1]), stdin=True)
    process.terminal = terminal.ExecTerminal(resize, pump)
    return process


async def _handshake(pump: OutputPump) -> str:
    """The wrapper's first word on the started exec (see `processes.py`)."""
    try:
        return await asyncio.wait_for(asyncio.shield(pump.handshake), HANDSHAKE_TIMEOUT)
    except (TimeoutError, asyncio.CancelledError):
        await pump.close()
        raise


def _track(engine: Engine, sandbox: DockerSandbox, exec_id: str,
           pump: OutputPump, pgid: int, *, stdin: bool,
           piped: bool = False) -> ExecProcess:
    """The started exec as a process of the sandbox (stopped with it)."""

    async def inspect() -> dict[str, Any]:
        try:
            info = await engine.inspect_exec(exec_id)
        except NotFound:
            return {}
        return info

    async def signaller(pgid: int, sig: int) -> bool:
        return await signal_group(engine, sandbox, pgid, sig)

    process = ExecProcess(pump, pgid, inspect, signaller,
                          on_exit=sandbox.processes.discard, stdin=stdin, piped=piped)
    sandbox.processes.add(process)
    return process


async def signal_group(engine: Engine, sandbox: DockerSandbox, pgid: int, sig: int) -> bool:
    """`kill -<sig> -<pgid>` inside the container, as root; a gone group is fine.

    A paused container runs nothing, not even `kill`: the signal is then queued and sent on
    resume (`send_pending_signals`), and False tells the caller it has not arrived yet."""
    try:
        attrs = await inspect_container(engine, sandbox.sandbox_id)
    except SandboxMissing:
        return True  # the container is gone, and with it the group
    state = attrs.get("State") or {}
    if state.get("Paused"):
        sandbox.pending_signals.append((pgid, sig))
        return False
    if not state.get("Running"):
        return True
    try:
        await run_helper(engine, sandbox, ["kill", str(int(sig)), str(int(pgid))])
    except (RuntimeFailure, OSError) as error:
        log.warning("signal %s to group %s of sandbox %s failed: %s", sig, pgid,
                    sandbox.sandbox_id, error)
        return False
    return True


async def send_pending_signals(engine: Engine, sandbox: DockerSandbox) -> None:
    """What `signal_group` queued while the container was paused, now that it runs."""
    pending, sandbox.pending_signals = sandbox.pending_signals, []
    for pgid, sig in pending:
        await signal_group(engine, sandbox, pgid, sig)


# --- helper operations -------------------------------------------------------------------


async def run_helper(engine: Engine, sandbox: DockerSandbox, args: list[str], *,
                     payload: bytes = b"", limit_seconds: float = HELPER_TIME_LIMIT
                     ) -> HelperResult:
    """One operation of `helpers.OPERATIONS`, as root, through the sandbox's agents (or a
    one-off exec for an argument the agent's line protocol cannot carry; a `payload` for
    `write` needs the agent)."""
    if sandbox.closed:
        raise SandboxMissing(sandbox.sandbox_id)
    if not agent_can_carry(args):
        if payload:
            raise ValueError("a helper payload needs arguments the agent can carry")
        return await _run_once(engine, sandbox, one_shot_argv(args), limit_seconds)
    if sandbox.agents is None:
        sandbox.agents = AgentPool(lambda: _start_agent(engine, sandbox))
    try:
        async with asyncio.timeout(limit_seconds):
            return await sandbox.agents.call(args, payload)
    except AgentGone:
        if payload:
            raise HelperFailed(sandbox.sandbox_id, f"the helper of sandbox {sandbox.sandbox_id} "
                               "ended while receiving a file; is the sandbox still running?"
                               ) from None
        # The agent died under the call (the container stopped or restarted, say); a
        # one-off exec either works or says why it cannot.
        return await _run_once(engine, sandbox, one_shot_argv(args), limit_seconds)
    except TimeoutError as error:
        raise TimedOut(limit_seconds, f"a helper in sandbox {sandbox.sandbox_id} did not "
                                      f"answer within {limit_seconds:.0f} s; is the sandbox "
                                      "paused?") from error


async def _start_agent(engine: Engine, sandbox: DockerSandbox) -> Agent:
    _, stream = await open_exec(engine, sandbox, AGENT_ARGV, user="0", stdin=True,
                                environment=AGENT_ENV)
    return Agent(stream, stream.write)


async def _run_once(engine: Engine, sandbox: DockerSandbox, argv: list[str],
                    limit_seconds: float) -> HelperResult:
    exec_id, stream = await open_exec(engine, sandbox, argv, user="0")
    out = bytearray()
    err = bytearray()
    try:
        async with asyncio.timeout(limit_seconds):
            async for kind, payload in frames(stream):
                (err if kind == 2 else out).extend(payload)
            code = None
            delay = 0.005
            while code is None:
                info = await engine.inspect_exec(exec_id)
                if not info.get("Running"):
                    code = info.get("ExitCode")
                else:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.2)
    except NotFound as error:
        raise SandboxMissing(sandbox.sandbox_id) from error
    finally:
        await stream.close()
    return HelperResult(int(code or 0), bytes(out), bytes(err))
