"""Upstream's failure modes, injected, and the exception the SDK raises for each."""

from datetime import timedelta

import pytest
from opensandbox import Sandbox
from opensandbox.exceptions import (
    SandboxApiException,
    SandboxInternalException,
    SandboxReadyTimeoutException,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
async def sandbox(opensandbox_emulator, image):
    made = await Sandbox.create(image, connection_config=opensandbox_emulator.connection_config())
    yield made
    await made.kill()
    await made.close()


async def test_create_fails_to_start(opensandbox_emulator, image):
    opensandbox_emulator.faults.sandbox_start_failed()
    config = opensandbox_emulator.connection_config()
    with pytest.raises(SandboxApiException) as failure:
        await Sandbox.create(image, connection_config=config)
    assert failure.value.status_code == 500
    # The server's message reaches the caller (newer SDKs also keep the code, in `.error`).
    assert "Failed to create or start container" in str(failure.value)

    retried = await Sandbox.create(image, connection_config=config)  # the rule was for one
    await retried.kill()
    await retried.close()
    statuses = [r.status for r in opensandbox_emulator.journal.entries(path="/v1/sandboxes")]
    assert statuses == [500, 202]


async def test_execd_unreachable(opensandbox_emulator, sandbox):
    opensandbox_emulator.faults.execd_unreachable(sandbox.id, times=None)
    with pytest.raises(SandboxApiException) as failure:
        await sandbox.commands.run("echo never")
    assert failure.value.status_code == 502
    assert not await sandbox.is_healthy()


async def test_execd_unreachable_while_starting(opensandbox_emulator, image):
    opensandbox_emulator.faults.execd_unreachable(times=None)
    with pytest.raises(SandboxReadyTimeoutException):
        await Sandbox.create(image, connection_config=opensandbox_emulator.connection_config(),
                             ready_timeout=timedelta(seconds=1))
    # The SDK kills the sandbox it could not get ready.
    (create,) = opensandbox_emulator.journal.entries(method="POST", path="/v1/sandboxes")
    deletes = opensandbox_emulator.journal.entries(sandbox_id=create.sandbox_id, method="DELETE")
    assert [r.status for r in deletes] == [204]


async def test_sandbox_paused(opensandbox_emulator, sandbox):
    opensandbox_emulator.faults.sandbox_paused(sandbox.id)
    with pytest.raises(SandboxApiException) as failure:
        await sandbox.commands.run("echo frozen")
    assert failure.value.status_code == 503
    run = await sandbox.commands.run("echo thawed")  # one request only
    assert [line.text for line in run.logs.stdout] == ["thawed"]


async def test_command_stream_cut_midway(opensandbox_emulator, sandbox):
    # init, the first ping, then the first line: the connection drops after that.
    rule = opensandbox_emulator.faults.command_stream_cut(after_events=3)
    with pytest.raises(SandboxInternalException):
        await sandbox.commands.run("for i in 1 2 3 4 5; do echo $i; sleep 0.1; done")
    (command,) = opensandbox_emulator.journal.entries(sandbox_id=sandbox.id, path="/command")
    assert command.fault == rule.id and command.status == 200


async def test_slow_ping_delays_readiness(opensandbox_emulator, image):
    rule = opensandbox_emulator.faults.slow_ping(delay_seconds=0.5)
    config = opensandbox_emulator.connection_config()
    sandbox = await Sandbox.create(image, connection_config=config)
    try:
        first = opensandbox_emulator.journal.entries(sandbox_id=sandbox.id, path="/ping")[0]
        assert first.fault == rule.id and first.duration_ms >= 500
    finally:
        await sandbox.kill()
        await sandbox.close()


async def test_pings_slower_than_the_request_timeout(opensandbox_emulator, image):
    # Each ping outlasts the SDK's request timeout, so none counts until readiness gives up.
    # The timeout still leaves the create itself (a container start, on Docker) time enough.
    opensandbox_emulator.faults.slow_ping(delay_seconds=8, times=None)
    config = opensandbox_emulator.connection_config(request_timeout=timedelta(seconds=5))
    with pytest.raises(SandboxReadyTimeoutException):
        await Sandbox.create(image, connection_config=config, ready_timeout=timedelta(seconds=1))


async def test_faults_list_what_fired(opensandbox_emulator, sandbox):
    rule = opensandbox_emulator.faults.add(method="GET", path="/files/*", status=500,
                                           code="RUNTIME_ERROR", message="disk on fire")
    with pytest.raises(SandboxApiException) as failure:
        await sandbox.files.get_file_info(["/tmp"])
    assert failure.value.status_code == 500
    (listed,) = opensandbox_emulator.faults.list()
    assert listed.id == rule.id and listed.fired == 1 and listed.remaining == 0


async def test_newer_sdk_retries_an_idempotent_request(opensandbox_emulator, sandbox):
    pytest.importorskip("opensandbox.transport", reason="SDKs before 1.x do not retry")
    opensandbox_emulator.faults.sandbox_paused(sandbox.id, method="GET", path="/files/info")
    info = await sandbox.files.get_file_info(["/tmp"])
    assert "/tmp" in info
    tries = opensandbox_emulator.journal.entries(sandbox_id=sandbox.id, path="/files/info")
    assert [r.status for r in tries] == [503, 200]
