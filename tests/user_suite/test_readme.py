"""The README's example, as it stands there."""

import pytest
from opensandbox import Sandbox


@pytest.mark.anyio                                    # the SDK is async; anyio's plugin runs it
async def test_hello(opensandbox_emulator):
    config = opensandbox_emulator.connection_config()
    sandbox = await Sandbox.create("python:3.11", connection_config=config)
    run = await sandbox.commands.run("echo hello")
    assert run.logs.stdout[0].text == "hello"
    await sandbox.kill()
    (create,) = opensandbox_emulator.journal.entries(method="POST", path="/v1/sandboxes")
    assert create.sandbox_id == sandbox.id            # exactly one create
