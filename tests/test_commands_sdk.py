"""execd commands through the official SDKs, unmodified: Python `opensandbox` (async API)
and the JS `@alibaba-group/opensandbox` (driven with node by tests/js/commands.mjs).

Each Python scenario runs in its own event loop (the SDK's HTTP clients belong to one), on
a sandbox made with `Sandbox.create` and its health check. Every test runs on both runtimes.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from opensandbox import Sandbox
from opensandbox.config import ConnectionConfig
from opensandbox.models.execd import ExecutionHandlers, OutputMessage, RunCommandOpts

from tests.helpers.servers import ServerProcess

JS_DIR = Path(__file__).resolve().parent / "js"


@pytest.fixture(scope="session")
def server(execd_server: ServerProcess) -> ServerProcess:
    """Every test of this module runs on both runtimes."""
    return execd_server


def in_sandbox(server: ServerProcess, scenario: Callable[[Sandbox], Awaitable[None]]) -> None:
    async def main() -> None:
        sandbox = await Sandbox.create(
            server.image, connection_config=ConnectionConfig(domain=server.domain),
            timeout=timedelta(minutes=5))
        try:
            await scenario(sandbox)
        finally:
            await sandbox.kill()
            await sandbox.close()

    asyncio.run(main())


async def poll_logs_until_done(sandbox: Sandbox, command_id: str) -> tuple[str, int]:
    """Poll status and logs with the cursor until the command ended; all output, polls."""
    seen, cursor, polls = "", None, 0
    while True:
        finished = not (await sandbox.commands.get_command_status(command_id)).running
        logs = await sandbox.commands.get_background_command_logs(command_id, cursor)
        seen += logs.content
        assert logs.cursor is not None
        cursor, polls = logs.cursor, polls + 1
        if finished:
            return seen, polls
        await asyncio.sleep(0.1)


async def wait_finished(sandbox: Sandbox, command_id: str) -> Any:
    for _ in range(300):
        status = await sandbox.commands.get_command_status(command_id)
        if not status.running:
            return status
        await asyncio.sleep(0.1)
    raise AssertionError(f"command {command_id} never finished")


def test_python_run_with_handlers_and_exit_codes(server: ServerProcess) -> None:
    async def scenario(sandbox: Sandbox) -> None:
        seen: dict[str, list[Any]] = {"stdout": [], "stderr": [], "init": [], "complete": [],
                                      "error": []}

        async def on_stdout(message: OutputMessage) -> None:
            seen["stdout"].append(message.text)

        async def on_stderr(message: OutputMessage) -> None:
            seen["stderr"].append(message.text)

        async def on_init(event: Any) -> None:
            seen["init"].append(event.id)

        async def on_complete(event: Any) -> None:
            seen["complete"].append(event)

        async def on_error(error: Any) -> None:
            seen["error"].append(error)

        handlers = ExecutionHandlers(on_stdout=on_stdout, on_stderr=on_stderr, on_init=on_init,
                                     on_execution_complete=on_complete, on_error=on_error)
        execution = await sandbox.commands.run(
            "echo one; echo two >&2; printf 'three\\nfour'", handlers=handlers)
        assert execution.error is None
        assert [m.text for m in execution.logs.stdout] == ["one", "three", "four"]
        assert [m.text for m in execution.logs.stderr] == ["two"]
        assert seen["stdout"] == ["one", "three", "four"] and seen["stderr"] == ["two"]
        assert seen["init"] == [execution.id] and len(seen["complete"]) == 1
        assert all(m.timestamp > 0 for m in execution.logs.stdout)

        failed = await sandbox.commands.run("exit 7", handlers=handlers)
        assert failed.error is not None
        assert (failed.error.name, failed.error.value) == ("CommandExecError", "7")
        assert failed.error.traceback == ["exit status 7"]
        assert len(seen["error"]) == 1
        status = await sandbox.commands.get_command_status(failed.id)
        assert (status.running, status.exit_code, status.error) == (False, 7, "exit status 7")
        ok = await sandbox.commands.get_command_status(execution.id)
        assert (ok.running, ok.exit_code, ok.content) == (
            False, 0, "echo one; echo two >&2; printf 'three\\nfour'")
        assert ok.started_at is not None and ok.finished_at is not None
        assert ok.finished_at >= ok.started_at

        where = await sandbox.commands.run(
            "pwd", opts=RunCommandOpts(working_directory="/tmp"))
        assert [m.text for m in where.logs.stdout] == ["/tmp"]
        missing = await sandbox.commands.run(
            "pwd", opts=RunCommandOpts(working_directory="/no/such/dir"))
        assert missing.error is not None and "/no/such/dir" in missing.error.value
        assert missing.error.traceback == []

    in_sandbox(server, scenario)


def test_python_timeout_and_interrupt(server: ServerProcess) -> None:
    async def scenario(sandbox: Sandbox) -> None:
        timed = await sandbox.commands.run(
            "sleep 30 & sleep 60; wait", opts=RunCommandOpts(timeout=timedelta(seconds=1)))
        assert timed.error is not None
        assert (timed.error.value, timed.error.traceback) == ("-1", ["signal: killed"])
        status = await sandbox.commands.get_command_status(timed.id)
        assert (status.exit_code, status.error) == (-1, "signal: killed")

        started = asyncio.Event()
        holder: dict[str, str] = {}

        async def on_init(event: Any) -> None:
            holder["id"] = event.id
            started.set()

        running = asyncio.create_task(sandbox.commands.run(
            "sleep 60", handlers=ExecutionHandlers(on_init=on_init)))
        await asyncio.wait_for(started.wait(), 30)
        await sandbox.commands.interrupt(holder["id"])
        interrupted = await asyncio.wait_for(running, 30)
        assert interrupted.error is not None
        assert (interrupted.error.value, interrupted.error.traceback) == (
            "-1", ["signal: terminated"])
        status = await sandbox.commands.get_command_status(holder["id"])
        assert (status.running, status.exit_code, status.error) == (
            False, -1, "signal: terminated")
        await sandbox.commands.interrupt(holder["id"])  # finished: still fine

    in_sandbox(server, scenario)


def test_python_background_status_and_logs(server: ServerProcess) -> None:
    async def scenario(sandbox: Sandbox) -> None:
        execution = await sandbox.commands.run(
            "for i in $(seq 1 30); do echo out-$i; echo err-$i >&2; sleep 0.02; done; exit 3",
            opts=RunCommandOpts(background=True))
        assert execution.id and execution.error is None
        assert execution.logs.stdout == [] and execution.logs.stderr == []
        output, polls = await poll_logs_until_done(sandbox, execution.id)
        assert output == "".join(f"out-{i}\nerr-{i}\n" for i in range(1, 31))
        assert polls >= 1
        status = await sandbox.commands.get_command_status(execution.id)
        assert (status.running, status.exit_code, status.error) == (False, 3, "exit status 3")
        empty = await sandbox.commands.get_background_command_logs(
            execution.id, len(output.encode()))
        assert (empty.content, empty.cursor) == ("", len(output.encode()))

        limited = await sandbox.commands.run(
            "sleep 60", opts=RunCommandOpts(background=True, timeout=timedelta(seconds=1)))
        status = await wait_finished(sandbox, limited.id)
        assert (status.exit_code, status.error) == (-1, "signal: killed")

    in_sandbox(server, scenario)


# --- the JS SDK ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def js_results(server: ServerProcess) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None or not (JS_DIR / "node_modules" / "@alibaba-group" / "opensandbox").is_dir():
        pytest.fail("node and tests/js/node_modules are needed: run tests/setup.sh")
    done = subprocess.run([node, str(JS_DIR / "commands.mjs"), server.domain, server.image],
                          cwd=JS_DIR,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_js_run_with_handlers_and_exit_codes(js_results: dict[str, Any]) -> None:
    run = js_results["run"]
    assert run["stdout"] == ["one", "three", "four"] and run["stderr"] == ["two"]
    assert run["handlerStdout"] == ["one", "three", "four"]
    assert run["handlerStderr"] == ["two"]
    assert run["initId"] == run["id"] and len(run["id"]) == 32
    assert run["exitCode"] == 0 and run["complete"] is True and run["error"] is None
    failed = js_results["failed"]
    assert failed["exitCode"] == 7
    assert failed["error"] == {"name": "CommandExecError", "value": "7",
                               "traceback": ["exit status 7"]}
    assert failed["status"]["exitCode"] == 7 and failed["status"]["running"] is False
    assert js_results["cwd"] == ["/tmp"]
    assert js_results["envs"] == ["from-js"]


def test_js_timeout_and_interrupt(js_results: dict[str, Any]) -> None:
    timed = js_results["timeout"]
    assert timed["exitCode"] == -1
    assert timed["error"]["traceback"] == ["signal: killed"]
    assert (timed["status"]["exitCode"], timed["status"]["error"]) == (-1, "signal: killed")
    interrupted = js_results["interrupt"]
    assert interrupted["exitCode"] == -1
    assert interrupted["error"]["traceback"] == ["signal: terminated"]
    assert interrupted["status"]["error"] == "signal: terminated"


def test_js_background_logs_polled_through_empty_reads(js_results: dict[str, Any]) -> None:
    background = js_results["background"]
    assert background["output"] == "".join(f"out-{i}\n" for i in range(1, 11))
    assert background["status"]["running"] is False and background["status"]["exitCode"] == 0
    # Reads with nothing new came back as "" (not "unexpected response shape").
    assert background["emptyReads"] >= 1
    assert background["finalEmpty"] == {"content": "", "cursor": len(background["output"])}
