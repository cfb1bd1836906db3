"""Expiry, renewal and `expiresAt` on the emulator's clock, without waiting."""

from datetime import timedelta

import pytest
from opensandbox import Sandbox
from opensandbox.exceptions import SandboxApiException

pytestmark = pytest.mark.anyio


async def test_a_sandbox_expires_when_the_clock_passes_its_timeout(opensandbox_emulator, image):
    config = opensandbox_emulator.connection_config()
    sandbox = await Sandbox.create(image, connection_config=config, timeout=timedelta(minutes=10))
    try:
        info = await sandbox.get_info()
        now = opensandbox_emulator.clock.now()
        assert timedelta(minutes=9) < info.expires_at - now <= timedelta(minutes=10)

        assert opensandbox_emulator.clock.advance(timedelta(minutes=9)) == []
        assert (await sandbox.get_info()).status.state == "Running"

        assert opensandbox_emulator.clock.advance(timedelta(minutes=2)) == [sandbox.id]
        with pytest.raises(SandboxApiException) as gone:
            await sandbox.get_info()
        assert gone.value.status_code == 404
    finally:
        await sandbox.close()


async def test_renew_pushes_expiry_back(opensandbox_emulator, image):
    config = opensandbox_emulator.connection_config()
    sandbox = await Sandbox.create(image, connection_config=config, timeout=timedelta(minutes=10))
    try:
        opensandbox_emulator.clock.advance(timedelta(minutes=5))
        # The SDK computes the new expiry from this machine's clock (now + 30 min), which is
        # 25 minutes ahead of the emulator's after the advance.
        await sandbox.renew(timedelta(minutes=30))
        assert opensandbox_emulator.clock.advance(timedelta(minutes=20)) == []
        assert (await sandbox.get_info()).status.state == "Running"
        assert opensandbox_emulator.clock.advance(timedelta(minutes=6)) == [sandbox.id]
    finally:
        await sandbox.close()


def test_each_test_starts_on_the_real_clock(opensandbox_emulator):
    assert opensandbox_emulator.clock.offset == timedelta(0)
