"""What the SDK sends, read from the emulator's request journal."""

import pytest
from opensandbox import Sandbox, SandboxManager
from opensandbox.sync import SandboxSync

pytestmark = pytest.mark.anyio


async def test_create_is_one_post_then_pings_until_ready(opensandbox_emulator, image):
    config = opensandbox_emulator.connection_config()
    sandbox = await Sandbox.create(image, connection_config=config)
    try:
        journal = opensandbox_emulator.journal.entries()
        creates = [r for r in journal if r.method == "POST" and r.path == "/v1/sandboxes"]
        assert len(creates) == 1
        assert creates[0].status == 202 and creates[0].sandbox_id == sandbox.id

        pings = opensandbox_emulator.journal.entries(sandbox_id=sandbox.id, path="/ping")
        assert pings, "the SDK waits for readiness by pinging execd"
        assert all(ping.seq > creates[0].seq for ping in pings)
        assert all(ping.port == 44772 and ping.via == "gateway" for ping in pings)
        assert pings[-1].status == 200
    finally:
        await sandbox.kill()
        await sandbox.close()
    deletes = opensandbox_emulator.journal.entries(sandbox_id=sandbox.id, method="DELETE")
    assert [r.status for r in deletes] == [204]


async def test_commands_are_journaled_on_either_path(opensandbox_emulator, image):
    for proxy in (False, True):
        config = opensandbox_emulator.connection_config(use_server_proxy=proxy)
        sandbox = await Sandbox.create(image, connection_config=config)
        try:
            run = await sandbox.commands.run("echo hello")
            assert [line.text for line in run.logs.stdout] == ["hello"]
            (command,) = opensandbox_emulator.journal.entries(sandbox_id=sandbox.id,
                                                              path="/command")
            assert command.via == ("proxy" if proxy else "gateway")
            assert command.method == "POST" and command.status == 200
        finally:
            await sandbox.kill()
            await sandbox.close()


async def test_a_test_may_leave_sandboxes_behind(opensandbox_emulator, image):
    config = opensandbox_emulator.connection_config()
    for _ in range(2):
        sandbox = await Sandbox.create(image, connection_config=config, metadata={"left": "yes"})
        await sandbox.close()  # closes the client only: the sandbox keeps running


async def test_the_next_test_starts_clean(opensandbox_emulator):
    # Runs after the test above: the reset fixture deleted what it left.
    assert opensandbox_emulator.journal.entries() == []
    config = opensandbox_emulator.connection_config()
    manager = await SandboxManager.create(connection_config=config)
    try:
        from opensandbox.models.sandboxes import SandboxFilter

        listed = await manager.list_sandbox_infos(SandboxFilter())
        assert listed.sandbox_infos == []
    finally:
        await manager.close()


def test_the_sync_sdk_too(opensandbox_emulator, image):
    config = opensandbox_emulator.connection_config_sync()
    sandbox = SandboxSync.create(image, connection_config=config)
    try:
        run = sandbox.commands.run("echo sync")
        assert [line.text for line in run.logs.stdout] == ["sync"]
    finally:
        sandbox.kill()
        sandbox.close()
    assert len(opensandbox_emulator.journal.entries(sandbox_id=sandbox.id, path="/command")) == 1
