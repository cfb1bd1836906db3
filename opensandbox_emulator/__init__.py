"""opensandbox-emulator: a local reference server for the OpenSandbox Lifecycle and execd APIs.

The installed package holds two layers, each a top-level folder of the source tree:
`opensandbox_emulator.server` (the HTTP APIs: lifecycle, sandbox access, the embedded execd)
and `opensandbox_emulator.runtimes` (where sandboxes really live; it knows nothing of HTTP).
Beside them, `tasks.py` holds the few asyncio helpers both use.
"""

__version__ = "0.1.0"
