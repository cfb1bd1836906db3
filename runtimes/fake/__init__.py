"""The default runtime: sandboxes on this host, isolated with bubblewrap, state in memory."""

from opensandbox_emulator.runtimes.fake.runtime import FakeRuntime

__all__ = ["FakeRuntime"]
