"""The default runtime: sandboxes as containers of this host's system (runc), state in memory."""

from opensandbox_emulator.runtimes.fake.runtime import FakeRuntime

__all__ = ["FakeRuntime"]
