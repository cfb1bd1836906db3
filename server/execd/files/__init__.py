"""execd's /files and /directories routes, over the runtime's `SandboxFilesystem`."""

from opensandbox_emulator.server.execd.files.routes import router

__all__ = ["router"]
