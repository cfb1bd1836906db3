"""Code interpreting through the official SDK (`opensandbox-code-interpreter==0.1.1` on
`opensandbox==0.1.5`), unmodified, against a real server.

Every test runs on both runtimes (`[fake]` and `[docker]`, see `execd_server` in
conftest.py), in sandboxes of `server.image`.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from code_interpreter import CodeInterpreter
from code_interpreter.models.code import CodeContext, SupportedLanguage
from opensandbox import Sandbox
from opensandbox.config import ConnectionConfig
from opensandbox.exceptions import SandboxApiException, SandboxException
from opensandbox.models.execd import ExecutionHandlers, OutputMessage

from tests.helpers.servers import ServerProcess

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="session")
def server(execd_server: ServerProcess) -> ServerProcess:
    """Every test of this module runs on both runtimes."""
    return execd_server


@pytest.fixture
async def interpreter(sdk_sandbox: Sandbox) -> CodeInterpreter:
    return await CodeInterpreter.create(sdk_sandbox)


def stdout_of(execution: object) -> str:
    return "".join(message.text for message in execution.logs.stdout)  # type: ignore[attr-defined]


async def test_state_results_and_streams(interpreter: CodeInterpreter) -> None:
    codes = interpreter.codes
    context = await codes.create_context(SupportedLanguage.PYTHON)
    assert context.id and context.language == "python"

    first = await codes.run("import sys\nitems = [1, 2, 3]\nprint('hello')\n"
                            "print('warn', file=sys.stderr)\nlen(items)", context=context)
    assert first.id == context.id
    assert first.error is None
    assert stdout_of(first) == "hello\n"
    assert [m.text for m in first.logs.stderr] == ["warn\n"]
    assert [r.text for r in first.result] == ["3"]
    assert first.execution_count == 1

    second = await codes.run("items.append(4)\nsum(items)", context=context)
    assert [r.text for r in second.result] == ["10"]
    assert second.execution_count == 2

    third = await codes.run("{'a': 1}", context=context)
    assert [r.text for r in third.result] == ["{'a': 1}"]


async def test_errors(interpreter: CodeInterpreter) -> None:
    codes = interpreter.codes
    context = await codes.create_context(SupportedLanguage.PYTHON)
    execution = await codes.run("def fail():\n    raise ValueError('bad input')\nfail()",
                                context=context)
    assert execution.error is not None
    assert (execution.error.name, execution.error.value) == ("ValueError", "bad input")
    assert any("raise ValueError" in line for line in execution.error.traceback)
    assert execution.result == []
    # the context is still usable
    again = await codes.run("'fine'", context=context)
    assert again.error is None and [r.text for r in again.result] == ["'fine'"]


async def test_contexts_are_isolated(interpreter: CodeInterpreter) -> None:
    codes = interpreter.codes
    one = await codes.create_context(SupportedLanguage.PYTHON)
    two = await codes.create_context(SupportedLanguage.PYTHON)
    assert one.id != two.id
    await codes.run("secret = 'one'", context=one)
    await codes.run("secret = 'two'", context=two)
    assert [r.text for r in (await codes.run("secret", context=one)).result] == ["'one'"]
    assert [r.text for r in (await codes.run("secret", context=two)).result] == ["'two'"]


async def test_concurrent_runs_in_different_contexts(interpreter: CodeInterpreter) -> None:
    codes = interpreter.codes
    waiter = await codes.create_context(SupportedLanguage.PYTHON)
    signaller = await codes.create_context(SupportedLanguage.PYTHON)
    marker = "/tmp/concurrent-signal"
    # The waiter can only finish while the signaller runs: serialized runs would fail it.
    wait_code = ("import os, time\n"
                 "deadline = time.monotonic() + 30\n"
                 f"while not os.path.exists({marker!r}):\n"
                 "    assert time.monotonic() < deadline, 'the other run never ran'\n"
                 "    time.sleep(0.01)\n"
                 "'seen'")
    signal_code = f"open({marker!r}, 'w').close()\n'sent'"
    waited = asyncio.ensure_future(codes.run(wait_code, context=waiter))
    sent = await codes.run(signal_code, context=signaller)
    seen = await waited
    assert sent.error is None and [r.text for r in sent.result] == ["'sent'"]
    assert seen.error is None and [r.text for r in seen.result] == ["'seen'"]


async def test_interrupt_then_reuse(interpreter: CodeInterpreter) -> None:
    codes = interpreter.codes
    context = await codes.create_context(SupportedLanguage.PYTHON)
    await codes.run("progress = []", context=context)
    started = asyncio.Event()

    async def on_stdout(message: OutputMessage) -> None:
        started.set()

    running = asyncio.ensure_future(codes.run(
        "import time\nwhile True:\n    progress.append(1)\n"
        "    if len(progress) == 1:\n        print('working', flush=True)\n"
        "    time.sleep(0.05)",
        context=context, handlers=ExecutionHandlers(on_stdout=on_stdout)))
    await asyncio.wait_for(started.wait(), 30)

    with pytest.raises(SandboxApiException) as busy:
        await codes.run("1", context=context)
    assert busy.value.status_code == 409

    await codes.interrupt(context.id)
    execution = await asyncio.wait_for(running, 30)
    assert execution.error is not None and execution.error.name == "KeyboardInterrupt"

    after = await codes.run("len(progress) > 0", context=context)
    assert after.error is None and [r.text for r in after.result] == ["True"]


async def test_context_list_get_delete(interpreter: CodeInterpreter) -> None:
    codes = interpreter.codes
    assert await codes.list_contexts(SupportedLanguage.PYTHON) == []
    python = await codes.create_context(SupportedLanguage.PYTHON)
    bash = await codes.create_context(SupportedLanguage.BASH)

    listed = await codes.list_contexts(SupportedLanguage.PYTHON)
    assert [(c.id, c.language) for c in listed] == [(python.id, "python")]
    fetched = await codes.get_context(bash.id)
    assert (fetched.id, fetched.language) == (bash.id, "bash")

    # the language's default context appears (once) after a context-less run
    default_run = await codes.run("shared = 1")
    listed = await codes.list_contexts(SupportedLanguage.PYTHON)
    assert sorted(c.id for c in listed) == sorted([python.id, default_run.id])
    again = await codes.run("shared + 1")
    assert again.id == default_run.id and [r.text for r in again.result] == ["2"]

    await codes.delete_context(python.id)
    with pytest.raises(SandboxException):
        await codes.get_context(python.id)
    with pytest.raises(SandboxException):
        await codes.run("1", context=python)

    await codes.delete_contexts(SupportedLanguage.PYTHON)
    assert await codes.list_contexts(SupportedLanguage.PYTHON) == []
    assert [(c.id, c.language) for c in await codes.list_contexts(SupportedLanguage.BASH)] \
        == [(bash.id, "bash")]
    await codes.delete_contexts(SupportedLanguage.BASH)
    assert await codes.list_contexts(SupportedLanguage.BASH) == []


async def test_bash_through_the_sdk(interpreter: CodeInterpreter) -> None:
    codes = interpreter.codes
    context = await codes.create_context(SupportedLanguage.BASH)
    first = await codes.run("name=sandbox; cd /tmp; echo \"hi $name\"", context=context)
    assert first.error is None and stdout_of(first) == "hi sandbox\n"
    second = await codes.run("echo \"$name in $PWD\"; exit_code_test() { return 4; }; "
                             "exit_code_test", context=context)
    assert stdout_of(second) == "sandbox in /tmp\n"
    assert second.error is not None
    assert (second.error.name, second.error.value) == ("CommandExecError", "4")
    # a context-less bash run uses bash's default context
    plain = await codes.run("echo default", language=SupportedLanguage.BASH)
    assert stdout_of(plain) == "default\n"


async def test_missing_toolchain_is_refused(server: ServerProcess) -> None:
    config = ConnectionConfig(domain=server.domain, request_timeout=timedelta(seconds=60))
    sandbox = await Sandbox.create(server.image, connection_config=config,
                                   entrypoint=["/usr/bin/tail", "-f", "/dev/null"],
                                   env={"PATH": "/opensandbox-empty"})
    try:
        interpreter = await CodeInterpreter.create(sandbox)
        for language, tool in ((SupportedLanguage.GO, "`go`"),
                               (SupportedLanguage.JAVA, "`jshell`")):
            with pytest.raises(SandboxException) as refused:
                await interpreter.codes.create_context(language)
            assert tool in str(refused.value)
            assert await interpreter.codes.list_contexts(language) == []
    finally:
        await sandbox.kill()
        await sandbox.close()


async def test_context_objects_round_trip(interpreter: CodeInterpreter) -> None:
    codes = interpreter.codes
    made = await codes.create_context(SupportedLanguage.PYTHON)
    rebuilt = CodeContext(id=made.id, language="python")
    execution = await codes.run("40 + 2", context=rebuilt)
    assert [r.text for r in execution.result] == ["42"]
